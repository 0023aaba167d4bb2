"""Integrity: layout-independent fingerprints, the checkpoint digest, and `tierpoint verify`
against damage to every kind of file (flip a byte, truncate, delete), on both tiers."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tierpoint
from tierpoint.format import layout
from tierpoint.cli import main as cli
from tierpoint.format import integrity
from tierpoint.format.integrity import checkpoint_digest, merkle_root, slices_digest
from tierpoint.format.manifest import ArrayRecord, ChunkRecord
from tierpoint.kernels import combine_fingerprints, fingerprint_box, fingerprint_reference

DTYPES = [np.uint8, np.int16, np.uint16, np.float32, np.float64, np.int64, np.bool_]


@st.composite
def boxes(draw):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    offset = tuple(draw(st.integers(0, 50)) for _ in shape)
    raw = np.random.default_rng(seed).integers(0, 256, size=(int(np.prod(shape)) *
                                                             np.dtype(dtype).itemsize),
                                               dtype=np.uint8)
    values = raw.view(np.uint8 if dtype == np.bool_ else dtype).reshape(shape)
    return (values & 1).astype(np.bool_) if dtype == np.bool_ else values, offset


@settings(max_examples=60, deadline=None)
@given(boxes(), st.booleans())
def test_fingerprint_equals_its_reference(box, strided):
    values, offset = box
    if strided and values.ndim:
        values = np.flip(values, axis=0)  # a negative stride: the kernel reads any layout
    assert fingerprint_box(values, offset) == fingerprint_reference(values, offset)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 9), st.data())
def test_fingerprint_of_any_partition_is_the_whole_arrays(rows, cols, data):
    a = np.random.default_rng(rows * 31 + cols).standard_normal((rows, cols)).astype(np.float32)
    cut_r = sorted(set(data.draw(st.lists(st.integers(1, rows), max_size=3)) + [rows]))
    cut_c = sorted(set(data.draw(st.lists(st.integers(1, cols), max_size=3)) + [cols]))
    parts, r0 = [], 0
    for r1 in cut_r:
        c0 = 0
        for c1 in cut_c:
            parts.append(fingerprint_box(a[r0:r1, c0:c1], (r0, c0)))
            c0 = c1
        r0 = r1
    assert combine_fingerprints(parts) == fingerprint_box(a, (0, 0))
    b = a.copy()
    b[rows // 2, cols // 2] = np.nextafter(b[rows // 2, cols // 2], np.float32(9))
    assert fingerprint_box(b, (0, 0)) != fingerprint_box(a, (0, 0))  # one ulp is seen
    if rows > 1:  # so is moving values: the fingerprint covers positions
        assert fingerprint_box(a[::-1], (0, 0)) != fingerprint_box(a, (0, 0)) or \
            np.array_equal(a[::-1], a)


def _typed(arrays: dict) -> dict:
    """Array records (format.manifest) of {name: {path, chunks: {key: sha256}}}."""
    return {name: ArrayRecord(name, a["path"], (name,), "float32", (2,), (1,), "", (),
                              {k: ChunkRecord(8, 0, sha, "", (0,))
                               for k, sha in a["chunks"].items()})
            for name, a in arrays.items()}


def test_the_digest_changes_with_any_chunk_and_with_the_order():
    arrays = {"a": {"path": "a", "chunks": {"c.0": "11", "c.1": "22"}},
              "b": {"path": "b", "chunks": {"c.0": "33"}}}
    base = checkpoint_digest(_typed(arrays))
    changed = json.loads(json.dumps(arrays))
    changed["b"]["chunks"]["c.0"] = "34"
    assert checkpoint_digest(_typed(changed)) != base
    moved = {"a": {"path": "a", "chunks": {"c.0": "22", "c.1": "11"}}, "b": arrays["b"]}
    assert checkpoint_digest(_typed(moved)) != base
    assert merkle_root([b"x", b"y"]) != merkle_root([b"y", b"x"])


# ---- verify --------------------------------------------------------------------------------

def save_sample(root):
    state = {"model": {"w": torch.arange(600, dtype=torch.float32).reshape(30, 20),
                       "e": torch.arange(70).to(torch.bfloat16)},
             "step": 5}
    with tierpoint.Checkpointer(str(root), run="r", chunk_bytes=1024) as ck:
        ck.save(5, state).wait()
        return ck.step_dir(5)


def verify_json(*args):
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli(["verify", *args, "--json"])
    return rc, json.loads(out.getvalue())


def damage(path, how):
    if how == "delete":
        os.remove(path)
    elif how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(max(0, os.path.getsize(path) - 5))
    else:  # flip one byte in the middle
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x5A]))


def test_an_intact_checkpoint_verifies_and_records_its_integrity(tmp_path):
    step_dir = save_sample(tmp_path)
    rc, [report] = verify_json(step_dir)
    assert rc == 0 and report["ok"] and report["chunks_checked"] >= 4, report
    manifest = layout.load_manifest(step_dir)  # the header
    typed = layout.read_manifest(step_dir)  # with every slice's records
    roots = [typed.slices[r].root for r in range(typed.world_size)]
    assert report["digest"] == manifest["digest"] == slices_digest(roots)
    # One rank: its slice records every chunk, and its root is over all of them.
    assert roots[0] == integrity.slice_root({a.path: {k: c.hash for k, c in a.chunks.items()}
                                             for a in typed.arrays.values() if a.chunks})
    marker = json.load(open(os.path.join(step_dir, layout.COMMIT_FILE)))
    assert marker["digest"] == manifest["digest"] and marker["format_version"] == layout.FORMAT_VERSION == 5
    assert all("chunks" not in e for e in manifest["arrays"].values())
    assert all(len(a.fingerprint) == 16 for a in typed.arrays.values())


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("kind", ["chunk", "manifest", "zarr.json", "marker", "slice"])
def test_verify_names_the_damaged_file(tmp_path, kind, how):
    step_dir = save_sample(tmp_path)
    target = {"chunk": os.path.join(step_dir, "model", "w", "c.1.0"),
              "manifest": os.path.join(step_dir, layout.MANIFEST_FILE),
              "zarr.json": os.path.join(step_dir, "model", "e", layout.ZARR_JSON),
              "marker": os.path.join(step_dir, layout.COMMIT_FILE),
              "slice": os.path.join(step_dir, layout.slice_key(0))}[kind]
    damage(target, how)
    rc, [report] = verify_json(step_dir)
    assert rc == 1 and not report["ok"]
    files = {p["file"] for p in report["problems"]}
    assert target in files, report["problems"]
    if kind == "chunk":
        assert {(p["array"], p["chunk"]) for p in report["problems"]} == {("model/w", "c.1.0")}
    if kind == "zarr.json":
        assert {p["array"] for p in report["problems"]} == {"model/e"}
    # The tool's text output names the same file, and restore refuses a damaged checkpoint.
    assert cli(["verify", step_dir]) == 1
    if kind in ("chunk", "manifest", "marker") and how != "flip" or kind in ("chunk", "slice"):
        with tierpoint.Checkpointer(str(tmp_path), run="r") as ck:
            with pytest.raises(tierpoint.CheckpointError) as e:
                ck.restore({"model": {"w": torch.zeros(30, 20),
                                      "e": torch.zeros(70, dtype=torch.bfloat16)}}, step=5)
        if kind == "slice":  # a damaged slice is named, with its rank, by restore too
            assert isinstance(e.value, tierpoint.CorruptCheckpointError)
            assert "manifest slice of rank 0" in str(e.value) and target in str(e.value)


def test_verify_all_covers_both_tiers(tmp_path):
    (tmp_path / "pool").mkdir()
    ck = tierpoint.Checkpointer(str(tmp_path / "local"), persistent=str(tmp_path / "pool"),
                                run="t", policy=tierpoint.Policy(keep_local=3, drain_every=1),
                                chunk_bytes=1024)
    for step in (1, 2):
        ck.save(step, {"w": torch.arange(900, dtype=torch.float64).reshape(30, 30) + step})
    ck.close()
    rc, reports = verify_json("--all", str(tmp_path / "local"), "--persistent",
                              str(tmp_path / "pool"))
    assert rc == 0 and sorted((r["tier"], r["step"]) for r in reports) == [
        ("capacity", 1), ("capacity", 2), ("local", 1), ("local", 2)]
    cap = [r for r in reports if r["tier"] == "capacity"]
    loc = {r["step"]: r for r in reports if r["tier"] == "local"}
    assert all(r["digest"] == loc[r["step"]]["digest"] and r["chunks_checked"] > 4 for r in cap)
    damage(os.path.join(str(tmp_path / "local"), "t", "step_00000002", "w", "c.0.0"), "flip")
    rc, reports = verify_json("--all", str(tmp_path / "local"), "--persistent",
                              str(tmp_path / "pool"))
    assert rc == 1 and [r["step"] for r in reports if not r["ok"]] == [2]


def reseal(step_dir: str, edit_header=None, edit_slice=None) -> None:
    """Rewrite a one-rank checkpoint's slice, header and marker consistently (no key needed
    for that): the edited slice's root, the digest and the marker all follow."""
    import hashlib
    from tierpoint.format import slices
    mpath = os.path.join(step_dir, layout.MANIFEST_FILE)
    manifest = json.load(open(mpath))
    if edit_slice is not None:
        spath = os.path.join(step_dir, layout.slice_key(0))
        document = json.load(open(spath))
        edit_slice(document)
        data = slices.encode(document)
        open(spath, "wb").write(data)
        paths = {n: a["path"] for n, a in manifest["arrays"].items()}
        digest, [entry] = slices.seal([slices.entry_of(data, document, paths)])
        manifest["digest"], manifest["slices"] = digest, {"0": entry.to_document()}
    if edit_header is not None:
        edit_header(manifest["arrays"]["model/w"])
    data = layout.encode_json(manifest)
    open(mpath, "wb").write(data)
    marker = json.load(open(os.path.join(step_dir, layout.COMMIT_FILE)))
    marker["manifest_sha256"] = hashlib.sha256(data).hexdigest()
    marker["digest"] = manifest["digest"]
    open(os.path.join(step_dir, layout.COMMIT_FILE), "wb").write(layout.encode_json(marker))


