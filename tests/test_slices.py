"""Format version 2: manifest slices (one per saving rank), their Merkle roots and inclusion
proofs, the writers of a chunk found from the header alone, and a reader that reads only the
slices it needs."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings

import numpy as np
import pytest

from slicejob import RUN, node_root, to_version_1, write_job
from tierpoint.format import integrity, placement, slices
from tierpoint.format.integrity import merkle_proofs, merkle_root, proof_depth, proof_root
from tierpoint.errors import CheckpointWarning, CorruptCheckpointError
from tierpoint.format import layout
from tierpoint.format.types import Box
from tierpoint.restore import execute
from tierpoint.restore.plan import TemplateLeaf
from tierpoint.tiers.local import LocalTier
from tierpoint.trust.inspect import info
from tierpoint.trust.verify import verify_checkpoint


# ---- inclusion proofs ------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33])
def test_every_proof_leads_to_the_root_and_only_for_its_own_leaf(count):
    leaves = [f"leaf {i}".encode() for i in range(count)]
    root = merkle_root(leaves)
    proofs = merkle_proofs(leaves)
    assert len(proofs) == count
    for i, proof in enumerate(proofs):
        assert len(proof) == proof_depth(count)
        assert proof_root(leaves[i], i, count, proof) == root
        assert proof_root(b"another leaf", i, count, proof) != root
        if count > 1:
            j = (i + 1) % count
            assert proof_root(leaves[i], j, count, proof) != root or leaves[i] == leaves[j]
    assert proof_root(leaves[0], count, count, proofs[0]) is None  # no such position
    assert proof_root(leaves[0], 0, count, proofs[0] + [b"x" * 32]) is None  # wrong length


def test_a_changed_sibling_breaks_the_proof():
    leaves = [bytes([i]) for i in range(6)]
    proofs = merkle_proofs(leaves)
    bad = list(proofs[4])
    bad[1] = hashlib.sha256(b"forged").digest()
    assert proof_root(leaves[4], 4, 6, bad) != merkle_root(leaves)


def test_the_digest_of_slices_is_the_root_over_rank_leaves():
    roots = [hashlib.sha256(bytes([r])).hexdigest() for r in range(5)]
    digest = integrity.slices_digest(roots)
    leaves = [integrity.rank_leaf(r, root) for r, root in enumerate(roots)]
    assert digest == integrity.DIGEST_PREFIX + merkle_root(leaves).hex()
    assert integrity.slices_digest(roots[::-1]) != digest  # rank order matters


def _entry(rank: int) -> "slices.SliceEntry":
    from tierpoint.format.manifest import SliceEntry
    return SliceEntry(hashlib.sha256(b"file %d" % rank).hexdigest(),
                      hashlib.sha256(b"root %d" % rank).hexdigest(), None, rank, 10 * rank)


@pytest.mark.parametrize("shape", [[1], [5], [1, 1], [3, 1, 2], [4, 4, 4, 4], [2, 3, 1, 5, 2],
                                   [8] * 9])
def test_version_3_digest_is_a_tree_of_domain_subtrees(shape):
    """Domains of the given sizes (ranks numbered in order): the digest is the root over one
    leaf per domain (its subtree's root), a single domain's root being the digest; the
    leaders' seal_group and the coordinator's seal_top give the same digest and proofs as
    one-process sealing and as recomputing from every root; every proof leads there from
    its own rank only."""
    groups, rank = {}, 0
    for d, size in enumerate(shape):
        groups[d] = list(range(rank, rank + size))
        rank += size
    tree = slices.DigestTree(groups)
    entries = [_entry(r) for r in range(rank)]
    roots = {r: e.root for r, e in enumerate(entries)}
    expected = integrity.DIGEST_PREFIX + (
        integrity.group_root(groups[0], roots) if len(shape) == 1 else merkle_root(
            [integrity.group_leaf(d, integrity.group_root(groups[d], roots))
             for d in groups]).hex())
    digest, proven = slices.seal(entries, tree)
    assert digest == expected == integrity.tree_digest(groups, roots)
    assert slices.digest_of(dict(enumerate(entries)), tree) == digest
    assert slices.digest_of(dict(list(enumerate(entries))[1:]), tree) is None
    # As a save computes it: each leader its domain, the coordinator the top.
    sealed = [slices.seal_group(groups[d], entries) for d in groups]
    top, tops = slices.seal_top(list(groups), [root for root, _ in sealed])
    assert top == digest
    for d, (_, inner) in enumerate(sealed):
        for r, proof in inner.items():
            assert proven[r].proof == proof + tops[d]
    for r, e in enumerate(proven):
        assert slices.proves(e, r, tree, digest)
        assert not slices.proves(e, r, tree, integrity.DIGEST_PREFIX + "00" * 32)
        other = (r + 1) % rank
        if other != r:
            assert not slices.proves(e, other, tree, digest)  # the leaf binds the rank
        forged = slices.SliceEntry(e.sha256, hashlib.sha256(b"x").hexdigest(), e.proof,
                                   e.chunks, e.bytes)
        assert not slices.proves(forged, r, tree, digest)
        assert not slices.proves(slices.with_proof(e, e.proof + ("00" * 32,)), r, tree, digest)
    if len(shape) > 1:  # version 2's tree over the same ranks gives another digest
        assert slices.seal(entries)[0] != digest
    assert integrity.slice_root({"a": {"c.0": "11", "c.1": "22"}}) != \
        integrity.slice_root({"a": {"c.0": "22", "c.1": "11"}})


# ---- writers from the header ------------------------------------------------------------------

def test_writers_of_a_box_layout_follow_the_replica_rule():
    shards = {"shards": [{"offset": [0, 0], "shape": [4, 6], "ranks": [0]},
                         {"offset": [4, 0], "shape": [4, 6], "ranks": [1, 2, 3, 4]}]}
    domains = [0, 0, 0, 1, 1]
    p = placement.ArrayPlacement("w", (8, 6), (2, 3), shards)
    assert p.writers((1, 1), domains) == (0,)
    for index in [(2, 0), (2, 1), (3, 0), (3, 1)]:
        linear = placement.linear_index(index, (4, 2))
        salt = placement.array_salt("w")
        want = sorted([placement.replica_writer([1, 2], linear, salt),
                       placement.replica_writer([3, 4], linear, salt)])
        assert p.writers(index, domains) == tuple(want)
        assert placement.writers_of_chunk("w", (8, 6), (2, 3), shards, [], index,
                                          domains) == tuple(want)
    assert p.holders((9, 0)) == ()
    every = sorted(i for r in range(5) for i in p.written_by(r, domains))
    # each chunk once per domain that holds it: 4 chunks of rank 0, 4 x 2 of the replicas
    assert len(every) == 4 + 8 and set(every) == {(i, j) for i in range(4) for j in range(2)}


def test_writers_of_a_grid_layout():
    group = {"parts": [2, 1], "replicated": True, "cells": [[0, 0], [1, 0], [0, 0], [1, 0]]}
    layout = {"grid": [2, 1], "group": 0}
    domains = [0, 0, 1, 1]
    p = placement.ArrayPlacement("g", (6, 4), (3, 4), layout, [group])
    assert p.holders((0, 0)) == (0, 2) and p.holders((1, 0)) == (1, 3)
    assert p.writers((0, 0), domains) == (0, 2)  # one holder per domain: each writes it
    assert p.written_by(3, domains) == [(1, 0)]
    unreplicated = {"parts": [2, 1], "replicated": False, "cells": [[0, 0], [1, 0]]}
    q = placement.ArrayPlacement("g", (6, 4), (3, 4), layout, [unreplicated])
    assert q.writers((1, 0), [0, 0]) == (1,) and q.written_by(0, [0, 0]) == [(0, 0)]


def test_the_save_plan_writes_replicas_by_the_same_rule():
    from tierpoint.format.types import Box, LocalArray
    from tierpoint.save.plan import plan_save
    world, domains = 6, [0, 0, 0, 1, 1, 1]
    decls = [[LocalArray("r", "float32", (12, 4), Box((0, 0), (12, 4)), True),
              LocalArray("s", "float32", (12, 4), Box((2 * r, 0), (2, 4)), False)]
             for r in range(world)]
    plan = plan_save(decls, chunk_bytes=32, domains=domains)
    for a in plan.arrays:
        layout = {"shards": [{**b.to_json(), "ranks": list(h)} for b, h in a.saved_boxes]}
        p = placement.ArrayPlacement(a.name, a.shape, a.chunk_shape, layout)
        by_index: dict = {}
        for c in a.chunks:
            by_index.setdefault(c.index, []).append(c.writer)
        for index, writers in by_index.items():
            assert p.writers(index, domains) == tuple(sorted(writers)), (a.name, index)


# ---- a job of 8 ranks on 2 nodes, written in one process (tests/slicejob.py) -------------------

WORLD, PER_NODE = 8, 4
W = np.arange(32 * 6, dtype=np.float32).reshape(32, 6)   # rows split over the ranks
B = np.arange(10, dtype=np.int64) * 3                     # replicated on every rank


def held_of(world: int = WORLD) -> dict:
    rows = 32 // world
    return {"w": [(W, Box((r * rows, 0), (rows, 6)), False) for r in range(world)],
            "b": [(B, Box.whole(B.shape), True) for _ in range(world)]}


def leaves_of(rank: int, world: int) -> list[TemplateLeaf]:
    rows = 32 // world
    return [TemplateLeaf("w", W.shape, "float32", Box((rank * rows, 0), (rows, 6))),
            TemplateLeaf("b", B.shape, "int64", Box.whole(B.shape))]


def count_slice_reads(monkeypatch) -> list:
    """Every slice file read from a node-local directory: (directory, rank)."""
    opened = []
    real = layout.read_slice_file

    def counting(directory, rank):
        opened.append((directory, rank))
        return real(directory, rank)
    monkeypatch.setattr(layout, "read_slice_file", counting)
    return opened


def read_state(copies, plan, rank, world=WORLD):
    """Execute ``plan`` (rank ``rank``'s reads of ``leaves_of(rank, world)``)."""
    out = {}
    for leaf in leaves_of(rank, world):
        target = np.zeros(leaf.box.shape, dtype=leaf.dtype)
        execute.read_planned_array(copies, plan.read_of(leaf.name), target, threads=1,
                                   rank=rank)
        out[leaf.name] = target
    return out


@pytest.fixture
def job(tmp_path):
    return write_job(str(tmp_path), 3, held_of(), per_node=PER_NODE, chunk_bytes=48)


def test_each_rank_writes_its_slice_and_each_node_a_header_of_its_own(job):
    for node, d in enumerate(job["dirs"]):
        assert layout.slice_files(d) == list(range(node * PER_NODE, (node + 1) * PER_NODE))
        header = layout.load_manifest(d)
        assert header["format_version"] == 5 and sorted(map(int, header["slices"])) == \
            list(range(node * PER_NODE, (node + 1) * PER_NODE))
        assert all(len(e["proof"]) == 3 for e in header["slices"].values())  # log2(8)
        assert "chunks" not in header["arrays"]["w"]
    a, b = (layout.read_header(d) for d in job["dirs"])
    assert a.digest == b.digest and a.world_size == WORLD


def test_a_restoring_rank_reads_the_header_and_only_the_slices_it_needs(job, monkeypatch):
    opened = count_slice_reads(monkeypatch)
    for rank in range(WORLD):  # the same layout it saved: its own slice (+ b's writer's)
        local = LocalTier(node_root(job["root"], rank // PER_NODE))
        opened.clear()
        found, plans = execute.survey_copies(leaves_of(rank, WORLD), local, None, RUN,
                                             rank=rank)
        assert found.readable == (3,)
        copy, plan = plans[3]
        b_writers = {w for key in ("c.0", "c.1")
                     for w in copy.manifest.writers_of(copy.manifest.arrays["b"], key)}
        mine = {rank} | {w for w in b_writers if w // PER_NODE == rank // PER_NODE}
        assert {r for _, r in opened} == mine and len(opened) == len(mine), (rank, opened)
        got = read_state(execute.TierCopies([copy]), plan, rank)
        assert np.array_equal(got["w"], W[leaves_of(rank, WORLD)[0].box.slices()])
        assert np.array_equal(got["b"], B)
    # Another layout (2 ranks, each half of the rows, on node 0): the slices of the ranks
    # that wrote those rows, not every slice of the node.
    opened.clear()
    local = LocalTier(node_root(job["root"], 0))
    found, plans = execute.survey_copies(leaves_of(0, 2), local, None, RUN, rank=0)
    assert found.readable == (3,) and {r for _, r in opened} == {0, 1, 2, 3}
    # ... and a header alone reads no slice.
    opened.clear()
    assert local.open(RUN, 3, ranks=()).manifest.loaded == frozenset() and opened == []
    assert layout.read_manifest(job["dirs"][1], ranks=[5]).loaded == {5}


def test_a_copy_that_lacks_the_writers_slices_does_not_serve_the_rank(job):
    # Rank 0's rows restored by a rank on node 1: node 1's directory holds neither the rows
    # nor rank 0's slice.
    local = LocalTier(node_root(job["root"], 1))
    found, _ = execute.survey_copies(leaves_of(0, WORLD), local, None, RUN, rank=4)
    assert found.local == (3,) and found.readable == ()


def test_one_nodes_copy_verifies_its_slices_and_says_where_the_others_are(job):
    report = verify_checkpoint(job["dirs"][0])
    assert not report.damaged and not report.complete and not report.ok, report.to_json()
    assert (report.slices_total, report.slices_checked, report.slices_elsewhere) == (8, 4, 4)
    assert "n1" in report.note and report.nodes_elsewhere == ["n1"]
    assert report.chunks_checked + report.chunks_elsewhere == report.chunks_total
    assert verify_checkpoint(job["dirs"][0], partial=True).ok
    d = info(job["dirs"][0])
    assert d["arrays"]["w"]["fingerprint"] is None and "0-3" in d["fingerprints_unavailable"]
    assert d["arrays"]["w"]["chunks"] == d["arrays"]["w"]["shards"] * 2 == 16


def test_gathered_nodes_prove_the_slices_their_header_does_not_list(job, tmp_path):
    gathered = tmp_path / "gathered"
    for d in job["dirs"]:
        shutil.copytree(os.path.dirname(os.path.dirname(d)), gathered, dirs_exist_ok=True)
    step_dir = layout.step_dir(str(gathered), RUN, 3)
    report = verify_checkpoint(step_dir)
    assert report.ok and report.complete and report.slices_checked == 8, report.to_json()
    d = info(step_dir)
    assert d["arrays"]["w"]["fingerprint"] and "fingerprints_unavailable" not in d
    # A slice file of another checkpoint among them is refused, not used.
    other = write_job(str(tmp_path / "other"), 3, {"w": [(W + 1, b, r) for _, b, r in
                                                          held_of()["w"]],
                                                    "b": held_of()["b"]},
                      per_node=PER_NODE, chunk_bytes=48)
    shutil.copy(os.path.join(other["dirs"][0], layout.slice_key(0)),
                os.path.join(step_dir, layout.slice_key(0)))
    report = verify_checkpoint(step_dir)
    assert report.damaged and any(layout.slice_key(0) in (p["file"] or "") or
                                  "slice" in p["problem"] for p in report.problems)


def test_a_damaged_slice_is_named_and_restore_falls_back_to_another_copy(job, tmp_path):
    local = LocalTier(node_root(job["root"], 0))
    spath = os.path.join(job["dirs"][0], layout.slice_key(1))
    data = bytearray(open(spath, "rb").read())
    data[len(data) // 2] ^= 0x20
    open(spath, "wb").write(bytes(data))
    report = verify_checkpoint(job["dirs"][0], partial=True)
    assert report.damaged and any(p["file"] == spath and "rank 1" in p["problem"]
                                  for p in report.problems), report.problems
    with pytest.raises(CorruptCheckpointError, match=r"manifest slice of rank 1 .*"
                       + spath.replace(".", r"\.")):
        local.open(RUN, 3)
    # Rank 1 restoring: the find phase counts the damaged copy as serving (no silent step
    # back), the read names the slice; with a second copy it warns and reads that one.
    found, plans = execute.survey_copies(leaves_of(1, WORLD), local, None, RUN, rank=1)
    assert found.readable == (3,) and 3 not in plans
    header = local.open(RUN, 3, ranks=())
    plan = execute.plan_reads(leaves_of(1, WORLD), header.manifest)
    with pytest.raises(CorruptCheckpointError, match="slice of rank 1"):
        execute.with_records(execute.TierCopies([header]), plan, rank=1)
    intact = write_job(str(tmp_path / "twin"), 3, held_of(), per_node=PER_NODE,
                       chunk_bytes=48)["dirs"][0]
    twin = LocalTier(os.path.dirname(os.path.dirname(intact))).open(RUN, 3, ranks=())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        copies, plan = execute.with_records(execute.TierCopies([header, twin]), plan, rank=1)
    assert [c.path for c in copies.copies] == [twin.path]  # the damaged copy is dropped
    assert any(issubclass(w.category, CheckpointWarning) and "rank 1" in str(w.message)
               for w in caught)
    got = read_state(copies, plan, 1)
    assert np.array_equal(got["w"], W[4:8])


def test_version_1_checkpoints_still_restore_verify_inspect_and_drain(tmp_path):
    import tierpoint
    job = write_job(str(tmp_path / "v1"), 5, held_of(4), per_node=4, chunk_bytes=48,
                    values={"epoch": {"key": ["epoch"], "value": 7}})
    step_dir = job["dirs"][0]
    v2 = info(step_dir)
    to_version_1(step_dir)
    assert layout.load_manifest(step_dir)["format_version"] == 1
    assert not os.path.exists(os.path.join(step_dir, layout.SLICES_DIR))
    report = verify_checkpoint(step_dir)
    assert report.ok and report.complete and report.chunks_checked == report.chunks_total
    d = info(step_dir)
    assert d["format_version"] == 1 and d["digest"] != v2["digest"]
    assert {n: a["fingerprint"] for n, a in d["arrays"].items()} == \
        {n: a["fingerprint"] for n, a in v2["arrays"].items()}
    root = node_root(str(tmp_path / "v1"), 0)
    pool = tmp_path / "pool"
    pool.mkdir()
    template = {"w": np.zeros(W.shape, np.float32), "b": np.zeros(B.shape, np.int64),
                "epoch": 0}
    with tierpoint.Checkpointer(root, run=RUN, persistent=str(pool)) as ck:
        out = ck.restore(template)
        assert np.array_equal(out["w"], W) and np.array_equal(out["b"], B)
        assert out["epoch"] == 7
        done = ck.drain(5)
        assert done["step"] == 5 and done["bytes"] > W.nbytes
    head = layout.step_dir(str(pool), RUN, 5)
    assert layout.load_manifest(head)["format_version"] == 1
    report = verify_checkpoint(head)
    assert report.ok and report.tier == "capacity"
    shutil.rmtree(root)
    with tierpoint.Checkpointer(str(tmp_path / "empty"), run=RUN, persistent=str(pool)) as ck:
        out = ck.restore({"w": np.zeros(W.shape, np.float32), "b": np.zeros(B.shape,
                                                                           np.int64)})
    assert np.array_equal(out["w"], W) and np.array_equal(out["b"], B)


def test_a_drained_copy_holds_every_slice_as_keys_and_restores_with_its_own(job, tmp_path,
                                                                             monkeypatch):
    """Drain both nodes' copies in one process (one directory holding both, as gathered),
    then restore rank 5's rows from the capacity copy: the header and rank 5's slice."""
    import tierpoint
    from tierpoint.tiers.capacity import CapacityCopy, CapacityTier
    gathered = tmp_path / "gathered"
    for d in job["dirs"]:
        shutil.copytree(os.path.dirname(os.path.dirname(d)), gathered, dirs_exist_ok=True)
    pool = tmp_path / "pool"
    pool.mkdir()
    with tierpoint.Checkpointer(str(gathered), run=RUN, persistent=str(pool)) as ck:
        ck.drain(3)
    head = layout.step_dir(str(pool), RUN, 3)
    assert not os.path.exists(os.path.join(head, layout.SLICES_DIR))  # keys, not files
    header = layout.load_manifest(head)
    assert sorted(map(int, header["slices"])) == list(range(WORLD))
    assert all("proof" not in e for e in header["slices"].values())
    report = verify_checkpoint(head)
    assert report.ok and report.complete and report.slices_checked == WORLD, report.to_json()
    d = info(head)
    assert d["tier"] == "capacity" and all(a["fingerprint"] for a in d["arrays"].values())
    read = []
    real = CapacityCopy.read_slice
    monkeypatch.setattr(CapacityCopy, "read_slice",
                        lambda self, rank: read.append(rank) or real(self, rank))
    capacity = CapacityTier([str(pool)])
    copy = capacity.open(RUN, 3, ranks=())
    plan = execute.plan_reads(leaves_of(5, WORLD), copy.manifest)
    copies, plan = execute.with_records(execute.TierCopies([copy]), plan, rank=5)
    b_writer = [w for key in ("c.0", "c.1")
                for w in copy.manifest.writers_of(copy.manifest.arrays["b"], key)
                if w // PER_NODE == 1]
    assert set(read) == {5} | set(b_writer)
    got = read_state(copies, plan, 5)
    assert np.array_equal(got["w"], W[20:24]) and np.array_equal(got["b"], B)


def test_a_grid_layout_header_is_read_like_a_box_layout(job):
    """The same checkpoint with "w"'s layout written as a grid (what the grid planner
    writes): its writers, the slices a reader needs, and verify, all from the header."""
    import hashlib
    for node, d in enumerate(job["dirs"]):
        path = os.path.join(d, layout.MANIFEST_FILE)
        header = json.load(open(path))
        header["arrays"]["w"]["layout"] = {"grid": [WORLD, 1], "group": 0}
        header["groups"] = [{"parts": [WORLD, 1], "replicated": False,
                             "cells": [[r, 0] for r in range(WORLD)]}]
        data = layout.encode_json(header)
        open(path, "wb").write(data)
        marker = layout.read_commit_marker(d)
        layout.write_commit_marker(d, 3, hashlib.sha256(data).hexdigest(), header["digest"],
                                   domain=marker["domain"])
    m = layout.read_header(job["dirs"][1])
    assert m.placement("w").parts == (WORLD, 1)
    assert m.writers_of(m.arrays["w"], "c.13.0") == (6,)  # rows 26..27 of 32: rank 6
    assert verify_checkpoint(job["dirs"][1], partial=True).ok
    local = LocalTier(node_root(job["root"], 1))
    found, plans = execute.survey_copies(leaves_of(6, WORLD), local, None, RUN, rank=6)
    copy, plan = plans[3]
    assert 6 in copy.manifest.loaded and found.readable == (3,)
    assert np.array_equal(read_state(execute.TierCopies([copy]), plan, 6)["w"], W[24:28])
