"""Peer restore: a restart on another number of ranks, or another sharding, on the same
nodes, restores the newest committed local step by receiving the chunks other nodes hold
over the communicator (restore/peers.py, exchange.py, peerread.py), with no capacity tier at
all; bit-exact (tests/workers/peer_worker.py checks every value), and no rank opens or lists
another node's directory."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from mpirun import WORKERS, run_ranks

from tierpoint.tiers.local import LocalTier
from tierpoint.restore.peers import message_groups, meeting_order, pair_round, peer_steps


def nodes(ranks: int, node_count: int) -> list[tuple[int, dict]]:
    """``ranks`` ranks over ``node_count`` nodes n0.., in launch order (as even as can be)."""
    per = [ranks // node_count + (1 if i < ranks % node_count else 0)
           for i in range(node_count)]
    return [(c, {"TIERPOINT_NODE": f"n{i}"}) for i, c in enumerate(per) if c]


def lines(out: str, word: str) -> list[str]:
    return re.findall(rf"^{word} (.*)$", out, re.M)


CASES = {  # saved on 4 ranks as N nodes -> restored on (ranks, nodes), layout
    "2 nodes, 4->3 ranks": (2, (3, 2), "rows"),
    "2 nodes, 4->2 ranks": (2, (2, 2), "rows"),
    "2 nodes, 4->3 ranks onto columns": (2, (3, 2), "cols"),
    "2 nodes, 4->4 ranks on a superset of 4 nodes": (2, (4, 4), "rows"),
    "2 nodes, 4->6 ranks on 3 nodes, one new (manifest passed on)": (2, (6, 3), "cols"),
    "4 nodes, 4->4 ranks onto columns": (4, (4, 4), "cols"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_restart_on_the_same_nodes_restores_the_newest_local_step_from_peers(tmp_path, case):
    saved_nodes, (ranks, node_count), layout = CASES[case]
    root = str(tmp_path)
    run_ranks(nodes(4, saved_nodes), "peer_worker.py", root, "save", 3)
    proc = run_ranks(nodes(ranks, node_count), "peer_worker.py", root, "restore", 4, layout)
    assert lines(proc.stdout, "RESTORED") == ["3"] * ranks, proc.stdout + proc.stderr
    routes = [json.loads(r) for r in lines(proc.stdout, "ROUTES")]
    assert len(routes) == ranks and all(r is not None for r in routes), proc.stdout
    # Some chunks came over the communicator, and every byte received was served.
    assert sum(r["peers"] for r in routes) > 0, routes
    assert sum(r["received_bytes"] for r in routes) == sum(r["served_bytes"] for r in routes)
    assert sum(r["received_bytes"] for r in routes) > 0, routes
    assert all(r["capacity"] == 0 for r in routes), routes
    assert lines(proc.stdout, "FOREIGN") == ["[]"] * ranks, proc.stdout


def gloo_job(root: str, node_of_rank: list[str], *args) -> list[str]:
    """The peer worker as a torch.distributed job over gloo (env://), one process per rank,
    each on the node named; returns each rank's output."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA", "MPI"))}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PEER_GLOO="1",
               WORLD_SIZE=str(len(node_of_rank)), PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([sys.executable, os.path.join(WORKERS, "peer_worker.py"), root,
                               *map(str, args)],
                              env={**env, "RANK": str(r), "TIERPOINT_NODE": node},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r, node in enumerate(node_of_rank)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outs)
    return outs


def test_peer_restore_over_torch_distributed_gloo(tmp_path):
    """The same exchange over a gloo group: 4 ranks as 2 nodes saved, 3 restore onto
    columns (the flags' all-to-all goes through rank 0 there)."""
    root = str(tmp_path)
    gloo_job(root, ["n0", "n0", "n1", "n1"], "save", 3)
    outs = gloo_job(root, ["n0", "n0", "n1"], "restore", 4, "cols")
    assert [lines(o, "RESTORED") for o in outs] == [["3"]] * 3, outs
    routes = [json.loads(lines(o, "ROUTES")[0]) for o in outs]
    assert sum(r["peers"] for r in routes) > 0 and all(r["capacity"] == 0 for r in routes)
    assert [lines(o, "FOREIGN") for o in outs] == [["[]"]] * 3, outs


def replica_holder(root: str, node_names, domain: int, step: int) -> str:
    """The node whose local tier holds a committed replica of saved ``domain``'s copy of
    ``step`` (read here by the test, through the tier's own API)."""
    for node in node_names:
        tier = LocalTier(os.path.join(root, "local", node))
        if any(domain in c.held_domains() for c in tier.replica_copies("p", step)):
            return node
    raise AssertionError(f"no node holds a replica of domain {domain} step {step}")


REPLICAS = {"PEER_REPLICAS": "1", "PEER_POOLS": "1"}


@pytest.mark.parametrize("saved_nodes", [2, 4])
def test_a_lost_node_comes_back_from_its_partner_replica(tmp_path, saved_nodes):
    """Kill nothing, lose node n1 (its tier deleted), restart on a replacement node n9:
    the newest step (3, not drained) comes back bit-exactly, n1's chunks from the replica
    its partner holds, with a warning that names n1."""
    root = str(tmp_path)
    run_ranks(nodes(4, saved_nodes), "peer_worker.py", root, "save", 3, env=REPLICAS)
    shutil.rmtree(os.path.join(root, "local", "n1"))
    groups = [(c, {"TIERPOINT_NODE": "n9" if e["TIERPOINT_NODE"] == "n1"
                   else e["TIERPOINT_NODE"]}) for c, e in nodes(4, saved_nodes)]
    proc = run_ranks(groups, "peer_worker.py", root, "restore", 4, "rows", env=REPLICAS)
    assert lines(proc.stdout, "RESTORED") == ["3"] * 4, proc.stdout + proc.stderr
    assert "n1" in proc.stderr and "not in this job" in proc.stderr, proc.stderr
    assert lines(proc.stdout, "FOREIGN") == ["[]"] * 4, proc.stdout


def test_a_lost_node_and_its_partner_fall_back_to_the_newest_drained_step(tmp_path):
    """4 ranks as 4 nodes with replicas; lose n1 and the node holding n1's replica: step 3
    is not whole on any set of surviving nodes, so step 2 (drained) is restored, with a
    warning naming both lost nodes."""
    root = str(tmp_path)
    run_ranks(nodes(4, 4), "peer_worker.py", root, "save", 3, env=REPLICAS)
    partner = replica_holder(root, ["n0", "n2", "n3"], 1, 3)
    for node in ("n1", partner):
        shutil.rmtree(os.path.join(root, "local", node))
    renamed = {"n1": "n8", partner: "n9"}
    groups = [(c, {"TIERPOINT_NODE": renamed.get(e["TIERPOINT_NODE"], e["TIERPOINT_NODE"])})
              for c, e in nodes(4, 4)]
    proc = run_ranks(groups, "peer_worker.py", root, "restore", 4, "rows", env=REPLICAS)
    assert lines(proc.stdout, "RESTORED") == ["2"] * 4, proc.stdout + proc.stderr
    assert "restoring step 2" in proc.stderr, proc.stderr
    assert "n1" in proc.stderr and partner in proc.stderr, proc.stderr


def test_a_step_no_node_holds_whole_is_not_chosen(tmp_path):
    """4 ranks as 4 nodes saved; a restart on 2 ranks on nodes n0 and n1 lacks the chunks
    of n2 and n3: no step is restorable (never a mix), with an error that says so."""
    root = str(tmp_path)
    run_ranks(nodes(4, 4), "peer_worker.py", root, "save", 2)
    proc = run_ranks(nodes(2, 2), "peer_worker.py", root, "restore", 3, "rows",
                     expect_ok=False)
    assert proc.returncode != 0
    assert "RESTORED" not in proc.stdout
    assert "CheckpointNotFoundError" in proc.stderr, proc.stderr
    assert "step 2 is not restorable: the chunks of its saved domain(s) [2, 3] are on no " \
        "node of this job (node(s) n2, n3 of the saving job are not in this job" in \
        proc.stderr, proc.stderr


def test_pair_rounds_meet_every_pair_once_and_each_rank_once_per_round():
    for size in range(2, 12):
        seen = {}
        for a in range(size):
            for b in range(a + 1, size):
                seen.setdefault(pair_round(a, b, size), []).append((a, b))
        assert sum(len(p) for p in seen.values()) == size * (size - 1) // 2
        for pairs in seen.values():
            ranks = [r for p in pairs for r in p]
            assert len(ranks) == len(set(ranks)), (size, pairs)
        assert meeting_order(0, [3, 1, 0], 5) == sorted(
            [1, 3], key=lambda p: pair_round(0, p, 5))


def test_peer_steps_need_every_saved_domain_somewhere():
    reports = [{"5": [[0], 2, []], "4": [[0], 2, []]}, None, {"5": [[1], 2, []]}]
    assert peer_steps(reports) == {5}
    assert message_groups([3, 3, 3, 10, 1], 6) == [range(0, 2), range(2, 3), range(3, 4),
                                                   range(4, 5)]
