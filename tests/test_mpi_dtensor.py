"""DTensor leaves (Shard/Replicate on 1-D and 2-D CPU meshes) across world sizes."""
from mpirun import run_ranks


def test_dtensor_save_on_n_restore_on_m(tmp_path):
    for n in (4, 3):
        proc = run_ranks(n, "dtensor_worker.py", "save", tmp_path)
        assert "DTENSOR-OK save 1" in proc.stdout, proc.stdout + proc.stderr
    for m, saved in ((2, ("4", "3")), (3, ("4",)), (4, ("3",))):
        proc = run_ranks(m, "dtensor_worker.py", "restore", tmp_path, *saved)
        assert f"DTENSOR-OK restore {6 * len(saved)}" in proc.stdout, proc.stdout + proc.stderr
