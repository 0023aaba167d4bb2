"""Manifest slices (format version 2): the chunk records of one saving rank, in a file of their
own, so that no reader, and no collective, has to hold every chunk record of a big job.

A checkpoint directory of version 2 holds, besides the chunks::

    .tierpoint-manifest.json            the header: arrays (name, path, key, dtype, shape,
                                        chunk_shape, layout), groups, the slices this copy
                                        holds, and everything else a version 1 manifest says
    .tierpoint-slices/r<rank, 8 digits>.json
                                        one slice per saving rank whose chunks this copy holds

A slice is ``{"format_version": 2, "run", "step", "rank", "arrays": {name: {chunk key:
{"nbytes", "crc32c", "hash" (or "sha256" before version 5: format/chunkhash.py),
"fingerprint"}}}}``: every chunk file that rank wrote (a rank
that wrote nothing has an empty slice, so every rank's slice exists). Its writer is the file.

Trust, from the marker down (each link checked before anything below it is used):
- the commit marker holds the header's SHA-256 (as in version 1);
- the header records, for each slice it holds, a ``SliceEntry``: the slice file's SHA-256,
  its root (integrity.slice_root over its chunk leaves), and the inclusion proof of its leaf
  in the checkpoint digest (integrity: the digest is the Merkle root over ``rank\\0root`` in
  rank order). A node-local copy thus proves that its slices belong to the digest without
  any other node's; a drained copy lists every slice (no proofs: the digest is recomputed
  from all the roots);
- a slice file is used only when its bytes have the recorded SHA-256 and its records give
  the recorded root (``parse_slice``); a damaged slice is a CorruptCheckpointError naming the
  file and the rank.

Pure: documents and bytes in, documents and problems out. The files are read and written by
format/layout.py (node-local directories) and the tiers (a drained copy keeps its slices as
keys of its OCDBT database).
"""
from __future__ import annotations

import hashlib
import json
import re

from ..errors import CorruptCheckpointError
from . import chunkhash, integrity
from .manifest import Manifest, SliceEntry
from .placement import chunk_grid

VERSION = 2  # of the slice documents; the header's own version is layout.FORMAT_VERSION
_HEX = re.compile(r"^[0-9a-f]+$")
_CHUNK_KEY = re.compile(r"^c(\.[0-9]+)*$")


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def encode(document: dict) -> bytes:
    """A slice's bytes (compact JSON, as every tierpoint document)."""
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def slice_document(*, run: str, step: int, rank: int, arrays: dict) -> dict:
    """The slice of ``rank``: ``arrays[name][chunk key]`` = {nbytes, crc32c, hash,
    fingerprint (hex)} of every chunk it wrote (arrays it wrote nothing of are left out)."""
    return {"format_version": VERSION, "run": run, "step": step, "rank": rank,
            "arrays": {n: dict(sorted(c.items())) for n, c in sorted(arrays.items()) if c}}


def root_of(document: dict, paths: dict[str, str]) -> str:
    """The slice root of a slice document (``paths``: array name -> its path)."""
    return integrity.slice_root({paths[name]: {k: chunkhash.read(r) for k, r in chunks.items()}
                                 for name, chunks in document.get("arrays", {}).items()})


def entry_of(data: bytes, document: dict, paths: dict[str, str]) -> SliceEntry:
    """What a header records of a slice (no proof yet: ``seal`` makes them)."""
    chunks = document.get("arrays", {}).values()
    return SliceEntry(hashlib.sha256(data).hexdigest(), root_of(document, paths), None,
                      sum(len(c) for c in chunks),
                      sum(r["nbytes"] for c in chunks for r in c.values()))


class DigestTree:
    """The shape of a checkpoint's digest tree (format/integrity.py): domain number -> its
    saving ranks ascending. Version 2: one group of every rank; version 3: the saving ranks
    grouped by domain. Built once per header; answers where a rank sits in O(1)."""

    def __init__(self, groups: dict[int, list[int]]):
        self.groups = {d: list(rs) for d, rs in sorted(groups.items())}
        self.order = list(self.groups)
        self.position = {r: (g, i) for g, d in enumerate(self.order)
                         for i, r in enumerate(self.groups[d])}

    @classmethod
    def of(cls, manifest: Manifest) -> "DigestTree":
        if manifest.format_version < 3:
            return cls.single(manifest.world_size)
        groups: dict[int, list[int]] = {}
        for rank, domain in enumerate(manifest.domains):
            groups.setdefault(domain, []).append(rank)
        return cls(groups)

    @classmethod
    def single(cls, world_size: int) -> "DigestTree":
        return cls({0: list(range(world_size))})

    def ranks(self) -> list[int]:
        return sorted(self.position)


def seal_group(ranks: list[int], entries) -> tuple[str, dict[int, tuple]]:
    """One domain's root (hex) and each of its ranks' proof inside the domain, from the
    ranks' entries (``entries[rank]``: SliceEntry): what a domain's leader computes."""
    leaves = [integrity.rank_leaf(r, entries[r].root) for r in ranks]
    proofs = integrity.merkle_proofs(leaves)
    return integrity.merkle_root(leaves).hex(), {
        r: tuple(h.hex() for h in p) for r, p in zip(ranks, proofs)}


