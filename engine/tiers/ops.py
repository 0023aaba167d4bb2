"""Drain scheduling and the local ring of one run: ``Tiering``, constructed by the Checkpointer
with exactly what it uses (no back-pointer), and the step-directory helpers the save path
shares with it. One drain's phases are tiers/drainstep.py; the partner replication is
tiers/replication.py.

Who calls what, and on which channel:
- the trainer's thread (through ``Checkpointer.drain``/``close``/``tierpoint drain``/``gc``):
  ``drain_step(step, channel=<foreground>)``, ``drain_at_close()``, ``drain_plan()``,
  ``sweep_leftovers()``, ``apply_local_retention()``, on the foreground channel;
- the save job's thread, right after its commit, on the save channel:
  ``start_owed_drains(step, due, channel)``, then ``sweep_leftovers(channel)``, then
  ``apply_local_retention(channel)``;
- the drain thread that ``start_owed_drains`` starts: ``_drain_in_background(steps)`` on the
  drain's own channel, so a background drain never interleaves with the foreground.
Every collective method is called by every rank, in the same order, on the channel given.

Invariants: one background drain at a time; a step owed a drain is kept by the ring until
its capacity copy is committed (``retention.pending_drains``); the leftover sweep runs only
where this job is the run's one writer (right after a commit, and ``tierpoint gc``).
"""
from __future__ import annotations

import os
import threading
import warnings

from .capacity import CapacityTier
from .drainstep import drain_step
from .local import LocalTier
from ..errors import CheckpointError, CheckpointWarning
from ..runtime.phases import PhaseRunner
from ..runtime.topology import Topology
from .replication import Replication
from .retention import (agreed_drains, capacity_deletions, due_for_drain, local_deletions,
                        pending_drains, replica_deletions)


