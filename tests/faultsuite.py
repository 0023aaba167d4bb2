"""The seeded fault-injection suite: kill a rank, or the whole job, at random points of
save, commit, drain and retention, then check what a restart finds.

Each trial runs tests/workers/fault_worker.py on 4 MPI ranks as two nodes, saving steps
1..6 (drains of steps 2, 4, 6; both tiers' retention at work) with one fault armed, chosen
by the seeded generator:

- ``kill``: SIGKILL of one rank when it reaches a named point (engine/faults.py), the N-th
  time for points reached per chunk;
- ``killjob``: SIGKILL of every process of the job (launcher included) at such a point;
- ``timer``: SIGKILL of one rank or of the job at a random time into the run (wherever
  the code then is).

After the kill the suite reads the tiers itself and checks that everything presented as a
checkpoint (a commit marker) verifies, then cleans up the way the trial says, by the next
save or by ``tierpoint gc``, and restarts the job on 2 or 3 ranks, which must:

- restore exactly the newest checkpoint that is committed on both nodes or on the capacity
  tier, bit-exactly, on any number of ranks (peer restore), and never an older one than the
  last save whose commit was acknowledged before the kill: a trial that does "lost
  progress", is a failure, and the suite prints how many did;
- save on to step 8; afterwards no file of an interrupted save, drain or deletion is left
  on either tier (``tierpoint gc`` alone must already remove all of them but commits that
  reached one node only, which only the next save can see).

Two trials in five run with partner replicas (``Policy(replicas=1)``), with the kill points
of the replication too (``REPLICA_POINTS``: a leader sending its chunks, a keeper committing
a replica); two in three of those then lose a node: its local tier is deleted after the
kill and the cleanup, and the restart runs with a replacement node of another name in its
place. Such a restart must still restore a step no older than the last acknowledged commit
(a save with replicas is acknowledged once its replica is committed), from the survivor's
own copy and the lost node's replica, over the communicator.

With an S3 capacity tier (``s3_url``: a prefix on a running S3 server, the AWS settings in
the environment) further trials drain to S3 instead of the pools, a prefix each, and kill
at the S3 drain's own points (``S3_POINTS``: mid-upload, before the commit object, after
it); the same checks hold, and after the cleanup and after the next save no step without a
commit object and no unfinished multipart upload may be left on the bucket.

Run it directly for more trials: ``python tests/faultsuite.py --trials 200 --seed 7``
(``--s3-url s3://BUCKET/PREFIX --s3-trials N`` with the AWS settings of a server).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tierpoint.format import layout
from tierpoint.runtime.distenv import find_mpiexec
from tierpoint.tiers.capacity import CapacityTier
from tierpoint.tiers.local import LocalTier
from tierpoint.tiers.s3 import S3Tier
from tierpoint.trust.verify import verify_checkpoint

import jobkill
from mpirun import orphaned_segments_removed

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "workers", "fault_worker.py")
RUN, NODES, TRAIN_STEPS, RESUME_STEPS = "f", ("n0", "n1"), 6, 8
# Who reaches each point in this scenario, at which steps, how many times per step at most
# (ranks 0 and 2 lead the two nodes; rank 0 leads the drain's commit and the capacity
# retention). A count beyond what is reached leaves the run unharmed: also an outcome.
POINTS = {
    "snapshot": ([0, 1, 2, 3], range(1, 7), 1),
    "write": ([0, 1, 2, 3], range(1, 7), 9),
    "manifest": ([0, 1, 2, 3], range(1, 7), 1),
    "commit": ([0, 1, 2, 3], range(1, 7), 1),
    "drain": ([0, 2], (2, 4, 6), 17),
    "drain-merge": ([0, 1, 2, 3], (2, 4, 6), 1),
    "drain-commit": ([0], (2, 4, 6), 1),
    "retire": ([0, 2], range(1, 5), 1),
    "capacity-retire": ([0], (2,), 1),
}
# The S3 trials' points: the drain's upload (``rank`` is the aggregator's index: one per
# node; a part is a few objects here), the commit object's eve (after the manifest object)
# and the moment after it (before the drain's local records and audit record), the merge
# and the capacity retention.
S3_POINTS = {
    "drain-upload": ([0, 1], (2, 4, 6), 1),  # the first bytes: inside a multipart upload
    "drain-merge": ([0, 1, 2, 3], (2, 4, 6), 1),
    "drain-commit": ([0], (2, 4, 6), 1),
    "drain-committed": ([0], (2, 4, 6), 1),
    "capacity-retire": ([0], (2,), 1),
}


# With partner replicas (``replicas`` trials): the leaders send their node's chunks (one
# point per chunk) and the keepers commit each replica.
REPLICA_POINTS = {
    "replicate-send": ([0, 2], range(1, 7), 9),
    "replicate-commit": ([0, 2], range(1, 7), 1),
}


def plan_trials(seed: int, count: int, loop_seconds: float) -> list[dict]:
    """The trials, a pure function of the seed (and, for timers, of the measured run). Two
    in five run with partner replicas; of those, two in three then lose a node (its local
    tier deleted before the restart, which runs on a replacement node of another name)."""
    rng = random.Random(seed)
    trials = []
    for i in range(count):
        mode = rng.choices(["kill", "killjob", "timer"], weights=[5, 3, 2])[0]
        trial = {"index": i, "mode": mode, "cleanup": rng.choice(["save", "gc"]),
                 "resume_ranks": rng.choice([2, 3, 4])}
        replicas = rng.random() < 0.4
        lose = rng.choice([None, "n0", "n1"]) if replicas else None
        if replicas:
            trial.update(replicas=True, lose=lose)
        points = {**POINTS, **REPLICA_POINTS} if replicas else POINTS
        if mode == "timer":
            trial["who"] = rng.choice(["job", "0", "1", "2", "3"])
            trial["after"] = round(rng.uniform(0.0, loop_seconds), 3)
        else:
            point = rng.choice(sorted(points))
            ranks, steps, most = points[point]
            trial.update(point=point, rank=rng.choice(ranks), step=rng.choice(list(steps)),
                         at=rng.randint(1, most))
        trials.append(trial)
    return trials


def plan_s3_trials(seed: int, count: int, first: int) -> list[dict]:
    """The S3 trials (numbered from ``first``), a pure function of the seed: a rank or the
    job killed at one of ``S3_POINTS``, each point in turn."""
    rng = random.Random(seed + 1)
    order = sorted(S3_POINTS)
    rng.shuffle(order)  # every point in each run of len(S3_POINTS) trials
    trials = []
    for i in range(first, first + count):
        point = order[(i - first) % len(order)]
        ranks, steps, most = S3_POINTS[point]
        trials.append({"index": i, "mode": rng.choice(["kill", "killjob"]),
                       "cleanup": rng.choice(["save", "gc"]),
                       "resume_ranks": rng.choice([2, 3, 4]), "capacity": "s3",
                       "point": point, "rank": rng.choice(ranks),
                       "step": rng.choice(list(steps)), "at": rng.randint(1, most)})
    return trials


def describe(trial: dict) -> str:
    extra = (", replicas" if trial.get("replicas") else "") + (
        f", then node {trial['lose']} lost" if trial.get("lose") else "")
    if trial["mode"] == "timer":
        who = "the job" if trial["who"] == "job" else f"rank {trial['who']}"
        return f"SIGKILL {who} {trial['after']:.2f} s in{extra}"
    who = "the job" if trial["mode"] == "killjob" else f"rank {trial['rank']}"
    where = " of an S3 drain" if trial.get("capacity") == "s3" else ""
    return (f"SIGKILL {who} at {trial['point']}{where} (rank {trial['rank']}, step "
            f"{trial['step']}, time {trial['at']}){extra}")


def launch(root: str, ranks: int, last: int, env: dict | None = None,
           timeout: float = 180) -> subprocess.CompletedProcess:
    """The worker on ``ranks`` ranks split over the two nodes."""
    env = jobkill.fault_env(env)
    per_node = [ranks - ranks // 2, ranks // 2]
    cmd = [find_mpiexec()]
    for node, count in zip(node_names(root), per_node):
        if cmd[-1] != cmd[0]:
            cmd.append(":")
        cmd += ["-n", str(count), "-env", "TIERPOINT_NODE", node,
                sys.executable, WORKER, root, str(last)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TIERPOINT_SYNC": "fsync",
                **(env or {})}
    url = s3_url_of(root)
    if url:
        full_env["FAULT_PERSISTENT"] = url
    for key in ("TIERPOINT_FAULT", "TIERPOINT_FAULT_RUN", "FAULT_TIMER", "FAULT_REPLICAS"):
        if key not in (env or {}):
            full_env.pop(key, None)
    with orphaned_segments_removed():
        proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True,
                              timeout=timeout)
        stray = kill_strays(root)
    if stray:  # a killed job's rank outlived its launcher: it would write into the trial
        proc.stderr += f"\nSTRAY ranks outlived the launcher and were killed: {stray}\n"
    return proc


def _workers_of(root: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if WORKER.encode() in args and root.encode() in args:  # a zombie has no cmdline
            found.append(int(pid))
    return found


def kill_strays(root: str, grace: float = 5.0) -> list[int]:
    """Worker processes of ``root`` still alive ``grace`` seconds after their launcher
    returned (killed ranks may take a moment to go): SIGKILLed, and returned."""
    deadline = time.monotonic() + grace
    while (alive := _workers_of(root)) and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for processes to exit, with a bound
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive



def fault_env(trial: dict) -> dict:
    env = {"FAULT_REPLICAS": "1"} if trial.get("replicas") else {}
    if trial["mode"] == "timer":
        return {**env, "FAULT_TIMER": f"{trial['who']}:{trial['after']}"}
    kind = "kill" if trial["mode"] == "kill" else "killjob"
    return {**env, "TIERPOINT_FAULT": f"{trial['point']}:rank={trial['rank']}:"
                                      f"step={trial['step']}:at={trial['at']}:kind={kind}"}


NODES_FILE = "nodes"  # in a trial's directory: the node names, once one was replaced


def node_names(root: str) -> tuple[str, str]:
    """The names of the trial's two nodes now (``NODES``, until a node is lost and
    replaced): the slots "n0" and "n1" of ``committed`` and ``local_dir`` map onto them."""
    try:
        with open(os.path.join(root, NODES_FILE)) as f:
            return tuple(f.read().split())
    except FileNotFoundError:
        return NODES


def lose_node(root: str, slot: str) -> str:
    """Node ``slot`` is lost with its local tier; a replacement of another name takes its
    place in later launches. Returns the replacement's name."""
    shutil.rmtree(local_dir(root, slot), ignore_errors=True)
    names = list(node_names(root))
    names[NODES.index(slot)] = f"{slot}x"
    with open(os.path.join(root, NODES_FILE), "w") as f:
        f.write(" ".join(names))
    return names[NODES.index(slot)]


