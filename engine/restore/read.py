"""Carry out this rank's reads of a restore plan against the tiers that hold a checkpoint.

Called by every restoring rank; no collectives here. Each needed chunk is read whole, its
crc32c trailer checked against the manifest, and its overlap with the requested box copied
into the target. From a local tier directory, a chunk that maps onto a contiguous run of the
target is read straight into the target's memory. A chunk missing or corrupt in the local
tier is taken from the capacity tier when one holds the checkpoint (a corrupt one with a
warning); with no good copy the error names the array, the chunk and the file.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..format import dtypes
from ..format import layout
from ..errors import CheckpointNotFoundError, CorruptCheckpointError
from ..kernels import ThreadScratch, crc32c, decode_chunk, split_trailer
from ..format.types import ReadItem

_scratch = ThreadScratch()  # one buffer per reader thread


class _ChunkReader:
    def __init__(self, local_dir, entry, capacity, where):
        self.entry, self.capacity, self.where = entry, capacity, where
        self.step_dir = local_dir
        self.local = os.path.join(local_dir, entry["path"]) if local_dir else None
        self.storage = dtypes.storage_dtype(entry["dtype"])
        self.chunk_shape = tuple(entry["chunk_shape"])
        self.nbytes = int(np.prod(self.chunk_shape, dtype=np.int64)) * self.storage.itemsize

    def _fail(self, key, what, path):
        return CorruptCheckpointError(
            f"array {self.entry['name']!r}: chunk {key} ({path}) {what}; the chunk is corrupt")

    def _check(self, key, actual, stored, path):
        """``actual``: the crc32c computed over the chunk as read; ``stored``: its trailer."""
        record = self.entry["chunks"][key]
        if actual != stored or actual != record["crc32c"]:
            raise self._fail(key, f"fails its crc32c check (computed {actual:#010x}, stored "
                             f"{stored:#010x}, manifest {record['crc32c']:#010x})", path)

    def _from_local(self, key, item, target) -> int:
        path = os.path.join(self.local, key)
        dst = target[item.target_region.slices()]
        direct = (item.chunk_box.shape == self.chunk_shape
                  and item.chunk_region.shape == self.chunk_shape and dst.flags.c_contiguous)
        fd = layout.open_inside(self.step_dir, os.path.join(self.entry["path"], key))
        with open(fd, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size != self.nbytes + layout.CRC_BYTES:
                raise self._fail(key, f"has {size} bytes, expected "
                                 f"{self.nbytes + layout.CRC_BYTES}", path)
            if direct:
                payload = memoryview(dst.reshape(-1).view(np.uint8))
                trailer = bytearray(layout.CRC_BYTES)
                got = os.preadv(f.fileno(), [payload, trailer], 0)
                stored = int.from_bytes(trailer, "little")
            else:
                raw = memoryview(_scratch.get(size))
                got = f.readinto(raw)
                payload, stored = split_trailer(raw)
        if got != size:
            raise self._fail(key, "was cut short while reading", path)
        if direct:
            self._check(key, crc32c(payload), stored, path)
        else:
            self._check(key, self._verify_and_scatter(payload, item, target), stored, path)
        return size

    def _from_capacity(self, key, item, target) -> int:
        path = f"{self.capacity.head_dir} key {self.entry['path']}/{key}"
        try:
            data = self.capacity.read(f"{self.entry['path']}/{key}")
        except Exception as e:  # noqa: BLE001 - TensorStore raises ValueError and others
            raise CorruptCheckpointError(
                f"array {self.entry['name']!r}: chunk {key} cannot be read from the capacity "
                f"tier ({path}): {e}") from None
        if data is None:
            raise CheckpointNotFoundError(
                f"array {self.entry['name']!r}: chunk {key} is missing from the capacity tier "
                f"({path})")
        if len(data) != self.nbytes + layout.CRC_BYTES:
            raise self._fail(key, f"has {len(data)} bytes in the capacity tier", path)
        payload, stored = split_trailer(data)
        self._check(key, self._verify_and_scatter(payload, item, target), stored, path)
        return len(data)

    def _verify_and_scatter(self, payload, item, target) -> int:
        """Copy the wanted part of a chunk into the target while checksumming the whole
        chunk, in one pass (``decode_chunk``); returns the crc32c. On a mismatch the caller
        raises (or refills the same region from another tier's copy)."""
        region = item.chunk_region
        wanted = tuple(slice(o, o + n) for o, n in zip(region.offset, region.shape))
        return decode_chunk(payload, self.chunk_shape, self.storage, wanted,
                            target[item.target_region.slices()])

    def read(self, item: ReadItem, target: np.ndarray) -> int:
        key = layout.chunk_key(item.chunk_index)
        if key not in self.entry["chunks"]:
            raise CorruptCheckpointError(
                f"array {self.entry['name']!r}: chunk {key} is not listed in the manifest")
        if self.local is None:
            return self._from_capacity(key, item, target)
        try:
            return self._from_local(key, item, target)
        except FileNotFoundError:
            if self.capacity is None:
                raise CheckpointNotFoundError(
                    f"array {self.entry['name']!r}: chunk {key} is missing from {self.where} "
                    f"({os.path.join(self.local, key)}); it was written by rank(s) "
                    f"{self.entry['chunks'][key]['writers']} into their own node's tier. "
                    "Restore with ranks on the nodes that hold it, or from the capacity tier"
                ) from None
            return self._from_capacity(key, item, target)
        except CorruptCheckpointError as e:
            if self.capacity is None:
                raise
            warnings.warn(f"tierpoint: {e}; reading the capacity tier's copy instead",
                          stacklevel=2)
            return self._from_capacity(key, item, target)


def read_array(local_dir: str | None, entry: dict, items: list[ReadItem], target: np.ndarray,
               *, threads: int, where: str, capacity=None) -> int:
    """Fill ``target`` (bits of the requested box) from ``items``; return bytes read.

    ``entry`` is the array's manifest record; ``local_dir`` the local step directory (None
    when only the capacity tier holds the checkpoint); ``capacity`` a CapacityReader or None.
    """
    reader = _ChunkReader(local_dir, entry, capacity, where)
    if threads <= 1 or len(items) <= 1:
        return sum(reader.read(i, target) for i in items)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tierpoint-read") as ex:
        return sum(ex.map(lambda i: reader.read(i, target), items))
