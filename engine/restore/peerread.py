"""Peer restore, the read phase: every chunk from this node's copies where they hold it,
else from a rank of a node that does (restore/exchange.py), else from the capacity tier.

Used by restore/execute.py when the chosen step is one some rank can read neither from its
own node's copy nor from the capacity tier, but which the job's nodes hold between them
(restore/peers.py ``peer_steps``). Collective: every rank of the restore calls
``read_with_peers`` with the same ``peers`` (rank 0's answer of the find phase), whether or
not it needs anything from another node, because it may serve others.

Order, the same on every rank: (1) the manifest header to each rank whose node holds no
copy of the step, from a rank that does; (2) the "route" phase: each rank plans its reads,
checks its template against the manifest, names the ranks it needs pieces from and learns
from rank 0 which ranks need pieces from it (a failure here is raised on every rank before
any byte moves); (3) the read phase: the exchange, then this rank's own reads; its
agreement raises any rank's failure on every rank.

The restore plan says per chunk where it comes from (``Route``): this node (its own copy or
a partner replica it holds), a peer rank, or the capacity tier.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from ..errors import CheckpointError, CheckpointNotFoundError
from ..format import layout
from ..format.manifest import Manifest
from ..format.types import ReadItem
from ..tiers import holdings
from ..tiers.base import StepCopy, Tier
from .exchange import Piece, PieceExchange, header_messages, receive_header, send_messages
from .plan import ArrayRead, ReadPlan, check_template, parent_record, plan_reads
from .read import read_arrays
from .peers import held_report, source_rank


@dataclass
class Route:
    """Where each of one rank's reads comes from: ``here`` (ArrayReads from this node's
    copies, or the capacity copy), ``wants`` (source rank -> pieces, with their targets
    filled in at the read phase), and the per-chunk counts for the restore's stats."""

    here: list[ArrayRead] = field(default_factory=list)
    wants: dict[int, list[tuple[ArrayRead, ReadItem]]] = field(default_factory=dict)
    from_node: int = 0
    from_peers: int = 0
    from_capacity: int = 0


def route_reads(plan: ReadPlan, manifest: Manifest, node_copies: list, *, rank: int,
                holder_map: dict[int, list[int]], ranks_of_domain, has_capacity: bool
                ) -> Route:
    """Each item of ``plan``: from this node when one of its copies declares the chunk's
    writer (``expected``) or holds its file; else from the rank ``peers.source_rank``
    names; else from the capacity copy when there is one. Raises CheckpointNotFoundError
    naming the array and chunk when none holds it."""
    route = Route()
    for read in plan.reads:
        here = []
        for item in read.items:
            key = layout.chunk_key(item.chunk_index)
            if any(c.expected(read.record, key) or c.holds(read.record, key)
                   for c in node_copies):
                here.append(item)
                route.from_node += 1
                continue
            source = source_rank(read.name, key,
                                 holdings.writer_domains(manifest, read.record, key),
                                 holder_map, ranks_of_domain)
            if source is not None and source != rank:
                route.wants.setdefault(source, []).append((read, item))
                route.from_peers += 1
            elif has_capacity:
                here.append(item)
                route.from_capacity += 1
            else:
                raise CheckpointNotFoundError(
                    f"array {read.name!r}: chunk {key} of step {manifest.step} is on no node "
                    "of this job and not on the capacity tier; restore on the nodes that "
                    "hold it, or restore an older step")
        route.here.append(ArrayRead(read.name, read.record, tuple(here)))
    return route


def exchange_header(comm, topology, headers: dict[int, int], copies: list):
    """Step (1): ``headers`` maps each current domain whose node holds no copy of the step to
    the rank that sends it the manifest: that rank sends it to the domain's leader, which
    passes it to the domain's other ranks (senders never wait to receive: no deadlock).
    Returns (path, manifest) received, or None; a failure to receive is returned as the
    exception (the route phase raises it on every rank)."""
    rank = topology.rank
    for domain in sorted(d for d, giver in headers.items() if giver == rank):
        send_messages(comm, topology.leaders[domain], header_messages(
            copies[0] if copies else None))
    giver = headers.get(topology.domain)
    if giver is None:
        return None
    leader = topology.leaders[topology.domain]
    try:
        got = receive_header(comm, giver if rank == leader else leader)
    except CheckpointError as e:
        got = e
    if rank == leader:
        passed = header_messages(None) if isinstance(got, BaseException) else got[2]
        for member in topology.domain_ranks()[1:]:
            send_messages(comm, member, passed)
    return got if isinstance(got, BaseException) else got[:2]


