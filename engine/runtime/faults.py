"""Fault injection for tests: make one rank fail, die or hang at a named point of a save, a
drain or a retention pass.

Enabled only by the environment variable ``TIERPOINT_FAULT`` (read at every call, so a test
sets it for the ranks it launches); without it every ``inject`` is a dictionary lookup.

    TIERPOINT_FAULT="<point>[:rank=R][:step=S][:at=N][:kind=K]"

``point`` is one of ``POINTS``:

- ``snapshot``: a save's copy into host memory (the trainer's thread);
- ``write``: before each chunk file a rank writes; ``manifest``: before a directory's
  manifest; ``commit``: before a directory's commit marker;
- ``drain``: before each chunk a drain reads; ``drain-merge``: before the capacity head is
  merged; ``drain-commit``: after the capacity manifest, before its marker;
  ``drain-upload``: the S3 tier, as the bytes of a part's object uploads go out (in the
  transfer's threads, several times per object; inside a multipart upload; ``rank`` is the
  aggregator's index there); ``drain-committed``: after the capacity marker, before
  the drain's local records, retention and audit record;
- ``replicate-send``: before each chunk a node's leader sends to its partner node's leader
  (Policy replicas=1); ``replicate-commit``: the partner's leader, after every file of the
  replica is written and fsynced, before the replica's commit marker;
- ``retire``: local retention, after a step directory was renamed away, before its files
  are deleted; ``capacity-retire``: capacity retention, after the marker was removed,
  before the files are.

``rank`` and ``step`` restrict where it fires (default: everywhere, every time); ``at=N``
fires only the N-th time this process reaches the point with that rank and step.
``kind`` is ``enospc`` (default: an ``OSError(ENOSPC)``, as a full disk gives), ``error`` (a
RuntimeError), ``exit`` (the process ends at once with status 17), ``kill`` (SIGKILL to this
process: a rank dies without a word), ``hang`` (this thread blocks forever: a
rank that stops answering) or ``run`` (runs the shell command in ``TIERPOINT_FAULT_RUN``,
e.g. an unmount, and carries on; the tests kill the whole job this way, tests/jobkill.py).
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading

from ..options import fault_command, fault_spec

POINTS = ("snapshot", "write", "manifest", "commit", "drain", "drain-merge", "drain-commit",
          "drain-upload", "drain-committed", "replicate-send", "replicate-commit", "retire",
          "capacity-retire")
KINDS = ("enospc", "error", "exit", "kill", "hang", "run")

_reached: dict[tuple, int] = {}
_lock = threading.Lock()


def parse(text: str) -> dict:
    point, *fields = text.split(":")
    if point not in POINTS:
        raise ValueError(f"TIERPOINT_FAULT: unknown point {point!r}; one of {', '.join(POINTS)}")
    spec = {"point": point, "kind": "enospc"}
    for field in fields:
        key, _, value = field.partition("=")
        if key in ("rank", "step", "at"):
            spec[key] = int(value)
        elif key == "kind" and value in KINDS:
            spec[key] = value
        else:
            raise ValueError(f"TIERPOINT_FAULT: cannot read {field!r} in {text!r}; fields are "
                             f"rank=, step=, at= and kind= (one of {', '.join(KINDS)})")
    return spec


def inject(point: str, *, rank: int, step: int) -> None:
    """Fail here if ``TIERPOINT_FAULT`` names this point (and this rank, step and count)."""
    text = fault_spec()
    if not text:
        return
    spec = parse(text)
    if spec["point"] != point or spec.get("rank", rank) != rank or spec.get("step", step) != step:
        return
    if "at" in spec:
        with _lock:  # writer threads reach "write" concurrently
            count = _reached[(point, rank, step)] = _reached.get((point, rank, step), 0) + 1
        if count != spec["at"]:
            return
    where = f"injected fault at {point} (rank {rank}, step {step})"
    kind = spec["kind"]
    if kind == "exit":
        os._exit(17)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        threading.Event().wait()
    if kind == "run":
        subprocess.run(fault_command(), shell=True, check=False)
        return
    if kind == "error":
        raise RuntimeError(where)
    raise OSError(errno.ENOSPC, f"No space left on device ({where})")
