"""Inspect and compare committed checkpoints: ``info`` and ``diff``, for the command line and
for notebooks (``from tierpoint.trust.inspect import info, diff``). Both take step directories of
either tier and return plain JSON-able dicts.

``diff`` decides "identical" from the arrays' fingerprints (same dtype, shape and
fingerprint) without reading data; other arrays of the same shape are read whole, one at a
time, and compared numerically (max absolute difference, relative L2 change).
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..format import dtypes
from ..format import layout
from ..restore.read import read_array
from ..restore.reshard import plan_box_read
from ..format.types import Box


def info(path: str) -> dict:
    """What a checkpoint holds: arrays (shape, dtype, chunking, fingerprint, save layout),
    JSON values, lineage, metadata and where it was written."""
    m = layout.load_manifest(path)
    arrays = {}
    for name, a in sorted(m["arrays"].items()):
        arrays[name] = {
            "shape": a["shape"], "dtype": a["dtype"], "chunk_shape": a["chunk_shape"],
            "chunks": len(a["chunks"]), "fingerprint": a.get("fingerprint"),
            "bytes": math.prod(a["shape"]) * dtypes.itemsize(a["dtype"]),
            "shards": len(a.get("shards", [])),
        }
    ranks = m.get("layout", {}).get("ranks", [])
    return {
        "path": os.path.abspath(path), "run": m["run"], "step": m["step"], "time": m.get("time"),
        "digest": m.get("digest"), "tier": m.get("tier", {}).get("kind", "local"),
        "world_size": m.get("world_size"), "nodes": sorted({r.get("node") for r in ranks}),
        "hosts": m.get("lineage", {}).get("hosts", []), "versions": m.get("versions", {}),
        "lineage": m.get("lineage", {}), "metadata": m.get("metadata", {}),
        "values": {k: v["value"] for k, v in sorted(m.get("values", {}).items())},
        "arrays": arrays, "bytes": sum(a["bytes"] for a in arrays.values()),
    }


def read_whole(path: str, manifest: dict, name: str) -> np.ndarray:
    """An array of a checkpoint, whole, as its stored bits (local or drained copy)."""
    entry = manifest["arrays"][name]
    capacity = None
    local = path
    if manifest.get("tier", {}).get("kind") == "capacity":
        from ..tiers.drain import CapacityReader
        capacity, local = CapacityReader(path), None
    shape = tuple(entry["shape"])
    target = np.empty(shape, dtype=dtypes.storage_dtype(entry["dtype"]))
    items = plan_box_read(name, shape, tuple(entry["chunk_shape"]), Box.whole(shape))
    read_array(local, entry, items, target, threads=4, where=path, capacity=capacity)
    return target


def as_float(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Stored bits as float64 values (bfloat16 and float8 through torch)."""
    if dtype in dtypes.BIT_PATTERN_TYPES:
        import torch
        t = torch.from_numpy(np.ascontiguousarray(bits).view(f"i{bits.dtype.itemsize}"))
        return t.view(dtypes.torch_dtype(dtype)).to(torch.float64).numpy()
    if np.iscomplexobj(bits):
        return bits
    return bits.astype(np.float64)


def _compare(a: np.ndarray, b: np.ndarray) -> dict:
    diff = np.abs(a - b)
    norm = float(np.linalg.norm(a.ravel()))
    change = float(np.linalg.norm((a - b).ravel()))
    with np.errstate(invalid="ignore"):
        max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    return {"max_abs_diff": max_abs,
            "rel_l2_change": change / norm if norm else (0.0 if change == 0 else math.inf),
            "elements_differing": int(np.count_nonzero(a != b))}


def diff(path_a: str, path_b: str, *, progress=None) -> dict:
    """Compare two checkpoints (any runs, tiers and save layouts) array by array."""
    ma, mb = layout.load_manifest(path_a), layout.load_manifest(path_b)
    names_a, names_b = set(ma["arrays"]), set(mb["arrays"])
    arrays = {}
    for name in sorted(names_a & names_b):
        ea, eb = ma["arrays"][name], mb["arrays"][name]
        row = {"dtype": [ea["dtype"], eb["dtype"]], "shape": [ea["shape"], eb["shape"]]}
        if ea["shape"] != eb["shape"]:
            row["status"] = "shape differs"
        elif ea["dtype"] == eb["dtype"] and ea.get("fingerprint") and \
                ea.get("fingerprint") == eb.get("fingerprint"):
            row["status"] = "identical"  # by fingerprint: no data read
        else:
            va = as_float(read_whole(path_a, ma, name), ea["dtype"])
            vb = as_float(read_whole(path_b, mb, name), eb["dtype"])
            row.update(_compare(va, vb))
            row["status"] = "equal values" if row["elements_differing"] == 0 else "different"
        arrays[name] = row
        if progress is not None:
            progress(name)
    va, vb = ma.get("values", {}), mb.get("values", {})
    values = {k: ("same" if va[k]["value"] == vb[k]["value"] else
                  {"a": va[k]["value"], "b": vb[k]["value"]})
              for k in sorted(set(va) & set(vb))}
    statuses = [r["status"] for r in arrays.values()]
    return {
        "a": {"path": os.path.abspath(path_a), "run": ma["run"], "step": ma["step"],
              "digest": ma.get("digest")},
        "b": {"path": os.path.abspath(path_b), "run": mb["run"], "step": mb["step"],
              "digest": mb.get("digest")},
        "summary": {"identical": statuses.count("identical"),
                    "equal_values": statuses.count("equal values"),
                    "different": statuses.count("different"),
                    "shape_differs": statuses.count("shape differs"),
                    "only_in_a": len(names_a - names_b), "only_in_b": len(names_b - names_a),
                    "values_different": sum(v != "same" for v in values.values())},
        "only_in_a": sorted(names_a - names_b), "only_in_b": sorted(names_b - names_a),
        "arrays": arrays, "values": values,
    }
