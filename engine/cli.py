"""The ``tierpoint`` command line: list, drain, clean up, verify and inspect checkpoints.

Every command either does its work or prints ONE line on stderr, ``tierpoint <command>:
<what is wrong with which path or option>; <what to do>``, and exits with a status that tells
"checked and found damage" (1) from "could not run" (2); never a traceback, unless
TIERPOINT_DEBUG is set. Paths are checked before the library is asked anything, so that a
typo is called a typo ("does not exist") and not a damaged checkpoint.

``tierpoint --help-all`` prints the reference of every command, generated from the parser
below; the README's "Command line" section is that text (tests/test_cli.py compares them).
"""
from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import sys
import textwrap
import time
import traceback

from . import layout
from .errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from .version import __version__

EXIT_OK = 0
EXIT_DAMAGED = 1  # checked, and found damage or a difference
EXIT_USAGE = 2  # could not run: bad usage, a wrong path, unreadable metadata, unknown run/step
EXIT_INCOMPLETE = 3  # verify found no damage but could not check every chunk
EXIT_PIPE = 141  # stdout closed by its reader: what a shell reports for death by SIGPIPE

DESCRIPTION = """\
List, drain, clean up, verify and inspect tierpoint checkpoints.

A tier root holds one directory per run (ROOT/RUN); a run holds its checkpoints
(ROOT/RUN/step_<8 digits>). CKPT is such a step directory, on a node-local tier or on the
capacity tier (its first pool). 'tierpoint --help-all' prints every command's options."""

EPILOG = """\
exit status:
  0    done (verify: every chunk checked, nothing damaged)
  1    checked and found damage or a difference (verify, diff, lineage, audit verify)
  2    could not run: bad usage, a missing or wrong path, unreadable metadata,
       an unknown run or step, an option out of range
  3    verify found no damage but could not check every chunk of the checkpoint in
       this copy (other nodes' chunks); --partial accepts such a check
  141  standard output was closed early (e.g. piped into head); nothing is printed

environment:
  TIERPOINT_DEBUG=1         print the Python traceback of an error (for developers)
  TIERPOINT_AUDIT_KEY_FILE  HMAC key file of the audit logs (default of audit verify --key;
                            verify signs the record it appends with it)
  TIERPOINT_NODE            this node's name (default: the hostname), for drain and gc"""


class UsageError(CheckpointError):
    """A command line that cannot run as given: a wrong path, an unknown run or step, an
    option that does not fit the others. The message says what to do."""


class CliParser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line (exit 2) instead of usage + error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message}; see '{self.prog} --help'\n")


