"""The few collectives tierpoint needs, over MPI, torch.distributed or a single process.

One primitive carries everything: ``collect`` (every rank contributes a JSON-able value; rank 0,
the coordinator, receives them all and answers: one reply for every rank, or each rank its
own), built as gather-to-rank-0 then reply, so that a collective that does not complete in
time can name the late ranks. Messages are JSON bytes, never pickled.

Costs, which is what lets a job of 16,384 ranks stay cheap: rank 0 receives and sends O(ranks)
messages per collective; every other rank sends one message and receives one reply, so a
rank's bytes per collective are its own value plus its reply. ``allgather_json`` (everyone
gets everyone's values: O(ranks) bytes per rank) is kept for the few places that need it at
startup; phases of a save collect at the coordinator (``agree(..., collect="root")``).

Who calls: every method is collective over the communicator's ranks, called by all of them
in the same order. ``agree`` is how a phase ends: it gathers every rank's outcome and raises
the same CheckpointError on every rank if any rank failed.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

from ..errors import CheckpointError, CollectiveTimeoutError, RankFailedError, error_class
from ..options import debug

_TAG_UP, _TAG_DOWN, _TAG_P2P = 0x7E01, 0x7E02, 0x7E03


class Broadcast:
    """The coordinator's answer to a ``collect``: the same value for every rank."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class Scatter:
    """The coordinator's answer to a ``collect``: ``values[r]`` for rank r. With ``shared``,
    the ranks in ``shared_to`` also get ``shared`` as ``values[r][shared_key]`` (values are
    dicts then): encoded once and sent as a second message from one buffer, so that a large
    document several ranks need (a manifest header for every domain leader) costs the
    coordinator one copy, not one per rank."""

    __slots__ = ("values", "shared", "shared_key", "shared_to")

    def __init__(self, values: list, *, shared=None, shared_key: str = "shared",
                 shared_to=()):
        self.values = values
        self.shared, self.shared_key, self.shared_to = shared, shared_key, frozenset(shared_to)


