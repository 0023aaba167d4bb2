#!/usr/bin/env python3
"""tierpoint against torch.distributed.checkpoint (DCP), the disk and memcpy: one table.

One command::

    .venv/bin/python bench/save_restore.py [--gib 2] [--repeats 3] [--dir PATH]
                                           [--extra-rows FILE.json ...]

The command is a *driver*. It

1. builds the description of a deterministic state dict (bench/benchstate.py: ~200 2-D
   tensors, 4 KiB .. 256 MiB, 40% of the bytes bfloat16, ``--gib`` GiB in all);
2. measures the disk under ``--dir`` (bench/disk.py): write with fdatasync and cold read of
   the state's bytes with 1 stream and with as many parallel streams as the libraries use
   (2 saving ranks x tierpoint's writer threads, 2 ranks x DCP's ``thread_count``, 4
   restoring ranks x tierpoint's threads), by dd and by fio when it is installed;
   ``--repeats`` rounds before the phases and one after;
3. launches MPI workers (``mpiexec`` next to ``sys.executable``): ``save`` on 2 ranks
   (memcpy, durable saves, async saves, all in the same processes, on the same tensors,
   order alternating between rounds; then each save pass's kernel costs), then restores on
   2 ranks (same layout), 1 rank (2->1) and 4 ranks (2->4 by rows, and onto a new sharding:
   column bands); restores are cold and their bytes read are counted (/proc/self/io);
4. prints one table (bench/table.py): medians, spreads, DCP/tierpoint, % of the best disk
   baseline, read amplification and PASS/FAIL per target of issue 13.

Workers are this same file run with ``--worker``. A failed operation makes the run fail:
its traceback is printed and the driver exits non-zero (after printing what was measured).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ranks import quiet_barrier  # noqa: E402
import disk  # noqa: E402
import table  # noqa: E402
from benchstate import (GB, GIB, KIB, MIB, TensorSpec, block_rows, check_rows,  # noqa: E402,F401
                        expected_row, fill_rows, gen_block, local_box, make_specs, poison_rows,
                        rows_of, torch_dtype)
from disk import (make_random_source, run_dd, run_dd_parallel,  # noqa: E402,F401
                  try_drop_caches)

LIBS = ("tierpoint", "dcp")
SAVE_RANKS = 2
# (case, restoring ranks, sharded dim of the restore layout); one launch per rank count
LOAD_CASES = (("same", 2, 0), ("2to1", 1, 0), ("2to4rows", 4, 0), ("2to4cols", 4, 1))
TABLE_CASES = {"same": "same", "2to1": "2to1", "2to4rows": "2to4 rows", "2to4cols": "2to4 cols"}
SAVE_CASES = ("memcpy", "tierpoint durable", "dcp durable", "tierpoint async", "dcp async")
DEFAULT_DIR = "/var/tmp/tierpoint-bench"


# --------------------------------------------------------------------------------------------
# Worker side (runs under mpiexec)
# --------------------------------------------------------------------------------------------

def io_counters() -> dict[str, int]:
    """This process's I/O accounting (all its threads): ``read_bytes`` fetched from the
    storage layer, ``rchar`` passed through read(2)-like calls (page cache hits included)."""
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        out[key.strip()] = int(value)
    return out


class Worker:
    """MPI plumbing, state builders and timing shared by the benchmarks' workers."""

    def __init__(self, args):
        from mpi4py import MPI  # imported first: tierpoint's comm=None then picks COMM_WORLD

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.world = self.comm.Get_size()
        self.args = args
        self.specs = make_specs(args.gib, args.tensors)
        self.total = sum(s.nbytes for s in self.specs)
        self.dropped = True
        self._init_torch_dist()

    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[worker {self.args.worker}/{getattr(self.args, 'case', None) or 'save'} "
                  f"n={self.world}] {msg}", file=sys.stderr, flush=True)

    def barrier(self) -> None:
        """MPI barrier that sleeps while waiting: with 4 ranks on 2 cores a spinning barrier
        would steal the CPU from the ranks that still work."""
        quiet_barrier(self.comm)

    def _init_torch_dist(self) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        from tierpoint.runtime.distenv import init_torch_distributed

        init_torch_distributed("gloo", timeout=3600)  # DCP's group: the MPI ranks
        self.mesh = init_device_mesh("cpu", (self.world,))

    def drop_caches(self) -> None:
        """sync + drop the page cache on rank 0 (the node is shared by all ranks), then barrier."""
        self.barrier()
        if self.rank == 0:
            self.dropped &= try_drop_caches()
        self.barrier()

    def timed(self, fn) -> float:
        """Wall time of fn() between two barriers, max over ranks."""
        self.barrier()
        t0 = time.perf_counter()
        fn()
        self.barrier()
        return self.comm.allreduce(time.perf_counter() - t0, op=self.MPI.MAX)

    def two_times(self, start, finish) -> tuple[float, float]:
        """(blocking, total), each the max over ranks, of start() then finish(result)."""
        self.barrier()
        t0 = time.perf_counter()
        pending = start()
        t1 = time.perf_counter()
        finish(pending)
        t2 = time.perf_counter()
        return (self.comm.allreduce(t1 - t0, op=self.MPI.MAX),
                self.comm.allreduce(t2 - t0, op=self.MPI.MAX))

    def rmtree(self, path: Path) -> None:
        self.barrier()
        if self.rank == 0 and path.exists():
            shutil.rmtree(path)
        self.barrier()

    def local_buffers(self, world: int, fill: bool, dim: int = 0) -> dict:
        """name -> (tensor, (row0, col0)): this rank's shard of every tensor in a
        ``world``-rank Shard(``dim``) layout. fill=True generates the values (row shards
        only); fill=False allocates zeroed (so faulted-in) buffers to restore into."""
        import torch

        out = {}
        for s in self.specs:
            off, shape = local_box(s, self.rank, world, dim)
            t = torch.zeros(shape, dtype=torch_dtype(s.dtype))
            if fill:
                fill_rows(t, s, *off)
            out[s.name] = (t, off)
        return out

    def tp_state(self, bufs: dict) -> dict:
        import tierpoint

        return {s.name: tierpoint.Shard(bufs[s.name][0], (s.rows, s.cols), bufs[s.name][1])
                for s in self.specs}

    def dcp_state(self, bufs: dict, dim: int = 0) -> dict:
        from torch.distributed.tensor import DTensor, Shard

        return {s.name: DTensor.from_local(bufs[s.name][0], self.mesh, [Shard(dim)],
                                           run_check=False, shape=(s.rows, s.cols),
                                           stride=(s.cols, 1))
                for s in self.specs}

    def verify(self, bufs: dict) -> str | None:
        for s in self.specs:
            err = check_rows(bufs[s.name][0], s, *bufs[s.name][1])
            if err:
                return err
        return None

    def check_all(self, bufs: dict, what: str) -> None:
        """Raise on every rank when any rank's buffers differ from the generator."""
        errs = self.comm.allgather(self.verify(bufs))
        bad = [f"rank {i}: {e}" for i, e in enumerate(errs) if e]
        if bad:
            raise RuntimeError(f"{what}: restored data differ from what was saved: "
                               + "; ".join(bad))