def _extra_chunk(document):
    chunks = document["arrays"]["model/w"]
    chunks["c.99.0"] = chunks["c.0.0"]


@pytest.mark.parametrize("edit, slice_edit, message", [
    (lambda a: a.update(shape=[10**9, 10**9], chunk_shape=[1, 1]), None, "claims"),
    (lambda a: a.update(path="../../outside"), None, "leave the checkpoint"),
    (None, _extra_chunk, "not in its chunk grid"),
])
def test_a_malicious_manifest_is_refused_before_use(tmp_path, edit, slice_edit, message):
    # Someone rewrites the manifest (a slice, the header) and its marker consistently: the
    # fields are still validated before anything is allocated or opened.
    step_dir = save_sample(tmp_path)
    reseal(step_dir, edit, slice_edit)
    rc, [report] = verify_json(step_dir)
    assert rc == 1 and any(message in p["problem"] for p in report["problems"]), report
    with tierpoint.Checkpointer(str(tmp_path), run="r") as ck:
        with pytest.raises(tierpoint.CorruptCheckpointError, match=message):
            ck.restore({"model": {"w": torch.zeros(30, 20)}}, step=5, strict=False)


def test_lineage_across_runs(tmp_path):
    import subprocess
    w = torch.arange(12, dtype=torch.float32)
    a = tierpoint.Checkpointer(str(tmp_path), run="a")
    a.save(1, {"w": w}).wait()
    a.save(2, {"w": w + 1}, metadata={"config": {"lr": 0.1}}).wait()
    a.restore({"w": torch.zeros(12)})  # resume: later saves of anyone carrying this descend
    b = tierpoint.Checkpointer(str(tmp_path), run="b")
    b.parent = a.parent  # run b starts from run a's step 2
    b.save(10, {"w": w + 10}).wait()
    b.restore({"w": torch.zeros(12)}, step=10)
    c = tierpoint.Checkpointer(str(tmp_path), run="c")
    c.parent = b.parent
    c.save(20, {"w": w + 20}).wait()
    for ck in (a, b, c):
        ck.close()
    m = layout.load_manifest(str(tmp_path / "c" / "step_00000020"))
    lin = m["lineage"]
    assert lin["parent"]["run"] == "b" and lin["parent"]["step"] == 10
    assert lin["hosts"] and lin["user"] and m["metadata"] == {}
    top = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(__file__)).stdout.strip()
    if top:  # the tests run from a git checkout: its commit is recorded
        assert lin["code"]["git_commit"] == top and isinstance(lin["code"]["git_dirty"], bool)
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["lineage", str(tmp_path / "c" / "step_00000020"), "--json"]) == 0
    entries = json.loads(out.getvalue())
    assert [(e["run"], e["step"]) for e in entries] == [("c", 20), ("b", 10), ("a", 2)]
    assert all(e["digest_ok"] for e in entries)
    assert entries[2]["digest"] == layout.load_manifest(
        str(tmp_path / "a" / "step_00000002"))["digest"]
    # An ancestor changed after the fact: its digest no longer matches what the child recorded.
    damage(os.path.join(str(tmp_path / "a" / "step_00000002"), layout.MANIFEST_FILE), "flip")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli(["lineage", str(tmp_path / "c" / "step_00000020")]) == 2
    assert "step_00000002" in err.getvalue() and "does not match" in err.getvalue()


