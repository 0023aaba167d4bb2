"""CPU seconds per GiB of each pass a tierpoint save makes over a chunk, measured on the
benchmark's own buffers in the benchmark's process.

The engine's save records wall seconds per phase (``handle.stats["phases"]``: clear,
prepare, write, seal, manifest, commit; ``snapshot_seconds``, ``writing_seconds``), not what
each pass over memory costs. A writer thread does, per chunk (engine/save/write.py): crc32c
of the payload, the chunk hash of the encoded bytes (BLAKE3 from format version 5), the
layout-independent fingerprint, the write(2), and at the end the fsync; an async save copies
each chunk into staging memory first. This module runs exactly those kernels (numpy
``copyto``, ``tierpoint.kernels.crc32c``, the engine's ``ChunkHasher``,
``tierpoint.kernels.fingerprint_box``, ``os.write``, ``os.fsync``, and the O_DIRECT write
that a save uses for files of 1 MiB and more), and for comparison the
SHA-256 that format version 4 hashed chunks with ("sha256 (v4)", not part of a save), one
thread, on up to ``sample_bytes`` of the rank's tensors cut into chunks of at most
``chunk_bytes`` rows, and reports thread CPU seconds and wall seconds per GiB.
"""
from __future__ import annotations

import hashlib
import os
import statistics
import time

GIB = 1 << 30
KERNELS = ("copy", "crc32c", "hash", "sha256 (v4)", "fingerprint", "write", "fsync",
           "direct write")


def chunks_of(arrays, sample_bytes: int, chunk_bytes: int = 32 << 20) -> list:
    """[(numpy 2-D view, (row0, 0))]: dim-0 pieces of at most ``chunk_bytes`` of the biggest
    ``arrays`` (numpy, 2-D, contiguous) until ``sample_bytes`` are taken."""
    out, taken = [], 0
    for a in sorted(arrays, key=lambda a: -a.nbytes):
        rows = max(1, chunk_bytes // max(1, a.nbytes // max(1, a.shape[0])))
        for r in range(0, a.shape[0], rows):
            piece = a[r:r + rows]
            out.append((piece, (r, 0)))
            taken += piece.nbytes
            if taken >= sample_bytes:
                return out
    return out


def measure(chunks: list, scratch_dir: str, repeats: int = 3) -> dict:
    """{kernel: {"cpu_s_per_gib": median, "wall_s_per_gib": median}} over ``repeats`` runs of
    every kernel on ``chunks``; ``bytes`` is how much each run covered."""
    import numpy as np

    from tierpoint.format import layout
    from tierpoint.format.chunkhash import ChunkHasher, algorithm_for
    from tierpoint.runtime.fsutil import write_file
    from tierpoint.kernels import aligned_empty, crc32c, fingerprint_box

    nbytes = sum(c.nbytes for c, _ in chunks)
    target = aligned_empty(max(c.nbytes for c, _ in chunks))
    target.fill(0)
    path = os.path.join(scratch_dir, f"kernel-costs-{os.getpid()}.bin")

    def copy():
        for c, _ in chunks:
            np.copyto(target[:c.nbytes], c.reshape(-1).view(np.uint8))

    def crc():
        for c, _ in chunks:
            crc32c(c)

    def chunk_hash():
        for c, _ in chunks:
            hasher = ChunkHasher(algorithm_for(layout.FORMAT_VERSION))
            hasher.update(c)
            hasher.value()

    def sha():
        for c, _ in chunks:
            hashlib.sha256(c).digest()

    def fingerprint():
        for c, offset in chunks:
            fingerprint_box(c, offset)

    fd = None

    def write():
        nonlocal fd
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for c, _ in chunks:
            view = memoryview(c.reshape(-1).view(np.uint8))
            while view:
                view = view[os.write(fd, view):]

    def fsync():
        os.fsync(fd)
        os.close(fd)

    def direct_write():  # what a save does with chunk files >= 1 MiB (Options.direct_io)
        for n, (c, _) in enumerate(chunks):
            write_file(f"{path}.{n}", [c], fsync=False, direct=True)
        for n in range(len(chunks)):
            os.unlink(f"{path}.{n}")

    runs = {k: ([], []) for k in KERNELS}
    fns = dict(zip(KERNELS, (copy, crc, chunk_hash, sha, fingerprint, write, fsync,
                            direct_write)))
    try:
        for _ in range(repeats):
            for k in KERNELS:
                c0, w0 = time.thread_time(), time.perf_counter()
                fns[k]()
                runs[k][0].append((time.thread_time() - c0) * GIB / nbytes)
                runs[k][1].append((time.perf_counter() - w0) * GIB / nbytes)
            os.unlink(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return {"bytes": nbytes, "repeats": repeats,
            **{k: {"cpu_s_per_gib": statistics.median(cpu),
                   "wall_s_per_gib": statistics.median(wall)} for k, (cpu, wall) in runs.items()}}
