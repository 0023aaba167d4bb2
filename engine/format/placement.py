"""Who holds and who writes what, as pure rules both the save planner and the restore reader
apply, so that a reader finds the writer of a chunk (and the manifest slice recording it)
from the manifest header alone, without a table of every chunk.

Regular layouts ("grids"). An array of shape S split into ``parts[d]`` pieces along each dim
d follows torch.chunk / DTensor ``Shard`` semantics: piece size ``p = ceil(S / parts)``, and
cell ``c`` covers ``[min(c*p, S), min((c+1)*p, S))`` (trailing cells may be short or empty).
A rank of a grid layout holds one cell; several ranks may hold one cell only when the
layout is replicated (identical values).

Replicated chunks (a box or cell held by several ranks) are written once per domain (one
node-local directory): by the holder at position ``(linear chunk index + array salt) mod k``
among the domain's ``k`` holders in rank order, so replicated state is spread over the
domain's ranks and any reader can compute the writer. The salt is the CRC-32 of the array
name: stable across processes and releases, with no global array list needed.
"""
from __future__ import annotations

import bisect
import itertools
import math
import zlib

from .types import Box


def piece_size(extent: int, parts: int) -> int:
    """torch.chunk's piece size along one dim (0 for an empty dim)."""
    return -(-extent // parts) if extent else 0


def piece_box(shape, parts, cell) -> Box:
    """The box of ``cell`` in the grid ``parts`` over ``shape`` (possibly empty)."""
    lo, size = [], []
    for extent, n, c in zip(shape, parts, cell):
        p = piece_size(extent, n)
        start = min(c * p, extent)
        lo.append(start)
        size.append(min((c + 1) * p, extent) - start)
    return Box(tuple(lo), tuple(size))


def infer_grid(shape, box: Box):
    """``(parts, cell)`` when ``box`` is one cell of a grid over ``shape``, else None.

    Per dim: the whole extent is parts 1 / cell 0; otherwise the box size must divide the
    extent and the offset, giving parts ``extent // size``. The result is checked against
    ``piece_box`` (a short last piece has no dividing size, so it is an explicit box)."""
    shape = tuple(shape)
    if box.ndim != len(shape):
        return None
    parts, cell = [], []
    for extent, off, size in zip(shape, box.offset, box.shape):
        if size == extent and off == 0:
            parts.append(1)
            cell.append(0)
        elif size > 0 and extent % size == 0 and off % size == 0:
            parts.append(extent // size)
            cell.append(off // size)
        else:
            return None
    grid = tuple(parts), tuple(cell)
    return grid if piece_box(shape, *grid) == box else None


def mesh_grid(ndim: int, mesh_shape, coordinate, shard_dims):
    """``(parts, cell)`` of a tensor of ``ndim`` dims placed on a device mesh: mesh dim ``m``
    splits tensor dim ``shard_dims[m]`` (None: replicated over ``m``). Several mesh dims
    splitting one tensor dim combine outer first: ``c = c_outer * n_inner + c_inner``. This
    equals the DTensor's box only where nested chunking is even; callers check that."""
    parts, cell = [1] * ndim, [0] * ndim
    for size, coord, d in zip(mesh_shape, coordinate, shard_dims):
        if d is not None:
            parts[d] *= size
            cell[d] = cell[d] * size + coord
    return tuple(parts), tuple(cell)


def cell_of(shape, parts, index, chunk_shape) -> tuple[int, ...]:
    """The grid cell holding chunk ``index`` (chunk boundaries include piece boundaries, so
    a chunk lies inside exactly one cell)."""
    out = []
    for extent, n, i, c in zip(shape, parts, index, chunk_shape):
        p = piece_size(extent, n)
        out.append((i * c) // p if p else 0)
    return tuple(out)


def linear_index(index, grid) -> int:
    """Row-major number of a chunk index in a chunk grid of ``grid`` chunks per dim."""
    n = 0
    for i, g in zip(index, grid):
        n = n * g + i
    return n


def chunk_grid(shape, chunk_shape) -> tuple[int, ...]:
    return tuple(-(-s // c) if s else 0 for s, c in zip(shape, chunk_shape))


def array_salt(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def replica_writer(holders: list[int], linear: int, salt: int) -> int:
    """The one rank of ``holders`` (one domain's holders of a replicated box, ascending) that
    writes the chunk with row-major number ``linear`` of an array with ``salt``."""
    return holders[(linear + salt) % len(holders)]


def replica_position(linear: int, salt: int, count: int) -> int:
    """The position among ``count`` holders that writes chunk ``linear`` (see above)."""
    return (linear + salt) % count


def volume(shape) -> int:
    return math.prod(shape)


# ---- a chunk's writers, from the manifest header alone ---------------------------------------
#
# An array's header ``layout`` is either box by box, ``{"shards": [{"offset", "shape",
# "ranks"}, ...]}`` (the distinct saved boxes, each with its holders), or a regular grid,
# ``{"grid": parts, "group": g}`` whose holders are listed once for many arrays in the header's
# ``groups[g] = {"parts", "replicated", "cells": [cell or None per saving rank]}``. Either way a
# chunk lies inside one box (one cell) and its holders are that box's ranks; a chunk held by
# one rank has that writer, a replicated one has one writer per domain (``replica_writer``
# among the domain's holders, ascending). ``save/plan.py`` assigns writers by the same rule.

def cells_index(group: dict) -> dict[tuple[int, ...], tuple[int, ...]]:
    """cell -> the ranks holding it (ascending) of one header group (built once per group)."""
    out: dict[tuple[int, ...], list[int]] = {}
    for rank, cell in enumerate(group.get("cells", ())):
        if cell is not None:
            out.setdefault(tuple(cell), []).append(rank)
    return {cell: tuple(ranks) for cell, ranks in out.items()}


def chunks_overlapping(box: Box, shape, chunk_shape):
    """Every chunk index whose chunk overlaps ``box`` (a chunk-aligned box: those inside)."""
    ranges = [range(o // c, -(-(o + n) // c)) for o, n, c in
              zip(box.offset, box.shape, chunk_shape)]
    return itertools.product(*ranges)


class ArrayPlacement:
    """Who holds and who writes each chunk of one array, from its header ``layout`` (and the
    header's ``groups`` for a grid layout; ``cells`` is ``cells_index`` of that group, handed
    in so that arrays sharing a group share it). Built once per array a reader touches:
    O(shards log shards) for a box-by-box layout, O(1) for a grid; each look-up is then a
    bisection and a short scan (shards of one row band), or arithmetic."""

    def __init__(self, name: str, shape, chunk_shape, layout: dict, groups=(),
                 cells: dict | None = None):
        self.name, self.shape, self.chunk_shape = name, tuple(shape), tuple(chunk_shape)
        self.grid = chunk_grid(self.shape, self.chunk_shape)
        self.salt = array_salt(name)
        self._by_rank: dict | None = None
        if "grid" in layout:
            group = groups[layout["group"]]
            self.parts = tuple(layout["grid"])
            self.replicated = bool(group.get("replicated"))
            self.cells = cells if cells is not None else cells_index(group)
            self.shards = None
        else:
            self.parts = None
            self.shards = sorted((Box(tuple(s["offset"]), tuple(s["shape"])),
                                  tuple(sorted(s["ranks"]))) for s in layout.get("shards", ()))
            # Row bands: between consecutive dim-0 box edges, the boxes covering those rows
            # (a box spanning several bands is listed in each).
            self._cuts = sorted({b.offset[0] for b, _ in self.shards if b.ndim} |
                                {b.end[0] for b, _ in self.shards if b.ndim})
            self._bands: list[list[int]] = [[] for _ in self._cuts]
            for i, (box, _) in enumerate(self.shards):
                if box.ndim and box.volume:
                    lo = bisect.bisect_left(self._cuts, box.offset[0])
                    hi = bisect.bisect_left(self._cuts, box.end[0])
                    for band in range(lo, hi):
                        self._bands[band].append(i)

    def holders(self, index) -> tuple[int, ...]:
        """The saving ranks that held chunk ``index`` (() when no box contains it: a header
        whose boxes leave a gap, which verify reports)."""
        if self.parts is not None:
            return self.cells.get(cell_of(self.shape, self.parts, index, self.chunk_shape), ())
        if not self.shape:  # 0-d: one box, the whole array
            return self.shards[0][1] if self.shards else ()
        offset = tuple(i * c for i, c in zip(index, self.chunk_shape))
        band = bisect.bisect_right(self._cuts, offset[0]) - 1
        for i in self._bands[band] if 0 <= band < len(self._bands) else ():
            box, ranks = self.shards[i]
            if all(o <= x < e for o, x, e in zip(box.offset, offset, box.end)):
                return ranks
        return ()

    def writers(self, index, domains) -> tuple[int, ...]:
        """The saving ranks that wrote chunk ``index``: its one holder, or for a replicated
        chunk one per domain (``domains[rank]``), ascending."""
        holders = self.holders(index)
        if len(holders) <= 1:
            return holders
        by_domain: dict[int, list[int]] = {}
        for r in holders:
            by_domain.setdefault(domains[r] if r < len(domains) else -1, []).append(r)
        linear = linear_index(index, self.grid)
        return tuple(sorted(replica_writer(group, linear, self.salt)
                            for group in by_domain.values()))

    def written_by(self, rank: int, domains) -> list[tuple[int, ...]]:
        """The chunk indices ``rank`` wrote (what its slice must record), in grid order."""
        if self._by_rank is None:  # rank -> its boxes, built once (verify asks for every rank)
            self._by_rank = {}
            held = (((piece_box(self.shape, self.parts, cell), ranks)
                     for cell, ranks in self.cells.items()) if self.parts is not None
                    else self.shards)
            for box, ranks in held:
                for r in ranks:
                    self._by_rank.setdefault(r, []).append(box)
        boxes = self._by_rank.get(rank, [])
        out = []
        for box in boxes:
            if box.volume == 0 and box.ndim:
                continue
            out.extend(idx for idx in chunks_overlapping(box, self.shape, self.chunk_shape)
                       if rank in self.writers(idx, domains))
        return sorted(out)


def writers_of_chunk(name: str, shape, chunk_shape, layout: dict, groups, index,
                     domains) -> tuple[int, ...]:
    """The saving ranks that wrote chunk ``index`` of array ``name`` (see ArrayPlacement),
    from its header ``layout``, the header's ``groups`` and each saving rank's domain."""
    return ArrayPlacement(name, shape, chunk_shape, layout, groups).writers(index, domains)
