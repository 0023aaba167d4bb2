"""Durable file primitives: write-then-fsync, atomic replace, directory fsync.

Invariant kept by every caller: a file that other code may trust (manifest, commit marker,
Zarr metadata) appears under its final name only after its bytes are on stable storage.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import uuid

from .costs import PhaseCosts, measured
from .directio import write_direct

_libc = None


def syncfs_available() -> bool:
    return _load_syncfs() is not None


def _load_syncfs():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc = lib if hasattr(lib, "syncfs") else False
        except OSError:
            _libc = False
    return _libc or None


def _load_sync_file_range():
    lib = _load_syncfs()
    fn = getattr(lib, "sync_file_range", None) if lib is not None else None
    if fn is not None and fn.argtypes is None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of the range's dirty pages, no wait


def writeback_available() -> bool:
    return _load_sync_file_range() is not None


def start_writeback(fd: int, path: str) -> None:
    """Start writing the file's dirty pages to the device and return without waiting, and
    without a journal commit (Linux sync_file_range(2) with SYNC_FILE_RANGE_WRITE). This
    makes nothing durable: a later syncfs(2) (or fsync) does, and finds less left to write."""
    fn = _load_sync_file_range()
    if fn is None:
        raise OSError("sync_file_range is not available on this platform")
    if fn(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sync_file_range({path}): {os.strerror(err)}")


def syncfs(path: str) -> None:
    """Flush every dirty file and directory entry of the filesystem holding ``path``
    (Linux syncfs(2)): one journal commit instead of one per file."""
    sync = FilesystemSync(path)
    try:
        sync.sync()
    finally:
        sync.close()


class FilesystemSync:
    """A syncfs(2) of the filesystem holding the directory ``path``, to run later.

    The descriptor is opened at construction, before the files it is to make durable are
    written: Linux (5.8 and later) makes syncfs report a writeback error of the filesystem
    that happened since its descriptor was opened, so one opened first also reports an
    error of the writeback that ``start_writeback`` (or the kernel) ran before the sync.
    """

    def __init__(self, path: str):
        if _load_syncfs() is None:
            raise OSError("syncfs is not available on this platform")
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_DIRECTORY)

    def sync(self) -> None:
        if self._fd is None:
            raise ValueError(f"the syncfs handle of {self.path} is closed")
        if _load_syncfs().syncfs(self._fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs({self.path}): {os.strerror(err)}")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def fsync_dir(path: str) -> None:
    """Make the directory entries of ``path`` durable (new, renamed or removed files)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str, parts, *, fsync: bool = True, writeback: bool = False,
               direct: bool = False, costs: PhaseCosts | None = None) -> int:
    """Write the buffers ``parts`` to ``path`` (created or truncated); return bytes written.
    ``direct``: with O_DIRECT, past the page cache (runtime/directio.py; an OSError that
    ``directio.refused`` recognises: this filesystem takes none). ``fsync``: make the file
    durable before returning; else ``writeback``: start writing its cached pages to the
    device (``start_writeback``: durable only after a later syncfs; a direct write has
    none). ``costs`` (optional) gets the time of the "write" and of the "fsync" (or
    "writeback")."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags, 0o644)
    try:
        with measured(costs, "write", sum(memoryview(p).nbytes for p in parts)):
            total = write_direct(fd, parts) if direct else _write_all(fd, parts, path)
        if fsync:
            with measured(costs, "fsync", total):
                os.fsync(fd)
        elif writeback and not direct:
            with measured(costs, "writeback", total):
                start_writeback(fd, path)
        return total
    finally:
        os.close(fd)


def _write_all(fd: int, parts, path: str) -> int:
    """Write the buffers ``parts`` to the open file ``fd`` (``path`` names it in errors);
    return bytes written."""
    total = 0
    views = [memoryview(p).cast("B") for p in parts]
    want = sum(v.nbytes for v in views)
    while views:
        n = os.writev(fd, views[:512])
        total += n
        # writev may write less than asked: drop what was written and go on.
        while views and n >= views[0].nbytes:
            n -= views[0].nbytes
            views.pop(0)
        if n:
            views[0] = views[0][n:]
    if total != want:  # pragma: no cover - guarded by the loop above
        raise OSError(f"short write to {path}: {total} of {want} bytes")
    return total


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: temp file, fsync, rename, fsync directory."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        write_file(tmp, [data])
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def makedirs_durable(path: str) -> list[str]:
    """Create ``path`` and missing parents; return the directories whose entries changed."""
    created = []
    probe = os.path.abspath(path)
    while not os.path.isdir(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(path, exist_ok=True)
    # The parent of each created directory gained an entry.
    return sorted({os.path.dirname(p) for p in created})