def test_links_inside_a_checkpoint_are_not_followed_out_of_it(tmp_path):
    step_dir = save_sample(tmp_path / "ck")
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 4000)
    chunk = os.path.join(step_dir, "model", "w", "c.0.0")
    os.remove(chunk)
    os.symlink(secret, chunk)  # a chunk file replaced by a link to a file outside
    rc, [report] = verify_json(step_dir)
    assert rc == 1 and any("symbolic link" in p["problem"] and p["chunk"] == "c.0.0"
                           for p in report["problems"])
    with tierpoint.Checkpointer(str(tmp_path / "ck"), run="r") as ck:
        with pytest.raises(tierpoint.CorruptCheckpointError, match="symbolic link"):
            ck.restore({"model": {"w": torch.zeros(30, 20)}}, step=5, strict=False)
    # A whole array directory swapped for a link to somewhere else is refused as well.
    outside = tmp_path / "elsewhere"
    shutil.copytree(os.path.join(step_dir, "model", "e"), outside)
    shutil.rmtree(os.path.join(step_dir, "model", "e"))
    os.symlink(outside, os.path.join(step_dir, "model", "e"))
    rc, [report] = verify_json(step_dir)
    assert any("outside the checkpoint" in p["problem"] and p["array"] == "model/e"
               for p in report["problems"])


