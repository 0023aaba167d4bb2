"""Single-process save/restore: format, stock readers, JSON state, and every bad-input case
that does not need several ranks."""
import hashlib
import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import tensorstore as ts
import torch
import zarr

import tierpoint
from tierpoint.format import layout
from workers import patterns as P

DTYPES = ["bfloat16", "float16", "float32", "float64", "int8", "int16", "int32", "int64",
          "uint8", "bool"]


def full_tensor(name, shape, dtype):
    return P.as_torch(P.global_bits(name, shape, dtype), dtype)


@pytest.fixture
def ck(tmp_path):
    with tierpoint.Checkpointer(str(tmp_path / "local"), run="r") as c:
        yield c


def sample_state():
    return {
        "model": {f"w_{d}": full_tensor(f"w_{d}", (7, 5), d) for d in DTYPES},
        "opt": {"step": torch.tensor(12.0), "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99),
                                                               "params": ["a", "b"]}]},
        "epoch": 4, "name": "run-1", "loss": 0.25, "done": False, "nothing": None,
        "np": np.arange(12, dtype=np.float64).reshape(3, 4),
    }


def zero_like(state):
    def z(x):
        if isinstance(x, torch.Tensor):
            return torch.zeros_like(x)
        if isinstance(x, np.ndarray):
            return np.zeros_like(x)
        if isinstance(x, dict):
            return {k: z(v) for k, v in x.items()}
        if isinstance(x, list):
            return [z(v) for v in x]
        return None
    return z(state)


def test_roundtrip_all_dtypes_and_json(ck):
    state = sample_state()
    ck.save(1, state, metadata={"config": {"lr": 0.1}}).wait()
    tpl = zero_like(state)
    tpl["opt"]["param_groups"] = [{"lr": 0.0, "betas": (0, 0), "params": []}]
    out = ck.restore(tpl)
    for d in DTYPES:
        t = out["model"][f"w_{d}"]
        assert t is tpl["model"][f"w_{d}"]  # filled in place
        assert np.array_equal(P.torch_bits(t), P.torch_bits(state["model"][f"w_{d}"])), d
    assert out["opt"]["step"].item() == 12.0
    assert out["opt"]["param_groups"] == [{"lr": 0.1, "betas": (0.9, 0.99), "params": ["a", "b"]}]
    assert (out["epoch"], out["name"], out["loss"], out["done"], out["nothing"]) == \
        (4, "run-1", 0.25, False, None)
    assert np.array_equal(out["np"], state["np"])
    manifest = layout.load_manifest(ck.step_dir(1))
    assert manifest["metadata"] == {"config": {"lr": 0.1}}
    assert manifest["world_size"] == 1 and manifest["step"] == 1 and manifest["run"] == "r"


def test_stock_zarr_python_and_tensorstore_read_every_dtype(ck):
    state = {f"w_{d}": full_tensor(f"w_{d}", (9, 4), d) for d in DTYPES}
    state["scalar"] = torch.tensor(3.5)
    ck.save(3, state).wait()
    root = ck.step_dir(3)
    group = zarr.open_group(root, mode="r")
    for d in DTYPES:
        want = P.torch_bits(state[f"w_{d}"])
        # zarr-python: bfloat16 is stored as uint16 bits; one view gives the values.
        got = group[f"w_{d}"][...]
        if d == "bfloat16":
            assert group[f"w_{d}"].attrs["tierpoint"]["dtype"] == "bfloat16"
            values = got.view(ml_dtypes.bfloat16)
            assert np.array_equal(values.astype(np.float32),
                                  state[f"w_{d}"].float().numpy())
        assert np.array_equal(got.view(want.dtype), want), d
        arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file",
                                                      "path": os.path.join(root, f"w_{d}")}},
                      open=True).result()
        assert np.array_equal(arr.read().result().view(want.dtype), want), d
    assert group["scalar"][()] == 3.5


def test_non_contiguous_tensors_are_accepted(ck):
    base = full_tensor("nc", (6, 8), "float32")
    state = {"t": base.t(), "s": base[:, ::2]}
    ck.save(1, state).wait()
    out = ck.restore({"t": torch.zeros(8, 6), "s": torch.zeros(6, 4)})
    assert torch.equal(out["t"], base.t()) and torch.equal(out["s"], base[:, ::2])


def test_restore_into_non_contiguous_template(ck):
    base = full_tensor("x", (4, 6), "float64")
    ck.save(1, {"x": base}).wait()
    holder = torch.zeros(6, 4, dtype=torch.float64)
    ck.restore({"x": holder.t()})
    assert torch.equal(holder.t(), base)


