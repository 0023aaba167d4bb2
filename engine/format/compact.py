"""Compact forms of a version 2 header's per-rank tables, so that the header a restoring rank
reads grows with the job's nodes and layout runs, not with one record per rank.

A header names every saving rank twice over: ``layout.ranks`` (node, host, node-local tier
directory and domain of each rank) and each grid group's ``cells`` (the cell each rank
holds). At 16,384 ranks these are megabytes, although they are almost always regular: ranks
fill their nodes in order, and a rank's cell follows its number. On disk they are written as

- ``layout.domains``: ``[node, host, tier_dir]`` per domain (the domain's number is its
  place), and ``layout.rank_domains``: runs ``[first rank, count, domain]``;
- ``cells`` of a group: runs ``[first rank, count, first cell number, stride]``, a cell's
  number being its row-major index in the group's ``parts`` grid (-1 with stride 0: ranks
  holding no cell of the group).

``compact_header`` is applied by the one writer of header files (``layout.write_manifest``)
and ``expand_header`` by their readers before any check, so the rest of the engine sees the
full per-rank tables; the process id of each saving rank is not kept (0 when read back).
A table that is not regular enough to gain (hosts differing inside a domain) stays as it is.
Pure: no I/O.
"""
from __future__ import annotations


def _runs(values: list[int], strided: bool) -> list[list[int]]:
    """Runs ``[first index, count, first value, stride]`` of ``values`` (stride 0 unless
    ``strided``): consecutive values that grow by one stride."""
    out: list[list[int]] = []
    for i, v in enumerate(values):
        if out:
            start, count, first, stride = out[-1]
            if count == 1 and strided and v != -1 and first != -1:
                out[-1][3] = stride = v - first
            if v == first + stride * count:
                out[-1][1] += 1
                continue
        out.append([i, 1, v, 0])
    return out


def _unrun(runs: list, size: int) -> list[int]:
    values = [-1] * size
    for start, count, first, stride in runs:
        for k in range(count):
            values[start + k] = first + stride * k
    return values


def _linear(cell, parts) -> int:
    n = 0
    for c, p in zip(cell, parts):
        n = n * p + c
    return n


def _unravel(n: int, parts) -> list[int]:
    out = []
    for p in reversed(parts):
        out.append(n % p if p else 0)
        n = n // p if p else 0
    return out[::-1]


def compact_header(document: dict) -> dict:
    """The document as written: per-rank tables as runs (headers of versions 2 to 4)."""
    if document.get("format_version") not in (2, 3, 4):
        return document
    out = dict(document)
    ranks = document.get("layout", {}).get("ranks")
    if isinstance(ranks, list) and ranks:
        domains: dict[int, list] = {}
        regular = True
        for r in ranks:
            place = [r["node"], r["host"], r["tier_dir"]]
            if domains.setdefault(r["domain"], place) != place:
                regular = False
        if regular and sorted(domains) == list(range(len(domains))):
            layout = {k: v for k, v in document["layout"].items() if k != "ranks"}
            layout["domains"] = [domains[d] for d in range(len(domains))]
            layout["rank_domains"] = [run[:3] for run in
                                      _runs([r["domain"] for r in ranks], strided=False)]
            out["layout"] = layout
    groups = document.get("groups")
    if isinstance(groups, list) and groups:
        out["groups"] = [{**{k: v for k, v in g.items() if k != "cells"},
                          "cell_runs": _runs([-1 if c is None else _linear(c, g["parts"])
                                              for c in g["cells"]], strided=True)}
                         for g in groups]
    return out


def expand_header(document: dict) -> dict:
    """The document with full per-rank tables, whichever form was written. Malformed runs are
    left for the structural checks to name (they see the compact fields missing)."""
    layout = document.get("layout")
    out = document
    try:
        if isinstance(layout, dict) and "rank_domains" in layout:
            domain_of = [d for start, count, d in layout["rank_domains"] for _ in range(count)]
            ranks = [{"rank": r, "node": layout["domains"][d][0],
                      "host": layout["domains"][d][1], "pid": 0,
                      "tier_dir": layout["domains"][d][2], "domain": d}
                     for r, d in enumerate(domain_of)]
            out = {**out, "layout": {**{k: v for k, v in layout.items()
                                        if k not in ("domains", "rank_domains")},
                                     "ranks": ranks}}
        groups = out.get("groups")
        if isinstance(groups, list) and any(isinstance(g, dict) and "cell_runs" in g
                                            for g in groups):
            world = int(out.get("world_size", 0))
            out = {**out, "groups": [
                {**{k: v for k, v in g.items() if k != "cell_runs"},
                 "cells": [None if n < 0 else _unravel(n, g["parts"])
                           for n in _unrun(g["cell_runs"], world)]}
                if "cell_runs" in g else g for g in groups]}
    except (TypeError, ValueError, KeyError, IndexError):
        return document
    return out
