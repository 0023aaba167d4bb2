"""``tierpoint export`` and ``tierpoint import``: checkpoints to and from Hugging Face
safetensors (and, importing, torch.distributed.checkpoint directories). The work is in
``tierpoint.hf``; here the paths are checked and the outcome printed."""
from __future__ import annotations

import json
import os
import sys

from .common import (EXIT_OK, UsageError, human, need_checkpoint, need_pools, need_root,
                     one_line)
from ..errors import CheckpointError
from ..options import Options


def cmd_export(args) -> int:
    from tqdm import tqdm

    from ..hf.export import (export_safetensors, log_exists, log_place, no_log, plan_export,
                             record_export)
    from ..hf.names import parse_rename, parse_size
    from ..view import open as open_view
    target = need_checkpoint(args.target)
    if args.config is not None and not os.path.isfile(args.config):
        state = "does not exist" if not os.path.lexists(args.config) else "is not a file"
        raise UsageError(f"--config {args.config} {state}; pass the model's config.json")
    renames = [parse_rename(r) for r in args.rename]
    max_bytes = parse_size(args.max_shard_size)
    persistent = need_pools(args.persistent) or None
    view = open_view(target)
    place = log_place(target, view.run, persistent)
    if persistent and not log_exists(place):  # before the export: a wrong pool, said at once
        raise UsageError(no_log(place, persistent))
    shards, _ = plan_export(view, args.select, renames, max_bytes)  # the bar's total
    total = sum(item.nbytes for shard in shards for item in shard)
    shown = args.progress if args.progress is not None else \
        not args.json and sys.stderr.isatty()
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"export {target}",
              disable=not shown, file=sys.stderr) as bar:
        result = export_safetensors(view, args.out, select=args.select, renames=renames,
                                    max_shard_bytes=max_bytes, config=args.config,
                                    progress=bar.update)
    sys.stdout.flush()
    try:
        log, why = record_export(result, target, Options.from_env().audit_key_file, persistent)
    except (OSError, CheckpointError) as e:  # the export stands; only its record is lost
        log, why = None, f"could not append to the audit log: {one_line(e)}"
    if not log:  # never silently: the export stands, its record does not
        print(f"tierpoint export: the export of {target} is not recorded in an audit log: "
              f"{why}", file=sys.stderr)
    if args.json:
        print(json.dumps({**result.to_json(), "audit_log": log, "not_recorded": why or None},
                         indent=1))
        return EXIT_OK
    print(f"{result.out}: {result.arrays} arrays, {human(result.data_bytes)} from run "
          f"{result.run!r} step {result.step} ({view.tier} tier, digest {result.digest})")
    for name, digest in result.files.items():
        print(f"  {name}  sha256 {digest}")
    for note in result.skipped:
        print(f"  skipped: {note}")
    print(f"  recorded in {log}" if log else f"  not recorded in an audit log: {why}")
    return EXIT_OK


def cmd_import(args) -> int:
    from ..hf.load import import_checkpoint
    root = need_root(args.local, "--local")
    done = import_checkpoint(args.src, root, args.run, args.step,
                             trust_pickle=args.trust_pickle, into=args.into)
    if args.json:
        print(json.dumps(done, indent=1))
        return EXIT_OK
    source = done["source"]
    print(f"{done['path']}: {done['arrays']} arrays imported from {source['format']} "
          f"{source['path']} (lineage records the source and each file's SHA-256)")
    for name, digest in source["files"].items():
        print(f"  {name}  sha256 {digest}")
    for note in done["notes"]:
        print(f"  {note}")
    return EXIT_OK
