"""A state layout that changes between saves of one run, and restores onto other layouts
(issue 12): real MPI ranks, values that encode their global index, bit-exact."""
from mpirun import run_ranks


def test_layout_changes_between_saves_and_restores_elsewhere(tmp_path):
    proc = run_ranks([(2, {"TIERPOINT_NODE": "node0"}), (2, {"TIERPOINT_NODE": "node1"})],
                     "layout_change_worker.py", tmp_path)
    # Rank 0 saved 6 steps (checking which were planned), restored each on 4 and on 3 ranks.
    assert "LAYOUT-OK 12" in proc.stdout, proc.stdout + proc.stderr
