"""Inspect and compare committed checkpoints: ``info`` and ``diff``, for the command line and
for notebooks (``from tierpoint.trust.inspect import info, diff``). Both take step directories of
either tier, opened through tiers/registry.py, and return plain JSON-able dicts.

``diff`` decides "identical" from the arrays' fingerprints (same dtype, shape and
fingerprint) without reading data; other arrays of the same shape are read whole, one at a
time, and compared numerically (max absolute difference, relative L2 change).
"""
from __future__ import annotations

import math

import numpy as np

from ..format import dtypes
from ..format.types import Box
from ..options import Options
from ..restore.read import read_array
from ..restore.reshard import plan_box_read
from ..tiers.base import StepCopy
from ..tiers.registry import kind_of, open_copy, read_header, shown

# Reader threads of read_whole (a diff reads one array at a time): the io_threads setting.
READ_THREADS = Options().io_threads


def info(path: str, *, fingerprints: bool = True) -> dict:
    """What a checkpoint holds: arrays (shape, dtype, chunking, chunk count, bytes,
    fingerprint, save layout), JSON values, lineage, metadata and where it was written.

    Everything but the fingerprints is read from the manifest (the header of a version 2
    checkpoint: chunk counts come from the grid, bytes from shape x itemsize). A version 2
    array's fingerprint is the sum over all its chunks' records, so it is shown where the
    copy holds every manifest slice (a drained copy, or one node's copy of a one-node save),
    read through the copy's tier; elsewhere it is None and ``fingerprints_unavailable`` says
    why. ``fingerprints=False`` reads the header alone."""
    m = read_header(path)  # checked against its marker; no tier opened yet
    note = None
    if m.sliced:
        full = None
        if fingerprints and sorted(m.slices) == list(range(m.world_size)):
            full = open_copy(path).manifest  # every slice, checked
        elif fingerprints:
            copy = open_copy(path, ranks=())
            if len(copy.slice_ranks()) == m.world_size:  # other nodes' copies gathered here
                full = copy.with_slices().manifest
        if full is not None:
            m = full
        else:
            held = sorted(m.slices)
            note = ("not asked for" if not fingerprints else
                    f"this copy holds the manifest slices of saving ranks {_ranges(held)} "
                    f"only (of {m.world_size}): an array's fingerprint sums every chunk's; "
                    "run info on the capacity copy, or on a directory holding every node's "
                    "copy")
    arrays = {}
    for name, a in sorted(m.arrays.items()):
        arrays[name] = {
            "shape": list(a.shape), "dtype": a.dtype, "chunk_shape": list(a.chunk_shape),
            # format version 4: the inner chunks of its sub-chunked chunk files (None: plain)
            "inner_chunk_shape": list(a.inner_shape) if a.inner_shape else None,
            "chunks": a.chunk_count if m.sliced else len(a.chunks),
            "fingerprint": a.fingerprint or None,
            "bytes": math.prod(a.shape) * dtypes.itemsize(a.dtype),
            "shards": _shard_count(m, a),
        }
    out = {
        "path": shown(path), "run": m.run, "step": m.step,
        "time": m.document.get("time"), "digest": m.document.get("digest"),
        "tier": kind_of(m), "world_size": m.document.get("world_size"),
        "format_version": m.format_version,
        "nodes": sorted({r.node for r in m.ranks}),
        "hosts": m.lineage.get("hosts", []), "versions": m.versions,
        "lineage": m.lineage, "metadata": m.metadata,
        "values": {k: v["value"] for k, v in sorted(m.values.items())},
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


def _ranges(ranks: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5`` (a node's ranks are usually a run)."""
    out, start = [], None
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            out.append(f"{start}" if start == r else f"{start}-{r}")
            start = None
    return ", ".join(out) or "none"


def read_whole(copy: StepCopy, name: str, *, threads: int = READ_THREADS) -> np.ndarray:
    """An array of a checkpoint copy (any tier), whole, as its stored bits."""
    array = copy.manifest.arrays[name]
    target = np.empty(array.shape, dtype=dtypes.storage_dtype(array.dtype))
    items = plan_box_read(name, array.shape, array.chunk_shape, Box.whole(array.shape))
    read_array([copy], array, items, target, threads=threads)
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
    ca, cb = open_copy(path_a), open_copy(path_b)
    ma, mb = ca.manifest, cb.manifest
    names_a, names_b = set(ma.arrays), set(mb.arrays)
    arrays = {}
    for name in sorted(names_a & names_b):
        ea, eb = ma.arrays[name], mb.arrays[name]
        row = {"dtype": [ea.dtype, eb.dtype], "shape": [list(ea.shape), list(eb.shape)]}
        if ea.shape != eb.shape:
            row["status"] = "shape differs"
        elif ea.dtype == eb.dtype and ea.fingerprint and ea.fingerprint == eb.fingerprint:
            row["status"] = "identical"  # by fingerprint: no data read
        else:
            va = as_float(read_whole(ca, name), ea.dtype)
            vb = as_float(read_whole(cb, name), eb.dtype)
            row.update(_compare(va, vb))
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
