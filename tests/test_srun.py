"""The same N x M matrix launched by Slurm's srun (--mpi=pmi2) instead of mpiexec, on the
single-node cluster of slurm/cluster.sh (the slurm_cluster fixture starts it, or skips with
the reason where it cannot start; under TIERPOINT_REQUIRE_SLURM=1 it fails instead).
"""
import os
import subprocess
import sys

from mpirun import WORKERS


def test_matrix_under_srun(tmp_path, slurm_cluster):
    proc = subprocess.run(
        ["srun", "--mpi=pmi2", "-n", "4", "--overcommit", sys.executable,
         os.path.join(WORKERS, "matrix_worker.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=slurm_cluster.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MATRIX-OK 32" in proc.stdout
