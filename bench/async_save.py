#!/usr/bin/env python3
"""Async save benchmark: how long does the trainer wait, and how long until the commit?

One command::

    .venv/bin/python bench/async_save.py [--gib 2] [--repeats 3] [--dir PATH]

The driver launches 2 MPI ranks (``mpiexec`` next to ``sys.executable``) holding the state
dict of bench/save_restore.py (``--gib`` GiB in all, ~200 tensors, row-sharded). In one run,
after an untimed warm-up of each case (so staging memory is reused, as in training), each
repeat measures, interleaved and between barriers (max over ranks):

- ``memcpy``: a plain copy of the rank's bytes into preallocated memory (the floor);
- ``tierpoint async``: the time ``save()`` blocks, and the time until its commit (the
  handle's ``seconds``: call to commit marker, the same measure for the blocking save);
- ``tierpoint blocking``: ``save(blocking=True)`` (writes from the tensors, no staging copy),
  the synchronous save the async one must not be slower than;
- ``dcp async_save``: ``torch.distributed.checkpoint.async_save`` in its default form (a new
  stager per call), blocking time and time until its future completes;
- ``dcp async_save, reused stager``: the same with one ``DefaultStager`` kept across saves.

The report gives medians and the ratios the issue asks for: tierpoint's blocking time over
memcpy (target <= 1.5), over DCP's two forms, tierpoint's async time to commit over its
blocking save (target <= 1.05) and over DCP ``async_save`` with a reused stager (target
<= 1.0), each with its per-round values. Each case removes its previous checkpoint (untimed)
and syncs first. ``--cases`` runs a subset (the ratios of the cases left out are skipped).

Where a tierpoint save's time goes: per phase of its data path (the copy into staging,
crc32c, chunk hash (BLAKE3), fingerprint, the writes into the page cache, the per-file fsyncs, the
final sync), the CPU seconds and the threads' busy seconds per GiB, summed over ranks, from
the save's ``handle.stats["costs"]`` (runtime/costs.py), with the process CPU seconds of
the whole save (getrusage, every thread, summed over ranks) beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import save_restore as sr  # noqa: E402 - the state dict and MPI plumbing are shared

CASES = ("memcpy", "tierpoint async", "tierpoint blocking", "dcp async_save",
         "dcp async_save, reused stager")
RANKS = 2


class AsyncWorker(sr.Worker):
    def setup(self) -> None:
        import numpy as np
        import torch

        import tierpoint
        from tierpoint.kernels import aligned_empty

        self.root = Path(self.args.dir)
        self.bufs = self.local_buffers(self.world, fill=True)
        self.tp_state_ = self.tp_state(self.bufs)
        self.dcp_state_ = self.dcp_state(self.bufs)
        # memcpy: every local tensor into one preallocated, already touched buffer.
        views = [t.view(torch.int16) if t.dtype == torch.bfloat16 else t
                 for t, _ in self.bufs.values()]
        self.sources = [v.numpy().reshape(-1).view(np.uint8) for v in views]
        self.local_bytes = sum(s.nbytes for s in self.sources)
        self.copy_target = aligned_empty(self.local_bytes)
        self.copy_target.fill(0)
        self.ck = tierpoint.Checkpointer(str(self.root / "tierpoint"), run="bench",
                                         policy=tierpoint.Policy(keep_local=1))
        self.step = 0
        self.copy_seconds: list[float] = []
        # Per tierpoint save, summed over ranks: its phases' costs and the process CPU.
        self.costs: dict[str, list[dict]] = {"tierpoint async": [], "tierpoint blocking": []}
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
        self.stager = DefaultStager(StagingOptions(False, False, False, False))

    def clean(self) -> None:
        """Untimed: let tierpoint's previous save finish its after-commit work (pruning the
        local ring), remove DCP's previous checkpoint, write back dirty pages, barrier."""
        self.ck.wait()
        self.barrier()
        if self.rank == 0:
            shutil.rmtree(self.root / "dcp", ignore_errors=True)
            os.sync()
        self.barrier()

    def memcpy(self) -> tuple[float, float]:
        import numpy as np

        def op():
            offset = 0
            for s in self.sources:
                np.copyto(self.copy_target[offset:offset + s.nbytes], s)
                offset += s.nbytes
        dt = self.timed(op)
        return dt, dt

    def tierpoint_save(self, blocking: bool) -> tuple[float, float]:
        """(blocking, to commit): the commit time is the handle's ``seconds`` (from the call
        to the commit marker), for the async and the blocking save alike; the local ring's
        pruning after the commit is not in it."""
        self.step += 1
        step = self.step
        stats = {}
        cpu = {}

        def finish(handle):
            handle.wait()
            stats.update(handle.stats)
            cpu["end"] = _process_cpu()
        cpu["start"] = _process_cpu()
        blocked, _ = self.two_times(
            lambda: self.ck.save(step, self.tp_state_, blocking=blocking), finish)
        committed = self.comm.allreduce(stats["seconds"], op=self.MPI.MAX)
        if not blocking:  # where the blocking time went: the copy, and everything else
            self.copy_seconds.append(
                self.comm.allreduce(stats["snapshot_seconds"], op=self.MPI.MAX))
        mine = {f"{phase} {what}": value for phase, c in stats.get("costs", {}).items()
                for what, value in (("cpu", c["cpu_seconds"]), ("busy", c["busy_seconds"]))}
        mine["process cpu"] = cpu["end"] - cpu["start"]
        everyone = self.comm.allgather(mine)
        summed = {k: sum(m.get(k, 0.0) for m in everyone) for k in sorted(set().union(*everyone))}
        # The collective phases' wall seconds (declare ... commit), max over ranks.
        walls = self.comm.allgather({**stats.get("phases", {}),
                                     "chunks": stats.get("writing_seconds", 0.0)})
        summed.update({f"{name} wall": max(w.get(name, 0.0) for w in walls)
                       for name in set().union(*walls)})
        self.costs["tierpoint blocking" if blocking else "tierpoint async"].append(summed)
        return blocked, committed

    def dcp_async(self, reuse: bool) -> tuple[float, float]:
        import torch.distributed.checkpoint as dcp

        self.step += 1
        writer = dcp.FileSystemWriter(str(self.root / "dcp" / f"s{self.step}"))
        kwargs = {"async_stager": self.stager} if reuse else {}
        return self.two_times(
            lambda: dcp.async_save(self.dcp_state_, storage_writer=writer, **kwargs),
            lambda future: future.result())

    def run(self) -> dict:
        self.setup()
        ops = {"memcpy": self.memcpy,
               "tierpoint async": lambda: self.tierpoint_save(False),
               "tierpoint blocking": lambda: self.tierpoint_save(True),
               "dcp async_save": lambda: self.dcp_async(False),
               "dcp async_save, reused stager": lambda: self.dcp_async(True)}
        cases = selected_cases(self.args)
        results = {c: {"blocking": [], "total": []} for c in cases}
        for case in cases:  # warm-up: staging memory allocated and touched
            self.clean()
            b, t = ops[case]()
            self.log(f"warm-up {case}: blocks {b:.3f} s, total {t:.2f} s")
        for costs in self.costs.values():
            costs.clear()  # the warm-ups' are not reported
        for r in range(self.args.repeats):
            order = cases if r % 2 == 0 else cases[::-1]
            for case in order:
                self.clean()
                b, t = ops[case]()
                results[case]["blocking"].append(b)
                results[case]["total"].append(t)
                self.log(f"repeat {r} {case}: blocks {b:.3f} s, total {t:.2f} s")
        bad = self.check_last_checkpoint()
        self.ck.close()
        self.stager.close()
        return {"results": results, "local_bytes": self.comm.allreduce(self.local_bytes),
                "copy_seconds": self.copy_seconds[1:],  # the timed repeats
                "costs": self.costs, "verify": bad}

    def check_last_checkpoint(self) -> str | None:
        """Restore tierpoint's last checkpoint into poisoned buffers and compare with the
        generator (outside the timed part): the benchmark saved real data."""
        for s in self.specs:
            sr.poison_rows(self.bufs[s.name][0], s)
        self.ck.restore(self.tp_state_)
        errs = self.comm.allgather(self.verify(self.bufs))
        bad = [f"rank {i}: {e}" for i, e in enumerate(errs) if e]
        return "; ".join(bad) or None


