"""The one mapping between torch.distributed.checkpoint's flattened keys and tierpoint's
arrays: ``dcp_key``. Pure.

DCP flattens a state dict by its object paths (torch/distributed/checkpoint/_nested_dict.py
``flatten_state_dict``, over ``_traverse.traverse_state_dict``): a leaf's path is the tuple
of the dict keys (as ``str``) and list indices (as ``int``) leading to it, and its flattened
key is ``".".join(map(str, path))`` (``{"model": {"layers.0.w": t}}`` -> ``"model.layers.0.w"``;
``{"groups": [{"lr": x}]}`` -> ``"groups.0.lr"``). Tierpoint records for each array and JSON
value its state key, the same kind of tuple (``state.walk``: dict keys and list indices down
to the leaf), as the manifest record's ``key``, and stores it at ``format.layout.array_path``
of that key (each component escaped, joined by ``/``: ``"model/layers.0.w"``). So:

- loading through DCP (``StorageReader``), an array or JSON value is offered under
  ``dcp_key(key, path)`` of what its manifest record holds: the dotted join of its state key,
  decoded from its path (``layout.key_of_path``, the exact inverse of ``array_path``) where no
  key is recorded. That is the key DCP's load planner flattens the same leaf of the template
  to, so DCP finds it.
- saving through DCP (``StorageWriter``), no mapping of tierpoint's is applied: the writer
  hands ``ckpt.save`` DCP's flattened entries put back at their object paths (the planner's
  ``mappings``, DCP's own ``unflatten_state_dict``, dicts for ``str`` components and lists for
  ``int`` ones). ``ckpt.save`` walks that state dict to each tensor by the same dict keys and
  list indices, so every saved array's recorded key is exactly DCP's object path of it, and
  ``dcp_key`` of the key is exactly DCP's flattened key (tests/test_dcp_keys.py checks it
  against ``flatten_state_dict``). The checkpoint is named as ``ckpt.save`` of the original
  state dict names it, and ``ckpt.restore`` finds every array.

Where the two traversals differ, DCP decides what a leaf is, and the difference stays inside
one JSON value: DCP keeps a tuple, and a list with no tensor or dict in it (outside tuples),
as one leaf (tierpoint stores it as a JSON list at the same path), and it flattens a dict or
list of plain values that tierpoint stores as one JSON value (``optim/param_groups``): the
reader flattens such a value with DCP's own ``flatten_state_dict`` under its ``dcp_key``
(``reader.flat_values``). A tuple of tensors (or a list of such tuples) is one DCP leaf,
which DCP would pickle: the writer refuses it (no pickle), make the tuples lists. A dict key
with a ``.`` makes DCP's keys ambiguous (``{"a.b": x}`` and ``{"a": {"b": x}}`` are both
``"a.b"``): DCP refuses such a state dict on save, the reader refuses such a checkpoint by
name, and ``dcp_key`` has no inverse (nothing needs one).
"""
from __future__ import annotations

from ..format.layout import key_of_path


def dcp_key(key=(), path: str = "") -> str:
    """The DCP flattened key of a saved array or JSON value, from what its manifest record
    holds: its state key ``key`` (a tuple of components, as recorded) or, where none is
    recorded, the state key its ``path`` (``layout.array_path`` of the key) decodes to.

    ``dcp_key(("model", "layers.0.w"))`` -> ``"model.layers.0.w"``;
    ``dcp_key((), "optim/state/a%2Fb/exp_avg")`` -> ``"optim.state.a/b.exp_avg"``.
    A list index may be recorded as an int or decoded as its digits: both join the same.
    """
    if not key:
        try:
            key = key_of_path(path)
        except ValueError as e:
            raise ValueError(
                f"tierpoint.dcp: array {path!r} records no state key and its path does not "
                f"give it ({e}); load it with ckpt.restore, which finds arrays by the "
                "template's paths") from None
    return ".".join(str(c) for c in key)
