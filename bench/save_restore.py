#!/usr/bin/env python3
"""Save/restore benchmark: tierpoint against torch.distributed.checkpoint (DCP) and the disk.

One command::

    .venv/bin/python bench/save_restore.py [--gib 2] [--repeats 3] [--dir PATH]

The command is a *driver*. It

1. builds the description of a deterministic state dict (~200 2-D tensors, 4 KiB .. 256 MiB,
   log-spread, 40% of the bytes bfloat16, the rest float32, ``--gib`` GiB in all);
2. measures the disk under ``--dir`` with ``dd``: sequential write of a random-filled file of
   the same size ending in ``fdatasync``, and cold sequential read of it (page cache dropped);
3. launches MPI workers (``mpiexec`` next to ``sys.executable``) for the timed phases:
   ``save`` on 2 ranks, then ``restore`` on 2 ranks (same layout), 1 rank (2->1) and
   4 ranks (2->4); every phase runs tierpoint and DCP on the same data, interleaved;
4. prints a table of median seconds, GB/s, % of the disk's bandwidth and the speed-up over DCP.

Workers are this same file run with ``--worker``. Each worker process generates its data once
and reuses the buffers; a save phase does an untimed warm-up save per library, and a restore
phase an untimed warm-up restore, before the timed repeats. Every timed operation is bracketed
by barriers and preceded by ``sync`` + ``drop_caches`` (when allowed), so reads are cold.
Restored data are verified against the generator after each load, outside the timed part.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
GB = 1e9

LIBS = ("tierpoint", "dcp")
LOAD_CASES = (  # (case name, number of restoring ranks)
    ("same", 2),
    ("2to1", 1),
    ("2to4", 4),
)
SAVE_RANKS = 2
DEFAULT_DIR = "/var/tmp/tierpoint-bench"


# --------------------------------------------------------------------------------------------
# The state: shapes, dtypes and a position-addressable generator
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    name: str
    seed: int
    rows: int
    cols: int
    dtype: str  # "float32" | "bfloat16"

    @property
    def itemsize(self) -> int:
        return 4 if self.dtype == "float32" else 2

    @property
    def nbytes(self) -> int:
        return self.rows * self.cols * self.itemsize


def _log_sizes(n: int, lo: float, hi: float, total: float) -> list[float]:
    """n sizes from lo to hi, spread as lo*(hi/lo)**(u**p), u uniform on [0, 1], summing to total.

    p is found by bisection (p=1 is log-uniform; larger p puts more tensors at the small end).
    """
    ratio = hi / lo

    def sizes(p: float) -> list[float]:
        return [lo * ratio ** ((i / (n - 1)) ** p) for i in range(n)]

    a, b = 1e-3, 1e3
    if sum(sizes(a)) < total or sum(sizes(b)) > total:
        raise SystemExit(f"cannot spread {n} tensors of {lo:.0f}..{hi:.0f} B over {total:.0f} B")
    for _ in range(200):
        m = math.sqrt(a * b)
        if sum(sizes(m)) > total:
            a = m
        else:
            b = m
    return sizes(math.sqrt(a * b))


def make_specs(gib: float, n: int = 200, bf16_share: float = 0.4) -> list[TensorSpec]:
    """Deterministic tensor list for a state of about ``gib`` GiB (exact total is reported)."""
    total = gib * GIB
    lo = 4 * KIB
    hi = min(256 * MIB, total / 8)  # 256 MiB at 2 GiB; smaller states cap the largest tensor
    sizes = sorted(_log_sizes(n, lo, hi, total), reverse=True)
    # Dtypes: largest first, each tensor goes to the class that is furthest below its share.
    dtypes, got = [], {"bfloat16": 0.0, "float32": 0.0}
    for s in sizes:
        want_bf = bf16_share * (got["bfloat16"] + got["float32"] + s) - got["bfloat16"]
        want_f32 = (1 - bf16_share) * (got["bfloat16"] + got["float32"] + s) - got["float32"]
        d = "bfloat16" if want_bf >= want_f32 else "float32"
        dtypes.append(d)
        got[d] += s
    specs = []
    # A fixed permutation so the dict order is not sorted by size.
    order = sorted(range(n), key=lambda i: (i * 7919) % n)
    for k, i in enumerate(order):
        s, d = sizes[i], dtypes[i]
        item = 4 if d == "float32" else 2
        nelem = max(1, round(s / item))
        cols = 2 ** int(math.log2(max(1.0, math.sqrt(nelem))))
        cols = max(8, min(8192, cols))
        rows = max(4, 4 * round(nelem / cols / 4))  # divisible by 1, 2 and 4 ranks
        specs.append(TensorSpec(f"p{k:03d}", 1000 + k, rows, cols, d))
    return specs


def rows_of(rows: int, rank: int, world: int) -> tuple[int, int]:
    """(offset, count) of ``rank``'s rows when ``rows`` are split evenly over ``world`` ranks."""
    per = rows // world
    return rank * per, per


