"""Carry out this rank's reads of a restore plan against one tier directory.

Called by every restoring rank; no collectives here. Each needed chunk file is read whole,
its crc32c trailer checked (and compared with the manifest), and its overlap with the
requested box copied into the target. When a chunk maps onto a contiguous run of the target
it is read straight into the target's memory (no intermediate buffer).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import dtypes, layout
from .errors import CorruptCheckpointError, CheckpointNotFoundError
from .kernels import copy_region, crc32c, split_trailer
from .types import ReadItem

_scratch = threading.local()


def _scratch_buffer(nbytes: int) -> memoryview:
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < nbytes:
        buf = bytearray(nbytes)
        _scratch.buf = buf
    return memoryview(buf)[:nbytes]


def read_array(step_dir: str, entry: dict, items: list[ReadItem], target: np.ndarray, *,
               threads: int, where: str) -> int:
    """Fill ``target`` (bits of the requested box) from ``items``; return bytes read.

    ``entry`` is the array's manifest record; ``where`` names this tier in errors.
    """
    storage = dtypes.storage_dtype(entry["dtype"])
    chunk_shape = tuple(entry["chunk_shape"])
    chunk_nbytes = int(np.prod(chunk_shape, dtype=np.int64)) * storage.itemsize
    expected = entry["chunks"]
    directory = os.path.join(step_dir, entry["path"])

    def one(item: ReadItem) -> int:
        key = layout.chunk_key(item.chunk_index)
        path = os.path.join(directory, key)
        record = expected.get(key)
        if record is None:
            raise CorruptCheckpointError(
                f"array {entry['name']!r}: chunk {key} is not listed in the manifest")
        dst = target[item.target_region.slices()]
        direct = (item.chunk_box.shape == chunk_shape and item.chunk_region.shape == chunk_shape
                  and dst.flags.c_contiguous)
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                if size != chunk_nbytes + layout.CRC_BYTES:
                    raise CorruptCheckpointError(
                        f"array {entry['name']!r}: chunk {key} ({path}) has {size} bytes, "
                        f"expected {chunk_nbytes + layout.CRC_BYTES}; the file is damaged")
                if direct:
                    payload = memoryview(dst.reshape(-1).view(np.uint8))
                    trailer = bytearray(layout.CRC_BYTES)
                    got = os.preadv(f.fileno(), [payload, trailer], 0)
                    stored = int.from_bytes(trailer, "little")
                else:
                    raw = _scratch_buffer(size)
                    got = f.readinto(raw)
                    payload, stored = split_trailer(raw)
        except FileNotFoundError:
            raise CheckpointNotFoundError(
                f"array {entry['name']!r}: chunk {key} is missing from {where} ({path}); it "
                f"was written by rank(s) {record['writers']} into their own node's tier. "
                "Restore with ranks on the nodes that hold it, or from the capacity tier"
            ) from None
        if got != size:
            raise CorruptCheckpointError(
                f"array {entry['name']!r}: chunk {key} ({path}): short read")
        actual = crc32c(payload)
        if actual != stored or actual != record["crc32c"]:
            raise CorruptCheckpointError(
                f"array {entry['name']!r}: chunk {key} ({path}) fails its crc32c check "
                f"(computed {actual:#010x}, stored {stored:#010x}, manifest "
                f"{record['crc32c']:#010x}); the chunk is corrupt")
        if not direct:
            chunk = np.frombuffer(payload, dtype=storage).reshape(chunk_shape)
            copy_region(target, item.target_region.slices(), chunk, item.chunk_region.slices())
        return size

    if threads <= 1 or len(items) <= 1:
        return sum(one(i) for i in items)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tierpoint-read") as ex:
        return sum(ex.map(one, items))
