"""The drain's pipeline, in one process: the order the pools are fed in, the local reads
ahead of the writers (in order, concurrent, bounded, a failure raised in its place), and a
part written in batches whose first commit reaches the disk before the entries end. (The
capacity tier's reads: tests/test_capacity_read.py.)"""
import os
import threading
from types import SimpleNamespace

import pytest

import tierpoint
from tierpoint.format import layout
from tierpoint.format.manifest import ChunkRecord
from tierpoint.tiers.capacity import write_part
from tierpoint.tiers.drain import DrainSource, interleaved, read_ahead


def test_interleaved_feeds_the_pools_evenly_and_keeps_each_pools_order():
    sizes = {f"k{i}": 1 + (i * 7) % 5 for i in range(40)}
    pool = {k: (0 if i < 30 else 1 + i % 2) for i, k in enumerate(sizes)}  # runs of one pool
    out = interleaved(list(sizes), pool.get, sizes.get)
    assert sorted(out) == sorted(sizes)
    for p in (0, 1, 2):
        assert [k for k in out if pool[k] == p] == [k for k in sizes if pool[k] == p]
    given = {0: 0, 1: 0, 2: 0}
    left = {p: sum(sizes[k] for k in sizes if pool[k] == p) for p in given}
    for k in out:  # while a pool still has items, none runs ahead of it by more than an item
        given[pool[k]] += sizes[k]
        behind = [p for p in given if given[p] < left[p]]
        assert all(given[q] - given[p] <= max(sizes.values()) for p in behind for q in given)


class Manifestish:
    """Just what read_ahead reads of a manifest: each chunk's record (its bytes)."""

    def __init__(self, sizes):
        records = {k: ChunkRecord(nbytes=n, crc32c=0, hash="", fingerprint="", writers=(0,))
                   for k, n in sizes.items()}
        self.arrays = {"a": SimpleNamespace(chunks=records)}


def source(sizes, fetch, concurrent=True):
    return DrainSource([("a", k) for k in sizes], fetch, Manifestish(sizes),
                       concurrent=concurrent)


def test_read_ahead_yields_in_order_reads_concurrently_and_stays_in_its_window():
    sizes = {f"c.{i}": 10 for i in range(12)}
    both_reading = threading.Barrier(2, timeout=30)  # the first two reads must overlap
    lock, yielded, issued, worst = threading.Lock(), [0], [0], [0]

    def fetch(name, key):
        with lock:
            issued[0] += 1
            worst[0] = max(worst[0], issued[0] - yielded[0])
        if key in ("c.0", "c.1"):
            both_reading.wait()
        return key.encode()

    got = []
    for name, key, data in read_ahead(source(sizes, fetch), threads=3, window_bytes=40):
        assert data == key.encode()
        got.append(key)
        with lock:
            yielded[0] += 1
    assert got == list(sizes)
    assert 2 <= worst[0] <= 4  # 40 bytes of 10-byte chunks issued and not yet handed on


def test_read_ahead_raises_a_failed_read_in_its_place():
    sizes = {f"c.{i}": 10 for i in range(8)}

    def fetch(name, key):
        if key == "c.3":
            raise tierpoint.CorruptCheckpointError(f"array 'a': chunk {key} is damaged")
        return b"x"

    got = []
    with pytest.raises(tierpoint.CorruptCheckpointError, match=r"chunk c\.3"):
        for _, key, _ in read_ahead(source(sizes, fetch), threads=2, window_bytes=30):
            got.append(key)
    assert got == ["c.0", "c.1", "c.2"]


def test_chunks_from_another_reader_are_taken_in_order_on_the_consumers_thread():
    sizes = {f"c.{i}": 10 for i in range(5)}
    threads = []

    def fetch(name, key):
        threads.append(threading.get_ident())
        return b"x"
    keys = [k for _, k, _ in read_ahead(source(sizes, fetch, concurrent=False), threads=4,
                                        window_bytes=1000)]
    assert keys == list(sizes) and set(threads) == {threading.get_ident()}


def test_a_part_is_committed_in_batches_the_first_on_disk_before_the_entries_end(tmp_path):
    import tensorstore as ts
    part = str(tmp_path / "part")
    values = {f"a/c.{i}": bytes([i]) * (150 << 10) for i in range(9)}  # above the inline limit
    on_disk_before_end = []

    def entries():
        for n, (key, value) in enumerate(values.items()):
            if n == len(values) - 1:  # batches of 300 KiB: the first has committed by now
                on_disk_before_end.append(sum(len(f) for _, _, f in os.walk(part)))
            yield key, value
    assert write_part(part, entries(), batch_bytes=300 << 10) == sum(map(len, values.values()))
    assert on_disk_before_end[0] >= 2  # the OCDBT manifest and a data file
    kv = ts.KvStore.open(layout.ocdbt_spec(part)).result()
    assert sorted(k.decode() for k in kv.list().result()) == sorted(values)
    for key, value in values.items():
        assert kv.read(key).result().value == value


def test_each_batch_is_reported_as_soon_as_it_commits_with_only_complete_files(tmp_path):
    """``committed`` (the S3 tier's upload of the data files) runs when a batch's commit
    ends, while the next batch is still being filled (the entries wait for it: before, it
    ran only once the next batch was full), and never while a commit writes: every data
    file it sees keeps its size to the end."""
    import tensorstore as ts
    part = str(tmp_path / "part")
    values = {f"a/c.{i}": bytes([i]) * (150 << 10) for i in range(8)}  # 2 per 300 KiB batch
    reported = threading.Event()
    seen: list[dict] = []

    def committed():
        files = {}
        for base, _, names in os.walk(os.path.join(part, "d")):
            files.update({os.path.join(base, n): os.path.getsize(os.path.join(base, n))
                          for n in names})
        seen.append(files)
        reported.set()

    def entries():
        for n, (key, value) in enumerate(values.items()):
            if n == 3:  # the second batch is half full: the first must have been reported
                assert reported.wait(timeout=60), "the first batch was not reported"
            yield key, value
    assert write_part(part, entries(), batch_bytes=300 << 10,
                      committed=committed) == sum(map(len, values.values()))
    assert len(seen) == 4 and all(seen)  # after each full batch (none is left for the end)
    for files in seen:
        for path, size in files.items():
            assert os.path.getsize(path) == size, path
    kv = ts.KvStore.open(layout.ocdbt_spec(part)).result()
    for key, value in values.items():
        assert kv.read(key).result().value == value


def test_a_failed_entry_fails_the_part(tmp_path):
    def entries():
        yield "a/c.0", b"x" * (200 << 10)
        yield "a/c.1", b"y" * (200 << 10)  # the first batch is committing now
        raise OSError("the local chunk could not be read")
    with pytest.raises(OSError, match="could not be read"):
        write_part(str(tmp_path / "part"), entries(), batch_bytes=300 << 10)
