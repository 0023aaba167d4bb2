"""``write_shard``: one safetensors file written array by array, so that its writer holds one
array in memory, not the file.

The ``safetensors`` library writes a file from tensors that are all in memory at once (its
``serialize_file`` takes a raw pointer per tensor and copies from each). To keep the format
the library's (the header's JSON, the tensors' order, the header padding that aligns the
data), the library still writes the whole file, but every tensor's pointer aims at one
zero-filled buffer the size of the shard's largest array; then the header the library wrote
is read back (an 8-byte little-endian length, then JSON whose ``data_offsets`` place each
tensor in the data that follows) and each tensor's bytes are written over its zeros, one
array at a time: read (by the caller's ``read``: tierpoint's read API, which checks every
chunk), written at its offsets, dropped.

Invariants checked before any array is read: the header names exactly the tensors given,
with their shapes and byte lengths, and their ranges tile the data from its start to the
file's end without gap or overlap; so once every range is overwritten the file holds no
byte the library wrote as a placeholder, and the SHA-256 computed over the header and the
arrays as they are written, in file order, is the file's.

Cost: the file's data is written twice (the library's zeros, then the arrays); the zeros
are a sequential write that the page cache mostly absorbs (README, "Export to and import from
Hugging Face", gives the measured cost). Memory: the zero buffer is allocated with calloc
(pages untouched until read, and the kernel's zero page when read) and freed before the
first array is read; then one array at a time.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np

from ..errors import CorruptCheckpointError
from .names import Item

_HEADER_LEN = struct.Struct("<Q")


def write_shard(path: str, items: list[Item], read, metadata: dict[str, str],
                done=None) -> str:
    """Write ``items`` as the safetensors file ``path`` (in place: the caller renames it);
    returns its SHA-256. ``read(item)``: the item's stored bits as a numpy array (bfloat16 and
    float8 as unsigned integers of their width); ``done(nbytes)``: called after each array is
    written."""
    _layout(path, items, metadata)
    with open(path, "r+b") as f:
        _canonical_metadata(f)
        start, entries, header = _read_header(f)
        _check_layout(path, items, entries, start, os.fstat(f.fileno()).st_size)
        ranges = {name: entry["data_offsets"] for name, entry in entries.items()}
        digest = hashlib.sha256(header)
        for item in sorted(items, key=lambda i: ranges[i.name][0]):
            bits = np.ascontiguousarray(read(item))
            bits = bits.astype(bits.dtype.newbyteorder("<"), copy=False)  # safetensors: LE
            if bits.nbytes != item.nbytes:
                raise CorruptCheckpointError(
                    f"array {item.array!r} read {bits.nbytes} bytes, its manifest says "
                    f"{item.nbytes}; verify the checkpoint (tierpoint verify)")
            data = memoryview(bits.reshape(-1).view(np.uint8))
            _pwrite_all(f.fileno(), data, start + ranges[item.name][0])
            digest.update(data)
            del bits, data  # one array in memory: this one goes before the next is read
            if done is not None:
                done(item.nbytes)
    return digest.hexdigest()


def _layout(path: str, items: list[Item], metadata: dict[str, str]) -> None:
    """The library writes the file, every tensor's bytes taken from one zeroed buffer."""
    from safetensors import TensorSpec, serialize_file
    zeros = np.zeros(max([i.nbytes for i in items] + [1]), np.uint8)  # calloc: lazy pages
    pointer = zeros.ctypes.data
    specs = {i.name: TensorSpec(dtype=i.dtype, shape=list(i.shape), data_ptr=pointer,
                                data_len=i.nbytes) for i in items}
    serialize_file(specs, path, metadata=metadata)
    del zeros  # (alive until serialize_file returned: the specs hold raw pointers into it)


def _canonical_metadata(f) -> None:
    """Put the header's ``__metadata__`` keys in sorted order, in place. The library writes
    them in a hash map's order, random per process, so two exports of one checkpoint had
    different SHA-256s (and the audit log's record of an export could not be reproduced).
    Done only when re-encoding the header as the library wrote it gives its bytes exactly
    (compact JSON, then space padding): the sorted header then has the same length, and
    nothing else in the file moves."""
    f.seek(0)
    (length,) = _HEADER_LEN.unpack(f.read(_HEADER_LEN.size))
    text = f.read(length)
    pairs = json.loads(text, object_pairs_hook=_Pairs)
    if _encode(pairs) != text.rstrip(b" "):
        return  # not the encoding assumed: the library's header is kept as it is
    body = _encode(_Pairs((k, _Pairs(sorted(v)) if k == "__metadata__" else v)
                          for k, v in pairs))
    f.seek(_HEADER_LEN.size)
    f.write(body + b" " * (length - len(body)))
    f.seek(0)


class _Pairs(list):
    """A JSON object's (key, value) pairs in their order (``object_pairs_hook``)."""


def _encode(value) -> bytes:
    """Compact JSON of ``value``, each ``_Pairs`` an object with its keys in their order."""
    def plain(v):
        if isinstance(v, _Pairs):
            return {k: plain(x) for k, x in v}
        return [plain(x) for x in v] if isinstance(v, list) else v
    return json.dumps(plain(value), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _read_header(f) -> tuple[int, dict[str, dict], bytes]:
    """(where the data starts, each tensor's header entry, the header's bytes)."""
    raw = f.read(_HEADER_LEN.size)
    (length,) = _HEADER_LEN.unpack(raw)
    text = f.read(length)
    entries = {name: entry for name, entry in json.loads(text).items()
               if name != "__metadata__"}
    return _HEADER_LEN.size + length, entries, raw + text


def _check_layout(path: str, items: list[Item], entries: dict, start: int, size: int) -> None:
    """The header the library wrote places exactly ``items``, tiling the data (see the module
    docstring): what makes overwriting the ranges write the whole file."""
    want = {i.name: (list(i.shape), i.nbytes) for i in items}
    got = {name: (e["shape"], e["data_offsets"][1] - e["data_offsets"][0])
           for name, e in entries.items()}
    if got != want:
        raise RuntimeError(f"{path}: the safetensors library laid out (shape, bytes) "
                           f"{sorted(got.items())[:4]}..., not the tensors given "
                           f"{sorted(want.items())[:4]}...; report it with the safetensors "
                           "version")
    cursor = 0
    for begin, end in sorted(e["data_offsets"] for e in entries.values()):
        if begin != cursor:
            raise RuntimeError(f"{path}: the safetensors library left a gap or an overlap at "
                               f"data offset {cursor}; report it with the safetensors version")
        cursor = end
    if start + cursor != size:
        raise RuntimeError(f"{path}: {size} bytes, the header places {start + cursor}; report "
                           "it with the safetensors version")


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """``os.pwrite`` until every byte is written (it may write fewer than asked)."""
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n