def seal_top(domains: list[int], roots: list[str]) -> tuple[str, list[tuple]]:
    """The checkpoint digest from each domain's root (``domains``: their numbers, in order)
    and each domain's proof in the top tree (none with a single domain): what the
    coordinator computes, O(domains log domains)."""
    if len(roots) == 1:
        return integrity.DIGEST_PREFIX + roots[0], [()]
    leaves = [integrity.group_leaf(d, root) for d, root in zip(domains, roots)]
    proofs = integrity.merkle_proofs(leaves)
    return (integrity.DIGEST_PREFIX + integrity.merkle_root(leaves).hex(),
            [tuple(h.hex() for h in p) for p in proofs])


def with_proof(entry: SliceEntry, proof) -> SliceEntry:
    return SliceEntry(entry.sha256, entry.root, tuple(proof), entry.chunks, entry.bytes)


def seal(entries: list[SliceEntry], tree: DigestTree | None = None
         ) -> tuple[str, list[SliceEntry]]:
    """The checkpoint digest over every saving rank's slice (``entries[rank]``) and the
    entries with their inclusion proofs, in one process (tests and tools; a save runs
    ``seal_group`` on each leader and ``seal_top`` on the coordinator)."""
    tree = tree or DigestTree.single(len(entries))
    sealed = [seal_group(tree.groups[d], entries) for d in tree.order]
    digest, tops = seal_top(tree.order, [root for root, _ in sealed])
    out = list(entries)
    for (_, inner), top in zip(sealed, tops):
        for r, proof in inner.items():
            out[r] = with_proof(entries[r], proof + top)
    return digest, out


def digest_of(entries: dict[int, SliceEntry], tree: DigestTree) -> str | None:
    """The digest recomputed from every rank's entry; None when some rank's is missing."""
    if sorted(entries) != tree.ranks():
        return None
    return integrity.tree_digest(tree.groups, {r: e.root for r, e in entries.items()})


def proves(entry: SliceEntry, rank: int, tree: DigestTree, digest: str) -> bool:
    """Whether ``entry``'s proof leads from its root to ``digest`` (its proof inside its
    domain, then its domain's in the top tree)."""
    if entry.proof is None or not digest.startswith(integrity.DIGEST_PREFIX) or \
            rank not in tree.position:
        return False
    try:
        proof = [bytes.fromhex(h) for h in entry.proof]
    except ValueError:
        return False
    g, index = tree.position[rank]
    members = len(tree.groups[tree.order[g]])
    inner = integrity.proof_depth(members)
    node = integrity.proof_root(integrity.rank_leaf(rank, entry.root), index, members,
                                proof[:inner])
    if node is not None and len(tree.order) > 1:
        node = integrity.proof_root(integrity.group_leaf(tree.order[g], node.hex()), g,
                                    len(tree.order), proof[inner:])
    elif node is not None and len(proof) != inner:
        node = None
    return node is not None and integrity.DIGEST_PREFIX + node.hex() == digest


def entry_problems(manifest: Manifest) -> list[tuple[int | None, str]]:
    """(rank, problem) for every slice entry of a header that does not belong to its digest:
    each entry's proof must lead to the digest, or, where the header lists every slice
    without proofs, the roots must give the digest."""
    out: list[tuple[int | None, str]] = []
    tree = DigestTree.of(manifest)
    full = digest_of(manifest.slices, tree)
    if full is not None and full == manifest.digest:
        return out
    if full is not None and all(e.proof is None for e in manifest.slices.values()):
        return [(None, f"the slice roots of ranks 0..{manifest.world_size - 1} give the digest "
                       f"{full}, not the recorded {manifest.digest}")]
    for rank, entry in sorted(manifest.slices.items()):
        if not proves(entry, rank, tree, manifest.digest):
            out.append((rank, "its inclusion proof does not lead to the checkpoint digest"))
    return out


# ---- the structure of a slice (checked before any field is used; the header's is checked
# by format/validate.py) --------------------------------------------------------------------

