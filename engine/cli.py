"""The ``tierpoint`` command line.

    tierpoint ls ROOT [--persistent POOL...]   checkpoints per step and the tiers holding them
    tierpoint drain --local ROOT --persistent POOL... [--run R] [--step S] [--rate B/s]
                                      copy what a job left on this node's SSD to the pools
    tierpoint gc --local ROOT [--persistent POOL...] [--keep-local K] [--keep-persistent M]
                                      apply retention; remove interrupted drains
    tierpoint verify CKPT [--json]    recompute chunks, digest, fingerprints, metadata, marker
    tierpoint verify --all ROOT [--persistent POOL...] [--run R]
                                      every committed checkpoint of the runs, on every tier
    tierpoint lineage CKPT [--root ROOT...] [--json]
                                      the chain of ancestors across runs, with digests
    tierpoint audit verify LOG [--key FILE] [--json]
                                      check a run's audit log (a file, or a run directory)
    tierpoint audit show LOG [--json] the records of a run's audit log
    tierpoint info CKPT [--json]      arrays, shapes, dtypes, save layout, lineage, metadata
    tierpoint diff A B [--json]       per array: identical (by fingerprint) or how different
    tierpoint demo [--dir DIR]        4-rank training with checkpoints, restored on 3 ranks
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import layout
from .errors import CheckpointError


def _dir_bytes(path: str) -> int:
    total = 0
    for base, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(base, f))
            except OSError:
                pass
    return total


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def list_checkpoints(root: str, run: str | None = None) -> list[dict]:
    """One record per step directory under ``root`` (all runs, or ``run``)."""
    rows = []
    runs = [layout.escape_component(run)] if run else layout.list_runs(root)
    for r in runs:
        directory = os.path.join(root, r)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue
        for name in names:
            step = layout.parse_step_dir_name(name)
            if step is None:
                continue
            path = os.path.join(directory, name)
            row = {"run": r, "step": step, "path": path, "state": "partial"}
            if layout.is_committed(path):
                try:
                    m = layout.load_manifest(path)
                    row.update(state="committed", time=m["time"], world_size=m["world_size"],
                               arrays=len(m["arrays"]), values=len(m["values"]),
                               unix_time=m.get("unix_time"), digest=m.get("digest", ""))
                except CheckpointError as e:
                    row.update(state="damaged", error=str(e))
            row["bytes"] = _dir_bytes(path)
            rows.append(row)
    return rows


def _age(unix_time) -> str:
    if not unix_time:
        return "-"
    secs = max(0, time.time() - unix_time)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.0f}{unit}"
    return f"{secs:.0f}s"


def _verified(roots: list[str]) -> dict:
    """(run, step) -> "yes"/"FAILED" from the newest 'verified' record of the runs' logs."""
    from .audit import AUDIT_FILE, read_log
    out: dict = {}
    for root in roots:
        for run in layout.list_runs(root):
            path = os.path.join(root, run, AUDIT_FILE)
            try:
                records = read_log(path)
            except (OSError, ValueError):
                continue
            for r in records:
                if r.get("event") == "verified":
                    ok = (r.get("detail") or {}).get("ok")
                    out[(run, r.get("step"))] = "yes" if ok else "FAILED"
    return out


def cmd_ls(args) -> int:
    rows = list_checkpoints(args.root, args.run)
    capacity = {}
    for pool_rows in ([list_checkpoints(args.persistent[0], args.run)] if args.persistent else []):
        capacity = {(r["run"], r["step"]): r for r in pool_rows}
    by_key = {(r["run"], r["step"]): r for r in rows}
    for key, r in capacity.items():
        by_key.setdefault(key, dict(r, bytes=0, state="-"))
    verified = _verified([args.root] + args.persistent[:1])
    if args.json:
        print(json.dumps([dict(r, capacity=capacity.get(k, {}).get("state"),
                               verified=verified.get(k))
                          for k, r in sorted(by_key.items())], indent=1))
        return 0
    if not by_key:
        print(f"no checkpoints under {args.root}")
        return 0
    print(f"{'run':<16} {'step':>8}  {'tiers':<15} {'saved (UTC)':<20} {'age':>5} {'ranks':>5} "
          f"{'arrays':>6} {'local size':>10} {'verified':>8}")
    partial = 0
    for key in sorted(by_key):
        r = by_key[key]
        tiers = [t for t, ok in (("local", r["state"] == "committed"),
                                 ("capacity", capacity.get(key, {}).get("state") == "committed"))
                 if ok]
        label = ",".join(tiers) or r["state"]
        partial += r["state"] == "partial"
        print(f"{r['run']:<16} {r['step']:>8}  {label:<15} {r.get('time', '-'):<20} "
              f"{_age(r.get('unix_time')):>5} {r.get('world_size', '-'):>5} "
              f"{r.get('arrays', '-'):>6} {_human(r['bytes']):>10} {verified.get(key, '-'):>8}")
        if r["state"] == "damaged":
            print(f"    {r['error']}")
    if partial:
        print(f"({partial} partial step directories: interrupted saves, not checkpoints)")
    return 0


