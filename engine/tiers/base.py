"""The tier interface: what the engine does with a storage tier, and the one chunk check.

A *tier* is a place checkpoints live: the node-local POSIX tier (tiers/local.py), the
capacity tier on POSIX pools as OCDBT parts (tiers/capacity.py), the same parts on S3
(tiers/s3.py). The save path, restore, drain, verify, inspect and the command line are handed
a ``Tier`` (or a ``StepCopy`` of one checkpoint on it) and never branch on which kind it is,
nor import another tier's mechanics. Adding a tier is one new module that implements ``Tier`` and ``StepCopy``
and registers itself with ``register`` (tiers/registry.py finds it by the manifest's
``tier.kind`` and by path).

Who calls what (the threads and ranks are those of docs/architecture.md):
- ``steps``, ``open``, ``StepCopy.read_chunk``/``read_into``: any rank, any thread, no
  collective; restore's readers call ``read_into`` from several threads at once.
- ``prepare`` and the writes: the ranks that write into this tier (a save: every rank into its
  node's local directory; a drain: the aggregators into the capacity pools), each its own
  chunks (one writer per chunk, so no chunk is ever read-modify-written).
- ``commit``: a directory's leader (local) or the coordinator, rank 0 (capacity), after every
  writer's data is durable: the manifest first, the commit marker last.
- ``retire``: a directory's leader (local ring) or the coordinator (capacity retention); from
  the trainer's thread and the background drain thread at once: concurrent retires of one step
  are safe, exactly one does the work.
- ``sweep``: a leader, only when no save or drain of the run is in flight (the job is then the
  run's one writer): removes what interrupted work left.
- ``free_bytes``: a directory's leader before a save writes anything.

Invariants every implementation keeps (tests/test_tier_contract.py checks them):
- a step is committed exactly when its commit marker is; ``steps`` lists only those;
- ``commit`` makes the data and the manifest durable before the marker, and the marker holds
  the manifest's SHA-256, so a damaged manifest is detected by ``open``;
- ``read_chunk`` never returns bytes that fail the chunk check; a missing chunk is a
  ``CheckpointNotFoundError`` and a damaged one a ``CorruptCheckpointError``, each naming the
  array, the chunk and where it was looked for;
- ``retire`` takes a step out of ``steps`` atomically before deleting anything.
"""
from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

import numpy as np

from ..errors import CorruptCheckpointError
from ..format import dtypes, layout
from ..format.manifest import ArrayRecord, Manifest
from ..format.subchunks import ShardGeometry, check_index, crc_of_crcs
from ..format.types import ReadItem
from ..kernels import crc32c, decode_chunk, split_trailer


def geometry_of(array: ArrayRecord) -> ShardGeometry | None:
    """Where the inner chunks of ``array``'s chunk files lie (None: plain chunk files)."""
    if array.inner_shape is None:
        return None
    return ShardGeometry(tuple(array.chunk_shape), tuple(array.inner_shape),
                         dtypes.storage_dtype(array.dtype).itemsize)


def chunk_file_bytes(array: ArrayRecord) -> int:
    """The size of every chunk file of ``array``: the full chunk shape (edge chunks are
    padded, as Zarr requires) plus the crc32c trailer; sub-chunked files: every inner chunk
    with its trailer, then the index (format/subchunks.py)."""
    geometry = geometry_of(array)
    if geometry is not None:
        return geometry.file_bytes
    itemsize = dtypes.storage_dtype(array.dtype).itemsize
    return int(np.prod(array.chunk_shape, dtype=np.int64)) * itemsize + layout.CRC_BYTES


def check_chunk(array: ArrayRecord, key: str, data, where: str) -> None:
    """The chunk check, the only one: ``data`` (a chunk file's bytes) has the file size the
    chunk grid implies, and its crc32c trailer and the manifest's crc32c both match the
    payload (a sub-chunked file: every inner chunk matches its crc32c, the index is the one
    written, and the inner crc32c values match the manifest's). Raises
    CorruptCheckpointError naming the array, the chunk and ``where`` otherwise."""
    geometry = geometry_of(array)
    if geometry is None:
        payload, stored = _split_sized(array, key, data, where)
        check_crc(array, key, crc32c(payload), stored, where)
        return
    _check_size(array, key, len(data), where)
    view = memoryview(data)
    crcs = [_checked_inner(array, key, geometry, view, n, where, crc32c)
            for n in range(geometry.count)]
    check_whole_shard(array, key, geometry, view, crcs, where)