def parse_slice(data: bytes, manifest: Manifest, rank: int, where: str,
                entry: SliceEntry | None = None, *, unlisted: bool = False) -> dict:
    """The checked slice document of ``rank`` from its file's bytes: the SHA-256 the header
    records (``entry``, default the manifest's own; ``unlisted``: none, the caller proves the
    root by other means), valid JSON of this checkpoint and rank, every record well formed
    and in its array's grid, and the root the entry records. Raises CorruptCheckpointError
    naming the slice file ``where`` and the rank."""
    if entry is None and rank in manifest.slices and not unlisted:
        entry = manifest.slices[rank]

    def bad(problem: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"manifest slice of rank {rank} ({where}): {problem}; the slice is damaged. Read "
            "the checkpoint from another copy (the capacity tier), or restore from an older "
            "step")
    if entry is not None and hashlib.sha256(data).hexdigest() != entry.sha256:
        raise bad("its SHA-256 differs from the one the manifest header records")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise bad(f"not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format_version") != VERSION or \
            doc.get("rank") != rank or doc.get("run") != manifest.run or \
            doc.get("step") != manifest.step or not isinstance(doc.get("arrays"), dict):
        raise bad(f"it is not the version {VERSION} slice of rank {rank} of run "
                  f"{manifest.run!r} step {manifest.step}")
    for name, chunks in doc["arrays"].items():
        array = manifest.arrays.get(name)
        if array is None or not isinstance(chunks, dict):
            raise bad(f"array {name!r} is not in the manifest header")
        grid = chunk_grid(array.shape, array.chunk_shape)
        for key, r in chunks.items():
            index = key.split(".")[1:] if isinstance(key, str) and _CHUNK_KEY.match(key) \
                else None
            if index is None or len(index) != len(grid) or \
                    any(int(i) >= g for i, g in zip(index, grid)):
                raise bad(f"array {name!r}: chunk key {key!r} is not in its chunk grid")
            if not isinstance(r, dict) or not _count(r.get("nbytes")) or \
                    not _count(r.get("crc32c")) or \
                    not chunkhash.well_formed(chunkhash.read(r)) or \
                    not (isinstance(r.get("fingerprint"), str) and _HEX.match(r["fingerprint"])):
                raise bad(f"array {name!r}: chunk {key}: malformed record")
    if entry is not None:
        root = root_of(doc, {n: a.path for n, a in manifest.arrays.items()})
        if root != entry.root:
            raise bad(f"its records give the root {root}, not the recorded {entry.root}")
    return doc


def parse_written(data: bytes, rank: int) -> dict:
    """A slice document just written by ``rank`` of the save in progress, read back by its
    domain's leader (the header that will check it does not exist yet): JSON of this
    version and rank, records checked when the header is read."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise CorruptCheckpointError(f"the manifest slice rank {rank} just wrote is not valid "
                                     f"JSON ({e}); the save fails, earlier checkpoints are "
                                     "intact") from None
    if not isinstance(doc, dict) or doc.get("format_version") != VERSION or \
            doc.get("rank") != rank or not isinstance(doc.get("arrays"), dict):
        raise CorruptCheckpointError(f"the manifest slice of rank {rank} in the save in "
                                     "progress is not that rank's (another job writing the "
                                     "same step?); the save fails, earlier checkpoints are "
                                     "intact")
    return doc


def prove_unlisted(manifest: Manifest, ranks, read, where) -> dict[int, dict]:
    """The slice documents of ``ranks``, which the header does not list (a directory into
    which other nodes' directories were copied: one header won, every slice file is there):
    usable only when every saving rank's slice is at hand, so that the roots of the listed
    entries and of these files give the digest. ``read(rank)``: the file's bytes or None.
    Returns {} when some rank's slice is not at hand; CorruptCheckpointError when the roots
    do not give the digest (or a file is damaged)."""
    ranks = sorted(set(ranks) - set(manifest.slices))
    if sorted(set(ranks) | set(manifest.slices)) != list(range(manifest.world_size)):
        return {}
    documents, roots = {}, {r: e.root for r, e in manifest.slices.items()}
    paths = {n: a.path for n, a in manifest.arrays.items()}
    for rank in ranks:
        data = read(rank)
        if data is None:
            return {}
        documents[rank] = parse_slice(data, manifest, rank, where(rank), unlisted=True)
        roots[rank] = root_of(documents[rank], paths)
    digest = integrity.tree_digest(DigestTree.of(manifest).groups, roots)
    if digest != manifest.digest:
        raise CorruptCheckpointError(
            f"the manifest slices of ranks {ranks} ({where(ranks[0])} and the others) are not "
            f"listed in the header, and with the listed ones they give the digest {digest}, "
            f"not the checkpoint's {manifest.digest}: they belong to another checkpoint or "
            "are damaged. Remove them, or read the checkpoint from another copy")
    return documents


def record_problems(manifest: Manifest, rank: int, document: dict) -> list[tuple[str, str, str]]:
    """(array, chunk key, problem) for every chunk the header's layouts say ``rank`` wrote
    but its slice does not record, and every record of a chunk the layouts give to other
    writers (verify: a slice that lost or gained records is damage)."""
    out = []
    domains = manifest.domains
    for name in manifest.arrays:
        have = document.get("arrays", {}).get(name, {})
        placement = manifest.placement(name)
        wrote = {".".join(["c", *map(str, index)])
                 for index in placement.written_by(rank, domains)}
        for key in sorted(wrote - set(have)):
            out.append((name, key, f"the manifest slice of rank {rank} lacks the record of "
                                   "this chunk, which the header's layout says it wrote"))
        for key in sorted(set(have) - wrote):
            writers = placement.writers(tuple(int(p) for p in key.split(".")[1:]), domains)
            out.append((name, key, f"the manifest slice of rank {rank} records this chunk, "
                                   f"which the header's layout says rank(s) {list(writers)} "
                                   "wrote"))
    return out
