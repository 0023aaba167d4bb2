"""Printing save_restore.py's run: the header, the disk baselines, the one table
(bench/table.py) and the details under it (per-phase stats of tierpoint's async save, the
save passes' CPU seconds per GiB, each save's CPU, read amplification, every repeat)."""
from __future__ import annotations

import os
import statistics
import time

import table
from benchstate import GB, GIB
from kernel_costs import KERNELS

LIBS = ("tierpoint", "dcp")


def _list(xs, scale=1.0, spec=".2f") -> str:
    return ", ".join(format(x / scale, spec) for x in xs)


def print_report(cfg: dict, res: dict, phases: dict, extra: list) -> None:
    total = cfg["total_bytes"]
    print()
    print("=" * 120)
    print(f"tierpoint vs DCP, one run   {time.strftime('%Y-%m-%d %H:%M:%S')}   "
          f"host {os.uname().nodename}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.1f} GiB RAM")
    print(f"state: {cfg['ntensors']} tensors, {total / GIB:.3f} GiB = {total / GB:.3f} GB, "
          f"{cfg['bf16_share'] * 100:.1f}% of bytes bfloat16; saved by 2 ranks (Shard(0)); "
          f"dir {cfg['dir']} on {cfg['device']} ({cfg['fstype']})")
    la = cfg.get("loadavg_before", "?")
    busy = la != "?" and float(la.split()[0]) > 0.5 * (os.cpu_count() or 1)
    print(f"repeats: {cfg['repeats']} after a warm-up, library order alternating; medians "
          f"(min-max); GB = 1e9 bytes; load average at start {la}"
          + ("  -- other work on this machine: expect noisy numbers" if busy else ""))
    if not cfg.get("cold", True):
        print("WARNING: drop_caches was not allowed (not root?): reads were WARM")
    print()
    samples = res["disk"]["samples"]
    print(f"disk baselines (same file system, {total / GIB:.2f} GiB per run, fsync included; "
          f"dd: wall seconds of the N processes; fio: its own runtime of the N jobs"
          f"{'' if cfg.get('fio') else ' -- fio is not installed'}):")
    for kind, what in (("write", "write, fdatasync"), ("read", "cold read")):
        for label, xs in samples.get(kind, {}).items():
            print(f"  {what:<17} {label:<7} median {statistics.median(xs) / GB:.3f} GB/s  "
                  f"[{_list(xs, GB, '.3f')}]")
        best = res["disk"].get(kind)
        if best:
            print(f"  -> best {kind}: {best[0]} {best[1] / GB:.3f} GB/s (the %best column's "
                  "reference)")
    print()
    rows = table.run_rows(res) + extra + table.baseline_rows(res)
    print(table.render(rows))
    passed, failed, unknown = table.verdicts(rows)
    print(f"\ntargets: {passed} PASS, {failed} FAIL" + (f", {unknown} n/a" if unknown else ""))
    print("DCP/tp = DCP seconds / tierpoint seconds (>1: tierpoint faster). %best = tierpoint "
          "GB/s against the best disk baseline of this run (write for saves, cold read for "
          "restores). read amp = bytes read / bytes the ranks need, summed over ranks: the "
          "larger of /proc/self/io read_bytes (from the device) and rchar (through read "
          "calls; on one node the ranks share the page cache, so read_bytes alone hides a "
          "chunk read by several ranks).")
    print_details(res, phases)
    print("=" * 120)


def print_details(res: dict, phases: dict) -> None:
    save = phases.get("save", {})
    gib = res["bytes"] / GIB
    stats = save.get("tp_async_stats") or []
    if stats:
        keys = list(stats[0])
        print("\ntierpoint async save, per phase (engine's handle.stats, seconds, max over "
              "ranks, median of the timed repeats):")
        print("  " + ", ".join(f"{k} {statistics.median(s.get(k, 0.0) for s in stats):.3f}"
                               for k in keys))
    costs = save.get("kernel_costs")
    if costs:
        print(f"\nthe save's passes over memory, one thread on rank 0's buffers "
              f"({costs['bytes'] / GIB:.2f} GiB in chunks of <= 32 MiB, median of "
              f"{costs['repeats']}): CPU s/GiB (wall s/GiB)")
        print("  " + ", ".join(f"{k} {costs[k]['cpu_s_per_gib']:.3f} "
                               f"({costs[k]['wall_s_per_gib']:.3f})" for k in KERNELS))
        write = "direct write" if "direct write" in costs else "write"
        per_chunk = sum(costs[k]["cpu_s_per_gib"] for k in ("crc32c", "hash", "fingerprint",
                                                             write))
        print(f"  a writer thread's CPU per GiB (crc32c + hash + fingerprint + {write}): "
              f"{per_chunk:.3f} s; an async save adds the copy: "
              f"{per_chunk + costs['copy']['cpu_s_per_gib']:.3f} s")
    results = save.get("results", {})
    returns = results.get("tierpoint", {}).get("durable returns")
    if returns:
        print(f"\ntierpoint's blocking save() returned after {statistics.median(returns):.2f} s "
              f"(median; {_list(returns)}), its commit came after "
              f"{statistics.median(results['tierpoint']['durable']):.2f} s: the rest is "
              "pruning the local ring before it returns (not in the durable row)")
    cpu = []
    for lib in LIBS:
        for kind in ("durable", "async"):
            xs = results.get(lib, {}).get(f"cpu {kind}")
            if xs:
                cpu.append(f"{lib} {kind} {statistics.median(xs) / gib:.2f}")
    if cpu:
        print("\nCPU seconds per GiB of each save (process CPU of both ranks, every thread): "
              + ", ".join(cpu))
    print("\nevery timed repeat (seconds; read amplification device / read calls):")
    for lib in ("-", *LIBS):
        for measure, xs in results.get(lib, {}).items():
            if not measure.startswith("cpu"):
                print(f"  save  {lib if lib != '-' else '':<9} {measure:<13} {_list(xs)}")
    for case in ("same", "2to1", "2to4rows", "2to4cols"):
        ph = phases.get(case)
        for lib in LIBS:
            if ph and lib in ph:
                print(f"  {case:<9} {lib:<9} {_list(ph[lib]['s'])}   amp "
                      f"{_list(ph[lib]['read_bytes'])} / {_list(ph[lib]['rchar'])}")
