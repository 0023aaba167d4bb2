"""Lineage: where a checkpoint came from, and the chain of its ancestors across runs.

Every manifest records ``lineage``: the code version of the training program (git commit and
dirty flag when it runs from a git checkout), the user and hostnames, and ``parent``: the
checkpoint (run, step, digest, where it was read) this Checkpointer last restored from, if
any; an imported checkpoint (``tierpoint import``) also ``source``: the directory it was
imported from, its format and the SHA-256 of each file read. ``chain`` follows parents from a checkpoint back to the first one, across runs.
"""
from __future__ import annotations

import getpass
import os
import subprocess
import sys

from ..errors import CheckpointError
from ..format import layout
from ..format.manifest import Manifest
from ..tiers.registry import is_committed, open_copy, shown, tier_root_of


def code_version(start: str | None = None) -> dict:
    """The git commit of the training program's checkout and whether it has uncommitted
    changes; ``{}`` when it does not run from a git checkout (or git is missing)."""
    where = start or os.path.dirname(os.path.abspath(sys.argv[0] or ".")) or os.getcwd()

    def git(*args) -> str:
        return subprocess.run(["git", "-C", where, *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        top = git("rev-parse", "--show-toplevel")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": dirty, "git_root": top}


def user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _manifest(path: str) -> Manifest:
    """The checked manifest of the copy at ``path`` (any tier, through the registry)."""
    return open_copy(path, ranks=()).manifest  # the header says all lineage needs


def _find(parent: dict, roots: list[str]) -> str | None:
    """The directory (or URL) of a parent checkpoint: where it was read, else under ``roots``
    (tier roots: directories or object-store URLs, e.g. an S3 capacity tier). The
    recorded path is only a hint (checkpoints move): the first candidate whose digest is the
    one the child recorded wins, else the first committed one (reported as a mismatch)."""
    candidates = [parent.get("path")] + [layout.step_dir(r, parent["run"], parent["step"])
                                         for r in roots]
    committed = [c for c in candidates if c and _committed(c)]
    for c in committed:
        try:
            if _manifest(c).digest == parent.get("digest"):
                return c
        except CheckpointError:
            continue
    return committed[0] if committed else None


def _committed(path: str) -> bool:
    """Whether ``path`` (a step directory or an object store's step URL, through the
    registry) is a committed checkpoint; a store that cannot be reached has none."""
    try:
        return is_committed(path)
    except CheckpointError:
        return False


def _entry(manifest: Manifest | None, path: str | None, recorded: dict | None) -> dict:
    """One line of a chain: ``recorded`` is what the child recorded of this checkpoint
    (None for the first, which is judged by itself)."""
    lineage = manifest.lineage if manifest else {}
    # An imported checkpoint's source (hf/load.py): the published model a chain ends at.
    source = {"source": lineage["source"]} if lineage.get("source") else {}
    if recorded is None:
        return {"run": manifest.run, "step": manifest.step, "digest": manifest.digest,
                "time": manifest.time, "path": path, "digest_ok": True,
                "code": lineage.get("code", {}), **source}
    return {"run": recorded["run"], "step": recorded["step"], "digest": recorded.get("digest"),
            "time": manifest.time if manifest else None, "path": path,
            "digest_ok": bool(manifest) and manifest.digest == recorded.get("digest"),
            "code": lineage.get("code", {}), **source}


def chain(path: str, roots: list[str] = ()) -> list[dict]:
    """The checkpoint at ``path`` and its ancestors, newest first. Each entry: run, step,
    digest, time, path (None when an ancestor is no longer found) and whether the digest
    recorded by the child matches the ancestor's own (``digest_ok``)."""
    out = []
    seen = set()
    manifest = _manifest(path)
    # Ancestors are looked for beside the checkpoint too (its own tier root), so a tier that
    # was moved or copied as a whole still finds them.
    roots = [*roots, tier_root_of(path)]
    entry = _entry(manifest, shown(path), None)
    while True:
        out.append(entry)
        key = (entry["run"], entry["step"], entry["digest"])
        if key in seen:
            raise CheckpointError(f"lineage of {path} loops at run {entry['run']!r} step "
                                  f"{entry['step']}")
        seen.add(key)
        parent = manifest.lineage.get("parent") if manifest else None
        if not parent:
            return out
        found = _find(parent, list(roots))
        manifest = _manifest(found) if found else None
        entry = _entry(manifest, found, parent)
        if manifest is None:
            out.append(entry)
            return out
