"""CPU cost of the array fingerprint: NumPy against the C extension, in one run.

    .venv/bin/python bench/fingerprint_speed.py [--mib 64] [--cols 4096] [--repeat 5]

Each case fingerprints a ``--mib`` MiB array of random bits (rows of ``--cols`` elements of
16, 32 and 64 bits, and one 1-d line of a quarter of the size) with every backend; buffers are
allocated and faulted in once and reused. One untimed warm-up call per case and backend, then
``--repeat`` rounds that run every backend once each (so drift hits them alike). It prints
median CPU seconds per GiB of the calling thread (``time.thread_time``), the spread
(min-max), and the ratio numpy / backend.

Then two threads, each with its own buffer, fingerprint at once: CPU s/GiB of the process
over both buffers, how many cores were busy (process CPU s / wall s: up to 2.0 when the GIL is
released, at most 1.0 when it serialises the threads), and the speed-up of the wall time over
one thread doing both buffers one after the other (2.0 when the GIL is released and 2 cores
are free; the machine's other users lower both). Last, a check that the C extension releases
the GIL (this thread keeps running Python during one long call on another thread). Exits non-zero if any backend's fingerprint differs from NumPy's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import numpy as np

from tierpoint.kernels import fingerprint as fp

GIB = 1 << 30


def random_array(nbytes: int, dtype, cols: int | None, seed: int) -> np.ndarray:
    words = np.random.default_rng(seed).integers(0, 2**63, size=nbytes // 8, dtype=np.uint64)
    a = words.view(dtype)
    return a if cols is None else a.reshape(-1, cols)


def timed(fn) -> tuple[float, float, int]:
    """(thread CPU s, wall s, result) of one call."""
    c0, w0 = time.thread_time(), time.perf_counter()
    result = fn()
    return time.thread_time() - c0, time.perf_counter() - w0, result


def single(cases, backends, repeat: int) -> bool:
    ok = True
    print(f"{'case':<22}" + "".join(f"{b:>26}" for b in backends) + "   numpy / best")
    for name, a in cases:
        want = fp.fingerprint_box(a, (0,) * a.ndim, backend="numpy")
        for b in backends:  # warm-up, and every backend must agree
            if fp.fingerprint_box(a, (0,) * a.ndim, backend=b) != want:
                print(f"FAIL: {b} differs from numpy on {name}")
                ok = False
        runs = {b: [] for b in backends}
        for _ in range(repeat):
            for b in backends:
                cpu, _, _ = timed(lambda: fp.fingerprint_box(a, (0,) * a.ndim, backend=b))
                runs[b].append(cpu * GIB / a.nbytes)
        med = {b: statistics.median(r) for b, r in runs.items()}
        best = min((b for b in backends if b != "numpy"), key=med.get, default="numpy")
        cells = "".join(f"{med[b]:>9.3f} ({min(runs[b]):.3f}-{max(runs[b]):.3f})"
                        .rjust(26) for b in backends)
        print(f"{name:<22}{cells}   {med['numpy'] / med[best]:.1f}x ({best})")
    return ok


def parallel(arrays, backends, repeat: int) -> None:
    """Two threads, one buffer each, against one thread doing both buffers in turn."""
    nbytes = sum(a.nbytes for a in arrays)
    print(f"\ntwo threads at once, {len(arrays)} x {arrays[0].nbytes >> 20} MiB "
          f"{arrays[0].dtype} rows:")
    for b in backends:
        serial_wall, par_wall, par_cpu, busy = [], [], [], []
        for _ in range(repeat):
            w0 = time.perf_counter()
            for a in arrays:
                fp.fingerprint_box(a, (0, 0), backend=b)
            serial_wall.append(time.perf_counter() - w0)
            threads = [threading.Thread(target=fp.fingerprint_box, args=(a, (0, 0), b))
                       for a in arrays]
            c0, w0 = time.process_time(), time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            par_wall.append(time.perf_counter() - w0)
            par_cpu.append((time.process_time() - c0) * GIB / nbytes)
            busy.append((time.process_time() - c0) / par_wall[-1])
        speedup = [s / p for s, p in zip(serial_wall, par_wall)]
        print(f"  {b:<18} CPU {statistics.median(par_cpu):.3f} s/GiB, cores busy (CPU s / wall s) "
              f"{statistics.median(busy):.2f} ({min(busy):.2f}-{max(busy):.2f}), wall speed-up "
              f"over one thread {statistics.median(speedup):.2f}x "
              f"({min(speedup):.2f}-{max(speedup):.2f})")


def gil_check(backend: str) -> bool:
    """One long fingerprint on a thread (a 1.5 GiB view of one 8 KiB row: no memory traffic)
    while this thread counts loop turns: with the GIL held for the call it counts none."""
    from numpy.lib.stride_tricks import as_strided

    row = random_array(8192, np.uint16, None, 9)
    view = as_strided(row, shape=(196_608, 4096), strides=(0, 2))
    span, done = [0.0, 0.0], threading.Event()

    def work():
        span[0] = time.perf_counter()
        fp.fingerprint_box(view, (0, 0), backend=backend)
        span[1] = time.perf_counter()
        done.set()

    stamps = []
    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        stamps.append(time.perf_counter())
    t.join()
    turns = sum(span[0] <= s <= span[1] for s in stamps)
    print(f"  GIL: during one {1e3 * (span[1] - span[0]):.0f} ms {backend} call on another "
          f"thread this thread ran {turns} loop turns ({'released' if turns else 'HELD'})")
    return turns > 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    nbytes = args.mib << 20
    backends = list(fp.BACKENDS)
    print(f"backends here: {backends} (default {fp.DEFAULT_BACKEND}); "
          f"{args.mib} MiB arrays, {args.repeat} rounds, CPU s/GiB median (min-max)")
    if len(backends) == 1:
        print("note: the C extension is not built (python setup.py build_ext --inplace)")
    cases = [(f"uint16 (bf16) x{args.cols}", random_array(nbytes, np.uint16, args.cols, 1)),
             (f"uint32 (f32) x{args.cols}", random_array(nbytes, np.uint32, args.cols, 2)),
             (f"uint64 x{args.cols}", random_array(nbytes, np.uint64, args.cols, 3)),
             ("uint16 1-d, 1/4 size", random_array(nbytes // 4, np.uint16, None, 4))]
    ok = single(cases, backends, args.repeat)
    pair = [random_array(nbytes, np.uint16, args.cols, 5 + i) for i in range(2)]
    parallel(pair, ["numpy", fp.DEFAULT_BACKEND] if len(backends) > 1 else backends,
             args.repeat)
    if len(backends) > 1 and not gil_check(fp.DEFAULT_BACKEND):
        print("FAIL: the C extension held the GIL")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