class SaveWorker(Worker):
    """The save phase: memcpy, durable and async saves of both libraries, same processes."""

    def setup(self) -> None:
        import torch
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        import tierpoint
        from tierpoint.kernels import aligned_empty

        self.root = Path(self.args.dir)
        self.log(f"generating {self.total / GIB:.2f} GiB over {len(self.specs)} tensors")
        self.bufs = self.local_buffers(self.world, fill=True)
        self.tp = self.tp_state(self.bufs)
        self.dcp = self.dcp_state(self.bufs)
        views = [t.view(torch.int16) if t.dtype == torch.bfloat16 else t
                 for t, _ in self.bufs.values()]
        self.sources = [v.numpy() for v in views]
        self.local_bytes = sum(s.nbytes for s in self.sources)
        self.copy_target = aligned_empty(self.local_bytes)
        self.copy_target.fill(0)  # touched: a reused buffer, as staging memory is
        # One Checkpointer for every tierpoint save (its staging arena and threads are
        # reused from the 2nd save on, as in training); keep_local=1 bounds the disk use.
        self.ck = tierpoint.Checkpointer(str(self.root / "tierpoint"), run="bench",
                                         policy=tierpoint.Policy(keep_local=1))
        self.step = 0
        # DCP's own async default on CPU: synchronous staging into cached CPU storages
        # (no pinned or shared memory without CUDA), one stager kept across saves.
        self.stager = DefaultStager(StagingOptions(False, False, False, False))
        self.tp_stats: list[dict] = []

    def clean(self, lib: str, kind: str) -> None:
        """Untimed, before every case: tierpoint's previous save finishes its after-commit
        work (pruning the local ring); DCP's previous checkpoint of this kind is removed;
        dirty pages are written back and the page cache dropped."""
        self.ck.wait()
        if lib == "dcp":
            self.rmtree(self.root / "dcp" / kind)
        self.drop_caches()

    def cpu_and(self, fn):
        """(result, CPU seconds of this process, all threads, summed over ranks)."""
        c0 = time.process_time()
        out = fn()
        return out, self.comm.allreduce(time.process_time() - c0)

    def memcpy(self) -> dict:
        import numpy as np

        def op():
            offset = 0
            for s in self.sources:
                np.copyto(self.copy_target[offset:offset + s.nbytes], s.reshape(-1).view(np.uint8))
                offset += s.nbytes
        return {"memcpy": self.timed(op)}

    def tierpoint_save(self, blocking: bool) -> dict:
        """The time to commit is the handle's ``seconds`` (from the call to the commit
        marker), for the async and the blocking save alike; pruning the local ring after
        the commit is not in it (a blocking save() also prunes before it returns)."""
        self.step += 1
        step, stats = self.step, {}

        def finish(handle):
            if handle.wait() != step:
                raise RuntimeError(f"tierpoint save of step {step} was not committed: "
                                   f"{handle.stats}")
            stats.update(handle.stats)
        (blocked, _), cpu = self.cpu_and(lambda: self.two_times(
            lambda: self.ck.save(step, self.tp, blocking=blocking), finish))
        committed = self.comm.allreduce(stats["seconds"], op=self.MPI.MAX)
        self.kept_tp = {"root": str(self.root / "tierpoint"), "run": "bench", "step": step}
        if blocking:  # save() returns later than the commit: it prunes the ring first
            return {"durable": committed, "durable returns": blocked, "cpu durable": cpu}
        self.tp_stats.append(self.max_stats(stats))
        return {"async blocks": blocked, "async commit": committed, "cpu async": cpu}

    def max_stats(self, stats: dict) -> dict:
        """The numbers of a save handle's stats (seconds, and each phase's), max over ranks."""
        flat = {k: stats[k] for k in ("blocking_seconds", "snapshot_seconds",
                                      "writing_seconds", "seconds") if k in stats}
        flat.update({f"phase {k}": v for k, v in stats.get("phases", {}).items()})
        keys = self.comm.bcast(sorted(flat), root=0)
        return {k: self.comm.allreduce(float(flat.get(k, 0.0)), op=self.MPI.MAX) for k in keys}

    def dcp_durable(self) -> dict:
        import torch.distributed.checkpoint as dcp

        writer = dcp.FileSystemWriter(str(self.root / "dcp" / "durable"))  # sync_files=True
        assert writer.sync_files, "DCP FileSystemWriter default no longer fsyncs"
        dt, cpu = self.cpu_and(lambda: self.timed(lambda: dcp.save(self.dcp,
                                                                    storage_writer=writer)))
        return {"durable": dt, "cpu durable": cpu}

    def dcp_async(self) -> dict:
        import torch.distributed.checkpoint as dcp

        writer = dcp.FileSystemWriter(str(self.root / "dcp" / "async"))
        (blocked, total), cpu = self.cpu_and(lambda: self.two_times(
            lambda: dcp.async_save(self.dcp, storage_writer=writer, async_stager=self.stager),
            lambda future: future.result()))
        return {"async blocks": blocked, "async commit": total, "cpu async": cpu}

    def kernel_costs(self) -> dict | None:
        """Rank 0 measures the save's passes on its own buffers while the others wait."""
        import kernel_costs

        out = None
        self.barrier()
        if self.rank == 0:
            chunks = kernel_costs.chunks_of(self.sources, min(self.local_bytes, 512 * MIB))
            out = kernel_costs.measure(chunks, str(self.root), repeats=self.args.repeats)
        self.barrier()
        return out

    def run(self) -> dict:
        self.setup()
        libs = self.args.libs.split(",")
        ops = {"memcpy": ("-", "-", self.memcpy),
               "tierpoint durable": ("tierpoint", "durable", lambda: self.tierpoint_save(True)),
               "dcp durable": ("dcp", "durable", self.dcp_durable),
               "tierpoint async": ("tierpoint", "async", lambda: self.tierpoint_save(False)),
               "dcp async": ("dcp", "async", self.dcp_async)}
        cases = [c for c in SAVE_CASES if ops[c][0] in libs + ["-"]]
        # results[lib][measure] -> [per repeat]; lib "-" holds the memcpy baseline
        results: dict = {lib: {} for lib in ["-", *LIBS]}
        for r in range(self.args.repeats + 1):  # round 0 warms up (staging memory, caches)
            order = cases if r % 2 else cases[::-1]
            for case in order:
                lib, kind, op = ops[case]
                self.clean(lib, kind)
                got = op()
                self.log(f"{'warm-up' if r == 0 else f'repeat {r}'} {case}: "
                         + ", ".join(f"{k} {v:.3f}" for k, v in got.items()))
                if r:
                    for k, v in got.items():
                        results[lib].setdefault(k, []).append(v)
        self.ck.wait()
        costs = self.kernel_costs()
        self.ck.close()
        self.stager.close()
        kept = {"tierpoint": getattr(self, "kept_tp", None),
                "dcp": {"path": str(self.root / "dcp" / "durable")} if "dcp" in libs else None}
        return {"results": results, "kept": kept,
                "tp_async_stats": self.tp_stats[1:],  # the timed ones
                "kernel_costs": costs, "local_bytes": self.comm.allreduce(self.local_bytes)}


