"""Pure integrity computations over manifest records: the checkpoint digest and the arrays'
fingerprints. No I/O here (the writer hashes and fingerprints chunks as it writes them; the
verifier recomputes them from the files and compares with what these functions give).

- Chunk hash: SHA-256 of the chunk file's bytes (payload and crc32c trailer).
- Checkpoint digest: a Merkle root (SHA-256) over one leaf per chunk, in a canonical order
  (arrays by path, chunks by index). A leaf binds the array's path, the chunk's key and its
  hash, so moving, renaming or changing any chunk changes the digest. The digest depends on
  the chunk grid, so two saves of the same values with different layouts have different
  digests; the fingerprints are the layout-independent comparison.
- Array fingerprint: the sum of the chunks' contributions (kernels/fingerprint.py), the same
  for the same values whatever the sharding; 16 hex digits.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

from . import layout
from .manifest import ArrayRecord, ChunkRecord
from ..kernels import combine_fingerprints

DIGEST_PREFIX = "sha256:"


def merkle_root(leaves: list[bytes]) -> bytes:
    """SHA-256 Merkle root; an odd node is paired with itself; the empty tree hashes b""."""
    level = [hashlib.sha256(b"\x00" + leaf).digest() for leaf in leaves]
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
                 for i in range(0, len(level), 2)]
    return level[0]


def digest_leaves(arrays: Iterable[ArrayRecord]) -> list[bytes]:
    """One leaf per chunk: path, key and chunk hash, in canonical order (arrays by path,
    chunks by grid index)."""
    leaves = []
    for array in sorted(arrays, key=lambda a: a.path):
        for key in sorted(array.chunks, key=layout.chunk_index):
            leaves.append(f"{array.path}\x00{key}\x00{array.chunks[key].sha256}".encode())
    return leaves


def checkpoint_digest(arrays: dict[str, ArrayRecord]) -> str:
    """The digest of a manifest's arrays (each chunk record holding its ``sha256``)."""
    return DIGEST_PREFIX + merkle_root(digest_leaves(arrays.values())).hex()


def array_fingerprint(chunks: dict[str, ChunkRecord]) -> str:
    """An array's fingerprint from its chunk records (each holding ``fingerprint``, hex)."""
    return f"{combine_fingerprints(int(c.fingerprint, 16) for c in chunks.values()):016x}"


def fingerprint_hex(value: int) -> str:
    return f"{value:016x}"
