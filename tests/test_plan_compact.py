"""The compact save plan (save/declare.py, save/jobplan.py) against the box-by-box one
(save/plan.py): for regular layouts (grids over rank meshes), irregular ones (random box
partitions) and both mixed in one job, the coordinator's plan expands to exactly plan_save's,
every rank's own writes equal plan_save's writes_of(rank), and both planners refuse the same
broken layouts naming the same array. Then the scale at 16,384 ranks x 2,000 arrays (object
counts, not time), and the grids of DTensors (state.py) against torch's own placement.
"""
from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass

import pytest
from hypothesis import currently_in_test_context, event, given, settings, strategies as st

from tierpoint.errors import ShardingError
from tierpoint.format import dtypes
from tierpoint.format.placement import infer_grid, mesh_grid, piece_box
from tierpoint.format.types import Box
from tierpoint.save.declare import (RankCells, RankDeclaration, TableEntry, declare,
                                    table_groups)
from tierpoint.save.jobplan import plan_declarations, plan_job, rank_writes
from tierpoint.save.plan import choose_chunk_shape, grid_chunk_shape, plan_save

DTYPES = ["float32", "int8", "float64", "bfloat16", "int64"]


@dataclass
class Leaf:
    """What declare() reads of a state.ArrayLeaf."""

    name: str
    dtype: str
    global_shape: tuple
    box: Box
    replicated: bool
    key: tuple
    grid: tuple | None


def grid_leaf(name, dtype, shape, parts, cell, replicated) -> Leaf:
    return Leaf(name, dtype, tuple(shape), piece_box(shape, parts, cell), replicated,
                tuple(name.split("/")), (tuple(parts), tuple(cell)))


def box_leaf(name, dtype, shape, box, replicated) -> Leaf:
    return Leaf(name, dtype, tuple(shape), box, replicated, tuple(name.split("/")),
                infer_grid(shape, box))


def coordinates(mesh):
    return list(itertools.product(*map(range, mesh)))


def mesh_leaf(name, dtype, shape, mesh, coord, shard_dims) -> Leaf:
    """A DTensor-like leaf: mesh dim m splits tensor dim shard_dims[m] (None: replicate)."""
    parts, cell = mesh_grid(len(shape), mesh, coord, shard_dims)
    return grid_leaf(name, dtype, shape, parts, cell, None in shard_dims)


def project(writes):
    """(array fields staging uses, chunk) of a rank's writes."""
    return [(a.name, a.dtype, a.shape, a.chunk_shape, c) for a, c in writes]


def assert_same_plans(decls, domains=None, chunk_bytes=64):
    """plan_job == plan_save on the same declarations, in every view a rank or a test has."""
    world = len(decls)
    domains = domains or [0] * world
    want = plan_save([d.local_arrays() for d in decls], chunk_bytes=chunk_bytes,
                     domains=domains)
    job = plan_declarations(decls, chunk_bytes=chunk_bytes, domains=domains)
    assert job.expand() == want
    _events(decls, job)
    docs: dict = {}
    for r in range(world):
        rp = job.rank_plan(r)
        assert json.loads(json.dumps(rp)) == rp
        got = rank_writes(decls[r], rp, r, chunk_bytes=chunk_bytes)
        assert project(got) == project(want.writes_of(r))
        in_domain = [q for q in range(world) if domains[q] == domains[r]]
        assert rp["domain_bytes"] == sum(c.box.volume * dtypes.itemsize(a.dtype)
                                         for q in in_domain for a, c in want.writes_of(q))
        for i in rp["docs"]:
            docs.setdefault((domains[r], decls[r].table[i].name), []).append(r)
    # Every array held in a domain has its zarr.json written there by one of its holders.
    held = {(domains[r], e.name): r for r in range(world) for e in decls[r].table}
    assert sorted(docs) == sorted(held)
    for (dom, name), writers in docs.items():
        assert len(writers) == 1
        assert any(e.name == name for e in decls[writers[0]].table)
    # The manifest header's layout says the same as the expanded plan.
    header, groups = job.header_arrays(), job.header_groups()
    json.dumps([header, groups])
    for a in want.arrays:
        h = header[a.name]
        assert h["chunk_shape"] == list(a.chunk_shape) and h["shape"] == list(a.shape)
        if "grid" in h["layout"]:
            g = groups[h["layout"]["group"]]
            assert g["parts"] == h["layout"]["grid"]
            assert {r for b, hs in a.saved_boxes for r in hs} <= \
                {r for r, c in enumerate(g["cells"]) if c is not None}
        else:
            assert h["layout"]["shards"] == [{**b.to_json(), "ranks": list(hs)}
                                             for b, hs in a.saved_boxes]
    return job, want


