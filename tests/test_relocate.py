"""Checkpoints do not depend on the path they were written under: a moved or copied local
tier (one node's, or every node's gathered into one directory) and a copied capacity tier
restore and verify wherever they are, and a verify that could not check every chunk never
says OK (issue 10's trust defects)."""
import os
import shutil

import numpy as np

import tierpoint
from tierpoint.format import layout
from tierpoint.trust.verify import verify_checkpoint
from mpirun import run_ranks

TWO_NODES = [(2, {"TIERPOINT_NODE": "n0"}), (2, {"TIERPOINT_NODE": "n1"})]


def save(tmp_path, ranks):
    proc = run_ranks(ranks, "relocate_worker.py", "save", tmp_path)
    assert "RELOCATE-OK save" in proc.stdout, proc.stdout + proc.stderr


def restore(ranks, local, step, pool=None):
    args = [local, step] + ([pool] if pool else [])
    proc = run_ranks(ranks, "relocate_worker.py", "restore", *args)
    assert "RELOCATE-OK restore" in proc.stdout, proc.stdout + proc.stderr


def flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(3)
        b = f.read(1)
        f.seek(3)
        f.write(bytes([b[0] ^ 0x01]))


def a_chunk(step_dir, array="w"):
    return os.path.join(step_dir, array, sorted(n for n in os.listdir(os.path.join(step_dir, array))
                                                if n.startswith("c."))[0])


def test_a_moved_single_node_tier_restores_on_other_world_sizes_and_verifies(tmp_path):
    save(tmp_path, [(2, {"TIERPOINT_NODE": "n0"})])
    moved = tmp_path / "elsewhere" / "ssd"
    shutil.copytree(tmp_path / "local" / "n0", moved, symlinks=True)
    shutil.rmtree(tmp_path / "local")
    # The copy holds every chunk: a complete check, and it restores on 3 ranks and on 1.
    step_dir = layout.step_dir(str(moved), "r", 2)
    report = verify_checkpoint(step_dir)
    assert report.ok and report.complete, report.to_json()
    assert report.chunks_checked == report.chunks_total > 4
    restore(3, moved, 2)
    restore(1, moved, 1)
    # A flipped byte in the copy is found (the old verify checked 0 chunks and said OK).
    flip_byte(a_chunk(step_dir))
    report = verify_checkpoint(step_dir)
    assert not report.ok and report.damaged
    assert any("crc32c" in p["problem"] and p["array"] == "w" for p in report.problems)


def test_one_node_of_several_is_incomplete_and_gathered_nodes_are_complete(tmp_path):
    save(tmp_path, TWO_NODES)
    n0 = layout.step_dir(str(tmp_path / "local" / "n0"), "r", 2)
    report = verify_checkpoint(n0)
    assert not report.ok and not report.damaged and not report.complete
    assert report.nodes_elsewhere == ["n1"] and report.chunks_elsewhere > 0
    assert report.chunks_checked + report.chunks_elsewhere == report.chunks_total
    assert verify_checkpoint(n0, partial=True).ok
    # A chunk this node wrote and lost is damage, not "elsewhere", even in a partial check.
    own = a_chunk(n0)
    os.rename(own, own + ".away")
    lost = verify_checkpoint(n0, partial=True)
    assert lost.damaged and any(p["problem"] == "chunk is missing" for p in lost.problems)
    os.rename(own + ".away", own)
    # Every node's directory gathered into one, somewhere else: complete, and it restores
    # on a world size and in a place the save never had.
    gathered = tmp_path / "gathered"
    for node in ("n0", "n1"):
        shutil.copytree(tmp_path / "local" / node, gathered, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "local")
    report = verify_checkpoint(layout.step_dir(str(gathered), "r", 2))
    assert report.ok and report.complete, report.to_json()
    restore(3, gathered, 2)
    restore(1, gathered, 1)


def test_a_copied_capacity_tier_verifies_and_restores_after_the_original_moves(tmp_path):
    save(tmp_path, TWO_NODES)
    head = layout.step_dir(str(tmp_path / "pool"), "r", 2)
    links = [n for n in os.listdir(head) if os.path.islink(os.path.join(head, n))]
    assert links and all(not os.path.isabs(os.readlink(os.path.join(head, n))) for n in links)
    copy = tmp_path / "archive" / "pool"
    shutil.copytree(tmp_path / "pool", copy, symlinks=True)
    os.rename(tmp_path / "pool", tmp_path / "pool.gone")
    shutil.rmtree(tmp_path / "local")
    report = verify_checkpoint(layout.step_dir(str(copy), "r", 2))
    assert report.ok and report.complete and report.tier == "capacity", report.to_json()
    restore(3, tmp_path / "no-local", 2, copy)
    # A stock TensorStore reads the copy through its relative links too.
    import tensorstore as ts
    spec = {"driver": "zarr3", "kvstore": {"driver": "ocdbt",
                                           "base": f"file://{layout.step_dir(str(copy), 'r', 2)}/",
                                           "path": "rep/"}}
    assert ts.open(spec).result().read().result().tolist() == [i * 100 + 2 for i in range(5)]
    # A pool set copied without the part links' targets is named, not read as "not found".
    shutil.rmtree(copy / "r" / layout.PARTS_DIR)
    broken = verify_checkpoint(layout.step_dir(str(copy), "r", 2))
    assert broken.damaged and any("does not exist" in p["problem"] for p in broken.problems)


def test_restore_in_one_process_from_a_copy_without_mpi(tmp_path):
    """The same, in-process: a trainer's restore from a copied single-node tier."""
    ck = tierpoint.Checkpointer(str(tmp_path / "a"), run="r")
    w = np.arange(60, dtype=np.float32).reshape(6, 10)
    ck.save(3, {"w": w}).wait()
    ck.close()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    with tierpoint.Checkpointer(str(tmp_path / "b"), run="r") as ck:
        out = ck.restore({"w": np.zeros((6, 10), dtype=np.float32)})
    assert np.array_equal(out["w"], w)


def test_lineage_follows_a_moved_tier(tmp_path):
    """A child records where its parent was read; once the whole tier root moved, the chain
    is found beside the child and every digest still checks."""
    from tierpoint.trust.lineage import chain
    w = np.arange(12, dtype=np.float64)
    with tierpoint.Checkpointer(str(tmp_path / "t"), run="a") as ck:
        ck.save(1, {"w": w}).wait()
    with tierpoint.Checkpointer(str(tmp_path / "t"), run="a") as src:
        src.restore({"w": np.zeros(12)})
        parent = src.parent
    with tierpoint.Checkpointer(str(tmp_path / "t"), run="b") as ck:
        ck.parent = parent
        ck.save(2, {"w": w + 1}).wait()
    os.rename(tmp_path / "t", tmp_path / "moved")
    links = chain(layout.step_dir(str(tmp_path / "moved"), "b", 2))
    assert [(e["run"], e["step"], e["digest_ok"]) for e in links] == [("b", 2, True),
                                                                       ("a", 1, True)]
    assert links[1]["path"] == layout.step_dir(str(tmp_path / "moved"), "a", 1)
