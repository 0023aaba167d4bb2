"""A content fingerprint of an array that does not depend on how it was sharded or chunked.

Definition: for an array ``x`` of any shape, with each element read as the unsigned integer of
its stored bits (bfloat16 as uint16, float32 as uint32, bool as uint8, ...; a 16-byte element
as its low word plus its high word times an odd constant, mod 2**64),

    F(x) = sum over every index i of  bits(x[i]) * w(i)   (mod 2**64),
    w(i) = T_0[i_0] * T_1[i_1] * ... * T_{k-1}[i_{k-1}]   (mod 2**64),

where ``T_d[n]`` is a fixed pseudorandom odd 64-bit number of (d, n) (splitmix64), and for a
0-d array w() = T_0[0]. Because F is a sum over elements, the contributions of disjoint boxes
add up: every rank fingerprints the chunks it writes, and the array's fingerprint is the sum
of its chunks' (mod 2**64), whatever the sharding, chunk grid or world size. Because ``w`` is
a product of per-dimension factors, a box's contribution is a chain of matrix-vector products:
one contiguous axis first (the O(size) step), then the others (cheap).

Two backends compute it, tested equal to each other and to :func:`fingerprint_reference`:
``numpy`` (``einsum`` over the last axis, then the next) and, when the optional C extension
``_fingerprint`` was built (setup.py; any C compiler and Python's headers), ``native:<isa>``,
which does the O(size) step in C with the GIL released, for the best instruction set the CPU
runs (AVX-512, AVX2 or baseline x86-64). Median CPU seconds per GiB on this 2-core AMD EPYC VM
(64 MiB arrays of 4096-element rows, one thread, bench/fingerprint_speed.py, one run):

    bits      numpy   AVX-512   AVX2   baseline
    uint16    0.38    0.087     0.099  0.20      (bfloat16)
    uint32    0.26    0.065     0.076  0.10      (float32)
    uint64    0.12    0.053     0.060  0.062
    1-d uint16, 16 MiB: numpy 7.7 (its weights dominate), AVX-512 0.23, AVX2 0.73

What it guarantees: every weight is odd, so a change of any single element always changes F;
the fingerprint also covers each element's position. What it does not: it is linear and not
cryptographic. Someone who wants two different arrays with one fingerprint can construct
them, and two random multi-element changes collide with a probability of about 2**-64 only
heuristically. The checkpoint digest (SHA-256 Merkle root) is the cryptographic check; the
fingerprint is for comparing contents across save layouts without reading data.
"""
from __future__ import annotations

import importlib
import itertools
import math

import numpy as np

try:  # the optional C extension (setup.py), a leaf that imports nothing; without it NumPy's
    _native = importlib.import_module("._fingerprint", __package__)
except ImportError:  # an install without a C compiler
    _native = None

MASK = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ROWS_PER_BLOCK_BYTES = 4 << 20  # dim-0 blocks of about this many input bytes
# Every way to compute F on this machine: "numpy", then "native:<isa>" per instruction set the
# C extension runs here (best first). DEFAULT_BACKEND is the fastest.
BACKENDS = ("numpy",) + tuple(f"native:{isa}" for isa in (_native.ISAS if _native else ()))
DEFAULT_BACKEND = BACKENDS[1] if len(BACKENDS) > 1 else "numpy"
_MERGE_BELOW_COLS = 256  # the native path merges trailing contiguous axes into rows this long
_MERGE_MAX_COLS = 1 << 16  # ... as long as the merged weights stay this small
_OUT_BLOCK = 1 << 16  # native partial sums per call (512 KiB of uint64)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def weights(dim: int, start: int, count: int) -> np.ndarray:
    """T_dim[start:start+count]: odd pseudorandom uint64 factors of one dimension."""
    n = np.arange(start, start + count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        seed = np.uint64((dim + 1) * 0x632BE59BD9B4E019 & MASK)
        return _splitmix(n * np.uint64(0xD6E8FEB86659FD93) + seed) | np.uint64(1)


def _unsigned_bits(bits: np.ndarray) -> np.ndarray:
    """The elements as unsigned integers of their own width (a view, no copy)."""
    if bits.dtype == np.bool_:
        return bits.view(np.uint8)
    if bits.dtype.itemsize == 16:  # complex128: the two 64-bit words, folded into one
        words = np.ascontiguousarray(bits).view(np.uint64).reshape(bits.shape + (2,))
        with np.errstate(over="ignore"):
            return words[..., 0] + words[..., 1] * np.uint64(0xA24BAED4963EE407)
    return bits.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[bits.dtype.itemsize])


def _contract(block: np.ndarray, factors: list[np.ndarray]) -> int:
    """sum(block[i] * prod_d factors[d][i_d]) mod 2**64 for an n-d block (n >= 1)."""
    v = block
    for d in range(block.ndim - 1, -1, -1):  # contract the last axis with its factors
        v = np.einsum("...j,j->...", v, factors[d], dtype=np.uint64)
    return int(v) & MASK


