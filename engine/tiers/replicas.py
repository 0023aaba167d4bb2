"""Partner replicas (``Policy(replicas=1)``): which domain keeps a replica of which
(``partners``, pure), and the transfer of one committed step directory to its partner's
leader over the communicator: ``send_replica`` on the saved domain's leader,
``receive_replica`` on the partner's, which writes it into its own local tier as a replica
directory (format/layout.py ``replica_dir``) committed under its own marker. The
orchestration (the replication thread, its channel, warnings, audit, the ring) is
tiers/replication.py.

The bytes travel only over the communicator: the sender reads its own node's directory, the
receiver writes its own; no rank opens another node's directory. What is sent, in order:
a preface (JSON: the original commit marker and the manifest and zarr.json files, as
base64, so their bytes arrive unchanged), then the drain's transfer (``send_chunks``:
the chunks this domain's marker says it holds, ``holdings.expected_here``, and its manifest
slices), which the receiver takes with the drain's ``RemoteChunks``: every slice checked
against the header and the digest, every chunk through the one chunk check, on arrival.

Invariants: a replica exists exactly when its marker does, and the marker is written after
every file and directory of it is durable; a transfer cut short on either side leaves a
directory without a marker (removed by ``LocalTier.sweep_replicas``) and never blocks the
other side (a sender that fails sends one failure message; a receiver that fails receives
the rest of the stream first, ``RemoteChunks.discard_rest``).
"""
from __future__ import annotations

import base64
import json
import os

from ..errors import CheckpointError, CorruptCheckpointError
from ..format import layout
from ..runtime.faults import inject
from ..runtime.fsutil import fsync_dir, makedirs_durable, write_file
from .drain import RemoteChunks, Throttle, local_source, send_chunks
from .local import LocalCopy, LocalTier


def partners(nodes: list[str]) -> dict[int, int]:
    """Saved domain -> the domain that keeps its replica, from each domain's node name
    (``nodes[d]``): the next domain in domain order, cyclically, that lives on another node.
    A domain with no such domain (every domain on one node) has no entry: no replica."""
    out = {}
    for d, node in enumerate(nodes):
        for k in range(1, len(nodes)):
            other = (d + k) % len(nodes)
            if nodes[other] != node:
                out[d] = other
                break
    return out


def transfer_rounds(partner_of: dict[int, int]) -> list[list[tuple[int, int]]]:
    """The transfers (saved domain, keeper) of ``partner_of`` in rounds in which no domain
    takes part twice (a greedy edge colouring, in domain order): a ring of D domains in 2
    rounds (3 when D is odd), at most 2k - 1 rounds where a domain takes part in k transfers.

    A leader that takes its transfers one at a time (below MPI_THREAD_MULTIPLE) takes them
    in round order. That never deadlocks: the unfinished transfer of the lowest round has
    both ends done with every earlier round and no other transfer in its own, so both are at
    it. And it waits at most for the rounds before, where domain order around a ring made
    the last domain wait for every other transfer in turn (a chain of D)."""
    busy: list[set[int]] = []
    rounds: list[list[tuple[int, int]]] = []
    for saved, keeper in sorted(partner_of.items()):
        i = next((i for i, taken in enumerate(busy)
                  if saved not in taken and keeper not in taken), len(busy))
        if i == len(busy):
            busy.append(set())
            rounds.append([])
        busy[i].update((saved, keeper))
        rounds[i].append((saved, keeper))
    return rounds


def replica_items(copy: LocalCopy) -> list[tuple[str, str]]:
    """The (array, chunk key) a domain's copy sends: the chunks its marker declares it holds
    (those one of its domain's ranks wrote), every array in manifest order."""
    return [(name, key) for name, array in copy.manifest.arrays.items()
            for key in array.chunks if copy.expected(array, key)]


def _read_inside(step_dir: str, relative: str) -> bytes:
    """A file of the step directory, never through a link (``layout.open_inside`` for those
    in its subdirectories)."""
    fd = (layout.open_inside(step_dir, relative) if os.sep in relative else
          os.open(os.path.join(step_dir, relative), os.O_RDONLY | os.O_NOFOLLOW))
    with open(fd, "rb") as f:
        return f.read()


