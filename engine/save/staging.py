"""The snapshot of an async save: copy this rank's shards into reused host staging memory.

The snapshot is the only part of a save the trainer waits for. It copies exactly the boxes
this rank writes (the bounding box of its assigned chunks in each array, so a replica another
rank writes is not copied) into one staging arena that lives as long as the Checkpointer:
fresh memory is slow to touch, so the arena is allocated once, grown when a bigger state
comes, and never shrunk. A host memory budget bounds the arena; a state larger than it is
staged in parts, each written before the next is copied.

``plan_staging`` is pure (which boxes, grouped into parts); ``StagingArena`` owns the memory;
``snapshot`` does the copies.
"""
from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..format import dtypes
from ..errors import CheckpointError
from ..kernels import aligned_empty, copy_region
from ..runtime.costs import PhaseCosts, measured
from ..state import ArrayLeaf, host_bits
from ..format.types import ArrayPlan, Box, ChunkAssignment

ALIGN = 64  # every staged box starts on a cache line
SLAB_BYTES = 64 << 20  # a big box is copied in dim-0 slabs of about this size, in parallel
PARALLEL_BYTES = 4 << 20  # copies at least this big go to the pool's threads
# The writer starts on a batch of staged boxes while the next is copied: the first write
# waits for no more than one batch, and the copy of the rest overlaps the writing.
BATCH_BYTES = 64 << 20


@dataclass(frozen=True)
class StageUnit:
    """One box of one array to copy, and the chunks written from it (all inside ``box``)."""

    plan: ArrayPlan
    box: Box
    chunks: tuple[ChunkAssignment, ...]

    @property
    def nbytes(self) -> int:
        return self.box.volume * dtypes.itemsize(self.plan.dtype)


def _bounding_box(boxes: list[Box]) -> Box:
    lo = tuple(min(b.offset[d] for b in boxes) for d in range(boxes[0].ndim))
    hi = tuple(max(b.end[d] for b in boxes) for d in range(boxes[0].ndim))
    return Box(lo, tuple(h - l for l, h in zip(lo, hi)))


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def plan_staging(work: list[tuple[ArrayPlan, ChunkAssignment]], budget: int | None,
                 what: str) -> list[list[StageUnit]]:
    """Group this rank's chunk writes into staging parts of at most ``budget`` bytes.

    An array's chunks are staged as one box (their bounding box) when it fits the budget,
    else chunk by chunk. ``budget=None`` means one part. A single chunk larger than the
    budget cannot be staged: that is a configuration error, reported with the array's name.
    """
    by_array: dict[str, list[ChunkAssignment]] = {}
    plans: dict[str, ArrayPlan] = {}
    for plan, chunk in work:
        by_array.setdefault(plan.name, []).append(chunk)
        plans[plan.name] = plan
    units: list[StageUnit] = []
    for name, chunks in by_array.items():
        plan = plans[name]
        whole = StageUnit(plan, _bounding_box([c.box for c in chunks]), tuple(chunks))
        if budget is None or _aligned(whole.nbytes) <= budget:
            units.append(whole)
            continue
        for c in chunks:
            unit = StageUnit(plan, c.box, (c,))
            if _aligned(unit.nbytes) > budget:
                raise CheckpointError(
                    f"{what}: chunk {'.'.join(map(str, c.index))} of array {name!r} has "
                    f"{unit.nbytes} bytes, more than the staging budget of {budget} bytes; "
                    "raise staging_bytes (or TIERPOINT_STAGING_BYTES) or lower chunk_bytes")
            units.append(unit)
    if budget is None:
        return [units] if units else []
    parts: list[list[StageUnit]] = []
    used = budget + 1
    for unit in units:  # first fit in order: parts fill the budget, arrays stay together
        size = _aligned(unit.nbytes)
        if used + size > budget:
            parts.append([])
            used = 0
        parts[-1].append(unit)
        used += size
    return parts


class StagingArena:
    """Host memory reused by every save of a Checkpointer (one save in flight at a time).

    ``pinned`` arenas (page-locked, for device-to-host copies) are made by torch; a pageable
    one by numpy. The arena only grows, so steady-state saves touch no fresh memory.
    """

    def __init__(self) -> None:
        self._bytes: np.ndarray | None = None
        self._tensor = None  # the torch tensor that owns pinned memory, kept alive
        self.pinned = False

    @property
    def capacity(self) -> int:
        return 0 if self._bytes is None else self._bytes.nbytes

    def reserve(self, nbytes: int, pinned: bool = False) -> np.ndarray:
        if self._bytes is None or self._bytes.nbytes < nbytes or (pinned and not self.pinned):
            self._bytes = self._tensor = None  # free the old arena before taking a bigger one
            if pinned:
                import torch
                self._tensor = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
                self._bytes = self._tensor.numpy()
            else:
                self._bytes = aligned_empty(nbytes)
            self.pinned = pinned
        return self._bytes

    def release(self) -> None:
        self._bytes = self._tensor = None
        self.pinned = False


def _on_host(obj) -> bool:
    return isinstance(obj, (np.ndarray, np.generic)) or obj.device.type == "cpu"


