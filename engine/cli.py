"""The ``tierpoint`` command line.

    tierpoint ls ROOT [--run RUN]     committed (and partial) checkpoints under a tier root
    tierpoint demo [--dir DIR]        4-rank training with checkpoints, restored on 3 ranks
"""
from __future__ import annotations

import argparse
import json
import os
import sys

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
                               arrays=len(m["arrays"]), values=len(m["values"]))
                except CheckpointError as e:
                    row.update(state="damaged", error=str(e))
            row["bytes"] = _dir_bytes(path)
            rows.append(row)
    return rows


def cmd_ls(args) -> int:
    rows = list_checkpoints(args.root, args.run)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"no checkpoints under {args.root}")
        return 0
    print(f"{'run':<16} {'step':>8}  {'state':<9} {'saved (UTC)':<20} {'ranks':>5} "
          f"{'arrays':>6} {'size':>10}")
    for r in rows:
        print(f"{r['run']:<16} {r['step']:>8}  {r['state']:<9} {r.get('time', '-'):<20} "
              f"{r.get('world_size', '-'):>5} {r.get('arrays', '-'):>6} {_human(r['bytes']):>10}")
        if r["state"] == "damaged":
            print(f"    {r['error']}")
    partial = sum(r["state"] == "partial" for r in rows)
    if partial:
        print(f"({partial} partial step directories: interrupted saves, not checkpoints)")
    return 0


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
    sub.add_parser("demo", help="train on 4 MPI ranks with checkpoints, restore on 3",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command == "ls":
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            return cmd_ls(args)
        return cmd_demo(args, rest)
    except CheckpointError as e:
        print(f"tierpoint: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
