#!/usr/bin/env python3
"""Manifest sizes of format version 2 (issue 12) for a simulated job, in one process and
without writing files: ``manifest_sizes(ranks, arrays)`` builds one rank's slice, its commit
summary, a node-local header, the drained copy's header and the coordinator's seal with the
engine's own functions, and returns their sizes in bytes.

    .venv/bin/python bench/manifest_sizes.py [--ranks 16384] [--arrays 2000]

The job is bench/scale.py's: every array is (ranks * 8, 256) float32 split evenly by rows
(FSDP's dim-0 sharding), one shard (here one 8 KiB chunk) per rank, ``per_node`` ranks per
node. Two header layouts are measured: box by box (``{"shards": ...}``, what the save writes
today: one box per rank per array) and as a grid (``{"grid": ..., "group": 0}``, what the grid
planner writes: the ranks' cells once, shared by every array). Array records that differ only
by name are built once and sized for every name (exact: the name appears three times), so a
16,384 x 2,000 job is measured in seconds. The version 1 manifest (every chunk record in one
document, what every restoring rank used to read) is sized the same way for comparison.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

from tierpoint.format import layout, slices
from tierpoint.format.compact import compact_header
from tierpoint.format.manifest import SliceEntry
from tierpoint.format.types import WrittenChunk
from tierpoint.save.records import slice_of_save, summary_of_slice

ROWS, COLS = 8, 256


def _json_bytes(value) -> int:
    return len(layout.encode_json(value))


def _header_bytes(document: dict) -> int:
    """A header's bytes as ``layout.write_manifest`` writes them (its per-rank tables in
    their compact form, format/compact.py)."""
    return len(layout.encode_json(compact_header(document)))


def _name(i: int) -> str:
    return f"layer{i}.w"


def _record(i: int, ranks: int, array_layout: dict) -> dict:
    name = _name(i)
    return {"name": name, "path": name, "key": [name], "dtype": "float32",
            "shape": [ranks * ROWS, COLS], "chunk_shape": [ROWS, COLS], "layout": array_layout}


def _sum_over_names(arrays: int, size_of_first: int) -> int:
    """The bytes of ``arrays`` records that differ from record 0 only by their name."""
    first = len(_name(0))
    return sum(size_of_first + 3 * (len(_name(i)) - first) for i in range(arrays))


def _entry(rank: int, proof_len: int) -> SliceEntry:
    h = hashlib.sha256(str(rank).encode()).hexdigest()
    return SliceEntry(h, h, tuple([h] * proof_len) if proof_len else None, 2000, 2000 * 8196)


def manifest_sizes(ranks: int, arrays: int, *, per_node: int = 8) -> dict:
    """Bytes of what a version 2 save writes and a restore reads, for ``ranks`` x ``arrays``
    (see the module docstring). Keys: ``slice`` (one rank's slice), ``summary`` (what a rank
    sends the coordinator at the commit), ``header_grid`` / ``header_shards`` (a node-local
    header: its ``per_node`` slice entries with proofs), ``capacity_header_grid`` /
    ``capacity_header_shards`` (the drained copy's, every slice listed), ``ranks_table`` (the
    header's ``layout``: the saving ranks, in its compact form), ``restore_local_grid`` /
    ``restore_local_shards`` (what a rank restoring the layout it saved reads: its node's
    header and its own slice), ``restore_capacity_grid`` (the same from the drained copy),
    ``manifest_v1`` (version 1's one manifest, read whole by every restoring rank), and
    ``seal_seconds`` (the coordinator's digest and every proof), ``proof_hashes``."""
    per_node = min(per_node, ranks)
    rank = ranks - 1  # the longest chunk keys
    records = [WrittenChunk(_name(i), (rank, 0), ROWS * COLS * 4 + 4, 4294967295, rank,
                            "ab" * 32, 0x0123456789ABCDEF) for i in range(arrays)]
    document = slice_of_save("scale", 1, rank, records)
    data = slices.encode(document)
    entry = slices.entry_of(data, document, {_name(i): _name(i) for i in range(arrays)})
    summary = summary_of_slice(entry, set(), rank, document)  # nothing replicated

    t = time.process_time()
    digest, proven = slices.seal([_entry(r, 0) for r in range(ranks)])
    seal_seconds = time.process_time() - t
    depth = len(proven[0].proof)

    rank_records = [{"rank": r, "node": f"node{r // per_node:05d}",
                     "host": f"host{r // per_node:05d}", "pid": 100000 + r,
                     "tier_dir": f"/local/node{r // per_node:05d}/ckpt",
                     "domain": r // per_node} for r in range(ranks)]
    groups = [{"parts": [ranks, 1], "replicated": False,
               "cells": [[r, 0] for r in range(ranks)]}]
    grid_records = {_name(i): _record(i, ranks, {"grid": [ranks, 1], "group": 0})
                    for i in range(arrays)}
    node = {r: _entry(r, depth).to_document() for r in range(per_node)}
    every = {r: _entry(r, 0).to_document() for r in range(ranks)}

    def header(entries: dict, arrays_: dict, groups_: list) -> dict:
        return layout.build_header(run="scale", step=1, world_size=ranks, ranks=rank_records,
                                   arrays=arrays_, groups=groups_, slice_entries=entries,
                                   values={}, metadata={}, versions={"tierpoint": "0.1.0"},
                                   digest=digest,
                                   lineage={"parent": None, "code": {}, "user": "bench",
                                            "hosts": []})
    header_grid = _header_bytes(header(node, grid_records, groups))
    capacity_grid = _header_bytes(header(every, grid_records, groups))
    # Box-by-box layouts: the header without arrays, plus every array's record (built once,
    # sized for every name) and its key; the compact form leaves box lists as they are.
    shards = {"shards": [{"offset": [r * ROWS, 0], "shape": [ROWS, COLS], "ranks": [r]}
                         for r in range(ranks)]}
    records_bytes = _sum_over_names(arrays, _json_bytes(_record(0, ranks, shards)))
    keys_bytes = sum(len(json.dumps(_name(i))) + 1 for i in range(arrays)) + arrays - 1
    header_shards = _header_bytes(header(node, {}, [])) + records_bytes + keys_bytes
    capacity_shards = _header_bytes(header(every, {}, [])) + records_bytes + keys_bytes

    v1 = dict(_record(0, ranks, {}), fingerprint="0123456789abcdef",
              shards=shards["shards"], chunks={
                  f"c.{r}.0": {"nbytes": ROWS * COLS * 4 + 4, "crc32c": 4294967295,
                               "sha256": "ab" * 32, "fingerprint": "0123456789abcdef",
                               "writers": [r]} for r in range(ranks)})
    del v1["layout"]
    v1_base = layout.build_manifest(run="scale", step=1, world_size=ranks, ranks=rank_records,
                                    arrays={}, values={}, metadata={},
                                    versions={"tierpoint": "0.1.0"}, digest=digest,
                                    lineage={"parent": None, "code": {}, "user": "bench",
                                             "hosts": []})
    v1_bytes = _json_bytes(v1_base) + _sum_over_names(arrays, _json_bytes(v1)) + keys_bytes

    return {"ranks": ranks, "arrays": arrays, "per_node": per_node,
            "slice": len(data), "summary": _json_bytes(summary),
            "header_grid": header_grid, "header_shards": header_shards,
            "capacity_header_grid": capacity_grid, "capacity_header_shards": capacity_shards,
            "ranks_table": _json_bytes(compact_header(header({}, {}, []))["layout"]),
            "restore_local_grid": header_grid + len(data),
            "restore_local_shards": header_shards + len(data),
            "restore_capacity_grid": capacity_grid + len(data),
            "manifest_v1": v1_bytes,
            "seal_seconds": seal_seconds, "proof_hashes": depth}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="*", default=[64, 1024, 16384])
    p.add_argument("--arrays", type=int, nargs="*", default=[100, 2000])
    p.add_argument("--per-node", type=int, default=8)
    args = p.parse_args()
    for ranks in args.ranks:
        for arrays in args.arrays:
            print(json.dumps(manifest_sizes(ranks, arrays, per_node=args.per_node)),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