class LoadWorker(Worker):
    """Restores of both libraries onto one or more layouts, cold, bytes read counted."""

    def restore_case(self, case: str, dim: int, saved: dict, libs: list[str]) -> dict:
        import tierpoint
        import torch.distributed.checkpoint as dcp

        bufs = self.local_buffers(self.world, fill=False, dim=dim)
        ops = {}
        if "tierpoint" in libs:
            kept = saved["tierpoint"]
            ck = tierpoint.Checkpointer(local=kept["root"], run=kept["run"], comm=None)
            state = self.tp_state(bufs)
            ops["tierpoint"] = lambda: ck.restore(state, step=kept["step"])
        if "dcp" in libs:
            reader = dcp.FileSystemReader(saved["dcp"]["path"])
            dstate = self.dcp_state(bufs, dim)
            ops["dcp"] = lambda: dcp.load(dstate, storage_reader=reader)
        need = self.comm.allreduce(sum(t.numel() * t.element_size() for t, _ in bufs.values()))
        out = {lib: {"s": [], "read_bytes": [], "rchar": []} for lib in ops}

        def one(lib: str) -> dict:
            for s in self.specs:
                poison_rows(bufs[s.name][0], s)
            self.drop_caches()
            io0 = io_counters()
            dt = self.timed(ops[lib])
            io1 = io_counters()
            self.check_all(bufs, f"{lib} restore {case}")
            return {"s": dt, **{k: self.comm.allreduce(io1[k] - io0[k]) / need
                                for k in ("read_bytes", "rchar")}}

        for r in range(self.args.repeats + 1):  # round 0 warms up
            order = list(ops) if r % 2 else list(ops)[::-1]
            for lib in order:
                got = one(lib)
                self.log(f"{case} {'warm-up' if r == 0 else f'repeat {r}'} {lib}: "
                         f"{got['s']:.2f} s, read amplification {got['read_bytes']:.2f} "
                         f"(device) {got['rchar']:.2f} (read calls)")
                if r:
                    for k, v in got.items():
                        out[lib][k].append(v)
        if "tierpoint" in ops:
            ck.close()
        return {"ranks": self.world, "dropped_caches": self.dropped, **out}

    def run(self) -> dict:
        saved = json.loads(self.args.saved)
        libs = [lib for lib in self.args.libs.split(",") if saved.get(lib)]
        dims = {case: dim for case, _, dim in LOAD_CASES}
        return {case: self.restore_case(case, dims[case], saved, libs)
                for case in self.args.case.split(",")}


