"""The structural checks of a manifest document, both versions, so that no field is used
before it is checked: paths stay inside the checkpoint, shapes are sane sizes (a
10**18-element claim is an error, not an allocation), chunk keys lie in their grid, records
have their types; a version 2 header's layouts, groups and slice entries are well formed.
Pure; called by format/layout.py (``manifest_problems``) on every manifest it reads.
"""
from __future__ import annotations

import re

from . import chunkhash, dtypes
from .placement import piece_box

MAX_ELEMENTS = 1 << 48  # an array claiming more is damage or an attack, not a tensor
_HEX = re.compile(r"^[0-9a-f]+$")
_CHUNK_KEY = re.compile(r"^c(\.[0-9]+)*$")


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _array_problems(name: str, a, version: int = 1) -> list[str]:
    """What is wrong with one array record (checked before any of it is used)."""
    if not isinstance(a, dict):
        return [f"array {name!r}: not a record"]
    path, shape, chunk = a.get("path"), a.get("shape"), a.get("chunk_shape")
    if not isinstance(path, str) or not path or path.startswith("/") or \
            any(p in ("", ".", "..") for p in path.split("/")):
        return [f"array {name!r}: path {path!r} would leave the checkpoint directory"]
    if a.get("dtype") not in dtypes.SUPPORTED:
        return [f"array {name!r}: unknown dtype {a.get('dtype')!r}"]
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        return [f"array {name!r}: shape {shape!r} is not a list of sizes"]
    if not isinstance(chunk, list) or len(chunk) != len(shape) or \
            not all(_is_count(n) and n > 0 for n in chunk):
        return [f"array {name!r}: chunk shape {chunk!r} does not fit shape {shape}"]
    elements = 1
    for n in shape:
        elements *= n
    if elements > MAX_ELEMENTS:
        return [f"array {name!r}: shape {shape} claims {elements} elements (limit "
                f"{MAX_ELEMENTS}); the manifest is damaged"]
    if version >= 2:
        return []  # no chunk table: the slices hold the records (format/slices.py)
    chunks = a.get("chunks")
    if not isinstance(chunks, dict):
        return [f"array {name!r}: no chunk table"]
    problems = []
    grid = [-(-s // c) for s, c in zip(shape, chunk)]
    for key, rec in chunks.items():
        index = key.split(".")[1:] if isinstance(key, str) and _CHUNK_KEY.match(key) else None
        if index is None or len(index) != len(shape) or \
                any(int(i) >= g for i, g in zip(index, grid)):
            problems.append(f"array {name!r}: chunk key {key!r} is not in its chunk grid")
        elif not isinstance(rec, dict) or not _is_count(rec.get("nbytes")) or \
                not _is_count(rec.get("crc32c")) or \
                not all(_is_count(w) for w in rec.get("writers", [])):
            problems.append(f"array {name!r}: chunk {key}: malformed record")
        elif any(f in rec and not chunkhash.well_formed(rec[f])
                 for f in (chunkhash.KEY, chunkhash.LEGACY_KEY)):
            problems.append(f"array {name!r}: chunk {key}: its hash is not 64 hex digits "
                            "(bare SHA-256, or blake3:<hex>)")
        elif "fingerprint" in rec and not (isinstance(rec["fingerprint"], str) and
                                           _HEX.match(rec["fingerprint"])):
            problems.append(f"array {name!r}: chunk {key}: fingerprint not hex")
    return problems


def manifest_problems(manifest: dict) -> list[str]:
    """Every structural problem of a manifest, so no field is used before it is checked:
    paths stay inside the checkpoint, shapes are sane sizes (a 10**18-element claim is an
    error, not an allocation), chunk keys lie in their grid, records have their types."""
    arrays = manifest.get("arrays")
    if not isinstance(arrays, dict):
        return ["no 'arrays' table"]
    version = manifest.get("format_version", 1)
    problems = []
    for name, a in arrays.items():
        problems += _array_problems(name, a, version)
    if not isinstance(manifest.get("values", {}), dict):
        problems.append("'values' is not a table")
    if version >= 2 and not problems:
        problems += header_problems(manifest)
    return problems



_HASH = re.compile(r"^[0-9a-f]{64}$")


def _layout_problems(name: str, a: dict, groups: list, world: int,
                     shared_cells: list = ()) -> list[str]:
    layout, ndim = a.get("layout"), len(a.get("shape", ()))
    if not isinstance(layout, dict):
        return [f"array {name!r}: no layout"]
    if "grid" in layout:
        parts, g = layout.get("grid"), layout.get("group")
        if not isinstance(parts, list) or len(parts) != ndim or \
                not all(_is_count(p) and p > 0 for p in parts):
            return [f"array {name!r}: grid {parts!r} does not fit its shape"]
        if not _is_count(g) or g >= len(groups):
            return [f"array {name!r}: group {g!r} is not in the header's groups"]
        if list(groups[g].get("parts", ())) != parts:
            return [f"array {name!r}: grid {parts} differs from its group's parts"]
        # A cell several ranks hold must be replicated, or empty in this array (an array
        # with fewer rows than ranks leaves trailing cells empty, and a (0, n) array has
        # nothing to write: every rank may "hold" its one empty cell).
        for cell in shared_cells[g] if g < len(shared_cells) else ():
            if _volume_of_cell(a.get("shape"), parts, cell):
                return [f"array {name!r}: cell {list(cell)} of its grid has two holders "
                        "but the array is not replicated"]
        return []
    shards = layout.get("shards")
    if not isinstance(shards, list):
        return [f"array {name!r}: layout has neither 'grid' nor 'shards'"]
    for s in shards:
        if not isinstance(s, dict) or not all(
                isinstance(s.get(f), list) and len(s[f]) == ndim and all(map(_is_count, s[f]))
                for f in ("offset", "shape")) or not isinstance(s.get("ranks"), list) or \
                not s["ranks"] or not all(_is_count(r) and r < world for r in s["ranks"]):
            return [f"array {name!r}: malformed shard {s!r}"]
    return []


def _group_problems(g: int, group, world: int) -> list[str]:
    if not isinstance(group, dict) or not isinstance(group.get("parts"), list) or \
            not all(_is_count(p) and p > 0 for p in group["parts"]) or \
            not isinstance(group.get("replicated"), bool) or \
            not isinstance(group.get("cells"), list) or len(group["cells"]) != world:
        return [f"group {g}: malformed (parts, replicated, one cell per saving rank)"]
    seen: set = set()
    for rank, cell in enumerate(group["cells"]):
        if cell is None:
            continue
        if not isinstance(cell, list) or len(cell) != len(group["parts"]) or \
                not all(_is_count(c) and c < p for c, p in zip(cell, group["parts"])):
            return [f"group {g}: rank {rank}'s cell {cell!r} is not in the grid"]
        seen.add(tuple(cell))
    return []


def _volume_of_cell(shape, parts, cell) -> int:
    try:
        return piece_box(shape, parts, cell).volume
    except (TypeError, ValueError):
        return 1  # a malformed shape: its own check names it; count the cell as held twice


def _shared_cells(groups: list) -> list[set]:
    """Per group that is not replicated, the cells more than one rank holds (once per
    group: the arrays of a group then check only these)."""
    out = []
    for group in groups:
        seen: set = set()
        twice: set = set()
        if not group["replicated"]:
            for cell in group["cells"]:
                if cell is not None:
                    (twice if tuple(cell) in seen else seen).add(tuple(cell))
        out.append(twice)
    return out


def header_problems(d: dict) -> list[str]:
    """What is wrong with a version 2 header beyond its arrays' common fields: layouts,
    groups and slice entries."""
    world = d.get("world_size")
    if not _is_count(world) or world < 1:
        return [f"world_size {world!r} is not a count of ranks"]
    groups = d.get("groups", [])
    if not isinstance(groups, list):
        return ["'groups' is not a list"]
    problems = [p for g, group in enumerate(groups) for p in _group_problems(g, group, world)]
    shared = _shared_cells(groups) if not problems else []
    for name, a in d.get("arrays", {}).items():
        problems += _layout_problems(name, a, groups if not problems else [], world, shared)
        if "chunks" in a:
            problems.append(f"array {name!r}: a version 2 header has no chunk table")
        if "fingerprint" in a and not (isinstance(a["fingerprint"], str) and
                                       _HEX.match(a["fingerprint"])):
            problems.append(f"array {name!r}: fingerprint is not hex")
    entries = d.get("slices")
    if not isinstance(entries, dict):
        return problems + ["'slices' is not a table"]
    for rank, e in entries.items():
        if not (isinstance(rank, str) and rank.isdigit() and int(rank) < world):
            problems.append(f"slice {rank!r}: not a saving rank (world size {world})")
        elif not isinstance(e, dict) or not all(
                isinstance(e.get(f), str) and _HASH.match(e[f]) for f in ("sha256", "root")) \
                or not _is_count(e.get("chunks")) or not _is_count(e.get("bytes")) or (
                "proof" in e and not (isinstance(e["proof"], list) and
                                      all(isinstance(h, str) and _HASH.match(h)
                                          for h in e["proof"]))):
            problems.append(f"slice of rank {rank}: malformed entry")
    return problems


