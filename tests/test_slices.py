"""Format version 2: manifest slices (one per saving rank), their Merkle roots and inclusion
proofs, the writers of a chunk found from the header alone, and a reader that reads only the
slices it needs."""
from __future__ import annotations

import hashlib

import pytest

from tierpoint.format import integrity, placement
from tierpoint.format.integrity import merkle_proofs, merkle_root, proof_depth, proof_root


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
