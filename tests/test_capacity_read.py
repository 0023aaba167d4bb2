"""The capacity tier's read side (tiers/capacity_read.py), in one process: the index walk
finds every key of an OCDBT database where TensorStore reads it (a tree of several levels,
inline and indirect values, absent keys); a restore from the capacity tier alone reads by the
index and never through the kvstore, reads only the inner chunks a band needs, still names a
damaged chunk; and an index that is misread or cannot be read costs time, never a byte."""
from __future__ import annotations

import os

import pytest
import tensorstore as ts
import torch

import tierpoint
from tierpoint.tiers import capacity_read
from tierpoint.tiers.capacity import CapacityTier
from tierpoint.tiers.capacity_read import ValueIndex


def _bytes_at(located) -> bytes:
    if located.inline is not None:
        return located.inline
    with open(located.path, "rb") as f:
        f.seek(located.offset)
        return f.read(located.length)


def test_the_index_walk_finds_every_key_where_tensorstore_reads_it(tmp_path):
    # Small nodes and a low inline limit: a tree of several levels (its keys relative to the
    # common prefixes above them), values both inline and in two data files.
    spec = {"driver": "ocdbt", "base": f"file://{tmp_path}/",
            "config": {"max_decoded_node_bytes": 600, "max_inline_value_bytes": 8}}
    kv = ts.KvStore.open(spec).result()
    values = {}
    for batch in range(2):
        txn = ts.Transaction()
        for i in range(batch, 300, 2):
            key = f"p{i:03d}/c.{i % 7}.{i % 3}"
            values[key] = bytes([i % 251]) * (5 if i % 4 == 0 else 40 + i)
            kv.with_transaction(txn)[key] = values[key]
        txn.commit_sync()
    base = ts.KvStore.open(f"file://{tmp_path}/").result()
    assert ts.ocdbt.dump(base).result()["versions"][-1]["root_height"] >= 2
    index = ValueIndex(str(tmp_path))
    keys = sorted(values)
    index.locate(keys[::3])  # two walks: the second looks up only what the first did not
    index.locate(keys + ["p000/c.9.9", "zzz", "a"])
    for key in keys:
        located = index.get(key)
        assert located is not None, key
        assert _bytes_at(located) == values[key] == kv.read(key).result().value
    assert sum(index.get(k).inline is not None for k in keys) == sum(
        len(v) <= 8 for v in values.values()) > 0
    assert index.get("p000/c.9.9") is None and index.get("zzz") is None
    assert index.get("a") is None and index.get("p151/c.4.1") is not None  # a key not asked
    # for before is looked up when it is asked for


def _drained(tmp_path, state, pools=1, **kw):
    for p in range(pools):
        (tmp_path / f"pool{p}").mkdir()
    names = [str(tmp_path / f"pool{p}") for p in range(pools)]
    ck = tierpoint.Checkpointer(str(tmp_path / "ssd"), persistent=names, run="r", **kw)
    ck.save(1, state).wait()
    ck.drain(1)
    ck.close(drain_newest=False)
    return names


def test_every_chunk_of_a_drained_copy_is_located_in_a_part_on_its_pool(tmp_path):
    state = {f"w{i}": torch.arange(i, i + 300 * 500, dtype=torch.float32).reshape(300, 500)
             for i in range(5)}
    state["tiny"] = torch.tensor([1.5])  # 8 bytes with its trailer: inline in the B-tree
    pools = _drained(tmp_path, state, pools=2, chunk_bytes=64 << 10)
    copy = CapacityTier(pools).open("r", 1)
    keys = [f"{a.path}/{k}" for a in copy.manifest.arrays.values() for k in a.chunks]
    copy.read_ahead([])  # nothing asked: nothing walked
    index = copy._index
    index.locate(keys)
    parts = [os.path.realpath(p) for p in pools]
    on_pool = set()
    for key in keys:
        located = index.get(key)
        assert _bytes_at(located) == copy._kv.read(key).result().value, key
        if located.inline is None:
            on_pool.add(next(n for n, p in enumerate(parts)
                             if os.path.realpath(located.path).startswith(p + os.sep)))
    assert on_pool == {0, 1}
    assert index.get(f"{copy.manifest.arrays['tiny'].path}/c.0").inline is not None


class Spy:
    """Counts the calls of a CapacityCopy method and the bytes they return."""

    def __init__(self, monkeypatch, name):
        self.calls, self.bytes = 0, 0
        real = getattr(capacity_read.CapacityCopy, name)

        def spy(copy, *args, **kw):
            self.calls += 1
            n = real(copy, *args, **kw)
            self.bytes += n
            return n
        monkeypatch.setattr(capacity_read.CapacityCopy, name, spy)


def _state(n=6):
    return {f"w{i}": torch.arange(i * 10_000, (i + 1) * 10_000, dtype=torch.float32)
            .reshape(100, 100) for i in range(n)}


