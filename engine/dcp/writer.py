"""``StorageWriter``: torch.distributed.checkpoint's storage writer over a ``Checkpointer``.

DCP's phases, and what each does here (torch/distributed/checkpoint/state_dict_saver.py calls
them; "all ranks" are the ranks of DCP's process group, which must be the Checkpointer's):

1. (all ranks) ``set_up_storage_writer``, ``prepare_local_plan``: nothing to add;
2. (coordinator) ``prepare_global_plan``: nothing to add (DCP's deduplication of replicated
   items is not needed: tierpoint's own save planning writes every element once);
3. (all ranks) ``write_data``: one collective blocking ``ckpt.save(step, state)`` of the state
   dict DCP was handed (the planner's flattened entries put back at their object paths,
   DTensors and tensors as they are, non-tensor entries as JSON values), written straight
   from those tensors (no staging copy of tierpoint's: under ``dcp.async_save`` they are
   torch's staged copy, so the state is copied once): when its future is done the checkpoint
   is committed (Zarr v3, checksums, digest, lineage, audit log, drains as the policy says).
   Under ``dcp.async_save`` this runs in torch's background thread, on the Checkpointer's
   channel: the trainer must not call the Checkpointer's collectives until the save's
   future is done;
4. (coordinator) ``finish``: nothing left to write. DCP's ``Metadata`` is not stored: the
   manifest holds everything it has (shapes, dtypes, chunk boxes, and the flattened keys'
   paths as the arrays' keys), and ``StorageReader.read_metadata`` rebuilds it as JSON-born
   values. No pickle is written: a non-tensor entry that is not plain JSON is
   ``ckpt.save``'s UnsupportedStateError.
"""
from __future__ import annotations

import torch
from torch.distributed.checkpoint._nested_dict import unflatten_state_dict
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItemType
from torch.distributed.checkpoint.storage import StorageWriter as _StorageWriter
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from ..errors import UnsupportedStateError


class StorageWriter(_StorageWriter):
    """``dcp.save(state_dict, storage_writer=tierpoint.dcp.StorageWriter(ckpt, step=100))``:
    a tierpoint checkpoint of ``step`` in ``ckpt``'s run, saved collectively by every rank."""

    def __init__(self, ckpt, step: int, *, metadata: dict | None = None):
        self.ckpt, self.step, self.metadata = ckpt, step, metadata
        # The SaveHandle of the last save written through this writer, once committed: its
        # ``stats`` show what ran (mode "blocking", staged_bytes 0: no copy of tierpoint's).
        self.handle = None

    def reset(self, checkpoint_id=None) -> None:
        """A new save through the same writer; ``checkpoint_id`` may name the step (an int)."""
        if checkpoint_id is not None:
            self.step = int(checkpoint_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return False  # chosen explicitly, never from a path

    def set_up_storage_writer(self, is_coordinator: bool, *args, **kwargs) -> None:
        self.is_coordinator = is_coordinator

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return plans

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future:
        # blocking=True: straight from the tensors DCP hands over, with no staging copy of
        # tierpoint's own. Under dcp.save the trainer waits for the commit anyway; under
        # dcp.async_save they are torch's staged copy, and this runs in its background thread,
        # so the state is copied once (by torch), not twice.
        self.handle = self.ckpt.save(self.step, state_of(planner), metadata=self.metadata,
                                     blocking=True)
        results = []
        for item in plan.items:
            size = 0
            if item.type != WriteItemType.BYTE_IO and item.tensor_data is not None:
                size = int(torch.Size(item.tensor_data.chunk.sizes).numel()) * \
                    item.tensor_data.properties.dtype.itemsize
            results.append(WriteResult(index=item.index, size_in_bytes=size, storage_data=None))
        done: Future = Future()
        done.set_result(results)
        return done

    def finish(self, metadata, results) -> None:
        """Nothing: the checkpoint was committed by ``write_data`` (see the module docstring)."""

    def storage_meta(self):
        return None


def state_of(planner: SavePlanner) -> dict:
    """The state dict DCP's planner holds (``planner.state_dict``, flattened by its object
    paths ``planner.mappings``) put back in its nested shape, lists as lists (DCP's own
    ``unflatten_state_dict``), as ``ckpt.save`` takes it; a planner that did not flatten
    hands its keys as they are. Every tensor is then at its DCP object path, so its recorded
    state key is that path and ``keys.dcp_key`` of it is its DCP key (keys.py says why); a
    leaf of DCP's that holds tensors (a tuple of them) is refused (UnsupportedStateError)."""
    for fqn, value in planner.state_dict.items():
        if not isinstance(value, torch.Tensor) and _holds_tensor(value):
            raise UnsupportedStateError(
                f"state entry {fqn}: DCP keeps a tuple (and a list of tuples) as one leaf, "
                "which it would pickle, so the tensors in it would be saved where dcp.load "
                "does not look for them; make the tuples lists")
    mappings = getattr(planner, "mappings", None)
    if not mappings:
        return dict(planner.state_dict)
    return unflatten_state_dict(planner.state_dict, mappings)


def _holds_tensor(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    items = value.values() if isinstance(value, dict) else \
        value if isinstance(value, (list, tuple)) else ()
    return any(_holds_tensor(v) for v in items)
