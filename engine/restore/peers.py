"""Peer restore, the plan: which node holds which saved domain's chunks, which steps the
job's nodes hold between them, and which rank serves which chunk. Pure (values only).

A restart on another world size or sharding, on the same nodes (or a superset), often
needs chunks that another node wrote to its own local tier. Those are read there, by a
rank of that node, and sent over the restore's communicator (restore/exchange.py), so the
newest committed local step is restored, not the newest drained one.

Terms: a *saved domain* is a directory of the saving job (its number in the manifest's
layout, tiers/holdings.py); a *current domain* is a directory of the restoring job
(runtime/topology.py). Every current domain's leader reports, per committed step, the saved
domains its node's copies hold (its own copy's declared domain and any partner replica's:
``LocalCopy.held_domains``) and how many saved domains the step has. From those reports:

- a step is *held by peers* when the union of the held saved domains is every saved domain
  of the step (``peer_steps``): every chunk then has a source on some node of this job. The
  rule looks at domains, not at each chunk a rank needs: one value per domain and step
  reaches rank 0 (O(domains) at 16,384 ranks), and a step with a domain held by no node is
  never chosen, so no rank reads a mix of steps;
- ``holders``: saved domain -> the current domains that hold it, for the chosen step;
- each chunk that a rank's own node does not hold is served by one rank of one holder,
  the same for every requester (``source_rank``), so a chunk several ranks need is read by
  one rank, which can read it once.

The exchange is deadlock-free with blocking sends: every pair of ranks that trades pieces
meets in one round of a round-robin tournament (``pair_round``), and each rank meets its
partners in round order; two pairs that share a rank are met in the same order by both, so
the earliest unfinished meeting can always proceed (pairs of one round are disjoint and run
in parallel).
"""
from __future__ import annotations

import zlib
from typing import Iterable, Sequence

from .plan import StepChoice


def held_report(steps: dict[int, tuple[set[int], int, list[str]]]) -> dict:
    """A domain leader's report, as JSON: ``steps[s] = (held saved domains, saved domain
    count, saved nodes absent from this job)`` for each committed step its node's copies
    hold."""
    return {str(s): [sorted(held), count, list(absent)]
            for s, (held, count, absent) in steps.items()}


def parse_report(report: dict | None) -> dict[int, tuple[set[int], int, list[str]]]:
    return {int(s): (set(v[0]), int(v[1]), list(v[2]) if len(v) > 2 else [])
            for s, v in (report or {}).items()}


def peer_steps(reports: Iterable[dict | None]) -> set[int]:
    """The steps whose saved domains are all held by some reporting node."""
    union: dict[int, set[int]] = {}
    counts: dict[int, int] = {}
    for report in reports:
        for step, (held, count, _) in parse_report(report).items():
            union.setdefault(step, set()).update(held)
            counts[step] = max(counts.get(step, 0), count)
    return {s for s, held in union.items() if counts[s] and held >= set(range(counts[s]))}


def holders(step: int, reports: Sequence[dict | None], report_domain: Sequence[int]
            ) -> dict[int, list[int]]:
    """saved domain -> the current domains whose node holds its chunks of ``step``
    (ascending); ``report_domain[i]``: the current domain of report ``i``'s leader."""
    out: dict[int, set[int]] = {}
    for report, current in zip(reports, report_domain):
        held = parse_report(report).get(step)
        if held is not None:
            for saved in held[0]:
                out.setdefault(saved, set()).add(current)
    return {saved: sorted(c) for saved, c in sorted(out.items())}


def missing_domains(step: int, reports: Iterable[dict | None]) -> tuple[list[int], list[str]]:
    """The saved domains of ``step`` that no reporting node holds, and the saved nodes
    that are not in this job (the lost nodes: what a warning names)."""
    union: set[int] = set()
    absent: set[str] = set()
    count = 0
    for report in reports:
        held = parse_report(report).get(step)
        if held is not None:
            union |= held[0]
            count = max(count, held[1])
            absent.update(held[2])
    return [d for d in range(count) if d not in union], sorted(absent)


def _spread(name: str, key: str) -> int:
    """A number that spreads chunks over holders and ranks the same way on every rank."""
    return zlib.crc32(f"{name}\0{key}".encode("utf-8"))


