"""Preemption: learn that the job is about to end (Slurm's ``--signal=B:USR1@120``, a SIGTERM
from the scheduler), and let every rank agree on the step at which to save and stop.

A signal handler only sets a flag: no I/O, no collective, nothing that can deadlock inside a
handler. The trainer asks at a step boundary; ``Checkpointer.stop_requested()`` turns the
ranks' flags into one decision (one small collective), because a signal reaches the ranks at
slightly different times and they must all save the same step.

``Checkpointer.handle_preemption``, ``preempted`` and ``stop_requested`` delegate to the
``PreemptionFlag`` the Checkpointer holds.
"""
from __future__ import annotations

import signal
import threading


class PreemptionFlag:
    """Set by the installed signal handlers; read by the trainer (not collective)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def install(self, signals) -> None:
        """Install the handlers (Python only allows this in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("install preemption handlers from the main thread (Python "
                               "delivers signals there)")
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        # Only set a flag: the trainer acts on it at its next step boundary.
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()
