"""One drain of one step, its collective phases in order: agree on the step, clean the
capacity tier of what an earlier drain left, locate which saved domains each directory
holds, copy (each node's reader to its aggregator, the aggregators into their parts), merge
the parts into the head, verify the merged copy, commit it (rank 0), and record it.

Called through ``Tiering.drain_step`` (tiers/ops.py: the foreground drain, close()'s, the
background drain thread's), by every rank, on the channel given; ``tiering`` is that
``Tiering`` (its topology, run, tiers, options and audit log). Split from ops.py, which
schedules drains and applies the rings, so each module has one responsibility.
"""
from __future__ import annotations

from ..errors import CheckpointError, error_class
from ..format.manifest import SliceEntry
from ..runtime.comm import describe_error
from ..runtime.faults import inject
from ..runtime.phases import PhaseRunner
from .drain import (RemoteChunks, capacity_header, copied_keys, local_source, plan_drain,
                    read_for_drain, send_chunks, slices_of_reader, write_aggregator_parts)
from .retention import common_step


def drain_step(tiering, step: int | None, *, channel, rate: float | None = None,
               progress=None) -> dict:
    """Copy committed local checkpoint ``step`` (None: the newest every rank holds) to
    the capacity tier, verify it and commit it there (collective on ``channel``: the
    foreground channel from ``Checkpointer.drain`` and close(), the drain's own from the
    drain thread). The caller has checked that there is a capacity tier and, in the
    foreground, waited for the save being written and the background drain.

    ``rate`` caps each aggregator's copy rate in bytes/s; ``progress(nbytes)`` is called
    as bytes are copied. Returns what was done; raises CheckpointError on failure (then
    no capacity copy of the step exists). Each local directory of the step records that
    its drain started, and then that it committed: a drain cut short or failed leaves the
    step pending, so the next drain opportunity takes it again."""
    topo, me = tiering.topology, tiering.rank
    phases = PhaseRunner(channel, f"drain of run {tiering.run!r}" +
                         (f" step {step}" if step is not None else ""),
                         tiering.options.timeout)
    def agreed_step(listed):
        """Rank 0: the step to drain from every rank's listing (or the error every rank
        raises as it is); every rank gets only the answer."""
        try:
            return {"step": common_step(step, listed, what=phases.what, run=tiering.run,
                                        tier_dirs=[r.tier_dir for r in topo.ranks])}
        except CheckpointError as e:
            return {"error": describe_error(e)}
    found = phases.decide("find", tiering.local_steps, agreed_step)
    if "error" in found:
        raise error_class(found["error"]["class"])(found["error"]["message"])
    step = found["step"]
    capacity = tiering.capacity

    def clean():
        if tiering._is_leader:  # from here on, a drain cut short is redone (pending_drains)
            tiering.local.mark_drain(tiering.run, step, "owed")
        if me != 0:
            return None
        capacity.check_pools()
        if capacity.is_committed(tiering.run, step):
            # The same checkpoint, or an older one of this step that a save with
            # overwrite=True replaced locally: then the capacity copy is replaced too.
            ours = tiering.local.open(tiering.run, step, ranks=()).manifest.digest
            if capacity.open(tiering.run, step, ranks=()).manifest.digest == ours:
                return {"already": True}
            capacity.retire(tiering.run, step, rank=me)
        # One drain of a run at a time: whatever uncommitted is on the capacity tier is
        # left by an interrupted drain (of this step or another).
        capacity.sweep(tiering.run)  # this one too
        return {"already": False, "pools": capacity.pool_identities()}
    cleaned = phases.decide("clean", clean, lambda found: found[0])
    if cleaned["already"]:
        mark_drained(tiering, step)
        return {"step": step, "already": True}
    def locate():
        """A leader's answer: which saved domains its directory of ``step`` holds."""
        if not tiering._is_leader:
            return None
        return sorted(tiering.local.open(tiering.run, step, ranks=()).held_domains())
    held = phases.run("locate", locate)
    local_copy, work, readers = None, {}, []

    def copy():
        nonlocal local_copy, work, readers
        local_copy = tiering.local.open(tiering.run, step)  # every slice its directory holds
        manifest = local_copy.manifest
        # Saving ranks map to draining readers through what each reader's directory
        # holds (its marker's domain, or chunks copied into it), never through paths.
        reader_of_domain: dict[int, int] = {}
        for reader, domains in enumerate(held):
            for d in domains or []:
                reader_of_domain.setdefault(d, reader)
        readers = [reader_of_domain.get(d) for d in manifest.domains]
        work = plan_drain(manifest, readers)
        mine = slices_of_reader(manifest, readers, me)

        def fetch_local(name, key):
            inject("drain", rank=me, step=step)
            return read_for_drain(local_copy, name, key)

        def source():
            return local_source(local_copy, work.get(me, []), fetch_local, mine)
        comm = phases.comm
        agg = topo.aggregator_index(me)
        if agg is not None:
            remote = [RemoteChunks(comm, r, manifest) for r in topo.readers_of(me)]
            try:
                sources = [source()] + [rc.start() for rc in remote]
                parts = write_aggregator_parts(
                    capacity, tiering.run, step, agg, sources,
                    metadata=local_copy.metadata_entries() if agg == 0 else None,
                    rate=rate, progress=progress)
            finally:
                for rc in remote:  # senders must never block on a receiver that quit
                    rc.discard_rest()
            return {"parts": parts, "slices": {str(r): e.to_document() for src in sources
                                               for r, e in src.entries.items()}}
        if me in topo.leaders:
            send_chunks(comm, topo.aggregator_of_reader(me), source)
        return None
    try:
        # Gathered at the coordinator only: the parts to merge and the slices' entries.
        copied = [c for c in phases.run("copy", copy, collect="root") or [] if c]
        parts = [p for c in copied for p in c["parts"]]

        def merge():
            inject("drain-merge", rank=me, step=step)
            return me == 0 and capacity.finish(tiering.run, step, parts)
        phases.run("merge", merge, collect="root")

        def verify():
            capacity.check_pools_unchanged(cleaned["pools"])
            manifest = local_copy.manifest
            if not manifest.sliced:
                return capacity.check_index(tiering.run, step, manifest,
                                            (phases.comm.rank, phases.comm.size))
            # Version 2: this directory's ranks share what its reader copied (its chunks
            # and slices; the coordinator also every zarr.json).
            return capacity.check_index(
                tiering.run, step, manifest, (topo.domain_ranks().index(me),
                                           len(topo.domain_ranks())),
                wanted=copied_keys(manifest, work, readers, topo.leaders[topo.domain],
                                   metadata=me == 0))
        phases.run("verify", verify, collect="root")
    finally:  # every rank is past the verify here (each phase is agreed)
        capacity.release(tiering.run, step)

    def commit():
        if me != 0:
            return None
        manifest = local_copy.manifest
        document = manifest if not manifest.sliced else capacity_header(
            manifest, {int(r): SliceEntry.from_document(e) for c in copied
                       for r, e in c["slices"].items()})
        capacity.commit(tiering.run, step, document, rank=me,
                        audit=tiering._audit.reference(step, manifest.digest))
        inject("drain-committed", rank=me, step=step)
        return {"removed": tiering.apply_capacity_retention(), "parts": len(parts),
                "bytes": sum(p["bytes"] for p in parts)}
    done = phases.decide("commit", commit, lambda found: found[0])
    mark_drained(tiering, step)
    tiering._audit.event("drained", step, local_copy.manifest.digest,
                      {"parts": done["parts"], "bytes": done["bytes"]})
    for old in done["removed"]:
        tiering._audit.event("deleted", old, detail={"tier": "capacity", "why": "retention"})
    return {"step": step, "seconds": phases.total(), "phases": phases.seconds,
            "bytes": done["bytes"], "parts": done["parts"]}


def mark_drained(tiering, step: int) -> None:
    """After the capacity commit, this directory's drain record says "drained", so the
    step may leave the ring even once capacity retention deleted that copy. Not
    collective, so best effort: the ring may have removed the directory already, and
    without the record the committed capacity copy says the same until it is deleted
    (then a step still in the ring is drained once more: wasteful, never lossy)."""
    if tiering._is_leader:
        try:
            tiering.local.mark_drain(tiering.run, step, "drained")
        except OSError:
            pass
