"""Relocated checkpoints. argv: save ROOT  |  restore LOCAL_ROOT STEP [POOL]
save: the ranks (any number of "nodes", TIERPOINT_NODE) save steps 1 and 2 of a row-sharded
numpy array whose values encode their global index, plus a replicated one, under
ROOT/local/{node}, draining step 2 to ROOT/pool.
restore: the ranks restore STEP from LOCAL_ROOT (no {node}: one directory, wherever it is)
and, when given, the capacity tier POOL, and compare bit-exactly.
Prints RELOCATE-OK <mode>.
"""
import os
import sys

import numpy as np
from mpi4py import MPI

import tierpoint

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402

W = MPI.COMM_WORLD
RANK, SIZE = W.Get_rank(), W.Get_size()
ROWS, COLS = 29, 7
problems = []


def full(step):
    return P.global_bits(f"w{step}", (ROWS, COLS), "float64").view(np.float64)


def state(step, fill):
    lo, n = P.split(ROWS, SIZE, "even")[RANK]
    data = full(step)[lo:lo + n].copy() if fill else np.zeros((n, COLS))
    rep = np.arange(5, dtype=np.int64) * 100 + step if fill else np.zeros(5, dtype=np.int64)
    return {"w": tierpoint.Shard(data, (ROWS, COLS), (lo, 0)), "rep": rep, "step": step}


if sys.argv[1] == "save":
    root = sys.argv[2]
    os.makedirs(os.path.join(root, "pool"), exist_ok=True)
    ck = tierpoint.Checkpointer(os.path.join(root, "local", "{node}"),
                                persistent=os.path.join(root, "pool"), run="r",
                                policy=tierpoint.Policy(keep_local=2, drain_every=2),
                                chunk_bytes=256)
    for step in (1, 2):
        ck.save(step, state(step, True)).wait()
    ck.close()
else:
    local, step = sys.argv[2], int(sys.argv[3])
    pool = sys.argv[4] if len(sys.argv) > 4 else None
    ck = tierpoint.Checkpointer(local, persistent=pool, run="r")
    st = state(step, False)
    out = ck.restore(st, step=step)
    lo, n = P.split(ROWS, SIZE, "even")[RANK]
    if not np.array_equal(st["w"].data.view(np.uint64), full(step)[lo:lo + n].view(np.uint64)):
        problems.append(f"rank {RANK}: w of step {step} differs")
    if out["rep"].tolist() != [i * 100 + step for i in range(5)] or out["step"] != step:
        problems.append(f"rank {RANK}: rep/step of step {step} differ")
    ck.close()
P.report(problems, "RELOCATE", sys.argv[1])
