"""Fault injection for tests: make one rank fail at a named point of a save or drain.

Enabled only by the environment variable ``TIERPOINT_FAULT`` (read once per call, so a test
sets it for the ranks it launches); without it every ``inject`` is a no-op dictionary lookup.

    TIERPOINT_FAULT="<point>[:rank=R][:step=S][:kind=K]"

``point`` is one of the names passed to :func:`inject` (``snapshot``, ``write``, ``manifest``,
``commit``); ``rank`` and ``step`` restrict where it fires (default: everywhere); ``kind`` is
``enospc`` (default: an ``OSError(ENOSPC)``, as a full disk gives), ``error`` (a
RuntimeError), or ``exit`` (the process ends at once with status 17, as a killed rank would).
"""
from __future__ import annotations

import errno
import os

POINTS = ("snapshot", "write", "manifest", "commit")
KINDS = ("enospc", "error", "exit")


def _parse(text: str) -> dict:
    point, *fields = text.split(":")
    if point not in POINTS:
        raise ValueError(f"TIERPOINT_FAULT: unknown point {point!r}; one of {', '.join(POINTS)}")
    spec = {"point": point, "kind": "enospc"}
    for field in fields:
        key, _, value = field.partition("=")
        if key in ("rank", "step"):
            spec[key] = int(value)
        elif key == "kind" and value in KINDS:
            spec[key] = value
        else:
            raise ValueError(f"TIERPOINT_FAULT: cannot read {field!r} in {text!r}")
    return spec


def inject(point: str, *, rank: int, step: int) -> None:
    """Fail here if ``TIERPOINT_FAULT`` names this point (and this rank and step)."""
    text = os.environ.get("TIERPOINT_FAULT")
    if not text:
        return
    spec = _parse(text)
    if spec["point"] != point or spec.get("rank", rank) != rank or spec.get("step", step) != step:
        return
    where = f"injected fault at {point} (rank {rank}, step {step})"
    if spec["kind"] == "exit":
        os._exit(17)
    if spec["kind"] == "error":
        raise RuntimeError(where)
    raise OSError(errno.ENOSPC, f"No space left on device ({where})")
