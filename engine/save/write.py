"""Carry out this rank's part of a save plan against one tier directory.

Called by every rank, from the thread that writes the save; no collectives here. Chunks are
written as Zarr v3 chunk files (raw little-endian bytes of the full chunk shape, then the
crc32c trailer) by the Checkpointer's writer threads; ``RankWriter.finish`` makes them durable
(see Options.sync).
"""
from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..format import dtypes
from ..format import layout
from ..runtime.faults import inject
from ..runtime.fsutil import fsync_dir, syncfs, syncfs_available, write_file
from ..kernels import ThreadScratch, crc32c, crc_trailer, encode_chunk, fingerprint_box
from ..format.types import ArrayPlan, Box, ChunkAssignment, WrittenChunk


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
    if item.chunk.box.shape == item.plan.chunk_shape and region.flags.c_contiguous:
        crc = crc32c(region)
        return [region, crc_trailer(crc)], crc
    nbytes = math.prod(item.plan.chunk_shape) * dtypes.itemsize(item.plan.dtype)
    buf = _scratch.get(nbytes + layout.CRC_BYTES)
    crc = encode_chunk(buf, region, item.plan.chunk_shape)
    return [buf], crc


class RankWriter:
    """Writes one rank's files of one save into a tier directory, in as many batches as
    the staging parts need; ``finish`` makes everything durable (see ``Options.sync``).

    No collectives here. Files inside a step directory are written in place, not through
    temp files: the directory is not a checkpoint until its marker exists, and a new save at
    the same step removes whatever an interrupted one left.
    """

    def __init__(self, step_dir: str, rank: int, step: int, pool: ThreadPoolExecutor, *,
                 sync: str = "fsync", small_file_bytes: int = 1 << 20):
        if sync == "syncfs" and not syncfs_available():
            sync = "fsync"
        self.step_dir, self.rank, self.step, self.pool = step_dir, rank, step, pool
        self.sync, self.small_file_bytes = sync, small_file_bytes
        self._dirs: set[str] = set()

    def _mkdirs(self, names) -> None:
        for name in names:
            d = os.path.join(self.step_dir, name)
            if d not in self._dirs:
                os.makedirs(d, exist_ok=True)
                self._dirs.add(d)

    def _write_chunk(self, item: ChunkWrite) -> WrittenChunk:
        key = layout.chunk_key(item.chunk.index)
        path = os.path.join(self.step_dir, item.plan.name, key)
        buffers, crc = encoded_chunk(item)
        size = sum(memoryview(b).nbytes for b in buffers)
        digest = hashlib.sha256()
        for b in buffers:
            digest.update(b)  # releases the GIL on big buffers: writer threads hash in parallel
        fingerprint = fingerprint_box(item.region, item.chunk.box.offset)
        try:
            inject("write", rank=self.rank, step=self.step)
            n = write_file(path, buffers, fsync=self.sync == "fsync" or (
                self.sync == "syncfs" and size >= self.small_file_bytes))
        except OSError as e:
            raise OSError(e.errno, f"writing chunk {key} of array {item.plan.name!r} to {path}: "
                          f"{e.strerror}") from e
        return WrittenChunk(item.plan.name, item.chunk.index, n, crc, self.rank,
                           digest.hexdigest(), fingerprint)

    def chunks(self, items: list[ChunkWrite]) -> list[WrittenChunk]:
        """Write ``items`` (biggest first, which keeps the threads busy to the end)."""
        self._mkdirs({i.plan.name for i in items})
        ordered = sorted(items, key=lambda i: -i.chunk.box.volume * dtypes.itemsize(i.plan.dtype))
        return list(self.pool.map(self._write_chunk, ordered))

    def documents(self, metadata: list[tuple[str, dict]]) -> None:
        """The arrays' zarr.json documents ``(array name, document)``."""
        self._mkdirs(name for name, _ in metadata)

        def doc(item) -> None:
            name, document = item
            write_file(os.path.join(self.step_dir, name, layout.ZARR_JSON),
                       [layout.encode_json(document)], fsync=self.sync == "fsync")
        list(self.pool.map(doc, metadata))

    def finish(self) -> None:
        """Make this rank's files and directory entries durable before the commit."""
        if self.sync == "fsync":
            list(self.pool.map(fsync_dir, sorted(self._dirs)))
        elif self.sync == "syncfs":
            syncfs(self.step_dir)


def _group_dirs(step_dir: str, array_names) -> list[str]:
    groups = {""}
    for name in array_names:
        parts = name.split("/")
        for i in range(1, len(parts)):
            groups.add("/".join(parts[:i]))
    return [os.path.join(step_dir, g) if g else step_dir for g in sorted(groups)]


def write_group_metadata(step_dir: str, array_names, attributes: dict) -> None:
    """zarr.json of the checkpoint group (with ``attributes``) and of every intermediate
    group; written by one rank per tier directory, before the chunks."""
    for directory in _group_dirs(step_dir, array_names):
        os.makedirs(directory, exist_ok=True)
        document = layout.zarr_group_metadata(attributes if directory == step_dir else {})
        write_file(os.path.join(directory, layout.ZARR_JSON), [layout.encode_json(document)])


def fsync_group_dirs(step_dir: str, array_names) -> None:
    """Make every group directory's entries (array directories made by any rank) durable;
    run by a tier directory's leader after all ranks wrote, before the manifest."""
    for directory in reversed(_group_dirs(step_dir, array_names)):
        fsync_dir(directory)
