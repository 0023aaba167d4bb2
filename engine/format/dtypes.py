"""Element types: their names in the format and their byte representation on disk.

Zarr v3 has no bfloat16 or float8 core data type (and zarr-python 3.1 cannot read a
``bfloat16`` array), so those are stored as unsigned integers of the same width holding the
bit patterns, with the true type in the array's attributes (``tierpoint.dtype``). A stock
reader gets the values with one view, e.g. ``arr[...].view(ml_dtypes.bfloat16)`` or
``torch.from_numpy(arr[...]).view(torch.bfloat16)``.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedStateError

# format name -> numpy dtype of the stored bits (little-endian on disk)
_STORAGE = {
    "bool": np.dtype(np.bool_),
    "int8": np.dtype(np.int8), "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32), "int64": np.dtype(np.int64),
    "uint8": np.dtype(np.uint8), "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32), "uint64": np.dtype(np.uint64),
    "float16": np.dtype(np.float16), "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "complex64": np.dtype(np.complex64), "complex128": np.dtype(np.complex128),
    # stored as bit patterns (no Zarr v3 core type)
    "bfloat16": np.dtype(np.uint16),
    "float8_e4m3fn": np.dtype(np.uint8), "float8_e5m2": np.dtype(np.uint8),
}
BIT_PATTERN_TYPES = frozenset({"bfloat16", "float8_e4m3fn", "float8_e5m2"})
SUPPORTED = frozenset(_STORAGE)
_BOOL_NAMES = {"bool": "bool"}


def storage_dtype(name: str) -> np.dtype:
    """The numpy dtype of the bytes stored for format type ``name``."""
    try:
        return _STORAGE[name]
    except KeyError:
        raise UnsupportedStateError(f"unknown element type {name!r}") from None


def zarr_data_type(name: str) -> str:
    """The Zarr v3 ``data_type`` written in zarr.json for format type ``name``."""
    return storage_dtype(name).name


def itemsize(name: str) -> int:
    return storage_dtype(name).itemsize


def name_of(dtype) -> str:
    """Format name of a torch or numpy dtype; UnsupportedStateError for anything else."""
    text = str(dtype)
    if text.startswith("torch."):
        text = text[len("torch."):]
    text = _BOOL_NAMES.get(text, text)
    if text in _STORAGE:
        return text
    raise UnsupportedStateError(
        f"element type {dtype} cannot be stored; supported: {', '.join(sorted(_STORAGE))}")


def torch_dtype(name: str):
    import torch
    return getattr(torch, name)


def tensor_bits(tensor) -> np.ndarray:
    """A numpy view (no copy) of a CPU torch tensor's elements as their stored bit type.

    Strides are kept, so a non-contiguous tensor gives a non-contiguous view.
    """
    import torch
    name = name_of(tensor.dtype)
    if name in BIT_PATTERN_TYPES:
        width = {2: torch.int16, 1: torch.int8}[tensor.element_size()]
        return tensor.view(width).numpy().view(storage_dtype(name))
    return tensor.numpy()
