"""Copy a rectangular region between two arrays (the scatter of restore and the gather of
save). Works on any strides; element types are moved as their raw bits."""
from __future__ import annotations

import itertools

import numpy as np


def _view_index(slices) -> tuple:
    slices = tuple(slices)
    return slices if any(s is Ellipsis for s in slices) else slices + (Ellipsis,)


def copy_region(dst: np.ndarray, dst_slices: tuple, src: np.ndarray, src_slices: tuple) -> None:
    """``dst[dst_slices] = src[src_slices]`` (shapes must match)."""
    # A trailing Ellipsis makes indexing return a view even for 0-d arrays (``a[()]`` is a
    # scalar copy, and copying into it would change nothing).
    np.copyto(dst[_view_index(dst_slices)], src[_view_index(src_slices)], casting="no")


def copy_region_reference(dst: np.ndarray, dst_slices: tuple, src: np.ndarray,
                          src_slices: tuple) -> None:
    """Element-by-element reference of :func:`copy_region`."""
    d = dst[_view_index(dst_slices)]
    s = src[_view_index(src_slices)]
    if d.shape != s.shape:
        raise ValueError(f"region shapes differ: {d.shape} vs {s.shape}")
    for idx in itertools.product(*(range(n) for n in s.shape)):
        d[idx] = s[idx]
