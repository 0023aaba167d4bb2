"""A restore's read of one chunk from an open file that holds the chunk file's bytes at an
offset: the local tier's chunk file (offset 0), or the capacity tier's OCDBT data file, which
holds many values one after the other (tiers/capacity_read.py). Both tiers read the same way
and check the same way (tiers/base.py).

Four shapes of read, by what the item needs. Sub-chunked files are read in runs of whole inner
chunks of about ``RUN_BYTES``, each run checked and copied out right after it is read, while
it is in cache (read whole first, it would be read back from memory); every run must come
back whole (a short read is damage: a data file cut short, a chunk file truncated under us).
- part of a sub-chunked file: only the inner chunks it touches (``inner_reads``), each checked
  against its own crc32c as it is copied out (``scatter_inner``);
- all of a sub-chunked file: every inner chunk so, then the index and the manifest's crc32c
  (``check_shard_tail``): a reader thread's scratch buffer holds one run, never a file;
- a plain chunk that maps onto a contiguous run of the target: one ``preadv`` straight into
  the target and a 4-byte trailer, then the crc32c of the target's bytes against the trailer
  and the manifest (no copy at all);
- any other plain chunk: the whole file into this thread's scratch buffer, then checksummed
  while it is scattered into the target (``scatter_checked``).

The bytes land in the target before their check; on a failed check the caller reads the
region again from another copy or raises (restore/read.py), so the target never keeps bytes
that failed. Called from the restore's reader threads at once: nothing here is shared but
each thread's own scratch buffer.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import CorruptCheckpointError
from ..format import layout
from ..format.manifest import ArrayRecord
from ..format.types import ReadItem
from ..format.subchunks import ShardGeometry
from ..kernels import ThreadScratch, crc32c
from .base import (check_crc, check_shard_tail, chunk_file_bytes, geometry_of, inner_reads,
                   scatter_checked, scatter_inner)

_scratch = ThreadScratch()  # one read buffer per reader thread
# The inner chunks of a sub-chunked file read at once: about half the L2 cache of the
# development VM (2 MiB), so the run is still there when it is checksummed and copied out.
RUN_BYTES = 1 << 20


def read_item_at(fd: int, start: int, array: ArrayRecord, key: str, item: ReadItem,
                 target: np.ndarray, where: str) -> int:
    """Read what ``item`` needs of chunk ``key`` of ``array`` from ``fd``, whose bytes from
    ``start`` on are the chunk file (its size already checked by the caller: the file's
    size, or the index's length), into ``target``; checked as it lands. Returns the bytes
    read. A short read or a failed check is a CorruptCheckpointError naming the array, the
    chunk and ``where``."""
    geometry = geometry_of(array)
    if geometry is not None:
        ranges = inner_reads(array, item)
        if ranges is not None:  # part of the file: only the inner chunks it touches
            return sum(_read_inner_runs(fd, start, array, key, geometry, offset, length, item,
                                        target, where) for offset, length in ranges)
        # all of it (inner_reads: every inner chunk is touched), then its index
        crcs: list = []
        _read_inner_runs(fd, start, array, key, geometry, 0, geometry.index_offset, item,
                         target, where, crcs=crcs)
        index = bytearray(geometry.index_bytes)
        _check_length(os.preadv(fd, [index], start + geometry.index_offset), len(index), array,
                      key, where)
        check_shard_tail(array, key, geometry, index, crcs, where)
        return geometry.file_bytes
    size = chunk_file_bytes(array)
    dst = target[item.target_region.slices()]
    if (item.chunk_box.shape == array.chunk_shape and item.chunk_region.shape == array.chunk_shape
            and dst.flags.c_contiguous):
        payload = memoryview(dst.reshape(-1).view(np.uint8))
        trailer = bytearray(layout.CRC_BYTES)
        _check_length(os.preadv(fd, [payload, trailer], start), size, array, key, where)
        check_crc(array, key, crc32c(payload), int.from_bytes(trailer, "little"), where)
        return size
    raw = memoryview(_scratch.get(size))
    _check_length(os.preadv(fd, [raw], start), size, array, key, where)
    return scatter_checked(array, key, raw, item, target, where)


def _read_inner_runs(fd: int, start: int, array: ArrayRecord, key: str, geometry: ShardGeometry,
                     offset: int, length: int, item: ReadItem, target: np.ndarray, where: str,
                     *, crcs: list | None = None) -> int:
    """The inner chunks at ``offset``, ``length`` of the chunk file (whole inner chunks), in
    runs read into this thread's scratch buffer, each checked and scattered as soon as it
    is read (``scatter_inner``; their crc32c appended to ``crcs``). Returns the bytes
    read."""
    run = max(1, RUN_BYTES // geometry.stride) * geometry.stride
    scratch = memoryview(_scratch.get(min(run, length)))
    for lo in range(offset, offset + length, run):
        n = min(run, offset + length - lo)
        _check_length(os.preadv(fd, [scratch[:n]], start + lo), n, array, key, where)
        scatter_inner(array, key, [(lo, scratch[:n])], item, target, where, crcs=crcs)
    return length


def _check_length(got: int, size: int, array: ArrayRecord, key: str, where: str) -> None:
    if got != size:
        raise CorruptCheckpointError(
            f"array {array.name!r}: chunk {key} ({where}) was cut short while reading; the "
            "chunk is corrupt")