def _preface(copy: LocalCopy) -> bytes:
    """The original marker, and the manifest and every zarr.json of ``copy``'s directory."""
    files = {layout.MANIFEST_FILE: _read_inside(copy.path, layout.MANIFEST_FILE)}
    for base, dirs, names in os.walk(copy.path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # the slices travel apart
        if layout.ZARR_JSON in names:
            rel = os.path.relpath(os.path.join(base, layout.ZARR_JSON), copy.path)
            files[rel.replace(os.sep, "/")] = _read_inside(copy.path, rel)
    return layout.encode_json({
        "marker": _b64(_read_inside(copy.path, layout.COMMIT_FILE)),
        "files": {key: _b64(data) for key, data in sorted(files.items())}})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def send_replica(comm, partner: int, open_copy, *, rank: int,
                 rate: float | None = None) -> int:
    """The saved domain leader's side: send its committed copy (``open_copy()``: its step
    directory opened with every slice it holds) to rank ``partner``, reading each chunk
    through the chunk check, at most ``rate`` bytes/s (``Throttle``). Returns the chunk bytes
    sent; a failure (opening the copy included) is sent to the partner, which then stops,
    and raised here."""
    try:
        copy = open_copy()
        preface = _preface(copy)
    except Exception as e:
        comm.send_bytes(partner, layout.encode_json({"error": f"{type(e).__name__}: {e}"}))
        raise
    comm.send_bytes(partner, preface)
    throttle, sent = Throttle(rate), [0]
    step = copy.manifest.step

    def fetch(name: str, key: str) -> bytes:
        inject("replicate-send", rank=rank, step=step)
        data = copy.read_chunk(copy.manifest.arrays[name], key)
        throttle.account(len(data))
        sent[0] += len(data)
        return data
    ranks = sorted(copy.slice_ranks()) if copy.manifest.sliced else []
    send_chunks(comm, partner, lambda: local_source(copy, replica_items(copy), fetch, ranks))
    return sent[0]


class ReplicaWriter:
    """Writes one replica directory: ``prepare`` (whatever is there is retired first),
    ``file`` per file (fsynced), ``sync`` (the directories), ``commit`` (the marker)."""

    def __init__(self, tier: LocalTier, run: str, step: int, domain: int):
        self.tier, self.run, self.step, self.domain = tier, run, step, domain
        self.path = tier.replica_path(run, step, domain)
        self._dirs: set[str] = set()

    def prepare(self) -> None:
        self.tier.retire_replica(self.run, self.step, self.domain)
        self._dirs.update(makedirs_durable(self.path))
        self._dirs.add(self.path)

    def file(self, key: str, data: bytes) -> None:
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts) or layout.COMMIT_FILE in parts:
            raise CorruptCheckpointError(
                f"replica of step {self.step}: the file name {key!r} sent for {self.path} "
                "would leave the replica directory or replace its marker; refused")
        path = os.path.join(self.path, *parts)
        self._dirs.update(makedirs_durable(os.path.dirname(path)))
        self._dirs.add(os.path.dirname(path))
        write_file(path, [data], fsync=True)

    def sync(self) -> None:
        for directory in sorted(self._dirs, key=len, reverse=True):
            fsync_dir(directory)

    def commit(self, marker: dict) -> None:
        layout.write_replica_marker(self.path, marker)


def receive_replica(comm, sender: int, tier: LocalTier, run: str, step: int, *,
                    domain: int, node: str, writer_domain: int, rank: int) -> dict:
    """The partner leader's side: receive saved domain ``domain``'s copy of ``step`` (on
    node ``node``) from rank ``sender`` and commit it as a replica in ``tier``, marked as
    written by ``writer_domain``. Returns {"path", "bytes", "digest"}; on any failure the rest of the
    stream is received and dropped, the directory removed (best effort: else swept), and a
    CheckpointError raised."""
    stream = RemoteChunks(comm, sender, None, what="replica")
    writer = ReplicaWriter(tier, run, step, domain)
    try:
        try:
            preface = json.loads(comm.recv_bytes(sender))
        except ValueError as e:
            raise CorruptCheckpointError(f"the replica's preface from rank {sender} is not "
                                         f"JSON: {e}") from None
        if "error" in preface:
            stream.left = 0  # nothing follows a failed preface
            raise CheckpointError(f"rank {sender} could not send its copy: {preface['error']}")
        files = {k: base64.b64decode(v) for k, v in preface["files"].items()}
        original = base64.b64decode(preface["marker"])
        marker = json.loads(original)
        if not isinstance(marker, dict) or marker.get("domain") != domain:
            raise CorruptCheckpointError(
                f"the copy rank {sender} sent declares domain "
                f"{marker.get('domain') if isinstance(marker, dict) else None}, not {domain}")

        def read(name: str) -> bytes:
            if name == layout.COMMIT_FILE:
                return original
            if name in files:
                return files[name]
            raise FileNotFoundError(name)
        header = layout.read_header(writer.path, read)  # marker's SHA-256, version, structure
        if header.step != step or header.run != run:
            raise CorruptCheckpointError(
                f"the copy rank {sender} sent is step {header.step} of run {header.run!r}")
        stream.header = header
        writer.prepare()
        source = stream.start()  # the slices, each checked against the header and digest
        for key, data in [*files.items(), *source.slices]:
            writer.file(key, data)
        total = 0
        for name, key in source.items:
            data = stream.fetch(name, key)  # the chunk check again, on arrival
            writer.file(f"{header.arrays[name].path}/{key}", data)
            total += len(data)
        writer.sync()
        inject("replicate-commit", rank=rank, step=step)
        writer.commit(layout.replica_marker(marker, domain=domain, node=node,
                                            writer_domain=writer_domain))
        return {"path": writer.path, "bytes": total, "digest": header.digest}
    except Exception:
        stream.discard_rest()
        try:
            tier.retire_replica(run, step, domain)
        except (OSError, CheckpointError):
            pass  # without its marker it does not exist; the next sweep removes it
        raise