class Comm:
    rank: int = 0
    size: int = 1
    kind: str = "single"

    def __init__(self) -> None:
        # Payload bytes this rank sent and received in collectives, their number, and on
        # rank 0 the CPU seconds spent coordinating them (receiving, parsing, answering,
        # sending): what the scale benchmarks report; never used for decisions.
        self.traffic = {"sent": 0, "received": 0, "collectives": 0, "root_cpu": 0.0}

    def collect(self, value, *, what: str, timeout: float, answer):
        """Every rank sends ``value``; rank 0 calls ``answer(values)`` (every rank's, in rank
        order) which returns a Broadcast or a Scatter; every rank gets its reply. Returns
        ``(values, reply)`` on rank 0 and ``(None, reply)`` elsewhere. An exception in
        ``answer`` reaches every rank as a CheckpointError."""
        raise NotImplementedError

    def allgather_json(self, value, *, what: str, timeout: float):
        """Every rank's value, on every rank (O(ranks) bytes per rank: startup only)."""
        return self.collect(value, what=what, timeout=timeout, answer=Broadcast)[1]

    def scatter_json(self, values, *, what: str, timeout: float):
        """Rank 0 hands ``values[r]`` to rank r (``values`` is ignored elsewhere)."""
        return self.collect(None, what=what, timeout=timeout,
                            answer=lambda _: Scatter(values))[1]

    def bcast_json(self, value, *, what: str, timeout: float):
        """Rank 0's ``value``, on every rank."""
        return self.collect(None, what=what, timeout=timeout,
                            answer=lambda _: Broadcast(value))[1]

    def _answer(self, answer, values) -> tuple[list[bytes], bytes | None, frozenset]:
        """Rank 0: the reply bytes for every rank (an exception becomes an error reply),
        the encoded shared document of a Scatter (None: none) and the ranks it goes to. A
        reply that is followed by the shared document says so (``"s"``: its key)."""
        try:
            out = answer(values)
            if isinstance(out, Scatter):
                if len(out.values) != self.size:
                    raise CheckpointError(f"{len(out.values)} answers for {self.size} ranks")
                shared = None if not out.shared_to else json.dumps(out.shared).encode("utf-8")
                encoded: dict[int, bytes] = {}  # one value object for many ranks: once

                def reply_of(r, v):
                    if r in out.shared_to:
                        return json.dumps({"v": v, "s": out.shared_key}).encode("utf-8")
                    if id(v) not in encoded:
                        encoded[id(v)] = json.dumps({"v": v}).encode("utf-8")
                    return encoded[id(v)]
                return ([reply_of(r, v) for r, v in enumerate(out.values)], shared,
                        out.shared_to)
            reply = json.dumps({"v": out.value}).encode("utf-8")
        except Exception as e:  # noqa: BLE001 - every rank must learn it
            reply = json.dumps({"error": describe_error(e)}).encode("utf-8")
        return [reply] * self.size, None, frozenset()

    @staticmethod
    def _unwrap(reply: dict, what: str, shared: bytes | None = None):
        if "error" in reply:
            raise _rebuild(what, [(0, reply["error"])])
        if "s" in reply:
            reply["v"][reply["s"]] = json.loads(shared)
        return reply["v"]

    def send_bytes(self, dest: int, data: bytes) -> None:
        """Point-to-point, blocking: ``data`` to rank ``dest`` (matched by ``recv_bytes``)."""
        raise CheckpointError(f"{self.kind} communicator cannot send point-to-point")

    def recv_bytes(self, source: int) -> bytes:
        raise CheckpointError(f"{self.kind} communicator cannot receive point-to-point")

    def threads_ok(self) -> bool:
        """Whether collectives may run on a background thread while the caller's thread
        runs others (on another channel)."""
        return True

    def duplicate(self) -> "Comm":
        """An independent channel over the same ranks (collective), so that a background
        thread's collectives never interleave with the foreground's."""
        return self

    def agree(self, error: BaseException | None, *, what: str, timeout: float,
              value=None, collect: str = "all") -> list | None:
        """Gather (ok, value) from every rank; raise the same error everywhere on a failure.

        Returns every rank's ``value`` when all succeeded: on every rank (``collect="all"``,
        O(ranks) bytes per rank), or on rank 0 only (``collect="root"``: None elsewhere;
        every other rank receives only the verdict).
        """
        if collect not in ("all", "root"):
            raise ValueError(f"collect must be 'all' or 'root', not {collect!r}")
        mine = {"ok": error is None, "value": value if error is None else None}
        if error is not None:
            mine["error"] = describe_error(error)

        def verdict(replies):
            failed = [(r, rep["error"]) for r, rep in enumerate(replies) if not rep["ok"]]
            if failed:
                return Broadcast({"failed": failed})
            return Broadcast([rep["value"] for rep in replies] if collect == "all" else None)
        replies, outcome = self.collect(mine, what=what, timeout=timeout, answer=verdict)
        if isinstance(outcome, dict) and "failed" in outcome:
            exc = _rebuild(what, [tuple(f) for f in outcome["failed"]])
            if error is not None:
                raise exc from error
            raise exc
        if collect == "all":
            return outcome
        return None if replies is None else [rep["value"] for rep in replies]


def describe_error(error: BaseException) -> dict:
    """An error as JSON (class name and message), to be rebuilt by ``error_class``."""
    if isinstance(error, CheckpointError):
        cls = type(error).__name__
        message = str(error)
    else:
        cls = "RankFailedError"
        message = f"{type(error).__name__}: {error}"
        if debug():
            message += "\n" + "".join(traceback.format_exception(error))
    return {"class": cls, "message": message}


def _rebuild(what: str, failed: list[tuple[int, dict]]) -> CheckpointError:
    """The same exception on every rank, from the gathered failures (first rank's class)."""
    rank, first = failed[0]
    text = f"{what} failed on rank {rank}: {first['message']}"
    if len(failed) > 1:
        others = ", ".join(str(r) for r, _ in failed[1:])
        text += f" (ranks {others} failed too)"
    return error_class(first["class"])(text)


class SingleComm(Comm):
    kind = "single"

    def collect(self, value, *, what: str, timeout: float, answer):
        values = [json.loads(json.dumps(value))]  # as a real channel would: a JSON copy
        replies, shared, _ = self._answer(answer, values)
        return values, self._unwrap(json.loads(replies[0]), what, shared)


