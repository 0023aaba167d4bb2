"""The typed manifest: what a checkpoint's ``.tierpoint-manifest.json`` says, as frozen values.

The manifest document on disk is unchanged (``layout.build_manifest`` describes it); this module
turns a document that passed ``layout.manifest_problems`` into dataclasses once, so the rest of
the engine reads fields by name instead of indexing nested dicts, and turns them back into the
same document (``to_document``) for writing a drained copy's manifest.

Invariants:
- ``Manifest.from_document`` is only called on a document that passed the structural checks
  (``layout.load_manifest`` does both): every field used here was checked before.
- ``from_document(d).to_document() == d`` for every document this engine writes, so reading
  and rewriting a manifest never changes its bytes' meaning (the commit marker hashes them).
- Nothing here touches the filesystem.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .types import Box


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One chunk of an array as the manifest records it: the size of its file (payload and
    crc32c trailer), its crc32c, the SHA-256 of the file, its fingerprint contribution (hex)
    and the saving ranks that wrote it (several for a replicated chunk)."""

    nbytes: int
    crc32c: int
    sha256: str
    fingerprint: str
    writers: tuple[int, ...]

    @classmethod
    def from_document(cls, d: dict) -> "ChunkRecord":
        return cls(d["nbytes"], d["crc32c"], d.get("sha256", ""), d.get("fingerprint", ""),
                   tuple(d.get("writers", ())))

    def to_document(self) -> dict:
        out: dict[str, Any] = {"nbytes": self.nbytes, "crc32c": self.crc32c}
        if self.sha256:
            out["sha256"] = self.sha256
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
    fingerprint: str
    shards: tuple[dict, ...]
    chunks: dict[str, ChunkRecord]

    @classmethod
    def from_document(cls, name: str, d: dict) -> "ArrayRecord":
        return cls(name=d.get("name", name), path=d["path"], key=tuple(d.get("key", ())),
                   dtype=d["dtype"], shape=tuple(d["shape"]),
                   chunk_shape=tuple(d["chunk_shape"]), fingerprint=d.get("fingerprint", ""),
                   shards=tuple(d.get("shards", ())),
                   chunks={k: ChunkRecord.from_document(r) for k, r in d["chunks"].items()})

    def to_document(self) -> dict:
        return {"name": self.name, "path": self.path, "key": list(self.key),
                "dtype": self.dtype, "shape": list(self.shape),
                "chunk_shape": list(self.chunk_shape), "fingerprint": self.fingerprint,
                "shards": [dict(s) for s in self.shards],
                "chunks": {k: r.to_document() for k, r in self.chunks.items()}}

    def chunk_box(self, key: str) -> Box:
        """The region of the array chunk ``key`` covers (edge chunks are cut to the shape)."""
        index = tuple(int(p) for p in key.split(".")[1:])
        offset = tuple(i * c for i, c in zip(index, self.chunk_shape))
        return Box(offset, tuple(min(c, s - o)
                                 for c, s, o in zip(self.chunk_shape, self.shape, offset)))


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

    @classmethod
    def from_document(cls, d: dict) -> "Manifest":
        """The typed view of a document that passed ``layout.manifest_problems``."""
        ranks = list(d.get("layout", {}).get("ranks", []))
        return cls(run=d.get("run", ""), step=int(d.get("step", -1)),
                   ordinal=int(d.get("ordinal", 0) or 0), digest=d.get("digest", ""),
                   time=d.get("time", ""), unix_time=float(d.get("unix_time", 0.0)),
                   world_size=int(d.get("world_size", len(ranks))),
                   ranks=tuple(RankRecord.from_document(r, dom)
                               for r, dom in zip(ranks, _domains(ranks))),
                   versions=dict(d.get("versions", {})),
                   arrays={n: ArrayRecord.from_document(n, a) for n, a in d["arrays"].items()},
                   values=dict(d.get("values", {})), metadata=dict(d.get("metadata", {})),
                   lineage=dict(d.get("lineage", {})), tier=dict(d.get("tier", {})),
                   document=d)

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

    def domain_nodes(self) -> dict[int, str]:
        """domain -> the node its ranks ran on (for messages)."""
        return {r.domain: r.node for r in self.ranks}
