"""``tierpoint ls``, ``drain`` and ``gc``: the commands that list and change the tiers."""
from __future__ import annotations

import calendar
import json
import os
import sys
import time

from ..format import layout
from .common import (EXIT_OK, EXIT_USAGE, UsageError, human, need_pools, need_root,
                         one_line, runs_of)
from ..errors import CheckpointError
from ..tiers import registry
from ..tiers.local import LocalTier


def _dir_bytes(path: str) -> int:
    total = 0
    for base, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(base, f))
            except OSError:
                pass
    return total


def _age(unix_time) -> str:
    if not unix_time:
        return "-"
    secs = max(0, time.time() - unix_time)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.0f}{unit}"
    return f"{secs:.0f}s"


def list_checkpoints(root: str, run: str | None = None) -> list[dict]:
    """One record per step directory under ``root`` (all runs, or ``run``), each with the
    partner replicas of that step held there (``replicas``: the node each replicates, its
    saved domain and directory; a step held only through replicas gets a row of state
    "replica"; uncommitted replicas are counted in ``partial_replicas`` of the first row of
    their run, never listed)."""
    rows = []
    runs = [run] if run else layout.run_names(layout.list_runs(root))
    for r in runs:
        directory = layout.run_dir(root, r)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue
        replicas, partial = _replicas_in(directory, names)
        own = []
        for name in names:
            step = layout.parse_step_dir_name(name)
            if step is None:
                continue
            path = os.path.join(directory, name)
            row = {"run": r, "step": step, "path": path, "state": "partial"}
            if layout.is_committed(path):
                try:
                    m = layout.read_header(path)
                    row.update(state="committed", time=m.time, world_size=m.world_size,
                               arrays=len(m.arrays), values=len(m.values),
                               unix_time=m.document.get("unix_time"), digest=m.digest)
                except CheckpointError as e:
                    row.update(state="damaged", error=str(e))
            row["bytes"] = _dir_bytes(path)
            row["replicas"] = replicas.pop(step, [])
            own.append(row)
        own += [{"run": r, "step": step, "path": held[0]["path"], "state": "replica",
                 "bytes": 0, "replicas": held} for step, held in replicas.items()]
        own.sort(key=lambda row: row["step"])
        if own and partial:
            own[0]["partial_replicas"] = partial
        rows += own
    return rows


def _replicas_in(directory: str, names: list[str]) -> tuple[dict, int]:
    """step -> the committed replicas among ``names`` (the node they replicate, from their
    marker; their saved domain and path), and how many replica directories are uncommitted."""
    held: dict[int, list] = {}
    partial = 0
    for name in names:
        parsed = layout.parse_replica_dir_name(name)
        if parsed is None:
            continue
        path = os.path.join(directory, name)
        marker = layout.read_commit_marker(path) if layout.is_committed(path) else None
        if marker is None:
            partial += 1
            continue
        of = marker.get("replica_of") if isinstance(marker.get("replica_of"), dict) else {}
        held.setdefault(parsed[0], []).append({"node": str(of.get("node", "?")),
                                               "domain": parsed[1], "path": path})
    return held, partial


def capacity_checkpoints(pools: list[str], run: str | None = None) -> list[dict]:
    """One record per committed step on the capacity tier ``pools`` names (POSIX pools or an
    object store's URL; all runs, or ``run``), read through the tier."""
    tier = registry.capacity_tier(pools or None)
    if tier is None:
        return []
    rows = []
    for r in ([run] if run else layout.run_names(tier.runs())):
        for step in tier.steps(r):
            row = {"run": r, "step": step, "path": tier.step_path(r, step), "bytes": 0,
                   "state": "committed"}
            try:
                m = tier.open(r, step, ranks=()).manifest
                row.update(time=m.time, world_size=m.world_size, arrays=len(m.arrays),
                           values=len(m.values), unix_time=m.document.get("unix_time"),
                           digest=m.digest)
            except CheckpointError as e:
                row.update(state="damaged", error=str(e))
            rows.append(row)
    return rows


# ---- ls -----------------------------------------------------------------------------------

