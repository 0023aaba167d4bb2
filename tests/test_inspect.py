"""tierpoint info and diff: identical by fingerprint across layouts (without reading data),
slightly changed, reshaped, added and removed arrays, JSON values; --json parses."""
import contextlib
import io
import json
import shutil

import pytest
import torch

import tierpoint
from tierpoint.cli import main as cli
from tierpoint.trust.inspect import diff, info


def state(scale=1.0):
    return {"w": torch.arange(3000, dtype=torch.float32).reshape(60, 50) * scale,
            "e": (torch.arange(64, dtype=torch.float32) / 7).to(torch.bfloat16),
            "i": torch.arange(10, dtype=torch.int64),
            "cfg": {"lr": 0.1, "name": "x"}}


def save(root, run, st, chunk_bytes):
    with tierpoint.Checkpointer(str(root), run=run, chunk_bytes=chunk_bytes) as ck:
        ck.save(1, st, metadata={"purpose": run}).wait()
        return ck.step_dir(1)


def run_cli(*args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli(list(args))
    return rc, out.getvalue()


def test_info_describes_arrays_values_and_lineage(tmp_path):
    path = save(tmp_path, "a", state(), 1 << 20)
    d = info(path)
    assert d["run"] == "a" and d["step"] == 1 and d["digest"].startswith("sha256:")
    assert d["arrays"]["w"]["shape"] == [60, 50] and d["arrays"]["e"]["dtype"] == "bfloat16"
    assert d["values"]["cfg"] == {"lr": 0.1, "name": "x"}
    assert d["metadata"] == {"purpose": "a"} and d["lineage"]["parent"] is None
    rc, out = run_cli("info", path, "--json")
    assert rc == 0 and json.loads(out)["arrays"]["w"]["fingerprint"] == d["arrays"]["w"]["fingerprint"]
    rc, out = run_cli("info", path)
    assert rc == 0 and "bfloat16" in out and "parent: none" in out


def test_diff_of_the_same_values_in_two_layouts_reads_no_data(tmp_path):
    a = save(tmp_path, "a", state(), 1 << 20)
    b = save(tmp_path, "b", state(), 2048)  # another chunk grid
    assert tierpoint.format.layout.load_manifest(a)["arrays"]["w"]["chunk_shape"] != \
        tierpoint.format.layout.load_manifest(b)["arrays"]["w"]["chunk_shape"]
    for sub in ("w", "e", "i"):  # no chunk of B can be read: identical comes from fingerprints
        shutil.rmtree(f"{b}/{sub}")
    d = diff(a, b)
    assert d["summary"]["identical"] == 3 and d["summary"]["different"] == 0
    assert run_cli("diff", a, b)[0] == 0


def test_diff_reports_how_arrays_and_values_differ(tmp_path):
    a = save(tmp_path, "a", state(), 1 << 20)
    changed = state()
    changed["w"][7, 9] += 0.5
    changed["e"] = changed["e"] * 2
    changed["cfg"]["lr"] = 0.2
    del changed["i"]
    changed["extra"] = torch.ones(3)
    b = save(tmp_path, "b", changed, 4096)
    d = diff(a, b)
    w, e = d["arrays"]["w"], d["arrays"]["e"]
    assert w["status"] == "different" and w["elements_differing"] == 1
    assert w["max_abs_diff"] == pytest.approx(0.5)
    norm = float(torch.linalg.norm(state()["w"].double()))
    assert w["rel_l2_change"] == pytest.approx(0.5 / norm)
    assert e["status"] == "different" and e["rel_l2_change"] == pytest.approx(1.0, rel=1e-2)
    assert d["only_in_a"] == ["i"] and d["only_in_b"] == ["extra"]
    assert d["values"]["cfg"] == {"a": {"lr": 0.1, "name": "x"}, "b": {"lr": 0.2, "name": "x"}}
    s = d["summary"]
    assert (s["different"], s["only_in_a"], s["only_in_b"], s["values_different"]) == (2, 1, 1, 1)
    rc, out = run_cli("diff", a, b, "--json")
    assert rc == 1 and json.loads(out)["summary"] == s
    rc, out = run_cli("diff", a, b)
    assert rc == 1 and out.index("summary") < out.index("w: different")
