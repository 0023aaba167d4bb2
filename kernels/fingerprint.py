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
a product of per-dimension factors, a box's contribution is a chain of matrix-vector products
(``einsum`` over the last axis, then the next), several GB/s in NumPy.

What it guarantees: every weight is odd, so a change of any single element always changes F;
the fingerprint also covers each element's position. What it does not: it is linear and not
cryptographic. Someone who wants two different arrays with one fingerprint can construct
them, and two random multi-element changes collide with a probability of about 2**-64 only
heuristically. The checkpoint digest (SHA-256 Merkle root) is the cryptographic check; the
fingerprint is for comparing contents across save layouts without reading data.
"""
from __future__ import annotations

import itertools

import numpy as np

MASK = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ROWS_PER_BLOCK_BYTES = 4 << 20  # dim-0 blocks of about this many input bytes


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


def fingerprint_box(bits: np.ndarray, offset) -> int:
    """The contribution to F of the box ``bits`` (any strides) placed at global ``offset``."""
    offset = tuple(int(o) for o in offset)
    if len(offset) != bits.ndim:
        raise ValueError(f"offset {offset} does not match a {bits.ndim}-d box")
    values = _unsigned_bits(np.asarray(bits))
    if values.ndim == 0:
        return int(values) * int(weights(0, 0, 1)[0]) & MASK
    if values.size == 0:
        return 0
    factors = [weights(d, o, n) for d, (o, n) in enumerate(zip(offset, values.shape))]
    row_bytes = max(1, values[:1].nbytes)
    rows = max(1, _ROWS_PER_BLOCK_BYTES // row_bytes)
    total = 0
    for r in range(0, values.shape[0], rows):  # blocks keep einsum's temporaries small
        total += _contract(values[r:r + rows], [factors[0][r:r + rows]] + factors[1:])
    return total & MASK


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