def chunk_values(array: ArrayRecord, data) -> np.ndarray:
    """The values of a whole chunk file (checked or not), in the full chunk shape: the
    payload itself, or a sub-chunked file's inner chunks put in place."""
    storage = dtypes.storage_dtype(array.dtype)
    geometry = geometry_of(array)
    if geometry is None:
        payload, _ = split_trailer(data)
        return np.frombuffer(payload, dtype=storage).reshape(array.chunk_shape)
    out = np.empty(array.chunk_shape, dtype=storage)
    view = memoryview(data)
    for n in range(geometry.count):
        start = n * geometry.stride
        inner = view[start:start + geometry.payload_bytes]
        out[geometry.box(n)] = np.frombuffer(inner, dtype=storage).reshape(geometry.inner_shape)
    return out


def _check_size(array: ArrayRecord, key: str, size: int, where: str) -> None:
    expected = chunk_file_bytes(array)
    if size != expected:
        raise CorruptCheckpointError(
            f"array {array.name!r}: chunk {key} ({where}) has {size} bytes, expected "
            f"{expected}; the chunk is corrupt")


def _split_sized(array: ArrayRecord, key: str, data, where: str):
    """(payload, stored crc32c) of a chunk file whose size is the one its grid implies."""
    _check_size(array, key, len(data), where)
    return split_trailer(data)


def _checked_inner(array: ArrayRecord, key: str, geometry: ShardGeometry, data, n: int,
                   where: str, checksum, start: int | None = None) -> int:
    """Inner chunk ``n`` of a sub-chunked file (at ``start`` of ``data``: by default its
    place in the whole file) through ``checksum(payload) -> crc32c``, checked against its
    trailer; returns the crc32c. ``checksum`` may copy part of the payload out as it goes
    (``decode_chunk``)."""
    start = n * geometry.stride if start is None else start
    payload = data[start:start + geometry.payload_bytes]
    stored = int.from_bytes(data[start + geometry.payload_bytes:start + geometry.stride],
                            "little")
    actual = checksum(payload)
    if actual != stored:
        raise CorruptCheckpointError(
            f"array {array.name!r}: chunk {key} ({where}) inner chunk "
            f"{'.'.join(map(str, geometry.position(n)))} fails its crc32c check (computed "
            f"{actual:#010x}, stored {stored:#010x}); the chunk is corrupt")
    return actual


def check_whole_shard(array: ArrayRecord, key: str, geometry: ShardGeometry, data, crcs,
                      where: str) -> None:
    """The parts of a sub-chunked file's check that need all of it (``data``, the whole
    file; ``crcs``, every inner chunk's crc32c, checked): index and manifest."""
    problem = check_index(geometry, data)
    if problem is not None:
        raise CorruptCheckpointError(
            f"array {array.name!r}: chunk {key} ({where}): {problem}; the chunk is corrupt")
    actual = crc_of_crcs(crcs)
    check_crc(array, key, actual, actual, where)


def check_shard_tail(array: ArrayRecord, key: str, geometry: ShardGeometry, index, crcs,
                     where: str) -> None:
    """``check_whole_shard`` of a file read in pieces: ``index`` is the bytes of its index,
    ``crcs`` every inner chunk's crc32c (each checked). The index this engine writes is
    compared as bytes; any other is put in its place in a whole-file buffer and named as
    the whole-file check names it (damage only)."""
    if bytes(index) == geometry.index():
        actual = crc_of_crcs(crcs)
        check_crc(array, key, actual, actual, where)
        return
    whole = bytearray(geometry.file_bytes)
    whole[geometry.index_offset:geometry.index_offset + len(index)] = index
    check_whole_shard(array, key, geometry, whole, crcs, where)


