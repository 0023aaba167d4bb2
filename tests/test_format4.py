"""Format version 4: sub-chunked chunk files (Zarr sharding_indexed, format/subchunks.py).

The rule that picks inner shapes, the geometry, reads of part of a chunk (bit-exact against
numpy on random regions, reading only the inner chunks touched), stock readers, a damaged
inner chunk named by array, chunk and inner chunk, and the version 3 checkpoint written by
the previous release (tests/data/v3) still restoring. The N -> M matrix over {1..4}^2 on
row and column layouts of sub-chunked arrays is in tests/workers/matrix_worker.py.
"""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import tierpoint
from tierpoint.format import subchunks
from tierpoint.format.subchunks import ShardGeometry, inner_chunk_shape
from tierpoint.trust.verify import verify_checkpoint

HERE = os.path.dirname(__file__)


# ---- the rule and the geometry (pure) ----------------------------------------------------

@given(st.lists(st.integers(1, 600), min_size=1, max_size=3), st.sampled_from([1, 2, 4, 8]))
@settings(max_examples=300, deadline=None)
def test_inner_shapes_divide_the_chunk_and_stay_in_bounds(chunk, itemsize):
    inner = inner_chunk_shape(chunk, itemsize)
    nbytes = math.prod(chunk) * itemsize
    if nbytes <= subchunks.MIN_INNER_BYTES:
        assert inner is None
        return
    if inner is None:  # no dimension had a small factor
        return
    assert all(c % i == 0 for c, i in zip(chunk, inner))
    inner_bytes = math.prod(inner) * itemsize
    assert inner_bytes < nbytes
    # Not cut below half the floor (one cut at most halves... or thirds, fifths, sevenths).
    assert inner_bytes * 7 > min(subchunks.MIN_INNER_BYTES, nbytes)


def test_a_big_chunk_is_cut_along_both_axes_into_megabyte_pieces():
    # A 32 MiB float32 chunk of a row-sharded weight: pieces of at most 1 MiB along both
    # axes, so a quarter band of columns and a half band of rows are whole pieces.
    inner = inner_chunk_shape((2048, 4096), 4)
    assert inner == (512, 512)
    assert inner_chunk_shape((1000, 10), 4) is None  # 40 KB: a plain chunk file
    assert inner_chunk_shape((1 << 20,), 4) == (1 << 16,)  # 1-D: contiguous slabs


def test_geometry_places_every_inner_chunk_and_its_index():
    g = ShardGeometry((6, 8), (3, 2), 4)
    assert g.grid == (2, 4) and g.count == 8 and g.stride == 3 * 2 * 4 + 4
    assert g.file_bytes == 8 * g.stride + 8 * 16 + 4
    assert g.box(5) == (slice(3, 6), slice(2, 4))
    assert g.overlapping((slice(0, 6), slice(3, 5))) == [1, 2, 5, 6]
    assert g.runs([1, 2, 5, 6, 7]) == [(1, 2), (5, 3)]
    index = g.index()
    entries = np.frombuffer(index[:-4], dtype="<u8").reshape(8, 2)
    assert entries[:, 0].tolist() == [n * g.stride for n in range(8)]
    assert set(entries[:, 1].tolist()) == {g.stride}
    assert subchunks.check_index(g, b"\0" * g.index_offset + index) is None
    damaged = bytearray(b"\0" * g.index_offset + index)
    damaged[g.index_offset + 3] ^= 1
    assert "crc32c" in subchunks.check_index(g, damaged)


# ---- one process: saves, reads of parts, stock readers ------------------------------------

def _global(shape, dtype=torch.float32):
    return torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape).to(dtype)


def _codec(step_dir, name):
    with open(os.path.join(step_dir, name, "zarr.json")) as f:
        return json.load(f)["codecs"][0]


def test_reads_of_parts_read_only_the_inner_chunks_they_touch(tmp_path):
    ck = tierpoint.Checkpointer(str(tmp_path), run="r")
    w = _global((512, 1024))  # one 2 MiB chunk of 16 inner chunks of 128 x 256
    ck.save(1, {"w": w}, blocking=True)
    codec = _codec(ck.step_dir(1), "w")
    assert codec["name"] == "sharding_indexed"
    assert codec["configuration"]["chunk_shape"] == [128, 256]
    from tierpoint.restore import execute
    seen = []
    original = execute.fill_leaves  # returns the bytes a restore's read phase read

    def counting(*args, **kw):
        n = original(*args, **kw)
        seen.append(n)
        return n
    execute.fill_leaves = counting
    try:
        band = ck.restore({"w": tierpoint.Shard(torch.zeros(512, 256), (512, 1024), (0, 256))})
        whole = ck.restore({"w": torch.zeros(512, 1024)})
    finally:
        execute.fill_leaves = original
    assert torch.equal(band["w"].data, w[:, 256:512]) and torch.equal(whole["w"], w)
    stride = 128 * 256 * 4 + 4
    assert seen == [4 * stride, os.path.getsize(os.path.join(ck.step_dir(1), "w", "c.0.0"))]
    ck.close()


