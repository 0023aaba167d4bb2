"""Which copy of a checkpoint holds which chunks, independent of where the copy lies.

A job's ranks write into node-local directories; ranks that share a directory form a
*domain* (numbered 0..D-1 in rank order at save time). The manifest records each saving
rank's domain and node name; each directory's commit marker records the domain whose chunks
that directory was written to hold. Nothing here compares absolute paths: a directory that
was moved, copied to another filesystem or restored on another cluster is judged by what its
marker declares and by which chunk files it actually contains.

Invariants:
- A chunk is *expected* in a directory when one of its writers belongs to the domain the
  directory's marker declares: a missing expected chunk is damage.
- A chunk that is not expected may still be present (several nodes' directories copied into
  one): it is then as good as an expected one, and is checked like one.
- A checkpoint written before markers declared a domain has no declaration: then presence
  alone decides, and absence is never called damage.
Version 2 copies know a chunk's writers from the header's layouts, whether or not the slice
recording it is at hand (``Manifest.writers_of``).
Pure functions over the typed manifest records (format/manifest.py; ``Manifest.domains``
gives each saving rank's domain, older manifests included), plus the presence checks
(``os.path.isfile``). Called by the local tier's copies (tiers/local.py), which answer
``expected``/``holds`` with them, and by the drain's locate phase.
"""
from __future__ import annotations

import os

from ..format import layout
from ..format.manifest import ArrayRecord, Manifest


def writer_domains(manifest: Manifest, array: ArrayRecord, key: str) -> set[int]:
    """The domains of the saving ranks that wrote chunk ``key`` (recorded in version 1, from
    the header's layout in version 2: ``Manifest.writers_of``)."""
    domains = manifest.domains
    return {domains[w] for w in manifest.writers_of(array, key) if 0 <= w < len(domains)}


def expected_here(manifest: Manifest, array: ArrayRecord, key: str,
                  declared: int | None) -> bool:
    """Whether a directory that declares ``declared`` must hold chunk ``key``. A version 1
    chunk missing from its (complete) table counts as expected: that is damage, which the
    read names."""
    if declared is None:
        return False
    if not manifest.sliced and key not in array.chunks:
        return True
    return declared in writer_domains(manifest, array, key)


def chunk_present(step_dir: str, array_path: str, key: str) -> bool:
    return os.path.isfile(os.path.join(step_dir, array_path, key))


def held_domains(step_dir: str, manifest: Manifest, declared: int | None,
                 slice_ranks=()) -> set[int]:
    """The saved domains whose chunks this directory holds: the one its marker declares,
    plus every other domain one of whose own chunks (written by that domain alone, so not a
    replica every directory has) is present here: a directory into which several nodes'
    copies were gathered. Version 2: the domains of the saving ranks whose slices the
    directory holds and has proven (``slice_ranks``), which a gathered directory has for
    every rank. One presence check per other domain (version 1); a read still names any
    chunk that turns out missing."""
    domains = manifest.domains
    held = {declared} if declared is not None else set()
    if manifest.sliced:
        return held | {domains[r] for r in slice_ranks if 0 <= r < len(domains)}
    sample: dict[int, tuple[str, str]] = {}
    for array in manifest.arrays.values():
        for key in array.chunks:
            writers = writer_domains(manifest, array, key)
            if len(writers) == 1:
                sample.setdefault(next(iter(writers)), (array.path, key))
    for d, (path, key) in sample.items():
        if d not in held and chunk_present(step_dir, path, key):
            held.add(d)
    return held


def declared_domain(step_dir: str) -> int | None:
    """The domain a committed directory's marker declares (None: none declared)."""
    marker = layout.read_commit_marker(step_dir)
    value = marker.get("domain") if marker else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
