"""What one rank declares about its arrays, compactly, for the coordinator's plan (jobplan.py).

A rank's declaration is a *table* (per array: name, dtype, global shape, state key, grid
``parts`` or None, replicated), which every rank holding an array declares identically and
which most ranks share outright (same model, same layout), plus what differs between ranks:
its cell of each grid *group* (the distinct ``(parts, replicated)`` of its table), the cells
of single arrays that differ from their group's (``overrides``) and the explicit boxes of
arrays that are not one cell of a grid (``boxes``). So a steady-state save sends a table
digest and a few cells, not one box per array; irregular layouts still send their boxes.

Pure: no torch, no I/O, no pickle; every type round-trips through JSON.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from ..errors import ShardingError
from ..format.placement import infer_grid, piece_box
from ..format.types import Box, Index, LocalArray

__all__ = ["TableEntry", "RankCells", "RankDeclaration", "TableLayout", "declare",
           "infer_grid", "table_groups", "entry_box", "canonical_digest"]

Group = tuple[Index, bool]  # (parts, replicated)


def canonical_digest(value) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value``: compact, keys sorted."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TableEntry:
    """The part of an array's declaration that every rank holding it declares identically:
    ``parts`` is the grid (pieces per dim) the holders' cells belong to, None when this
    rank's box is not a grid cell (then it sends the box)."""

    name: str
    dtype: str
    shape: Index
    key: tuple
    parts: Index | None
    replicated: bool

    def __post_init__(self) -> None:
        if self.parts is not None and (len(self.parts) != len(self.shape) or
                                       any(n < 1 for n in self.parts)):
            raise ValueError(f"array {self.name!r}: grid {list(self.parts)} does not fit "
                             f"shape {list(self.shape)} (one count >= 1 per dim)")

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "key": list(self.key), "replicated": self.replicated,
                "parts": None if self.parts is None else list(self.parts)}

    @classmethod
    def from_json(cls, d: dict) -> "TableEntry":
        parts = d["parts"]
        return cls(str(d["name"]), str(d["dtype"]), tuple(int(s) for s in d["shape"]),
                   tuple(d["key"]), None if parts is None else tuple(int(n) for n in parts),
                   bool(d["replicated"]))


def table_groups(table) -> list[Group]:
    """The distinct ``(parts, replicated)`` of a table's grid entries, in order of first
    appearance (a rank declares one cell per group)."""
    return TableLayout(table).groups


class TableLayout:
    """A table's grouping, computed once per distinct table: ``groups`` (see table_groups),
    ``index[i]`` (entry i's group, None for a box entry), ``firsts[g]`` (group g's first
    entry, whose cell is the group's cell) and ``box_entries``."""

    def __init__(self, table) -> None:
        self.table = tuple(table)
        numbers: dict[Group, int] = {}
        self.index: list[int | None] = []
        self.firsts: list[int] = []
        for i, e in enumerate(self.table):
            if e.parts is None:
                self.index.append(None)
                continue
            g = numbers.setdefault((e.parts, e.replicated), len(numbers))
            if g == len(self.firsts):
                self.firsts.append(i)
            self.index.append(g)
        self.groups: list[Group] = list(numbers)
        self.box_entries = frozenset(i for i, g in enumerate(self.index) if g is None)

    def check(self, rank: int, held: "RankCells") -> None:
        """Raise ShardingError unless ``held`` fits this table: one valid cell per group,
        valid overrides of grid entries only, a box for exactly the box entries."""
        if len(held.cells) != len(self.groups):
            raise ShardingError(f"rank {rank} declares {len(held.cells)} grid cells for the "
                                f"{len(self.groups)} grid groups of its table")
        for first, cell in zip(self.firsts, held.cells):
            _check_cell(rank, self.table[first], cell)
        for i, cell in held.overrides.items():
            if not 0 <= i < len(self.table) or self.index[i] is None:
                raise ShardingError(f"rank {rank} overrides the cell of entry {i}, which is "
                                    "not a grid entry of its table")
            _check_cell(rank, self.table[i], cell)
        if held.boxes.keys() != self.box_entries:
            wrong = min(self.box_entries ^ held.boxes.keys())
            what = repr(self.table[wrong].name) if 0 <= wrong < len(self.table) else wrong
            raise ShardingError(f"rank {rank}: a box is given for exactly the non-grid "
                                f"entries of its table; entry {what} is not so")


