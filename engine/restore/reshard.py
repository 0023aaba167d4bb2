"""Pure box geometry for restore: which saved chunks a requested box needs.

The saved chunk grid is regular, so the chunks overlapping a box are found by integer
division per dimension: the cost is the number of overlapping chunks, independent of how
many ranks saved or restore (no search over saved-shard x requested-box pairs).
"""
from __future__ import annotations

import itertools

from ..format.types import Box, ReadItem


def plan_box_read(array: str, shape, chunk_shape, want: Box) -> list[ReadItem]:
    """ReadItems that together fill ``want`` (global coordinates) of one array."""
    if want.ndim != len(shape):
        raise ValueError(f"box rank {want.ndim} does not match array rank {len(shape)}")
    if any(s == 0 for s in want.shape) and want.ndim:
        return []
    ranges = [range(o // c, (e - 1) // c + 1)
              for o, e, c in zip(want.offset, want.end, chunk_shape)]
    items = []
    for idx in itertools.product(*ranges):
        off = tuple(i * c for i, c in zip(idx, chunk_shape))
        cbox = Box(off, tuple(min(c, s - o) for o, c, s in zip(off, chunk_shape, shape)))
        overlap = cbox.intersect(want)
        if overlap is None:  # pragma: no cover - ranges above only yield overlapping chunks
            continue
        items.append(ReadItem(array, idx, cbox, overlap.relative_to(cbox),
                              overlap.relative_to(want)))
    return items
