"""How the ranks of a save agree on its plan, at a cost that does not grow with the job in the
steady state (the same layout saved again, the normal case in training).

Two collectives, both gathered at the coordinator (rank 0):

1. ``declare``: every rank sends the 32-byte digests of its declaration (``save/declare.py``)
   and a few flags to its domain's leader, which condenses them (``combine_declare``: one
   digest of its ranks' digests, condensed flags); the coordinator decides whether the save
   goes ahead (``decide``, the Checkpointer's rules) and compares each domain's digest with
   the one its cached plan was made from. Same digests in every domain: it answers "cached"
   and the save goes on with each rank's own cached part of the plan; no declaration crossed
   the network, and the coordinator handled one value per domain.
2. ``plan`` (first save, or any rank's layout changed): every rank sends its small rank part
   (cells of its grids, boxes of its irregular arrays); one rank per distinct array table
   sends the table itself. The coordinator plans the job (``save/jobplan.py``: overlap, gap
   and type checks included) and hands each rank only its part of the plan.

Invariants:
- a rank uses a cached plan only when the coordinator confirmed, in this save, that every
  rank's declaration digest equals the one the cached plan was made from, and names the plan
  (its id) so a rank whose cache holds another plan fails instead of writing a wrong layout;
- caches change only after a plan round succeeded on every rank;
- the coordinator's work per steady-state save is O(domains) comparisons of digests, and
  every rank sends and receives O(1) bytes.
The root-side answers are plain functions of the gathered values (``answer_declare``,
``answer_plan``), so bench/scale.py runs the coordinator's work for 16,384 simulated ranks in
one process.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from ..errors import CheckpointError, CheckpointExistsError, OlderStepError
from ..tiers.retention import deleted_at_once, due_for_drain
from ..format import dtypes, layout
from ..runtime.comm import Broadcast, Scatter, _rebuild, describe_error
from .declare import RankCells, RankDeclaration, TableEntry
from .jobplan import plan_job, rank_writes
from .plan import grid_chunk_shape


@dataclass
class RootCache:
    """The coordinator's memory of the last plan: each domain's digest of its ranks'
    declaration digests (``domain_digest``), the id of the plan made from them, and the
    array tables it was given (by table digest)."""

    domain_digests: list | None = None
    plan_id: str | None = None
    tables: dict = field(default_factory=dict)


@dataclass
class RankCache:
    """A rank's memory of its part of the last plan."""

    digest: str | None = None
    plan_id: str | None = None
    part: dict | None = None       # the coordinator's rank plan (jobplan.JobPlan.rank_plan)
    writes: list | None = None     # what this rank writes: [(ArrayPlan, ChunkAssignment)]
    header: dict | None = None     # leaders: the manifest header's static part
    documents: list | None = None  # the zarr.json documents it writes: [(name, document)]
    staging: list | None = None    # the staging parts, planned by the first save needing them


def header_of(job) -> dict:
    """The manifest header's static part of a job plan: the arrays and the grid groups."""
    return {"arrays": job.header_arrays(), "groups": job.header_groups()}


def documents_of(decl: RankDeclaration, part: dict, *, chunk_bytes: int) -> list:
    """The zarr.json documents (array name, document) a rank writes, by its rank plan."""
    explicit = {i: tuple(cs) for i, cs, _ in part["explicit"]}
    out = []
    for i in part["docs"]:
        e = decl.table[i]
        chunk_shape = explicit.get(i) or grid_chunk_shape(e.shape, e.parts,
                                                          dtypes.itemsize(e.dtype), chunk_bytes)
        out.append((e.name, layout.zarr_array_document(e.dtype, e.shape, chunk_shape, e.key)))
    return out


def plan_id_of(digests: list[str]) -> str:
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:32]


def domain_digest(digests: list[str]) -> str:
    """One domain's digest of its ranks' declaration digests (ranks ascending)."""
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


# ---- the domain leaders' part (pure) ---------------------------------------------------------

def condense_flags(ranks: list[int], flags: list[dict]) -> dict:
    """What ``decide_save`` needs of some ranks' declare-phase flags, in O(1) bytes (but the
    ring's steps of the leaders among them): how many ranks, how many hold the step already
    (and the first), the first busy and unreported ones, rank 0's ordinal and capacity flag.
    ``merge_flags`` combines condensed flags of disjoint rank sets."""
    out: dict = {"n": len(flags), "holders": 0, "local": []}
    for rank, f in zip(ranks, flags):
        for key in ("busy", "unreported"):
            if key in f:
                out.setdefault(key, f[key])
        if f.get("exists"):
            out["holders"] += 1
            out.setdefault("holder", rank)
        if "local" in f:
            out["local"].append(f["local"])
        if "ordinal" in f:  # rank 0's
            out["ordinal"], out["on_capacity"] = f["ordinal"], f["on_capacity"]
            out["drain_clock"] = f.get("drain_clock", False)
    return out


