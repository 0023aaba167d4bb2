"""The read API: ``tierpoint.open(PATH_OR_ROOT, step=None, *, run=None)``, a read-only view of
one committed checkpoint for notebooks and scripts (arrays with their shapes, dtypes and
fingerprints, JSON values, metadata, lineage; slices of arrays read as numpy or torch, every
chunk they touch checked), on any tier, in one process, without MPI.

    view = tierpoint.open("/pool/ckpt/my-run")          # the newest committed step
    w = view["model/layers/0/w"][100:200]                # numpy; bfloat16 via ml_dtypes
    old = view.at(view.steps()[0])["model/layers/0/w"][100:200]
    s3 = tierpoint.open("s3://bucket/ckpt", run="my-run")  # an S3 capacity tier, the same way

Modules: locate.py (which step directory or step URL a path or URL, step and run name),
index.py (numpy basic indexing as a box, pure), reader.py (the reads of a box: the restore's
planning and reads, unchanged), values.py (stored bits as numpy or torch values),
checkpoint.py (the views).

May import: runtime, format, tiers and restore (the view reads as a restore reads); trust and
the command line import it (``tierpoint info``/``diff`` are built on it).
"""
from __future__ import annotations

import os

from ..options import Options
from .checkpoint import ArrayView, CheckpointView
from .locate import locate


def open(path: str | os.PathLike, step: int | None = None, *, run: str | None = None,  # noqa: A001
         torch: bool = False, io_threads: int | None = None) -> CheckpointView:
    """A read-only view of a committed checkpoint.

    ``path``: a step directory (``ROOT/RUN/step_<8 digits>``), a run directory (``ROOT/RUN``)
    or a tier root (``ROOT``, with ``run=`` where it holds several runs), on the node-local
    tier or the capacity tier (its first pool), or the same on an object store by URL (a
    step URL, a run URL ``s3://BUCKET/PREFIX/RUN``, or the root ``s3://BUCKET/PREFIX`` the
    tier was given as ``persistent=``); ``step``: the step to open (None: the newest
    committed one; with a step directory or URL, None or its own step). ``torch=True``: indexing an
    array returns CPU torch tensors instead of numpy arrays. ``io_threads``: reader threads
    per read (default: the ``io_threads`` setting, options.py).

    Raises CheckpointNotFoundError for a path or step that holds no committed checkpoint,
    ConfigurationError for arguments that contradict the path, CorruptCheckpointError for a
    damaged manifest, FormatVersionError for a format this tierpoint does not read."""
    threads = Options.from_env(io_threads=io_threads).io_threads
    return CheckpointView(locate(path, step, run), as_torch=torch, threads=threads)


__all__ = ["open", "ArrayView", "CheckpointView"]
