"""The background half of an async save: write the staged chunks, then commit, collectively.

``Checkpointer.save`` plans the save and copies the shards into staging memory (the
snapshot); a :class:`SaveJob` thread then runs the phases that touch storage:

    clear -> prepare -> write (every staged part, then each rank's manifest slice) -> seal
    (each leader its domain, the coordinator one root per domain) -> manifest (each
    directory's header) -> commit -> after-commit

Invariants:
- Each phase ends in an ``agree`` on the save channel it is handed, a duplicate of its
  communicator (MPI: a Dup'd communicator, with the library at MPI_THREAD_MULTIPLE; torch: a
  gloo group of tierpoint's own), so the job's collectives never interleave with the
  trainer's collectives nor with tierpoint's foreground ones.
- The foreground feeds staged batches through a queue as it copies them, so writing starts
  while the rest is still being copied. Batches are not barriers: each one's chunks join the
  writer threads' queue at once (a thread that finishes a chunk takes the next, whatever
  its batch); only a part's end (and the last batch) waits until every chunk written so far
  is written. For a state larger than the staging budget it waits,
  after each part but the last, until the job has written it (or given up on it): the
  part's memory is then reused for the next.
- A failure on any rank (a write error, a failed snapshot, a dead rank) becomes the same
  CheckpointError on every rank; nothing is committed then, earlier checkpoints are intact.
- No rank but the coordinator receives O(ranks) bytes, and none sends more than O(1) at the
  commit: each rank writes its chunk records into its own slice; each domain's leader seals
  its domain from the slices in its directory, and the coordinator handles one value per
  domain (save/records.py).
"""
from __future__ import annotations

import functools
import queue
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..format import layout, slices
from ..errors import CheckpointError, CheckpointWarning, TierFullError
from ..runtime.costs import PhaseCosts
from ..runtime.faults import inject
from ..runtime.phases import PhaseRunner
from ..tiers.local import LocalTier
from .records import (header_of_save, proven_slices, seal_domain, seal_replies, slice_of_save,
                      summary_of_slice)
from .write import ChunkWrite, RankWriter, settle

_LAST = object()  # the foreground has fed everything
_PART_END = object()  # the foreground waits until everything fed so far is written


@dataclass(frozen=True)
class ManifestInputs:
    """Everything a save's header records besides the slices and the digest: fixed before
    the job starts (``Checkpointer.save`` builds it from the declare phase and the plan);
    ``records.header_of_save`` adds the rest."""

    run: str
    step: int
    header: dict | None   # leaders: the header's static part (arrays, groups) of the plan
    replicated: frozenset  # the arrays declared replicated (the replica check's scope)
    values: dict          # rank 0's JSON values: name -> {"key", "value"} (rank 0 only)
    metadata: dict | None  # the trainer's metadata, as frozen at the call
    ordinal: int          # the save's 1-based number in its run (drain_every counts it)
    ranks: tuple          # the manifest's ``layout.ranks`` records (Topology.rank_records)
    parent: dict | None   # the checkpoint this run was restored from (lineage)
    code_version: str | None
    user: str
    # Where an imported checkpoint's values came from (hf/load.py: path, format, each source
    # file's SHA-256); None for a training save. Recorded only when set (lineage["source"]).
    source: dict | None = None


