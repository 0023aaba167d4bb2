"""Each data-path kernel equals its reference, on random shapes, strides, dtypes and values.

Values are random bits (floats include NaNs of every payload), so results are compared as
bytes, never as numbers. Tiny block sizes force every branch of the blocked loops: blocks of
one row, blocks split inside a row, and rows split across many blocks.
"""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierpoint.kernels import (BLOCK_BYTES, copy_region, copy_region_reference, crc32c,
                               crc32c_reference, decode_chunk, decode_chunk_reference,
                               encode_chunk, encode_chunk_reference)

DTYPES = [np.uint8, np.int16, np.uint16, np.float32, np.float64, np.int64]
BLOCKS = [1, 7, 64, 1000, BLOCK_BYTES]
SETTINGS = settings(max_examples=150, deadline=None)

chunk_shapes = st.lists(st.integers(1, 9), min_size=0, max_size=4).map(tuple)
dtypes = st.sampled_from(DTYPES).map(np.dtype)
seeds = st.integers(0, 2**32 - 1)


def random_bits(rng, shape, dtype) -> np.ndarray:
    """A C-contiguous array of ``shape`` whose bytes are all random."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return rng.integers(0, 256, size=n, dtype=np.uint8).view(dtype).reshape(shape)


@st.composite
def layouts(draw, ndim: int):
    """How a view sits in a bigger array: axis order, step, offset and flip per dim."""
    ints = lambda lo, hi: st.lists(st.integers(lo, hi), min_size=ndim, max_size=ndim)  # noqa: E731
    return (draw(st.permutations(range(ndim))), draw(ints(1, 3)), draw(ints(0, 2)),
            draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim)))


def strided_view(layout, shape, dtype, rng) -> tuple[np.ndarray, np.ndarray]:
    """(storage, view): random ``storage`` and a view of it of ``shape``, with the axes of
    ``layout`` (permuted, stepped, offset, reversed; the identity layout is C-contiguous)."""
    perm, steps, offsets, flips = layout
    lengths = [o + s * n for o, s, n in zip(offsets, steps, shape)]
    storage = random_bits(rng, tuple(lengths[p] for p in perm), dtype)
    base = storage.transpose(np.argsort(perm).astype(int).tolist())  # base.shape == lengths
    # (the trailing ``...`` keeps a 0-d view an array rather than a numpy scalar)
    view = base[tuple(slice(o, o + s * n, s) for o, s, n in zip(offsets, steps, shape)) + (...,)]
    view = view[tuple(slice(None, None, -1) if f else slice(None) for f in flips) + (...,)]
    assert view.shape == tuple(shape)
    return storage, view


def payload_bytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def trailer_crc(encoded: bytes) -> int:
    return struct.unpack("<I", encoded[-4:])[0]


# ----------------------------------------------------------------------------- encode

@SETTINGS
@given(data=st.data(), chunk_shape=chunk_shapes, dtype=dtypes, seed=seeds,
       block=st.sampled_from(BLOCKS), full=st.booleans(),
       dst_kind=st.sampled_from(["numpy", "misaligned", "bytearray"]))
def test_encode_matches_reference(data, chunk_shape, dtype, seed, block, full, dst_kind):
    region_shape = chunk_shape if full else tuple(
        data.draw(st.integers(0, c)) for c in chunk_shape)
    rng = np.random.default_rng(seed)
    _, region = strided_view(data.draw(layouts(len(chunk_shape))), region_shape, dtype, rng)
    expected = encode_chunk_reference(region, chunk_shape)
    assert len(expected) == payload_bytes(chunk_shape, dtype) + 4

    # dst starts as random garbage: every byte of it must be written.
    garbage = random_bits(rng, (len(expected) + 1,), np.uint8)
    if dst_kind == "bytearray":
        dst = bytearray(garbage[:-1].tobytes())
    else:
        dst = garbage[1:] if dst_kind == "misaligned" else garbage[:-1]
    crc = encode_chunk(dst, region, chunk_shape, block_bytes=block)
    assert bytes(dst) == expected
    assert crc == trailer_crc(expected)


@pytest.mark.parametrize("block", [BLOCK_BYTES, 4096])
def test_encode_rows_bigger_than_a_block(block):
    # rows of 280 KB > BLOCK_BYTES: the blocks split inside each row
    rng = np.random.default_rng(7)
    chunk_shape = (3, 70_000)
    for region_shape in [(3, 70_000), (2, 65_001), (3, 1), (0, 70_000)]:
        region = random_bits(rng, (region_shape[1], region_shape[0]), np.float32).T
        dst = random_bits(rng, (payload_bytes(chunk_shape, np.float32) + 4,), np.uint8)
        crc = encode_chunk(dst, region, chunk_shape, block_bytes=block)
        expected = encode_chunk_reference(region, chunk_shape)
        assert dst.tobytes() == expected and crc == trailer_crc(expected)


# ----------------------------------------------------------------------------- decode

def as_kind(payload: bytes, kind: str, chunk_shape, dtype):
    if kind == "bytes":
        return payload
    if kind == "bytearray":
        return bytearray(payload)
    if kind == "memoryview":
        return memoryview(payload)
    if kind == "uint8":
        return np.frombuffer(payload, dtype=np.uint8)
    return np.frombuffer(payload, dtype=dtype).reshape(chunk_shape)  # "typed"


@SETTINGS
@given(data=st.data(), chunk_shape=chunk_shapes, dtype=dtypes, seed=seeds,
       block=st.sampled_from(BLOCKS),
       kind=st.sampled_from(["bytes", "bytearray", "memoryview", "uint8", "typed"]))
def test_decode_matches_reference(data, chunk_shape, dtype, seed, block, kind):
    starts = [data.draw(st.integers(0, c)) for c in chunk_shape]
    slices = tuple(slice(a, data.draw(st.integers(a, c))) for a, c in zip(starts, chunk_shape))
    part = tuple(s.stop - s.start for s in slices)
    layout = data.draw(layouts(len(chunk_shape)))
    rng = np.random.default_rng(seed)
    payload = random_bits(rng, (payload_bytes(chunk_shape, dtype),), np.uint8).tobytes()

    # Two identical random targets: the bytes around the views must stay as they were too.
    fast_storage, fast_dst = strided_view(layout, part, dtype, np.random.default_rng(seed + 1))
    ref_storage, ref_dst = strided_view(layout, part, dtype, np.random.default_rng(seed + 1))
    crc = decode_chunk(as_kind(payload, kind, chunk_shape, dtype), chunk_shape, dtype, slices,
                       fast_dst, block_bytes=block)
    ref_crc = decode_chunk_reference(payload, chunk_shape, dtype, slices, ref_dst)
    assert crc == ref_crc == crc32c(payload)
    assert fast_storage.tobytes() == ref_storage.tobytes()
    want = np.frombuffer(payload, dtype=dtype).reshape(chunk_shape)[slices]
    assert np.ascontiguousarray(fast_dst).tobytes() == want.tobytes()


def test_decode_open_slices():
    payload = np.arange(12, dtype=np.int16).tobytes()
    dst = np.zeros((2, 3), np.int16)
    crc = decode_chunk(payload, (4, 3), np.int16, (slice(2, None), slice(None)), dst)
    assert crc == crc32c_reference(payload)
    assert dst.tolist() == [[6, 7, 8], [9, 10, 11]]


# ----------------------------------------------------------------------------- round trip

@SETTINGS
@given(data=st.data(), chunk_shape=chunk_shapes, dtype=dtypes, seed=seeds,
       block=st.sampled_from(BLOCKS))
def test_round_trip(data, chunk_shape, dtype, seed, block):
    rng = np.random.default_rng(seed)
    _, x = strided_view(data.draw(layouts(len(chunk_shape))), chunk_shape, dtype, rng)
    encoded = np.empty(payload_bytes(chunk_shape, dtype) + 4, np.uint8)
    crc = encode_chunk(encoded, x, chunk_shape, block_bytes=block)
    out = random_bits(rng, chunk_shape, dtype)
    full = tuple(slice(0, c) for c in chunk_shape)
    assert decode_chunk(encoded[:-4], chunk_shape, dtype, full, out, block_bytes=block) == crc
    assert crc == trailer_crc(encoded.tobytes())
    assert out.tobytes() == np.ascontiguousarray(x).tobytes()


# ----------------------------------------------------------------------------- crc, copy

@settings(max_examples=200, deadline=None)
@given(buf=st.binary(max_size=300), split=st.integers(0, 300))
def test_crc32c_matches_reference(buf, split):
    assert crc32c(buf) == crc32c_reference(buf)
    head, tail = buf[:split], buf[split:]
    assert crc32c(buf) == crc32c_reference(head + tail)


@SETTINGS
@given(data=st.data(), ndim=st.integers(1, 3), dtype=dtypes, seed=seeds)
def test_copy_region_matches_reference(data, ndim, dtype, seed):
    box = [data.draw(st.integers(0, 5)) for _ in range(ndim)]
    src_off = [data.draw(st.integers(0, 3)) for _ in range(ndim)]
    dst_off = [data.draw(st.integers(0, 3)) for _ in range(ndim)]
    rng = np.random.default_rng(seed)
    _, src = strided_view(data.draw(layouts(ndim)),
                          [o + n + 1 for o, n in zip(src_off, box)], dtype, rng)
    dst = random_bits(rng, tuple(o + n + 2 for o, n in zip(dst_off, box)), dtype)
    dst_ref = dst.copy()
    src_slices = tuple(slice(o, o + n) for o, n in zip(src_off, box))
    dst_slices = tuple(slice(o, o + n) for o, n in zip(dst_off, box))
    copy_region(dst, dst_slices, src, src_slices)
    copy_region_reference(dst_ref, dst_slices, src, src_slices)
    assert dst.tobytes() == dst_ref.tobytes()


# ----------------------------------------------------------------------------- errors

def test_encode_errors():
    region = np.ones((2, 3), np.float32)
    size = 4 * 3 * 4 + 4  # chunk (4, 3) float32 + trailer
    for wrong in (size - 1, size + 1, size - 4):
        with pytest.raises(ValueError, match=f"dst has {wrong} bytes, expected {size}"):
            encode_chunk(np.zeros(wrong, np.uint8), region, (4, 3))
    with pytest.raises(ValueError, match=r"region shape \(2, 3\) is bigger than chunk shape"):
        encode_chunk(np.zeros(4 * 2 * 4 + 4, np.uint8), region, (4, 2))
    with pytest.raises(ValueError, match="region has 2 dimensions"):
        encode_chunk(np.zeros(4 * 3 * 4 * 4 + 4, np.uint8), region, (4, 3, 4))
    with pytest.raises(ValueError, match="read-only"):
        encode_chunk(bytes(size), region, (4, 3))
    with pytest.raises(ValueError, match="C-contiguous"):
        encode_chunk(np.zeros(2 * size, np.uint8)[::2], region, (4, 3))
    with pytest.raises(ValueError, match="bigger than chunk shape"):
        encode_chunk_reference(region, (1, 3))
    with pytest.raises(ValueError, match="block_bytes must be at least 1, got 0"):
        encode_chunk(np.zeros(size, np.uint8), region, (4, 3), block_bytes=0)


def test_decode_errors():
    payload = bytes(4 * 3 * 2)  # chunk (4, 3) int16
    dst = np.zeros((4, 3), np.int16)
    full = (slice(0, 4), slice(0, 3))
    with pytest.raises(ValueError, match="payload has 28 bytes, expected 24"):
        decode_chunk(payload + bytes(4), (4, 3), np.int16, full, dst)
    with pytest.raises(ValueError, match=r"dst has shape \(4, 3\), the chunk slices select "
                                         r"\(2, 3\)"):
        decode_chunk(payload, (4, 3), np.int16, (slice(1, 3), slice(0, 3)), dst)
    with pytest.raises(ValueError, match="dst has dtype uint16"):
        decode_chunk(payload, (4, 3), np.int16, full, dst.view(np.uint16))
    with pytest.raises(ValueError, match="not within 0..3"):
        decode_chunk(payload, (4, 3), np.int16, (slice(0, 4), slice(0, 4)), dst)
    with pytest.raises(ValueError, match="step 1"):
        decode_chunk(payload, (4, 3), np.int16, (slice(0, 4, 2), slice(0, 3)), dst)
    with pytest.raises(ValueError, match="2 slices given"):
        decode_chunk(payload, (4, 3, 1), np.int16, full, dst)
    with pytest.raises(ValueError, match="block_bytes must be at least 1"):
        decode_chunk(payload, (4, 3), np.int16, full, dst, block_bytes=-5)
    with pytest.raises(ValueError, match="payload has 28 bytes"):
        decode_chunk_reference(payload + bytes(4), (4, 3), np.int16, full, dst)