class MPIComm(Comm):
    """Over a private duplicate of an mpi4py communicator (the trainer's own messages are
    never matched by ours)."""

    kind = "mpi"

    def __init__(self, comm):
        super().__init__()
        self._comm = comm.Dup()
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        self._broken: str | None = None  # set once a collective timed out

    def collect(self, value, *, what: str, timeout: float, answer):
        from mpi4py import MPI
        if self._broken:
            raise CollectiveTimeoutError(f"{what}: {self._broken}")
        data = json.dumps(value).encode("utf-8")
        deadline = time.monotonic() + timeout
        self.traffic["collectives"] += 1
        if self.rank == 0:
            cpu = time.process_time()
            parts = {0: data}
            pending = set(range(1, self.size))
            backoff = _Backoff()
            while pending:
                status = MPI.Status()
                if self._comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_UP, status=status):
                    src = status.Get_source()
                    buf = bytearray(status.Get_count(MPI.BYTE))
                    self._comm.Recv([buf, MPI.BYTE], source=src, tag=_TAG_UP)
                    parts[src] = bytes(buf)
                    pending.discard(src)
                    backoff.reset()
                elif time.monotonic() > deadline:
                    late = (f"ranks {sorted(pending)} did not reach the collective within "
                            f"{timeout:.0f} s (they may have died or hung)")
                    self._give_up(late, [r for r in parts if r != 0])
                    raise CollectiveTimeoutError(f"{what}: {late}")
                else:
                    backoff.wait()
            values = _parse_all([parts[r] for r in range(self.size)])
            replies, shared, shared_to = self._answer(answer, values)
            reqs = []
            for r in range(1, self.size):
                reqs.append(self._comm.Isend([replies[r], MPI.BYTE], dest=r, tag=_TAG_DOWN))
                if r in shared_to:
                    # Same pair and tag: MPI delivers it after the reply, from one buffer.
                    reqs.append(self._comm.Isend([shared, MPI.BYTE], dest=r, tag=_TAG_DOWN))
                    self.traffic["sent"] += len(shared)
            self.traffic["received"] += sum(len(parts[r]) for r in range(1, self.size))
            self.traffic["sent"] += sum(len(replies[r]) for r in range(1, self.size))
            _wait_all(reqs, deadline, what, timeout)
            self.traffic["root_cpu"] += time.process_time() - cpu
            return values, self._unwrap(json.loads(replies[0]), what, shared)
        req = self._comm.Isend([data, MPI.BYTE], dest=0, tag=_TAG_UP)
        status = MPI.Status()
        backoff = _Backoff()
        # Rank 0 names the late ranks when it gives up; wait a little longer than it does,
        # so that its verdict, not a guess, is what this rank raises.
        deadline += min(timeout, 5.0)
        while not self._comm.Iprobe(source=0, tag=_TAG_DOWN, status=status):
            if time.monotonic() > deadline:
                self._broken = ("an earlier collective timed out (rank 0 did not answer); "
                                "this channel cannot be trusted any more: end the job")
                raise CollectiveTimeoutError(
                    f"{what}: rank 0 (the coordinator) did not answer within {timeout:.0f} s")
            backoff.wait()
        buf = bytearray(status.Get_count(MPI.BYTE))
        self._comm.Recv([buf, MPI.BYTE], source=0, tag=_TAG_DOWN)
        req.Wait()
        self.traffic["sent"] += len(data)
        self.traffic["received"] += len(buf)
        reply = json.loads(bytes(buf))
        if "timeout" in reply:  # rank 0 gave up waiting for others
            self._broken = f"an earlier collective timed out: {reply['timeout']}"
            raise CollectiveTimeoutError(f"{what}: {reply['timeout']}")
        shared = None
        if "s" in reply:  # the shared document follows (sent right after the reply)
            self._comm.Probe(source=0, tag=_TAG_DOWN, status=status)
            more = bytearray(status.Get_count(MPI.BYTE))
            self._comm.Recv([more, MPI.BYTE], source=0, tag=_TAG_DOWN)
            self.traffic["received"] += len(more)
            shared = bytes(more)
        return None, self._unwrap(reply, what, shared)

    def _give_up(self, late: str, arrived: list[int]) -> None:
        """Rank 0 after a timeout: tell the ranks that did arrive who is late (so they
        raise the same error), and refuse this channel from now on (a late rank's message
        could still arrive and be taken for a later collective's)."""
        from mpi4py import MPI
        self._broken = (f"an earlier collective timed out ({late}); this channel cannot be "
                        "trusted any more: end the job")
        verdict = json.dumps({"timeout": late}).encode("utf-8")
        reqs = [self._comm.Isend([verdict, MPI.BYTE], dest=r, tag=_TAG_DOWN) for r in arrived]
        try:
            _wait_all(reqs, time.monotonic() + 5.0, "", 5.0)
        except CollectiveTimeoutError:
            pass  # a rank that arrived and then vanished: it has its own timeout

    def duplicate(self) -> "MPIComm":
        return MPIComm(self._comm)

    def threads_ok(self) -> bool:
        from mpi4py import MPI
        return MPI.Query_thread() >= MPI.THREAD_MULTIPLE

    def send_bytes(self, dest: int, data: bytes) -> None:
        from mpi4py import MPI
        self._comm.Send([data, MPI.BYTE], dest=dest, tag=_TAG_P2P)

    def recv_bytes(self, source: int) -> bytes:
        from mpi4py import MPI
        status = MPI.Status()
        self._comm.Probe(source=source, tag=_TAG_P2P, status=status)
        buf = bytearray(status.Get_count(MPI.BYTE))
        self._comm.Recv([buf, MPI.BYTE], source=source, tag=_TAG_P2P)
        return bytes(buf)

    def free(self) -> None:
        try:
            self._comm.Free()
        except Exception:  # noqa: BLE001 - finalised MPI: nothing to free
            pass


