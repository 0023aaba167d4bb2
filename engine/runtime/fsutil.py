"""Durable file primitives: write-then-fsync, atomic replace, directory fsync.

Invariant kept by every caller: a file that other code may trust (manifest, commit marker,
Zarr metadata) appears under its final name only after its bytes are on stable storage.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import uuid

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


def syncfs(path: str) -> None:
    """Flush every dirty file and directory entry of the filesystem holding ``path``
    (Linux syncfs(2)): one journal commit instead of one per file."""
    lib = _load_syncfs()
    if lib is None:
        raise OSError("syncfs is not available on this platform")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if lib.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make the directory entries of ``path`` durable (new, renamed or removed files)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str, parts, *, fsync: bool = True) -> int:
    """Write the buffers ``parts`` to ``path`` (created or truncated); return bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
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
        if fsync:
            os.fsync(fd)
        return total
    finally:
        os.close(fd)


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