def _open(local, pools, run, policy=None):
    from .api import Checkpointer
    from .comm import SingleComm
    return Checkpointer(local, persistent=pools or None, run=run, policy=policy,
                        comm=SingleComm())


def cmd_drain(args) -> int:
    """Single process: drain each run's newest committed local step (or --step) that the
    capacity tier does not hold yet."""
    from tqdm import tqdm
    runs = [args.run] if args.run else layout.list_runs(args.local)
    failed = 0
    for run in runs:
        with _open(args.local, args.persistent, run) as ck:
            local = ck.steps()
            steps = [args.step] if args.step is not None else local[-1:]
            for step in steps:
                if step in ck.capacity_steps():
                    print(f"{run} step {step}: already on the capacity tier")
                    continue
                manifest = layout.load_manifest(ck.step_dir(step))
                total = sum(c["nbytes"] for a in manifest["arrays"].values()
                            for c in a["chunks"].values())
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"{run} step {step}",
                          disable=not sys.stderr.isatty()) as bar:
                    try:
                        done = ck.drain(step, rate=args.rate, progress=bar.update)
                    except CheckpointError as e:
                        print(f"tierpoint: error: {e}", file=sys.stderr)
                        failed += 1
                        continue
                print(f"drained {run} step {step}: {done['bytes']} bytes in "
                      f"{done['seconds']:.2f} s into {done['parts']} part(s)")
            ck.pools = []  # nothing more to drain at close
    return 1 if failed else 0


def cmd_gc(args) -> int:
    """Apply retention and remove what interrupted saves, drains and deletions left.
    Run it when no job is writing the run (a save in progress looks interrupted)."""
    from .drain import remove_uncommitted, uncommitted_capacity_steps
    from .options import Policy
    policy = Policy(keep_local=args.keep_local, keep_persistent=args.keep_persistent)
    runs = [args.run] if args.run else layout.list_runs(args.local)
    for run in runs:
        ck = _open(args.local, args.persistent, run, policy)
        for step, why in ck._apply_local_retention(leftovers=True):
            print(f"{run} step {step}: removed from the local tier ({why})")
        if args.persistent:
            pools = ck.pools
            for step in uncommitted_capacity_steps(pools, run):
                remove_uncommitted(pools, run, step)
                print(f"{run} step {step}: removed an interrupted drain or deletion")
            for step in ck._apply_capacity_retention():
                ck._audit_event("deleted", step, detail={"tier": "capacity",
                                                         "why": "retention (tierpoint gc)"})
                print(f"{run} step {step}: removed from the capacity tier")
        print(f"{run}: local {ck.steps()}, capacity {ck.capacity_steps()}")
        ck.pools = []
        ck.close()
    return 0


def _verify_one(path: str, as_json: bool):
    from tqdm import tqdm

    from .verify import total_bytes, verify_checkpoint
    with tqdm(total=total_bytes(path), unit="B", unit_scale=True, desc=f"verify {path}",
              disable=as_json or not sys.stderr.isatty(), file=sys.stderr) as bar:
        return verify_checkpoint(path, progress=bar.update)


def _print_report(report) -> None:
    state = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    print(f"{report.path}: {state}  [{report.tier} tier, run {report.run!r} step "
          f"{report.step}, {report.chunks_checked} chunks / {_human(report.bytes_checked)} "
          f"checked" + (f", {report.chunks_elsewhere} on other nodes' tiers"
                        if report.chunks_elsewhere else "") + f", digest {report.digest}]")
    for p in report.problems:
        where = ", ".join(f"{k} {p[k]}" for k in ("array", "chunk") if p[k])
        print(f"  {where + ': ' if where else ''}{p['problem']}" +
              (f"\n    file: {p['file']}" if p["file"] else ""))


