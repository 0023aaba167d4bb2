"""What a save records (format version 3), as pure functions of the plan and the chunk records:
each rank's slice, the small summary its domain's leader makes of it, the seal (each leader's
domain subtree, the coordinator's replica check, digest and top tree) and each directory's
header.

The save job (save/job.py) runs them in this order:

    every rank: slice_of_save -> (write the slice into its domain's directory)
    leaders:    (read their domain's slices) -> summary_of_slice for each -> seal_domain
                --collect at rank 0-->
    rank 0:     seal_domains (ShardingError for replicas that differ; digest; the domains'
                proofs in the top tree)  --scatter-->
    leaders:    proven_slices -> header_of_save (the header of their directory)

Invariants:
- no rank sends its records at the commit, and the coordinator handles one value per domain
  (the domain's root, bytes and the hashes of replicated chunks its ranks wrote), never one
  per rank: the digest's tree is shaped by domain (format version 3, format/integrity.py);
  every rank but the leaders sends and receives O(1) bytes; a leader O(log domains) more;
- ranks that wrote the same set of replicated chunks wrote identical records, else the save
  fails with a ShardingError naming two such ranks and the arrays involved (replicas written
  on one node are not compared: each is written once there);
- the header a leader writes lists exactly its domain's ranks' slices, each with the proof
  that leads from its root to the digest.
"""
from __future__ import annotations

import hashlib
import platform
import sys

import numpy as np

from ..errors import ShardingError
from ..format import chunkhash, layout, slices
from ..format.manifest import SliceEntry
from ..format.types import SavePlan, WrittenChunk
from ..version import __version__


def slice_of_save(run: str, step: int, rank: int, records: list[WrittenChunk]) -> dict:
    """The slice document of ``rank``: every chunk it wrote (``records``)."""
    arrays: dict[str, dict] = {}
    for r in records:
        record = {"nbytes": r.nbytes, "crc32c": r.crc32c}
        chunkhash.write(record, r.hash)
        record["fingerprint"] = f"{r.fingerprint:016x}"
        arrays.setdefault(r.array, {})[layout.chunk_key(tuple(r.index))] = record
    return slices.slice_document(run=run, step=step, rank=rank, arrays=arrays)


def summary_of_slice(entry: SliceEntry, replicated, rank: int, document: dict) -> dict:
    """What a domain's leader knows of one of its ranks' slices (O(1) bytes): its slice
    entry, and for the replica check, over its chunks of the arrays declared replicated
    (``replicated``: their names), the hash of which chunks it wrote (``set``), of their
    records (``records``) and the first few array names (for the message). ``document``:
    the slice document (slice_of_save's)."""
    mine = sorted((name, key, chunkhash.read(r), r["crc32c"])
                  for name, chunks in document.get("arrays", {}).items() if name in replicated
                  for key, r in chunks.items())
    out = {"slice": entry.to_document()}
    if mine:
        out["set"] = hashlib.sha256(repr([m[:2] for m in mine]).encode()).hexdigest()
        out["records"] = hashlib.sha256(repr(mine).encode()).hexdigest()
        out["arrays"] = sorted({m[0] for m in mine})[:8]
    return out


def seal_domain(ranks: list[int], summaries: dict[int, dict]) -> tuple[dict, dict[int, SliceEntry]]:
    """A domain leader's part of the seal, from its ranks' summaries (``summaries[rank]``):
    what it sends the coordinator, ``{"root", "bytes", "replicas"}`` (the domain's subtree
    root, its bytes, and ``[rank, set, records, arrays]`` of its ranks that wrote replicated
    chunks), and its ranks' entries with their proofs inside the domain."""
    entries = {r: SliceEntry.from_document(summaries[r]["slice"]) for r in ranks}
    root, inner = slices.seal_group(ranks, entries)
    replicas = [[r, summaries[r]["set"], summaries[r]["records"], summaries[r]["arrays"]]
                for r in ranks if "set" in summaries[r]]
    check_replicas(replicas)
    return ({"root": root, "bytes": sum(e.bytes for e in entries.values()),
             "replicas": replicas},
            {r: slices.with_proof(entries[r], inner[r]) for r in ranks})


def check_replicas(replicas) -> None:
    """ShardingError when two ranks that wrote the same replicated chunks (by the replica
    rule, ranks at the same place in their domains: each chunk is written once per domain)
    wrote different bytes: the "replicated" state was not identical on every rank.
    ``replicas``: ``[rank, set, records, arrays]`` of every rank that wrote some."""
    first: dict[str, tuple] = {}
    for rank, chunk_set, records, arrays in replicas:
        other, other_records = first.setdefault(chunk_set, (rank, records))
        if other_records != records:
            raise ShardingError(
                f"arrays {arrays}: the replicated chunks written by rank {other} and by "
                f"rank {rank} differ, but the arrays were declared replicated (identical on "
                "every rank); shard them or make them identical")


