"""The restore plan, pure: a function of values only (no I/O, no collectives, no warnings).

A restore is planned once and then executed (restore/execute.py); the readability check of
the find phase and the reads of the read phase use the same plan objects. The plan is built in
three stages, because the middle one needs every rank's findings:

1. per rank, per committed copy of a step: ``plan_reads`` (template leaves x the copy's typed
   manifest -> which chunk reads fill which target boxes) and ``local_copy_serves`` (whether
   the copy holds every chunk those reads need; presence is handed in as data), summed up as
   this rank's ``StepFindings`` (JSON, gathered from every rank);
2. over every rank's findings: ``choose_step`` (the step to read, the error when there is
   none, the warning when a newer one is committed but not readable everywhere);
3. per rank again: ``choose_copy`` (which tier copies of the chosen step it reads) and
   ``check_template`` (missing keys, shape and dtype mismatches, before any byte is read).

Who calls: restore/execute.py (``restore_state``); the Checkpointer's drain reuses the step
choice through the restore adapter until the merge (see ``choose_step``). Invariants:

- the read items of an ``ArrayRead`` tile its target box exactly once (restore/reshard.py),
  and each names a chunk of the manifest's grid; the chunk may be absent from the chunk table
  only in a damaged manifest, which the read then names;
- a local copy serves a rank when every chunk its boxes overlap is *expected* in that copy
  (one of the chunk's writers belongs to the domain the copy's marker declares) or *present*
  there (tiers/holdings.py): where the copy lies on disk never matters;
- a capacity copy holds every chunk of its step, so it serves every rank;
- format version 2: a copy's manifest holds the records of only the slices a rank needs:
  ``slices_for`` finds them from the header (the writers of each chunk the plan reads), and
  a chunk is read only against a record from a slice proven to belong to the digest.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

from ..errors import StateMismatchError
from ..format import layout
from ..format.manifest import ArrayRecord, Manifest
from ..format.types import Box, ReadItem
from ..tiers.retention import common_step
from .reshard import plan_box_read


# ---- 1. one rank's reads of one copy --------------------------------------------------------

@dataclass(frozen=True)
class TemplateLeaf:
    """What the plan needs of one array leaf of the template: its state name, global shape,
    element type and the box of it this rank holds (``state.ArrayLeaf`` has these fields)."""

    name: str
    global_shape: tuple[int, ...]
    dtype: str
    box: Box

    @classmethod
    def of(cls, leaf) -> "TemplateLeaf":
        """From a ``state.ArrayLeaf`` (or anything with those four attributes)."""
        return cls(leaf.name, tuple(leaf.global_shape), leaf.dtype, leaf.box)


@dataclass(frozen=True)
class ArrayRead:
    """The reads that fill one template leaf's box from one saved array: ``items`` are
    restore/reshard.py's ReadItems (chunk index and region -> region of the target box)."""

    name: str
    record: ArrayRecord
    items: tuple[ReadItem, ...]

    def chunk_keys(self) -> list[str]:
        """The manifest keys (``c.i.j``) of the chunks the items read, in item order."""
        return [layout.chunk_key(item.chunk_index) for item in self.items]


@dataclass(frozen=True)
class ReadPlan:
    """One rank's reads of one checkpoint step: an ArrayRead per template leaf whose saved
    array has the template's global shape, in template order. Leaves missing from the
    checkpoint or of another shape have none (``check_template`` reports them by name)."""

    step: int
    reads: tuple[ArrayRead, ...]

    def read_of(self, name: str) -> ArrayRead | None:
        return next((r for r in self.reads if r.name == name), None)

    def chunks(self) -> list[tuple[str, str]]:
        """(array name, chunk key) of every chunk the plan reads."""
        return [(r.name, key) for r in self.reads for key in r.chunk_keys()]

    def with_records(self, tables: dict[str, dict]) -> "ReadPlan":
        """The same reads, each array's record holding the chunk records ``tables[name]``
        (format version 2: gathered from the slices of the copies read)."""
        return ReadPlan(self.step, tuple(
            ArrayRead(r.name, replace(r.record, chunks=tables.get(r.name, {})), r.items)
            for r in self.reads))


