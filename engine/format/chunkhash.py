"""The cryptographic hash of a chunk file, as the manifest records it (the only module that
knows the algorithms and how a record spells them).

- Format versions 1–4: SHA-256 of the chunk file's bytes, recorded as bare hex under the key
  ``"sha256"``.
- Format version 5: BLAKE3 (256-bit output) of the same bytes, recorded as ``"blake3:<hex>"``
  under the key ``"hash"``. The value names its algorithm, so a record is self-describing
  and a reader never guesses.

Why BLAKE3: a save hashes every byte it writes, and on a machine whose cores also encode,
checksum and fingerprint, SHA-256 was the largest CPU cost of a save (0.61 CPU s/GiB with the
SHA extensions here against 0.28 for BLAKE3, single-threaded, bench/kernel_costs.py). BLAKE3
is a cryptographic hash with a 256-bit output (128-bit collision resistance, as SHA-256), so
the trust guarantees stay: the checkpoint digest is still a SHA-256 Merkle tree over leaves
that bind each chunk's path, key and recorded hash (format/integrity.py), and
``tierpoint verify`` recomputes each chunk's hash with the algorithm its record names.

The value recorded is part of the Merkle leaf as written, so old checkpoints keep their
digests bit for bit.
"""
from __future__ import annotations

import hashlib

import blake3
import numpy as np

LEGACY_KEY = "sha256"  # versions 1-4: bare hex
KEY = "hash"  # version 5 on: "<algorithm>:<hex>"
BLAKE3_PREFIX = "blake3:"
FIRST_BLAKE3_VERSION = 5


def _bytes_of(buffer):
    """A byte view of one buffer (an array of any element type, bytes or memoryview)."""
    if isinstance(buffer, np.ndarray):
        return buffer.reshape(-1).view(np.uint8)
    return buffer


def algorithm_for(version: int) -> str:
    """The chunk hash a save in format ``version`` records."""
    return "blake3" if version >= FIRST_BLAKE3_VERSION else "sha256"


class ChunkHasher:
    """Hashes one chunk file's bytes with ``algorithm`` ("blake3" or "sha256", see
    ``algorithm_for``). ``update`` releases the GIL on large buffers (both libraries do), so
    writer threads hash in parallel."""

    def __init__(self, algorithm: str):
        self.blake3 = algorithm == "blake3"
        # max_threads=1: the writer threads are the parallelism; nested threads would fight
        # them for the same cores.
        self._h = blake3.blake3(max_threads=1) if self.blake3 else hashlib.sha256()

    def update(self, buffer) -> None:
        self._h.update(_bytes_of(buffer))

    def value(self) -> str:
        """The record's value: ``blake3:<hex>`` or (versions 1-4) the SHA-256 hex."""
        hexdigest = self._h.hexdigest()
        return BLAKE3_PREFIX + hexdigest if self.blake3 else hexdigest


def hash_of(buffers, like: str) -> str:
    """The value ``buffers`` would have, hashed with the algorithm of the recorded value
    ``like`` (what the verifier compares with the record)."""
    hasher = ChunkHasher(algorithm_of(like))
    for b in buffers:
        hasher.update(b)
    return hasher.value()


def algorithm_of(value: str) -> str:
    """``"blake3"`` or ``"sha256"`` (a bare hex value is the legacy SHA-256)."""
    return "blake3" if value.startswith(BLAKE3_PREFIX) else "sha256"


def hex_part(value: str) -> str:
    """The hex digits of a recorded value, without its algorithm prefix."""
    return value[len(BLAKE3_PREFIX):] if value.startswith(BLAKE3_PREFIX) else value


def read(record: dict) -> str:
    """The hash recorded in a chunk record of any version ("" when it has none: version 1
    records could lack it)."""
    value = record.get(KEY)
    if value is None:
        value = record.get(LEGACY_KEY, "")
    return value


def write(out: dict, value: str) -> None:
    """Store ``value`` in a chunk record under the key its version uses (none if empty)."""
    if value:
        out[KEY if value.startswith(BLAKE3_PREFIX) else LEGACY_KEY] = value


def well_formed(value) -> bool:
    """A recorded value is 64 hex digits, bare (SHA-256) or after ``blake3:``."""
    if not isinstance(value, str):
        return False
    digits = hex_part(value)
    return len(digits) == 64 and all(c in "0123456789abcdef" for c in digits)
