#!/usr/bin/env python3
"""Drain benchmark: the capacity tier against its own pools, measured in the same run.

    .venv/bin/python bench/drain.py [--gib 1] [--repeats 3] [--dir /var/tmp/tierpoint-drain]
                                    [--pools DIR DIR ...] [--cap BYTES_PER_S]
                                    [--quick] [--json PATH]

The state is benchstate.py's (save_restore.py's) (``--gib`` GiB, 200 tensors, 40% bf16), row-sharded over 2
saving ranks on one node (one aggregator). Two MPI launches:

1. ``drain`` (2 ranks). An untimed warm-up round, then ``--repeats`` rounds, each:
   a committed save into a local tier on tmpfs, beside dd's random source (waited for, its
   after-commit work joined); the pools' parallel write bandwidth (one dd stream per pool at
   once, as many streams as the drain writes parts, ``conv=fdatasync``, the state's bytes in
   all, read from that source); a foreground drain of that step, alone (seconds, phases, CPU
   seconds, files it left): drain and dd both read memory and write the pools, so their
   ratio is how well the drain drives the pools. Then the same with the local tier on the
   pools' own disk, as on this one-disk machine a drain otherwise runs: a committed save
   (written with O_DIRECT, so cold), dd copying as many cold bytes from that disk into the
   pools (the roofline of a copy within one disk), the drain (cache dropped first). Then a
   save alone; a save while the engine's
   own background drain of an *earlier, committed* step runs uncapped, and another while
   one capped at ``--cap`` runs (each time to commit; how long the drain still ran after the
   save committed says whether it overlapped the whole save). Then, on the last round's
   checkpoint, cold (page cache dropped) restores on the same layout (2 -> 2) from the local
   tier and from the capacity tier alone, and the pools' cold parallel read bandwidth (dd of
   the state's bytes with 1, 2 and as many streams per pool as the restore has readers).
2. ``restore4`` (4 ranks): the same checkpoint read onto a new sharding (2 ranks Shard(0)
   saved, 4 ranks Shard(0) reading), local and capacity, cold, beside the same dd reads.

Every restore is checked against the generator (outside the timed part). Any failure of a
measured operation (an exception on a rank, a background drain's failure, a CheckpointWarning,
a wrong value) aborts the MPI job with a traceback and the driver exits non-zero.

Prints a table with PASS/FAIL per target (drain >= 90% of the pools' parallel write
bandwidth, and >= 90% of the cold copy within the disk; restore from the capacity tier >= 80%
of the pools' cold read bandwidth) and, with
``--json PATH``, writes every raw number. ``measure(...)`` returns the same dictionary for a
summary of several benches.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchstate as bs  # noqa: E402  (the state and its generator)
import disk  # noqa: E402  (dd, drop_caches, the random source)
from ranks import as_worker, dispatch, launch, quiet_barrier, quiet_bcast  # noqa: E402
from save_restore import mpiexec_path  # noqa: E402

DRAIN_TARGET = 0.90   # drain GB/s over the pools' parallel write bandwidth
RESTORE_TARGET = 0.80  # restore from the capacity tier over the pools' cold read bandwidth
DEFAULT_DIR = "/var/tmp/tierpoint-drain"


# ---- the worker (MPI ranks) -----------------------------------------------------------------

class Bench:
    """One MPI rank's side: the state, the timed operations, the checks."""

    def __init__(self, args):
        import torch
        from mpi4py import MPI
        import tierpoint
        self.torch, self.tp, self.args = torch, tierpoint, args
        self.comm = MPI.COMM_WORLD
        self.rank, self.world = self.comm.Get_rank(), self.comm.Get_size()
        self.specs = bs.make_specs(args.gib, args.tensors)
        self.total = sum(s.nbytes for s in self.specs)
        self.pools = args.pools
        self.local = os.path.join(args.dir, "local")
        # The drain-alone row's local tier: on tmpfs beside dd's source (measure()), so the
        # drain and the pools' dd do the same work; None: on the disk (no room on tmpfs).
        self.fast_local = args.fast_local or None
        self.out: dict = {"bytes": self.total, "ranks": self.world}

    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[drain bench] {msg}", file=sys.stderr, flush=True)

    def state(self, fill: bool, world: int | None = None):
        """This rank's row band of every tensor (``world`` ranks, Shard(0)); filled from the
        generator, or empty to restore into."""
        torch, world = self.torch, world or self.world
        out = {}
        for s in self.specs:
            lo, n = bs.rows_of(s.rows, self.rank, world)
            if fill:
                t = torch.empty(n, s.cols, dtype=torch.float32)
                bs.fill_rows(t, s, lo)
                t = t.to(bs.torch_dtype(s.dtype))
            else:
                t = torch.zeros(n, s.cols, dtype=bs.torch_dtype(s.dtype))
            out[s.name] = self.tp.Shard(t, (s.rows, s.cols), (lo, 0))
        return out

    def check(self, state, what: str) -> None:
        for s in self.specs:
            lo, _ = bs.rows_of(s.rows, self.rank, self.world)
            problem = bs.check_rows(state[s.name].data, s, lo)
            if problem:
                raise AssertionError(f"rank {self.rank}: {what}: {problem}")

    def timed(self, fn):
        """(seconds between barriers, this rank's CPU seconds, fn's result)."""
        quiet_barrier(self.comm)
        c0, t0 = time.process_time(), time.perf_counter()
        r = fn()
        cpu = time.process_time() - c0
        quiet_barrier(self.comm)
        return time.perf_counter() - t0, cpu, r

    def checkpointer(self, run: str, local: str | None = None, **kw):
        return self.tp.Checkpointer(local or self.local, persistent=self.pools, run=run, **kw)

    def no_drain_error(self, ck, what: str) -> None:
        """A background drain's failure is a warning (an error here, see main) and
        ``last_drain_error``; either fails the bench."""
        if ck.last_drain_error is not None:
            raise RuntimeError(f"rank {self.rank}: {what}: {ck.last_drain_error}")

    def drop_caches(self) -> None:
        quiet_barrier(self.comm)
        if self.rank == 0 and not disk.try_drop_caches():
            self.out["cold"] = False
        quiet_barrier(self.comm)

    # ---- the pools' own bandwidth (rank 0 runs dd while the others wait) ----

    def dd_files(self) -> list[str]:
        return [os.path.join(p, "dd.bin") for p in self.pools]

    def _pools_dd(self, src: str, cold: bool) -> float:
        """B/s of one dd stream per pool at once, each writing its share of the state's bytes
        from ``src`` (stream k its k-th slice) into its pool, fdatasync; with ``cold`` the
        page cache is dropped first (else only synced). Rank 0 runs it; every rank gets it."""
        gbps = None
        if self.rank == 0:
            files, share = self.dd_files(), self.total // len(self.pools)
            for f in files:
                if os.path.exists(f):
                    os.unlink(f)
            disk.try_drop_caches() if cold else os.sync()
            secs = disk.run_dd_parallel([[f"if={src}", f"of={f}", "bs=16M",
                                        "iflag=skip_bytes,count_bytes", f"skip={k * share}",
                                        f"count={share}", "conv=fdatasync"]
                                       for k, f in enumerate(files)])
            gbps = share * len(files) / secs
        return quiet_bcast(self.comm, gbps)

    def pool_write(self) -> float:
        """The pools' parallel write bandwidth, from the random source on tmpfs."""
        return self._pools_dd(self.args.src, cold=False)

    def pool_copy(self) -> float:
        """The same streams copying the disk copy of the random source (``--disk-src``, the
        state's bytes, cold) into the pools: what this disk does when, as in a drain whose
        local tier shares it with the pools, the same bytes are read from it and written
        back to it."""
        return self._pools_dd(self.args.disk_src, cold=True)

    def pool_read(self) -> dict:
        """B/s of cold reads of the dd files (the state's bytes, one file per pool), each file
        cut into 1, 2 and as many streams per pool as the restore has readers in all (this
        launch's ranks x tierpoint's io_threads, over the pools), all at once, the page
        cache dropped before each; the best is the reference."""
        found = None
        if self.rank == 0:
            from tierpoint.options import Options
            files = self.dd_files()
            size = os.path.getsize(files[0])
            readers = self.world * Options.from_env().io_threads
            found = {}
            for streams in sorted({1, 2, max(1, -(-readers // len(files)))}):
                disk.try_drop_caches()
                cut = size // streams
                secs = disk.run_dd_parallel([
                    [f"if={f}", "of=/dev/null", "bs=16M", "iflag=skip_bytes,count_bytes",
                     f"skip={k * cut}", f"count={cut}"] for f in files for k in range(streams)])
                found[f"{streams * len(files)} streams"] = cut * streams * len(files) / secs
        quiet_barrier(self.comm)
        return quiet_bcast(self.comm, found)

    def files_of(self, run: str, step: int) -> int:
        from tierpoint.format import layout
        dirs = [layout.capacity_head(self.pools, run, step)]
        dirs += layout.capacity_parts_dirs(self.pools, run, step)
        return sum(len(fs) for d in dirs for _, _, fs in os.walk(d))

    # ---- the drain rounds ----

    def save_committed(self, ck, step: int, state) -> float:
        """Seconds from save() to the commit on every rank; then the save's after-commit
        work (a background drain it starts, the local ring) is joined, untimed."""
        seconds, _, _ = self.timed(lambda: ck.save(step, state).wait())
        ck.steps()  # joins the save's job: its after-commit work has run
        self.no_drain_error(ck, f"save of step {step}")
        return seconds

    def save_during_drain(self, ck, first: int, state) -> dict:
        """``ck`` drains every second save (drain_every=2): step ``first`` (not due) warms
        it up, ``first + 1`` is due (its background drain starts once it is committed), and
        ``first + 2`` is saved while that drain runs. Returns the save's seconds to commit
        and how long the drain still ran after it."""
        self.save_committed(ck, first, state)
        self.save_committed(ck, first + 1, state)   # committed; its drain now runs
        during = self.save_committed(ck, first + 2, state)
        left, _, _ = self.timed(ck.wait)          # the rest of the background drain
        self.no_drain_error(ck, f"background drain of step {first + 1}")
        if first + 1 not in ck.capacity_steps():
            raise RuntimeError(f"rank {self.rank}: the background drain of step {first + 1} "
                               f"did not commit (capacity steps {ck.capacity_steps()})")
        return {"save_s": during, "drain_left_s": left}

    def drain_alone(self, ck, step: int) -> tuple:
        """A foreground drain of committed ``step``: (seconds, CPU seconds per rank, result)."""
        seconds, cpu, result = self.timed(lambda: ck.drain(step))
        self.no_drain_error(ck, f"foreground drain of step {step}")
        return seconds, self.comm.gather(cpu, root=0), result

    def drain_rounds(self) -> None:
        args, state = self.args, self.state(True)
        keys = ("pool_write_Bps", "drain_s", "drain_cpu_s", "drain_phases", "files",
                "pool_copy_Bps", "drain_disk_s", "save_alone_s", "save_during_s",
                "drain_left_s", "save_during_capped_s", "drain_left_capped_s")
        rows = {k: [] for k in keys}
        last_run = None
        policy = self.tp.Policy(keep_local=8, drain_every=10**9)
        for rep in range(args.repeats + 1):  # round 0 warms up and is not reported
            # The drain alone, its local tier on tmpfs like dd's source: both read memory
            # and write the pools, so the ratio is the drain's drive of the pools.
            fast = f"m{rep}"
            ck = self.checkpointer(fast, local=self.fast_local, policy=policy)
            self.save_committed(ck, 1, state)
            pool_write = self.pool_write()
            seconds, cpus, result = self.drain_alone(ck, 1)
            files = self.files_of(fast, 1) if self.rank == 0 else None
            ck.close(drain_newest=False)
            self.cleanup(fast, self.fast_local)
            # The drain of a step on the pools' own disk (cold: written with O_DIRECT, the
            # cache dropped), beside dd copying as many cold bytes from that disk into them.
            run = f"r{rep}"
            ck = self.checkpointer(run, policy=policy)
            self.save_committed(ck, 1, state)
            pool_copy = self.pool_copy()
            self.drop_caches()
            on_disk, _, _ = self.drain_alone(ck, 1)
            alone = self.save_committed(ck, 2, state)
            ck.close(drain_newest=False)
            self.log(f"round {rep}: pools {pool_write / 1e9:.3f} GB/s, drain {seconds:.2f} s "
                     f"({self.total / seconds / 1e9:.3f} GB/s), {files} files; pools' cold "
                     f"copy {pool_copy / 1e9:.3f} GB/s, drain from the disk {on_disk:.2f} s "
                     f"({self.total / on_disk / 1e9:.3f} GB/s); save alone {alone:.2f} s")
            if rep == 0:
                self.cleanup(run)
                continue
            during = []
            for rate, name in ((None, "u"), (args.cap, "c")):
                ck = self.checkpointer(f"{name}{rep}", drain_rate=rate,
                                       policy=self.tp.Policy(keep_local=8, drain_every=2))
                during.append(self.save_during_drain(ck, 1, state))
                ck.close(drain_newest=False)
                self.cleanup(f"{name}{rep}")
            self.log(f"round {rep}: save during a drain {during[0]['save_s']:.2f} s (drain "
                     f"ran {during[0]['drain_left_s']:.2f} s longer), capped "
                     f"{during[1]['save_s']:.2f} s ({during[1]['drain_left_s']:.2f} s)")
            for k, v in zip(keys, (pool_write, seconds, cpus, result["phases"], files,
                                   pool_copy, on_disk, alone,
                                   during[0]["save_s"], during[0]["drain_left_s"],
                                   during[1]["save_s"], during[1]["drain_left_s"])):
                rows[k].append(v)
            if last_run is not None:
                self.cleanup(last_run)
            last_run = run
        self.out.update(rows)
        self.out["restore_run"] = last_run
        self.out["fast_local"] = self.fast_local
        self.restores(last_run, "2to2")

    def cleanup(self, run: str, local: str | None = None) -> None:
        quiet_barrier(self.comm)
        if self.rank == 0:
            shutil.rmtree(os.path.join(local or self.local, run), ignore_errors=True)
            for p in self.pools:
                shutil.rmtree(os.path.join(p, run), ignore_errors=True)
        quiet_barrier(self.comm)

    # ---- restores: local tier, capacity tier alone, the pools' cold reads ----

    def restores(self, run: str, case: str) -> None:
        """Cold restores of step 1 of ``run`` onto this launch's world (Shard(0)), from the
        local tier and from the capacity tier alone (a Checkpointer whose local directory is
        empty), alternating with the pools' cold parallel reads."""
        args = self.args
        empty = os.path.join(args.dir, f"empty{self.world}")
        local = self.checkpointer(run)
        capacity = self.checkpointer(run, local=empty)
        target = self.state(False)
        found = {"local_s": [], "capacity_s": [], "pool_read_Bps": []}
        for rep in range(args.repeats + 1):
            for name, ck in (("local", local), ("capacity", capacity)):
                self.drop_caches()
                seconds, _, _ = self.timed(lambda: ck.restore(target, step=1))
                self.check(target, f"restore {case} from the {name} tier")
                for t in target.values():
                    t.data.zero_()
                if rep:
                    found[f"{name}_s"].append(seconds)
            reads = self.pool_read()
            if rep:
                found["pool_read_Bps"].append(reads)
            self.log(f"restore {case} round {rep}: local {found['local_s'][-1:]} s, capacity "
                     f"{found['capacity_s'][-1:]} s, pools {reads}")
        for ck in (local, capacity):
            ck.close(drain_newest=False)
        self.out[f"restore_{case}"] = found


def worker(args) -> None:
    import warnings
    import tierpoint
    # A background drain's failure reaches the trainer's thread as a CheckpointWarning (and
    # Checkpointer.last_drain_error): here every one is an error.
    warnings.simplefilter("error", tierpoint.CheckpointWarning)
    def body():
        bench = Bench(args)
        if args.worker == "drain":
            bench.drain_rounds()
        else:
            bench.restores(args.restore_run, f"2to{bench.world}")
        return bench.rank, bench.out
    as_worker(body, args.result)


# ---- the driver -----------------------------------------------------------------------------

def launch_phase(ranks: int, phase: str, args, result: str, extra=()) -> dict:
    cmd = [mpiexec_path(), "-n", str(ranks), sys.executable, os.path.abspath(__file__),
           "--worker", phase, "--gib", str(args.gib), "--tensors", str(args.tensors),
           "--repeats", str(args.repeats), "--dir", args.dir, "--pools", *args.pools,
           "--cap", str(args.cap), "--src", str(args.src), "--disk-src", str(args.disk_src),
           "--fast-local", args.fast_local, "--result", result, *extra]
    return launch(cmd, result, f"drain bench: the {phase} launch ({ranks} ranks)")


def measure(gib: float = 1.0, repeats: int = 3, directory: str = DEFAULT_DIR,
            pools: list | None = None, cap: float = 200e6, tensors: int = 200) -> dict:
    """Run both launches; return the raw numbers and the targets (``summary``). Raises
    RuntimeError when any measured operation failed."""
    args = argparse.Namespace(gib=gib, repeats=repeats, dir=directory, cap=cap,
                              tensors=tensors,
                              pools=pools or [os.path.join(directory, f"pool{i}")
                                              for i in range(2)])
    from pathlib import Path
    shutil.rmtree(args.dir, ignore_errors=True)
    for pool in args.pools:
        os.makedirs(pool, exist_ok=True)
    total = sum(s.nbytes for s in bs.make_specs(gib, tensors))
    src, on_tmpfs = disk.make_random_source(total, Path(args.dir))
    args.src = str(src)
    # The source's copy on the pools' disk, for the cold-copy baseline (pool_copy).
    args.disk_src = os.path.join(args.dir, "disk-src.bin")
    shutil.copyfile(src, args.disk_src)
    # The drain-alone row's local tier sits beside the source, on tmpfs when it has room for
    # one more copy of the state (the row's checkpoint is removed after each drain).
    fast = os.path.join("/dev/shm", f"tierpoint-drain-local-{os.getpid()}")
    args.fast_local = fast if on_tmpfs and \
        shutil.disk_usage("/dev/shm").free > 2 * total + (512 << 20) else ""
    print(f"[drain bench] {gib} GiB, 2 saving ranks, pools {args.pools}, the drain-alone "
          f"row's local tier {args.fast_local or 'on the disk (no room on tmpfs)'}",
          file=sys.stderr, flush=True)
    try:
        r = launch_phase(2, "drain", args, os.path.join(args.dir, "drain.json"))
        r4 = launch_phase(4, "restore4", args, os.path.join(args.dir, "restore4.json"),
                    ["--restore-run", r["restore_run"]])
    finally:
        src.unlink(missing_ok=True)
        shutil.rmtree(args.dir, ignore_errors=True)
        if args.fast_local:
            shutil.rmtree(args.fast_local, ignore_errors=True)
    r["restore_2to4"] = r4["restore_2to4"]
    r["cold"] = r.get("cold", True) and r4.get("cold", True)
    r["config"] = {"gib": gib, "repeats": repeats, "pools": args.pools, "cap": cap,
                   "tensors": tensors}
    r["summary"] = summarize(r)
    return r


def _med(xs):
    return statistics.median(xs) if xs else float("nan")


def _spread(xs, scale=1.0):
    return "[" + ", ".join(f"{x * scale:.2f}" for x in xs) + "]"


def summarize(r: dict) -> list[dict]:
    """The rows of the table: what, value, reference, ratio, target, PASS/FAIL."""
    total = r["bytes"]
    rows = []
    pool_w = _med(r["pool_write_Bps"])
    drain = total / _med(r["drain_s"])
    where = "local tier on tmpfs" if r.get("fast_local") else "local tier on the disk"
    rows.append({"what": f"drain alone ({where}), GB/s", "value": drain / 1e9,
                 "per_round": [total / s / 1e9 for s in r["drain_s"]],
                 "reference": pool_w / 1e9, "reference_is": "pools' parallel dd write",
                 "ratio": drain / pool_w, "target": DRAIN_TARGET})
    copy = _med(r["pool_copy_Bps"])
    on_disk = total / _med(r["drain_disk_s"])
    rows.append({"what": "drain alone (local tier on the pools' disk, cold), GB/s",
                 "value": on_disk / 1e9,
                 "per_round": [total / s / 1e9 for s in r["drain_disk_s"]],
                 "reference": copy / 1e9,
                 "reference_is": "pools' parallel dd copy from the same disk (cold)",
                 "ratio": on_disk / copy, "target": DRAIN_TARGET})
    for case in ("2to2", "2to4"):
        found = r[f"restore_{case}"]
        best = _med([max(x.values()) for x in found["pool_read_Bps"]])
        for tier in ("local", "capacity"):
            bps = total / _med(found[f"{tier}_s"])
            rows.append({"what": f"restore {case} from the {tier} tier (cold), GB/s",
                         "value": bps / 1e9,
                         "per_round": [total / s / 1e9 for s in found[f"{tier}_s"]],
                         "reference": best / 1e9, "reference_is": "pools' parallel dd cold read",
                         "ratio": bps / best,
                         "target": RESTORE_TARGET if tier == "capacity" else None})
    alone = _med(r["save_alone_s"])
    for label, key in (("an uncapped", "save_during_s"), ("a capped", "save_during_capped_s")):
        during = _med(r[key])
        rows.append({"what": f"save during {label} drain, s to commit", "value": during,
                     "per_round": r[key], "reference": alone,
                     "reference_is": "save alone", "ratio": during / alone, "target": None})
    for row in rows:
        t = row["target"]
        row["verdict"] = "" if t is None else ("PASS" if row["ratio"] >= t else "FAIL")
    return rows


def report(r: dict) -> str:
    gb = r["bytes"] / 1e9
    n = len(r["drain_s"])
    lines = [f"state {gb:.3f} GB, 2 saving ranks, {len(r['config']['pools'])} pools, medians of "
             f"{n} rounds after a warm-up; reads {'cold' if r['cold'] else 'NOT cold'}", ""]
    lines.append(f"{'what':48s} {'value':>8s} {'reference':>10s} {'ratio':>6s} {'target':>7s}"
                 "  verdict  per round")
    for row in r["summary"]:
        t = "" if row["target"] is None else f">={row['target']:.2f}"
        lines.append(f"{row['what']:48s} {row['value']:8.3f} {row['reference']:10.3f} "
                     f"{row['ratio']:6.2f} {t:>7s}  {row['verdict']:7s}  "
                     f"{_spread(row['per_round'])}")
    lines.append("")
    lines.append("references: " + "; ".join(sorted({f"{row['reference_is']}" for row in
                                                     r["summary"]})))
    lines.append(f"pools' parallel write per round (GB/s): {_spread(r['pool_write_Bps'], 1e-9)}"
                 f"; cold copy from the disk: {_spread(r['pool_copy_Bps'], 1e-9)}")
    lines.append(f"drain seconds per round: {_spread(r['drain_s'])}; CPU seconds per rank "
                 f"(median): {[round(_med(c), 2) for c in zip(*r['drain_cpu_s'])]}")
    phases = {k: _med([p[k] for p in r["drain_phases"]]) for k in r["drain_phases"][0]}
    lines.append("drain phases (s, median): " + ", ".join(f"{k} {v:.2f}"
                                                          for k, v in phases.items()))
    lines.append(f"files per drained checkpoint: {r['files']}")
    lines.append(f"the background drain ran on after the save committed (s): uncapped "
                 f"{_spread(r['drain_left_s'])}, capped at {r['config']['cap'] / 1e6:.0f} "
                 f"MB/s {_spread(r['drain_left_capped_s'])} (0: it ended before the save)")
    for case in ("2to2", "2to4"):
        reads = r[f"restore_{case}"]["pool_read_Bps"]
        lines.append(f"pools' cold reads during restore {case} (GB/s): " + "; ".join(
            ", ".join(f"{k} {v / 1e9:.3f}" for k, v in x.items()) for x in reads))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--tensors", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=DEFAULT_DIR)
    p.add_argument("--pools", nargs="+", help="pool directories (default: two under --dir)")
    p.add_argument("--cap", type=float, default=200e6, help="drain cap for the capped run, B/s")
    p.add_argument("--quick", action="store_true", help="--gib 0.25 --repeats 2")
    p.add_argument("--json", help="write the raw numbers and the table's rows here")
    p.add_argument("--worker", choices=("drain", "restore4"), help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--disk-src", help=argparse.SUPPRESS)
    p.add_argument("--fast-local", default="", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--restore-run", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.gib, args.repeats = 0.25, 2
    return dispatch(args, worker, lambda a: measure(a.gib, a.repeats, a.dir, a.pools, a.cap,
                                                    a.tensors), report)


if __name__ == "__main__":
    sys.exit(main())
