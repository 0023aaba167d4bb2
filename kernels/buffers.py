"""Host buffers for the data path, aligned so that block copies run at full speed.

glibc's memmove, which NumPy uses for contiguous runs, is several times slower on the
development VM (AMD EPYC) for copies of a few KiB to a few MiB when source and destination
differ in their address mod 64 (bench/kernels.py shows it). Tensors start on 64-byte (often
page) boundaries, while a large ``np.empty`` or ``bytearray`` starts 16 bytes past a page. So
every buffer the data path copies into or out of in blocks comes from :func:`aligned_empty`.
"""
from __future__ import annotations

import threading

import numpy as np

PAGE = 4096


def aligned_empty(nbytes: int, alignment: int = PAGE) -> np.ndarray:
    """An uninitialised 1-D uint8 array of ``nbytes`` whose data starts on ``alignment``."""
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, not {alignment}")
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    skip = -raw.ctypes.data % alignment
    return raw[skip:skip + nbytes]  # a view: keeps ``raw`` alive


class ThreadScratch:
    """One reusable aligned buffer per thread (the writer and reader pools' threads live as
    long as their Checkpointer, so steady-state saves and restores touch no fresh memory)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, nbytes: int) -> np.ndarray:
        """This thread's buffer, grown to at least ``nbytes``; its first ``nbytes``."""
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.nbytes < nbytes:
            buf = aligned_empty(nbytes)
            self._local.buf = buf
        return buf[:nbytes]
