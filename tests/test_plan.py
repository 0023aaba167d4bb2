"""Pure save planning, many ranks in one process."""
import bisect
import math

import pytest

from tierpoint.errors import ShardingError
from tierpoint.save.plan import choose_chunk_shape, plan_save
from tierpoint.format import placement
from tierpoint.format.types import Box, LocalArray


def decl(name, shape, off, shp, replicated=False, dtype="float32"):
    return LocalArray(name, dtype, tuple(shape), Box(tuple(off), tuple(shp)), replicated)


def rows(name, shape, world, dtype="float32"):
    step = -(-shape[0] // world)
    out = []
    for r in range(world):
        lo = min(r * step, shape[0])
        n = min(step, shape[0] - lo)
        out.append([decl(name, shape, (lo,) + (0,) * (len(shape) - 1), (n,) + shape[1:],
                         dtype=dtype)])
    return out


def check_plan_invariants(plan):
    for a in plan.arrays:
        seen = set()
        starts = [b.offset for b, _ in a.saved_boxes]  # sorted by offset
        for c in a.chunks:
            assert c.index not in seen, "two writers for one chunk"
            seen.add(c.index)
            # each chunk lies inside a box its writer holds (the last box starting at or
            # before the chunk along dim 0, scanning back over boxes with equal dim-0 start)
            i = bisect.bisect_right(starts, c.box.offset + (float("inf"),)) - 1
            while i >= 0 and not a.saved_boxes[i][0].contains(c.box):
                i -= 1
            assert i >= 0 and c.writer in a.saved_boxes[i][1]
        assert sum(c.box.volume for c in a.chunks) == math.prod(a.shape)


def test_uneven_rows_align_chunks_to_shard_boundaries():
    plan = plan_save(rows("w", (10, 4), 4))
    (a,) = plan.arrays
    assert a.chunk_shape == (3, 4)  # torch.chunk boundaries 3, 6, 9
    check_plan_invariants(plan)
    assert [c.writer for c in a.chunks] == [0, 1, 2, 3]


def test_thousand_ranks_plan_is_fast_and_valid():
    world = 1000
    decls = [[] for _ in range(world)]
    for i in range(20):
        for r, d in enumerate(rows(f"layer{i}", (4000 + i, 64), world)):
            decls[r] += d
    plan = plan_save(decls)
    check_plan_invariants(plan)
    assert len(plan.arrays) == 20


def test_replicated_arrays_are_written_once_and_spread():
    world = 4
    decls = [[decl(f"rep{i}", (8, 8), (0, 0), (8, 8), replicated=True) for i in range(8)]
             for _ in range(world)]
    plan = plan_save(decls)
    writers = [c.writer for a in plan.arrays for c in a.chunks]
    assert len(writers) == 8  # once each
    assert sorted(set(writers)) == [0, 1, 2, 3]  # not all rank 0


def test_big_replicated_array_chunks_spread_over_holders():
    decls = [[decl("big", (1024, 1024), (0, 0), (1024, 1024), replicated=True)] for _ in range(4)]
    plan = plan_save(decls, chunk_bytes=1 << 20)
    (a,) = plan.arrays
    assert len(a.chunks) == 4
    assert sorted(c.writer for c in a.chunks) == [0, 1, 2, 3]


def test_2d_mesh_and_large_chunks_split_within_alignment():
    decls = []
    for i in range(2):
        for j in range(2):
            decls.append([decl("m", (512, 300), (i * 256, j * 150), (256, 150))])
    plan = plan_save(decls, chunk_bytes=64 * 150 * 4)
    (a,) = plan.arrays
    assert a.chunk_shape == (64, 150)
    check_plan_invariants(plan)


def test_overlap_is_an_error_naming_the_array():
    decls = [[decl("x", (10,), (0,), (6,))], [decl("x", (10,), (5,), (5,))]]
    with pytest.raises(ShardingError, match=r"'x'.*overlap"):
        plan_save(decls)


def test_same_box_on_two_ranks_without_replication_is_an_error():
    decls = [[decl("x", (10,), (0,), (10,))], [decl("x", (10,), (0,), (10,))]]
    with pytest.raises(ShardingError, match="both hold"):
        plan_save(decls)


def test_gap_is_an_error():
    decls = [[decl("x", (10, 2), (0, 0), (4, 2))], [decl("x", (10, 2), (5, 0), (5, 2))]]
    with pytest.raises(ShardingError, match="gap"):
        plan_save(decls)


def test_disagreeing_shape_and_dtype_are_errors():
    with pytest.raises(ShardingError, match="global shape"):
        plan_save([[decl("x", (10,), (0,), (5,))], [decl("x", (11,), (5,), (5,))]])
    with pytest.raises(ShardingError, match="dtype"):
        plan_save([[decl("x", (10,), (0,), (5,))],
                   [decl("x", (10,), (5,), (5,), dtype="float16")]])


def test_out_of_bounds_shard_is_an_error():
    with pytest.raises(ShardingError, match="outside"):
        plan_save([[decl("x", (10,), (8,), (5,))]])


def test_choose_chunk_shape_prime_extent():
    # 7 rows cannot be split evenly: the whole extent stays one chunk row-wise.
    assert choose_chunk_shape((7, 3), 4, [Box((0, 0), (7, 3))], 12) == (1, 3)
    assert choose_chunk_shape((0, 5), 4, [], 1 << 20) == (1, 5)


def test_replicas_are_written_once_per_domain():
    # 4 ranks on 2 nodes (domains): each node's directory gets one copy of replicated state,
    # written by one of that node's ranks; sharded state is written once, by its holder.
    decls = [[decl("rep", (8, 8), (0, 0), (8, 8), replicated=True),
              decl("w", (8,), (2 * r,), (2,))] for r in range(4)]
    plan = plan_save(decls, domains=["a", "a", "b", "b"])
    rep, w = plan.arrays[0], plan.arrays[1]
    assert rep.name == "rep" and len(rep.chunks) == 2
    assert sorted(c.writer // 2 for c in rep.chunks) == [0, 1]  # one writer on each node
    assert [c.writer for c in w.chunks] == [0, 1, 2, 3]


def test_each_domains_copy_of_a_replicated_chunk_has_the_writer_the_placement_rule_gives():
    # A reader (and the compact planner) finds the writer from the chunk and the name alone.
    domains = [0, 1, 1, 0, 1]
    decls = [[decl("rep", (6, 4), (0, 0), (6, 4), replicated=True)] for _ in domains]
    (a,) = plan_save(decls, chunk_bytes=16, domains=domains).arrays
    grid = placement.chunk_grid(a.shape, a.chunk_shape)
    for c in a.chunks:
        holders = [r for r, d in enumerate(domains) if d == domains[c.writer]]
        assert c.writer == placement.replica_writer(
            holders, placement.linear_index(c.index, grid), placement.array_salt("rep"))
    assert len(a.chunks) == 2 * math.prod(grid)
