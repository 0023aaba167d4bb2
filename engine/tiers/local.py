"""The node-local POSIX tier: a step copy is the directory ``<root>/<run>/step_XXXXXXXX/``
(format/layout.py), one file per chunk. A save writes through ``LocalTier.writer``: each
rank's ``StepWriter`` writes the chunk files it is handed (the save's writer threads call it
concurrently, save/write.py encodes the chunks) and makes them durable; the leader writes the
group metadata, then the manifest and the marker. The generic ``write`` serves the contract
suite and tools.

Who calls what: every rank reads its own node's directory (restore's reader threads call
``LocalCopy.read_into`` concurrently); a directory's leader commits, retires and sweeps it;
the drain's readers call ``read_chunk``. A directory's commit marker declares the domain
whose chunks it was written to hold (holdings.py), so a copy moved or copied elsewhere still
knows what it must contain.

A partner replica (``Policy(replicas=1)``, tiers/replicas.py) is a sibling directory
``step_XXXXXXXX.replica-d<D>`` holding another node's copy of a step, committed under its own
marker: ``replica_copies`` opens it as a ``LocalCopy`` of domain D; ``steps`` never lists it.

Invariants: no file of a checkpoint is opened through a symbolic link or a directory that
resolves outside the step directory (``layout.open_inside``); ``retire`` renames the
directory out of the step namespace before deleting it, so of several concurrent retirers
exactly one does the work and a reader never sees a half-deleted committed step.
"""
from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np

from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ..format import layout, slices
from ..format.manifest import ArrayRecord, Manifest
from ..format.types import ReadItem
from ..runtime.costs import PhaseCosts, measured
from ..runtime.directio import refused
from ..runtime.faults import inject
from ..runtime.fsutil import (FilesystemSync, fsync_dir, makedirs_durable, syncfs_available,
                              write_atomic, write_file, writeback_available)
from . import holdings
from .posix import commit_directory
from .base import check_chunk, chunk_file_bytes
from .fileread import read_item_at


