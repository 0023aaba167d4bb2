"""The collective staging phase: copy a committed local checkpoint to the capacity tier as
few large files (see the capacity section of ``layout.py``).

Who calls what, in order (``Checkpointer.drain`` runs them as agreed phases):
1. every rank: ``plan_drain`` (pure) says which chunks each aggregator copies: a chunk goes
   to the aggregator of the storage domain (node-local directory) of its first writer, so
   every chunk is copied exactly once and read from the aggregator's own node;
2. every node's reader (its first rank) reads its chunks, verifying each crc32c; an
   aggregator (by default every reader is one) writes the chunks of the nodes it serves,
   which other readers send it over the communicator, with ``write_aggregator_parts``: one
   OCDBT database per pool, the pools concurrently, in a few large commits each;
3. the coordinator: ``merge_parts`` merges the parts into the head database without copying
   data; every rank then ``verify_capacity``-s a share of the chunks through a fresh reader;
   then the coordinator writes the manifest and the commit marker. Until the marker exists the capacity copy
   does not exist; an interrupted drain leaves only files that the next drain removes.
"""
from __future__ import annotations

import os
import shutil
import time

from ..format import layout
from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ..runtime.faults import inject
from ..kernels import crc32c, split_trailer

BATCH_BYTES = 512 << 20  # one OCDBT commit (held in memory until committed)
# OCDBT data file size: each commit's data is cut into files of this size, written in
# parallel. Measured here (768 MiB, 512 MiB commits): 64 MiB files wrote 0.9-1.2 GB/s, the
# 2 GiB default 0.4-0.9 GB/s. Files per part grow with its bytes / DATA_FILE_BYTES, never
# with the number of arrays or ranks.
DATA_FILE_BYTES = 64 << 20


def plan_drain(manifest: dict, reader_of_saver: list) -> dict[int, list[tuple[str, str]]]:
    """reader rank -> [(array name, chunk key)] it reads from its node's local directory.

    ``reader_of_saver[r]`` is the draining rank that can read the directory saving rank ``r``
    wrote into (that directory's leader), or None when no draining rank can (another node).
    A replicated chunk is read from the first writer's directory that can be read.
    """
    work: dict[int, list[tuple[str, str]]] = {}
    for name, entry in manifest["arrays"].items():
        for key, record in entry["chunks"].items():
            readers = [reader_of_saver[w] for w in record["writers"]
                       if reader_of_saver[w] is not None]
            if not readers:
                ranks = manifest["layout"]["ranks"]
                where = ", ".join(f"rank {w} on node {ranks[w].get('node', '?')}"
                                  for w in record["writers"])
                raise CheckpointNotFoundError(
                    f"drain: array {name!r} chunk {key} was written by {where}, and no "
                    "draining rank's local directory holds it; drain on the nodes that saved "
                    "it, or gather their directories into one first")
            work.setdefault(readers[0], []).append((name, key))
    return work


class _Throttle:
    """Keeps the average copy rate at or below ``rate`` bytes per second (None: no cap)."""

    def __init__(self, rate: float | None):
        self.rate, self.start, self.done = rate, time.monotonic(), 0

    def account(self, nbytes: int) -> None:
        self.done += nbytes
        if self.rate:
            ahead = self.done / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                time.sleep(ahead)


def _read_verified(path: str, name: str, key: str, record: dict) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    payload, stored = split_trailer(data)
    actual = crc32c(payload)
    if actual != stored or actual != record["crc32c"]:
        raise CorruptCheckpointError(
            f"drain: array {name!r} chunk {key} ({path}) fails its crc32c check; the local "
            "copy is corrupt and is not drained")
    return data


def metadata_entries(local_step_dir: str, manifest: dict):
    """(key, bytes) of every zarr.json of a local checkpoint (arrays and groups)."""
    for name in manifest["arrays"]:
        with open(os.path.join(local_step_dir, name, layout.ZARR_JSON), "rb") as f:
            yield f"{name}/{layout.ZARR_JSON}", f.read()
    for base, _, files in os.walk(local_step_dir):
        rel = os.path.relpath(base, local_step_dir)
        if layout.ZARR_JSON in files and not _is_array_dir(base):
            with open(os.path.join(base, layout.ZARR_JSON), "rb") as f:
                yield (layout.ZARR_JSON if rel == "." else f"{rel}/{layout.ZARR_JSON}"), f.read()


