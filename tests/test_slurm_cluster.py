"""slurm/train.sbatch on a real Slurm cluster (slurm/cluster.sh: munged, slurmctld, slurmd):
a 4-rank job trains slurm/train_example.py with tierpoint (node-local tier, two capacity
pools), gets Slurm's own time-limit warning (--signal=B:USR1@10 with --time=1; no scancel),
saves and drains, and exits before the limit; the Epilog (slurm/epilogue.sh) runs and cleans
the node; the continuation the template queued runs on 2 ranks, restores from the capacity
tier bit for bit, trains on, and stops the same way on its own warning.

When the warning comes: slurmctld checks time limits every 30 s and sends it at the first
check at or after (end - lead - 30 s), and the job is killed at the first check at or after
its end, at least ``lead`` after the warning. The limit and the lead are not fixed: they are
derived from a measured startup of 4 ranks at test time (see ``job_timing``), so that on a
loaded machine, where 4 ranks once took 58 s to start and a fixed 60 s limit killed the job,
the warning still comes after the trainer started and leaves it time to save and drain; on a
quiet machine they are the 1-minute limit and 10 s lead of the README's example. The trainer
would also survive an earlier warning (it notes a signal from its first line on).
"""
import math
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from slurmcluster import ROOT, measure_startup

TEMPLATE = os.path.join(ROOT, "slurm", "train.sbatch")
TRAINER = os.path.join(ROOT, "slurm", "train_example.py")
CHECK_PERIOD = 30  # seconds between slurmctld's time-limit checks


def job_timing(startup: float) -> tuple[int, int]:
    """(``--time`` in minutes, ``--signal`` lead in seconds) for a job whose ranks take
    ``startup`` seconds to start (``measure_startup``).

    The lead (warning to limit) is what the final save, drain and exit get: at least 10 s,
    and twice the startup, since all of them slow down with the machine's load. The warning
    can come a check period before ``limit - lead``, and must still come after the trainer
    started (the job's ranks start like the probe's, given twice that plus 5 s): the limit is
    the smallest number of minutes that fits both."""
    lead = max(10, math.ceil(2 * startup))
    minutes = math.ceil((lead + CHECK_PERIOD + 2 * startup + 5) / 60)
    return minutes, lead


def test_job_timing_is_the_readme_example_when_quiet_and_grows_with_load():
    assert job_timing(5.0) == (1, 10)
    minutes, lead = job_timing(58.0)  # the loaded machine that failed the fixed 60 s limit
    assert lead >= 116 and minutes * 60 - lead - CHECK_PERIOD >= 2 * 58


def hashes(text: str, phase: str) -> dict[str, str]:
    return dict(re.findall(rf"^\[[^]]*\] EXAMPLE-HASH {phase} (\S+) ([0-9a-f]{{64}})$", text, re.M))


def one(pattern: str, text: str, what: str) -> re.Match:
    found = list(re.finditer(pattern, text, re.M))
    assert len(found) == 1, f"expected one line for {what} ({pattern!r}), found {len(found)}"
    return found[0]


def read(path) -> str:
    return path.read_text() if path.exists() else f"({path} does not exist)"