def _record_time(record: dict) -> float:
    """When an audit record was written: ``unix_time``, else its UTC ``time`` (seconds)."""
    t = record.get("unix_time")
    if isinstance(t, (int, float)):
        return float(t)
    try:
        return float(calendar.timegm(time.strptime(record.get("time", ""), "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return 0.0


def _verification(record: dict) -> str:
    detail = record.get("detail") or {}
    if detail.get("damaged", not detail.get("ok")):
        return "FAILED"
    return "yes" if detail.get("complete", True) else "partial"


def _verified(roots: list[str], runs: list[str]) -> dict:
    """(run, step) -> "yes" / "FAILED" / "partial": the NEWEST 'verified' record over every
    log read. A run's log is on its capacity tier, and a local tier holds one too when verify
    ran there or the pool was missing; whichever log holds the latest record wins (within one
    log, the later record). Lines that do not parse are skipped: ls is not the log's judge,
    'tierpoint audit verify' is."""
    newest: dict = {}
    for root in roots:
        for run in runs:
            for line in _log_lines(root, run):
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(r, dict) or r.get("event") != "verified":
                    continue
                key, when = (run, r.get("step")), _record_time(r)
                if key not in newest or when >= newest[key][0]:
                    newest[key] = (when, _verification(r))
    return {key: state for key, (_, state) in newest.items()}


def _log_lines(root: str, run: str) -> list[bytes]:
    """The records' bytes of the audit log of ``run`` under a tier root (a directory's
    audit.jsonl, or the run's objects on an S3 tier); [] when there is none or it cannot be
    read."""
    from ..tiers.s3store import is_url
    from ..trust.audit import AUDIT_FILE
    if is_url(root):
        from ..trust.s3audit import S3AuditLog
        try:
            return [data for _, data in S3AuditLog(
                f"{root.rstrip('/')}/{layout.escape_component(run)}").entries()]
        except CheckpointError:
            return []
    try:
        with open(os.path.join(layout.run_dir(root, run), AUDIT_FILE), "rb") as f:
            return f.read().split(b"\n")
    except OSError:
        return []


def cmd_ls(args) -> int:
    root = need_root(args.root, "ROOT")
    pools = need_pools(args.persistent)
    runs = runs_of([root] + pools[:1], args.run)
    rows = list_checkpoints(root, args.run)
    capacity = {(r["run"], r["step"]): r for r in capacity_checkpoints(pools, args.run)}
    by_key = {(r["run"], r["step"]): r for r in rows}
    for key, r in capacity.items():
        by_key.setdefault(key, dict(r, bytes=0, state="-"))
    verified = _verified([root] + pools[:1], runs)
    if args.json:
        print(json.dumps([dict(r, capacity=capacity.get(k, {}).get("state"),
                               verified=verified.get(k))
                          for k, r in sorted(by_key.items())], indent=1))
        return EXIT_OK
    if not by_key:
        print(f"no checkpoints under {root}" + (f" for run {args.run!r}" if args.run else ""))
        return EXIT_OK
    print(f"{'run':<16} {'step':>8}  {'tiers':<15} {'saved (UTC)':<20} {'age':>5} {'ranks':>5} "
          f"{'arrays':>6} {'local size':>10} {'replica of':>10} {'verified':>8}")
    partial = partial_replicas = 0
    for key in sorted(by_key):
        r = by_key[key]
        tiers = [t for t, ok in (("local", r["state"] == "committed"),
                                 ("capacity", capacity.get(key, {}).get("state") == "committed"))
                 if ok]
        label = ",".join(tiers) or r["state"]
        partial += r["state"] == "partial"
        partial_replicas += r.get("partial_replicas", 0)
        # The nodes whose copies of the step this root holds as partner replicas.
        held = ",".join(h["node"] for h in r.get("replicas", []))
        print(f"{r['run']:<16} {r['step']:>8}  {label:<15} {r.get('time', '-'):<20} "
              f"{_age(r.get('unix_time')):>5} {r.get('world_size', '-'):>5} "
              f"{r.get('arrays', '-'):>6} {human(r['bytes']):>10} {held or '-':>10} "
              f"{verified.get(key, '-'):>8}")
        if r["state"] == "damaged":
            print(f"    {r['error']}")
    if partial:
        print(f"({partial} partial step directories: interrupted saves, not checkpoints)")
    if partial_replicas:
        print(f"({partial_replicas} partial replica directories: interrupted replications, "
              "not replicas)")
    return EXIT_OK


# ---- drain and gc -------------------------------------------------------------------------

def _open(local, pools, run, policy=None):
    from ..api import Checkpointer
    from ..runtime.comm import SingleComm
    return Checkpointer(local, persistent=pools or None, run=run, policy=policy,
                        comm=SingleComm())


def _drain_steps(ck, local_root: str, run: str, step: int | None) -> list[int]:
    """The steps of ``run`` to drain: ``step``; or every step whose drain was started and
    did not finish (killed, failed: its drain record says so), oldest first, then the newest
    committed local one."""
    local = ck.steps(replicas=False)  # a drain reads this node's own copies
    if step is None:
        if not local:
            print(f"{run}: no committed checkpoint on the local tier {local_root}; "
                  "nothing to drain")
            return []
        # Only started drains count as pending here: the trainer's drain_every is not known.
        pending, _ = ck._tiering.drain_plan(by_policy=False)
        for s in pending:
            print(f"{run} step {s}: a drain of it was started and did not finish; draining it")
        return pending + [s for s in local[-1:] if s not in pending]
    if step not in local and step not in ck.capacity_steps():
        raise UsageError(f"step {step} of run {run!r} is not committed on the local tier "
                         f"{local_root} (committed there: {local or 'none'}); pass one of "
                         "those to --step")
    return [step]


def cmd_drain(args) -> int:
    """Single process: drain each run's steps whose drain was cut short and its newest
    committed local step (or --step), those the capacity tier does not hold yet."""
    from tqdm import tqdm
    local_root = need_root(args.local, "--local")
    pools = need_pools(args.persistent)
    runs = runs_of([local_root], args.run)
    if args.step is not None and args.run is None and len(runs) > 1:
        raise UsageError(f"--step {args.step}: --local {local_root} holds several runs "
                         f"({', '.join(runs)}); say which with --run")
    if not runs:
        print(f"no checkpoints under {local_root}; nothing to drain")
    failed = 0
    for run in runs:
        with _open(local_root, pools, run) as ck:
            for step in _drain_steps(ck, local_root, run, args.step):
                if step in ck.capacity_steps():
                    print(f"{run} step {step}: already on the capacity tier")
                    continue
                manifest = LocalTier(local_root).open(run, step, ranks=()).manifest
                total = manifest.recorded_bytes()
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"{run} step {step}",
                          disable=not sys.stderr.isatty()) as bar:
                    try:
                        done = ck.drain(step, rate=args.rate, progress=bar.update)
                    except CheckpointError as e:
                        print(f"tierpoint drain: {run} step {step}: {one_line(e)}",
                              file=sys.stderr)
                        failed += 1
                        continue
                print(f"drained {run} step {step}: {done['bytes']} bytes in "
                      f"{done['seconds']:.2f} s into {done['parts']} part(s)")
            ck.close(drain_newest=False)  # nothing more to drain at close
    return EXIT_USAGE if failed else EXIT_OK


def _policy(args):
    from ..options import Policy
    if not args.persistent:
        given = [opt for opt, v in (("--keep-persistent", args.keep_persistent),
                                    ("--keep-every", args.keep_every), ("--pin", args.pin))
                 if v]
        if given:
            raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} "
                             "to the capacity tier only; add --persistent POOL...")
    return Policy(keep_local=args.keep_local, keep_persistent=args.keep_persistent,
                  keep_every=args.keep_every, pin=frozenset(args.pin or ()))


