"""Encode this rank's part of a save plan into chunk files and hand them to its tier.

Called by every rank, from the thread that writes the save; no collectives here. Chunks are
encoded as Zarr v3 chunk files (raw little-endian bytes of the full chunk shape, then the
crc32c trailer), hashed (format/chunkhash.py) and fingerprinted by the Checkpointer's writer
threads, and written by the tier's writer (tiers/local.py ``StepWriter``);
``RankWriter.finish`` makes them durable (see Options.sync).
"""
from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..format import dtypes
from ..format import layout
from ..kernels import ThreadScratch, crc32c, crc_trailer, encode_chunk, fingerprint_box
from ..format.chunkhash import ChunkHasher, algorithm_for
from ..format.subchunks import ShardGeometry, crc_of_crcs, inner_shape_of
from ..format.types import ArrayPlan, Box, ChunkAssignment, WrittenChunk
from ..runtime.costs import Laps, PhaseCosts


_scratch = ThreadScratch()  # one buffer per writer thread, reused across saves


@dataclass(frozen=True)
class ChunkWrite:
    """One chunk to write, and where its elements are: ``bits`` holds the box ``box`` of
    the array (a staged copy), which contains the chunk's box."""

    plan: ArrayPlan
    chunk: ChunkAssignment
    bits: np.ndarray
    box: Box

    @property
    def region(self) -> np.ndarray:
        """The chunk's own elements (without edge padding), a view into ``bits``."""
        return self.bits[self.chunk.box.relative_to(self.box).slices()]


def encoded_chunk(item: ChunkWrite) -> tuple[list, int]:
    """(buffers to write, crc32c) of one chunk file: payload then the 4-byte trailer.

    A full chunk that is contiguous in ``bits`` is written straight from it (one pass to
    checksum it); any other chunk (a strided region, or an edge chunk padded with zeros to
    the full chunk shape) is gathered and checksummed in one fused pass by ``encode_chunk``.
    """
    region = item.region
    inner = inner_shape_of(layout.FORMAT_VERSION, item.plan.chunk_shape, item.plan.dtype)
    if inner is not None:
        return _encoded_shard(item, region, inner)
    if item.chunk.box.shape == item.plan.chunk_shape and region.flags.c_contiguous:
        crc = crc32c(region)
        return [region, crc_trailer(crc)], crc
    nbytes = math.prod(item.plan.chunk_shape) * dtypes.itemsize(item.plan.dtype)
    buf = _scratch.get(nbytes + layout.CRC_BYTES)
    crc = encode_chunk(buf, region, item.plan.chunk_shape)
    return [buf], crc


def _encoded_shard(item: ChunkWrite, region: np.ndarray, inner) -> tuple[list, int]:
    """(buffers, manifest crc32c) of a sub-chunked chunk file (format/subchunks.py).

    When every inner chunk is a contiguous slab of the chunk (they cut dim 0 only, and the
    chunk is whole and contiguous in ``bits``), the file is written straight from the
    staged bits, slab and trailer after slab and trailer; otherwise each inner chunk is
    gathered (zero-padded at the array's edge) and checksummed in one fused pass."""
    chunk_shape = tuple(item.plan.chunk_shape)
    geometry = ShardGeometry(chunk_shape, tuple(inner), dtypes.itemsize(item.plan.dtype))
    crcs = []
    if region.shape == chunk_shape and region.flags.c_contiguous and \
            tuple(inner[1:]) == chunk_shape[1:]:
        buffers: list = []
        for n in range(geometry.count):
            piece = region[geometry.box(n)]
            crcs.append(crc32c(piece))
            buffers += [piece, crc_trailer(crcs[-1])]
        return buffers + [geometry.index()], crc_of_crcs(crcs)
    buf = _scratch.get(geometry.file_bytes)
    storage = dtypes.storage_dtype(item.plan.dtype)
    for n in range(geometry.count):
        start = n * geometry.stride
        part = region[geometry.box(n)]
        if part.shape != geometry.inner_shape:  # at the array's edge: zero-padded
            crcs.append(encode_chunk(buf[start:start + geometry.stride], part,
                                     geometry.inner_shape))
            continue
        # A whole inner chunk: numpy's copy, then the hardware crc32c over it while it is
        # still in cache (faster here than the fused blockwise kernel, see tiers/base.py).
        payload = buf[start:start + geometry.payload_bytes]
        np.copyto(payload.view(storage).reshape(geometry.inner_shape), part, casting="equiv")
        crcs.append(crc32c(payload))
        buf[start + geometry.payload_bytes:start + geometry.stride] = \
            np.frombuffer(crc_trailer(crcs[-1]), dtype=np.uint8)
    buf[geometry.index_offset:] = np.frombuffer(geometry.index(), dtype=np.uint8)
    return [buf], crc_of_crcs(crcs)


