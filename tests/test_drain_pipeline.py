"""The drain's pipeline and the capacity tier's read-ahead, in one process: the order the
pools are fed in, the local reads ahead of the writers (in order, concurrent, bounded, a
failure raised in its place), a part written in batches whose first commit reaches the disk
before the entries end, and a restore from the capacity tier alone that reads ahead and
still names a damaged chunk."""
import os
import threading
from types import SimpleNamespace

import pytest
import torch

import tierpoint
from tierpoint.format import layout
from tierpoint.format.manifest import ChunkRecord
from tierpoint.tiers.capacity import ReadAhead, write_part
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


def test_a_failed_entry_fails_the_part(tmp_path):
    def entries():
        yield "a/c.0", b"x" * (200 << 10)
        yield "a/c.1", b"y" * (200 << 10)  # the first batch is committing now
        raise OSError("the local chunk could not be read")
    with pytest.raises(OSError, match="could not be read"):
        write_part(str(tmp_path / "part"), entries(), batch_bytes=300 << 10)


def test_read_ahead_of_a_copy_issues_within_its_window_and_hands_each_read_out_once():
    issued = []

    def issue(request):
        issued.append(request)
        return request[0]
    whole = [((f"a/c.{i}", None), n) for i, n in enumerate((100, 30, 30))]
    parts = [(("a/c.3", (0, 20)), 20), (("a/c.3", (40, 10)), 10)]  # two inner chunks' ranges
    ahead = ReadAhead(issue, whole + parts, window_bytes=60)
    assert issued == [("a/c.0", None)]  # always one, even above the window
    assert ahead.take(("a/c.2", None)) is None  # not issued yet: the caller reads it itself
    assert ahead.take(("a/c.0", None)) == "a/c.0"  # and c.2 is never issued
    assert issued == [("a/c.0", None), ("a/c.1", None), ("a/c.3", (0, 20)), ("a/c.3", (40, 10))]
    assert ahead.take(("a/c.0", None)) is None  # handed out once
    assert [ahead.take(r) for r in (("a/c.3", (40, 10)), ("a/c.1", None), ("a/c.3", (0, 20)))] \
        == ["a/c.3", "a/c.1", "a/c.3"]
    assert len(issued) == 4


def test_restore_from_the_capacity_tier_alone_reads_ahead_and_names_a_damaged_chunk(tmp_path):
    (tmp_path / "pool").mkdir()
    pools = [str(tmp_path / "pool")]
    state = {f"w{i}": torch.arange(i * 10_000, (i + 1) * 10_000, dtype=torch.float32)
             .reshape(100, 100) for i in range(6)}
    ck = tierpoint.Checkpointer(str(tmp_path / "ssd"), persistent=pools, run="r",
                                chunk_bytes=16 << 10)  # 4 chunks per array
    ck.save(1, state).wait()
    ck.drain(1)
    ck.close(drain_newest=False)
    remote = tierpoint.Checkpointer(str(tmp_path / "empty"), persistent=pools, run="r")
    out = remote.restore({k: torch.zeros(100, 100) for k in state})
    assert all(torch.equal(out[k], v) for k, v in state.items())
    # Damage one chunk's value in the part's data file: the read-ahead hands over the bytes,
    # the chunk check names the chunk.
    wanted = state["w4"][25:50].numpy().tobytes()
    found = [(os.path.join(base, f), open(os.path.join(base, f), "rb").read().find(wanted))
             for base, _, files in os.walk(tmp_path / "pool" / "r" / ".parts") for f in files]
    path, at = next((p, a) for p, a in found if a >= 0)
    with open(path, "r+b") as f:
        f.seek(at + 8)
        f.write(b"\xff")
    with pytest.raises(tierpoint.CorruptCheckpointError, match=r"'w4'.*chunk c\.1\.0.*crc32c"):
        remote.restore({k: torch.zeros(100, 100) for k in state})
    remote.close(drain_newest=False)


def test_a_band_of_sub_chunked_chunks_restores_from_the_capacity_tier_alone(tmp_path):
    """Format version 4: a reader of part of a sub-chunked chunk reads ahead only the inner
    chunks' byte ranges it needs, and gets exactly its band."""
    from tierpoint.tiers import capacity
    (tmp_path / "pool").mkdir()
    pools = [str(tmp_path / "pool")]
    full = {f"w{i}": torch.arange(i, i + 512 * 256, dtype=torch.float32).reshape(512, 256)
            for i in range(3)}  # 512 KiB each: one sub-chunked chunk per array
    ck = tierpoint.Checkpointer(str(tmp_path / "ssd"), persistent=pools, run="r")
    ck.save(1, full).wait()
    ck.drain(1)
    ck.close(drain_newest=False)
    asked = []
    real = capacity.ReadAhead.__init__

    def spy(self, issue, requests, window_bytes):
        asked.extend(requests)
        real(self, issue, requests, window_bytes)
    capacity.ReadAhead.__init__ = spy
    try:
        remote = tierpoint.Checkpointer(str(tmp_path / "empty"), persistent=pools, run="r")
        band = {k: tierpoint.Shard(torch.zeros(64, 256), (512, 256), (128, 0)) for k in full}
        remote.restore(band)
        remote.close(drain_newest=False)
    finally:
        capacity.ReadAhead.__init__ = real
    assert all(torch.equal(band[k].data, v[128:192]) for k, v in full.items())
    assert asked and all(span is not None for (_, span), _ in asked)  # byte ranges only
    assert sum(n for _, n in asked) <= 0.5 * sum(v.numel() * 4 for v in full.values())
