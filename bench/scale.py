#!/usr/bin/env python3
"""Scale benchmark (issue 12): what coordination and metadata cost at large rank and array
counts, simulated in one process with the engine's own code.

    .venv/bin/python bench/scale.py [--cells 64x100,...,16384x2000]

Every array of a cell is (ranks * 8, 256) float32 split evenly by rows over every rank (what
FSDP's dim-0 sharding gives: a regular grid), 8 ranks per node-local directory (domain). Each
cell runs in its own process (its peak memory is the coordinator's). What runs is the engine's
code, not a model of it:

- the **declare** phase: every rank's message as ``save/coordinate.py`` builds it (the
  digests of its declaration and its flags), parsed and answered by the coordinator exactly
  as ``runtime/comm.py`` does on rank 0 (``json.loads`` of each message,
  ``coordinate.answer_declare``, the encoded replies);
- the **plan** phase of a first save: every rank's cells, one table, ``answer_plan``
  (``jobplan.plan_job`` with its overlap/gap/type checks, every rank's rank plan, the header);
- **one rank's work**: ``declare`` on its 2,000 leaves and its digests, ``rank_writes`` from
  its rank plan;
- the phases whose messages do not depend on the job's size (clear, prepare, commit and the
  tier policy after the commit: every rank but the coordinator sends an outcome and receives
  a verdict) are counted from those fixed messages; bench/collectives.py measures every
  phase's bytes under real MPI ranks, flat in the number of ranks;
- the **write** and **manifest** phases of the manifest slices (``save/job.py``): each rank's
  slice summary, the coordinator's digest and inclusion proofs, each leader's dynamic header;
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


def _root(comm, messages: list[bytes], answer):
    """The coordinator's side of one collective, as MPIComm.collect runs it on rank 0:
    parse every message, answer, encode the replies. Returns (CPU s, replies, shared)."""
    from tierpoint.runtime.comm import _parse_all
    t = time.process_time()
    values = _parse_all(messages)
    replies, shared, shared_to = comm._answer(answer, values)
    return time.process_time() - t, replies, shared, shared_to


def measure(ranks: int, arrays: int) -> dict:
    import hashlib

    from tierpoint.options import Policy
    from tierpoint.runtime.comm import Comm
    from tierpoint.save import coordinate as co
    from tierpoint.save.declare import RankCells, declare
    from tierpoint.save.jobplan import rank_writes

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    domains = [r // PER_DOMAIN for r in range(ranks)]
    leaders = {r for r in range(ranks) if r % PER_DOMAIN == 0}
    comm = Comm()
    comm.size = ranks
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
            out.update(on_capacity=False, values={"step": {"key": ["step"], "value": 98}},
                       ordinal=99)
        return {"ok": True, "value": out}
    declare_msgs = [json.dumps(flags(r)).encode() for r in range(ranks)]
    policy = Policy(keep_local=2)

    def decide(found):
        return co.decide_save(found, step=98, overwrite=False, if_older="raise", what="save",
                              tier_dirs=["/local"] * ranks, pools=[], policy=policy)
    cache = co.RootCache()
    # First save: declare (no cached plan), then plan.
    cpu_d1, replies_d1, _, _ = _root(comm, declare_msgs, lambda v: co.answer_declare(
        v, cache, decide))
    plan_msgs = [json.dumps({"ok": True, "value": {
        "d": digests[r], "t": table_digest,
        "part": RankCells(((r, 0),)).to_json(),
        "table": table_json if r == 0 else None}}).encode() for r in range(ranks)]
    cpu_plan, replies_p, shared, shared_to = _root(comm, plan_msgs, lambda v: co.answer_plan(
        v, cache, chunk_bytes=64 << 20, domains=domains, header_of=co.header_of))
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    part1 = json.loads(replies_p[1])["v"]["part"]
    t = time.process_time()
    writes = rank_writes(decl, part1, 1, chunk_bytes=64 << 20)
    rank_writes_s = time.process_time() - t
    assert len(writes) == arrays, len(writes)
    # Steady state: the same digests again; the cached plan answers.
    cpu_d2, replies_d2, _, _ = _root(comm, declare_msgs, lambda v: co.answer_declare(
        v, cache, decide))
    assert "cached" in json.loads(replies_d2[1])["v"], replies_d2[1][:200]
    header_bytes = len(shared) if shared is not None else 0
    fixed, fixed_s = fixed_phases(ranks, comm)
    slices = slice_phases(ranks, arrays, comm, json.loads(shared))
    steady = {"declare": len(declare_msgs[1]) + len(replies_d2[1]), **fixed, **slices["bytes"]}
    leader_steady = {"declare": len(declare_msgs[PER_DOMAIN]) + len(replies_d2[PER_DOMAIN]),
                     **fixed, **slices["leader_bytes"]}
    first = {"declare": len(declare_msgs[1]) + len(replies_d1[1]),
             "plan": len(plan_msgs[1]) + len(replies_p[1]), **fixed, **slices["bytes"]}
    return {"ranks": ranks, "arrays": arrays,
            "first_root_s": cpu_d1 + cpu_plan + slices["root_s"] + fixed_s,
            "plan_s": cpu_plan, "root_mem": max(0, rss_peak - rss0),
            "rank_s": rank_declare_s + rank_writes_s,
            "steady_root_s": cpu_d2 + slices["root_s"] + fixed_s,
            "steady_parts_s": {"declare": cpu_d2, "write+seal": slices["root_s"],
                               "fixed": fixed_s},
            "steady_rank": steady, "steady_leader": leader_steady, "first_rank": first,
            "header_to_leaders": header_bytes,
            "manifest": slices["manifest"], "restore_meta": slices["restore_meta"],
            "local_header": slices["local_header"], "slice": slices["slice"]}


def _ok(value) -> bytes:
    return json.dumps({"ok": True, "value": value}).encode()


def _verdict(values):
    """Rank 0's answer to an ``agree(collect="root")`` (runtime/comm.py): the verdict."""
    from tierpoint.runtime.comm import Broadcast
    failed = [(r, v["error"]) for r, v in enumerate(values) if not v["ok"]]
    return Broadcast({"failed": failed} if failed else None)


