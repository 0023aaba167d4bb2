"""The communicator's relay through domain leaders (runtime/mpicomm.py) on real MPI ranks,
and the combine emulation of the flat channels (runtime/channel.py) in one process."""
import re
import sys

import pytest

import tierpoint
from mpirun import WORKERS, run_ranks
from tierpoint.runtime.comm import Broadcast, Scatter, SingleComm

sys.path.insert(0, WORKERS)
from simcomm import Simulated  # noqa: E402


@pytest.mark.parametrize("ranks,domains", [
    (4, "0,0,1,1"), (4, "0,1,1,1"), (4, "0,1,2,3"), (4, "unset"), (5, "0,0,1,1,2"),
    (4, "0,1,0,1"), (5, "0,1,0,2,1")])  # the last two: domains of ranks not side by side
def test_collectives_through_the_leaders_are_exact(ranks, domains):
    proc = run_ranks(ranks, "comm_tree_worker.py", "main", domains, timeout=180)
    assert "TREE-OK 20" in proc.stdout, proc.stdout + proc.stderr


def _outcomes(proc) -> dict[int, str]:
    # Tolerates two ranks' lines glued together by the launcher's output forwarding.
    return {int(r): text.strip() for r, text in
            re.findall(r"OUTCOME (\d+) ((?:(?!OUTCOME \d+ ).)*)", proc.stdout)}


@pytest.mark.parametrize("domains,skipper,named", [
    ("0,0,1,1", 3, "ranks [3] did not reach the collective within 2 s"),
    ("0,0,1,1", 1, "ranks [1] did not reach the collective within 2 s"),
    ("0,0,1,1", 2, "rank 2 (leader of domain 1: ranks 2-3) did not reach the collective "
                   "within 2 s"),
    ("0,1,1,1", 1, "rank 1 (leader of domain 1: ranks 1-3) did not reach the collective "
                   "within 2 s"),
    ("0,0,1,1", 0, "rank 0 (the coordinator) did not answer within 2 s"),
])
def test_a_rank_that_skips_a_collective_is_named_on_every_other_rank(domains, skipper, named):
    proc = run_ranks(4, "comm_tree_worker.py", "skip", domains, skipper, timeout=120)
    outcomes = _outcomes(proc)
    assert sorted(outcomes) == [0, 1, 2, 3], proc.stdout + proc.stderr
    assert outcomes.pop(skipper) == "skipped"
    for rank, text in outcomes.items():
        m = re.fullmatch(r"(\d+\.\d)s after=(\S+) CollectiveTimeoutError: skipped: (.*)", text)
        assert m, (rank, text)
        seconds, after, message = float(m[1]), m[2], m[3]
        assert message.startswith(named), (rank, text)
        assert after == "refused", (rank, text)  # the channel is not used again
        # Within the levels' deadlines (2 s plus at most three slacks of 2 s), not the
        # test's timeout.
        assert seconds < 2 + 3 * 2 + 1.5, (rank, text)
    assert len({text.split(" CollectiveTimeoutError: ")[1] for text in outcomes.values()}) == 1


def test_point_to_point_waits_end_at_the_timeout_naming_the_peer():
    # Rank 1 waits on rank 2, which neither sends nor receives until rank 1 gave up.
    proc = run_ranks(4, "comm_tree_worker.py", "point", "0,0,1,1", 1, timeout=120)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("POINT ")), None)
    assert line, proc.stdout + proc.stderr
    recv, send, again = line[len("POINT "):].split(" | ")
    for verb, text, peer_words in (("recv", recv, "receiving from rank 2"),
                                   ("send", send, "sending to rank 2")):
        m = re.fullmatch(rf"{verb}=(\d+\.\d)s:(.*)", text)
        assert m, text
        assert 1.5 <= float(m[1]) < 5, text  # at the limit, not the test's timeout
        assert m[2].startswith(f"{peer_words}: nothing moved within 1.5 s"), text
    # After a timeout the channel cannot be trusted: refused at once.
    m = re.fullmatch(r"again=(\d+\.\d)s:(.*)", again)
    assert m and float(m[1]) < 0.5 and "an earlier point-to-point transfer timed out" in m[2], \
        again
    assert f"POINT-TAKEN {4 << 20}" in proc.stdout, proc.stdout + proc.stderr


# ---- one process ---------------------------------------------------------------------


def test_set_domains_validates_its_argument():
    comm = Simulated(4, 0, [None] * 4)
    assert comm.domains == (0, 0, 0, 0)
    comm.set_domains([0, 0, 1, 1])
    assert comm.domains == (0, 0, 1, 1) and comm._domain_groups() == [[0, 1], [2, 3]]
    comm.set_domains((0, 1, 0, 2))  # a domain need not be contiguous
    assert comm._domain_groups() == [[0, 2], [1], [3]]
    with pytest.raises(tierpoint.ConfigurationError, match="3 domains given for 4 ranks"):
        comm.set_domains((0, 0, 1))
    with pytest.raises(tierpoint.ConfigurationError, match="rank 0's domain is 1"):
        comm.set_domains((1, 0, 0, 0))
    with pytest.raises(tierpoint.ConfigurationError, match="rank 2's domain is 3.*next new one is 2"):
        comm.set_domains((0, 1, 3, 2))
    with pytest.raises(tierpoint.ConfigurationError, match="rank 3's domain is -1"):
        comm.set_domains((0, 0, 0, -1))
    with pytest.raises(tierpoint.ConfigurationError, match="integers"):
        comm.set_domains((0, 0, "1", 1))
    assert comm._domain_groups() == [[0, 2], [1], [3]]  # a refused tuple changes nothing
    single = SingleComm()
    single.set_domains((0,))
    with pytest.raises(tierpoint.ConfigurationError):
        single.set_domains((0, 0))


