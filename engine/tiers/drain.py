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

Format version 2: no rank holds every chunk record. Each reader plans its own share from the
slices its directory holds (the writers of a chunk come from the header, so readers agree who
copies a replica), copies its domains' slices with their chunks (``local_source``), and a
reader that sends to another aggregator sends its items and slices first (``send_chunks``,
``RemoteChunks.start``: each slice checked against its entry and the digest). The readers
report their slices' entries (O(ranks) small entries in all) and the coordinator writes the
drained copy's header listing every slice (``capacity_header``), after checking that their
roots give the digest.
"""
from __future__ import annotations

import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable

from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ..format import layout, slices
from ..format.manifest import Manifest, SliceEntry
from ..options import DRAIN_READ_AHEAD_BYTES
from .base import StepCopy, check_chunk
from .capacity import CapacityTier


def plan_drain(manifest: Manifest, reader_of_saver: list) -> dict[int, list[tuple[str, str]]]:
    """reader rank -> [(array name, chunk key)] it reads from its node's local directory.

    ``reader_of_saver[r]`` is the draining rank that can read the directory saving rank ``r``
    wrote into (that directory's leader), or None when no draining rank can (another node).
    A replicated chunk is read from the first writer's directory that can be read. Over the
    chunks ``manifest`` records: every chunk (version 1), or those of the slices a reader's
    directory holds (version 2: each reader plans its own share; the writers of a chunk come
    from the header, so every reader agrees which of them copies a replica).
    """
    work: dict[int, list[tuple[str, str]]] = {}
    for name, array in manifest.arrays.items():
        for key in array.chunks:
            writers = manifest.writers_of(array, key)
            readers = [reader_of_saver[w] for w in writers
                       if 0 <= w < len(reader_of_saver) and reader_of_saver[w] is not None]
            if not readers:
                ranks = manifest.ranks
                where = ", ".join(f"rank {w} on node "
                                  f"{ranks[w].node if w < len(ranks) else '?'}"
                                  for w in writers)
                raise CheckpointNotFoundError(
                    f"drain: array {name!r} chunk {key} was written by {where}, and no "
                    "draining rank's local directory holds it; drain on the nodes that saved "
                    "it, or gather their directories into one first")
            work.setdefault(readers[0], []).append((name, key))
    return work


def slices_of_reader(manifest: Manifest, reader_of_saver: list, reader: int) -> list[int]:
    """Format version 2: the saving ranks whose slices ``reader`` copies (those of the
    domains it reads); CheckpointNotFoundError naming the ranks whose slices no draining
    rank's directory holds (every slice must reach the capacity copy)."""
    if not manifest.sliced:
        return []
    lost = [r for r, who in enumerate(reader_of_saver) if who is None]
    if lost:
        nodes = sorted({manifest.ranks[r].node for r in lost if r < len(manifest.ranks)})
        raise CheckpointNotFoundError(
            f"drain: the manifest slices of saving ranks {lost} (nodes {', '.join(nodes)}) "
            "are in no draining rank's local directory; drain on the nodes that saved them, "
            "or gather their directories into one first")
    return [r for r, who in enumerate(reader_of_saver) if who == reader]


def copied_keys(manifest: Manifest, work: dict, readers: list, reader: int, *,
                metadata: bool = False) -> list:
    """Format version 2: the keys the drain's verify checks of what ``reader`` copied (its
    chunks, ``(name, path, key, record)``, and its slices), plus every zarr.json with
    ``metadata`` (``CapacityTier.check_index``'s ``wanted``)."""
    out = [(a.name, a.path, layout.ZARR_JSON, None)
           for a in manifest.arrays.values()] if metadata else []
    out += [(name, manifest.arrays[name].path, key, manifest.arrays[name].chunks[key])
            for name, key in work.get(reader, [])]
    out += [("manifest slice", layout.SLICES_DIR, layout.slice_name(r), None)
            for r in slices_of_reader(manifest, readers, reader)]
    return out


def assign_pools(sizes: dict[str, int], npools: int) -> dict[str, int]:
    """store key -> pool index: largest first to the pool with the fewest bytes."""
    load = [0] * npools
    out = {}
    for key in sorted(sizes, key=lambda k: (-sizes[k], k)):
        p = min(range(npools), key=lambda j: (load[j], j))
        out[key] = p
        load[p] += sizes[key]
    return out


@dataclass
class DrainSource:
    """What one reader hands its aggregator: ``items`` ((array, chunk key), in order),
    ``fetch(name, key)`` returning each chunk's checked bytes, ``manifest`` holding their
    records, and ``slices`` ((store key, bytes) of the manifest slices it copies, checked)
    with their ``entries`` (rank -> SliceEntry) for the capacity header."""

    items: list
    fetch: Callable
    manifest: Manifest
    slices: list = field(default_factory=list)
    entries: dict = field(default_factory=dict)
    # Whether ``fetch`` may run on several threads at once and out of order (a reader's own
    # chunks, read from its node's directory); chunks arriving from another reader are taken
    # in the order it sends them, on one thread.
    concurrent: bool = False


def local_source(copy: StepCopy, items, fetch, ranks) -> DrainSource:
    """A reader's own source: its items and the slices of ``ranks`` from its local copy,
    each slice checked again as read (its SHA-256 and root; a directory's unlisted slices
    were proven when the copy was opened) and its entry computed for the capacity header."""
    manifest = copy.manifest
    paths = {n: a.path for n, a in manifest.arrays.items()}
    out, entries = [], {}
    for rank in ranks:
        data = copy.read_slice(rank)
        if data is None:
            raise CorruptCheckpointError(
                f"drain: the manifest slice of rank {rank} ({copy.slice_where(rank)}) is "
                "missing; the local copy is not drained")
        try:
            document = slices.parse_slice(data, manifest, rank, copy.slice_where(rank),
                                          unlisted=rank not in manifest.slices)
        except CorruptCheckpointError as e:
            raise CorruptCheckpointError(f"drain: {e}; the local copy is not drained") from None
        out.append((layout.slice_key(rank), data))
        entries[rank] = slices.entry_of(data, document, paths)
    return DrainSource(list(items), fetch, manifest, out, entries, concurrent=True)


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


def interleaved(items: list, pool_of: Callable, size_of: Callable) -> list:
    """``items`` reordered so the pools receive their bytes evenly: each next item is the
    first not yet taken of the pool that has been given the fewest bytes so far (an item's
    order within its pool is kept). A pool whose writer is busy committing then holds up
    the reads of the others as little as possible."""
    queues: dict[int, deque] = {}
    for item in items:
        queues.setdefault(pool_of(item), deque()).append(item)
    given = {p: 0 for p in queues}
    out = []
    while queues:
        p = min(queues, key=lambda q: (given[q], q))
        item = queues[p].popleft()
        given[p] += size_of(item)
        out.append(item)
        if not queues[p]:
            del queues[p]
    return out


def read_ahead(src: DrainSource, *, threads: int, window_bytes: int):
    """``(name, key, data)`` of ``src``'s items in order. A source whose chunks can be read
    concurrently is read by ``threads`` threads up to ``window_bytes`` ahead of the consumer
    (the local reads of one pool's chunks overlap the others' and the pools' writes); any
    other source is fetched here, one chunk at a time. A failed fetch is raised here, in
    order; reads started ahead are waited for before it is."""
    sizes = [src.manifest.arrays[name].chunks[key].nbytes for name, key in src.items]
    if not src.concurrent or threads <= 1:
        for name, key in src.items:
            yield name, key, src.fetch(name, key)
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tierpoint-drain-read")
    ahead: deque = deque()
    held = 0
    try:
        for (name, key), size in zip(src.items, sizes):
            while ahead and held + size > window_bytes:
                first = ahead.popleft()
                held -= first[2]
                yield first[0], first[1], first[3].result()
            ahead.append((name, key, size, pool.submit(src.fetch, name, key)))
            held += size
        while ahead:
            first = ahead.popleft()
            yield first[0], first[1], first[3].result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def write_aggregator_parts(capacity: CapacityTier, run: str, step: int, aggregator: int,
                           sources: list[DrainSource], *, metadata=None,
                           rate: float | None = None, progress=None,
                           read_ahead_bytes: int = DRAIN_READ_AHEAD_BYTES) -> list[dict]:
    """Write one aggregator's chunks and manifest slices as one part per pool, the pools
    concurrently.

    ``sources``: its own DrainSource, then those of the readers that send to it; each
    ``fetch(name, key)`` is called for its ``items`` (chunks read from this node's
    directory, by as many threads as there are pools, up to ``read_ahead_bytes`` ahead of
    the writers: ``read_ahead``; chunks received from another node's reader in the order it
    sends them). ``metadata``: the (key, bytes) of the checkpoint's zarr.json documents (the
    first aggregator's, to pool 0); the slices go to pool 0 too (small, and read by key).
    ``rate`` caps the aggregator's copy rate in bytes/s (``Throttle``, applied as the
    chunks are handed to the writers; a capped drain reads one chunk at a time). Returns
    [{"name", "path", "bytes"}] of the parts written (``CapacityTier.write``)."""
    metadata = list(metadata or [])
    sizes = {f"{src.manifest.arrays[name].path}/{key}":
             src.manifest.arrays[name].chunks[key].nbytes
             for src in sources for name, key in src.items}
    pool_of = assign_pools(sizes, len(capacity.pools))
    pool_of.update({key: 0 for key, _ in metadata})
    pool_of.update({key: 0 for src in sources for key, _ in src.slices})

    throttle = Throttle(rate)
    threads = 1 if rate else max(2, len(capacity.pools))

    def evenly(src: DrainSource) -> DrainSource:
        """A source whose chunks may be read in any order, reordered to feed the pools
        evenly."""
        arrays = src.manifest.arrays
        return replace(src, items=interleaved(
            src.items, lambda i: pool_of[f"{arrays[i[0]].path}/{i[1]}"],
            lambda i: arrays[i[0]].chunks[i[1]].nbytes))

    def entries():
        yield from metadata
        for src in sources:
            yield from src.slices
        for src in sources:
            src = evenly(src) if src.concurrent else src
            for name, key, data in read_ahead(src, threads=threads,
                                              window_bytes=read_ahead_bytes):
                yield f"{src.manifest.arrays[name].path}/{key}", data
                throttle.account(len(data))
    return capacity.write(run, step, aggregator, entries(), pool_of=pool_of,
                          progress=progress)


def capacity_header(manifest: Manifest, entries: dict[int, SliceEntry]) -> dict:
    """The header of a drained copy (version 2): the local header's document listing every
    saving rank's slice (no proofs: the digest is recomputed from all the roots). A
    CheckpointError unless ``entries`` are every rank's and their roots give the digest."""
    digest = slices.digest_of(entries, slices.DigestTree.of(manifest))
    if digest is None:
        lost = sorted(set(range(manifest.world_size)) - set(entries))
        raise CheckpointError(f"drain: no reader copied the manifest slices of ranks {lost}; "
                              "nothing is committed")
    if digest != manifest.digest:
        raise CorruptCheckpointError(
            f"drain: the manifest slices copied give the digest {digest}, not the "
            f"checkpoint's {manifest.digest}; nothing is committed")
    document = dict(manifest.document)
    document["slices"] = {str(r): entries[r].without_proof().to_document()
                          for r in sorted(entries)}
    return document


_OK, _FAILED = b"\x00", b"\x01"


def send_chunks(comm, aggregator: int, source) -> None:
    """A reader's side of the transfer, in order: what it sends (its items and its slices'
    entries, as JSON), each slice, then each chunk. ``source``: a function returning its
    DrainSource (called here, so that a failure building it is reported too). On a failure,
    one failure message instead of the rest (the aggregator stops waiting), then the error
    is raised here too."""
    try:
        src = source()
        intro = {"items": [list(i) for i in src.items],
                 "slices": {str(r): e.to_document() for r, e in src.entries.items()},
                 "keys": [key for key, _ in src.slices]}
    except Exception as e:
        comm.send_bytes(aggregator, _FAILED + str(e).encode("utf-8", "replace"))
        raise
    comm.send_bytes(aggregator, _OK + json.dumps(intro).encode("utf-8"))
    for _, data in src.slices:
        comm.send_bytes(aggregator, _OK + data)
    for name, key in src.items:
        try:
            data = src.fetch(name, key)
        except Exception as e:
            comm.send_bytes(aggregator, _FAILED + str(e).encode("utf-8", "replace"))
            raise
        comm.send_bytes(aggregator, _OK + data)


class RemoteChunks:
    """An aggregator's side of one reader's transfer. ``start`` receives what the reader
    sends (its items, then its manifest slices, each checked: the SHA-256 and root of its
    entry, and the entry's proof against the digest where it has one; the commit checks
    every root against the digest again), so that ``source`` holds the records its chunks
    are checked by; ``fetch`` then returns the chunks in the order the reader sends them,
    each passed through the chunk check again (it crossed the network). ``discard_rest``
    receives whatever is still coming when the aggregator stops early, so the reader is
    never left blocked in a send. ``what`` names the transfer in errors ("drain"; a partner
    replica's keeper receives with it too, tiers/replicas.py)."""

    def __init__(self, comm, reader: int, manifest: Manifest, what: str = "drain"):
        self.comm, self.reader, self.header, self.what = comm, reader, manifest, what
        self.left: int | None = None  # messages still to come after the intro
        self.source: DrainSource | None = None

    def _next(self) -> bytes:
        message = self.comm.recv_bytes(self.reader)
        if message[:1] == _FAILED:
            self.left = 0
            raise CheckpointError(
                f"{self.what}: rank {self.reader} could not read its chunks: "
                f"{message[1:].decode('utf-8', 'replace')}")
        if self.left is not None:
            self.left -= 1
        return message[1:]

    def start(self) -> DrainSource:
        intro = json.loads(self._next())
        items = [tuple(i) for i in intro["items"]]
        entries = {int(r): SliceEntry.from_document(e) for r, e in intro["slices"].items()}
        self.left = len(intro["keys"]) + len(items)
        header, documents, received = self.header, {}, []
        tree = slices.DigestTree.of(header)
        for key in intro["keys"]:
            data = self._next()
            rank = layout.parse_slice_name(key.rsplit("/", 1)[-1])
            where = f"manifest slice of rank {rank} as sent by rank {self.reader}"
            entry = entries.get(rank)
            if rank is None or entry is None or (entry.proof is not None and not slices.proves(
                    entry, rank, tree, header.digest)):
                raise CorruptCheckpointError(
                    f"{self.what}: the {where} does not belong to checkpoint {header.digest}")
            documents[rank] = slices.parse_slice(data, header, rank, where, entry)
            received.append((key, data))
        manifest = header.with_slices(documents) if header.sliced else header
        self.source = DrainSource(items, self.fetch, manifest, received, entries)
        return self.source

    def fetch(self, name: str, key: str) -> bytes:
        data = self._next()
        try:
            check_chunk(self.source.manifest.arrays[name], key, data,
                        f"as sent by rank {self.reader}")
        except CorruptCheckpointError as e:
            raise CorruptCheckpointError(
                f"{self.what}: {e}: it arrived damaged at the rank receiving it") from None
        return data

    def discard_rest(self) -> None:
        try:
            if self.left is None:  # the intro never arrived: it says how much follows
                intro = json.loads(self._next())
                self.left = len(intro["keys"]) + len(intro["items"])
            while self.left > 0:
                self._next()
        except (CheckpointError, ValueError, KeyError):
            return
