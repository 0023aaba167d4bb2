"""Restore, the read side: plan once (restore/plan.py), then fill the template's tensors from
the tier copies the plan names (local first, the capacity tier per chunk).

Who calls: ``restore_state`` is called by every rank of ``comm``, with the same step (it is
collective: two phases, "find" and "read", each ending in an agreement, runtime/phases.py).
The Checkpointer calls it and then records the audit event and keeps ``Restored.parent``.
``RestoreOps`` is the thin adapter that does so while ``Checkpointer`` still mixes it in;
it goes at the merge (api.py calls ``restore_state`` itself then).

I/O happens here only: listing committed steps, reading manifests and markers, checking
which chunk files a local copy holds, and the chunk reads (restore/read.py). Every decision
is the plan's: the find phase judges each local copy by the same ReadPlan the read phase
then executes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError, CheckpointWarning
from ..format import dtypes
from ..format import layout
from ..format.manifest import Manifest
from ..runtime.phases import PhaseRunner
from ..runtime.topology import Topology
from ..state import ArrayLeaf, flatten, host_bits, rebuild
from ..tiers import holdings
from ..tiers.drain import CapacityReader
from .plan import (ArrayRead, CopyChoice, ReadPlan, RestorePlan, StepFindings, TemplateLeaf,
                   check_template, choose_copy, choose_step, local_copy_serves, parent_record,
                   plan_reads)
from .read import read_array


@dataclass(frozen=True)
class Restored:
    """What ``restore_state`` returns: the filled ``state``, the ``step`` read, ``parent``
    (the lineage record later saves carry: rank 0's view of where it was read, the same on
    every rank) and ``source``, the copy this rank read (local step directory, or the
    capacity head when only the capacity tier held the step)."""

    state: Any
    step: int
    parent: dict
    source: str


def restore_state(template, step: int | None, *, strict: bool, comm, topology: Topology,
                  run: str, local_root: str, pools: list[str], options) -> Restored:
    """Fill ``template`` from checkpoint ``step`` of ``run`` (None: the newest step every
    rank can read) and return it with the step, the lineage parent and the copy read.

    ``comm``: the foreground channel (collective: every rank calls this, same step);
    ``topology``: the job's ranks (their tier roots name where rank r looks, in messages);
    ``local_root``: this rank's node-local tier root; ``pools``: the capacity tier's pools
    (empty: none); ``options``: its ``timeout`` bounds each phase, ``io_threads`` the reads.
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
    surveyed: dict[int, tuple[Manifest, ReadPlan]] = {}

    def find():
        findings, plans = survey_copies(leaves, local_root, run, pools)
        surveyed.update(plans)
        return findings.to_json()
    found = [StepFindings.from_json(f) for f in phases.run("find", find)]
    choice = choose_step(step, [f.readable for f in found], what=phases.what, run=run,
                         tier_dirs=[info.tier_dir for info in topology.ranks], found=found)
    if choice.warning:
        warnings.warn(choice.warning, CheckpointWarning, stacklevel=3)
    copy = choose_copy(choice.step, found[topology.rank])
    replaced: dict = {}
    values: dict = {}

    def read():
        copies = open_copies(copy, local_root, run, pools)
        plan = restore_plan(copy, copies, leaves, surveyed.get(copy.step) if copy.local
                            else None)
        check_template(leaves, [v.name for v in value_leaves], plan.manifest, strict=strict,
                       source=copies.source)
        fill_leaves(plan, copies, arrays, replaced, threads=options.io_threads,
                    where=f"the local tier ({local_root})")
        for v in value_leaves:
            saved = plan.manifest.values.get(v.name)
            if saved is not None:
                values[v.name] = saved["value"]
        return {"parent": parent_record(plan.manifest, copies.source), "source": copies.source}
    mine = phases.run("read", read)
    # Later saves record this checkpoint as their parent (rank 0's view of where it was read,
    # so every directory's manifest records the same parent).
    return Restored(rebuild(template, values, replaced), choice.step, mine[0]["parent"],
                    mine[topology.rank]["source"])


def survey_copies(leaves: list[TemplateLeaf], local_root: str, run: str, pools: list[str]
                  ) -> tuple[StepFindings, dict[int, tuple[Manifest, ReadPlan]]]:
    """This rank's findings (the find phase), and the manifest and ReadPlan of each local
    copy it judged, for the read phase to execute unchanged. A local copy whose manifest
    cannot be read counts as readable: the read phase reports it by name (no silent step
    back to an older step)."""
    local = layout.committed_steps(local_root, run)
    capacity = layout.committed_steps(pools[0], run) if pools else []
    served: dict[int, bool] = {}
    plans: dict[int, tuple[Manifest, ReadPlan]] = {}
    for s in local:
        directory = layout.step_dir(local_root, run, s)
        if s in capacity:
            served[s] = True  # readable from the capacity tier whatever this copy holds
        try:
            manifest = layout.read_manifest(directory)
        except CheckpointError:
            served[s] = True
            continue
        plan = plan_reads(leaves, manifest)
        plans[s] = (manifest, plan)
        if s not in served:
            served[s] = local_copy_serves(
                plan, manifest, holdings.declared_domain(directory),
                lambda path, key, d=directory: holdings.chunk_present(d, path, key))
    return StepFindings.of(served, capacity), plans


