"""The local ring and the drains it waits for: a drain cut short is redone by the next drain
opportunity (the next run's saves, close(), ``tierpoint drain``) and the step then leaves the
ring; a save of a step the ring would delete at once is refused, or saved with a warning and
an audit record that says why."""
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import tierpoint
from jobkill import fault_env
from mpirun import run_ranks
from tierpoint.format import layout
from tierpoint.trust.audit import AUDIT_FILE, read_log

TWO_NODES = [(1, {"TIERPOINT_NODE": "n0"}), (1, {"TIERPOINT_NODE": "n1"})]
ONE_NODE = [(2, {"TIERPOINT_NODE": "n0"})]
ROWS, COLS = 24, 16  # as in workers/ring_worker.py


def tiers(root, nodes=("n0", "n1")) -> dict:
    out = {n: layout.committed_steps(str(root / "local" / n), "r") for n in nodes}
    out["capacity"] = layout.committed_steps(str(root / "pool"), "r")
    return out


def restore_from_capacity_alone(root, step: int) -> None:
    """With the local tiers gone, one process reads ``step`` bit-exactly from the pool."""
    shutil.rmtree(root / "local")
    ck = tierpoint.Checkpointer(str(root / "local"), persistent=[str(root / "pool")], run="r")
    out = ck.restore({"w": np.zeros((ROWS, COLS)), "step": -1}, step=step)
    want = np.arange(ROWS * COLS, dtype=np.float64).reshape(ROWS, COLS) + step * 1e6
    assert out["step"] == step and np.array_equal(out["w"], want)
    ck.close(drain_newest=False)


def killed_run(nodes, root, last: int, fault: str):
    proc = run_ranks(nodes, "ring_worker.py", root, last, env=fault_env({"TIERPOINT_FAULT": fault}),
                     expect_ok=False)
    assert proc.returncode != 0 and "DONE" not in proc.stdout, proc.stdout + proc.stderr
    return proc


def test_a_drain_killed_mid_copy_is_redone_by_the_next_run_and_leaves_the_ring(tmp_path):
    (tmp_path / "pool").mkdir()
    # Steps 1..4 (drain_every=2: 2 and 4 are due); the job dies while close() waits for the
    # background drain of step 4, at its second chunk.
    first = killed_run(TWO_NODES, tmp_path, 4, "drain:step=4:at=2:kind=killjob")
    assert "ACKED 4" in first.stdout, first.stdout + first.stderr
    held = tiers(tmp_path)
    assert held["capacity"] == [2], held
    for node in ("n0", "n1"):
        # The ring holds 3 and 4; step 2 too where the kill (on rank 0, at once) came before
        # that node's rank had removed it after its drain: a removal the next run redoes.
        assert held[node] in ([3, 4], [2, 3, 4]), held
    # The restart resumes from 4 and saves 5..7: its first save drains 4 in the background
    # (before: never, and the ring kept 4 for ever beside keep_local newer steps).
    second = run_ranks(TWO_NODES, "ring_worker.py", tmp_path, 7)
    assert second.stdout.count("RESTORED 4") == 2 and "DONE" in second.stdout, second.stdout
    assert tiers(tmp_path) == {"n0": [6, 7], "n1": [6, 7], "capacity": [2, 4, 6, 7]}
    drained = [r["step"] for r in read_log(str(tmp_path / "pool" / "r" / AUDIT_FILE))
               if r["event"] == "drained"]
    assert drained.count(4) == 1, drained
    restore_from_capacity_alone(tmp_path, 4)


