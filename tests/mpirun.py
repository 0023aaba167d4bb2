"""Launch real MPI ranks (the mpiexec of the mpich wheel next to this Python) for tests."""
from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys

from tierpoint.runtime.distenv import find_mpiexec

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
    with orphaned_segments_removed():
        proc = subprocess.run(cmd, env=base_env, capture_output=True, text=True,
                              timeout=timeout)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout}"
            f"\n--- stderr ---\n{proc.stderr}")
    return proc


SHM = "/dev/shm"


def _shm_segments() -> set[str]:
    try:
        return {n for n in os.listdir(SHM) if n.startswith("mpich_shm_")}
    except FileNotFoundError:
        return set()


_made: set[str] = set()  # segments our launches made and that may not be gone yet


def _remove_unmapped() -> None:
    if not _made:
        return
    mapped = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as f:
                maps = f.read()
        except OSError:
            continue
        mapped.update(n for n in _made if n in maps)
    for name in _made - mapped:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM, name))
        _made.discard(name)


@contextlib.contextmanager
def orphaned_segments_removed():
    """MPICH's shared-memory segments (4 MiB each, in RAM) outlive a job whose ranks were
    killed: after the launch, remove those it (or an earlier launch) made that no process
    maps any more. Ranks killed a moment ago may still map theirs: the next launch, or the
    end of this process, takes those."""
    before = _shm_segments()
    try:
        yield
    finally:
        _made.update(_shm_segments() - before)
        _remove_unmapped()


atexit.register(_remove_unmapped)
