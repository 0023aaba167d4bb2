"""Pure save planning: from every rank's declared shards to the global write plan.

``plan_save`` is a deterministic function of all ranks' declarations, so every rank computes
the same plan without another exchange, and a 1,000-rank plan is a unit test. No I/O here.

Invariants of the plan it returns:
- the distinct shard boxes of an array are disjoint and cover it exactly (else ShardingError);
- the chunk grid is regular and every shard boundary is a chunk boundary, so each chunk lies
  inside one shard box and has exactly one writer (no read-modify-write of shared chunks);
- replicated boxes (held by several ranks) are written once per domain (a node-local
  directory shared by a group of ranks), each chunk by the holder that
  ``format.placement.replica_writer`` picks (chunk number + array salt), so replicated state
  is spread over the domain's holders, every node-local tier holds the replicated state its
  ranks had, and a reader finds each chunk's writer from the manifest header alone.
"""
from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
from collections import defaultdict
from dataclasses import dataclass

from ..format import dtypes, layout
from ..format.placement import array_salt, chunk_grid, linear_index, replica_writer
from ..errors import ShardingError
from ..format.types import ArrayPlan, Box, ChunkAssignment, LocalArray, SavePlan
from ..options import DEFAULT_CHUNK_BYTES



def plan_save(declarations: list[list[LocalArray]], *,
              chunk_bytes: int = DEFAULT_CHUNK_BYTES,
              domains: list | None = None) -> SavePlan:
    """The global save plan from ``declarations[rank]`` (each rank's LocalArray list).

    ``domains[rank]`` names the storage directory a rank writes into (default: one shared
    by all); replicas are written once per domain that holds them.
    """
    world = len(declarations)
    domains = list(domains) if domains is not None else [0] * world
    by_name: dict[str, list[tuple[int, LocalArray]]] = defaultdict(list)
    for rank, decls in enumerate(declarations):
        for d in decls:
            by_name[d.name].append((rank, d))
    _check_paths_nest(by_name)

    arrays: list[ArrayPlan] = []
    replicated_work = []  # (array index, box, holders) for chunks to spread after the rest
    partial: list[dict] = []
    for name in sorted(by_name):
        decls = by_name[name]
        dtype, shape = _agree_on_type(name, decls)
        boxes = _distinct_boxes(name, shape, decls)
        _check_disjoint(name, boxes)
        _check_cover(name, shape, boxes)
        chunk_shape = choose_chunk_shape(shape, dtypes.itemsize(dtype),
                                         [b for b, _ in boxes], chunk_bytes)
        partial.append({"name": name, "dtype": dtype, "shape": shape,
                        "chunk_shape": chunk_shape, "boxes": boxes, "chunks": []})
        itemsize = dtypes.itemsize(dtype)
        for box, holders in boxes:
            for idx, cbox in chunks_in_box(box, shape, chunk_shape):
                if len(holders) == 1:
                    partial[-1]["chunks"].append(ChunkAssignment(idx, cbox, holders[0]))
                else:
                    by_domain: dict = defaultdict(list)
                    for r in holders:
                        by_domain[domains[r]].append(r)
                    for group in by_domain.values():
                        replicated_work.append((len(partial) - 1, idx, cbox, tuple(group),
                                                cbox.volume * itemsize))

    # A replicated chunk's writer in each domain follows from the chunk alone
    # (format.placement.replica_writer), so a reader finds it from the manifest header.
    for ai, idx, cbox, holders, nbytes in replicated_work:
        p = partial[ai]
        writer = replica_writer(sorted(holders), linear_index(idx, chunk_grid(
            p["shape"], p["chunk_shape"])), array_salt(p["name"]))
        p["chunks"].append(ChunkAssignment(idx, cbox, writer))

    for p in partial:
        chunks = tuple(sorted(p["chunks"], key=lambda c: (c.index, c.writer)))
        arrays.append(ArrayPlan(p["name"], p["dtype"], p["shape"], p["chunk_shape"], chunks,
                                tuple(p["boxes"])))
    return SavePlan(world, tuple(arrays))


def _check_paths_nest(by_name) -> None:
    """An array's path may not also be a group holding other arrays."""
    names = sorted(by_name)
    for a, b in zip(names, names[1:]):
        if b.startswith(a + "/"):
            raise ShardingError(f"state key {a!r} is an array but {b!r} nests under it")


def _agree_on_type(name: str, decls) -> tuple[str, tuple[int, ...]]:
    rank0, first = decls[0]
    for rank, d in decls[1:]:
        if d.dtype != first.dtype:
            raise ShardingError(
                f"array {name!r}: rank {rank0} has dtype {first.dtype} but rank {rank} has "
                f"{d.dtype}; every rank must save the same dtype")
        if d.global_shape != first.global_shape:
            raise ShardingError(
                f"array {name!r}: rank {rank0} says global shape {list(first.global_shape)} "
                f"but rank {rank} says {list(d.global_shape)}")
    return first.dtype, first.global_shape


def _distinct_boxes(name, shape, decls) -> list[tuple[Box, tuple[int, ...]]]:
    """Distinct non-empty boxes with their holders; identical boxes must be replicas."""
    whole = Box.whole(shape)
    holders: dict[Box, list[int]] = {}
    replicated: dict[Box, bool] = {}
    for rank, d in decls:
        if d.box.ndim != len(shape) or not whole.contains(d.box):
            raise ShardingError(
                f"array {name!r}: rank {rank}'s shard at offset {list(d.box.offset)} with shape "
                f"{list(d.box.shape)} lies outside the global shape {list(shape)}")
        if d.box.volume == 0 and len(shape) > 0:
            continue
        if d.box in holders:
            if not (d.replicated and replicated[d.box]):
                raise ShardingError(
                    f"array {name!r}: ranks {holders[d.box][0]} and {rank} both hold the shard "
                    f"at offset {list(d.box.offset)} shape {list(d.box.shape)}; shards of one "
                    "array must not overlap (mark replicas as replicated)")
            holders[d.box].append(rank)
        else:
            holders[d.box] = [rank]
            replicated[d.box] = d.replicated
    return sorted((b, tuple(r)) for b, r in holders.items())