def _inner_wanted(geometry: ShardGeometry, n: int, item: ReadItem, target: np.ndarray):
    """(slices of inner chunk ``n``, the target view they go to) for ``item``'s region."""
    inner = geometry.box(n)
    region = item.chunk_region
    lo = [max(s.start, o) for s, o in zip(inner, region.offset)]
    hi = [min(s.stop, o + k) for s, o, k in zip(inner, region.offset, region.shape)]
    wanted = tuple(slice(a - s.start, b - s.start) for a, b, s in zip(lo, hi, inner))
    into = tuple(slice(t + a - o, t + b - o) for a, b, o, t in
                 zip(lo, hi, region.offset, item.target_region.offset))
    return wanted, target[into]


def _decoder(geometry: ShardGeometry, storage, wanted, dst):
    """``checksum(payload)`` for ``_checked_inner`` that also copies the ``wanted`` part of an
    inner chunk into ``dst``. A whole inner chunk is checksummed by the hardware crc32c and
    copied by numpy (measured here: faster than the fused blockwise kernel, whose per-block
    steps cost more than a second pass over 64 KiB - 1 MiB that is still in cache); a part
    goes through ``decode_chunk``, which copies only that part."""
    if all(w.start == 0 and w.stop == n for w, n in zip(wanted, geometry.inner_shape)):
        def whole(payload):
            crc = crc32c(payload)
            np.copyto(dst, np.frombuffer(payload, dtype=storage).reshape(geometry.inner_shape),
                      casting="equiv")
            return crc
        return whole
    return lambda payload: decode_chunk(payload, geometry.inner_shape, storage, wanted, dst)


def inner_reads(array: ArrayRecord, item: ReadItem) -> list[tuple[int, int]] | None:
    """The byte ranges ``(offset, length)`` of a chunk file that ``item`` needs, when that is
    part of a sub-chunked file; None when it needs the whole file (a plain one, or all of a
    sub-chunked one), which ``scatter_checked`` then checks whole."""
    geometry = geometry_of(array)
    if geometry is None or item.chunk_region.shape == tuple(array.chunk_shape):
        return None
    flats = geometry.overlapping(tuple(slice(o, o + k) for o, k in
                                       zip(item.chunk_region.offset, item.chunk_region.shape)))
    if len(flats) == geometry.count:
        return None
    return [(first * geometry.stride, count * geometry.stride)
            for first, count in geometry.runs(flats)]


