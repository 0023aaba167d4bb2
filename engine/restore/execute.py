"""Restore, the read side of a Checkpointer: choose the step every rank can read, then fill
the template's tensors from the tiers that hold it (local first, the capacity tier per chunk).

``RestoreOps`` is mixed into ``Checkpointer``; it uses its communicator, directories and
options. ``restore`` is collective: every rank calls it, with the same step.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..format import dtypes
from ..format import layout
from ..tiers.registry import open_copy
from ..errors import (CheckpointError, CheckpointNotFoundError, CheckpointWarning,
                     StateMismatchError)
from ..trust.lineage import parent_record
from ..runtime.phases import PhaseRunner
from .read import read_array
from .reshard import plan_box_read
from ..state import ArrayLeaf, flatten, host_bits, rebuild


class RestoreOps:
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
        phases = PhaseRunner(self._comm, f"restore of run {self.run!r}" +
                              (f" step {step}" if step is not None else ""),
                              self.options.timeout)
        arrays, value_leaves = flatten(template)
        found = phases.run("find", lambda: self._readable_steps(arrays))
        step = self._choose_step(step, [f["readable"] for f in found], phases.what, found)
        mine = found[self.rank]
        local_dir = self.step_dir(step) if step in mine["local"] else None
        head = (layout.capacity_head(self.pools, self.run, step)
                if step in mine["capacity"] else None)
        replaced: dict = {}
        values: dict = {}

        def read():
            copies = [open_copy(d) for d in (local_dir, head) if d]  # local first
            manifest = copies[0].manifest.document
            source = local_dir or head
            for leaf in arrays:
                self._restore_array(copies, manifest, leaf, strict, replaced)
            for v in value_leaves:
                saved = manifest["values"].get(v.name)
                if saved is not None:
                    values[v.name] = saved["value"]
                elif strict:
                    raise StateMismatchError(
                        f"key {v.name!r} of the template is not a JSON value in checkpoint "
                        f"step {step} ({source}); pass strict=False to skip missing keys")
            return parent_record(manifest, source)
        # Later saves record this checkpoint as their parent (rank 0's view of where it was
        # read, so every directory's manifest records the same parent).
        self.parent = phases.run("read", read)[0]
        self._audit_event("restored", step, self.parent["digest"],
                          {"world_size": self.world_size, "from": self.parent["path"]})
        return rebuild(template, values, replaced)

    def _readable_steps(self, arrays) -> dict:
        """This rank's committed steps per tier, and those it can read all it needs from:
        every step on the capacity tier, and local steps where each chunk its boxes
        overlap was written into this rank's own local directory."""
        local, capacity = self._local_steps(), self.capacity_steps()
        readable = set(capacity) | {s for s in local if self._reads_locally(s, arrays)}
        return {"local": local, "capacity": capacity, "readable": sorted(readable)}

    def _reads_locally(self, step: int, arrays) -> bool:
        """Whether this rank's local directory of ``step`` holds every chunk its boxes
        overlap: the chunks of the domain its marker declares, and any other chunk file
        present (a copy gathered from several nodes). Where the directory lies, and under
        which path it was written, does not matter: a moved or copied tier restores."""
        try:
            copy = open_copy(self.step_dir(step))
        except CheckpointError:
            return True  # damaged: the read reports it by name (no silent step back)
        for leaf in arrays:
            array = copy.manifest.arrays.get(leaf.name)
            if array is None or array.shape != leaf.global_shape:
                continue  # the read reports the mismatch by name
            for item in plan_box_read(leaf.name, array.shape, array.chunk_shape, leaf.box):
                key = layout.chunk_key(item.chunk_index)
                if key not in array.chunks or copy.expected(array, key):
                    continue
                if not copy.holds(array, key):
                    return False  # written on another node, and not copied here
        return True

    def _choose_step(self, step, per_rank, what, found=None) -> int:
        """The step to read: ``step`` if every rank can, else the newest every rank can.
        ``found`` (restore's per-rank tiers) explains a step that is committed but not
        readable: local copies serve only ranks whose shards stay on the node that wrote
        them; other layouts read from the capacity tier."""
        common = set(per_rank[0]).intersection(*map(set, per_rank[1:]))
        newer, why = [], ""
        if found is not None:  # committed somewhere, but not where every rank can read it
            held = [set(f["local"]) | set(f["capacity"]) for f in found]
            newer = sorted(s for s in set.union(*held) if s not in common and
                           (not common or s > max(common)))
        if newer:
            lacking = [r for r, h in enumerate(held) if newer[-1] not in h]
            why = (f" (step {newer[-1]} is committed, but not on the capacity tier, and " +
                   (f"the local tiers of ranks {lacking} lack it: a lost node?" if lacking else
                    "some ranks need chunks that another node wrote to its local tier") + ")")
        if step is None:
            if not common:
                raise CheckpointNotFoundError(
                    f"{what}: no checkpoint of run {self.run!r} is committed where every rank "
                    f"can read it (rank 0 looks in {self._ranks[0]['tier_dir']}){why}")
            if newer:
                warnings.warn(f"tierpoint: {what}: restoring step {max(common)}, the newest "
                              f"every rank can read{why}", CheckpointWarning, stacklevel=3)
            return max(common)
        if step not in common:
            missing = [r for r, steps in enumerate(per_rank) if step not in steps]
            raise CheckpointNotFoundError(
                f"{what}: step {step} is not committed where ranks {missing} can read it "
                f"(rank {missing[0]} looks in {self._ranks[missing[0]]['tier_dir']})"
                + (why if step in newer else ""))
        return step

    def _restore_array(self, copies, manifest, leaf: ArrayLeaf, strict, replaced) -> None:
        entry = manifest["arrays"].get(leaf.name)
        if entry is None:
            if strict:
                raise StateMismatchError(
                    f"key {leaf.name!r} is not an array in checkpoint step {manifest['step']}"
                    f" ({copies[0].path}); pass strict=False to skip missing "
                    "keys")
            return
        if tuple(entry["shape"]) != leaf.global_shape:
            raise StateMismatchError(
                f"key {leaf.name!r}: the checkpoint holds shape {entry['shape']} but the "
                f"template has global shape {list(leaf.global_shape)}")
        if entry["dtype"] != leaf.dtype:
            raise StateMismatchError(
                f"key {leaf.name!r}: the checkpoint holds {entry['dtype']} but the template "
                f"has {leaf.dtype}")
        target, finish = _writable_bits(leaf, replaced)
        items = plan_box_read(leaf.name, tuple(entry["shape"]), tuple(entry["chunk_shape"]),
                              leaf.box)
        read_array(copies, copies[0].manifest.arrays[leaf.name], items, target,
                   threads=self.options.io_threads)
        finish()


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


