"""The compact form of a version 2 header's per-rank tables (format/compact.py): written as
runs, read back to exactly the full tables, whatever their regularity."""
import json
import random

from tierpoint.format import layout
from tierpoint.format.compact import compact_header, expand_header


def _header(world, per_node, cells_of, hosts_of=None):
    ranks = [{"rank": r, "node": f"n{r // per_node}",
              "host": (hosts_of or (lambda r: f"h{r // per_node}"))(r), "pid": 0,
              "tier_dir": "/ssd", "domain": r // per_node} for r in range(world)]
    groups = [{"parts": parts, "replicated": rep, "cells": [cells(r) for r in range(world)]}
              for parts, rep, cells in cells_of]
    return {"format_version": 2, "world_size": world, "layout": {"ranks": ranks},
            "groups": groups, "arrays": {}}


def _round_trip(doc):
    written = json.loads(layout.encode_json(compact_header(doc)))
    assert expand_header(written) == doc
    return written


def test_regular_tables_become_a_few_runs():
    doc = _header(4096, 8, [([4096, 1], False, lambda r: [r, 0]),
                            ([512, 8], False, lambda r: [r // 8, r % 8]),
                            ([2048], True, lambda r: [r % 2048])])
    written = _round_trip(doc)
    assert "ranks" not in written["layout"] and len(written["layout"]["domains"]) == 512
    assert len(written["layout"]["rank_domains"]) == 512  # one run per domain
    runs = [g["cell_runs"] for g in written["groups"]]
    assert runs[0] == [[0, 4096, 0, 1]] and runs[1] == [[0, 4096, 0, 1]]
    assert len(runs[2]) == 2  # replicated twice over: two runs
    assert len(layout.encode_json(written)) < len(layout.encode_json(doc)) / 10


def test_irregular_tables_come_back_exactly():
    rng = random.Random(7)
    for _ in range(50):
        world = rng.randrange(1, 40)
        parts = [rng.randrange(1, 5), rng.randrange(1, 4)]
        doc = _header(world, rng.randrange(1, 5), [
            (parts, True, lambda r: None if rng.random() < 0.3 else
             [rng.randrange(parts[0]), rng.randrange(parts[1])])])
        _round_trip(doc)


def test_hosts_that_differ_inside_a_node_keep_the_full_rank_table():
    doc = _header(8, 4, [], hosts_of=lambda r: f"h{r}")
    written = _round_trip(doc)
    assert written["layout"]["ranks"] == doc["layout"]["ranks"]


def test_version_1_documents_are_left_alone():
    doc = {"format_version": 1, "layout": {"ranks": [{"rank": 0}]}, "arrays": {}}
    assert compact_header(doc) is doc and expand_header(doc) == doc
