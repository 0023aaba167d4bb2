"""Collectives over MPI (mpi4py): the contract of channel.py, relayed through domain leaders.

Every collective is a gather to rank 0 and a reply, in two levels: a rank that does not lead
its domain (``set_domains``; default: one domain of every rank, which is the flat relay)
sends its message to its domain's leader and receives its reply from it; a leader gathers
its members' messages and sends rank 0 one packet holding them as they came (their JSON
bytes joined into one JSON list: never parsed or re-encoded there), then forwards each member
its reply from the one bundle rank 0 sends it. Rank 0 leads domain 0 itself (its members talk
to it directly) and receives one packet per other leader; it parses each distinct packet once
(in steady phases nearly every domain sends the same bytes), answers, and sends each leader one
bundle: a Broadcast's reply bytes (encoded once, the same buffer for every leader), or a
Scatter's replies for that domain's ranks framed as ``[lengths, shared ranks]\\n`` followed by
the replies, with the Scatter's shared document as a second message to a leader whose domain
holds recipients (forwarded by the leader the same way). With ``combine``, each leader
reduces its members' values and sends rank 0 the combined value; rank 0 answers one value
per domain, which the leader forwards to every member as it came.

Costs per collective: a non-leader sends its value and receives its reply (O(value + reply)
bytes, one message each way); a leader O(its domain) bytes in O(its domain) messages; rank 0
O(ranks) bytes (O(domains) with ``combine``) in O(domains + its domain's ranks) messages, and
Python work per rank only to place each parsed value and pick each reply.

Timeouts: a leader waits ``timeout`` for its members and then tells rank 0 which are late;
rank 0 waits for its own members as long, and for the leaders ``slack`` longer (so that a
leader's report, not the absence of one, names a late member); a leader waits for rank 0's
bundle another ``slack`` longer, a member for its leader's reply one more. Whoever gives up
first names the late ranks, and every rank that arrived raises that same
CollectiveTimeoutError (rank 0 tells the members of a leader that never came directly). After
a timeout the channel refuses further collectives: a late message could still arrive and be
taken for a later collective's.
"""
from __future__ import annotations

import itertools
import json
import time

from ..errors import CollectiveTimeoutError
from .channel import (Comm, _Backoff, _parse_all, _Replies, describe_error, failed_reply,
                      point_timed_out, ranks_text)

_TAG_UP, _TAG_DOWN, _TAG_P2P = 0x7E01, 0x7E02, 0x7E03


def _slack(timeout: float) -> float:
    """How much longer each level waits than the one whose verdict it expects."""
    return min(timeout, 5.0)


