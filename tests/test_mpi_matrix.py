"""Save world size x restore world size over {1,2,3,4}^2 under real mpiexec ranks."""
from mpirun import run_ranks


def test_save_n_restore_m_bit_exact(tmp_path):
    # One launch covers all 16 (N, M) pairs, twice each (latest step and an explicit one):
    # shardings along dim 0, dim 1, the last dim, 2-D meshes, skewed/uneven sizes,
    # replicated, 0-d and empty arrays, every dtype, torch and numpy leaves.
    proc = run_ranks(4, "matrix_worker.py", tmp_path)
    assert "MATRIX-OK 32" in proc.stdout, proc.stdout + proc.stderr
