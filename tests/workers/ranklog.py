"""A per-rank log file for MPI test workers, for failures that leave no output.

When one rank dies, mpiexec (hydra) kills the others and reports one of the *killed* ranks'
pids ("EXIT CODE: 9"), and may drop what the failing rank wrote last. So with
``RANK_LOG_DIR`` set, each rank writes ``<dir>/<tag>-rank<R>.log`` itself: the lines passed
to :func:`note`, an uncaught exception's traceback, and (through faulthandler) the Python
stacks of every thread on SIGSEGV, SIGABRT, SIGBUS, SIGFPE or SIGILL. Without the variable
everything here is a no-op. :func:`collect` reads them back for a test's failure message.
"""
from __future__ import annotations

import faulthandler
import glob
import os
import sys
import time
import traceback

_file = None


def start(tag: str, rank: int) -> None:
    global _file
    where = os.environ.get("RANK_LOG_DIR")
    if not where:
        return
    os.makedirs(where, exist_ok=True)
    _file = open(os.path.join(where, f"{tag}-rank{rank}.log"), "a", buffering=1)
    faulthandler.enable(file=_file, all_threads=True)
    previous = sys.excepthook

    def hook(kind, value, tb):
        note("uncaught exception:\n" + "".join(traceback.format_exception(kind, value, tb)))
        previous(kind, value, tb)
    sys.excepthook = hook
    note(f"pid {os.getpid()} started")


def note(line: str) -> None:
    """One line (with the time) in this rank's log; written through at once."""
    if _file is not None:
        _file.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        _file.flush()
        os.fsync(_file.fileno())


def collect(where: str) -> str:
    """Every rank log under ``where``, one after another, for a failure message."""
    parts = []
    for path in sorted(glob.glob(os.path.join(where, "*.log"))):
        with open(path, errors="replace") as f:
            parts.append(f"--- {os.path.basename(path)}\n{f.read()}")
    return "\n".join(parts) or f"(no rank logs under {where})"
