#!/usr/bin/env python3
"""Scale benchmark (issue 12): what coordination and metadata cost at large rank and array
counts, simulated in one process with the engine's own code.

    .venv/bin/python bench/scale.py [--cells 64x100,...,16384x2000]

Every array of a cell is (ranks * 8, 256) float32 split evenly by rows over every rank (what
FSDP's dim-0 sharding gives: a regular grid), 8 ranks per node-local directory (domain). Each
cell runs in its own process (its peak memory is the coordinator's). What runs is the engine's
code, not a model of it, with every collective relayed through the domains' leaders as
``runtime/mpicomm.py`` relays it (``Relay``: the leaders' packets built by its rules, rank 0's
side run by its own methods):

- the **declare** phase: every rank's message as ``save/coordinate.py`` builds it (the
  digests of its declaration and its flags), condensed on each leader (``combine_declare``),
  answered by rank 0 (``answer_declare``);
- the **plan** phase of a first save: every rank's cells, one table, ``answer_plan``
  (``jobplan.plan_job`` with its overlap/gap/type checks, every rank's rank plan, the header);
- **one rank's work**: ``declare`` on its 2,000 leaves and its digests, ``rank_writes`` from
  its rank plan;
- the phases whose messages do not grow with the job: clear, prepare, write, manifest and
  commit (``agree``: outcomes condensed on the leaders) and the four collectives of the tier
  policy after the commit (``PhaseRunner.decide``; leaders send their ring's steps);
- the **seal** (``save/job.py``): one leader reads back its domain's 8 slices and seals its
  subtree (timed apart: leaders run in parallel), rank 0 combines one value per domain
  (``records.seal_replies`` through ``PhaseRunner.lead``'s answer), one leader's header;
- **metadata**: the manifest's bytes (header plus every rank's slice) and what one restoring
  rank of the same layout reads (the header and its own old slice).

PASS/FAIL against issue 12's targets: steady state <= 0.1 s coordinator CPU and <= 64 KiB
sent + received per rank per save; first save: plan <= 30 s on one core and coordinator
memory <= 2 GiB; restore metadata <= 1 MiB per rank.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CELLS = "64x100,256x100,1024x100,1024x400,4096x100,4096x2000,16384x2000"
ROWS, COLS, PER_DOMAIN = 8, 256, 8
STEADY_S, STEADY_BYTES, PLAN_S, PLAN_MEM, RESTORE_META = 0.1, 64 << 10, 30.0, 2 << 30, 1 << 20


class _Leaf:
    """What ``save.declare.declare`` reads of a state leaf (state.ArrayLeaf's fields)."""

    def __init__(self, name, ranks, rank):
        from tierpoint.format.types import Box
        self.name, self.dtype, self.key = name, "float32", (name,)
        self.global_shape = (ranks * ROWS, COLS)
        self.box = Box((rank * ROWS, 0), (ROWS, COLS))
        self.replicated = False
        self.grid = ((ranks, 1), (rank, 0))


class Relay:
    """One collective through the domain leaders, as runtime/mpicomm.py runs it, without MPI:
    the leaders' packets are built by the same rules (their members' messages joined, or
    ``combine`` over them), and what rank 0 does with them runs the MPIComm's own code
    (``_reported_late``, ``_answer_packets``, ``_bundles``) on an MPIComm that has no MPI
    communicator behind it. Timed: rank 0's CPU, and one leader's combine."""

    def __init__(self, ranks: int, domains):
        from tierpoint.runtime.channel import Comm
        from tierpoint.runtime.mpicomm import MPIComm
        model = MPIComm.__new__(MPIComm)
        Comm.__init__(model)
        model.rank, model.size, model._broken = 0, ranks, None
        model.set_domains(domains)
        self.model, self.groups = model, model._domain_groups()
        self.leaders = [g[0] for g in self.groups[1:]]

    def run(self, messages: list[bytes], answer, combine=None) -> dict:
        import json as _json

        from tierpoint.runtime.channel import _parse_all
        got, leader_s = {r: messages[r] for r in self.groups[0]}, 0.0
        for d, g in enumerate(self.groups[1:], 1):
            if combine is None:
                got[g[0]] = b"[" + b",".join(messages[r] for r in g) + b"]"
            else:
                t = time.process_time()
                got[g[0]] = _json.dumps({"c": combine(list(g), _parse_all(
                    [messages[r] for r in g]))}).encode()
                if d == 1:
                    leader_s = time.process_time() - t
        m = self.model
        t = time.process_time()
        packets, late = m._reported_late(got, self.leaders)
        result, replies = m._answer_packets(got, packets, answer, combine)
        bundles = m._bundles(replies, self.groups, combine is not None)
        root_s = time.process_time() - t
        assert not late
        sizes: dict[int, int] = {}
        for dest, buf in bundles:
            sizes[dest] = sizes.get(dest, 0) + len(buf)
        leader, member = self.groups[1][0], self.groups[0][1]
        member_reply = sizes[member]  # a member of domain 0 (rank 1): its own reply
        # A leader: its members' messages and rank 0's bundle in, its packet and its members'
        # replies (as large as rank 1's, for a reply every rank gets alike) out.
        g = self.groups[1]
        leader_bytes = (sum(len(messages[r]) for r in g[1:]) + sizes[leader]
                        + len(got[leader]) + (len(g) - 1) * member_reply)
        return {"root_s": root_s, "leader_s": leader_s, "result": result,
                "member": len(messages[member]) + member_reply, "leader": leader_bytes,
                "reply_to_member": replies.of(0 if combine is not None else member),
                "shared_bytes": len(replies.shared) if replies.shared else 0}


def measure(ranks: int, arrays: int) -> dict:
    import hashlib

    from tierpoint.options import Policy
    from tierpoint.save import coordinate as co
    from tierpoint.save.declare import RankCells, declare
    from tierpoint.save.jobplan import rank_writes

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    domains = [r // PER_DOMAIN for r in range(ranks)]
    leaders = {r for r in range(ranks) if r % PER_DOMAIN == 0}
    relay = Relay(ranks, domains)
    # One rank's own work: its declaration and digests (rank 1, a non-leader).
    t = time.process_time()
    decl = declare([_Leaf(f"layers.{i:04d}.w", ranks, 1) for i in range(arrays)])
    table_digest, digest1 = decl.table_digest(), decl.digest()
    rank_declare_s = time.process_time() - t
    table_json = [e.to_json() for e in decl.table]
    # Every other rank's digests: opaque strings to the coordinator (it only compares them),
    # so they are made up here instead of hashing 16,384 copies of the table.
    digests = [hashlib.sha256(f"{table_digest}:{r}".encode()).hexdigest() for r in range(ranks)]
    digests[1] = digest1

    def flags(r):
        out = {"exists": False, "d": digests[r], "t": table_digest}
        if r in leaders:
            out["local"] = [96, 97]  # the ring's steps
        if r == 0:
            out.update(on_capacity=False, ordinal=99)
        return {"ok": True, "value": out}
    declare_msgs = [json.dumps(flags(r)).encode() for r in range(ranks)]
    policy = Policy(keep_local=2)

    def decide(found):
        return co.decide_save(found, step=98, overwrite=False, if_older="raise", what="save",
                              tier_dirs=["/local"] * ranks, pools=[], policy=policy)
    cache = co.RootCache()
    # First save: declare (no cached plan), then plan.
    d1 = relay.run(declare_msgs, lambda v: co.answer_declare(v, cache, decide),
                   co.combine_declare)
    assert "send_table" in json.loads(d1["reply_to_member"])["v"], d1["reply_to_member"][:200]
    plan_msgs = [json.dumps({"ok": True, "value": {
        "d": digests[r], "t": table_digest,
        "part": RankCells(((r, 0),)).to_json(),
        "table": table_json if r == 0 else None}}).encode() for r in range(ranks)]
    p = relay.run(plan_msgs, lambda v: co.answer_plan(
        v, cache, chunk_bytes=64 << 20, domains=domains, header_of=co.header_of))
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    part1 = json.loads(p["reply_to_member"])["v"]["part"]
    t = time.process_time()
    writes = rank_writes(decl, part1, 1, chunk_bytes=64 << 20)
    rank_writes_s = time.process_time() - t
    assert len(writes) == arrays, len(writes)
    # Steady state: the same digests again; the cached plan answers.
    d2 = relay.run(declare_msgs, lambda v: co.answer_declare(v, cache, decide),
                   co.combine_declare)
    assert "cached" in json.loads(d2["reply_to_member"])["v"], d2["reply_to_member"][:200]
    fixed, fixed_s = fixed_phases(ranks, relay)
    slices = slice_phases(ranks, arrays, relay, cache_header(plan_msgs, cache, domains))
    steady = {"declare": d2["member"], **fixed["member"], **slices["member"]}
    leader_steady = {"declare": d2["leader"], **fixed["leader"], **slices["leader"]}
    first = {"declare": d1["member"], "plan": p["member"], **fixed["member"],
             **slices["member"]}
    return {"ranks": ranks, "arrays": arrays,
            "first_root_s": d1["root_s"] + p["root_s"] + slices["root_s"] + fixed_s,
            "plan_s": p["root_s"], "root_mem": max(0, rss_peak - rss0),
            "rank_s": rank_declare_s + rank_writes_s,
            "leader_s": d2["leader_s"] + slices["leader_s"],
            "steady_root_s": d2["root_s"] + slices["root_s"] + fixed_s,
            "steady_parts_s": {"declare": d2["root_s"], "seal": slices["root_s"],
                               "fixed": fixed_s},
            "steady_rank": steady, "steady_leader": leader_steady, "first_rank": first,
            "header_to_leaders": p["shared_bytes"],
            "manifest": slices["manifest"], "restore_meta": slices["restore_meta"],
            "local_header": slices["local_header"], "slice": slices["slice"]}


def cache_header(plan_msgs, cache, domains) -> dict:
    """The header's static part the plan gave the leaders (the plan phase's shared
    document; planned again here, outside the timings)."""
    from tierpoint.save import coordinate as co
    out = {}

    def keep(job):
        out.update(co.header_of(job))
        return {}
    co.answer_plan([json.loads(m) for m in plan_msgs], co.RootCache(tables=dict(cache.tables)),
                   chunk_bytes=64 << 20, domains=domains, header_of=keep)
    return out


def _ok(value) -> bytes:
    return json.dumps({"ok": True, "value": value}).encode()


def fixed_phases(ranks: int, relay: Relay) -> tuple[dict, float]:
    """The phases whose messages do not grow with the job, each through the relay: clear,
    prepare, write, manifest and commit (an outcome up, the verdict down) and the four
    collectives of the tier policy after the commit (tiers/ops.py through
    runtime/phases.py's ``decided``: a drain to start, the leftover sweep's listing and
    removals, the ring's removals; leaders send their ring's steps). Returns a member's and
    a leader's bytes per phase and rank 0's CPU for all of them."""
    from tierpoint.runtime.channel import condense_outcomes
    from tierpoint.runtime.phases import decided
    from tierpoint.tiers.ops import _union_of_removals
    leaders = [r % PER_DOMAIN == 0 for r in range(ranks)]
    out: dict = {"member": {}, "leader": {}}
    cpu, model = 0.0, relay.model
    for name in ("clear", "prepare", "write", "manifest", "commit"):  # agree(collect="root")
        m = relay.run([_ok(None)] * ranks, model.verdict("root", {}), condense_outcomes)
        out["member"][name], out["leader"][name], cpu = m["member"], m["leader"], cpu + m["root_s"]
    after = {"member": 0, "leader": 0}
    phases = [([_ok({"busy": False, "view": [[96, 97], []] if lead else None})
                for lead in leaders], decided(model, lambda found: [])),
              ([_ok([96, 97] if lead else None) for lead in leaders],
               decided(model, lambda f: [])),
              ([_ok([])] * ranks, decided(model, _union_of_removals)),
              ([_ok([])] * ranks, decided(model, _union_of_removals))]
    for msgs, answer in phases:
        m = relay.run(msgs, answer, condense_outcomes)
        after["member"] += m["member"]
        after["leader"] += m["leader"]
        cpu += m["root_s"]
    out["member"]["after-commit"] = after["member"]
    out["leader"]["after-commit"] = after["leader"]
    return out, cpu


def slice_phases(ranks: int, arrays: int, relay: Relay, static_header: dict) -> dict:
    """The seal (save/job.py): each leader reads its domain's slices and seals its domain
    (``records.seal_domain``, timed for one leader), rank 0 combines one value per domain
    (``records.seal_replies`` through runtime/phases.py's ``scattered``), one leader's
    header; and the metadata sizes: the capacity copy's header (every slice listed) plus
    every rank's slice, and what one restoring rank of the same layout reads (its node's
    header and its own old slice)."""
    import hashlib

    from tierpoint.format import layout, slices
    from tierpoint.format.compact import compact_header
    from tierpoint.format.types import WrittenChunk
    from tierpoint.runtime.phases import leader_result, led
    from tierpoint.save import records
    names = [f"layers.{i:04d}.w" for i in range(arrays)]
    recs = [WrittenChunk(n, (1, 0), ROWS * COLS * 4 + 4, 123456789, 1, "ab" * 32,
                         0x0123456789ABCDEF) for n in names]
    doc = records.slice_of_save("scale", 99, 1, recs)
    data = slices.encode(doc)
    # One leader's work: read back its domain's slices (their bytes here: rank 1's for each)
    # and seal the domain.
    group = list(range(PER_DOMAIN))
    t = time.process_time()
    summaries = {}
    for r in group:
        d = slices.parse_written(slices.encode({**doc, "rank": r}), r)
        summaries[r] = records.summary_of_slice(slices.entry_of(data, d, {n: n for n in names}),
                                                frozenset(), r, d)
    value, entries = records.seal_domain(group, summaries)
    leader_s = time.process_time() - t
    base = summaries[1]["slice"]

    def domain_value(d):  # every domain's value: the measured one, with its own root
        h = hashlib.sha256(str(d).encode()).hexdigest()
        return {**value, "root": h} if d else value
    msgs = [_ok(domain_value(r // PER_DOMAIN) if r % PER_DOMAIN == 0 else None)
            for r in range(ranks)]
    values = {"step": {"key": ["step"], "value": 99}}
    m = relay.run(msgs, led(lambda vs: records.seal_replies(vs, values)), leader_result)
    mine = records.seal_replies([c["v"] for c in m["result"]], values)[1]  # domain 1's

    class Inputs:  # save.job.ManifestInputs' fields that the header reads
        run, step, header, metadata, ordinal = "scale", 99, static_header, {}, 99
        parent, code_version, user = None, "abc", "bench"
    Inputs.ranks = tuple({"rank": r, "node": f"node{r // PER_DOMAIN:05d}",
                          "host": f"host{r // PER_DOMAIN:05d}", "pid": 100000 + r,
                          "tier_dir": "/local/ckpt", "domain": r // PER_DOMAIN}
                         for r in range(ranks))
    # The header bytes as layout.write_manifest writes them (per-rank tables compacted).
    local_header = len(layout.encode_json(compact_header(records.header_of_save(
        Inputs, mine["digest"], records.proven_slices(entries, mine["top"]), mine["values"]))))
    every = {str(r): {**base, "sha256": hashlib.sha256(str(r).encode()).hexdigest()}
             for r in range(ranks)}
    capacity_header = len(layout.encode_json(compact_header(records.header_of_save(
        Inputs, mine["digest"], every, values))))
    return {"member": {"seal": m["member"]}, "leader": {"seal": m["leader"]},
            "root_s": m["root_s"], "leader_s": leader_s,
            "manifest": capacity_header + ranks * len(data),
            "restore_meta": local_header + len(data), "local_header": local_header,
            "slice": len(data)}


def run_cell(cell: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", cell], capture_output=True,
                         text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"cell {cell} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default=CELLS, help=f"RANKSxARRAYS,... (default {CELLS})")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        ranks, arrays = (int(x) for x in args.one.split("x"))
        print(json.dumps(measure(ranks, arrays)))
        return 0
    print("first save (a new layout)                                            "
          "| steady state (same layout)")
    print(f"{'ranks x arrays':>15} {'root CPU s':>10} {'plan s':>7} {'root MiB':>8} "
          f"{'rank CPU s':>10} {'B/rank':>8} {'to leaders':>10} | {'root CPU s':>10} "
          f"{'B/rank':>7} {'B/leader':>8} | {'manifest B':>14} {'restore B/rank':>14} | "
          "first steady restore")
    detail = None
    for cell in args.cells.split(","):
        m = run_cell(cell)
        first_b = sum(m["first_rank"].values())
        steady_b, leader_b = sum(m["steady_rank"].values()), sum(m["steady_leader"].values())
        ok_first = m["plan_s"] <= PLAN_S and m["root_mem"] <= PLAN_MEM
        ok_steady = m["steady_root_s"] <= STEADY_S and max(steady_b, leader_b) <= STEADY_BYTES
        ok_restore = 0 < m["restore_meta"] <= RESTORE_META
        print(f"{m['ranks']:>7} x {m['arrays']:<5} {m['first_root_s']:>10.3f} "
              f"{m['plan_s']:>7.3f} {m['root_mem'] / 2**20:>8.0f} {m['rank_s']:>10.3f} "
              f"{first_b:>8,} {m['header_to_leaders']:>10,} | {m['steady_root_s']:>10.3f} "
              f"{steady_b:>7,} {leader_b:>8,} | {m['manifest']:>14,} {m['restore_meta']:>14,} | "
              f"{'PASS' if ok_first else 'FAIL':>5} {'PASS' if ok_steady else 'FAIL':>6} "
              f"{'PASS' if ok_restore else 'FAIL':>7}", flush=True)
        detail = m
    print(f"\nlargest cell: coordinator CPU per steady save by part "
          f"{ {k: round(v, 3) for k, v in detail['steady_parts_s'].items()} }; one leader's CPU "
          f"per steady save (its declare condensation and its domain's seal) "
          f"{detail['leader_s']:.3f} s; a node's header "
          f"{detail['local_header']:,} B, one rank's slice {detail['slice']:,} B")
    print("bytes per rank per phase, steady state, largest cell (non-leader / leader):")
    for k in detail["steady_rank"]:
        print(f"  {k:>13}: {detail['steady_rank'][k]:>7,} / {detail['steady_leader'][k]:>7,}")
    print("root CPU: the coordinator's CPU in the save's size-dependent collectives (parsing, "
          "deciding, planning, encoding); plan s: answer_plan alone; root MiB: the cell "
          "process's peak RSS growth; rank CPU: one rank's declare + rank_writes; B/rank: "
          "sent + received by a non-leader over every phase of one save; to leaders: the "
          "header's static part each domain leader receives once per layout.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
