"""Preemption: learn that the job is about to end (Slurm's ``--signal=B:USR1@120``, a SIGTERM
from the scheduler), and let every rank agree on the step at which to save and stop.

A signal handler only sets a flag: no I/O, no collective, nothing that can deadlock inside a
handler. The trainer asks at a step boundary; ``Checkpointer.stop_requested()`` turns the
ranks' flags into one decision (one small collective), because a signal reaches the ranks at
slightly different times and they must all save the same step.
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


class PreemptionOps:
    """The preemption methods of ``Checkpointer`` (mixed in; uses its ``_preemption`` flag
    and communicator)."""

    def handle_preemption(self, signals=(signal.SIGUSR1, signal.SIGTERM)):
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
        """Whether any rank was signalled (collective: one small allgather). All ranks get
        the same answer, so they stop at the same step."""
        self._check_open()
        flags = self._comm.agree(None, what="preemption check", timeout=self.options.timeout,
                                 value=self._preemption.is_set)
        return any(flags)