def read_with_peers(*, comm, phases, topology, step: int, peers: dict, leaves, arrays,
                    value_names, copies: list, capacity_copy, strict: bool, threads: int,
                    writable_bits, records) -> tuple[dict, dict, str, dict, dict]:
    """Steps (1)-(3) on this rank; returns (values, replaced, source, parent, routes: how
    many chunk reads came from this node, from peers and from the capacity tier, and the
    bytes received from and served to peers). ``copies``:
    this node's copies of ``step`` (own, then replicas); ``capacity_copy``: the capacity
    tier's (None: none); ``writable_bits(leaf, replaced)`` and ``records(copies, plan)``
    are restore/execute.py's (a leaf's target bits; copies with the slices recording a
    plan's chunks)."""
    rank = topology.rank
    headers = {int(d): int(g) for d, g in peers["headers"].items()}
    holder_map = {int(d): list(c) for d, c in peers["holders"].items()}
    received = exchange_header(comm, topology, headers, copies)
    box: dict = {}

    def route():
        if isinstance(received, BaseException):
            raise received
        manifest = received[1] if received else copies[0].manifest
        source = received[0] if received else copies[0].path
        plan = plan_reads(leaves, manifest)
        check_template(leaves, value_names, manifest, strict=strict, source=source)
        box.update(manifest=manifest, source=source, route=route_reads(
            plan, manifest, copies, rank=rank, holder_map=holder_map,
            ranks_of_domain=topology.domain_ranks, has_capacity=capacity_copy is not None))
    phases.run("route", route)
    # Who requests from whom: one native all-to-all of flags (O(ranks) per rank), not a
    # list of pairs at rank 0.
    told = comm.alltoall_flags([int(r in box["route"].wants)
                                for r in range(topology.world_size)],
                               what=phases.what, timeout=phases.timeout)
    serves = [r for r, flag in enumerate(told) if flag]
    replaced: dict = {}

    def read():
        manifest, plan = box["manifest"], box["route"]
        targets, wants, failure = {}, {}, None
        try:
            for leaf in arrays:
                if any(r.name == leaf.name for r in plan.here) or any(
                        r.name == leaf.name for pairs in plan.wants.values() for r, _ in pairs):
                    targets[leaf.name] = writable_bits(leaf, replaced)
            wants = {s: [Piece(r.name, layout.chunk_key(i.chunk_index), i.chunk_region,
                               targets[r.name][0], i.target_region) for r, i in pairs]
                     for s, pairs in plan.wants.items()}
        except Exception as e:  # noqa: BLE001 - the exchange must still run
            failure = e
        exchange = PieceExchange(comm, rank, topology.world_size, wants=wants, serves=serves,
                                 copies=copies, manifest=manifest, what=phases.what,
                                 records=records)
        problem = exchange.run(failure)
        if problem is not None:
            raise problem
        local = [c for c in copies] + ([capacity_copy] if capacity_copy is not None else [])
        here = ReadPlan(step, tuple(r for r in plan.here if r.items))
        if here.reads:
            kept, here = records(local, here)
            read_arrays(kept, ((r.record, list(r.items), *targets[r.name])
                               for r in here.reads), threads=threads, rank=rank)
        for leaf in arrays:  # leaves filled from peers alone: their host copies go back
            if leaf.name in targets and not any(r.name == leaf.name for r in here.reads):
                targets[leaf.name][1]()
        box["routes"] = {"node": plan.from_node, "peers": plan.from_peers,
                         "capacity": plan.from_capacity, "received_bytes": exchange.received,
                         "served_bytes": exchange.served}
        return parent_record(manifest, box["source"])
    parent = phases.decide("read", read, lambda parents: parents[0])
    values = {name: box["manifest"].values[name]["value"] for name in value_names
              if box["manifest"].values.get(name) is not None}
    return values, replaced, box["source"], parent, box["routes"]


# ---- this node's copies, and the find phase's report of them ---------------------------------

def replica_steps(local: Tier, run: str) -> list[int]:
    """The steps of which this node's tier holds a committed partner replica (a tier
    without replicas: none)."""
    steps = getattr(local, "replica_steps", None)
    return list(steps(run)) if steps is not None else []


def node_copies(local: Tier, run: str, step: int, own: StepCopy | None = None) -> list:
    """This node's copies of ``step``: its own committed one (``own`` when already open),
    then the partner replicas it holds. A copy whose header cannot be read is left out
    (its chunks are then served by another node, or the read names them)."""
    copies = []
    if own is not None:
        copies.append(own)
    elif step in local.steps(run):
        with contextlib.suppress(CheckpointError):
            copies.append(local.open(run, step, ranks=()))
    replicas = getattr(local, "replica_copies", None)
    if replicas is not None:
        with contextlib.suppress(CheckpointError):
            copies.extend(replicas(run, step))
    return copies


def node_holdings(local: Tier, run: str, opened: dict, replica: list[int],
                  nodes: frozenset) -> dict:
    """A domain leader's report of its node's copies (restore/peers.py ``held_report``):
    per committed step, the saved domains they hold, the step's saved domain count, and
    the saved nodes that are not in this job (lost nodes, for the warning)."""
    steps = {}
    for s in sorted(set(opened) | set(replica)):
        copies = node_copies(local, run, s, opened.get(s)) if s in opened else \
            node_copies(local, run, s)
        if not copies:
            continue
        held = set().union(*(c.held_domains() for c in copies))
        manifest = copies[0].manifest
        absent = sorted({n for n in manifest.domain_nodes().values() if n not in nodes})
        steps[s] = (held, len(set(manifest.domains)), absent)
    return held_report(steps)