def test_time_limit_save_drain_epilogue_and_continuation_on_2_ranks(tmp_path, slurm_cluster):
    node = socket.gethostname()  # how tierpoint names this node
    local_template = str(tmp_path / "ssd" / "{node}")
    run_dir = tmp_path / "ssd" / node / "example"
    pools = [tmp_path / "poolA", tmp_path / "poolB"]
    for p in pools:
        p.mkdir()
    epilog_log = tmp_path / "epilog.log"
    venv = os.path.dirname(os.path.dirname(sys.executable))
    epilog_env = os.path.join(slurm_cluster.base, "epilog.env")
    with open(epilog_env, "w") as f:  # read by the cluster's Epilog wrapper after each job
        f.write(f"TIERPOINT_LOCAL_ROOT='{local_template}'\n"
                f"TIERPOINT_PERSISTENT='{' '.join(map(str, pools))}'\n"
                f"TIERPOINT_BIN='{venv}/bin/tierpoint'\n"
                f"TIERPOINT_PYTHON='{sys.executable}'\n"
                f"TIERPOINT_EPILOG_LOG='{epilog_log}'\n")
    startup = measure_startup(4)
    minutes, lead = job_timing(startup)
    limit, signal = f"--time={minutes}", f"--signal=B:USR1@{lead}"
    # A job ends at the latest one check period after its limit; then its Epilog drains.
    wait = max(150, minutes * 60 + CHECK_PERIOD + 60 + 4 * startup)
    print(f"4-rank startup took {startup:.1f} s here now: {limit} {signal}, waiting up to "
          f"{wait:.0f} s per job")
    env = slurm_cluster.env(
        VENV=venv, TIERPOINT_LOCAL=local_template,
        TIERPOINT_PERSISTENT=" ".join(map(str, pools)),
        TIERPOINT_RESUBMIT="1", TIERPOINT_RESUBMIT_ARGS=f"--ntasks=2 {limit} {signal}",
        OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    first = second = ""
    t0 = time.monotonic()
    try:
        # Options on the command line override the template's #SBATCH lines.
        proc = subprocess.run(
            ["sbatch", "--parsable", "--ntasks=4", limit, signal, TEMPLATE, TRAINER,
             "--every", "20", "--step-seconds", "0.1"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        first = proc.stdout.strip().split(";")[0]
        print(f"submitted job {first} (4 ranks)")
        info1 = slurm_cluster.wait_finished(first, timeout=wait)
        out1 = read(tmp_path / f"tierpoint-train-{first}.out")
        print(f"job {first}: {info1['JobState']} after {time.monotonic() - t0:.0f} s, "
              f"{info1.get('StartTime')} .. {info1.get('EndTime')}\n"
              + "\n".join(line for line in out1.splitlines() if "EXAMPLE-HASH" not in line))
        context1 = f"\n--- job {first} output:\n{out1}\n--- epilog log:\n{read(epilog_log)}"

        # The job ended on its own, before the limit, after the trainer saved and drained.
        assert info1["JobState"] == "COMPLETED" and info1["ExitCode"] == "0:0", \
            f"job {first}: {info1}{context1}"
        assert out1.index("EXAMPLE-START") < out1.index("got SIGUSR1"), \
            "the warning came before the trainer started" + context1
        stop = int(one(r"EXAMPLE-STOP step=(\d+)", out1, "the stop").group(1))
        final = one(r"EXAMPLE-FINAL-SAVE step=(\d+) eval_loss=(\S+) tensors=(\d+)", out1,
                    "the final save")
        assert int(final.group(1)) == stop, context1
        saved_hashes = hashes(out1, "FINAL-SAVE")
        assert len(saved_hashes) == int(final.group(3)) == 24, context1  # 6 params, 18 AdamW
        closed = one(r"EXAMPLE-CLOSED reason=(\S+) step=(\d+) capacity_steps=\[([\d, ]*)\]",
                     out1, "close")
        assert closed.group(1) == "signal", context1
        assert stop in [int(s) for s in closed.group(3).split(",")], \
            "close() did not drain the final step" + context1
        second = one(r"queued continuation job (\d+) ", out1, "the continuation").group(1)

        # The Epilog ran after the job (before the continuation got the node: Slurm frees a
        # node's resources once its Epilog is done) and removed the node's copy, which the
        # capacity tier holds.
        log1 = read(epilog_log)
        assert f"job {first}: drained" in log1, context1
        assert f"job {first}: run example: newest step is on the capacity tier; local copy " \
               "removed" in log1, context1

        info2 = slurm_cluster.wait_finished(second, timeout=wait)
        out2 = read(tmp_path / f"tierpoint-train-{second}.out")
        print(f"job {second}: {info2['JobState']} after {time.monotonic() - t0:.0f} s, "
              f"{info2.get('StartTime')} .. {info2.get('EndTime')}\n"
              + "\n".join(line for line in out2.splitlines() if "EXAMPLE-HASH" not in line))
        context2 = context1 + f"\n--- job {second} output:\n{out2}"
        assert info2["JobState"] == "COMPLETED" and info2["ExitCode"] == "0:0", \
            f"job {second}: {info2}{context2}"
        assert info2.get("NumTasks") == "2", info2
        assert "world=2 " in out2, context2

        # Restored on 2 ranks from the capacity tier (the node's copy was gone), the step the
        # 4-rank job saved last, every tensor bit for bit.
        restored = one(r"EXAMPLE-RESTORED step=(\d+) saved_by=(\d+) from=(\S+) "
                       r"local_steps_before=\[\]", out2, "the restore")
        assert int(restored.group(1)) == stop and restored.group(2) == "4", context2
        assert restored.group(3).startswith(tuple(map(str, pools))), context2
        assert hashes(out2, "AFTER-RESTORE") == saved_hashes, \
            "a tensor restored on 2 ranks differs from what 4 ranks saved" + context2
        match = one(r"EXAMPLE-EVAL-MATCH (\S+) restored=(\S+) saved=(\S+)", out2, "eval loss")
        assert match.group(1) == "yes" and match.group(2) == final.group(2), context2

        # It trained on, got its own warning, saved, drained, and queued nothing more.
        closed2 = one(r"EXAMPLE-CLOSED reason=(\S+) step=(\d+) capacity_steps=\[([\d, ]*)\]",
                      out2, "close")
        stop2 = int(closed2.group(2))
        assert closed2.group(1) == "signal" and stop2 > stop, context2
        assert stop2 in [int(s) for s in closed2.group(3).split(",")], context2
        assert "not queuing a continuation: TIERPOINT_RESUBMIT=0" in out2, context2
        log2 = read(epilog_log)
        assert f"job {second}: run example: newest step is on the capacity tier; local copy " \
               "removed" in log2, context2
        assert not run_dir.exists(), f"the Epilog left {run_dir}" + context2

        # The capacity tier holds both final checkpoints, intact.
        import tierpoint

        assert {stop, stop2} <= set(tierpoint.format.layout.committed_steps(str(pools[0]), "example"))
        check = subprocess.run([os.path.join(venv, "bin", "tierpoint"), "verify", "--all",
                                str(tmp_path / "ssd" / node), "--run", "example",
                                "--persistent", *map(str, pools)],
                               capture_output=True, text=True, timeout=300)
        assert check.returncode == 0, check.stdout + check.stderr
        for step in (stop, stop2):
            assert f"step_{step:08d}: OK" in check.stdout, check.stdout
        print(f"whole test: {time.monotonic() - t0:.0f} s; steps {stop} (4 ranks) -> {stop2} "
              f"(2 ranks)")
    except BaseException:
        print(f"--- slurmctld.log:\n{slurm_cluster.log_tail('slurmctld.log')}\n"
              f"--- slurmd.log:\n{slurm_cluster.log_tail('slurmd.log')}")
        raise
    finally:
        slurm_cluster.cancel(first, second)
        os.remove(epilog_env)


@pytest.mark.parametrize("resubmit", ["-1", "two"])
def test_the_template_refuses_a_bad_resubmit_count(tmp_path, resubmit):
    """A continuation count that is not a number is an error before anything runs (it would
    otherwise be read as 0 or crash the restart line after the job's work)."""
    env = {**os.environ, "TIERPOINT_RESUBMIT": resubmit, "SLURM_JOB_ID": "1"}
    proc = subprocess.run(["bash", TEMPLATE, "true"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"TIERPOINT_RESUBMIT must be a count, not '{resubmit}'" in proc.stderr
