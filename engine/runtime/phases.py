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
from .comm import Broadcast, Scatter, _rebuild, describe_error

FULL = (errno.ENOSPC, errno.EDQUOT)


def _classified(error: BaseException) -> BaseException:
    """A full device becomes one class on every rank, so all treat it alike."""
    if isinstance(error, OSError) and error.errno in FULL:
        return TierFullError(f"{error}; free space on that device (on the local tier: lower "
                             "keep_local, or use a bigger device). Nothing was committed; "
                             "earlier checkpoints are intact")
    return error


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

    def decide(self, name: str, fn, answer):
        """Run ``fn`` here; rank 0 gathers every rank's result and ``answer(results)``
        decides; every rank gets the decision (O(1) bytes per rank besides its own result),
        or the same CheckpointError when any rank's ``fn`` or rank 0's ``answer`` failed."""
        t = time.perf_counter()
        try:
            mine = {"ok": True, "value": fn()}
        except Exception as e:  # noqa: BLE001 - every failure must reach every rank
            mine = {"ok": False, "error": describe_error(_classified(e))}

        def decided(outcomes):
            failed = [(r, o["error"]) for r, o in enumerate(outcomes) if not o["ok"]]
            if failed:
                return Broadcast({"failed": failed})
            return Broadcast({"v": answer([o["value"] for o in outcomes])})
        _, reply = self.comm.collect(mine, what=self.what, timeout=self.timeout,
                                     answer=decided)
        self.seconds[name] = time.perf_counter() - t
        if "failed" in reply:
            raise _rebuild(self.what, [tuple(f) for f in reply["failed"]])
        return reply["v"]

    def scatter(self, name: str, fn, answer):
        """Like ``decide``, but ``answer(results)`` returns one reply per rank (a list; a
        reply object shared by many ranks is encoded once): e.g. the seal, where the domain
        leaders get their domain's proof and every other rank the same small reply."""
        t = time.perf_counter()
        try:
            mine = {"ok": True, "value": fn()}
        except Exception as e:  # noqa: BLE001 - every failure must reach every rank
            mine = {"ok": False, "error": describe_error(_classified(e))}

        def answered(outcomes):
            failed = [(r, o["error"]) for r, o in enumerate(outcomes) if not o["ok"]]
            if failed:
                return Broadcast({"failed": failed})
            wrapped: dict[int, dict] = {}  # by the reply object's id: shared ones stay shared
            replies = answer([o.get("value") for o in outcomes])
            return Scatter([wrapped.setdefault(id(v), {"v": v}) for v in replies])
        _, reply = self.comm.collect(mine, what=self.what, timeout=self.timeout,
                                     answer=answered)
        self.seconds[name] = time.perf_counter() - t
        if "failed" in reply:
            raise _rebuild(self.what, [tuple(f) for f in reply["failed"]])
        return reply["v"]

    def total(self) -> float:
        return time.perf_counter() - self._t0
