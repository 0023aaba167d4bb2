"""FSDP2 (fully_shard) + AdamW on CPU/gloo: save on N ranks, restore on M ranks, bit-exact.

Each launch starts real MPI ranks (a few seconds each for ``import torch``), so the saves run
once per world size (module fixture) and each restore launch checks several saved worlds.
The model's dim-0 sizes (50, 23, 5) shard unevenly on 2, 3 and 4 ranks, with an empty shard
on the last of 4 ranks. See tests/workers/fsdp_worker.py for what is compared.
"""
import importlib.util
import os
import re

import pytest

from tierpoint.runtime import distenv
from workers import ranklog

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers", "fsdp_worker.py")
TIMEOUT = 300  # seconds per launch; the whole job is killed past it
SAVE_WORLDS = (2, 3, 4)
STEPS, EVERY = 4, 2

pytestmark = [pytest.mark.timeout(3 * TIMEOUT)] if importlib.util.find_spec("pytest_timeout") \
    else []


def run(n, *args):
    # Each rank's own log: when a rank dies, mpiexec names a rank it killed afterwards.
    logs = os.path.join(os.path.dirname(str(args[1])), "rank-logs", f"{args[0]}-{n}")
    proc = distenv.launch(n, [WORKER, *map(str, args)], timeout=TIMEOUT, capture=True,
                          env={"RANK_LOG_DIR": logs})
    assert proc.returncode == 0, (
        f"{n}-rank fsdp_worker {' '.join(map(str, args[:1]))} exited {proc.returncode}:\n"
        f"{proc.stdout[-20000:]}\nthe ranks' own logs:\n{ranklog.collect(logs)}")
    return proc.stdout


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    base = tmp_path_factory.mktemp("fsdp")
    root, ref = base / "ckpt", base / "ref"
    for n in SAVE_WORLDS:
        out = run(n, "save", root, ref, STEPS, EVERY)
        assert f"FSDP-OK save {n} steps=[2, 4] arrays=24" in out, out
    return root, ref


@pytest.mark.parametrize("world,from_worlds", [(3, (4, 2, 3)), (2, (3, 4))],
                         ids=["4,2,3->3", "3,4->2"])
def test_fsdp_save_n_restore_m_bit_exact(saved, world, from_worlds):
    root, ref = saved
    out = run(world, "restore", root, ref, *from_worlds)
    assert "FSDP-MISMATCH" not in out, out
    for n in from_worlds:
        m = re.search(rf"FSDP-OK restore {n}->{world} step=4 arrays=24 bit_exact=yes "
                      r"step_tensors=\[4\.0\] .*next_loss=\S+ \(bit-exact\)", out)
        assert m, f"no success line for {n}->{world}:\n{out}"
