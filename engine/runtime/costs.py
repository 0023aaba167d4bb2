"""What each step of a save's data path cost: CPU seconds, busy seconds and bytes, per phase.

A save's threads (the snapshot's copy threads, the writer threads, the save job's thread)
add to one :class:`PhaseCosts` as they work; the save's handle reports it
(``handle.stats["costs"]``), so a benchmark can print CPU seconds per GiB of each phase.

Definitions, per phase:
- ``cpu_seconds``: CPU time of the threads while in the phase (``time.thread_time``: the
  calling thread's user + system time, so a write's copy into the page cache counts, the
  disk's own time does not);
- ``busy_seconds``: the threads' elapsed time in the phase, summed over threads (with 4
  writer threads it can exceed the save's wall time; an fsync shows as busy, not CPU);
- ``bytes``: the bytes the phase went over; ``calls``: how often it ran.

Adding is thread-safe; what is measured is a whole call (a chunk's SHA-256, one file's
write), so the lock is taken once per call, not per byte.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

PHASES = ("copy", "crc32c", "hash", "fingerprint", "write", "writeback", "fsync", "sync")


class PhaseCosts:
    """Thread-safe sums of cost per phase (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: dict[str, list] = {}

    def add(self, phase: str, cpu: float, busy: float, nbytes: int = 0) -> None:
        with self._lock:
            sums = self._sums.setdefault(phase, [0.0, 0.0, 0, 0])
            sums[0] += cpu
            sums[1] += busy
            sums[2] += nbytes
            sums[3] += 1

    @contextmanager
    def measure(self, phase: str, nbytes: int = 0):
        """Add the CPU and elapsed time of the ``with`` body to ``phase`` (also when it
        raises: the time was spent)."""
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.thread_time() - cpu, time.perf_counter() - wall, nbytes)

    def as_dict(self) -> dict:
        """{phase: {"cpu_seconds", "busy_seconds", "bytes", "calls"}}, phases in data-path
        order (the known ones first)."""
        with self._lock:
            sums = {k: list(v) for k, v in self._sums.items()}
        order = [p for p in PHASES if p in sums] + sorted(set(sums) - set(PHASES))
        return {p: {"cpu_seconds": sums[p][0], "busy_seconds": sums[p][1],
                    "bytes": sums[p][2], "calls": sums[p][3]} for p in order}


class Laps:
    """Consecutive steps of one thread's work, each added to its phase of ``costs`` (None:
    nothing is measured): ``lap(phase, nbytes)`` ends the step begun at the last lap (or
    at construction)."""

    def __init__(self, costs: PhaseCosts | None):
        self.costs = costs
        if costs is not None:
            self.cpu, self.wall = time.thread_time(), time.perf_counter()

    def lap(self, phase: str, nbytes: int = 0) -> None:
        if self.costs is None:
            return
        cpu, wall = time.thread_time(), time.perf_counter()
        self.costs.add(phase, cpu - self.cpu, wall - self.wall, nbytes)
        self.cpu, self.wall = cpu, wall


@contextmanager
def measured(costs: PhaseCosts | None, phase: str, nbytes: int = 0):
    """``costs.measure(phase, nbytes)``, or nothing when ``costs`` is None."""
    if costs is None:
        yield
    else:
        with costs.measure(phase, nbytes):
            yield
