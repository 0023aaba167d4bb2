"""A save of several ranks on several nodes, written in one process the way the save job writes
it (format version 2): every rank's chunk files and slice through the real writers, the
coordinator's seal, each node's header and marker. Tests of the slices use it where they need
many ranks and real files without launching MPI ranks; ``to_version_1`` rewrites such a
checkpoint as the version 1 code path wrote it (one manifest with every chunk record)."""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tierpoint.format import layout
from tierpoint.format.integrity import checkpoint_digest
from tierpoint.format.manifest import ArrayRecord, ChunkRecord
from tierpoint.format.types import LocalArray
from tierpoint.save.job import ManifestInputs
from tierpoint.save.plan import plan_save
from tierpoint.save.records import (header_of_save, seal_save, slice_of_save,
                                    static_header_of_plan, summary_of_slice)
from tierpoint.format import slices
from tierpoint.save.write import ChunkWrite, RankWriter
from tierpoint.tiers.local import LocalTier

RUN = "sl"


def node_root(root: str, node: int) -> str:
    return os.path.join(root, f"n{node}")


def write_job(root: str, step: int, held: dict, *, per_node: int, chunk_bytes: int = 64,
              values=None) -> dict:
    """Save ``held`` (array name -> [(global array, box, replicated) per rank]) as a job of
    ``len(held[...])`` ranks, ``per_node`` per node (node n's local tier under
    ``root/n<n>``). Returns {"plan", "dirs": [step directory per node], "world"}."""
    world = len(next(iter(held.values())))
    domains = [r // per_node for r in range(world)]
    declarations = [[LocalArray(name, str(rows[r][0].dtype), rows[r][0].shape, rows[r][1],
                                rows[r][2]) for name, rows in sorted(held.items())]
                    for r in range(world)]
    plan = plan_save(declarations, chunk_bytes=chunk_bytes, domains=domains)
    ranks = tuple({"rank": r, "node": f"n{d}", "host": f"h{d}", "pid": 100 + r,
                   "tier_dir": node_root(root, d), "domain": d}
                  for r, d in enumerate(domains))
    replicated = frozenset(n for n, rows in held.items() if any(rep for _, _, rep in rows))
    inputs = ManifestInputs(run=RUN, step=step,
                            header=static_header_of_plan(plan, {n: [n] for n in held}),
                            replicated=replicated, values=values or {}, metadata={},
                            ordinal=1, ranks=ranks, parent=None, code_version=None,
                            user="test")
    tiers = [LocalTier(node_root(root, d)) for d in sorted(set(domains))]
    for d, tier in enumerate(tiers):
        tier.prepare(RUN, step)
        tier.write_group_metadata(RUN, step, [a.name for a in plan.arrays],
                                  {"tierpoint": {"run": RUN, "step": step}})
    summaries = []
    with ThreadPoolExecutor(2) as pool:
        for r in range(world):
            tier = tiers[domains[r]]
            writer = RankWriter(tier.writer(RUN, step, r), r, pool)
            items = []
            for a, c in plan.writes_of(r):
                whole, box, _ = held[a.name][r]
                items.append(ChunkWrite(a, c, np.ascontiguousarray(whole[box.slices()]), box))
            written = writer.chunks(items) if items else []
            if r == domains.index(domains[r]):  # the domain's leader: the arrays' zarr.json
                writer.documents([(a.name, layout.zarr_array_metadata(a, (a.name,)))
                                  for a in plan.arrays])
            writer.finish()
            document = slice_of_save(RUN, step, r, written)
            data = tier.write_slice(RUN, step, document)
            paths = {a.name: a.name for a in plan.arrays}
            summaries.append(summary_of_slice(slices.entry_of(data, document, paths),
                                              replicated, r, document))
    leaders = [domains.index(d) for d in sorted(set(domains))]
    sealed = seal_save(summaries, leaders,
                       lambda d: [r for r in range(world) if domains[r] == d], values or {})
    for d, tier in enumerate(tiers):
        header = header_of_save(inputs, sealed[leaders[d]]["digest"],
                                sealed[leaders[d]]["slices"], sealed[leaders[d]]["values"])
        sha = tier.write_manifest(RUN, step, header)
        tier.write_marker(RUN, step, sha, header["digest"], domain=d)
    return {"plan": plan, "world": world, "domains": domains, "root": root,
            "dirs": [tier.step_path(RUN, step) for tier in tiers]}


def to_version_1(step_dir: str) -> None:
    """Rewrite a version 2 directory that holds every slice as version 1 wrote it: one
    manifest with every chunk record (writers included), the version 1 digest over the
    chunks, a version 1 marker; the slices are removed. The chunk files are the same."""
    m = layout.read_manifest(step_dir)
    assert m.complete, "a version 1 manifest lists every chunk"
    arrays = {}
    for name, a in m.arrays.items():
        record = ArrayRecord(a.name, a.path, a.key, a.dtype, a.shape, a.chunk_shape,
                             a.fingerprint, a.shards,
                             {k: ChunkRecord(c.nbytes, c.crc32c, c.hash, c.fingerprint,
                                             c.writers) for k, c in a.chunks.items()})
        arrays[name] = record.to_document()
    typed = {n: ArrayRecord.from_document(n, d) for n, d in arrays.items()}
    doc = layout.build_manifest(run=m.run, step=m.step, world_size=m.world_size,
                                ranks=[r.to_document() for r in m.ranks], arrays=arrays,
                                values=m.values, metadata=m.metadata, versions=m.versions,
                                ordinal=m.ordinal, digest=checkpoint_digest(typed),
                                lineage=m.lineage)
    assert doc["format_version"] == 1
    marker = layout.read_commit_marker(step_dir)
    shutil.rmtree(os.path.join(step_dir, layout.SLICES_DIR))
    data = layout.write_manifest(step_dir, doc)
    import hashlib
    layout.write_commit_marker(step_dir, m.step, hashlib.sha256(data).hexdigest(),
                               doc["digest"], domain=marker.get("domain"), format_version=1)
