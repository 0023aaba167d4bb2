"""Which tier a checkpoint copy is on, found by its manifest, never by an if/else on the kind.

Every tier implementation is registered here with one ``register`` line; ``open_copy``
opens a step directory of any tier (verify, inspect, lineage, the command line and restore
are handed what it returns), ``copy_of`` does the same for a manifest already read and
checked (verify reads and reports on the manifest itself). A manifest without a ``tier``
field is a node-local copy (what a save writes). Adding a tier (an object store is next) is
one new module implementing tiers/base.py's ``Tier`` and ``StepCopy``, and one line below.
"""
from __future__ import annotations

from ..errors import CorruptCheckpointError
from ..format import layout
from ..format.manifest import Manifest
from .base import StepCopy, register, registered
from .capacity import CapacityTier
from .local import LocalTier

DEFAULT_KIND = LocalTier.kind  # what a manifest without a ``tier`` field describes

register(LocalTier.kind, LocalTier)
register(CapacityTier.kind, CapacityTier)


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


def copy_of(path: str, manifest: Manifest) -> StepCopy:
    """The copy at ``path`` whose manifest has been read and checked already."""
    return tier_class(kind_of(manifest)).copy_at(path, manifest)


def open_copy(path: str, ranks=None) -> StepCopy:
    """The committed copy at step directory ``path``, on whichever tier it is: its manifest
    checked against its marker and validated first (``layout.read_header``: the errors of
    ``Tier.open``), then (format version 2) the slices of ``ranks`` read and checked (None:
    every slice the copy holds; ``()``: none, the header alone)."""
    return copy_of(path, layout.read_header(path)).with_slices(ranks)
