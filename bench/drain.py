"""Drain benchmark: the 2 GiB, 200-tensor state of save_restore.py saved by 2 ranks on the
local tier, drained into 2 capacity pools, against the pools' own bandwidth measured in the
same run; files per drained checkpoint; a local save while a drain runs against a save alone.

    .venv/bin/python bench/drain.py [--gib 2] [--repeats 3] [--dir /var/tmp/tierpoint-drain]
                                    [--cap BYTES_PER_S]

The pools are two directories on --dir's file system unless --pools names others (separate
devices are what the issue's 10% target is about; on one disk the drain and the save share
its bandwidth, which the capped run shows).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import save_restore as sr  # noqa: E402  (state generator, dd helpers)


def worker(args) -> None:
    import torch
    from mpi4py import MPI
    import tierpoint

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    specs = sr.make_specs(args.gib, args.tensors)
    state = {}
    for s in specs:
        lo, n = sr.rows_of(s.rows, rank, world)
        t = torch.empty(n, s.cols, dtype=torch.float32)
        sr.fill_rows(t, s, lo)
        state[s.name] = tierpoint.Shard(t.to(sr.torch_dtype(s.dtype)), (s.rows, s.cols), (lo, 0))
    total = sum(s.nbytes for s in specs)
    pools = args.pools
    out = {"bytes": total, "drain_s": [], "save_alone_s": [], "save_during_s": [],
           "save_during_capped_s": [], "files": [], "pool_dd_gbps": []}

    def timed(fn):
        comm.Barrier()
        t0 = time.perf_counter()
        r = fn()
        comm.Barrier()
        return time.perf_counter() - t0, r

    def pool_dd(record):
        # The pools' own bandwidth: one dd stream per pool at once, half the state each.
        if rank == 0 and record:
            half = total // len(pools)
            secs = sr.run_dd_parallel([[f"if={args.src}", f"of={os.path.join(p, 'dd.tmp')}",
                                        "bs=16M", f"count={max(1, half // (16 << 20))}",
                                        "iflag=fullblock", "conv=fdatasync"] for p in pools])
            written = max(1, half // (16 << 20)) * (16 << 20) * len(pools)
            for p in pools:
                os.unlink(os.path.join(p, "dd.tmp"))
            out["pool_dd_gbps"].append(written / secs / 1e9)
        comm.Barrier()

    local = os.path.join(args.dir, "local")
    step = 0
    for rep in range(args.repeats + 1):  # the first round warms up and is not reported
        ck = tierpoint.Checkpointer(local, persistent=pools, run="d",
                                    policy=tierpoint.Policy(keep_local=3, drain_every=10**9))
        step += 1
        s_alone, _ = timed(lambda: ck.save(step, state))
        pool_dd(rep > 0)
        d_s, res = timed(lambda: ck.drain(step))
        if rank == 0:
            head = os.path.join(pools[0], "d", f"step_{step:08d}")
            files = sum(len(fs) for p in [head] + [os.path.join(q, "d", ".parts",
                                                                f"step_{step:08d}") for q in pools]
                        for _, _, fs in os.walk(p))
        # A save while a drain of the previous step runs in the background (uncapped, capped).
        def save_during_drain(rate):
            nonlocal step
            step += 1
            ck.save(step, state)
            drainer = threading.Thread(
                target=lambda s=step: ck.drain(s, rate=rate, _comm=ck._drain_comm))
            comm.Barrier()
            drainer.start()
            step += 1
            seconds, _ = timed(lambda: ck.save(step, state))
            drainer.join()
            comm.Barrier()
            return seconds
        s_during = save_during_drain(None)
        s_capped = save_during_drain(args.cap)
        ck.pools = []
        ck.close()
        if rank == 0:
            shutil.rmtree(os.path.join(args.dir, "local"), ignore_errors=True)
            for p in pools:
                shutil.rmtree(os.path.join(p, "d"), ignore_errors=True)
        comm.Barrier()
        if rep and rank == 0:
            out["drain_s"].append(d_s)
            out["save_alone_s"].append(s_alone)
            out["save_during_s"].append(s_during)
            out["save_during_capped_s"].append(s_capped)
            out["files"].append(files)
            out.setdefault("drain_phases", []).append(res["phases"])
    if rank == 0:
        with open(args.result, "w") as f:
            json.dump(out, f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=2.0)
    p.add_argument("--tensors", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default="/var/tmp/tierpoint-drain")
    p.add_argument("--pools", nargs="+", help="pool directories (default: two under --dir)")
    p.add_argument("--cap", type=float, default=200e6, help="drain cap for the capped run, B/s")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.pools:
        args.pools = [os.path.join(args.dir, "pool0"), os.path.join(args.dir, "pool1")]
    if args.worker:
        worker(args)
        return 0
    from pathlib import Path
    shutil.rmtree(args.dir, ignore_errors=True)
    for pool in args.pools:
        os.makedirs(pool, exist_ok=True)
    total = sum(s.nbytes for s in sr.make_specs(args.gib, args.tensors))
    src, _ = sr.make_random_source(total, Path(args.dir))
    result = os.path.join(args.dir, "result.json")
    cmd = [sr.mpiexec_path(), "-n", "2", sys.executable, os.path.abspath(__file__), "--worker",
           "--gib", str(args.gib), "--tensors", str(args.tensors), "--repeats",
           str(args.repeats), "--dir", args.dir, "--pools", *args.pools, "--cap", str(args.cap),
           "--src", str(src), "--result", result]
    print(f"[drain bench] {args.gib} GiB, 2 ranks, pools {args.pools}", flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    r = json.load(open(result))
    med = statistics.median
    gb = r["bytes"] / 1e9
    drain_gbps = gb / med(r["drain_s"])
    pool_gbps = med(r["pool_dd_gbps"])
    print(f"\nstate {gb:.3f} GB; medians of {len(r['drain_s'])} rounds (after one warm-up)")
    print(f"pools' own bandwidth (one dd stream per pool, together): {pool_gbps:.3f} GB/s "
          f"{[round(x, 3) for x in r['pool_dd_gbps']]}")
    print(f"drain: {med(r['drain_s']):.2f} s = {drain_gbps:.3f} GB/s = "
          f"{100 * drain_gbps / pool_gbps:.0f}% of the pools (target >= 90%)  "
          f"{[round(x, 2) for x in r['drain_s']]}")
    print(f"files per drained checkpoint: {r['files']}")
    phases = {k: med(p[k] for p in r["drain_phases"]) for k in r["drain_phases"][0]}
    print("drain phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    alone = med(r["save_alone_s"])
    for label, key in (("uncapped drain", "save_during_s"),
                       (f"drain capped at {args.cap / 1e6:.0f} MB/s", "save_during_capped_s")):
        during = med(r[key])
        print(f"local save alone {alone:.2f} s; during a {label} {during:.2f} s "
              f"({100 * (during / alone - 1):+.0f}%)  {[round(x, 2) for x in r[key]]}")
    shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
