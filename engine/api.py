"""``Checkpointer``: the one object a trainer uses. It owns the lifecycle and the sequencing
of a save, a restore and a drain, and drives objects it constructs with explicit values:

- ``save`` runs the foreground of a save (declare -> plan -> snapshot into staging memory)
  and hands the rest to a background ``save.job.SaveJob``, given the topology, the save
  channel, the options, a ``ManifestInputs`` value and the ``Tiering`` (what follows a
  commit);
- ``tiers.ops.Tiering`` drains (foreground: ``drain``; background: its own thread and channel)
  and applies the local ring;
- ``restore`` runs ``restore.execute.restore_state`` (given the topology, the channel, the
  tiers and the options), then records the audit event and the lineage parent.

The tiers (``tiers.local.LocalTier`` for this rank's node-local root, and the capacity tier
that ``tiers.registry.capacity_tier`` finds for ``persistent=``, if any: POSIX pools or an
s3:// URL) are constructed once and handed to what uses them.

Nothing it drives gets the Checkpointer or a callback into it (tests/test_architecture.py).
Each collective phase ends in an ``agree``, so that a failure on any rank is raised as the
same CheckpointError on every rank and nothing is committed.

Every public method except ``steps``, ``handle_preemption`` and ``preempted`` is collective
(``close`` only with a capacity tier and ``drain_newest=True``): all ranks of the communicator
call it, in the same order, with the same step.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import signal
import socket
import sys
import threading
import time
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor

from .runtime import comm as comm_mod
from .format import layout
from .trust.audit import RunAudit, read_key
from .trust.logs import open_log
from .runtime.comm import describe_error
from .errors import CheckpointError, CheckpointWarning, ConfigurationError, error_class
from .runtime.faults import inject
from .trust.lineage import code_version, user_name
from .options import Options, Policy, expand_root, node_name
from .runtime.phases import PhaseRunner
from .runtime.topology import Topology
from .save.coordinate import Coordinator, decide_save, header_of
from .save.declare import declare
from .runtime.preempt import PreemptionFlag
from .runtime.clock import SaveClock, agree_due, check_step
from .restore.execute import restore_state
from .tiers import registry
from .tiers.local import LocalTier
from .save.job import ManifestInputs, SaveHandle, SaveJob
from .save.staging import StagingArena, plan_staging, snapshot, source_views
from .state import ArrayLeaf, check_json, flatten
from .tiers.ops import Tiering

# Why a save ran in the caller's thread (``SaveHandle.stats["mode"]`` is "blocking" then).
BLOCKING_ASKED = "blocking=True"
BLOCKING_NO_THREADS = "MPI below MPI_THREAD_MULTIPLE"


def _check_arguments(local, run, policy, aggregators) -> None:
    """Checkpointer's own arguments (Options checks the settings): ConfigurationError, a
    ValueError too, naming the argument and what it may be."""
    if not isinstance(local, (str, os.PathLike)) or not os.fspath(local):
        raise ConfigurationError(
            f"Checkpointer local= must be the node-local tier's root directory (a non-empty "
            f"path, '{{node}}' is replaced by the node name), not {local!r}")
    if not isinstance(run, str) or not run:
        raise ConfigurationError(f"Checkpointer run= must be a non-empty string naming the "
                                 f"run, not {run!r}")
    if policy is not None and not isinstance(policy, Policy):
        raise ConfigurationError(f"Checkpointer policy= must be a tierpoint.Policy or None, "
                                 f"not {type(policy).__name__}")
    if aggregators is not None and (isinstance(aggregators, bool) or
                                    not isinstance(aggregators, int) or aggregators < 1):
        raise ConfigurationError(f"Checkpointer aggregators= must be an integer >= 1, or None "
                                 f"for one per node, not {aggregators!r}")


class Checkpointer:
    """Sharded checkpoints of a run under a node-local tier root.

    ``local``: the node-local tier root; ``{node}`` in it is replaced by the node name
    (hostname, or ``TIERPOINT_NODE``). ``persistent`` and ``policy`` configure the capacity
    tier (tiering release). ``comm``: None picks MPI COMM_WORLD when mpi4py is in use, else
    the default torch.distributed group when initialised, else a single process; an mpi4py
    communicator or a torch ProcessGroup may be passed.

    Keyword settings (defaults in ``options.Options``, environment overrides there):
    ``io_threads`` per rank (4), ``chunk_bytes`` the largest chunk the planner makes where
    shard boundaries allow (32 MiB), ``timeout`` of a collective in seconds (1800),
    ``sync`` how files are made durable before the commit ("syncfs" or "fsync"),
    ``direct_io`` whether big chunk files bypass the page cache ("auto", the default, where
    the filesystem allows it, or "off"),
    ``drain_rate`` the bandwidth cap of background drains (bytes/s per aggregator),
    ``aggregators`` how many node leaders write the capacity parts (default: one per node),
    ``staging_bytes`` the host memory budget of a save's snapshot per rank (default: what
    the rank writes), ``if_busy`` what a save does while the previous one is still being
    written ("wait", the default, or "skip" with a warning), ``if_full`` what a save that
    finds the local tier full does ("raise", the default, or "warn" and let training go
    on), ``audit_key_file`` a file
    whose bytes key the HMAC of the audit log's records (or ``TIERPOINT_AUDIT_KEY_FILE``).
    """

    def __init__(self, local, persistent=None, run: str = "default", policy: Policy | None = None,
                 comm=None, *, io_threads: int | None = None, chunk_bytes: int | None = None,
                 timeout: float | None = None, sync: str | None = None,
                 direct_io: str | None = None, drain_rate: float | None = None, aggregators: int | None = None,
                 staging_bytes: int | None = None, if_busy: str | None = None,
                 if_full: str | None = None, audit_key_file: str | None = None):
        _check_arguments(local, run, policy, aggregators)
        self.run = run
        self.policy = policy or Policy()
        self.options = Options.from_env(io_threads=io_threads, chunk_bytes=chunk_bytes,
                                        timeout=timeout, sync=sync, direct_io=direct_io,
                                        drain_rate=drain_rate,
                                        staging_bytes=staging_bytes, if_busy=if_busy,
                                        if_full=if_full, audit_key_file=audit_key_file or None)
        self._comm = comm_mod.resolve(comm)
        # Point-to-point waits (peer restore, drains, replicas) end with an error naming the
        # partner after the timeout every collective phase already has; duplicates inherit it.
        self._comm.point_timeout = self.options.timeout
        self.rank, self.world_size = self._comm.rank, self._comm.size
        self.node = node_name()
        self.local_root = expand_root(local, self.node)
        me = {"rank": self.rank, "node": self.node, "host": socket.gethostname(),
              "pid": os.getpid(), "tier_dir": self.local_root}
        # The job's ranks, domains (node-local directories), their leaders and the drain's
        # aggregators, computed once from every rank's startup record.
        self.topology = Topology.from_startup(
            self.rank, self._comm.agree(None, what="tierpoint startup", value=me,
                                        timeout=self.options.timeout), aggregators)
        # From here on, collectives relay through the domains' leaders (runtime/comm.py):
        # the coordinator handles one message per domain, not one per rank.
        self._comm.set_domains(self.topology.domains)
        # Lineage: the training program's code version (rank 0 asks git, once) and the
        # checkpoint this run was restored from (set by restore()).
        self.code_version = self._comm.bcast_json(
            code_version() if self.rank == 0 else None, what="tierpoint startup",
            timeout=self.options.timeout)
        self.user = user_name()
        self.parent: dict | None = None
        # This rank's last restore: step, the copy read, and for a restore from peers where
        # its chunks came from (restore/peerread.py); None before any restore.
        self.last_restore: dict | None = None
        # Set by an import (hf/load.py): where the values came from (path, format, each source
        # file's SHA-256); later saves record it as lineage["source"].
        self.source: dict | None = None
        # The capacity tier (POSIX pools, or an object store staging its parts on this node's
        # local tier), found by the registry from what persistent= says.
        self._capacity = registry.capacity_tier(
            persistent, staging=os.path.join(self.local_root, layout.STAGING_DIR))
        self._pools = pools = list(self._capacity.pools) if self._capacity else []
        # The run's audit log (rank 0 appends): on the capacity tier when it keeps one.
        key = read_key(self.options.audit_key_file)
        local_log = layout.run_dir(self.local_root, run)
        capacity_log = self._capacity.audit_dir(run) if self._capacity else None
        self._audit = RunAudit(open_log(capacity_log or local_log, key, user_name(),
                                        fallback=local_log)
                               if self.rank == 0 else None, run, self.rank)
        # Background collectives need MPI_THREAD_MULTIPLE; below it, saves and drains run in
        # the caller's thread (correct, but training waits for them; a save's stats say so).
        self._threads_ok = self._comm.threads_ok()
        # Drains and the local ring; background drains run on a channel of their own, one at
        # a time.
        self._drain_comm = self._comm.duplicate() if pools else None
        # Partner replicas (Policy replicas=1) travel on a channel of their own too.
        self._replica_comm = self._comm.duplicate() if self.policy.replicas else None
        self._local = LocalTier(self.local_root)
        self._tiering = Tiering(topology=self.topology, channel=self._comm,
                                drain_channel=self._drain_comm,
                                options=self.options, policy=self.policy, run=run,
                                local=self._local, capacity=self._capacity, audit=self._audit,
                                background=self._threads_ok,
                                replica_channel=self._replica_comm)
        if self.policy.replicas and not self._tiering.replicating:
            warnings.warn(f"tierpoint: rank {self.rank}: Policy(replicas=1) asks for a replica "
                          f"of each node's checkpoint on another node, but every rank of this "
                          f"job runs on node {self.node!r}: no replicas are kept (losing this "
                          "node loses its local checkpoints; the capacity tier's copies "
                          "remain)", CheckpointWarning, stacklevel=2)
        # Async saves: the snapshot goes into a reused arena; the job writing the previous
        # save commits on a channel of its own; one job at a time.
        self._save_comm = self._comm.duplicate()
        # The writer starts on copied batches while the snapshot copies the rest only when
        # there is a core per rank to spare: otherwise the writer's threads slow the copy the
        # trainer waits for (measured on a 2-core VM with 2 ranks: 1.7x the memcpy time with
        # the overlap against 0.8-1.1x without, for a total to commit within noise).
        self._overlap = len(os.sched_getaffinity(0)) >= 2 * self.topology.ranks_on_node()
        if not self._threads_ok:
            warnings.warn(f"tierpoint: rank {self.rank}: MPI was initialised below "
                          "MPI_THREAD_MULTIPLE, so saves and drains run in the caller's "
                          "thread (training waits for them; a save's handle.stats['mode'] "
                          "says 'blocking'); let mpi4py initialise MPI with its default thread "
                          "level 'multiple'", CheckpointWarning, stacklevel=2)
        self._arena = StagingArena()
        self._job: SaveJob | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._copier: ThreadPoolExecutor | None = None
        self._coordinator = Coordinator(self._comm, rank=self.rank,
                                        domains=self.topology.domains,
                                        chunk_bytes=self.options.chunk_bytes)
        self._preemption = PreemptionFlag()
        self._clock = SaveClock(self.policy)  # rank 0's decides (runtime/clock.py)
        self._closed = False
        # The one reference to itself it gives away: a weak one, to the interpreter's exit
        # hook (this module's own function), so that a save still being written commits.
        _run_at_exit(functools.partial(_finish_save_at_exit, weakref.ref(self)))

    @property
    def pools(self) -> list[str]:
        """The capacity tier's pool roots ([] without one); fixed at construction (close's
        drains are chosen by ``close(drain_newest=...)``, not by changing this)."""
        return list(self._pools)

    @property
    def last_drain_error(self) -> CheckpointError | None:
        """The last drain failure (each one was also a warning), or None."""
        return self._tiering.last_drain_error

    # ---- introspection ---------------------------------------------------------------------

    def step_dir(self, step: int) -> str:
        return self._local.step_path(self.run, step)

    def steps(self, *, replicas: bool = True) -> list[int]:
        """Committed steps in this rank's local tier directory (not collective): its own,
        and (``replicas``, the default) those of which it holds a committed partner replica
        (Policy replicas=1: a copy of another node's directory of that step, sent here; a
        replacement node may hold only replicas). ``replicas=False``: its own steps alone.
        Waits for the save being written, so a step saved just before is listed once
        committed (its replica may still be on its way: ``wait()`` waits for it)."""
        self._join_save()
        own = self._tiering.local_steps()
        return sorted(set(own) | set(self._local.replica_steps(self.run))) if replicas else own

    def capacity_steps(self) -> list[int]:
        """Committed steps on the capacity tier (not collective)."""
        return self._tiering.capacity_steps()

    # ---- save ------------------------------------------------------------------------------

    def save(self, step: int, state, metadata: dict | None = None, *,
             overwrite: bool = False, blocking: bool = False,
             if_older: str = "raise") -> SaveHandle:
        """Save ``state`` as checkpoint ``step``; returns once it is copied to host memory.

        The trainer may change its tensors as soon as this returns: the checkpoint holds the
        values at the call. Writing and the commit run in the background; ``wait()`` on the
        returned handle waits for the commit. A failure there is raised, the same on every
        rank, by ``handle.wait()``, else by the next ``save()``, ``wait()`` or ``close()``;
        nothing is committed then and earlier checkpoints are untouched. A save while the
        previous one is still being written first waits for it (``if_busy="wait"``) or is
        skipped with a warning (``if_busy="skip"``).

        ``overwrite=True`` replaces a committed checkpoint of the same step (the old one is
        retired atomically first). ``blocking=True`` writes straight from the tensors (no
        staging copy, no staging memory) and returns once committed, raising a failure
        directly: for the last save of a job, or when host memory is short. Below
        MPI_THREAD_MULTIPLE every save runs so (the constructor warns once); the handle's
        ``stats["mode"]`` says which ran ("background" or "blocking") and
        ``stats["blocking_reason"]`` why ("blocking=True", or "MPI below
        MPI_THREAD_MULTIPLE").

        ``if_older``: what a save does whose step the local ring would delete as soon as it is
        committed, because ``keep_local`` newer steps are on every local directory (and it is
        not due for drain, which would keep it until drained): ``"raise"`` (the default) an
        ``OlderStepError`` on every rank before anything is written; ``"warn"``: save it
        anyway (a restart that resumed from an older step and saves the later ones again),
        with a CheckpointWarning, and the audit log's "deleted" record says why.
        """
        if if_older not in ("raise", "warn"):
            raise ConfigurationError(f"save: if_older must be 'raise' or 'warn', not "
                                     f"{if_older!r}")
        self._check_open()
        started = time.perf_counter()
        if self.options.if_busy == "wait":
            self._join_save()
        self._tiering.give_deferred_warnings()
        previous = self._job
        phases = PhaseRunner(self._comm, f"save of step {step} (run {self.run!r})",
                             self.options.timeout)
        directory = self.step_dir(step)
        arrays: list[ArrayLeaf] = []
        frozen_metadata = None

        # 1. Declare and plan (save/coordinate.py): ranks send digests of their declarations;
        #    the coordinator confirms its cached plan (the steady state) or plans the job and
        #    hands each rank its part. Raising the previous save's error here raises it on
        #    every rank.
        def declaration():
            leaves, values = flatten(state)
            arrays.extend(leaves)
            value_leaves.extend(values)
            return declare(leaves)

        def flags():
            nonlocal frozen_metadata
            if previous is not None and not previous.finished():
                return {"busy": previous.step}
            if previous is not None and previous.error is not None and not previous.reported:
                if previous.only_warns:  # the same on every rank: all warn and go on
                    previous.report()
                else:
                    return {"unreported": describe_error(previous.error)}
            check_json(metadata, ("metadata",))
            frozen_metadata = json.loads(json.dumps(metadata))  # the trainer may change it
            out = {"exists": layout.is_committed(directory)}
            if self.topology.is_leader:  # what the ring will keep (see if_older)
                out["local"] = self._tiering.local_steps()
            if self.rank == 0:
                out["on_capacity"] = self._tiering.capacity_holds(step)
                out["ordinal"] = 1 + max(layout.latest_ordinal(self.local_root, self.run),
                                         self._tiering.capacity_ordinal())
                out["drain_clock"] = bool(self._pools) and self._clock.drain_due(
                    self._tiering.newest_capacity_time)
            return out
        value_leaves: list = []
        seconds: dict = {}
        agreed = self._coordinator.agree(
            flags, declaration,
            functools.partial(decide_save, step=step, overwrite=overwrite, if_older=if_older,
                              what=phases.what,
                              tier_dirs=[i.tier_dir for i in self.topology.ranks],
                              pools=self._pools, policy=self.policy),
            header_of, what=phases.what, timeout=self.options.timeout, seconds=seconds)
        decision = agreed.decision
        if "stop" not in decision:
            self._clock.saved()
            if decision["drain_due"]:
                self._clock.drain_started()
        if decision.get("stop") in ("unreported", "raise"):
            if decision["stop"] == "unreported" and previous is not None:
                previous.reported = True
            raise error_class(decision["error"]["class"])(decision["error"]["message"])
        if decision.get("stop") == "busy":
            warnings.warn(f"tierpoint: rank {self.rank}: {phases.what} skipped: the save of "
                          f"step {decision['step']} is "
                          "still being written (if_busy='skip')", CheckpointWarning,
                          stacklevel=2)
            return SaveHandle(step, skipped=True)
        reasons = {}
        if "older" in decision:
            reasons = {step: decision["older"]}
            warnings.warn(f"tierpoint: rank {self.rank}: {phases.what}: step {step} is deleted "
                          "from the local tier as soon as it is committed: it is "
                          f"{decision['older']} (if_older='warn')", CheckpointWarning,
                          stacklevel=2)
        mine = agreed.plan
        writes = mine.writes

        # 2. The background job clears and prepares the directory, writes the parts it is
        #    handed and commits; this thread copies the parts into staging memory.
        inputs = ManifestInputs(
            run=self.run, step=step, header=mine.header,
            replicated=frozenset(e.name for e in agreed.declaration.table if e.replicated),
            # Rank 0's JSON values: it hands them to the leaders with the seal (save/job.py).
            values={v.name: {"key": list(v.key), "value": v.value} for v in value_leaves}
            if self.rank == 0 else {},
            metadata=frozen_metadata, ordinal=decision["ordinal"],
            ranks=tuple(self.topology.rank_records()), parent=self.parent, source=self.source,
            code_version=self.code_version, user=self.user)
        job = SaveJob(topology=self.topology, channel=self._save_comm, options=self.options,
                      directory=directory, names=[n for n, _ in mine.documents],
                      docs=mine.documents, inputs=inputs, tiering=self._tiering,
                      audit=self._audit, writers=self._writer_pool(), local=self._local,
                      started=started, needed_bytes=mine.part.get("domain_bytes", 0),
                      retention_reasons=reasons, planning=seconds,
                      drain_due=decision["drain_due"])
        self._job = job
        leaves = {a.name: a for a in arrays}
        if blocking or not self._threads_ok:
            why = BLOCKING_ASKED if blocking else BLOCKING_NO_THREADS
            return self._save_in_place(job, writes, leaves, started, why)
        job.start()
        copying, staged_bytes, parts = 0.0, 0, []
        try:
            if mine.staging is None:
                mine.staging = plan_staging(writes, self.options.staging_bytes, phases.what)
            parts = mine.staging
            inject("snapshot", rank=self.rank, step=step)
            for i, part in enumerate(parts):
                if job.failed_locally:  # no use copying what will not be written
                    break
                t = time.perf_counter()
                held = []
                for batch in snapshot(part, leaves, self._arena, pool=self._copy_pool(),
                                      costs=job.costs):
                    if self._overlap:
                        job.feed(batch)  # written while the next batch is copied
                    else:
                        held.append(batch)
                copying += time.perf_counter() - t
                for batch in held:
                    job.feed(batch)
                staged_bytes += sum(u.nbytes for u in part)
                if i < len(parts) - 1:
                    job.end_part(last=False)
            job.end_part(last=True)
        except Exception as e:  # noqa: BLE001 - reported to every rank by the job
            job.abandon(e)
        return SaveHandle(step, job, stats={
            "mode": "background", "blocking_seconds": time.perf_counter() - started,
            "snapshot_seconds": copying, "staged_bytes": staged_bytes, "parts": len(parts)})

    def _save_in_place(self, job: SaveJob, writes: list, leaves, started,
                       why: str) -> SaveHandle:
        """The rest of a blocking save (``why``: BLOCKING_ASKED or BLOCKING_NO_THREADS): the
        job writes from the tensors themselves, and this thread returns at the commit (where
        MPI allows calls from one thread only, the job runs in this thread, tier policy
        included)."""
        try:
            units = plan_staging(writes, None, "")
            views = (source_views(units[0], leaves) if units else [])
            if views is None:  # a device tensor: it needs a host copy anyway
                views = [v for batch in snapshot(units[0], leaves, self._arena,
                                                 costs=job.costs) for v in batch]
            job.feed(views)
            job.end_part(last=True)
        except Exception as e:  # noqa: BLE001 - reported to every rank by the job
            job.abandon(e)
        if self._threads_ok:
            # Every part is fed: the job writes and commits on its thread while this one
            # waits for the commit (handle.wait below); the tier policy that follows (a
            # drain to start, pruning the local ring) goes on there, as after an async save,
            # instead of holding the trainer (the next save, restore or steps() waits for it).
            job.start()
        else:
            job.run_here()
        stats = {"mode": "blocking", "blocking_reason": why, "parts": 0, "staged_bytes": 0}
        handle = SaveHandle(job.step, job, stats=stats)
        handle.wait()  # raises the failure here, on every rank
        stats["blocking_seconds"] = time.perf_counter() - started
        return handle

    def _join_save(self) -> None:
        """Wait for the save being written, if any. Only the trainer's thread calls this:
        the job and the drain thread hold no reference to the Checkpointer."""
        if self._job is not None:
            self._job.join()

    def _raise_unreported(self) -> None:
        """Raise the last save's failure if the caller has not seen it yet."""
        job = self._job
        if job is not None and job.finished() and job.error is not None and not job.reported:
            job.report()

    def _copy_pool(self) -> ThreadPoolExecutor:
        """Threads that share the snapshot's big copies (not the writers: they are busy
        writing the batches already copied)."""
        if self._copier is None:
            self._copier = ThreadPoolExecutor(max_workers=max(1, self.options.io_threads - 1),
                                              thread_name_prefix="tierpoint-stage")
        return self._copier

    def _writer_pool(self) -> ThreadPoolExecutor:
        """The writer threads, kept for the Checkpointer's life (their encode buffers too)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.options.io_threads),
                                            thread_name_prefix="tierpoint-write")
        return self._pool

    # ---- tiers ---------------------------------------------------------------------------

    def restore(self, template, step: int | None = None, *, strict: bool = True,
                from_run: str | None = None):
        """Fill ``template`` from checkpoint ``step`` (default: the latest step committed on
        every rank's tier) and return the state.

        ``from_run``: read another run's checkpoint (same local root and capacity tier),
        e.g. to start a fine-tune from a pre-training run: this run's later saves record it
        as their lineage parent, and this run's audit log records where it came from.

        Tensors of the template are filled in place (a DTensor's local shard, a Shard's box,
        a plain tensor whole); JSON values come back as saved. Only the template's keys are
        read. A missing key, or a shape or dtype mismatch, is a StateMismatchError naming the
        key; ``strict=False`` skips keys missing from the checkpoint. A save still being
        written is waited for first (its failure is left for the next save to raise).
        """
        self._check_open()
        if from_run is not None and (not isinstance(from_run, str) or not from_run):
            raise ConfigurationError(f"restore: from_run= must be a run's name (a non-empty "
                                     f"string) or None for this run, not {from_run!r}")
        self._join_save()
        restored = restore_state(template, step, strict=strict, comm=self._comm,
                                 topology=self.topology, run=from_run or self.run,
                                 local=self._local, capacity=self._capacity,
                                 options=self.options)
        # Later saves record this checkpoint as their parent (across runs too).
        self.parent = restored.parent
        self.last_restore = {"step": restored.step, "source": restored.source,
                             "peers": restored.routes}
        self._audit.event("restored", restored.step, self.parent["digest"],
                          {"world_size": self.world_size, "from": self.parent["path"],
                           "from_run": self.parent["run"],
                           "from_peers": restored.routes is not None})
        return restored.state

    def drain(self, step: int | None = None, *, rate: float | None = None,
              progress=None) -> dict:
        """Copy committed local checkpoint ``step`` (default: the newest) to the capacity
        tier, verify it and commit it there, in the foreground (collective). The save being
        written and the background drain finish first. ``rate`` caps each aggregator's
        copy rate in bytes/s; ``progress(nbytes)`` is called as bytes are copied. Returns
        what was done; raises CheckpointError on failure (then no capacity copy of the step
        exists). Each local directory of the step records that its drain started, and then
        that it committed: a drain cut short or failed leaves the step pending, so the next
        drain opportunity takes it again (``retention.pending_drains``)."""
        self._check_open()
        if not self._pools:
            raise CheckpointError("drain: this Checkpointer has no persistent= capacity tier")
        self._join_save()
        self._tiering.give_deferred_warnings()
        self._tiering.finish_background_drain()
        self._clock.drain_started()
        return self._tiering.drain_step(step, channel=self._comm, rate=rate,
                                        progress=progress)

    # ---- preemption ------------------------------------------------------------------------

    def handle_preemption(self, signals=(signal.SIGUSR1, signal.SIGTERM)) -> "Checkpointer":
        """Install handlers that only note the signal (main thread; not collective). Then
        ``preempted`` says whether this rank got one, and ``stop_requested()`` (collective)
        whether any rank did, so all ranks save the same final step::

            ckpt.handle_preemption()            # Slurm: #SBATCH --signal=B:USR1@120
            for step in ...:
                train_step()
                if ckpt.stop_requested():       # every rank, every step (or every N)
                    ckpt.save(step, state, blocking=True)
                    break

        Returns the Checkpointer.
        """
        self._preemption.install(signals)
        return self

    @property
    def preempted(self) -> bool:
        """Whether this rank received one of the handled signals (not collective)."""
        return self._preemption.is_set

    def stop_requested(self) -> bool:
        """Whether any rank was signalled (collective: gathered at rank 0, which answers
        every rank alike, so they stop at the same step; O(1) bytes per rank)."""
        self._check_open()
        phases = PhaseRunner(self._comm, "preemption check", self.options.timeout)
        flag = self._preemption

        def signalled() -> bool:
            return flag.is_set
        return phases.decide("check", signalled, any)

    def due(self, step: int) -> bool:
        """Whether a save is due at ``step`` by ``Policy(every_seconds=...)``: true on every
        rank at the same step, once that many seconds have passed since the last save (rank
        0's clock decides; collective: every rank calls it at every step it calls it at,
        with the same step, or every rank gets a ConfigurationError). One native
        all-reduce of three integers, cheap enough for every step::

            for step in range(start, steps):
                train_step()
                if ckpt.due(step):
                    ckpt.save(step, state)
        """
        self._check_open()
        return agree_due(self._comm, self._clock, check_step(step), self.options.timeout)

    # ---- lifecycle -------------------------------------------------------------------------

    def wait(self) -> None:
        """Wait for the save being written, the partner replication and the background
        drain, if any. Raises the save's failure if not raised before; a drain's or a
        replication's failure becomes a warning."""
        self._check_open()
        self._join_save()
        self._tiering.give_deferred_warnings()
        self._tiering.finish_replication()
        self._tiering.finish_background_drain()
        self._raise_unreported()

    def close(self, *, drain_newest: bool = True) -> None:
        """Wait for the save being written and the background drain; with a capacity tier
        and ``drain_newest`` (the default), drain every local checkpoint owed a drain (a
        drain cut short, here or in an earlier run) and the newest if the capacity tier lacks
        it, then apply the local ring (collective then); release the communicators and the
        staging memory. Raises a save failure not raised before; a failed drain is a warning.

        ``drain_newest=False``: close drains nothing (neither the newest step nor one owed a
        drain: those stay owed, for the next run's close or ``tierpoint drain``), so it is
        not collective; for a process that did its draining itself, or that must not copy
        to the capacity tier."""
        if self._closed:
            return
        self._join_save()
        self._tiering.give_deferred_warnings()
        self._tiering.finish_replication()
        if self._pools:
            self._tiering.finish_background_drain()
            if drain_newest:
                self._tiering.drain_at_close()
        self._closed = True
        self._preemption.uninstall()
        for pool in (self._pool, self._copier):
            if pool is not None:
                pool.shutdown()
        self._arena.release()
        channels = (self._comm, self._drain_comm, self._save_comm, self._replica_comm)
        for channel in {id(c): c for c in channels if c}.values():
            free = getattr(channel, "free", None)
            if free:
                free()
        self._raise_unreported()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # do not hide the exception that is already leaving the block
            self.close()
        except CheckpointError as e:
            warnings.warn(f"tierpoint: rank {self.rank}: while closing after an error: {e}",
                          CheckpointWarning, stacklevel=2)

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError("this Checkpointer is closed")


def _run_at_exit(fn) -> None:
    """Run ``fn`` early at interpreter exit: before the thread pools stop taking work (they
    refuse new tasks from their own exit hook, which runs before ``atexit``), and so before
    mpi4py finalises MPI. ``threading._register_atexit`` is the hook concurrent.futures
    uses; hooks run newest first, so ours precedes the pools'."""
    register = getattr(threading, "_register_atexit", None)
    try:
        (register or atexit.register)(fn)
    except RuntimeError:  # already shutting down
        atexit.register(fn)


def _finish_save_at_exit(ref) -> None:
    """At interpreter exit, let a save still being written commit (its thread is a daemon
    and would be cut off): a trainer that saves last and exits without close() must not lose
    that checkpoint silently."""
    ckpt = ref()
    job = None if ckpt is None or ckpt._closed else ckpt._job
    if job is not None and not job.finished():
        print(f"tierpoint: rank {ckpt.rank}: waiting for the save of step {job.step} to commit "
              "before exit (call close() to do this explicitly)", file=sys.stderr, flush=True)
        job.join()
