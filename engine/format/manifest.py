"""The typed manifest: what a checkpoint's ``.tierpoint-manifest.json`` says, as frozen values.

Two document versions (``layout.build_manifest`` and ``format/slices.py`` describe them):
version 1 lists every chunk of every array in the one document; version 2 (the *header*)
lists the arrays, their layouts and the slices the directory holds, and the chunk records
live in one slice file per saving rank. This module turns a document that passed
``layout.manifest_problems`` into dataclasses once, so the rest of the engine reads fields by
name instead of indexing nested dicts, and turns them back into the same document
(``to_document``) for writing a drained copy's manifest. A version 2 ``Manifest`` carries the
chunk records of the slices it was given (``with_slices``; ``loaded`` names them): a reader
holds only the records of what it reads, verify and the drain those of every slice a copy
holds.

Invariants:
- ``Manifest.from_document`` is only called on a document that passed the structural checks
  (``layout.load_manifest`` does both): every field used here was checked before.
- ``from_document(d).to_document() == d`` for every document this engine writes, so reading
  and rewriting a manifest never changes its bytes' meaning (the commit marker hashes them).
- Nothing here touches the filesystem.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..kernels import combine_fingerprints
from . import chunkhash
from .placement import ArrayPlacement, cells_index, chunk_grid
from .subchunks import inner_shape_of
from .types import Box


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One chunk of an array as the manifest records it: the size of its file (payload and
    crc32c trailer), its crc32c, the cryptographic hash of the file (as format/chunkhash.py
    records it), its fingerprint contribution (hex) and the saving ranks that wrote it
    (several for a replicated chunk)."""

    nbytes: int
    crc32c: int
    hash: str
    fingerprint: str
    writers: tuple[int, ...]

    @classmethod
    def from_document(cls, d: dict) -> "ChunkRecord":
        return cls(d["nbytes"], d["crc32c"], chunkhash.read(d), d.get("fingerprint", ""),
                   tuple(d.get("writers", ())))

    def to_document(self) -> dict:
        out: dict[str, Any] = {"nbytes": self.nbytes, "crc32c": self.crc32c}
        chunkhash.write(out, self.hash)
        if self.fingerprint:
            out["fingerprint"] = self.fingerprint
        out["writers"] = list(self.writers)
        return out


@dataclass(frozen=True, slots=True)
class ArrayRecord:
    """One saved array: where its Zarr array lies in the step directory (``path``), its state
    key, element type, shape, chunk grid, fingerprint, saved shards and chunk table."""

    name: str
    path: str
    key: tuple[str, ...]
    dtype: str
    shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    fingerprint: str  # "" where unknown (a version 2 copy read without every slice)
    shards: tuple[dict, ...]
    chunks: dict[str, ChunkRecord]
    # The header's layout: {"shards": [...]} or {"grid": parts, "group": g} (placement.py);
    # a version 1 record's is its shards.
    layout: dict = field(default_factory=dict)
    # Version 4: the inner chunk shape of its sub-chunked chunk files (format/subchunks.py),
    # None where chunk files are plain. Not in the document: it follows from the format
    # version, the chunk shape and the dtype (``Manifest.from_document`` sets it).
    inner_shape: tuple[int, ...] | None = None

    @classmethod
    def from_document(cls, name: str, d: dict, version: int = 1) -> "ArrayRecord":
        shards = tuple(d.get("shards", ())) if "layout" not in d else \
            tuple(d["layout"].get("shards", ()))
        return cls(name=d.get("name", name), path=d["path"], key=tuple(d.get("key", ())),
                   dtype=d["dtype"], shape=tuple(d["shape"]),
                   chunk_shape=tuple(d["chunk_shape"]), fingerprint=d.get("fingerprint", ""),
                   shards=shards,
                   chunks={k: ChunkRecord.from_document(r)
                           for k, r in d.get("chunks", {}).items()},
                   layout=dict(d["layout"]) if "layout" in d else {"shards": list(shards)},
                   inner_shape=inner_shape_of(version, d["chunk_shape"], d["dtype"]))

    def to_document(self) -> dict:
        """The version 1 record (with its chunk table)."""
        return {"name": self.name, "path": self.path, "key": list(self.key),
                "dtype": self.dtype, "shape": list(self.shape),
                "chunk_shape": list(self.chunk_shape), "fingerprint": self.fingerprint,
                "shards": [dict(s) for s in self.shards],
                "chunks": {k: r.to_document() for k, r in self.chunks.items()}}

    def header_document(self) -> dict:
        """The version 2 header record (no chunk table; a fingerprint only where known)."""
        out = {"name": self.name, "path": self.path, "key": list(self.key),
               "dtype": self.dtype, "shape": list(self.shape),
               "chunk_shape": list(self.chunk_shape), "layout": self.layout}
        if self.fingerprint:
            out["fingerprint"] = self.fingerprint
        return out

    @property
    def chunk_count(self) -> int:
        """The chunks of the array's grid (recorded or not)."""
        return math.prod(chunk_grid(self.shape, self.chunk_shape))

    def chunk_box(self, key: str) -> Box:
        """The region of the array chunk ``key`` covers (edge chunks are cut to the shape)."""
        index = tuple(int(p) for p in key.split(".")[1:])
        offset = tuple(i * c for i, c in zip(index, self.chunk_shape))
        return Box(offset, tuple(min(c, s - o)
                                 for c, s, o in zip(self.chunk_shape, self.shape, offset)))