def _is_array_dir(directory: str) -> bool:
    try:
        with open(os.path.join(directory, layout.ZARR_JSON), "rb") as f:
            return b'"node_type":"array"' in f.read()
    except FileNotFoundError:
        return False


def read_chunk(local_step_dir: str, manifest: dict, name: str, key: str) -> bytes:
    """A chunk's encoded bytes from a local step directory, crc32c-checked."""
    record = manifest["arrays"][name]["chunks"][key]
    path = os.path.join(local_step_dir, name, key)
    try:
        return _read_verified(path, name, key, record)
    except FileNotFoundError:
        raise CheckpointNotFoundError(
            f"drain: array {name!r} chunk {key} is missing from {path}") from None


def check_chunk(manifest: dict, name: str, key: str, data: bytes) -> bytes:
    payload, stored = split_trailer(data)
    if crc32c(payload) != manifest["arrays"][name]["chunks"][key]["crc32c"] or \
            stored != manifest["arrays"][name]["chunks"][key]["crc32c"]:
        raise CorruptCheckpointError(
            f"drain: array {name!r} chunk {key} arrived damaged at its aggregator")
    return data


def write_part(part_dir: str, entries, *, rate: float | None = None,
               batch_bytes: int = BATCH_BYTES, progress=None) -> int:
    """Write ``entries`` ((key, bytes) pairs) into a new OCDBT database at ``part_dir``, in
    commits of about ``batch_bytes``; return the bytes written."""
    import tensorstore as ts
    if os.path.exists(part_dir):
        shutil.rmtree(part_dir)
    os.makedirs(part_dir)
    spec = dict(layout.ocdbt_spec(part_dir), target_data_file_size=DATA_FILE_BYTES)
    kv = ts.KvStore.open(spec).result()
    throttle = _Throttle(rate)
    txn, pending, total = ts.Transaction(), 0, 0
    for key, data in entries:
        kv.with_transaction(txn)[key] = data
        pending += len(data)
        total += len(data)
        throttle.account(len(data))
        if progress is not None:
            progress(len(data))
        if pending >= batch_bytes:
            txn.commit_sync()
            txn, pending = ts.Transaction(), 0
    txn.commit_sync()
    return total


def assign_pools(manifest: dict, items: list[tuple[str, str]], npools: int) -> dict:
    """(array, chunk key) -> pool index: largest first to the pool with the fewest bytes."""
    size = {i: manifest["arrays"][i[0]]["chunks"][i[1]]["nbytes"] for i in items}
    load = [0] * npools
    out = {}
    for item in sorted(items, key=lambda i: (-size[i], i)):
        p = min(range(npools), key=lambda j: (load[j], j))
        out[item] = p
        load[p] += size[item]
    return out


