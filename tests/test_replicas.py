"""Partner replicas (Policy replicas=1): each node's committed copy of a step reaches the local
tier of its partner node over the communicator and is committed there under its own marker;
the ring removes replicas with their step; a replication cut short leaves no replica and is
swept; a failed one is a warning on every rank and never fails the save; one node: a warning
and no replicas. Real MPI ranks (tests/workers/replica_worker.py), 4 ranks as 2 and as 4
nodes (TIERPOINT_NODE); the values encode their global index and the step."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tierpoint
from jobkill import fault_env
from mpirun import run_ranks
from tierpoint.errors import ConfigurationError
from tierpoint.format import layout
from tierpoint.tiers.local import LocalTier
from tierpoint.tiers.replicas import partners, transfer_rounds
from tierpoint.tiers.retention import replica_deletions
from tierpoint.trust.audit import AUDIT_FILE, read_log
from tierpoint.trust.verify import verify_checkpoint

TWO_NODES = [(2, {"TIERPOINT_NODE": "n0"}), (2, {"TIERPOINT_NODE": "n1"})]
FOUR_NODES = [(1, {"TIERPOINT_NODE": f"n{i}"}) for i in range(4)]
ONE_NODE = [(2, {"TIERPOINT_NODE": "n0"})]
ROWS, COLS = 32, 8  # as in workers/replica_worker.py


def expected(step: int) -> dict:
    return {"w": np.arange(ROWS * COLS, dtype=np.float64).reshape(ROWS, COLS) + step * 1e6,
            "b": np.arange(COLS * ROWS, dtype=np.int32).reshape(COLS, ROWS) * 7 + step}


def root_of(tmp_path, node: str) -> str:
    return str(tmp_path / "local" / node)


def file_hashes(directory: str) -> dict:
    """relative path -> SHA-256 of every file of a step directory but its marker and its
    drain record (which are the directory's own, not the checkpoint's)."""
    out = {}
    for base, _, names in os.walk(directory):
        for name in names:
            if name in (layout.COMMIT_FILE, layout.DRAIN_FILE):
                continue
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


def replica_dirs(root: str, run: str = "r") -> list[str]:
    run_dir = layout.run_dir(root, run)
    return sorted(n for n in os.listdir(run_dir) if layout.parse_replica_dir_name(n))


def run_worker(nodes, tmp_path, first, last, *, env=None, expect_ok=True):
    return run_ranks(nodes, "replica_worker.py", tmp_path, first, last, env=env,
                     expect_ok=expect_ok, timeout=240)


def check_replicas(tmp_path, nodes: list[str], steps: list[int]) -> None:
    """Each node's root holds, for each of ``steps``, exactly one committed replica: that of
    the domain whose partner it is; its files equal the original's byte for byte; it
    verifies as a step copy; the LocalTier API returns it; with the partner's own copy it
    holds the whole step, bit-exactly."""
    keeper_of = partners(nodes)
    for d, node in enumerate(nodes):
        keeper = nodes[keeper_of[d]]
        tier = LocalTier(root_of(tmp_path, keeper))
        assert tier.replica_steps("r") == steps
        assert tier.steps("r") == steps  # its own steps: unchanged meaning
        for step in steps:
            original = layout.step_dir(root_of(tmp_path, node), "r", step)
            replica = layout.replica_dir(tier.root, "r", step, d)
            assert file_hashes(replica) == file_hashes(original), (node, keeper, step)
            assert len(file_hashes(replica)) > 5
            marker = layout.read_commit_marker(replica)
            own = layout.read_commit_marker(original)
            assert marker["domain"] == d and marker["replica_of"] == {"domain": d, "node": node}
            assert marker["writer_domain"] == keeper_of[d]
            assert marker["manifest_sha256"] == own["manifest_sha256"]
            assert marker["digest"] == own["digest"]
            report = verify_checkpoint(replica, partial=True)
            assert report.ok, report
            copies = tier.replica_copies("r", step)
            assert [c.path for c in copies] == [replica]
            copy = copies[0]
            assert copy.held_domains() == {d}
            mine = LocalTier(root_of(tmp_path, node)).open("r", step)
            checked = 0
            for name, array in copy.manifest.arrays.items():
                for key in array.chunks:
                    assert copy.expected(array, key) == mine.expected(array, key)
                    if copy.expected(array, key):
                        assert copy.holds(array, key)
                        assert copy.read_chunk(array, key) == mine.read_chunk(
                            mine.manifest.arrays[name], key)
                        checked += 1
            assert checked > 0
    for step in steps:
        check_whole_step(tmp_path, nodes, step)


def check_whole_step(tmp_path, nodes: list[str], step: int) -> None:
    """Node 1's own copy of ``step`` plus every replica node 1 holds, gathered into one
    directory (as a node that lost its partner would find them): read bit-exactly through
    ``tierpoint.open`` when the replicas complete it (two nodes), never reading node 0."""
    if len(nodes) != 2:
        return
    gathered = tmp_path / "gathered" / "r" / layout.step_dir_name(step)
    shutil.rmtree(gathered.parent.parent, ignore_errors=True)
    shutil.copytree(layout.step_dir(root_of(tmp_path, "n1"), "r", step), gathered)
    for copy in LocalTier(root_of(tmp_path, "n1")).replica_copies("r", step):
        for base, _, names in os.walk(copy.path):
            for name in names:
                if name in (layout.COMMIT_FILE, layout.MANIFEST_FILE):
                    continue
                rel = os.path.relpath(os.path.join(base, name), copy.path)
                os.makedirs(os.path.dirname(gathered / rel), exist_ok=True)
                shutil.copyfile(os.path.join(base, name), gathered / rel)
    view = tierpoint.open(str(gathered))
    for key, want in expected(step).items():
        got = view[key][...]
        assert got.dtype == want.dtype and np.array_equal(got, want), key


def test_partners_are_a_ring_over_domains_on_other_nodes():
    assert partners(["n0", "n1"]) == {0: 1, 1: 0}
    assert partners(["a", "b", "c", "d"]) == {0: 1, 1: 2, 2: 3, 3: 0}
    # Two directories per node: each goes to the next domain on another node, never its own.
    assert partners(["a", "a", "b", "b"]) == {0: 2, 1: 2, 2: 0, 3: 0}
    assert partners(["a", "b", "a"]) == {0: 1, 1: 2, 2: 1}
    assert partners(["a", "a"]) == {} and partners(["a"]) == {}


def _in_turn_depth(order: list[tuple[int, int]]) -> int:
    """Leaders each take their transfers of ``order`` one at a time, in that order; a
    transfer completes when both its ends have reached it (blocking sends and receives).
    Returns how many parallel steps every transfer takes; raises on a deadlock."""
    queues: dict[int, list] = {}
    for t in order:
        for d in t:
            queues.setdefault(d, []).append(t)
    steps = 0
    while any(queues.values()):
        ready = {q[0] for q in queues.values() if q and all(queues[d][0] == q[0] for d in q[0])}
        if not ready:
            raise AssertionError(f"deadlock: {queues}")
        for t in ready:
            for d in t:
                queues[d].pop(0)
        steps += 1
    return steps


@pytest.mark.parametrize("nodes", [
    [f"n{i}" for i in range(2)], [f"n{i}" for i in range(7)], [f"n{i}" for i in range(64)],
    [f"n{i}" for i in range(2049)], ["a", "a", "b", "b"], ["a", "b", "a"],
    ["a", "a", "a", "b", "c", "c"]])
def test_transfers_in_turn_go_in_rounds_of_disjoint_pairs_a_constant_depth(nodes):
    keeper_of = partners(nodes)
    rounds = transfer_rounds(keeper_of)
    flat = [t for r in rounds for t in r]
    assert sorted(flat) == sorted(keeper_of.items())  # every transfer, once
    for r in rounds:  # no domain twice in a round
        ends = [d for t in r for d in t]
        assert len(ends) == len(set(ends)), r
    most = max(sum(d in t for t in flat) for d in range(len(nodes)))
    assert len(rounds) <= 2 * most - 1
    depth = _in_turn_depth(flat)
    assert depth == len(rounds)
    if len(set(nodes)) == len(nodes):  # a ring: 2 rounds, 3 when odd
        assert len(rounds) == (2 if len(nodes) % 2 == 0 else 3)
    if len(nodes) == 2049:  # domain order made it a chain through every domain
        assert _in_turn_depth(sorted(keeper_of.items())) == len(nodes)


def test_replicas_leave_with_the_ring_but_a_replacement_node_keeps_the_newest():
    policy = tierpoint.Policy(keep_local=2, replicas=1)
    assert replica_deletions({3, 4}, {2, 3, 4}, policy=policy) == [2]
    assert replica_deletions({3, 4}, {3, 4}, policy=policy) == []
    # A replacement node without copies of its own keeps the newest keep_local replicas.
    assert replica_deletions(set(), {2, 3, 4}, policy=policy) == [2]
    # Its first own save pushes the oldest replica out of the ring.
    assert replica_deletions({5}, {3, 4}, policy=policy) == [3]
    # An own step kept beyond keep_local (owed a drain) keeps its replica too.
    assert replica_deletions({1, 4, 5}, {1, 4, 5}, policy=policy) == []


def test_policy_takes_zero_or_one_replica():
    assert tierpoint.Policy().replicas == 0
    assert tierpoint.Policy(replicas=1).replicas == 1
    for bad in (2, -1, True, 1.0, "1"):
        with pytest.raises(ConfigurationError, match="replicas must be 0"):
            tierpoint.Policy(replicas=bad)


def test_replica_names_never_parse_as_step_directories():
    name = layout.replica_dir_name(12, 3)
    assert name == "step_00000012.replica-d3"
    assert layout.parse_step_dir_name(name) is None
    assert layout.parse_replica_dir_name(name) == (12, 3)
    assert layout.parse_replica_dir_name("step_00000012") is None
    assert layout.parse_replica_dir_name(name + layout.RETIRED_MARK + "x") is None
    assert layout.is_retired_replica_name(name + layout.RETIRED_MARK + "abc")
    assert not layout.is_retired_name(name + layout.RETIRED_MARK + "abc")


def test_two_nodes_replicate_every_ring_step_over_the_communicator(tmp_path):
    proc = run_worker(TWO_NODES, tmp_path, 1, 4, env={"WATCH_OPENS": "1"})
    assert proc.stdout.count("DONE") == 4, proc.stdout + proc.stderr
    # The engine never touched the other node's directory: the replica came over MPI.
    assert "FOREIGN" not in proc.stdout, proc.stdout
    assert "WARNING" not in proc.stdout, proc.stdout
    check_replicas(tmp_path, ["n0", "n1"], [3, 4])
    # The ring removed steps 1 and 2 with their replicas.
    for node in ("n0", "n1"):
        assert replica_dirs(root_of(tmp_path, node)) == [
            layout.replica_dir_name(s, 1 - int(node[1])) for s in (3, 4)]
    for rank in range(4):
        assert f"STEPS {rank} [3, 4]" in proc.stdout
    # The audit log records each replica: step, from and to.
    log = read_log(os.path.join(layout.run_dir(root_of(tmp_path, "n0"), "r"), AUDIT_FILE))
    replicated = sorted((r["step"], r["detail"]["from"], r["detail"]["to"])
                        for r in log if r["event"] == "replicated")
    assert replicated == [(s, a, b) for s in (1, 2, 3, 4) for a, b in (("n0", "n1"),
                                                                      ("n1", "n0"))]
    digests = {r["step"]: r["digest"] for r in log if r["event"] == "committed"}
    assert all(r["digest"] == digests[r["step"]] for r in log if r["event"] == "replicated")
    # `tierpoint ls` shows which replicas the root holds.
    ls = subprocess.run([sys.executable, "-m", "tierpoint.cli", "ls", root_of(tmp_path, "n1")],
                        capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0, ls.stderr
    rows = [line.split() for line in ls.stdout.splitlines()[1:]]
    assert "replica of" in ls.stdout.splitlines()[0]
    assert [(r[1], r[2], r[-2]) for r in rows] == [("3", "local", "n0"),
                                                   ("4", "local", "n0")], ls.stdout
    listed = json.loads(subprocess.run(
        [sys.executable, "-m", "tierpoint.cli", "ls", "--json", root_of(tmp_path, "n1")],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    assert [[(h["node"], h["domain"]) for h in r["replicas"]] for r in listed] == [
        [("n0", 0)], [("n0", 0)]]


def test_four_nodes_replicate_around_the_ring(tmp_path):
    proc = run_worker(FOUR_NODES, tmp_path, 1, 3, env={"WATCH_OPENS": "1"})
    assert proc.stdout.count("DONE") == 4 and "FOREIGN" not in proc.stdout, proc.stdout
    check_replicas(tmp_path, ["n0", "n1", "n2", "n3"], [2, 3])
    assert replica_dirs(root_of(tmp_path, "n2")) == [layout.replica_dir_name(s, 1)
                                                     for s in (2, 3)]


def test_the_ring_keeps_the_step_being_sent_and_every_step_is_replicated_in_order(
        tmp_path):
    # keep_local=1, and step 1's replication capped so slowly (each node sends ~1.5 KB at
    # 600 B/s) that step 2 commits, and its ring runs, while step 1 is still being sent.
    proc = run_ranks(TWO_NODES, "replica_worker.py", tmp_path, 1, 2, 1, timeout=240,
                     env={"REPLICA_RATE": "600", "NO_WAIT": "1"})
    assert proc.stdout.count("ACKED 2") == 4 and proc.stdout.count("DONE") == 4, proc.stdout
    # Without the ring holding step 1 back, its sender would have lost the chunks it was
    # reading: a warning.
    assert "WARNING" not in proc.stdout, proc.stdout
    for node, other in (("n0", 1), ("n1", 0)):
        tier = LocalTier(root_of(tmp_path, node))
        # Step 2 committed while step 1's replication ran: it was replicated after it (its
        # ACKED waited for that), and the ring (keep_local=1) then let step 1's replica go.
        assert tier.replicas("r") == [(2, other)]
        assert tier.steps("r")[-1] == 2


def test_below_thread_multiple_the_transfers_run_in_turn_around_the_ring(tmp_path):
    proc = run_worker(FOUR_NODES, tmp_path, 1, 3, env={"THREAD_LEVEL": "serialized"})
    warned = [line for line in proc.stdout.splitlines() if line.startswith("WARNING")]
    assert warned and all("MPI_THREAD_MULTIPLE" in w for w in warned), warned
    check_replicas(tmp_path, ["n0", "n1", "n2", "n3"], [2, 3])


def test_a_step_held_only_as_a_replica_is_listed(tmp_path):
    run_worker(TWO_NODES, tmp_path, 1, 2)
    # Node n1's own copies are gone (a replacement node): its replicas remain listed.
    for step in (1, 2):
        shutil.rmtree(layout.step_dir(root_of(tmp_path, "n1"), "r", step))
    tier = LocalTier(root_of(tmp_path, "n1"))
    assert tier.steps("r") == [] and tier.replica_steps("r") == [1, 2]
    ls = subprocess.run([sys.executable, "-m", "tierpoint.cli", "ls", root_of(tmp_path, "n1")],
                        capture_output=True, text=True, timeout=60)
    assert [line.split()[2] for line in ls.stdout.splitlines()[1:]] == ["replica"] * 2
    assert [line.split()[-2] for line in ls.stdout.splitlines()[1:]] == ["n0"] * 2
    ck = tierpoint.Checkpointer(root_of(tmp_path, "n1"), run="r")
    assert ck.steps() == [1, 2] and ck.steps(replicas=False) == []
    ck.close()


@pytest.mark.parametrize("point, rank", [("replicate-send", 0), ("replicate-commit", 2)])
def test_a_replication_killed_leaves_no_replica_and_is_swept(tmp_path, point, rank):
    proc = run_worker(TWO_NODES, tmp_path, 1, 3, expect_ok=False,
                      env={"TIERPOINT_FAULT": f"{point}:rank={rank}:step=3:kind=kill"})
    assert proc.returncode != 0 and "DONE" not in proc.stdout, proc.stdout + proc.stderr
    # The save itself committed, but it is acknowledged only once its replica is: never here.
    assert "ACKED 2" in proc.stdout and "ACKED 3" not in proc.stdout, proc.stdout
    n1 = LocalTier(root_of(tmp_path, "n1"))
    assert 3 in n1.steps("r") and 3 not in n1.replica_steps("r")
    left = replica_dirs(n1.root)
    if point == "replicate-commit":  # every file written, the marker not
        assert layout.replica_dir_name(3, 0) in left
        assert layout.parse_replica_dir_name(left[-1]) == (3, 0)
        ls = subprocess.run([sys.executable, "-m", "tierpoint.cli", "ls", n1.root],
                            capture_output=True, text=True, timeout=60)
        assert "1 partial replica directories" in ls.stdout, ls.stdout
    # `tierpoint gc` sweeps what the replication left (here without a trainer).
    gc = subprocess.run([sys.executable, "-m", "tierpoint.cli", "gc", "--local", n1.root, "--run", "r"],
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, "TIERPOINT_NODE": "n1"})
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert layout.replica_dir_name(3, 0) not in replica_dirs(n1.root)
    assert not [n for n in os.listdir(layout.run_dir(n1.root, "r"))
                if layout.RETIRED_MARK in n]
    # The next run replicates its own steps.
    run_worker(TWO_NODES, tmp_path, 4, 4)
    assert n1.replica_steps("r") == [4] or 4 in n1.replica_steps("r")


@pytest.mark.parametrize("fault", ["replicate-commit:rank=2:step=2",  # the keeper's disk full
                                   "replicate-send:rank=0:step=2:at=3"])  # the sender's read
def test_a_failed_replication_warns_every_rank_and_the_next_save_replicates(tmp_path, fault):
    proc = run_worker(TWO_NODES, tmp_path, 1, 3, env={"TIERPOINT_FAULT": fault})
    assert proc.stdout.count("DONE") == 4 and proc.stdout.count("ACKED 2") == 4, proc.stdout
    warned = [line for line in proc.stdout.splitlines() if line.startswith("WARNING")]
    assert len(warned) == 4, warned  # once on every rank
    for line in warned:
        assert re.search(r"the replica of step 2 of node n0 \(domain 0\) on node n1 "
                         r"\(\S+step_00000002\.replica-d0\) failed: .*No space left", line), line
    n0, n1 = LocalTier(root_of(tmp_path, "n0")), LocalTier(root_of(tmp_path, "n1"))
    assert n1.replica_steps("r") == [3] and n0.replica_steps("r") == [2, 3]
    assert n1.steps("r") == n0.steps("r") == [2, 3]
    assert replica_dirs(n1.root) == [layout.replica_dir_name(3, 0)]  # nothing half-written


def test_one_node_warns_once_and_keeps_no_replicas(tmp_path):
    proc = run_worker(ONE_NODE, tmp_path, 1, 2)
    warned = [line for line in proc.stdout.splitlines() if line.startswith("WARNING")]
    assert len(warned) == 2 and all("every rank of this job runs on node 'n0'" in w and
                                    "no replicas" in w for w in warned), warned
    assert replica_dirs(root_of(tmp_path, "n0")) == []
    assert LocalTier(root_of(tmp_path, "n0")).steps("r") == [1, 2]
