#!/usr/bin/env python3
"""The trend of a save's collectives with the number of real MPI ranks (issue 12).

    PATH=.venv/bin:$PATH .venv/bin/python bench/collectives.py [--ranks 8,16,32,64]
        [--arrays 200] [--saves 4] [--dir /var/tmp/tierpoint-collectives]

For each rank count N, ``mpiexec -n N`` (oversubscribed on this machine) runs a Checkpointer
on N ranks as N/4 simulated nodes (``TIERPOINT_NODE``), with a state of ``--arrays`` float32
arrays, each split evenly by rows over every rank (``tierpoint.Shard``: a regular grid), and
makes ``--saves`` blocking saves of the same layout: the first plans the job, the others are
the steady state. Per save it reports, from the communicators' own counters
(``Comm.traffic``, over every channel the Checkpointer uses):

- ``bytes/rank``: the most payload bytes any rank other than the coordinator sent plus
  received in the save's collectives (the target is O(1) in N: flat across the row);
- ``root bytes``: what rank 0 sent plus received (the target is O(N));
- ``root CPU ms``: CPU seconds rank 0 spent inside collectives (receiving, parsing,
  answering, sending), and ``collectives``: how many the save ran.

Timing on an oversubscribed 2-core machine is noise; bytes and counts are exact. Nothing here
is a pass/fail test: bench/scale.py holds the targets at 16,384 simulated ranks.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def worker(args) -> None:
    import numpy as np

    import tierpoint
    node = f"node{int(os.environ.get('PMI_RANK', '0')) // 4}"
    os.environ["TIERPOINT_NODE"] = node
    ck = tierpoint.Checkpointer(os.path.join(args.dir, "{node}"), run="collectives",
                                policy=tierpoint.Policy(keep_local=2))
    rank, n = ck.rank, ck.world_size
    rows = 4
    state = {f"layer{i:04d}.w": tierpoint.Shard(
        np.full((rows, 8), rank * 1000 + i, dtype=np.float32), (rows * n, 8), (rows * rank, 0))
        for i in range(args.arrays)}
    channels = [c for c in (ck._comm, ck._save_comm, ck._drain_comm) if c is not None]

    def counters():
        return [dict(c.traffic) for c in channels]
    rows_out = []
    for step in range(1, args.saves + 1):
        before = counters()
        ck.save(step, state, blocking=True)
        after = counters()
        rows_out.append({k: sum(a[k] - b[k] for a, b in zip(after, before))
                         for k in ("sent", "received", "collectives", "root_cpu")})
    gathered = ck._comm.allgather_json(rows_out, what="bench", timeout=600)
    ck.close(drain_newest=False)
    if rank == 0:
        print("RESULT " + json.dumps(gathered), flush=True)


def launch(n: int, args) -> list:
    mpiexec = Path(os.path.dirname(sys.executable)) / "mpiexec"
    if not mpiexec.exists():
        mpiexec = Path(shutil.which("mpiexec") or "mpiexec")
    directory = tempfile.mkdtemp(prefix=f"n{n}-", dir=args.dir)
    cmd = [str(mpiexec), "-n", str(n), sys.executable, __file__, "--worker", "--dir", directory,
           "--arrays", str(args.arrays), "--saves", str(args.saves)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    shutil.rmtree(directory, ignore_errors=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"{n} ranks failed (rc {p.returncode}):\n{p.stdout[-2000:]}\n"
                     f"{p.stderr[-4000:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", default="8,16,32,64")
    p.add_argument("--arrays", type=int, default=200)
    p.add_argument("--saves", type=int, default=4)
    p.add_argument("--dir", default="/var/tmp/tierpoint-collectives")
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    if args.worker:
        worker(args)
        return 0
    print(f"{'ranks':>6} {'save':>6} {'bytes/rank':>11} {'root bytes':>11} "
          f"{'root CPU ms':>12} {'collectives':>12}")
    for n in (int(x) for x in args.ranks.split(",")):
        per_rank = launch(n, args)
        for s in range(args.saves):
            others = [per_rank[r][s] for r in range(1, n)]
            root = per_rank[0][s]
            kind = "first" if s == 0 else "steady"
            print(f"{n:>6} {kind:>6} {max(o['sent'] + o['received'] for o in others):>11,} "
                  f"{root['sent'] + root['received']:>11,} {root['root_cpu'] * 1e3:>12.1f} "
                  f"{root['collectives']:>12}", flush=True)
    print("bytes/rank: the most any non-coordinator rank sent + received per save (a node's "
          "leader, relaying its node: flat in N); root bytes: rank 0's (one packet per "
          "leader: O(nodes)).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