def worker_main(args) -> int:
    """Run one phase; any exception prints its traceback and aborts the whole MPI job (a
    rank must not leave the others waiting in a collective, and the run must fail)."""
    from tierpoint.runtime.distenv import exit_process

    try:
        w = SaveWorker(args) if args.worker == "save" else LoadWorker(args)
        res = w.run()
        if w.rank == 0:
            Path(args.result).write_text(json.dumps(res, indent=1))
        w.barrier()
    except BaseException:  # noqa: BLE001 - shown, then the job ends with an error
        from mpi4py import MPI

        print(f"[worker rank {MPI.COMM_WORLD.Get_rank()}] FAILED:\n{traceback.format_exc()}",
              file=sys.stderr, flush=True)
        MPI.COMM_WORLD.Abort(1)
    exit_process(0)
    return 0


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------

def mpiexec_path() -> str:
    cand = Path(os.path.dirname(sys.executable)) / "mpiexec"  # not resolved: the venv's bin
    if cand.exists():
        return str(cand)
    found = shutil.which("mpiexec")
    if not found:
        raise SystemExit("mpiexec not found next to the interpreter nor on PATH")
    return found


def launch(n: int, worker_args: list[str], timeout: float) -> dict:
    """Run ``n`` workers; their result, or raise (the workers printed their traceback)."""
    fd, result = tempfile.mkstemp(prefix="tierpoint-bench-", suffix=".json")
    os.close(fd)
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, os.path.abspath(__file__),
           *worker_args, "--result", result]
    # One intra-op thread per rank, as torchrun does for several processes per node: with more
    # ranks than cores, OpenMP teams spin against each other and small copies crawl.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    try:
        rc = subprocess.run(cmd, env=env, timeout=timeout).returncode
        if rc != 0:
            raise RuntimeError(f"mpiexec -n {n} {' '.join(worker_args[:4])} exited with {rc} "
                               "(the failing rank's traceback is above)")
        return json.loads(Path(result).read_text())
    finally:
        os.unlink(result)