def _decided(answer):
    """Rank 0's answer to a ``PhaseRunner.decide``: the decision from every rank's value."""
    from tierpoint.runtime.comm import Broadcast
    return lambda values: Broadcast({"v": answer([v["value"] for v in values])})


def fixed_phases(ranks: int, comm) -> tuple[dict, float]:
    """The phases whose messages do not grow with the job, each run through the
    coordinator's real code on every rank's message: clear, prepare, manifest and commit
    (an outcome up, the verdict down) and the four collectives of the tier policy after the
    commit (tiers/ops.py: a drain to start, the leftover sweep's listing and removals, the
    ring's removals; leaders send their ring's steps). Returns a non-leader's bytes per
    phase and the coordinator's CPU for all of them."""
    from tierpoint.tiers.ops import _union_of_removals
    leaders = [r % PER_DOMAIN == 0 for r in range(ranks)]
    out, cpu = {}, 0.0
    for name in ("clear", "prepare", "manifest", "commit"):
        msgs = [_ok(None)] * ranks
        t, replies, _, _ = _root(comm, msgs, _verdict)
        out[name], cpu = len(msgs[1]) + len(replies[1]), cpu + t
    after = 0
    pending = [_ok({"busy": False, "view": [[96, 97], []] if lead else None})
               for lead in leaders]
    t, replies, _, _ = _root(comm, pending, _decided(lambda found: []))
    after, cpu = after + len(pending[1]) + len(replies[1]), cpu + t
    listing = [_ok([96, 97] if lead else None) for lead in leaders]
    t, replies, _, _ = _root(comm, listing, _decided(lambda found: []))
    after, cpu = after + len(listing[1]) + len(replies[1]), cpu + t
    for _ in ("sweep", "prune"):
        msgs = [_ok([])] * ranks
        t, replies, _, _ = _root(comm, msgs, _decided(_union_of_removals))
        after, cpu = after + len(msgs[1]) + len(replies[1]), cpu + t
    out["after-commit"] = after
    return out, cpu


