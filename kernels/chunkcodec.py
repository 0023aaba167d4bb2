"""Encode a chunk (copy + zero padding + crc32c) and decode it (crc32c + copy out), fused.

Layout invariant of a chunk file: the raw little-endian bytes of the FULL chunk shape in C
order (the part of an edge chunk outside the array is zeros, the fill value), followed by
the 4-byte little-endian crc32c of those bytes (the Zarr v3 ``crc32c`` codec).

Both fast paths make one pass over the chunk: they walk it in blocks of whole rows along
dim 0 of about ``BLOCK_BYTES`` (when one row is bigger than that, in blocks inside each row,
the same way one dimension down) and checksum each block right after copying it (encode)
or right before copying out of it (decode), while the block is still in cache. Only views
are made per block; nothing is allocated in proportion to the data. Each fast path
(``encode_chunk``, ``decode_chunk``) is tested equal to its two-step reference
(``encode_chunk_reference``, ``decode_chunk_reference``) in tests/test_kernels.py.
"""
from __future__ import annotations

import numpy as np
from crc32c import crc32c as _crc_update  # (buffer, running crc) -> chained crc

from .checksum import crc32c_reference, crc_trailer

CRC_BYTES = 4  # the trailer: little-endian crc32c of the payload

# 256 KiB of destination bytes per block: a block plus the source rows it is copied from
# fit in the 2 MiB L2 of the development VM (AMD EPYC), so the crc of a block reads it from
# cache. Measured there (bench/kernels.py, 32 MiB float32 chunks): 64 KiB blocks ~1.4x
# slower (per-block overhead), 1 MiB blocks no faster than 256 KiB.
BLOCK_BYTES = 256 * 1024


# ----------------------------------------------------------------------------- checks

def _shape_of(chunk_shape) -> tuple[int, ...]:
    shape = tuple(int(n) for n in chunk_shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"chunk shape {shape} has a negative dimension")
    return shape


def _storage_dtype(dtype) -> np.dtype:
    """The little-endian dtype of the stored bytes (chunk files are little-endian)."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise ValueError(f"dtype {dtype} holds Python objects and has no byte representation")
    return dtype.newbyteorder("<")


def _payload_bytes(chunk_shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(chunk_shape, dtype=np.int64)) * dtype.itemsize


def _byte_view(buf, *, writable: bool, what: str) -> np.ndarray:
    """A 1-D uint8 view (no copy) of a C-contiguous buffer."""
    if isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise ValueError(f"{what} must be C-contiguous (got strides {buf.strides})")
        view = buf.reshape(-1).view(np.uint8)
    else:
        mv = memoryview(buf)
        if not mv.c_contiguous:
            raise ValueError(f"{what} must be a C-contiguous buffer")
        view = np.frombuffer(mv.cast("B"), dtype=np.uint8)
    if writable and not view.flags.writeable:
        raise ValueError(f"{what} is read-only")
    return view


def _check_region(region: np.ndarray, chunk_shape: tuple[int, ...]) -> None:
    if region.ndim != len(chunk_shape):
        raise ValueError(f"region has {region.ndim} dimensions, chunk shape {chunk_shape} has "
                         f"{len(chunk_shape)}")
    if any(r > c for r, c in zip(region.shape, chunk_shape)):
        raise ValueError(f"region shape {region.shape} is bigger than chunk shape "
                         f"{chunk_shape} in some dimension")


def _resolve_slices(chunk_slices, chunk_shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``chunk_slices`` as explicit ``slice(start, stop)`` with 0 <= start <= stop <= dim."""
    chunk_slices = tuple(chunk_slices)
    if len(chunk_slices) != len(chunk_shape):
        raise ValueError(f"{len(chunk_slices)} slices given for chunk shape {chunk_shape}")
    out = []
    for s, n in zip(chunk_slices, chunk_shape):
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise ValueError(f"chunk slice {s!r} is not a slice with step 1")
        start = 0 if s.start is None else int(s.start)
        stop = n if s.stop is None else int(s.stop)
        if not 0 <= start <= stop <= n:
            raise ValueError(f"chunk slice {s!r} is not within 0..{n} (chunk shape {chunk_shape})")
        out.append(slice(start, stop))
    return tuple(out)


def _check_payload(payload: np.ndarray, chunk_shape, dtype) -> None:
    expected = _payload_bytes(chunk_shape, dtype)
    if payload.size != expected:
        raise ValueError(f"encoded payload has {payload.size} bytes, expected {expected} "
                         f"(chunk shape {chunk_shape} x {dtype.itemsize}-byte {dtype}; the "
                         "payload excludes the 4-byte crc32c trailer)")


def _check_dst(dst, slices: tuple[slice, ...], dtype: np.dtype) -> None:
    want = tuple(s.stop - s.start for s in slices)
    if not isinstance(dst, np.ndarray):
        raise ValueError(f"dst must be a numpy array, got {type(dst).__name__}")
    if dst.shape != want:
        raise ValueError(f"dst has shape {dst.shape}, the chunk slices select {want}")
    if np.dtype(dst.dtype).newbyteorder("<") != dtype:
        raise ValueError(f"dst has dtype {dst.dtype}, the chunk holds {dtype}")
    if not dst.flags.writeable:
        raise ValueError("dst is read-only")


