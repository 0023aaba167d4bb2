"""The collectives of MPIComm relayed through domain leaders, checked on real MPI ranks.

Usage: comm_tree_worker.py main <domains>        every case below; prints TREE-OK <cases>
       comm_tree_worker.py skip <domains> <rank>  <rank> skips one collective; every rank
                                                  prints OUTCOME <rank> <what it saw>
       comm_tree_worker.py point <domains> <rank> point-to-point waits of <rank> time out

``<domains>`` is ``0,0,1,1`` (rank r's domain) or ``unset`` (set_domains never called: one
domain of every rank). Every value encodes the rank (and the round) that sent it, so that a
value placed at the wrong rank, or taken from another collective, is caught.
"""
import json
import os
import sys
import time

from mpi4py import MPI

import tierpoint
from tierpoint.runtime.comm import Broadcast, MPIComm, Scatter

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402
from simcomm import Simulated  # noqa: E402

WORLD = MPI.COMM_WORLD
RANK, SIZE = WORLD.Get_rank(), WORLD.Get_size()
MODE, SPEC = sys.argv[1], sys.argv[2]
DOMAINS = (0,) * SIZE if SPEC == "unset" else tuple(int(d) for d in SPEC.split(","))
assert len(DOMAINS) == SIZE, (DOMAINS, SIZE)
GROUPS = [[r for r in range(SIZE) if DOMAINS[r] == d] for d in range(max(DOMAINS) + 1)]
LEADERS = [g[0] for g in GROUPS]
MY_GROUP = GROUPS[DOMAINS[RANK]]
T = 30.0  # the main cases' timeout: never reached unless something hangs
problems = []


def say(line: str) -> None:
    """One line in one write: mpiexec forwards each rank's output as it reads it, so a line
    printed in two writes (text, then newline) can end up glued to another rank's."""
    sys.stdout.flush()
    os.write(1, (line + "\n").encode())


def channel() -> MPIComm:
    comm = MPIComm(WORLD)
    if SPEC != "unset":
        comm.set_domains(DOMAINS)
    return comm


def value(r, i=0):
    """Rank r's value in round i: distinct per rank and round, of a length that depends on r."""
    return {"rank": r, "round": i, "x": r * r + 7 * i, "s": "r" * (r + 1), "i": [r, i]}


def check(case, got, want):
    if got != want:
        problems.append(f"{case}: rank {RANK} got {got!r}, expected {want!r}")


def same_everywhere(case, text):
    texts = WORLD.allgather(text)
    if len(set(texts)) != 1:
        problems.append(f"{case}: ranks saw different outcomes: {texts}")


def outcome_of(fn) -> str:
    try:
        fn()
    except tierpoint.CheckpointError as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def expect_error(case, fn, cls, needle, emulated=None):
    """``fn`` raises ``cls`` with ``needle`` on every rank, the same text everywhere (and the
    same as ``emulated`` raises: the same collective on a flat channel)."""
    text = outcome_of(fn)
    if not text.startswith(cls.__name__ + ":") or needle not in text:
        problems.append(f"{case}: rank {RANK} raised {text} (expected {cls.__name__} "
                        f"with {needle!r})")
    if emulated is not None:
        check(f"{case} (as emulated)", text, outcome_of(emulated))
    same_everywhere(case, text)


def simulated(everyone):
    """This rank's view of a flat channel (combine emulated) whose ranks sent ``everyone``."""
    return Simulated(SIZE, RANK, everyone, None if SPEC == "unset" else DOMAINS)


