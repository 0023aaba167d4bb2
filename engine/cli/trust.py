"""``tierpoint verify``, ``lineage``, ``audit verify|show``, ``info`` and ``diff``: the
commands that check and inspect checkpoints and logs (they never change a checkpoint; verify
appends its outcome to the run's audit log)."""
from __future__ import annotations

import json
import os
import sys

from ..format import layout
from .common import (EXIT_DAMAGED, EXIT_INCOMPLETE, EXIT_OK, UsageError, has_steps, human,
                         is_step_dir, need_checkpoint, need_dir, need_pools, need_root, one_line,
                         runs_of)
from .tiers import list_checkpoints
from ..errors import CheckpointError
from ..options import Options


# ---- verify -------------------------------------------------------------------------------

def _verify_one(path: str, as_json: bool, partial: bool):
    from tqdm import tqdm

    from ..trust.verify import total_bytes, verify_checkpoint
    with tqdm(total=total_bytes(path), unit="B", unit_scale=True, desc=f"verify {path}",
              disable=as_json or not sys.stderr.isatty(), file=sys.stderr) as bar:
        return verify_checkpoint(path, partial=partial, progress=bar.update)


def _print_report(report) -> None:
    counted = (f"{report.chunks_checked} of {report.chunks_total} chunks "
               f"({human(report.bytes_checked)}) checked")
    state = (f"FAILED ({len(report.problems)} problems)" if report.damaged else
             "OK" if report.ok else "INCOMPLETE")
    print(f"{report.path}: {state}  [{report.tier} tier, run {report.run!r} step "
          f"{report.step}, {counted}, digest {report.digest}]")
    if report.note:
        print(f"  {report.note}")
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
    """Record the outcome in the audit log next to the checkpoint, if that run has one (a
    run directory's audit.jsonl, or the run's records on an object store)."""
    from ..trust.audit import AUDIT_FILE, read_key
    from ..trust.lineage import user_name
    from ..trust.logs import open_log
    from ..tiers.s3store import is_url
    run_dir = (report.path.rstrip("/").rsplit("/", 1)[0] if is_url(report.path) else
               os.path.dirname(os.path.abspath(report.path)))
    try:
        log = open_log(run_dir, read_key(Options.from_env().audit_key_file), user_name())
        if not (log.exists() if is_url(run_dir) else
                os.path.isfile(os.path.join(run_dir, AUDIT_FILE))):
            return
        log.append("verified", run=report.run, step=report.step, digest=report.digest,
                   detail={"ok": report.ok, "damaged": report.damaged,
                           "complete": report.complete, "partial": report.partial,
                           "problems": len(report.problems), "tier": report.tier})
    except (OSError, CheckpointError) as e:  # the check stands; only its record is lost
        print(f"tierpoint verify: could not append to the audit log in {run_dir}: "
              f"{one_line(e)}; the outcome above is not recorded", file=sys.stderr)


def _verify_status(reports) -> int:
    if any(r.damaged for r in reports):
        return EXIT_DAMAGED
    return EXIT_OK if all(r.ok for r in reports) else EXIT_INCOMPLETE


def cmd_verify(args) -> int:
    if (args.target is None) == (args.all is None):
        raise UsageError("pass one checkpoint's step directory (CKPT) or --all ROOT (every "
                         "checkpoint under a tier root), " +
                         ("not both" if args.target else "one of them"))
    if args.all:
        root = need_root(args.all, "ROOT")
        pools = need_pools(args.persistent)
        runs_of([root] + pools[:1], args.run)
        paths = [row["path"] for r in [root] + pools[:1]
                 for row in list_checkpoints(r, args.run) if row["state"] != "partial"]
    else:
        for opt, given in (("--persistent", args.persistent), ("--run", args.run)):
            if given:
                raise UsageError(f"{opt} goes with --all ROOT (verify every checkpoint of the "
                                 "tiers); to verify one checkpoint pass only its step directory")
        paths = [need_checkpoint(args.target)]
    reports = [_verify_one(p, args.json, args.partial) for p in paths]
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=1))
    else:
        for r in reports:
            _print_report(r)
        if not reports:
            print(f"no committed checkpoints under {args.all}")
    sys.stdout.flush()  # the outcome is out before any complaint about recording it
    for r in reports:
        _log_verified(r)
    return _verify_status(reports)