def at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, not {text}")
        return value
    parse.minimum = minimum  # read by tests/test_cli.py: every bound gets a case below it
    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of bytes/s, not {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of bytes/s > 0, not {text}")
    return value


# ---- paths: say what a wrong path is before the library calls it something else -----------

def _has_steps(directory: str) -> bool:
    try:
        return any(layout.parse_step_dir_name(n) is not None for n in os.listdir(directory))
    except OSError:
        return False


def _is_step_dir(path: str) -> bool:
    name = os.path.basename(os.path.normpath(path))
    return (layout.parse_step_dir_name(name) is not None or
            any(os.path.lexists(os.path.join(path, f))
                for f in (layout.COMMIT_FILE, layout.MANIFEST_FILE)))


def _is_tier_root(path: str) -> bool:
    return any(_has_steps(os.path.join(path, r)) for r in layout.list_runs(path))


def _need_dir(path: str, what: str) -> str:
    if not os.path.lexists(path):
        raise UsageError(f"{what} {path} does not exist; check the path")
    if not os.path.isdir(path):
        raise UsageError(f"{what} {path} is a file, not a directory; pass the directory")
    return path


def _need_root(path: str, what: str = "tier root") -> str:
    """``path`` is a tier root (or an empty directory), not a run or step directory."""
    _need_dir(path, what)
    parent, name = os.path.split(os.path.normpath(os.path.abspath(path)))
    if _is_step_dir(path):
        root, run = os.path.split(parent)
        raise UsageError(f"{what} {path} is a checkpoint (a step directory), not a tier root; "
                         f"pass {root} (with --run {run}), or inspect it with 'tierpoint info "
                         f"{path}'")
    if _has_steps(path):
        raise UsageError(f"{what} {path} is a run directory, not a tier root; pass its parent "
                         f"with --run: {parent} --run {name}")
    return path


def _need_pools(pools: list[str]) -> list[str]:
    for pool in pools:
        if not os.path.isdir(pool):
            state = "does not exist" if not os.path.lexists(pool) else "is not a directory"
            raise UsageError(f"--persistent pool {pool} {state} (not mounted?); mount or create "
                             "it, or fix the --persistent paths")
        _need_root(pool, "--persistent pool")
    return pools


def _need_checkpoint(path: str, what: str = "checkpoint") -> str:
    """``path`` is a step directory with a commit marker or a manifest (damaged ones pass:
    telling what is wrong with them is verify's job)."""
    if not os.path.lexists(path):
        raise UsageError(f"{what} {path} does not exist; pass a step directory "
                         "ROOT/RUN/step_<8 digits> ('tierpoint ls ROOT' lists them)")
    if not os.path.isdir(path):
        holder = os.path.dirname(os.path.abspath(path))
        raise UsageError(f"{what} {path} is a file, not a checkpoint; pass "
                         + (f"the step directory that holds it, {holder}" if _is_step_dir(holder)
                            else "a step directory ROOT/RUN/step_<8 digits>"))
    if any(os.path.lexists(os.path.join(path, f))
           for f in (layout.COMMIT_FILE, layout.MANIFEST_FILE)):
        return path
    parent, name = os.path.split(os.path.normpath(os.path.abspath(path)))
    if _has_steps(path):
        steps = layout.committed_steps(parent, name)
        example = layout.step_dir(parent, name, steps[-1]) if steps else f"{path}/step_<8 digits>"
        raise UsageError(f"{what} {path} is a run directory, not a checkpoint; pass one of its "
                         f"step directories, e.g. {example} ('tierpoint ls {parent} --run "
                         f"{name}' lists them)")
    if _is_tier_root(path):
        raise UsageError(f"{what} {path} is a tier root, not a checkpoint; pass a step "
                         f"directory ROOT/RUN/step_<8 digits> ('tierpoint ls {path}' lists them)")
    raise UsageError(f"{what} {path} is not a committed checkpoint (no {layout.COMMIT_FILE} "
                     f"and no {layout.MANIFEST_FILE} in it: empty, or a save cut short); pass a "
                     "committed step directory ('tierpoint ls ROOT' lists them)")


def _runs(roots: list[str], run: str | None) -> list[str]:
    """The run directories to work on: ``run`` (which must be under one of the roots), or
    every run under the roots."""
    present = sorted({r for root in roots for r in layout.list_runs(root)})
    if run is None:
        return present
    name = layout.escape_component(run)
    if name not in present:
        raise UsageError(f"run {run!r} is not under {' or '.join(roots)} (runs there: "
                         f"{', '.join(present) or 'none'}); check --run")
    return [name]


# ---- output helpers -----------------------------------------------------------------------

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


def _age(unix_time) -> str:
    if not unix_time:
        return "-"
    secs = max(0, time.time() - unix_time)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.0f}{unit}"
    return f"{secs:.0f}s"


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
    from .audit import AUDIT_FILE
    newest: dict = {}
    for root in roots:
        for run in runs:
            try:
                with open(os.path.join(root, run, AUDIT_FILE), "rb") as f:
                    lines = f.read().split(b"\n")
            except OSError:
                continue
            for line in lines:
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


def cmd_ls(args) -> int:
    root = _need_root(args.root, "ROOT")
    pools = _need_pools(args.persistent)
    runs = _runs([root] + pools[:1], args.run)
    rows = list_checkpoints(root, args.run)
    capacity = ({(r["run"], r["step"]): r for r in list_checkpoints(pools[0], args.run)}
                if pools else {})
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
    return EXIT_OK