def test_combine_on_a_single_process():
    comm = SingleComm()
    seen = []

    def combine(ranks, values):
        seen.append((ranks, values))
        return {"n": len(values), "v": values[0], "t": (1, 2)}
    combined, reply = comm.collect({"x": 5}, what="c", timeout=1, combine=combine,
                                   answer=lambda cs: Broadcast({"got": cs}))
    assert seen == [([0], [{"x": 5}])]
    assert combined == [{"n": 1, "v": {"x": 5}, "t": [1, 2]}]  # as JSON carries it
    assert reply == {"got": combined}
    _, reply = comm.collect(3, what="c", timeout=1, combine=lambda rs, vs: vs[0] * 2,
                            answer=lambda cs: Scatter([cs[0] + 1]))
    assert reply == 7
    with pytest.raises(tierpoint.ShardingError, match="^c failed on rank 0: no$"):
        comm.collect(3, what="c", timeout=1, answer=Broadcast,
                     combine=lambda rs, vs: (_ for _ in ()).throw(tierpoint.ShardingError("no")))
    with pytest.raises(tierpoint.CheckpointError, match="2 answers for 1 domains"):
        comm.collect(3, what="c", timeout=1, combine=lambda rs, vs: 0,
                     answer=lambda cs: Scatter([0, 0]))
    with pytest.raises(tierpoint.CheckpointError, match="cannot carry a shared document"):
        comm.collect(3, what="c", timeout=1, combine=lambda rs, vs: {},
                     answer=lambda cs: Scatter(cs, shared=1, shared_to=[0]))
    # Without combine, as before.
    assert comm.collect(4, what="c", timeout=1, answer=Broadcast) == ([4], [4])


def _everyone(size):
    return [{"rank": r, "x": r * 10} for r in range(size)]


def test_the_combine_emulation_groups_by_domain_and_spreads_the_replies():
    domains = (0, 0, 1, 1, 2)
    everyone = _everyone(5)
    calls = []

    def combine(ranks, values):
        calls.append(ranks)
        assert [v["rank"] for v in values] == ranks
        return {"ranks": ranks, "sum": sum(v["x"] for v in values)}
    want = [{"ranks": [0, 1], "sum": 10}, {"ranks": [2, 3], "sum": 50},
            {"ranks": [4], "sum": 40}]
    for rank in range(5):
        comm = Simulated(5, rank, everyone, domains)
        calls.clear()
        combined, reply = comm.collect(everyone[rank], what="e", timeout=1, combine=combine,
                                       answer=lambda cs: Broadcast(cs))
        assert calls == [[0, 1], [2, 3], [4]]
        assert combined == (want if rank == 0 else None) and reply == want
        _, reply = comm.collect(everyone[rank], what="e", timeout=1, combine=combine,
                                answer=lambda cs: Scatter([f"domain {d}: {c['sum']}"
                                                           for d, c in enumerate(cs)]))
        assert reply == f"domain {domains[rank]}: {want[domains[rank]]['sum']}"


def test_the_combine_emulation_names_the_leader_whose_domain_failed():
    domains = (0, 0, 1, 1, 2)
    everyone = _everyone(5)

    def refuse(ranks, values):
        if ranks[0] in (2, 4):
            raise ValueError(f"domain of rank {ranks[0]} refused")
        return 0
    for rank in range(5):
        comm = Simulated(5, rank, everyone, domains)
        with pytest.raises(tierpoint.RankFailedError) as e:
            comm.collect(everyone[rank], what="e", timeout=1, combine=refuse, answer=Broadcast)
        assert str(e.value) == ("e failed on rank 2: ValueError: domain of rank 2 refused "
                                "(ranks 4 failed too)")



def test_condensed_outcomes_expand_to_every_rank_in_rank_order():
    """What the leaders send for agree and decide (condense_outcomes) comes back on rank 0
    as every rank's value in rank order, for domains of ranks side by side or not; failures
    come back sorted by rank, whichever domains reported them."""
    from tierpoint.runtime.channel import SingleComm, condense_outcomes
    comm = SingleComm()
    comm.size = 5
    for domains in [(0, 0, 1, 1, 2), (0, 1, 0, 2, 1)]:
        comm.set_domains(domains)
        groups = comm._domain_groups()
        ok = [condense_outcomes(g, [{"ok": True, "value": {"r": r}} for r in g]) for g in groups]
        assert comm.expand_outcomes(ok) == ([], [{"r": r} for r in range(5)])
        none = [condense_outcomes(g, [{"ok": True, "value": None} for _ in g]) for g in groups]
        assert none[0] == {"none": len(groups[0])}
        assert comm.expand_outcomes(none) == ([], [None] * 5)
        mixed = [none[0], *ok[1:]]
        assert comm.expand_outcomes(mixed)[1] == [
            None if r in groups[0] else {"r": r} for r in range(5)]
        bad = [condense_outcomes(g, [{"ok": r != 4 and r != 1, "value": None, "error": f"e{r}"}
                                     for r in g]) for g in groups]
        assert comm.expand_outcomes(bad) == ([(1, "e1"), (4, "e4")], None)
