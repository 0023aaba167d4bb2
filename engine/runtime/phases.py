"""One phase of a collective operation: run the local part, then agree on the outcome.

Who calls: every rank of the communicator, in the same order. ``run`` returns every rank's
result (on every rank, or with ``collect="root"`` on rank 0 only: the other ranks then
receive only the verdict, O(1) bytes), or raises the same CheckpointError on every rank
when any rank failed.
"""
from __future__ import annotations

import errno
import time

from ..errors import TierFullError
from .channel import Broadcast, Scatter, _rebuild, condense_outcomes, describe_error

FULL = (errno.ENOSPC, errno.EDQUOT)


def _classified(error: BaseException) -> BaseException:
    """A full device becomes one class on every rank, so all treat it alike."""
    if isinstance(error, OSError) and error.errno in FULL:
        return TierFullError(f"{error}; free space on that device (on the local tier: lower "
                             "keep_local, or use a bigger device). Nothing was committed; "
                             "earlier checkpoints are intact")
    return error


def decided(comm, answer):
    """Rank 0's side of ``PhaseRunner.decide``, from the domains' condensed outcomes: the
    failures, or ``answer(every rank's result)`` for every rank."""
    def run(combined):
        failed, values = comm.expand_outcomes(combined)
        if failed:
            return Broadcast({"failed": failed})
        return Broadcast({"v": answer(values)})
    return run


def led(answer):
    """Rank 0's side of ``PhaseRunner.lead``: the failures, or each domain its reply from
    ``answer(one leader's result per domain)``."""
    def run(combined):
        failed = sorted(tuple(f) for c in combined for f in c.get("failed", ()))
        if failed:
            return Broadcast({"failed": failed})
        return Scatter([{"v": r} for r in answer([c["v"] for c in combined])])
    return run


def scattered(answer):
    """Rank 0's side of ``PhaseRunner.scatter``, from every rank's outcome: the failures,
    or ``answer(every rank's result)``'s reply for each rank."""
    def run(outcomes):
        failed = sorted((r, o["error"]) for r, o in enumerate(outcomes) if not o["ok"])
        if failed:
            return Broadcast({"failed": failed})
        return Scatter([{"v": v} for v in answer([o["value"] for o in outcomes])])
    return run


def relayed(values: list) -> list:
    """Rank 0's side of ``PhaseRunner.share``: each domain gets its leader's decision."""
    return values


class DomainDecision:
    """A domain leader's side of ``PhaseRunner.share``: its ranks' failures, or
    ``decide(ranks, results)`` for the domain."""

    def __init__(self, decide):
        self.decide = decide

    def __call__(self, ranks: list[int], outcomes: list[dict]) -> dict:
        failed = [(r, o["error"]) for r, o in zip(ranks, outcomes) if not o["ok"]]
        if failed:
            return {"failed": failed}
        return {"v": self.decide(ranks, [o["value"] for o in outcomes])}


def leader_result(ranks: list[int], outcomes: list[dict]) -> dict:
    """A domain leader's condensation for ``PhaseRunner.lead``: its ranks' failures, or its
    own result (the others' are None)."""
    failed = [(r, o["error"]) for r, o in zip(ranks, outcomes) if not o["ok"]]
    return {"failed": failed} if failed else {"v": outcomes[0]["value"]}


class PhaseRunner:
    """Runs one phase of a collective operation on this rank and agrees on its outcome:
    returns every rank's result, or raises the same CheckpointError on every rank."""

    def __init__(self, comm, what: str, timeout: float):
        self.comm, self.what, self.timeout = comm, what, timeout
        self.seconds: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def run(self, name: str, fn, *, collect: str = "all"):
        t = time.perf_counter()
        try:
            result, error = fn(), None
        except Exception as e:  # noqa: BLE001 - every failure must reach every rank
            result, error = None, _classified(e)
        values = self.comm.agree(error, what=self.what, value=result, timeout=self.timeout,
                                 collect=collect)
        self.seconds[name] = time.perf_counter() - t
        return values

    def _outcome(self, fn) -> dict:
        try:
            return {"ok": True, "value": fn()}
        except Exception as e:  # noqa: BLE001 - every failure must reach every rank
            return {"ok": False, "error": describe_error(_classified(e))}

    def _reply(self, name: str, t: float, reply):
        self.seconds[name] = time.perf_counter() - t
        if "failed" in reply:
            raise _rebuild(self.what, [tuple(f) for f in reply["failed"]])
        return reply["v"]

    def decide(self, name: str, fn, answer):
        """Run ``fn`` here; rank 0 gathers every rank's result and ``answer(results)``
        decides; every rank gets the decision (O(1) bytes per rank besides its own result),
        or the same CheckpointError when any rank's ``fn`` or rank 0's ``answer`` failed.
        The domains' leaders condense their ranks' outcomes (runtime/channel.py's
        ``condense_outcomes``), so rank 0 handles one message per domain."""
        t = time.perf_counter()
        _, reply = self.comm.collect(self._outcome(fn), what=self.what, timeout=self.timeout,
                                     answer=decided(self.comm, answer),
                                     combine=condense_outcomes)
        return self._reply(name, t, reply)

    def lead(self, name: str, fn, answer):
        """Run ``fn`` on every rank; only the domain leaders' results reach rank 0 (the other
        ranks' must be None: they report success or failure), and ``answer(one result per
        domain, in domain order)`` returns one reply per domain, which every rank of that
        domain gets: e.g. the seal, where each leader sends its domain's root and gets its
        domain's proof. Rank 0 handles one value per domain, never one per rank."""
        t = time.perf_counter()
        _, reply = self.comm.collect(self._outcome(fn), what=self.what, timeout=self.timeout,
                                     answer=led(answer), combine=leader_result)
        return self._reply(name, t, reply)

    def scatter(self, name: str, fn, answer):
        """Run ``fn`` here; rank 0 gathers every rank's result and ``answer(results)``
        returns one reply per rank, which that rank gets (e.g. whom it serves in a peer
        restore: restore/peerread.py); or the same CheckpointError on every rank."""
        t = time.perf_counter()
        _, reply = self.comm.collect(self._outcome(fn), what=self.what, timeout=self.timeout,
                                     answer=scattered(answer))
        return self._reply(name, t, reply)

    def share(self, name: str, fn, decide):
        """A decision taken inside each domain: every rank's ``fn()`` result reaches its
        domain's leader, which decides ``decide(ranks, results)`` for the domain; every rank
        of the domain gets that decision, rank 0 relaying one value per domain (e.g. which
        ranks of a node read its replicated leaves: restore/share.py)."""
        t = time.perf_counter()
        _, reply = self.comm.collect(self._outcome(fn), what=self.what, timeout=self.timeout,
                                     answer=led(relayed), combine=DomainDecision(decide))
        return self._reply(name, t, reply)

    def total(self) -> float:
        return time.perf_counter() - self._t0