# ---- drain and gc -------------------------------------------------------------------------

def _open(local, pools, run, policy=None):
    from .api import Checkpointer
    from .comm import SingleComm
    return Checkpointer(local, persistent=pools or None, run=run, policy=policy,
                        comm=SingleComm())


def _drain_steps(ck, local_root: str, run: str, step: int | None) -> list[int]:
    """The steps of ``run`` to drain: ``step``; or every step whose drain was started and
    did not finish (killed, failed: its drain record says so), oldest first, then the newest
    committed local one."""
    local = ck.steps()
    if step is None:
        if not local:
            print(f"{run}: no committed checkpoint on the local tier {local_root}; "
                  "nothing to drain")
            return []
        # Only started drains count as pending here: the trainer's drain_every is not known.
        pending, _ = ck._drain_plan(by_policy=False)
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
    local_root = _need_root(args.local, "--local")
    pools = _need_pools(args.persistent)
    runs = _runs([local_root], args.run)
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
                manifest = layout.load_manifest(ck.step_dir(step))
                total = sum(c["nbytes"] for a in manifest["arrays"].values()
                            for c in a["chunks"].values())
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"{run} step {step}",
                          disable=not sys.stderr.isatty()) as bar:
                    try:
                        done = ck.drain(step, rate=args.rate, progress=bar.update)
                    except CheckpointError as e:
                        print(f"tierpoint drain: {run} step {step}: {_one_line(e)}",
                              file=sys.stderr)
                        failed += 1
                        continue
                print(f"drained {run} step {step}: {done['bytes']} bytes in "
                      f"{done['seconds']:.2f} s into {done['parts']} part(s)")
            ck.pools = []  # nothing more to drain at close
    return EXIT_USAGE if failed else EXIT_OK


def _policy(args):
    from .options import Policy
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
    from .drain import remove_uncommitted, uncommitted_capacity_steps
    local_root = _need_root(args.local, "--local")
    pools = _need_pools(args.persistent)
    policy = _policy(args)
    runs = (_runs([local_root] + pools[:1], args.run) if args.run
            else layout.list_runs(local_root))
    if not runs:
        print(f"no runs under {local_root}; nothing to do")
    for run in runs:
        ck = _open(local_root, pools, run, policy)
        for step, why in ck._apply_local_retention(leftovers=True):
            print(f"{run} step {step}: removed from the local tier ({why})")
        if pools:
            for step in uncommitted_capacity_steps(ck.pools, run):
                remove_uncommitted(ck.pools, run, step)
                print(f"{run} step {step}: removed an interrupted drain or deletion")
            for step in ck._apply_capacity_retention():
                ck._audit_event("deleted", step, detail={"tier": "capacity",
                                                         "why": "retention (tierpoint gc)"})
                print(f"{run} step {step}: removed from the capacity tier")
        print(f"{run}: local {ck.steps()}, capacity {ck.capacity_steps()}")
        ck.pools = []
        ck.close()
    return EXIT_OK


# ---- verify -------------------------------------------------------------------------------

def _verify_one(path: str, as_json: bool, partial: bool):
    from tqdm import tqdm

    from .verify import total_bytes, verify_checkpoint
    with tqdm(total=total_bytes(path), unit="B", unit_scale=True, desc=f"verify {path}",
              disable=as_json or not sys.stderr.isatty(), file=sys.stderr) as bar:
        return verify_checkpoint(path, partial=partial, progress=bar.update)