def slice_phases(ranks: int, arrays: int, comm, static_header: dict) -> dict:
    """The write phase (each rank's slice summary, gathered at rank 0) and the seal (the
    replica check, the digest and the inclusion proofs; save/records.py), one leader's
    header, and the metadata sizes: the capacity copy's header (every slice listed) plus
    every rank's slice, and what one restoring rank of the same layout reads (its node's
    header and its own old slice)."""
    import hashlib

    from tierpoint.format import layout, slices
    from tierpoint.format.compact import compact_header
    from tierpoint.format.types import WrittenChunk
    from tierpoint.runtime.comm import Scatter
    from tierpoint.save import records
    names = [f"layers.{i:04d}.w" for i in range(arrays)]
    recs = [WrittenChunk(n, (1, 0), ROWS * COLS * 4 + 4, 123456789, 1, "ab" * 32,
                         0x0123456789ABCDEF) for n in names]
    doc = records.slice_of_save("scale", 99, 1, recs)
    data = slices.encode(doc)
    entry = slices.entry_of(data, doc, {n: n for n in names}).to_document()

    def summary(r):  # every rank's slice entry: rank 1's, with its own hashes
        h = hashlib.sha256(str(r).encode()).hexdigest()
        return {"slice": {**entry, "sha256": h, "root": h} if r != 1 else entry}
    msgs = [_ok(summary(r)) for r in range(ranks)]
    cpu_w, replies_w, _, _ = _root(comm, msgs, _verdict)
    summaries = [json.loads(m)["value"] for m in msgs]
    leaders = list(range(0, ranks, PER_DOMAIN))

    def domain_ranks(d):
        return list(range(d * PER_DOMAIN, min(ranks, (d + 1) * PER_DOMAIN)))
    values = {"step": {"key": ["step"], "value": 99}}
    cpu_s, replies_s, _, _ = _root(comm, [_ok(None)] * ranks, lambda _: Scatter(
        records.seal_save(summaries, leaders, domain_ranks, values)))
    sealed = json.loads(replies_s[PER_DOMAIN])["v"]

    class Inputs:  # save.job.ManifestInputs' fields that the header reads
        run, step, header, metadata, ordinal = "scale", 99, static_header, {}, 99
        parent, code_version, user = None, "abc", "bench"
        ranks_ = None
    Inputs.ranks = tuple({"rank": r, "node": f"node{r // PER_DOMAIN:05d}",
                          "host": f"host{r // PER_DOMAIN:05d}", "pid": 100000 + r,
                          "tier_dir": "/local/ckpt", "domain": r // PER_DOMAIN}
                         for r in range(ranks))
    # The header bytes as layout.write_manifest writes them (per-rank tables compacted).
    local_header = len(layout.encode_json(compact_header(records.header_of_save(
        Inputs, sealed["digest"], sealed["slices"], sealed["values"]))))
    every = {str(r): {k: v for k, v in summaries[r]["slice"].items() if k != "proof"}
             for r in range(ranks)}
    capacity_header = len(layout.encode_json(compact_header(records.header_of_save(
        Inputs, sealed["digest"], every, values))))
    return {"bytes": {"write": len(msgs[1]) + len(replies_w[1]),
                      "seal": len(_ok(None)) + len(replies_s[1])},
            "leader_bytes": {"write": len(msgs[PER_DOMAIN]) + len(replies_w[PER_DOMAIN]),
                             "seal": len(_ok(None)) + len(replies_s[PER_DOMAIN])},
            "root_s": cpu_w + cpu_s,
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
          f"{ {k: round(v, 3) for k, v in detail['steady_parts_s'].items()} }; a node's header "
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
