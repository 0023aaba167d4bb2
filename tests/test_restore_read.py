"""restore/read.py's ``read_arrays`` in one process, over a fake copy: the reads of several
arrays are in flight at once (one reader pool across arrays), each array is finished in
order once its items are read, the targets taken and not yet finished stay within the
window, and the first failure is raised in reading order."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from tierpoint.errors import CheckpointNotFoundError
from tierpoint.restore.read import read_arrays


class FakeCopy:
    """A copy whose ``read_into`` fills the item's element of the target with its array's
    number; ``gate(array, item)`` runs first (to hold reads in flight)."""

    tier = SimpleNamespace(kind="fake")
    path = "fake"

    def __init__(self, gate=lambda array, item: None):
        self.gate = gate

    def read_into(self, array, item, target):
        self.gate(array, item)
        target[item.chunk_index[0]] = array.number
        return 1


def _job(number: int, items: int, finished: list):
    array = SimpleNamespace(name=f"a{number}", number=number,
                            chunks={f"c.{i}": None for i in range(items)})
    target = np.zeros(items, dtype=np.int64)
    return (array, [SimpleNamespace(chunk_index=(i,)) for i in range(items)], target,
            lambda: finished.append((number, target.copy())))


def test_reads_of_several_arrays_are_in_flight_at_once():
    # One item per array, as a restore onto the saved layout often reads: the three reads
    # can only pass the barrier together, i.e. if three arrays are read at once.
    together = threading.Barrier(3, timeout=30)
    finished: list = []
    copy = FakeCopy(lambda array, item: together.wait() if array.number < 3 else None)
    jobs = [_job(n, 1, finished) for n in range(5)]
    assert read_arrays([copy], iter(jobs), threads=3) == 5
    assert [n for n, _ in finished] == [0, 1, 2, 3, 4]
    assert all((t == n).all() for n, t in finished)


def test_arrays_finish_in_order_within_the_window():
    finished: list = []
    sizes = [3, 1, 4, 1, 5, 9, 2, 6]
    taken_unfinished = []

    def jobs():
        for n, items in enumerate(sizes):
            # what is taken and not finished when the next array is taken
            unfinished = sum(sizes[m] for m in range(n)) - sum(sizes[m] for m, _ in finished)
            taken_unfinished.append((unfinished, n - len(finished)))
            yield _job(n, items, finished)
    total = read_arrays([FakeCopy()], jobs(), threads=2, ahead_bytes=6 * 8)  # int64 items
    assert total == sum(sizes)
    assert [n for n, _ in finished] == list(range(len(sizes)))
    assert all((t == n).all() for n, t in finished)
    assert all(nbytes * 8 <= 6 * 8 or arrays == 1 for nbytes, arrays in taken_unfinished)


def test_the_first_failure_in_reading_order_is_raised():
    finished: list = []

    def gate(array, item):
        if array.number in (2, 4):
            raise CheckpointNotFoundError(f"array {array.name!r}: chunk c.{item.chunk_index[0]}"
                                          " is missing")
    with pytest.raises(CheckpointNotFoundError, match="'a2'"):
        read_arrays([FakeCopy(gate)], iter([_job(n, 2, finished) for n in range(6)]),
                    threads=2)
    assert [n for n, _ in finished] == [0, 1]
