"""The S3 server killed during a background drain (tests/test_s3_failures.py).
argv: train ROOT URL  |  drain ROOT URL
train: 2 ranks as 2 nodes save steps 1..4 (drain_every=2); the test's TIERPOINT_FAULT kills
the server during step 2's background drain (its first upload). Every rank prints the
CheckpointWarnings it was given (``WARNED <rank> <message>``) and its local and capacity
steps.
drain: the server is back: drain step 2, then restore steps 2 and 4 bit-exactly (the values
encode their global index). Prints S3KILL-OK <mode>.
"""
import os
import sys
import warnings

import torch
from mpi4py import MPI

import tierpoint
from tierpoint.tiers import s3store

s3store.MULTIPART_BYTES = 5 << 20  # S3's smallest part: each part's data file in 2 parts
MODE, ROOT, URL = sys.argv[1:4]
W = MPI.COMM_WORLD
RANK, SIZE = W.Get_rank(), W.Get_size()
ROWS, COLS = 512, 4096  # 8 MiB of float32 per rank


def full(step):
    return torch.arange(ROWS * COLS * SIZE, dtype=torch.float32).reshape(ROWS * SIZE, COLS) + \
        step * 1e6


def state(step, fill=True):
    part = full(step)[RANK * ROWS:(RANK + 1) * ROWS].clone() if fill else \
        torch.zeros(ROWS, COLS)
    return {"w": tierpoint.Shard(part, (ROWS * SIZE, COLS), (RANK * ROWS, 0)), "step": step}


ck = tierpoint.Checkpointer(os.path.join(ROOT, "local", "{node}"), persistent=URL, run="r",
                            policy=tierpoint.Policy(keep_local=4, drain_every=2))
problems = []
if MODE == "train":
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in (1, 2, 3, 4):
            ck.save(step, state(step)).wait()  # step 2's drain fails; saves go on
        ck.wait()
    for w in caught:
        if issubclass(w.category, tierpoint.CheckpointWarning):
            print(f"WARNED {RANK} {' '.join(str(w.message).split())}", flush=True)
    print(f"STEPS {RANK} local {ck.steps()}", flush=True)
    ck.close(drain_newest=False)
else:
    ck.drain(2)
    if 2 not in ck.capacity_steps():
        problems.append(f"rank {RANK}: capacity steps {ck.capacity_steps()}")
    ck.close(drain_newest=False)
    import shutil
    W.Barrier()
    if RANK == 0:
        shutil.rmtree(os.path.join(ROOT, "local"))  # only the S3 copies are left
    W.Barrier()
    ck = tierpoint.Checkpointer(os.path.join(ROOT, "local", "{node}"), persistent=URL, run="r")
    for step in (2, 4) if 4 in ck.capacity_steps() else (2,):
        st = state(step, False)
        ck.restore(st, step=step)
        if not torch.equal(st["w"].data, full(step)[RANK * ROWS:(RANK + 1) * ROWS]):
            problems.append(f"rank {RANK}: step {step} differs")
    ck.close(drain_newest=False)
for p in problems:
    print("PROBLEM", p, flush=True)
if not problems:
    print(f"S3KILL-OK {MODE}", flush=True)
