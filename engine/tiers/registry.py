"""Which tier a checkpoint copy is on, found by its manifest or its URL, never by an if/else
on the kind elsewhere.

Every tier implementation is registered here with one ``register`` line; ``open_copy``
opens a step directory (or an object store's step URL) of any tier (verify, inspect,
lineage, the command line and restore are handed what it returns), ``copy_of`` does the
same for a manifest already read and checked (verify reads and reports on the manifest
itself). A manifest without a ``tier`` field is a node-local copy (what a save writes).
Adding a tier is one new module implementing tiers/base.py's ``Tier`` and ``StepCopy``, and
one line below (and one in ``_BY_SCHEME`` for a tier addressed by URL).
"""
from __future__ import annotations

import os

from ..errors import CorruptCheckpointError
from ..format import layout
from ..format.manifest import Manifest
from .base import StepCopy, register, registered
from .capacity import CapacityTier
from .local import LocalTier
from .s3 import S3Tier

DEFAULT_KIND = LocalTier.kind  # what a manifest without a ``tier`` field describes

register(LocalTier.kind, LocalTier)
register(CapacityTier.kind, CapacityTier)
register(S3Tier.kind, S3Tier)

# Tiers whose copies are addressed by URL (``<scheme>://...``), not by a POSIX path.
_BY_SCHEME = {"s3": S3Tier}


def tier_class(kind: str) -> type:
    """The implementation of tier ``kind``; CorruptCheckpointError for an unknown kind (a
    manifest naming it was damaged, or written by a newer tierpoint)."""
    try:
        return registered()[kind]
    except KeyError:
        raise CorruptCheckpointError(
            f"the manifest names tier kind {kind!r}, which this tierpoint does not know "
            f"(known: {', '.join(sorted(registered()))})") from None


def kind_of(manifest: Manifest) -> str:
    """The tier kind a copy's manifest records."""
    return manifest.tier.get("kind", DEFAULT_KIND)


def url_tier(path) -> type | None:
    """The tier class of a URL path (``s3://...``), None for a POSIX path: what a root or
    run URL is listed through (``cls(root).runs()``, ``cls.inventory_at(run_url)``)."""
    scheme, sep, _ = str(path).partition("://")
    return _BY_SCHEME.get(scheme) if sep else None


def is_url(path) -> bool:
    """Whether ``path`` names a copy by URL (an object store's), not a POSIX path."""
    return url_tier(path) is not None


def step_reader(path: str):
    """``read(name) -> bytes`` of the files (objects) of the step at ``path``, raising
    FileNotFoundError for one that is absent (layout.load_manifest's ``read``)."""
    cls = url_tier(path)
    if cls is None:
        def read(name):
            with open(os.path.join(path, name), "rb") as f:
                return f.read()
        return read
    return lambda name: cls.read_step_file(path, name)


def shown(path: str) -> str:
    """``path`` as messages and reports show it: absolute, or the URL as it is."""
    return path if is_url(path) else os.path.abspath(path)


def is_committed(path: str) -> bool:
    """Whether the step at ``path`` (a directory or a URL) has its commit marker."""
    if not is_url(path):
        return layout.is_committed(path)
    try:
        step_reader(path)(layout.COMMIT_FILE)
        return True
    except FileNotFoundError:
        return False


def tier_root_of(path: str) -> str:
    """The tier root a step directory or step URL lies under (``ROOT/RUN/step_<S>``)."""
    if is_url(path):
        return path.rstrip("/").rsplit("/", 2)[0]
    return os.path.dirname(os.path.dirname(os.path.abspath(path)))


def read_header(path: str) -> Manifest:
    """``layout.read_header`` of the step at ``path``, a directory or a URL."""
    return layout.read_header(path, step_reader(path))


def copy_of(path: str, manifest: Manifest) -> StepCopy:
    """The copy at ``path`` whose manifest has been read and checked already."""
    return tier_class(kind_of(manifest)).copy_at(path, manifest)


def open_copy(path: str, ranks=None) -> StepCopy:
    """The committed copy at step directory (or URL) ``path``, on whichever tier it is: its
    manifest checked against its marker and validated first (``layout.read_header``: the
    errors of ``Tier.open``), then (format version 2) the slices of ``ranks`` read and
    checked (None: every slice the copy holds; ``()``: none, the header alone)."""
    return copy_of(path, read_header(path)).with_slices(ranks)


def capacity_tier(persistent, *, staging: str | None = None):
    """The capacity tier ``persistent=`` names: an object store's URL (``s3://BUCKET/PREFIX``)
    or POSIX pool paths (one, or a list); None for None. ``staging``: a directory on the
    node-local tier an object store's drain stages its parts in."""
    if persistent is None:
        return None
    if isinstance(persistent, (list, tuple)) and len(persistent) == 1 and \
            is_url(persistent[0]):
        persistent = persistent[0]  # the command line's one --persistent URL
    cls = url_tier(persistent) if isinstance(persistent, str) else None
    if cls is not None:
        return cls(persistent, staging=staging)
    paths = [persistent] if isinstance(persistent, (str, os.PathLike)) else list(persistent)
    if any(is_url(p) for p in paths):
        raise ValueError(f"persistent={persistent!r}: an object store URL stands alone, it "
                         "cannot be mixed with POSIX pools (give one s3://BUCKET/PREFIX)")
    from .ops import pool_list
    pools = pool_list(paths)
    return CapacityTier(pools) if pools else None