def merge_flags(parts: list[dict]) -> dict:
    """Condensed flags of disjoint rank sets, combined (the first set's first wins)."""
    out: dict = {"n": 0, "holders": 0, "local": []}
    for p in parts:
        out["n"] += p["n"]
        out["holders"] += p["holders"]
        out["local"] += p["local"]
        for key in ("busy", "unreported", "holder", "ordinal", "on_capacity", "drain_clock"):
            if key in p:
                out.setdefault(key, p[key])
    return out


def combine_declare(ranks: list[int], values: list[dict]) -> dict:
    """A domain leader's condensation of its ranks' declare messages (``values``, ranks
    ascending): their failures, or the domain's digest of their declaration digests, the
    first rank of each distinct table digest, and their condensed flags."""
    failed = [(r, v["error"]) for r, v in zip(ranks, values) if not v["ok"]]
    if failed:
        return {"failed": failed}
    flags = [v["value"] for v in values]
    tables: dict[str, int] = {}
    for r, f in zip(ranks, flags):
        tables.setdefault(f["t"], r)
    return {"d": domain_digest([f["d"] for f in flags]), "tables": tables,
            "flags": condense_flags(ranks, flags)}


# ---- the coordinator's answers (pure) --------------------------------------------------------

def answer_declare(values: list[dict], cache: RootCache, decide) -> Broadcast:
    """Rank 0's answer to the declare phase, from one ``combine_declare`` value per domain
    (``values[d]``, in domain order); ``decide(flags)`` (the Checkpointer's rules on the
    merged flags: busy, an unreported failure, an existing step, the ring) returns the
    decision every rank acts on. Answers {"decision", "cached": plan id} when the cached plan
    fits every domain, else {"decision", "send_table": {table digest: the rank that sends
    it}} for the plan phase (tables the cache lacks only). O(domains)."""
    failed = [f for v in values for f in v.get("failed", ())]
    if failed:
        return Broadcast({"failed": sorted(failed)})
    decision = decide(merge_flags([v["flags"] for v in values]))
    if decision.get("stop"):
        return Broadcast({"decision": decision})
    if cache.domain_digests == [v["d"] for v in values]:
        return Broadcast({"decision": decision, "cached": cache.plan_id})
    senders: dict[str, int] = {}
    for v in values:
        for t, r in v["tables"].items():
            if t not in cache.tables and r < senders.get(t, r + 1):
                senders[t] = r
    return Broadcast({"decision": decision, "send_table": senders})


def answer_plan(values: list[dict], cache: RootCache, *, chunk_bytes: int, domains,
                header_of) -> Scatter | Broadcast:
    """Rank 0's answer to the plan phase: plan the job from one table per distinct table
    digest and every rank's part; each rank gets its rank plan and the plan id, leaders the
    manifest header's static part (``header_of(job_plan)``). Planning errors (overlaps, gaps,
    disagreeing types) reach every rank. The cache is updated here, on success only."""
    failed = [(r, v["error"]) for r, v in enumerate(values) if not v["ok"]]
    if failed:
        return Broadcast({"failed": failed})
    sent = [v["value"] for v in values]
    tables = dict(cache.tables)
    for s in sent:
        if s.get("table") is not None:
            tables[s["t"]] = tuple(TableEntry.from_json(e) for e in s["table"])
    missing = {s["t"] for s in sent} - set(tables)
    if missing:
        raise CheckpointError(f"no rank sent the array table {sorted(missing)[0]}")
    job = plan_job(tables, [s["t"] for s in sent],
                   [RankCells.from_json(s["part"]) for s in sent],
                   chunk_bytes=chunk_bytes, domains=domains)
    digests = [s["d"] for s in sent]
    plan_id = plan_id_of(digests)
    header = header_of(job)
    replies = [{"plan_id": plan_id, "part": job.rank_plan(r)} for r in range(len(sent))]
    by_domain: dict = {}
    for r, d in enumerate(domains):
        by_domain.setdefault(d, []).append(digests[r])
    cache.domain_digests = [domain_digest(by_domain[d]) for d in sorted(by_domain)]
    cache.plan_id = plan_id
    cache.tables = {t: tables[t] for t in set(s["t"] for s in sent)}
    # The header's static part goes to the domain leaders only, encoded once.
    return Scatter(replies, shared=header, shared_key="header", shared_to=_leaders(domains))


def _leaders(domains) -> list[int]:
    seen: dict = {}
    for r, d in enumerate(domains):
        seen.setdefault(d, r)
    return list(seen.values())


