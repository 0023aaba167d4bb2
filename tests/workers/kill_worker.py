"""Save step 1 on every rank, then die (SIGKILL) in the middle of saving step 2.

argv: ROOT POINT where POINT is 'write' (rank 2 dies after writing its first chunk) or
'commit' (rank 0 dies after the manifests are written, before the commit marker).
"""
import os
import signal
import sys

import torch
from mpi4py import MPI

import tierpoint
import tierpoint.api
import tierpoint.tiers.local

ROOT, POINT = sys.argv[1], sys.argv[2]
RANK, SIZE = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()


def state(scale):
    data = (torch.arange(RANK * 8, RANK * 8 + 8, dtype=torch.float32) * scale).reshape(2, 4)
    return {"w": tierpoint.Shard(data, (2 * SIZE, 4), (2 * RANK, 0)), "step": int(scale)}


ck = tierpoint.Checkpointer(ROOT, run="k")
ck.save(1, state(1)).wait()
print(f"rank {RANK} saved step 1", flush=True)

if POINT == "write" and RANK == 2:
    real = tierpoint.tiers.local.write_file

    def write_then_die(*a, **k):
        real(*a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
    tierpoint.tiers.local.write_file = write_then_die
if POINT == "commit" and RANK == 0:
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    tierpoint.api.layout.write_commit_marker = die

ck.save(2, state(2)).wait()
print(f"rank {RANK} saved step 2 (should not happen)", flush=True)
