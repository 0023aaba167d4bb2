"""Pure retention decisions."""
import pytest

from tierpoint import Policy
from tierpoint.tiers.retention import (agreed_drains, capacity_deletions, deleted_at_once,
                                 due_for_drain, local_deletions, pending_drains)


def test_every_fifth_save_is_drained():
    p = Policy(drain_every=5)
    assert [o for o in range(1, 11) if due_for_drain(o, p)] == [5, 10]


def test_local_ring_keeps_newest_and_undrained():
    p = Policy(keep_local=2, drain_every=5)
    steps = list(range(1, 11))
    due = {5, 10}
    # step 5 not yet drained: kept although old
    pending = pending_drains(steps, due=due, started=set(), drained=set())
    assert pending == [5, 10]
    assert local_deletions(steps, pending=pending, policy=p) == [1, 2, 3, 4, 6, 7, 8]
    pending = pending_drains(steps, due=due, started=set(), drained={5})
    assert local_deletions(steps, pending=pending, policy=p) == [1, 2, 3, 4, 5, 6, 7, 8]
    # the newest committed checkpoint is never deleted
    assert local_deletions([7], pending=[], policy=Policy(keep_local=1)) == []


def test_a_started_drain_is_pending_until_drained():
    # Step 3 is not due by the policy, but a drain of it was started (close() drains the
    # newest step): it stays pending until its capacity copy is committed, or was.
    local = [3, 10, 18, 20]
    assert pending_drains(local, due={10, 20}, started={3}, drained={20}) == [3, 10]
    assert pending_drains(local, due={10}, started={3}, drained={3, 10}) == []
    assert pending_drains([18, 20], due={10}, started={5}, drained=set()) == []  # not here
    # The ring then keeps only keep_local steps: the issue's [10, 18, 20] with keep_local=2.
    assert local_deletions([10, 18, 20], pending=[], policy=Policy(keep_local=2)) == [10]
    assert local_deletions([10, 18, 20], pending=[10], policy=Policy(keep_local=2)) == []


def test_the_ranks_drain_what_some_directory_owes_and_every_directory_holds():
    views = [([4, 5, 6], [4]), ([4, 5, 6], [5]), ([4, 6], [6])]
    assert agreed_drains(views) == [4, 6]  # 5 is not held by the third directory
    assert agreed_drains([]) == []
    assert agreed_drains([([1, 2], [])]) == []


def test_a_save_the_ring_deletes_at_once():
    p = Policy(keep_local=2)
    assert deleted_at_once(2, [[6, 8], [6, 8]], due=False, policy=p) == [6, 8]
    assert deleted_at_once(2, [[4, 6, 8]], due=False, policy=p) == [6, 8]
    assert deleted_at_once(7, [[6, 8]], due=False, policy=p) == []   # kept: one newer step
    assert deleted_at_once(9, [[6, 8]], due=False, policy=p) == []
    assert deleted_at_once(2, [[6, 8]], due=True, policy=p) == []    # kept until drained
    # only steps every directory holds count (one some lack is removed as a partial commit)
    assert deleted_at_once(2, [[6, 8], [6]], due=False, policy=p) == []
    assert deleted_at_once(2, [], due=False, policy=p) == []


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
