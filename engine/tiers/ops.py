"""The tier operations of a Checkpointer: drains to the capacity tier (foreground and in the
background), the local ring, and the helpers they share with the save path.

``TierOps`` is mixed into ``Checkpointer``; it uses its communicator, directories, policy and
options. Collective methods are called by every rank in the same order; the background drain
runs on a channel of its own (``_drain_comm``), so it never interleaves with the foreground.
"""
from __future__ import annotations

import os
import shutil
import threading
import warnings

from ..format import layout
from .capacity import CapacityTier
from .drain import (RemoteChunks, plan_drain, read_for_drain, send_chunks,
                    write_aggregator_parts)
from .local import LocalTier, remove_step_dir
from ..errors import CheckpointError, CheckpointWarning
from ..runtime.faults import inject
from ..runtime.phases import PhaseRunner
from .retention import (agreed_drains, capacity_deletions, due_for_drain, local_deletions,
                        pending_drains)


class TierOps:
    def _after_commit(self, step: int, ordinal: int, comm, reasons: dict | None = None) -> None:
        """Start a background drain of the steps owed one, then apply the local ring
        (collective on ``comm``, the channel of the save that committed ``step``).

        When ``step`` is due for drain, a drain still running is waited for first (one at a
        time) and the new drain takes the pending steps (drains cut short earlier), oldest
        first, then ``step``. When it is not due, pending steps are drained only if no drain
        is running on any rank, so a save never waits for one. Steps being drained are
        pending, so the ring keeps them. ``reasons``: step -> why, for the audit record of a
        step the ring deletes for a reason the trainer was told (see ``save``)."""
        if self.pools:
            if due_for_drain(ordinal, self.policy):
                self._finish_background_drain(defer_warning=True)
            steps = self._drains_to_start(comm)
            if steps:
                self._finish_background_drain(defer_warning=True)  # finished everywhere
                self._drain_outcome = {}
                if self._threads_ok:
                    self._drain_thread = threading.Thread(
                        target=self._background_drain, args=(steps,), name="tierpoint-drain",
                        daemon=True)
                    self._drain_thread.start()
                else:  # no background collectives: drain right here
                    self._background_drain(steps)
                    self._take_drain_outcome(defer_warning=True)
        self._apply_local_retention(comm, leftovers=True, reasons=reasons)

    def _drains_to_start(self, comm) -> list[int]:
        """The pending steps every rank agrees on (collective on ``comm``); [] while a drain
        is still running on some rank (the next save's policy, or close(), takes them)."""
        phases = PhaseRunner(comm, f"drain scheduling of run {self.run!r}", self.options.timeout)

        def look():
            thread = self._drain_thread
            busy = thread is not None and thread.is_alive()
            return {"busy": busy,
                    "view": self._drain_view() if self._is_leader and not busy else None}
        found = phases.run("pending", look)
        if any(f["busy"] for f in found):
            return []
        return agreed_drains(f["view"] for f in found if f["view"] is not None)

    def _drain_at_close(self) -> None:
        """close()'s drains, in the foreground: every pending step (drains cut short, oldest
        first), then the newest step if the capacity tier lacks it; then the local ring, which
        the drained steps may leave. A failure is a warning: the local copies stay, and the
        next drain opportunity (a later run, ``tierpoint drain``) takes the steps again."""
        try:
            pending, newest = self._drain_plan()
            steps = pending + ([newest] if newest is not None and newest not in pending and
                               newest not in self.capacity_steps() else [])
        except CheckpointError as e:
            self._warn_drain_failed(e)
            return
        for step in steps:
            try:
                self.drain(step)
            except CheckpointError as e:
                self._warn_drain_failed(e)
        if pending:
            try:
                self._apply_local_retention()
            except CheckpointError as e:
                self._warn_drain_failed(e)

    def _drain_view(self, by_policy: bool = True) -> tuple[list, list]:
        """This leader's (committed local steps, pending steps); see
        ``retention.pending_drains``. ``by_policy=False`` counts only drains that were
        started (the command line does not know the trainer's ``drain_every``)."""
        local = self._local_steps()
        drained = set(self.capacity_steps())
        due, started = set(), set()
        for s in local:
            state = layout.read_drain_state(self.step_dir(s))
            if state == "drained":
                drained.add(s)
            elif state == "owed":
                started.add(s)
            elif by_policy and self.pools and s not in drained:
                try:  # only undrained steps without a record need their manifest read
                    ordinal = layout.load_manifest(self.step_dir(s)).get("ordinal", 0)
                except CheckpointError:
                    continue  # damaged: left for `tierpoint verify` to report
                if due_for_drain(ordinal, self.policy):
                    due.add(s)
        return local, pending_drains(local, due=due, started=started, drained=drained)

    def _drain_plan(self, comm=None, *, by_policy: bool = True) -> tuple[list[int], int | None]:
        """(the pending steps, the newest step every local directory holds) as every rank
        agrees (collective on ``comm``, the foreground channel by default). close() and
        ``tierpoint drain`` drain the pending steps, then the newest if the capacity tier
        lacks it."""
        phases = PhaseRunner(comm or self._comm, f"drain plan of run {self.run!r}",
                             self.options.timeout)
        views = [v for v in phases.run("pending", lambda: self._drain_view(by_policy)
                                       if self._is_leader else None) if v is not None]
        held = set(views[0][0]).intersection(*(set(local) for local, _ in views[1:]))
        return agreed_drains(views), (max(held) if held else None)

    def _background_drain(self, steps: list[int]) -> None:
        """Drain ``steps`` in order on the drain's channel, then apply the local ring there
        (the drained steps may leave it). A failed drain does not stop the next one (a step
        that cannot be drained must not hold back the newer ones); each failure becomes a
        warning."""
        errors = self._drain_outcome.setdefault("errors", [])
        for step in steps:
            try:
                self._drain_outcome["result"] = self.drain(step, rate=self.options.drain_rate,
                                                           _comm=self._drain_comm)
            except CheckpointError as e:
                errors.append(e)
            except Exception as e:  # noqa: BLE001 - never lose a background failure
                errors.append(CheckpointError(f"drain of step {step}: {e}"))
        try:
            self._apply_local_retention(self._drain_comm)
        except CheckpointError as e:
            errors.append(e)
        except Exception as e:  # noqa: BLE001 - never lose a background failure
            errors.append(CheckpointError(f"local retention after the drain of {steps}: {e}"))

    def _finish_background_drain(self, defer_warning: bool = False) -> dict | None:
        """Wait for the background drain; its failure (the same on every rank) becomes a
        CheckpointWarning: the save it followed stays committed on the local tier. From a
        save's background job (``defer_warning``) the warning is kept for the trainer's
        thread, which gives it at its next save, wait or close."""
        thread, self._drain_thread = self._drain_thread, None
        if thread is None:
            return None
        thread.join()
        return self._take_drain_outcome(defer_warning)

    def _take_drain_outcome(self, defer_warning: bool) -> dict | None:
        """A finished background drain's result (of the last step it drained); each
        failure becomes a warning (deferred: see above)."""
        for error in self._drain_outcome.get("errors", []):
            self.last_drain_error = error
            if defer_warning:
                self._deferred_drain_errors.append(error)
            else:
                self._warn_drain_failed(error)
        return self._drain_outcome.get("result")

    def _give_deferred_warnings(self) -> None:
        while self._deferred_drain_errors:
            self._warn_drain_failed(self._deferred_drain_errors.pop(0))

    def _warn_drain_failed(self, error: CheckpointError) -> None:
        self.last_drain_error = error
        warnings.warn(f"tierpoint: {error}; the local checkpoint is kept", CheckpointWarning,
                      stacklevel=3)

    def _apply_capacity_retention(self) -> list[int]:
        """Delete the capacity checkpoints the policy no longer wants (rank 0, right after a
        drain committed); returns the steps removed."""
        doomed = capacity_deletions(self.capacity_steps(), self.policy)
        for step in doomed:
            CapacityTier(self.pools).retire(self.run, step, rank=self.rank)
        return doomed

    def capacity_steps(self) -> list[int]:
        """Committed steps on the capacity tier (not collective)."""
        return layout.committed_steps(self.pools[0], self.run) if self.pools else []

    def _apply_local_retention(self, comm=None, *, leftovers: bool = False,
                               reasons: dict | None = None) -> list:
        """Delete the local checkpoints the policy no longer wants (collective on ``comm``,
        the foreground channel by default). The foreground and the drain thread may both
        run it; removing a step directory twice is harmless.

        ``leftovers``: also remove what interrupted work left: step directories without a
        marker (saves cut short), retired ones (removals cut short) and commits that reached
        only some of the directories of the job that wrote them. Only the save job asks
        for this, right after its commit: then it is the run's one writer and no commit is
        half done (a run is written by one job at a time); and ``tierpoint gc``. Steps owed
        a drain (``retention.pending_drains``) are kept. ``reasons``: step -> why, recorded
        instead of "retention" when the ring deletes that step. Returns the (step, reason)
        of every directory removed."""
        phases = PhaseRunner(comm or self._comm, f"local retention of run {self.run!r}",
                              self.options.timeout)
        listed = phases.run("list", lambda: self._local_steps() if self._is_leader else None)
        holders: dict[int, set] = {}
        for r, steps in enumerate(listed):
            for s in steps or []:
                holders.setdefault(s, set()).add(_domain(self._ranks[r]))
        domains = {_domain(i) for i in self._ranks}

        def prune():
            if not self._is_leader:
                return []
            drained = set(self.capacity_steps())
            removed = []
            if leftovers:
                removed += self._remove_leftovers(holders, domains, drained)
            local, pending = self._drain_view()
            doomed = local_deletions(local, pending=pending, policy=self.policy)
            for s in doomed:
                remove_step_dir(self.step_dir(s), rank=self.rank, step=s)
            return removed + [[s, (reasons or {}).get(s, "retention")] for s in doomed]
        removed = sorted({tuple(x) for steps in phases.run("prune", prune) for x in steps})
        for step, why in removed:
            self._audit_event("deleted", step, detail={"tier": "local", "why": why})
        return removed

    def _remove_leftovers(self, holders: dict, domains: set, drained: set) -> list:
        """This leader's part of ``leftovers`` (see ``_apply_local_retention``)."""
        removed = []
        run_dir = layout.run_dir(self.local_root, self.run)
        for name in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
            path = os.path.join(run_dir, name)
            step = layout.parse_step_dir_name(name)
            if layout.is_retired_name(name):
                shutil.rmtree(path, ignore_errors=True)
                continue
            if step is None:
                continue
            why = None
            if not layout.is_committed(path):
                why = "an interrupted save"
            elif step not in drained and not domains <= holders.get(step, set()):
                # Only a step some current directory lacks needs its manifest read.
                try:
                    wrote = {_domain(r) for r in
                             layout.load_manifest(path)["layout"]["ranks"]}
                except CheckpointError:
                    continue  # damaged: left for `tierpoint verify` to report
                if (wrote & domains) - holders.get(step, set()):
                    why = "held by only some of the nodes that wrote it"
            if why:
                remove_step_dir(path)
                removed.append([step, why])
        return removed

    def drain(self, step: int | None = None, *, rate: float | None = None,
              progress=None, _comm=None) -> dict:
        """Copy committed local checkpoint ``step`` (default: the newest) to the capacity
        tier, verify it and commit it there (collective). ``rate`` caps each aggregator's
        copy rate in bytes/s; ``progress(nbytes)`` is called as bytes are copied. Returns
        what was done; raises CheckpointError on failure (then no capacity copy of the step
        exists). Each local directory of the step records that its drain started, and then
        that it committed: a drain cut short or failed leaves the step pending, so the next
        drain opportunity takes it again (``retention.pending_drains``)."""
        self._check_open()
        if not self.pools:
            raise CheckpointError("drain: this Checkpointer has no persistent= capacity tier")
        if _comm is None:  # a foreground drain first lets background work finish
            self._join_save()
            self._give_deferred_warnings()
            self._finish_background_drain()
        phases = PhaseRunner(_comm or self._comm, f"drain of run {self.run!r}" +
                              (f" step {step}" if step is not None else ""),
                              self.options.timeout)
        step = self._choose_step(step, phases.run("find", self._local_steps), phases.what)
        head = layout.capacity_head(self.pools, self.run, step)
        capacity, local_tier = CapacityTier(self.pools), LocalTier(self.local_root)

        def clean():
            if self._is_leader:  # from here on, a drain cut short is redone (pending_drains)
                layout.write_drain_record(self.step_dir(step), step, "owed")
            if self.rank != 0:
                return None
            capacity.check_pools()
            if layout.is_committed(head):
                # The same checkpoint, or an older one of this step that a save with
                # overwrite=True replaced locally: then the capacity copy is replaced too.
                ours = layout.load_manifest(self.step_dir(step)).get("digest")
                if layout.load_manifest(head).get("digest") == ours:
                    return {"already": True}
                capacity.retire(self.run, step, rank=self.rank)
            # One drain of a run at a time: whatever uncommitted is on the capacity tier is
            # left by an interrupted drain (of this step or another).
            capacity.sweep(self.run)  # this one too
            return {"already": False, "pools": capacity.pool_identities()}
        cleaned = phases.run("clean", clean)[0]
        if cleaned["already"]:
            self._mark_drained(step)
            return {"step": step, "already": True}
        manifest = None

        def locate():
            """A leader's answer: which saved domains its directory of ``step`` holds."""
            if not self._is_leader:
                return None
            return sorted(local_tier.open(self.run, step).held_domains())
        held = phases.run("locate", locate)

        def copy():
            nonlocal manifest
            local_copy = local_tier.open(self.run, step)
            manifest = local_copy.manifest
            # Saving ranks map to draining readers through what each reader's directory
            # holds (its marker's domain, or chunks copied into it), never through paths.
            reader_of_domain: dict[int, int] = {}
            for reader, domains in enumerate(held):
                for d in domains or []:
                    reader_of_domain.setdefault(d, reader)
            work = plan_drain(manifest, [reader_of_domain.get(d) for d in manifest.domains])

            def fetch_local(name, key):
                inject("drain", rank=self.rank, step=step)
                return read_for_drain(local_copy, name, key)
            me, comm = self.rank, phases.comm
            if me in self._aggregator_index:
                agg = self._aggregator_index[me]
                remote = [RemoteChunks(comm, r, manifest, work.get(r, []))
                          for r in sorted(self._aggregator_of_reader)
                          if self._aggregator_of_reader[r] == me and r != me]
                sources = [(work.get(me, []), fetch_local)] + [(rc.items, rc.fetch)
                                                              for rc in remote]
                try:
                    return write_aggregator_parts(
                        capacity, self.run, step, agg, manifest, sources,
                        metadata=local_copy.metadata_entries() if agg == 0 else None,
                        rate=rate, progress=progress)
                finally:
                    for rc in remote:  # senders must never block on a receiver that quit
                        rc.discard_rest()
            if me in self._aggregator_of_reader:
                send_chunks(comm, self._aggregator_of_reader[me], work.get(me, []), fetch_local)
            return None
        parts = [p for written in phases.run("copy", copy) if written for p in written]

        def merge():
            inject("drain-merge", rank=self.rank, step=step)
            return self.rank == 0 and capacity.finish(self.run, step, parts)
        phases.run("merge", merge)

        def verify():
            capacity.check_pools_unchanged(cleaned["pools"])
            return capacity.check_index(self.run, step, manifest,
                                        (phases.comm.rank, phases.comm.size))
        phases.run("verify", verify)

        def commit():
            if self.rank == 0:
                capacity.commit(self.run, step, manifest, rank=self.rank)
                return self._apply_capacity_retention()
        removed = phases.run("commit", commit)[0] or []
        self._mark_drained(step)
        self._audit_event("drained", step, manifest.digest,
                          {"parts": len(parts), "bytes": sum(p["bytes"] for p in parts)})
        for old in removed:
            self._audit_event("deleted", old, detail={"tier": "capacity", "why": "retention"})
        return {"step": step, "seconds": phases.total(), "phases": phases.seconds,
                "bytes": sum(p["bytes"] for p in parts), "parts": len(parts)}

    def _mark_drained(self, step: int) -> None:
        """After the capacity commit, this directory's drain record says "drained", so the
        step may leave the ring even once capacity retention deleted that copy. Not
        collective, so best effort: the ring may have removed the directory already, and
        without the record the committed capacity copy says the same until it is deleted
        (then a step still in the ring is drained once more: wasteful, never lossy)."""
        if self._is_leader:
            try:
                layout.write_drain_record(self.step_dir(step), step, "drained")
            except OSError:
                pass


def pool_list(persistent) -> list[str]:
    if persistent is None:
        return []
    pools = [persistent] if isinstance(persistent, (str, os.PathLike)) else list(persistent)
    return [os.path.abspath(os.path.expanduser(str(p))) for p in pools]


def _domain(info: dict) -> tuple:
    """The local tier directory a rank writes in: (node, tier root)."""
    return (info["node"], info["tier_dir"])
