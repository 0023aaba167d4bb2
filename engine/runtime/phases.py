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

FULL = (errno.ENOSPC, errno.EDQUOT)


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
        except OSError as e:
            result, error = None, e
            if e.errno in FULL:  # one class on every rank, so all treat it alike
                error = TierFullError(f"{e}; free space on that device (on the local tier: "
                                      "lower keep_local, or use a bigger device). Nothing "
                                      "was committed; earlier checkpoints are intact")
        except Exception as e:  # noqa: BLE001 - every failure must reach every rank
            result, error = None, e
        values = self.comm.agree(error, what=self.what, value=result, timeout=self.timeout,
                                 collect=collect)
        self.seconds[name] = time.perf_counter() - t
        return values

    def total(self) -> float:
        return time.perf_counter() - self._t0