def _fingerprint_of(chunks: dict[str, ChunkRecord]) -> str:
    """An array's fingerprint: the sum of its chunks' contributions (integrity.py's
    ``array_fingerprint``; not imported, integrity imports this module)."""
    return f"{combine_fingerprints(int(c.fingerprint, 16) for c in chunks.values()):016x}"


@dataclass(frozen=True, slots=True)
class SliceEntry:
    """What a version 2 header records of one saving rank's slice: the SHA-256 of the slice
    file's bytes, its Merkle root over its chunks (integrity.slice_root), the inclusion proof
    of its leaf in the checkpoint digest (sibling hashes, bottom up; None where the header
    lists every slice and the digest is recomputed from all roots instead), and the number of
    chunks and chunk-file bytes it records."""

    sha256: str
    root: str
    proof: tuple[str, ...] | None
    chunks: int
    bytes: int

    @classmethod
    def from_document(cls, d: dict) -> "SliceEntry":
        proof = d.get("proof")
        return cls(d["sha256"], d["root"], None if proof is None else tuple(proof),
                   int(d["chunks"]), int(d["bytes"]))

    def to_document(self) -> dict:
        out: dict[str, Any] = {"sha256": self.sha256, "root": self.root}
        if self.proof is not None:
            out["proof"] = list(self.proof)
        out.update(chunks=self.chunks, bytes=self.bytes)
        return out

    def without_proof(self) -> "SliceEntry":
        return SliceEntry(self.sha256, self.root, None, self.chunks, self.bytes)


@dataclass(frozen=True, slots=True)
class RankRecord:
    """One saving rank: its node and host, and its *domain*: the number of the node-local
    directory it wrote into (ranks sharing a directory share a domain; see tiers/holdings.py).
    ``tier_dir`` is where that directory was when saved (for messages only, never to find it).
    """

    rank: int
    node: str
    host: str
    pid: int
    tier_dir: str
    domain: int

    @classmethod
    def from_document(cls, d: dict, domain: int) -> "RankRecord":
        return cls(int(d.get("rank", -1)), str(d.get("node", "?")), str(d.get("host", "?")),
                   int(d.get("pid", 0)), str(d.get("tier_dir", "")), domain)

    def to_document(self) -> dict:
        return {"rank": self.rank, "node": self.node, "host": self.host, "pid": self.pid,
                "tier_dir": self.tier_dir, "domain": self.domain}


def _domains(ranks: list) -> list[int]:
    """Each saving rank's domain. Manifests that predate the ``domain`` field number the
    (node, tier directory) pairs in rank order, as the saving job did."""
    if all(isinstance(r, dict) and "domain" in r for r in ranks):
        return [int(r["domain"]) for r in ranks]
    numbers: dict = {}
    return [numbers.setdefault((r.get("node"), r.get("tier_dir")), len(numbers))
            for r in ranks]