def plan_reads(leaves: Iterable[TemplateLeaf], manifest: Manifest) -> ReadPlan:
    """The chunk reads that fill every leaf's box from ``manifest``'s chunk grid."""
    reads = []
    for leaf in leaves:
        record = manifest.arrays.get(leaf.name)
        if record is None or record.shape != tuple(leaf.global_shape):
            continue
        items = plan_box_read(leaf.name, record.shape, record.chunk_shape, leaf.box)
        reads.append(ArrayRead(leaf.name, record, tuple(items)))
    return ReadPlan(manifest.step, tuple(reads))


def copy_serves(plan: ReadPlan, expected: Callable[[ArrayRecord, str], bool],
                holds: Callable[[ArrayRecord, str], bool]) -> bool:
    """Whether a copy holds every chunk ``plan`` reads: each is ``expected`` there (a missing
    expected chunk is damage, which the read names; so is a version 1 chunk missing from its
    table) or the copy ``holds`` its file and record (chunks gathered from other nodes'
    copies). ``expected``/``holds`` are a StepCopy's predicates (tiers/base.py), handed in so
    that the plan stays pure."""
    for read in plan.reads:
        for key in read.chunk_keys():
            if expected(read.record, key):
                continue
            if not holds(read.record, key):
                return False  # written on another node, and not copied here
    return True


def slices_for(manifest: Manifest, chunks: Iterable[tuple[str, str]], available,
               rank: int) -> set[int]:
    """Format version 2: the saving ranks whose slices record ``chunks`` ((array name, chunk
    key) pairs), found from the header alone (``Manifest.writers_of``) among the slices a
    copy holds (``available``). Of a replicated chunk's writers (one per domain) the reader's
    own saved rank is preferred, then a writer in its own saved domain (``rank``: the reading
    rank, taken as the saved rank of the same number), then one already chosen, so that a
    restore of the layout it saved reads its own slice and its domain's. Chunks no available
    slice records are left out (the copy does not serve them)."""
    domains = manifest.domains
    mine = domains[rank] if 0 <= rank < len(domains) else None
    out: set[int] = set()
    for name, key in chunks:
        writers = [w for w in manifest.writers_of(manifest.arrays[name], key) if w in available]
        if not writers:
            continue
        pick = rank if rank in writers else next(
            (w for w in writers if domains[w] == mine), None)
        if pick is None:
            pick = next((w for w in writers if w in out), writers[0])
        out.add(pick)
    return out


@dataclass(frozen=True)
class StepFindings:
    """What one rank found in the find phase: its committed steps per tier, and those it can
    read all it needs from (every capacity step; the local steps whose copy serves it)."""

    local: tuple[int, ...]
    capacity: tuple[int, ...]
    readable: tuple[int, ...]
    replica: tuple[int, ...] = ()  # steps of which this node holds a partner's replica only
    held: dict | None = None       # a domain leader's report (restore/peers.py held_report)

    @classmethod
    def of(cls, served_locally: dict[int, bool], capacity: Iterable[int], *,
           replica: Iterable[int] = (), held: dict | None = None) -> "StepFindings":
        """``served_locally``: each committed local step -> whether its copy serves the rank
        (a damaged copy counts as serving: its read reports the damage, no silent step
        back); ``capacity``: the committed capacity steps; ``replica``: the steps this
        node holds only as a partner's replica; ``held``: what a domain leader reports of
        its node's copies (None elsewhere)."""
        capacity = tuple(sorted(capacity))
        readable = set(capacity) | {s for s, ok in served_locally.items() if ok}
        return cls(tuple(sorted(served_locally)), capacity, tuple(sorted(readable)),
                   tuple(sorted(set(replica) - set(served_locally))), held)

    def to_json(self) -> dict:
        out = {"local": list(self.local), "capacity": list(self.capacity),
               "readable": list(self.readable)}
        if self.replica:
            out["replica"] = list(self.replica)
        if self.held is not None:
            out["held"] = self.held
        return out

    @classmethod
    def from_json(cls, d: dict) -> "StepFindings":
        return cls(tuple(d["local"]), tuple(d["capacity"]), tuple(d["readable"]),
                   tuple(d.get("replica", ())), d.get("held"))


# ---- 2. the step, over every rank's findings ------------------------------------------------

@dataclass(frozen=True)
class StepChoice:
    """The step to read; ``warning``: what the caller warns (CheckpointWarning) when a newer
    step is committed but not where every rank can read it, else None."""

    step: int
    warning: str | None = None


