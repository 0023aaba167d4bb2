"""What the two POSIX tiers share: the commit of a step directory (a node-local step directory,
or the capacity tier's head). Both tiers call it from the rank that commits (a directory's
leader; the coordinator). An object-store tier commits its own way and does not use this.
"""
from __future__ import annotations

import hashlib

from ..format import layout
from ..format.manifest import Manifest
from ..runtime.faults import inject


def commit_directory(directory: str, step: int, manifest, *, domain: int | None = None,
                     fault_point: str | None = None, rank: int = -1,
                     audit: dict | None = None) -> str:
    """The commit of a POSIX step directory (either tier's: the capacity head is one too):
    the manifest document atomically, then the marker holding its SHA-256 (last).
    ``fault_point``: the fault-injection point between the two (runtime/faults.py)."""
    document = manifest.to_document() if isinstance(manifest, Manifest) else manifest
    digest = hashlib.sha256(layout.write_manifest(directory, document)).hexdigest()
    if fault_point:
        inject(fault_point, rank=rank, step=step)
    layout.write_commit_marker(directory, step, digest, document.get("digest", ""),
                               domain=domain, audit=audit,
                               format_version=document.get("format_version",
                                                           layout.FORMAT_VERSION))
    return digest