class LocalCopy:
    """One committed step directory of the local tier (see ``StepCopy`` in base.py).

    Format version 2: the directory holds the slices of its domain's ranks, which its header
    lists; a directory into which other nodes' directories were copied (one header won, every
    slice file is there) also serves the slices its header does not list, once their roots
    and the listed ones give the digest (``slices.prove_unlisted``, checked once per copy)."""

    def __init__(self, tier: "LocalTier", path: str, manifest: Manifest, *,
                 declared: int | None | bool = False, unlisted: dict | None = None):
        self.tier, self.path, self.manifest = tier, path, manifest
        self.step = manifest.step
        self.declared = holdings.declared_domain(path) if declared is False else declared
        self._unlisted = unlisted  # proven slice documents the header does not list

    def __repr__(self) -> str:
        return f"LocalCopy({self.path!r})"

    def where(self, array: ArrayRecord, key: str) -> str:
        return os.path.join(self.path, array.path, key)

    # ---- manifest slices (format version 2) ----

    def slice_where(self, rank: int) -> str:
        return os.path.join(self.path, layout.slice_key(rank))

    def read_slice(self, rank: int) -> bytes | None:
        return layout.read_slice_file(self.path, rank)

    def _gathered(self) -> dict[int, dict]:
        if self._unlisted is None:
            extra = set(layout.slice_files(self.path)) - set(self.manifest.slices)
            self._unlisted = slices.prove_unlisted(self.manifest, extra, self.read_slice,
                                                   self.slice_where) if extra else {}
        return self._unlisted

    def slice_ranks(self) -> set[int]:
        """The saving ranks whose slices this copy holds (version 1: every rank)."""
        if not self.manifest.sliced:
            return set(range(self.manifest.world_size))
        return set(self.manifest.slices) | set(self._gathered())

    def with_slices(self, ranks=None) -> "LocalCopy":
        """This copy with the chunk records of the slices of ``ranks`` (None: every slice it
        holds) in its manifest; each slice read and checked (``layout.slice_documents``)."""
        if not self.manifest.sliced:
            return self
        wanted = self.slice_ranks() if ranks is None else set(ranks)
        listed = wanted & set(self.manifest.slices)
        documents = layout.slice_documents(self.manifest, listed, self.read_slice,
                                           self.slice_where)
        rest = wanted - listed
        if rest:
            gathered = self._gathered()
            # A rank neither listed nor proven: slice_documents names it.
            layout.slice_documents(self.manifest, rest - set(gathered), self.read_slice,
                                   self.slice_where)
            documents.update({r: gathered[r] for r in rest})
        return LocalCopy(self.tier, self.path, self.manifest.with_slices(documents),
                         declared=self.declared, unlisted=self._unlisted)

    def _missing(self, array: ArrayRecord, key: str) -> CheckpointNotFoundError:
        writers = list(self.manifest.writers_of(array, key))
        return CheckpointNotFoundError(
            f"array {array.name!r}: chunk {key} is missing from the local tier "
            f"({self.where(array, key)}); it was written by rank(s) {writers} into their own "
            "node's tier. Restore with ranks on the nodes that hold it, or from the capacity "
            "tier")

    def _open(self, array: ArrayRecord, key: str) -> int:
        return layout.open_inside(self.path, os.path.join(array.path, key))

    def read_ahead(self, wanted) -> None:
        """Nothing: the restore's reader threads already read straight into the target."""

    def read_raw(self, array: ArrayRecord, key: str) -> bytes | None:
        try:
            with open(self._open(array, key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def read_chunk(self, array: ArrayRecord, key: str) -> bytes:
        data = self.read_raw(array, key)
        if data is None:
            raise self._missing(array, key)
        check_chunk(array, key, data, self.where(array, key))
        return data

    def read_into(self, array: ArrayRecord, item: ReadItem, target: np.ndarray) -> int:
        """The chunk file, size-checked, read as tiers/fileread.py reads (straight into the
        target where the chunk maps onto a contiguous run of it)."""
        key = layout.chunk_key(item.chunk_index)
        where = self.where(array, key)
        try:
            fd = self._open(array, key)
        except FileNotFoundError:
            raise self._missing(array, key) from None
        with open(fd, "rb", buffering=0) as f:
            size, wanted = os.fstat(f.fileno()).st_size, chunk_file_bytes(array)
            if size != wanted:
                raise CorruptCheckpointError(
                    f"array {array.name!r}: chunk {key} ({where}) has {size} bytes, expected "
                    f"{wanted}; the chunk is corrupt")
            return read_item_at(f.fileno(), 0, array, key, item, target, where)

    def holds(self, array: ArrayRecord, key: str) -> bool:
        """The chunk file is here (version 2: and its record is in the manifest: a chunk is
        read only against a record from a proven slice)."""
        if self.manifest.sliced and key not in array.chunks:
            return False
        return holdings.chunk_present(self.path, array.path, key)

    def expected(self, array: ArrayRecord, key: str) -> bool:
        return holdings.expected_here(self.manifest, array, key, self.declared)

    def held_domains(self) -> set[int]:
        """The saved domains whose chunks this directory holds (the drain's locate phase)."""
        return holdings.held_domains(self.path, self.manifest, self.declared,
                                     self.slice_ranks() if self.manifest.sliced else ())

    def metadata_entries(self):
        """(key, bytes) of every zarr.json (arrays, then groups), as the drain copies them."""
        for array in self.manifest.arrays.values():
            with open(os.path.join(self.path, array.path, layout.ZARR_JSON), "rb") as f:
                yield f"{array.path}/{layout.ZARR_JSON}", f.read()
        for base, _, files in os.walk(self.path):
            rel = os.path.relpath(base, self.path)
            if layout.ZARR_JSON in files and not _is_array_dir(base):
                with open(os.path.join(base, layout.ZARR_JSON), "rb") as f:
                    yield ((layout.ZARR_JSON if rel == "." else f"{rel}/{layout.ZARR_JSON}"),
                           f.read())

    def structure_problems(self) -> list[tuple[str, str]]:
        return []


def _is_array_dir(directory: str) -> bool:
    try:
        with open(os.path.join(directory, layout.ZARR_JSON), "rb") as f:
            return b'"node_type":"array"' in f.read()
    except FileNotFoundError:
        return False


class LocalTier:
    """The node-local tier under ``root`` (see the module docstring)."""

    kind = "local"

    def __init__(self, root: str):
        self.root = root

    def __repr__(self) -> str:
        return f"LocalTier({self.root!r})"

    @classmethod
    def copy_at(cls, path: str, manifest: Manifest) -> LocalCopy:
        """The copy at ``path`` (its manifest: a header, or with some slices loaded)."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        return LocalCopy(cls(root), path, manifest)

    # ---- reading ----

    def steps(self, run: str) -> list[int]:
        return layout.committed_steps(self.root, run)

    def step_path(self, run: str, step: int) -> str:
        return layout.step_dir(self.root, run, step)

    def is_committed(self, run: str, step: int) -> bool:
        return layout.is_committed(self.step_path(run, step))

    def open(self, run: str, step: int, *, ranks=None) -> LocalCopy:
        path = self.step_path(run, step)
        return LocalCopy(self, path, layout.read_header(path)).with_slices(ranks)

    # ---- partner replicas (tiers/replicas.py writes them; format/layout.py names them) ----

    def replica_path(self, run: str, step: int, domain: int) -> str:
        return layout.replica_dir(self.root, run, step, domain)

    def replicas(self, run: str) -> list[tuple[int, int]]:
        """(step, saved domain) of every committed replica held here."""
        return layout.committed_replicas(self.root, run)

    def replica_steps(self, run: str) -> list[int]:
        """The steps with at least one committed replica here, ascending (``steps`` stays
        this directory's own committed steps)."""
        return sorted({step for step, _ in self.replicas(run)})

    def replica_copies(self, run: str, step: int, *, ranks=None) -> list[LocalCopy]:
        """The committed replicas of ``step`` held here, in saved-domain order, each opened
        as ``open`` opens a step copy (``ranks``: the slices to load, as there): a LocalCopy
        over the replica directory whose marker declares the replicated domain, so
        ``held_domains``, ``expected``, ``holds``, ``read_into`` and ``read_chunk`` answer
        for that domain's files exactly as on its original directory. A replica damaged
        since its commit raises as ``open`` does (CorruptCheckpointError naming it)."""
        return [LocalCopy(self, path, layout.read_header(path)).with_slices(ranks)
                for path in (self.replica_path(run, s, d) for s, d in self.replicas(run)
                             if s == step)]

    def retire_replica(self, run: str, step: int, domain: int) -> bool:
        """Remove a replica (committed or not) atomically, as ``retire`` removes a step."""
        return remove_step_dir(self.replica_path(run, step, domain), step=step)

    def sweep_replicas(self, run: str, *, writing: int | None = None
                       ) -> list[tuple[int, int]]:
        """Remove replica directories without a marker (a replication cut short) and retired
        ones, but those of step ``writing`` (the step whose replicas are being written into
        this directory now, if any). Returns the (step, domain) of the uncommitted replicas
        removed."""
        run_dir = layout.run_dir(self.root, run)
        removed = []
        for name in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
            path = os.path.join(run_dir, name)
            parsed = layout.parse_replica_dir_name(name.split(layout.RETIRED_MARK)[0])
            if writing is not None and parsed is not None and parsed[0] == writing:
                continue
            if layout.is_retired_replica_name(name):
                shutil.rmtree(path, ignore_errors=True)
            elif (layout.parse_replica_dir_name(name) is not None and
                  not layout.is_committed(path)):
                remove_step_dir(path)
                removed.append(layout.parse_replica_dir_name(name))
        return removed

    # ---- writing ----

    def prepare(self, run: str, step: int) -> None:
        self.retire(run, step)
        for parent in makedirs_durable(self.step_path(run, step)):
            fsync_dir(parent)

    def write(self, run: str, step: int, writer: int, entries, **options) -> list[dict]:
        """Each entry as its own file under the step directory, fsynced, then the
        directories that gained entries; ``progress(nbytes)`` (in ``options``, the
        capacity tier's other options do not apply here) is called per entry."""
        progress = options.get("progress")
        directory = self.step_path(run, step)
        touched, total = set(), 0
        for key, data in entries:
            path = os.path.join(directory, *key.split("/"))
            touched.update(makedirs_durable(os.path.dirname(path)))
            touched.add(os.path.dirname(path))
            total += write_file(path, [data])
            if progress is not None:
                progress(len(data))
        for d in sorted(touched):
            fsync_dir(d)
        return [{"name": f"writer{writer}", "path": directory, "bytes": total}]

    def finish(self, run: str, step: int, written: list[dict]) -> None:
        """Nothing to join: every writer wrote its files in place."""

    # The save's writes: each rank's writer, and its directory leader's group files.

    def writer(self, run: str, step: int, rank: int, *, sync: str = "fsync",
               small_file_bytes: int = 1 << 20, direct: bool = False,
               costs: PhaseCosts | None = None) -> "StepWriter":
        """A rank's writer of its chunk files into ``step``'s directory (see StepWriter)."""
        return StepWriter(self.step_path(run, step), rank, step, sync=sync,
                          small_file_bytes=small_file_bytes, direct=direct, costs=costs)

    def write_group_metadata(self, run: str, step: int, array_names, attributes: dict) -> None:
        """zarr.json of the checkpoint group (with ``attributes``) and of every intermediate
        group of ``array_names``, before the chunks; several ranks may lay out one group."""
        step_dir = self.step_path(run, step)
        for directory in _group_dirs(step_dir, array_names):
            os.makedirs(directory, exist_ok=True)
            document = layout.zarr_group_metadata(attributes if directory == step_dir else {})
            # Atomic: the ranks of a directory that share a group write the same document.
            write_atomic(os.path.join(directory, layout.ZARR_JSON), layout.encode_json(document))

    def sync_group_dirs(self, run: str, step: int, array_names) -> None:
        """Make every group directory's entries (array directories made by any rank)
        durable; run by a tier directory's leader after all ranks wrote, before the
        manifest."""
        for directory in reversed(_group_dirs(self.step_path(run, step), array_names)):
            fsync_dir(directory)

    def commit(self, run: str, step: int, manifest, *, domain: int | None = None,
               rank: int = -1) -> str:
        return commit_directory(self.step_path(run, step), step, manifest, domain=domain)

    # The save's two halves of ``commit``: every directory's leader writes its manifest, the
    # ranks agree that all did, and only then does each leader write its marker (so a failed
    # manifest anywhere leaves no directory committed; save/job.py).

    def write_slice(self, run: str, step: int, document: dict) -> bytes:
        """One rank's manifest slice (its chunk records), atomically and durably, after its
        chunks; returns its bytes (the header records their SHA-256)."""
        return layout.write_slice(self.step_path(run, step), document)

    def read_written_slice(self, run: str, step: int, rank: int) -> bytes | None:
        """The bytes of the slice ``rank`` wrote into the step being saved (None: none)."""
        return layout.read_slice_file(self.step_path(run, step), rank)

    def write_manifest(self, run: str, step: int, manifest: dict) -> str:
        """Write the manifest document atomically; returns its SHA-256 (for the marker)."""
        data = layout.write_manifest(self.step_path(run, step), manifest)
        return hashlib.sha256(data).hexdigest()

    def write_marker(self, run: str, step: int, manifest_sha256: str, digest: str, *,
                     domain: int | None, audit: dict | None = None) -> None:
        """The commit marker, last: after it the step is committed in this directory
        (``audit``: the audit log's head at the commit, from rank 0)."""
        layout.write_commit_marker(self.step_path(run, step), step, manifest_sha256, digest,
                                   domain=domain, audit=audit)

    # ---- removing ----

    def retire(self, run: str, step: int, *, rank: int = -1) -> bool:
        return remove_step_dir(self.step_path(run, step), rank=rank, step=step)

    # ---- the drain record (what a node-local copy is owed; format/layout.py) ----

    def mark_drain(self, run: str, step: int, state: str) -> None:
        """Record that ``step``'s drain started ("owed") or committed ("drained"); the
        directory's leader, before the drain's copy and after its capacity commit."""
        layout.write_drain_record(self.step_path(run, step), step, state)

    def drain_state(self, run: str, step: int) -> str | None:
        return layout.read_drain_state(self.step_path(run, step))

    def step_names(self, run: str) -> list[int]:
        """Every step with a directory under ``run``, committed or not (not retired ones)."""
        run_dir = layout.run_dir(self.root, run)
        names = sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []
        return sorted(s for s in map(layout.parse_step_dir_name, names) if s is not None)

    def sweep(self, run: str) -> list[int]:
        """Remove step directories without a marker (saves cut short) and retired ones
        (removals cut short). Only when no save of the run is in flight."""
        run_dir = layout.run_dir(self.root, run)
        removed = set()
        for name in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
            path = os.path.join(run_dir, name)
            if layout.is_retired_name(name):
                shutil.rmtree(path, ignore_errors=True)
                removed.add(layout.parse_step_dir_name(name.split(layout.RETIRED_MARK)[0]))
            elif layout.parse_step_dir_name(name) is not None and not layout.is_committed(path):
                remove_step_dir(path)
                removed.add(layout.parse_step_dir_name(name))
        return sorted(removed)

    def free_bytes(self) -> int:
        probe = os.path.abspath(self.root)
        while not os.path.isdir(probe):
            probe = os.path.dirname(probe)
        st = os.statvfs(probe)
        return st.f_bavail * st.f_frsize


class StepWriter:
    """Writes one rank's files of one save into a step directory, in as many batches as the
    save needs; ``finish`` makes everything durable (``Options.sync``: "fsync" every file and
    directory; "syncfs": starts the writeback of large files as they are written, and one
    syncfs(2) makes everything durable; "none").

    Called from the save's writer threads (``chunk`` and ``document`` concurrently, after
    ``make_dirs`` for their arrays), then ``finish`` from the save job's thread. Files inside
    a step directory are written in place, not through temp files: the directory is not a
    checkpoint until its marker exists, and a new save at the same step retires whatever an
    interrupted one left.

    ``direct``: chunk files of at least ``small_file_bytes`` are written with direct I/O
    (runtime/directio.py: no page-cache copy; ``Options.direct_io``), as long as the
    filesystem takes it; the first refusal turns it off for the rest of this writer and the
    file is written the buffered way. ``costs`` (optional) gets the time of each file's
    "write" and "fsync" (or "writeback", its start), and of the final "sync" (directories,
    or the syncfs).
    """

    def __init__(self, step_dir: str, rank: int, step: int, *, sync: str = "fsync",
                 small_file_bytes: int = 1 << 20, direct: bool = False,
                 costs: PhaseCosts | None = None):
        if sync == "syncfs" and not syncfs_available():
            sync = "fsync"
        self.step_dir, self.rank, self.step = step_dir, rank, step
        self.sync, self.small_file_bytes = sync, small_file_bytes
        self.direct = direct  # turned off (for this writer) by the filesystem's first refusal
        self.costs = costs
        # "syncfs": a large file's writeback starts as soon as it is written (so the device
        # works while the next chunks are hashed) without a journal commit per file, as an
        # fsync would cost; the one syncfs at the end waits for it (fsync where the
        # platform has no sync_file_range).
        self._writeback = sync == "syncfs" and writeback_available()
        self._dirs: set[str] = set()
        # Opened before any file is written, so the final syncfs reports any writeback
        # error of the files (fsutil.FilesystemSync).
        self._syncfs: FilesystemSync | None = None
        if sync == "syncfs":
            try:
                os.makedirs(step_dir, exist_ok=True)
                self._syncfs = FilesystemSync(step_dir)
            except OSError as e:
                raise CheckpointError(f"rank {rank}: cannot open the step directory "
                                      f"{step_dir} to sync it: {e}") from e

    def make_dirs(self, array_paths) -> None:
        for name in array_paths:
            d = os.path.join(self.step_dir, name)
            if d not in self._dirs:
                os.makedirs(d, exist_ok=True)
                self._dirs.add(d)

    def chunk(self, array_path: str, key: str, buffers: list, size: int) -> int:
        """One chunk file (``buffers``: payload, then the crc32c trailer); returns bytes
        written. An OSError names the chunk, the array and the file."""
        path = os.path.join(self.step_dir, array_path, key)
        large = size >= self.small_file_bytes
        try:
            inject("write", rank=self.rank, step=self.step)
            if self.direct and large:
                try:
                    return self._write(path, buffers, large, direct=True)
                except OSError as e:
                    if not refused(e):
                        raise
                    self.direct = False  # this filesystem takes no direct I/O: buffered
            return self._write(path, buffers, large, direct=False)
        except OSError as e:
            raise OSError(e.errno, f"writing chunk {key} of array {array_path!r} to {path}: "
                          f"{e.strerror}") from e

    def _write(self, path: str, buffers: list, large: bool, *, direct: bool) -> int:
        # "syncfs": a large buffered file has its writeback started (fsynced where that is
        # not available); a direct one has nothing cached to write back. The final syncfs
        # (or the fsync here) writes the metadata and flushes the device.
        cached = self.sync == "syncfs" and large and not direct
        return write_file(path, buffers,
                          fsync=self.sync == "fsync" or (cached and not self._writeback),
                          writeback=cached and self._writeback, direct=direct,
                          costs=self.costs)

    def document(self, array_path: str, document: dict) -> None:
        """An array's zarr.json."""
        write_file(os.path.join(self.step_dir, array_path, layout.ZARR_JSON),
                   [layout.encode_json(document)], fsync=self.sync == "fsync")

    def finish(self, pool=None) -> None:
        """Make this rank's files and directory entries durable before the commit
        (``pool``: threads to fsync the directories with)."""
        with measured(self.costs, "sync"):
            if self.sync == "fsync":
                dirs = sorted(self._dirs)
                list(pool.map(fsync_dir, dirs) if pool is not None else map(fsync_dir, dirs))
            elif self._syncfs is not None:
                self._syncfs.sync()
        self.close()

    def close(self) -> None:
        """Let go of the syncfs descriptor (``finish`` does; a failed save calls it)."""
        if self._syncfs is not None:
            self._syncfs.close()


def _group_dirs(step_dir: str, array_names) -> list[str]:
    groups = {""}
    for name in array_names:
        parts = name.split("/")
        for i in range(1, len(parts)):
            groups.add("/".join(parts[:i]))
    return [os.path.join(step_dir, g) if g else step_dir for g in sorted(groups)]


def remove_step_dir(directory: str, *, rank: int = -1, step: int = -1) -> bool:
    """Delete whatever is at ``directory``: retired atomically first (it stops being a
    checkpoint at once), then removed. Several leaders on a shared filesystem, or the
    foreground and the drain thread, may remove the same directory at once: one of them
    wins the rename, the others find nothing to do. Returns whether this call removed it."""
    retired = layout.retire_step_dir(directory)
    if retired is None:
        return False
    inject("retire", rank=rank, step=step)
    shutil.rmtree(retired, ignore_errors=True)
    if os.path.lexists(retired):
        raise CheckpointError(f"could not remove {retired} (the old contents of {directory}); "
                              "check its permissions")
    return True
