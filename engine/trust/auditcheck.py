"""The audit log checked against the checkpoints it should record (``tierpoint audit verify``).

``verify_log`` (trust/audit.py) proves the chain of records; a log cut short (its newest
records removed) is still a valid chain. The checkpoints themselves prove what is missing:

- each commit marker written since the marker records the log's head at the commit
  (``audit: {seq, hash}``, from rank 0): the log must hold that record with that hash, or
  records at or before the commit were removed or rewritten;
- with a key, the marker's ``audit_hmac`` must match its reference (someone without the key
  cannot rewrite the marker to fit a shortened log);
- every committed checkpoint must appear in the log: a ``committed`` record of its step and
  digest (a save's copy), or a ``drained`` one (a capacity copy).

Markers written before this check existed carry no reference: only their commit records are
looked for. Pure functions of the records and the markers; the command line reads them.
"""
from __future__ import annotations

import hmac
import os

from ..format import layout
from .audit import marker_mac


def committed_markers(run_dir: str) -> list[tuple[str, dict]]:
    """(step directory, its marker) of every committed step directory of a run directory,
    or (step URL, its marker) of every committed step of a run on an object store (``run_dir``
    its URL, ``s3://BUCKET/PREFIX/RUN``), read through the tier."""
    from ..tiers.s3store import is_url
    if is_url(run_dir):
        from ..tiers.s3 import S3Tier
        return S3Tier.markers_at(run_dir)
    out = []
    if not os.path.isdir(run_dir):
        return out
    for name in sorted(os.listdir(run_dir)):
        if layout.parse_step_dir_name(name) is None:
            continue
        path = os.path.join(run_dir, name)
        marker = layout.read_commit_marker(path)
        if marker is not None:
            out.append((path, marker))
    return out


def marker_problems(records: list[dict], markers: list[tuple[str, dict]], run: str,
                    key: bytes | None = None) -> list[str]:
    """What the log lacks of the checkpoints (``markers``: (where, marker) of committed step
    directories of run ``run``, either tier); [] when it records every one."""
    hashes = {r.get("seq"): r.get("hash") for r in records}
    newest = max((r.get("seq", -1) for r in records), default=-1)
    recorded = {(r.get("step"), r.get("digest")) for r in records
                if r.get("event") in ("committed", "drained")}
    problems = []
    for where, marker in markers:
        step, digest = marker.get("step"), marker.get("digest", "")
        ref = marker.get("audit")
        if isinstance(ref, dict):
            seq = ref.get("seq")
            if seq not in hashes:
                problems.append(
                    f"{where}: its commit marker records audit record #{seq}, which the log "
                    f"does not hold (it ends at #{newest}): records were removed from the log")
            elif hashes[seq] != ref.get("hash"):
                problems.append(
                    f"{where}: its commit marker records audit record #{seq} with another "
                    "hash than the log's: the log was rewritten from that record on")
            if key is not None and not hmac.compare_digest(
                    str(marker.get("audit_hmac", "")), marker_mac(key, run, step, digest, ref)):
                problems.append(f"{where}: the HMAC of its commit marker's audit reference is "
                                "missing or wrong (the marker was changed by someone without "
                                "the key, or written without it)")
        if (step, digest) not in recorded:
            problems.append(f"{where}: committed checkpoint step {step} (digest "
                            f"{digest[:16]}...) has no committed or drained record in the log")
    return problems
