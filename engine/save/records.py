"""What a save records (format version 2), as pure functions of the plan and the chunk records:
each rank's slice, the small summary it sends the coordinator, the coordinator's seal (the
replica check, the digest and every slice's inclusion proof), and each directory's header.

The save job (save/job.py) runs them in this order:

    every rank: slice_of_save -> (write the slice) -> summary_of_slice  --collect at rank 0-->
    rank 0:     seal_save (ShardingError for replicas that differ; digest; proofs)  --scatter-->
    leaders:    header_of_save (the header of their directory: its ranks' slice entries)

Invariants:
- every rank sends O(1) bytes at the commit: its slice's SHA-256, root, chunk count and bytes,
  and two hashes of its replicated chunks (which set, and their records), never its records;
  leaders receive O(their domain) bytes: its ranks' slice entries and rank 0's JSON values;
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
from ..format import layout, slices
from ..format.manifest import SliceEntry
from ..format.types import SavePlan, WrittenChunk
from ..version import __version__


def slice_of_save(run: str, step: int, rank: int, records: list[WrittenChunk]) -> dict:
    """The slice document of ``rank``: every chunk it wrote (``records``)."""
    arrays: dict[str, dict] = {}
    for r in records:
        arrays.setdefault(r.array, {})[layout.chunk_key(tuple(r.index))] = {
            "nbytes": r.nbytes, "crc32c": r.crc32c, "sha256": r.sha256,
            "fingerprint": f"{r.fingerprint:016x}"}
    return slices.slice_document(run=run, step=step, rank=rank, arrays=arrays)


def summary_of_slice(entry: SliceEntry, replicated, rank: int,
                     records: list[WrittenChunk]) -> dict:
    """What a rank sends the coordinator at the commit (O(1) bytes): its slice entry, and
    for the replica check, over its chunks of the arrays declared replicated
    (``replicated``: their names), the hash of which chunks it wrote (``set``), of their
    records (``records``) and the first few array names (for the message)."""
    mine = sorted((r.array, layout.chunk_key(tuple(r.index)), r.sha256, r.crc32c)
                  for r in records if r.array in replicated)
    out = {"slice": entry.to_document()}
    if mine:
        out["set"] = hashlib.sha256(repr([m[:2] for m in mine]).encode()).hexdigest()
        out["records"] = hashlib.sha256(repr(mine).encode()).hexdigest()
        out["arrays"] = sorted({m[0] for m in mine})[:8]
    return out


def check_replicas(summaries: list[dict]) -> None:
    """ShardingError when two ranks that wrote the same replicated chunks (by the replica
    rule, ranks at the same place in their domains: each chunk is written once per domain)
    wrote different bytes: the "replicated" state was not identical on every rank."""
    first: dict[str, int] = {}
    for rank, s in enumerate(summaries):
        if "set" not in s:
            continue
        other = first.setdefault(s["set"], rank)
        if summaries[other]["records"] != s["records"]:
            raise ShardingError(
                f"arrays {s['arrays']}: the replicated chunks written by rank {other} and by "
                f"rank {rank} differ, but the arrays were declared replicated (identical on "
                "every rank); shard them or make them identical")


def seal_save(summaries: list[dict], leaders, domain_ranks, values: dict | None = None
              ) -> list[dict]:
    """The coordinator's answer to every rank's summary (``summaries[rank]``): the replica
    check, then for each rank ``{"digest", "bytes"}`` (bytes: the save's total) and, for each
    domain's leader (``leaders[d]``, its ranks ``domain_ranks(d)``), its ranks' slice entries
    with their proofs and rank 0's JSON ``values`` (the header records them)."""
    check_replicas(summaries)
    entries = [SliceEntry.from_document(s["slice"]) for s in summaries]
    digest, proven = slices.seal(entries)
    total = sum(e.bytes for e in entries)
    common = {"digest": digest, "bytes": total}
    out: list[dict] = [common] * len(summaries)  # one object: the channel encodes it once
    for d, leader in enumerate(leaders):
        out[leader] = {**common, "values": values or {},
                       "slices": {str(r): proven[r].to_document() for r in domain_ranks(d)}}
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
                 "hosts": sorted({r["host"] for r in ranks})})


def versions() -> dict:
    out = {"tierpoint": __version__, "python": platform.python_version(),
           "numpy": np.__version__}
    torch = sys.modules.get("torch")  # recorded when the trainer uses it (not imported here)
    if torch is not None:
        out["torch"] = getattr(torch, "__version__", "?")
    return out
