"""The pure restore plan (restore/plan.py) in one process: N->M layouts without MPI.

For every save world N and restore world M in 1..8 and pairs of shardings (rows, columns, 2-D
blocks, uneven, replicated, with a 0-d and a 1-D array beside), the manifest a save of N ranks
writes is built from save/plan.py's real chunk grid and writers; the plan of each of the M
restoring ranks must tile its boxes exactly with chunks of that manifest, and a local copy must
serve a rank exactly when no chunk it needs lies only in another domain's directory. Then the
step choice against an oracle and its exact messages, the template check's messages, and the
plan executed on a real single-rank checkpoint, bit for bit.
"""
from __future__ import annotations

import itertools
import math
import os
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tierpoint
from tierpoint.errors import CheckpointNotFoundError, CheckpointWarning, StateMismatchError
from tierpoint.format import dtypes, layout
from tierpoint.format.manifest import Manifest
from tierpoint.format.types import Box, LocalArray
from tierpoint.options import Options
from tierpoint.restore import execute
from tierpoint.restore.plan import (CopyChoice, StepChoice, StepFindings, TemplateLeaf,
                                    check_template, choose_copy, choose_step,
                                    copy_serves, parent_record, plan_reads, slices_for)
from tierpoint.runtime import comm as comm_mod
from tierpoint.runtime.topology import Topology
from tierpoint.save.plan import plan_save
from tierpoint.tiers import holdings
from tierpoint.tiers.local import LocalTier


def local_copy_serves(plan, manifest, declared, present):
    """``copy_serves`` for a node-local copy that declares domain ``declared`` (None: an old
    checkpoint with no declaration) and holds the files ``present(array path, key)`` says."""
    return copy_serves(
        plan, lambda a, k: holdings.expected_here(manifest, a, k, declared),
        lambda a, k: present(a.path, k))


def v2_local_copy_serves(leaves, saved, domain, present, rank):
    """Format version 2: a node-local copy of ``domain`` holds its ranks' slices; the reader
    computes from the header which of them record the chunks it reads (``slices_for``), reads
    only those, and is served exactly when the version 1 judgement serves it. Returns
    (served, the slices read)."""
    header, documents = saved
    available = {r for r, d in enumerate(header.domains) if d == domain}
    plan = plan_reads(leaves, header)
    need = slices_for(header, plan.chunks(), available, rank)
    assert need <= available
    loaded = header.with_slices({r: documents[r] for r in need})
    plan = plan.with_records({n: a.chunks for n, a in loaded.arrays.items()})
    served = copy_serves(plan, lambda a, k: holdings.expected_here(loaded, a, k, domain),
                         lambda a, k: k in a.chunks and present(a.path, k))
    return served, need

SHAPE = (12, 10)          # the 2-D array every sharding splits
VECTOR = (7,)             # a 1-D array split by rows (replicated with "replicated")
KINDS = ["rows", "cols", "blocks", "uneven", "replicated"]
RANKS_PER_NODE = 2        # rank r runs on node r // 2 (its domain), saving and restoring


def split(extent: int, parts: int, weights=None) -> list[tuple[int, int]]:
    """(offset, size) of ``parts`` consecutive pieces of ``extent`` (near-even, or in
    proportion to ``weights``); pieces may be empty when parts > extent."""
    weights = weights or [1] * parts
    total = sum(weights)
    cuts = [round(extent * sum(weights[:i]) / total) for i in range(parts + 1)]
    return [(a, b - a) for a, b in zip(cuts, cuts[1:])]


def mesh(world: int) -> tuple[int, int]:
    """The most square a x b == world."""
    a = max(d for d in range(1, int(math.isqrt(world)) + 1) if world % d == 0)
    return a, world // a