@dataclass(frozen=True, slots=True)
class Manifest:
    """A checkpoint's manifest. ``tier`` is what a drained copy adds (``{"kind": "capacity",
    "parts": [...]}``), empty on a node-local copy; ``document`` is the validated document
    itself, kept so a copy can be rewritten field for field."""

    run: str
    step: int
    ordinal: int
    digest: str
    time: str
    unix_time: float
    world_size: int
    ranks: tuple[RankRecord, ...]
    versions: dict
    arrays: dict[str, ArrayRecord]
    values: dict[str, dict]
    metadata: dict
    lineage: dict
    tier: dict
    document: dict = field(repr=False, compare=False)
    format_version: int = 1
    groups: tuple[dict, ...] = ()
    slices: dict[int, SliceEntry] = field(default_factory=dict)  # what the header lists
    # Version 2: the saving ranks whose slices' records fill the chunk tables (None: version
    # 1, whose tables are complete). ``conflicts``: (array, chunk, rank, rank) of replicas
    # whose records differ between two slices (verify reports them).
    loaded: frozenset | None = None
    conflicts: tuple = ()
    _placements: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_document(cls, d: dict) -> "Manifest":
        """The typed view of a document that passed ``layout.manifest_problems``; a version 2
        header's chunk tables are empty until ``with_slices``."""
        ranks = list(d.get("layout", {}).get("ranks", []))
        version = int(d.get("format_version", 1))
        return cls(run=d.get("run", ""), step=int(d.get("step", -1)),
                   ordinal=int(d.get("ordinal", 0) or 0), digest=d.get("digest", ""),
                   time=d.get("time", ""), unix_time=float(d.get("unix_time", 0.0)),
                   world_size=int(d.get("world_size", len(ranks))),
                   ranks=tuple(RankRecord.from_document(r, dom)
                               for r, dom in zip(ranks, _domains(ranks))),
                   versions=dict(d.get("versions", {})),
                   arrays={n: ArrayRecord.from_document(n, a, version)
                           for n, a in d["arrays"].items()},
                   values=dict(d.get("values", {})), metadata=dict(d.get("metadata", {})),
                   lineage=dict(d.get("lineage", {})), tier=dict(d.get("tier", {})),
                   document=d, format_version=version,
                   groups=tuple(d.get("groups", ())),
                   slices={int(r): SliceEntry.from_document(e)
                           for r, e in d.get("slices", {}).items()},
                   loaded=frozenset() if version >= 2 else None)

    def to_document(self) -> dict:
        """The document, with this manifest's ``tier`` (the only field a drain changes)."""
        out = dict(self.document)
        if self.tier:
            out["tier"] = dict(self.tier)
        else:
            out.pop("tier", None)
        return out

    @property
    def domains(self) -> list[int]:
        """Each saving rank's domain, in rank order."""
        return [r.domain for r in self.ranks]

    # ---- version 2: slices ------------------------------------------------------------------

    @property
    def sliced(self) -> bool:
        """Whether the chunk records live in slices (format version 2)."""
        return self.loaded is not None

    @property
    def complete(self) -> bool:
        """Whether the chunk tables hold every chunk record of the checkpoint."""
        return self.loaded is None or len(self.loaded) >= self.world_size

    def placement(self, name: str) -> ArrayPlacement:
        """Who holds and writes the chunks of array ``name`` (from the header; cached)."""
        found = self._placements.get(name)
        if found is None:
            a = self.arrays[name]
            cells = None
            if "grid" in a.layout:
                g = a.layout["group"]
                cells = self._placements.get(("group", g))
                if cells is None:
                    cells = self._placements[("group", g)] = cells_index(self.groups[g])
            found = self._placements[name] = ArrayPlacement(
                a.name, a.shape, a.chunk_shape, a.layout, self.groups, cells)
        return found

    def writers_of(self, array: ArrayRecord, key: str) -> tuple[int, ...]:
        """The saving ranks that wrote chunk ``key``: recorded (version 1), or from the
        header's layout (version 2, whether or not their slices are loaded)."""
        if self.loaded is None:
            record = array.chunks.get(key)
            return record.writers if record is not None else ()
        index = tuple(int(p) for p in key.split(".")[1:])
        return self.placement(array.name).writers(index, self.domains)

    def with_slices(self, documents: dict[int, dict]) -> "Manifest":
        """This header with the chunk records of the given slices (rank -> slice document,
        checked already: format/slices.py ``parse_slice``). A chunk's writers are the ranks
        whose slices record it; each array's fingerprint is summed once every slice is here.
        Version 1 manifests are returned unchanged."""
        if self.loaded is None:
            return self
        tables: dict[str, dict[str, ChunkRecord]] = {n: {} for n in self.arrays}
        conflicts = []
        for rank in sorted(documents):
            for name, chunks in documents[rank].get("arrays", {}).items():
                table = tables[name]
                for key, r in chunks.items():
                    known = table.get(key)
                    if known is None:
                        table[key] = ChunkRecord(r["nbytes"], r["crc32c"], chunkhash.read(r),
                                                 r["fingerprint"], (rank,))
                        continue
                    if (known.hash, known.crc32c) != (chunkhash.read(r), r["crc32c"]):
                        conflicts.append((name, key, known.writers[0], rank))
                    table[key] = ChunkRecord(known.nbytes, known.crc32c, known.hash,
                                             known.fingerprint, known.writers + (rank,))
        complete = len(documents) >= self.world_size
        arrays = {}
        for name, a in self.arrays.items():
            fingerprint = a.fingerprint
            if complete and not fingerprint:
                fingerprint = _fingerprint_of(tables[name])
            arrays[name] = ArrayRecord(a.name, a.path, a.key, a.dtype, a.shape, a.chunk_shape,
                                       fingerprint, a.shards, tables[name], a.layout,
                                       a.inner_shape)
        return Manifest(self.run, self.step, self.ordinal, self.digest, self.time,
                        self.unix_time, self.world_size, self.ranks, self.versions, arrays,
                        self.values, self.metadata, self.lineage, self.tier, self.document,
                        self.format_version, self.groups, self.slices,
                        frozenset(documents), tuple(conflicts), self._placements)

    def recorded_bytes(self) -> int:
        """The chunk-file bytes this copy's records describe: every chunk (version 1), or
        the slices the header lists (version 2; replicas counted once per slice)."""
        if self.loaded is None:
            return sum(c.nbytes for a in self.arrays.values() for c in a.chunks.values())
        return sum(e.bytes for e in self.slices.values())

    def domain_nodes(self) -> dict[int, str]:
        """domain -> the node its ranks ran on (for messages)."""
        return {r.domain: r.node for r in self.ranks}