def fingerprint_box(bits: np.ndarray, offset, backend: str | None = None) -> int:
    """The contribution to F of the box ``bits`` (any strides) placed at global ``offset``.

    ``backend`` (one of BACKENDS; default DEFAULT_BACKEND) only says how it is computed: every
    backend gives the same number."""
    offset = tuple(int(o) for o in offset)
    if len(offset) != bits.ndim:
        raise ValueError(f"offset {offset} does not match a {bits.ndim}-d box")
    backend = DEFAULT_BACKEND if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"fingerprint backend {backend!r} is not one of {BACKENDS} here")
    values = _unsigned_bits(np.asarray(bits))
    if values.ndim == 0:
        return int(values) * int(weights(0, 0, 1)[0]) & MASK
    if values.size == 0:
        return 0
    if backend != "numpy":
        total = _native_box(values, offset, backend.split(":", 1)[1])
        if total is not None:
            return total
    return _numpy_box(values, offset)


def _numpy_box(values: np.ndarray, offset: tuple) -> int:
    factors = [weights(d, o, n) for d, (o, n) in enumerate(zip(offset, values.shape))]
    row_bytes = max(1, values[:1].nbytes)
    rows = max(1, _ROWS_PER_BLOCK_BYTES // row_bytes)
    total = 0
    for r in range(0, values.shape[0], rows):  # blocks keep einsum's temporaries small
        total += _contract(values[r:r + rows], [factors[0][r:r + rows]] + factors[1:])
    return total & MASK


def _native_weights(dim: int, start: int, count: int, isa: str) -> np.ndarray:
    out = np.empty(count, np.uint64)
    _native.fill_weights(dim, start, out, isa)
    return out


def _native_box(values: np.ndarray, offset: tuple, isa: str) -> int | None:
    """F's contribution of a non-empty n-d box with the C extension doing the O(size) step, or
    None when no axis is contiguous (the caller then uses NumPy).

    The sum over elements does not care in which order the axes are contracted, so: axes of
    length 1 become a scalar factor, the contiguous axis moves last (reversed with its weights
    if its stride is negative), short contiguous trailing axes merge into one with the
    outer product of their weights (so rows are long enough for the vector loops), C
    contracts that axis, then the few partial sums axis by axis (``_native_chain``)."""
    scale, axes, keep = 1, [], []
    for d, (o, n) in enumerate(zip(offset, values.shape)):
        if n == 1:
            scale = scale * int(_native_weights(d, o, 1, isa)[0]) & MASK
        else:
            axes.append((d, o, n))
        keep.append(0 if n == 1 else slice(None))
    v = values[tuple(keep) + (...,)]  # (the ``...`` keeps a 0-d result an array)
    if v.ndim == 0:
        return int(v) * scale & MASK
    unit = [k for k in range(v.ndim) if abs(v.strides[k]) == v.itemsize]
    if not unit:
        return None
    k = unit[-1]
    if k != v.ndim - 1:
        v, axes = np.moveaxis(v, k, -1), axes[:k] + axes[k + 1:] + [axes[k]]
    d, o, n = axes[-1]
    if v.ndim == 1 and v.strides[0] > 0:  # one line: C makes its weights as it goes
        return _native.contract_line(v, d, o, isa) * scale & MASK
    w = _native_weights(d, o, n, isa)
    if v.strides[-1] < 0:
        v, w = v[..., ::-1], np.ascontiguousarray(w[::-1])
    factors = [_native_weights(d, o, n, isa) for d, o, n in axes[:-1]]
    while (v.ndim >= 2 and v.shape[-1] < _MERGE_BELOW_COLS
           and v.shape[-2] * v.shape[-1] <= _MERGE_MAX_COLS
           and v.strides[-2] == v.shape[-1] * v.itemsize):
        w = np.multiply.outer(factors.pop(), w).ravel()  # weight of (i, j): f[i] * w[j]
        v = v.reshape(v.shape[:-2] + (-1,))  # a view: the two axes are one contiguous run
    if v.ndim == 1:
        return _native_chain(v, [w], isa) * scale & MASK
    lead = v.shape[:-1]
    per_row0 = math.prod(lead[1:])
    step = max(1, _OUT_BLOCK // per_row0)
    out = np.empty(min(step, lead[0]) * per_row0, np.uint64)
    total = 0
    for r in range(0, lead[0], step):  # blocks bound the partial sums' memory
        block = v[r:r + step]
        part = out[:block.shape[0] * per_row0]
        _native.contract_last(block, w, part, isa)
        total += _native_chain(part.reshape(block.shape[:-1]),
                               [factors[0][r:r + step]] + factors[1:], isa)
    return total * scale & MASK


def _native_chain(v: np.ndarray, factors: list, isa: str) -> int:
    """:func:`_contract` with the C kernel: the last axis first, until one number is left."""
    for f in reversed(factors):
        out = np.empty(max(1, math.prod(v.shape[:-1])), np.uint64)
        _native.contract_last(v, f, out, isa)
        v = out.reshape(v.shape[:-1])
    return int(v)


def fingerprint_reference(bits: np.ndarray, offset) -> int:
    """Element-by-element reference of :func:`fingerprint_box` (Python integers)."""
    values = _unsigned_bits(np.asarray(bits))
    offset = tuple(int(o) for o in offset)
    if values.ndim == 0:
        return int(values) * int(weights(0, 0, 1)[0]) & MASK
    total = 0
    for idx in itertools.product(*(range(n) for n in values.shape)):
        w = 1
        for d, i in enumerate(idx):
            w = w * int(weights(d, offset[d] + i, 1)[0]) & MASK
        total += int(values[idx]) * w
    return total & MASK


def combine(contributions) -> int:
    """F of an array from the contributions of disjoint boxes that cover it."""
    return sum(int(c) for c in contributions) & MASK
