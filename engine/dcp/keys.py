"""The one mapping between torch.distributed.checkpoint's flattened keys and tierpoint's
array names. Pure.

DCP flattens a state dict by joining each leaf's object path with dots
(``{"model": {"layers.0.w": t}}`` -> ``"model.layers.0.w"``; list indices as their digits);
tierpoint names a leaf by the same object path, each component escaped and joined with ``/``
(``format.layout.array_path``: ``"model/layers.0.w"``), and records the path itself as the
array's ``key``. So:

- saving through DCP, the writer puts DCP's flattened entries back at their object paths (the
  planner's ``mappings``) and saves that state dict: the checkpoint is named exactly as
  ``ckpt.save`` of the same state dict would name it, and ``ckpt.restore`` of it finds every
  array;
- loading through DCP, an array saved under key ``key`` is offered to DCP as
  ``dcp_key(key)``, the dotted join DCP computes for the same state dict on load.
"""
from __future__ import annotations


def dcp_key(key) -> str:
    """The DCP flattened key of the tierpoint state key ``key`` (a tuple of components, as
    the manifest records it): ``("model", "layers.0.w")`` -> ``"model.layers.0.w"``."""
    return ".".join(str(c) for c in key)