BLOCK_ELEMS = 256 * KIB  # the generator's unit: blocks of whole rows, ~1 MiB of float32


def block_rows(spec: TensorSpec) -> int:
    return max(1, BLOCK_ELEMS // spec.cols)


def gen_block(spec: TensorSpec, b: int):
    """Float32 values in [-0.5, 0.5) for row block ``b`` of a tensor (a pure function of the
    tensor's seed and b, so any rank can produce or check any part of any tensor)."""
    import numpy as np
    import torch

    br = block_rows(spec)
    n = min(spec.rows, (b + 1) * br) - b * br
    v = np.random.default_rng([spec.seed, b]).random(n * spec.cols, dtype=np.float32)
    v -= 0.5
    return torch.from_numpy(v).view(n, spec.cols)


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def fill_rows(t, spec: TensorSpec, row0: int) -> None:
    """Fill ``t`` (global rows row0 .. row0+len(t), all columns) from the generator."""
    br = block_rows(spec)
    n = t.shape[0]
    for b in range(row0 // br, (row0 + n + br - 1) // br):
        blk = gen_block(spec, b)
        lo, hi = max(row0, b * br), min(row0 + n, b * br + blk.shape[0])
        t[lo - row0:hi - row0].copy_(blk[lo - b * br:hi - b * br])


def expected_row(spec: TensorSpec, row: int, dtype):
    br = block_rows(spec)
    return gen_block(spec, row // br)[row % br].to(dtype)


def check_rows(t, spec: TensorSpec, row0: int) -> str | None:
    """Compare ``t`` (global rows row0..) with the generator: whole when small, else 4 rows.

    Returns None when equal (bitwise), else a description of the first difference."""
    import torch

    def same(a, b) -> bool:
        if a.dtype == torch.bfloat16:
            a, b = a.view(torch.int16), b.view(torch.int16)
        return torch.equal(a, b)

    if t.numel() * spec.itemsize <= 256 * KIB:
        want = torch.empty_like(t)
        fill_rows(want, spec, row0)
        if not same(t, want):
            return f"{spec.name} rows {row0}..{row0 + t.shape[0]} differ"
        return None
    nrows = t.shape[0]
    for r in sorted({0, nrows // 3, nrows // 2, nrows - 1}):
        want = expected_row(spec, row0 + r, t.dtype)
        if not same(t[r], want):
            return (f"{spec.name} row {row0 + r}: got {t[r][:4].tolist()} "
                    f"want {want[:4].tolist()}")
    return None


def poison_rows(t, spec: TensorSpec) -> None:
    """Zero the rows check_rows looks at, so a restore that writes nothing is caught."""
    nrows = t.shape[0]
    if t.numel() * spec.itemsize <= 256 * KIB:
        t.zero_()
    else:
        for r in {0, nrows // 3, nrows // 2, nrows - 1}:
            t[r].zero_()


# --------------------------------------------------------------------------------------------
# Worker side (runs under mpiexec)
# --------------------------------------------------------------------------------------------

class Worker:
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
        self.dd: list[float | None] = []  # one per round, rank 0 only
        self._init_torch_dist()

    # -- plumbing -------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[worker {self.args.worker}/{self.args.case or 'save'} n={self.world}] {msg}",
                  file=sys.stderr, flush=True)

    def barrier(self) -> None:
        """MPI barrier that sleeps while waiting: with 4 ranks on 2 cores a spinning barrier
        would steal the CPU from the ranks that still work."""
        req = self.comm.Ibarrier()
        while not req.Test():
            time.sleep(0.0005)

    def _init_torch_dist(self) -> None:
        import socket
        from datetime import timedelta

        import torch.distributed as dist

        port = None
        if self.rank == 0:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        port = self.comm.bcast(port, root=0)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                          RANK=str(self.rank), WORLD_SIZE=str(self.world))
        dist.init_process_group("gloo", rank=self.rank, world_size=self.world,
                                timeout=timedelta(seconds=3600))
        from torch.distributed.device_mesh import init_device_mesh

        self.mesh = init_device_mesh("cpu", (self.world,))

    def drop_caches(self) -> None:
        """sync + drop the page cache on rank 0 (the node is shared by all ranks), then barrier."""
        self.barrier()
        if self.rank == 0:
            self.dropped &= try_drop_caches()
        self.barrier()

    def dd_sample(self, kind: str) -> None:
        """Rank 0 runs one dd (write or cold read) of the baseline file while the others
        sleep at the barrier: disk samples spread over the phases, next to the timed runs."""
        if not self.args.dd_file:
            return
        self.barrier()
        if self.rank == 0:
            try:
                if kind == "write":
                    bw, cold = dd_write(Path(self.args.dd_src), Path(self.args.dd_file))
                else:
                    bw, cold = dd_read(Path(self.args.dd_file))
                self.dd.append(bw)
                self.dropped &= cold
                self.log(f"dd {kind} {bw / GB:.2f} GB/s")
            except Exception as e:  # noqa: BLE001 - a missing sample is not fatal
                self.dd.append(None)
                self.log(f"dd {kind} failed: {e}")
        self.barrier()

    def timed(self, fn) -> float:
        """Wall time of fn() between two barriers, max over ranks."""
        self.barrier()
        t0 = time.perf_counter()
        fn()
        self.barrier()
        dt = time.perf_counter() - t0
        return self.comm.allreduce(dt, op=self.MPI.MAX)

    def rmtree(self, path: Path) -> None:
        self.barrier()
        if self.rank == 0 and path.exists():
            shutil.rmtree(path)
            os.sync()
        self.barrier()

    # -- state builders ---------------------------------------------------------------------------
    def local_buffers(self, world: int, fill: bool) -> dict:
        """This rank's row block of every tensor for a ``world``-rank layout.

        fill=True generates the values; fill=False allocates zeroed (and thereby faulted-in)
        buffers to restore into.
        """
        import torch

        out = {}
        for s in self.specs:
            off, n = rows_of(s.rows, self.rank, world)
            t = torch.zeros((n, s.cols), dtype=torch_dtype(s.dtype))
            if fill:
                fill_rows(t, s, off)
            out[s.name] = (t, off)
        return out

    def tp_state(self, bufs: dict) -> dict:
        import tierpoint

        return {s.name: tierpoint.Shard(bufs[s.name][0], (s.rows, s.cols), (bufs[s.name][1], 0))
                for s in self.specs}

    def dcp_state(self, bufs: dict) -> dict:
        from torch.distributed.tensor import DTensor, Shard

        return {s.name: DTensor.from_local(bufs[s.name][0], self.mesh, [Shard(0)], run_check=False,
                                           shape=(s.rows, s.cols), stride=(s.cols, 1))
                for s in self.specs}

    def verify(self, bufs: dict) -> str | None:
        for s in self.specs:
            err = check_rows(bufs[s.name][0], s, bufs[s.name][1])
            if err:
                return err
        return None

    # -- library operations -----------------------------------------------------------------------
    def tp_save(self, root: Path, run: str, state: dict) -> float:
        import tierpoint

        ckpt = tierpoint.Checkpointer(local=str(root), run=run, comm=None)
        try:
            def op():  # synchronous against DCP's synchronous save: no staging copy
                ckpt.save(1, state, blocking=True)

            return self.timed(op)
        finally:
            ckpt.close()

    def tp_restore(self, root: Path, run: str, state: dict) -> float:
        import tierpoint

        ckpt = tierpoint.Checkpointer(local=str(root), run=run, comm=None)
        try:
            return self.timed(lambda: ckpt.restore(state, step=1))
        finally:
            ckpt.close()

    def dcp_save(self, path: Path, state: dict) -> float:
        import torch.distributed.checkpoint as dcp

        writer = dcp.FileSystemWriter(str(path))  # defaults: sync_files=True, thread_count=1
        assert writer.sync_files, "DCP FileSystemWriter default no longer fsyncs"
        return self.timed(lambda: dcp.save(state, storage_writer=writer))

    def dcp_load(self, path: Path, state: dict) -> float:
        import torch.distributed.checkpoint as dcp

        reader = dcp.FileSystemReader(str(path))
        return self.timed(lambda: dcp.load(state, storage_reader=reader))

    # -- phases ------------------------------------------------------------------------------------
    def run_save(self) -> dict:
        a = self.args
        libs = a.libs.split(",")
        root = Path(a.dir)
        tp_root, dcp_root = root / "tierpoint", root / "dcp"
        self.log(f"generating {self.total / GIB:.2f} GiB over {len(self.specs)} tensors")
        t0 = time.perf_counter()
        bufs = self.local_buffers(self.world, fill=True)
        self.log(f"generated in {time.perf_counter() - t0:.1f} s")
        states = {}
        if "tierpoint" in libs:
            states["tierpoint"] = self.tp_state(bufs)
        if "dcp" in libs:
            states["dcp"] = self.dcp_state(bufs)
        times = {lib: [] for lib in libs}
        rounds = {lib: [None] * a.repeats for lib in libs}  # time per round, None if failed
        kept = {}
        errors = {}

        def one(lib: str, tag: str) -> float:
            # Remove this library's previous checkpoint first (untimed), keep disk use bounded.
            if lib == "tierpoint":
                self.rmtree(tp_root)
                self.drop_caches()
                dt = self.tp_save(tp_root, tag, states[lib])
                kept[lib] = {"root": str(tp_root), "run": tag}
            else:
                self.rmtree(dcp_root)
                self.drop_caches()
                dt = self.dcp_save(dcp_root / tag, states[lib])
                kept[lib] = {"path": str(dcp_root / tag)}
            return dt

        for lib in libs:
            try:
                dt = one(lib, "warmup")
                self.log(f"{lib} warm-up save {dt:.2f} s")
            except Exception:
                errors[lib] = traceback.format_exc()
                self.log(f"{lib} save FAILED:\n{errors[lib]}")
        for r in range(a.repeats):
            self.dd_sample("write")
            order = libs if r % 2 == 0 else libs[::-1]
            for lib in order:
                if lib in errors:
                    continue
                try:
                    dt = one(lib, f"r{r}")
                    times[lib].append(dt)
                    rounds[lib][r] = dt
                    self.log(f"{lib} save repeat {r}: {dt:.2f} s "
                             f"({self.total / dt / GB:.2f} GB/s)")
                except Exception:
                    errors[lib] = traceback.format_exc()
                    self.log(f"{lib} save FAILED:\n{errors[lib]}")
        os.sync()
        return {"times": times, "rounds": rounds, "kept": kept, "errors": errors}

    def run_load(self) -> dict:
        a = self.args
        libs = a.libs.split(",")
        saved = json.loads(a.saved)
        bufs = self.local_buffers(self.world, fill=False)
        times = {lib: [] for lib in libs}
        rounds = {lib: [None] * a.repeats for lib in libs}  # time per round, None if failed
        errors = {}
        states = {}
        for lib in libs:
            if lib not in saved:
                errors[lib] = "no checkpoint from the save phase"
                continue
            states[lib] = self.tp_state(bufs) if lib == "tierpoint" else self.dcp_state(bufs)

        def one(lib: str) -> float:
            for s in self.specs:
                poison_rows(bufs[s.name][0], s)
            self.drop_caches()
            if lib == "tierpoint":
                dt = self.tp_restore(Path(saved[lib]["root"]), saved[lib]["run"], states[lib])
            else:
                dt = self.dcp_load(Path(saved[lib]["path"]), states[lib])
            err = self.verify(bufs)
            errs = self.comm.allgather(err)
            bad = [f"rank {i}: {e}" for i, e in enumerate(errs) if e]
            if bad:
                raise RuntimeError("restored data differ from what was saved: " + "; ".join(bad))
            return dt

        for lib in libs:
            if lib in errors:
                continue
            try:
                dt = one(lib)
                self.log(f"{lib} warm-up restore {dt:.2f} s")
            except Exception:
                errors[lib] = traceback.format_exc()
                self.log(f"{lib} restore FAILED:\n{errors[lib]}")
        for r in range(a.repeats):
            self.dd_sample("read")
            order = libs if r % 2 == 0 else libs[::-1]
            for lib in order:
                if lib in errors:
                    continue
                try:
                    dt = one(lib)
                    times[lib].append(dt)
                    rounds[lib][r] = dt
                    self.log(f"{lib} restore repeat {r}: {dt:.2f} s "
                             f"({self.total / dt / GB:.2f} GB/s)")
                except Exception:
                    errors[lib] = traceback.format_exc()
                    self.log(f"{lib} restore FAILED:\n{errors[lib]}")
        return {"times": times, "rounds": rounds, "errors": errors}


def worker_main(args) -> int:
    w = Worker(args)
    res = w.run_save() if args.worker == "save" else w.run_load()
    res["dropped_caches"] = w.comm.allreduce(int(w.dropped), op=w.MPI.MIN) == 1
    res["world"] = w.world
    res["dd"] = w.dd if w.rank == 0 else []
    if w.rank == 0:
        Path(args.result).write_text(json.dumps(res, indent=1))
    w.barrier()
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------

def try_drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


_DD_RE = re.compile(r"^(\d+) bytes .* copied, ([0-9.]+) s", re.M)


def run_dd(*ddargs: str) -> tuple[int, float]:
    env = dict(os.environ, LC_ALL="C", LANG="C")
    p = subprocess.run(["dd", *ddargs], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"dd {' '.join(ddargs)} failed: {p.stderr.strip()}")
    m = _DD_RE.search(p.stderr)
    if not m:
        raise RuntimeError(f"cannot parse dd output: {p.stderr!r}")
    return int(m.group(1)), float(m.group(2))


def run_dd_parallel(arglists: list[list[str]]) -> float:
    """Run several dd at once; wall seconds from the first start to the last exit."""
    env = dict(os.environ, LC_ALL="C", LANG="C")
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["dd", *a], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env=env) for a in arglists]
    errs = [p.communicate()[1] for p in procs]
    secs = time.perf_counter() - t0
    for p, e, a in zip(procs, errs, arglists):
        if p.returncode != 0:
            raise RuntimeError(f"dd {' '.join(a)} failed: {e.strip()}")
    return secs


def make_random_source(nbytes: int, bench_dir: Path) -> tuple[Path, bool]:
    """A file of ``nbytes`` random bytes to copy with dd, on tmpfs when it has room.

    Writing zeros could be flattered by zero detection below the file system (thin-provisioned
    virtual disks); random data cannot be. Returns (path, on_tmpfs).
    """
    import numpy as np

    shm = Path("/dev/shm")
    on_tmpfs = shm.is_dir() and shutil.disk_usage(shm).free > nbytes + 512 * MIB
    d = shm if on_tmpfs else bench_dir
    fd, name = tempfile.mkstemp(prefix="tierpoint-bench-src-", dir=d)
    rng = np.random.default_rng(12345)
    with os.fdopen(fd, "wb") as f:
        left = nbytes
        while left:
            n = min(left, 64 * MIB)
            f.write(rng.bytes(n))
            left -= n
    return Path(name), on_tmpfs


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def dd_write(src: Path, target: Path) -> tuple[float, bool]:
    """(B/s, cache dropped) of one dd sequential write of ``src`` to a new ``target``, fdatasync."""
    target.unlink(missing_ok=True)
    cold = try_drop_caches()
    b, s = run_dd(f"if={src}", f"of={target}", "bs=16M", "conv=fdatasync")
    return b / s, cold


def dd_read(target: Path) -> tuple[float, bool]:
    """(B/s, cache dropped) of one dd sequential read of ``target`` after dropping the cache."""
    cold = try_drop_caches()
    b, s = run_dd(f"if={target}", "of=/dev/null", "bs=16M")
    return b / s, cold


def disk_baselines(src: Path, target: Path, nbytes: int, repeats: int, when: str) -> dict:
    """dd sequential write (random data, fdatasync) and cold sequential read, ``repeats`` times.

    Leaves ``target`` (random data) in place for the read samples taken during the phases.
    """
    bench_dir = target.parent
    writes, reads, zero_writes, par_writes, par_reads, cold = [], [], [], [], [], True
    for r in range(repeats):
        bw, c1 = dd_write(src, target)
        br, c2 = dd_read(target)
        writes.append(bw)
        reads.append(br)
        cold &= c1 and c2
        print(f"[disk {when}] repeat {r}: write {bw / GB:.2f} GB/s, read {br / GB:.2f} GB/s",
              file=sys.stderr, flush=True)
    # For information (not references): two concurrent dd streams, one per saving rank,
    # each writing / reading half the bytes to its own file (a virtual disk often serves
    # two queues faster than one), and the classic zero-filled write.
    halves = [bench_dir / f"dd-baseline-{i}.bin" for i in range(SAVE_RANKS)]
    cuts = [nbytes * i // SAVE_RANKS for i in range(SAVE_RANKS + 1)]
    zero = bench_dir / "dd-zero.bin"
    try:
        try_drop_caches()
        secs = run_dd_parallel([
            [f"if={src}", f"of={h}", "bs=16M", "conv=fdatasync", "iflag=skip_bytes,count_bytes",
             f"skip={cuts[i]}", f"count={cuts[i + 1] - cuts[i]}"] for i, h in enumerate(halves)])
        par_writes.append(nbytes / secs)
        try_drop_caches()
        secs = run_dd_parallel([[f"if={h}", "of=/dev/null", "bs=16M"] for h in halves])
        par_reads.append(nbytes / secs)
        for h in halves:
            h.unlink(missing_ok=True)
        try_drop_caches()
        count = max(1, nbytes // (16 * MIB))
        b, s = run_dd("if=/dev/zero", f"of={zero}", "bs=16M", f"count={count}", "conv=fdatasync")
        zero_writes.append(b / s)
    finally:
        for h in (*halves, zero):
            h.unlink(missing_ok=True)
        os.sync()
    return {"write": writes, "read": reads, "zero_write": zero_writes, "par_write": par_writes,
            "par_read": par_reads, "cold": cold}


def mpiexec_path() -> str:
    cand = Path(os.path.dirname(sys.executable)) / "mpiexec"  # not resolved: the venv's bin
    if cand.exists():
        return str(cand)
    found = shutil.which("mpiexec")
    if not found:
        raise SystemExit("mpiexec not found next to the interpreter nor on PATH")
    return found


def launch(n: int, worker_args: list[str], timeout: float) -> dict:
    fd, result = tempfile.mkstemp(prefix="tierpoint-bench-", suffix=".json")
    os.close(fd)
    os.unlink(result)
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, os.path.abspath(__file__),
           *worker_args, "--result", result]
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # One intra-op thread per rank, as torchrun does for several processes per node: with more
    # ranks than cores, OpenMP teams spin against each other and small copies crawl.
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        p = subprocess.run(cmd, env=env, timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    try:
        if rc == 0 and os.path.exists(result):
            return json.loads(Path(result).read_text())
        return {"failed": f"mpiexec -n {n} exited with {rc}"}
    finally:
        if os.path.exists(result):
            os.unlink(result)


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_report(cfg: dict, disk: dict, phases: dict) -> None:
    total = cfg["total_bytes"]
    all_w = disk["write"] + disk.get("write_during", []) + disk.get("write_after", [])
    all_r = disk["read"] + disk.get("read_during", []) + disk.get("read_after", [])
    wbw, rbw = med(all_w), med(all_r)
    print()
    print("=" * 100)
    print(f"tierpoint save/restore benchmark   {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"host: {os.uname().nodename}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.1f} GiB RAM; "
          f"dir {cfg['dir']} on {cfg['device']} ({cfg['fstype']})")
    print(f"state: {cfg['ntensors']} tensors, {total / GIB:.3f} GiB = {total / GB:.3f} GB, "
          f"{cfg['bf16_share'] * 100:.1f}% of bytes bfloat16, "
          f"largest {cfg['largest'] / MIB:.1f} MiB, "
          f"smallest {cfg['smallest'] / KIB:.1f} KiB; saved by {SAVE_RANKS} ranks (dim 0 shards)")
    print(f"repeats: {cfg['repeats']} (medians shown; GB = 1e9 bytes)")
    print()
    src = "random data from tmpfs" if disk["source_on_tmpfs"] else "random data"
    gbl = lambda xs: ", ".join(f"{x / GB:.3f}" for x in xs)  # noqa: E731
    print(f"disk baselines (dd bs=16M, {disk['bytes'] / GIB:.2f} GiB file, same file system; "
          f"median of all runs, listed as before | during | after the phases):")
    print(f"  sequential write, {src}, conv=fdatasync: {fmt(wbw and wbw / GB, '.3f')} GB/s  "
          f"[{gbl(disk['write'])}] | [{gbl(disk.get('write_during', []))}] | "
          f"[{gbl(disk.get('write_after', []))}]")
    how = "cold (caches dropped)" if disk["cold"] else "WARM (drop_caches not allowed)"
    print(f"  sequential read, {how}: "
          f"{fmt(rbw and rbw / GB, '.3f')} GB/s  [{gbl(disk['read'])}] | "
          f"[{gbl(disk.get('read_during', []))}] | [{gbl(disk.get('read_after', []))}]")
    print(f"  for information, not references: {SAVE_RANKS} concurrent dd streams (half each): "
          f"write [{gbl(disk['par_write'])}] | [{gbl(disk.get('par_write_after', []))}], "
          f"cold read [{gbl(disk['par_read'])}] | [{gbl(disk.get('par_read_after', []))}] GB/s;")
    print(f"  write from /dev/zero [{gbl(disk['zero_write'])}] | "
          f"[{gbl(disk.get('zero_write_after', []))}] GB/s")
    la = cfg.get("loadavg_before", "?")
    busy = la != "?" and float(la.split()[0]) > 0.5 * (os.cpu_count() or 1)
    print(f"load average at start (1, 5, 15 min): {la}"
          + ("  -- other work on this machine: expect noisy numbers" if busy else ""))
    print()
    hdr = (f"{'case':<22}{'ranks':>6} | {'tierpoint s':>11}{'GB/s':>7}{'%disk':>7} | "
           f"{'DCP s':>8}{'GB/s':>7}{'%disk':>7} | {'speed-up':>8} | target")
    print(hdr)
    print("-" * len(hdr))
    rows = [("save (durable)", "save", f"{SAVE_RANKS}", wbw, (0.90, 1.5))]
    for case, n in LOAD_CASES:
        label = {"same": "restore same layout", "2to1": "restore 2->1",
                 "2to4": "restore 2->4"}[case]
        rows.append((label, case, f"2->{n}", rbw, (0.80, 1.5) if case == "2to4" else None))
    medians_lines = []
    warm_notes = []
    for label, key, ranks, bw, target in rows:
        ph = phases.get(key, {})
        cells, speeds = [], {}
        for lib in LIBS:
            ts = ph.get("times", {}).get(lib, [])
            m = med(ts)
            if m is None:
                err = ph.get("failed") or ("error" if lib in ph.get("errors", {}) else "n/a")
                cells.append(f"{err[:11]:>11}" if lib == "tierpoint" else f"{err[:8]:>8}")
                cells.append(f"{'':>7}{'':>7}")
                continue
            gbps = total / m
            speeds[lib] = gbps
            pct = 100 * gbps / bw if bw else None
            w = 11 if lib == "tierpoint" else 8
            cells.append(f"{m:>{w}.2f}")
            cells.append(f"{gbps / GB:>7.3f}{fmt(pct, '>7.0f')}")
            medians_lines.append(f"  {label:<22} {lib:<9} s: " + ", ".join(f"{t:.2f}" for t in ts))
        speed = speeds["tierpoint"] / speeds["dcp"] if len(speeds) == 2 else None
        verdict = ""
        if target:
            frac, ratio = target
            what = "write" if key == "save" else "cold read"
            if "tierpoint" in speeds and bw:
                ok = speeds["tierpoint"] >= frac * bw and (speed is not None and speed >= ratio)
                verdict = (f">={frac * 100:.0f}% {what} & >={ratio}x DCP: "
                           f"{'PASS' if ok else 'FAIL'}")
            else:
                verdict = f">={frac * 100:.0f}% {what} & >={ratio}x DCP: n/a"
        if key != "save" and ph and not ph.get("dropped_caches", True):
            warm_notes.append(label)
        print(f"{label:<22}{ranks:>6} | {cells[0]}{cells[1]} | {cells[2]}{cells[3]} | "
              f"{fmt(speed, '>7.2f') + 'x' if speed is not None else '       -'} | {verdict}")
    print()
    print("%disk: save against the dd write (fdatasync) bandwidth, restores against the dd cold "
          "read bandwidth; speed-up = DCP time / tierpoint time (>1: tierpoint faster).")
    if warm_notes:
        print("WARNING: drop_caches was not allowed, these reads were WARM: "
              + ", ".join(warm_notes))
    print()
    print("paired by round (each round: one dd sample, then both libraries, order alternating; "
          "medians of the per-round values, robust to the disk drifting between rounds):")
    phdr = (f"{'case':<22} | {'tierpoint %dd':>13} | {'DCP %dd':>8} | {'speed-up':>8} | "
            "per-round speed-ups")
    print(phdr)
    print("-" * len(phdr))
    for label, key, _, _, _ in rows:
        ph = phases.get(key, {})
        rd, dd = ph.get("rounds", {}), ph.get("dd", [])
        pct = {lib: [] for lib in LIBS}
        sp = []
        for r in range(len(dd)):
            t = {lib: (rd.get(lib) or [None] * len(dd))[r] for lib in LIBS}
            for lib in LIBS:
                if t[lib] and dd[r]:
                    pct[lib].append(100 * total / t[lib] / dd[r])
            if t["tierpoint"] and t["dcp"]:
                sp.append(t["dcp"] / t["tierpoint"])
        speed = fmt(med(sp), '>7.2f') + 'x' if sp else '       -'
        print(f"{label:<22} | {fmt(med(pct['tierpoint']), '>13.0f')} | "
              f"{fmt(med(pct['dcp']), '>8.0f')} | {speed} | {', '.join(f'{x:.2f}' for x in sp)}")
    print("(%dd: against the dd sample of the same round -- write for the save, cold read for "
          "restores)")
    print()
    print("all timed repeats (seconds, max over ranks between barriers):")
    for line in medians_lines:
        print(line)
    for key, ph in phases.items():
        if ph.get("failed"):
            print(f"phase {key}: {ph['failed']}")
        for lib, err in ph.get("errors", {}).items():
            body = "\n".join("    " + line for line in err.rstrip().splitlines())
            print(f"phase {key}, {lib} failed:\n{body}")
    print("=" * 100)


def fs_info(path: Path) -> tuple[str, str]:
    try:
        out = subprocess.run(["df", "--output=source,fstype", str(path)], capture_output=True,
                             text=True).stdout.splitlines()[-1].split()
        return out[0], out[1]
    except Exception:
        return "?", "?"


def driver_main(args) -> int:
    libs = args.libs.split(",")
    for lib in libs:
        if lib not in LIBS:
            raise SystemExit(f"unknown library {lib!r}; choose from {LIBS}")
    if "tierpoint" in libs:
        chk = subprocess.run([sys.executable, "-c", "import tierpoint; tierpoint.Checkpointer; "
                              "tierpoint.Shard"], capture_output=True, text=True)
        if chk.returncode != 0:
            raise SystemExit("tierpoint is not importable (run with --libs dcp to skip it):\n"
                             + chk.stderr)
    specs = make_specs(args.gib, args.tensors)
    total = sum(s.nbytes for s in specs)
    bench_dir = Path(args.dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("tierpoint", "dcp"):
        shutil.rmtree(bench_dir / sub, ignore_errors=True)
    free = shutil.disk_usage(bench_dir).free
    need = 4 * total + GIB  # dd file + one kept checkpoint per library + one being written
    if free < need:
        raise SystemExit(f"{bench_dir}: {free / GIB:.1f} GiB free, need about {need / GIB:.1f} GiB")
    device, fstype = fs_info(bench_dir)
    cfg = {
        "dir": str(bench_dir), "device": device, "fstype": fstype, "repeats": args.repeats,
        "total_bytes": total, "ntensors": len(specs),
        "bf16_share": sum(s.nbytes for s in specs if s.dtype == "bfloat16") / total,
        "largest": max(s.nbytes for s in specs), "smallest": min(s.nbytes for s in specs),
        "libs": libs,
    }
    print(f"[driver] state {total / GIB:.3f} GiB in {len(specs)} tensors; dir {bench_dir} "
          f"({device}, {fstype}); libs {libs}", file=sys.stderr, flush=True)
    if not try_drop_caches():
        print("[driver] WARNING: cannot write /proc/sys/vm/drop_caches (not root?): reads will be "
              "WARM, the table says so", file=sys.stderr, flush=True)

    cfg["loadavg_before"] = loadavg()
    src, on_tmpfs = make_random_source(total, bench_dir)
    dd_file = bench_dir / "dd-baseline.bin"
    try:
        return run_all(args, cfg, libs, bench_dir, total, src, on_tmpfs, dd_file)
    finally:
        src.unlink(missing_ok=True)
        dd_file.unlink(missing_ok=True)
        if not args.keep:
            for sub in ("tierpoint", "dcp"):
                shutil.rmtree(bench_dir / sub, ignore_errors=True)


def run_all(args, cfg, libs, bench_dir, total, src, on_tmpfs, dd_file) -> int:
    disk = disk_baselines(src, dd_file, total, args.repeats, "before")
    disk.update(source_on_tmpfs=on_tmpfs, bytes=total)

    common = ["--gib", str(args.gib), "--tensors", str(args.tensors), "--repeats",
              str(args.repeats), "--dir", str(bench_dir), "--libs", args.libs,
              "--dd-src", str(src), "--dd-file", str(dd_file)]
    # Generous per-launch limit: generation + (warm-up + repeats) x (libs + dd) on a disk
    # twice slower than 100 MB/s.
    timeout = 300 + (args.repeats + 1) * (len(libs) + 1) * 2 * total / 100e6
    phases = {}
    print("[driver] save phase", file=sys.stderr, flush=True)
    phases["save"] = launch(SAVE_RANKS, ["--worker", "save", *common], timeout)
    kept = phases["save"].get("kept", {})
    if kept:
        for case, n in LOAD_CASES:
            print(f"[driver] restore phase {case} on {n} rank(s)", file=sys.stderr, flush=True)
            phases[case] = launch(n, ["--worker", "load", "--case", case, "--saved",
                                      json.dumps(kept), *common], timeout)
    # The disk of a shared VM drifts: measure it once more after the phases and quote the
    # median over all dd runs (each list is printed).
    after = disk_baselines(src, dd_file, total, 1, "after")
    for k in ("write", "read", "zero_write", "par_write", "par_read"):
        disk[k + "_after"] = after[k]
    disk["cold"] &= after["cold"]
    disk["write_during"] = phases["save"].get("dd", [])
    disk["read_during"] = [x for case, _ in LOAD_CASES for x in phases.get(case, {}).get("dd", [])]
    print_report(cfg, disk, phases)
    out = bench_dir / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"config": cfg, "disk": disk, "phases": phases}, indent=1))
    print(f"raw results: {out}")
    return 0


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
    p.add_argument("--keep", action="store_true", help="keep the checkpoints after the run")
    # internal: worker mode
    p.add_argument("--worker", choices=("save", "load"), help=argparse.SUPPRESS)
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--saved", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dd-src", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dd-file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return worker_main(args) if args.worker else driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