def _events(decls, job) -> None:
    """Which kinds of layout a random example covered (--hypothesis-show-statistics)."""
    if not currently_in_test_context():
        return
    for what, yes in [("overrides", any(d.overrides for d in decls)),
                      ("several tables", len({d.table_digest() for d in decls}) > 1),
                      ("box-by-box array", any(a.group is None for a in job.arrays)),
                      ("grid array", any(a.group is not None for a in job.arrays)),
                      ("replicated grid", any(g.replicated for g in job.groups)),
                      ("empty cell", any(piece_box(e.shape, e.parts, c).volume == 0
                                         for g in job.groups for e in decls[0].table
                                         if e.parts == g.parts
                                         for c in g.cells if c is not None))]:
        if yes:
            event(what)


def declarations(leaves_per_rank):
    decls = [declare(leaves) for leaves in leaves_per_rank]
    for d in decls:
        assert RankDeclaration.from_json(json.loads(json.dumps(d.to_json()))) == d
        assert RankCells.from_json(json.loads(json.dumps(d.held().to_json()))) == d.held()
    return decls


# ---- random layouts ----------------------------------------------------------------------

@st.composite
def meshes(draw):
    mesh = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    if draw(st.booleans()):  # equal mesh dims: one grid, cells from different mesh dims
        mesh = (mesh[0],) * len(mesh)
    while math.prod(mesh) > 16:
        mesh = mesh[:-1]
    return mesh


@st.composite
def mesh_arrays(draw, mesh, count):
    """(name, dtype, shape, shard_dims) of arrays split over ``mesh``."""
    out = []
    for a in range(count):
        ndim = draw(st.integers(0, 3))
        shape = tuple(draw(st.integers(0, 9)) for _ in range(ndim))
        if ndim and draw(st.booleans()):
            shape = tuple(max(s, 1) for s in shape)  # mostly non-empty arrays
        dims = tuple(draw(st.none() | st.integers(0, ndim - 1)) if ndim else None
                     for _ in mesh)
        if out and draw(st.booleans()):  # the last one's grid over other mesh dims: its
            _, _, shape, last = out[-1]  # cells differ where mesh dims have equal sizes
            dims = tuple(draw(st.permutations(last)))
        out.append((f"p{a % 2}/w{a}", draw(st.sampled_from(DTYPES)), shape, dims))
    return out


