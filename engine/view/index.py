"""Numpy basic indexing of a saved array, as a box to read: pure, no I/O.

``box_of(shape, index)`` turns what a user writes between the brackets of
``view["model/w"][...]`` into the ``Box`` of the global array to read and the shape of the
result (an integer index drops its dimension, as numpy does). What is accepted: integers
(negative ones count from the end), slices of step 1 (``None`` bounds, negative bounds, bounds
past the end are clipped as numpy clips them), one ``Ellipsis``, and tuples of these. Anything
else (a step other than 1, ``None``/``newaxis``, a boolean, a list or array of indices) is an
IndexError that says what is accepted: such a read could not be served as one box, and the
reader should take the box first and index the numpy result.
"""
from __future__ import annotations

import numbers

from ..format.types import Box

ACCEPTED = ("integers, slices of step 1 and one Ellipsis (read a box, then index the numpy "
            "array it returns for anything else)")


def box_of(name: str, shape: tuple[int, ...], index) -> tuple[Box, tuple[int, ...]]:
    """(the box of the global array ``index`` selects, the shape of the result); IndexError,
    naming array ``name``, for an index that is not a basic one or is out of range."""
    parts = list(index) if isinstance(index, tuple) else [index]
    ellipses = sum(1 for p in parts if p is Ellipsis)
    if ellipses > 1:
        raise IndexError(f"array {name!r}: an index can only have a single Ellipsis")
    given = len(parts) - ellipses
    if given > len(shape):
        raise IndexError(f"array {name!r}: too many indices ({given}) for an array of "
                         f"{len(shape)} dimensions, shape {tuple(shape)}")
    if ellipses:
        at = parts.index(Ellipsis)
        parts[at:at + 1] = [slice(None)] * (len(shape) - given)
    parts += [slice(None)] * (len(shape) - len(parts))
    offset, extent, result = [], [], []
    for dim, (part, n) in enumerate(zip(parts, shape)):
        lo, size, kept = _one(name, dim, n, part)
        offset.append(lo)
        extent.append(size)
        if kept:
            result.append(size)
    return Box(tuple(offset), tuple(extent)), tuple(result)


def _one(name: str, dim: int, n: int, part) -> tuple[int, int, bool]:
    """(start, size, whether the dimension is kept) of one dimension's index."""
    if isinstance(part, slice):
        start, stop, step = part.indices(n)  # TypeError for bounds that are not integers
        if step != 1:
            raise IndexError(f"array {name!r}: dimension {dim}: slice step {part.step} is "
                             f"not supported; accepted: {ACCEPTED}")
        return start, max(0, stop - start), True
    if isinstance(part, numbers.Integral) and not isinstance(part, bool):
        i = int(part)
        if not -n <= i < n:
            raise IndexError(f"array {name!r}: index {i} is out of bounds for dimension "
                             f"{dim} of size {n}")
        return i % n, 1, False
    raise IndexError(f"array {name!r}: dimension {dim}: index {part!r} (a "
                     f"{type(part).__name__}) is not supported; accepted: {ACCEPTED}")