class TorchComm(Comm):
    """Over a gloo group of its own, created collectively on the trainer's group, so that
    tierpoint never issues collectives on the trainer's (possibly NCCL) process group."""

    kind = "torch"

    def __init__(self, group=None):
        super().__init__()
        import torch.distributed as dist
        self._dist = dist
        ranks = None if group is None else dist.get_process_group_ranks(group)
        self._group = dist.new_group(ranks=ranks, backend="gloo")
        self._ranks = ranks
        self.rank = dist.get_rank(self._group)
        self.size = dist.get_world_size(self._group)

    def duplicate(self) -> "TorchComm":
        return TorchComm(None if self._ranks is None else self._group)

    def send_bytes(self, dest: int, data: bytes) -> None:
        import torch
        peer = self._dist.get_global_rank(self._group, dest)
        self._dist.send(torch.tensor([len(data)], dtype=torch.int64), peer, group=self._group)
        if data:
            self._dist.send(torch.frombuffer(bytearray(data), dtype=torch.uint8), peer,
                            group=self._group)

    def recv_bytes(self, source: int) -> bytes:
        import torch
        peer = self._dist.get_global_rank(self._group, source)
        size = torch.zeros(1, dtype=torch.int64)
        self._dist.recv(size, peer, group=self._group)
        buf = torch.empty(int(size), dtype=torch.uint8)
        if int(size):
            self._dist.recv(buf, peer, group=self._group)
        return bytes(buf.numpy())

    def collect(self, value, *, what: str, timeout: float, answer):
        """Gather to rank 0 and answer, over gloo: the lengths first (a max all-reduce, O(1)
        per rank), then the padded values (gather) and the replies (broadcast or scatter)."""
        import datetime

        import torch
        dist = self._dist
        try:
            dist.monitored_barrier(self._group, timeout=datetime.timedelta(seconds=timeout),
                                   wait_all_ranks=True)
        except RuntimeError as e:
            raise CollectiveTimeoutError(f"{what}: {e}") from None
        data = json.dumps(value).encode("utf-8")
        longest = torch.tensor([len(data)], dtype=torch.int64)
        dist.all_reduce(longest, op=dist.ReduceOp.MAX, group=self._group)
        root = dist.get_global_rank(self._group, 0)
        mine = _padded(data, int(longest))
        size = torch.tensor([len(data)], dtype=torch.int64)
        if self.rank == 0:
            sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
            bufs = [torch.empty(int(longest), dtype=torch.uint8) for _ in range(self.size)]
            dist.gather(size, sizes, dst=root, group=self._group)
            dist.gather(mine, bufs, dst=root, group=self._group)
            values = [json.loads(bytes(b[:int(n)].numpy())) for b, n in zip(bufs, sizes)]
            replies, shared, _ = self._answer(answer, values)
            if shared is not None:  # inline here: gloo's scatter pads every reply anyway
                replies = [_inlined(r, shared) for r in replies]
            self.traffic["received"] += sum(int(n) for n in sizes[1:])
            self.traffic["sent"] += sum(len(r) for r in replies[1:])
        else:
            dist.gather(size, None, dst=root, group=self._group)
            dist.gather(mine, None, dst=root, group=self._group)
            self.traffic["sent"] += len(data)
            values, replies = None, None
        # The replies: their longest length, then every rank its own (padded) reply.
        top = torch.tensor([max(len(r) for r in replies) if replies else 0], dtype=torch.int64)
        dist.broadcast(top, src=root, group=self._group)
        lengths = torch.zeros(1, dtype=torch.int64)
        out = torch.empty(int(top), dtype=torch.uint8)
        if self.rank == 0:
            dist.scatter(lengths, [torch.tensor([len(r)], dtype=torch.int64) for r in replies],
                         src=root, group=self._group)
            dist.scatter(out, [_padded(r, int(top)) for r in replies], src=root,
                         group=self._group)
        else:
            dist.scatter(lengths, None, src=root, group=self._group)
            dist.scatter(out, None, src=root, group=self._group)
            self.traffic["received"] += int(lengths)
        reply = json.loads(bytes(out[:int(lengths)].numpy()))
        return values, self._unwrap(reply, what)


