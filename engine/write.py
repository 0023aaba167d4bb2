"""Carry out this rank's part of a save plan against one tier directory.

Called by every rank, from the thread that runs the save; no collectives here. Chunks are
written as Zarr v3 chunk files (raw little-endian bytes of the full chunk shape, then the
crc32c trailer) by a small thread pool; everything is durable on return (see Options.sync).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import dtypes, layout
from .fsutil import fsync_dir, syncfs, syncfs_available, write_file
from .kernels import crc32c, crc_trailer
from .types import ArrayPlan, Box, ChunkAssignment, ChunkRecord


def chunk_bytes_of(local_bits: np.ndarray, local_box: Box, plan: ArrayPlan,
                   chunk: ChunkAssignment) -> np.ndarray:
    """The encoded payload of one chunk: a C-contiguous array of the full chunk shape.

    A view into the source when its elements are already contiguous; a copy otherwise
    (edge chunks are padded with zeros, the fill value, to the full chunk shape).
    """
    region = local_bits[chunk.box.relative_to(local_box).slices()]
    if chunk.box.shape == plan.chunk_shape:
        return np.ascontiguousarray(region)
    padded = np.zeros(plan.chunk_shape, dtype=local_bits.dtype)
    padded[tuple(slice(0, s) for s in chunk.box.shape)] = region
    return padded


def write_rank_files(step_dir: str, rank: int, work: list[tuple[ArrayPlan, ChunkAssignment]],
                     sources: dict[str, tuple[np.ndarray, Box]], metadata: list[tuple[str, dict]],
                     *, threads: int, sync: str = "fsync",
                     small_file_bytes: int = 1 << 20) -> list[ChunkRecord]:
    """Write this rank's chunks (``work``, from ``sources[name] = (host bits, their box)``)
    and the array metadata documents ``metadata`` (array name, zarr.json document).

    Files inside a step directory are written in place, not through temp files: the
    directory is not a checkpoint until its marker exists, and a new save at the same step
    removes whatever an interrupted one left. ``sync`` (see ``Options.sync``) says how the
    files and directories are made durable before this returns.
    """
    if sync == "syncfs" and not syncfs_available():
        sync = "fsync"
    per_file = sync == "fsync"
    dirs = {os.path.join(step_dir, plan.name) for plan, _ in work}
    dirs |= {os.path.join(step_dir, name) for name, _ in metadata}
    for d in dirs:
        os.makedirs(d, exist_ok=True)

    def chunk(item) -> ChunkRecord:
        plan, assignment = item
        bits, box = sources[plan.name]
        payload = chunk_bytes_of(bits, box, plan, assignment)
        crc = crc32c(payload)
        key = layout.chunk_key(assignment.index)
        path = os.path.join(step_dir, plan.name, key)
        try:
            n = write_file(path, [payload, crc_trailer(crc)],
                           fsync=per_file or (sync == "syncfs" and
                                              payload.nbytes >= small_file_bytes))
        except OSError as e:
            raise OSError(e.errno, f"writing chunk {key} of array {plan.name!r} to {path}: "
                          f"{e.strerror}") from e
        return ChunkRecord(plan.name, assignment.index, n, crc, rank)

    def doc(item) -> None:
        name, document = item
        write_file(os.path.join(step_dir, name, layout.ZARR_JSON), [layout.encode_json(document)],
                   fsync=per_file)

    # Biggest chunks first keeps the pool busy to the end; small metadata files last; the
    # directories once all their files are written. Concurrent fsyncs share journal commits.
    ordered = sorted(work, key=lambda w: -w[1].box.volume * dtypes.itemsize(w[0].dtype))
    with ThreadPoolExecutor(max_workers=max(1, threads),
                            thread_name_prefix="tierpoint-write") as ex:
        records = list(ex.map(chunk, ordered))
        list(ex.map(doc, metadata))
        if per_file:
            list(ex.map(fsync_dir, sorted(dirs)))
    if sync == "syncfs":
        syncfs(step_dir)
    return records


def _group_dirs(step_dir: str, array_names) -> list[str]:
    groups = {""}
    for name in array_names:
        parts = name.split("/")
        for i in range(1, len(parts)):
            groups.add("/".join(parts[:i]))
    return [os.path.join(step_dir, g) if g else step_dir for g in sorted(groups)]


def write_group_metadata(step_dir: str, array_names, attributes: dict) -> None:
    """zarr.json of the checkpoint group (with ``attributes``) and of every intermediate
    group; written by one rank per tier directory, before the chunks."""
    for directory in _group_dirs(step_dir, array_names):
        os.makedirs(directory, exist_ok=True)
        document = layout.zarr_group_metadata(attributes if directory == step_dir else {})
        write_file(os.path.join(directory, layout.ZARR_JSON), [layout.encode_json(document)])


def fsync_group_dirs(step_dir: str, array_names) -> None:
    """Make every group directory's entries (array directories made by any rank) durable;
    run by a tier directory's leader after all ranks wrote, before the manifest."""
    for directory in reversed(_group_dirs(step_dir, array_names)):
        fsync_dir(directory)
