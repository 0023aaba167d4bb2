"""Hugging Face safetensors export and import (``tierpoint export`` / ``tierpoint import``).

A ``transformers`` Llama built from a tiny config (no download) is trained with FSDP2 on 2 real
MPI ranks and saved (tests/workers/hf_worker.py); the export loads with
``AutoModelForCausalLM.from_pretrained`` and gives the logits of a model holding the gathered
trained weights, bit for bit; importing the export restores bit-exactly on 3 ranks and the
fine-tuned run's lineage reaches the export's files. Also: the audit record of an export,
bfloat16/float8 kept, one array in memory at a time however large the shard (peak RSS), a
shard file byte for byte the one the safetensors library writes, the record in the run's log
wherever it lives (a pool, an object store, the capacity tier of a node-local copy), the
progress bar, pickle refused, every source file hashed on import, a DCP directory imported
bit-exactly, and the pure shard planning.
"""
import hashlib
import importlib.util
import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

import tierpoint
from tierpoint.cli import app
from tierpoint.errors import ConfigurationError
from tierpoint.hf import names
from tierpoint.runtime import distenv
from tierpoint.trust.audit import AUDIT_FILE, read_log, verify_log
from workers import ranklog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE = "model-00001-of-00001.safetensors"  # the file of a one-shard export