@st.composite
def domain_maps(draw, world):
    kind = draw(st.sampled_from(["one", "blocks", "random"]))
    if kind == "one":
        return [0] * world
    if kind == "blocks":
        size = draw(st.integers(1, world))
        return [r // size for r in range(world)]
    return [draw(st.sampled_from("abc")) for _ in range(world)]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_regular_layouts_plan_like_plan_save(data):
    mesh = data.draw(meshes())
    arrays = data.draw(mesh_arrays(mesh, data.draw(st.integers(1, 5))))
    decls = declarations([[mesh_leaf(n, dt, shape, mesh, coord, dims)
                           for n, dt, shape, dims in arrays] for coord in coordinates(mesh)])
    world = len(decls)
    assert len({d.table_digest() for d in decls}) == 1  # one table for the whole job
    job, _ = assert_same_plans(decls, data.draw(domain_maps(world)),
                               data.draw(st.sampled_from([1, 8, 64, 1 << 20])))
    assert all(a.chunks is None for a in job.arrays)  # nothing listed chunk by chunk


def split_box(draw, box: Box, depth: int) -> list[Box]:
    """A random guillotine partition of ``box`` into non-empty boxes."""
    cut = [d for d in range(box.ndim) if box.shape[d] > 1]
    if depth == 0 or not cut or not draw(st.booleans()):
        return [box]
    d = draw(st.sampled_from(cut))
    at = draw(st.integers(1, box.shape[d] - 1))
    lo = Box(box.offset, box.shape[:d] + (at,) + box.shape[d + 1:])
    hi = Box(box.offset[:d] + (box.offset[d] + at,) + box.offset[d + 1:],
             box.shape[:d] + (box.shape[d] - at,) + box.shape[d + 1:])
    return split_box(draw, lo, depth - 1) + split_box(draw, hi, depth - 1)


@st.composite
def irregular_array(draw, name, world):
    """Each rank's leaf (or None) of an array cut into random boxes: a box per rank (first
    ranks of a random order), then replicas of random boxes, or empty boxes, or nothing."""
    shape = tuple(draw(st.integers(1, 8)) for _ in range(draw(st.integers(1, 3))))
    dtype = draw(st.sampled_from(DTYPES))
    boxes = split_box(draw, Box.whole(shape), 3)
    if len(boxes) > world:
        boxes = [Box.whole(shape)]
    replicated = draw(st.booleans())
    leaves: list = [None] * world
    for k, r in enumerate(draw(st.permutations(range(world)))):
        if k < len(boxes):
            leaves[r] = box_leaf(name, dtype, shape, boxes[k], replicated)
        elif replicated:
            pick = draw(st.integers(0, len(boxes) - 1))
            leaves[r] = box_leaf(name, dtype, shape, boxes[pick], True)
        elif draw(st.booleans()):  # a rank holding nothing of it may declare an empty box
            empty = Box((0,) * len(shape), (0,) + shape[1:])
            leaves[r] = box_leaf(name, dtype, shape, empty, False)
    return leaves


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_irregular_and_mixed_layouts_plan_like_plan_save(data):
    mesh = data.draw(meshes())
    world = math.prod(mesh)
    regular = data.draw(mesh_arrays(mesh, data.draw(st.integers(0, 3))))
    as_box = data.draw(st.sets(st.integers(0, world - 1)))  # ranks declaring boxes instead
    per_rank = [[] for _ in range(world)]
    for r, coord in enumerate(coordinates(mesh)):
        for a, (n, dt, shape, dims) in enumerate(regular):
            leaf = mesh_leaf(n, dt, shape, mesh, coord, dims)
            if r in as_box and a % 2 == 0:
                leaf.grid = None  # this rank sends the box: the array goes box by box
            per_rank[r].append(leaf)
    for a in range(data.draw(st.integers(1, 3))):
        for r, leaf in enumerate(data.draw(irregular_array(f"x{a}", world))):
            if leaf is not None:
                per_rank[r].append(leaf)
    assert_same_plans(declarations(per_rank), data.draw(domain_maps(world)),
                      data.draw(st.sampled_from([1, 16, 1 << 20])))


# ---- the layouts trainers use --------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 3, 8, 13])
def test_fsdp_every_array_rows_over_all_ranks(world):
    shapes = [(5, 3), (8,), (20, 2), (3,), (world * 4, 7), (1, 1)]  # rows < ranks: empty tails
    decls = declarations([[mesh_leaf(f"w{i}", "bfloat16", s, (world,), (r,), (0,))
                           for i, s in enumerate(shapes)] for r in range(world)])
    job, plan = assert_same_plans(decls, [r // 4 for r in range(world)], chunk_bytes=1 << 20)
    assert len(job.groups) == 2 == len(table_groups(decls[0].table))  # 1-D and 2-D
    assert plan.arrays[0].chunk_shape == (-(-5 // world), 3)


@pytest.mark.parametrize("dp,tp", [(2, 2), (4, 2), (3, 4)])
def test_dtensor_2d_rows_over_dp_columns_over_tp(dp, tp):
    arrays = [("attn/wq", (16, 12), (0, 1)), ("attn/bias", (12,), (None, 0)),
              ("mlp/w", (7, 9), (0, 1)), ("norm", (12,), (None, None))]
    decls = declarations([[mesh_leaf(n, "float32", s, (dp, tp), c, dims)
                           for n, s, dims in arrays] for c in coordinates((dp, tp))])
    assert_same_plans(decls, [r // tp for r in range(dp * tp)], chunk_bytes=32)


@pytest.mark.parametrize("rep,shard", [(2, 2), (2, 4), (3, 3)])
def test_hsdp_replicate_over_one_mesh_dim_shard_rows_over_the_other(rep, shard):
    arrays = [("w", (10, 3)), ("b", (3,)), ("e", (2, 5))]
    decls = declarations([[mesh_leaf(n, "float16", s, (rep, shard), c, (None, 0))
                           for n, s in arrays] for c in coordinates((rep, shard))])
    job, plan = assert_same_plans(decls, [r // shard for r in range(rep * shard)], 8)
    for a in plan.arrays:  # each replica group's node holds one copy of every chunk
        assert len(a.chunks) == rep * math.prod(-(-s // c) for s, c in
                                                zip(a.shape, a.chunk_shape))


@pytest.mark.parametrize("mesh", [(2, 2), (3, 3), (2, 2, 2)])
def test_an_array_split_over_another_mesh_dim_overrides_its_groups_cell(mesh):
    dims = [(0,) + (None,) * (len(mesh) - 1), (None,) * (len(mesh) - 1) + (0,)]
    decls = declarations([[mesh_leaf("a", "float32", (4, 4), mesh, c, dims[0]),
                           mesh_leaf("b", "float32", (4, 4), mesh, c, dims[1]),
                           mesh_leaf("c", "float32", (5, 4), mesh, c, dims[0]),
                           mesh_leaf("d", "int8", (2, 4), mesh, c, dims[1])]
                          for c in coordinates(mesh)])
    assert any(d.overrides for d in decls)
    world = math.prod(mesh)
    job, _ = assert_same_plans(decls, [r * 2 // world for r in range(world)], chunk_bytes=16)
    assert len(job.groups) == 2  # a and c share one; b and d (overridden) share the other


# ---- errors --------------------------------------------------------------------------------

def both_refuse(decls, match):
    with pytest.raises(ShardingError, match=match):
        plan_save([d.local_arrays() for d in decls])
    with pytest.raises(ShardingError, match=match):
        plan_declarations(decls)


def test_a_gap_in_a_grid_is_refused_naming_the_array():
    decls = declarations([[grid_leaf("ok", "float32", (4,), (4,), (r,), False),
                           grid_leaf("w", "float32", (8, 2), (4, 1), (min(r, 2), 0), True)]
                          for r in range(4)])
    both_refuse(decls, r"'w'.*gap")


def test_two_ranks_on_one_cell_is_refused_unless_replicated():
    decls = declarations([[grid_leaf("w", "float32", (8,), (2,), (0,), False)]
                          for r in range(2)])
    both_refuse(decls, r"'w'.*both hold")
    # holders of empty cells hold nothing, so they may coincide
    decls = declarations([[grid_leaf("v", "int8", (2,), (4,), (min(r, 3),), False)]
                          for r in range(5)])
    assert_same_plans(decls)


def test_disagreeing_dtype_or_shape_is_refused_naming_the_array_and_ranks():
    mk = [lambda r: grid_leaf("w", "float32" if r < 2 else "int8", (8,), (4,), (r,), False),
          lambda r: grid_leaf("w", "float32", (8,) if r != 3 else (12,), (4,), (r,), False)]
    for make, match in zip(mk, [r"'w'.*rank 0.*dtype.*rank 2", r"'w'.*rank 0.*rank 3"]):
        both_refuse(declarations([[make(r)] for r in range(4)]), match)


def test_errors_name_the_first_broken_array_in_both_planners():
    decls = declarations([[grid_leaf("a", "float32", (4,), (2,), (0,), False),
                           box_leaf("b", "float32", (5,), Box((0,), (3,)), False)]
                          for _ in range(2)])
    both_refuse(decls, r"'a'")
    decls = declarations([[box_leaf("a", "float32", (5,), Box((r,), (3,)), False)]
                          for r in range(2)])
    both_refuse(decls, r"'a'.*overlap")


def test_an_array_path_under_another_array_is_refused():
    decls = declarations([[grid_leaf("a", "int8", (2,), (1,), (0,), True),
                           grid_leaf("a/b", "int8", (2,), (1,), (0,), True)]])
    both_refuse(decls, "nests")


def test_cells_outside_the_grid_are_refused():
    entry = TableEntry("w", "int8", (4,), ("w",), (2,), False)
    with pytest.raises(ShardingError, match="outside its grid"):
        plan_job({"t": (entry,)}, ["t", "t"], [RankCells(((0,),)), RankCells(((2,),))])
    with pytest.raises(ValueError):
        TableEntry("w", "int8", (4,), ("w",), (2, 1), False)


# ---- the pure rules ------------------------------------------------------------------------

def test_infer_grid():
    assert infer_grid((8, 6), Box((4, 0), (2, 6))) == ((4, 1), (2, 0))
    assert infer_grid((8, 6), Box((0, 3), (8, 3))) == ((1, 2), (0, 1))
    assert infer_grid((), Box((), ())) == ((), ())
    assert infer_grid((0, 3), Box((0, 0), (0, 3))) == ((1, 1), (0, 0))
    assert infer_grid((10,), Box((9,), (1,))) == ((10,), (9,))
    assert infer_grid((10,), Box((9,), (3,))) is None  # outside
    assert infer_grid((10,), Box((8,), (2,))) == ((5,), (4,))
    assert infer_grid((10,), Box((2,), (3,))) is None  # 3 does not divide 10
    assert infer_grid((10,), Box((2,), (0,))) is None  # empty: explicit
    assert infer_grid((10,), Box((3,), (2,))) is None  # offset not aligned


@given(st.lists(st.integers(0, 12), min_size=0, max_size=3), st.data())
def test_the_grid_chunk_shape_is_choose_chunk_shape_of_the_cells(shape, data):
    parts = [data.draw(st.integers(1, 6)) for _ in shape]
    itemsize = data.draw(st.sampled_from([1, 2, 4, 8]))
    chunk_bytes = data.draw(st.sampled_from([1, 5, 16, 1 << 20]))
    cells = [piece_box(shape, parts, c) for c in itertools.product(*map(range, parts))]
    live = [b for b in cells if b.volume or not shape]
    assert grid_chunk_shape(shape, parts, itemsize, chunk_bytes) == \
        choose_chunk_shape(shape, itemsize, live, chunk_bytes)


def test_declaration_groups_cells_and_boxes():
    leaves = [grid_leaf("b", "float32", (4, 4), (2, 1), (1, 0), False),
              grid_leaf("a", "float32", (8,), (2,), (0,), False),
              grid_leaf("c", "float32", (6, 2), (2, 1), (0, 0), False),
              box_leaf("d", "int8", (7,), Box((0,), (3,)), False),
              grid_leaf("e", "int8", (), (), (), True)]
    d = declare(leaves)
    assert [e.name for e in d.table] == ["a", "b", "c", "d", "e"]
    assert table_groups(d.table) == [((2,), False), ((2, 1), False), ((), True)]
    assert d.cells == ((0,), (1, 0), ()) and d.overrides == {2: (0, 0)}
    assert d.boxes == {3: Box((0,), (3,))}
    assert [la.box for la in d.local_arrays()] == [leaf.box for leaf in
                                                   sorted(leaves, key=lambda x: x.name)]
    assert len(d.digest()) == 64 and d.table_digest() != d.digest()
    assert declare(reversed(leaves)).digest() == d.digest()


# ---- scale ---------------------------------------------------------------------------------

RANKS, ARRAYS, DP, TP = 16_384, 2_000, 2_048, 8


def scale_job():
    """A 2-D (dp x tp) job: matrices split over both mesh dims, vectors over dp (replicated
    over tp), norms replicated: one shared table, each rank's cells built directly."""
    table = []
    for i in range(ARRAYS):
        kind = i % 4
        if kind < 2:
            table.append(TableEntry(f"layers/{i:04d}/w", "bfloat16", (8192 + 64 * (i % 3), 4096),
                                    ("layers", f"{i:04d}", "w"), (DP, TP), False))
        elif kind == 2:
            table.append(TableEntry(f"layers/{i:04d}/b", "float32", (4096,),
                                    ("layers", f"{i:04d}", "b"), (DP,), True))
        else:
            table.append(TableEntry(f"layers/{i:04d}/n", "float32", (4096,),
                                    ("layers", f"{i:04d}", "n"), (1,), True))
    table.sort(key=lambda e: e.name)
    held = [RankCells(((r // TP, r % TP), (r // TP,), (0,))) for r in range(RANKS)]
    return tuple(table), held


def test_plan_job_at_16384_ranks_by_2000_arrays_holds_no_chunk_lists():
    table, held = scale_job()
    assert [g for g, _ in table_groups(table)] == [(DP, TP), (DP,), (1,)]
    t0 = time.perf_counter()
    job = plan_job({"t": table}, ["t"] * RANKS, held, domains=[r // 8 for r in range(RANKS)])
    t1 = time.perf_counter()
    plans = [job.rank_plan(r) for r in (0, 1, RANKS - 1)]
    decl = RankDeclaration(table, held[RANKS - 1].cells)
    t2 = time.perf_counter()
    writes = rank_writes(decl, plans[-1], RANKS - 1)
    t3 = time.perf_counter()
    print(f"\nplan_job {t1 - t0:.2f} s, rank_writes {t3 - t2:.3f} s "
          f"({len(writes)} chunks)")
    assert len(job.arrays) == ARRAYS and len(job.groups) == 3
    assert all(a.chunks is None and a.saved_boxes is None for a in job.arrays)
    assert all(len(g.cells) == RANKS for g in job.groups)
    assert all(len(json.dumps(p)) < 8_000 for p in plans)
    assert writes and all(c.writer == RANKS - 1 for _, c in writes)


# ---- DTensor leaves (state.py) ---------------------------------------------------------------

def dtensor_leaves(mesh_shape, placements, shape):
    """state.describe_array of a DTensor on every rank of a mesh, built in this process over
    torch's fake process group (one rank at a time)."""
    torch = pytest.importorskip("torch")
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from tierpoint.state import describe_array
    out = []
    for rank in range(math.prod(mesh_shape)):
        dist.init_process_group("fake", store=FakeStore(), rank=rank,
                                world_size=math.prod(mesh_shape))
        try:
            mesh = init_device_mesh("cpu", mesh_shape)
            local, _ = compute_local_shape_and_global_offset(shape, mesh, placements)
            dt = DTensor.from_local(torch.zeros(local), mesh, placements, run_check=False,
                                    shape=torch.Size(shape), stride=torch.empty(shape).stride())
            out.append(describe_array(("w",), dt))
        finally:
            dist.destroy_process_group()
    return out


def test_dtensor_leaves_declare_their_grid_cell():
    from torch.distributed.tensor import Replicate, Shard
    cases = [((4,), [Shard(0)], (10, 3), (4, 1)), ((4,), [Shard(0)], (2, 3), (4, 1)),
             ((2, 3), [Shard(0), Shard(1)], (5, 7), (2, 3)),
             ((2, 2), [Replicate(), Shard(0)], (3, 4), (2, 1)),
             ((2, 2), [Shard(1), Shard(1)], (3, 8), (1, 4)),
             ((1,), [Replicate()], (), ())]
    for mesh, placements, shape, parts in cases:
        leaves = dtensor_leaves(mesh, placements, shape)
        for leaf in leaves:
            assert leaf.grid is not None and leaf.grid[0] == parts, (mesh, placements)
            cell = piece_box(shape, *leaf.grid)
            assert cell == leaf.box or cell.volume == leaf.box.volume == 0
        decls = declarations([[leaf] for leaf in leaves])
        assert_same_plans(decls, chunk_bytes=8)


def test_uneven_nested_dtensor_sharding_is_declared_box_by_box():
    from torch.distributed.tensor import Shard
    leaves = dtensor_leaves((2, 2), [Shard(0), Shard(0)], (10,))  # 3,2,3,2: not torch.chunk
    assert [leaf.box.shape for leaf in leaves] == [(3,), (2,), (3,), (2,)]
    assert leaves[0].grid == ((4,), (0,)) and all(leaf.grid is None for leaf in leaves[1:])
    job, _ = assert_same_plans(declarations([[leaf] for leaf in leaves]))
    assert job.arrays[0].group is None


def test_plain_tensors_and_shards_declare_their_grid():
    import numpy as np
    from tierpoint.state import Shard as TShard, describe_array
    assert describe_array(("a",), np.zeros((3, 2))).grid == ((1, 1), (0, 0))
    assert describe_array(("a",), np.float32(1)).grid == ((), ())
    leaf = describe_array(("a",), TShard(np.zeros((2, 4)), (8, 4), (6, 0)))
    assert leaf.grid == ((4, 1), (3, 0))
    assert describe_array(("a",), TShard(np.zeros((3, 4)), (8, 4), (5, 0))).grid is None
