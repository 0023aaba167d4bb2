"""The collective staging phase: copy a committed local checkpoint to the capacity tier as
few large files (see the capacity section of ``layout.py``).

Who calls what, in order (``Checkpointer.drain`` runs them as agreed phases):
1. every rank: ``plan_drain`` (pure) says which chunks each aggregator copies: a chunk goes
   to the aggregator of the storage domain (node-local directory) of its first writer, so
   every chunk is copied exactly once and read from the aggregator's own node;
2. each aggregator: ``write_aggregator_parts`` spreads its chunks over the pools and copies
   them (verifying each crc32c on the way) into one OCDBT database per pool, concurrently,
   in a few large commits each;
3. the coordinator: ``merge_parts`` merges the parts into the head database without copying
   data; every rank then ``verify_capacity``-s a share of the chunks through a fresh reader;
   then the coordinator writes the manifest and the commit marker. Until the marker exists the capacity copy
   does not exist; an interrupted drain leaves only files that the next drain removes.
"""
from __future__ import annotations

import os
import shutil
import time

from . import layout
from .errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from .kernels import crc32c, split_trailer

BATCH_BYTES = 512 << 20  # one OCDBT commit (held in memory until committed)
# OCDBT data file size: each commit's data is cut into files of this size, written in
# parallel. Measured here (768 MiB, 512 MiB commits): 64 MiB files wrote 0.9-1.2 GB/s, the
# 2 GiB default 0.4-0.9 GB/s. Files per part grow with its bytes / DATA_FILE_BYTES, never
# with the number of arrays or ranks.
DATA_FILE_BYTES = 64 << 20


def plan_drain(manifest: dict, aggregator_of_saver: list) -> dict[int, list[tuple[str, str]]]:
    """aggregator rank -> [(array name, chunk key)] it copies.

    ``aggregator_of_saver[r]`` is the draining rank that aggregates the directory saving
    rank ``r`` wrote into, or None when no draining rank can read that directory (another
    node). A replicated chunk is taken from the first writer that can be read.
    """
    work: dict[int, list[tuple[str, str]]] = {}
    for name, entry in manifest["arrays"].items():
        for key, record in entry["chunks"].items():
            aggs = [aggregator_of_saver[w] for w in record["writers"]
                    if aggregator_of_saver[w] is not None]
            if not aggs:
                ranks = manifest["layout"]["ranks"]
                where = ", ".join(f"rank {w} on node {ranks[w]['node']} ({ranks[w]['tier_dir']})"
                                  for w in record["writers"])
                raise CheckpointNotFoundError(
                    f"drain: array {name!r} chunk {key} was written by {where}, which no "
                    "draining rank can read; drain on the nodes that saved it")
            work.setdefault(aggs[0], []).append((name, key))
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


def write_part(part_dir: str, local_step_dir: str, manifest: dict,
               items: list[tuple[str, str]], *, with_metadata: bool,
               rate: float | None = None, batch_bytes: int = BATCH_BYTES,
               progress=None) -> int:
    """Copy ``items`` (and, with ``with_metadata``, every zarr.json of the checkpoint) from a
    local step directory into a new OCDBT database at ``part_dir``; return bytes copied."""
    import tensorstore as ts
    if os.path.exists(part_dir):
        shutil.rmtree(part_dir)
    os.makedirs(part_dir)
    spec = dict(layout.ocdbt_spec(part_dir), target_data_file_size=DATA_FILE_BYTES)
    kv = ts.KvStore.open(spec).result()
    throttle = _Throttle(rate)
    txn, pending, total = ts.Transaction(), 0, 0

    def put(key: str, data: bytes):
        nonlocal txn, pending, total
        kv.with_transaction(txn)[key] = data
        pending += len(data)
        total += len(data)
        throttle.account(len(data))
        if progress is not None:
            progress(len(data))
        if pending >= batch_bytes:
            txn.commit_sync()
            txn, pending = ts.Transaction(), 0

    if with_metadata:
        for name in manifest["arrays"]:
            with open(os.path.join(local_step_dir, name, layout.ZARR_JSON), "rb") as f:
                put(f"{name}/{layout.ZARR_JSON}", f.read())
        for base, _, files in os.walk(local_step_dir):
            rel = os.path.relpath(base, local_step_dir)
            if layout.ZARR_JSON in files and not _is_array_dir(base):
                with open(os.path.join(base, layout.ZARR_JSON), "rb") as f:
                    put(layout.ZARR_JSON if rel == "." else f"{rel}/{layout.ZARR_JSON}", f.read())
    for name, key in items:
        path = os.path.join(local_step_dir, name, key)
        put(f"{name}/{key}", _read_verified(path, name, key, manifest["arrays"][name]["chunks"][key]))
    txn.commit_sync()
    return total


def _is_array_dir(directory: str) -> bool:
    try:
        with open(os.path.join(directory, layout.ZARR_JSON), "rb") as f:
            return b'"node_type":"array"' in f.read()
    except FileNotFoundError:
        return False


def write_aggregator_parts(pools: list[str], run: str, step: int, aggregator: int,
                           local_step_dir: str, manifest: dict, items: list[tuple[str, str]],
                           *, with_metadata: bool, rate: float | None = None,
                           progress=None) -> list[dict]:
    """Spread one aggregator's chunks over every pool by bytes (largest first to the
    emptiest pool) and write one part per pool, concurrently, so the pools' bandwidth adds
    up. Returns [{"name", "path", "bytes"}] of the parts written."""
    from concurrent.futures import ThreadPoolExecutor
    size = {(n, k): manifest["arrays"][n]["chunks"][k]["nbytes"] for n, k in items}
    share: list[list] = [[] for _ in pools]
    load = [0] * len(pools)
    for item in sorted(items, key=lambda i: (-size[i], i)):
        p = min(range(len(pools)), key=lambda j: (load[j], j))
        share[p].append(item)
        load[p] += size[item]
    jobs = [(p, share[p]) for p in range(len(pools)) if share[p] or (with_metadata and p == 0)]
    if with_metadata and not any(p == 0 for p, _ in jobs):  # pragma: no cover - p 0 is first
        jobs.insert(0, (0, []))
    per_part_rate = rate / len(jobs) if rate else None

    def one(job):
        p, part_items = job
        path = layout.capacity_part(pools, run, step, aggregator, p)
        nbytes = write_part(path, local_step_dir, manifest, part_items,
                            with_metadata=with_metadata and p == 0, rate=per_part_rate,
                            progress=progress)
        return {"name": layout.capacity_part_name(aggregator, p), "path": path, "bytes": nbytes}
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="tierpoint-drain") as ex:
        return list(ex.map(one, jobs))


def merge_parts(head_dir: str, parts: dict[str, str]) -> None:
    """Link every part (name -> directory) under the head and merge their keys into the head
    database (one transaction; entries keep pointing into the parts' data files)."""
    import tensorstore as ts
    os.makedirs(head_dir, exist_ok=True)
    for name, part in parts.items():
        link = os.path.join(head_dir, name)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.abspath(part), link)
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


def check_pools(pools: list[str]) -> None:
    """A clear error for a pool that is missing or not writable."""
    for pool in pools:
        if not os.path.isdir(pool):
            raise CheckpointError(
                f"capacity pool {pool} does not exist (or is not mounted); create it or fix "
                "the persistent= paths")
        if not os.access(pool, os.W_OK | os.X_OK):
            raise CheckpointError(f"capacity pool {pool} is not writable")
