"""Local ring + drain to capacity pools + restore from the capacity tier alone."""
import os
import shutil

from mpirun import run_ranks


def files_under(path):
    return [os.path.join(b, f) for b, _, fs in os.walk(path) for f in fs]


def test_ring_drain_and_restore_from_capacity_alone(tmp_path):
    for pool in ("poolA", "poolB"):
        (tmp_path / pool).mkdir()
    nodes = [(2, {"TIERPOINT_NODE": "n0"}), (2, {"TIERPOINT_NODE": "n1"})]
    proc = run_ranks(nodes, "tiers_worker.py", "save", tmp_path)
    assert "TIERS-OK save" in proc.stdout, proc.stdout + proc.stderr
    for node in ("n0", "n1"):
        steps = sorted(os.listdir(tmp_path / "local" / node / "t"))
        assert steps == ["step_00000009", "step_00000010"]
    # Files of one drained checkpoint: per aggregator (2 nodes) and pool (2) a part, each an
    # OCDBT manifest and its data file(s); the head has the OCDBT manifest, B-tree node(s), our
    # manifest and marker, and a link per part. Independent of the number of arrays and ranks.
    for step in ("step_00000005", "step_00000010"):
        parts = [f for pool in ("poolA", "poolB")
                 for f in files_under(tmp_path / pool / "t" / ".parts" / step)]
        head = os.listdir(tmp_path / "poolA" / "t" / step)
        assert len(parts) <= 2 * 2 * 3, parts
        assert len(head) <= 10, head
        assert any("poolB" in p for p in parts)  # data spread over both pools
    # Node loss: the local tiers are gone; 3 ranks restore from the capacity tier alone.
    shutil.rmtree(tmp_path / "local")
    proc = run_ranks(3, "tiers_worker.py", "restore", tmp_path)
    assert "TIERS-OK restore" in proc.stdout, proc.stdout + proc.stderr


def test_fewer_aggregators_than_nodes_send_chunks_over_mpi(tmp_path):
    import torch

    import tierpoint
    for pool in ("poolA", "poolB"):
        (tmp_path / pool).mkdir()
    nodes = [(2, {"TIERPOINT_NODE": "n0"}), (2, {"TIERPOINT_NODE": "n1"})]
    proc = run_ranks(nodes, "aggregator_worker.py", tmp_path)
    assert "AGG-OK" in proc.stdout, proc.stdout + proc.stderr
    shutil.rmtree(tmp_path / "local")
    ck = tierpoint.Checkpointer(str(tmp_path / "local"),
                                persistent=[str(tmp_path / "poolA"), str(tmp_path / "poolB")],
                                run="a")
    out = ck.restore({"w": torch.zeros(80, 30), "step": 0})  # 4 ranks -> 1, capacity only
    want = torch.arange(2400, dtype=torch.float32).reshape(80, 30) + 2
    assert out["step"] == 2 and torch.equal(out["w"], want)
    ck.close(drain_newest=False)
