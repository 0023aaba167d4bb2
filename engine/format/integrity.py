"""Pure integrity computations over manifest records: the checkpoint digest and the arrays'
fingerprints. No I/O here (the writer hashes and fingerprints chunks as it writes them; the
verifier recomputes them from the files and compares with what these functions give).

- Chunk hash: the cryptographic hash of the chunk file's bytes, as its record holds it
  (format/chunkhash.py: SHA-256 hex up to version 4, ``blake3:<hex>`` from version 5).
- Checkpoint digest: a Merkle root (SHA-256) over one leaf per chunk, in a canonical order
  (arrays by path, chunks by index). A leaf binds the array's path, the chunk's key and its
  hash, so moving, renaming or changing any chunk changes the digest. The digest depends on
  the chunk grid, so two saves of the same values with different layouts have different
  digests; the fingerprints are the layout-independent comparison.
- Array fingerprint: the sum of the chunks' contributions (kernels/fingerprint.py), the same
  for the same values whatever the sharding; 16 hex digits.

Format version 2 (format/slices.py) splits the chunk records into one *slice* per saving rank:
- Slice root: the Merkle root over that slice's chunk leaves (the same leaves as above, only
  the slice's chunks, in the same canonical order).
- Checkpoint digest: the Merkle root over one leaf per saving rank, ``rank\0slice root``, in
  rank order. An inclusion proof (``merkle_proofs``, ``proof_root``) lets a copy that holds
  some slices show that they belong to the digest without the other slices.

Format version 3 shapes that tree by the save's domains (node-local directories), so that
each domain's leader can compute its part and the coordinator only combines one root per
domain (``tree_digest``):
- Domain root: the Merkle root over the ``rank\0slice root`` leaves of the domain's ranks,
  ascending.
- Checkpoint digest: the Merkle root over one leaf per domain, ``domain <d>\0domain root``,
  by domain number; with a single domain, its domain root itself (so version 2's tree is
  the one-group case, and a one-node job has the same digest under both versions).
- A rank's inclusion proof is its proof inside its domain followed by its domain's proof in
  the top tree.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

from .manifest import ArrayRecord, ChunkRecord
from ..kernels import combine_fingerprints

DIGEST_PREFIX = "sha256:"


def _chunk_index(key: str) -> tuple[int, ...]:
    """A chunk key's grid index (``layout.chunk_index``; not imported: layout reads slices
    through format/slices.py, which uses this module)."""
    return tuple(int(p) for p in key.split(".")[1:])


def _leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    """SHA-256 Merkle root; an odd node is paired with itself; the empty tree hashes b"".
    Leaves and inner nodes are hashed with different prefixes (0x00, 0x01), so a leaf can
    never pose as a node."""
    level = [_leaf_hash(leaf) for leaf in leaves]
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [_node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def proof_depth(count: int) -> int:
    """The number of sibling hashes in an inclusion proof of a tree of ``count`` leaves."""
    depth = 0
    while count > 1:
        count = (count + 1) // 2
        depth += 1
    return depth


def merkle_proofs(leaves: list[bytes]) -> list[list[bytes]]:
    """The inclusion proof of every leaf (its sibling hashes, bottom up) in one pass over the
    tree ``merkle_root`` builds: O(n log n) for n leaves. An odd node's sibling is itself."""
    level = [_leaf_hash(leaf) for leaf in leaves]
    proofs: list[list[bytes]] = [[] for _ in level]
    positions = list(range(len(level)))  # each leaf's node index at the current level
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        for leaf, at in enumerate(positions):
            proofs[leaf].append(level[at ^ 1])
            positions[leaf] = at // 2
        level = [_node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return proofs


def proof_root(leaf: bytes, index: int, count: int, proof: list[bytes]) -> bytes | None:
    """The root that ``proof`` leads to from ``leaf`` at position ``index`` of ``count``
    leaves; None when the proof cannot belong to such a tree (wrong length or position). The
    caller compares the result with the root it trusts."""
    if not 0 <= index < count or len(proof) != proof_depth(count):
        return None
    node = _leaf_hash(leaf)
    for sibling in proof:
        node = _node_hash(sibling, node) if index % 2 else _node_hash(node, sibling)
        index //= 2
    return node


def rank_leaf(rank: int, slice_root: str) -> bytes:
    """The digest's leaf of one saving rank's slice (format version 2)."""
    return f"{rank}\x00{slice_root}".encode()


def slices_digest(roots: list[str]) -> str:
    """The checkpoint digest (version 2) from every saving rank's slice root, in rank order."""
    return DIGEST_PREFIX + merkle_root([rank_leaf(r, root) for r, root in enumerate(roots)]).hex()


def group_leaf(domain: int, root_hex: str) -> bytes:
    """The top tree's leaf of one domain (format version 3)."""
    return f"domain {domain}\x00{root_hex}".encode()


def group_root(ranks: list[int], roots) -> str:
    """The root (hex) of one domain's subtree: ``roots[rank]`` is each rank's slice root."""
    return merkle_root([rank_leaf(r, roots[r]) for r in ranks]).hex()


def top_digest(groups: list[int], group_roots: list[str]) -> str:
    """The checkpoint digest from each domain's root (``groups``: the domain numbers, in
    order; a single domain's root is the digest itself)."""
    if len(group_roots) == 1:
        return DIGEST_PREFIX + group_roots[0]
    return DIGEST_PREFIX + merkle_root([group_leaf(d, root)
                                        for d, root in zip(groups, group_roots)]).hex()


def tree_digest(groups: dict[int, list[int]], roots) -> str:
    """The checkpoint digest (versions 2 and 3) from every saving rank's slice root
    (``roots[rank]``), ``groups``: domain number -> its ranks ascending (version 2: one group
    of every rank)."""
    order = sorted(groups)
    return top_digest(order, [group_root(groups[d], roots) for d in order])


def digest_leaves(arrays: Iterable[ArrayRecord]) -> list[bytes]:
    """One leaf per chunk: path, key and chunk hash, in canonical order (arrays by path,
    chunks by grid index)."""
    leaves = []
    for array in sorted(arrays, key=lambda a: a.path):
        for key in sorted(array.chunks, key=_chunk_index):
            leaves.append(f"{array.path}\x00{key}\x00{array.chunks[key].hash}".encode())
    return leaves


def slice_root(chunks: dict[str, dict[str, str]]) -> str:
    """The root (hex) of one slice: ``chunks[array path][chunk key]`` is the chunk's recorded hash;
    the leaves are ``digest_leaves``' (path, key, hash), in the same canonical order."""
    leaves = []
    for path in sorted(chunks):
        for key in sorted(chunks[path], key=_chunk_index):
            leaves.append(f"{path}\x00{key}\x00{chunks[path][key]}".encode())
    return merkle_root(leaves).hex()


def checkpoint_digest(arrays: dict[str, ArrayRecord]) -> str:
    """The digest (format version 1) of a manifest's arrays (each chunk record holding its
    ``hash``)."""
    return DIGEST_PREFIX + merkle_root(digest_leaves(arrays.values())).hex()


def array_fingerprint(chunks: dict[str, ChunkRecord]) -> str:
    """An array's fingerprint from its chunk records (each holding ``fingerprint``, hex)."""
    return f"{combine_fingerprints(int(c.fingerprint, 16) for c in chunks.values()):016x}"


def fingerprint_hex(value: int) -> str:
    return f"{value:016x}"
