"""Launch real MPI ranks (the mpiexec of the mpich wheel next to this Python) for tests."""
from __future__ import annotations

import os
import subprocess
import sys

from tierpoint.distenv import find_mpiexec

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = os.path.join(HERE, "workers")


def mpiexec() -> str:
    return find_mpiexec()


def run_ranks(n: int | list[tuple[int, dict]], worker: str, *args, env: dict | None = None,
              timeout: float = 300, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Run ``tests/workers/<worker>`` on ``n`` ranks; ``n`` may be a list of (ranks, env)
    groups to give ranks different environments (e.g. TIERPOINT_NODE, several "nodes")."""
    script = os.path.join(WORKERS, worker)
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if isinstance(n, int):
        cmd = [mpiexec(), "-n", str(n), sys.executable, script, *map(str, args)]
    else:
        cmd = [mpiexec()]
        for i, (count, group_env) in enumerate(n):
            if i:
                cmd.append(":")
            cmd += ["-n", str(count)]
            for k, v in group_env.items():
                cmd += ["-env", k, str(v)]
            cmd += [sys.executable, script, *map(str, args)]
    proc = subprocess.run(cmd, env=base_env, capture_output=True, text=True, timeout=timeout)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout}"
            f"\n--- stderr ---\n{proc.stderr}")
    return proc