def test_strange_keys_roundtrip_and_stay_inside(ck, tmp_path):
    keys = ["..", "../escape", "/abs", "", "ünïcødé 键", "zarr.json", ".hidden", "a/b", "__x"]
    state = {k: torch.full((2,), i, dtype=torch.int32) for i, k in enumerate(keys)}
    ck.save(1, state).wait()
    out = ck.restore({k: torch.zeros(2, dtype=torch.int32) for k in keys})
    for i, k in enumerate(keys):
        assert out[k].tolist() == [i, i], k
    step_dir = os.path.realpath(ck.step_dir(1))
    for base, dirs, files in os.walk(tmp_path):
        for f in files:
            real = os.path.realpath(os.path.join(base, f))
            if real == os.path.join(os.path.dirname(step_dir), "audit.jsonl"):
                continue  # the run's audit log, next to its checkpoints
            assert real.startswith(step_dir + os.sep), real


def test_partial_restore_reads_only_template_keys(ck):
    state = {"a": torch.arange(6.0), "b": torch.arange(8.0)}
    ck.save(1, state).wait()
    with open(os.path.join(ck.step_dir(1), "b", "c.0"), "r+b") as f:
        f.write(b"garbage!")  # b is corrupt, but nobody asks for it
    out = ck.restore({"a": torch.zeros(6)})
    assert torch.equal(out["a"], state["a"])


def test_missing_key_shape_and_dtype_mismatch_name_the_key(ck):
    ck.save(1, {"a": torch.zeros(3), "n": 1}).wait()
    with pytest.raises(tierpoint.StateMismatchError, match="'missing'"):
        ck.restore({"a": torch.zeros(3), "missing": torch.zeros(2)})
    with pytest.raises(tierpoint.StateMismatchError, match="'a'.*shape"):
        ck.restore({"a": torch.zeros(4)})
    with pytest.raises(tierpoint.StateMismatchError, match="'a'.*float32.*float16"):
        ck.restore({"a": torch.zeros(3, dtype=torch.float16)})
    with pytest.raises(tierpoint.StateMismatchError, match="'m'"):
        ck.restore({"a": torch.zeros(3), "m": 0})
    out = ck.restore({"a": torch.zeros(3), "missing": torch.ones(2), "m": 5}, strict=False)
    assert out["missing"].tolist() == [1.0, 1.0] and out["m"] == 5