def stream_counts(libs: list[str]) -> list[int]:
    """1, and the parallel writers/readers each library keeps in flight: tierpoint's
    io_threads per rank (engine/options.py) x 2 saving or 4 restoring ranks; DCP's
    FileSystemWriter thread_count per rank (its default) x 2."""
    import inspect

    counts = {1}
    if "tierpoint" in libs:
        from tierpoint.options import Options

        threads = Options.from_env().io_threads
        counts |= {SAVE_RANKS * threads, 4 * threads}
    if "dcp" in libs:
        from torch.distributed.checkpoint import FileSystemWriter

        per_rank = inspect.signature(FileSystemWriter).parameters["thread_count"].default
        counts.add(SAVE_RANKS * per_rank)
    return sorted(counts)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def fs_info(path: Path) -> tuple[str, str]:
    out = subprocess.run(["df", "--output=source,fstype", str(path)], capture_output=True,
                         text=True).stdout.splitlines()
    return tuple(out[-1].split()[:2]) if len(out) > 1 else ("?", "?")


def driver_main(args) -> int:
    libs = args.libs.split(",")
    for lib in libs:
        if lib not in LIBS:
            raise SystemExit(f"unknown library {lib!r}; choose from {LIBS}")
    extra = [row for path in args.extra_rows for row in table.load_extra_rows(path)]
    specs = make_specs(args.gib, args.tensors)
    total = sum(s.nbytes for s in specs)
    bench_dir = Path(args.dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("tierpoint", "dcp"):
        shutil.rmtree(bench_dir / sub, ignore_errors=True)
    free = shutil.disk_usage(bench_dir).free
    need = 6 * total + GIB  # baseline files + 2 checkpoints per library + one being written
    if free < need:
        raise SystemExit(f"{bench_dir}: {free / GIB:.1f} GiB free, need about {need / GIB:.1f} GiB")
    streams = stream_counts(libs)
    device, fstype = fs_info(bench_dir)
    cfg = {"dir": str(bench_dir), "device": device, "fstype": fstype, "repeats": args.repeats,
           "total_bytes": total, "ntensors": len(specs), "libs": libs, "streams": streams,
           "bf16_share": sum(s.nbytes for s in specs if s.dtype == "bfloat16") / total,
           "fio": disk.fio_path(), "loadavg_before": loadavg()}
    print(f"[driver] state {total / GIB:.3f} GiB in {len(specs)} tensors; dir {bench_dir} "
          f"({device}, {fstype}); libs {libs}; disk streams {streams}; fio "
          f"{cfg['fio'] or 'not installed'}", file=sys.stderr, flush=True)
    src, _ = make_random_source(total, bench_dir)
    samples: dict = {}
    phases: dict = {}
    failures: list[str] = []
    try:
        cold = True
        for r in range(args.repeats):
            cold &= disk.measure_round(src, bench_dir, total, streams, samples, f" before {r}")
        common = ["--gib", str(args.gib), "--tensors", str(args.tensors), "--repeats",
                  str(args.repeats), "--dir", str(bench_dir), "--libs", args.libs]
        # Generous per-launch limit: (warm-up + repeats) x cases on a disk at 50 MB/s.
        timeout = 600 + (args.repeats + 1) * 6 * total / 50e6
        try:
            print("[driver] save phase", file=sys.stderr, flush=True)
            phases["save"] = launch(SAVE_RANKS, ["--worker", "save", *common], timeout)
            saved = json.dumps(phases["save"]["kept"])
            for n in sorted({n for _, n, _ in LOAD_CASES}, key=lambda n: (n != 2, n)):
                cases = ",".join(c for c, k, _ in LOAD_CASES if k == n)
                print(f"[driver] restore phase {cases} on {n} rank(s)", file=sys.stderr,
                      flush=True)
                phases.update(launch(n, ["--worker", "load", "--case", cases, "--saved", saved,
                                         *common], timeout))
        except Exception:  # noqa: BLE001 - reported below, and the run fails
            failures.append(traceback.format_exc())
        cold &= disk.measure_round(src, bench_dir, total, streams, samples, " after")
    finally:
        src.unlink(missing_ok=True)
        if not args.keep:
            for sub in ("tierpoint", "dcp"):
                shutil.rmtree(bench_dir / sub, ignore_errors=True)
    cfg["cold"] = cold and all(p.get("dropped_caches", True) for p in phases.values()
                               if isinstance(p, dict))
    res = table_input(total, samples, phases)
    print_report(cfg, res, phases, extra)
    out = bench_dir / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"config": cfg, "disk": samples, "phases": phases}, indent=1))
    print(f"raw results: {out}")
    for f in failures:
        print(f"\nFAILED:\n{f}", file=sys.stderr)
    return 1 if failures else 0


