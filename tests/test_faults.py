"""Fault injection: killed ranks and jobs (the seeded suite in faultsuite.py), a full local
tier, a capacity pool that vanishes mid-drain, a lost node, a hung rank.

The suite's trial count: ``TIERPOINT_FAULT_TRIALS`` (default 16, about a minute here) and
its seed ``TIERPOINT_FAULT_SEED``; ``python tests/faultsuite.py --trials 200`` runs longer.
Its trials on an S3 capacity tier (the test server): ``TIERPOINT_FAULT_S3_TRIALS`` (default
6).
"""
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest

import faultsuite
import tierpoint
from tierpoint.format import layout

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


def test_seeded_kills_restore_the_newest_committed_checkpoint(tmp_path, capsys):
    trials = int(os.environ.get("TIERPOINT_FAULT_TRIALS", "16"))
    seed = int(os.environ.get("TIERPOINT_FAULT_SEED", "20261127"))
    lines = []

    def say(line):
        lines.append(line)
        with capsys.disabled():  # the trial count and outcomes, also when the test passes
            print(line, flush=True)
    outcomes = faultsuite.run_suite(seed, trials, str(tmp_path), say=say)
    assert len(outcomes) == trials
    failed = [faultsuite.outcome_line(o) for o in outcomes if o["problems"]]
    assert not failed, "\n".join(failed)
    # The suite must have hurt something: most planned faults are reached.
    assert sum(o["killed"] for o in outcomes) >= trials // 2, "\n".join(lines)


def test_seeded_kills_during_drains_to_s3_leave_nothing_half_done(s3_env, tmp_path, capsys):
    """The suite's trials with the capacity tier on S3, killed mid-upload, before and after
    the commit object (and at the merge and the capacity retention)."""
    from s3server import unique_prefix
    trials = int(os.environ.get("TIERPOINT_FAULT_S3_TRIALS", "6"))
    seed = int(os.environ.get("TIERPOINT_FAULT_SEED", "20261127"))
    lines = []

    def say(line):
        lines.append(line)
        with capsys.disabled():
            print(line, flush=True)
    outcomes = faultsuite.run_suite(seed, 0, str(tmp_path), say=say,
                                    s3_url=s3_env.url(unique_prefix("faults")),
                                    s3_trials=trials)
    assert len(outcomes) == trials
    failed = [faultsuite.outcome_line(o) for o in outcomes if o["problems"]]
    assert not failed, "\n".join(failed)
    assert sum(o["killed"] for o in outcomes) >= trials // 2, "\n".join(lines)


# ---- a full local tier ----------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs: a node-local SSD that fills up."""
    mount = tmp_path / "ssd"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def state_of(step: int) -> dict:
    """400 KB: two saves fit the 1 MiB tier, a third does not."""
    return {"w": np.arange(50_000, dtype=np.float64) + step * 1e6, "step": step}


def step_dirs(root, run) -> list[str]:
    run_dir = layout.run_dir(str(root), run)
    return sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []


@ROOT_ONLY
def test_a_full_local_tier_fails_the_save_clearly_and_keeps_earlier_ones(small_tmpfs):
    ck = tierpoint.Checkpointer(str(small_tmpfs), run="full", chunk_bytes=64 << 10,
                                policy=tierpoint.Policy(keep_local=5))
    ck.save(1, state_of(1)).wait()
    ck.save(2, state_of(2)).wait()
    with pytest.raises(tierpoint.TierFullError) as err:
        ck.save(3, state_of(3)).wait()
    text = str(err.value)
    assert str(small_tmpfs) in text and "save of step 3" in text and "bytes free" in text
    assert ck.steps() == [1, 2]
    assert [n for n in step_dirs(small_tmpfs, "full") if n.startswith("step_")] == [
        "step_00000001", "step_00000002"]  # nothing of step 3 is left taking space
    out = ck.restore({"w": np.zeros(50_000), "step": -1}, step=2)
    assert np.array_equal(out["w"], state_of(2)["w"]) and out["step"] == 2
    ck.close()