def decide_save(flags: dict, *, step: int, overwrite: bool, if_older: str, what: str,
                tier_dirs: list, pools: list, policy) -> dict:
    """The coordinator's decision on a save, from every rank's declare-phase flags condensed
    (``merge_flags``; the same decision reaches every rank): ``stop`` ("busy", "unreported"
    or "raise", with the error) or go on with the ordinal, and ``older``: why the ring
    deletes the step at once (if_older="warn"; "raise" refuses it)."""
    if "unreported" in flags and "busy" not in flags:
        return {"stop": "unreported", "error": flags["unreported"]}
    if "busy" in flags:
        return {"stop": "busy", "step": flags["busy"]}
    # A step committed on only some ranks' directories is a commit cut short (it cannot
    # be restored); the save replaces it. One every rank holds needs overwrite=True.
    holders = flags["holders"]
    if (holders == flags["n"] or flags["on_capacity"]) and not overwrite:
        where = (tier_dirs[flags["holder"]] if holders else
                 f"the capacity tier ({pools[0]})")
        return {"stop": "raise", "error": describe_error(CheckpointExistsError(
            f"{what}: step {step} is already committed under {where}; pass "
            "overwrite=True to replace it or save under a new step"))}
    ordinal = flags["ordinal"]
    # Drained once committed: by the count rule, or by rank 0's clock (runtime/clock.py).
    due = bool(pools) and (due_for_drain(ordinal, policy) or bool(flags.get("drain_clock")))
    out = {"ordinal": ordinal, "drain_due": due}
    newer = deleted_at_once(step, flags["local"], due=due, policy=policy)
    if not newer:
        return out
    why = f"older than the newest local steps {newer} (keep_local={policy.keep_local})"
    if if_older == "raise":
        return {"stop": "raise", "error": describe_error(OlderStepError(
            f"{what}: nothing was written: the local ring would delete step {step} as soon "
            f"as it is committed, since it is {why}; save a newer step, raise keep_local, "
            "or pass if_older='warn' to save it anyway (a restart that resumed from an "
            "older step and saves the later ones again)"))}
    return {**out, "older": why}


# ---- every rank -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Agreed:
    """The outcome of the two phases on this rank: the decision every rank acts on and this
    rank's part of the plan (its cache, now current)."""

    decision: dict
    plan: RankCache
    declaration: RankDeclaration | None = None


class Coordinator:
    """Runs the declare and plan phases on a save channel (``comm``: runtime/comm.py) for one
    Checkpointer; holds the caches. Called from the trainer's thread only."""

    def __init__(self, comm, *, rank: int, domains, chunk_bytes: int):
        self.comm, self.rank, self.domains, self.chunk_bytes = comm, rank, list(domains), chunk_bytes
        self.root = RootCache()
        self.mine = RankCache()

    def agree(self, flags_of, decl_of, decide, header_of, *, what: str, timeout: float,
              seconds: dict) -> Agreed:
        """``flags_of()``: this rank's flags (may raise: reported to every rank);
        ``decl_of()``: its RankDeclaration; ``decide``/``header_of``: the coordinator's rules
        (see ``answer_declare``/``answer_plan``)."""
        t = time.perf_counter()
        decl, mine = None, None
        try:
            decl = decl_of()
            mine = {"ok": True, "value": {**flags_of(), "d": decl.digest(),
                                          "t": decl.table_digest()}}
        except Exception as e:  # noqa: BLE001 - every failure must reach every rank
            mine = {"ok": False, "value": None, "error": describe_error(e)}
        _, reply = self.comm.collect(mine, what=what, timeout=timeout,
                                     answer=lambda vs: answer_declare(vs, self.root, decide),
                                     combine=combine_declare)
        seconds["declare"] = time.perf_counter() - t
        _raise_failed(reply, what)
        decision = reply["decision"]
        if decision.get("stop"):
            return Agreed(decision, self.mine, decl)
        if "cached" in reply:
            if self.mine.plan_id != reply["cached"] or self.mine.digest != decl.digest():
                raise CheckpointError(
                    f"{what}: rank {self.rank} holds another plan than the coordinator's "
                    f"cached one ({self.mine.plan_id} vs {reply['cached']}); the ranks' plan "
                    "caches diverged (a rank restarted alone?): restart the job")
            return Agreed(decision, self.mine, decl)
        t = time.perf_counter()
        sent = {"ok": True, "value": {"d": decl.digest(), "t": decl.table_digest(),
                                      "part": decl.held().to_json(),
                                      "table": ([e.to_json() for e in decl.table]
                                                if reply["send_table"].get(
                                                    decl.table_digest()) == self.rank
                                                else None)}}
        _, planned = self.comm.collect(
            sent, what=what, timeout=timeout,
            answer=lambda vs: answer_plan(vs, self.root, chunk_bytes=self.chunk_bytes,
                                          domains=self.domains, header_of=header_of))
        _raise_failed(planned, what)
        part = planned["part"]
        writes = rank_writes(decl, part, self.rank, chunk_bytes=self.chunk_bytes)
        self.mine = RankCache(decl.digest(), planned["plan_id"], part, writes,
                              planned.get("header"),
                              documents_of(decl, part, chunk_bytes=self.chunk_bytes))
        seconds["plan"] = time.perf_counter() - t
        return Agreed(decision, self.mine, decl)


def _raise_failed(reply, what: str) -> None:
    if isinstance(reply, dict) and "failed" in reply:
        raise _rebuild(what, [tuple(f) for f in reply["failed"]])
