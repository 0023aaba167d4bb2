#!/usr/bin/env python3
"""GPU async save: tierpoint against DCP ``async_save`` with pinned memory, CUDA tensors.

    python bench/gpu.py [--gib 2] [--repeats 3] [--ranks 1] [--dir /var/tmp/tierpoint-gpu]
    python bench/gpu.py --dry-run    # the same code on CPU tensors, no CUDA needed

Each rank holds its row block of the state of bench/benchstate.py (``--gib`` GiB in all) on
``cuda:(rank % device count)``. After one untimed warm-up of every case (staging memory
allocated and pinned once, as in training), ``--repeats`` rounds run every case once, in
alternating order, between barriers (max over ranks):

- ``tierpoint async``: ``save(blocking=False)``: the device-to-host copies go into a pinned
  staging arena on a side stream (engine/save/staging.py); ``save()`` returns once the copy
  is complete, so the tensors may change from then on. Time to commit = the handle's
  ``seconds`` (call to commit marker).
- ``tierpoint blocking``: ``save(blocking=True)``, the durable save the async one must not
  be slower than (target: async time to commit <= 1.05x).
- ``dcp async_save``: ``torch.distributed.checkpoint.async_save`` with one ``DefaultStager``
  kept across saves, ``StagingOptions(use_pinned_memory=True, use_shared_memory=False,
  use_async_staging=True, use_non_blocking_copy=True)``: it returns before staging is done,
  so three times are taken: until it returns, until its ``staging_completion`` (the tensors
  may change), and until its ``upload_completion`` (committed). Target: tierpoint's time
  to commit <= 1.0x DCP's.

Ranks are processes this script starts (``--worker``), joined by a ``torch.distributed``
FileStore (gloo for CPU tensors, NCCL for CUDA ones); tierpoint uses the same group. The
last tierpoint checkpoint is restored onto the device and compared bit for bit.

Without CUDA the script exits with status 2 and says so, unless ``--dry-run``: then the same
rounds run on CPU tensors (DCP with its CPU staging options, tierpoint staging in pageable
memory) and the report is printed, marked as a dry run (tests/test_bench_gpu.py runs it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchstate import GIB, fill_rows, make_specs, rows_of, torch_dtype  # noqa: E402

CASES = ("tierpoint async", "tierpoint blocking", "dcp async_save")
MEASURES = ("blocks", "safe", "commit")  # returns; tensors may change; committed


def round_orders(repeats: int) -> list[tuple[str, ...]]:
    """Warm-up first (round 0), then the timed rounds; order alternates between rounds."""
    return [CASES if r % 2 else CASES[::-1] for r in range(repeats + 1)]


class Ranks:
    """Barrier and max over ranks through the torch.distributed group (CPU tensors: gloo)."""

    def __init__(self, dist):
        self.dist = dist

    def barrier(self) -> None:
        self.max(0.0)  # a CPU all-reduce: gloo, whatever the device backend is

    def max(self, x: float) -> float:
        import torch

        t = torch.tensor([x], dtype=torch.float64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return float(t.item())


def worker(args) -> dict:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    cuda = not args.dry_run
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    dist.init_process_group(backend, store=dist.FileStore(args.store, args.world),
                            rank=args.rank, world_size=args.world)
    import tierpoint  # after the group: comm=None picks it

    device = torch.device(f"cuda:{args.rank % torch.cuda.device_count()}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    ranks = Ranks(dist)
    mesh = init_device_mesh(device.type, (args.world,))
    specs = make_specs(args.gib, args.tensors)
    tensors = {}
    for s in specs:
        off, n = rows_of(s.rows, args.rank, args.world)
        host = torch.empty((n, s.cols), dtype=torch_dtype(s.dtype))
        fill_rows(host, s, off)
        tensors[s.name] = (host.to(device), off)
    tp_state = {s.name: tierpoint.Shard(tensors[s.name][0], (s.rows, s.cols),
                                        (tensors[s.name][1], 0)) for s in specs}
    dcp_state = {s.name: DTensor.from_local(tensors[s.name][0], mesh, [Shard(0)],
                                            run_check=False, shape=(s.rows, s.cols),
                                            stride=(s.cols, 1)) for s in specs}
    local_bytes = sum(t.numel() * t.element_size() for t, _ in tensors.values())
    root = args.dir
    ck = tierpoint.Checkpointer(os.path.join(root, "tierpoint"), run="gpu",
                                policy=tierpoint.Policy(keep_local=1))
    options = (StagingOptions(True, False, True, True) if cuda
               else StagingOptions(False, False, False, False))
    stager = DefaultStager(options)
    step = 0

    def clean() -> None:
        ck.wait()
        ranks.barrier()
        if args.rank == 0:
            shutil.rmtree(os.path.join(root, "dcp"), ignore_errors=True)
            os.sync()
        if cuda:
            torch.cuda.synchronize()
        ranks.barrier()

    def tierpoint_save(blocking: bool) -> dict:
        nonlocal step
        step += 1
        ranks.barrier()
        t0 = time.perf_counter()
        handle = ck.save(step, tp_state, blocking=blocking)
        t1 = time.perf_counter()
        if handle.wait() != step:
            raise RuntimeError(f"tierpoint save of step {step} was not committed: "
                               f"{handle.stats}")
        return {"blocks": ranks.max(t1 - t0), "safe": ranks.max(t1 - t0),
                "commit": ranks.max(handle.stats["seconds"])}

    def dcp_async() -> dict:
        writer = dcp.FileSystemWriter(os.path.join(root, "dcp", "s"))
        ranks.barrier()
        t0 = time.perf_counter()
        got = dcp.async_save(dcp_state, storage_writer=writer, async_stager=stager)
        t1 = time.perf_counter()
        if hasattr(got, "staging_completion"):  # AsyncSaveResponse: staging in background
            got.staging_completion.result()
            t2 = time.perf_counter()
            got.upload_completion.result()
        else:  # a Future: staging was done before async_save returned
            t2 = t1
            got.result()
        t3 = time.perf_counter()
        return {"blocks": ranks.max(t1 - t0), "safe": ranks.max(t2 - t0),
                "commit": ranks.max(t3 - t0)}

    ops = {"tierpoint async": lambda: tierpoint_save(False),
           "tierpoint blocking": lambda: tierpoint_save(True),
           "dcp async_save": dcp_async}
    results = {c: {m: [] for m in MEASURES} for c in CASES}
    for r, order in enumerate(round_orders(args.repeats)):
        for case in order:
            clean()
            got = ops[case]()
            if args.rank == 0:
                print(f"[gpu bench] {'warm-up' if r == 0 else f'repeat {r}'} {case}: "
                      + ", ".join(f"{k} {v:.3f} s" for k, v in got.items()),
                      file=sys.stderr, flush=True)
            if r:
                for m in MEASURES:
                    results[case][m].append(got[m])
    ck.wait()
    # The last tierpoint checkpoint, restored onto the device, equals the tensors bit for bit.
    restored = {s.name: tierpoint.Shard(torch.zeros_like(tensors[s.name][0]), (s.rows, s.cols),
                                        (tensors[s.name][1], 0)) for s in specs}
    ck.restore(restored, step=step)
    bits = lambda t: t.view(torch.int16) if t.dtype == torch.bfloat16 else t  # noqa: E731
    bad = [n for n, sh in restored.items() if not torch.equal(bits(sh.data), bits(tensors[n][0]))]
    ck.close()
    stager.close()
    total_bad = int(ranks.max(len(bad)))
    if total_bad:
        raise RuntimeError(f"rank {args.rank}: restored tensors differ: {bad[:5]}")
    dist.destroy_process_group()
    return {"results": results, "bytes": local_bytes * args.world, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
            "torch": torch.__version__, "dry_run": args.dry_run, "ranks": args.world}


def med(xs):
    return statistics.median(xs) if xs else None


def report(res: dict) -> tuple[str, bool]:
    """(the report's text, whether every target passed)."""
    r = res["results"]
    m = {c: {k: med(v) for k, v in r[c].items()} for c in CASES}
    lines = []
    if res["dry_run"]:
        lines.append("DRY RUN on CPU tensors: checks the script, measures nothing about GPUs")
    lines.append(f"GPU async save, {res['bytes'] / GIB:.2f} GiB on {res['ranks']} rank(s), "
                 f"{res['device_name']}, torch {res['torch']}; medians (min-max) of "
                 f"{len(r[CASES[0]]['commit'])} repeats after a warm-up, max over ranks")
    lines.append(f"{'case':<20} | {'save() returns s':>20} | {'tensors free s':>20} | "
                 f"{'to commit s':>20}")

    def cell(xs):
        return f"{med(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})" if xs else "-"
    for c in CASES:
        lines.append(f"{c:<20} | {cell(r[c]['blocks']):>20} | {cell(r[c]['safe']):>20} | "
                     f"{cell(r[c]['commit']):>20}")
    own = m["tierpoint async"]["commit"] / m["tierpoint blocking"]["commit"]
    vs_dcp = m["tierpoint async"]["commit"] / m["dcp async_save"]["commit"]
    free = m["tierpoint async"]["safe"] / m["dcp async_save"]["safe"]
    targets = [(f"tierpoint async time to commit / own blocking save: {own:.2f}", own <= 1.05,
                "<= 1.05"),
               (f"tierpoint async time to commit / DCP async_save's: {vs_dcp:.2f}",
                vs_dcp <= 1.0, "<= 1.0")]
    for text, ok, bound in targets:
        lines.append(f"  {text}  (target {bound}): {'PASS' if ok else 'FAIL'}")
    lines.append(f"  tierpoint time until the tensors may change / DCP's: {free:.2f}")
    return "\n".join(lines), all(ok for _, ok, _ in targets)


def launch(args) -> dict:
    """Start ``--ranks`` worker processes and return rank 0's result; raise if any fails."""
    tmp = tempfile.mkdtemp(prefix="tierpoint-gpu-")
    try:
        store, result = os.path.join(tmp, "store"), os.path.join(tmp, "result.json")
        procs = [subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--rank", str(i),
             "--world", str(args.ranks), "--store", store, "--result", result, "--gib",
             str(args.gib), "--tensors", str(args.tensors), "--repeats", str(args.repeats),
             "--dir", args.dir] + (["--dry-run"] if args.dry_run else []),
            env={**os.environ, "PYTHONUNBUFFERED": "1"}) for i in range(args.ranks)]
        # A failed rank ends the run: the others may be waiting for it in a collective.
        deadline = time.monotonic() + args.timeout
        while True:
            codes = [p.poll() for p in procs]
            failed = any(c not in (None, 0) for c in codes)
            if failed or time.monotonic() > deadline:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                why = "failed (tracebacks above)" if failed else f"ran past {args.timeout} s"
                raise SystemExit(f"bench/gpu.py: a worker {why}; exit codes {codes}")
            if all(c == 0 for c in codes):
                break
            time.sleep(0.1)
        with open(result) as f:
            return json.load(f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=None, help="state GiB (2; 0.02 with --dry-run)")
    p.add_argument("--tensors", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ranks", type=int, default=1, help="processes (each on GPU rank %% count)")
    p.add_argument("--dir", default="/var/tmp/tierpoint-gpu")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--dry-run", action="store_true", help="CPU tensors, no CUDA needed")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.gib is None:
        args.gib = 0.02 if args.dry_run else 2.0
    if args.worker:
        try:
            res = worker(args)
        except BaseException:  # noqa: BLE001 - shown, and the run fails
            print(f"[gpu bench rank {args.rank}] FAILED:\n{traceback.format_exc()}",
                  file=sys.stderr, flush=True)
            os._exit(1)  # do not wait in teardown for ranks that are stuck in a collective
        if args.rank == 0:
            with open(args.result, "w") as f:
                json.dump(res, f)
        return 0
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print(f"bench/gpu.py: CUDA is not available (torch {torch.__version__}, built "
                  f"with CUDA {torch.version.cuda or 'none'}): nothing was measured. Run it "
                  "on a GPU machine, or use --dry-run to check the script on CPU tensors.",
                  file=sys.stderr)
            return 2
        if args.ranks > torch.cuda.device_count():
            print(f"bench/gpu.py: --ranks {args.ranks} but {torch.cuda.device_count()} GPU(s): "
                  "NCCL needs one GPU per rank", file=sys.stderr)
            return 2
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    try:
        res = launch(args)
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    text, _ = report(res)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
