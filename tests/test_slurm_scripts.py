"""slurm/epilogue.sh, run as Slurm's Epilog would run it (no cluster needed for this part):
it drains what a job left on the node's SSD, removes the local copy only once the capacity
tier holds the newest step, keeps everything when the drain fails, and always exits 0."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import torch

import tierpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPILOGUE = os.path.join(ROOT, "slurm", "epilogue.sh")


def leave_checkpoints(local):
    ck = tierpoint.Checkpointer(str(local), run="job", policy=tierpoint.Policy(keep_local=3))
    for step in (1, 2, 3):
        ck.save(step, {"w": torch.full((256,), float(step))})
    ck.wait()
    ck._closed = True  # the job was killed: no close(), nothing drained


def epilogue(local, pools, log):
    env = {**os.environ, "TIERPOINT_LOCAL_ROOT": str(local),
           "TIERPOINT_PERSISTENT": " ".join(map(str, pools)), "TIERPOINT_EPILOG_LOG": str(log),
           "TIERPOINT_BIN": os.path.join(os.path.dirname(sys.executable), "tierpoint"),
           "TIERPOINT_PYTHON": sys.executable, "SLURM_JOB_ID": "4242"}
    return subprocess.run(["bash", EPILOGUE], env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_epilogue_drains_the_newest_step_then_cleans_the_node(tmp_path):
    local, pool = tmp_path / "ssd", tmp_path / "pool"
    pool.mkdir()
    leave_checkpoints(local)
    proc = epilogue(local, [pool], tmp_path / "epilog.log")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "epilog.log").read_text()
    assert "job 4242: drained" in text and "local copy removed" in text, text
    assert not (local / "job").exists()
    ck = tierpoint.Checkpointer(str(tmp_path / "fresh"), persistent=str(pool), run="job")
    assert ck.capacity_steps() == [3]
    assert ck.restore({"w": torch.zeros(256)})["w"].tolist() == [3.0] * 256
    ck.close()


def test_the_epilogue_expands_node_in_the_local_root_as_tierpoint_does(tmp_path):
    """TIERPOINT_LOCAL_ROOT may be the job's own template (.../{node}): one setting serves
    every node of a cluster."""
    local, pool = tmp_path / "ssd", tmp_path / "pool"
    pool.mkdir()
    leave_checkpoints(local / socket.gethostname())  # what Checkpointer("ssd/{node}") writes
    proc = epilogue(local / "{node}", [pool], tmp_path / "epilog.log")
    assert proc.returncode == 0, proc.stderr
    assert "local copy removed" in (tmp_path / "epilog.log").read_text()
    assert not (local / socket.gethostname() / "job").exists()


def test_a_failed_drain_keeps_the_local_checkpoints_and_exits_0(tmp_path):
    local = tmp_path / "ssd"
    leave_checkpoints(local)
    proc = epilogue(local, [tmp_path / "not-mounted"], tmp_path / "epilog.log")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "epilog.log").read_text()
    assert "drain FAILED, local checkpoints kept" in text and "not-mounted" in text, text
    assert tierpoint.format.layout.committed_steps(str(local), "job") == [1, 2, 3]


def signals_caught(pid: int) -> int:
    """The mask of signals process ``pid`` has a handler for (SigCgt in /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return 0


def test_the_example_trainer_survives_the_warning_during_its_startup(tmp_path):
    """Slurm may send the warning while the trainer still imports torch, before
    handle_preemption(): Python's default action for SIGUSR1 would kill it. The trainer
    notes such a signal from its first lines on and replays it to tierpoint, so it still
    saves, drains and exits 0. Synchronised on the kernel's view of the process (its SIGUSR1
    handler installed), not on time; importing torch and MPI leaves seconds after that."""
    (tmp_path / "pool").mkdir()
    env = {**os.environ, "TIERPOINT_LOCAL": str(tmp_path / "ssd" / "{node}"),
           "TIERPOINT_PERSISTENT": str(tmp_path / "pool"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "slurm", "train_example.py"),
                             "--max-steps", "1000"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        while not signals_caught(proc.pid) & (1 << (signal.SIGUSR1 - 1)):
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.005)
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "EXAMPLE-EARLY-SIGNAL SIGUSR1 during startup" in out, out
    assert re.search(r"EXAMPLE-CLOSED reason=signal step=1 capacity_steps=\[1\]", out), out
