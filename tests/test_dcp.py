"""tierpoint.dcp: torch.distributed.checkpoint over a Checkpointer, on real MPI ranks.

FSDP2 + AdamW state from ``get_state_dict`` is saved on 4 ranks through ``dcp.save`` and
``dcp.async_save`` with tierpoint's StorageWriter and through ``ckpt.save``; each is loaded into a fresh model and
optimizer on other world sizes through ``dcp.load`` with the StorageReader or through
``ckpt.restore``, and compared bit-exactly with every tensor's full value at the save
(tests/workers/dcp_worker.py). What DCP wrote is an ordinary tierpoint checkpoint: it
verifies, holds no pickle, and names and fingerprints its arrays as ``ckpt.save`` does.
Through the writer, ``dcp.save`` and ``dcp.async_save`` stage nothing of tierpoint's (its
save's stats): under ``dcp.async_save`` torch's staged copy is the only one.
"""
from __future__ import annotations

import os

import pytest
import torch

import tierpoint
from mpirun import run_ranks
from tierpoint.trust.verify import verify_checkpoint

pytest.importorskip("torch.distributed.checkpoint")
import tierpoint.dcp as tdcp  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcp")
    out = run_ranks(4, "dcp_worker.py", "save", root).stdout
    assert "DCP-OK save 4" in out, out
    return root


@pytest.mark.parametrize("world, run, how", [(3, "dcp", "dcp"), (2, "dcp", "restore"),
                                             (3, "native", "dcp"), (2, "native", "dcp"),
                                             (3, "async", "dcp"), (2, "async", "restore")])
def test_fsdp_state_moves_between_dcp_and_tierpoint_bit_exactly(saved, world, run, how):
    out = run_ranks(world, "dcp_worker.py", "load", saved, run, how).stdout
    assert f"DCP-OK load {run} via {how} 4->{world} arrays=24 bit_exact=yes" in out, out


def test_what_dcp_writes_is_an_ordinary_checkpoint_without_pickle(saved):
    through_dcp = tierpoint.open(str(saved / "local"), run="dcp")
    native = tierpoint.open(str(saved / "local"), run="native")
    assert through_dcp.names() == native.names() and len(native) == 24  # as loaded
    for other in (through_dcp, tierpoint.open(str(saved / "local"), run="async")):
        assert [other[n].fingerprint for n in native] == [native[n].fingerprint for n in native]
        assert other.values == native.values
    assert verify_checkpoint(through_dcp.path).ok
    for folder, _, files in os.walk(through_dcp.path):
        for f in files:
            with open(os.path.join(folder, f), "rb") as fh:
                head = fh.read(2)
            assert not (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"), \
                f"{f} starts like a pickle"
    assert not any(f.endswith(".metadata") for f in os.listdir(through_dcp.path))


def test_keys_map_as_dcp_flattens_them_and_non_json_values_are_refused(tmp_path):
    assert tdcp.dcp_key(("model", "layers.0.w")) == "model.layers.0.w"
    assert tdcp.dcp_key(("optim", "param_groups", 0, "lr")) == "optim.param_groups.0.lr"
    ck = tierpoint.Checkpointer(str(tmp_path), run="one")
    state = {"m": {"w": torch.arange(6.0).reshape(2, 3)}, "groups": [{"lr": 0.1}], "n": 3}
    dcp.save(state, storage_writer=tdcp.StorageWriter(ck, step=1), no_dist=True)
    target = {"m": {"w": torch.zeros(2, 3)}, "groups": [{"lr": 0.0}], "n": 0}
    dcp.load(target, storage_reader=tdcp.StorageReader(ck), no_dist=True)
    assert torch.equal(target["m"]["w"], state["m"]["w"])
    assert target["groups"] == [{"lr": 0.1}] and target["n"] == 3
    assert tierpoint.open(str(tmp_path)).names() == ["m/w"]
    with pytest.raises(CheckpointException) as refused:  # DCP wraps each rank's error
        dcp.save({"w": torch.zeros(2), "obj": object()},
                 storage_writer=tdcp.StorageWriter(ck, step=2), no_dist=True)
    causes = refused.value.failures
    assert "UnsupportedStateError" in str(causes) and "JSON values" in str(causes)
    assert ck.steps() == [1]
    ck.close()


def test_a_step_only_the_capacity_tier_holds_loads_from_there(tmp_path):
    (tmp_path / "pool").mkdir()
    ck = tierpoint.Checkpointer(str(tmp_path / "local"), persistent=[str(tmp_path / "pool")],
                                run="c", policy=tierpoint.Policy(keep_local=1, drain_every=1))
    for step in (1, 2):
        state = {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8) * step, "s": step}
        dcp.save(state, storage_writer=tdcp.StorageWriter(ck, step=step), no_dist=True)
    ck.wait()
    assert (ck.steps(), ck.capacity_steps()) == ([2], [1, 2])
    for step in (1, None):
        target = {"w": torch.zeros(8, 8), "s": 0}
        dcp.load(target, storage_reader=tdcp.StorageReader(ck, step=step), no_dist=True)
        want = step or 2
        assert torch.equal(target["w"], torch.arange(64.0).reshape(8, 8) * want)
        assert target["s"] == want
    with pytest.raises(CheckpointException) as missing:  # DCP wraps the reader's error
        dcp.load({"w": torch.zeros(8, 8)}, storage_reader=tdcp.StorageReader(ck, step=3),
                 no_dist=True)
    assert "run 'c' has no committed step 3 (local: [2], capacity: [1, 2])" in \
        str(missing.value.failures)
    ck.close()


class _Spy(tdcp.StorageWriter):
    """The writer, noting where the tensors DCP hands it lie."""

    def write_data(self, plan, planner):
        self.handed = {k: v.data_ptr() for k, v in planner.state_dict.items()
                       if isinstance(v, torch.Tensor)}
        return super().write_data(plan, planner)


def test_the_state_is_copied_once_under_async_save_and_not_at_all_under_save(tmp_path):
    """Under dcp.async_save torch stages the state (the one copy) and the writer saves
    straight from torch's copy: its save's stats say blocking, with nothing staged. An async
    tierpoint save in the writer would stage it again (mode "background", staged_bytes > 0,
    as ``ckpt.save`` below); under dcp.save the writer saves the trainer's own tensors."""
    ck = tierpoint.Checkpointer(str(tmp_path), run="once")
    state = {"m": {"w": torch.arange(4096.0).reshape(64, 64)}, "n": 1}
    for step, save in ((1, dcp.save), (2, dcp.async_save)):
        writer = _Spy(ck, step=step)
        done = save(state, storage_writer=writer, no_dist=True)
        if save is dcp.async_save:
            done.result()
        stats = writer.handle.stats
        assert (stats["mode"], stats.get("blocking_reason"), stats["staged_bytes"],
                stats["parts"]) == ("blocking", "blocking=True", 0, 0), (save, stats)
        original = writer.handed["m.w"] == state["m"]["w"].data_ptr()
        got = "the trainer's tensor" if original else "a copy"
        assert original == (save is dcp.save), f"{save.__name__} handed the writer {got}"
    native = ck.save(3, state)
    native.wait()
    assert native.stats["mode"] == "background" and native.stats["staged_bytes"] >= 4096 * 4
    ck.close()
