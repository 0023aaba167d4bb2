"""The drain's transport and its pure planning: copy a committed local checkpoint to the
capacity tier (tiers/capacity.py) as few large parts. The OCDBT mechanics live in the
capacity tier; the local reads in the local tier's copy; the orchestration (phases, commit,
retention) in tiers/ops.py.

Who calls what, in order (``Checkpointer.drain`` runs them as agreed phases):
1. every rank: ``plan_drain`` (pure) says which chunks each reader copies: a chunk goes to
   the reader of the storage domain (node-local directory) of its first writer, so every
   chunk is copied exactly once and read from its own node;
2. every node's reader (its first rank) reads its chunks through its ``LocalCopy``
   (``read_for_drain``: the one chunk check); an aggregator (by default every reader is one)
   writes the chunks of the nodes it serves, which other readers ``send_chunks`` to it
   (``RemoteChunks`` checks each again on arrival), with ``write_aggregator_parts``: through
   ``CapacityTier.write``, one part per pool, balanced by bytes (``assign_pools``);
3. the coordinator merges (``CapacityTier.finish``); every rank checks a share of the index
   (``CapacityTier.check_index``); the coordinator commits (``CapacityTier.commit``). Until
   the marker exists the capacity copy does not exist; an interrupted drain leaves only
   files that the next drain removes (``CapacityTier.sweep``).
"""
from __future__ import annotations

import time

from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ..format.manifest import Manifest
from .base import StepCopy, check_chunk
from .capacity import CapacityTier


def plan_drain(manifest: Manifest, reader_of_saver: list) -> dict[int, list[tuple[str, str]]]:
    """reader rank -> [(array name, chunk key)] it reads from its node's local directory.

    ``reader_of_saver[r]`` is the draining rank that can read the directory saving rank ``r``
    wrote into (that directory's leader), or None when no draining rank can (another node).
    A replicated chunk is read from the first writer's directory that can be read.
    """
    work: dict[int, list[tuple[str, str]]] = {}
    for name, array in manifest.arrays.items():
        for key, record in array.chunks.items():
            readers = [reader_of_saver[w] for w in record.writers
                       if reader_of_saver[w] is not None]
            if not readers:
                ranks = manifest.ranks
                where = ", ".join(f"rank {w} on node "
                                  f"{ranks[w].node if w < len(ranks) else '?'}"
                                  for w in record.writers)
                raise CheckpointNotFoundError(
                    f"drain: array {name!r} chunk {key} was written by {where}, and no "
                    "draining rank's local directory holds it; drain on the nodes that saved "
                    "it, or gather their directories into one first")
            work.setdefault(readers[0], []).append((name, key))
    return work


def assign_pools(manifest: Manifest, items: list[tuple[str, str]], npools: int) -> dict:
    """(array, chunk key) -> pool index: largest first to the pool with the fewest bytes."""
    size = {i: manifest.arrays[i[0]].chunks[i[1]].nbytes for i in items}
    load = [0] * npools
    out = {}
    for item in sorted(items, key=lambda i: (-size[i], i)):
        p = min(range(npools), key=lambda j: (load[j], j))
        out[item] = p
        load[p] += size[item]
    return out


class Throttle:
    """Keeps the average copy rate at or below ``rate`` bytes per second (None: no cap)."""

    def __init__(self, rate: float | None):
        self.rate, self.start, self.done = rate, time.monotonic(), 0

    def account(self, nbytes: int) -> None:
        self.done += nbytes
        if self.rate:
            ahead = self.done / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                time.sleep(ahead)


def read_for_drain(copy: StepCopy, name: str, key: str) -> bytes:
    """A chunk's file bytes from this node's local copy, through the chunk check."""
    array = copy.manifest.arrays[name]
    try:
        return copy.read_chunk(array, key)
    except CorruptCheckpointError as e:
        raise CorruptCheckpointError(f"drain: {e}; the local copy is not drained") from None
    except CheckpointNotFoundError as e:
        raise CheckpointNotFoundError(f"drain: {e}") from None


def write_aggregator_parts(capacity: CapacityTier, run: str, step: int, aggregator: int,
                           manifest: Manifest, sources: list, *, metadata=None,
                           rate: float | None = None, progress=None) -> list[dict]:
    """Write one aggregator's chunks as one part per pool, the pools concurrently.

    ``sources`` is a list of (items, fetch): ``fetch(name, key)`` returns the chunk's bytes,
    called in the order of ``items`` (chunks read from this node's directory, or received
    from another node's reader in the order it sends them). ``metadata``: the (key, bytes)
    of the checkpoint's zarr.json documents (the first aggregator's, to pool 0). ``rate``
    caps the aggregator's copy rate in bytes/s (``Throttle``, applied as the chunks are
    handed to the writers). Returns [{"name", "path", "bytes"}] of the parts written
    (``CapacityTier.write``)."""
    metadata = list(metadata or [])
    where = assign_pools(manifest, [i for items, _ in sources for i in items],
                         len(capacity.pools))
    pool_of = {f"{manifest.arrays[name].path}/{key}": p for (name, key), p in where.items()}
    pool_of.update({key: 0 for key, _ in metadata})

    throttle = Throttle(rate)

    def entries():
        yield from metadata
        for items, fetch in sources:
            for name, key in items:
                data = fetch(name, key)
                yield f"{manifest.arrays[name].path}/{key}", data
                throttle.account(len(data))
    return capacity.write(run, step, aggregator, entries(), pool_of=pool_of,
                          progress=progress)


_OK, _FAILED = b"\x00", b"\x01"


def send_chunks(comm, aggregator: int, items, fetch) -> None:
    """A reader's side of the transfer: each chunk to its aggregator, in plan order. On a
    failure, one failure message instead of the rest (the aggregator stops waiting), then
    the error is raised here too."""
    for name, key in items:
        try:
            data = fetch(name, key)
        except Exception as e:
            comm.send_bytes(aggregator, _FAILED + str(e).encode("utf-8", "replace"))
            raise
        comm.send_bytes(aggregator, _OK + data)


class RemoteChunks:
    """An aggregator's side of one reader's transfer: ``fetch`` returns the chunks in the
    order the reader sends them, each passed through the chunk check again (it crossed the
    network); ``discard_rest`` receives whatever is still coming when the aggregator stops
    early, so the reader is never left blocked in a send."""

    def __init__(self, comm, reader: int, manifest: Manifest, items):
        self.comm, self.reader, self.manifest, self.items = comm, reader, manifest, list(items)
        self.left = len(self.items)

    def _next(self) -> bytes:
        message = self.comm.recv_bytes(self.reader)
        if message[:1] == _FAILED:
            self.left = 0
            raise CheckpointError(
                f"drain: rank {self.reader} could not read its chunks: "
                f"{message[1:].decode('utf-8', 'replace')}")
        self.left -= 1
        return message[1:]

    def fetch(self, name: str, key: str) -> bytes:
        data = self._next()
        try:
            check_chunk(self.manifest.arrays[name], key, data,
                        f"as sent by rank {self.reader}")
        except CorruptCheckpointError as e:
            raise CorruptCheckpointError(
                f"drain: {e}: it arrived damaged at its aggregator") from None
        return data

    def discard_rest(self) -> None:
        while self.left > 0:
            try:
                self._next()
            except CheckpointError:
                return
