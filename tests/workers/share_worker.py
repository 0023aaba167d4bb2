"""Replicated state read once per node on restore. argv: ROOT
4 ranks as 2 nodes (TIERPOINT_NODE). Saves a row-sharded array and replicated plain arrays
(two big enough to be shared, one too small), restores on the same nodes, counting which
ranks read which arrays from storage (restore.read.read_item, every chunk read), and compares
bit-exactly. Then damages the big replicated array's chunk on node n1 and checks that the
restore fails on every rank with the array named (nobody is left waiting).
Prints SHARE-OK.
"""
import glob
import os
import sys

import numpy as np
from mpi4py import MPI

import tierpoint
from tierpoint.restore import read as restore_read

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402

W = MPI.COMM_WORLD
RANK, SIZE = W.Get_rank(), W.Get_size()
ROOT = sys.argv[1]
SHAPES = {"w": ((64, 33), "float64"), "rep.big": ((256, 300), "float32"),
          "rep.bf16": ((200, 400), "bfloat16"), "rep.small": ((10, 3), "int64")}
problems = []


def full(name):
    shape, dtype = SHAPES[name]
    bits = P.global_bits(name, shape, dtype)
    return bits if dtype == "bfloat16" else bits.view(np.dtype(dtype))


def state(fill):
    lo, n = P.split(64, SIZE, "even")[RANK]
    out = {"w": tierpoint.Shard(full("w")[lo:lo + n].copy() if fill else np.zeros((n, 33)),
                                (64, 33), (lo, 0)), "step": 5}
    for name in ("rep.big", "rep.bf16", "rep.small"):
        shape, dtype = SHAPES[name]
        data = full(name).copy() if fill else np.zeros_like(full(name))
        out[name] = P.as_torch(data, dtype) if dtype == "bfloat16" else data
    return out


read_by = []
original = restore_read.read_item


def counting(copies, array, item, target, rank=None):
    read_by.append(array.name)  # from the reader threads: list.append is atomic
    return original(copies, array, item, target, rank)


restore_read.read_item = counting

local = os.path.join(ROOT, "local", "{node}")
with tierpoint.Checkpointer(local, run="s") as ck:
    ck.save(5, state(True), blocking=True)
W.Barrier()

with tierpoint.Checkpointer(local, run="s") as ck:
    read_by.clear()
    out = ck.restore(state(False))
    lo, n = P.split(64, SIZE, "even")[RANK]
    if not np.array_equal(out["w"].data, full("w")[lo:lo + n]):
        problems.append(f"w on rank {RANK}")
    for name in ("rep.big", "rep.small"):
        if not np.array_equal(out[name], full(name)):
            problems.append(f"{name} on rank {RANK}")
    if not np.array_equal(P.torch_bits(out["rep.bf16"]), full("rep.bf16")):
        problems.append(f"rep.bf16 on rank {RANK}")
    readers = W.allgather(sorted(set(read_by)))
    for name in ("rep.big", "rep.bf16"):
        who = [r for r in range(SIZE) if name in readers[r]]
        if who != [0, 2]:  # the first rank of each node
            problems.append(f"{name} read from storage by ranks {who}, expected [0, 2]")
    who = [r for r in range(SIZE) if "rep.small" in readers[r]]
    if who != [0, 1, 2, 3]:
        problems.append(f"rep.small (below the sharing size) read by ranks {who}")
    W.Barrier()
    if RANK == 2:  # damage the big replicated array on node n1 (the copy ranks 2, 3 read)
        for path in glob.glob(os.path.join(ROOT, "local", "n1", "s", "step_*", "rep.big", "c.*")):
            with open(path, "r+b") as f:
                f.seek(100)
                byte = f.read(1)
                f.seek(100)
                f.write(bytes([byte[0] ^ 0xFF]))
    W.Barrier()
    try:
        ck.restore(state(False))
        problems.append(f"rank {RANK}: the restore of a damaged replicated array succeeded")
    except tierpoint.CorruptCheckpointError as e:
        if "'rep.big'" not in str(e):
            problems.append(f"rank {RANK}: the error does not name the array: {e}")

P.report(problems, "SHARE")
