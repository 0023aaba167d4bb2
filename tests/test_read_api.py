"""The read API, ``tierpoint.open``: checkpoints saved by 4 real MPI ranks (tests/workers/
read_worker.py; values encode the global index and the step) read back through slices,
bit-exact, from the node-local and the capacity tier; sub-chunked arrays read only the inner
chunks a slice needs; a flipped byte is found exactly when a read touches its chunk; one
node's copy of a two-node save says which chunks are elsewhere; the version 4 fixture opens;
the README's example runs; nothing here starts MPI. An S3 capacity tier (the SeaweedFS test
server, tests/s3server.py) opens by its root URL, a run URL or a step URL like a directory,
its committed steps listed and read bit-exactly, the README's example on it too."""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch

import tierpoint
from mpirun import run_ranks
from test_format4 import _old_expected, _old_fixture
from tierpoint.format import layout
from tierpoint.format.dtypes import tensor_bits
from tierpoint.format.subchunks import ShardGeometry
from tierpoint.view.index import box_of
from workers import read_worker as RW

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
TIERS = ("local", "capacity")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """ROOT with run "r" (steps 1-3, 4 ranks, local and drained) and run "s" (2 nodes)."""
    root = tmp_path_factory.mktemp("read_api")
    assert "READ-SAVE-OK" in run_ranks(4, "read_worker.py", root, "run").stdout
    assert "READ-SAVE-OK" in run_ranks([(2, {"TIERPOINT_NODE": "n0"}),
                                        (2, {"TIERPOINT_NODE": "n1"})],
                                       "read_worker.py", root, "split").stdout
    return root


def where(root, tier) -> str:
    """The run directory of run "r" on ``tier``."""
    return str(root / ("local" if tier == "local" else "pool") / "r")


def boxes(shape, rng, count=12):
    """Indices to read: the whole array, single elements, negative and clipped bounds,
    Ellipsis, and random boxes (empty ones included)."""
    out = [..., (), tuple(0 for _ in shape), tuple(-1 for _ in shape)]
    if shape:
        out += [slice(None, 3), slice(-5, None), (..., slice(1, 2)), slice(shape[0] + 5, None),
                (slice(2, 1000),) + (0,) * (len(shape) - 1)]
    for _ in range(count):
        index = []
        for n in shape:
            lo = int(rng.integers(0, n))
            hi = int(rng.integers(lo, n + 1))
            index.append(lo if rng.random() < 0.2 else slice(lo, hi))
        out.append(tuple(index))
    return out


@pytest.mark.parametrize("tier", TIERS)
def test_slices_read_bit_exact_from_either_tier(saved, tier):
    rng = np.random.default_rng(7)
    run = tierpoint.open(where(saved, tier))  # a run directory: the newest step
    assert (run.step, run.tier, run.world_size, run.steps()) == (3, tier, 4, [1, 2, 3])
    for step in RW.STEPS:
        view = run.at(step)
        assert view.values["step"] == step and view.metadata == {"purpose": "read-api"}
        assert sorted(view) == sorted(RW.ARRAYS)
        for name, (shape, dtype, _) in RW.ARRAYS.items():
            array, want = view[name], RW.expected(name, step)
            assert (array.shape, array.dtype) == (shape, dtype)
            for index in boxes(shape, rng):
                got = array[index]
                assert isinstance(got, np.ndarray) and got.dtype == array.numpy_dtype
                assert got.shape == want[index].shape, (name, index)
                assert got.view(want.dtype).tobytes() == want[index].tobytes(), (name, index)
    bf16 = run["model/layers/1/b"][2:5, 7:31]
    assert bf16.dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("tier", TIERS)
def test_torch_reads_keep_the_saved_type_and_bits(saved, tier):
    view = tierpoint.open(where(saved, tier), step=2, torch=True)
    for name in ("model/layers/0/e", "model/layers/0/w", "opt/count", "rep"):
        shape, dtype, _ = RW.ARRAYS[name]
        index = (slice(100, 300), slice(60, 70)) if len(shape) == 2 else ...
        got = view[name][index]
        assert isinstance(got, torch.Tensor) and got.dtype == getattr(torch, dtype)
        want = RW.expected(name, 2)[index]
        assert tensor_bits(got).tobytes() == want.tobytes(), name
    # The explicit forms, whatever the view's default.
    e = tierpoint.open(where(saved, tier), step=2)["model/layers/0/e"]
    assert torch.equal(e.torch((5, slice(None))), view["model/layers/0/e"][5])
    assert np.array_equal(np.asarray(e).view(np.uint16), RW.expected("model/layers/0/e", 2))


