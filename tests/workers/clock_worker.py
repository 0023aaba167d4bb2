"""Checkpoints on a clock over real MPI ranks (tests/test_clock.py).

    clock_worker.py ROOT MODE

MODE "loop": Policy(every_seconds=0.05); the trainer's loop ``if ckpt.due(step):
ckpt.save(step, state)`` runs until three saves were due; every rank prints the steps it
found due, and rank 0 prints the committed steps. The state encodes each element's global
index and the step, so the restore check is bit-exact.
MODE "skew": rank 3 calls due() with another step; every rank must get the same
ConfigurationError (and nothing hangs); prints "SKEW-OK".
MODE "cost": 200 calls of due() (every_seconds large: never due); rank 0 prints the median
seconds per call.
"""
import statistics
import sys
import time

import torch
from mpi4py import MPI

import tierpoint

root, mode = sys.argv[1], sys.argv[2]
comm = MPI.COMM_WORLD
rank, world = comm.Get_rank(), comm.Get_size()
ROWS = 4


def shard(step: int):
    data = torch.arange(rank * ROWS * 8, (rank + 1) * ROWS * 8, dtype=torch.float64)
    return tierpoint.Shard((data + step * 1e6).reshape(ROWS, 8), (world * ROWS, 8),
                           (rank * ROWS, 0))


if mode == "loop":
    ck = tierpoint.Checkpointer(root, run="clock",
                                policy=tierpoint.Policy(keep_local=10, every_seconds=0.05))
    due, step = [], 0
    while len(due) < 3:
        step += 1
        if ck.due(step):
            due.append(step)
            ck.save(step, {"w": shard(step)}).wait()
    print(f"rank {rank} due {due}", flush=True)
    if rank == 0:
        print(f"committed {ck.steps()}", flush=True)
    target = {"w": tierpoint.Shard(torch.zeros(ROWS, 8, dtype=torch.float64),
                                   (world * ROWS, 8), (rank * ROWS, 0))}
    ck.restore(target, step=due[-1])
    assert torch.equal(target["w"].data, shard(due[-1]).data), f"rank {rank}: wrong values"
    ck.close()
elif mode == "skew":
    ck = tierpoint.Checkpointer(root, run="skew", policy=tierpoint.Policy(every_seconds=1e-6))
    try:
        ck.due(7 if rank != 3 else 8)
    except tierpoint.ConfigurationError as e:
        assert "different steps (7 to 8)" in str(e), str(e)
        print(f"rank {rank} SKEW-OK", flush=True)
    ck.close()
else:
    ck = tierpoint.Checkpointer(root, run="cost", policy=tierpoint.Policy(every_seconds=3600))
    for _ in range(20):  # warm-up
        ck.due(0)
    times = []
    for step in range(200):
        t0 = time.perf_counter()
        assert not ck.due(step)
        times.append(time.perf_counter() - t0)
    worst = comm.reduce(statistics.median(times), op=MPI.MAX, root=0)
    if rank == 0:
        print(f"due() median {worst * 1e6:.0f} us on {world} ranks", flush=True)
    ck.close()
