"""The roofline baselines of a benchmark run: the disk with as many streams as the code under
test uses (dd, and fio when it is installed), and the page cache dropped before reads.

A save by R ranks with T writer threads each keeps up to R x T writes in flight, and a
single dd stream is not what such a save competes with (a virtual disk serves several
queues faster than one). So each baseline is measured at every stream count the run's
libraries use, and a run reports its results against the *best* of them (``best``).
Every figure includes the fsync (dd ``conv=fdatasync``, fio ``end_fsync=1``): dd's is bytes /
wall seconds of the dd processes, fio's is bytes / fio's own runtime of the job group (which
excludes fio's start-up, ~0.7 s here). GB = 1e9 bytes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20
_DD_RE = re.compile(r"^(\d+) bytes .* copied, ([0-9.]+) s", re.M)
_C_ENV = dict(os.environ, LC_ALL="C", LANG="C")


def try_drop_caches() -> bool:
    """sync, then drop the page cache (root only); False when not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def run_dd(*ddargs: str) -> tuple[int, float]:
    """(bytes, seconds) dd reports for one run; raises with dd's message when it fails."""
    p = subprocess.run(["dd", *ddargs], capture_output=True, text=True, env=_C_ENV)
    if p.returncode != 0:
        raise RuntimeError(f"dd {' '.join(ddargs)} failed: {p.stderr.strip()}")
    m = _DD_RE.search(p.stderr)
    if not m:
        raise RuntimeError(f"cannot parse dd output: {p.stderr!r}")
    return int(m.group(1)), float(m.group(2))


def run_dd_parallel(arglists: list[list[str]]) -> float:
    """Run several dd at once; wall seconds from the first start to the last exit."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["dd", *a], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env=_C_ENV) for a in arglists]
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


def _cuts(nbytes: int, streams: int) -> list[int]:
    """Stream boundaries, multiples of 1 MiB (the last stream takes the remainder)."""
    per = max(MIB, nbytes // streams // MIB * MIB)
    return [min(nbytes, i * per) for i in range(streams)] + [nbytes]


def dd_write(src: Path, bench_dir: Path, nbytes: int, streams: int) -> float:
    """B/s of ``streams`` concurrent dd writers, each a slice of ``src`` into its own new
    file under ``bench_dir``, each ending in fdatasync. The files stay for ``dd_read``."""
    cuts = _cuts(nbytes, streams)
    files = [bench_dir / f"dd-{streams}-{i}.bin" for i in range(streams)]
    for f in files:
        f.unlink(missing_ok=True)
    try_drop_caches()
    secs = run_dd_parallel([
        [f"if={src}", f"of={f}", "bs=16M", "conv=fdatasync", "iflag=skip_bytes,count_bytes",
         f"skip={cuts[i]}", f"count={cuts[i + 1] - cuts[i]}"] for i, f in enumerate(files)])
    return nbytes / secs


def dd_read(bench_dir: Path, nbytes: int, streams: int) -> tuple[float, bool]:
    """(B/s, cold) of ``streams`` concurrent dd readers of ``dd_write``'s files, after the
    page cache is dropped; the files are removed afterwards."""
    files = [bench_dir / f"dd-{streams}-{i}.bin" for i in range(streams)]
    cold = try_drop_caches()
    try:
        secs = run_dd_parallel([[f"if={f}", "of=/dev/null", "bs=16M"] for f in files])
    finally:
        for f in files:
            f.unlink(missing_ok=True)
    return nbytes / secs, cold


def fio_path() -> str | None:
    return shutil.which("fio")


FIO_BLOCK = 16 * MIB


def _fio(bench_dir: Path, rw: str, nbytes: int, streams: int) -> float:
    # fio moves whole blocks only: each job's size is a multiple of the block
    per = max(FIO_BLOCK, nbytes // streams // FIO_BLOCK * FIO_BLOCK)
    cmd = [fio_path(), "--name=tpbench", f"--directory={bench_dir}", f"--rw={rw}",
           f"--bs={FIO_BLOCK}", f"--size={per}", f"--numjobs={streams}", "--ioengine=psync", "--group_reporting",
           "--output-format=json"]
    if rw == "write":
        cmd += ["--end_fsync=1", "--fallocate=none"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_C_ENV)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    report = json.loads(p.stdout[p.stdout.index("{"):])  # fio may print notes first
    group = report["jobs"][0][rw]
    done, runtime_ms = group["io_bytes"], group["runtime"]
    if done < per * streams or runtime_ms <= 0:
        raise RuntimeError(f"fio {rw} moved {done} bytes in {runtime_ms} ms, expected "
                           f"{per * streams} bytes")
    # fio's own runtime of the group: the end_fsync is in it (measured: 1.86 s with it, 0.28
    # s without, for 512 MiB), its start-up (~0.7 s here, a third of a 1 GiB run) is not.
    return done / (runtime_ms / 1000)


def fio_write(bench_dir: Path, nbytes: int, streams: int) -> float:
    """B/s of one fio job of ``streams`` sequential writers (psync, 16 MiB blocks, fsync at
    the end); the files stay for ``fio_read``."""
    try_drop_caches()
    return _fio(bench_dir, "write", nbytes, streams)


def fio_read(bench_dir: Path, nbytes: int, streams: int) -> tuple[float, bool]:
    """(B/s, cold) of ``streams`` fio sequential readers of ``fio_write``'s files."""
    cold = try_drop_caches()
    try:
        return _fio(bench_dir, "read", nbytes, streams), cold
    finally:
        for f in bench_dir.glob("tpbench.*"):
            f.unlink(missing_ok=True)


def measure_round(src: Path, bench_dir: Path, nbytes: int, streams: list[int],
                  samples: dict, tag: str = "") -> bool:
    """One sample of every baseline (dd at each stream count, then fio at each when it is
    installed) appended to ``samples`` = {"write": {label: [B/s]}, "read": {...}}.
    Returns whether every read was cold. A failing tool raises: a baseline that did not run
    must not leave a run reporting against a weaker one unnoticed."""
    cold = True
    tools = [("dd", dd_write, dd_read)]
    if fio_path():
        tools.append(("fio", lambda s, d, n, k: fio_write(d, n, k), fio_read))
    for name, write, read in tools:
        for k in streams:
            label = f"{name} x{k}"
            w = write(src, bench_dir, nbytes, k)
            r, c = read(bench_dir, nbytes, k)
            cold &= c
            samples.setdefault("write", {}).setdefault(label, []).append(w)
            samples.setdefault("read", {}).setdefault(label, []).append(r)
            print(f"[disk{tag}] {label}: write {w / 1e9:.3f} GB/s, read {r / 1e9:.3f} GB/s",
                  file=sys.stderr, flush=True)
    return cold


def best(samples: dict, kind: str) -> tuple[str, float] | None:
    """(label, median B/s) of the baseline with the highest median for ``kind``
    ("write" or "read"); None when nothing was measured."""
    medians = {label: statistics.median(xs) for label, xs in samples.get(kind, {}).items() if xs}
    if not medians:
        return None
    label = max(medians, key=medians.get)
    return label, medians[label]
