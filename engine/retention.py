"""Pure retention decisions: which checkpoints are drained and which copies may be deleted.

Invariants (each decision keeps them):
- the newest committed checkpoint of a tier is never deleted;
- a local checkpoint due for drain is kept until its capacity copy is committed;
- the capacity tier deletes only what its policy no longer wants, never its newest copy.
No I/O here: callers list what each tier holds and carry out the deletions.
"""
from __future__ import annotations

from .options import Policy


def due_for_drain(ordinal: int, policy: Policy) -> bool:
    """Is the checkpoint that was the ``ordinal``-th save of its run (1-based) drained?"""
    return ordinal >= 1 and ordinal % policy.drain_every == 0


def local_deletions(local: list[int], *, due: set[int], drained: set[int],
                    policy: Policy) -> list[int]:
    """Committed local steps that may be deleted now.

    ``due``: steps due for drain; ``drained``: steps whose capacity copy is committed.
    """
    ordered = sorted(set(local))
    keep = set(ordered[-policy.keep_local:])
    return [s for s in ordered if s not in keep and (s not in due or s in drained)]


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