class SaveJob:
    """Writes and commits one save in a background thread; see the module docstring.

    Constructed by ``Checkpointer.save`` with what the job uses and nothing else:
    ``topology`` (this rank, its domain's leader), ``channel`` (the save channel, a duplicate
    of the trainer's communicator), ``options`` (sync, small files, timeout, if_full),
    ``directory`` (this rank's step directory), ``names``/``docs`` (the arrays and this
    rank's zarr.json documents), ``inputs`` (the manifest's fixed part), ``tiering`` (what
    follows the commit: owed drains, the leftover sweep, the local ring), ``audit`` (the run's
    audit log, ``event(...)``), ``writers`` (the writer thread pool), ``local`` (the node-local tier, its
    leader checks the device has room for ``needed_bytes``), ``retention_reasons`` (step ->
    why, for the audit record of a step the ring deletes for a reason the trainer was told),
    ``started`` (when save() was called, for the stats) and ``planning`` (the seconds of the
    declare and plan phases that ran before it).
    """

    def __init__(self, *, topology, channel, options, directory: str, names: list[str],
                 docs: list, inputs: ManifestInputs, tiering, audit,
                 writers: ThreadPoolExecutor, local: LocalTier, started: float,
                 needed_bytes: int = 0, retention_reasons: dict | None = None,
                 planning: dict | None = None, drain_due: bool = False):
        self.step, self.directory = inputs.step, directory
        self.topology, self.channel, self.options = topology, channel, options
        self.inputs, self.tiering, self.audit = inputs, tiering, audit
        self.writers, self.local = writers, local
        self.needed_bytes = needed_bytes  # what this directory's ranks write (its leader)
        self.retention_reasons = retention_reasons or {}
        # Whether the policy drains this save once committed (its count or rank 0's clock:
        # the save's decision, the same on every rank).
        self.drain_due = drain_due
        self.names, self.docs = names, docs
        self.error: CheckpointError | None = None
        self.reported = False  # set once the error was raised to the caller
        # The foreground's declare (and, when the layout changed, plan) phases come first.
        self.stats: dict = {"phases": dict(planning or {})}
        # What the data path cost, per phase (runtime/costs.py): the snapshot's copies (the
        # foreground adds them), the writer threads' checksums, hashes, writes and syncs.
        self.costs = PhaseCosts()
        self._started = started
        self._parts: queue.Queue = queue.Queue()
        self._part_written = threading.Semaphore(0)
        self._local_error: BaseException | None = None
        self._finished = threading.Event()  # the thread has nothing left to do
        self._settled = threading.Event()  # committed, or failed: the caller may go on
        self.replicated: threading.Event | None = None  # its partner replication is over
        self._replication_known = threading.Event()  # ``replicated`` is set, or never will be
        self._thread = threading.Thread(target=self._run, name=f"tierpoint-save-{self.step}",
                                        daemon=True)

    # ---- foreground side -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def run_here(self) -> None:
        """Run the job in the calling thread (a blocking save: its parts are all submitted
        already), e.g. where MPI allows calls from the main thread only."""
        self._run()

    def feed(self, staged: list) -> None:
        """Hand over a batch of staged boxes [(unit, bits)]; the job starts writing it."""
        self._parts.put(staged)

    def end_part(self, *, last: bool) -> None:
        """The batches of a staging part are all fed. Unless it is the last part, wait until
        they are written (the part's memory is reused next)."""
        if last:
            self._parts.put(_LAST)
        else:
            self._parts.put(_PART_END)
            self._part_written.acquire()

    def abandon(self, error: BaseException) -> None:
        """The snapshot failed on this rank: the job reports it to every rank and commits
        nothing (the foreground then returns normally; the error surfaces at wait())."""
        self._parts.put(error)
        self._parts.put(_LAST)

    @property
    def failed_locally(self) -> bool:
        return self._local_error is not None

    def done(self) -> bool:
        """Committed or failed (the tier policy may still be applied after a commit)."""
        return self._settled.is_set()

    def finished(self) -> bool:
        """Nothing left to run: the save channel is free for the next save."""
        return self._finished.is_set()

    @property
    def only_warns(self) -> bool:
        """A failure the caller is warned of, not raised: a full tier with if_full="warn"."""
        return isinstance(self.error, TierFullError) and self.options.if_full == "warn"

    def report(self) -> None:
        """Give the failure to the caller: raise it (every time asked), or warn once."""
        if self.only_warns:
            if not self.reported:
                warnings.warn(f"tierpoint: rank {self.topology.rank}: {self.error}; training "
                              "goes on (if_full='warn')",
                              CheckpointWarning, stacklevel=3)
            self.reported = True
            return
        self.reported = True
        raise self.error

    def wait_settled(self) -> None:
        self._settled.wait()

    @property
    def replicas(self) -> bool:
        """Whether this save is replicated to partner nodes (Policy replicas=1, >1 node)."""
        return self.tiering.replicating

    def wait_replicated(self) -> None:
        """Until the step's partner replication is over (it starts right after the commit,
        once the previous one ended), or the job ended without starting it."""
        self._replication_known.wait()
        if self.replicated is not None:
            self.replicated.wait()

    def join(self) -> None:
        if self._thread.ident is not None:  # started as a thread (not run_here)
            self._thread.join()
        self._finished.wait()

    # ---- background side -------------------------------------------------------------------

    def _take_parts(self, writer: RankWriter | None) -> list:
        """Write every batch the foreground feeds, until the last: each batch's chunks are
        handed to the writer threads as it comes (no batch waits for the one before), and
        at a part's end and at the last batch every chunk handed over so far is waited
        for. A failure is kept (and reported at the write phase's agree) but batches are
        still taken and part ends acknowledged, so the foreground never waits for a part
        nobody will write; a part end is acknowledged only once none of its chunks is being
        written any more (its memory is reused then)."""
        records: list = []
        pending: list = []
        while True:
            batch = self._parts.get()
            if batch is _LAST or batch is _PART_END:
                records += self._settle(pending)
                pending = []
                if batch is _LAST:
                    return records
                self._part_written.release()
            elif isinstance(batch, BaseException):
                self._local_error = self._local_error or batch
            elif writer is not None and self._local_error is None:
                try:
                    pending += writer.submit([
                        ChunkWrite(unit.plan, chunk, bits, unit.box)
                        for unit, bits in batch for chunk in unit.chunks])
                except Exception as e:  # noqa: BLE001 - reported to every rank below
                    self._local_error = e

    def _settle(self, pending: list) -> list:
        """The records of the chunk writes ``pending``, once none runs any more; a failure
        among them is kept as this rank's error (and no records are returned then)."""
        try:
            return settle(pending)
        except Exception as e:  # noqa: BLE001 - reported to every rank at the write phase
            self._local_error = self._local_error or e
            return []

    def _run(self) -> None:
        try:
            self.audit.event("saved", self.step)
            self._run_phases()
            if self.error is not None:
                self.audit.event("failed", self.step, detail=str(self.error))
        finally:
            self._settled.set()
            self._replication_known.set()
            self._finished.set()

    def _run_phases(self) -> None:
        run, options = self.inputs.run, self.options
        phases = PhaseRunner(self.channel, f"save of step {self.step} (run {run!r})",
                             options.timeout)
        leader = self.topology.is_leader
        writer = None
        try:
            # Leaders clear what is at that step (an interrupted save's leftovers, or the
            # checkpoint being overwritten, retired atomically), then lay out the groups. Two
            # phases: leaders sharing one directory must not remove each other's new files.
            phases.run("clear", lambda: leader and self.local.retire(run, self.step,
                                                                      rank=self.topology.rank),
                       collect="root")
            attributes = {"tierpoint": {"run": run, "step": self.step,
                                        "format_version": layout.FORMAT_VERSION}}
            def prepare():
                # Each rank lays out the groups of the arrays whose zarr.json it writes (the
                # plan shares the documents out; group documents are written atomically, so
                # ranks laying out one group agree byte for byte).
                if leader:
                    check_room(self.local, self.needed_bytes, self.step)
                self.local.write_group_metadata(run, self.step, self.names, attributes)
            phases.run("prepare", prepare, collect="root")
            files = self.local.writer(run, self.step, self.topology.rank, sync=options.sync,
                                      small_file_bytes=options.small_file_bytes,
                                      direct=self._direct_io(options), costs=self.costs)
            writer = RankWriter(files, self.topology.rank, self.writers, self.costs)
        except CheckpointError as e:
            self.error = e
        t = time.perf_counter()
        records = self._take_parts(writer)
        self.stats["writing_seconds"] = time.perf_counter() - t  # includes waiting for batches
        if self.error is None:
            try:
                self._write_and_commit(phases, writer, records)
            except CheckpointError as e:
                self.error = e
            except Exception as e:  # noqa: BLE001 - never lose a background failure
                self.error = CheckpointError(f"{phases.what}: {type(e).__name__}: {e}")
        if writer is not None:
            writer.close()
        self.stats["phases"] = {**self.stats.get("phases", {}), **phases.seconds}
        self.stats["costs"] = self.costs.as_dict()
        if self.error is not None and leader:
            # Nothing is committed: give the space back now (a full tier needs it for the
            # next save), rather than at the next commit's cleanup.
            try:
                self.local.retire(run, self.step, rank=self.topology.rank)
            except (OSError, CheckpointError):
                pass  # removed after the next commit, or by `tierpoint gc`

    def _direct_io(self, options) -> bool:
        """Whether this save's big chunk files bypass the page cache (Options.direct_io):
        not when the policy drains the save right after its commit, since the drain then
        reads them back at once, from memory instead of the device."""
        return options.direct_io == "auto" and not (self.drain_due and self.tiering.pools)

    def _summary_of(self, rank: int) -> dict:
        """A leader's summary of the slice rank ``rank`` of its domain wrote (read back from
        the directory, so the header records the bytes that are there)."""
        data = self.local.read_written_slice(self.inputs.run, self.step, rank)
        if data is None:
            raise CheckpointError(f"the manifest slice of rank {rank} is missing from "
                                  f"{self.directory} after that rank wrote it; is the "
                                  "directory shared by that rank's node only?")
        document = slices.parse_written(data, rank)
        entry = slices.entry_of(data, document, {n: n for n in document["arrays"]})
        return summary_of_slice(entry, self.inputs.replicated, rank, document)

    def _write_and_commit(self, phases: PhaseRunner, writer: RankWriter, records: list) -> None:
        topo, directory = self.topology, self.directory
        leader, rank = topo.is_leader, topo.rank
        run = self.inputs.run

        def write():
            """This rank's chunk files and zarr.json documents made durable, then its slice
            (its chunk records, format/slices.py) in its domain's directory."""
            if self._local_error is not None:
                raise self._local_error
            writer.documents(self.docs)
            writer.finish()
            self.local.sync_group_dirs(run, self.step, self.names)
            self.local.write_slice(run, self.step, slice_of_save(run, self.step, rank, records))
        phases.run("write", write, collect="root")

        # The seal (save/records.py): each leader reads its domain's slices (every rank's is
        # in the directory now) and seals its domain's subtree; the coordinator checks the
        # replicas, combines one root per domain into the digest and hands every rank its
        # domain's proof in the top tree, the digest and the save's bytes (PhaseRunner.lead:
        # one value per domain up, one reply per domain down).
        domain_entries: dict = {}

        def seal_here():
            if not leader:
                return None
            ranks = topo.domain_ranks()
            value, entries = seal_domain(ranks, {r: self._summary_of(r) for r in ranks})
            domain_entries.update(entries)
            return value

        sealed = phases.lead("seal", seal_here, functools.partial(
            seal_replies, rank0_values=self.inputs.values,
            audit_reference=functools.partial(self.audit.reference, self.step)))
        digest = sealed["digest"]
        manifest_sha256 = None

        def write_manifest():
            nonlocal manifest_sha256
            inject("manifest", rank=rank, step=self.step)
            if leader:
                header = header_of_save(self.inputs, digest,
                                        proven_slices(domain_entries, sealed["top"]),
                                        sealed["values"])
                manifest_sha256 = self.local.write_manifest(run, self.step, header)
        phases.run("manifest", write_manifest, collect="root")

        def commit():
            inject("commit", rank=rank, step=self.step)
            return leader and self.local.write_marker(run, self.step, manifest_sha256,
                                                      digest, domain=topo.domain,
                                                      audit=sealed.get("audit"))
        try:
            phases.run("commit", commit, collect="root")
        except CheckpointError:
            # Some leaders may have written their marker before another failed: take the
            # step back everywhere, so no directory holds a commit the others lack.
            if leader:
                try:
                    self.local.retire(self.inputs.run, self.step, rank=rank)
                except (OSError, CheckpointError) as e:
                    warnings.warn(f"tierpoint: rank {rank}: could not take back the partly "
                                  f"committed step {self.step} in {directory}: {e}; remove "
                                  "it by hand",
                                  CheckpointWarning, stacklevel=2)
            raise
        self.stats.update(seconds=time.perf_counter() - self._started, bytes=sealed["bytes"])
        self.stats["phases"] = {**self.stats.get("phases", {}), **phases.seconds}
        self.stats["costs"] = self.costs.as_dict()
        self.audit.event("committed", self.step, digest,
                         {"world_size": topo.world_size, "bytes": self.stats["bytes"]})
        # Committed: handle.wait() returns now; the tier policy is applied meanwhile, before
        # the next save starts, on the save channel: the step's partner replication to start
        # (Policy replicas=1, in its own thread), a drain owed to start, then what
        # interrupted work left (this job is the run's one writer now), then the local ring.
        self._settled.set()
        t = time.perf_counter()
        try:
            try:
                self.replicated = self.tiering.start_replication(self.step, self.channel)
            finally:
                self._replication_known.set()
            self.tiering.start_owed_drains(self.step, self.drain_due, self.channel)
            self.tiering.sweep_leftovers(self.channel)
            self.tiering.apply_local_retention(self.channel, reasons=self.retention_reasons)
        except CheckpointError as e:  # the save is committed; the tier policy can wait
            warnings.warn(f"tierpoint: rank {rank}: after committing step {self.step}: {e}",
                          CheckpointWarning, stacklevel=2)
        self.stats["after_commit_seconds"] = time.perf_counter() - t


