"""The capacity tier on POSIX pools: a step copy is one OCDBT database per writer and pool
("part"), merged without copying into a head database on pool 0 whose relative links reach
the parts (the capacity section of format/layout.py). Every TensorStore call of the engine is
here and in tiers/capacity_read.py (the read side: a drained copy, ``CapacityCopy``).

Who calls what (the drain, tiers/drain.py and its orchestration in tiers/ops.py):
- the coordinator (rank 0): ``check_pools``, ``prepare`` (what an interrupted drain of the
  step left is removed), ``sweep``, ``finish`` (merge the parts into the head), ``commit``;
- each aggregator: ``write`` (its chunks as one part per pool, the pools concurrently, from
  one producer thread feeding a writer thread per pool, each committing one batch while
  it fills the next: ``write_part``);
- every rank: ``check_index`` on its share of the keys, through a fresh reader;
- any rank or thread: ``open``/``copy_at`` and the copy's reads (restore, verify, inspect:
  ``CapacityCopy``, tiers/capacity_read.py, the read side);
- the coordinator (capacity retention) and the background drain thread: ``retire``.

Invariants: a copy exists exactly when the head's commit marker does (``steps`` lists only
those); ``retire`` removes the marker first, then renames the head out of the step namespace
(of several concurrent retirers exactly one wins), then deletes; everything else under a
run's step names without a marker is an interrupted drain or deletion that ``sweep`` removes.
"""
from __future__ import annotations

import os
import queue
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

from ..errors import CheckpointError, CorruptCheckpointError
from ..format import layout
from ..format.manifest import Manifest
from ..runtime.faults import inject
from ..format.subchunks import crc_of_crcs
from .base import check_chunk, geometry_of
from .capacity_read import CapacityCopy, open_kv, open_ocdbt
from .posix import commit_directory
from ..options import DRAIN_BATCH_BYTES, DRAIN_DATA_FILE_BYTES


def write_part(part_dir: str, entries, *, batch_bytes: int = DRAIN_BATCH_BYTES,
               progress=None, committed=None, data_file_bytes: int = DRAIN_DATA_FILE_BYTES,
               first_batch_bytes: int | None = None) -> int:
    """Write ``entries`` ((key, bytes) pairs) into a new OCDBT database at ``part_dir``; return
    the bytes written.

    A transaction's values reach the disk only when it commits, so the entries go in
    transactions of about ``batch_bytes``, each committed in the background while the next
    one is filled: the pool is written while the entries are still being read. One commit
    at a time (a second one in flight would race the first for the database's manifest);
    memory held: about two batches. Its data files (up to ``data_file_bytes`` each; a
    commit starts new ones) are written in parallel and fsynced by TensorStore. Every
    commit is waited for before this returns or raises, so nothing writes into the part
    once the caller sees its outcome.
    ``committed()`` is called right after each batch's commit (but the last), on the commit's
    own thread, before the next commit can start: the data files then present are complete
    and never written again (OCDBT's data files are immutable; only its manifest changes),
    so the S3 tier starts uploading them at once, while the next batch is filled.
    ``first_batch_bytes``: a smaller first batch (the S3 tier's first upload then starts
    sooner; default ``batch_bytes``)."""
    import tensorstore as ts
    if os.path.exists(part_dir):
        shutil.rmtree(part_dir)
    os.makedirs(part_dir)
    spec = dict(layout.ocdbt_spec(part_dir), target_data_file_size=data_file_bytes)
    kv = ts.KvStore.open(spec).result()
    txn, pending, total = ts.Transaction(), 0, 0
    committing = None  # the previous batch's commit, being written
    limit = first_batch_bytes or batch_bytes  # the batch being filled ends at this size
    # With ``committed``, a batch commits on this one thread and reports there; the next
    # commit is submitted only once that future is done, so ``committed()`` never sees a
    # data file that a commit is still writing.
    committer = ThreadPoolExecutor(1, thread_name_prefix="tierpoint-commit") \
        if committed is not None else None

    def commit(batch):
        if committer is None:
            return batch.commit_async()

        def run():
            batch.commit_sync()
            committed()
        return committer.submit(run)
    try:
        for key, data in entries:
            kv.with_transaction(txn)[key] = data
            pending += len(data)
            total += len(data)
            if progress is not None:
                progress(len(data))
            if pending >= limit:
                if committing is not None:
                    committing.result()
                    committing = None
                committing, txn, pending = commit(txn), ts.Transaction(), 0
                limit = batch_bytes
        if committing is not None:
            committing.result()
        committing = None
        txn.commit_sync()
    finally:
        if committing is not None:  # the entries failed: let the write in flight end first
            try:
                committing.result()
            except Exception:  # noqa: BLE001 - the entries' failure is the one raised
                pass
        if committer is not None:
            committer.shutdown(wait=True)
    return total