@given(st.data())
@settings(max_examples=25, deadline=None)
def test_any_region_of_a_sub_chunked_array_reads_back_bit_exactly(tmp_path_factory, data):
    rows, cols = data.draw(st.integers(70, 300)), data.draw(st.integers(70, 300))
    dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.int64]))
    root = tmp_path_factory.mktemp("region")
    w = _global((rows, cols), dtype)
    ck = tierpoint.Checkpointer(str(root), run="r")
    ck.save(1, {"w": w}, blocking=True)
    r0 = data.draw(st.integers(0, rows - 1))
    r1 = data.draw(st.integers(r0 + 1, rows))
    c0 = data.draw(st.integers(0, cols - 1))
    c1 = data.draw(st.integers(c0 + 1, cols))
    out = ck.restore({"w": tierpoint.Shard(torch.zeros(r1 - r0, c1 - c0, dtype=dtype),
                                           (rows, cols), (r0, c0))})
    assert torch.equal(out["w"].data, w[r0:r1, c0:c1])
    ck.close()
    shutil.rmtree(root)


def test_stock_zarr_and_tensorstore_read_sub_chunked_arrays(tmp_path):
    import tensorstore as ts
    import zarr
    ck = tierpoint.Checkpointer(str(tmp_path), run="r")
    w, b = _global((300, 500)), _global((256, 300), torch.bfloat16)
    v = _global((70000,), torch.float64)
    ck.save(1, {"w": w, "b": b, "v": v}, blocking=True)
    step = ck.step_dir(1)
    for name in ("w", "b", "v"):
        assert _codec(step, name)["name"] == "sharding_indexed"
    assert np.array_equal(zarr.open_array(os.path.join(step, "w"), mode="r")[:], w.numpy())
    assert np.array_equal(zarr.open_array(os.path.join(step, "v"), mode="r")[100:70000],
                          v.numpy()[100:])
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file",
                                                     "path": os.path.join(step, "b")}}).result()
    got = np.asarray(store[10:200, 33:250].read().result())  # bfloat16 is stored as uint16
    assert np.array_equal(got, b.view(torch.int16).numpy().view(np.uint16)[10:200, 33:250])
    ck.close()


def test_a_damaged_inner_chunk_is_named_and_parts_it_does_not_touch_still_read(tmp_path):
    ck = tierpoint.Checkpointer(str(tmp_path), run="r")
    w = _global((512, 1024))
    ck.save(1, {"w": w}, blocking=True)
    path = os.path.join(ck.step_dir(1), "w", "c.0.0")
    g = ShardGeometry((512, 1024), (128, 256), 4)
    with open(path, "r+b") as f:  # one bit of inner chunk (1, 2), i.e. number 6
        f.seek(6 * g.stride + 1000)
        byte = f.read(1)
        f.seek(6 * g.stride + 1000)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(tierpoint.CorruptCheckpointError,
                       match=r"array 'w': chunk c\.0\.0 .* inner chunk 1\.2 fails its crc32c"):
        ck.restore({"w": tierpoint.Shard(torch.zeros(512, 256), (512, 1024), (0, 512))})
    with pytest.raises(tierpoint.CorruptCheckpointError, match=r"inner chunk 1\.2"):
        ck.restore({"w": torch.zeros(512, 1024)})
    # A band that does not touch the damaged inner chunk reads (each inner chunk it reads is
    # checked against its own crc32c); verify reports the damage by array and chunk.
    band = ck.restore({"w": tierpoint.Shard(torch.zeros(512, 256), (512, 1024), (0, 0))})
    assert torch.equal(band["w"].data, w[:, :256])
    report = verify_checkpoint(ck.step_dir(1))
    assert not report.ok
    assert any("inner chunk 1.2" in str(p) and "c.0.0" in str(p) for p in report.problems)
    ck.close()