def pools(root: str) -> list[str]:
    return [os.path.join(root, "poolA"), os.path.join(root, "poolB")]


URL_FILE = "capacity.url"  # in a trial's directory: the S3 prefix it drains to, if any


def s3_url_of(root: str) -> str | None:
    try:
        with open(os.path.join(root, URL_FILE)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def capacity(root: str):
    """The trial's capacity tier: its S3 prefix, or the two pools."""
    url = s3_url_of(root)
    return S3Tier(url) if url else CapacityTier(pools(root))


def persistent(root: str) -> list[str]:
    """What ``--persistent`` says for the trial's capacity tier."""
    url = s3_url_of(root)
    return [url] if url else pools(root)


def local_dir(root: str, slot: str) -> str:
    """The local tier of the node in ``slot`` ("n0" or "n1": its name now, node_names)."""
    return os.path.join(root, "local", node_names(root)[NODES.index(slot)])


def committed(root: str) -> dict:
    """What each tier presents as committed: {"n0": [...], "n1": [...], "capacity": [...],
    "replicas": {"n0": [...], "n1": [...]}} (the steps of which each node holds the other's
    replica)."""
    out = {node: layout.committed_steps(local_dir(root, node), RUN) for node in NODES}
    out["capacity"] = capacity(root).steps(RUN)
    out["replicas"] = {node: LocalTier(local_dir(root, node)).replica_steps(RUN)
                       for node in NODES}
    return out


ROWS = 61  # as in the worker: rows split evenly (ceil) over the ranks, in rank order


def node_rows(ranks: int) -> list[range]:
    """The rows each node's ranks hold when ``ranks`` ranks run (the launch order)."""
    per = -(-ROWS // ranks)
    first_node = ranks - ranks // 2
    return [range(0, min(first_node * per, ROWS)), range(min(first_node * per, ROWS), ROWS)]


def restorable(tiers: dict, ranks: int = 4) -> int | None:
    """The newest step a restart can restore, on any number of ranks: one on the capacity
    tier, or one whose chunks of each node are on some node, its own copy or its partner's
    replica (peer restore: the chunks a rank needs from the other node come over the
    communicator, restore/peers.py). ``ranks`` is kept for the callers: the answer no
    longer depends on it."""
    replicas = tiers.get("replicas", {"n0": [], "n1": []})
    # Each node's chunks of a step: its own copy, or the replica its partner (the other
    # node) holds.
    first = set(tiers["n0"]) | set(replicas["n1"])
    second = set(tiers["n1"]) | set(replicas["n0"])
    steps = set(tiers["capacity"]) | (first & second)
    return max(steps) if steps else None


def leftovers(root: str, *, partial_commits: bool) -> list[str]:
    """Files of interrupted work on either tier (commits held by one node only when
    ``partial_commits``)."""
    found = []
    for node in NODES:
        run_dir = layout.run_dir(local_dir(root, node), RUN)
        for name in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
            path = os.path.join(run_dir, name)
            if layout.is_retired_name(name):
                found.append(f"{path}: a removal cut short")
            elif layout.parse_step_dir_name(name) is not None and not layout.is_committed(path):
                found.append(f"{path}: an uncommitted save")
            elif (layout.parse_replica_dir_name(name) is not None
                  and not layout.is_committed(path)):
                found.append(f"{path}: a replica cut short")
    tier = capacity(root)
    for step in tier.uncommitted_steps(RUN):
        found.append(f"capacity step {step}: an interrupted drain or deletion")
    if isinstance(tier, S3Tier):
        found += [f"s3 {key}: an unfinished multipart upload"
                  for key, _ in tier.bucket.uploads(tier.location.key(RUN) + "/")]
    for base in [local_dir(root, n) for n in NODES] + pools(root):
        for directory, _, files in os.walk(base):
            found += [f"{os.path.join(directory, f)}: a temp file" for f in files
                      if f.startswith(".tmp-")]
    if partial_commits and isinstance(tier, S3Tier):  # the next drain cleared the staging
        for node in NODES:
            staging = os.path.join(local_dir(root, node), layout.STAGING_DIR)
            found += [f"{os.path.join(d, f)}: a staged part left behind"
                      for d, _, files in os.walk(staging) for f in files]
    if partial_commits:
        tiers = committed(root)
        for step in sorted(set(tiers["n0"]) ^ set(tiers["n1"])):
            if step not in tiers["capacity"]:
                found.append(f"step {step}: committed on one node only")
    return found


def check_presented(root: str) -> list[str]:
    """Every directory with a commit marker must verify (nothing half-written is presented
    as a checkpoint). A node's directory holds only its node's chunks (a partial check);
    both nodes' checks together must cover every chunk."""
    problems = []
    tiers = committed(root)
    for node in NODES:
        for step in tiers[node]:
            report = verify_checkpoint(layout.step_dir(local_dir(root, node), RUN, step),
                                       partial=True)
            problems += [f"{node} step {step}: {p}" for p in report.problems]
            if report.chunks_checked == 0:
                problems.append(f"{node} step {step}: no chunk of this node was checked")
        tier = LocalTier(local_dir(root, node))
        for copy in tier.replicas(RUN):
            path = tier.replica_path(RUN, *copy)
            report = verify_checkpoint(path, partial=True)
            problems += [f"{node} replica {os.path.basename(path)}: {p}"
                         for p in report.problems]
    for step in tiers["capacity"]:
        report = verify_checkpoint(capacity(root).step_path(RUN, step))
        problems += [f"capacity step {step}: {p}" for p in report.problems]
    return problems


def gc(root: str) -> None:
    for node in NODES:
        if not os.path.isdir(local_dir(root, node)):
            # Killed before this node's first save made its directory: nothing of it to
            # collect (gc names a missing --local as an error), and nothing was drained
            # from it; another node's run of gc collects the pools.
            continue
        proc = subprocess.run(
            [sys.executable, "-m", "tierpoint.cli", "gc", "--local", local_dir(root, node),
             "--run", RUN, "--persistent", *persistent(root), "--keep-local", "2",
             "--keep-persistent", "2"], capture_output=True, text=True, timeout=120,
            env={**os.environ, "TIERPOINT_NODE": node_names(root)[NODES.index(node)]})
        if proc.returncode != 0:
            raise AssertionError(f"tierpoint gc failed:\n{proc.stdout}\n{proc.stderr}")


def _lines(text: str, word: str) -> list[str]:
    return re.findall(rf"^{word} (\S+)$", text, flags=re.M)


def run_trial(trial: dict, root: str, s3_url: str | None = None) -> dict:
    """One trial (on the S3 prefix ``s3_url`` for an S3 trial); returns its outcome, with
    ``problems`` empty when every check held."""
    os.makedirs(root)
    for p in pools(root):
        os.makedirs(p)
    if trial.get("capacity") == "s3":
        with open(os.path.join(root, URL_FILE), "w") as f:
            f.write(s3_url)
    out = dict(trial, problems=[])
    problems = out["problems"]
    first = launch(root, 4, TRAIN_STEPS, fault_env(trial))
    out["killed"] = first.returncode != 0
    if "STRAY" in first.stderr:
        problems.append(first.stderr[first.stderr.index("STRAY"):].strip())
    acked = [int(s) for s in _lines(first.stdout, "ACKED")]
    out["acked"] = max(acked) if acked else None
    if not out["killed"] and "DONE" not in first.stdout:
        problems.append(f"the run neither finished nor died:\n{first.stdout}{first.stderr}")
    if "PROBLEM" in first.stdout:
        problems.append(f"the faulted run reported: {first.stdout}")
    problems += check_presented(root)
    tier = capacity(root)
    if isinstance(tier, S3Tier):  # what the kill left unfinished (reported, then cleaned)
        out["uploads_left"] = len(tier.bucket.uploads(tier.location.key(RUN) + "/"))
    newest = restorable(committed(root))
    out["newest"] = newest  # restorable by the same 4-rank layout
    if out["acked"] is not None and (newest is None or newest < out["acked"]):
        problems.append(f"step {out['acked']} was acknowledged as committed, but the newest "
                        f"restorable step is {newest}")
    if trial["cleanup"] == "gc":
        gc(root)
        problems += [f"after tierpoint gc: {x}" for x in leftovers(root, partial_commits=False)]
        if restorable(committed(root)) != newest:
            problems.append(f"tierpoint gc changed the newest restorable step from {newest} "
                            f"to {restorable(committed(root))}")
    if trial.get("lose"):
        out["replacement"] = lose_node(root, trial["lose"])
    expect = restorable(committed(root), trial["resume_ranks"])
    if trial.get("lose") and out["acked"] is not None and (expect is None or
                                                           expect < out["acked"]):
        problems.append(f"step {out['acked']} was acknowledged, but after losing node "
                        f"{trial['lose']} the newest step whose chunks survive is {expect}")
    second = launch(root, trial["resume_ranks"], RESUME_STEPS,
                    {"FAULT_REPLICAS": "1"} if trial.get("replicas") else None)
    restored = _lines(second.stdout, "RESTORED")
    out["restored"] = restored[0] if restored else "?"
    if "STRAY" in second.stderr:
        problems.append(second.stderr[second.stderr.index("STRAY"):].strip())
    if second.returncode != 0 or "DONE" not in second.stdout:
        problems.append(f"the restarted run failed:\n{second.stdout}\n{second.stderr}")
    elif set(restored) != {"none" if expect is None else str(expect)}:
        problems.append(f"the restarted run restored {sorted(set(restored))}, not the newest "
                        f"step {expect} that {trial['resume_ranks']} ranks can restore")
    # Every node alive, or (with replicas) one lost: on any world size the restart must
    # restore a step no older than the last acknowledged commit (peer restore; a save with
    # replicas is acknowledged once its replica is committed); anything else lost progress.
    got = int(restored[0]) if restored and restored[0].isdigit() else None
    out["lost_progress"] = out["acked"] is not None and (got is None or got < out["acked"])
    if out["lost_progress"]:
        problems.append(f"lost progress: step {out['acked']} was acknowledged, the restart on "
                        f"{trial['resume_ranks']} ranks restored {out['restored']}")
    problems += [f"after the next save: {x}" for x in leftovers(root, partial_commits=True)]
    tiers = committed(root)
    if (tiers["n0"] != tiers["n1"] or tiers["n0"][-1:] != [RESUME_STEPS]
            or RESUME_STEPS not in tiers["capacity"]):
        problems.append(f"after the restarted run the tiers hold {tiers}")
    return out


def outcome_line(out: dict) -> str:
    what = "killed" if out["killed"] else "not reached (ran to the end)"
    verdict = "OK" if not out["problems"] else "FAILED: " + "; ".join(out["problems"])
    if "uploads_left" in out:
        what += f", {out['uploads_left']} multipart uploads left unfinished"
    return (f"trial {out['index']:3d}: {describe(out)} -> {what}; last acked {out['acked']}, "
            f"newest restorable {out['newest']}, restored {out['restored']} on "
            f"{out['resume_ranks']} ranks after cleanup by {out['cleanup']}: {verdict}")


def measure_loop(root: str) -> float:
    """A clean run's seconds from startup to the end of its saves (the timers' range)."""
    os.makedirs(root)
    for p in pools(root):
        os.makedirs(p)
    proc = launch(root, 4, TRAIN_STEPS)
    if proc.returncode != 0:
        raise AssertionError(f"the clean run failed:\n{proc.stdout}\n{proc.stderr}")
    return float(_lines(proc.stdout, "LOOP")[0])


def run_suite(seed: int, trials: int, workdir: str, say=print, *, s3_url: str | None = None,
              s3_trials: int = 0) -> list[dict]:
    """``trials`` trials on POSIX pools, then ``s3_trials`` on prefixes under ``s3_url``."""
    t = time.perf_counter()
    loop = measure_loop(os.path.join(workdir, "clean")) if trials else 0.0
    say(f"fault suite: seed {seed}, {trials} trials (a clean run saves in {loop:.2f} s)" +
        (f", {s3_trials} trials draining to {s3_url}" if s3_trials else ""))
    outcomes = []
    planned = plan_trials(seed, trials, loop) + (
        plan_s3_trials(seed, s3_trials, trials) if s3_trials else [])
    trials += s3_trials
    for trial in planned:
        out = run_trial(trial, os.path.join(workdir, f"trial{trial['index']:03d}"),
                        f"{s3_url}/trial{trial['index']:03d}" if s3_url else None)
        say(outcome_line(out))
        outcomes.append(out)
        if not out["problems"]:
            shutil.rmtree(os.path.join(workdir, f"trial{trial['index']:03d}"))
    killed = sum(o["killed"] for o in outcomes)
    failed = sum(bool(o["problems"]) for o in outcomes)
    lost = sum(bool(o.get("lost_progress")) for o in outcomes)
    say(f"fault suite: {trials} trials, {killed} killed a run, {trials - killed} did not reach "
        f"their point, {failed} failed, {lost} lost progress (restored a step older than the "
        f"last acknowledged commit, or none), in {time.perf_counter() - t:.0f} s")
    return outcomes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=20261127)
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--dir", help="work directory (default: a temporary one, removed after)")
    p.add_argument("--s3-url", help="s3://BUCKET/PREFIX for the S3 trials (the AWS settings "
                                    "of its server in the environment)")
    p.add_argument("--s3-trials", type=int, default=0)
    args = p.parse_args(argv)
    if args.s3_trials and not args.s3_url:
        p.error("--s3-trials needs --s3-url")
    workdir = args.dir or tempfile.mkdtemp(prefix="tierpoint-faults-")
    outcomes = run_suite(args.seed, args.trials, workdir, s3_url=args.s3_url,
                         s3_trials=args.s3_trials)
    if not args.dir and not any(o["problems"] for o in outcomes):
        shutil.rmtree(workdir)
    return 1 if any(o["problems"] for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