def merge_parts(head_dir: str, parts: dict[str, str]) -> None:
    """Link every part (name -> directory) under the head and merge their keys into the head
    database (one transaction; entries keep pointing into the parts' data files)."""
    os.makedirs(head_dir, exist_ok=True)
    for name, part in parts.items():
        link = os.path.join(head_dir, name)
        if os.path.lexists(link):
            os.unlink(link)
        # Relative, between the real paths: the pools stay readable after being moved or
        # copied together (layout.py, capacity section).
        os.symlink(os.path.relpath(os.path.realpath(part), os.path.realpath(head_dir)), link)
    merge_databases(layout.ocdbt_spec(head_dir),
                    [layout.ocdbt_spec(os.path.join(head_dir, name)) for name in sorted(parts)])


def merge_databases(head: dict, children: list[dict]) -> None:
    """Merge the keys of the OCDBT databases ``children`` (kvstore specs, each's base under
    the base of ``head``) into ``head``, in one transaction, without copying a value: the
    head's entries point into the children's data files, by paths relative to its base."""
    import tensorstore as ts
    context = ts.Context()
    target = open_ocdbt(head, context)
    txn = ts.Transaction()
    for child in children:
        open_ocdbt(child, context).experimental_copy_range_to(
            target.with_transaction(txn)).result()
    txn.commit_sync()


def verify_capacity(head_dir: str, manifest: Manifest, share: tuple[int, int] = (0, 1), *,
                    full: bool = False, batch_bytes: int = DRAIN_BATCH_BYTES,
                    wanted: list | None = None, kv=None) -> int:
    """Check this caller's ``share`` (index, count) of a drained copy's keys through a fresh
    reader: every zarr.json (and manifest slice) must exist, and every chunk key must resolve
    to a value whose crc32c trailer (its last 4 bytes, at the recorded size; a sub-chunked
    file: its inner chunks' trailers, whose crc32c is the manifest's) is the
    manifest's. The bytes were checked against their crc32c when they were copied, so this
    proves the merged index points at the right data; ``full=True`` re-reads and
    re-checksums every byte instead. ``wanted``: the keys to check, [(name, path, key,
    ChunkRecord or None for a document)] (default: every zarr.json and chunk record of
    ``manifest``). ``kv``: the head's kvstore (default: the OCDBT database at ``head_dir``;
    ``head_dir`` then only names it in messages). Returns the chunks checked."""
    kv = kv if kv is not None else open_kv(head_dir)
    if wanted is None:
        wanted = [(a.name, a.path, layout.ZARR_JSON, None) for a in manifest.arrays.values()]
        wanted += [(a.name, a.path, key, rec) for a in manifest.arrays.values()
                   for key, rec in a.chunks.items()]
    mine = wanted[share[0]::share[1]]
    checked, start = 0, 0
    while start < len(mine):
        batch, size = [], 0
        while start < len(mine) and (not batch or size < batch_bytes):
            name, path, key, rec = mine[start]
            geometry = geometry_of(manifest.arrays[name]) if rec is not None else None
            if rec is None or full:
                futures = [kv.read(f"{path}/{key}")]
            elif geometry is None:
                futures = [kv.read(f"{path}/{key}",
                                   byte_range=slice(rec.nbytes - layout.CRC_BYTES, rec.nbytes))]
            else:  # a sub-chunked file: the trailer of each inner chunk (format/subchunks.py)
                futures = [kv.read(f"{path}/{key}", byte_range=slice(end - layout.CRC_BYTES, end))
                           for end in range(geometry.stride, geometry.index_offset + 1,
                                            geometry.stride)]
            batch.append((name, key, rec, futures))
            size += rec.nbytes if rec and full else layout.CRC_BYTES * len(futures)
            start += 1
        for name, key, rec, futures in batch:
            try:
                results = [future.result() for future in futures]
            except Exception as e:  # noqa: BLE001 - e.g. a range past the end of the value
                raise CorruptCheckpointError(
                    f"drain: array {name!r}: {key} in the capacity copy {head_dir} cannot be "
                    f"read as recorded: {e}") from None
            if any(result.state == "missing" for result in results):
                raise CorruptCheckpointError(
                    f"drain: array {name!r}: {key} is missing from the capacity copy {head_dir}")
            if rec is None:
                continue
            if full:
                try:
                    check_chunk(manifest.arrays[name], key, results[0].value,
                                f"{head_dir} key {key}")
                    ok = True
                except CorruptCheckpointError:
                    ok = False
            elif len(results) == 1:
                ok = int.from_bytes(results[0].value, "little") == rec.crc32c
            else:
                ok = crc_of_crcs(int.from_bytes(r.value, "little") for r in results) == rec.crc32c
            if not ok:
                raise CorruptCheckpointError(
                    f"drain: array {name!r} chunk {key} in the capacity copy {head_dir} fails "
                    "its crc32c check")
            checked += 1
    return checked


