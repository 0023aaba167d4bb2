"""Durable file primitives: write-then-fsync, atomic replace, directory fsync.

Invariant kept by every caller: a file that other code may trust (manifest, commit marker,
Zarr metadata) appears under its final name only after its bytes are on stable storage.
"""
from __future__ import annotations

import os
import uuid


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