# ----------------------------------------------------------------------------- encode

def _check_block(block_bytes) -> int:
    if int(block_bytes) < 1:
        raise ValueError(f"block_bytes must be at least 1, got {block_bytes}")
    return int(block_bytes)


def _rows_per_block(row_bytes: int, block_bytes: int) -> int:
    return max(1, block_bytes // row_bytes)


def _zero_and_crc(dst: np.ndarray, crc: int, block_bytes: int) -> int:
    """Zero the bytes ``dst`` and chain their crc, block by block."""
    for off in range(0, dst.size, block_bytes):
        block = dst[off:off + block_bytes]
        block.fill(0)
        crc = _crc_update(block, crc)
    return crc


def _fill_rows(block: np.ndarray, rows: np.ndarray) -> None:
    """Copy ``rows`` (shape <= block's in every dim past 0, same dim 0) into the corner of
    ``block`` and zero the rest of ``block``, touching each element once."""
    valid = tuple(slice(0, n) for n in rows.shape)
    np.copyto(block[valid], rows, casting="equiv")
    # The padding of these rows, split into disjoint slabs: slab d holds the elements whose
    # first out-of-region index is in dim d (dims before d in range, dims after d anything).
    for d in range(1, rows.ndim):
        if rows.shape[d] < block.shape[d]:
            slab = valid[:d] + (slice(rows.shape[d], None),)
            block[slab].fill(0)


def _encode_level(dst: np.ndarray, region: np.ndarray, shape: tuple[int, ...], dtype,
                  crc: int, block_bytes: int) -> int:
    """Encode ``region`` into the payload bytes ``dst`` of a chunk of ``shape`` (ndim >= 1);
    return the crc chained from ``crc``. Invariant: dst.size == prod(shape) * itemsize."""
    row_shape = shape[1:]
    row_bytes = dst.size // shape[0]
    filled = region.shape[0] * row_bytes  # bytes of rows that hold region values
    if row_bytes > block_bytes and len(shape) > 1:
        # A row alone is bigger than a block: block inside each row instead.
        for i in range(region.shape[0]):
            crc = _encode_level(dst[i * row_bytes:(i + 1) * row_bytes], region[i], row_shape,
                                dtype, crc, block_bytes)
        return _zero_and_crc(dst[filled:], crc, block_bytes)
    per_block = _rows_per_block(row_bytes, block_bytes)
    for r0 in range(0, shape[0], per_block):
        r1 = min(r0 + per_block, shape[0])
        raw = dst[r0 * row_bytes:r1 * row_bytes]
        block = raw.view(dtype).reshape((r1 - r0,) + row_shape)
        nvalid = max(0, min(r1, region.shape[0]) - r0)
        if nvalid:
            _fill_rows(block[:nvalid], region[r0:r0 + nvalid])
        if nvalid < r1 - r0:
            block[nvalid:].fill(0)  # whole rows past the region
        crc = _crc_update(raw, crc)  # the block is still in cache
    return crc


def encode_chunk(dst, region: np.ndarray, chunk_shape, *, block_bytes: int = BLOCK_BYTES) -> int:
    """Write the encoded chunk (payload + crc32c trailer) into ``dst``; return the crc.

    ``dst``: a writable C-contiguous buffer of exactly prod(chunk_shape) * itemsize + 4
    bytes. ``region``: the chunk's valid part (any strides), anchored at the chunk's origin,
    no bigger than ``chunk_shape`` in any dimension; the rest of the chunk is zeros.

    Speed: give ``dst`` the same address mod 64 as ``region``'s data (e.g. both 64-byte
    aligned). The per-block copies go through glibc memmove's ``rep movsb`` path, which on
    the development VM (AMD) was 2-4x slower when the two differ (a big numpy buffer sits
    16 bytes past a page boundary; a skew of 4 bytes was the worst).
    """
    region = np.asarray(region)
    chunk_shape = _shape_of(chunk_shape)
    dtype = _storage_dtype(region.dtype)
    _check_region(region, chunk_shape)
    block_bytes = _check_block(block_bytes)
    out = _byte_view(dst, writable=True, what="dst")
    payload = _payload_bytes(chunk_shape, dtype)
    if out.size != payload + CRC_BYTES:
        raise ValueError(f"dst has {out.size} bytes, expected {payload + CRC_BYTES} "
                         f"({payload} payload bytes for chunk shape {chunk_shape} x "
                         f"{dtype.itemsize}-byte {dtype}, + {CRC_BYTES} crc32c bytes)")
    crc = 0
    if payload:
        if region.ndim == 0:  # a 0-d chunk is one element: encode it as shape (1,)
            region, chunk_shape = region[np.newaxis], (1,)
        crc = _encode_level(out[:payload], region, chunk_shape, dtype, crc, block_bytes)
    out[payload:] = np.frombuffer(crc_trailer(crc), dtype=np.uint8)
    return crc


def encode_chunk_reference(region: np.ndarray, chunk_shape) -> bytes:
    """Two-step reference of :func:`encode_chunk`: pad to the chunk shape, then checksum."""
    region = np.asarray(region)
    chunk_shape = _shape_of(chunk_shape)
    _check_region(region, chunk_shape)
    padded = np.zeros(chunk_shape, dtype=_storage_dtype(region.dtype))
    padded[tuple(slice(0, n) for n in region.shape)] = region
    data = padded.tobytes(order="C")
    return data + crc_trailer(crc32c_reference(data))


# ----------------------------------------------------------------------------- decode

def _crc_only(src: np.ndarray, crc: int) -> int:
    """Chain the crc of bytes nothing is copied out of: one streaming pass, no blocking."""
    return _crc_update(src, crc) if src.size else crc


def _decode_level(src: np.ndarray, shape: tuple[int, ...], dtype, slices: tuple[slice, ...],
                  dst: np.ndarray, crc: int, block_bytes: int) -> int:
    """Checksum the payload bytes ``src`` of a chunk of ``shape`` (ndim >= 1) and copy its
    part ``slices`` into ``dst``; return the crc chained from ``crc``."""
    row_shape = shape[1:]
    row_bytes = src.size // shape[0]
    start, stop = slices[0].start, slices[0].stop
    if row_bytes > block_bytes and len(shape) > 1:
        # A row alone is bigger than a block: block inside each wanted row; the rows not
        # wanted are only checksummed (nothing to keep hot for them).
        crc = _crc_only(src[:start * row_bytes], crc)
        for i in range(start, stop):
            crc = _decode_level(src[i * row_bytes:(i + 1) * row_bytes], row_shape, dtype,
                                slices[1:], dst[i - start], crc, block_bytes)
        return _crc_only(src[stop * row_bytes:], crc)
    per_block = _rows_per_block(row_bytes, block_bytes)
    for r0 in range(0, shape[0], per_block):
        r1 = min(r0 + per_block, shape[0])
        raw = src[r0 * row_bytes:r1 * row_bytes]
        crc = _crc_update(raw, crc)
        a, b = max(r0, start), min(r1, stop)  # wanted rows in this block
        if a < b:  # copied from the block just checksummed, while it is in cache
            block = raw.view(dtype).reshape((r1 - r0,) + row_shape)
            np.copyto(dst[a - start:b - start], block[(slice(a - r0, b - r0),) + slices[1:]],
                      casting="equiv")
    return crc


def _decode_args(encoded, chunk_shape, dtype, chunk_slices, dst):
    """Checked arguments of a decode: (chunk shape, storage dtype, payload bytes, slices)."""
    chunk_shape = _shape_of(chunk_shape)
    dtype = _storage_dtype(dtype)
    src = _byte_view(encoded, writable=False, what="encoded payload")
    _check_payload(src, chunk_shape, dtype)
    slices = _resolve_slices(chunk_slices, chunk_shape)
    _check_dst(dst, slices, dtype)
    return chunk_shape, dtype, src, slices


def decode_chunk(encoded, chunk_shape, dtype, chunk_slices, dst, *,
                 block_bytes: int = BLOCK_BYTES) -> int:
    """Checksum the whole chunk payload ``encoded`` and copy its part ``chunk_slices`` into
    ``dst``, in one pass; return the computed crc32c.

    ``encoded``: the payload only (prod(chunk_shape) * itemsize bytes, no trailer), any
    C-contiguous buffer. ``chunk_slices``: step-1 slices within ``chunk_shape``. ``dst``: a
    writable array (any strides) of the selected shape and ``dtype``. The crc is not
    compared with anything here: the caller checks it against the trailer or manifest.
    As for :func:`encode_chunk`, keep ``encoded`` and ``dst`` at the same address mod 64.
    """
    chunk_shape, dtype, src, slices = _decode_args(encoded, chunk_shape, dtype, chunk_slices,
                                                   dst)
    block_bytes = _check_block(block_bytes)
    if not src.size:
        return 0
    if not chunk_shape:  # a 0-d chunk is one element: decode it as shape (1,)
        chunk_shape, slices, dst = (1,), (slice(0, 1),), dst[np.newaxis]
    return _decode_level(src, chunk_shape, dtype, slices, dst, 0, block_bytes)


def decode_chunk_reference(encoded, chunk_shape, dtype, chunk_slices, dst) -> int:
    """Two-step reference of :func:`decode_chunk`: checksum the payload, then copy."""
    chunk_shape, dtype, src, slices = _decode_args(encoded, chunk_shape, dtype, chunk_slices,
                                                   dst)
    crc = crc32c_reference(src.tobytes())
    dst[...] = src.view(dtype).reshape(chunk_shape)[slices]
    return crc
