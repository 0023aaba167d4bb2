"""Replicated state is read once per node on restore (restore/share.py)."""
from types import SimpleNamespace

from mpirun import run_ranks

from tierpoint.format.types import Box
from tierpoint.restore.share import group_ranks, my_group, shared_leaves, wants_digest


def _leaf(name, shape, box_shape=None, dtype="float32"):
    box = Box((0,) * len(shape), tuple(box_shape or shape))
    return SimpleNamespace(name=name, global_shape=tuple(shape), dtype=dtype, box=box)


def test_only_whole_leaves_of_some_size_are_shared_and_ranks_group_by_what_they_want():
    itemsize = {"float32": 4, "int64": 8}.get
    leaves = [_leaf("b", (200, 100)), _leaf("a", (300, 100)), _leaf("tiny", (10,)),
              _leaf("part", (400, 100), (200, 100))]
    shared = shared_leaves(leaves, itemsize)
    assert [leaf.name for leaf in shared] == ["a", "b"]  # name order; 80 KB and up, whole
    same, other = wants_digest(shared), wants_digest(shared[:1])
    assert wants_digest([]) == "" and same != other
    groups = group_ranks([4, 5, 6, 7], [same, other, same, ""])
    assert groups == [[4, 6]]  # rank 5 wants other leaves, rank 7 none: they read alone
    assert my_group(groups, 6) == [4, 6] and my_group(groups, 5) == [5]


def test_replicated_leaves_are_read_once_per_node_and_a_failure_reaches_every_rank(tmp_path):
    proc = run_ranks([(2, {"TIERPOINT_NODE": "n0"}), (2, {"TIERPOINT_NODE": "n1"})],
                     "share_worker.py", tmp_path)
    assert "SHARE-OK" in proc.stdout, proc.stdout + proc.stderr