def _host_source(unit: StageUnit, leaf: ArrayLeaf) -> np.ndarray:
    """The unit's box in the trainer's own host memory: a view of its bits, no copy."""
    return host_bits(leaf.obj)[unit.box.relative_to(leaf.box).slices()]


def snapshot(units: list[StageUnit], leaves: dict[str, ArrayLeaf], arena: StagingArena, *,
             pool: Executor | None = None, batch_bytes: int | None = None,
             costs: PhaseCosts | None = None
             ) -> Iterator[list[tuple[StageUnit, np.ndarray]]]:
    """Copy ``units`` from the trainer's tensors into the arena, yielding them in batches of
    about ``batch_bytes`` (default: ``BATCH_BYTES``) as (unit, staged bits) once copied, so
    the writer can start on a batch while the next is copied.

    When the generator is exhausted, the staged bits hold the values of the tensors at the
    call, and the trainer may change its tensors. Host sources are copied by numpy (no GIL
    held; big boxes in slabs, on ``pool``'s threads as well as this one); device tensors by
    torch on a side stream into pinned memory (one batch). ``costs`` (optional) gets the
    time of every copy ("copy").
    """
    batch_bytes = BATCH_BYTES if batch_bytes is None else batch_bytes
    on_device = not all(_on_host(leaves[u.plan.name].obj) for u in units)
    memory = arena.reserve(max(sum(_aligned(u.nbytes) for u in units), 1), pinned=on_device)
    views, offsets, offset = [], [], 0
    for unit in units:
        storage = dtypes.storage_dtype(unit.plan.dtype)
        views.append(memory[offset:offset + unit.nbytes].view(storage).reshape(unit.box.shape))
        offsets.append(offset)
        offset += _aligned(unit.nbytes)
    if on_device:
        device = [(offsets[i], u, leaves[u.plan.name]) for i, u in enumerate(units)
                  if not _on_host(leaves[u.plan.name].obj)]
        with measured(costs, "copy", sum(u.nbytes for _, u, _ in device)):
            _copy_from_device([(o, u, leaf.obj.detach()[u.box.relative_to(leaf.box).slices()])
                               for o, u, leaf in device], arena)
    batch: list[tuple[StageUnit, np.ndarray]] = []
    copies: list[tuple[np.ndarray, np.ndarray]] = []
    size = 0
    for unit, view in zip(units, views):
        leaf = leaves[unit.plan.name]
        if _on_host(leaf.obj):
            copies.extend(_slabs(view, _host_source(unit, leaf)))
        batch.append((unit, view))
        size += unit.nbytes
        if size >= batch_bytes:
            _copy_all(copies, pool, costs)
            yield batch
            batch, copies, size = [], [], 0
    if batch:
        _copy_all(copies, pool, costs)
        yield batch


def _copy(dst: np.ndarray, src: np.ndarray, costs: PhaseCosts | None) -> None:
    with measured(costs, "copy", dst.nbytes):
        copy_region(dst, (), src, ())


def _copy_all(copies: list[tuple[np.ndarray, np.ndarray]], pool: Executor | None,
              costs: PhaseCosts | None = None) -> None:
    """Big copies on the pool's threads as well as this one; small ones here (handing a
    small copy to a thread costs more than doing it)."""
    inline, futures = copies, []
    big = [c for c in copies if c[0].nbytes >= PARALLEL_BYTES]
    if pool is not None and len(big) > 1:
        futures = [pool.submit(_copy, dst, src, costs) for dst, src in big[1:]]
        inline = big[:1] + [c for c in copies if c[0].nbytes < PARALLEL_BYTES]
    for dst, src in inline:
        _copy(dst, src, costs)
    for f in futures:
        f.result()


def source_views(units: list[StageUnit], leaves: dict[str, ArrayLeaf]
                 ) -> list[tuple[StageUnit, np.ndarray]] | None:
    """The units as views of the trainer's own host memory (no copy), for a blocking save
    that writes straight from the tensors; None when a tensor lives on a device."""
    if not all(_on_host(leaves[u.plan.name].obj) for u in units):
        return None
    return [(u, _host_source(u, leaves[u.plan.name])) for u in units]


def _slabs(dst: np.ndarray, src: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split one copy into dim-0 slabs of about SLAB_BYTES, so threads can share it."""
    if dst.ndim == 0 or dst.nbytes <= SLAB_BYTES or dst.shape[0] < 2:
        return [(dst, src)]
    rows = max(1, SLAB_BYTES // max(1, dst.nbytes // dst.shape[0]))
    return [(dst[i:i + rows], src[i:i + rows]) for i in range(0, dst.shape[0], rows)]


def _copy_from_device(copies, arena: StagingArena) -> None:
    """Device-to-host copies into the pinned arena on a side stream that first waits for the
    trainer's stream (so pending kernels that write the tensors finish first); returns once
    the copies are complete."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for offset, unit, source in copies:
            host = arena._tensor[offset:offset + unit.nbytes].view(source.dtype)
            host.view(tuple(unit.box.shape)).copy_(source, non_blocking=True)
            source.record_stream(side)
    side.synchronize()
