"""State dicts as trainers hand them over: flatten into named array leaves and JSON values,
and rebuild the returned state on restore.

Leaves:
- ``torch.Tensor`` / ``numpy.ndarray`` / numpy scalar: replicated (identical on every rank);
- ``DTensor``: its local shard at the offset its placements give (Shard/Replicate);
- :class:`Shard`: an explicit box of a global array;
- JSON values (None, bool, int, float, str, and lists/dicts of them), kept in the manifest.

A dict or list with no array anywhere inside is one JSON value; otherwise it is walked and
its entries become separate leaves. Keys are tuples of dict keys (str or int) and list indices.
"""
from __future__ import annotations

import sys

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from .format import dtypes
from .errors import UnsupportedStateError
from .format.layout import array_path
from .format.placement import infer_grid, mesh_grid, piece_box
from .format.types import Box, LocalArray


class Shard:
    """This rank's box of a global array: ``data`` holds elements ``[offset, offset+shape)``.

    ``replicated=True`` declares that other ranks hold identical copies of the same box
    (any one of them writes it); by default two ranks claiming one box is an error.
    """

    __slots__ = ("data", "global_shape", "offset", "replicated")

    def __init__(self, data, global_shape, offset, *, replicated: bool = False):
        self.data = data
        self.global_shape = tuple(int(s) for s in global_shape)
        self.offset = tuple(int(o) for o in offset)
        self.replicated = bool(replicated)
        if len(self.offset) != len(self.global_shape) or len(tuple(data.shape)) != len(self.offset):
            raise UnsupportedStateError(
                f"Shard: data shape {tuple(data.shape)}, global_shape {self.global_shape} and "
                f"offset {self.offset} must have the same number of dimensions")

    @property
    def box(self) -> Box:
        return Box(self.offset, tuple(int(s) for s in self.data.shape))

    def __repr__(self) -> str:
        return (f"Shard(shape={tuple(self.data.shape)}, global_shape={self.global_shape}, "
                f"offset={self.offset})")


@dataclass
class ArrayLeaf:
    """One array leaf of this rank: where it sits in the state and which box it holds."""

    key: tuple
    name: str
    dtype: str
    global_shape: tuple[int, ...]
    box: Box
    replicated: bool
    obj: Any  # the tensor/array holding the box's elements (the DTensor's local tensor)
    # (parts, cell) when ``box`` is one cell of a torch.chunk grid (format/placement.py):
    # then piece_box(global_shape, parts, cell) == box (for an empty box: is empty too).
    grid: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def declaration(self) -> LocalArray:
        return LocalArray(self.name, self.dtype, self.global_shape, self.box, self.replicated)


@dataclass
class ValueLeaf:
    key: tuple
    name: str
    value: Any


def _is_dtensor(x) -> bool:
    if "torch" not in sys.modules:  # nothing can be a tensor then; importing it costs seconds
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, DTensor)


def _is_tensor(x) -> bool:
    if "torch" not in sys.modules:
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, torch.Tensor)


def is_array_leaf(x) -> bool:
    return isinstance(x, (Shard, np.ndarray, np.generic)) or _is_tensor(x)