def _parse_all(messages: list[bytes]) -> list:
    """Every rank's value, parsing each distinct message once: in most phases nearly every
    rank sends the same bytes (an outcome with no value). Equal messages give equal values
    (a fresh top-level dict each; nested values are shared and must be read, not changed)."""
    parsed: dict[bytes, object] = {}
    out = []
    for m in messages:
        v = parsed.get(m)
        if v is None:
            v = parsed[m] = json.loads(m)
        out.append(dict(v) if isinstance(v, dict) else v)
    return out


def _inlined(reply: bytes, shared: bytes) -> bytes:
    """A reply with the shared document put in its place (for channels without the second
    message)."""
    d = json.loads(reply)
    if "s" in d:
        d["v"][d.pop("s")] = json.loads(shared)
    return json.dumps(d).encode("utf-8")


def _padded(data: bytes, length: int):
    import torch
    buf = torch.zeros(max(length, 1), dtype=torch.uint8)
    if data:
        buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return buf[:length] if length else buf[:0]


class _Backoff:
    """Polling pause for deadline-bounded waits: starts at 50 us, grows to 5 ms."""

    def __init__(self):
        self.delay = 5e-5

    def reset(self):
        self.delay = 5e-5

    def wait(self):
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 5e-3)


def _wait_all(reqs, deadline, what, timeout):
    from mpi4py import MPI
    backoff = _Backoff()
    while not MPI.Request.Testall(reqs):
        if time.monotonic() > deadline:
            raise CollectiveTimeoutError(f"{what}: replies not taken within {timeout:.0f} s")
        backoff.wait()


_MPI_LAUNCH_VARS = ("PMI_RANK", "PMI_SIZE", "PMI_FD", "OMPI_COMM_WORLD_SIZE",
                    "MPI_LOCALNRANKS", "PMIX_RANK")


def resolve(comm=None) -> Comm:
    """The communicator to use.

    ``None`` picks MPI COMM_WORLD when mpi4py is in use (imported, or this process was
    started by an MPI launcher), else the default torch.distributed group when one is
    initialised, else a single process. An mpi4py communicator or a torch ProcessGroup may
    be passed explicitly.
    """
    if isinstance(comm, Comm):
        return comm
    if comm is not None:
        if type(comm).__module__.startswith("mpi4py"):
            return MPIComm(comm)
        return TorchComm(comm)
    mpi_world = None
    if "mpi4py.MPI" in sys.modules or any(v in os.environ for v in _MPI_LAUNCH_VARS):
        from mpi4py import MPI
        mpi_world = MPI.COMM_WORLD
        if mpi_world.Get_size() > 1:
            return MPIComm(mpi_world)
    # A one-process MPI world (mpi4py imported by someone, no launcher) must not hide a
    # torch.distributed job started by torchrun. A process that never imported
    # torch.distributed has no such job (and importing it here would cost a numpy-only user
    # seconds).
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return TorchComm(None)
    if mpi_world is not None:
        return MPIComm(mpi_world)
    return SingleComm()


__all__ = ["Broadcast", "Scatter", "Comm", "SingleComm", "MPIComm", "TorchComm", "resolve", "RankFailedError"]
