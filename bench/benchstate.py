"""The benchmarks' state dict: shapes, dtypes, and a generator any rank can evaluate anywhere.

~200 2-D tensors log-spread from 4 KiB to 256 MiB, 40% of the bytes bfloat16 and the rest
float32, ``gib`` GiB in all. Values are a pure function of (tensor seed, row block), so a
rank can generate or check any part of any tensor without communicating: save-time shards
are row blocks (``rows_of``); restores check row blocks or column bands (``cols_of``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
GB = 1e9


@dataclass(frozen=True)
class TensorSpec:
    name: str
    seed: int
    rows: int
    cols: int
    dtype: str  # "float32" | "bfloat16"

    @property
    def itemsize(self) -> int:
        return 4 if self.dtype == "float32" else 2

    @property
    def nbytes(self) -> int:
        return self.rows * self.cols * self.itemsize


def _log_sizes(n: int, lo: float, hi: float, total: float) -> list[float]:
    """n sizes from lo to hi, spread as lo*(hi/lo)**(u**p), u uniform on [0, 1], summing to total.

    p is found by bisection (p=1 is log-uniform; larger p puts more tensors at the small end).
    """
    ratio = hi / lo

    def sizes(p: float) -> list[float]:
        return [lo * ratio ** ((i / (n - 1)) ** p) for i in range(n)]

    a, b = 1e-3, 1e3
    if sum(sizes(a)) < total or sum(sizes(b)) > total:
        raise SystemExit(f"cannot spread {n} tensors of {lo:.0f}..{hi:.0f} B over {total:.0f} B")
    for _ in range(200):
        m = math.sqrt(a * b)
        if sum(sizes(m)) > total:
            a = m
        else:
            b = m
    return sizes(math.sqrt(a * b))


def make_specs(gib: float, n: int = 200, bf16_share: float = 0.4) -> list[TensorSpec]:
    """Deterministic tensor list for a state of about ``gib`` GiB (exact total is reported).

    Rows are divisible by 4 and columns are powers of two >= 8, so row blocks and column
    bands for 1, 2 and 4 ranks are even."""
    total = gib * GIB
    lo = 4 * KIB
    hi = min(256 * MIB, total / 8)  # 256 MiB at 2 GiB; smaller states cap the largest tensor
    sizes = sorted(_log_sizes(n, lo, hi, total), reverse=True)
    # Dtypes: largest first, each tensor goes to the class that is furthest below its share.
    dtypes, got = [], {"bfloat16": 0.0, "float32": 0.0}
    for s in sizes:
        want_bf = bf16_share * (got["bfloat16"] + got["float32"] + s) - got["bfloat16"]
        want_f32 = (1 - bf16_share) * (got["bfloat16"] + got["float32"] + s) - got["float32"]
        d = "bfloat16" if want_bf >= want_f32 else "float32"
        dtypes.append(d)
        got[d] += s
    specs = []
    # A fixed permutation so the dict order is not sorted by size.
    order = sorted(range(n), key=lambda i: (i * 7919) % n)
    for k, i in enumerate(order):
        s, d = sizes[i], dtypes[i]
        item = 4 if d == "float32" else 2
        nelem = max(1, round(s / item))
        cols = 2 ** int(math.log2(max(1.0, math.sqrt(nelem))))
        cols = max(8, min(8192, cols))
        rows = max(4, 4 * round(nelem / cols / 4))  # divisible by 1, 2 and 4 ranks
        specs.append(TensorSpec(f"p{k:03d}", 1000 + k, rows, cols, d))
    return specs


def rows_of(rows: int, rank: int, world: int) -> tuple[int, int]:
    """(offset, count) of ``rank``'s rows when ``rows`` are split evenly over ``world`` ranks."""
    per = rows // world
    return rank * per, per


cols_of = rows_of  # the same even split, of the columns (a Shard(1) layout)


def local_box(spec: TensorSpec, rank: int, world: int, dim: int):
    """((row0, col0), (nrows, ncols)) of ``rank``'s shard in a ``world``-rank Shard(dim)."""
    if dim == 0:
        off, n = rows_of(spec.rows, rank, world)
        return (off, 0), (n, spec.cols)
    off, n = cols_of(spec.cols, rank, world)
    return (0, off), (spec.rows, n)


BLOCK_ELEMS = 256 * KIB  # the generator's unit: blocks of whole rows, ~1 MiB of float32


def block_rows(spec: TensorSpec) -> int:
    return max(1, BLOCK_ELEMS // spec.cols)


def gen_block(spec: TensorSpec, b: int):
    """Float32 values in [-0.5, 0.5) for row block ``b`` of a tensor (a pure function of the
    tensor's seed and b, so any rank can produce or check any part of any tensor)."""
    import numpy as np
    import torch

    br = block_rows(spec)
    n = min(spec.rows, (b + 1) * br) - b * br
    v = np.random.default_rng([spec.seed, b]).random(n * spec.cols, dtype=np.float32)
    v -= 0.5
    return torch.from_numpy(v).view(n, spec.cols)


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def fill_rows(t, spec: TensorSpec, row0: int, col0: int = 0) -> None:
    """Fill ``t`` (global rows row0 .. row0+len(t), columns col0 .. col0+width) from the
    generator."""
    br = block_rows(spec)
    n, w = t.shape
    for b in range(row0 // br, (row0 + n + br - 1) // br):
        blk = gen_block(spec, b)
        lo, hi = max(row0, b * br), min(row0 + n, b * br + blk.shape[0])
        t[lo - row0:hi - row0].copy_(blk[lo - b * br:hi - b * br, col0:col0 + w])


def expected_row(spec: TensorSpec, row: int, dtype, col0: int = 0, width: int | None = None):
    br = block_rows(spec)
    full = gen_block(spec, row // br)[row % br]
    return full[col0:col0 + (spec.cols if width is None else width)].to(dtype)


def _same(a, b) -> bool:
    import torch

    if a.dtype == torch.bfloat16:
        a, b = a.view(torch.int16), b.view(torch.int16)
    return torch.equal(a, b)


def check_rows(t, spec: TensorSpec, row0: int, col0: int = 0) -> str | None:
    """Compare ``t`` (global rows row0.., columns col0..) with the generator, bit for bit:
    whole when small, else 4 rows (those ``poison_rows`` zeroes).

    Returns None when equal, else a description of the first difference."""
    import torch

    nrows, width = t.shape
    where = f"{spec.name} rows {row0}..{row0 + nrows} cols {col0}..{col0 + width}"
    if t.numel() * spec.itemsize <= 256 * KIB:
        want = torch.empty_like(t)
        fill_rows(want, spec, row0, col0)
        return None if _same(t, want) else f"{where} differ"
    for r in sorted({0, nrows // 3, nrows // 2, nrows - 1}):
        want = expected_row(spec, row0 + r, t.dtype, col0, width)
        if not _same(t[r], want):
            return f"{where}: row {row0 + r}: got {t[r][:4].tolist()} want {want[:4].tolist()}"
    return None


def poison_rows(t, spec: TensorSpec) -> None:
    """Zero the rows check_rows looks at, so a restore that writes nothing is caught."""
    nrows = t.shape[0]
    if t.numel() * spec.itemsize <= 256 * KIB:
        t.zero_()
    else:
        for r in {0, nrows // 3, nrows // 2, nrows - 1}:
            t[r].zero_()
