"""Kill a whole MPI job at once, for the fault tests: the launcher (``mpiexec``, ``mpirun``) and
every process below it. Test-only, so it lives here and not in the engine.

- ``kill_job()`` from a rank (a timer in tests/workers/fault_worker.py);
- ``python tests/jobkill.py`` as the command of an engine fault point (``kind=run``):
  ``fault_env`` turns a ``kind=killjob`` spec into that, so a test can say
  ``TIERPOINT_FAULT="drain:step=4:kind=killjob"``. Not under ``srun``, whose tasks are not the
  launcher's children.
"""
from __future__ import annotations

import os
import signal
import sys

LAUNCHERS = ("mpiexec", "mpirun")


def fault_env(env: dict | None) -> dict | None:
    """``env`` with a ``kind=killjob`` TIERPOINT_FAULT spec made an engine ``kind=run`` fault
    whose command is this file (the same point, rank, step and count)."""
    spec = (env or {}).get("TIERPOINT_FAULT", "")
    if not spec.endswith(":kind=killjob"):
        return env
    return dict(env, TIERPOINT_FAULT=spec[:-len("killjob")] + "run",
                TIERPOINT_FAULT_RUN=f"{sys.executable} {os.path.abspath(__file__)}")

def kill_job() -> None:
    """SIGKILL the launcher this rank runs under (``mpiexec``, ``mpirun``) and every process
    below it, this one last: the whole job dies at once. MPI launchers give each rank a
    session of its own, so the job is found by walking up the process tree."""
    parents, names = {}, {}
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parents[pid] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:  # a launcher may be a script
                names[pid] = " ".join(os.path.basename(a.decode(errors="replace"))
                                      for a in f.read().split(b"\0")[:2])
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    launcher = os.getpid()
    while launcher in parents and not any(n in names.get(launcher, "") for n in LAUNCHERS):
        launcher = parents[launcher]
    if launcher not in parents:
        raise RuntimeError("kill_job: this process does not run under "
                           f"a launcher ({', '.join(LAUNCHERS)})")
    levels, frontier = [], [launcher]
    while frontier:
        levels.append(frontier)
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
    # The ranks first, the launcher last: a rank whose launcher or proxy died may be ended
    # by MPI at once, and this one must not go before the others are dead. Another rank may
    # be running this file at the same moment (a fault point every rank reaches): the two
    # must not kill each other before the ranks (they did: both died, the job ran on), so
    # neither kills the other; each ends itself last.
    peers = {pid for pid, name in names.items() if os.path.basename(__file__) in name}
    for level in reversed(levels):
        for pid in level:
            if pid != os.getpid() and pid not in peers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    kill_job()
