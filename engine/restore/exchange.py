"""Peer restore, the transfer: pieces of chunks read on the node that holds them and sent
over the restore's communicator to the ranks that need them (restore/peers.py plans who
serves what). Blocking ``send_bytes``/``recv_bytes`` only, in the meeting order of
``peers.meeting_order`` (deadlock-free: see there).

Two passes over a rank's partners, each in meeting order; in a meeting of ranks a < b the
lower rank's traffic goes first:
1. requests: a requester sends each of its sources the list of pieces it needs (array,
   chunk, region of the chunk), JSON;
2. pieces: each source reads the pieces (``read_item`` from its node's copies: the chunk is
   checked against its crc32c where it is read) and sends them in messages of at most
   ``PIECE_MESSAGE_BYTES`` (``peers.message_groups``, computed alike on both sides), each
   with the crc32c of its payload, checked again on arrival.
A source whose read fails still answers every message, with the failure instead of data,
so no requester is left waiting; the requester raises it after the exchange (the read
phase's agreement then raises it on every rank).

The manifest itself reaches a rank whose node holds no copy of the step the same way
(``header_messages``/``receive_header``): the commit marker and the manifest file, checked on
arrival against each other exactly as when read from a directory (``layout.read_header``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError, CorruptCheckpointError, error_class
from ..format import dtypes, layout
from ..format.manifest import Manifest
from ..format.types import Box, ReadItem
from ..kernels import crc32c
from ..runtime.comm import describe_error
from .peers import meeting_order, message_groups
from .plan import ArrayRead, ReadPlan
from .read import read_item

PIECE_MESSAGE_BYTES = 64 << 20  # pieces per message: bounds a source's send buffer
_OK, _FAILED = b"K", b"F"


@dataclass(frozen=True)
class Piece:
    """One region of one chunk that a requester needs: ``region`` in chunk-local
    coordinates; on the requester, ``target`` is where it goes (its leaf's bits) and
    ``target_region`` the same elements there."""

    name: str
    key: str
    region: Box
    target: np.ndarray | None = None
    target_region: Box | None = None

    def request(self) -> list:
        return [self.name, self.key, list(self.region.offset), list(self.region.shape)]

    @classmethod
    def requested(cls, item: list) -> "Piece":
        name, key, offset, shape = item
        return cls(str(name), str(key), Box(tuple(offset), tuple(shape)))


def piece_bytes(manifest: Manifest, piece: Piece) -> int:
    return piece.region.volume * dtypes.storage_dtype(manifest.arrays[piece.name].dtype).itemsize


class PieceExchange:
    """One rank's part of the exchange. ``wants``: source rank -> the pieces this rank needs
    from it; ``serves``: the ranks that request from this one (from rank 0's answer);
    ``copies``: this node's copies of the step (the sources' reads; with their records);
    ``manifest``: the step's manifest; ``what``: the operation, for messages."""

    def __init__(self, comm, rank: int, size: int, *, wants: dict[int, list[Piece]],
                 serves: list[int], copies: list, manifest: Manifest, what: str, records):
        self.comm, self.rank, self.size = comm, rank, size
        self.wants, self.serves = wants, set(serves)
        self.copies, self.manifest, self.what = copies, manifest, what
        self.records = records  # (copies, ReadPlan) -> (copies, plan with chunk records)
        self._served_records: dict = {}
        self.requests: dict[int, list[Piece]] = {}
        self.received = 0  # bytes of pieces received
        self.served = 0    # bytes of pieces sent

    def run(self, failure: BaseException | None = None) -> BaseException | None:
        """Both passes; returns the first problem (a failed source, a damaged message), or
        ``failure`` (this rank's own, which it passes to its requesters instead of data)."""
        order = meeting_order(self.rank, set(self.wants) | self.serves, self.size)
        for partner in order:
            for requester in self._directions(partner):
                if requester == self.rank:
                    self.comm.send_bytes(partner, json.dumps(
                        [p.request() for p in self.wants[partner]]).encode("utf-8"))
                else:
                    self.requests[partner] = [Piece.requested(i) for i in
                                              json.loads(self.comm.recv_bytes(partner))]
        problem = failure
        if failure is None and self.requests:
            try:
                self._load_records()
            except Exception as e:  # noqa: BLE001 - answered to every requester
                failure = e
        for partner in order:
            for requester in self._directions(partner):
                if requester == self.rank:
                    problem = self._receive(partner) or problem
                else:
                    self._serve(partner, failure)
        return problem

    def _directions(self, partner: int) -> list[int]:
        """Who sends to whom in a meeting with ``partner``: the lower rank's requests (and
        then its pieces' source) first. Each entry is the requester's rank."""
        low, high = sorted((self.rank, partner))
        out = []
        for requester, source in ((low, high), (high, low)):
            if (requester == self.rank and source in self.wants) or \
                    (source == self.rank and requester in self.serves):
                out.append(requester)
        return out

    def _serve(self, requester: int, failure: BaseException | None) -> None:
        pieces = self.requests.get(requester, [])
        sizes = [piece_bytes(self.manifest, p) for p in pieces]
        for group in message_groups(sizes, PIECE_MESSAGE_BYTES):
            if failure is None:
                try:
                    payload = b"".join(self._read(pieces[i]) for i in group)
                except Exception as e:  # noqa: BLE001 - the requester must hear of it
                    failure = e
            if failure is not None:
                self.comm.send_bytes(requester, _FAILED + json.dumps(
                    describe_error(failure)).encode("utf-8"))
                continue
            self.served += len(payload)
            self.comm.send_bytes(requester, _OK + crc32c(payload).to_bytes(4, "little") +
                                 payload)

    def _item(self, piece: Piece) -> ReadItem:
        record = self.manifest.arrays[piece.name]
        index = tuple(int(p) for p in piece.key.split(".")[1:])
        return ReadItem(piece.name, index, record.chunk_box(piece.key), piece.region,
                        Box((0,) * len(piece.region.shape), piece.region.shape))

    def _load_records(self) -> None:
        """The chunk records of every piece requested from this rank (format version 2:
        from the slices of this node's copies that record them), before any is read."""
        by_name: dict[str, list] = {}
        for pieces in self.requests.values():
            for piece in pieces:
                by_name.setdefault(piece.name, []).append(self._item(piece))
        plan = ReadPlan(self.manifest.step, tuple(
            ArrayRead(name, self.manifest.arrays[name], tuple(items))
            for name, items in by_name.items()))
        self.copies, plan = self.records(self.copies, plan)
        self._served_records = {r.name: r.record for r in plan.reads}

    def _read(self, piece: Piece) -> bytes:
        record = self._served_records[piece.name]
        buf = np.empty(piece.region.shape, dtype=dtypes.storage_dtype(record.dtype))
        read_item(self.copies, record, self._item(piece), buf, self.rank)
        return buf.tobytes()

    def _receive(self, source: int) -> BaseException | None:
        pieces = self.wants[source]
        sizes = [piece_bytes(self.manifest, p) for p in pieces]
        problem = None
        for group in message_groups(sizes, PIECE_MESSAGE_BYTES):
            data = self.comm.recv_bytes(source)
            if data[:1] == _FAILED:
                error = json.loads(data[1:])
                problem = problem or error_class(error["class"])(
                    f"{error['message']} (read on rank {source} for rank {self.rank})")
                continue
            payload = memoryview(data)[5:]
            expected = sum(sizes[i] for i in group)
            if data[:1] != _OK or len(payload) != expected or \
                    crc32c(payload) != int.from_bytes(data[1:5], "little"):
                first = pieces[group[0]]
                problem = problem or CorruptCheckpointError(
                    f"{self.what}: the pieces of array {first.name!r} chunk {first.key} and "
                    f"after, sent by rank {source}, arrived damaged ({len(payload)} bytes, "
                    f"{expected} expected, or a crc32c mismatch); restore again")
                continue
            self.received += len(payload)
            at = 0
            for i in group:
                piece = pieces[i]
                part = payload[at:at + sizes[i]]
                at += sizes[i]
                target = piece.target[piece.target_region.slices()]
                target[...] = np.frombuffer(part, dtype=target.dtype).reshape(target.shape)
        return problem


# ---- the manifest, for a rank whose node holds no copy --------------------------------------

def header_messages(copy) -> list[bytes]:
    """The three messages that carry ``copy``'s manifest to a rank without a copy: its path,
    commit marker and manifest file (empty ones when they cannot be read, or for ``copy``
    None: the receiver then reports that nothing came)."""
    try:
        marker, manifest = (_read(os.path.join(copy.path, name))
                            for name in (layout.COMMIT_FILE, layout.MANIFEST_FILE))
        return [copy.path.encode("utf-8"), marker, manifest]
    except (OSError, AttributeError):
        return [b"", b"", b""]


def send_messages(comm, dest: int, messages: list[bytes]) -> None:
    for data in messages:
        comm.send_bytes(dest, data)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def receive_header(comm, source: int) -> tuple[str, Manifest, list[bytes]]:
    """The manifest rank ``source`` sends (``header_messages``), checked as
    ``layout.read_header`` checks a directory's; returns (where it was read, manifest, the
    messages, for passing on)."""
    messages = [comm.recv_bytes(source) for _ in range(3)]
    path = messages[0].decode("utf-8", "replace")
    files = {layout.COMMIT_FILE: messages[1], layout.MANIFEST_FILE: messages[2]}
    if not files[layout.COMMIT_FILE]:
        raise CheckpointError(f"rank {source} could not read the manifest of the step "
                              f"{path or ''} to send it; restore again, or from the capacity "
                              "tier")

    def read(name):
        if name not in files:
            raise FileNotFoundError(name)
        return files[name]
    return path, layout.read_header(f"{path} (from rank {source})", read), messages
