"""Carry out this rank's reads of a restore plan against the copies that hold a checkpoint.

Called by every restoring rank (restore/execute.py, and trust/inspect.py for whole arrays);
no collectives here. ``copies`` are StepCopy objects of one checkpoint (tiers/base.py) in
preference order: the node-local copy first, then the capacity tier's. Each item is read by
the first copy (``StepCopy.read_into``: the whole chunk checked, its overlap with the
requested box copied into the target, straight into the target where the tier can); a chunk
missing there (CheckpointNotFoundError) or damaged (CorruptCheckpointError, with a
CheckpointWarning) is read from the next copy, which rewrites the same region. With no copy
left the last copy's error is raised: it names the array, the chunk, where it was looked
for, and what to do. Nothing here knows which kind of tier a copy is on.
"""
from __future__ import annotations

import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, CheckpointWarning
from ..format import layout
from ..format.manifest import ArrayRecord
from ..format.types import ReadItem
from ..options import RESTORE_AHEAD_BYTES


def read_item(copies: list, array: ArrayRecord, item: ReadItem, target: np.ndarray,
              rank: int | None = None) -> int:
    """One item from the first copy that has it intact; returns the bytes read. ``rank``
    (the reading rank, None outside a job) is named in the warning of a fallback."""
    key = layout.chunk_key(item.chunk_index)
    if key not in array.chunks:
        raise CorruptCheckpointError(
            f"array {array.name!r}: chunk {key} is not listed in the manifest")
    for n, copy in enumerate(copies):
        last = n == len(copies) - 1
        try:
            return copy.read_into(array, item, target)
        except CheckpointNotFoundError:
            if last:
                raise
        except CorruptCheckpointError as e:
            if last:
                raise
            following = copies[n + 1]
            who = "tierpoint: " if rank is None else f"tierpoint: rank {rank}: "
            warnings.warn(f"{who}{e}; reading the {following.tier.kind} tier's copy "
                          f"instead ({following.path})", CheckpointWarning, stacklevel=3)
    raise CheckpointNotFoundError(  # no copies at all
        f"array {array.name!r}: chunk {key}: no copy of the checkpoint to read it from")


def read_array(copies: list, array: ArrayRecord, items: list[ReadItem], target: np.ndarray,
               *, threads: int, rank: int | None = None) -> int:
    """Fill ``target`` (bits of the requested box) from ``items``; return bytes read.

    ``copies``: StepCopy objects of one checkpoint, in preference order (local first);
    ``array``: the array's manifest record. With ``threads`` > 1 the items are read
    concurrently (each item writes a region of ``target`` no other item writes)."""
    if threads <= 1 or len(items) <= 1:
        return sum(read_item(copies, array, i, target, rank) for i in items)
    return read_arrays(copies, [(array, items, target, lambda: None)], threads=threads,
                       rank=rank)


def read_arrays(copies: list, jobs, *, threads: int, rank: int | None = None,
                ahead_bytes: int = RESTORE_AHEAD_BYTES) -> int:
    """Fill several arrays from one pool of ``threads`` readers; return bytes read.

    ``jobs`` yields ``(array, items, target, finish)`` in reading order; the items of the
    next arrays are queued while earlier ones are read, so the readers keep ``threads`` reads
    in flight across arrays (a restore onto the saved layout often reads one chunk per
    array: alone, an array would keep one reader busy). ``finish()`` is called in order,
    once all of its array's items are read; the targets of at most ``ahead_bytes`` (at
    least one array) are taken from ``jobs`` and not yet finished (a GPU leaf's target is a
    host copy). The first failure, in reading order, is raised once the reads in flight
    have ended; the arrays after it are not read."""
    total = 0
    pending: deque = deque()  # (futures, finish, target bytes), oldest first
    held = 0
    with ThreadPoolExecutor(max_workers=max(1, threads),
                            thread_name_prefix="tierpoint-read") as pool:
        def complete_oldest() -> int:
            futures, finish, nbytes = pending.popleft()
            done = sum(f.result() for f in futures)
            finish()
            return done
        try:
            for array, items, target, finish in jobs:
                pending.append(([pool.submit(read_item, copies, array, i, target, rank)
                                 for i in items], finish, target.nbytes))
                held += target.nbytes
                while len(pending) > 1 and held > ahead_bytes:
                    held -= pending[0][2]
                    total += complete_oldest()
            while pending:
                held -= pending[0][2]
                total += complete_oldest()
        finally:
            for futures, _, _ in pending:  # after a failure: what was not started is not read
                for f in futures:
                    f.cancel()
    return total