class RankWriter:
    """Encodes one rank's chunks of one save and writes them through its tier's writer, in
    as many batches as the staging parts need; ``finish`` makes everything durable.

    No collectives here: called from the save job's thread, the chunks on the writer
    threads (``pool``). What a chunk file is (payload of the full chunk shape, then the
    crc32c trailer) is decided here; where and how files are written is the tier's
    (``tiers.local.StepWriter``). ``costs`` (optional) gets each chunk's "crc32c" (the
    encode: the checksum, and for a chunk not written straight from its bits the gather),
    "hash" and "fingerprint" times.
    """

    def __init__(self, files, rank: int, pool: ThreadPoolExecutor,
                 costs: PhaseCosts | None = None):
        self.files, self.rank, self.pool = files, rank, pool
        self.costs = costs

    def _write_chunk(self, item: ChunkWrite) -> WrittenChunk:
        key = layout.chunk_key(item.chunk.index)
        clock = Laps(self.costs)
        buffers, crc = encoded_chunk(item)
        size = sum(memoryview(b).nbytes for b in buffers)
        clock.lap("crc32c", size)
        digest = ChunkHasher(algorithm_for(layout.FORMAT_VERSION))
        for b in buffers:
            digest.update(b)  # releases the GIL on big buffers: writer threads hash in parallel
        clock.lap("hash", size)
        fingerprint = fingerprint_box(item.region, item.chunk.box.offset)
        clock.lap("fingerprint", item.region.nbytes)
        n = self.files.chunk(item.plan.name, key, buffers, size)
        return WrittenChunk(item.plan.name, item.chunk.index, n, crc, self.rank,
                            digest.value(), fingerprint)

    def submit(self, items: list[ChunkWrite]) -> list[Future]:
        """Start writing ``items`` on the pool (biggest first, which keeps the threads busy
        to the end) and return at once: one future per item, its ``WrittenChunk``. The
        caller keeps the items' bits unchanged until every future is done."""
        self.files.make_dirs({i.plan.name for i in items})
        ordered = sorted(items, key=lambda i: -i.chunk.box.volume * dtypes.itemsize(i.plan.dtype))
        return [self.pool.submit(self._write_chunk, item) for item in ordered]

    def chunks(self, items: list[ChunkWrite]) -> list[WrittenChunk]:
        """Write ``items`` and wait for them (the first failure is raised once all ended)."""
        return settle(self.submit(items))

    def documents(self, metadata: list[tuple[str, dict]]) -> None:
        """The arrays' zarr.json documents ``(array name, document)``."""
        self.files.make_dirs(name for name, _ in metadata)
        list(self.pool.map(lambda item: self.files.document(*item), metadata))

    def finish(self) -> None:
        """Make this rank's files and directory entries durable before the commit."""
        self.files.finish(self.pool)

    def close(self) -> None:
        """Let go of what the tier's writer holds (after ``finish``, or a failure)."""
        self.files.close()


def settle(futures: list[Future]) -> list:
    """Wait for every future (none is left running), then return their results in order,
    or raise the first failure among them."""
    for f in futures:
        f.exception()  # waits; the failure is raised below, once nothing runs
    return [f.result() for f in futures]

