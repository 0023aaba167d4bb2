"""tierpoint in a torch.distributed (gloo) job without MPI."""
import os
import re
import socket
import subprocess
import sys

from mpirun import WORKERS


def run_gloo(world: int, worker: str, *args) -> list[str]:
    """``worker`` on ``world`` gloo ranks (env://); every rank's output, each exiting 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA", "MPI"))}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world))
    procs = [subprocess.Popen([sys.executable, os.path.join(WORKERS, worker), *args],
                              env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outs)
    return outs


def test_torch_distributed_default_group(tmp_path):
    outs = run_gloo(3, "torchdist_worker.py", str(tmp_path))
    assert "TORCHDIST-OK" in outs[0]


def test_a_point_to_point_receive_over_gloo_ends_at_the_timeout_naming_the_peer():
    outs = run_gloo(2, "point_gloo_worker.py")
    m = re.search(r"POINT (\d+\.\d)s:(.*)", outs[0])
    assert m, outs
    assert 1.5 <= float(m[1]) < 5, m[0]
    assert m[2].startswith("receiving from rank 1: nothing moved within 1.5 s"), m[0]