def _print_report(report) -> None:
    counted = (f"{report.chunks_checked} of {report.chunks_total} chunks "
               f"({_human(report.bytes_checked)}) checked")
    state = (f"FAILED ({len(report.problems)} problems)" if report.damaged else
             "OK" if report.ok else "INCOMPLETE")
    print(f"{report.path}: {state}  [{report.tier} tier, run {report.run!r} step "
          f"{report.step}, {counted}, digest {report.digest}]")
    if report.chunks_elsewhere:
        nodes = ", ".join(report.nodes_elsewhere) or "?"
        print(f"  {report.chunks_elsewhere} chunks are not in this copy (written by nodes "
              f"[{nodes}] into their own tiers)" +
              ("; accepted: --partial" if report.partial else
               ": verify each node's copy or the capacity copy, or pass --partial to accept "
               "a check of this copy alone"))
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
                   detail={"ok": report.ok, "damaged": report.damaged,
                           "complete": report.complete, "problems": len(report.problems),
                           "tier": report.tier})
    except OSError as e:
        print(f"tierpoint verify: could not append to the audit log in {run_dir}: {e}; the "
              "outcome above is not recorded", file=sys.stderr)


def _verify_status(reports) -> int:
    if any(r.damaged for r in reports):
        return EXIT_DAMAGED
    return EXIT_OK if all(r.ok for r in reports) else EXIT_INCOMPLETE


def cmd_verify(args) -> int:
    if args.all:
        root = _need_root(args.target, "ROOT")
        pools = _need_pools(args.persistent)
        _runs([root] + pools[:1], args.run)
        paths = [row["path"] for r in [root] + pools[:1]
                 for row in list_checkpoints(r, args.run) if row["state"] != "partial"]
    else:
        for opt, given in (("--persistent", args.persistent), ("--run", args.run)):
            if given:
                raise UsageError(f"{opt} goes with --all ROOT (verify every checkpoint of the "
                                 "tiers); to verify one checkpoint pass only its step directory")
        paths = [_need_checkpoint(args.target)]
    reports = [_verify_one(p, args.json, args.partial) for p in paths]
    for r in reports:
        _log_verified(r)
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=1))
    else:
        for r in reports:
            _print_report(r)
        if not reports:
            print(f"no committed checkpoints under {args.target}")
    return _verify_status(reports)


# ---- lineage, audit, info, diff, demo -----------------------------------------------------

def cmd_lineage(args) -> int:
    from .lineage import chain
    target = _need_checkpoint(args.target)
    roots = [_need_dir(r, "--root") for r in args.root]
    entries = chain(target, roots)
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
    return EXIT_DAMAGED if bad else EXIT_OK


def _log_path(target: str) -> str:
    """The audit log named by LOG: the file itself, or the run directory holding it."""
    from .audit import AUDIT_FILE
    where = "pass a run's audit.jsonl or its run directory (on the first --persistent pool, "
    where += "else on rank 0's local tier)"
    if not os.path.lexists(target):
        raise UsageError(f"LOG {target} does not exist; {where}")
    if not os.path.isdir(target):
        return target
    path = os.path.join(target, AUDIT_FILE)
    if os.path.isfile(path):
        return path
    if _is_step_dir(target):
        raise UsageError(f"LOG {target} is a checkpoint; its run's log is in the run directory: "
                         f"pass {os.path.dirname(os.path.abspath(target))}")
    if layout.list_runs(target) and not _has_steps(target):
        raise UsageError(f"LOG {target} holds no {AUDIT_FILE}; it looks like a tier root: pass "
                         f"one of its run directories, e.g. "
                         f"{os.path.join(target, layout.list_runs(target)[0])}")
    raise UsageError(f"LOG {target} holds no {AUDIT_FILE}; {where}")