def _process_cpu() -> float:
    """CPU seconds of this process so far, every thread, user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --cases names: short, comma-separated.
SHORT = dict(zip(("memcpy", "async", "blocking", "dcp", "dcp-reused"), CASES))


def selected_cases(args) -> tuple:
    if not args.cases:
        return CASES
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in SHORT]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; --cases takes {', '.join(SHORT)}")
    return tuple(SHORT[c] for c in SHORT if c in wanted)


def worker_main(args) -> int:
    """Any exception prints its traceback and aborts the MPI job, so the run fails."""
    from tierpoint.runtime.distenv import exit_process

    try:
        w = AsyncWorker(args)
        res = w.run()
        if w.rank == 0:
            Path(args.result).write_text(json.dumps(res))
        w.barrier()
    except BaseException:  # noqa: BLE001 - shown, then the job ends with an error
        from mpi4py import MPI

        print(f"[async bench rank {MPI.COMM_WORLD.Get_rank()}] FAILED:\n"
              f"{traceback.format_exc()}", file=sys.stderr, flush=True)
        MPI.COMM_WORLD.Abort(1)
    exit_process(0)
    return 0


def launch(args) -> dict:
    fd, result = tempfile.mkstemp(prefix="tierpoint-async-bench-", suffix=".json")
    os.close(fd)
    cmd = [sr.mpiexec_path(), "-n", str(RANKS), sys.executable, os.path.abspath(__file__),
           "--worker", "async", "--gib", str(args.gib), "--tensors", str(args.tensors),
           "--repeats", str(args.repeats), "--dir", args.dir, "--result", result,
           "--cases", args.cases or ",".join(SHORT)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    try:
        rc = subprocess.run(cmd, env=env, timeout=args.timeout).returncode
        if rc != 0:
            raise SystemExit(f"benchmark workers exited with {rc}")
        return json.loads(Path(result).read_text())
    finally:
        os.unlink(result)


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """median [min..max] of the values."""
    return (fmt.format(statistics.median(values)) + " [" + fmt.format(min(values)) + ".."
            + fmt.format(max(values)) + "]")


def report(res: dict, args) -> None:
    cases = tuple(c for c in CASES if c in res["results"])
    med = {c: {k: statistics.median(v) for k, v in res["results"][c].items()} for c in cases}
    nbytes = res["local_bytes"]
    gib = nbytes / sr.GIB
    print(f"\nasync save, {gib:.2f} GiB on {RANKS} ranks, {args.repeats} repeats "
          f"after a warm-up; medians [min..max], max over ranks")
    print(f"{'case':34s} {'blocks s':>22s} {'to commit s':>22s}")
    for c in cases:
        r = res["results"][c]
        print(f"{c:34s} {_spread(r['blocking'], '{:.3f}'):>22s} {_spread(r['total']):>22s}")
    if res["copy_seconds"]:
        print(f"  of tierpoint's blocking time, the snapshot's copies took "
              f"{statistics.median(res['copy_seconds']):.3f} s (median; the rest is declaring, "
              f"planning and starting the job)")
    report_costs(res.get("costs", {}), gib)

    def per_round(a: str, b: str, what: str) -> list[float] | None:
        if a not in cases or b not in cases:
            return None
        return [x / y for x, y in zip(res["results"][a][what], res["results"][b][what])]

    print("\nratios (per round: the two cases of one round; median [min..max])")
    rows = [("tierpoint blocking time / memcpy", "tierpoint async", "memcpy", "blocking",
             "<= 1.5"),
            ("tierpoint blocking time / dcp async_save", "tierpoint async", "dcp async_save",
             "blocking", None),
            ("tierpoint blocking time / dcp async_save, reused", "tierpoint async",
             "dcp async_save, reused stager", "blocking", None),
            ("tierpoint async to commit / tierpoint blocking", "tierpoint async",
             "tierpoint blocking", "total", "<= 1.05"),
            ("tierpoint async to commit / dcp async_save", "tierpoint async", "dcp async_save",
             "total", None),
            ("tierpoint async to commit / dcp async_save, reused", "tierpoint async",
             "dcp async_save, reused stager", "total", "<= 1.0")]
    for label, a, b, what, target in rows:
        ratios = per_round(a, b, what)
        if ratios is None:
            continue
        of_medians = med[a][what] / med[b][what]
        verdict = ""
        if target is not None:
            ok = of_medians <= float(target.split()[-1])
            verdict = f"  (target {target}: {'PASS' if ok else 'FAIL'})"
        print(f"  {label + ':':52s} {of_medians:.2f} of medians; per round "
              f"{_spread(ratios)}{verdict}")
    print(f"\nverified the last checkpoint against the generator: "
          f"{'OK' if not res['verify'] else 'MISMATCH ' + res['verify']}")


def report_costs(costs: dict, gib: float) -> None:
    """Per phase: CPU and busy seconds per GiB of the state, summed over ranks (medians)."""
    runs = {c: v for c, v in costs.items() if v}
    if not runs:
        return
    keys = sorted(set().union(*(r.keys() for v in runs.values() for r in v)))
    phases = [k[:-4] for k in keys if k.endswith(" cpu") and k != "process cpu"]
    known = ["copy", "crc32c", "hash", "fingerprint", "write", "writeback", "fsync", "sync"]
    phases = sorted(phases, key=lambda p: (known.index(p) if p in known else len(known), p))
    print("\nwhere a tierpoint save's time goes: seconds per GiB of the state, summed over "
          "ranks, medians of the repeats (busy: the threads' elapsed time in the phase)")
    header = "".join(f" | {c[10:] + ' cpu':>13s} {'busy':>6s}" for c in runs)
    print(f"{'phase':14s}{header}")
    for phase in phases:
        line = f"{phase:14s}"
        for c, v in runs.items():
            cpu = statistics.median(r.get(f"{phase} cpu", 0.0) for r in v) / gib
            busy = statistics.median(r.get(f"{phase} busy", 0.0) for r in v) / gib
            line += f" | {cpu:13.3f} {busy:6.3f}"
        print(line)
    line = f"{'process CPU':14s}"
    for c, v in runs.items():
        line += f" | {statistics.median(r['process cpu'] for r in v) / gib:13.3f} {'':6s}"
    print(line + "   (every thread of the save, MPI polling included)")
    walls = [k[:-5] for k in keys if k.endswith(" wall")]
    order = ["declare", "plan", "clear", "prepare", "chunks", "write", "seal", "manifest",
             "commit"]
    walls = sorted(walls, key=lambda n: (order.index(n) if n in order else len(order), n))
    print("the save job's steps, wall seconds (max over ranks, medians; 'chunks': writing "
          "the chunk files, from the job's start of it, so with the wait for the snapshot; "
          "'write': the documents, the sync and the slice):")
    for name in walls:
        line = f"  {name:12s}"
        for c, v in runs.items():
            line += f" | {c[10:]:>8s} {statistics.median(r.get(name + ' wall', 0.0) for r in v):6.3f}"
        print(line)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gib", type=float, default=2.0)
    p.add_argument("--tensors", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=sr.DEFAULT_DIR + "-async")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--cases", default="",
                   help="a subset of the cases: comma-separated names among memcpy, async, "
                   "blocking, dcp, dcp-reused (default: all)")
    p.add_argument("--worker")
    p.add_argument("--case")
    p.add_argument("--result")
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args)
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    try:
        res = launch(args)
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    report(res, args)
    return 1 if res["verify"] else 0


if __name__ == "__main__":
    sys.exit(main())
