"""Collectives over torch.distributed (a gloo group of tierpoint's own): the contract of
channel.py, flat.

Every collective gathers to rank 0 and answers over gloo: the lengths first (a max
all-reduce, O(1) per rank), then the padded values (gather) and the padded replies
(broadcast of the longest length, then scatter). Domains (``set_domains``) do not change the
traffic here: ``combine`` is emulated at rank 0 from the gathered values (channel.py), with the
results and errors of the MPI relay.

Costs per collective: every rank sends its value and receives its reply, each padded to the
longest of the collective; rank 0 O(ranks x longest) bytes.
"""
from __future__ import annotations

import json

from ..errors import CollectiveTimeoutError
from .channel import Comm, _inlined, point_timed_out


class TorchComm(Comm):
    """Over a gloo group of its own, created collectively on the trainer's group, so that
    tierpoint never issues collectives on the trainer's (possibly NCCL) process group."""

    kind = "torch"

    def __init__(self, group=None, domains=None):
        super().__init__()
        import torch.distributed as dist
        self._dist = dist
        ranks = None if group is None else dist.get_process_group_ranks(group)
        self._group = dist.new_group(ranks=ranks, backend="gloo")
        self._ranks = ranks
        self.rank = dist.get_rank(self._group)
        self.size = dist.get_world_size(self._group)
        if domains is not None:
            self.set_domains(domains)

    def allreduce_max(self, values: list[int], *, what: str, timeout: float) -> list[int]:
        """Channel.allreduce_max over gloo, waited for at most ``timeout`` seconds."""
        import datetime

        import torch
        t = torch.tensor(values, dtype=torch.int64)
        work = self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX, group=self._group,
                                     async_op=True)
        try:
            work.wait(timeout=datetime.timedelta(seconds=timeout))
        except RuntimeError as e:
            raise CollectiveTimeoutError(f"{what}: not every rank joined within "
                                         f"{timeout:.0f} s ({e})") from None
        return [int(v) for v in t]

    def duplicate(self) -> "TorchComm":
        dup = TorchComm(None if self._ranks is None else self._group, domains=self._domains)
        dup.point_timeout = self.point_timeout
        return dup

    def send_bytes(self, dest: int, data: bytes) -> None:
        import torch
        peer = self._dist.get_global_rank(self._group, dest)
        self._point(self._dist.isend(torch.tensor([len(data)], dtype=torch.int64), peer,
                                     group=self._group), "sending to", dest)
        if data:
            self._point(self._dist.isend(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                         peer, group=self._group), "sending to", dest)

    def recv_bytes(self, source: int) -> bytes:
        import torch
        peer = self._dist.get_global_rank(self._group, source)
        size = torch.zeros(1, dtype=torch.int64)
        self._point(self._dist.irecv(size, peer, group=self._group), "receiving from", source)
        buf = torch.empty(int(size), dtype=torch.uint8)
        if int(size):
            self._point(self._dist.irecv(buf, peer, group=self._group), "receiving from",
                        source)
        return bytes(buf.numpy())

    def _point(self, work, verb: str, peer: int) -> None:
        """Wait for one point-to-point operation, at most ``point_timeout`` seconds."""
        if self.point_timeout is None:
            work.wait()
            return
        import datetime
        try:
            work.wait(timeout=datetime.timedelta(seconds=self.point_timeout))
        except RuntimeError:
            raise point_timed_out(verb, peer, self.point_timeout) from None

    def _flat(self, value, *, what: str, timeout: float, answer):
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
        self.traffic["collectives"] += 1
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
            self.traffic["messages_received"] += self.size - 1
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
            self.traffic["messages_received"] += 1
        reply = json.loads(bytes(out[:int(lengths)].numpy()))
        return values, self._unwrap(reply, what)


def _padded(data: bytes, length: int):
    import torch
    buf = torch.zeros(max(length, 1), dtype=torch.uint8)
    if data:
        buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return buf[:length] if length else buf[:0]