class MPIComm(Comm):
    """Over a private duplicate of an mpi4py communicator (the trainer's own messages are
    never matched by ours)."""

    kind = "mpi"

    def __init__(self, comm, domains=None):
        super().__init__()
        self._comm = comm.Dup()
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        self._broken: str | None = None  # set once a collective timed out
        self._abandoned: list = []  # sends that timed out: (request, buffer), kept alive
        if domains is not None:
            self.set_domains(domains)

    # ---- the relay -------------------------------------------------------------------

    def collect(self, value, *, what: str, timeout: float, answer, combine=None):
        if self._broken:
            raise CollectiveTimeoutError(f"{what}: {self._broken}")
        start = time.monotonic()
        data = json.dumps(value).encode("utf-8")
        self.traffic["collectives"] += 1
        group = self._domain_groups()[self.domains[self.rank]]  # this rank's domain
        if self.rank == 0:
            cpu = time.process_time()
            try:
                return self._root(data, what, timeout, start, answer, combine)
            finally:
                self.traffic["root_cpu"] += time.process_time() - cpu
        if group[0] == self.rank:
            return None, self._lead(data, what, timeout, start, group, combine)
        return None, self._member(data, what, timeout, start, group[0])

    def _member(self, data: bytes, what: str, timeout: float, start: float, leader: int):
        """A non-leader: its message to its leader, its reply (and maybe the shared
        document) back; a verdict may come from rank 0 instead when its leader never came."""
        from mpi4py import MPI
        req = self._comm.Isend([data, MPI.BYTE], dest=leader, tag=_TAG_UP)
        self.traffic["sent"] += len(data)
        deadline = start + timeout + 3 * _slack(timeout)
        status = MPI.Status()
        backoff = _Backoff()
        while not self._comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_DOWN, status=status):
            if time.monotonic() > deadline:
                who = self._leader_text(leader)
                self._broken = (f"an earlier collective timed out ({who} did not answer); "
                                "this channel cannot be trusted any more: end the job")
                raise CollectiveTimeoutError(f"{what}: {who} did not answer within "
                                             f"{timeout:.0f} s")
            backoff.wait()
        source = status.Get_source()
        buf = self._receive(source, status)
        reply = json.loads(buf)
        if "timeout" in reply:  # rank 0 or the leader gave up waiting for others
            self._broken = f"an earlier collective timed out: {reply['timeout']}"
            raise CollectiveTimeoutError(f"{what}: {reply['timeout']}")
        req.Wait()  # the reply came from the leader that took it
        shared = None
        if "s" in reply:  # the shared document follows (sent right after the reply)
            shared = self._receive(source)
        return self._unwrap(reply, what, shared)

    def _lead(self, data: bytes, what: str, timeout: float, start: float, group: list[int],
              combine):
        """A domain's leader (not rank 0): gathers its members, sends rank 0 one packet,
        forwards rank 0's bundle."""
        from mpi4py import MPI
        members = group[1:]
        got, late = self._gather(set(members), start + timeout)
        if late:
            packet = json.dumps({"late": sorted(late)}).encode("utf-8")
        elif combine is None:
            packet = b"[" + b",".join([data, *(got[r] for r in members)]) + b"]"
        else:
            try:
                values = _parse_all([data, *(got[r] for r in members)])
                packet = json.dumps({"c": combine(list(group), values)}).encode("utf-8")
            except Exception as e:  # noqa: BLE001 - every rank must learn it
                packet = failed_reply([(self.rank, describe_error(e))])
        up = self._comm.Isend([packet, MPI.BYTE], dest=0, tag=_TAG_UP)
        self.traffic["sent"] += len(packet)
        arrived = [r for r in members if r in got]
        status = MPI.Status()
        backoff = _Backoff()
        deadline = start + timeout + 2 * _slack(timeout)
        while not self._comm.Iprobe(source=0, tag=_TAG_DOWN, status=status):
            if time.monotonic() > deadline:
                late = f"rank 0 (the coordinator) did not answer within {timeout:.0f} s"
                self._give_up(late, arrived)
                raise CollectiveTimeoutError(f"{what}: {late}")
            backoff.wait()
        bundle = self._receive(0, status)
        up.Wait()
        sends = []
        if bundle[:1] == b"[":  # a Scatter's replies, one per rank of the domain
            cut = bundle.index(b"\n")
            lengths, shared_ranks = json.loads(bundle[:cut])
            shared_ranks = set(shared_ranks)
            shared = self._receive(0) if shared_ranks else None
            view, at, mine = memoryview(bundle), cut + 1, None
            for r, n in zip(group, lengths):
                part, at = view[at:at + n], at + n
                if r == self.rank:
                    mine = bytes(part)
                    continue
                sends.append(self._comm.Isend([part, MPI.BYTE], dest=r, tag=_TAG_DOWN))
                self.traffic["sent"] += n
                if r in shared_ranks:
                    # Same pair and tag: MPI delivers it after the reply, from one buffer.
                    sends.append(self._comm.Isend([shared, MPI.BYTE], dest=r, tag=_TAG_DOWN))
                    self.traffic["sent"] += len(shared)
            _wait_all(sends, time.monotonic() + timeout, what, timeout)
            return self._unwrap(json.loads(mine), what, shared)
        # One reply for every rank of the domain (a Broadcast, a domain's value, a verdict).
        for r in arrived:
            sends.append(self._comm.Isend([bundle, MPI.BYTE], dest=r, tag=_TAG_DOWN))
        self.traffic["sent"] += len(bundle) * len(arrived)
        reply = json.loads(bundle)
        if "timeout" in reply:
            self._broken = f"an earlier collective timed out: {reply['timeout']}"
            _wait_all(sends, time.monotonic() + 5.0, what, 5.0, quiet=True)
            raise CollectiveTimeoutError(f"{what}: {reply['timeout']}")
        _wait_all(sends, time.monotonic() + timeout, what, timeout)
        return self._unwrap(reply, what)

    def _root(self, data: bytes, what: str, timeout: float, start: float, answer, combine):
        """Rank 0: its own domain's members directly and one packet per other leader; the
        answer; one bundle per leader."""
        groups = self._domain_groups()
        own = groups[0]
        leaders = [g[0] for g in groups[1:]]
        got, late = self._gather(set(own[1:]), start + timeout, set(leaders),
                                 start + timeout + _slack(timeout))
        got[0] = data
        packets, reported = self._reported_late(got, leaders)
        late_members = sorted(late - set(leaders)) + reported
        missing = [d for d, g in enumerate(groups) if d and g[0] in late]
        if late_members or missing:
            parts = [f"ranks {sorted(late_members)}"] if late_members else []
            parts += [self._leader_text(groups[d][0]) for d in missing]
            text = (" and ".join(parts) + f" did not reach the collective within "
                    f"{timeout:.0f} s (they may have died or hung)")
            told = [r for r in got if r != 0] + [r for d in missing for r in groups[d]]
            self._give_up(text, told)
            raise CollectiveTimeoutError(f"{what}: {text}")
        result, replies = self._answer_packets(got, packets, answer, combine)
        self._send_replies(replies, groups, combine is not None, what, timeout)
        return result, self._unwrap(json.loads(replies.of(0)), what, replies.shared)

    @staticmethod
    def _reported_late(got: dict, leaders: list[int]) -> tuple[dict, list[int]]:
        """The distinct object packets parsed (combined values, late reports: distinct packet
        -> its JSON) and the members the leaders report late."""
        packets: dict[bytes, object] = {}
        late: list[int] = []
        for leader in leaders:
            packet = got.get(leader)
            if packet is not None and packet[:1] == b"{":
                parsed = packets.get(packet)
                if parsed is None:
                    parsed = packets[packet] = json.loads(packet)
                late.extend(parsed.get("late", ()))
        return packets, late

    def _answer_packets(self, got: dict, packets: dict, answer, combine):
        """Rank 0, once everything arrived (no MPI here: bench/scale.py runs it on simulated
        packets): every rank's value (or each domain's combined value) from its own members'
        messages and the leaders' packets (``got``: source -> bytes; ``packets``: the
        distinct packets parsed so far), and the encoded replies."""
        groups = self._domain_groups()
        own = groups[0]
        parsed_messages: dict[bytes, object] = {}
        if combine is None:
            parts = [_parse_all([got[r] for r in own], parsed_messages)]
            for g in groups[1:]:
                packet = got[g[0]]
                parsed = packets.get(packet)
                if parsed is None:
                    parsed = packets[packet] = json.loads(packet)
                parts.append(parsed)  # equal packets: the same list (values are only read)
            if self._in_rank_order():
                values = list(itertools.chain.from_iterable(parts))
            else:
                values = [None] * self.size
                for g, part in zip(groups, parts):
                    for r, v in zip(g, part):
                        values[r] = v
            replies = self._encode(answer, values, self.size)
            result = values
        else:
            failed, result = [], [None] * len(groups)
            try:
                mine = combine(list(own), _parse_all([got[r] for r in own], parsed_messages))
                result[0] = json.loads(json.dumps(mine))  # as a leader's would: JSON
            except Exception as e:  # noqa: BLE001 - every rank must learn it
                failed.append((0, describe_error(e)))
            for d, g in enumerate(groups[1:], 1):
                packet = got[g[0]]
                parsed = packets.get(packet)
                if parsed is None:
                    parsed = packets[packet] = json.loads(packet)
                if "errors" in parsed:
                    failed.extend(tuple(f) for f in parsed["errors"])
                else:
                    result[d] = parsed["c"]
            if failed:
                replies = _Replies(one=failed_reply(failed))
            else:
                replies = self._encode(answer, result, len(groups), combined=True)
        return result, replies

    def _send_replies(self, replies, groups, by_domain: bool, what: str, timeout: float):
        """Rank 0's replies: its own members their own, each other leader one bundle."""
        from mpi4py import MPI
        sends = []
        for dest, buf in self._bundles(replies, groups, by_domain):
            sends.append(self._comm.Isend([buf, MPI.BYTE], dest=dest, tag=_TAG_DOWN))
            self.traffic["sent"] += len(buf)
        _wait_all(sends, time.monotonic() + timeout, what, timeout)

    @staticmethod
    def _bundles(replies, groups, by_domain: bool) -> list[tuple[int, bytes]]:
        """Rank 0's messages, in sending order (no MPI here): its own members their own
        replies, each other leader one bundle (and the shared document after it)."""
        out: list[tuple[int, bytes]] = []
        shared, shared_to = replies.shared, replies.shared_to

        def send(buf, dest):
            out.append((dest, buf))
        for r in groups[0][1:]:
            send(replies.of(0 if by_domain else r), r)
            if r in shared_to:
                # Same pair and tag: MPI delivers it after the reply, from one buffer.
                send(shared, r)
        for d, g in enumerate(groups[1:], 1):
            if replies.one is not None or by_domain:
                send(replies.of(d), g[0])
                continue
            each = replies.each
            to = [r for r in g if r in shared_to] if shared_to else []
            head = json.dumps([[len(each[r]) for r in g], to]).encode("utf-8")
            send(b"".join([head, b"\n", *(each[r] for r in g)]), g[0])
            if to:
                send(shared, g[0])
        return out

    # ---- helpers -----------------------------------------------------------------------

    def _gather(self, members: set, deadline: float, leaders: set = frozenset(),
                leader_deadline: float = 0.0) -> tuple[dict, set]:
        """The TAG_UP messages of ``members`` (until ``deadline``) and of ``leaders`` (until
        ``leader_deadline``): (source -> bytes, the sources that did not come in time)."""
        from mpi4py import MPI
        pending_m, pending_l = set(members), set(leaders)
        got: dict[int, bytes] = {}
        status = MPI.Status()
        backoff = _Backoff()
        while pending_m or pending_l:
            if self._comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_UP, status=status):
                src = status.Get_source()
                got[src] = self._receive(src, status, tag=_TAG_UP)
                pending_m.discard(src)
                pending_l.discard(src)
                backoff.reset()
                continue
            now = time.monotonic()
            if now > deadline and not pending_l:
                break
            if pending_l and now > leader_deadline:
                break
            backoff.wait()
        return got, pending_m | pending_l

    def _receive(self, source: int, status=None, tag: int = _TAG_DOWN) -> bytes:
        """One message from ``source`` (probed already when ``status`` is given), counted."""
        from mpi4py import MPI
        if status is None:
            status = MPI.Status()
            self._comm.Probe(source=source, tag=tag, status=status)
        buf = bytearray(status.Get_count(MPI.BYTE))
        self._comm.Recv([buf, MPI.BYTE], source=source, tag=tag)
        self.traffic["received"] += len(buf)
        self.traffic["messages_received"] += 1
        return bytes(buf)

    def _leader_text(self, leader: int) -> str:
        if leader == 0:
            return "rank 0 (the coordinator)"
        d = self.domains[leader]
        ranks = self._domain_groups()[d]
        return (f"rank {leader} (leader of domain {d}: rank{'s' if len(ranks) > 1 else ''} "
                f"{ranks_text(ranks)})")

    def _give_up(self, late: str, told: list[int]) -> None:
        """After a timeout: tell the ranks that did arrive who is late (so they raise the
        same error), and refuse this channel from now on (a late rank's message could still
        arrive and be taken for a later collective's)."""
        from mpi4py import MPI
        self._broken = (f"an earlier collective timed out ({late}); this channel cannot be "
                        "trusted any more: end the job")
        verdict = json.dumps({"timeout": late}).encode("utf-8")
        reqs = [self._comm.Isend([verdict, MPI.BYTE], dest=r, tag=_TAG_DOWN) for r in told]
        _wait_all(reqs, time.monotonic() + 5.0, "", 5.0, quiet=True)

    # ---- the rest --------------------------------------------------------------------

    def duplicate(self) -> "MPIComm":
        dup = MPIComm(self._comm, domains=self._domains)
        dup.point_timeout = self.point_timeout
        return dup

    def allreduce_max(self, values: list[int], *, what: str, timeout: float) -> list[int]:
        """Channel.allreduce_max: MPI_Iallreduce, polled until ``timeout`` (``_poll``)."""
        import numpy as np
        from mpi4py import MPI
        if self._broken:
            raise CollectiveTimeoutError(f"{what}: {self._broken}")
        mine, out = np.asarray(values, dtype=np.int64), np.zeros(len(values), np.int64)
        self._poll(self._comm.Iallreduce(mine, out, op=MPI.MAX), what, timeout)
        return [int(v) for v in out]

    def alltoall_flags(self, flags: list[int], *, what: str, timeout: float) -> list[int]:
        """Channel.alltoall_flags: one MPI_Ialltoall of int32, polled until ``timeout``."""
        import numpy as np
        if self._broken:
            raise CollectiveTimeoutError(f"{what}: {self._broken}")
        mine, out = np.asarray(flags, dtype=np.int32), np.zeros(self.size, np.int32)
        self._poll(self._comm.Ialltoall(mine, out), what, timeout)
        return [int(v) for v in out]

    def _poll(self, request, what: str, timeout: float) -> None:
        """Wait for a nonblocking collective until ``timeout``; one that never completed
        leaves the channel broken (its request is still pending)."""
        start = time.monotonic()
        deadline = start + timeout
        while not request.Test():
            now = time.monotonic()
            # A nonblocking collective advances only inside MPI calls on every rank, so a
            # long pause between tests adds up over its rounds: test back to back, yielding
            # the core (for oversubscribed nodes), for the first 10 ms; then every 0.2 ms.
            if now - start < 0.01:
                time.sleep(0)
                continue
            if now > deadline:
                self._broken = (f"an earlier collective ({what}) timed out: some rank did not "
                                f"join it within {timeout:.0f} s")
                raise CollectiveTimeoutError(
                    f"{what}: not every rank joined within {timeout:.0f} s (every rank must "
                    "make the same calls in the same order); this channel cannot be trusted "
                    "any more: end the job")
            time.sleep(2e-4)

    def threads_ok(self) -> bool:
        from mpi4py import MPI
        return MPI.Query_thread() >= MPI.THREAD_MULTIPLE

    # Point-to-point waits poll and sleep (``_Backoff``) instead of MPICH's blocking calls,
    # which spin a core while they wait: a background transfer (a drain's reader sending to
    # its aggregator, a partner replication waiting for its throttled sender) must not take a
    # core from the save or the training beside it. At most 1 ms between polls: a stream of
    # large messages loses little to the wake-up.

    def send_bytes(self, dest: int, data: bytes) -> None:
        from mpi4py import MPI
        self._refuse_if_broken()
        request = self._comm.Isend([data, MPI.BYTE], dest=dest, tag=_TAG_P2P)
        backoff, deadline = _Backoff(most=1e-3), self._point_deadline()
        while not request.Test():
            self._check_point(deadline, "sending to", dest, pending=(request, data))
            backoff.wait()

    def recv_bytes(self, source: int) -> bytes:
        from mpi4py import MPI
        self._refuse_if_broken()
        status = MPI.Status()
        backoff, deadline = _Backoff(most=1e-3), self._point_deadline()
        while not self._comm.Iprobe(source=source, tag=_TAG_P2P, status=status):
            self._check_point(deadline, "receiving from", source)
            backoff.wait()
        buf = bytearray(status.Get_count(MPI.BYTE))
        self._comm.Recv([buf, MPI.BYTE], source=source, tag=_TAG_P2P)
        return bytes(buf)

    def _refuse_if_broken(self) -> None:
        if self._broken:
            raise CollectiveTimeoutError(f"point-to-point: {self._broken}")

    def _point_deadline(self) -> float | None:
        return None if self.point_timeout is None else time.monotonic() + self.point_timeout

    def _check_point(self, deadline: float | None, verb: str, peer: int,
                     pending=None) -> None:
        """Past ``deadline``: the channel is broken (a send still pending, or a message that
        may yet arrive and be matched by a later receive) and the wait raises. ``pending``:
        a send's (request, buffer), kept alive with the channel, since MPI may still read
        the buffer (the receiver can match it later): never freed under MPI."""
        if deadline is not None and time.monotonic() > deadline:
            if pending is not None:
                self._abandoned.append(pending)
            error = point_timed_out(verb, peer, self.point_timeout)
            self._broken = f"an earlier point-to-point transfer timed out ({error})"
            raise error

    def free(self) -> None:
        try:
            self._comm.Free()
        except Exception:  # noqa: BLE001 - finalised MPI: nothing to free
            pass


def _wait_all(reqs, deadline, what, timeout, quiet: bool = False):
    """Until every send is taken; past ``deadline`` raise (or, ``quiet``, give up: a rank
    that arrived and then vanished has its own timeout)."""
    from mpi4py import MPI
    backoff = _Backoff()
    while not MPI.Request.Testall(reqs):
        if time.monotonic() > deadline:
            if quiet:
                return
            raise CollectiveTimeoutError(f"{what}: replies not taken within {timeout:.0f} s")
        backoff.wait()
