"""The ``slurm_cluster`` fixture: a real single-node Slurm cluster from slurm/cluster.sh, and
helpers to wait for its jobs.

The fixture starts the cluster once per session and stops it at the end only if it started
it (a cluster that already answered is left running), then removes the base directory it
created (config, logs, state). Where the cluster cannot start (not
root, no apt, no packages), the tests that use it are skipped with the script's reason; with
``TIERPOINT_REQUIRE_SLURM=1`` (set by CI) they fail instead, so CI cannot pass by skipping.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "slurm", "cluster.sh")

# States after which a job never runs again (no accounting here: scontrol keeps finished
# jobs for MinJobAge seconds, 600 in cluster.sh's config).
FINISHED = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


class Cluster:
    def __init__(self, conf: str, started: bool):
        self.conf = conf
        self.base = os.path.dirname(conf)
        self.started = started

    def env(self, **extra: str) -> dict:
        """This process's environment for a Slurm command of this cluster: SLURM_CONF set,
        and no SLURM_* of an enclosing job (when the tests themselves run inside one)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = self.conf
        env.update(extra)
        return env

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict ({} once the controller forgot the job)."""
        proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=self.env(),
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            return {}
        fields = {}
        for word in proc.stdout.split():
            key, _, value = word.partition("=")
            fields.setdefault(key, value)
        return fields

    def wait_finished(self, job_id: str, timeout: float) -> dict[str, str]:
        """Poll until the job finished and its Epilog ran (the COMPLETING state is over);
        returns its last record. Raises AssertionError on timeout, with the record."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            state = info.get("JobState", "")
            if state in FINISHED and "COMPLETING" not in state:
                return info
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not finished after {timeout:.0f} s: {info}")

    def cancel(self, *job_ids: str) -> None:
        """Cancel jobs this test submitted that still run (cleanup after a failure)."""
        live = [j for j in job_ids if j and self.job(j).get("JobState") in
                ("PENDING", "RUNNING", "SUSPENDED")]
        if live:
            subprocess.run(["scancel", "--full", *live], env=self.env(), timeout=60)

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            with open(os.path.join(self.base, "log", name)) as f:
                return "".join(f.readlines()[-lines:])
        except OSError as e:
            return f"({e})"


# What a trainer's rank does before it trains: import torch, FSDP, mpi4py and tierpoint, and
# join the torch.distributed group.
STARTUP_PROBE = ("import torch, torch.distributed.fsdp, mpi4py.MPI, tierpoint, tierpoint.cli.demo\n"
                 "from tierpoint.runtime import distenv\n"
                 "distenv.init_torch_distributed('gloo')\n"
                 "distenv.exit_process(0)\n")


def measure_startup(ranks: int) -> float:
    """Seconds that a ``ranks``-rank mpiexec launch of a trainer's startup (imports, process
    group, exit) takes on this machine now: 7.5 s measured here with other work running,
    58 s seen under heavy load.
    Deadlines of the Slurm tests are derived from it, not fixed."""
    from tierpoint.runtime import distenv

    started = time.monotonic()
    proc = distenv.launch(ranks, ["-c", STARTUP_PROBE], timeout=900, capture=True)
    assert proc.returncode == 0, f"the {ranks}-rank startup probe failed:\n{proc.stdout}"
    return time.monotonic() - started


def _cluster_sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", CLUSTER, *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="session")
def slurm_cluster():
    required = os.environ.get("TIERPOINT_REQUIRE_SLURM") == "1"
    conf = _cluster_sh("env").stdout.strip().removeprefix("export SLURM_CONF=")
    already = _cluster_sh("status").returncode == 0
    base = os.path.dirname(conf)
    made_base = not already and not os.path.exists(base)
    if not already:
        t0 = time.monotonic()
        proc = _cluster_sh("start")
        if proc.returncode != 0:
            text = (proc.stderr.strip() or proc.stdout.strip())
            # The script's own error line first (it is followed by the cleanup's lines).
            errors = [line for line in text.splitlines() if line.startswith("cluster.sh:")
                      and not line.startswith("cluster.sh: stopped")]
            reason = (f"slurm/cluster.sh start failed, so the Slurm tests cannot run here: "
                      f"{errors[-1] if errors else ''}\n{text[-1500:]}")
            print(reason)
            if required:
                pytest.fail(reason + " (TIERPOINT_REQUIRE_SLURM=1: skipping is not allowed)")
            pytest.skip(reason)
        print(f"slurm_cluster: started in {time.monotonic() - t0:.1f} s\n{proc.stdout}")
    else:
        print(f"slurm_cluster: a cluster already answers at {conf}; using it, leaving it up")
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf  # srun/sbatch called by the tests talk to this cluster
    try:
        yield Cluster(conf, started=not already)
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        if not already:
            proc = _cluster_sh("stop")
            print(f"slurm_cluster: stopped\n{proc.stdout}{proc.stderr}")
            # Its config, logs and state went into a directory this session created: remove
            # it once every process of the cluster is stopped (a failing test printed the
            # logs' tails already).
            if made_base and proc.returncode == 0:
                shutil.rmtree(base, ignore_errors=True)