def _read_records(path: str) -> list[dict]:
    """The records of a log for display; a line that is not a JSON record is an error that
    names it (a damaged log is for 'audit verify' to judge)."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            record = e
        if not isinstance(record, dict) or "seq" not in record or "event" not in record:
            raise UsageError(f"{path} line {i} is not an audit record ({record}); run "
                             f"'tierpoint audit verify {path}' for every problem of the log")
        records.append(record)
    return records


def _audit_key(option: str | None) -> bytes | None:
    from .audit import read_key
    name = "--key" if option else "TIERPOINT_AUDIT_KEY_FILE"
    path = option or os.environ.get("TIERPOINT_AUDIT_KEY_FILE")
    if path and not os.path.isfile(path):
        state = "does not exist" if not os.path.lexists(path) else "is not a file"
        raise UsageError(f"{name} {path} {state}; pass the key file the run's records were "
                         "signed with")
    return read_key(path)


def cmd_audit_verify(args) -> int:
    from .audit import verify_log
    path = _log_path(args.log)
    count, problems = verify_log(path, _audit_key(args.key))
    if args.json:
        print(json.dumps({"log": path, "records": count, "ok": not problems,
                          "problems": problems}, indent=1))
    else:
        print(f"{path}: {count} records, " + ("intact" if not problems else
                                             f"{len(problems)} problems"))
        for p in problems:
            print(f"  {p}")
    return EXIT_DAMAGED if problems else EXIT_OK


def cmd_audit_show(args) -> int:
    records = _read_records(_log_path(args.log))
    if args.json:
        print(json.dumps(records, indent=1))
        return EXIT_OK
    for r in records:
        print(f"{r['seq']:>5} {r.get('time', '-')} {r['event']:<9} step {r.get('step')!s:>8} "
              f"{r.get('user', '?')}@{r.get('host', '?')} {r.get('digest') or ''}")
    return EXIT_OK


def cmd_info(args) -> int:
    from .inspect import info
    d = info(_need_checkpoint(args.target))
    if args.json:
        print(json.dumps(d, indent=1))
        return EXIT_OK
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
    return EXIT_OK


def _differs(d: dict) -> bool:
    s = d["summary"]
    return any(s[k] for k in ("different", "shape_differs", "only_in_a", "only_in_b",
                              "values_different"))


def cmd_diff(args) -> int:
    from .inspect import diff
    d = diff(_need_checkpoint(args.a, "A"), _need_checkpoint(args.b, "B"))
    status = EXIT_DAMAGED if _differs(d) else EXIT_OK
    if args.json:
        print(json.dumps(d, indent=1))
        return status
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
    return status


def cmd_demo(args) -> int:
    from .demo import main_demo
    try:
        return main_demo(args.demo_argv)
    except SystemExit as e:  # the demo's own refusals and usage errors: "could not run"
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return EXIT_USAGE
        return EXIT_USAGE if e.code else EXIT_OK


# ---- the parser, and the reference generated from it --------------------------------------

def _add_json(p) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_pools(p, required=False, help="capacity pools (the first holds the heads and logs)"):
    p.add_argument("--persistent", nargs="+", default=[], required=required, metavar="POOL",
                   help=help)


def _command(sub, name: str, help: str, **kwargs):
    p = sub.add_parser(name, help=help, description=help, **kwargs)
    p.set_defaults(parser=p)  # the innermost command's parser reports unknown arguments
    return p


def _add_commands(sub) -> None:
    p = _command(sub, "ls", "checkpoints per step: tiers, age, size, last verification")
    p.add_argument("root", metavar="ROOT", help="a tier root (it holds one directory per run)")
    p.add_argument("--run", metavar="R", help="only this run")
    _add_pools(p, help="also list what these capacity pools hold")
    _add_json(p)
    p.set_defaults(func=cmd_ls)
    p = _command(sub, "drain", "copy what a job left on this node's local tier to the "
                                     "capacity pools (each run's newest step, or --step)")
    p.add_argument("--local", required=True, metavar="ROOT", help="the node's local tier root")
    _add_pools(p, required=True)
    p.add_argument("--run", metavar="R", help="only this run")
    p.add_argument("--step", type=at_least(0), metavar="S", help="this step (needs --run when "
                   "the root holds several runs)")
    p.add_argument("--rate", type=_rate, metavar="BYTES_PER_S", help="bandwidth cap")
    p.set_defaults(func=cmd_drain)
    p = _command(sub, "gc", "apply retention; remove what interrupted saves, drains and "
                                  "deletions left (run it when no job writes the run)")
    p.add_argument("--local", required=True, metavar="ROOT", help="the node's local tier root")
    _add_pools(p, help="also apply the capacity tier's retention to these pools")
    p.add_argument("--run", metavar="R", help="only this run")
    p.add_argument("--keep-local", type=at_least(1), default=2, metavar="K",
                   help="newest committed checkpoints kept on the local tier (default 2)")
    p.add_argument("--keep-persistent", type=at_least(1), metavar="M",
                   help="newest checkpoints kept on the capacity tier (default: all)")
    p.add_argument("--keep-every", type=at_least(1), metavar="N",
                   help="the capacity tier also keeps every step divisible by N")
    p.add_argument("--pin", type=at_least(0), nargs="+", default=[], metavar="STEP",
                   help="steps the capacity tier keeps forever (with --keep-persistent or "
                        "--keep-every)")
    p.set_defaults(func=cmd_gc)
    p = _command(sub, "verify", "recompute every check of checkpoints; exit 1 on damage, "
                                      "3 when not every chunk could be checked")
    p.add_argument("target", metavar="CKPT", help="a step directory; with --all, a tier root")
    p.add_argument("--all", action="store_true",
                   help="every committed checkpoint under the root and the first pool")
    _add_pools(p, help="with --all: also the checkpoints on these capacity pools")
    p.add_argument("--run", metavar="R", help="with --all: only this run")
    p.add_argument("--partial", action="store_true",
                   help="accept a check of the chunks this copy holds (one node's local tier "
                        "of a multi-node checkpoint)")
    _add_json(p)
    p.set_defaults(func=cmd_verify)
    p = _command(sub, "lineage", "a checkpoint's ancestors across runs, digests checked")
    p.add_argument("target", metavar="CKPT", help="a committed step directory")
    p.add_argument("--root", nargs="+", default=[], metavar="ROOT",
                   help="tier roots to look for ancestors no longer where they were read")
    _add_json(p)
    p.set_defaults(func=cmd_lineage)
    audit = _command(sub, "audit", "a run's hash-chained audit log")
    actions = audit.add_subparsers(dest="action", required=True, metavar="{verify,show}")
    p = _command(actions, "verify", "find changed, removed, inserted or reordered records")
    p.add_argument("log", metavar="LOG", help="audit.jsonl, or the run directory that holds it")
    p.add_argument("--key", metavar="FILE", help="HMAC key file (default: "
                                                 "TIERPOINT_AUDIT_KEY_FILE)")
    _add_json(p)
    p.set_defaults(func=cmd_audit_verify)
    p = _command(actions, "show", "the records of the log (unchecked)")
    p.add_argument("log", metavar="LOG", help="audit.jsonl, or the run directory that holds it")
    _add_json(p)
    p.set_defaults(func=cmd_audit_show)
    p = _command(sub, "info", "arrays, shapes, dtypes, save layout, lineage, metadata")
    p.add_argument("target", metavar="CKPT", help="a committed step directory")
    _add_json(p)
    p.set_defaults(func=cmd_info)
    p = _command(sub, "diff", "per array: identical (by fingerprint, no data read) or how "
                                    "different; exit 1 when they differ")
    p.add_argument("a", metavar="A", help="a committed step directory")
    p.add_argument("b", metavar="B", help="another, of any run, tier and save layout")
    _add_json(p)
    p.set_defaults(func=cmd_diff)
    from .demo import demo_parser
    # The demo parses its own options (main_demo); its parser is a parent here for the
    # reference and --help only.
    _command(sub, "demo", "train on 4 MPI ranks with checkpoints, restore on 3 (make demo)",
             parents=[demo_parser()], add_help=False).set_defaults(func=cmd_demo)


class _HelpAll(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(reference(parser))
        parser.exit()


def build_parser() -> CliParser:
    parser = CliParser(prog="tierpoint", description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tierpoint {__version__}")
    parser.add_argument("--help-all", action=_HelpAll,
                        help="print the reference of every command and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_commands(sub)
    return parser


def _subcommands(parser, prefix: str = "tierpoint"):
    """(name, parser) of every command, nested ones ("audit verify") included, in order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = list(_subcommands(sub, f"{prefix} {name}"))
                yield from nested or [(f"{prefix} {name}"[len("tierpoint "):], sub)]