def test_corrupt_chunk_names_array_and_chunk(ck):
    ck.save(1, {"layer": {"w": torch.arange(100.0).reshape(10, 10)}}).wait()
    path = os.path.join(ck.step_dir(1), "layer", "w", "c.0.0")
    with open(path, "r+b") as f:
        f.seek(17)
        f.write(b"\xff")
    with pytest.raises(tierpoint.CorruptCheckpointError, match=r"'layer/w'.*chunk c\.0\.0.*crc32c"):
        ck.restore({"layer": {"w": torch.zeros(10, 10)}})
    with open(path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(tierpoint.CorruptCheckpointError, match=r"'layer/w'.*c\.0\.0.*bytes"):
        ck.restore({"layer": {"w": torch.zeros(10, 10)}})


def test_uncommitted_and_half_written_dirs_do_not_exist(ck):
    ck.save(1, {"a": torch.ones(2)}).wait()
    ck.save(2, {"a": torch.full((2,), 2.0)}).wait()
    ck.wait()  # the job's leftover sweep after the commit is done before leftovers are made
    os.unlink(os.path.join(ck.step_dir(2), layout.COMMIT_FILE))  # uncommitted
    half = ck.step_dir(3)
    os.makedirs(os.path.join(half, "a"))
    open(os.path.join(half, "a", "c.0"), "wb").close()  # a save that died mid-write
    assert ck.steps() == [1]
    assert ck.restore({"a": torch.zeros(2)})["a"].tolist() == [1.0, 1.0]
    for step in (2, 3):
        with pytest.raises(tierpoint.CheckpointNotFoundError, match=f"step {step}"):
            ck.restore({"a": torch.zeros(2)}, step=step)
    out = subprocess.run([sys.executable, "-m", "tierpoint.cli", "ls",
                          os.path.dirname(os.path.dirname(half))], capture_output=True, text=True)
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert any(" 1  local" in ln for ln in lines)
    assert any(" 3  partial" in ln for ln in lines), out.stdout
    # A new save at a step with leftovers replaces them.
    ck.save(3, {"a": torch.full((2,), 3.0)}).wait()
    assert ck.steps() == [1, 3]


def test_unknown_format_version_is_a_clear_error(ck):
    ck.save(1, {"a": torch.ones(2)}).wait()
    d = ck.step_dir(1)
    with open(os.path.join(d, layout.MANIFEST_FILE)) as f:
        manifest = json.load(f)
    manifest["format_version"] = 99
    layout.write_manifest(d, manifest)
    data = open(os.path.join(d, layout.MANIFEST_FILE), "rb").read()
    layout.write_commit_marker(d, 1, hashlib.sha256(data).hexdigest())
    with pytest.raises(tierpoint.FormatVersionError, match="version 99"):
        ck.restore({"a": torch.zeros(2)})


def test_edited_manifest_is_detected(ck):
    ck.save(1, {"a": torch.ones(2)}).wait()
    path = os.path.join(ck.step_dir(1), layout.MANIFEST_FILE)
    manifest = json.load(open(path))
    manifest["step"] = 2
    open(path, "w").write(json.dumps(manifest))
    with pytest.raises(tierpoint.CorruptCheckpointError, match="SHA-256"):
        ck.restore({"a": torch.zeros(2)})


def test_existing_step_needs_overwrite(ck):
    ck.save(5, {"a": torch.ones(2)}).wait()
    with pytest.raises(tierpoint.CheckpointExistsError, match="step 5.*overwrite=True"):
        ck.save(5, {"a": torch.zeros(2)})
    assert ck.restore({"a": torch.zeros(2)})["a"].tolist() == [1.0, 1.0]
    ck.save(5, {"b": torch.full((3,), 7.0)}, overwrite=True).wait()
    assert ck.restore({"b": torch.zeros(3)})["b"].tolist() == [7.0] * 3
    assert not os.path.exists(os.path.join(ck.step_dir(5), "a"))


def test_failed_save_commits_nothing_and_keeps_earlier(ck, monkeypatch):
    ck.save(1, {"a": torch.ones(4)}).wait()
    import tierpoint.tiers.local as w

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(w, "write_file", disk_full)
    handle = ck.save(2, {"a": torch.zeros(4)})  # the write fails in the background
    with pytest.raises(tierpoint.CheckpointError, match="rank 0.*No space left"):
        handle.wait()
    monkeypatch.undo()
    assert ck.steps() == [1]
    assert ck.restore({"a": torch.zeros(4)})["a"].tolist() == [1.0] * 4


def test_unsupported_leaves_are_rejected_by_name(ck):
    with pytest.raises(tierpoint.UnsupportedStateError, match="opt/fn.*function"):
        ck.save(1, {"opt": {"fn": print, "w": torch.ones(1)}})
    with pytest.raises(tierpoint.UnsupportedStateError, match="string dict keys"):
        ck.save(1, {"cfg": {1: "x"}})
    with pytest.raises(tierpoint.UnsupportedStateError, match="complex32|cannot be stored"):
        ck.save(1, {"c": torch.zeros(2, dtype=torch.complex32)})
    assert ck.steps() == []


def test_shard_leaves_single_rank_must_cover(ck):
    with pytest.raises(tierpoint.ShardingError, match="'part'.*gap"):
        ck.save(1, {"part": tierpoint.Shard(torch.zeros(2, 3), (4, 3), (0, 0))})
    ck.save(1, {"part": tierpoint.Shard(torch.arange(12.0).reshape(4, 3), (4, 3), (0, 0))}).wait()
    holder = torch.zeros(2, 3)
    ck.restore({"part": tierpoint.Shard(holder, (4, 3), (2, 0))})
    assert holder.flatten().tolist() == list(range(6, 12))


@pytest.mark.parametrize("direct_io", ["off", "auto"])
@pytest.mark.parametrize("sync", ["fsync", "syncfs", "none"])
def test_every_sync_mode_writes_a_readable_checkpoint(tmp_path, sync, direct_io):
    big = full_tensor("big", (2048, 160), "float32")  # 1.25 MiB: above the small-file cut
    with tierpoint.Checkpointer(str(tmp_path), run="s", sync=sync, direct_io=direct_io) as c:
        handle = c.save(1, {"big": big, "small": torch.arange(3)})
        handle.wait()
        out = c.restore({"big": torch.zeros(2048, 160), "small": torch.zeros(3, dtype=torch.int64)})
    assert torch.equal(out["big"], big) and out["small"].tolist() == [0, 1, 2]
    # How each chunk file was made durable: "fsync" each one; "syncfs" starts the big one's
    # writeback (no fsync, no journal commit per file) and syncs once, or, written with
    # direct I/O, has no writeback to start; "none" neither.
    costs = handle.stats["costs"]
    flushed = {p: costs[p]["calls"] for p in ("fsync", "writeback") if p in costs}
    from tierpoint.runtime.fsutil import syncfs_available, writeback_available
    in_syncfs = ({"writeback": 1} if writeback_available() else {"fsync": 1}) \
        if syncfs_available() else {"fsync": 2}  # no syncfs: the writer falls back to fsync
    if direct_io == "auto" and syncfs_available():
        in_syncfs = {}
    want = {"fsync": {"fsync": 2}, "none": {}, "syncfs": in_syncfs}[sync]
    assert flushed == want


def test_removing_a_step_twice_is_harmless(ck):
    from tierpoint.format import layout
    from tierpoint.tiers.local import remove_step_dir
    ck.save(1, {"a": torch.ones(2)}).wait()
    retired = layout.retire_step_dir(ck.step_dir(1))
    assert retired is not None and ck.steps() == []  # out of the hierarchy at once
    assert layout.retire_step_dir(ck.step_dir(1)) is None  # a second remover finds nothing
    remove_step_dir(ck.step_dir(1))  # no error
