"""Checkpoints on a clock: when a save is due (``Checkpointer.due``) and when a save is also
drained (``Policy.drain_every_seconds``), by rank 0's clock.

Only rank 0's clock counts. The ranks' clocks differ, and every rank must act at the same
step; so rank 0 decides, and every rank receives its decision in the same collective: for
``due``, one native max-allreduce of three integers per call (``agree_due``: about 20 us on
4 ranks here, against milliseconds for the JSON relay of the other collectives); for the
drain rule, the save's declare phase, which runs anyway (save/coordinate.py ``decide_save``
reads rank 0's ``drain_clock`` flag).

The save clock is monotonic and starts when the Checkpointer is made; every save restarts
it. The drain clock is wall time, since it may start from the newest capacity copy's save
time (its manifest's ``unix_time``, written by an earlier job): a job restarted more often
than ``drain_every_seconds`` still drains. Every drain a save starts restarts it.
"""
from __future__ import annotations

import time
from typing import Callable

from ..errors import ConfigurationError


class SaveClock:
    """Rank 0's clocks (the other ranks keep one too, unused). ``now``/``wall`` are
    injectable for tests of the pure rules."""

    def __init__(self, policy, *, now: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.policy = policy
        self._now, self._wall = now, wall
        self._last_save = now()
        self._started_wall = wall()
        self._last_drain: float | None = None  # wall time; None until first asked

    def save_due(self) -> bool:
        """Whether ``every_seconds`` have passed since the last save (or the start)."""
        every = self.policy.every_seconds
        return every is not None and self._now() - self._last_save >= every

    def saved(self) -> None:
        self._last_save = self._now()

    def drain_due(self, newest_capacity_time: Callable[[], float | None]) -> bool:
        """Whether ``drain_every_seconds`` have passed since the last drain started. The
        first time, the clock starts at ``newest_capacity_time()`` (the newest capacity
        copy's save time, None without one), else at the Checkpointer's start."""
        every = self.policy.drain_every_seconds
        if every is None:
            return False
        if self._last_drain is None:
            known = newest_capacity_time()
            self._last_drain = known if known is not None else self._started_wall
        return self._wall() - self._last_drain >= every

    def drain_started(self) -> None:
        self._last_drain = self._wall()


def agree_due(comm, clock: SaveClock, step: int, timeout: float) -> bool:
    """Every rank's ``Checkpointer.due(step)``: one native max-allreduce of three int64
    (the step, its negation, rank 0's verdict), O(log ranks), whatever the number of
    arrays. Every rank receives the same numbers, so every rank raises the same
    ConfigurationError when the ranks are not at the same step (a save then would not be
    one checkpoint)."""
    verdict = 1 if comm.rank == 0 and clock.save_due() else 0
    high, minus_low, due = comm.allreduce_max([step, -step, verdict], what=f"due({step})",
                                              timeout=timeout)
    if high != -minus_low:
        raise ConfigurationError(
            f"due(step): the ranks called it at different steps ({-minus_low} to {high}); "
            "every rank must call it at every step, with the same step number")
    return bool(due)


def check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ConfigurationError(f"due: step must be an integer >= 0, not {step!r}")
    return step
