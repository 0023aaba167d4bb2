"""A run's audit log wherever it lives: ``open_log`` picks the store (trust/audit.py's file,
trust/s3audit.py's objects) from the log's location, so callers (api.py, the command line)
never branch on the kind."""
from __future__ import annotations

from ..tiers.s3store import is_url
from .audit import AuditLog
from .s3audit import S3AuditLog


def open_log(where: str, key: bytes | None = None, user: str = "",
             fallback: str | None = None):
    """The run's audit log at ``where``: a run directory (``AuditLog``, ``audit.jsonl``) or
    the run's URL on an object store (``s3://BUCKET/PREFIX/RUN``: ``S3AuditLog``, one object
    per record). ``fallback``: a local run directory to log to while ``where`` cannot be
    written. Both have ``append``, ``exists``, ``head``, ``records``, ``verify`` and ``path``."""
    if is_url(where):
        return S3AuditLog(where, key, user, fallback=fallback)
    return AuditLog(where, key, user, fallback=fallback)