def source_rank(name: str, key: str, writer_domains: Iterable[int],
                holder_map: dict[int, list[int]], ranks_of_domain) -> int | None:
    """The rank that serves chunk ``key`` of array ``name``: a rank of a current domain that
    holds one of the chunk's writers' saved domains (``holder_map``), picked by the chunk
    (so every requester asks the same rank); ``ranks_of_domain(d)``: the ranks of current
    domain d. None: no node holds it."""
    candidates = sorted({c for w in writer_domains for c in holder_map.get(w, ())})
    if not candidates:
        return None
    spread = _spread(name, key)
    ranks = ranks_of_domain(candidates[spread % len(candidates)])
    return ranks[(spread // len(candidates)) % len(ranks)]


def pair_round(a: int, b: int, size: int) -> int:
    """The round of a round-robin tournament over ``size`` ranks (circle method; a rank
    without a partner in a round sits it out) in which ranks ``a`` != ``b`` meet. In each
    round every rank meets at most one other."""
    n = size + (size % 2)  # an even number of seats; the last one empty when size is odd
    a, b = min(a, b), max(a, b)
    if b == n - 1:
        return (2 * a) % (n - 1)
    return (a + b) % (n - 1)


def meeting_order(me: int, partners: Iterable[int], size: int) -> list[int]:
    """``partners`` in the order ``me`` meets them (by round; see the module docstring)."""
    return sorted(set(partners) - {me}, key=lambda p: pair_round(me, p, size))


def message_groups(sizes: Sequence[int], limit: int) -> list[range]:
    """Consecutive runs of items (by index) of at most ``limit`` bytes each (an item larger
    than ``limit`` alone): the messages one source's pieces for one requester travel in,
    which both sides compute alike from the item sizes."""
    groups, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > limit:
            groups.append(range(start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        groups.append(range(start, len(sizes)))
    return groups


def peer_routing(step: int, found: list, reports: list, topology) -> dict | None:
    """Rank 0: what every rank needs to restore ``step`` from peers (``found``: every
    rank's StepFindings; ``topology``: the job's; None when every rank
    reads it from its own node's copy or the capacity tier): which current domains hold
    each saved domain, and which rank sends the manifest to each rank whose node holds no
    copy (spread over the ranks that hold one)."""
    if all(step in f.readable for f in found):
        return None
    givers = [r for r, f in enumerate(found) if step in f.local or step in f.replica]
    having = {topology.domains[r] for r in givers}
    lacking = [d for d in range(len(topology.leaders)) if d not in having]
    return {"holders": {str(d): c for d, c in
                        holders(step, reports, list(topology.domains)).items()},
            "headers": {str(d): givers[n % len(givers)] for n, d in enumerate(lacking)}}


def unrestorable_note(found: list, reports: list, newer_than: int | None = None
                      ) -> str | None:
    """Why the newest locally committed step (newer than ``newer_than``) cannot be restored
    from the job's nodes, naming the saved domains no node holds and the saving job's nodes
    that are not in this job; None when it can be, or there is none."""
    newest = max((s for f in found for s in (*f.local, *f.replica)), default=None)
    if newest is None or (newer_than is not None and newest <= newer_than):
        return None
    missing, absent = missing_domains(newest, reports)
    if not missing:
        return None
    return (f"step {newest} is not restorable: the chunks of its saved domain(s) {missing} "
            "are on no node of this job" +
            (f" (node(s) {', '.join(absent)} of the saving job are not in this job: lost, "
             "with their partner replicas)" if absent else ""))


def lost_node_warning(choice: StepChoice, found: list, reports: list,
                      what: str, *, by_peers: bool) -> str | None:
    """``choice``'s warning, naming the saving job's nodes that are not in this job: when
    the step is restored from peers without them (``by_peers``: their chunks from partner
    replicas), or when a newer step is not restored because some of its chunks were on
    them alone (``unrestorable_note``)."""
    text = choice.warning
    note = unrestorable_note(found, reports, newer_than=choice.step)
    if note:
        text = (text or f"{what}: restoring step {choice.step}") + "; " + note
    _, absent = missing_domains(choice.step, reports)
    if absent and by_peers:
        text = (text + "; " if text else f"{what}: restoring step {choice.step}; ") + (
            f"node(s) {', '.join(absent)} of the saving job are not in this job: their "
            "chunks are read from the copies other nodes hold (partner replicas)")
    return text