def test_a_damaged_shard_index_fails_a_whole_read_and_is_reported_by_verify(tmp_path):
    ck = tierpoint.Checkpointer(str(tmp_path), run="r")
    w = _global((512, 1024))
    ck.save(1, {"w": w}, blocking=True)
    path = os.path.join(ck.step_dir(1), "w", "c.0.0")
    with open(path, "r+b") as f:
        f.seek(-10, os.SEEK_END)
        byte = f.read(1)
        f.seek(-10, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(tierpoint.CorruptCheckpointError,
                       match=r"array 'w': chunk c\.0\.0 .*shard index fails its crc32c"):
        ck.restore({"w": torch.zeros(512, 1024)})  # read whole: inner chunks, then the index
    band = ck.restore({"w": tierpoint.Shard(torch.zeros(512, 256), (512, 1024), (0, 0))})
    assert torch.equal(band["w"].data, w[:, :256])  # a part reads no index
    report = verify_checkpoint(ck.step_dir(1))
    assert any("shard index" in str(p) for p in report.problems)
    ck.close()


# ---- the previous release's format --------------------------------------------------------

def _old_expected():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "make_old_checkpoint", os.path.join(HERE, "data", "make_old_checkpoint.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.expected


def _old_fixture(tmp_path, version: int):
    """A copy of tests/data/v<version> (root, step directory), checked to be that version
    and to verify."""
    root = tmp_path / f"v{version}"
    shutil.copytree(os.path.join(HERE, "data", f"v{version}"), root)
    step = root / "old" / "step_00000003"
    with open(step / ".tierpoint-commit") as f:
        assert json.load(f)["format_version"] == version
    assert verify_checkpoint(str(step)).ok
    return root, step


def test_a_version_3_checkpoint_still_restores_and_verifies(tmp_path):
    root, step = _old_fixture(tmp_path, 3)
    expected = _old_expected()
    ck = tierpoint.Checkpointer(str(root), run="old")
    w, b, r = expected("w"), expected("b"), expected("r")
    out = ck.restore({"model": {"w": torch.zeros(12, 10), "b": torch.zeros(8, 6, dtype=torch.bfloat16)},
                      "r": torch.zeros(5, dtype=torch.int64), "step": 0})
    assert torch.equal(out["model"]["w"], w) and torch.equal(out["model"]["b"], b)
    assert torch.equal(out["r"], r) and out["step"] == 3
    # Onto another sharding: columns of the row-sharded w, rows of the column-sharded b.
    part = ck.restore({"model": {"w": tierpoint.Shard(torch.zeros(12, 4), (12, 10), (0, 3)),
                                 "b": tierpoint.Shard(torch.zeros(3, 6, dtype=torch.bfloat16),
                                                      (8, 6), (5, 0))}}, strict=False)
    assert torch.equal(part["model"]["w"].data, w[:, 3:7])
    assert torch.equal(part["model"]["b"].data, b[5:8])
    # A save in the same run writes the current format next to the old one.
    ck.save(4, {"model": {"w": w, "b": b}, "r": r, "step": 4}, blocking=True)
    with open(os.path.join(ck.step_dir(4), ".tierpoint-commit")) as f:
        assert json.load(f)["format_version"] == tierpoint.FORMAT_VERSION == 5
    assert ck.steps() == [3, 4]
    ck.close()


def test_a_version_4_checkpoint_with_sha256_chunk_hashes_restores_and_verifies(tmp_path):
    """tests/data/v4: written by the last release of format version 4 (SHA-256 chunk hashes,
    sub-chunked "big"); version 5 hashes with BLAKE3, and both must verify and restore."""
    root, step = _old_fixture(tmp_path, 4)
    expected = _old_expected()
    with open(step / ".tierpoint-slices" / "r00000000.json") as f:
        record = json.load(f)["arrays"]["big"]["c.0.0"]
    assert "hash" not in record and len(record["sha256"]) == 64  # the legacy spelling
    ck = tierpoint.Checkpointer(str(root), run="old")
    big = expected("big")
    out = ck.restore({"model": {"w": torch.zeros(12, 10),
                                "b": torch.zeros(8, 6, dtype=torch.bfloat16)},
                      "r": torch.zeros(5, dtype=torch.int64), "big": torch.zeros(256, 160),
                      "step": 0})
    assert torch.equal(out["model"]["w"], expected("w")) and torch.equal(out["big"], big)
    assert torch.equal(out["model"]["b"], expected("b")) and torch.equal(out["r"], expected("r"))
    # A column band of the row-chunked, sub-chunked array: read by byte range.
    part = ck.restore({"big": tierpoint.Shard(torch.zeros(256, 40), (256, 160), (0, 80))},
                      strict=False)
    assert torch.equal(part["big"].data, big[:, 80:120])
    # A flipped payload byte in a SHA-256-hashed file is found by verify.
    with open(step / "big" / "c.1.0", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    report = verify_checkpoint(str(step))
    assert not report.ok and any("big" in str(p) and "c.1.0" in str(p) for p in report.problems)
    ck.close()


def test_version_5_records_blake3_and_verify_checks_it(tmp_path):
    """A save records each chunk file's BLAKE3 under "hash", its algorithm named in the
    value (the legacy "sha256" key is not written), and the checkpoint verifies."""
    import blake3
    ck = tierpoint.Checkpointer(str(tmp_path), run="h")
    ck.save(1, {"w": _global((8, 16)), "v": _global((8, 16)) + 1}, blocking=True)
    step = ck.step_dir(1)
    with open(os.path.join(step, ".tierpoint-slices", "r00000000.json")) as f:
        record = json.load(f)["arrays"]["w"]["c.0.0"]
    with open(os.path.join(step, "w", "c.0.0"), "rb") as f:
        data = f.read()
    assert record["hash"] == "blake3:" + blake3.blake3(data).hexdigest()
    assert "sha256" not in record
    assert verify_checkpoint(step).ok
    ck.close()
