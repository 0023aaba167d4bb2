"""Test data whose values encode their global index, and the shardings used by the workers.

``global_bits`` gives the full array as its stored bit type: every element is a function of
its linear index and the array name (finite for float types), so any misplaced element is
caught by a bit-exact comparison.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

STORAGE = {"bool": np.bool_, "int8": np.int8, "uint8": np.uint8, "int16": np.int16,
           "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32, "int64": np.int64,
           "uint64": np.uint64, "float16": np.uint16, "bfloat16": np.uint16,
           "float32": np.uint32, "float64": np.uint64}
# Clear the top exponent bit of float types so every pattern is a finite number.
FINITE_MASK = {"float16": 0x3FFF, "bfloat16": 0x3FFF, "float32": 0x3FFFFFFF,
               "float64": 0x3FFFFFFFFFFFFFFF}


def _c(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy that keeps 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    return np.array(a, copy=True, order="C")


def global_bits(name: str, shape, dtype: str) -> np.ndarray:
    seed = zlib.crc32(name.encode())
    lin = np.arange(math.prod(shape), dtype=np.uint64).reshape(shape)
    mixed = lin * np.uint64(2654435761) + np.uint64(seed)
    if dtype == "bool":
        return ((mixed >> np.uint64(7)) & np.uint64(1)).astype(np.bool_)
    bits = STORAGE[dtype]
    width = np.dtype(bits).itemsize * 8
    # Low bits carry the index itself so elements of one (small) array are distinct.
    val = (lin + np.uint64(seed)) if width >= 32 else mixed
    if dtype in FINITE_MASK:
        val = val & np.uint64(FINITE_MASK[dtype])
    return (val & np.uint64((1 << width) - 1 if width < 64 else 0xFFFFFFFFFFFFFFFF)).astype(bits)


def as_torch(bits: np.ndarray, dtype: str):
    import torch
    if dtype in ("bfloat16", "float16", "float32", "float64"):
        signed = {2: np.int16, 4: np.int32, 8: np.int64}[bits.dtype.itemsize]
        return torch.from_numpy(_c(bits).view(signed)).view(getattr(torch, dtype))
    if dtype == "uint16":
        return torch.from_numpy(_c(bits).view(np.int16)).view(torch.uint16)
    return torch.from_numpy(_c(bits))


def torch_bits(t) -> np.ndarray:
    from tierpoint.format.dtypes import tensor_bits
    return _c(tensor_bits(t.detach().cpu()))


def split(extent: int, parts: int, how: str = "chunk") -> list[tuple[int, int]]:
    """(offset, size) of each part: 'chunk' like torch.chunk (ceil sizes, trailing parts may
    be empty), 'even' like numpy.array_split, 'skew' deliberately unequal."""
    if how == "chunk":
        step = -(-extent // parts) if parts else extent
        out = []
        for i in range(parts):
            lo = min(i * step, extent)
            out.append((lo, min(step, extent - lo)))
        return out
    if how == "even":
        base, extra = divmod(extent, parts)
        sizes = [base + (1 if i < extra else 0) for i in range(parts)]
    else:  # skew: weights 1, 2, 3, ...
        weights = list(range(1, parts + 1))
        sizes = [extent * w // sum(weights) for w in weights]
        sizes[-1] += extent - sum(sizes)
    offs = np.cumsum([0] + sizes[:-1]).tolist()
    return list(zip(offs, sizes))


def mesh_shape(n: int) -> tuple[int, int]:
    for a in range(int(math.isqrt(n)), 0, -1):
        if n % a == 0:
            return (n // a, a)
    return (n, 1)


def box_for(layout: str, shape, n: int, rank: int):
    """(offset, shape) of ``rank``'s box of an array of ``shape`` sharded over ``n`` ranks."""
    shape = tuple(shape)
    if layout == "whole":
        return (0,) * len(shape), shape
    if layout in ("rows", "rows_even", "rows_skew", "cols", "cols_skew", "last"):
        dim = {"rows": 0, "rows_even": 0, "rows_skew": 0, "cols": 1, "cols_skew": 1,
               "last": len(shape) - 1}[layout]
        how = "skew" if layout.endswith("skew") else ("even" if layout.endswith("even") else "chunk")
        off, size = split(shape[dim], n, how)[rank]
        o = [0] * len(shape)
        s = list(shape)
        o[dim], s[dim] = off, size
        return tuple(o), tuple(s)
    if layout in ("grid", "grid_t"):
        a, b = mesh_shape(n)
        if layout == "grid_t":
            a, b = b, a
        i, j = divmod(rank, b)
        (o0, s0), (o1, s1) = split(shape[0], a, "even")[i], split(shape[1], b, "chunk")[j]
        return (o0, o1) + (0,) * (len(shape) - 2), (s0, s1) + tuple(shape[2:])
    raise ValueError(layout)


def report(problems: list[str], tag: str, ok_detail: str = "") -> None:
    """Gather every rank's problems on rank 0 and print ``<TAG>-OK <detail>`` or
    ``<TAG>-FAIL`` with the list; a failure exits non-zero (collective over COMM_WORLD)."""
    import sys

    from mpi4py import MPI
    gathered = MPI.COMM_WORLD.gather(problems, root=0)
    if MPI.COMM_WORLD.Get_rank() == 0:
        flat = [p for ps in gathered for p in ps]
        if flat:
            print(f"{tag}-FAIL", *flat, sep="\n  ", flush=True)
            sys.exit(1)
        print(f"{tag}-OK {ok_detail}".rstrip(), flush=True)
