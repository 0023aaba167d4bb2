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
