"""The same N x M matrix launched by Slurm's srun (--mpi=pmi2) instead of mpiexec.

Runs where a Slurm cluster answers (slurm/ and the operations issue set one up); skipped
with the reason otherwise.
"""
import os
import shutil
import subprocess
import sys

import pytest

from mpirun import WORKERS


def slurm_up() -> bool:
    if not shutil.which("srun") or not shutil.which("scontrol"):
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return "UP" in ping.stdout


@pytest.mark.skipif(not slurm_up(), reason="no Slurm cluster answers here (scontrol ping)")
def test_matrix_under_srun(tmp_path):
    proc = subprocess.run(
        ["srun", "--mpi=pmi2", "-n", "4", "--overcommit", sys.executable,
         os.path.join(WORKERS, "matrix_worker.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MATRIX-OK 32" in proc.stdout