def _check_disjoint(name, boxes) -> None:
    """Sweep along dim 0: only boxes whose dim-0 ranges overlap are compared."""
    if not boxes or boxes[0][0].ndim == 0:
        if len(boxes) > 1:
            raise ShardingError(f"array {name!r}: a 0-d array has more than one shard")
        return
    active: list[tuple[int, int, Box, tuple]] = []  # heap of (end0, seq, box, holders)
    seq = itertools.count()
    for box, holders in sorted(boxes, key=lambda bh: bh[0].offset):
        while active and active[0][0] <= box.offset[0]:
            heapq.heappop(active)
        for _, _, other, other_holders in active:
            if box.intersect(other) is not None:
                raise ShardingError(
                    f"array {name!r}: shards overlap: offset {list(other.offset)} shape "
                    f"{list(other.shape)} (rank {other_holders[0]}) and offset "
                    f"{list(box.offset)} shape {list(box.shape)} (rank {holders[0]})")
        heapq.heappush(active, (box.end[0], next(seq), box, holders))


def _check_cover(name, shape, boxes) -> None:
    total = math.prod(shape)
    covered = sum(b.volume for b, _ in boxes)
    if covered != total:
        raise ShardingError(
            f"array {name!r}: the ranks' shards cover {covered} of {total} elements of global "
            f"shape {list(shape)}; some part of the array is held by no rank (a gap)")


def choose_chunk_shape(shape, itemsize: int, boxes, chunk_bytes: int) -> tuple[int, ...]:
    """A regular chunk shape whose grid contains every box boundary, split further (by
    divisors, keeping alignment) until a chunk is at most ``chunk_bytes`` where possible."""
    chunk = []
    for d, extent in enumerate(shape):
        cuts = {b.offset[d] for b in boxes} | {b.end[d] for b in boxes}
        cuts -= {0, extent}
        size = 0  # gcd(0, c) == c; no interior cut leaves the whole extent
        for c in cuts:
            size = math.gcd(size, c)
        chunk.append(max(size or extent, 1))
    for d in range(len(chunk)):
        nbytes = math.prod(chunk) * itemsize
        if nbytes <= chunk_bytes:
            break
        need = -(-nbytes // chunk_bytes)
        divisor = _smallest_divisor_at_least(chunk[d], need)
        chunk[d] //= divisor
    return tuple(chunk)


def _smallest_divisor_at_least(n: int, k: int) -> int:
    if k >= n:
        return n
    for q in range(k, int(math.isqrt(n)) + 1):
        if n % q == 0:
            return q
    # No small divisor >= k: take the smallest co-divisor n // p with p <= sqrt(n).
    best = n
    for p in range(1, int(math.isqrt(n)) + 1):
        if n % p == 0 and n // p >= k:
            best = min(best, n // p)
    return best


def chunks_in_box(box: Box, shape, chunk_shape):
    """(chunk index, in-bounds chunk box) of every chunk inside ``box`` (box is aligned)."""
    ranges = [range(o // c, -(-e // c)) for o, e, c in zip(box.offset, box.end, chunk_shape)]
    for idx in itertools.product(*ranges):
        off = tuple(i * c for i, c in zip(idx, chunk_shape))
        shp = tuple(min(c, s - o) for o, c, s in zip(off, chunk_shape, shape))
        yield idx, Box(off, shp)


@dataclass
class PreparedSave:
    """A save plan and what follows from it alone, for one rank: the arrays' state keys and
    names, the zarr.json documents this rank writes (its directory's arrays are shared out
    among the directory's ranks), the bytes its directory's ranks write (the leader checks the
    device has room), and the staging parts (filled in by the first save that needs them)."""

    plan: SavePlan
    keys: dict
    names: list
    docs: list
    domain_bytes: int
    parts: list | None = None


class PlanCache:
    """The previous save's PreparedSave, reused while every rank declares the same arrays
    (the usual case: the same model saved again), since planning a big model takes a while
    and the trainer waits for it. Called from the trainer's thread only."""

    def __init__(self) -> None:
        self._key: bytes | None = None
        self._prepared: PreparedSave | None = None

    def prepare(self, declarations: list, *, chunk_bytes: int, topology) -> PreparedSave:
        """``declarations[rank]``: that rank's [[LocalArray JSON, state key], ...] (the
        declare phase); ``topology``: the job's (runtime/topology.py)."""
        key = hashlib.sha256(json.dumps(declarations).encode()).digest()
        if self._prepared is None or self._key != key:
            plan = plan_save([[LocalArray.from_json(d) for d, _ in g] for g in declarations],
                             chunk_bytes=chunk_bytes, domains=list(topology.domains))
            keys = {d[0]: k for g in declarations for d, k in g}
            group = topology.domain_ranks()
            docs = [(p.name, layout.zarr_array_metadata(p, tuple(keys[p.name])))
                    for i, p in enumerate(plan.arrays) if group[i % len(group)] == topology.rank]
            domain_bytes = sum(c.box.volume * dtypes.itemsize(a.dtype) for r in group
                               for a, c in plan.writes_of(r))
            self._key = key
            self._prepared = PreparedSave(plan, keys, [a.name for a in plan.arrays], docs,
                                          domain_bytes)
        return self._prepared
