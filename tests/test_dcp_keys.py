"""The one key mapping of tierpoint.dcp (``dcp_key``), in one process, no process group.

A saved array's recorded state key and its path (``layout.array_path`` of the key, decoded by
its exact inverse ``layout.key_of_path``) both map to the key DCP's own
``flatten_state_dict`` gives the same leaf, for dotted names, list indices and every
character ``array_path`` escapes; names DCP's dotted join cannot tell apart are refused
by name, and a tuple of tensors (one pickled leaf to DCP) is refused on save.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import tierpoint
from tierpoint.format import layout

pytest.importorskip("torch.distributed.checkpoint")
import tierpoint.dcp as tdcp  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint._nested_dict import flatten_state_dict  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402
from tierpoint.dcp.reader import flat_values  # noqa: E402

# Every rule of escape_component: "/", "%", " ", non-ASCII, a leading "." and "__", the
# empty component, "zarr.json"; and dots, which DCP's join keeps as they are.
ODD = ["a/b", "50%", "x y", "gewicht_ä", ".hidden", "..", "__x", "", "zarr.json"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=60), min_size=1, max_size=4))
def test_key_of_path_inverts_array_path(key):
    path = layout.array_path(tuple(key))
    if "~" in path:  # a component over 200 characters escaped, shortened: not invertible
        with pytest.raises(ValueError, match="shortened"):
            layout.key_of_path(path)
        return
    assert layout.key_of_path(path) == tuple(key)
    assert layout.array_path(layout.key_of_path(path)) == path


def test_key_of_path_decodes_each_escape_and_refuses_what_array_path_never_writes():
    for component in ODD + ["layers.0.w", "%2F", "~", "k" * 60]:
        assert layout.key_of_path(layout.array_path((component, "w"))) == (component, "w")
    assert layout.key_of_path(layout.array_path(("groups", 0, "lr"))) == ("groups", "0", "lr")
    for bad in ("a%2fb", "%%", "a b", "a//b", ".x", "__x", "zarr.json", "%C3"):
        with pytest.raises(ValueError, match="not an escaped key component"):
            layout.key_of_path(bad)
    with pytest.raises(ValueError, match="shortened"):  # its key is only in the manifest
        layout.key_of_path(layout.array_path(("k" * 300,)))
    with pytest.raises(ValueError, match="'x/k.*records no state key.*ckpt.restore"):
        tdcp.dcp_key((), layout.array_path(("x", "k" * 300)))


def nested_state() -> dict:
    t = lambda n: torch.arange(float(n))  # noqa: E731
    return {
        "model": {"layers.0.w": t(6), "layers.0.b": t(2), **{c: t(3) for c in ODD}},
        "optim": {"state": {"layers.0.w": {"exp_avg": t(6), "step": torch.tensor(2.0)}},
                  "param_groups": [{"lr": 0.1, "betas": [0.9, 0.95],
                                    "params": ["layers.0.w", "a/b"]}]},
        "blocks": [t(4), {"w.x": t(5), "n": 7}, [t(1), t(2)]],
        "train": {"step": 3, "name": "a/b.c"},
    }


def test_dcp_key_of_each_saved_record_is_dcps_own_flattened_key(tmp_path):
    state = nested_state()
    flat = flatten_state_dict(state)[0]
    tensors = {k for k, v in flat.items() if isinstance(v, torch.Tensor)}
    ck = tierpoint.Checkpointer(str(tmp_path), run="keys")
    dcp.save(state, storage_writer=tdcp.StorageWriter(ck, step=1), no_dist=True)
    manifest = layout.read_header(ck.step_dir(1))
    arrays = manifest.arrays.values()
    assert sorted(tdcp.dcp_key(a.key) for a in arrays) == sorted(tensors)
    for a in arrays:  # the path alone gives the same key (a record without one)
        assert a.path == layout.array_path(a.key)
        assert layout.key_of_path(a.path) == tuple(str(c) for c in a.key)
        assert tdcp.dcp_key((), a.path) == tdcp.dcp_key(a.key)
    assert flat_values(manifest.values) == {k: v for k, v in flat.items() if k not in tensors}
    no_keys = {n: {"value": v["value"]} for n, v in manifest.values.items()}
    assert flat_values(no_keys) == flat_values(manifest.values)
    # ... so DCP finds every leaf of a template of the same shape (zeros, other values).
    zero = lambda x: torch.zeros_like(x) if isinstance(x, torch.Tensor) else x  # noqa: E731
    target = _map(nested_state(), zero)
    target["train"]["step"], target["blocks"][1]["n"] = -1, -1
    dcp.load(target, storage_reader=tdcp.StorageReader(ck, step=1), no_dist=True)
    got = flatten_state_dict(target)[0]
    assert got.keys() == flat.keys()
    for k, v in flat.items():
        assert torch.equal(got[k], v) if k in tensors else got[k] == v, k
    ck.close()


def _map(state, f):
    if isinstance(state, dict):
        return {k: _map(v, f) for k, v in state.items()}
    if isinstance(state, list):
        return [_map(v, f) for v in state]
    return f(state)


def test_names_dcp_cannot_tell_apart_are_refused_by_name(tmp_path):
    ck = tierpoint.Checkpointer(str(tmp_path), run="clash")
    ck.save(1, {"a.b": torch.zeros(2), "a": {"b": torch.ones(2)}}, blocking=True)
    with pytest.raises(CheckpointException) as clash:
        dcp.load({"a.b": torch.zeros(2)}, storage_reader=tdcp.StorageReader(ck),
                 no_dist=True)
    assert "array 'a.b' and array 'a/b' both flatten to the DCP key 'a.b'" in \
        str(clash.value.failures)
    values = {"x.y": {"key": ["x.y"], "value": 1}, "x": {"key": ["x"], "value": {"y": 2}}}
    with pytest.raises(ValueError, match="JSON value 'x.y' and JSON value 'x' both flatten"):
        flat_values(values)
    ck.close()


def test_a_reader_loads_again(tmp_path):
    ck = tierpoint.Checkpointer(str(tmp_path), run="again")
    dcp.save({"w": torch.ones(3), "n": 1}, storage_writer=tdcp.StorageWriter(ck, step=1),
             no_dist=True)
    reader = tdcp.StorageReader(ck)
    for _ in range(2):
        target = {"w": torch.zeros(3), "n": 0}
        dcp.load(target, storage_reader=reader, no_dist=True)
        assert torch.equal(target["w"], torch.ones(3)) and target["n"] == 1
    ck.close()


def test_a_tuple_of_tensors_is_refused_on_save(tmp_path):
    ck = tierpoint.Checkpointer(str(tmp_path), run="tuple")
    with pytest.raises(CheckpointException) as refused:
        dcp.save({"pair": (torch.zeros(2), torch.ones(2))},
                 storage_writer=tdcp.StorageWriter(ck, step=1), no_dist=True)
    assert "state entry pair" in str(refused.value.failures)
    assert "make the tuples lists" in str(refused.value.failures)
    with pytest.raises(CheckpointException) as refused:  # a list of them is one leaf too
        dcp.save({"pairs": [(torch.zeros(2), torch.ones(2))]},
                 storage_writer=tdcp.StorageWriter(ck, step=1), no_dist=True)
    assert "state entry pairs:" in str(refused.value.failures)
    assert ck.steps() == []
    ck.close()