def _check_cell(rank: int, entry: TableEntry, cell: Index) -> None:
    if len(cell) != len(entry.parts) or any(not 0 <= c < n for c, n in zip(cell, entry.parts)):
        raise ShardingError(f"array {entry.name!r}: rank {rank} declares cell {list(cell)} "
                            f"outside its grid {list(entry.parts)}")


def _pairs_json(d: dict, value) -> list:
    return [[i, value(v)] for i, v in sorted(d.items())]


@dataclass(frozen=True)
class RankCells:
    """What a rank sends besides its table's digest: ``cells[g]`` is its cell of table group
    g (the cell of the group's first array), ``overrides[i]`` the cell of array i where it
    differs from its group's, ``boxes[i]`` the box of each entry with ``parts`` None."""

    cells: tuple[Index, ...]
    overrides: dict[int, Index] = field(default_factory=dict)
    boxes: dict[int, Box] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"cells": [list(c) for c in self.cells],
                "overrides": _pairs_json(self.overrides, list),
                "boxes": _pairs_json(self.boxes, Box.to_json)}

    @classmethod
    def from_json(cls, d: dict) -> "RankCells":
        return cls(tuple(tuple(int(i) for i in c) for c in d["cells"]),
                   {int(i): tuple(int(x) for x in c) for i, c in d["overrides"]},
                   {int(i): Box.from_json(b) for i, b in d["boxes"]})

    def cell(self, i: int, group: int) -> Index:
        """The cell of table entry ``i`` (in table group ``group``)."""
        return self.overrides.get(i, self.cells[group])


@dataclass(frozen=True)
class RankDeclaration:
    """One rank's whole declaration: its table (sorted by name) and its cells and boxes."""

    table: tuple[TableEntry, ...]
    cells: tuple[Index, ...]
    overrides: dict[int, Index] = field(default_factory=dict)
    boxes: dict[int, Box] = field(default_factory=dict)

    def held(self) -> RankCells:
        return RankCells(self.cells, self.overrides, self.boxes)

    def to_json(self) -> dict:
        return {"table": [e.to_json() for e in self.table], **self.held().to_json()}

    @classmethod
    def from_json(cls, d: dict) -> "RankDeclaration":
        held = RankCells.from_json(d)
        return cls(tuple(TableEntry.from_json(e) for e in d["table"]), held.cells,
                   held.overrides, held.boxes)

    def table_digest(self) -> str:
        """SHA-256 of the table (encoded once per declaration: a save asks several times,
        and the table is the big part)."""
        known = self.__dict__.get("_table_digest")
        if known is None:
            known = canonical_digest([e.to_json() for e in self.table])
            object.__setattr__(self, "_table_digest", known)
        return known

    def digest(self) -> str:
        """SHA-256 of the whole declaration: the table's digest and this rank's cells."""
        return canonical_digest([self.table_digest(), self.held().to_json()])

    def local_arrays(self) -> list[LocalArray]:
        """The box-by-box view of this declaration (what plan_save takes)."""
        layout, held = TableLayout(self.table), self.held()
        return [LocalArray(e.name, e.dtype, e.shape, entry_box(e, held, i, layout.index[i]),
                           e.replicated) for i, e in enumerate(self.table)]


def entry_box(entry: TableEntry, held: RankCells, i: int, group: int | None) -> Box:
    """The box a rank holds of its table entry ``i`` (in table group ``group``)."""
    if entry.parts is None:
        return held.boxes[i]
    return piece_box(entry.shape, entry.parts, held.cell(i, group))


def declare(leaves) -> RankDeclaration:
    """A rank's declaration from its array leaves (state.ArrayLeaf-like: name, dtype,
    global_shape, box, replicated, key, grid)."""
    leaves = sorted(leaves, key=lambda leaf: leaf.name)
    table, cells, overrides, boxes = [], [], {}, {}
    groups: dict[Group, int] = {}
    for i, leaf in enumerate(leaves):
        parts = None if leaf.grid is None else tuple(leaf.grid[0])
        table.append(TableEntry(leaf.name, leaf.dtype, tuple(leaf.global_shape),
                                tuple(leaf.key), parts, bool(leaf.replicated)))
        if parts is None:
            boxes[i] = leaf.box
            continue
        cell = tuple(leaf.grid[1])
        g = groups.setdefault((parts, bool(leaf.replicated)), len(groups))
        if g == len(cells):
            cells.append(cell)
        elif cells[g] != cell:
            overrides[i] = cell
    return RankDeclaration(tuple(table), tuple(cells), overrides, boxes)
