"""Format version 4's sub-chunked chunk files: the Zarr v3 ``sharding_indexed`` codec.

Why: a chunk is what one saving rank wrote (a box of its shard). A restoring rank that
needs another band of it (a column band of a row-sharded weight, Shard(0) -> Shard(1)) used
to read and checksum the whole chunk file. In version 4 a chunk file larger than
``MIN_INNER_BYTES`` is a Zarr *shard*: inner chunks laid out one after the other, each with
its own crc32c, and an index at the end. A reader reads only the inner chunks its box
touches, by byte range, and checks each one it reads. Stock Zarr v3 readers (zarr-python,
TensorStore) read these files through the standard codec; the file count does not change.

The file of a chunk of shape ``C`` with inner shape ``I`` (``I`` divides ``C``), ``n``
inner chunks in C order of the inner grid ``C / I``::

    inner chunk 0: raw little-endian bytes of the full shape I, then its crc32c (4 bytes LE)
    inner chunk 1: ...
    ...
    index: n x (offset uint64 LE, nbytes uint64 LE) in the same order, then its crc32c

Every inner chunk is present and has the same size (padding outside the array is zeros,
the fill value), so offsets follow from the shapes alone; the index is written for stock
readers and checked by whole-chunk reads (``check_index``).

What the manifest's chunk record holds for such a file: ``nbytes`` of the file, ``sha256``
of the file (as for every chunk), and as ``crc32c`` the crc32c of the inner chunks' crc32c
values (4 bytes LE each, in order): a whole-chunk read checks every inner chunk and then
that list against the manifest; a read of part of a chunk checks the inner chunks it reads
against their own crc32c (not against the manifest, which would need every inner crc).

Pure: geometry and bytes only, no files.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from ..kernels import crc32c
from . import dtypes

CRC_BYTES = 4
INDEX_ENTRY_BYTES = 16  # offset and nbytes, uint64 each
# The rule that picks inner shapes (a part of the format: version 4 files follow it).
# Chunks up to MIN_INNER_BYTES stay plain; larger ones are cut into about TARGET_PIECES
# pieces, none smaller than MIN_INNER_BYTES nor (in big chunks) larger than MAX_INNER_BYTES:
# small enough that a reader of a quarter band along any axis reads about a quarter, big
# enough that reads stay large (>= 64 KiB) and the index small (<= 16 bytes per 64 KiB).
MIN_INNER_BYTES = 64 << 10
MAX_INNER_BYTES = 1 << 20
TARGET_PIECES = 16
_FACTORS = (2, 3, 5, 7)


def inner_chunk_shape(chunk_shape, itemsize: int) -> tuple[int, ...] | None:
    """The inner shape of a version 4 chunk of ``chunk_shape`` (None: a plain chunk file).

    The dimension with the largest inner extent is divided by its smallest factor in
    2, 3, 5, 7 (ties: the lowest dimension, whose pieces are contiguous) until an inner
    chunk is at most the target; a dimension without such a factor is left as it is."""
    shape = [int(n) for n in chunk_shape]
    nbytes = math.prod(shape) * itemsize
    if not shape or nbytes <= MIN_INNER_BYTES:
        return None
    target = min(MAX_INNER_BYTES, max(MIN_INNER_BYTES, nbytes // TARGET_PIECES))
    while math.prod(shape) * itemsize > target:
        for d in sorted(range(len(shape)), key=lambda d: (-shape[d], d)):
            factor = next((f for f in _FACTORS if shape[d] % f == 0), None)
            if factor is not None:
                shape[d] //= factor
                break
        else:
            break
    inner = tuple(shape)
    return None if inner == tuple(chunk_shape) else inner


def inner_shape_of(version: int, chunk_shape, dtype: str) -> tuple[int, ...] | None:
    """The inner chunk shape of an array's chunk files in format ``version`` (None: plain
    chunk files, as every chunk before version 4)."""
    if version < 4:
        return None
    return inner_chunk_shape(tuple(chunk_shape), dtypes.itemsize(dtype))


def sharding_codec(inner_shape, bytes_codec: dict) -> dict:
    """The zarr.json codec entry of a sub-chunked array."""
    return {"name": "sharding_indexed",
            "configuration": {"chunk_shape": list(inner_shape),
                              "codecs": [bytes_codec, {"name": "crc32c"}],
                              "index_codecs": [{"name": "bytes",
                                                "configuration": {"endian": "little"}},
                                               {"name": "crc32c"}],
                              "index_location": "end"}}


@dataclass(frozen=True)
class ShardGeometry:
    """Where each inner chunk of a sub-chunked chunk file lies."""

    chunk_shape: tuple[int, ...]
    inner_shape: tuple[int, ...]
    itemsize: int

    @cached_property
    def grid(self) -> tuple[int, ...]:
        return tuple(c // i for c, i in zip(self.chunk_shape, self.inner_shape))

    @property
    def count(self) -> int:
        return math.prod(self.grid)

    @property
    def payload_bytes(self) -> int:
        """The raw bytes of one inner chunk (without its crc32c)."""
        return math.prod(self.inner_shape) * self.itemsize

    @property
    def stride(self) -> int:
        """The bytes of one inner chunk in the file (payload and crc32c)."""
        return self.payload_bytes + CRC_BYTES

    @property
    def index_offset(self) -> int:
        return self.count * self.stride

    @property
    def index_bytes(self) -> int:
        return self.count * INDEX_ENTRY_BYTES + CRC_BYTES

    @property
    def file_bytes(self) -> int:
        return self.index_offset + self.index_bytes

    def position(self, flat: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(flat, self.grid))

    def box(self, flat: int) -> tuple[slice, ...]:
        """The slices of the chunk that inner chunk ``flat`` covers."""
        return tuple(slice(p * i, (p + 1) * i)
                     for p, i in zip(self.position(flat), self.inner_shape))

    def overlapping(self, region: tuple[slice, ...]) -> list[int]:
        """The inner chunks (flat numbers, ascending) that ``region`` (slices of the chunk,
        explicit start and stop) touches."""
        ranges = [range(s.start // i, -(-s.stop // i)) for s, i in zip(region, self.inner_shape)]
        if any(len(r) == 0 for r in ranges):
            return []
        grids = np.meshgrid(*[np.arange(r.start, r.stop) for r in ranges], indexing="ij")
        return sorted(int(f) for f in np.ravel_multi_index([g.reshape(-1) for g in grids],
                                                          self.grid))

    def runs(self, flats: list[int]) -> list[tuple[int, int]]:
        """Consecutive inner chunks joined: ``(first, count)`` pairs, one read each."""
        out: list[tuple[int, int]] = []
        for f in flats:
            if out and out[-1][0] + out[-1][1] == f:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((f, 1))
        return out

    def index(self) -> bytes:
        """The index and its crc32c, as this engine writes them (every chunk present); the
        same bytes for every chunk of one geometry, so built once per geometry."""
        return _index_bytes(self)


@lru_cache(maxsize=256)
def _index_bytes(geometry: ShardGeometry) -> bytes:
    entries = b"".join(struct.pack("<QQ", n * geometry.stride, geometry.stride)
                       for n in range(geometry.count))
    return entries + crc32c(entries).to_bytes(CRC_BYTES, "little")


def crc_of_crcs(crcs) -> int:
    """The manifest's crc32c of a sub-chunked chunk: over its inner crc32c values."""
    return crc32c(b"".join(int(c).to_bytes(CRC_BYTES, "little") for c in crcs))


def check_index(geometry: ShardGeometry, data) -> str | None:
    """What is wrong with the index at the end of a whole chunk file ``data`` (None: it is
    the index this engine writes)."""
    got = bytes(memoryview(data)[geometry.index_offset:geometry.file_bytes])
    if got == geometry.index():
        return None
    entries, stored = got[:-CRC_BYTES], int.from_bytes(got[-CRC_BYTES:], "little")
    if crc32c(entries) != stored:
        return "its shard index fails its crc32c check"
    return "its shard index does not list the inner chunks in order"