def drained_document(manifest, kind: str, parts: list[str]) -> dict:
    """The manifest document of a drained copy: the checkpoint's (a Manifest or its
    document), with ``tier`` naming the tier kind and the parts its head merged (for both
    capacity tiers, POSIX pools and S3)."""
    if isinstance(manifest, Manifest):
        manifest = manifest.to_document()
    return dict(manifest, tier={"kind": kind, "parts": list(parts)})


class CapacityTier:
    """The capacity tier on ``pools`` (POSIX directories; the head on pool 0)."""

    kind = "capacity"

    def __init__(self, pools: list[str]):
        if not pools:
            raise ValueError("a capacity tier needs at least one pool")
        self.pools = list(pools)
        self.root = self.pools[0]

    def __repr__(self) -> str:
        return f"CapacityTier({self.pools!r})"

    @classmethod
    def copy_at(cls, path: str, manifest: Manifest) -> CapacityCopy:
        """The drained copy whose head is ``path``: its parts are found through the head's
        links, so the other pools need not be known."""
        pool0 = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        return CapacityCopy(cls([pool0]), path, manifest)

    # ---- reading ----

    def steps(self, run: str) -> list[int]:
        return layout.committed_steps(self.pools[0], run)

    def runs(self) -> list[str]:
        """The runs with a directory on pool 0 (the heads' pool)."""
        return layout.list_runs(self.pools[0])

    def step_path(self, run: str, step: int) -> str:
        return layout.capacity_head(self.pools, run, step)

    def is_committed(self, run: str, step: int) -> bool:
        return layout.is_committed(self.step_path(run, step))

    def open(self, run: str, step: int, *, ranks=None) -> CapacityCopy:
        head = self.step_path(run, step)
        return CapacityCopy(self, head, layout.read_header(head)).with_slices(ranks)

    def check_index(self, run: str, step: int, manifest: Manifest,
                    share: tuple[int, int] = (0, 1), *, full: bool = False,
                    wanted: list | None = None) -> int:
        """``verify_capacity`` of the merged (not yet committed) head: every rank, its
        share (of ``wanted``, default every key of ``manifest``), before the coordinator
        commits."""
        return verify_capacity(self.step_path(run, step), manifest, share, full=full,
                               wanted=wanted)

    # ---- the pools themselves ----

    def check_pools(self) -> None:
        """A clear error for a pool that is missing or not writable."""
        for pool in self.pools:
            if not os.path.isdir(pool):
                raise CheckpointError(
                    f"capacity pool {pool} does not exist (or is not mounted); create it or "
                    "fix the persistent= paths")
            if not os.access(pool, os.W_OK | os.X_OK):
                raise CheckpointError(f"capacity pool {pool} is not writable")

    def pool_identities(self) -> list:
        """(device, inode) of each pool's directory, None where it is missing. A pool
        unmounted under a drain shows up as a change: writers recreate its path on the
        parent device."""
        out = []
        for pool in self.pools:
            try:
                st = os.stat(pool)
                out.append([st.st_dev, st.st_ino])
            except FileNotFoundError:
                out.append(None)
        return out

    def check_pools_unchanged(self, before: list) -> None:
        for pool, was, now in zip(self.pools, before, self.pool_identities()):
            if now != was:
                state = "is gone" if now is None else "is another directory now"
                raise CheckpointError(
                    f"capacity pool {pool} {state} (unmounted during the drain?); what was "
                    "written there is not trusted and nothing is committed. Remount the pool; "
                    "the next drain (or `tierpoint drain`) copies the step again")

    def audit_dir(self, run: str) -> str | None:
        """Where the run's audit log lives: pool 0 (api.py)."""
        return layout.run_dir(self.pools[0], run)

    def free_bytes(self) -> int:
        """Free bytes summed over the pools' distinct devices."""
        seen, total = set(), 0
        for pool in self.pools:
            st = os.statvfs(pool)
            dev = os.stat(pool).st_dev
            if dev not in seen:
                seen.add(dev)
                total += st.f_bavail * st.f_frsize
        return total

    # ---- writing ----

    def prepare(self, run: str, step: int) -> None:
        self.check_pools()
        self.remove_uncommitted(run, step)

    def write(self, run: str, step: int, writer: int, entries, *,
              pool_of: dict[str, int] | None = None, progress=None,
              batch_bytes: int = DRAIN_BATCH_BYTES) -> list[dict]:
        """Write ``entries`` as writer (aggregator) ``writer``'s parts, one per pool used,
        the pools concurrently: this thread routes each entry to its pool's writer thread
        through a bounded queue. ``pool_of`` (key -> pool) says where each key goes (the
        drain balances bytes over the pools, ``drain.assign_pools``); without it each entry
        goes to the pool that has received the fewest bytes so far. The writer paces itself
        by how fast it yields entries (the drain's throttle). ``progress(nbytes)`` is called
        as entries are written. Returns [{"name", "path", "bytes"}] per part, by pool."""
        npools = len(self.pools)
        queues: dict[int, queue.Queue] = {}
        threads: dict[int, threading.Thread] = {}
        results: dict = {}
        load = [0] * npools

        def stream(q):
            while True:
                entry = q.get()
                if entry is None:
                    return
                yield entry

        def part_writer(p):
            path = layout.capacity_part(self.pools, run, step, writer, p)
            try:
                results[p] = {"name": layout.capacity_part_name(writer, p), "path": path,
                              "bytes": write_part(path, stream(queues[p]), progress=progress,
                                                  batch_bytes=batch_bytes)}
            except BaseException as e:  # noqa: BLE001 - reported by the producer below
                results[p] = e
                while queues[p].get() is not None:  # keep the producer from blocking
                    pass

        def queue_of(p) -> queue.Queue:
            if p not in queues:
                queues[p] = queue.Queue(maxsize=4)
                threads[p] = threading.Thread(target=part_writer, args=(p,),
                                              name=f"tierpoint-part{p}")
                threads[p].start()
            return queues[p]
        try:
            for key, data in entries:
                if pool_of is not None:
                    p = pool_of.get(key, 0)
                else:
                    p = min(range(npools), key=lambda j: (load[j], j))
                load[p] += len(data)
                queue_of(p).put((key, data))
        finally:
            for p in queues:
                queues[p].put(None)
            for t in threads.values():
                t.join()
        for p in sorted(results):
            if isinstance(results[p], BaseException):
                raise results[p]
        return [results[p] for p in sorted(results)]

    def finish(self, run: str, step: int, written: list[dict]) -> None:
        """Merge every writer's parts into the head (the coordinator, after all writes)."""
        merge_parts(self.step_path(run, step), {p["name"]: p["path"] for p in written})

    def release(self, run: str, step: int) -> None:
        """The drain of ``step`` is over on this rank (verified, or failed): nothing is kept
        for it here (the S3 tier removes its staged parts)."""

    def commit(self, run: str, step: int, manifest, *, domain: int | None = None,
               rank: int = -1, audit: dict | None = None) -> str:
        """The drained copy's manifest (the checkpoint's, with ``tier`` naming this tier and
        the parts the head links) and then its marker. No absolute path is recorded: the
        head finds its parts through its links."""
        head = self.step_path(run, step)
        parts = sorted(n for n in os.listdir(head) if os.path.islink(os.path.join(head, n)))
        return commit_directory(head, step, drained_document(manifest, self.kind, parts),
                                fault_point="drain-commit", rank=rank, audit=audit)

    # ---- removing ----

    def _heads(self, run: str, step: int) -> list[str]:
        """The head of ``step`` and any retired heads of it (retires cut short)."""
        head = self.step_path(run, step)
        run_dir = os.path.dirname(head)
        prefix = os.path.basename(head) + layout.RETIRED_MARK
        try:
            names = os.listdir(run_dir)
        except FileNotFoundError:
            names = []
        return [head] + [os.path.join(run_dir, n) for n in sorted(names) if n.startswith(prefix)]

    def remove_uncommitted(self, run: str, step: int) -> None:
        """Remove an interrupted drain's or deletion's files of ``step`` (a head without
        marker, retired heads, all parts); a committed head and its parts are kept."""
        head = self.step_path(run, step)
        if layout.is_committed(head):
            return
        for path in self._heads(run, step):
            if os.path.lexists(path) and not layout.is_committed(path):
                shutil.rmtree(path, ignore_errors=True)
        for parts in layout.capacity_parts_dirs(self.pools, run, step):
            if os.path.lexists(parts) and not layout.is_committed(head):
                shutil.rmtree(parts, ignore_errors=True)
        if os.path.lexists(head) and not layout.is_committed(head):
            raise CheckpointError(f"could not remove the interrupted drain at {head}")

    def uncommitted_steps(self, run: str) -> list[int]:
        """Steps with files on the capacity tier but no committed head: interrupted drains,
        or deletions cut short after the marker went."""
        steps = set()
        for root in [layout.run_dir(self.pools[0], run)] + [
                os.path.join(layout.run_dir(p, run), layout.PARTS_DIR) for p in self.pools]:
            try:
                names = os.listdir(root)
            except FileNotFoundError:
                continue
            steps.update(s for s in (layout.parse_step_dir_name(n.split(layout.RETIRED_MARK)[0])
                                     for n in names) if s is not None)
        return sorted(s for s in steps if not self.is_committed(run, s))

    def sweep(self, run: str) -> list[int]:
        steps = self.uncommitted_steps(run)
        for step in steps:
            self.remove_uncommitted(run, step)
        return steps

    def retire(self, run: str, step: int, *, rank: int = -1) -> bool:
        """Delete a committed capacity checkpoint: the marker first (it stops being a
        checkpoint at once), then the head is renamed away (one concurrent retirer wins),
        then its files. Returns whether this call removed the head."""
        head = self.step_path(run, step)
        if os.path.isdir(head):
            layout.remove_commit_marker(head)  # tolerates a concurrent rename
        inject("capacity-retire", rank=rank, step=step)
        retired = layout.retire_step_dir(head) if os.path.lexists(head) else None
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
        for parts in layout.capacity_parts_dirs(self.pools, run, step):
            if not self.is_committed(run, step):
                shutil.rmtree(parts, ignore_errors=True)
        if retired is not None and os.path.lexists(retired):
            raise CheckpointError(f"could not remove the capacity copy {retired}")
        return retired is not None
