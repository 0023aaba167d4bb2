"""The few collectives tierpoint needs, over MPI, torch.distributed or a single process.

Only one primitive is used: ``allgather_json`` (every rank contributes a JSON-able value and
gets everyone's), built as gather-to-rank-0 then reply, so that a collective that does not
complete in time can name the late ranks. Messages are JSON bytes, never pickled.

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


class Comm:
    rank: int = 0
    size: int = 1
    kind: str = "single"

    def allgather_json(self, value, *, what: str, timeout: float):
        raise NotImplementedError

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
              value=None) -> list:
        """Gather (ok, value) from every rank; raise the same error everywhere on a failure.

        Returns every rank's ``value`` when all succeeded.
        """
        mine = {"ok": error is None, "value": value if error is None else None}
        if error is not None:
            mine["error"] = describe_error(error)
        replies = self.allgather_json(mine, what=what, timeout=timeout)
        failed = [(r, rep["error"]) for r, rep in enumerate(replies) if not rep["ok"]]
        if failed:
            exc = _rebuild(what, failed)
            if error is not None:
                raise exc from error
            raise exc
        return [rep["value"] for rep in replies]


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

    def allgather_json(self, value, *, what: str, timeout: float):
        return [json.loads(json.dumps(value))]


class MPIComm(Comm):
    """Over a private duplicate of an mpi4py communicator (the trainer's own messages are
    never matched by ours)."""

    kind = "mpi"

    def __init__(self, comm):
        self._comm = comm.Dup()
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        self._broken: str | None = None  # set once a collective timed out

    def allgather_json(self, value, *, what: str, timeout: float):
        from mpi4py import MPI
        if self._broken:
            raise CollectiveTimeoutError(f"{what}: {self._broken}")
        data = json.dumps(value).encode("utf-8")
        deadline = time.monotonic() + timeout
        if self.rank == 0:
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
            reply = b"[" + b",".join(parts[r] for r in range(self.size)) + b"]"
            reqs = [self._comm.Isend([reply, MPI.BYTE], dest=r, tag=_TAG_DOWN)
                    for r in range(1, self.size)]
            _wait_all(reqs, deadline, what, timeout)
            return json.loads(reply)
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
        reply = json.loads(bytes(buf))
        if isinstance(reply, dict):  # rank 0 gave up waiting for others
            self._broken = f"an earlier collective timed out: {reply['timeout']}"
            raise CollectiveTimeoutError(f"{what}: {reply['timeout']}")
        return reply

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

    def allgather_json(self, value, *, what: str, timeout: float):
        import datetime

        import torch
        dist = self._dist
        try:
            dist.monitored_barrier(self._group, timeout=datetime.timedelta(seconds=timeout),
                                   wait_all_ranks=True)
        except RuntimeError as e:
            raise CollectiveTimeoutError(f"{what}: {e}") from None
        data = torch.frombuffer(bytearray(json.dumps(value).encode("utf-8")), dtype=torch.uint8)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64), group=self._group)
        longest = max(int(s) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[:data.numel()] = data
        bufs = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.size)]
        dist.all_gather(bufs, padded, group=self._group)
        return [json.loads(bytes(b[:int(n)].numpy())) for b, n in zip(bufs, sizes)]


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


__all__ = ["Comm", "SingleComm", "MPIComm", "TorchComm", "resolve", "RankFailedError"]