def _synopsis_of(action) -> str:
    if not action.option_strings:
        name = action.metavar or action.dest.upper()
        return name + ("..." if action.nargs in ("+", "*") else "")
    text = action.option_strings[-1]
    if action.nargs != 0:
        text += f" {action.metavar or action.dest.upper()}"
        text += "..." if action.nargs in ("+", "*") else ""
    return text if action.required else f"[{text}]"


def _options(sub) -> list:
    return [a for a in sub._actions if a.help is not argparse.SUPPRESS and
            not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


_WIDTH = 96  # of the reference's lines (the README's code blocks)


def reference(parser) -> str:
    """Every command, its synopsis and each argument's help: the README's CLI reference.
    Built from the actions, not argparse's usage text, so it does not depend on the
    terminal's width."""
    out = []
    for name, sub in _subcommands(parser):
        actions = _options(sub)
        words = [f"tierpoint {name}"] + [_synopsis_of(a).replace(" ", "\xa0") for a in actions]
        out += [line.replace("\xa0", " ") for line in
                textwrap.wrap(" ".join(words), _WIDTH, subsequent_indent=" " * 8,
                              break_on_hyphens=False)]  # never inside "[--opt ARG]"
        out += textwrap.wrap(sub.description, _WIDTH, initial_indent=" " * 4,
                             subsequent_indent=" " * 4)
        for a in actions:
            arg = _synopsis_of(a).strip("[]")
            out += textwrap.wrap(f"{arg:<24} {a.help or ''}", _WIDTH, initial_indent=" " * 6,
                                 subsequent_indent=" " * 31, break_on_hyphens=False)
    return "\n".join(out)


# ---- main: one line on stderr, the right exit status, no traceback ------------------------

_KEYWORDS = re.compile(r"\b(persistent|local)=")


def _one_line(error: BaseException) -> str:
    """The error's message on one line, in the command line's words: ``persistent=`` (a
    Checkpointer keyword) is ``--persistent`` here."""
    text = " ".join(str(error).split("\n")).strip() or type(error).__name__
    return _KEYWORDS.sub(lambda m: f"--{m.group(1)}", text)


def _message(command: str, error: Exception) -> str:
    text = _one_line(error)
    if text.startswith(f"{command}: "):  # the library prefixes some messages the same way
        text = text[len(command) + 2:]
    if isinstance(error, CheckpointNotFoundError) and "tierpoint ls" not in text:
        return f"{text}; 'tierpoint ls ROOT' lists the committed checkpoints"
    if isinstance(error, CorruptCheckpointError) and "tierpoint verify" not in text:
        return f"{text}; 'tierpoint verify' names every problem (use another copy if there is one)"
    if isinstance(error, CheckpointError):
        return text
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror or text}; check the path and its permissions"
    return (f"unexpected {type(error).__name__}: {text}; rerun with TIERPOINT_DEBUG=1 for the "
            "traceback and report it")


def _stdout_closed() -> int:
    """The reader of stdout went away (``| head``): point stdout at /dev/null so that the
    interpreter's final flush does not fail again, and exit quietly (Python's documented
    way, see the signal module's note on SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file descriptor (captured in a test)
        pass
    return EXIT_PIPE


def _run(command: str, call) -> int:
    from .options import debug
    try:
        status = call()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        print(f"tierpoint {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug():
            traceback.print_exc()
        print(f"tierpoint {command}: {_message(command, e)}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """The ``tierpoint`` command; returns the exit status (argparse's exits included)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, rest = parser.parse_known_args(argv)
        if args.func is cmd_demo:  # the demo parses its own options (checked here already)
            args.demo_argv = argv[argv.index("demo") + 1:]
        elif rest:
            args.parser.error(f"unrecognized arguments: {' '.join(rest)}")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    command = args.command + (f" {args.action}" if args.command == "audit" else "")
    return _run(command, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
