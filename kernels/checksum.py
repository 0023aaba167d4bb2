"""CRC32C (Castagnoli) of chunk bytes, as the Zarr v3 ``crc32c`` codec stores it: the 4-byte
little-endian checksum of the encoded chunk appended after it."""
from __future__ import annotations

import struct

import numpy as np
from crc32c import crc32c as _hw_crc32c  # hardware (SSE4.2 / ARMv8) where available

_POLY = 0x82F63B78  # reversed Castagnoli polynomial


def crc32c(buf) -> int:
    """CRC32C of a buffer (bytes, bytearray, memoryview, contiguous numpy array)."""
    return _hw_crc32c(buf)


def _table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table[n] = c
    return table


_TABLE = _table()


def crc32c_reference(buf) -> int:
    """Byte-at-a-time table CRC32C: the reference the fast path is tested against."""
    crc = 0xFFFFFFFF
    for b in memoryview(buf).cast("B").tobytes():
        crc = int(_TABLE[(crc ^ b) & 0xFF]) ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc_trailer(crc: int) -> bytes:
    return struct.pack("<I", crc)


def split_trailer(encoded) -> tuple[memoryview, int]:
    """(payload, stored crc) of an encoded chunk."""
    view = memoryview(encoded).cast("B")
    if view.nbytes < 4:
        raise ValueError("encoded chunk shorter than its 4-byte checksum")
    return view[:-4], struct.unpack("<I", view[-4:])[0]