@pytest.mark.parametrize("tier", TIERS)
def test_a_slice_of_a_sub_chunked_array_reads_only_the_inner_chunks_it_needs(saved, tier):
    for name in ("model/layers/0/w", "model/layers/0/e"):
        view = tierpoint.open(where(saved, tier), step=1)
        array = view[name]
        assert array.inner_chunk_shape is not None, name
        shape, dtype, _ = RW.ARRAYS[name]
        geometry = ShardGeometry(array.chunk_shape, array.inner_chunk_shape,
                                 np.dtype(RW.P.STORAGE[dtype]).itemsize)
        index = (slice(300, 310), slice(130, 140))  # inside one inner chunk of one chunk
        assert array.bits(index).tobytes() == RW.expected(name, 1)[index].tobytes()
        assert view.bytes_read == geometry.stride  # that inner chunk and its crc32c
        # A band across chunks touches one column of inner chunks in each.
        before = view.bytes_read
        band = (slice(None), slice(0, 8))
        assert array.bits(band).tobytes() == RW.expected(name, 1)[band].tobytes()
        chunks = math.prod(-(-n // c) for n, c in zip(shape, array.chunk_shape))
        touched_chunks = chunks // (shape[1] // array.chunk_shape[1])
        per_chunk = array.chunk_shape[0] // array.inner_chunk_shape[0]
        # Part of a file: those inner chunks; all of its inner chunks: the file, index too.
        each = geometry.file_bytes if per_chunk == geometry.count else \
            per_chunk * geometry.stride
        assert view.bytes_read - before == touched_chunks * each


def flip(path, offset) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def test_a_flipped_byte_fails_exactly_the_reads_that_touch_its_chunk(saved, tmp_path):
    local = tmp_path / "local"
    shutil.copytree(saved / "local", local)
    step = local / "r" / "step_00000003"
    # A plain chunk: model/p is a 2 x 2 grid of (15, 11) chunks.
    flip(step / "model" / "p" / "c.1.0", 40)
    view = tierpoint.open(str(local), run="r")
    p = view["model/p"]
    assert p[:15].tobytes() == RW.expected("model/p", 3)[:15].tobytes()
    assert p[15:, 11:].tobytes() == RW.expected("model/p", 3)[15:, 11:].tobytes()
    for index in ((16, 3), (slice(10, 20), slice(None)), ...):
        with pytest.raises(tierpoint.CorruptCheckpointError,
                           match=r"array 'model/p': chunk c\.1\.0 .*crc32c"):
            p[index]
    # A sub-chunked chunk: inner chunk (1, 0) of chunk c.1.0 of model/layers/0/w (rows
    # 256-511, inner chunks of 128 x 128).
    w = view["model/layers/0/w"]
    geometry = ShardGeometry(w.chunk_shape, w.inner_chunk_shape, 4)
    flip(step / "model" / "layers" / "0" / "w" / "c.1.0", 2 * geometry.stride + 100)
    good = (slice(256, 384), slice(None))  # inner chunks (0, 0) and (0, 1) of c.1.0
    assert w[good].tobytes() == RW.expected("model/layers/0/w", 3)[good].view(
        np.float32).tobytes()
    assert w[384:, 128:].tobytes() == RW.expected("model/layers/0/w", 3)[384:, 128:].view(
        np.float32).tobytes()
    with pytest.raises(tierpoint.CorruptCheckpointError,
                       match=r"array 'model/layers/0/w': chunk c\.1\.0 .*inner chunk 1\.0"):
        w[400, 5]
    # The capacity copy of the same step is intact.
    capacity = tierpoint.open(str(saved / "pool" / "r"))
    assert capacity["model/p"][16, 3] == RW.expected("model/p", 3)[16, 3].view(np.float32)


def test_a_flipped_byte_in_a_capacity_part_fails_the_reads_of_its_chunk(saved, tmp_path):
    pool = tmp_path / "pool"
    shutil.copytree(saved / "pool", pool, symlinks=True)  # the head's links are relative
    chunk = (saved / "local" / "r" / "step_00000003" / "model" / "p" / "c.0.1").read_bytes()
    parts = [os.path.join(d, f) for d, _, fs in os.walk(pool / "r" / ".parts" / "step_00000003")
             for f in fs if os.path.basename(d) == "d"]
    found = [(p, open(p, "rb").read().find(chunk)) for p in parts]
    (path, at), = [(p, i) for p, i in found if i >= 0]  # the chunk file lies in one data file
    flip(path, at + 8)
    view = tierpoint.open(str(pool / "r"), 3)
    assert view.tier == "capacity"
    want = RW.expected("model/p", 3).view(np.float32)
    assert np.array_equal(view["model/p"][:, :11], want[:, :11])  # chunks c.0.0 and c.1.0
    with pytest.raises(tierpoint.CorruptCheckpointError,
                       match=r"array 'model/p': chunk c\.0\.1 .*crc32c"):
        view["model/p"][0, 11:]


def test_one_nodes_copy_reads_its_own_chunks_and_names_the_others(saved):
    shape = RW.ARRAYS["model/layers/0/w"][0]
    view = tierpoint.open(str(saved / "split" / "n0"), run="s")
    assert view.tier == "local" and view.world_size == 4
    w = view["model/layers/0/w"]
    assert w.fingerprint is None
    assert "saving ranks 0-1 only (of 4)" in view.fingerprints_unavailable
    own = (slice(0, 512), slice(None))  # ranks 0 and 1 (node n0) wrote rows 0-511
    assert w.bits(own).tobytes() == RW.expected("model/layers/0/w", 1)[own].tobytes()
    with pytest.raises(tierpoint.CheckpointNotFoundError,
                       match=r"array 'model/layers/0/w': chunk c\.3\.0 is not in this copy.*"
                             r"rank\(s\) \[3\] on node\(s\) n1.*capacity"):
        w[shape[0] - 1]
    other = tierpoint.open(str(saved / "split" / "n1" / "s" / "step_00000001"))
    assert other["model/layers/0/w"].bits(slice(512, None)).tobytes() == \
        RW.expected("model/layers/0/w", 1)[512:].tobytes()


def test_fingerprints_and_lineage_agree_between_tiers(saved):
    local = tierpoint.open(where(saved, "local"), step=2)
    capacity = tierpoint.open(where(saved, "capacity"), step=2)
    assert local.digest == capacity.digest and local.fingerprints_unavailable is None
    for name in RW.ARRAYS:
        assert local[name].fingerprint and \
            local[name].fingerprint == capacity[name].fingerprint
    assert local["rep"].fingerprint != local.at(3)["rep"].fingerprint
    assert local.lineage == capacity.lineage and "code" in local.lineage


def test_paths_steps_and_runs_are_named_as_given(saved, tmp_path):
    root = str(saved / "local")
    assert tierpoint.open(root).run == "r"  # one run under the root
    assert tierpoint.open(root, 1, run="r").step == 1
    step_dir = os.path.join(root, "r", "step_00000002")
    assert tierpoint.open(step_dir).step == 2 and tierpoint.open(step_dir, 2).step == 2
    with pytest.raises(tierpoint.CheckpointNotFoundError, match=r"step 7 .*committed steps: 1, 2, 3"):
        tierpoint.open(root, 7, run="r")
    with pytest.raises(tierpoint.CheckpointNotFoundError, match="run 'x' is not under"):
        tierpoint.open(root, run="x")
    with pytest.raises(tierpoint.ConfigurationError, match="is one checkpoint"):
        tierpoint.open(step_dir, 3)
    with pytest.raises(tierpoint.ConfigurationError, match="is a run directory"):
        tierpoint.open(os.path.join(root, "r"), run="r")
    for run in ("a", "b"):
        shutil.copytree(step_dir, tmp_path / run / "step_00000002")
    with pytest.raises(tierpoint.ConfigurationError, match="holding the runs 'a', 'b'; pass run="):
        tierpoint.open(str(tmp_path))
    assert tierpoint.open(str(tmp_path), run="b").path == str(tmp_path / "b" / "step_00000002")
    with pytest.raises(tierpoint.CheckpointNotFoundError, match="holds no checkpoints"):
        tierpoint.open(str(saved / "split"))  # node roots, not runs
    with pytest.raises(tierpoint.CheckpointNotFoundError, match="does not exist"):
        tierpoint.open(str(saved / "nowhere"))
    with pytest.raises(KeyError, match="did you mean 'model/layers/0/w'"):
        tierpoint.open(root)["model/layers/0/ww"]


@pytest.mark.parametrize("index, message", [
    (slice(None, None, 2), "slice step 2"), (None, "index None"), ([1, 2], "a list"),
    (True, "a bool"), (np.array([1]), "a ndarray"), (1024, "index 1024 is out of bounds"),
    (-1025, "index -1025 is out of bounds"), ((1, 2, 3), "too many indices"),
    ((..., 1, ...), "single Ellipsis")])
def test_indices_that_are_not_one_box_are_index_errors(index, message):
    with pytest.raises(IndexError, match=re.escape(message)):
        box_of("model/w", (1024, 256), index)


def test_basic_indices_select_the_box_numpy_selects():
    shape = (7, 5, 3)
    values = np.arange(math.prod(shape)).reshape(shape)
    for index in [..., 2, (slice(1, 4), -1), (..., 0), (1, ..., slice(-2, None)),
                  (slice(5, 2),), (slice(-100, 100), 4, slice(None)), ()]:
        box, result = box_of("x", shape, index)
        assert values[box.slices()].reshape(result).tolist() == values[index].tolist(), index


def test_the_version_4_fixture_opens_and_reads(tmp_path):
    root, step = _old_fixture(tmp_path, 4)
    expected = _old_expected()
    view = tierpoint.open(str(root))
    assert (view.format_version, view.step, view.values["step"]) == (4, 3, 3)
    assert view["big"].inner_chunk_shape is not None
    assert torch.equal(view["big"].torch((slice(100, 150), slice(80, 120))),
                       expected("big")[100:150, 80:120])
    assert torch.equal(view["model/b"].torch()[:, 2:5], expected("b")[:, 2:5])
    assert np.array_equal(view["model/w"][3], expected("w")[3].numpy())
    assert view["model/w"].fingerprint and view.fingerprints_unavailable is None


def test_reading_starts_no_mpi(saved):
    code = ("import sys, tierpoint; v = tierpoint.open(sys.argv[1]); "
            "v['model/layers/0/w'][5:9, 1]; v['model/layers/0/e'].torch(3); "
            "print(sorted(m for m in sys.modules if m.startswith('mpi4py')))")
    for tier in TIERS:
        out = subprocess.run([sys.executable, "-c", code, where(saved, tier)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]"


def readme_example() -> str:
    text = open(README).read()
    section = text.split("## Reading a checkpoint for analysis", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_compares_a_layer_across_three_steps(saved, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example().replace("/pool/ckpt/my-run", where(saved, "capacity")))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    # Layer 0's w is 1000 * row + column + step / 4: each step adds 0.25 to every element.
    assert [ln.split()[:2] for ln in lines] == [["step", "1"], ["step", "2"], ["step", "3"]], lines
    assert [float(ln.split("max |change|")[1].split()[0]) for ln in lines[1:]] == [0.25, 0.25]


# ---- an S3 capacity tier: roots, runs and steps by URL ------------------------------------

@pytest.fixture(scope="module")
def on_s3(s3_server, tmp_path_factory):
    """The root URL (``s3://BUCKET/PREFIX``, this module's own prefix) of an S3 capacity tier
    holding run "r" (steps 1-3 of read_worker's arrays, saved by one process and drained),
    run "q" (step 5) and, under "r", the manifest object of a drain cut short before its
    commit (step 4, no commit object). Saved once for the module: the AWS settings are
    pointed at the server here as ``s3_env`` does for each test (which reads with them)."""
    from s3server import _point_at, unique_prefix
    url = s3_server.url(unique_prefix("read"))
    local = tmp_path_factory.mktemp("read_s3")
    with pytest.MonkeyPatch.context() as env:
        _point_at(s3_server, env)
        for run, steps in (("r", RW.STEPS), ("q", (5,))):
            ck = tierpoint.Checkpointer(str(local / "local"), run=run, persistent=url,
                                        policy=tierpoint.Policy(keep_local=3, drain_every=1))
            for step in steps:
                ck.save(step, RW.state(step, 0, 1), metadata={"purpose": "read-api"}).wait()
            ck.wait()
            assert ck.capacity_steps() == list(steps)
            ck.close(drain_newest=False)
    key = url[len(f"s3://{s3_server.bucket}/"):] + f"/r/step_00000004/{layout.MANIFEST_FILE}"
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=b"{}")
    return url


def test_an_s3_root_run_or_step_url_opens_like_a_directory(on_s3, s3_env, saved):
    rng = np.random.default_rng(11)
    run = tierpoint.open(on_s3, run="r")  # the root URL and run=: the newest committed step
    assert (run.step, run.tier, run.steps()) == (3, "s3", [1, 2, 3])  # step 4: no commit
    assert run.path == f"{on_s3}/r/step_00000003"
    for url in (f"{on_s3}/r", f"{on_s3}/r/"):  # a run URL
        assert tierpoint.open(url).path == run.path and tierpoint.open(url, 1).step == 1
    one = tierpoint.open(f"{on_s3}/r/step_00000002")  # a step URL: its run's steps too
    assert (one.step, one.steps(), one.at().step, one.at(1).step) == (2, [1, 2, 3], 3, 1)
    assert tierpoint.open(on_s3, run="q").step == 5
    for step in RW.STEPS:
        view = run.at(step)
        assert view.values["step"] == step and view.metadata == {"purpose": "read-api"}
        for name, (shape, dtype, _) in RW.ARRAYS.items():
            array, want = view[name], RW.expected(name, step)
            assert (array.shape, array.dtype) == (shape, dtype)
            for index in boxes(shape, rng, count=3):
                got = array[index]
                assert got.dtype == array.numpy_dtype and got.shape == want[index].shape
                assert got.view(want.dtype).tobytes() == want[index].tobytes(), (name, index)
    # Saved by one process here, by 4 ranks there: the same values, the same fingerprints.
    local = tierpoint.open(where(saved, "local"), step=2)
    for name in RW.ARRAYS:
        assert run.at(2)[name].fingerprint == local[name].fingerprint, name
    e = tierpoint.open(f"{on_s3}/r", 2, torch=True)["model/layers/0/e"][100:300, 60:70]
    assert isinstance(e, torch.Tensor) and e.dtype == torch.bfloat16
    assert tensor_bits(e).tobytes() == RW.expected("model/layers/0/e", 2)[100:300, 60:70].tobytes()


def test_s3_urls_that_name_nothing_committed_say_what_is_there(on_s3, s3_env):
    run = f"{on_s3}/r"
    with pytest.raises(tierpoint.ConfigurationError,
                       match=r"holding the runs 'q', 'r'; pass run="):
        tierpoint.open(on_s3)
    for step in (7, 4):  # 4 has objects but no commit object
        with pytest.raises(tierpoint.CheckpointNotFoundError,
                           match=f"step {step} is not a committed checkpoint in "
                                 f"{re.escape(run)} \\(committed steps: 1, 2, 3\\)"):
            tierpoint.open(on_s3, step, run="r")
    with pytest.raises(tierpoint.CheckpointNotFoundError, match="step 4 is not a committed"):
        tierpoint.open(run).at(4)
    with pytest.raises(tierpoint.CheckpointNotFoundError,
                       match=f"run 'x' is not under {re.escape(on_s3)} \\(runs there: "
                             "'q', 'r'\\)"):
        tierpoint.open(on_s3, run="x")
    with pytest.raises(tierpoint.ConfigurationError,
                       match=f"{re.escape(run)} is a run URL; pass run= only with a tier root"):
        tierpoint.open(run, run="r")
    with pytest.raises(tierpoint.ConfigurationError,
                       match=f"a step URL\\); pass its run URL {re.escape(run)} to choose"):
        tierpoint.open(f"{run}/step_00000002", 3)
    with pytest.raises(tierpoint.CheckpointNotFoundError, match=re.escape(f"{run}/step_00000004")):
        tierpoint.open(f"{run}/step_00000004")
    with pytest.raises(tierpoint.CheckpointNotFoundError,
                       match=f"{re.escape(on_s3)}-none holds no checkpoints"):
        tierpoint.open(f"{on_s3}-none")
    with pytest.raises(tierpoint.CheckpointError, match="NoSuchBucket") as e:
        tierpoint.open("s3://no-such-bucket-tierpoint/ckpt", run="r")
    assert s3_env.secret_key not in str(e.value)


def readme_s3_line() -> str:
    """The README's line opening an S3 root (after its example)."""
    section = open(README).read().split("## Reading a checkpoint for analysis", 1)[1]
    section = section.split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[1].strip()


def test_the_readme_example_compares_a_layer_across_three_steps_on_s3(on_s3, s3_env, tmp_path):
    """The README's example on the S3 tier's run URL, and its line opening an S3 root, in a
    process of their own (the AWS settings as the environment gives them), without MPI."""
    script = tmp_path / "example.py"
    script.write_text(
        readme_example().replace('"/pool/ckpt/my-run"', repr(f"{on_s3}/r"))
        + readme_s3_line().replace('"s3://bucket/ckpt"', repr(on_s3))
                          .replace('"my-run"', repr("r"))
        + "\nprint('s3', run.step, run.steps())\n"
        + "import sys; print(sorted(m for m in sys.modules if m.startswith('mpi4py')))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert [ln.split()[:2] for ln in lines[:3]] == [["step", "1"], ["step", "2"], ["step", "3"]]
    assert [float(ln.split("max |change|")[1].split()[0]) for ln in lines[1:3]] == [0.25, 0.25]
    assert lines[3:] == ["s3 3 [1, 2, 3]", "[]"]