def _log_verified(report) -> None:
    """Record the outcome in the audit log next to the checkpoint, if that run has one."""
    from .audit import AUDIT_FILE, AuditLog, read_key
    from .lineage import user_name
    run_dir = os.path.dirname(os.path.abspath(report.path))
    if not os.path.isfile(os.path.join(run_dir, AUDIT_FILE)):
        return
    try:
        log = AuditLog(run_dir, read_key(os.environ.get("TIERPOINT_AUDIT_KEY_FILE")),
                       user_name())
        log.append("verified", run=report.run, step=report.step, digest=report.digest,
                   detail={"ok": report.ok, "problems": len(report.problems),
                           "tier": report.tier})
    except OSError as e:
        print(f"tierpoint: could not append to the audit log in {run_dir}: {e}",
              file=sys.stderr)


def cmd_verify(args) -> int:
    if args.all:
        roots = [args.target] + list(args.persistent)
        paths = [row["path"] for root in roots[:1] + roots[1:2]
                 for row in list_checkpoints(root, args.run) if row["state"] != "partial"]
    else:
        if args.persistent:
            raise CheckpointError("verify: --persistent goes with --all ROOT")
        paths = [args.target]
    reports = [_verify_one(p, args.json) for p in paths]
    for r in reports:
        _log_verified(r)
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=1))
    else:
        for r in reports:
            _print_report(r)
        if not reports:
            print(f"no committed checkpoints under {args.target}")
    return 0 if all(r.ok for r in reports) else 1


def cmd_lineage(args) -> int:
    from .lineage import chain
    entries = chain(args.target, args.root)
    if args.json:
        print(json.dumps(entries, indent=1))
    else:
        for i, e in enumerate(entries):
            mark = "" if i == 0 else "  <- "
            state = ("" if i == 0 else " (digest matches)" if e["digest_ok"] else
                     " (NOT FOUND)" if e["path"] is None else " (DIGEST DIFFERS)")
            code = e.get("code") or {}
            commit = (f" code {code['git_commit'][:12]}{'+dirty' if code.get('git_dirty') else ''}"
                      if code.get("git_commit") else "")
            print(f"{mark}run {e['run']!r} step {e['step']} {e['digest']} "
                  f"{e['time'] or ''}{commit}{state}\n      {e['path'] or '-'}")
    bad = [e for e in entries[1:] if not e["digest_ok"]]
    return 1 if bad else 0


def _log_path(target: str) -> str:
    from .audit import AUDIT_FILE
    return os.path.join(target, AUDIT_FILE) if os.path.isdir(target) else target


def cmd_audit(args) -> int:
    from .audit import read_key, read_log, verify_log
    path = _log_path(args.log)
    if args.action == "show":
        records = read_log(path)
        if args.json:
            print(json.dumps(records, indent=1))
        for r in [] if args.json else records:
            print(f"{r['seq']:>5} {r['time']} {r['event']:<9} step {r['step']!s:>8} "
                  f"{r['user']}@{r['host']} {r['digest'] or ''}")
        return 0
    count, problems = verify_log(path, read_key(args.key or
                                                os.environ.get("TIERPOINT_AUDIT_KEY_FILE")))
    if args.json:
        print(json.dumps({"log": path, "records": count, "ok": not problems,
                          "problems": problems}, indent=1))
    else:
        print(f"{path}: {count} records, " + ("intact" if not problems else
                                             f"{len(problems)} problems"))
        for p in problems:
            print(f"  {p}")
    return 1 if problems else 0


def cmd_info(args) -> int:
    from .inspect import info
    d = info(args.target)
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    lin = d["lineage"]
    parent = lin.get("parent")
    code = lin.get("code", {})
    print(f"{d['path']}\n  run {d['run']!r} step {d['step']}, saved {d['time']} by "
          f"{lin.get('user', '?')} on {d['world_size']} ranks / nodes {', '.join(d['nodes'])}"
          f" ({d['tier']} tier)\n  digest {d['digest']}\n  {len(d['arrays'])} arrays, "
          f"{_human(d['bytes'])}; versions "
          + ", ".join(f"{k} {v}" for k, v in d["versions"].items()))
    if code.get("git_commit"):
        print(f"  code {code['git_commit']}{' (dirty)' if code.get('git_dirty') else ''} in "
              f"{code.get('git_root')}")
    print("  parent: " + (f"run {parent['run']!r} step {parent['step']} {parent['digest']}"
                           if parent else "none (not restored from a checkpoint)"))
    if d["metadata"]:
        print(f"  metadata: {json.dumps(d['metadata'])}")
    print(f"  {'array':<40} {'dtype':<9} {'shape':<18} {'chunks':>6} {'shards':>6} fingerprint")
    for name, a in d["arrays"].items():
        print(f"  {name:<40} {a['dtype']:<9} {str(tuple(a['shape'])):<18} {a['chunks']:>6} "
              f"{a['shards']:>6} {a['fingerprint']}")
    for k, v in d["values"].items():
        print(f"  {k} = {json.dumps(v)}")
    return 0