def scatter_inner(array: ArrayRecord, key: str, pieces, item: ReadItem, target: np.ndarray,
                  where: str, crcs: list | None = None) -> int:
    """A read of part of a sub-chunked file: ``pieces`` are the ``(offset, bytes)`` that
    ``inner_reads`` named, read; each inner chunk in them is checked against its own crc32c
    while its part of ``item`` is copied into ``target`` (and its crc32c appended to
    ``crcs``, for a whole file read in pieces: ``check_shard_tail``). Returns the bytes
    read."""
    geometry = geometry_of(array)
    storage = dtypes.storage_dtype(array.dtype)
    total = 0
    for offset, data in pieces:
        view = memoryview(data)
        total += len(view)
        if len(view) % geometry.stride or offset % geometry.stride:
            raise CorruptCheckpointError(
                f"array {array.name!r}: chunk {key} ({where}) was cut short while reading; "
                "the chunk is corrupt")
        first = offset // geometry.stride
        for n in range(first, first + len(view) // geometry.stride):
            wanted, dst = _inner_wanted(geometry, n, item, target)
            crc = _checked_inner(array, key, geometry, view, n, where,
                                 _decoder(geometry, storage, wanted, dst),
                                 start=(n - first) * geometry.stride)
            if crcs is not None:
                crcs.append(crc)
    return total


def scatter_checked(array: ArrayRecord, key: str, data, item: ReadItem, target: np.ndarray,
                    where: str) -> int:
    """``check_chunk`` fused with the copy: ``data`` (a whole chunk file) is size-checked, then
    the part of the chunk ``item`` names is copied into ``target`` while the whole payload is
    checksummed in one pass (``decode_chunk``); the crc32c is checked after the copy (on a
    mismatch the caller refills the same region from another copy or raises). A sub-chunked
    file is checked whole too: the inner chunks ``item`` touches are copied out as they are
    checksummed, the others only checksummed. Returns the bytes of the chunk file. Used by
    every tier's ``read_into`` when the chunk is not read straight into the target."""
    geometry = geometry_of(array)
    storage = dtypes.storage_dtype(array.dtype)
    if geometry is not None:
        _check_size(array, key, len(data), where)
        view = memoryview(data)
        region = item.chunk_region
        touched = set(geometry.overlapping(tuple(slice(o, o + k) for o, k in
                                                 zip(region.offset, region.shape))))
        crcs = []
        for n in range(geometry.count):
            checksum = crc32c
            if n in touched:
                checksum = _decoder(geometry, storage, *_inner_wanted(geometry, n, item, target))
            crcs.append(_checked_inner(array, key, geometry, view, n, where, checksum))
        check_whole_shard(array, key, geometry, view, crcs, where)
        return len(data)
    payload, stored = _split_sized(array, key, data, where)
    region = item.chunk_region
    wanted = tuple(slice(o, o + n) for o, n in zip(region.offset, region.shape))
    actual = decode_chunk(payload, array.chunk_shape, storage, wanted,
                          target[item.target_region.slices()])
    check_crc(array, key, actual, stored, where)
    return len(data)


def check_crc(array: ArrayRecord, key: str, actual: int, stored: int, where: str) -> None:
    """The crc32c half of ``check_chunk``, for readers that checksum while they copy."""
    record = array.chunks.get(key)
    if record is None:
        raise CorruptCheckpointError(
            f"array {array.name!r}: chunk {key} ({where}) has no record in the manifest "
            "slices read; the manifest is damaged")
    if not actual == stored == record.crc32c:
        raise CorruptCheckpointError(
            f"array {array.name!r}: chunk {key} ({where}) fails its crc32c check (computed "
            f"{actual:#010x}, stored {stored:#010x}, manifest {record.crc32c:#010x}); the "
            "chunk is corrupt")


@runtime_checkable
class StepCopy(Protocol):
    """One tier's copy of one committed checkpoint, opened by ``Tier.open`` (its manifest
    checked against the marker) or by ``tiers.registry.open_copy(path)``. Every method may be
    called from several threads at once (restore's readers); none is collective."""

    tier: "Tier"
    step: int
    path: str  # where the copy is, for messages and the audit log
    manifest: Manifest

    def where(self, array: ArrayRecord, key: str) -> str:
        """Where chunk ``key`` of ``array`` is read from, for messages."""

    def read_raw(self, array: ArrayRecord, key: str) -> bytes | None:
        """The chunk file's bytes unchecked (verify reports what is wrong with them), None
        when this copy does not hold it; CorruptCheckpointError when it cannot be read
        safely (a link out of the checkpoint, an index entry that cannot be read)."""

    def read_chunk(self, array: ArrayRecord, key: str) -> bytes:
        """The chunk file's bytes, passed through ``check_chunk``; CheckpointNotFoundError
        when this copy lacks it (the drain's readers, the contract suite)."""

    def read_into(self, array: ArrayRecord, item: ReadItem, target: np.ndarray) -> int:
        """Copy the part of a chunk that ``item`` names into ``target`` (bits of the wanted
        box), checking the whole chunk on the way; returns the bytes read. Missing:
        CheckpointNotFoundError; damaged: CorruptCheckpointError (restore/read.py then tries
        the next copy, which rewrites the same region)."""

    def read_ahead(self, wanted: list[tuple[ArrayRecord, ReadItem]]) -> None:
        """A hint, before a restore reads: the items ``wanted`` ((array, ReadItem), in the
        order ``read_into`` will be called) are read next. A tier whose reads gain from many
        requests in flight issues them ahead, within a memory bound; the reads themselves
        and their checks are unchanged. May do nothing."""

    def holds(self, array: ArrayRecord, key: str) -> bool:
        """Whether this copy has the chunk's file (not whether it is good)."""

    def expected(self, array: ArrayRecord, key: str) -> bool:
        """Whether this copy must hold the chunk: a missing expected chunk is damage, a
        missing unexpected one lives on another node's copy."""

    def metadata_entries(self) -> Iterable[tuple[str, bytes]]:
        """(key, bytes) of every Zarr metadata document (zarr.json) of the checkpoint."""

    # Format version 2: the chunk records live in one slice per saving rank
    # (format/slices.py); ``manifest`` holds those of the slices it was opened with.

    def slice_ranks(self) -> set[int]:
        """The saving ranks whose slices this copy holds (version 1: every rank)."""

    def read_slice(self, rank: int) -> bytes | None:
        """The bytes of rank ``rank``'s slice unchecked, None when this copy lacks it."""

    def slice_where(self, rank: int) -> str:
        """Where the slice of ``rank`` is read from, for messages."""

    def with_slices(self, ranks=None) -> "StepCopy":
        """This copy, its manifest holding the records of the slices of ``ranks`` (None:
        every slice it holds), each checked against the header and the digest; a damaged
        slice is a CorruptCheckpointError naming it and its rank. Version 1: itself."""

    def structure_problems(self) -> list[tuple[str, str]]:
        """(problem, file) of what is wrong with the copy itself beyond its chunks (a drained
        copy's part that its head cannot reach), for verify."""


@runtime_checkable
class Tier(Protocol):
    """A place checkpoints live (see the module docstring for who calls what).

    The generic write path, used by the drain (capacity) and the contract suite (every
    tier): ``prepare`` once (the coordinator or the directory's leader), then ``write`` by
    each writer (its own entries, one writer per chunk), then ``finish`` (the coordinator:
    whatever joins the writers' output, e.g. the capacity tier's merge), then ``commit``."""

    kind: str  # the manifest's ``tier.kind`` of a copy on this tier ("local", "capacity", "s3")
    root: str  # for messages

    @classmethod
    def copy_at(cls, path: str, manifest: Manifest) -> StepCopy:
        """The copy at ``path`` whose manifest (already read and checked) is ``manifest``;
        for tiers/registry.py, which opens a step directory of any tier by its kind."""

    def steps(self, run: str) -> list[int]:
        """The committed steps of ``run``, ascending."""

    def step_path(self, run: str, step: int) -> str:
        """Where the copy of ``step`` is (or would be)."""

    def is_committed(self, run: str, step: int) -> bool:
        """Whether ``step`` of ``run`` is committed on this tier."""

    def open(self, run: str, step: int, *, ranks=None) -> StepCopy:
        """The committed copy of ``step``, its manifest checked against the marker and
        validated, with the records of the slices of ``ranks`` (None: every slice the copy
        holds; ``()``: the header alone; ``StepCopy.with_slices`` adds more later);
        CheckpointNotFoundError when not committed, CorruptCheckpointError when the manifest
        or a slice is damaged, FormatVersionError for another format version."""

    def prepare(self, run: str, step: int) -> None:
        """Make room for a new copy of ``step``: whatever an earlier, uncommitted attempt
        left is removed. Called once, before any ``write``."""

    def write(self, run: str, step: int, writer: int, entries: Iterable[tuple[str, bytes]],
              **options) -> list[dict]:
        """Write ``entries`` ((key, bytes): a chunk file under its Zarr key, or a zarr.json)
        as writer ``writer``, durably; returns [{"name", "path", "bytes"}] of what was
        written (the capacity tier: one part per pool), for ``finish``."""

    def finish(self, run: str, step: int, written: list[dict]) -> None:
        """Join every writer's output into one copy (after all ``write`` calls returned)."""

    def commit(self, run: str, step: int, manifest, *, domain: int | None = None,
               audit: dict | None = None) -> str:
        """Write the manifest (a Manifest or its document), then the commit marker (last);
        returns the manifest's SHA-256. Every writer's data must be durable before this is
        called. ``domain``: what a node-local directory declares it holds (holdings.py);
        ``audit``: the audit log's head at the commit, recorded in the marker."""

    def retire(self, run: str, step: int, *, rank: int = -1) -> bool:
        """Take ``step`` out of the tier atomically, then delete it; safe to call
        concurrently and on a step that is already gone. Returns whether this call did the
        work (of concurrent retirers exactly one does). ``rank``: for fault injection."""

    def sweep(self, run: str) -> list[int]:
        """Remove what interrupted work left (uncommitted and retired copies); returns the
        steps whose leftovers were removed."""

    def free_bytes(self) -> int:
        """Bytes free on the device(s) that hold this tier."""


_REGISTRY: dict[str, type] = {}


def register(kind: str, cls: type) -> None:
    """Make a tier implementation known by the ``tier.kind`` its copies' manifests record
    (one line per tier, in tiers/registry.py)."""
    _REGISTRY[kind] = cls


def registered() -> dict[str, type]:
    return dict(_REGISTRY)