class SaveHandle:
    """The result of ``save``: the save is written and committed in the background.

    ``wait()`` returns the step once it is committed on every rank, or raises the save's
    CheckpointError (the same on every rank); ``done()`` says whether it has finished.
    ``wait()`` returns at the commit (with ``Policy(replicas=1)``: once the step's partner
    replica is committed too, or its failure kept as a warning; ``wait(replica=False)``: at
    the commit); the tier policy that
    follows (starting a drain, pruning the local ring) is applied in the background before
    the next save starts.
    ``skipped`` is True when the save did not happen (``if_busy="skip"`` while the previous
    save was still being written); ``wait()`` then returns None. ``stats`` has the ``mode``
    that ran ("background", or "blocking" with its ``blocking_reason``: "blocking=True", or
    "MPI below MPI_THREAD_MULTIPLE"), the seconds ``save()`` blocked (``blocking_seconds``,
    of which ``snapshot_seconds`` copying), the staged bytes and parts, and once committed the
    total ``seconds``, ``bytes`` written, the seconds of each phase and ``costs``: per step of
    the data path ("copy", "crc32c", "hash", "fingerprint", "write", "writeback" or
    "fsync", "sync"), its CPU and busy seconds, bytes and calls (runtime/costs.py).
    """

    def __init__(self, step: int, job: SaveJob | None = None, *, skipped: bool = False,
                 stats: dict | None = None):
        self.step, self.skipped = step, skipped
        self._job = job
        self._stats = stats or {}

    @property
    def stats(self) -> dict:
        return {**self._stats, **(self._job.stats if self._job else {})}

    def done(self) -> bool:
        return self._job is None or self._job.done()

    def wait(self, *, replica: bool = True) -> int | None:
        """The step once committed (None: skipped, or failed with only a warning); with
        partner replicas and ``replica`` (the default), once its replica is committed too
        (or its failure kept as a warning); ``replica=False``: at the commit."""
        if self._job is None:
            return None if self.skipped else self.step
        self._job.wait_settled()
        if self._job.error is not None:
            self._job.report()  # raises, or warns (a full tier with if_full="warn")
            return None
        if replica and self._job.replicas:  # acknowledged once the partner holds a copy
            self._job.wait_replicated()
        return self.step


def check_room(local: LocalTier, needed: int, step: int) -> None:
    """Fail early, before writing, when the tier's device cannot hold the save."""
    if needed <= 0:
        return
    free = local.free_bytes()
    if needed > free:
        raise TierFullError(
            f"the local tier {local.root} has {free} bytes free, but the save of step {step} "
            f"needs {needed} bytes there; free space on that device (or lower keep_local, "
            "or give the tier a bigger device). Nothing was written; earlier checkpoints "
            "are intact")
