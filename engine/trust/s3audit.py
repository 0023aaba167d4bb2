"""The audit log of a run on an S3 capacity tier: one object per record.

    <prefix>/<run>/audit/000000000000, 000000000001, ...   record seq 0, 1, ... (its bytes)

An object cannot be appended to, and a log rewritten whole on every append would lose
records to concurrent writers (and cost its whole size per record). So each record is an
object of its own, named by its ``seq`` zero-padded (names sort as numbers), holding exactly
the bytes a line of the POSIX log holds (trust/audit.py ``chain_record``): the same fields,
``prev`` the SHA-256 of the previous record's bytes, ``hash`` and, with a key, ``hmac``. The
checks are the POSIX log's (``chain_problems``), plus the names: an object whose name is no
sequence number, or another than its record's ``seq``, is reported.

Appends (rank 0 during a job, and command-line processes such as ``tierpoint verify`` and
``drain`` at the same time) need no lock: an appender reads the newest record (a listing
after the newest it knows, then that object), builds the next one and creates its object
with a conditional PUT (``If-None-Match: *``): of two appenders racing for one number
exactly one PUT succeeds, the other reads the new newest record and tries the next number.
So no record is lost or forked, and the chain stays linear. (SeaweedFS answers the second
PUT 412 PreconditionFailed, tested in tests/test_s3_audit.py; AWS S3 and MinIO honour the
header too. A server that ignored it would let a racing appender overwrite a record; the
chain check then reports the break.)

Removing the newest records leaves a shorter valid chain, as on POSIX: the commit markers'
references (trust/auditcheck.py) catch it.
"""
from __future__ import annotations

import json
import socket
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

from ..errors import CheckpointError, CheckpointWarning
from ..tiers.s3store import Location, bucket
from .audit import AuditLog, chain_problems, chain_record, record_fields

AUDIT_DIR = "audit"
_DIGITS = 12
_RACES = 1000  # appenders racing for one number: each loss means another's record went in
_READERS = 16  # concurrent GETs when the whole log is read
OUTAGE_S = 60.0  # after a failed append, how long records go to the fallback untried


def _seq_of(name: str) -> int | None:
    return int(name) if len(name) == _DIGITS and name.isdigit() else None


class S3AuditLog:
    """Appends records to one run's audit log on S3 (``url``: the run's URL,
    ``s3://BUCKET/PREFIX/RUN``), as ``AuditLog`` does to a file. ``fallback``: a local run
    directory whose POSIX log takes the records while the bucket cannot be written (a
    warning says so; ``tierpoint audit verify`` of that log shows them)."""

    def __init__(self, url: str, key: bytes | None = None, user: str = "",
                 fallback: str | None = None):
        self.location = Location.parse(url)
        self.bucket = bucket(self.location.bucket)
        self.prefix = self.location.key(AUDIT_DIR) + "/"
        self.key, self.user, self.fallback = key, user, fallback
        self.host = socket.gethostname()
        self._newest: tuple[int, bytes] | None = None  # the newest record this object saw
        self._down_until = 0.0  # monotonic time until which records go to the fallback

    @property
    def path(self) -> str:
        """The log's URL (messages name it)."""
        return f"s3://{self.bucket.name}/{self.prefix}"

    def _name(self, seq: int) -> str:
        return f"{self.prefix}{seq:0{_DIGITS}d}"

    # ---- appending ----

    def append(self, event: str, *, run: str, step: int | None = None, digest: str = "",
               detail=None) -> dict:
        """Append one record; while the bucket cannot be written, to the fallback's log (a
        warning when that begins; for ``OUTAGE_S`` the bucket is not tried again, so that
        saves do not wait on a dead endpoint for every record)."""
        fields = record_fields(event, user=self.user, host=self.host, run=run, step=step,
                               digest=digest, detail=detail)
        if self.fallback is None or time.monotonic() >= self._down_until:
            try:
                return self._append(fields)
            except CheckpointError as e:
                if self.fallback is None:
                    raise
                self._down_until = time.monotonic() + OUTAGE_S
                warnings.warn(f"tierpoint: the audit log {self.path} cannot be written, so its "
                              f"records (from {event!r} of step {step} on) go to the local log "
                              f"in {self.fallback} for the next {OUTAGE_S:.0f} s: {e}",
                              CheckpointWarning, stacklevel=2)
        return AuditLog(self.fallback, self.key, self.user).append(
            event, run=run, step=step, digest=digest, detail=detail)

    def _append(self, fields: dict) -> dict:
        for _ in range(_RACES):
            last = self._read_newest()
            record, data = chain_record(last[1] if last else None, fields, self.key)
            if self.bucket.create(self._name(record["seq"]), data):
                self._newest = (record["seq"], data)
                return record
            # Another appender took this number first: chain after its record.
        raise CheckpointError(f"audit log {self.path} (endpoint {self.bucket.endpoint}): "
                              f"{_RACES} appends in a row lost the race for the next record; "
                              "too many concurrent writers")

    def _read_newest(self) -> tuple[int, bytes] | None:
        """(seq, bytes) of the newest record: the listing after the newest one this object
        knows (all of it the first time), then that object."""
        after = self._name(self._newest[0]) if self._newest else None
        objects = self.bucket.list(self.prefix, start_after=after)[0]
        seqs = [s for s in (_seq_of(o["Key"][len(self.prefix):]) for o in objects)
                if s is not None]
        if not seqs:
            return self._newest
        seq = max(seqs)
        data = self.bucket.get(self._name(seq))
        if data is None:  # deleted between the listing and the read: list again
            self._newest = None
            return self._read_newest()
        self._newest = (seq, data)
        return self._newest

    def head(self) -> tuple[int, str] | None:
        """(seq, hash) of the newest record (None: no record yet, or the records go to the
        fallback now: a commit marker then records no reference to this log)."""
        if self.fallback is not None and time.monotonic() < self._down_until:
            return None
        newest = self._read_newest()
        if newest is None:
            return None
        return newest[0], json.loads(newest[1])["hash"]

    # ---- reading ----

    def exists(self) -> bool:
        """Whether the log holds any object."""
        return self.bucket.check(self.prefix)

    def entries(self) -> list[tuple[str, bytes]]:
        """(object name, bytes) of every object of the log, in name order."""
        names = sorted(o["Key"] for o in self.bucket.list(self.prefix)[0])
        with ThreadPoolExecutor(_READERS) as pool:
            data = list(pool.map(self.bucket.get, names))
        return [(n, d) for n, d in zip(names, data) if d is not None]

    def records(self) -> list[dict]:
        """The records (unverified; ValueError for an object that is not JSON)."""
        return [json.loads(d) for _, d in self.entries()]

    def verify(self, key: bytes | None = None) -> tuple[int, list[str]]:
        """(records read, problems): the chain's checks, and each object's name."""
        entries = self.entries()
        problems = []
        for name, data in entries:
            seq = _seq_of(name[len(self.prefix):])
            if seq is None:
                problems.append(f"s3://{self.bucket.name}/{name}: not an audit record's name "
                                "(an object was added to the log)")
                continue
            try:
                said = json.loads(data).get("seq")
            except (ValueError, AttributeError):
                continue  # not a record: chain_problems names it
            if said != seq:
                problems.append(f"s3://{self.bucket.name}/{name}: holds record #{said} "
                                "(an object was renamed or copied)")
        problems += chain_problems([(f"s3://{self.bucket.name}/{n}", d) for n, d in entries
                                    if _seq_of(n[len(self.prefix):]) is not None], key)
        return len(entries), problems
