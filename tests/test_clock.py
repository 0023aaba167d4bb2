"""Checkpoints on a clock: Policy(every_seconds=..., drain_every_seconds=...) and
Checkpointer.due(step) (runtime/clock.py)."""
import json
import re

import pytest
import torch

import tierpoint
from tierpoint.runtime.clock import SaveClock
from mpirun import run_ranks


class FakeTime:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_save_clock_counts_from_the_start_and_from_each_save():
    now = FakeTime()
    clock = SaveClock(tierpoint.Policy(every_seconds=60), now=now, wall=now)
    assert not clock.save_due()
    now.t += 59.9
    assert not clock.save_due()
    now.t += 0.1
    assert clock.save_due()
    clock.saved()
    assert not clock.save_due()
    assert not SaveClock(tierpoint.Policy(), now=now, wall=now).save_due()  # no clock rule


def test_drain_clock_starts_at_the_newest_capacity_copy_or_the_start():
    now = FakeTime()
    policy = tierpoint.Policy(drain_every=None, drain_every_seconds=300)
    # A restarted job whose newest capacity copy is 290 s old: due 10 s from now, not 300.
    clock = SaveClock(policy, now=now, wall=now)
    assert not clock.drain_due(lambda: now.t - 290)
    now.t += 10
    assert clock.drain_due(lambda: pytest.fail("read once"))
    clock.drain_started()
    now.t += 299
    assert not clock.drain_due(lambda: None)
    # Nothing drained yet: counted from the start.
    fresh = SaveClock(policy, now=now, wall=now)
    now.t += 299
    assert not fresh.drain_due(lambda: None)
    now.t += 1
    assert fresh.drain_due(lambda: None)


@pytest.mark.parametrize("bad, message", [
    (dict(every_seconds=0), "Policy every_seconds must be a number > 0"),
    (dict(drain_every_seconds=-1), "Policy drain_every_seconds must be a number > 0"),
    (dict(every_seconds="60"), "Policy every_seconds must be a number > 0"),
    (dict(drain_every=0), "Policy drain_every must be an integer >= 1"),
])
def test_bad_clock_policies_are_refused(bad, message):
    with pytest.raises(tierpoint.ConfigurationError, match=message):
        tierpoint.Policy(**bad)


def _state(step):
    return {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8) + step}


def test_drain_every_seconds_drains_by_the_clock_alone(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    # Far from due: no save is drained (the count rule is off).
    with tierpoint.Checkpointer(str(tmp_path / "a"), persistent=str(pool), run="slow",
                                policy=tierpoint.Policy(keep_local=5, drain_every=None,
                                                        drain_every_seconds=3600)) as ck:
        for step in (1, 2, 3):
            ck.save(step, _state(step)).wait()
        ck.wait()
        assert ck.capacity_steps() == []
        ck.close(drain_newest=False)
    # Always due (a save comes more than a microsecond after the last drain started): every
    # save is drained, in the background, once committed.
    with tierpoint.Checkpointer(str(tmp_path / "b"), persistent=str(pool), run="fast",
                                policy=tierpoint.Policy(keep_local=5, drain_every=None,
                                                        drain_every_seconds=1e-6)) as ck:
        for step in (1, 2, 3):
            ck.save(step, _state(step)).wait()
            ck.wait()
        assert ck.capacity_steps() == [1, 2, 3]
        assert ck.last_drain_error is None
        ck.close(drain_newest=False)
    # Restored from the capacity tier alone, bit-exactly.
    ck = tierpoint.Checkpointer(str(tmp_path / "empty"), persistent=str(pool), run="fast")
    out = ck.restore({"w": torch.zeros(8, 8)}, step=2)
    assert torch.equal(out["w"], _state(2)["w"])
    ck.close(drain_newest=False)


def test_due_is_false_without_a_clock_rule(tmp_path):
    with tierpoint.Checkpointer(str(tmp_path), run="r") as ck:
        assert [ck.due(s) for s in range(5)] == [False] * 5
        with pytest.raises(tierpoint.ConfigurationError, match="step must be an integer"):
            ck.due(-1)


def test_due_agrees_on_every_rank_and_the_loop_saves_those_steps(tmp_path):
    proc = run_ranks(4, "clock_worker.py", tmp_path, "loop")
    # The ranks' lines may interleave on the shared stdout: find each rank's list anywhere.
    lines = re.findall(r"rank (\d+) due (\[[0-9, ]*\])", proc.stdout)
    assert sorted(int(r) for r, _ in lines) == [0, 1, 2, 3], proc.stdout + proc.stderr
    found = {listed for _, listed in lines}
    assert len(found) == 1, f"the ranks found different steps due: {lines}"
    due = json.loads(found.pop())  # a printed list of ints
    assert len(due) == 3 and due == sorted(set(due))
    assert f"committed {due}" in proc.stdout, proc.stdout


def test_due_at_different_steps_fails_on_every_rank(tmp_path):
    proc = run_ranks(4, "clock_worker.py", tmp_path, "skew", timeout=120)
    assert proc.stdout.count("SKEW-OK") == 4, proc.stdout + proc.stderr
