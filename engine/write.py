"""Carry out this rank's part of a save plan against one tier directory.

Called by every rank, from the thread that runs the save; no collectives here. Chunks are
written as Zarr v3 chunk files (raw little-endian bytes of the full chunk shape, then the
crc32c trailer) by a small thread pool, each file fsynced; then the directories this rank
added entries to are fsynced. Returns one ChunkRecord per chunk written.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import dtypes, layout
from .fsutil import fsync_dir, write_file
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


def write_rank_chunks(step_dir: str, rank: int, work: list[tuple[ArrayPlan, ChunkAssignment]],
                      sources: dict[str, tuple[np.ndarray, Box]], *, threads: int,
                      fsync: bool = True) -> list[ChunkRecord]:
    """Write the chunks in ``work`` from ``sources[name] = (host bits, box they hold)``."""
    array_dirs = {plan.name: os.path.join(step_dir, plan.name) for plan, _ in work}
    for d in set(array_dirs.values()):
        os.makedirs(d, exist_ok=True)

    def one(item) -> ChunkRecord:
        plan, chunk = item
        bits, box = sources[plan.name]
        payload = chunk_bytes_of(bits, box, plan, chunk)
        crc = crc32c(payload)
        path = os.path.join(array_dirs[plan.name], layout.chunk_key(chunk.index))
        try:
            n = write_file(path, [payload, crc_trailer(crc)], fsync=fsync)
        except OSError as e:
            raise OSError(e.errno, f"writing chunk {layout.chunk_key(chunk.index)} of array "
                          f"{plan.name!r} to {path}: {e.strerror}") from e
        return ChunkRecord(plan.name, chunk.index, n, crc, rank)

    # Biggest chunks first keeps the pool busy to the end.
    ordered = sorted(work, key=lambda w: -w[1].box.volume * dtypes.itemsize(w[0].dtype))
    if threads <= 1 or len(ordered) <= 1:
        records = [one(w) for w in ordered]
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tierpoint-write") as ex:
            records = list(ex.map(one, ordered))
    if fsync:
        for d in set(array_dirs.values()):
            fsync_dir(d)
    return records


def write_array_metadata(step_dir: str, plan: ArrayPlan, key: tuple) -> str:
    """zarr.json of one array (by its metadata writer)."""
    directory = os.path.join(step_dir, plan.name)
    os.makedirs(directory, exist_ok=True)
    layout.write_zarr_json(directory, layout.zarr_array_metadata(plan, key))
    return directory


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
        layout.write_zarr_json(directory, layout.zarr_group_metadata(
            attributes if directory == step_dir else {}))


def fsync_group_dirs(step_dir: str, array_names) -> None:
    """Make every group directory's entries (array directories made by any rank) durable;
    run by a tier directory's leader after all ranks wrote, before the manifest."""
    for directory in reversed(_group_dirs(step_dir, array_names)):
        fsync_dir(directory)
