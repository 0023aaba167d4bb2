"""The partner replication of a run (``Policy(replicas=1)``): after each save's commit, each
domain's leader sends its committed copy of the step to its partner domain's leader on
another node (tiers/replicas.py: the ring, the transfer), one replication at a time, in a
thread of its own on a channel of its own; the partner commits it as a replica.

Who calls what, and on which channel:
- the save job's thread, right after its commit, on the save channel: ``start(step,
  channel)`` (collective: every rank agrees whether a replication still runs anywhere);
- the replication thread it starts (``tierpoint-replicate``), on the replication channel:
  ``replicate(step)`` (collective: the leaders' transfers, then one agreed report);
- the trainer's thread (``Checkpointer.wait``/``close``, through ``Tiering``): ``finish``
  and ``give_deferred_warnings``.

Invariants: a replication never fails or changes the save it follows (the save is committed
before it starts): its failures become CheckpointWarnings, the same list on every rank, given
at the trainer's next save, wait or close; every committed step is replicated, in order (a
commit while the previous replication runs waits for it in the save's background thread),
and a save's handle is acknowledged (``wait()``) once its replication is over; the step
whose copy a leader is sending is held back from the ring
(``sending``), so it is not deleted under the sender.
"""
from __future__ import annotations

import threading
import warnings

from ..errors import CheckpointError, CheckpointWarning
from ..runtime.comm import describe_error
from ..runtime.phases import PhaseRunner
from ..runtime.topology import Topology
from .local import LocalTier
from .replicas import partners, receive_replica, send_replica, transfer_rounds