def seal_domains(domains: list[dict]) -> tuple[str, int, list[tuple]]:
    """The coordinator's part of the seal, from each domain leader's ``seal_domain`` value
    (``domains[d]``, in domain order): the replica check across domains, the checkpoint
    digest over the domains' roots, the save's bytes, and each domain's proof in the top
    tree. O(domains log domains), plus the ranks that wrote replicated chunks."""
    check_replicas([r for d in domains for r in d["replicas"]])
    digest, tops = slices.seal_top(list(range(len(domains))), [d["root"] for d in domains])
    return digest, sum(d["bytes"] for d in domains), tops


def seal_replies(domains: list[dict], rank0_values: dict, audit_reference=None) -> list[dict]:
    """The coordinator's seal replies, one per domain, from each leader's ``seal_domain``
    value (``domains[d]``): the digest, the save's bytes, the domain's proof in the top tree,
    rank 0's JSON values (the leader's header records them) and ``audit_reference(digest)``
    (the audit log's head for the commit markers; None: none)."""
    digest, total, tops = seal_domains(domains)
    audit = audit_reference(digest) if audit_reference is not None else None
    return [{"digest": digest, "bytes": total, "top": list(top), "values": rank0_values,
             "audit": audit} for top in tops]


def proven_slices(entries: dict[int, SliceEntry], top) -> dict[str, dict]:
    """A leader's header entries: its ranks' entries with their proofs inside the domain
    (``seal_domain``) followed by the domain's proof in the top tree (``top``)."""
    return {str(r): slices.with_proof(e, tuple(e.proof) + tuple(top)).to_document()
            for r, e in sorted(entries.items())}


def seal_save(summaries: list[dict], leaders, domain_ranks, values: dict | None = None
              ) -> list[dict]:
    """The whole seal in one process (tests and benchmarks; a save runs ``seal_domain`` on
    each leader and ``seal_domains`` on the coordinator): for each rank ``{"digest",
    "bytes"}`` and for each domain's leader (``leaders[d]``, its ranks ``domain_ranks(d)``)
    its ranks' slice entries with their proofs and rank 0's JSON ``values``."""
    parts = [seal_domain(domain_ranks(d), {r: summaries[r] for r in domain_ranks(d)})
             for d in range(len(leaders))]
    digest, total, tops = seal_domains([value for value, _ in parts])
    common = {"digest": digest, "bytes": total}
    out: list[dict] = [common] * len(summaries)
    for d, leader in enumerate(leaders):
        out[leader] = {**common, "values": values or {},
                       "slices": proven_slices(parts[d][1], tops[d])}
    return out


def static_header_of_plan(plan: SavePlan, keys: dict) -> dict:
    """The header's static part (arrays with box-by-box layouts, no grid groups) of a
    box-by-box plan: what a job plan's ``header_arrays``/``header_groups`` give for a job
    of irregular layouts (tests, and any caller holding a SavePlan)."""
    arrays = {a.name: {"name": a.name, "path": a.name, "key": list(keys[a.name]),
                       "dtype": a.dtype, "shape": list(a.shape),
                       "chunk_shape": list(a.chunk_shape),
                       "layout": {"shards": [{**box.to_json(), "ranks": list(holders)}
                                             for box, holders in a.saved_boxes]}}
              for a in plan.arrays}
    return {"arrays": arrays, "groups": []}


def header_of_save(inputs, digest: str, slice_entries: dict, values: dict) -> dict:
    """The header document a leader writes (``inputs``: save.job.ManifestInputs, whose
    ``header`` is the static part its plan gave: arrays and layouts, grid groups), its
    directory's slice entries (``{rank: SliceEntry document}``), the digest and rank 0's
    JSON ``values``."""
    ranks = [dict(r) for r in inputs.ranks]
    return layout.build_header(
        run=inputs.run, step=inputs.step, world_size=len(ranks), ranks=ranks,
        arrays=inputs.header["arrays"], groups=inputs.header["groups"],
        slice_entries={int(r): e for r, e in slice_entries.items()},
        values=values, metadata=inputs.metadata, versions=versions(),
        ordinal=inputs.ordinal, digest=digest,
        lineage={"parent": inputs.parent, "code": inputs.code_version, "user": inputs.user,
                 "hosts": sorted({r["host"] for r in ranks}),
                 **({"source": inputs.source} if inputs.source is not None else {})})


def versions() -> dict:
    out = {"tierpoint": __version__, "python": platform.python_version(),
           "numpy": np.__version__}
    torch = sys.modules.get("torch")  # recorded when the trainer uses it (not imported here)
    if torch is not None:
        out["torch"] = getattr(torch, "__version__", "?")
    return out