def test_chunk_hash_records_name_their_algorithm_and_old_records_still_read():
    import blake3
    from tierpoint.format import chunkhash
    data = [np.arange(1000, dtype=np.float32), b"\x01\x02\x03\x04"]
    raw = data[0].tobytes() + data[1]
    new = chunkhash.ChunkHasher(chunkhash.algorithm_for(5))
    old = chunkhash.ChunkHasher(chunkhash.algorithm_for(4))
    for b in data:
        new.update(b)
        old.update(b)
    assert new.value() == "blake3:" + blake3.blake3(raw).hexdigest()
    assert old.value() == hashlib.sha256(raw).hexdigest()
    for value, key in ((new.value(), "hash"), (old.value(), "sha256")):
        record: dict = {}
        chunkhash.write(record, value)
        assert record == {key: value} and chunkhash.read(record) == value
        assert chunkhash.well_formed(value)
        assert chunkhash.hash_of([raw], like=value) == value
        assert chunkhash.hash_of([raw + b"x"], like=value) != value
    assert chunkhash.algorithm_of(new.value()) == "blake3"
    assert chunkhash.algorithm_of(old.value()) == "sha256"
    assert not chunkhash.well_formed("blake3:" + "0" * 63) and not chunkhash.well_formed(7)
    assert chunkhash.read({}) == ""