def choose_step(step: int | None, per_rank: Sequence[Iterable[int]], *, what: str, run: str,
                tier_dirs: Sequence[str],
                found: Sequence[StepFindings] | None = None) -> StepChoice:
    """The step to read: ``step`` if every rank can, else (``step`` None) the newest every
    rank can. ``per_rank[r]``: the steps rank r can read; ``tier_dirs[r]``: its local tier
    root (for messages); ``what``: the operation, for messages. ``found`` (restore's findings)
    explains a step that is committed but not readable: local copies serve only ranks whose
    shards stay on the node that wrote them; other layouts read from the capacity tier.
    Raises CheckpointNotFoundError when there is no such step."""
    per_rank = [set(s) for s in per_rank]
    common = per_rank[0].intersection(*per_rank[1:])
    newer, why, held = [], "", []
    if found is not None:  # committed somewhere, but not where every rank can read it
        held = [set(f.local) | set(f.capacity) for f in found]
        newer = sorted(s for s in set.union(*held) if s not in common and
                       (not common or s > max(common)))
    if newer:
        lacking = [r for r, h in enumerate(held) if newer[-1] not in h]
        why = (f" (step {newer[-1]} is committed, but not on the capacity tier, and " +
               (f"the local tiers of ranks {lacking} lack it: a lost node?" if lacking else
                "some ranks need chunks that another node wrote to its local tier") + ")")
    chosen = common_step(step, per_rank, what=what, run=run, tier_dirs=tier_dirs, why=why,
                         why_for=newer)
    warning = (f"{what}: restoring step {chosen}, the newest every rank can read{why}"
               if step is None and newer else None)
    return StepChoice(chosen, warning)


# ---- 3. this rank's copies of the chosen step, and the template check -----------------------

@dataclass(frozen=True)
class CopyChoice:
    """Which tier copies of ``step`` a rank reads: its local copy when it has one committed
    (each chunk from there first), and the capacity copy when the capacity tier holds the
    step (every chunk when there is no local copy; else a chunk missing or corrupt locally)."""

    step: int
    local: bool
    capacity: bool


def choose_copy(step: int, mine: StepFindings) -> CopyChoice:
    return CopyChoice(step, step in mine.local, step in mine.capacity)


@dataclass(frozen=True)
class RestorePlan:
    """Everything one rank does to restore: the step, the copies it reads, the manifest it
    reads them by and the chunk reads of every leaf. Built after the step choice from the
    same ReadPlan the find phase judged the local copy by (or, capacity only, from the
    capacity copy's manifest)."""

    copy: CopyChoice
    manifest: Manifest
    reads: ReadPlan

    @property
    def step(self) -> int:
        return self.copy.step


def check_template(leaves: Iterable[TemplateLeaf], value_names: Iterable[str],
                   manifest: Manifest, *, strict: bool, source: str) -> None:
    """Raise StateMismatchError, naming the key, for the first template leaf the checkpoint
    cannot fill: an array key it lacks (unless ``strict`` is False), another global shape or
    element type; then for a JSON value key it lacks (unless ``strict`` is False).
    ``source``: the copy read (local step directory or capacity head), for messages."""
    for leaf in leaves:
        record = manifest.arrays.get(leaf.name)
        if record is None:
            if strict:
                raise StateMismatchError(
                    f"key {leaf.name!r} is not an array in checkpoint step {manifest.step}"
                    f" ({source}); pass strict=False to skip missing keys")
            continue
        if record.shape != tuple(leaf.global_shape):
            raise StateMismatchError(
                f"key {leaf.name!r}: the checkpoint holds shape {list(record.shape)} but the "
                f"template has global shape {list(leaf.global_shape)}")
        if record.dtype != leaf.dtype:
            raise StateMismatchError(
                f"key {leaf.name!r}: the checkpoint holds {record.dtype} but the template "
                f"has {leaf.dtype}")
    if strict:
        for name in value_names:
            if manifest.values.get(name) is None:
                raise StateMismatchError(
                    f"key {name!r} of the template is not a JSON value in checkpoint "
                    f"step {manifest.step} ({source}); pass strict=False to skip missing keys")


def parent_record(manifest: Manifest, path: str) -> dict:
    """What a restored checkpoint's children record as their lineage parent (the
    Checkpointer keeps it; trust/lineage.py follows it): run, step, digest, and where it was
    read (``path``, made absolute; a hint only: checkpoints move)."""
    return {"run": manifest.run, "step": manifest.step, "digest": manifest.digest,
            "path": os.path.abspath(path)}