def _contains_array(x) -> bool:
    if is_array_leaf(x):
        return True
    if isinstance(x, dict):
        return any(_contains_array(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(_contains_array(v) for v in x)
    return False


def walk(state, prefix: tuple = ()) -> Iterator[tuple[tuple, Any, bool]]:
    """(key, leaf, is_array) for every leaf of a state, in a deterministic order."""
    if is_array_leaf(state):
        yield prefix, state, True
    elif isinstance(state, dict) and _contains_array(state):
        for k, v in state.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise UnsupportedStateError(
                    f"state key {k!r} under {'/'.join(map(str, prefix)) or '<root>'} is a "
                    f"{type(k).__name__}; keys must be str or int")
            yield from walk(v, prefix + (k,))
    elif isinstance(state, (list, tuple)) and _contains_array(state):
        for i, v in enumerate(state):
            yield from walk(v, prefix + (i,))
    else:
        check_json(state, prefix)
        yield prefix, state, False


def check_json(value, key: tuple) -> None:
    """Raise UnsupportedStateError unless ``value`` is plain JSON (string keys only)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_json(v, key + (i,))
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise UnsupportedStateError(
                    f"state entry {'/'.join(map(str, key)) or '<root>'}: JSON values need "
                    f"string dict keys, found {k!r}")
            check_json(v, key + (k,))
        return
    raise UnsupportedStateError(
        f"state entry {'/'.join(map(str, key)) or '<root>'} is a {type(value).__module__}."
        f"{type(value).__name__}; tierpoint stores tensors, arrays, tierpoint.Shard and JSON "
        "values (JSON, so loading never runs code)")


def leaf_name(key: tuple) -> str:
    if not key:
        raise UnsupportedStateError("the state itself must be a dict or list, not a single leaf")
    return array_path(key)


def describe_array(key: tuple, leaf) -> ArrayLeaf:
    """The box this rank holds of an array leaf, and the object holding its elements."""
    name = leaf_name(key)
    if isinstance(leaf, Shard):
        return ArrayLeaf(key, name, dtypes.name_of(leaf.data.dtype), leaf.global_shape,
                         leaf.box, leaf.replicated, leaf.data,
                         infer_grid(leaf.global_shape, leaf.box))
    if _is_dtensor(leaf):
        return _describe_dtensor(key, name, leaf)
    shape = tuple(int(s) for s in np.shape(leaf))
    whole = ((1,) * len(shape), (0,) * len(shape))
    return ArrayLeaf(key, name, dtypes.name_of(leaf.dtype), shape, Box.whole(shape), True, leaf,
                     whole)


def _describe_dtensor(key, name, dt) -> ArrayLeaf:
    from torch.distributed.tensor import Replicate, Shard as TShard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    for p in dt.placements:
        if not isinstance(p, (Replicate, TShard)):
            raise UnsupportedStateError(
                f"array {name!r}: DTensor placement {p} is not supported; redistribute to "
                "Shard/Replicate placements (e.g. reduce Partial) before saving")
    shape = tuple(int(s) for s in dt.shape)
    local_shape, offset = compute_local_shape_and_global_offset(dt.shape, dt.device_mesh,
                                                                dt.placements)
    local = dt.to_local()
    if tuple(local.shape) != tuple(local_shape):
        raise UnsupportedStateError(
            f"array {name!r}: DTensor local shard has shape {tuple(local.shape)} but its "
            f"placements imply {tuple(local_shape)}")
    replicated = any(isinstance(p, Replicate) for p in dt.placements)
    box = Box(tuple(int(o) for o in offset), tuple(int(s) for s in local_shape))
    return ArrayLeaf(key, name, dtypes.name_of(dt.dtype), shape, box, replicated, local,
                     _dtensor_grid(dt, shape, box))


def _dtensor_grid(dt, shape, box: Box):
    """The DTensor's cell in the grid its Shard placements make, or None where its box is not
    that cell (uneven nested sharding, strided shards) or this rank is outside the mesh."""
    from torch.distributed.tensor import Shard as TShard
    coordinate = dt.device_mesh.get_coordinate()
    if coordinate is None:
        return None
    dims = [p.dim % max(len(shape), 1) if isinstance(p, TShard) else None for p in dt.placements]
    grid = mesh_grid(len(shape), tuple(dt.device_mesh.shape), coordinate, dims)
    return grid if grid_matches(shape, grid, box) else None


def grid_matches(shape, grid, box: Box) -> bool:
    """``grid`` describes ``box``: the same box, or both empty (empty shards' offsets vary)."""
    cell = piece_box(shape, *grid)
    return cell == box or (box.volume == 0 and cell.volume == 0 and len(shape) > 0)


def flatten(state) -> tuple[list[ArrayLeaf], list[ValueLeaf]]:
    if not isinstance(state, (dict, list, tuple)):
        raise UnsupportedStateError(f"state must be a dict (or list), got {type(state).__name__}")
    arrays, values = [], []
    seen: dict[str, tuple] = {}
    for key, leaf, is_array in walk(state):
        name = leaf_name(key)
        if name in seen:
            raise UnsupportedStateError(
                f"state keys {seen[name]!r} and {key!r} map to the same name {name!r}")
        seen[name] = key
        if is_array:
            arrays.append(describe_array(key, leaf))
        else:
            values.append(ValueLeaf(key, name, leaf))
    return arrays, values


def host_bits(obj) -> np.ndarray:
    """The elements of a tensor/array on the host, as their stored bit type (a view when the
    data already lives in host memory; a copy from a device otherwise)."""
    if isinstance(obj, np.generic):
        obj = np.asarray(obj)
    if isinstance(obj, np.ndarray):
        name = dtypes.name_of(obj.dtype)
        return obj.view(dtypes.storage_dtype(name)) if name in dtypes.BIT_PATTERN_TYPES else obj
    t = obj.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return dtypes.tensor_bits(t)


def rebuild(template, values: dict[str, Any], replaced: dict[str, Any], prefix: tuple = ()):
    """The returned state: the template's containers, its tensors (filled in place), the
    saved JSON values, and ``replaced`` leaves (immutable scalars read anew)."""
    if is_array_leaf(template):
        return replaced.get(leaf_name(prefix), template) if prefix else template
    if isinstance(template, dict) and _contains_array(template):
        return {k: rebuild(v, values, replaced, prefix + (k,)) for k, v in template.items()}
    if isinstance(template, (list, tuple)) and _contains_array(template):
        items = [rebuild(v, values, replaced, prefix + (i,)) for i, v in enumerate(template)]
        if isinstance(template, tuple):
            return type(template)(*items) if hasattr(template, "_fields") else tuple(items)
        return items
    name = leaf_name(prefix) if prefix else None
    if name is not None and name in values:
        return _like(template, values[name])
    return template


def _like(template, saved):
    """Saved JSON in the template's container types (tuples stay tuples)."""
    if isinstance(template, tuple) and isinstance(saved, list) and len(template) == len(saved):
        return tuple(_like(t, s) for t, s in zip(template, saved))
    if isinstance(template, list) and isinstance(saved, list) and len(template) == len(saved):
        return [_like(t, s) for t, s in zip(template, saved)]
    if isinstance(template, dict) and isinstance(saved, dict):
        return {k: _like(template.get(k), v) for k, v in saved.items()}
    return saved
