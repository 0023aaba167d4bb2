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
- ``manifest B`` and ``restore meta B/rank``: the manifest header's size (format version 2, as
  the save writes it today: box-by-box layouts) and what one rank restoring the layout it saved
  reads (its node's header and its own slice); ``grid B/rank``: the same with grid layouts (what
  the grid planner writes). bench/manifest_sizes.py measures these (``manifest_sizes``).

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


from manifest_sizes import manifest_sizes  # noqa: E402  (bench/, beside this script)
from tierpoint.format.types import Box, LocalArray  # noqa: E402
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


def measure(ranks: int, arrays: int) -> dict:
    payloads = [declarations_of(r, ranks, arrays) for r in range(ranks)]
    per_rank = len(json.dumps(payloads[0]).encode())
    steady = steady_seconds(payloads)
    decls = [[LocalArray.from_json(d) for d, _ in p] for p in payloads]
    t = time.process_time()
    plan_save(decls, domains=[r // 8 for r in range(ranks)])
    planned = time.process_time() - t
    sizes = manifest_sizes(ranks, arrays)
    return {"declare": per_rank, "recv": per_rank * ranks, "steady": steady, "plan": planned,
            "manifest": sizes["header_shards"], "restore": sizes["restore_local_shards"],
            "grid": sizes["restore_local_grid"], "shards": ranks * arrays, "arrays": arrays}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=20.0,
                   help="largest estimated plan time (s) of a cell that is measured, not "
                        "extrapolated (default 20)")
    args = p.parse_args()
    print(f"{'ranks x arrays':>15} {'declare B/rank':>15} {'recv B/rank':>14} "
          f"{'steady s':>10} {'plan s':>10} {'manifest B':>14} {'restore meta B/rank':>20} "
          f"{'grid B/rank':>12}  steady  first  restore")
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
            sizes = manifest_sizes(ranks, arrays)  # measured: cheap at any size
            row = {"declare": per_rank, "recv": per_rank * ranks,
                   "steady": last["steady"] * k, "plan": last["plan"] * k,
                   "manifest": sizes["header_shards"], "restore": sizes["restore_local_shards"],
                   "grid": sizes["restore_local_grid"], "shards": shards, "arrays": arrays}
            mark = "~"
        steady_ok = row["steady"] <= STEADY_S and row["recv"] <= STEADY_BYTES
        print(f"{ranks:>7} x {arrays:<5} {mark}{row['declare']:>14,} {mark}{row['recv']:>13,} "
              f"{mark}{row['steady']:>9.3f} {mark}{row['plan']:>9.1f} {row['manifest']:>14,} "
              f"{row['restore']:>20,} {row['grid']:>12,}  {'PASS' if steady_ok else 'FAIL':>6} "
              f"{'PASS' if row['plan'] <= PLAN_S else 'FAIL':>6} "
              f"{'PASS' if row['restore'] <= RESTORE_META else 'FAIL':>8}", flush=True)
    print("~: extrapolated linearly in shards from the largest measured cell (--budget). "
          "Targets: steady <= 0.1 s CPU and <= 64 KiB received per rank per save; first save "
          "plan <= 30 s; restore metadata <= 1 MiB per rank (a restoring rank reads its "
          "node's manifest header and its own slice; the manifest sizes are measured, never "
          "extrapolated).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
