"""Save on N ranks x restore on M ranks, for every N, M in 1..4, in one 4-rank launch.

Sub-communicators of the first N (or M) ranks play the saving (restoring) worlds. Each
array is saved with one sharding and restored with another; every value encodes its global
index and is compared bit-exactly. Prints MATRIX-OK <pairs> on success.
"""
import json
import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402
from patterns import _c  # noqa: E402

import tierpoint  # noqa: E402

ROOT = sys.argv[1]
WORLD = MPI.COMM_WORLD
RANK = WORLD.Get_rank()

# name, global shape, dtype, save layout, restore layout, container ("torch"/"numpy")
ARRAYS = [
    ("model.embed.weight", (37, 12), "float32", "rows", "cols", "torch"),
    ("model.layers.0.w", (20, 33), "bfloat16", "cols", "rows", "torch"),
    ("model.layers.0.b", (33,), "float16", "rows_skew", "rows_even", "torch"),
    ("blocks/grid", (24, 18), "float64", "grid", "grid_t", "numpy"),
    ("blocks/uneven", (23, 7), "int32", "rows_skew", "grid", "numpy"),
    ("cube", (6, 5, 9), "int64", "last", "rows", "torch"),
    ("flags", (17, 3), "bool", "rows", "cols_skew", "numpy"),
    ("bytes", (40,), "uint8", "rows_even", "rows_skew", "numpy"),
    ("small.int8", (9, 2), "int8", "cols", "rows", "torch"),
    ("replicated.table", (11, 4), "float32", "whole", "rows", "torch"),
    ("replicated.big", (64, 16), "bfloat16", "whole", "cols", "torch"),
    ("counter", (), "int64", "whole", "whole", "torch"),
    ("empty", (0, 5), "float32", "rows", "rows", "numpy"),
    ("u32", (13, 13), "uint32", "grid_t", "grid", "numpy"),
    # Big enough that their chunks are sub-chunked (format version 4, over 64 KiB a chunk
    # even when 4 ranks save): a reader of another band reads inner chunks by byte range.
    ("sub.rows", (512, 256), "float32", "rows", "cols", "torch"),
    ("sub.cols", (384, 512), "bfloat16", "cols", "rows_skew", "torch"),
    ("sub.grid", (264, 300), "float32", "grid", "cols_skew", "numpy"),
]
SUBCHUNKED = ("sub.rows", "sub.cols", "sub.grid")


def make_leaf(name, shape, dtype, layout, n, rank, container, fill=True):
    full = P.global_bits(name, shape, dtype)
    off, shp = P.box_for(layout, shape, n, rank)
    region = tuple(slice(o, o + s) for o, s in zip(off, shp))
    bits = full[region] if fill else np.zeros(shp, dtype=full.dtype)
    if container == "torch":
        data = P.as_torch(_c(bits), dtype)
        if fill and len(shp) == 2 and shp[0] > 1 and shp[1] > 1:
            # Non-contiguous on purpose: a transposed copy, transposed back.
            data = data.t().contiguous().t()
    else:
        data = _c(bits) if dtype != "bfloat16" else None
        if data is None:
            import ml_dtypes
            data = _c(bits).view(ml_dtypes.bfloat16)
        elif dtype == "float16":
            data = data.view(np.float16)
        elif dtype in ("float32", "float64"):
            data = data.view({"float32": np.float32, "float64": np.float64}[dtype])
    if layout == "whole":
        return data
    return tierpoint.Shard(data, shape, off)


def leaf_bits(leaf):
    data = leaf.data if isinstance(leaf, tierpoint.Shard) else leaf
    if isinstance(data, np.ndarray):
        return _c(data).view(P.STORAGE[str(data.dtype)] if str(data.dtype) in P.STORAGE else data.dtype)
    return P.torch_bits(data)


def state_for(n, rank, side, fill):
    state = {"meta": {"epoch": 3, "name": "matrix", "lr": [1e-3, 0.5], "none": None}}
    for name, shape, dtype, save_l, rest_l, cont in ARRAYS:
        layout = save_l if side == "save" else rest_l
        leaf = make_leaf(name, shape, dtype, layout, n, rank, cont, fill)
        node = state
        parts = name.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = leaf
    return state


def check(restored, n_save, m, rank):
    bad = []
    for name, shape, dtype, _, rest_l, cont in ARRAYS:
        node = restored
        for p in name.split("/"):
            node = node[p]
        got = leaf_bits(node)
        off, shp = P.box_for(rest_l, shape, m, rank)
        want = P.global_bits(name, shape, dtype)[tuple(slice(o, o + s) for o, s in zip(off, shp))]
        if got.shape != want.shape or not np.array_equal(got.view(want.dtype), want):
            bad.append(f"{name} (saved on {n_save}, restored on {m}, rank {rank})")
    if restored["meta"] != {"epoch": 3, "name": "matrix", "lr": [1e-3, 0.5], "none": None}:
        bad.append(f"meta {restored['meta']}")
    return bad


def sub(n):
    return WORLD.Split(0 if RANK < n else MPI.UNDEFINED, RANK)


failures = []
for n in range(1, 5):
    c = sub(n)
    if c != MPI.COMM_NULL:
        with tierpoint.Checkpointer(os.path.join(ROOT, f"n{n}"), run="m", comm=c) as ck:
            ck.save(7, state_for(n, RANK, "save", True), metadata={"saved_on": n}).wait()
            ck.save(9, state_for(n, RANK, "save", True)).wait()
            if RANK == 0:  # the big arrays really are sub-chunked
                for name in SUBCHUNKED:
                    with open(os.path.join(ck.step_dir(7), name, "zarr.json")) as f:
                        codec = json.load(f)["codecs"][0]["name"]
                    if codec != "sharding_indexed":
                        failures.append(f"{name} saved on {n} has codec {codec}")
        c.Free()
    WORLD.Barrier()

pairs = 0
for m in range(1, 5):
    c = sub(m)
    if c != MPI.COMM_NULL:
        for n in range(1, 5):
            with tierpoint.Checkpointer(os.path.join(ROOT, f"n{n}"), run="m", comm=c) as ck:
                for step in (None, 7):
                    tpl = state_for(m, RANK, "restore", False)
                    out = ck.restore(tpl, step=step)
                    failures += check(out, n, m, RANK)
                    pairs += 1
        c.Free()
    WORLD.Barrier()

P.report(failures, "MATRIX", str(pairs))