def test_tierpoint_drain_redoes_a_drain_cut_short_then_drains_the_newest(tmp_path):
    (tmp_path / "pool").mkdir()
    killed_run(ONE_NODE, tmp_path, 4, "drain:step=4:at=2:kind=killjob")
    # The restart saves 5; its save's policy starts the drain of 4 again (the job's first
    # drain opportunity), and the job dies in that one too, while close() waits for it.
    second = killed_run(ONE_NODE, tmp_path, 5, "drain:step=4:kind=killjob")
    assert "RESTORED 4" in second.stdout and "ACKED 5" in second.stdout, second.stdout
    # (The ring of save 5, running beside that drain, may have deleted 3 meanwhile.)
    assert tiers(tmp_path, ("n0",))["n0"][-2:] == [4, 5]
    assert tiers(tmp_path, ("n0",))["capacity"] == [2]
    # The epilogue's drain: every drain cut short (4), then the newest (5).
    proc = subprocess.run([sys.executable, "-m", "tierpoint.cli", "drain", "--local",
                           str(tmp_path / "local" / "n0"), "--persistent",
                           str(tmp_path / "pool")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TIERPOINT_NODE": "n0"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "r step 4: a drain of it was started and did not finish; draining it"
    assert lines[1].startswith("drained r step 4: ") and lines[2].startswith("drained r step 5: ")
    assert tiers(tmp_path, ("n0",))["capacity"] == [2, 4, 5]
    # Asked again, there is nothing left to redo.
    again = subprocess.run([sys.executable, "-m", "tierpoint.cli", "drain", "--local",
                            str(tmp_path / "local" / "n0"), "--persistent",
                            str(tmp_path / "pool")], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "TIERPOINT_NODE": "n0"})
    assert again.returncode == 0 and again.stdout == "r step 5: already on the capacity tier\n"
    restore_from_capacity_alone(tmp_path, 4)


def test_close_redoes_its_own_drain_of_a_step_not_due(tmp_path):
    """close() drains the newest step although the policy did not ask for it; a drain of it
    cut short is redone by the next close(), and the step then leaves the ring."""
    (tmp_path / "pool").mkdir()
    killed_run(TWO_NODES, tmp_path, 3, "drain:step=3:at=2:kind=killjob")  # 3 is not due
    assert tiers(tmp_path) == {"n0": [2, 3], "n1": [2, 3], "capacity": [2]}
    # The restart resumes from 3 and saves 4 (due: drained) and 5: 3 is drained by the
    # first save's policy, close() drains 5, and the ring keeps 4 and 5.
    run_ranks(TWO_NODES, "ring_worker.py", tmp_path, 5)
    assert tiers(tmp_path) == {"n0": [4, 5], "n1": [4, 5], "capacity": [2, 3, 4, 5]}
    restore_from_capacity_alone(tmp_path, 3)


# ---- saves of a step older than the ring's newest -------------------------------------------

def state(step: int) -> dict:
    return {"w": np.arange(64, dtype=np.float64) + step, "step": step}


def audit_records(root, run) -> list[dict]:
    return read_log(os.path.join(layout.run_dir(str(root), run), AUDIT_FILE))


def test_a_save_the_ring_would_delete_at_once_is_refused_before_writing(tmp_path):
    ck = tierpoint.Checkpointer(str(tmp_path), run="o", policy=tierpoint.Policy(keep_local=2))
    for step in (6, 8):
        ck.save(step, state(step)).wait()
    with pytest.raises(tierpoint.OlderStepError) as err:
        ck.save(2, state(2))
    text = str(err.value)
    for fragment in ("save of step 2", "nothing was written", "[6, 8]", "keep_local=2",
                     "if_older='warn'"):
        assert fragment in text, text
    assert isinstance(err.value, tierpoint.CheckpointError)
    assert sorted(os.listdir(layout.run_dir(str(tmp_path), "o"))) == [
        AUDIT_FILE, "step_00000006", "step_00000008"]
    ck.save(7, state(7)).wait()  # one newer step only: kept by the ring, so allowed
    assert ck.steps() == [7, 8]
    with pytest.raises(tierpoint.ConfigurationError, match="if_older must be 'raise' or 'warn'"):
        ck.save(9, state(9), if_older="keep")
    ck.close()


def test_if_older_warn_saves_it_says_so_and_the_audit_log_says_why(tmp_path):
    ck = tierpoint.Checkpointer(str(tmp_path), run="o", policy=tierpoint.Policy(keep_local=2))
    for step in (6, 8):
        ck.save(step, state(step)).wait()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ck.save(2, state(2), if_older="warn").wait() == 2  # committed
    messages = [str(w.message) for w in caught if w.category is tierpoint.CheckpointWarning]
    assert any("step 2 is deleted from the local tier as soon as it is committed" in m and
               "[6, 8]" in m for m in messages), messages
    assert ck.steps() == [6, 8]
    deleted = [r for r in audit_records(tmp_path, "o") if r["event"] == "deleted"]
    assert [(r["step"], r["detail"]["why"]) for r in deleted] == [
        (2, "older than the newest local steps [6, 8] (keep_local=2)")]
    ck.close()


def test_an_older_step_due_for_drain_is_not_refused_and_is_kept_until_drained(tmp_path):
    (tmp_path / "pool").mkdir()
    ck = tierpoint.Checkpointer(str(tmp_path / "ssd"), persistent=[str(tmp_path / "pool")],
                                run="o", policy=tierpoint.Policy(keep_local=2, drain_every=3))
    for step in (6, 8):
        ck.save(step, state(step)).wait()
    with warnings.catch_warnings():
        warnings.simplefilter("error", tierpoint.CheckpointWarning)
        ck.save(2, state(2)).wait()  # the 3rd save: due for drain, so not deleted at once
    ck.wait()  # its drain; then the ring lets it go
    assert ck.capacity_steps() == [2] and ck.steps() == [6, 8]
    ck.close()


def test_all_ranks_decide_alike_from_every_directory_s_listing(tmp_path):
    proc = run_ranks(TWO_NODES, "older_worker.py", tmp_path, "6,8,2")
    refused = sorted(ln for ln in proc.stdout.splitlines() if ln.startswith("REFUSED"))
    assert [ln.split(":")[0] for ln in refused] == ["REFUSED 2 rank 0", "REFUSED 2 rank 1"]
    assert len({ln.split(":", 1)[1] for ln in refused}) == 1  # the same message
    # Node n1 loses step 8 (as a commit that reached only n0 would leave it): only step 6 is
    # newer on every directory, so step 2 is kept by the ring and saved, on both ranks, and
    # the partial step 8 is removed. n0's own listing alone would have refused it.
    shutil.rmtree(tmp_path / "local" / "n1" / "o" / "step_00000008")
    proc = run_ranks(TWO_NODES, "older_worker.py", tmp_path, "2")
    assert sorted(proc.stdout.split("\n")[:-1]) == ["SAVED 2 rank 0", "SAVED 2 rank 1"]
    for node in ("n0", "n1"):
        assert layout.committed_steps(str(tmp_path / "local" / node), "o") == [2, 6]
