"""Stored bits as values: numpy (bfloat16 and float8 through ``ml_dtypes``) or torch.

A checkpoint stores bfloat16 and float8 arrays as unsigned integers of the same width
holding the bit patterns (format/dtypes.py). Every conversion here is a view of the same
bytes (no rounding, no copy where the layout allows), so what a reader gets is bit for bit
what was saved; ``as_float64`` is the one exception, for comparisons (``diff``).
"""
from __future__ import annotations

import numpy as np

from ..format import dtypes

# Bit patterns go to torch as signed integers of their width (what torch views as bfloat16
# and float8 on every release this supports), then are viewed as the saved type there.
_SIGNED = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of format type ``name``'s values (``ml_dtypes`` for bfloat16/float8)."""
    if name in dtypes.BIT_PATTERN_TYPES:
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, name))
    return dtypes.storage_dtype(name)


def as_numpy(bits: np.ndarray, name: str) -> np.ndarray:
    """The values of stored ``bits`` of format type ``name`` (a view of the same bytes)."""
    if name in dtypes.BIT_PATTERN_TYPES:
        return bits.view(numpy_dtype(name))
    return bits


def as_torch(bits: np.ndarray, name: str):
    """The values of stored ``bits`` as a CPU torch tensor sharing their memory."""
    import torch
    bits = np.ascontiguousarray(bits) if bits.ndim else bits.reshape(())
    if name in dtypes.BIT_PATTERN_TYPES:
        signed = torch.from_numpy(bits.view(_SIGNED[bits.dtype.itemsize]))
        return signed.view(dtypes.torch_dtype(name))
    return torch.from_numpy(bits)


def as_float64(bits: np.ndarray, name: str) -> np.ndarray:
    """Stored bits as float64 values (complex arrays as they are), for comparisons."""
    values = as_numpy(bits, name)
    if np.iscomplexobj(values):
        return values
    return values.astype(np.float64)
