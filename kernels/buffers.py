"""Host buffers for the data path, aligned so that block copies run at full speed.

glibc's memmove, which NumPy uses for contiguous runs, is several times slower on the
development VM (AMD EPYC) for copies of a few KiB to a few MiB when source and destination
differ in their address mod 64 (bench/kernels.py shows it). Tensors start on 64-byte (often
page) boundaries, while a large ``np.empty`` or ``bytearray`` starts 16 bytes past a page. So
every buffer the data path copies into or out of in blocks comes from :func:`aligned_empty`.
"""
from __future__ import annotations

import numpy as np

PAGE = 4096


def aligned_empty(nbytes: int, alignment: int = PAGE) -> np.ndarray:
    """An uninitialised 1-D uint8 array of ``nbytes`` whose data starts on ``alignment``."""
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, not {alignment}")
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    skip = -raw.ctypes.data % alignment
    return raw[skip:skip + nbytes]  # a view: keeps ``raw`` alive
