"""Failures across real MPI ranks: bad shards, a rank raising, a rank missing a collective,
a rank killed mid-save."""
import os

import pytest
import torch

import tierpoint
from mpirun import run_ranks


def test_rank_failures_raise_the_same_error_everywhere(tmp_path):
    # Two "nodes" of two ranks each, with node-local tiers under tmp_path/<node>.
    groups = [(2, {"TIERPOINT_NODE": "nodeA"}), (2, {"TIERPOINT_NODE": "nodeB"})]
    proc = run_ranks(groups, "failures_worker.py", tmp_path)
    assert "FAILURES-OK 9" in proc.stdout, proc.stdout + proc.stderr
    # Each node's tier holds its own commit of steps 1 and 2.
    for node in ("nodeA", "nodeB"):
        ck = tierpoint.Checkpointer(str(tmp_path / node), run="f")
        assert ck.steps() == [1, 2]


@pytest.mark.parametrize("point", ["write", "commit"])
def test_killed_rank_leaves_no_commit_and_earlier_checkpoint_restores(tmp_path, point):
    proc = run_ranks(4, "kill_worker.py", tmp_path, point, expect_ok=False, timeout=120)
    assert proc.returncode != 0
    assert proc.stdout.count("saved step 1") == 4, proc.stdout + proc.stderr
    assert "saved step 2" not in proc.stdout
    step2 = tmp_path / "k" / "step_00000002"
    assert step2.is_dir()  # the interrupted save left files ...
    ck = tierpoint.Checkpointer(str(tmp_path), run="k")
    assert ck.steps() == [1]  # ... but no checkpoint
    with pytest.raises(tierpoint.CheckpointNotFoundError):
        ck.restore({"w": torch.zeros(8, 4)}, step=2)
    out = ck.restore({"w": torch.zeros(8, 4), "step": None})  # 4 ranks -> 1 rank
    assert out["w"].flatten().tolist() == [float(i) for i in range(32)] and out["step"] == 1
    # The step can be saved again; the leftovers are replaced.
    ck.save(2, {"w": torch.ones(8, 4), "step": 2}).wait()
    assert ck.steps() == [1, 2]
    assert not os.path.exists(step2 / "w" / "c.1.0")