def test_a_restore_from_the_capacity_tier_alone_reads_by_the_index_and_names_damage(
        tmp_path, monkeypatch):
    state = _state()
    pools = _drained(tmp_path, state, chunk_bytes=16 << 10)  # 4 chunks per array
    through_kv = Spy(monkeypatch, "_read_into_from_kv")
    read = Spy(monkeypatch, "read_into")
    remote = tierpoint.Checkpointer(str(tmp_path / "empty"), persistent=pools, run="r")
    out = remote.restore({k: torch.zeros(100, 100) for k in state})
    assert all(torch.equal(out[k], v) for k, v in state.items())
    assert read.calls == 6 * 4 and through_kv.calls == 0
    # Damage one chunk's value in the part's data file: the index's read fails its check,
    # the kvstore's read of it too, and the error names the chunk.
    wanted = state["w4"][25:50].numpy().tobytes()
    found = [(os.path.join(base, f), open(os.path.join(base, f), "rb").read().find(wanted))
             for base, _, files in os.walk(tmp_path / "pool0" / "r" / ".parts") for f in files]
    path, at = next((p, a) for p, a in found if a >= 0)
    with open(path, "r+b") as f:
        f.seek(at + 8)
        f.write(b"\xff")
    with pytest.raises(tierpoint.CorruptCheckpointError, match=r"'w4'.*chunk c\.1\.0.*crc32c"):
        remote.restore({k: torch.zeros(100, 100) for k in state})
    assert through_kv.calls == 1
    remote.close(drain_newest=False)


def test_a_band_of_sub_chunked_chunks_reads_only_the_inner_chunks_it_needs(tmp_path,
                                                                          monkeypatch):
    """Format version 4: a reader of part of a sub-chunked chunk reads only the inner chunks'
    byte ranges it needs, from the data files, and gets exactly its band."""
    full = {f"w{i}": torch.arange(i, i + 512 * 256, dtype=torch.float32).reshape(512, 256)
            for i in range(3)}  # 512 KiB each: one sub-chunked chunk per array
    pools = _drained(tmp_path, full)
    through_kv = Spy(monkeypatch, "_read_into_from_kv")
    read = Spy(monkeypatch, "read_into")
    remote = tierpoint.Checkpointer(str(tmp_path / "empty"), persistent=pools, run="r")
    band = {k: tierpoint.Shard(torch.zeros(64, 256), (512, 256), (128, 0)) for k in full}
    remote.restore(band)
    remote.close(drain_newest=False)
    assert all(torch.equal(band[k].data, v[128:192]) for k, v in full.items())
    assert through_kv.calls == 0 and read.calls == 3
    assert 0 < read.bytes <= 0.5 * sum(v.numel() * 4 for v in full.values())


@pytest.mark.parametrize("fault", ["misplaced", "unreadable", "undumpable"])
def test_a_misread_index_costs_time_never_a_byte(tmp_path, monkeypatch, fault):
    """Every read the index misleads fails its check (or cannot be made) and is read again
    through the kvstore; a dump that cannot be had locates nothing."""
    state = _state(4)  # plain chunk files, read straight into the target
    for name in ("band", "whole"):  # a sub-chunked chunk each: read in part, and whole
        state[name] = torch.arange(512 * 256, dtype=torch.float32).reshape(512, 256)
    pools = _drained(tmp_path, state)
    real = ValueIndex._reference
    if fault == "misplaced":  # every value one byte later than it is
        monkeypatch.setattr(ValueIndex, "_reference", lambda self, ref: capacity_read.Located(
            real(self, ref).length, real(self, ref).path, real(self, ref).offset + 1))
    elif fault == "unreadable":
        monkeypatch.setattr(ValueIndex, "_reference", lambda self, ref: capacity_read.Located(
            real(self, ref).length, str(tmp_path / "no-such-file"), 0))
    else:
        def broken(self, keys):
            raise KeyError("entries")
        monkeypatch.setattr(ValueIndex, "_walk", broken)
    through_kv = Spy(monkeypatch, "_read_into_from_kv")
    remote = tierpoint.Checkpointer(str(tmp_path / "empty"), persistent=pools, run="r")
    template = {k: torch.zeros_like(v) for k, v in state.items()}
    template["band"] = tierpoint.Shard(torch.zeros(512, 64), (512, 256), (0, 64))
    out = remote.restore(template)
    remote.close(drain_newest=False)
    assert all(torch.equal(out[k], v) for k, v in state.items() if k != "band")
    assert torch.equal(out["band"].data, state["band"][:, 64:128])
    chunks = sum(len(a.chunks) for a in CapacityTier(pools).open("r", 1).manifest.arrays.values())
    assert through_kv.calls == chunks  # every chunk read again through the kvstore


def test_the_index_of_a_copy_is_shared_by_the_copies_with_more_slices(tmp_path):
    pools = _drained(tmp_path, _state(2))
    header = CapacityTier(pools).open("r", 1, ranks=())
    assert header.with_slices()._index is header._index


def test_a_reference_outside_the_database_directory_is_left_to_the_kvstore(tmp_path):
    index = ValueIndex(str(tmp_path))
    inside = index._reference("value:part00000p001/:d/5161ca1f:66807:33555076")
    assert inside == capacity_read.Located(33555076, str(tmp_path / "part00000p001/d/5161ca1f"),
                                           66807)
    assert index._reference("value:../other/:d/x:0:5") is None
    assert index._reference("value::/etc/passwd:0:5") is None
    with pytest.raises(ValueError):
        index._reference("btreenode::d/x:0:5")