def main():
    comm = channel()
    cases = 0

    # 1. Flat collect: every rank's value at rank 0, in rank order; a Broadcast reply.
    values, reply = comm.collect(value(RANK), what="flat", timeout=T,
                                 answer=lambda vs: Broadcast({"n": len(vs),
                                                              "x": [v["x"] for v in vs]}))
    check("flat values", values, [value(r) for r in range(SIZE)] if RANK == 0 else None)
    check("flat broadcast", reply, {"n": SIZE, "x": [value(r)["x"] for r in range(SIZE)]})
    cases += 1

    # 2. A Scatter: each rank its own reply, made from its own value.
    _, reply = comm.collect(value(RANK, 1), what="scatter", timeout=T, answer=lambda vs: Scatter(
        [{"to": r, "echo": v["s"], "round": v["round"]} for r, v in enumerate(vs)]))
    check("scatter", reply, {"to": RANK, "echo": value(RANK)["s"], "round": 1})
    cases += 1

    # 3. A Scatter's shared document to the odd ranks: a non-leader among them wherever the
    #    domains have one, a leader (rank 0 at least) left out.
    doc = {"header": list(range(50)), "pad": "h" * 3000}
    odd = [r for r in range(SIZE) if r % 2]
    _, reply = comm.collect(None, what="shared", timeout=T, answer=lambda vs: Scatter(
        [{"to": r} for r in range(SIZE)], shared=doc, shared_key="hdr", shared_to=odd))
    check("shared", reply, {"to": RANK, "hdr": doc} if RANK % 2 else {"to": RANK})
    cases += 1

    # 4. allgather, bcast, scatter.
    check("allgather", comm.allgather_json(value(RANK, 2), what="ag", timeout=T),
          [value(r, 2) for r in range(SIZE)])
    check("bcast", comm.bcast_json(value(RANK, 3), what="bc", timeout=T), value(0, 3))
    check("scatter_json", comm.scatter_json([value(r, 4) for r in range(SIZE)] if RANK == 0
                                            else "ignored", what="sc", timeout=T), value(RANK, 4))
    cases += 3

    # 5. agree: success (every rank's value, everywhere or at rank 0), then a failure on a
    #    non-leader (on the last rank where there is none): the same error everywhere.
    check("agree all", comm.agree(None, what="ok", timeout=T, value=value(RANK, 5)),
          [value(r, 5) for r in range(SIZE)])
    check("agree root", comm.agree(None, what="ok", timeout=T, value=value(RANK, 6),
                                   collect="root"),
          [value(r, 6) for r in range(SIZE)] if RANK == 0 else None)
    members = [r for r in range(SIZE) if r not in LEADERS]
    bad = members[-1] if members else SIZE - 1
    err = tierpoint.ShardingError(f"rank {RANK}'s shard is bad") if RANK == bad else None
    expect_error("agree failure", lambda: comm.agree(err, what="declare", timeout=T),
                 tierpoint.ShardingError, f"declare failed on rank {bad}: rank {bad}'s shard is bad")
    cases += 3

    # 6. combine: each leader reduces its own domain (it says so: "by"), rank 0 answers the
    #    combined values, one per domain.
    def combine(ranks, vs):
        if ranks != MY_GROUP or [v["rank"] for v in vs] != ranks:
            problems.append(f"combine on rank {RANK}: ranks {ranks}, values {vs}")
        return {"by": RANK, "ranks": ranks, "sum": sum(v["x"] for v in vs),
                "s": "".join(v["s"] for v in vs)}
    want = [{"by": g[0], "ranks": g, "sum": sum(value(r, 7)["x"] for r in g),
             "s": "".join(value(r)["s"] for r in g)} for g in GROUPS]
    combined, reply = comm.collect(value(RANK, 7), what="combine", timeout=T,
                                   answer=lambda cs: Broadcast({"all": cs}), combine=combine)
    check("combine values", combined, want if RANK == 0 else None)
    check("combine broadcast", reply, {"all": want})
    _, reply = comm.collect(value(RANK, 7), what="combine", timeout=T, combine=combine,
                            answer=lambda cs: Scatter([{"d": d, "sum": c["sum"]}
                                                       for d, c in enumerate(cs)]))
    check("combine scatter", reply, {"d": DOMAINS[RANK], "sum": want[DOMAINS[RANK]]["sum"]})

    # ... and the same results as the flat channels' emulation of combine.
    def plain(ranks, vs):
        return {"ranks": ranks, "x": [v["x"] for v in vs], "t": (ranks[0], "tuple")}
    for answer in (lambda cs: Broadcast(cs), lambda cs: Scatter([[d, c] for d, c in
                                                                 enumerate(cs)])):
        got = comm.collect(value(RANK, 8), what="vs", timeout=T, answer=answer, combine=plain)
        emulated = simulated([value(r, 8) for r in range(SIZE)]).collect(
            value(RANK, 8), what="vs", timeout=T, answer=answer, combine=plain)
        check("combine as emulated", got, emulated)
    cases += 3

    # 7. An exception in combine on domain 1's leader (domain 0's without domain 1), in
    #    rank 0's answer, and a shared document in combine mode: the same error everywhere.
    culprit = LEADERS[1] if len(LEADERS) > 1 else 0

    def refuse(ranks, vs):
        if ranks[0] == culprit:
            raise tierpoint.ShardingError(f"combine refused on rank {ranks[0]}")
        return len(vs)
    sim = simulated([value(r) for r in range(SIZE)])
    expect_error("combine raises", lambda: comm.collect(
        value(RANK), what="combining", timeout=T, combine=refuse, answer=Broadcast),
        tierpoint.ShardingError, f"combining failed on rank {culprit}: combine refused on "
        f"rank {culprit}", lambda: sim.collect(value(RANK), what="combining", timeout=T,
                                                combine=refuse, answer=Broadcast))
    expect_error("answer raises", lambda: comm.collect(
        value(RANK), what="answering", timeout=T, combine=lambda rs, vs: len(vs),
        answer=lambda cs: Broadcast(1 / 0)), tierpoint.RankFailedError,
        "answering failed on rank 0: ZeroDivisionError")
    sim = simulated([None] * SIZE)
    expect_error("combine shared", lambda: comm.collect(
        None, what="sharing", timeout=T, combine=lambda rs, vs: 0,
        answer=lambda cs: Scatter(cs, shared=1, shared_to=[0])), tierpoint.CheckpointError,
        "cannot carry a shared document", lambda: sim.collect(
            None, what="sharing", timeout=T, combine=lambda rs, vs: 0,
            answer=lambda cs: Scatter(cs, shared=1, shared_to=[0])))
    cases += 1
    expect_error("combine scatter length", lambda: comm.collect(
        None, what="counting", timeout=T, combine=lambda rs, vs: 0,
        answer=lambda cs: Scatter(cs + [0])), tierpoint.CheckpointError,
        f"{len(GROUPS) + 1} answers for {len(GROUPS)} domains")
    cases += 3

    # 8. Many collectives in a row, of every kind: a message taken from the wrong collective
    #    shows as a wrong round.
    for i in range(10, 40):
        kind = i % 3
        if kind == 0:
            vals, reply = comm.collect(value(RANK, i), what=f"row {i}", timeout=T,
                                       answer=lambda vs: Broadcast([v["round"] for v in vs]))
            check(f"row {i}", reply, [i] * SIZE)
        elif kind == 1:
            vals, reply = comm.collect(value(RANK, i), what=f"row {i}", timeout=T,
                                       answer=lambda vs: Scatter([v["i"] for v in vs]))
            check(f"row {i}", reply, [RANK, i])
        else:
            vals, reply = comm.collect(value(RANK, i), what=f"row {i}", timeout=T,
                                       combine=lambda rs, vs: [v["i"] for v in vs],
                                       answer=lambda cs: Scatter(cs))
            check(f"row {i}", reply, [[r, i] for r in MY_GROUP])
    cases += 1

    # 9. Traffic: a non-leader sends its message and receives its reply, nothing else; a
    #    leader hears from its members and rank 0; rank 0 from its own domain's other members
    #    and one packet per other leader, holding its members' messages as they were sent.
    before = dict(comm.traffic)
    answer_value = {"verdict": "x" * 77}
    comm.collect(value(RANK, 50), what="traffic", timeout=T,
                 answer=lambda vs: Broadcast(answer_value))
    delta = {k: comm.traffic[k] - before[k] for k in ("sent", "received", "messages_received",
                                                      "collectives")}
    msg = {r: len(json.dumps(value(r, 50)).encode()) for r in range(SIZE)}
    reply_len = len(json.dumps({"v": answer_value}).encode())
    packet = {d: 2 + sum(msg[r] for r in g) + len(g) - 1 for d, g in enumerate(GROUPS)}
    if RANK == 0:
        want = {"sent": reply_len * (len(GROUPS) - 1 + len(GROUPS[0]) - 1),
                "received": sum(msg[r] for r in GROUPS[0][1:]) +
                sum(packet[d] for d in range(1, len(GROUPS))),
                "messages_received": len(GROUPS) - 1 + len(GROUPS[0]) - 1, "collectives": 1}
    elif RANK in LEADERS:
        d = DOMAINS[RANK]
        want = {"sent": packet[d] + reply_len * (len(MY_GROUP) - 1),
                "received": sum(msg[r] for r in MY_GROUP[1:]) + reply_len,
                "messages_received": len(MY_GROUP), "collectives": 1}
    else:
        want = {"sent": msg[RANK], "received": reply_len, "messages_received": 1,
                "collectives": 1}
    check("traffic", delta, want)
    cases += 1

    # 10. Rank 0 parses each distinct packet once: every rank sends the same bytes here, so
    #     rank 0 parses its own domain's message once, its own domain's condensed outcome
    #     once (agree condenses on the leaders; rank 0's goes through JSON as a leader's
    #     would), the other domains' packets once per distinct domain size, and its reply.
    calls = [0]
    real = json.loads

    def counting(b, *a, **k):
        calls[0] += 1
        return real(b, *a, **k)
    json.loads = counting  # every module's json.loads (channel.py's and mpicomm.py's)
    try:
        comm.agree(None, what="same", timeout=T)
    finally:
        json.loads = real
    if RANK == 0:
        distinct = len({len(g) for g in GROUPS[1:]})
        check("parses", calls[0], 1 + 1 + distinct + 1)
    cases += 1

    # 11. A duplicate keeps the domains; set_domains refuses a wrong tuple.
    dup = comm.duplicate()
    check("duplicate domains", dup.domains, DOMAINS)
    check("duplicate collect", dup.allgather_json(RANK, what="dup", timeout=T),
          list(range(SIZE)))
    try:
        dup.set_domains((0,) * (SIZE + 1))
        problems.append(f"rank {RANK}: set_domains took a tuple of the wrong length")
    except tierpoint.ConfigurationError:
        pass
    cases += 1
    P.report(problems, "TREE", str(cases))