def _installed_kernels_first() -> None:
    """transformers imports Hugging Face's ``kernels`` package when it is installed (it is a
    dependency); this repository's top-level ``kernels/`` directory (tierpoint.kernels'
    sources) and bench/kernels.py (on sys.path once the bench tools' tests ran) would shadow
    it: load the installed distribution's package by its own location, under its name,
    replacing any other module cached as ``kernels``."""
    import importlib.metadata
    import importlib.util
    try:
        init = str(importlib.metadata.distribution("kernels").locate_file("kernels/__init__.py"))
    except importlib.metadata.PackageNotFoundError:
        return  # not installed: transformers does not look for it then
    cached = sys.modules.get("kernels")
    if cached is not None and os.path.abspath(getattr(cached, "__file__", None) or "") == \
            os.path.abspath(init):
        return
    spec = importlib.util.spec_from_file_location(
        "kernels", init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    spec.loader.exec_module(module)


_installed_kernels_first()
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers", "hf_worker.py")
TIMEOUT = 300
STEPS = 3
PARAMS = 21  # the tiny Llama's parameters (embed, 2 x 9 per layer, norm, lm_head)

pytestmark = [pytest.mark.timeout(3 * TIMEOUT)] if importlib.util.find_spec("pytest_timeout") \
    else []


def launch(n, *args, logs):
    proc = distenv.launch(n, [WORKER, *map(str, args)], timeout=TIMEOUT, capture=True,
                          env={"RANK_LOG_DIR": str(logs)})
    assert proc.returncode == 0, (f"{n}-rank hf_worker {args[0]} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-20000:]}\nthe ranks' own logs:\n"
                                  f"{ranklog.collect(str(logs))}")
    assert "HF-MISMATCH" not in proc.stdout, proc.stdout
    return proc.stdout


def cli(*argv) -> int:
    return app.main([str(a) for a in argv])


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def header_of(path) -> dict:
    """A safetensors file's JSON header (8-byte little-endian length, then the JSON)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf")
    root, ref = base / "ckpt", base / "ref"
    out = launch(2, "train", root, ref, STEPS, logs=base / "logs-train")
    assert f"HF-OK train 2 step={STEPS} params={PARAMS} changed=all" in out, out
    step = root / "train" / f"step_{STEPS:08d}"
    export = base / "export"
    assert cli("export", step, export, "--format", "safetensors", "--select", "model.*",
               "--rename", "model.=", "--max-shard-size", "20KB",
               "--config", ref / "config.json") == 0
    return {"base": base, "root": root, "ref": ref, "step": step, "export": export}


def test_export_loads_in_transformers_with_the_trained_logits(trained):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    export, ref = trained["export"], trained["ref"]
    files = sorted(os.listdir(export))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1 and shards == [f"model-{k:05d}-of-{len(shards):05d}.safetensors"
                                          for k in range(1, len(shards) + 1)]
    assert "config.json" in files and names.INDEX_FILE in files
    index = json.load(open(export / names.INDEX_FILE))
    full = load_file(ref / "full.safetensors")
    assert sorted(index["weight_map"]) == sorted(full)
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for t in full.values())

    loaded = AutoModelForCausalLM.from_pretrained(export).eval()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, full[name]), f"{name}: exported weights differ"
    reference = LlamaForCausalLM(LlamaConfig.from_json_file(ref / "config.json"))
    reference.load_state_dict(full, strict=True)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
        want = reference.eval()(input_ids=ids).logits
    assert torch.equal(got, want)
    fsdp = load_file(ref / "fsdp_logits.safetensors")["logits"]  # the FSDP model's own
    torch.testing.assert_close(got, fsdp, rtol=1e-5, atol=1e-6)


def test_the_audit_log_records_each_exported_file_with_its_sha256(trained):
    log = trained["root"] / "train" / AUDIT_FILE
    count, problems = verify_log(str(log))
    assert not problems and count
    exported = [r for r in read_log(str(log)) if r["event"] == "exported"]
    assert len(exported) == 1
    record = exported[0]
    assert record["step"] == STEPS and record["run"] == "train"
    detail = record["detail"]
    on_disk = sorted(os.listdir(trained["export"]))
    assert sorted(detail["files"]) == on_disk
    for name, digest in detail["files"].items():
        assert digest == sha256(trained["export"] / name), name
    assert detail["arrays"] == PARAMS and detail["format"] == "safetensors"
    assert any("JSON values" in s for s in detail["skipped"])


def test_one_shard_is_named_as_a_shard_indexed_and_loads(trained, tmp_path, capsys):
    """One shard is still ``model-00001-of-00001.safetensors`` beside the index (the
    issue's layout), and transformers loads it through the index."""
    from transformers import AutoModelForCausalLM
    out = tmp_path / "one"
    assert cli("export", trained["step"], out, "--format", "safetensors",
               "--select", "model.*", "--rename", "model.=",
               "--config", trained["ref"] / "config.json") == 0
    assert sorted(os.listdir(out)) == ["config.json", ONE, names.INDEX_FILE]
    assert len(header_of(out / ONE)) == PARAMS + 1  # + __metadata__
    index = json.load(open(out / names.INDEX_FILE))
    assert set(index["weight_map"].values()) == {ONE} and len(index["weight_map"]) == PARAMS
    printed = capsys.readouterr().out
    assert f"{ONE}  sha256 " in printed and f"{names.INDEX_FILE}  sha256 " in printed
    loaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    sharded = AutoModelForCausalLM.from_pretrained(trained["export"]).state_dict()
    assert loaded.keys() == sharded.keys()
    assert all(torch.equal(loaded[k], sharded[k]) for k in loaded)
    assert cli("export", trained["step"], out, "--format", "safetensors") == 2
    assert "already holds safetensors files" in capsys.readouterr().err


def test_import_restores_bit_exactly_on_3_ranks_and_lineage_reaches_the_export(trained, capsys):
    base = trained["base"]
    root = base / "imported"
    root.mkdir()
    assert cli("import", trained["export"], "--local", root, "--run", "base", "--step", 0) == 0
    out = launch(3, "restore", root, trained["ref"], "base", logs=base / "logs-restore")
    assert f"HF-OK restore 3 from=base params={PARAMS} bit_exact=yes" in out, out
    capsys.readouterr()
    assert cli("lineage", root / "finetune" / "step_00000001", "--json") == 0
    chain = json.loads(capsys.readouterr().out)
    assert [(e["run"], e["step"], e["digest_ok"]) for e in chain] == [
        ("finetune", 1, True), ("base", 0, True)]
    source = chain[1]["source"]
    assert source["format"] == "safetensors"
    assert source["path"] == str(trained["export"])
    assert source["files"] == {n: sha256(trained["export"] / n)
                               for n in os.listdir(trained["export"])}
    assert cli("lineage", root / "finetune" / "step_00000001") == 0
    assert f"<- imported from safetensors {trained['export']}" in capsys.readouterr().out


def small_state():
    """Arrays whose values encode their indices, in the types safetensors must keep."""
    idx = torch.arange(60, dtype=torch.float32).reshape(6, 10) / 8
    return {"model": {"w.bf16": idx.to(torch.bfloat16),
                      "w.e4m3": (idx / 4).to(torch.float8_e4m3fn),
                      "w.e5m2": (idx / 4).to(torch.float8_e5m2),
                      "n.i64": torch.arange(7, dtype=torch.int64) - 3,
                      "n.f16": idx[0].to(torch.float16)},
            "step": 12, "cfg": {"lr": 0.1}}


def test_bf16_and_fp8_are_kept_bit_for_bit_and_come_back(tmp_path, capsys):
    from safetensors import safe_open
    state = small_state()
    with tierpoint.Checkpointer(str(tmp_path / "local"), run="r") as ck:
        ck.save(5, state, blocking=True)
    out = tmp_path / "out"
    assert cli("export", tmp_path / "local" / "r" / "step_00000005", out,
               "--format", "safetensors", "--rename", "model.=") == 0
    printed = capsys.readouterr().out
    assert "skipped: 2 JSON values (cfg, step): safetensors holds tensors only" in printed
    header = header_of(out / ONE)
    assert {k: v["dtype"] for k, v in header.items() if k != "__metadata__"} == {
        "w.bf16": "BF16", "w.e4m3": "F8_E4M3", "w.e5m2": "F8_E5M2", "n.i64": "I64",
        "n.f16": "F16"}
    with safe_open(out / ONE, framework="pt") as f:
        for name, want in state["model"].items():
            got = f.get_tensor(name)
            assert got.dtype == want.dtype and torch.equal(got.view(torch.uint8),
                                                           want.view(torch.uint8)), name
    (tmp_path / "back").mkdir()
    assert cli("import", out, "--local", tmp_path / "back", "--run", "b", "--step", 1) == 0
    view = tierpoint.open(str(tmp_path / "back" / "b"), torch=True)
    for name, want in state["model"].items():
        got = view[f"model/{name}"][...]
        assert got.dtype == want.dtype and torch.equal(got.view(torch.uint8),
                                                       want.view(torch.uint8)), name


def test_the_progress_bar_counts_the_bytes_of_the_selected_arrays(tmp_path, capsys):
    """--progress shows the bar on stderr even when it is no terminal (as here); it counts the
    bytes of the arrays selected (the bfloat16 and float8 ones: 120 + 60 + 60), written one
    by one up to that total, not the checkpoint's (316). --no-progress, and the default off a
    terminal, show none."""
    with tierpoint.Checkpointer(str(tmp_path / "local"), run="r") as ck:
        ck.save(5, small_state(), blocking=True)
    step = tmp_path / "local" / "r" / "step_00000005"
    capsys.readouterr()
    assert cli("export", step, tmp_path / "bar", "--format", "safetensors", "--progress",
               "--select", "model.w.*", "--json") == 0
    err = capsys.readouterr().err
    assert f"export {step}: 100%" in err and "240/240" in err and "316" not in err, err
    for quiet, extra in (("quiet", ["--no-progress"]), ("default", [])):
        assert cli("export", step, tmp_path / quiet, "--format", "safetensors", *extra) == 0
        assert "%|" not in capsys.readouterr().err


MEMORY_PROBE = r"""
import os, sys
import tierpoint
from tierpoint.hf.export import export_safetensors

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

view = tierpoint.open(sys.argv[1])
view[view.names()[0]].torch()  # the reader's first-use allocations, outside the measurement
import safetensors.torch  # noqa
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS (Linux)
before = status("VmRSS:")
export_safetensors(view, sys.argv[2], max_shard_bytes=int(sys.argv[3]))
print("PEAK-ABOVE", status("VmHWM:") - before)
"""


def test_an_export_holds_one_array_in_memory_not_one_shard(tmp_path):
    """48 MiB in 24 arrays of 2 MiB, all in one shard (the limit 1 GB): the export's peak RSS
    above its start is about one array, far below the shard it writes (48 MiB), which a
    writer assembling the shard in memory would hold."""
    from safetensors import safe_open
    arrays, rows = 24, 512
    state = {f"layer{i:03d}": torch.full((rows, 1024), float(i)) for i in range(arrays)}
    with tierpoint.Checkpointer(str(tmp_path / "local"), run="m") as ck:
        ck.save(1, state, blocking=True)
    del state
    array = rows * 1024 * 4
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE,
                           str(tmp_path / "local" / "m" / "step_00000001"),
                           str(tmp_path / "out"), str(10**9)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    peak = int(proc.stdout.split("PEAK-ABOVE")[1])
    assert sorted(os.listdir(tmp_path / "out")) == [ONE, names.INDEX_FILE]
    with safe_open(tmp_path / "out" / ONE, framework="pt") as f:
        assert len(f.keys()) == arrays
        for i in (0, arrays // 2, arrays - 1):
            assert torch.equal(f.get_tensor(f"layer{i:03d}"), torch.full((rows, 1024), float(i)))
    print(f"export peak RSS above its start: {peak / 2**20:.1f} MiB (array 2 MiB, shard "
          f"{arrays * array / 2**20:.0f} MiB)")
    assert peak < 3 * array, (f"peak {peak / 2**20:.1f} MiB: more than about one array "
                              f"({array / 2**20:.0f} MiB) held; the shard is "
                              f"{arrays * array / 2**20:.0f} MiB")


def test_a_shard_file_is_byte_for_byte_the_librarys_and_its_sha256_is_the_files(tmp_path):
    """``write_shard`` (the library's layout from placeholders, then the arrays written in
    place) gives the very bytes ``safetensors.torch.save_file`` writes from the tensors, and
    the SHA-256 it computes while writing is the file's."""
    from safetensors.torch import save_file
    from tierpoint.format import dtypes
    from tierpoint.hf.shardfile import write_shard
    tensors = {f"m.{k}": v for k, v in small_state()["model"].items()}
    tensors["m.empty"] = torch.zeros(0, 3)
    tensors["m.scalar"] = torch.tensor(2.5, dtype=torch.float64)
    tensors["m.flags"] = torch.tensor([True, False, True])
    items = [names.Item(k, k, v.numel() * v.element_size(), dtypes.name_of(v.dtype),
                        tuple(v.shape)) for k, v in tensors.items()]
    metadata = {"format": "pt"}  # one key: the library writes several in a random order
    written = []
    digest = write_shard(str(tmp_path / "streamed"), items,
                         lambda item: dtypes.tensor_bits(tensors[item.array]), metadata,
                         written.append)
    save_file(tensors, str(tmp_path / "library"), metadata=metadata)
    assert open(tmp_path / "streamed", "rb").read() == open(tmp_path / "library", "rb").read()
    assert digest == sha256(tmp_path / "streamed")
    assert sorted(written) == sorted(i.nbytes for i in items)


def test_a_shard_written_again_has_the_same_bytes_whatever_the_metadata_order(tmp_path):
    """The library writes ``__metadata__`` in a hash map's order, random per process: the
    keys are sorted in place, so the same shard always has the same bytes and SHA-256 (the
    audit log's record of an export can be reproduced); run in fresh processes."""
    script = (
        "import sys, torch\n"
        "from tierpoint.format import dtypes\n"
        "from tierpoint.hf import names\n"
        "from tierpoint.hf.shardfile import write_shard\n"
        "t = {'m.w': torch.arange(12.).reshape(3, 4), 's': torch.tensor(2.5)}\n"
        "items = [names.Item(k, k, v.numel() * v.element_size(), dtypes.name_of(v.dtype),\n"
        "                    tuple(v.shape)) for k, v in t.items()]\n"
        "meta = {k: 'v' * i for i, k in enumerate('format run step digest é zz'.split())}\n"
        "print(write_shard(sys.argv[1], items, lambda i: dtypes.tensor_bits(t[i.array]), meta))\n")
    digests, headers = set(), set()
    for i in range(6):
        path = tmp_path / f"shard{i}"
        out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == sha256(path)
        digests.add(out)
        with safe_open(str(path), "pt") as f:
            assert f.metadata()["digest"] == "vvv" and f.metadata()["é"] == "vvvv"
            assert torch.equal(f.get_tensor("m.w"), torch.arange(12.).reshape(3, 4))
        raw = path.read_bytes()
        headers.add(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert len(digests) == 1 and len(headers) == 1, headers
    meta = json.loads(headers.pop())["__metadata__"]
    assert list(meta) == sorted(meta)


def test_import_refuses_pickle_weights_and_an_untrusted_dcp_directory(tmp_path, capsys):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not read\x2e")
    root = tmp_path / "root"
    root.mkdir()
    assert cli("import", pickled, "--local", root, "--run", "p", "--step", 0) == 2
    err = capsys.readouterr().err
    assert "holds pickle weight files only (pytorch_model.bin)" in err and "safetensors" in err
    dcp_dir = tmp_path / "dcp"
    save_dcp(dcp_dir)
    assert cli("import", dcp_dir, "--local", root, "--run", "d", "--step", 0) == 2
    err = capsys.readouterr().err
    assert ".metadata is a pickle" in err and "--trust-pickle" in err
    assert not os.listdir(root)  # nothing was written
    # Safetensors beside pickle files: the safetensors are imported, the pickles not read.
    from safetensors.torch import save_file
    save_file({"x": torch.arange(4.0)}, pickled / "model.safetensors")
    assert cli("import", pickled, "--local", root, "--run", "p", "--step", 0) == 0
    assert "not read (pickle): pytorch_model.bin" in capsys.readouterr().out


def test_import_hashes_every_top_level_file_of_the_source(tmp_path, capsys):
    """Lineage names the whole published source: the SHA-256 of every regular file at the top
    of the directory (tokenizer, README, a pickle that is not read, a file reached by a
    symbolic link as in a Hugging Face cache snapshot), not only the weights read;
    subdirectories are not walked."""
    from safetensors.torch import save_file
    src = tmp_path / "published"
    src.mkdir()
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, src / "model.safetensors")
    side = {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b'{"version": "1.0"}',
            "tokenizer_config.json": b"{}", "README.md": b"# a model\n",
            "special_tokens_map.json": b"{}", "training_args.bin": b"\x80\x04not a pickle\x2e"}
    for name, data in side.items():
        (src / name).write_bytes(data)
    (tmp_path / "blob").write_bytes(b"merges\n")
    os.symlink(tmp_path / "blob", src / "merges.txt")
    (src / ".cache").mkdir()
    (src / ".cache" / "lock").write_bytes(b"not the model")
    root = tmp_path / "root"
    root.mkdir()
    assert cli("import", src, "--local", root, "--run", "base", "--step", 0, "--json") == 0
    done = json.loads(capsys.readouterr().out)
    want = {n: sha256(src / n) for n in [*side, "model.safetensors", "merges.txt"]}
    assert done["source"]["files"] == want
    assert done["source"]["weights"] == ["model.safetensors"]
    assert any("not read (pickle): training_args.bin" in n for n in done["notes"])
    lineage = tierpoint.open(str(root / "base")).lineage["source"]
    assert lineage["files"] == want and lineage["path"] == str(src)


def dcp_state():
    g = torch.arange(5 * 7, dtype=torch.float32).reshape(5, 7)
    return {"model": {"layers.0.w": g, "layers.0.b": g[0].to(torch.bfloat16).clone()},
            "extra": [torch.arange(3, dtype=torch.int32), torch.arange(4, dtype=torch.float64)],
            "epoch": 3}


def save_dcp(directory):
    import warnings

    import torch.distributed.checkpoint as dcp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: saving in one process"
        dcp.save(dcp_state(), checkpoint_id=str(directory), no_dist=True)


def test_a_dcp_directory_imports_bit_exactly_with_trust_pickle(tmp_path, capsys):
    src = tmp_path / "dcp"
    save_dcp(src)
    root = tmp_path / "root"
    root.mkdir()
    assert cli("import", src, "--local", root, "--run", "d", "--step", 4, "--trust-pickle",
               "--json") == 0
    done = json.loads(capsys.readouterr().out)
    assert done["source"]["format"] == "dcp"
    assert set(done["source"]["files"]) == set(os.listdir(src))
    assert any("epoch" in n for n in done["notes"])  # a pickled object: skipped
    want = dcp_state()
    template = {"model": {k: torch.zeros_like(v) for k, v in want["model"].items()},
                "extra": [torch.zeros_like(v) for v in want["extra"]]}
    with tierpoint.Checkpointer(str(root), run="d") as ck:
        got = ck.restore(template, step=4)
    pairs = list(zip(got["model"].values(), want["model"].values())) + \
        list(zip(got["extra"], want["extra"]))
    for g, w in pairs:
        assert g.dtype == w.dtype and torch.equal(g.view(torch.uint8), w.view(torch.uint8))
    view = tierpoint.open(str(root / "d"))
    assert view.lineage["source"]["files"][".metadata"] == sha256(src / ".metadata")


# ---- the plan of an export (pure) -----------------------------------------------------------

def test_sizes_renames_and_selection():
    assert names.parse_size("5GB") == 5 * 10**9 and names.parse_size("2GiB") == 2 * 2**30
    assert names.parse_size("1000") == 1000 and names.parse_size("1.5MB") == 1_500_000
    for bad in ("", "0", "5XB", "-1GB", "GB"):
        with pytest.raises(ConfigurationError, match="is not a size"):
            names.parse_size(bad)
    assert names.parse_rename("model.=") == ("model.", "")
    with pytest.raises(ConfigurationError, match="FROM=TO"):
        names.parse_rename("=x")
    renames = [("model.model.", "model."), ("model.", "")]
    assert names.renamed("model.model.layers.0.w", renames) == "model.layers.0.w"
    assert names.renamed("model.lm_head.weight", renames) == "lm_head.weight"
    assert names.renamed("optim.x", renames) == "optim.x"
    assert names.selected("model.a", ["optim.*", "model.*"]) and names.selected("x", [])
    assert not names.selected("optim.a", ["model.*"])


def test_shards_follow_the_limit_and_an_oversized_array_stands_alone():
    items = [names.Item(f"a{i}", f"n{i}", size) for i, size in enumerate([4, 4, 3, 10, 1, 1])]
    shards = names.plan_shards(items, 8)
    assert [[i.name for i in s] for s in shards] == [["n0", "n1"], ["n2"], ["n3"], ["n4", "n5"]]
    assert names.shard_file_names(1) == [ONE]
    assert names.shard_file_names(2) == ["model-00001-of-00002.safetensors",
                                         "model-00002-of-00002.safetensors"]
    with pytest.raises(ConfigurationError, match="would both be exported as 'n'"):
        names.check_unique([names.Item("a", "n", 1), names.Item("b", "n", 1)])


@pytest.mark.parametrize("capacity", ["pool", "s3"])
def test_the_capacity_copy_exports_the_same_files_and_its_log_records_it(capacity, tmp_path,
                                                                        request, capsys):
    """From the local copy and from the capacity copy (a POSIX pool, or an S3 step URL) an
    export writes the same tensors, and the record goes to the run's log, which a run with a
    capacity tier keeps there (a pool's audit.jsonl, or one S3 object per record): beside
    the capacity copy read, and for the local copy (whose run directory holds no log) in the
    log of the capacity tier named by --persistent; without it the export says it is not
    recorded, and a --persistent that holds no log of the run is refused before writing."""
    from tierpoint.tiers.registry import capacity_tier
    from tierpoint.trust.logs import open_log
    if capacity == "s3":
        from s3server import unique_prefix
        persistent = request.getfixturevalue("s3_env").url(unique_prefix("hf"))
    else:
        persistent = str(tmp_path / "pool")
        os.makedirs(persistent)
    state = small_state()
    with tierpoint.Checkpointer(str(tmp_path / "local"), persistent=persistent, run="r",
                                policy=tierpoint.Policy(drain_every=1)) as ck:
        ck.save(2, state).wait()
        ck.wait()
        assert ck.capacity_steps() == [2]
    tier = capacity_tier(persistent, staging=str(tmp_path / "stage"))
    log = open_log(tier.audit_dir("r"))
    capacity_step = tier.step_path("r", 2)
    local_step = tmp_path / "local" / "r" / "step_00000002"
    assert not os.path.exists(tmp_path / "local" / "r" / AUDIT_FILE)
    capsys.readouterr()  # what the fixtures printed (the S3 server's start)

    def export(step, out, *extra):
        assert cli("export", step, tmp_path / out, "--format", "safetensors", "--json",
                   *extra) == 0
        printed = capsys.readouterr()
        done = json.loads(printed.out)
        assert done["arrays"] == len(state["model"])
        return done, printed.err

    done, err = export(local_step, "out-local")
    assert done["audit_log"] is None and "--persistent" in done["not_recorded"]
    assert "is not recorded in an audit log" in err and "--persistent" in err
    done, _ = export(capacity_step, "out-capacity")
    assert done["audit_log"] == log.path and done["not_recorded"] is None
    done, _ = export(local_step, "out-local-recorded", "--persistent", persistent)
    assert done["audit_log"] == log.path

    empty = tmp_path / "another-pool"
    empty.mkdir()
    assert cli("export", local_step, tmp_path / "out-refused", "--format", "safetensors",
               "--persistent", empty) == 2
    assert "holds no audit log of the run" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out-refused")

    from safetensors.torch import load_file
    outs = ("out-local", "out-capacity", "out-local-recorded")
    got = {n: load_file(tmp_path / n / ONE) for n in outs}
    assert got["out-local"].keys() == got["out-capacity"].keys() == {
        f"model.{k}" for k in state["model"]}
    for key, value in got["out-local"].items():
        for other in outs[1:]:
            assert torch.equal(value.view(torch.uint8), got[other][key].view(torch.uint8))
    count, problems = log.verify()
    assert count and not problems
    exported = [r["detail"] for r in log.records() if r["event"] == "exported"]
    assert [d["out"] for d in exported] == [str(tmp_path / n) for n in outs[1:]]
    for detail in exported:
        assert detail["files"] == {n: sha256(os.path.join(detail["out"], n))
                                   for n in (ONE, names.INDEX_FILE)}
