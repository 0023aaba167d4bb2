"""Pure retention decisions."""
import pytest

from tierpoint import Policy
from tierpoint.retention import capacity_deletions, due_for_drain, local_deletions


def test_every_fifth_save_is_drained():
    p = Policy(drain_every=5)
    assert [o for o in range(1, 11) if due_for_drain(o, p)] == [5, 10]


def test_local_ring_keeps_newest_and_undrained():
    p = Policy(keep_local=2, drain_every=5)
    steps = list(range(1, 11))
    due = {5, 10}
    # step 5 not yet drained: kept although old
    assert local_deletions(steps, due=due, drained=set(), policy=p) == [1, 2, 3, 4, 6, 7, 8]
    assert local_deletions(steps, due=due, drained={5}, policy=p) == [1, 2, 3, 4, 5, 6, 7, 8]
    # the newest committed checkpoint is never deleted
    assert local_deletions([7], due=set(), drained=set(), policy=Policy(keep_local=1)) == []


def test_capacity_retention():
    steps = [5, 10, 15, 20, 25]
    assert capacity_deletions(steps, Policy()) == []  # keeps all it receives by default
    assert capacity_deletions(steps, Policy(keep_persistent=2)) == [5, 10, 15]
    assert capacity_deletions(steps, Policy(keep_persistent=1, keep_every=10)) == [5, 15]
    assert capacity_deletions(steps, Policy(keep_persistent=1, pin={5})) == [10, 15, 20]
    assert capacity_deletions([25], Policy(keep_persistent=1, keep_every=7)) == []


def test_policy_validation():
    with pytest.raises(ValueError, match="keep_local"):
        Policy(keep_local=0)
    with pytest.raises(ValueError, match="keep_every"):
        Policy(keep_every=0)
