"""Fewer aggregators than nodes: 4 ranks as 2 nodes, aggregators=1, so node n1's chunks
travel to n0's aggregator over MPI. argv: ROOT. Prints AGG-OK."""
import glob
import os
import sys

import torch
from mpi4py import MPI

import tierpoint

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402

ROOT = sys.argv[1]
W = MPI.COMM_WORLD
RANK, SIZE = W.Get_rank(), W.Get_size()
problems = []


def state(step):
    data = torch.arange(RANK * 600, RANK * 600 + 600, dtype=torch.float32).reshape(20, 30) + step
    return {"w": tierpoint.Shard(data, (20 * SIZE, 30), (20 * RANK, 0)), "step": step}


pools = [os.path.join(ROOT, "poolA"), os.path.join(ROOT, "poolB")]
ck = tierpoint.Checkpointer(os.path.join(ROOT, "local", "{node}"), persistent=pools, run="a",
                            policy=tierpoint.Policy(keep_local=3, drain_every=2), aggregators=1)
ck.save(1, state(1))
ck.save(2, state(2))
ck.wait()
if ck.capacity_steps() != [2]:
    problems.append(f"capacity {ck.capacity_steps()}")
parts = sorted(os.path.basename(p) for pool in pools
               for p in glob.glob(os.path.join(pool, "a", ".parts", "step_00000002", "*")))
if any(not p.startswith("part00000") for p in parts):
    problems.append(f"parts of more than one aggregator: {parts}")

# A reader on the other node fails mid-transfer: every rank gets the error, nobody hangs.
ck.save(3, state(3)).wait()
if RANK == 2:  # n1's leader: damage one of its chunks of step 3
    chunk = sorted(glob.glob(os.path.join(ROOT, "local", "n1", "a", "step_00000003", "w", "c.*")))[0]
    with open(chunk, "r+b") as f:
        f.write(b"\xff\xff\xff\xff")
W.Barrier()
try:
    ck.drain(3)
    problems.append(f"rank {RANK}: drain of a damaged checkpoint succeeded")
except tierpoint.CheckpointError as e:
    if "crc32c" not in str(e):
        problems.append(f"rank {RANK}: unexpected error {e}")
if ck.capacity_steps() != [2]:
    problems.append(f"after the failed drain: capacity {ck.capacity_steps()}")
ck.close(drain_newest=False)  # do not drain again at close
P.report(problems, "AGG")