# ---- lineage and audit --------------------------------------------------------------------

def cmd_lineage(args) -> int:
    from ..trust.lineage import chain
    target = need_checkpoint(args.target)
    from ..tiers.registry import is_url
    roots = [r if is_url(r) else need_dir(r, "--root") for r in args.root]
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
            if e.get("source"):
                src = e["source"]
                print(f"  <- imported from {src.get('format')} {src.get('path')} "
                      f"({len(src.get('files', {}))} files, SHA-256 recorded)")
                for name, digest in sorted(src.get("files", {}).items()):
                    print(f"      {name}  sha256 {digest}")
    bad = [e for e in entries[1:] if not e["digest_ok"]]
    return EXIT_DAMAGED if bad else EXIT_OK


def _log_path(target: str) -> str:
    """The audit log named by LOG: the file itself, or the run directory holding it."""
    from ..trust.audit import AUDIT_FILE
    where = "pass a run's audit.jsonl or its run directory (on the first --persistent pool, "
    where += "else on rank 0's local tier)"
    if not os.path.lexists(target):
        raise UsageError(f"LOG {target} does not exist; {where}")
    if not os.path.isdir(target):
        return target
    path = os.path.join(target, AUDIT_FILE)
    if os.path.isfile(path):
        return path
    if is_step_dir(target):
        raise UsageError(f"LOG {target} is a checkpoint; its run's log is in the run directory: "
                         f"pass {os.path.dirname(os.path.abspath(target))}")
    if layout.list_runs(target) and not has_steps(target):
        raise UsageError(f"LOG {target} holds no {AUDIT_FILE}; it looks like a tier root: pass "
                         f"one of its run directories, e.g. "
                         f"{os.path.join(target, layout.list_runs(target)[0])}")
    raise UsageError(f"LOG {target} holds no {AUDIT_FILE}; {where}")


def _parsed(entries: list[tuple[str, bytes]], log: str) -> list[dict]:
    """The records of a log for display (``entries``: (where, bytes) of each line or object);
    one that is not a JSON record is an error that names it (a damaged log is for 'audit
    verify' to judge)."""
    records = []
    for where, line in entries:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            record = e
        if not isinstance(record, dict) or "seq" not in record or "event" not in record:
            raise UsageError(f"{where} is not an audit record ({record}); run "
                             f"'tierpoint audit verify {log}' for every problem of the log")
        records.append(record)
    return records


def _audit_key(option: str | None) -> bytes | None:
    from ..trust.audit import read_key
    name = "--key" if option else "TIERPOINT_AUDIT_KEY_FILE"
    path = Options.from_env(audit_key_file=option).audit_key_file
    if path and not os.path.isfile(path):
        state = "does not exist" if not os.path.lexists(path) else "is not a file"
        raise UsageError(f"{name} {path} {state}; pass the key file the run's records were "
                         "signed with")
    return read_key(path)


def _s3_log(target: str):
    """The S3 audit log named by LOG (the run's URL, or its ``audit/`` prefix) and the run's
    URL."""
    from ..trust.s3audit import AUDIT_DIR, S3AuditLog
    url = target.rstrip("/")
    if url.endswith("/" + AUDIT_DIR):
        url = url[:-len(AUDIT_DIR) - 1]
    log = S3AuditLog(url)
    if not log.exists():
        raise UsageError(f"LOG {target}: no audit records under {log.path}; pass a run's URL "
                         "on the S3 capacity tier, s3://BUCKET/PREFIX/RUN")
    return log, url


