"""Tiers across ranks. argv: save ROOT  |  restore ROOT
save: 4 ranks as 2 nodes save steps 1..10 with keep_local=2, drain_every=5 into 2 pools
(or into the capacity tier that TIERS_PERSISTENT names, e.g. an s3:// URL).
restore: any world size restores step 10 and step 5 (bit-exact) from whatever tiers exist.
Prints TIERS-OK <mode>.
"""
import os
import sys

import torch
from mpi4py import MPI

import tierpoint

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402

MODE, ROOT = sys.argv[1], sys.argv[2]
W = MPI.COMM_WORLD
RANK, SIZE = W.Get_rank(), W.Get_size()
ROWS, COLS = 37, 11
POOLS = os.environ.get("TIERS_PERSISTENT") or [os.path.join(ROOT, "poolA"),
                                               os.path.join(ROOT, "poolB")]
problems = []


def full(step):
    return (torch.arange(ROWS * COLS, dtype=torch.float64).reshape(ROWS, COLS) * 1000 + step)


def rows(n, r):
    step = -(-ROWS // n)
    lo = min(r * step, ROWS)
    return lo, min(step, ROWS - lo)


def state(step, fill):
    lo, n = rows(SIZE, RANK)
    data = full(step)[lo:lo + n].clone() if fill else torch.zeros(n, COLS, dtype=torch.float64)
    return {"w": tierpoint.Shard(data, (ROWS, COLS), (lo, 0)),
            "rep": torch.full((4,), float(step)) if fill else torch.zeros(4), "step": step}


ck = tierpoint.Checkpointer(os.path.join(ROOT, "local", "{node}"), persistent=POOLS, run="t",
                            policy=tierpoint.Policy(keep_local=2, drain_every=5))
if MODE == "save":
    for step in range(1, 11):
        ck.save(step, state(step, True)).wait()
    ck.wait()  # the background drain of step 10
    if ck.steps() != [9, 10]:
        problems.append(f"rank {RANK}: local steps {ck.steps()}")
    if ck.capacity_steps() != [5, 10]:
        problems.append(f"rank {RANK}: capacity steps {ck.capacity_steps()}")
else:
    for step in (10, 5):
        st = state(step, False)
        out = ck.restore(st, step=step)
        lo, n = rows(SIZE, RANK)
        if not torch.equal(st["w"].data, full(step)[lo:lo + n]):
            problems.append(f"rank {RANK}: step {step} w differs")
        if out["rep"].tolist() != [float(step)] * 4 or out["step"] != step:
            problems.append(f"rank {RANK}: step {step} rep/step differ")
ck.close()
P.report(problems, "TIERS", MODE)