@dataclass
class TierCopies:
    """The copies of one step a rank reads: its local step directory (None: not committed
    there) and a reader of the capacity copy (None: not drained). ``source`` is the one read
    first, for messages and the lineage parent."""

    local_dir: str | None
    capacity: CapacityReader | None
    head: str | None

    @property
    def source(self) -> str:
        return self.local_dir or self.head


def open_copies(copy: CopyChoice, local_root: str, run: str, pools: list[str]) -> TierCopies:
    head = layout.capacity_head(pools, run, copy.step) if copy.capacity else None
    return TierCopies(layout.step_dir(local_root, run, copy.step) if copy.local else None,
                      CapacityReader(head) if head else None, head)


def restore_plan(copy: CopyChoice, copies: TierCopies, leaves: list[TemplateLeaf],
                 surveyed: tuple[Manifest, ReadPlan] | None) -> RestorePlan:
    """The plan the read phase executes: the one the find phase judged the local copy by,
    else (no local copy, or its manifest could not be read then) planned from the manifest
    of the copy read first, which raises the damage by name."""
    if surveyed is None:
        manifest = layout.read_manifest(copies.source)
        surveyed = (manifest, plan_reads(leaves, manifest))
    return RestorePlan(copy, surveyed[0], surveyed[1])


def fill_leaves(plan: RestorePlan, copies: TierCopies, arrays: list[ArrayLeaf],
                replaced: dict, *, threads: int, where: str) -> int:
    """Execute ``plan``'s reads into the template's leaves (``arrays``, in template order);
    leaves the checkpoint lacks (``strict=False``) are left as they are. Returns bytes read;
    ``replaced`` receives the new objects of immutable leaves (state.rebuild uses them)."""
    total = 0
    for leaf in arrays:
        read = plan.reads.read_of(leaf.name)
        if read is None:
            continue
        target, finish = _writable_bits(leaf, replaced)
        total += read_planned_array(copies, plan.manifest, read, target, threads=threads,
                                    where=where)
        finish()
    return total


def read_planned_array(copies: TierCopies, manifest: Manifest, read: ArrayRead,
                       target: np.ndarray, *, threads: int, where: str) -> int:
    """The one call into restore/read.py: fill ``target`` (the bits of the leaf's box) by
    ``read``'s items from ``copies``; returns bytes read. (read.py still takes the array's
    manifest document and a local directory plus a capacity reader; at the merge it takes
    the list of tier copies instead, and only this function changes.)"""
    entry = manifest.document["arrays"][read.name]
    return read_array(copies.local_dir, entry, list(read.items), target, threads=threads,
                      where=where, capacity=copies.capacity)


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
    staging = torch.empty(tuple(tensor.shape), dtype=tensor.dtype)
    return dtypes.tensor_bits(staging), lambda: tensor.copy_(staging)


class RestoreOps:
    """DELETE AT THE MERGE: the adapter that keeps ``Checkpointer.restore`` (and the drain's
    ``_choose_step``) working while ``Checkpointer`` still mixes this in. The Checkpointer
    then calls ``restore_state`` itself and records the audit event and ``parent``."""

    def restore(self, template, step: int | None = None, *, strict: bool = True):
        """Fill ``template`` from checkpoint ``step`` (default: the latest step committed on
        every rank's tier) and return the state.

        Tensors of the template are filled in place (a DTensor's local shard, a Shard's box,
        a plain tensor whole); JSON values come back as saved. Only the template's keys are
        read. A missing key, or a shape or dtype mismatch, is a StateMismatchError naming the
        key; ``strict=False`` skips keys missing from the checkpoint. A save still being
        written is waited for first (its failure is left for the next save to raise).
        """
        self._check_open()
        self._join_save()
        restored = restore_state(template, step, strict=strict, comm=self._comm,
                                 topology=Topology.from_startup(self.rank, self._ranks),
                                 run=self.run, local_root=self.local_root, pools=self.pools,
                                 options=self.options)
        self.parent = restored.parent
        self._audit_event("restored", restored.step, self.parent["digest"],
                          {"world_size": self.world_size, "from": self.parent["path"]})
        return restored.state

    def _choose_step(self, step, per_rank, what, found=None) -> int:
        """plan.choose_step for TierOps.drain, warning here (see the report of the merge)."""
        choice = choose_step(step, per_rank, what=what, run=self.run,
                             tier_dirs=[info["tier_dir"] for info in self._ranks],
                             found=found)
        if choice.warning:
            warnings.warn(choice.warning, CheckpointWarning, stacklevel=3)
        return choice.step