def write_aggregator_parts(pools: list[str], run: str, step: int, aggregator: int,
                           manifest: dict, sources: list, *, with_metadata: bool,
                           local_step_dir: str | None, rate: float | None = None,
                           progress=None) -> list[dict]:
    """Write one aggregator's chunks as one part per pool, the pools concurrently.

    ``sources`` is a list of (items, fetch): ``fetch(name, key)`` returns the chunk's bytes,
    called in the order of ``items`` (chunks read from this node's directory, or received
    from another node's reader in the order it sends them). One producer (this thread)
    fetches and routes each chunk to its pool's writer thread through a bounded queue.
    Returns [{"name", "path", "bytes"}] of the parts written.
    """
    import queue
    import threading

    where = assign_pools(manifest, [i for items, _ in sources for i in items], len(pools))
    used = sorted(set(where.values()) | ({0} if with_metadata else set()))
    queues = {p: queue.Queue(maxsize=4) for p in used}
    results: dict = {}
    per_part_rate = rate / len(used) if rate else None

    def drain_queue(q):
        while True:
            entry = q.get()
            if entry is None:
                return
            yield entry

    def writer(p):
        path = layout.capacity_part(pools, run, step, aggregator, p)
        try:
            results[p] = {"name": layout.capacity_part_name(aggregator, p), "path": path,
                          "bytes": write_part(path, drain_queue(queues[p]), rate=per_part_rate,
                                              progress=progress)}
        except BaseException as e:  # noqa: BLE001 - reported by the producer below
            results[p] = e
            while queues[p].get() is not None:  # keep the producer from blocking
                pass
    threads = [threading.Thread(target=writer, args=(p,), name=f"tierpoint-part{p}")
               for p in used]
    for t in threads:
        t.start()
    try:
        if with_metadata:
            for entry in metadata_entries(local_step_dir, manifest):
                queues[0].put(entry)
        for items, fetch in sources:
            for name, key in items:
                queues[where[(name, key)]].put((f"{name}/{key}", fetch(name, key)))
    finally:
        for p in used:
            queues[p].put(None)
        for t in threads:
            t.join()
    for p in used:
        if isinstance(results.get(p), BaseException):
            raise results[p]
    return [results[p] for p in used]


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
    order the reader sends them; ``discard_rest`` receives whatever is still coming when the
    aggregator stops early, so the reader is never left blocked in a send."""

    def __init__(self, comm, reader: int, manifest: dict, items):
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
        return check_chunk(self.manifest, name, key, self._next())

    def discard_rest(self) -> None:
        while self.left > 0:
            try:
                self._next()
            except CheckpointError:
                return


def merge_parts(head_dir: str, parts: dict[str, str]) -> None:
    """Link every part (name -> directory) under the head and merge their keys into the head
    database (one transaction; entries keep pointing into the parts' data files)."""
    import tensorstore as ts
    os.makedirs(head_dir, exist_ok=True)
    for name, part in parts.items():
        link = os.path.join(head_dir, name)
        if os.path.lexists(link):
            os.unlink(link)
        # Relative, between the real paths: the pools stay readable after being moved or
        # copied together (layout.py, capacity section).
        os.symlink(os.path.relpath(os.path.realpath(part), os.path.realpath(head_dir)), link)
    context = ts.Context()
    head = ts.KvStore.open(layout.ocdbt_spec(head_dir), context=context).result()
    txn = ts.Transaction()
    for name in sorted(parts):
        child = ts.KvStore.open(layout.ocdbt_spec(os.path.join(head_dir, name)),
                                context=context).result()
        child.experimental_copy_range_to(head.with_transaction(txn)).result()
    txn.commit_sync()


class CapacityReader:
    """Reads encoded chunks of a drained checkpoint through a fresh TensorStore context."""

    def __init__(self, head_dir: str):
        import tensorstore as ts
        self.head_dir = head_dir
        self._kv = ts.KvStore.open(layout.ocdbt_spec(head_dir), context=ts.Context()).result()

    def read(self, key: str) -> bytes | None:
        result = self._kv.read(key).result()
        return None if result.state == "missing" else result.value


def verify_capacity(head_dir: str, manifest: dict, share: tuple[int, int] = (0, 1), *,
                    full: bool = False, batch_bytes: int = BATCH_BYTES) -> int:
    """Check this caller's ``share`` (index, count) of a drained copy's keys through a fresh
    reader: every zarr.json must exist, and every chunk key must resolve to a value whose
    crc32c trailer (its last 4 bytes, at the recorded size) is the manifest's. The bytes were
    checked against their crc32c when they were copied, so this proves the merged index
    points at the right data; ``full=True`` re-reads and re-checksums every byte instead.
    Returns the chunks checked."""
    import tensorstore as ts
    kv = ts.KvStore.open(layout.ocdbt_spec(head_dir), context=ts.Context()).result()
    wanted = [(name, layout.ZARR_JSON, None) for name in manifest["arrays"]]
    wanted += [(name, key, rec) for name, entry in manifest["arrays"].items()
               for key, rec in entry["chunks"].items()]
    mine = wanted[share[0]::share[1]]
    checked, start = 0, 0
    while start < len(mine):
        batch, size = [], 0
        while start < len(mine) and (not batch or size < batch_bytes):
            name, key, rec = mine[start]
            if rec is None or full:
                future = kv.read(f"{name}/{key}")
            else:
                future = kv.read(f"{name}/{key}", byte_range=slice(rec["nbytes"] - 4,
                                                                   rec["nbytes"]))
            batch.append((name, key, rec, future))
            size += rec["nbytes"] if rec and full else 4
            start += 1
        for name, key, rec, future in batch:
            try:
                result = future.result()
            except Exception as e:  # noqa: BLE001 - e.g. a range past the end of the value
                raise CorruptCheckpointError(
                    f"drain: array {name!r}: {key} in the capacity copy {head_dir} cannot be "
                    f"read as recorded: {e}") from None
            if result.state == "missing":
                raise CorruptCheckpointError(
                    f"drain: array {name!r}: {key} is missing from the capacity copy {head_dir}")
            if rec is None:
                continue
            if full:
                payload, stored = split_trailer(result.value)
                ok = crc32c(payload) == rec["crc32c"] == stored
            else:
                ok = int.from_bytes(result.value, "little") == rec["crc32c"]
            if not ok:
                raise CorruptCheckpointError(
                    f"drain: array {name!r} chunk {key} in the capacity copy {head_dir} fails "
                    "its crc32c check")
            checked += 1
    return checked


def remove_uncommitted(pools: list[str], run: str, step: int) -> None:
    """Remove an interrupted drain's files of ``step`` (head without marker, all parts)."""
    head = layout.capacity_head(pools, run, step)
    if os.path.lexists(head) and not layout.is_committed(head):
        shutil.rmtree(head, ignore_errors=True)
    for parts in layout.capacity_parts_dirs(pools, run, step):
        if os.path.lexists(parts) and not layout.is_committed(head):
            shutil.rmtree(parts, ignore_errors=True)
    if os.path.lexists(head) and not layout.is_committed(head):
        raise CheckpointError(f"could not remove the interrupted drain at {head}")


def uncommitted_capacity_steps(pools: list[str], run: str) -> list[int]:
    """Steps with files on the capacity tier but no committed head: interrupted drains, or
    deletions cut short after the marker went."""
    steps = set()
    for root in [layout.run_dir(pools[0], run)] + [os.path.join(layout.run_dir(p, run),
                                                              layout.PARTS_DIR) for p in pools]:
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            continue
        steps.update(s for s in map(layout.parse_step_dir_name, names) if s is not None)
    return sorted(s for s in steps if not layout.is_committed(layout.capacity_head(pools, run, s)))


def remove_capacity_step(pools: list[str], run: str, step: int, rank: int) -> None:
    """Delete a committed capacity checkpoint: the marker first (it stops being a
    checkpoint at once), then its files."""
    layout.remove_commit_marker(layout.capacity_head(pools, run, step))
    inject("capacity-retire", rank=rank, step=step)
    remove_uncommitted(pools, run, step)


def pool_identities(pools: list[str]) -> list:
    """(device, inode) of each pool's directory, None where it is missing. A pool unmounted
    under a drain shows up as a change: writers recreate its path on the parent device."""
    out = []
    for pool in pools:
        try:
            st = os.stat(pool)
            out.append([st.st_dev, st.st_ino])
        except FileNotFoundError:
            out.append(None)
    return out


def check_pools_unchanged(pools: list[str], before: list) -> None:
    for pool, was, now in zip(pools, before, pool_identities(pools)):
        if now != was:
            state = "is gone" if now is None else "is another directory now"
            raise CheckpointError(
                f"capacity pool {pool} {state} (unmounted during the drain?); what was "
                "written there is not trusted and nothing is committed. Remount the pool; "
                "the next drain (or `tierpoint drain`) copies the step again")


def check_pools(pools: list[str]) -> None:
    """A clear error for a pool that is missing or not writable."""
    for pool in pools:
        if not os.path.isdir(pool):
            raise CheckpointError(
                f"capacity pool {pool} does not exist (or is not mounted); create it or fix "
                "the persistent= paths")
        if not os.access(pool, os.W_OK | os.X_OK):
            raise CheckpointError(f"capacity pool {pool} is not writable")
