"""The coordinator's save plan from compact declarations (declare.py), and what each rank
writes, computed by the rank from its own declaration and a small plan the coordinator sends.

Who calls what: ``plan_job`` runs on the coordinator (rank 0) only, on one table per distinct
table digest and every rank's RankCells; ``JobPlan.rank_plan(rank)`` is the small JSON sent to
each rank; every rank then runs ``rank_writes`` on its own.

Grid arrays (every holder declares the same ``parts`` and replicated flag) are planned from
a *group*: the cell of every rank, shared by all arrays with the same holders and cells, so
the work is per group and per array, never per chunk or per (rank, array). Other arrays are
expanded to boxes and planned by ``plan.plan_array`` (their cost is the box-by-box cost).

Invariants (tests/test_plan_compact.py): ``plan_job(...).expand()`` equals ``plan_save`` on
the same declarations (arrays, chunk grids, writers, saved boxes), errors are ShardingErrors
naming the same array, and ``rank_writes`` equals ``plan_save(...).writes_of(rank)``.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import ShardingError
from ..format import dtypes
from ..format.placement import (array_salt, chunk_grid, linear_index, piece_box, piece_size,
                                replica_position)
from ..format.types import ArrayPlan, Box, ChunkAssignment, Index, LocalArray, SavePlan
from ..options import DEFAULT_CHUNK_BYTES
from .declare import RankCells, RankDeclaration, TableEntry, TableLayout, entry_box
from .plan import (agree_on_type, assign_chunks, check_paths_nest, chunks_in_box,
                   grid_chunk_shape, plan_array)


@dataclass(frozen=True)
class GridGroup:
    """Arrays on one grid with the same holders and cells: ``cells[rank]`` is that rank's
    cell (None: the rank holds none of the group's arrays)."""

    parts: Index
    replicated: bool
    cells: tuple[Index | None, ...]


@dataclass(frozen=True)
class PlannedArray:
    """One array of the job. A grid array has ``parts`` and ``group`` (its chunks follow
    from them and are never listed); an explicit array has its distinct boxes with holders
    (``saved_boxes``), every chunk with its writer (``chunks``) and its ``holders``."""

    name: str
    dtype: str
    shape: Index
    key: tuple
    chunk_shape: Index
    parts: Index | None = None
    group: int | None = None
    saved_boxes: tuple[tuple[Box, tuple[int, ...]], ...] | None = None
    chunks: tuple[ChunkAssignment, ...] | None = None
    holders: tuple[int, ...] | None = None


def _live_extent(shape, parts) -> tuple[int, ...]:
    """Per dim, how many cells of the grid are non-empty (all 0 for an empty array)."""
    if math.prod(shape) == 0:
        return (0,) * len(shape)
    return tuple(-(-s // piece_size(s, n)) for s, n in zip(shape, parts))


def _is_live(cell, live) -> bool:
    return all(c < m for c, m in zip(cell, live))


class _GroupFacts:
    """What follows from one group's cells, each computed once: the holders of every cell,
    the checks per distinct live extent, and every rank's replica and document slots."""

    def __init__(self, group: GridGroup, domain_ids: list[int]) -> None:
        self.group = group
        self.domain_ids = domain_ids
        self.arrays: list[int] = []  # its arrays' indices in JobPlan.arrays (name order)
        self._holders: dict | None = None
        self._checked: set = set()
        self._replica: list | None = None
        self._docs: list | None = None

    def cell_holders(self) -> dict[Index, list[int]]:
        """cell -> its holders, ascending (dict order: first holder's rank)."""
        if self._holders is None:
            self._holders = {}
            for r, c in enumerate(self.group.cells):
                if c is not None:
                    self._holders.setdefault(c, []).append(r)
        return self._holders

    def check(self, name: str, shape) -> None:
        """Raise ShardingError unless the live cells for ``shape`` are each held, and held
        once unless replicated (holders of empty cells hold nothing)."""
        parts, live = self.group.parts, _live_extent(shape, self.group.parts)
        if live in self._checked:
            return
        held = [(c, h) for c, h in self.cell_holders().items() if _is_live(c, live)]
        if not self.group.replicated:
            for c, h in held:
                if len(h) > 1:
                    box = piece_box(shape, parts, c)
                    raise ShardingError(
                        f"array {name!r}: ranks {h[0]} and {h[1]} both hold the shard at "
                        f"offset {list(box.offset)} shape {list(box.shape)}; shards of one "
                        "array must not overlap (mark replicas as replicated)")
        if len(held) != math.prod(live):
            have = self.cell_holders()
            gap = next(c for c in itertools.product(*map(range, live)) if c not in have)
            box = piece_box(shape, parts, gap)
            raise ShardingError(
                f"array {name!r}: no rank holds the cell at offset {list(box.offset)} with "
                f"shape {list(box.shape)} of global shape {list(shape)} (a gap)")
        self._checked.add(live)

    def replica_slot(self, rank: int) -> tuple[int, int]:
        """(position, count) of ``rank`` among its domain's holders of its cell."""
        if self._replica is None:
            by: dict = {}
            for r, c in enumerate(self.group.cells):
                if c is not None:
                    by.setdefault((self.domain_ids[r], c), []).append(r)
            self._replica = _slots(len(self.group.cells), by.values())
        return self._replica[rank]

    def doc_slot(self, rank: int) -> tuple[int, int]:
        """(position, count) of ``rank`` among its domain's holders of the group: it writes
        the zarr.json of the group's arrays number (position - group) mod count, then every
        count-th (the group number shifts the start, so one-array groups spread too)."""
        if self._docs is None:
            by: dict = {}
            for r, c in enumerate(self.group.cells):
                if c is not None:
                    by.setdefault(self.domain_ids[r], []).append(r)
            self._docs = _slots(len(self.group.cells), by.values())
        return self._docs[rank]

    def add_domain_bytes(self, out: np.ndarray, arrays: list[PlannedArray]) -> None:
        """Add the bytes the group's arrays put in each domain: each live cell held in a
        domain is written there once (empty cells add 0)."""
        pairs = {(self.domain_ids[r], c): None for r, c in enumerate(self.group.cells)
                 if c is not None}
        ndim = len(self.group.parts)
        doms = np.fromiter((d for d, _ in pairs), dtype=np.int64, count=len(pairs))
        cells = np.array([c for _, c in pairs], dtype=np.int64).reshape(len(pairs), ndim)
        weight: dict[Index, int] = {}  # shape -> bytes per element, summed over its arrays
        for a in arrays:
            weight[a.shape] = weight.get(a.shape, 0) + dtypes.itemsize(a.dtype)
        total = np.zeros(len(pairs), dtype=np.int64)
        for shape, itemsize in weight.items():
            extent = np.array(shape, dtype=np.int64).reshape(1, ndim)
            piece = np.array([piece_size(s, n) for s, n in zip(shape, self.group.parts)],
                             dtype=np.int64).reshape(1, ndim)
            lo = np.minimum(cells * piece, extent)
            hi = np.minimum((cells + 1) * piece, extent)
            total += np.prod(hi - lo, axis=1, dtype=np.int64) * itemsize
        np.add.at(out, doms, total)


def _slots(world: int, groups) -> list:
    slots: list = [None] * world
    for ranks in groups:
        for k, r in enumerate(ranks):
            slots[r] = (k, len(ranks))
    return slots


class _Tables:
    """The job's distinct tables: their layouts, their ranks, and where each name is."""

    def __init__(self, tables: Mapping[str, Sequence[TableEntry]], table_of_rank, held):
        self.ranks_of: dict[str, list[int]] = {}
        for r, t in enumerate(table_of_rank):
            self.ranks_of.setdefault(t, []).append(r)  # dict order: tables by first rank
        self.layout = {t: TableLayout(tables[t]) for t in self.ranks_of}
        for r, t in enumerate(table_of_rank):
            self.layout[t].check(r, held[r])
        self.by_name: dict[str, list[tuple[str, int]]] = {}
        for t, lay in self.layout.items():
            for i, e in enumerate(lay.table):
                self.by_name.setdefault(e.name, []).append((t, i))
        self.overridden = {self.layout[t].table[i].name for r, t in enumerate(table_of_rank)
                           for i in held[r].overrides}

    def entry(self, ref: tuple[str, int]) -> TableEntry:
        return self.layout[ref[0]].table[ref[1]]


def plan_job(tables: Mapping[str, Sequence[TableEntry]], table_of_rank: Sequence[str],
             held: Sequence[RankCells], *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
             domains: Sequence | None = None) -> "JobPlan":
    """The job's save plan: ``tables`` by digest, ``table_of_rank[r]`` the digest of rank
    r's table and ``held[r]`` its cells and boxes; ``domains[r]`` as for plan_save."""
    if len(held) != len(table_of_rank):
        raise ValueError(f"{len(table_of_rank)} ranks' tables but {len(held)} ranks' cells")
    domains = list(domains) if domains is not None else [0] * len(table_of_rank)
    jt = _Tables(tables, table_of_rank, held)
    check_paths_nest(jt.by_name)
    planner = _Planner(jt, list(table_of_rank), held, domains, chunk_bytes)
    for name in sorted(jt.by_name):
        planner.add(name)
    return JobPlan(planner)


def plan_declarations(declarations: Sequence[RankDeclaration], **kw) -> "JobPlan":
    """``plan_job`` on whole declarations (tests and small jobs)."""
    digests = [d.table_digest() for d in declarations]
    tables = {t: d.table for t, d in zip(digests, declarations)}
    return plan_job(tables, digests, [d.held() for d in declarations], **kw)


class _Planner:
    """Builds a JobPlan array by array (in name order); groups are interned by content."""

    def __init__(self, jt: _Tables, table_of_rank, held, domains, chunk_bytes) -> None:
        self.jt, self.table_of_rank, self.held = jt, table_of_rank, held
        self.domains, self.chunk_bytes = domains, chunk_bytes
        ids: dict = {}
        self.domain_ids = [ids.setdefault(d, len(ids)) for d in domains]
        self.n_domains = len(ids)
        self.arrays: list[PlannedArray] = []
        self.groups: list[GridGroup] = []
        self.facts: list[_GroupFacts] = []
        self._interned: dict = {}  # (parts, replicated, cells) -> group number
        self._by_signature: dict = {}  # (parts, replicated, ((table, table group), ...))

    def add(self, name: str) -> None:
        refs = self.jt.by_name[name]
        entries = [self.jt.entry(ref) for ref in refs]
        # One representative per table (its first rank): ranks sharing a table agree.
        dtype, shape = agree_on_type(name, [(self.jt.ranks_of[t][0], e.dtype, e.shape)
                                            for (t, _), e in zip(refs, entries)])
        first = entries[0]
        if first.parts is not None and all(
                (e.parts, e.replicated) == (first.parts, first.replicated) for e in entries):
            self._add_grid(name, refs, first, dtype, shape)
        else:
            self._add_explicit(name, refs, first.key, dtype, shape)

    def _add_grid(self, name, refs, entry: TableEntry, dtype, shape) -> None:
        g = self._group_of(name, refs, entry)
        self.facts[g].check(name, shape)
        chunk_shape = grid_chunk_shape(shape, entry.parts, dtypes.itemsize(dtype),
                                       self.chunk_bytes)
        self.facts[g].arrays.append(len(self.arrays))
        self.arrays.append(PlannedArray(name, dtype, shape, entry.key, chunk_shape,
                                        entry.parts, g))

    def _group_of(self, name, refs, entry: TableEntry) -> int:
        """The group of a grid array: shared by every array with the same table groups
        (one cell vector per signature), its own cells where some holder overrides."""
        if name in self.jt.overridden:
            return self._intern(entry, self._cells(refs, overrides=True))
        signature = (entry.parts, entry.replicated,
                     tuple((t, self.jt.layout[t].index[i]) for t, i in refs))
        if signature not in self._by_signature:
            self._by_signature[signature] = self._intern(entry, self._cells(refs, False))
        return self._by_signature[signature]

    def _cells(self, refs, overrides: bool) -> tuple:
        cells: list = [None] * len(self.table_of_rank)
        for t, i in refs:
            g = self.jt.layout[t].index[i]
            for r in self.jt.ranks_of[t]:
                h = self.held[r]
                cells[r] = h.overrides.get(i, h.cells[g]) if overrides else h.cells[g]
        return tuple(cells)

    def _intern(self, entry: TableEntry, cells: tuple) -> int:
        key = (entry.parts, entry.replicated, cells)
        if key not in self._interned:
            self._interned[key] = len(self.groups)
            self.groups.append(GridGroup(entry.parts, entry.replicated, cells))
            self.facts.append(_GroupFacts(self.groups[-1], self.domain_ids))
        return self._interned[key]

    def _add_explicit(self, name, refs, key, dtype, shape) -> None:
        decls = []
        for t, i in refs:
            e, g = self.jt.entry((t, i)), self.jt.layout[t].index[i]
            for r in self.jt.ranks_of[t]:
                box = entry_box(e, self.held[r], i, g)
                decls.append((r, LocalArray(name, e.dtype, e.shape, box, e.replicated)))
        decls.sort(key=lambda d: d[0])
        plan = plan_array(name, decls, chunk_bytes=self.chunk_bytes, domains=self.domains)
        self.arrays.append(PlannedArray(name, dtype, shape, key, plan.chunk_shape,
                                        saved_boxes=plan.saved_boxes, chunks=plan.chunks,
                                        holders=tuple(r for r, _ in decls)))


class JobPlan:
    """The coordinator's plan: ``arrays`` (PlannedArray, by name), ``groups`` (GridGroup),
    ``domain_bytes[domain id]``; per rank, ``rank_plan``. Holds O(ranks x groups + arrays
    + explicit chunks) values, never a chunk list of a grid array."""

    def __init__(self, p: _Planner) -> None:
        self.world_size = len(p.table_of_rank)
        self.domains = p.domains
        self.arrays: tuple[PlannedArray, ...] = tuple(p.arrays)
        self.groups: tuple[GridGroup, ...] = tuple(p.groups)
        self._p = p
        self._tables: dict = {}  # table digest -> _TableInfo (memo of rank_plan)
        self._explicit_writes: dict[int, dict[int, list]] = {}  # array -> rank -> indices
        self._explicit_docs: dict[int, list[str]] = {}  # rank -> array names
        bytes_ = np.zeros(p.n_domains, dtype=np.int64)
        for facts in p.facts:
            facts.add_domain_bytes(bytes_, [self.arrays[j] for j in facts.arrays])
        for j, a in enumerate(self.arrays):
            if a.group is None:
                self._add_explicit(j, a, bytes_)
        self.domain_bytes = [int(b) for b in bytes_]

    def _add_explicit(self, j: int, a: PlannedArray, bytes_: np.ndarray) -> None:
        itemsize, ids = dtypes.itemsize(a.dtype), self._p.domain_ids
        writes: dict[int, list] = {}
        for c in a.chunks:
            writes.setdefault(c.writer, []).append(c.index)
            bytes_[ids[c.writer]] += c.box.volume * itemsize
        self._explicit_writes[j] = writes
        by_domain: dict = {}
        for r in a.holders:
            by_domain.setdefault(ids[r], []).append(r)
        for ranks in by_domain.values():  # the j-th array's doc: its j-th domain holder
            self._explicit_docs.setdefault(ranks[j % len(ranks)], []).append(a.name)

    def expand(self) -> SavePlan:
        """The box-by-box plan (what plan_save returns): every chunk listed."""
        out = []
        for a in self.arrays:
            if a.group is None:
                out.append(ArrayPlan(a.name, a.dtype, a.shape, a.chunk_shape, a.chunks,
                                     a.saved_boxes))
                continue
            live = _live_extent(a.shape, a.parts)
            boxes = sorted((piece_box(a.shape, a.parts, c), tuple(h))
                           for c, h in self._p.facts[a.group].cell_holders().items()
                           if _is_live(c, live))
            out.append(ArrayPlan(a.name, a.dtype, a.shape, a.chunk_shape,
                                 assign_chunks(a.name, a.shape, a.chunk_shape, boxes,
                                               self.domains), tuple(boxes)))
        return SavePlan(self.world_size, tuple(out))

    def header_arrays(self) -> dict[str, dict]:
        """Each array's manifest header entry, its layout as a grid or as shards."""
        out = {}
        for a in self.arrays:
            if a.group is None:
                lay = {"shards": [{**b.to_json(), "ranks": list(h)} for b, h in a.saved_boxes]}
            else:
                lay = {"grid": list(a.parts), "group": a.group}
            out[a.name] = {"name": a.name, "path": a.name, "key": list(a.key),
                           "dtype": a.dtype, "shape": list(a.shape),
                           "chunk_shape": list(a.chunk_shape), "layout": lay}
        return out

    def header_groups(self) -> list[dict]:
        return [{"parts": list(g.parts), "replicated": g.replicated,
                 "cells": [None if c is None else list(c) for c in g.cells]}
                for g in self.groups]

    def rank_plan(self, rank: int) -> dict:
        """What the coordinator sends ``rank`` (JSON): per group of its table its replica
        slot [position, count] (``replicas``; ``replica_overrides`` [entry, position,
        count] where an array's differs), its chunks of explicit arrays (``explicit``:
        [entry, chunk shape, chunk indices]), the table entries whose zarr.json it writes
        (``docs``) and the bytes its domain writes (``domain_bytes``)."""
        t = self._p.table_of_rank[rank]
        info = self._table_info(t)
        facts = self._p.facts
        slots = [None if g is None else facts[g].replica_slot(rank) for g in info.defaults]
        overrides = []
        for i, g in info.exceptions:
            slot = facts[g].replica_slot(rank)
            if slot != slots[self._p.jt.layout[t].index[i]]:
                overrides.append([i, *slot])
        explicit = [[i, list(self.arrays[j].chunk_shape),
                     [list(x) for x in self._explicit_writes[j].get(rank, ())]]
                    for i, j in info.explicit]
        docs = [info.position[n] for n in self._explicit_docs.get(rank, ())]
        for g, entries in info.docs.items():
            k, n = facts[g].doc_slot(rank)
            docs.extend(entries[(k - g) % n::n])
        return {"rank": rank, "table": t,
                "replicas": [None if s is None else list(s) for s in slots],
                "replica_overrides": overrides, "explicit": explicit, "docs": sorted(docs),
                "domain_bytes": self.domain_bytes[self._p.domain_ids[rank]]}

    def _table_info(self, t: str) -> "_TableInfo":
        if t not in self._tables:
            self._tables[t] = _TableInfo(self._p.jt.layout[t], self.arrays,
                                         {a.name: j for j, a in enumerate(self.arrays)})
        return self._tables[t]


class _TableInfo:
    """A table's entries against the job plan, once per distinct table: each table group's
    usual job group (``defaults``: that of its first grid array), the entries in another
    (``exceptions``), the explicit entries, and per job group its entries in name order."""

    def __init__(self, layout: TableLayout, arrays, number: dict[str, int]) -> None:
        self.defaults: list[int | None] = [None] * len(layout.groups)
        self.exceptions: list[tuple[int, int]] = []
        self.explicit: list[tuple[int, int]] = []
        self.docs: dict[int, list[int]] = {}
        self.position = {e.name: i for i, e in enumerate(layout.table)}
        for i, e in enumerate(layout.table):
            j = number[e.name]
            g = arrays[j].group
            if g is None:
                self.explicit.append((i, j))
                continue
            tg = layout.index[i]
            if self.defaults[tg] is None:
                self.defaults[tg] = g
            elif self.defaults[tg] != g:
                self.exceptions.append((i, g))
            self.docs.setdefault(g, []).append(i)


def rank_writes(decl: RankDeclaration, rank_plan: dict, rank: int, *,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[tuple[ArrayPlan,
                                                                       ChunkAssignment]]:
    """What ``rank`` writes (as ``plan_save(...).writes_of(rank)``, in that order), from its
    own declaration and its rank plan. Each ArrayPlan carries only this rank's chunks."""
    layout, held = TableLayout(decl.table), decl.held()
    slots = rank_plan["replicas"]
    if len(slots) != len(layout.groups):
        raise ValueError(f"rank {rank}: the rank plan is for a table with {len(slots)} grid "
                         f"groups, this rank's table has {len(layout.groups)}")
    overrides = {i: (k, n) for i, k, n in rank_plan["replica_overrides"]}
    explicit = {i: (tuple(cs), [tuple(x) for x in idx]) for i, cs, idx in rank_plan["explicit"]}
    out: list = []
    for i, e in enumerate(decl.table):
        if i in explicit:
            chunk_shape, indices = explicit[i]
            own = [ChunkAssignment(idx, _chunk_box(idx, e.shape, chunk_shape), rank)
                   for idx in indices]
        else:
            g = layout.index[i]
            if g is None:
                raise ShardingError(f"array {e.name!r}: rank {rank} declares a box but the "
                                    "rank plan has no chunks of it for this rank")
            chunk_shape = grid_chunk_shape(e.shape, e.parts, dtypes.itemsize(e.dtype),
                                           chunk_bytes)
            position, count = overrides.get(i) or slots[g]
            own = _own_cell_chunks(e, held.cell(i, g), chunk_shape, position, count, rank)
        plan = ArrayPlan(e.name, e.dtype, e.shape, chunk_shape, tuple(own), ())
        out.extend((plan, c) for c in own)
    return out


def _own_cell_chunks(e: TableEntry, cell, chunk_shape, position, count, rank) -> list:
    """The chunks of this rank's cell it writes: those the replica rule gives its slot."""
    box = piece_box(e.shape, e.parts, cell)
    if box.volume == 0 and box.ndim:
        return []  # an empty cell (its clamped offset may still name a chunk)
    grid, salt = chunk_grid(e.shape, chunk_shape), array_salt(e.name)
    return [ChunkAssignment(idx, cbox, rank)
            for idx, cbox in chunks_in_box(box, e.shape, chunk_shape)
            if replica_position(linear_index(idx, grid), salt, count) == position]


def _chunk_box(index, shape, chunk_shape) -> Box:
    off = tuple(i * c for i, c in zip(index, chunk_shape))
    return Box(off, tuple(min(c, s - o) for o, c, s in zip(off, chunk_shape, shape)))
