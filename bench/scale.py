#!/usr/bin/env python3
"""Scale benchmark (issue 12, first part: the baseline): what coordination and metadata cost
at large rank and array counts, simulated in one process.

    .venv/bin/python bench/scale.py [--budget 20]

For each (ranks x arrays), every array is (ranks * 8, 256) float32 split evenly by rows (what
FSDP's dim-0 sharding gives), one shard per rank. Per cell it reports:

- ``declare B/rank``: the bytes one rank contributes to the declare phase (JSON, as api.py
  sends them), and ``recv B/rank``: what every rank receives from it (the allgather hands each
  rank every rank's declarations);
- ``steady s``: the CPU one rank spends per save in the steady state (same layout as the
  previous save) before the plan cache can answer: serialising and hashing every rank's
  declarations (api.Checkpointer._prepare);
- ``plan s``: ``save.plan.plan_save`` on the whole job (every rank runs it on a first save or
  a changed layout);
- ``manifest B`` and ``restore meta B/rank``: the manifest's size, and what one restoring rank
  reads of it (today: all of it).

Cells too big to build within ``--budget`` seconds are extrapolated linearly from the largest
measured cell of the same kind and marked ``~``. The PASS/FAIL columns are the targets of
issue 12 (steady state: <= 0.1 s and <= 64 KiB per rank; first save: plan <= 30 s; restore
metadata: proportional to what a rank restores, here judged as <= 1 MiB per rank). This is the
baseline the scale work is measured against; it changes no engine code.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time


from tierpoint.format import layout  # noqa: E402
from tierpoint.format.types import Box, LocalArray, WrittenChunk  # noqa: E402
from tierpoint.save.job import ManifestInputs, manifest_of_save  # noqa: E402
from tierpoint.save.plan import plan_save  # noqa: E402

CELLS = [(64, 100), (256, 100), (1024, 100), (1024, 400), (4096, 100), (16384, 2000)]
ROWS, COLS = 8, 256
STEADY_S, STEADY_BYTES, PLAN_S, RESTORE_META = 0.1, 64 << 10, 30.0, 1 << 20


def declarations_of(rank: int, ranks: int, arrays: int) -> list:
    """One rank's declare-phase payload: [[declaration, key], ...] per array."""
    return [[LocalArray(f"layer{i}.w", "float32", (ranks * ROWS, COLS),
                        Box((rank * ROWS, 0), (ROWS, COLS)), False).to_json(), [f"layer{i}.w"]]
            for i in range(arrays)]


def steady_seconds(payloads: list) -> float:
    """The cache key computation of api.Checkpointer._prepare over every rank's payload."""
    t = time.process_time()
    hashlib.sha256(json.dumps(payloads).encode()).digest()
    return time.process_time() - t


def manifest_bytes(ranks: int, arrays: int, plan) -> int:
    """The manifest document of a save of this plan (chunk records as a save writes them)."""
    written = [[] for _ in range(ranks)]
    for a in plan.arrays:
        for c in a.chunks:
            written[c.writer].append(WrittenChunk(a.name, c.index, 8 * 1024 + 4, 123456789,
                                                  c.writer, "ab" * 32, 0x0123456789ABCDEF))
    ranks_info = tuple({"rank": r, "node": f"node{r // 8:05d}", "host": f"host{r // 8:05d}",
                        "pid": 100000 + r, "tier_dir": f"/local/node{r // 8:05d}/ckpt",
                        "domain": r // 8} for r in range(ranks))
    inputs = ManifestInputs(run="scale", step=1, plan=plan,
                            keys={a.name: [a.name] for a in plan.arrays}, values={},
                            metadata={}, ordinal=1, ranks=ranks_info, parent=None,
                            code_version=None, user="bench")
    return len(layout.encode_json(manifest_of_save(inputs, written)))


def measure(ranks: int, arrays: int) -> dict:
    payloads = [declarations_of(r, ranks, arrays) for r in range(ranks)]
    per_rank = len(json.dumps(payloads[0]).encode())
    steady = steady_seconds(payloads)
    decls = [[LocalArray.from_json(d) for d, _ in p] for p in payloads]
    t = time.process_time()
    plan = plan_save(decls, domains=[r // 8 for r in range(ranks)])
    planned = time.process_time() - t
    return {"declare": per_rank, "recv": per_rank * ranks, "steady": steady, "plan": planned,
            "manifest": manifest_bytes(ranks, arrays, plan), "shards": ranks * arrays,
            "arrays": arrays}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=20.0,
                   help="largest estimated plan time (s) of a cell that is measured, not "
                        "extrapolated (default 20)")
    args = p.parse_args()
    print(f"{'ranks x arrays':>15} {'declare B/rank':>15} {'recv B/rank':>14} "
          f"{'steady s':>10} {'plan s':>10} {'manifest B':>14} {'restore meta B/rank':>20}  "
          "steady  first  restore")
    last = None
    for ranks, arrays in CELLS:
        shards = ranks * arrays
        guess = None if last is None else last["plan"] / last["shards"] * shards
        if guess is None or guess <= args.budget:
            row, mark = measure(ranks, arrays), " "
            last = row
        else:  # linear in shards from the largest measured cell
            k = shards / last["shards"]
            per_rank = last["declare"] * arrays // last["arrays"]
            row = {"declare": per_rank, "recv": per_rank * ranks,
                   "steady": last["steady"] * k, "plan": last["plan"] * k,
                   "manifest": int(last["manifest"] * k), "shards": shards, "arrays": arrays}
            mark = "~"
        steady_ok = row["steady"] <= STEADY_S and row["recv"] <= STEADY_BYTES
        print(f"{ranks:>7} x {arrays:<5} {mark}{row['declare']:>14,} {mark}{row['recv']:>13,} "
              f"{mark}{row['steady']:>9.3f} {mark}{row['plan']:>9.1f} {mark}{row['manifest']:>13,} "
              f"{mark}{row['manifest']:>19,}  {'PASS' if steady_ok else 'FAIL':>6} "
              f"{'PASS' if row['plan'] <= PLAN_S else 'FAIL':>6} "
              f"{'PASS' if row['manifest'] <= RESTORE_META else 'FAIL':>8}", flush=True)
    print("~: extrapolated linearly in shards from the largest measured cell (--budget). "
          "Targets: steady <= 0.1 s CPU and <= 64 KiB received per rank per save; first save "
          "plan <= 30 s; restore metadata <= 1 MiB per rank (today every rank reads the "
          "whole manifest).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
