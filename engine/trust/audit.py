"""The audit log of a run: append-only JSON lines, each record chained to the one before.

Location: ``<tier root>/<run>/audit.jsonl``, on the capacity tier's first pool when the
Checkpointer has one (on rank 0's local tier while that pool is missing), else on the local
tier of rank 0's node; on an S3 capacity tier, objects under ``<run>/audit/`` (trust/s3audit.py).
``tierpoint verify`` appends to the log of the tier it checked.

A record: ``seq`` (0, 1, 2, ...), ``prev`` (SHA-256 of the previous line's bytes; 64 zeros for
the first), ``time``, ``user``, ``host``, ``pid``, ``event`` (saved, committed, failed, drained,
verified, restored, deleted, exported: ``tierpoint export``, each file's SHA-256 in ``detail``),
``run``, ``step``, ``digest``, ``detail``; then ``hash`` (SHA-256 of the record without it)
and, when a key is configured, ``hmac`` (HMAC-SHA256 of the record with its hash). Lines are
canonical JSON (sorted keys, no spaces).

What ``verify_log`` detects: a changed record (its hash, and the next record's ``prev``), a
removed, inserted or reordered record (``seq`` and ``prev`` break). Without a key, someone who
rewrites a record *and* recomputes every later hash and link is not detected; with a key,
they cannot produce the HMACs. Removing the newest records leaves a shorter valid chain: the
commit markers of the checkpoints record their digests, which the log's ``committed``
records must then match (not cross-checked here).

Appends from several processes (ranks, a command-line drain or verify) hold an exclusive
``flock`` on the file while they read the last record and append theirs in one ``write``,
then fsync, so records never interleave and none is lost.

On an object store (``s3://`` capacity tier) the same records are objects, one per record
(trust/s3audit.py). What both stores share is here: a record built from the one before
(``chain_record``) and the checks of a sequence of records (``chain_problems``);
trust/logs.py ``open_log`` picks the store from where the log lives.
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import socket
import time
import warnings

from ..errors import CheckpointError, CheckpointWarning

AUDIT_FILE = "audit.jsonl"
GENESIS = "0" * 64
EVENTS = ("saved", "committed", "failed", "drained", "replicated", "verified", "restored",
          "deleted", "exported")
_TAIL = 1 << 16  # a record is far smaller: the last line is in the file's last 64 KiB


def _canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")


def read_key(path: str | None) -> bytes | None:
    """The HMAC key from a key file (its bytes, surrounding whitespace removed)."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except OSError as e:
        raise CheckpointError(f"audit key file {path}: {e.strerror}") from None
    if not key:
        raise CheckpointError(f"audit key file {path} is empty")
    return key


def chain_record(last: bytes | None, fields: dict, key: bytes | None) -> tuple[dict, bytes]:
    """The record after the one whose bytes are ``last`` (None: the first record), and its
    bytes: ``seq`` and ``prev`` from ``last``, then ``fields``, then its ``hash`` and, with a
    key, its ``hmac``. Both stores append exactly these bytes."""
    record = {"seq": 0 if last is None else json.loads(last)["seq"] + 1,
              "prev": GENESIS if last is None else hashlib.sha256(last).hexdigest(), **fields}
    record["hash"] = hashlib.sha256(_canonical(record)).hexdigest()
    if key is not None:
        record["hmac"] = hmac.new(key, _canonical(record), "sha256").hexdigest()
    return record, _canonical(record)


def record_fields(event: str, *, user: str, host: str, run: str, step: int | None,
                  digest: str, detail) -> dict:
    """The fields of a record after ``seq`` and ``prev`` (``event`` checked)."""
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "unix_time": time.time(), "user": user, "host": host, "pid": os.getpid(),
            "event": event, "run": run, "step": step, "digest": digest, "detail": detail}


def _last_line(fd: int) -> bytes | None:
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    start = max(0, size - _TAIL)
    data = os.pread(fd, size - start, start)
    lines = data.rstrip(b"\n").split(b"\n")
    return lines[-1]


class AuditLog:
    """Appends records to one run's audit log (``directory/audit.jsonl``).

    ``fallback``: a run directory to log to instead while ``directory``'s tier root is
    missing (a capacity pool not mounted: its path is never created here)."""

    def __init__(self, directory: str, key: bytes | None = None, user: str = "",
                 fallback: str | None = None):
        self.directory, self.fallback = directory, fallback
        self.key = key
        self.user = user
        self.host = socket.gethostname()

    @property
    def path(self) -> str:
        """The log appended to now: the primary unless its tier root is missing."""
        usable = os.path.isdir(os.path.dirname(os.path.abspath(self.directory)))
        return os.path.join(self.directory if usable or not self.fallback else self.fallback,
                            AUDIT_FILE)

    def append(self, event: str, *, run: str, step: int | None = None, digest: str = "",
               detail=None) -> dict:
        """Append one record (to the fallback log if the primary cannot be written)."""
        fields = record_fields(event, user=self.user, host=self.host, run=run, step=step,
                               digest=digest, detail=detail)
        path = self.path
        try:
            return self._append_at(path, fields)
        except OSError:
            fallback = os.path.join(self.fallback, AUDIT_FILE) if self.fallback else None
            if fallback is None or fallback == path:
                raise
            return self._append_at(fallback, fields)

    def exists(self) -> bool:
        """Whether the log appended to now holds a file (as S3AuditLog's ``exists``)."""
        return os.path.isfile(self.path)

    def verify(self, key: bytes | None = None) -> tuple[int, list[str]]:
        """``verify_log`` of the log appended to now."""
        return verify_log(self.path, key)

    def records(self) -> list[dict]:
        """The records of the log appended to now (unverified; ValueError for a line that is
        not JSON)."""
        return read_log(self.path)

    def head(self) -> tuple[int, str] | None:
        """(seq, hash) of the newest record of the log appended to now (None: empty or
        missing), read under the same lock as appends."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            last = _last_line(fd)
        finally:
            os.close(fd)
        if last is None:
            return None
        record = json.loads(last)
        return record["seq"], record["hash"]

    def _append_at(self, path: str, fields: dict) -> dict:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
            record, line = chain_record(_last_line(fd), fields, self.key)
            os.write(fd, line + b"\n")
            os.fsync(fd)
            return record
        finally:
            os.close(fd)


def verify_log(path: str, key: bytes | None = None) -> tuple[int, list[str]]:
    """(records read, problems) of the audit log at ``path``; no problems means intact."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return 0, [f"{path}: {e.strerror}"]
    problems = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        problems.append(f"{path}: the last record is cut short (no final newline)")
    problems += chain_problems([(f"{path} line {i + 1}", line) for i, line in enumerate(lines)],
                               key)
    return len(lines), problems


