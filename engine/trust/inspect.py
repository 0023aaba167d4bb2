"""Inspect and compare committed checkpoints: ``info`` and ``diff``, for the command line and
for notebooks (``from tierpoint.trust.inspect import info, diff``). Both take step directories of
either tier, opened through the read API (``tierpoint.open``, view/), and return plain
JSON-able dicts.

``diff`` decides "identical" from the arrays' fingerprints (same dtype, shape and
fingerprint) without reading data; other arrays of the same shape are read whole, one at a
time, every chunk checked, and compared numerically (max absolute difference, relative L2
change).
"""
from __future__ import annotations

import math

import numpy as np

from ..format import dtypes
from ..tiers.registry import shown
from ..view import CheckpointView, open as open_view
from ..view.values import as_float64


def info(path: str, *, fingerprints: bool = True) -> dict:
    """What a checkpoint holds: arrays (shape, dtype, chunking, chunk count, bytes,
    fingerprint, save layout), JSON values, lineage, metadata and where it was written.

    Everything but the fingerprints is read from the manifest (the header of a version 2
    checkpoint: chunk counts come from the grid, bytes from shape x itemsize). A version 2
    array's fingerprint is the sum over all its chunks' records, so it is shown where the
    copy holds every manifest slice (a drained copy, or one node's copy of a one-node save);
    elsewhere it is None and ``fingerprints_unavailable`` says why. ``fingerprints=False``
    reads the header alone."""
    view = open_view(path)
    m = view.manifest
    note = None
    if m.sliced:
        note = "not asked for" if not fingerprints else view.fingerprints_unavailable
    arrays = {}
    for name, a in sorted(m.arrays.items()):
        arrays[name] = {
            "shape": list(a.shape), "dtype": a.dtype, "chunk_shape": list(a.chunk_shape),
            # format version 4: the inner chunks of its sub-chunked chunk files (None: plain)
            "inner_chunk_shape": list(a.inner_shape) if a.inner_shape else None,
            "chunks": a.chunk_count if m.sliced else len(a.chunks),
            "fingerprint": view.fingerprint_of(name) if fingerprints or not m.sliced else
            (a.fingerprint or None),
            "bytes": math.prod(a.shape) * dtypes.itemsize(a.dtype),
            "shards": _shard_count(m, a),
        }
    out = {
        "path": shown(path), "run": m.run, "step": m.step,
        "time": m.document.get("time"), "digest": m.document.get("digest"),
        "tier": view.tier, "world_size": m.document.get("world_size"),
        "format_version": m.format_version,
        "nodes": sorted({r.node for r in m.ranks}),
        "hosts": m.lineage.get("hosts", []), "versions": m.versions,
        "lineage": m.lineage, "metadata": m.metadata,
        "values": view.values,
        "arrays": arrays, "bytes": sum(a["bytes"] for a in arrays.values()),
    }
    if note:
        out["fingerprints_unavailable"] = note
    return out


def _shard_count(m, a) -> int:
    """The distinct saved boxes of an array (a grid layout: the cells its group holds)."""
    if "grid" in a.layout:
        cells = m.groups[a.layout["group"]].get("cells", [])
        return len({tuple(c) for c in cells if c is not None})
    return len(a.shards)


def _compare(a: np.ndarray, b: np.ndarray) -> dict:
    diff = np.abs(a - b)
    norm = float(np.linalg.norm(a.ravel()))
    change = float(np.linalg.norm((a - b).ravel()))
    with np.errstate(invalid="ignore"):
        max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    return {"max_abs_diff": max_abs,
            "rel_l2_change": change / norm if norm else (0.0 if change == 0 else math.inf),
            "elements_differing": int(np.count_nonzero(a != b))}


def _values(view: CheckpointView, name: str) -> np.ndarray:
    """Array ``name`` whole, every chunk checked, as float64 values."""
    array = view[name]
    return as_float64(array.bits(), array.dtype)


def diff(path_a: str, path_b: str, *, progress=None) -> dict:
    """Compare two checkpoints (any runs, tiers and save layouts) array by array."""
    view_a, view_b = open_view(path_a), open_view(path_b)
    ma, mb = view_a.manifest, view_b.manifest
    names_a, names_b = set(ma.arrays), set(mb.arrays)
    arrays = {}
    for name in sorted(names_a & names_b):
        ea, eb = ma.arrays[name], mb.arrays[name]
        row = {"dtype": [ea.dtype, eb.dtype], "shape": [list(ea.shape), list(eb.shape)]}
        if ea.shape != eb.shape:
            row["status"] = "shape differs"
        elif ea.dtype == eb.dtype and view_a.fingerprint_of(name) and \
                view_a.fingerprint_of(name) == view_b.fingerprint_of(name):
            row["status"] = "identical"  # by fingerprint: no data read
        else:
            row.update(_compare(_values(view_a, name), _values(view_b, name)))
            row["status"] = "equal values" if row["elements_differing"] == 0 else "different"
        arrays[name] = row
        if progress is not None:
            progress(name)
    va, vb = ma.values, mb.values
    values = {k: ("same" if va[k]["value"] == vb[k]["value"] else
                  {"a": va[k]["value"], "b": vb[k]["value"]})
              for k in sorted(set(va) & set(vb))}
    statuses = [r["status"] for r in arrays.values()]
    return {
        "a": {"path": shown(path_a), "run": ma.run, "step": ma.step,
              "digest": ma.document.get("digest")},
        "b": {"path": shown(path_b), "run": mb.run, "step": mb.step,
              "digest": mb.document.get("digest")},
        "summary": {"identical": statuses.count("identical"),
                    "equal_values": statuses.count("equal values"),
                    "different": statuses.count("different"),
                    "shape_differs": statuses.count("shape differs"),
                    "only_in_a": len(names_a - names_b), "only_in_b": len(names_b - names_a),
                    "values_different": sum(v != "same" for v in values.values())},
        "only_in_a": sorted(names_a - names_b), "only_in_b": sorted(names_b - names_a),
        "arrays": arrays, "values": values,
    }