def cmd_audit_verify(args) -> int:
    from ..trust.audit import read_log, verify_log
    from ..trust.auditcheck import committed_markers, marker_problems
    from ..tiers.s3store import is_url
    key = _audit_key(args.key)
    local_roots = [need_root(root, "--local") for root in args.local]
    # The checkpoints the log must record: the run's step directories beside it (the
    # capacity tier's, or rank 0's local tier's; an S3 tier's steps under the run's URL) and
    # those under --local roots.
    if is_url(args.log):
        log, run_dir = _s3_log(args.log)
        path, read = log.path, log.records
        count, problems = log.verify(key)
        run = run_dir.rsplit("/", 1)[1]
    else:
        path = _log_path(args.log)
        count, problems = verify_log(path, key)
        run_dir = os.path.dirname(os.path.abspath(path))
        run = os.path.basename(run_dir)
        read = lambda: read_log(path)  # noqa: E731
    markers = committed_markers(run_dir)
    for root in local_roots:
        markers += committed_markers(layout.run_dir(root, run))
    try:
        records = read()
    except ValueError:
        records = []  # a damaged record: verify named it; the cross-check is skipped
        problems.append(f"{path}: not cross-checked against the checkpoints (a line is not "
                        "a record)")
    else:
        problems += marker_problems(records, markers, run, key)
    if args.json:
        print(json.dumps({"log": path, "records": count, "checkpoints": len(markers),
                          "ok": not problems, "problems": problems}, indent=1))
    else:
        print(f"{path}: {count} records, {len(markers)} committed checkpoints, " +
              ("intact" if not problems else f"{len(problems)} problems"))
        for p in problems:
            print(f"  {p}")
    return EXIT_DAMAGED if problems else EXIT_OK


def cmd_audit_show(args) -> int:
    from ..tiers.s3store import is_url
    if is_url(args.log):
        log, _ = _s3_log(args.log)
        records = _parsed(log.entries(), args.log)
    else:
        path = _log_path(args.log)
        with open(path, "rb") as f:
            records = _parsed([(f"{path} line {i}", line) for i, line in
                               enumerate(f.read().split(b"\n"), 1)], path)
    if args.json:
        print(json.dumps(records, indent=1))
        return EXIT_OK
    for r in records:
        print(f"{r['seq']:>5} {r.get('time', '-')} {r['event']:<9} step {r.get('step')!s:>8} "
              f"{r.get('user', '?')}@{r.get('host', '?')} {r.get('digest') or ''}")
    return EXIT_OK


# ---- info and diff ------------------------------------------------------------------------

def cmd_info(args) -> int:
    from ..trust.inspect import info
    d = info(need_checkpoint(args.target))
    if args.json:
        print(json.dumps(d, indent=1))
        return EXIT_OK
    lin = d["lineage"]
    parent = lin.get("parent")
    code = lin.get("code", {})
    print(f"{d['path']}\n  run {d['run']!r} step {d['step']}, saved {d['time']} by "
          f"{lin.get('user', '?')} on {d['world_size']} ranks / nodes {', '.join(d['nodes'])}"
          f" ({d['tier']} tier)\n  digest {d['digest']}\n  {len(d['arrays'])} arrays, "
          f"{human(d['bytes'])}; versions "
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
              f"{a['shards']:>6} {a['fingerprint'] or '-'}")
    if d.get("fingerprints_unavailable"):
        print(f"  fingerprints unavailable: {d['fingerprints_unavailable']}")
    for k, v in d["values"].items():
        print(f"  {k} = {json.dumps(v)}")
    return EXIT_OK


def _differs(d: dict) -> bool:
    s = d["summary"]
    return any(s[k] for k in ("different", "shape_differs", "only_in_a", "only_in_b",
                              "values_different"))


def cmd_diff(args) -> int:
    from ..trust.inspect import diff
    d = diff(need_checkpoint(args.a, "A"), need_checkpoint(args.b, "B"))
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
