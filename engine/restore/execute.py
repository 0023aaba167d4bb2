"""Restore, the read side: plan once (restore/plan.py), then fill the template's tensors from
the tier copies the plan names (local first, the capacity tier per chunk).

Who calls: ``restore_state`` is called by every rank of ``comm``, with the same step (it is
collective: two phases, "find" and "read", each ending in an agreement, runtime/phases.py).
The Checkpointer calls it and then records the audit event and keeps ``Restored.parent``.
It is handed the tiers (this rank's node-local tier, the capacity tier or None) and reads
only through their step copies (tiers/base.py), whichever kind they are.

I/O happens here only, through the tiers: listing committed steps, opening copies, asking a
copy which chunk files it holds, and the chunk reads (restore/read.py). Every decision
is the plan's: the find phase judges each local copy by the same ReadPlan the read phase
then executes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError, CheckpointWarning, error_class
from ..runtime.comm import describe_error
from ..format import dtypes
from ..runtime.phases import PhaseRunner
from ..runtime.topology import Topology
from ..state import ArrayLeaf, flatten, host_bits, rebuild
from ..tiers.base import StepCopy, Tier
from .plan import (ArrayRead, CopyChoice, ReadPlan, RestorePlan, StepChoice, StepFindings,
                   TemplateLeaf,
                   check_template, choose_copy, choose_step, copy_serves, parent_record,
                   plan_reads, slices_for)
from .read import read_array, read_arrays
from .peerread import node_copies, node_holdings, read_with_peers, replica_steps
from .peers import lost_node_warning, peer_routing, peer_steps, unrestorable_note
from .share import Chain, group_ranks, my_group, shared_leaves, wants_digest


@dataclass(frozen=True)
class Restored:
    """What ``restore_state`` returns: the filled ``state``, the ``step`` read, ``parent``
    (the lineage record later saves carry: rank 0's view of where it was read, the same on
    every rank) and ``source``, the copy this rank read (local step directory, or the
    capacity head when only the capacity tier held the step); ``routes``: for a restore from
    peers, how many of this rank's chunk reads came from its node, from peers and from the
    capacity tier, and the bytes it received and served (restore/peerread.py)."""

    state: Any
    step: int
    parent: dict
    source: str
    routes: dict | None = None  # where this rank's chunk reads came from (peer restores)


def restore_state(template, step: int | None, *, strict: bool, comm, topology: Topology,
                  run: str, local: Tier, capacity: Tier | None, options) -> Restored:
    """Fill ``template`` from checkpoint ``step`` of ``run`` (None: the newest step every
    rank can read) and return it with the step, the lineage parent and the copy read.

    ``comm``: the foreground channel (collective: every rank calls this, same step);
    ``topology``: the job's ranks (their tier roots name where rank r looks, in messages);
    ``local``: this rank's node-local tier; ``capacity``: the capacity tier (None: none); ``options``: its ``timeout`` bounds each phase, ``io_threads`` the reads.
    Tensors of the template are filled in place (a DTensor's local shard, a Shard's box, a
    plain tensor whole); JSON values come back as saved; only the template's keys are read.
    Raises CheckpointNotFoundError (no step every rank can read), StateMismatchError (a key
    missing with ``strict``, a shape or dtype mismatch), CorruptCheckpointError, the same on
    every rank; warns (CheckpointWarning) when it restores an older step than the newest.
    """
    phases = PhaseRunner(comm, f"restore of run {run!r}" +
                         (f" step {step}" if step is not None else ""), options.timeout)
    arrays, value_leaves = flatten(template)
    leaves = [TemplateLeaf.of(a) for a in arrays]
    surveyed: dict[int, tuple[StepCopy, ReadPlan]] = {}

    def find():
        findings, plans = survey_copies(leaves, local, capacity, run, rank=topology.rank,
                                        leader=topology.is_leader,
                                        nodes=frozenset(i.node for i in topology.ranks))
        surveyed.update(plans)
        return findings.to_json()
    mine_found: list = []

    def find_here():
        mine_found.append(find())
        return mine_found[0]

    def choose(found):
        """Rank 0: the step every rank reads (or why there is none), from every rank's
        findings; every rank gets only the choice (O(1) bytes)."""
        found = [StepFindings.from_json(f) for f in found]
        reports = [f.held for f in found]
        by_peers = peer_steps(reports)  # held by the job's nodes between them
        try:
            choice = choose_step(step, [set(f.readable) | by_peers for f in found],
                                 what=phases.what, run=run,
                                 tier_dirs=[info.tier_dir for info in topology.ranks],
                                 found=found)
        except CheckpointError as e:  # raised on every rank as it is, not as rank 0's
            error = describe_error(e)
            note = unrestorable_note(found, reports)  # which chunks no node holds, and why
            if note:
                error["message"] += f"; {note}"
            return {"error": error}
        routing = peer_routing(choice.step, found, reports, topology)
        return {"step": choice.step, "peers": routing,
                "warning": lost_node_warning(choice, found, reports, phases.what,
                                             by_peers=routing is not None)}
    chosen = phases.decide("find", find_here, choose)
    if "error" in chosen:
        raise error_class(chosen["error"]["class"])(chosen["error"]["message"])
    choice = StepChoice(chosen["step"], chosen["warning"])
    if choice.warning:
        warnings.warn(f"tierpoint: rank {topology.rank}: {choice.warning}", CheckpointWarning,
                      stacklevel=3)
    if chosen.get("peers"):
        judged = surveyed.get(choice.step, (None, None))[0]
        copies = node_copies(local, run, choice.step, judged)
        cap = capacity.open(run, choice.step, ranks=()) if capacity is not None and \
            choice.step in StepFindings.from_json(mine_found[0]).capacity else None
        values, replaced, where, parent, routes = read_with_peers(
            comm=comm, phases=phases, topology=topology, step=choice.step,
            peers=chosen["peers"], leaves=leaves, arrays=arrays,
            value_names=[v.name for v in value_leaves], copies=copies, capacity_copy=cap,
            strict=strict, threads=options.io_threads, writable_bits=_writable_bits,
            records=lambda c, p: _records(c, p, topology.rank))
        return Restored(rebuild(template, values, replaced), choice.step, parent, where,
                        routes)
    copy = choose_copy(choice.step, StepFindings.from_json(mine_found[0]))
    replaced: dict = {}
    values: dict = {}
    # Leaves several ranks of a node restore whole are read there once (restore/share.py).
    shared = shared_leaves(leaves, dtypes.itemsize)
    group = my_group(phases.share("share", lambda: wants_digest(shared), group_ranks),
                     topology.rank)
    chain = Chain(comm, group, topology.rank, phases.what) if len(group) > 1 else None

    def read():
        error = plan = copies = None
        try:
            judged, judged_plan = (surveyed.get(copy.step, (None, None)) if copy.local
                                   else (None, None))
            copies = open_copies(copy, local, capacity, run, judged)
            copies, plan = restore_plan(copy, copies, leaves, judged_plan, rank=topology.rank)
            check_template(leaves, [v.name for v in value_leaves], plan.manifest,
                           strict=strict, source=copies.source)
            fill_leaves(plan, copies, arrays, replaced, threads=options.io_threads,
                        rank=topology.rank,
                        skip=frozenset(leaf.name for leaf in shared) if chain else frozenset())
        except Exception as e:  # noqa: BLE001 - the chain must still run (no rank left waiting)
            error = e
        if chain is not None:
            problem = pass_shared(chain, shared, arrays, plan, copies, replaced, error,
                                  threads=options.io_threads, rank=topology.rank)
            error = error or problem
        if error is not None:
            raise error
        for v in value_leaves:
            saved = plan.manifest.values.get(v.name)
            if saved is not None:
                values[v.name] = saved["value"]
        source.append(copies.source)
        return parent_record(plan.manifest, copies.source)
    source: list = []
    # Later saves record this checkpoint as their parent (rank 0's view of where it was read,
    # so every directory's manifest records the same parent).
    parent = phases.decide("read", read, lambda parents: parents[0])
    return Restored(rebuild(template, values, replaced), choice.step, parent, source[0])


def _records(copies: list, plan: ReadPlan, rank: int) -> tuple[list, ReadPlan]:
    """``with_records`` over a list of copies (restore/peerread.py's callback)."""
    kept, plan = with_records(TierCopies(list(copies)), plan, rank=rank)
    return kept.copies, plan


def survey_copies(leaves: list[TemplateLeaf], local: Tier, capacity: Tier | None, run: str,
                  *, rank: int = 0, leader: bool = False, nodes: frozenset = frozenset()
                  ) -> tuple[StepFindings, dict[int, tuple[StepCopy, ReadPlan]]]:
    """This rank's findings (the find phase), and the copy and ReadPlan of each local step it
    judged, for the read phase to execute unchanged. A local copy whose manifest (or a slice
    it needs) cannot be read counts as readable: the read phase reports it by name, or reads
    the capacity copy instead (no silent step back to an older step). Each local copy is
    opened by its header, then only the slices recording the chunks this rank reads
    (``slices_for``; ``rank``: this rank). A capacity tier that cannot be listed (a server
    down) is a warning: this rank's findings are its local steps alone. A domain's
    ``leader`` also reports what its node's copies hold, partner replicas included, for
    peer restore (``node_holdings``; ``nodes``: the node names of the restoring job)."""
    try:
        on_capacity = capacity.steps(run) if capacity is not None else []
    except CheckpointError as e:  # an object store that does not answer: the local copies
        warnings.warn(f"tierpoint: rank {rank}: the capacity tier cannot be listed ({e}); "
                      "restoring from the local tier only", CheckpointWarning, stacklevel=2)
        on_capacity = []
    served: dict[int, bool] = {}
    plans: dict[int, tuple[StepCopy, ReadPlan]] = {}
    for s in local.steps(run):
        if s in on_capacity:
            served[s] = True  # readable from the capacity tier whatever this copy holds
        try:
            copy = local.open(run, s, ranks=())
            plan = plan_reads(leaves, copy.manifest)
            copies, plan = with_records(TierCopies([copy]), plan, rank=rank, last_raises=True)
        except CheckpointError:
            served[s] = True
            continue
        copy = copies.copies[0]
        plans[s] = (copy, plan)
        if s not in served:
            served[s] = copy_serves(plan, copy.expected, copy.holds)
    replica = replica_steps(local, run)
    held = node_holdings(local, run, {s: c for s, (c, _) in plans.items()}, replica,
                         nodes) if leader else None
    return StepFindings.of(served, on_capacity, replica=replica, held=held), plans


@dataclass
class TierCopies:
    """The copies of one step a rank reads, in preference order (its local copy, then the
    capacity tier's; each only where committed). ``source`` is where the first one is, for
    messages and the lineage parent."""

    copies: list

    @property
    def source(self) -> str:
        return self.copies[0].path


def open_copies(copy: CopyChoice, local: Tier, capacity: Tier | None, run: str,
                surveyed: StepCopy | None = None) -> TierCopies:
    """Open the chosen step's copies by their headers (the local one the find phase opened,
    with its slices, is reused)."""
    copies = []
    if copy.local:
        copies.append(surveyed or local.open(run, copy.step, ranks=()))
    if copy.capacity and capacity is not None:
        copies.append(capacity.open(run, copy.step, ranks=()))
    return TierCopies(copies)


def with_records(copies: TierCopies, plan: ReadPlan, *, rank: int,
                 last_raises: bool = False) -> tuple[TierCopies, ReadPlan]:
    """Format version 2: each copy with the slices recording the chunks ``plan`` reads that
    the copies before it do not record (the local copy's own first, the capacity copy's for
    the rest), and the plan's records merged from them (the slices of one rank are the same
    in every copy: each is proven against the same digest). A copy whose slice is damaged is
    dropped with a CheckpointWarning when another copy follows (it reads the chunks instead),
    else the error is raised. Version 1 copies are returned as they are."""
    if not all(c.manifest.sliced for c in copies.copies):
        return copies, plan
    tables: dict[str, dict] = {}
    kept = []
    for n, copy in enumerate(copies.copies):
        unrecorded = [(a, k) for a, k in plan.chunks() if k not in tables.get(a, {})]
        need = slices_for(copy.manifest, unrecorded, copy.slice_ranks(), rank)
        loaded = copy.manifest.loaded or frozenset()
        if unrecorded and not need <= loaded:
            try:
                copy = copy.with_slices(loaded | need)
            except CheckpointError as e:
                if n == len(copies.copies) - 1 or last_raises:
                    raise
                warnings.warn(f"tierpoint: rank {rank}: {e}; reading the "
                              f"{copies.copies[n + 1].tier.kind} tier's copy instead "
                              f"({copies.copies[n + 1].path})", CheckpointWarning,
                              stacklevel=3)
                continue
        for name, array in copy.manifest.arrays.items():
            table = tables.setdefault(name, {})
            for key, record in array.chunks.items():
                table.setdefault(key, record)
        kept.append(copy)
    return TierCopies(kept), plan.with_records(tables)


def restore_plan(copy: CopyChoice, copies: TierCopies, leaves: list[TemplateLeaf],
                 surveyed: ReadPlan | None, *, rank: int = 0
                 ) -> tuple[TierCopies, RestorePlan]:
    """The plan the read phase executes: the one the find phase judged the local copy by,
    else (no local copy, or its manifest could not be read then) planned from the header of
    the copy read first; with the records of the slices it needs (``with_records``), and the
    copies those were read from."""
    manifest = copies.copies[0].manifest
    copies, reads = with_records(copies, surveyed or plan_reads(leaves, manifest), rank=rank)
    return copies, RestorePlan(copy, copies.copies[0].manifest, reads)


def fill_leaves(plan: RestorePlan, copies: TierCopies, arrays: list[ArrayLeaf],
                replaced: dict, *, threads: int, rank: int | None = None,
                skip: frozenset = frozenset()) -> int:
    """Execute ``plan``'s reads into the template's leaves (``arrays``, in template order)
    but those named in ``skip`` (a node's shared leaves: ``pass_shared``); leaves the
    checkpoint lacks (``strict=False``) are left as they are. Returns bytes read;
    ``replaced`` receives the new objects of immutable leaves (state.rebuild uses them).
    The copy read first is told every item about to be read, in order (``read_ahead``: the
    capacity copy looks up where they lie; a copy read only as a fallback is not); the
    leaves are read by one pool of ``threads`` readers, the next leaves' reads queued while
    earlier ones are read (``read_arrays``)."""
    if copies.copies:
        copies.copies[0].read_ahead([
            (read.record, item) for leaf in arrays if leaf.name not in skip
            for read in [plan.reads.read_of(leaf.name)] if read is not None
            for item in read.items])

    def jobs():
        for leaf in arrays:
            read = plan.reads.read_of(leaf.name)
            if read is None or leaf.name in skip:
                continue
            target, finish = _writable_bits(leaf, replaced)
            yield read.record, list(read.items), target, finish
    return read_arrays(copies.copies, jobs(), threads=threads, rank=rank)


def pass_shared(chain: Chain, shared: list[TemplateLeaf], arrays: list[ArrayLeaf],
                plan: RestorePlan | None, copies: TierCopies | None, replaced: dict,
                failure: BaseException | None, *, threads: int, rank: int):
    """This rank's part of its node's chain for the ``shared`` leaves (restore/share.py):
    the reader reads each from the copies, the others receive it; each is passed on. With
    ``failure`` (this rank's own part failed: no plan) it only forwards. Returns the first
    problem, an error to raise (None: every shared leaf is filled)."""
    by_name = {leaf.name: leaf for leaf in arrays}
    first = None
    for wanted in shared:
        leaf, target, finish = by_name[wanted.name], None, None
        if failure is None:
            target, finish = _writable_bits(leaf, replaced)

        def read(name=wanted.name, target=target):
            planned = plan.reads.read_of(name)
            if planned is None:
                return False
            read_planned_array(copies, planned, target, threads=threads, rank=rank)
            return True
        problem = chain.pass_along(wanted.name, read, target, failure)
        if problem is None and finish is not None:
            finish()
        first = first or problem
    return first


def read_planned_array(copies: TierCopies, read: ArrayRead, target: np.ndarray, *,
                       threads: int, rank: int | None = None) -> int:
    """Fill ``target`` (the bits of the leaf's box) by ``read``'s items from the copies, the
    first that has each chunk intact (restore/read.py); returns bytes read."""
    return read_array(copies.copies, read.record, list(read.items), target, threads=threads,
                      rank=rank)


def _writable_bits(leaf: ArrayLeaf, replaced: dict):
    """(numpy bits of the requested box to fill, function to call once filled)."""
    obj = leaf.obj
    if isinstance(obj, np.generic) or (isinstance(obj, np.ndarray) and not obj.flags.writeable):
        fresh = np.array(obj)  # immutable scalar or read-only array: return a filled copy

        def keep():
            replaced[leaf.name] = fresh[()] if isinstance(obj, np.generic) else fresh
        return host_bits(fresh), keep
    if isinstance(obj, np.ndarray):
        return host_bits(obj), lambda: None
    tensor = obj.detach()
    if tensor.device.type == "cpu":
        return dtypes.tensor_bits(tensor), lambda: None
    import torch
    host_copy = torch.empty(tuple(tensor.shape), dtype=tensor.dtype)
    return dtypes.tensor_bits(host_copy), lambda: tensor.copy_(host_copy)