def cmd_gc(args) -> int:
    """Apply retention and remove what interrupted saves, drains and deletions left.
    Run it when no job is writing the run (a save in progress looks interrupted)."""
    local_root = need_root(args.local, "--local")
    pools = need_pools(args.persistent)
    policy = _policy(args)
    runs = (runs_of([local_root] + pools[:1], args.run) if args.run
            else layout.run_names(layout.list_runs(local_root)))
    if not runs:
        print(f"no runs under {local_root}; nothing to do")
    for run in runs:
        ck = _open(local_root, pools, run, policy)
        removed = ck._tiering.sweep_leftovers() + ck._tiering.apply_local_retention()
        for step, why in sorted(removed):
            print(f"{run} step {step}: removed from the local tier ({why})")
        if pools:
            for step in ck._tiering.capacity.sweep(run):
                print(f"{run} step {step}: removed an interrupted drain or deletion")
            for step in ck._tiering.apply_capacity_retention():
                ck._audit.event("deleted", step, detail={"tier": "capacity",
                                                         "why": "retention (tierpoint gc)"})
                print(f"{run} step {step}: removed from the capacity tier")
        print(f"{run}: local {ck.steps()}, capacity {ck.capacity_steps()}")
        ck.close(drain_newest=False)
    return EXIT_OK