def boxes(kind: str, shape, world: int) -> list[tuple[Box, bool]]:
    """Each rank's (box, replicated) of an array of ``shape`` under a sharding ``kind``."""
    if kind == "replicated" or len(shape) == 0:
        return [(Box.whole(shape), True)] * world
    if len(shape) == 1:
        return [(Box((o,), (n,)), False) for o, n in split(shape[0], world)]
    rows, cols = shape
    if kind == "rows":
        return [(Box((o, 0), (n, cols)), False) for o, n in split(rows, world)]
    if kind == "cols":
        return [(Box((0, o), (rows, n)), False) for o, n in split(cols, world)]
    if kind == "uneven":  # rank r holds a share of the rows proportional to r + 1
        pieces = split(rows, world, [r + 1 for r in range(world)])
        return [(Box((o, 0), (n, cols)), False) for o, n in pieces]
    a, b = mesh(world)
    rs, cs = split(rows, a), split(cols, b)
    return [(Box((rs[r // b][0], cs[r % b][0]), (rs[r // b][1], cs[r % b][1])), False)
            for r in range(world)]


def layout_of(kind: str, world: int) -> dict[str, list[tuple[Box, bool]]]:
    """name -> each rank's (box, replicated): the 2-D array under ``kind``, a vector split
    by rows (or replicated), a 0-d scalar held by every rank."""
    return {"m": boxes(kind, SHAPE, world),
            "v": boxes("replicated" if kind == "replicated" else "rows", VECTOR, world),
            "s": boxes("replicated", (), world)}


DTYPE = {"m": "float32", "v": "int64", "s": "float64"}
SHAPES = {"m": SHAPE, "v": VECTOR, "s": ()}


def save_domains(world: int) -> list[int]:
    return [r // RANKS_PER_NODE for r in range(world)]


def saved_manifest(kind: str, world: int, step: int = 7) -> tuple[Manifest, object]:
    """The manifest (and save plan) of a save of ``world`` ranks laid out as ``kind``: the
    real chunk grid and writers of save/plan.py, record fields as a save writes them."""
    held = layout_of(kind, world)
    declarations = [[LocalArray(name, DTYPE[name], SHAPES[name], held[name][r][0],
                                held[name][r][1]) for name in sorted(held)]
                    for r in range(world)]
    domains = save_domains(world)
    plan = plan_save(declarations, chunk_bytes=48, domains=domains)
    arrays = {}
    for a in plan.arrays:
        chunks: dict[str, dict] = {}
        for c in a.chunks:
            rec = chunks.setdefault(layout.chunk_key(c.index), {
                "nbytes": c.box.volume * dtypes.itemsize(a.dtype) + layout.CRC_BYTES,
                "crc32c": 0, "writers": []})
            rec["writers"].append(c.writer)
        arrays[a.name] = {"name": a.name, "path": a.name, "key": [a.name], "dtype": a.dtype,
                          "shape": list(a.shape), "chunk_shape": list(a.chunk_shape),
                          "fingerprint": "", "chunks": chunks,
                          "shards": [{**b.to_json(), "ranks": list(h)}
                                     for b, h in a.saved_boxes]}
    ranks = [{"rank": r, "node": f"n{d}", "host": f"n{d}", "pid": 1, "tier_dir": "/local",
              "domain": d} for r, d in enumerate(domains)]
    doc = layout.build_manifest(run="r", step=step, world_size=world, ranks=ranks,
                                arrays=arrays, values={"epoch": {"value": 3}}, metadata=None,
                                versions={})
    assert layout.manifest_problems(doc) == []
    return Manifest.from_document(doc), plan


def v2_of(manifest: Manifest):
    """The same save in format version 2: its header (layouts from the saved boxes) and
    every rank's slice document, sealed as a save seals them (save/records.py)."""
    from tierpoint.format import slices
    world = manifest.world_size
    records: list[dict] = [{} for _ in range(world)]
    for a in manifest.arrays.values():
        for key, rec in a.chunks.items():
            for w in rec.writers:
                records[w].setdefault(a.name, {})[key] = {
                    "nbytes": rec.nbytes, "crc32c": 0, "sha256": f"{w:02x}" * 32,
                    "fingerprint": "0" * 16}
    documents = [slices.slice_document(run="r", step=manifest.step, rank=r, arrays=records[r])
                 for r in range(world)]
    paths = {n: a.path for n, a in manifest.arrays.items()}
    digest, entries = slices.seal([slices.entry_of(slices.encode(d), d, paths)
                                   for d in documents])
    arrays = {n: a.header_document() for n, a in manifest.arrays.items()}
    doc = layout.build_header(run="r", step=manifest.step, world_size=world,
                              ranks=[r.to_document() for r in manifest.ranks], arrays=arrays,
                              groups=[], slice_entries={r: e.to_document()
                                                        for r, e in enumerate(entries)},
                              values={"epoch": {"value": 3}}, metadata=None, versions={},
                              digest=digest)
    assert layout.manifest_problems(doc) == []
    return Manifest.from_document(doc), dict(enumerate(documents))


def leaves_of(kind: str, world: int, rank: int) -> list[TemplateLeaf]:
    held = layout_of(kind, world)
    return [TemplateLeaf(name, SHAPES[name], DTYPE[name], held[name][rank][0])
            for name in ("m", "s", "v")]


def local_files(manifest: Manifest, domain: int) -> set[tuple[str, str]]:
    """The (array path, chunk key) files a domain's directory holds after the save."""
    return {(a.path, key) for a in manifest.arrays.values() for key, rec in a.chunks.items()
            if any(manifest.domains[w] == domain for w in rec.writers)}


def needs_only_own_domain(save_plan, leaves, domain: int) -> bool:
    """Oracle, from the save plan's assignments and box geometry alone: every chunk a leaf's
    box overlaps has a writer in ``domain``."""
    domains = save_domains(save_plan.world_size)
    for leaf in leaves:
        a = next(p for p in save_plan.arrays if p.name == leaf.name)
        if leaf.box.volume == 0 and leaf.box.ndim:
            continue
        touched = {c.index for c in a.chunks if c.box.intersect(leaf.box) is not None}
        mine = {c.index for c in a.chunks if domains[c.writer] == domain}
        if not touched <= mine:
            return False
    return True


def check_tiling(manifest: Manifest, leaves, plan) -> None:
    for leaf in leaves:
        read = plan.read_of(leaf.name)
        assert read is not None, leaf.name
        cover = np.zeros(leaf.box.shape, dtype=np.int32)
        for item, key in zip(read.items, read.chunk_keys()):
            assert key in read.record.chunks, (leaf.name, key)
            assert item.chunk_box == read.record.chunk_box(key)
            assert item.chunk_box.contains(
                Box(tuple(o + c for o, c in zip(item.chunk_box.offset,
                                                item.chunk_region.offset)),
                    item.chunk_region.shape))
            assert item.chunk_region.shape == item.target_region.shape
            assert tuple(o + c for o, c in zip(item.chunk_box.offset, item.chunk_region.offset)) \
                == tuple(o + t for o, t in zip(leaf.box.offset, item.target_region.offset))
            cover[item.target_region.slices()] += 1
        assert (cover == 1).all(), (leaf.name, leaf.box)


SAVED = {(k, n): saved_manifest(k, n) for k in KINDS for n in range(1, 9)}
SAVED_V2 = {key: v2_of(manifest) for key, (manifest, _) in SAVED.items()}


@pytest.mark.parametrize("save_kind", KINDS)
def test_n_to_m_plans_tile_every_box_and_judge_local_copies(save_kind):
    cases, judged = 0, {True: 0, False: 0}
    for n, m, restore_kind in itertools.product(range(1, 9), range(1, 9), KINDS):
        manifest, save_plan = SAVED[(save_kind, n)]
        save_domain_count = len(set(manifest.domains))
        for rank in range(m):
            leaves = leaves_of(restore_kind, m, rank)
            plan = plan_reads(leaves, manifest)
            check_tiling(manifest, leaves, plan)
            cases += 1
            # The local copy of the node this rank runs on, if the save had that node.
            domain = rank // RANKS_PER_NODE
            if domain >= save_domain_count:
                continue
            files = local_files(manifest, domain)
            oracle = needs_only_own_domain(save_plan, leaves, domain)
            as_written = local_copy_serves(plan, manifest, domain,
                                           lambda p, k: (p, k) in files)
            assert as_written == oracle, (save_kind, n, restore_kind, m, rank)
            judged[as_written] += 1
            # No declaration (a checkpoint older than markers): presence alone decides.
            assert local_copy_serves(plan, manifest, None,
                                     lambda p, k: (p, k) in files) == oracle
            # Every node's copy gathered into one directory, and a capacity copy: served.
            assert local_copy_serves(plan, manifest, domain, lambda p, k: True)
            assert local_copy_serves(plan, manifest, None, lambda p, k: True)
            served, read = v2_local_copy_serves(leaves, SAVED_V2[(save_kind, n)], domain,
                                                lambda p, k: (p, k) in files, rank)
            assert served == oracle, ("v2", save_kind, n, restore_kind, m, rank)
            if n == m and save_kind == restore_kind:
                assert as_written  # the same layout on the same nodes reads locally
                # ... from its own slice, and (for replicated state, written once per node
                # by one of its holders) its node's slices
                assert rank in read or not any(
                    manifest.arrays[leaf.name].chunks for leaf in leaves)
                if save_kind != "replicated":
                    assert read <= {rank} | {r for r in range(n)
                                             if r // RANKS_PER_NODE == domain}
                    assert len(read) <= 2, read  # its own, and the scalar's writer
    assert cases == 8 * sum(range(1, 9)) * len(KINDS)
    # Replicated state is written into every node's directory: always served there; a
    # sharded save leaves some restoring layouts needing another node's chunks.
    assert judged[True] > 0 and (judged[False] == 0) == (save_kind == "replicated"), judged


def test_a_copy_declaring_its_domain_needs_no_presence_check_for_its_own_chunks():
    manifest, _ = SAVED[("rows", 4)]
    plan = plan_reads(leaves_of("rows", 4, 3), manifest)
    asked = []
    assert local_copy_serves(plan, manifest, 1, lambda p, k: asked.append((p, k)) or False)
    assert asked == []  # rank 3's rows were written by rank 3 into domain 1
    # Read on another node, the same rows are only found by presence: absent, not served.
    assert not local_copy_serves(plan, manifest, 0, lambda p, k: False)


def test_leaves_missing_or_of_another_shape_have_no_reads():
    manifest, _ = SAVED[("rows", 2)]
    leaves = [TemplateLeaf("m", (3, 3), "float32", Box.whole((3, 3))),
              TemplateLeaf("gone", (2,), "float32", Box.whole((2,))),
              TemplateLeaf("v", VECTOR, "float32", Box.whole(VECTOR))]
    plan = plan_reads(leaves, manifest)
    assert [r.name for r in plan.reads] == ["v"] and plan.step == 7


def test_an_empty_box_reads_nothing():
    manifest, _ = SAVED[("rows", 3)]
    plan = plan_reads([TemplateLeaf("m", SHAPE, "float32", Box((12, 0), (0, 10)))], manifest)
    assert plan.read_of("m").items == ()


# ---- the step choice -------------------------------------------------------------------------

TIER_DIRS = ["/t0", "/t1", "/t2", "/t3"]
WHAT = "restore of run 'r'"


def findings(local, capacity, readable) -> StepFindings:
    return StepFindings(tuple(local), tuple(capacity), tuple(readable))


def test_findings_read_every_capacity_step_and_the_local_ones_that_serve():
    f = StepFindings.of({3: True, 4: False, 5: True}, [1, 4])
    assert f == findings([3, 4, 5], [1, 4], [1, 3, 4, 5])
    assert StepFindings.from_json(f.to_json()) == f


@st.composite
def per_rank_findings(draw):
    world = draw(st.integers(1, 4))
    out = []
    for _ in range(world):
        local = draw(st.sets(st.integers(1, 6), max_size=4))
        capacity = draw(st.sets(st.integers(1, 6), max_size=3))
        served = {s: draw(st.booleans()) for s in local}
        out.append(StepFindings.of(served, capacity))
    return out, draw(st.one_of(st.none(), st.integers(1, 6)))


@settings(max_examples=400, deadline=None)
@given(per_rank_findings())
def test_choose_step_reads_the_newest_step_every_rank_can_read(case):
    found, asked = case
    common = set.intersection(*(set(f.readable) for f in found))
    held = set.union(*(set(f.local) | set(f.capacity) for f in found))
    try:
        choice = choose_step(asked, [f.readable for f in found], what=WHAT, run="r",
                             tier_dirs=TIER_DIRS, found=found)
    except CheckpointNotFoundError as e:
        assert (not common) if asked is None else asked not in common
        assert str(e).startswith(WHAT + ": ")
        return
    if asked is None:
        assert choice.step == max(common)
        newer = any(s > max(common) for s in held)
        assert (choice.warning is not None) == newer
    else:
        assert choice.step == asked and choice.warning is None


def test_choose_step_messages():
    lost = [findings([3, 4], [], [3, 4]), findings([3], [], [3])]
    choice = choose_step(None, [f.readable for f in lost], what=WHAT, run="r",
                         tier_dirs=TIER_DIRS, found=lost)
    assert choice.step == 3
    assert choice.warning == (
        "restore of run 'r': restoring step 3, the newest every rank can read "
        "(step 4 is committed, but not on the capacity tier, and the local tiers of ranks "
        "[1] lack it: a lost node?)")
    elsewhere = [findings([3, 4], [], [3, 4]), findings([3, 4], [], [3])]
    choice = choose_step(None, [f.readable for f in elsewhere], what=WHAT, run="r",
                         tier_dirs=TIER_DIRS, found=elsewhere)
    assert choice.warning.endswith(
        "(step 4 is committed, but not on the capacity tier, and some ranks need chunks that "
        "another node wrote to its local tier)")
    with pytest.raises(CheckpointNotFoundError) as e:
        choose_step(4, [f.readable for f in elsewhere], what=WHAT, run="r",
                    tier_dirs=TIER_DIRS, found=elsewhere)
    assert str(e.value) == (
        "restore of run 'r': step 4 is not committed where ranks [1] can read it (rank 1 "
        "looks in /t1) (step 4 is committed, but not on the capacity tier, and some ranks "
        "need chunks that another node wrote to its local tier)")
    with pytest.raises(CheckpointNotFoundError) as e:
        choose_step(2, [f.readable for f in elsewhere], what=WHAT, run="r",
                    tier_dirs=TIER_DIRS, found=elsewhere)
    assert str(e.value) == ("restore of run 'r': step 2 is not committed where ranks [0, 1] "
                            "can read it (rank 0 looks in /t0)")
    nothing = [findings([], [], []), findings([5], [], [])]
    with pytest.raises(CheckpointNotFoundError) as e:
        choose_step(None, [[], []], what=WHAT, run="r", tier_dirs=TIER_DIRS, found=nothing)
    assert str(e.value) == (
        "restore of run 'r': no checkpoint of run 'r' is committed where every rank can read "
        "it (rank 0 looks in /t0) (step 5 is committed, but not on the capacity tier, and the "
        "local tiers of ranks [0] lack it: a lost node?)")
    # Without findings (the drain's use): the step every rank holds, no explanation.
    assert choose_step(None, [[1, 2], [2]], what="drain", run="r",
                       tier_dirs=TIER_DIRS) == StepChoice(2)
    with pytest.raises(CheckpointNotFoundError, match=r"^drain: no checkpoint of run 'r' is "
                       r"committed where every rank can read it \(rank 0 looks in /t0\)$"):
        choose_step(None, [[1], [2]], what="drain", run="r", tier_dirs=TIER_DIRS)


def test_choose_copy_reads_the_local_copy_first_and_falls_back_to_the_capacity_tier():
    f = findings([3, 4], [2, 3], [2, 3, 4])
    assert choose_copy(3, f) == CopyChoice(3, local=True, capacity=True)
    assert choose_copy(4, f) == CopyChoice(4, local=True, capacity=False)
    assert choose_copy(2, f) == CopyChoice(2, local=False, capacity=True)


# ---- the template check ----------------------------------------------------------------------

def test_check_template_messages():
    manifest, _ = SAVED[("rows", 2)]
    ok = leaves_of("rows", 2, 0)
    check_template(ok, ["epoch"], manifest, strict=True, source="/d")
    gone = [*ok, TemplateLeaf("gone", (2,), "float32", Box.whole((2,)))]
    with pytest.raises(StateMismatchError) as e:
        check_template(gone, [], manifest, strict=True, source="/d")
    assert str(e.value) == ("key 'gone' is not an array in checkpoint step 7 (/d); pass "
                            "strict=False to skip missing keys")
    check_template(gone, ["nope"], manifest, strict=False, source="/d")
    with pytest.raises(StateMismatchError) as e:
        check_template([TemplateLeaf("m", (3, 4), "float32", Box.whole((3, 4)))], [],
                       manifest, strict=False, source="/d")
    assert str(e.value) == ("key 'm': the checkpoint holds shape [12, 10] but the template "
                            "has global shape [3, 4]")
    with pytest.raises(StateMismatchError) as e:
        check_template([TemplateLeaf("m", SHAPE, "float16", Box.whole(SHAPE))], [],
                       manifest, strict=True, source="/d")
    assert str(e.value) == ("key 'm': the checkpoint holds float32 but the template has "
                            "float16")
    with pytest.raises(StateMismatchError) as e:
        check_template(ok, ["nope"], manifest, strict=True, source="/d")
    assert str(e.value) == ("key 'nope' of the template is not a JSON value in checkpoint "
                            "step 7 (/d); pass strict=False to skip missing keys")


def test_parent_record():
    manifest, _ = SAVED[("rows", 1)]
    assert parent_record(manifest, "/x/step") == {"run": "r", "step": 7, "digest": "",
                                                  "path": "/x/step"}


# ---- the plan executed on a real checkpoint --------------------------------------------------

def real_state():
    rng = np.random.default_rng(5)
    return {"m": rng.standard_normal(SHAPE).astype(np.float32),
            "v": rng.integers(-2**40, 2**40, VECTOR, dtype=np.int64),
            "s": np.float64(2.5), "epoch": 3}


@pytest.fixture
def saved(tmp_path):
    state = real_state()
    with tierpoint.Checkpointer(str(tmp_path / "local"), run="r", chunk_bytes=48) as ck:
        ck.save(4, state, blocking=True)
        directory = ck.step_dir(4)
    return state, str(tmp_path / "local"), directory


@pytest.mark.parametrize("kind", KINDS)
def test_plans_of_m_ranks_execute_bit_exactly_on_a_real_checkpoint(saved, kind):
    state, _, directory = saved
    manifest = layout.read_manifest(directory)
    assert len(manifest.arrays["m"].chunks) > 1  # a real grid, not one chunk
    copies = execute.TierCopies([LocalTier.copy_at(directory, manifest)])
    for m in range(1, 6):
        for rank in range(m):
            leaves = leaves_of(kind, m, rank)
            plan = plan_reads(leaves, manifest)
            check_tiling(manifest, leaves, plan)
            assert local_copy_serves(plan, manifest, 0, lambda p, k: False)
            for leaf in leaves:
                target = np.full(leaf.box.shape, 7, dtype=np.dtype(leaf.dtype))
                execute.read_planned_array(copies, plan.read_of(leaf.name), target, threads=2)
                want = np.asarray(state[leaf.name])[leaf.box.slices()]
                assert target.tobytes() == want.tobytes(), (kind, m, rank, leaf.name)


def test_a_copy_without_declaration_is_judged_by_the_files_it_holds(saved):
    _, _, directory = saved
    manifest = layout.read_manifest(directory)
    assert holdings.declared_domain(directory) == 0
    plan = plan_reads(leaves_of("rows", 2, 1), manifest)
    present = (lambda p, k: holdings.chunk_present(directory, p, k))
    assert local_copy_serves(plan, manifest, None, present)
    key = plan.read_of("m").chunk_keys()[-1]
    os.remove(os.path.join(directory, "m", key))
    assert not local_copy_serves(plan, manifest, None, present)
    assert local_copy_serves(plan, manifest, 0, present)  # expected: the read calls it damage
    # The other rank's rows do not need that chunk.
    other = plan_reads(leaves_of("rows", 2, 0), manifest)
    assert key not in other.read_of("m").chunk_keys()
    assert local_copy_serves(other, manifest, None, present)


def test_restore_state_in_one_process(saved, tmp_path):
    state, root, directory = saved
    template = {"m": np.zeros(SHAPE, np.float32), "v": np.zeros(VECTOR, np.int64),
                "s": np.float64(0), "epoch": 0}
    topology = Topology.from_startup(0, [{"rank": 0, "node": "n", "host": "h", "pid": 1,
                                          "tier_dir": root}])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        restored = execute.restore_state(template, None, strict=True,
                                         comm=comm_mod.resolve(None), topology=topology,
                                         run="r", local=LocalTier(root), capacity=None,
                                         options=Options(io_threads=2))
    assert restored.step == 4 and restored.source == directory
    assert restored.parent == {"run": "r", "step": 4,
                               "digest": layout.load_manifest(directory)["digest"],
                               "path": directory}
    out = restored.state
    assert out["m"] is template["m"] and out["m"].tobytes() == state["m"].tobytes()
    assert out["v"].tobytes() == state["v"].tobytes()
    assert out["s"] == state["s"] and out["epoch"] == 3
    with pytest.raises(CheckpointNotFoundError, match=r"step 5 is not committed where ranks "
                       r"\[0\] can read it \(rank 0 looks in " + root):
        execute.restore_state(template, 5, strict=True, comm=comm_mod.resolve(None),
                              topology=topology, run="r", local=LocalTier(root), capacity=None,
                              options=Options(io_threads=1))