@ROOT_ONLY
def test_a_tier_that_fills_during_the_write_is_a_warning_with_if_full_warn(small_tmpfs,
                                                                           monkeypatch):
    """The device fills up while the chunks are written (another process takes the space):
    the kernel's ENOSPC becomes a TierFullError naming the chunk; with if_full="warn" the
    trainer gets a warning on wait() and the next save, once there is room, commits."""
    filler = small_tmpfs / "filler"
    ck = tierpoint.Checkpointer(str(small_tmpfs), run="fill", chunk_bytes=64 << 10,
                                if_full="warn", policy=tierpoint.Policy(keep_local=5))
    ck.save(1, state_of(1)).wait()
    monkeypatch.setenv("TIERPOINT_FAULT", "write:step=2:at=2:kind=run")
    monkeypatch.setenv("TIERPOINT_FAULT_RUN", f"head -c 2000000 /dev/zero > {filler}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ck.save(2, state_of(2)).wait() is None  # not committed, not raised
    monkeypatch.delenv("TIERPOINT_FAULT")
    messages = [str(w.message) for w in caught if w.category is tierpoint.CheckpointWarning]
    assert any("No space left on device" in m and "writing chunk" in m and "'w'" in m and
               "training goes on" in m for m in messages), messages
    assert ck.steps() == [1]
    assert "step_00000002" not in step_dirs(small_tmpfs, "fill")
    filler.unlink()  # the space comes back: training went on and the next save commits
    assert ck.save(3, state_of(3)).wait() == 3
    out = ck.restore({"w": np.zeros(50_000), "step": -1}, step=1)
    assert np.array_equal(out["w"], state_of(1)["w"])
    assert ck.steps() == [1, 3]
    ck.close()


# ---- a capacity pool that vanishes mid-drain ------------------------------------------------

@ROOT_ONLY
def test_a_pool_that_vanishes_mid_drain_keeps_the_local_copy(tmp_path, monkeypatch):
    store, pool_b = tmp_path / "poolB-device", tmp_path / "poolB"
    pool_a = tmp_path / "poolA"
    for d in (store, pool_b, pool_a):
        d.mkdir()
    subprocess.run(["mount", "--bind", str(store), str(pool_b)], check=True)
    try:
        ck = tierpoint.Checkpointer(str(tmp_path / "ssd"), persistent=[str(pool_a), str(pool_b)],
                                    run="v", chunk_bytes=64 << 10,
                                    policy=tierpoint.Policy(keep_local=1, drain_every=1))
        ck.save(1, state_of(1)).wait()
        ck.wait()
        assert ck.capacity_steps() == [1]
        # Mid-drain of step 2 (its 3rd chunk), the pool is unmounted and its mount point goes.
        monkeypatch.setenv("TIERPOINT_FAULT", "drain:step=2:at=3:kind=run")
        monkeypatch.setenv("TIERPOINT_FAULT_RUN", f"umount -l {pool_b} && rmdir {pool_b}")
        ck.save(2, state_of(2)).wait()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ck.wait()
        monkeypatch.delenv("TIERPOINT_FAULT")
        messages = [str(w.message) for w in caught]
        assert any("drain of run 'v' step 2" in m and f"capacity pool {pool_b}" in m and
                   "unmounted during the drain" in m and "the local checkpoint is kept" in m
                   for m in messages), messages
        assert ck.steps() == [2]  # due for drain and not drained: the ring keeps it
        assert ck.capacity_steps() == [1]
        # The drain's writers recreated the path on the parent device (as they would under
        # a vanished mount point): that is what the drain caught. The pool comes back, with
        # what it held; the next drain removes the interrupted files and copies step 2.
        assert os.path.isdir(pool_b) and not os.path.ismount(pool_b)
        shutil.rmtree(pool_b)
        pool_b.mkdir()
        subprocess.run(["mount", "--bind", str(store), str(pool_b)], check=True)
        assert ck.drain(2)["step"] == 2
        assert ck.capacity_steps() == [1, 2]
        assert ck.steps() == [2]
        shutil.rmtree(tmp_path / "ssd")  # only the capacity tier now
        for step in (1, 2):
            out = ck.restore({"w": np.zeros(50_000), "step": -1}, step=step)
            assert np.array_equal(out["w"], state_of(step)["w"])
        ck.close(drain_newest=False)
    finally:
        subprocess.run(["umount", "-l", str(pool_b)], capture_output=True)


# ---- a lost node, a hung rank ----------------------------------------------------------------

def test_a_lost_node_falls_back_to_the_capacity_tier(tmp_path):
    root = str(tmp_path)
    for p in faultsuite.pools(root):
        os.makedirs(p)
    # Steps 1..5 on 4 ranks as 2 nodes; the job dies while close() drains step 5, so step 5
    # is committed on both local tiers only.
    first = faultsuite.launch(root, 4, 5, {"TIERPOINT_FAULT": "drain:step=5:kind=killjob"})
    assert first.returncode != 0 and "ACKED 5" in first.stdout, first.stdout + first.stderr
    tiers = faultsuite.committed(root)
    assert tiers["n0"][-1] == tiers["n1"][-1] == 5 and tiers["capacity"] == [2, 4], tiers
    shutil.rmtree(faultsuite.local_dir(root, "n1"))  # node n1 and its SSD are gone
    second = faultsuite.launch(root, 4, 6)
    assert second.returncode == 0, second.stdout + second.stderr
    # Step 5 is lost with n1's SSD; step 4 comes back bit-exactly (n0's ranks from their
    # local tier, n1's from the capacity tier), with a warning that says why.
    assert re.findall(r"^RESTORED (\S+)$", second.stdout, re.M) == ["4"] * 4
    assert "restoring step 4" in second.stderr and "lack it: a lost node?" in second.stderr


def test_a_hung_rank_times_out_naming_it(tmp_path):
    root = str(tmp_path)
    for p in faultsuite.pools(root):
        os.makedirs(p)
    proc = faultsuite.launch(root, 4, 6, {"TIERPOINT_FAULT": "write:rank=2:step=3:kind=hang",
                                          "FAULT_TIMEOUT": "5"}, timeout=120)
    assert proc.returncode != 0
    # The ranks that answered raise it (the first to end the job may cut the others
    # short), naming rank 2, within the timeout (not the test's 120 s). Rank 2 leads its
    # node's domain (ranks 2 and 3), so rank 0 names it as that leader.
    errors = re.findall(r"CollectiveTimeoutError: (.*)", proc.stderr)
    named = re.compile(r"(ranks \[2\]|rank 2 \(leader of domain 1: ranks 2-3\)) did not reach "
                       r"the collective within 5 s")
    assert errors and all(named.search(e) for e in errors), proc.stderr
    assert "ACKED 2" in proc.stdout and "ACKED 3" not in proc.stdout