class Replication:
    """Replicates a run's committed steps to partner nodes. Constructed by ``Tiering`` with
    ``topology``, ``channel`` (the replication's own duplicate communicator), ``options``
    (``drain_rate`` caps each sender, ``timeout``), ``run``, ``local`` (this rank's
    node-local tier), ``audit`` (``event(...)``: rank 0 records "replicated") and
    ``background`` (MPI_THREAD_MULTIPLE: a thread of its own, each leader sending and
    receiving at once; below it, in the caller's thread, the transfers one after another in
    the rounds of ``transfer_rounds``, which never deadlocks and keeps the wait a constant
    number of transfers deep on a ring)."""

    def __init__(self, *, topology: Topology, channel, options, run: str, local: LocalTier,
                 audit, background: bool):
        self.topology, self.channel, self.options = topology, channel, options
        self.run, self.local, self._audit, self._background = run, local, audit, background
        self.nodes = [topology.ranks[leader].node for leader in topology.leaders]
        self.partner_of = partners(self.nodes)
        # Below MPI_THREAD_MULTIPLE each leader takes its transfers one at a time, in this
        # order (rounds of disjoint pairs: a constant number of transfers deep on a ring).
        self._in_turn = [t for r in transfer_rounds(self.partner_of) for t in r]
        self.sending: int | None = None  # the step this rank's leader is replicating
        self.last_error: CheckpointError | None = None
        self._thread: threading.Thread | None = None
        self._deferred: list[CheckpointError] = []

    @property
    def active(self) -> bool:
        """Whether any domain has a partner (False on one node: no replicas)."""
        return bool(self.partner_of)

    def busy(self) -> bool:
        """Whether this rank's replication thread still runs (not collective)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    # ---- after a commit ------------------------------------------------------------------

    def start(self, step: int, channel) -> threading.Event:
        """Start replicating ``step`` (on every rank, right after the commit of the save
        that committed it; ``channel``: that save's, unused: the replication's collectives
        run on its own). A replication still running is waited for first, in the save's
        background thread (as a due drain is): every committed step is replicated, in
        order, so a replication slower than the saves holds the next save back, never skips
        one. Returns an event set once this step's replication is over (its replica
        committed, or its failure kept as a warning): ``SaveHandle.wait`` waits for it, so
        a save acknowledged with replicas has a copy on two nodes."""
        over = threading.Event()
        if not self.active:
            over.set()
            return over
        self.finish()  # each rank its own thread: the replication's collectives ended together
        if self.topology.is_leader:
            self.sending = step
        if self._background:
            self._thread = threading.Thread(target=self._in_background, args=(step, over),
                                            name="tierpoint-replicate", daemon=True)
            self._thread.start()
        else:
            self._in_background(step, over)
        return over

    def finish(self) -> None:
        """Wait for the replication thread, if any (its failures stay deferred)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def give_deferred_warnings(self) -> None:
        """The trainer's thread: warn of the replication failures kept for it."""
        while self._deferred:
            error = self._deferred.pop(0)
            warnings.warn(f"tierpoint: rank {self.topology.rank}: {error}", CheckpointWarning,
                          stacklevel=3)

    def _in_background(self, step: int, over: threading.Event) -> None:
        try:
            self.replicate(step)
        except CheckpointError as e:
            self._fail(CheckpointError(f"replication of step {step}: {e}; the checkpoint "
                                       "is committed and kept on its own nodes"))
        except Exception as e:  # noqa: BLE001 - never lose a background failure
            self._fail(CheckpointError(f"replication of step {step}: {type(e).__name__}: "
                                       f"{e}; the checkpoint is committed and kept on its "
                                       "own nodes"))
        finally:
            self.sending = None
            over.set()

    def _fail(self, error: CheckpointError) -> None:
        self.last_error = error
        self._deferred.append(error)

    # ---- one replication (collective on the replication channel) ----------------------------

    def replicate(self, step: int) -> list[dict]:
        """Every leader sends its copy of ``step`` to its partner and receives its senders'
        copies; every rank gets every transfer's outcome (failures become warnings, rank 0
        records each replica committed in the audit log). Returns the outcomes."""
        phases = PhaseRunner(self.channel, f"replication of step {step} (run {self.run!r})",
                             self.options.timeout)
        outcomes = phases.decide("copy", lambda: self._transfers(step) if
                                 self.topology.is_leader else [], _merged)
        for o in outcomes:
            if o.get("error") or o.get("send_error"):
                self._fail(CheckpointError(_failure_text(step, o)))
            else:
                self._audit.event("replicated", step, o.get("digest", ""), detail={
                    "from": o["from_node"], "to": o["to_node"], "domain": o["from"],
                    "bytes": o.get("bytes", 0)})
        return outcomes

    def _transfers(self, step: int) -> list[dict]:
        """This leader's transfers of ``step``: its own copy to its partner, its senders'
        copies into its tier; one outcome per transfer, never raising."""
        topo, me = self.topology, self.topology.domain
        partner = self.partner_of.get(me)
        out: list[dict] = []

        def send() -> None:
            record = {"from": me, "to": partner}
            try:
                send_replica(self.channel, topo.leaders[partner],
                             lambda: self.local.open(self.run, step), rank=topo.rank,
                             rate=self.options.drain_rate)
            except Exception as e:  # noqa: BLE001 - reported, never raised
                record["send_error"] = describe_error(e)["message"]
            out.append(record)

        def receive(sender: int) -> None:
            record = {"from": sender, "to": me,
                      "directory": self.local.replica_path(self.run, step, sender)}
            try:
                record.update(receive_replica(
                    self.channel, topo.leaders[sender], self.local, self.run, step,
                    domain=sender, node=self.nodes[sender], writer_domain=me, rank=topo.rank))
            except Exception as e:  # noqa: BLE001 - reported, never raised
                record["error"] = describe_error(e)["message"]
            out.append(record)
        senders = sorted(d for d, keeper in self.partner_of.items() if keeper == me)
        if self._background and partner is not None:
            sending = threading.Thread(target=send, name="tierpoint-replicate-send",
                                       daemon=True)
            sending.start()
            for sender in senders:
                receive(sender)
            sending.join()
        else:
            for saved, keeper in self._in_turn:
                if saved == me:
                    send()
                elif keeper == me:
                    receive(saved)
        for record in out:
            record["from_node"], record["to_node"] = (self.nodes[record["from"]],
                                                      self.nodes[record["to"]])
        return out


def _merged(found) -> list[dict]:
    """Rank 0: every leader's transfer records, one per (saved domain, keeper): the
    keeper's record with the sender's error, if any, added."""
    merged: dict[tuple, dict] = {}
    for records in found:
        for r in records or []:
            merged.setdefault((r["from"], r["to"]), {}).update(
                {k: v for k, v in r.items() if v is not None})
    return [merged[k] for k in sorted(merged)]


def _failure_text(step: int, o: dict) -> str:
    where = o.get("directory", "its partner's local tier")
    # A sender's failure reaches its keeper too, which then reports the same: say it once.
    why = o.get("send_error") or o.get("error")
    return (f"the replica of step {step} of node {o['from_node']} (domain {o['from']}) on "
            f"node {o['to_node']} ({where}) failed: {why}; the checkpoint is committed and "
            f"kept on node {o['from_node']}, and the next save replicates its own step")
