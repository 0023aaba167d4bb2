"""Writing a file with direct I/O (O_DIRECT): from the writer's memory to the device, past the
page cache.

Why: a checkpoint's chunk files are written once and not read back by the job that wrote
them (a restore reads them cold, after a restart). Through the page cache every byte is
copied once more by the kernel into freshly allocated cache pages, and on the virtual
machines this project is measured on that allocation is the dearest part of a save: a
buffered write cost 0.3 to 2.7 CPU s/GiB there, varying with the host, against 0.2 for this
path (the copy into the bounce buffer included). It also keeps a big checkpoint from pushing
the trainer's own file cache out of memory.

What it guarantees: the same bytes as a buffered write (the file is cut to its exact size
after the last, padded block); durability is unchanged in kind (the caller still fsyncs the
file or syncfs's the filesystem, which writes the metadata and flushes the device's cache).

Rules of O_DIRECT kept here: every write starts at a file offset, and from a memory address,
that is a multiple of ``ALIGN`` and has a length that is a multiple of it. Parts that are
aligned in memory go straight to the device; anything else is first copied into a reused,
page-aligned bounce buffer (one per writer thread). A filesystem that refuses direct I/O
(tmpfs on older kernels, some network filesystems) raises OSError with EINVAL:
``refused`` recognises it and the caller writes the file the buffered way instead.
Opening and syncing the file is fsutil.write_file's (``direct=True``).
"""
from __future__ import annotations

import errno
import mmap
import os
import threading

import numpy as np


ALIGN = 4096  # a multiple of every logical block size in use (512, 4096)
BOUNCE_BYTES = 8 << 20
_local = threading.local()


def refused(error: OSError) -> bool:
    """Whether ``error`` is a filesystem refusing direct I/O (not a real write failure)."""
    return error.errno == errno.EINVAL


def _bounce() -> np.ndarray:
    """This thread's bounce buffer: anonymous mmap memory, so page-aligned; kept for the
    thread's life (writer threads live as long as their Checkpointer)."""
    buf = getattr(_local, "bounce", None)
    if buf is None:
        buf = _local.bounce = np.frombuffer(mmap.mmap(-1, BOUNCE_BYTES), dtype=np.uint8)
    return buf


def _bytes(part) -> np.ndarray:
    if isinstance(part, np.ndarray):
        return part.reshape(-1).view(np.uint8)
    return np.frombuffer(part, dtype=np.uint8)


def _write_aligned(fd: int, data: np.ndarray) -> None:
    view = memoryview(data)
    while view.nbytes:
        n = os.write(fd, view)
        view = view[n:]


def write_direct(fd: int, parts) -> int:
    """Write the buffers ``parts`` to ``fd`` (opened with O_DIRECT, at offset 0) and cut the
    file to their exact size; return the bytes written. An OSError for which ``refused`` is
    true means the filesystem takes no direct I/O: write the file another way."""
    arrays = [_bytes(p) for p in parts]
    _write_parts(fd, arrays)
    total = sum(a.nbytes for a in arrays)
    os.ftruncate(fd, total)  # the last block was padded to ALIGN
    return total


def _write_parts(fd: int, arrays: list[np.ndarray]) -> None:
    bounce = _bounce()
    fill = 0  # bytes in the bounce buffer; the file offset is aligned whenever it is 0
    for data in arrays:
        if fill == 0 and data.nbytes >= ALIGN and data.ctypes.data % ALIGN == 0:
            whole = data.nbytes - data.nbytes % ALIGN
            _write_aligned(fd, data[:whole])  # aligned memory: no copy
            data = data[whole:]
        while data.nbytes:
            n = min(data.nbytes, BOUNCE_BYTES - fill)
            np.copyto(bounce[fill:fill + n], data[:n])  # numpy drops the GIL for big copies
            fill += n
            data = data[n:]
            if fill == BOUNCE_BYTES:
                _write_aligned(fd, bounce)
                fill = 0
    if fill:
        padded = -(-fill // ALIGN) * ALIGN
        bounce[fill:padded] = 0  # no stale bytes reach the device, even past the end
        _write_aligned(fd, bounce[:padded])
