"""Replicated state is read once per node on restore, and handed to the node's other ranks.

A leaf that several ranks of one domain (a node's directory: runtime/topology.py) restore
whole (a plain tensor every rank holds: data-parallel replicas, norms, the optimizer step) is
read from storage and checked by one of them and passed along the others in a chain over the
restore's communicator, instead of being read and checked once per rank.

Who shares with whom is decided inside each domain: every rank sends the digest of its list
of whole leaves (name, shape, dtype) of at least ``SHARE_MIN_BYTES``; the domain's leader
groups its ranks by digest (``group_ranks``), so the ranks of a group want exactly the same
leaves; rank 0 only relays one short list of groups per domain. Only digests travel, never
the lists, so the cost is O(ranks) at rank 0 and O(1) per rank whatever the number of leaves.

The exchange (``Chain``) is deadlock-free with blocking sends: in a group (r0 < r1 < ...),
r0 reads each shared leaf, and for every leaf, in name order, each r(j) receives it from
r(j-1) and sends it to r(j+1): a line, so every wait points to a lower rank. A rank whose own
part failed (a template that does not match, a damaged chunk) still receives and forwards,
passing a failure message instead of data, so no rank of the chain is left waiting; the
failure is then raised on every rank of the phase by its agreement (runtime/phases.py).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from ..errors import CheckpointError, error_class
from ..runtime.channel import describe_error

SHARE_MIN_BYTES = 64 << 10  # smaller leaves are read by each rank: a message costs as much
_OK, _SKIP, _FAILED = b"K", b"S", b"F"  # data follows; the checkpoint lacks it; why not


def shared_leaves(leaves, itemsize) -> list:
    """This rank's leaves worth sharing: restored whole and at least SHARE_MIN_BYTES, in
    name order. ``itemsize(dtype)`` gives a leaf's element size."""
    out = []
    for leaf in leaves:
        whole = tuple(leaf.box.offset) == (0,) * len(leaf.global_shape) and \
            tuple(leaf.box.shape) == tuple(leaf.global_shape)
        if whole and leaf.box.volume * itemsize(leaf.dtype) >= SHARE_MIN_BYTES:
            out.append(leaf)
    return sorted(out, key=lambda leaf: leaf.name)


def wants_digest(leaves) -> str:
    """The digest a rank sends: of its shared leaves' names, shapes and dtypes ("" when it
    has none, and is in no group)."""
    if not leaves:
        return ""
    listing = [[leaf.name, list(leaf.global_shape), leaf.dtype] for leaf in leaves]
    return hashlib.sha256(json.dumps(listing).encode("utf-8")).hexdigest()


def group_ranks(ranks: list[int], digests: list[str]) -> list[list[int]]:
    """A domain leader's decision: the ranks of its domain (``ranks``, ascending) grouped by
    equal non-empty digest; only groups of two or more ranks (the others read alone)."""
    groups: dict[str, list[int]] = {}
    for rank, digest in zip(ranks, digests):
        if digest:
            groups.setdefault(digest, []).append(rank)
    return [g for g in groups.values() if len(g) > 1]


def my_group(groups: list[list[int]], rank: int) -> list[int]:
    return next((g for g in groups if rank in g), [rank])


class Chain:
    """This rank's place in its group's chain (see the module docstring). ``comm`` has
    ``send_bytes``/``recv_bytes``; ``what`` names the operation for messages."""

    def __init__(self, comm, group: list[int], rank: int, what: str):
        self.comm, self.what = comm, what
        j = group.index(rank)
        self.reader = j == 0
        self.previous = group[j - 1] if j > 0 else None
        self.next = group[j + 1] if j + 1 < len(group) else None
        self.source = group[0]

    def pass_along(self, name: str, read, target: np.ndarray | None,
                   failure: BaseException | None) -> BaseException | None:
        """Move leaf ``name`` one step along the chain: the reader calls ``read()``, which
        fills ``target`` and returns False when the checkpoint lacks the leaf (``strict=False``:
        every rank then leaves it as it is); the others receive it into ``target`` (None:
        this rank's own part failed, it only forwards). Returns why this leaf could not be
        had, as the error to raise (None: it is in ``target``, or absent); ``failure`` is
        this rank's own, which a reader forwards instead of data (its class kept)."""
        problem, status, data = failure, _OK, None
        if self.reader:
            if problem is None:
                try:
                    status = _OK if read() else _SKIP
                except Exception as e:  # noqa: BLE001 - forwarded, then raised by the phase
                    problem = e
            if problem is not None:
                status = _FAILED + json.dumps(describe_error(problem)).encode("utf-8")
            elif status == _OK:
                data = memoryview(np.ascontiguousarray(target).reshape(-1).view(np.uint8))
        else:
            status = self.comm.recv_bytes(self.previous)
            if status == _OK:
                data = self.comm.recv_bytes(self.previous)
                if problem is None:
                    problem = _fill(name, target, data, self.previous, self.what)
            elif status != _SKIP and problem is None:
                error = json.loads(status[1:])
                problem = error_class(error["class"])(
                    f"{error['message']} (read for this node by rank {self.source})")
        if self.next is not None:
            self.comm.send_bytes(self.next, status)
            if status == _OK:
                self.comm.send_bytes(self.next, data)
        return problem


def _fill(name: str, target: np.ndarray, data, source: int, what: str):
    if len(data) != target.nbytes:
        return CheckpointError(f"{what}: array {name!r}: rank {source} passed {len(data)} "
                               f"bytes, {target.nbytes} expected")
    target[...] = np.frombuffer(data, dtype=target.dtype).reshape(target.shape)
    return None