def skip(skipper: int):
    """Rank ``skipper`` does not call one collective (it goes straight to its exit); every
    other rank must raise a CollectiveTimeoutError naming it, and refuse the channel after."""
    comm = channel()
    check("warm-up", comm.allgather_json(RANK, what="warm-up", timeout=T), list(range(SIZE)))
    if RANK == skipper:
        say(f"OUTCOME {RANK} skipped")
        return
    t = time.monotonic()
    try:
        comm.collect(value(RANK), what="skipped", timeout=2, answer=Broadcast)
        outcome = "no error"
    except tierpoint.CollectiveTimeoutError as e:
        outcome = f"CollectiveTimeoutError: {e}"
    except Exception as e:  # noqa: BLE001 - reported, then asserted by the test
        outcome = f"{type(e).__name__}: {e}"
    seconds = time.monotonic() - t
    try:
        comm.collect(value(RANK), what="after", timeout=2, answer=Broadcast)
        after = "no error"
    except tierpoint.CollectiveTimeoutError as e:
        after = "refused" if "an earlier collective timed out" in str(e) else str(e)
    say(f"OUTCOME {RANK} {seconds:.1f}s after={after} {outcome}")


def point(waiter: int):
    """Point-to-point waits end at the channel's ``point_timeout``: rank ``waiter`` receives
    from the next rank, which sends nothing (on one channel); then, on another, sends it
    4 MiB (past the eager limit, so the send waits for a matching receive) that it does not
    take, and tries once more. Each wait must raise a CollectiveTimeoutError naming the peer
    at the limit, and a channel that timed out refuses further transfers at once. The
    silent rank takes the message at the end, so no send is left pending at MPI_Finalize."""
    receiving, sending = channel(), channel()
    receiving.point_timeout = sending.point_timeout = 1.5
    peer = (waiter + 1) % SIZE
    check("warm-up", receiving.allgather_json(RANK, what="warm-up", timeout=T),
          list(range(SIZE)))
    if RANK == waiter:
        outcomes = []
        for verb, act in (("recv", lambda: receiving.recv_bytes(peer)),
                          ("send", lambda: sending.send_bytes(peer, b"x" * (4 << 20))),
                          ("again", lambda: sending.recv_bytes(peer))):
            t = time.monotonic()
            try:
                act()
                outcomes.append(f"{verb}=no-error")
            except tierpoint.CollectiveTimeoutError as e:
                outcomes.append(f"{verb}={time.monotonic() - t:.1f}s:{e}")
        say("POINT " + " | ".join(outcomes))
    WORLD.Barrier()  # the silent rank waits here while the waiter times out
    if RANK == peer:
        got = sending.recv_bytes(waiter)  # the abandoned 4 MiB send completes
        say(f"POINT-TAKEN {len(got)}")
    WORLD.Barrier()


if MODE == "main":
    main()
elif MODE == "point":
    point(int(sys.argv[3]))
else:
    skip(int(sys.argv[3]))