def table_input(total: int, samples: dict, phases: dict) -> dict:
    """The raw results in the shape ``table.run_rows`` takes."""
    save = phases.get("save", {}).get("results", {})
    res = {"bytes": total, "memcpy_s": save.get("-", {}).get("memcpy", []),
           "disk": {"write": disk.best(samples, "write"), "read": disk.best(samples, "read"),
                    "samples": samples},
           "save": {}, "restore": {}}
    for measure in ("durable", "async blocks", "async commit"):
        res["save"][measure] = {lib: save.get(lib, {}).get(measure, []) for lib in LIBS}
    for case, key in TABLE_CASES.items():
        ph = phases.get(case)
        if ph:
            res["restore"][key] = {
                "ranks": ph["ranks"], **{lib: ph[lib]["s"] for lib in LIBS if lib in ph},
                "ampl": {lib: [max(a, b) for a, b in zip(ph[lib]["read_bytes"], ph[lib]["rchar"])]
                         for lib in LIBS if lib in ph}}
    return res


def print_report(cfg: dict, res: dict, phases: dict, extra: list) -> None:
    import report

    report.print_report(cfg, res, phases, extra)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gib", type=float, default=2.0, help="state size in GiB (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per cell (default 3)")
    p.add_argument("--dir", default=DEFAULT_DIR,
                   help=f"scratch directory on the disk under test (default {DEFAULT_DIR})")
    p.add_argument("--tensors", type=int, default=200, help="number of tensors (default 200)")
    p.add_argument("--libs", default="tierpoint,dcp",
                   help="comma list of tierpoint,dcp (default both)")
    p.add_argument("--extra-rows", action="append", default=[], metavar="FILE.json",
                   help="rows another benchmark wrote (bench/table.py), shown in the table")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints after the run")
    # internal: worker mode
    p.add_argument("--worker", choices=("save", "load"), help=argparse.SUPPRESS)
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--saved", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return worker_main(args) if args.worker else driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