def cmd_diff(args) -> int:
    from .inspect import diff
    d = diff(args.a, args.b)
    if args.json:
        print(json.dumps(d, indent=1))
        return 0 if not _differs(d) else 1
    s = d["summary"]
    print(f"A: run {d['a']['run']!r} step {d['a']['step']}  {d['a']['path']}\n"
          f"B: run {d['b']['run']!r} step {d['b']['step']}  {d['b']['path']}")
    print(f"summary: {s['identical']} identical (by fingerprint), {s['equal_values']} equal "
          f"values, {s['different']} different, {s['shape_differs']} of another shape, "
          f"{s['only_in_a']} only in A, {s['only_in_b']} only in B, "
          f"{s['values_different']} JSON values different")
    for name, r in d["arrays"].items():
        if r["status"] in ("different", "shape differs"):
            extra = (f"max |A-B| {r['max_abs_diff']:.6g}, relative L2 change "
                     f"{r['rel_l2_change']:.3g}, {r['elements_differing']} elements"
                     if "max_abs_diff" in r else f"shapes {r['shape'][0]} vs {r['shape'][1]}")
            print(f"  {name}: {r['status']}: {extra}")
    for name in d["only_in_a"]:
        print(f"  {name}: only in A")
    for name in d["only_in_b"]:
        print(f"  {name}: only in B")
    for k, v in d["values"].items():
        if v != "same":
            print(f"  value {k}: {json.dumps(v['a'])} vs {json.dumps(v['b'])}")
    return 0 if not _differs(d) else 1


def _differs(d: dict) -> bool:
    s = d["summary"]
    return any(s[k] for k in ("different", "shape_differs", "only_in_a", "only_in_b",
                              "values_different"))


def cmd_demo(args, rest) -> int:
    from .demo import main_demo
    return main_demo(rest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tierpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ls", help="list checkpoints under a tier root")
    p.add_argument("root")
    p.add_argument("--run", help="only this run")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--persistent", nargs="+", default=[], help="capacity pools (first: heads)")
    p = sub.add_parser("drain", help="drain a node's local tier into the capacity pools")
    p.add_argument("--local", required=True)
    p.add_argument("--persistent", nargs="+", required=True)
    p.add_argument("--run")
    p.add_argument("--step", type=int)
    p.add_argument("--rate", type=float, help="bandwidth cap, bytes/s")
    p = sub.add_parser("gc", help="apply retention to the tiers")
    p.add_argument("--local", required=True)
    p.add_argument("--persistent", nargs="+", default=[])
    p.add_argument("--run")
    p.add_argument("--keep-local", type=int, default=2)
    p.add_argument("--keep-persistent", type=int)
    p = sub.add_parser("verify", help="verify checkpoints end to end (non-zero exit on damage)")
    p.add_argument("target", metavar="CKPT", help="a step directory; with --all, a tier root")
    p.add_argument("--all", action="store_true",
                   help="every committed checkpoint under the root and the pools")
    p.add_argument("--persistent", nargs="+", default=[], help="capacity pools (first: heads)")
    p.add_argument("--run", help="with --all: only this run")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("lineage", help="a checkpoint's ancestors across runs")
    p.add_argument("target", metavar="CKPT", help="a committed step directory")
    p.add_argument("--root", nargs="+", default=[],
                   help="tier roots to look for ancestors no longer where they were read")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("audit", help="a run's audit log")
    p.add_argument("action", choices=("verify", "show"))
    p.add_argument("log", help="audit.jsonl, or the run directory that holds it")
    p.add_argument("--key", help="HMAC key file (default: TIERPOINT_AUDIT_KEY_FILE)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("info", help="what a checkpoint holds")
    p.add_argument("target", metavar="CKPT")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("diff", help="compare two checkpoints array by array (exit 1: differ)")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("demo", help="train on 4 MPI ranks with checkpoints, restore on 3",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command == "demo":
            return cmd_demo(args, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return {"ls": cmd_ls, "drain": cmd_drain, "gc": cmd_gc,
                "verify": cmd_verify, "lineage": cmd_lineage,
                "audit": cmd_audit, "info": cmd_info, "diff": cmd_diff}[args.command](args)
    except CheckpointError as e:
        print(f"tierpoint: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
