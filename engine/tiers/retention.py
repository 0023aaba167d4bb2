"""Pure retention decisions: which checkpoints are drained and which copies may be deleted,
and which committed step every rank holds (the step a drain or a restore takes).

Invariants (each decision keeps them):
- the newest committed checkpoint of a tier is never deleted;
- a local checkpoint owed a drain (due by the policy, or its drain started) is kept until
  its capacity copy is committed;
- the capacity tier deletes only what its policy no longer wants, never its newest copy.
No I/O here: callers list what each tier holds and carry out the deletions.
"""
from __future__ import annotations

from collections.abc import Container, Iterable, Sequence

from ..errors import CheckpointNotFoundError
from ..options import Policy


def due_for_drain(ordinal: int, policy: Policy) -> bool:
    """Is the checkpoint that was the ``ordinal``-th save of its run (1-based) drained by
    the count rule (``drain_every``; the clock rule is runtime/clock.py's)?"""
    return policy.drain_every is not None and ordinal >= 1 and ordinal % policy.drain_every == 0


def pending_drains(local, *, due, started, drained) -> list[int]:
    """The steps of one local directory whose drain is owed, oldest first.

    ``local``: its committed steps; ``due``: those due for drain by the policy (their
    manifest's ordinal); ``started``: those whose drain was started (a drain record says so:
    also a drain the policy did not ask for, such as close()'s of the newest step);
    ``drained``: those whose capacity copy is committed, or was (a record says the drain
    finished: capacity retention may have deleted it since). A drain cut short leaves its
    step pending, so the next drain opportunity redoes it.
    """
    return sorted((set(due) | set(started)) & set(local) - set(drained))


def agreed_drains(views) -> list[int]:
    """The steps every rank drains, oldest first, from the leaders' ``(local, pending)``
    views (one per local directory): pending in some directory, and held by every one (a
    step some directory lacks cannot be drained from the local tiers)."""
    views = list(views)
    if not views:
        return []
    held = set(views[0][0]).intersection(*(set(local) for local, _ in views[1:]))
    return sorted(held & set().union(*(set(pending) for _, pending in views)))


def local_deletions(local: list[int], *, pending, policy: Policy) -> list[int]:
    """Committed local steps that may be deleted now: all but the newest ``keep_local`` and
    the ``pending`` ones (owed a drain: see ``pending_drains``)."""
    ordered = sorted(set(local))
    keep = set(ordered[-policy.keep_local:]) | set(pending)
    return [s for s in ordered if s not in keep]


def replica_deletions(kept, replicas, *, policy: Policy) -> list[int]:
    """The steps whose replicas one local directory deletes now (``Policy.replicas``).

    The rule: a replica lives and dies with the directory's ring. A replica of step S is kept
    while S is one of the directory's own ``kept`` steps (what its ring keeps after this
    pass), or one of the newest ``keep_local`` steps of its own kept and replicated steps
    together; so when the ring removes S, the replicas of S go too, and a node that holds no
    copy of its own of S (a replacement node, or one whose save of S failed) still keeps the
    newest replicas it was sent. ``replicas``: the steps with a committed replica here."""
    ring = set(sorted(set(kept) | set(replicas))[-policy.keep_local:])
    return sorted(set(replicas) - set(kept) - ring)


def deleted_at_once(step: int, listings, *, due: bool, policy: Policy) -> list[int]:
    """The newer local steps for which the ring deletes ``step`` as soon as it is committed
    ([] when it keeps it). ``listings``: the committed steps of each local directory of the
    job; only steps every directory holds count (a step some lack is removed as a partial
    commit first). A step ``due`` for drain is kept until it is drained."""
    listings = [set(x) for x in listings]
    if due or not listings:
        return []
    newer = sorted(s for s in set.intersection(*listings) if s > step)
    return newer[-policy.keep_local:] if len(newer) >= policy.keep_local else []


def capacity_wanted(capacity: list[int], policy: Policy) -> set[int]:
    ordered = sorted(set(capacity))
    if not ordered:
        return set()
    if policy.keep_persistent is None and policy.keep_every is None:
        return set(ordered)
    wanted = {ordered[-1]} | (set(ordered) & policy.pin)
    if policy.keep_persistent is not None:
        wanted |= set(ordered[-policy.keep_persistent:])
    if policy.keep_every is not None:
        wanted |= {s for s in ordered if s % policy.keep_every == 0}
    return wanted


def capacity_deletions(capacity: list[int], policy: Policy) -> list[int]:
    """Committed capacity steps the policy no longer wants."""
    wanted = capacity_wanted(capacity, policy)
    return [s for s in sorted(set(capacity)) if s not in wanted]


def common_step(step: int | None, per_rank: Sequence[Iterable[int]], *, what: str, run: str,
                tier_dirs: Sequence[str], why: str = "", why_for: Container = ()) -> int:
    """``step`` if every rank's listing ``per_rank[r]`` has it, else (``step`` None) the
    newest step all of them have; CheckpointNotFoundError naming the ranks that lack it
    otherwise (``tier_dirs[r]``: where rank r looks; ``what``: the operation). ``why``
    explains the failure: always when no step is named, for a named step only when it is
    in ``why_for`` (restore/plan.py: a step committed but not readable everywhere)."""
    sets = [set(s) for s in per_rank]
    common = sets[0].intersection(*sets[1:])
    if step is None:
        if not common:
            raise CheckpointNotFoundError(
                f"{what}: no checkpoint of run {run!r} is committed where every rank "
                f"can read it (rank 0 looks in {tier_dirs[0]}){why}")
        return max(common)
    if step not in common:
        missing = [r for r, steps in enumerate(sets) if step not in steps]
        raise CheckpointNotFoundError(
            f"{what}: step {step} is not committed where ranks {missing} can read it "
            f"(rank {missing[0]} looks in {tier_dirs[missing[0]]})"
            + (why if step in why_for else ""))
    return step