class Tiering:
    """Drains a run's local checkpoints to the capacity tier (in the foreground, or one at a
    time in a background thread), and applies the local and capacity retention policy.

    Constructed once per Checkpointer with: ``topology`` (the job's ranks, domains, leaders,
    aggregators), ``channel`` (the foreground communicator) and ``drain_channel`` (the
    background drain's own duplicate, None without a capacity tier), ``options``, ``policy``,
    ``run``, ``local`` (this rank's node-local tier), ``capacity`` (the capacity tier, None
    for none),
    ``audit`` (an object with ``event(event, step=None, digest="", detail=None)``: the run's
    audit log, a no-op off rank 0), ``background`` (whether collectives may run in a
    background thread: MPI_THREAD_MULTIPLE; below it, owed drains run in the caller's thread)
    and ``replica_channel`` (the partner replication's own duplicate communicator, None
    without ``Policy.replicas``: tiers/replication.py).
    It holds the state of the background drain: the thread, its outcome, and the failures
    kept for the trainer's thread (``give_deferred_warnings``).
    """

    def __init__(self, *, topology: Topology, channel, drain_channel, options, policy,
                 run: str, local: LocalTier, capacity: CapacityTier | None, audit,
                 background: bool, replica_channel=None):
        self.topology, self.options, self.policy = topology, options, policy
        self.run, self.local, self.capacity = run, local, capacity
        self.local_root = local.root
        self.pools = list(capacity.pools) if capacity is not None else []
        self._channel, self._drain_channel = channel, drain_channel
        self._audit, self._background = audit, background
        self.last_drain_error: CheckpointError | None = None
        self._deferred_drain_errors: list[CheckpointError] = []
        self._drain_thread: threading.Thread | None = None
        self._drain_outcome: dict = {}
        self.replication = Replication(
            topology=topology, channel=replica_channel, options=options, run=run,
            local=local, audit=audit, background=background) if replica_channel else None

    @property
    def rank(self) -> int:
        return self.topology.rank

    @property
    def _is_leader(self) -> bool:
        return self.topology.is_leader

    # ---- what the tiers hold (not collective) ---------------------------------------------

    def step_dir(self, step: int) -> str:
        return self.local.step_path(self.run, step)

    def local_steps(self) -> list[int]:
        """Committed steps in this rank's local directory (never waits for a save)."""
        return self.local.steps(self.run)

    def capacity_steps(self) -> list[int]:
        """Committed steps on the capacity tier (not collective)."""
        return self.capacity.steps(self.run) if self.capacity is not None else []

    def capacity_ordinal(self) -> int:
        """The ``ordinal`` of the newest committed capacity checkpoint (0: none, or it cannot
        be read: ``layout.latest_ordinal``'s rule; a save never fails because the capacity
        tier cannot be reached, its drain does)."""
        try:
            steps = self.capacity_steps()
            if not steps:
                return 0
            return self.capacity.open(self.run, steps[-1], ranks=()).manifest.ordinal
        except CheckpointError:
            return 0

    def capacity_holds(self, step: int) -> bool:
        """Whether the capacity tier holds a committed ``step`` (False when it cannot be
        reached: as ``capacity_ordinal``)."""
        try:
            return self.capacity is not None and self.capacity.is_committed(self.run, step)
        except CheckpointError:
            return False

    def newest_capacity_time(self) -> float | None:
        """When the newest capacity copy was saved (its manifest's unix_time; None without
        one, or when it cannot be read or reached): where the drain clock starts
        (runtime/clock.py)."""
        try:
            steps = self.capacity_steps()
            if not steps:
                return None
            return self.capacity.open(self.run, steps[-1], ranks=()).manifest.unix_time or None
        except CheckpointError:
            return None

    # ---- after a commit: start the drains owed -------------------------------------------

    def start_owed_drains(self, step: int, due: bool, channel) -> None:
        """Start a background drain of the steps owed one (collective on ``channel``, the
        channel of the save that just committed ``step``; ``due``: whether the policy drains
        it, by its count or by rank 0's clock, the save's decision on every rank; a no-op
        without a capacity tier).

        When that save is due for drain, a drain still running is waited for first (one at a
        time) and the new drain takes the pending steps (drains cut short earlier), oldest
        first, then the new step. When it is not due, pending steps are drained only if no
        drain is running on any rank, so a save never waits for one. Steps being drained
        are pending, so the ring keeps them."""
        if not self.pools:
            return
        if due:
            self.finish_background_drain(defer_warning=True)
        steps = self._drains_to_start(channel)
        if due and step not in steps:  # due by the clock: the count rule does not list it
            steps.append(step)
        if not steps:
            return
        self.finish_background_drain(defer_warning=True)  # finished everywhere
        self._drain_outcome = {}
        if self._background:
            self._drain_thread = threading.Thread(
                target=self._drain_in_background, args=(steps,), name="tierpoint-drain",
                daemon=True)
            self._drain_thread.start()
        else:  # no background collectives: drain right here
            self._drain_in_background(steps)
            self._take_drain_outcome(defer_warning=True)

    def _drains_to_start(self, channel) -> list[int]:
        """The pending steps every rank agrees on (collective on ``channel``); [] while a
        drain is still running on some rank (the next save's policy, or close(), takes
        them)."""
        phases = PhaseRunner(channel, f"drain scheduling of run {self.run!r}",
                             self.options.timeout)

        def look():
            thread = self._drain_thread
            busy = thread is not None and thread.is_alive()
            return {"busy": busy,
                    "view": self.drain_view() if self._is_leader and not busy else None}
        # Rank 0 decides from the leaders' views and answers every rank with the steps.
        return phases.decide("pending", look, lambda found: [] if any(
            f["busy"] for f in found) else agreed_drains(
                f["view"] for f in found if f["view"] is not None))

    # ---- partner replicas (tiers/replication.py) -------------------------------------------

    @property
    def replicating(self) -> bool:
        """Whether this job keeps partner replicas (Policy replicas=1, more than one node)."""
        return self.replication is not None and self.replication.active

    def start_replication(self, step: int, channel):
        """After the commit of ``step`` (every rank, the save's ``channel``): start its
        replication to the partner nodes, after the one still running (tiers/replication.py).
        Returns an event set once it is over (None without replicas)."""
        if self.replicating:
            return self.replication.start(step, channel)
        return None

    def finish_replication(self) -> None:
        """The trainer's thread: wait for the replication running, then warn of its
        failures (and any earlier ones not yet given)."""
        if self.replication is not None:
            self.replication.finish()
            self.replication.give_deferred_warnings()

    # ---- close() and `tierpoint drain` ----------------------------------------------------

    def drain_at_close(self) -> None:
        """close()'s drains, in the foreground (the caller has waited for the save being
        written and the background drain): every pending step (drains cut short, oldest
        first), then the newest step if the capacity tier lacks it; then the local ring,
        which the drained steps may leave. A failure is a warning: the local copies stay,
        and the next drain opportunity (a later run, ``tierpoint drain``) takes the steps
        again."""
        try:
            pending, newest = self.drain_plan()
            steps = pending + ([newest] if newest is not None and newest not in pending and
                               newest not in self.capacity_steps() else [])
        except CheckpointError as e:
            self.warn_drain_failed(e)
            return
        for step in steps:
            try:
                self.drain_step(step, channel=self._channel)
            except CheckpointError as e:
                self.warn_drain_failed(e)
        if pending:
            try:
                self.apply_local_retention()
            except CheckpointError as e:
                self.warn_drain_failed(e)

    def drain_view(self, by_policy: bool = True) -> tuple[list, list]:
        """This leader's (committed local steps, pending steps); see
        ``retention.pending_drains``. ``by_policy=False`` counts only drains that were
        started (the command line does not know the trainer's ``drain_every``)."""
        local = self.local_steps()
        drained = set(self.capacity_steps())
        due, started = set(), set()
        for s in local:
            state = self.local.drain_state(self.run, s)
            if state == "drained":
                drained.add(s)
            elif state == "owed":
                started.add(s)
            elif by_policy and self.pools and s not in drained:
                try:  # only undrained steps without a record need their manifest read
                    ordinal = self.local.open(self.run, s, ranks=()).manifest.ordinal
                except CheckpointError:
                    continue  # damaged: left for `tierpoint verify` to report
                if due_for_drain(ordinal, self.policy):
                    due.add(s)
        return local, pending_drains(local, due=due, started=started, drained=drained)

    def drain_plan(self, channel=None, *, by_policy: bool = True
                   ) -> tuple[list[int], int | None]:
        """(the pending steps, the newest step every local directory holds) as every rank
        agrees (collective on ``channel``, the foreground channel by default). close() and
        ``tierpoint drain`` drain the pending steps, then the newest if the capacity tier
        lacks it."""
        phases = PhaseRunner(channel or self._channel, f"drain plan of run {self.run!r}",
                             self.options.timeout)
        def agreed(found):
            views = [v for v in found if v is not None]
            held = set(views[0][0]).intersection(*(set(local) for local, _ in views[1:]))
            return [agreed_drains(views), max(held) if held else None]
        pending, newest = phases.decide("pending", lambda: self.drain_view(by_policy)
                                        if self._is_leader else None, agreed)
        return pending, newest

    # ---- the background drain ---------------------------------------------------------------

    def _drain_in_background(self, steps: list[int]) -> None:
        """The drain thread: drain ``steps`` in order on the drain's channel, then apply the
        local ring there (the drained steps may leave it). A failed drain does not stop the
        next one (a step that cannot be drained must not hold back the newer ones); each
        failure is kept for ``finish_background_drain``, which turns it into a warning."""
        errors = self._drain_outcome.setdefault("errors", [])
        for step in steps:
            try:
                self._drain_outcome["result"] = self.drain_step(
                    step, channel=self._drain_channel, rate=self.options.drain_rate)
            except CheckpointError as e:
                errors.append(e)
            except Exception as e:  # noqa: BLE001 - never lose a background failure
                errors.append(CheckpointError(f"drain of step {step}: {e}"))
        try:
            self.apply_local_retention(self._drain_channel)
        except CheckpointError as e:
            errors.append(e)
        except Exception as e:  # noqa: BLE001 - never lose a background failure
            errors.append(CheckpointError(f"local retention after the drain of {steps}: {e}"))

    def finish_background_drain(self, defer_warning: bool = False) -> dict | None:
        """Wait for the background drain; its failure (the same on every rank) becomes a
        CheckpointWarning: the save it followed stays committed on the local tier. From a
        save's background job (``defer_warning``) the warning is kept for the trainer's
        thread, which gives it at its next save, wait or close (``give_deferred_warnings``).
        Returns the result of the last step it drained (None when none ran)."""
        thread, self._drain_thread = self._drain_thread, None
        if thread is None:
            return None
        thread.join()
        return self._take_drain_outcome(defer_warning)

    def _take_drain_outcome(self, defer_warning: bool) -> dict | None:
        for error in self._drain_outcome.get("errors", []):
            self.last_drain_error = error
            if defer_warning:
                self._deferred_drain_errors.append(error)
            else:
                self.warn_drain_failed(error)
        return self._drain_outcome.get("result")

    def give_deferred_warnings(self) -> None:
        """The trainer's thread: warn of the background drain (and replication) failures
        kept for it."""
        while self._deferred_drain_errors:
            self.warn_drain_failed(self._deferred_drain_errors.pop(0))
        if self.replication is not None:
            self.replication.give_deferred_warnings()

    def warn_drain_failed(self, error: CheckpointError) -> None:
        self.last_drain_error = error
        warnings.warn(f"tierpoint: rank {self.rank}: {error}; the local checkpoint is kept",
                      CheckpointWarning, stacklevel=3)

    # ---- retention ----------------------------------------------------------------------------

    def apply_capacity_retention(self) -> list[int]:
        """Delete the capacity checkpoints the policy no longer wants (rank 0, right after a
        drain committed, and ``tierpoint gc``); returns the steps removed."""
        doomed = capacity_deletions(self.capacity_steps(), self.policy)
        for step in doomed:
            self.capacity.retire(self.run, step, rank=self.rank)
        return doomed

    def apply_local_retention(self, channel=None, *, reasons: dict | None = None) -> list:
        """The local ring: delete the local checkpoints the policy no longer wants
        (collective on ``channel``, the foreground channel by default). The foreground and
        the drain thread may both run it; removing a step directory twice is harmless.
        Steps owed a drain (``retention.pending_drains``) are kept. ``reasons``: step -> why,
        recorded in the audit log instead of "retention" when the ring deletes that step.
        Returns the (step, reason) of every directory removed."""
        phases = PhaseRunner(channel or self._channel, f"local retention of run {self.run!r}",
                             self.options.timeout)
        # A step owed a drain is kept only while it can be drained: while every directory of
        # this job holds it (``agreed_drains``). One that a lost node's replacement lacks
        # (restorable from a partner replica, never drainable from the local tiers) leaves
        # with the ring instead of being kept forever.
        held = phases.decide("held", lambda: self.local_steps() if self._is_leader else None,
                             lambda found: sorted(set.intersection(
                                 *[set(f) for f in found if f is not None]) if any(
                                     f is not None for f in found) else set()))

        def prune():
            if not self._is_leader:
                return []
            local, pending = self.drain_view()
            pending = [s for s in pending if s in held]
            sending = self.replication.sending if self.replication is not None else None
            doomed = local_deletions(local, pending=pending + ([sending] if sending is not None
                                                               else []), policy=self.policy)
            for s in doomed:
                self.local.retire(self.run, s, rank=self.rank)
            self._prune_replicas(set(local) - set(doomed))
            return [[s, (reasons or {}).get(s, "retention")] for s in doomed]
        removed = [tuple(x) for x in phases.decide("prune", prune, _union_of_removals)]
        self._record_local_deletions(removed)
        return removed

    def _prune_replicas(self, kept: set) -> None:
        """This leader's replicas that left its ring (``retention.replica_deletions``; not
        audited: the replicated step's own copies are)."""
        held = self.local.replicas(self.run)
        for step in replica_deletions(kept, {s for s, _ in held}, policy=self.policy):
            for domain in (d for s, d in held if s == step):
                self.local.retire_replica(self.run, step, domain)

    def sweep_leftovers(self, channel=None) -> list:
        """Remove what interrupted work left in the local directories (collective on
        ``channel``, the foreground channel by default): step directories without a marker
        (saves cut short), retired ones (removals cut short) and commits that reached only
        some of the directories of the job that wrote them.

        Only where this job is the run's one writer and no commit is half done: the save job
        right after its commit (a run is written by one job at a time), and ``tierpoint gc``.
        Returns the (step, reason) of every step directory removed."""
        phases = PhaseRunner(channel or self._channel, f"leftover sweep of run {self.run!r}",
                             self.options.timeout)
        directories = {_directory_of(info) for info in self.topology.ranks}

        def partial(listed):
            """Rank 0: the steps some directory lacks, with the directories holding them
            (usually none: O(1) bytes to every rank)."""
            holders: dict[int, set] = {}
            for r, steps in enumerate(listed):
                for s in steps or []:
                    holders.setdefault(s, set()).add(_directory_of(self.topology.ranks[r]))
            return [[s, sorted(h)] for s, h in sorted(holders.items()) if not directories <= h]
        lacking = phases.decide("list", lambda: self.local_steps() if self._is_leader
                                else None, partial)
        holders = {s: {tuple(d) for d in h} for s, h in lacking}

        def sweep():
            if not self._is_leader:
                return []
            return self._remove_leftovers(holders, directories, set(self.capacity_steps()))
        removed = [tuple(x) for x in phases.decide("sweep", sweep, _union_of_removals)]
        self._record_local_deletions(removed)
        return removed

    def _record_local_deletions(self, removed) -> None:
        for step, why in removed:
            self._audit.event("deleted", step, detail={"tier": "local", "why": why})

    def _remove_leftovers(self, holders: dict, directories: set, drained: set) -> list:
        """This leader's part of ``sweep_leftovers``: the tier's own sweep (uncommitted and
        retired directories), then the commits only some of their directories hold
        (``holders``: step -> the directories holding it, for the steps some lack)."""
        interrupted = [s for s in self.local.step_names(self.run)
                       if not self.local.is_committed(self.run, s)]
        self.local.sweep(self.run)
        busy = self.replication is not None and self.replication.busy()
        # Never the replicas being written here now (the replication of one step at a time:
        # the step this leader is sending is the one its partners send it).
        self.local.sweep_replicas(self.run, writing=self.replication.sending if busy else None)
        removed = [[s, "an interrupted save"] for s in interrupted]
        for step in self.local.steps(self.run):
            if step in drained or step not in holders:  # held by every directory
                continue  # only a step some current directory lacks needs its manifest read
            try:
                wrote = {_directory_of(r) for r in
                         self.local.open(self.run, step, ranks=()).manifest.ranks}
            except CheckpointError:
                continue  # damaged: left for `tierpoint verify` to report
            if (wrote & directories) - holders.get(step, set()):
                self.local.retire(self.run, step, rank=self.rank)
                removed.append([step, "held by only some of the nodes that wrote it"])
        return removed

    # ---- one drain ----------------------------------------------------------------------------

    def drain_step(self, step: int | None, *, channel, rate: float | None = None,
                   progress=None) -> dict:
        """One drain of ``step`` (collective on ``channel``): tiers/drainstep.py."""
        return drain_step(self, step, channel=channel, rate=rate, progress=progress)


def pool_list(persistent) -> list[str]:
    """The capacity tier's pool roots from ``persistent=`` (a path, several, or None)."""
    if persistent is None:
        return []
    pools = [persistent] if isinstance(persistent, (str, os.PathLike)) else list(persistent)
    return [os.path.abspath(os.path.expanduser(str(p))) for p in pools]


def _union_of_removals(found) -> list:
    """Rank 0: every leader's removed (step, reason) pairs, once each, sorted."""
    return [list(x) for x in sorted({tuple(x) for steps in found for x in steps})]


def _directory_of(info) -> tuple:
    """The local tier directory a rank writes in: (node, tier root). ``info``: a
    ``topology.RankInfo`` or a manifest's ``RankRecord``."""
    return (info.node, info.tier_dir)