def chain_problems(entries: list[tuple[str, bytes]], key: bytes | None = None) -> list[str]:
    """The problems of a sequence of records, oldest first (``entries``: (where, its bytes),
    ``where`` naming it in messages): each must be a JSON record whose ``seq`` is its place,
    whose ``prev`` is the hash of the bytes before it, whose ``hash`` (and with a key
    ``hmac``) match it."""
    problems = []
    prev_line = None
    for i, (where, line) in enumerate(entries):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as e:
            problems.append(f"{where}: not a JSON record ({e})")
            prev_line = line
            continue
        if record.get("seq") != i:
            problems.append(f"{where}: seq {record.get('seq')!r}, expected {i} (a record was "
                            "removed, inserted or moved before it)")
        want_prev = GENESIS if prev_line is None else hashlib.sha256(prev_line).hexdigest()
        if record.get("prev") != want_prev:
            problems.append(f"{where}: does not chain to the record before it (that record "
                            "was changed, removed, inserted or reordered)")
        body = {k: v for k, v in record.items() if k not in ("hash", "hmac")}
        if record.get("hash") != hashlib.sha256(_canonical(body)).hexdigest():
            problems.append(f"{where}: its hash does not match its contents (the record was "
                            "changed)")
        if key is not None:
            signed = {k: v for k, v in record.items() if k != "hmac"}
            mac = hmac.new(key, _canonical(signed), "sha256").hexdigest()
            if not hmac.compare_digest(str(record.get("hmac", "")), mac):
                problems.append(f"{where}: HMAC missing or wrong (changed by someone without "
                                "the key)")
        prev_line = line
    return problems


def marker_mac(key: bytes, run: str, step: int, digest: str, head: dict) -> str:
    """The HMAC-SHA256 a commit marker carries over its audit reference."""
    body = {"run": run, "step": step, "digest": digest, "audit": head}
    return hmac.new(key, _canonical(body), "sha256").hexdigest()


def read_log(path: str) -> list[dict]:
    """The records of a log (unverified), for display."""
    with open(path, "rb") as f:
        return [json.loads(line) for line in f.read().split(b"\n") if line.strip()]


class RunAudit:
    """The run's audit log as the engine appends to it: rank 0 holds the log, every other
    rank a no-op. The Checkpointer hands this one value to the save job and the tiering, so
    they record events without a reference to the Checkpointer. A log that cannot be
    written is a warning: the checkpoint itself is not at stake."""

    def __init__(self, log, run: str, rank: int):  # log: AuditLog, S3AuditLog or None
        self.log, self.run, self.rank = log, run, rank

    def reference(self, step: int, digest: str) -> dict | None:
        """What a commit marker records of the log (rank 0; None elsewhere, or when the log
        cannot be read): its head ``{"seq", "hash"}`` at the commit, and with a key
        ``audit_hmac`` over the run, step, digest and head, so that someone without the key
        cannot rewrite the marker to fit a log cut short (``marker_problems``)."""
        if self.log is None:
            return None
        try:
            head = self.log.head()
        except (OSError, ValueError, KeyError, CheckpointError) as e:
            warnings.warn(f"tierpoint: rank {self.rank}: could not read the head of the audit "
                          f"log {self.log.path} for step {step}'s commit marker: {e}",
                          CheckpointWarning, stacklevel=2)
            return None
        if head is None:
            return None
        out = {"audit": {"seq": head[0], "hash": head[1]}}
        if self.log.key is not None:
            out["audit_hmac"] = marker_mac(self.log.key, self.run, step, digest, out["audit"])
        return out

    def event(self, event: str, step: int | None = None, digest: str = "",
              detail=None) -> None:
        if self.log is None:
            return
        try:
            self.log.append(event, run=self.run, step=step, digest=digest, detail=detail)
        except (OSError, ValueError, KeyError, CheckpointError) as e:  # unwritable, damaged
            warnings.warn(f"tierpoint: rank {self.rank}: could not append {event!r} to the "
                          f"audit log {self.log.path}: {e}", CheckpointWarning, stacklevel=2)
