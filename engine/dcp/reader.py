"""``StorageReader``: torch.distributed.checkpoint's storage reader over a ``Checkpointer``.

Any committed tierpoint checkpoint loads through it, whether DCP or ``ckpt.save`` wrote it.
DCP's phases (torch/distributed/checkpoint/state_dict_loader.py calls them), and what each
does here:

1. (all ranks) ``read_metadata``: DCP's ``Metadata``, rebuilt from the manifest header: an
   array's DCP key is ``keys.dcp_key`` of its record (its state key, else its path decoded),
   its chunks are the checkpoint's chunk grid (so each of DCP's read items is a region of one
   tierpoint chunk), a JSON value is a bytes entry; two entries whose keys DCP's dotted join
   cannot tell apart are a ValueError naming both;
2. (all ranks) ``set_up_storage_reader``, ``prepare_local_plan``; (coordinator)
   ``prepare_global_plan``: nothing to add;
3. (all ranks) ``read_data``: each tensor item's region read through the read API's
   ``BoxReader`` (view/reader.py: the restore's planning and checked reads, local copy
   first, the capacity copy for what it lacks), no collective; a JSON value is handed to
   DCP's planner the way DCP hands it bytes (serialized by torch in memory, never read
   from disk).

``step=None`` is the newest step this rank finds committed on either tier (every rank of a
one-node job, or of a job whose steps were drained, finds the same).
"""
from __future__ import annotations

import io

import torch
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata,
                                                   Metadata, TensorProperties,
                                                   TensorStorageMetadata)
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner
from torch.distributed.checkpoint.storage import StorageReader as _StorageReader
from torch.futures import Future

from ..errors import CheckpointNotFoundError
from ..format import dtypes
from ..format.types import Box
from ..restore.reshard import plan_box_read
from ..view.reader import BoxReader
from ..view.values import as_torch
from .keys import dcp_key


class StorageReader(_StorageReader):
    """``dcp.load(state_dict, storage_reader=tierpoint.dcp.StorageReader(ckpt, step=100))``."""

    def __init__(self, ckpt, step: int | None = None):
        self.ckpt, self.step = ckpt, step
        self._reader: BoxReader | None = None
        self._names: dict[str, str] = {}  # DCP key -> array name
        self._values: dict[str, object] = {}  # DCP key -> JSON value

    def reset(self, checkpoint_id=None) -> None:
        if checkpoint_id is not None:
            self.step = int(checkpoint_id)
        self._reader = None

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return False

    def _open(self) -> BoxReader:
        ckpt = self.ckpt
        local, capacity = ckpt.steps(replicas=False), ckpt.capacity_steps()
        step = self.step if self.step is not None else max(local + capacity, default=None)
        if step is None or step not in local + capacity:
            raise CheckpointNotFoundError(
                f"tierpoint.dcp: run {ckpt.run!r} has no committed step "
                f"{'' if step is None else step} (local: {local}, capacity: {capacity})")
        # The Checkpointer's own tiers (any kind: POSIX pools, an object store), by header.
        tiers = ([ckpt._local] if step in local else []) + \
            ([ckpt._capacity] if step in capacity else [])
        copies = [tier.open(ckpt.run, step, ranks=()) for tier in tiers]
        return BoxReader(copies, threads=ckpt.options.io_threads)

    def read_metadata(self, *args, **kwargs) -> Metadata:
        self._reader = self._open()
        manifest = self._reader.copy.manifest
        self._names, self._values = {}, {}  # this step's (the reader may be used again)
        entries: dict = {}
        for name, array in manifest.arrays.items():
            key = dcp_key(array.key, array.path or name)
            if key in self._names:
                raise ValueError(_ambiguous(key, f"array {self._names[key]!r}",
                                            f"array {name!r}"))
            self._names[key] = name
            # The chunk grid (restore/reshard.py lists the chunks a box covers: here all).
            chunks = [ChunkStorageMetadata(offsets=torch.Size(i.chunk_box.offset),
                                           sizes=torch.Size(i.chunk_box.shape))
                      for i in plan_box_read(name, array.shape, array.chunk_shape,
                                             Box.whole(array.shape))]
            entries[key] = TensorStorageMetadata(
                properties=TensorProperties(dtype=dtypes.torch_dtype(array.dtype)),
                size=torch.Size(array.shape), chunks=chunks)
        for key, value in flat_values(manifest.values).items():
            if key in self._names:
                raise ValueError(_ambiguous(key, f"array {self._names[key]!r}",
                                            "a JSON value"))
            self._values[key] = value
            entries[key] = BytesStorageMetadata()
        return Metadata(state_dict_metadata=entries, storage_data={})

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args,
                              **kwargs) -> None:
        if self._reader is None:
            self.read_metadata()

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future:
        for item in plan.items:
            fqn = item.storage_index.fqn
            if item.type == LoadItemType.BYTE_IO:
                data = io.BytesIO()
                torch.save(self._values[fqn], data)  # in memory: what DCP's planner takes
                data.seek(0)
                planner.load_bytes(item, data)
                continue
            name = self._names[fqn]
            array = self._reader.copy.manifest.arrays[name]
            box = Box(tuple(o + s for o, s in zip(item.storage_index.offset,
                                                 item.storage_offsets)),
                      tuple(item.lengths))
            values = as_torch(self._reader.read(name, box), array.dtype)
            target = planner.resolve_tensor(item).detach()  # the item's region already
            target.copy_(values)
            planner.commit_tensor(item, target)
        done: Future = Future()
        done.set_result(None)
        return done



def flat_values(values: dict) -> dict:
    """The manifest's JSON values (name -> {"key", "value"}; the name is the value's
    ``array_path``) under the keys DCP's planners flatten them to: each flattened by DCP's
    own ``flatten_state_dict`` under its ``dcp_key`` (a JSON subtree is one tierpoint value,
    DCP may split it: ``param_groups`` -> ``...param_groups.0.lr``). DCP's traversal decides
    each subtree's leaves from that subtree alone, and its keys are dotted joins of object
    paths, so these are the keys a load planner computes for a state dict of the same shape."""
    out: dict = {}
    owner: dict = {}  # DCP key -> the value's name
    for name, value in values.items():
        flat = flatten_state_dict({dcp_key(value.get("key"), name): value["value"]})[0]
        for key in flat.keys() & out.keys():
            raise ValueError(_ambiguous(key, f"JSON value {owner[key]!r}",
                                        f"JSON value {name!r}"))
        out.update(flat)
        owner.update(dict.fromkeys(flat, name))
    return out


def _ambiguous(key: str, one: str, other: str) -> str:
    return (f"tierpoint.dcp: {one} and {other} both flatten to the DCP key {key!r} "
            "(DCP joins key components with '.'), so DCP cannot tell them apart; load this "
            "checkpoint with ckpt.restore, which keeps the components apart")
