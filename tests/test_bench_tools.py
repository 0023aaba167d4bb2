"""The benchmarks' own logic, on CPU and without timing anything: the one table's targets
(bench/table.py), the disk baselines' bookkeeping (bench/disk.py), the state generator's
column bands (bench/benchstate.py), the save-pass cost kernels (bench/kernel_costs.py) and
bench/gpu.py's dry run (its rounds, DCP/tierpoint calls and report on CPU tensors)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import benchstate  # noqa: E402
import disk  # noqa: E402
import kernel_costs  # noqa: E402
import table  # noqa: E402


def results(durable=(1.0, 1.2), commit=(1.04, 1.1), cols=(1.0, 2.5), amp=1.1, wbps=1.0e9):
    """Made-up raw results for table.run_rows: (tierpoint s, DCP s) per case."""
    n = int(0.95e9)
    return {"bytes": n, "memcpy_s": [0.1, 0.12, 0.11],
            "disk": {"write": ("fio x8", wbps), "read": ("dd x16", 2e9),
                     "samples": {"write": {"fio x8": [wbps]}, "read": {"dd x16": [2e9]}}},
            "save": {"durable": {"tierpoint": [durable[0]] * 3, "dcp": [durable[1]] * 3},
                     "async blocks": {"tierpoint": [0.2], "dcp": [0.25]},
                     "async commit": {"tierpoint": [commit[0]] * 3, "dcp": [commit[1]] * 3}},
            "restore": {"same": {"ranks": 2, "tierpoint": [0.5], "dcp": [1.0],
                                 "ampl": {"tierpoint": [1.0], "dcp": [1.0]}},
                        "2to4 cols": {"ranks": 4, "tierpoint": [cols[0]] * 3,
                                      "dcp": [cols[1]] * 3,
                                      "ampl": {"tierpoint": [amp], "dcp": [4.0]}}}}


def verdict(rows, case, what):
    row = next(r for r in rows if r.case.startswith(case))
    return next(t.passed for t in row.targets if t.what.startswith(what))


def test_targets_pass_when_met():
    rows = table.run_rows(results())
    assert verdict(rows, "durable", "DCP/tp>=1.0") is True
    assert verdict(rows, "durable", ">=90%") is True  # 0.95 GB/s of a 1 GB/s disk
    assert verdict(rows, "async save: time to commit", "tp<=1.05x own") is True
    assert verdict(rows, "async save: time to commit", "tp<=1.0x DCP") is True
    assert verdict(rows, "restore 2->4 new", "DCP/tp>=2.0") is True
    assert verdict(rows, "restore 2->4 new", "read amp") is True
    assert table.verdicts(rows) == (6, 0, 0)


def test_targets_fail_when_missed():
    rows = table.run_rows(results(durable=(1.0, 0.9), commit=(1.2, 1.1), cols=(1.0, 1.5),
                                  amp=4.0, wbps=2e9))
    assert verdict(rows, "durable", "DCP/tp>=1.0") is False
    assert verdict(rows, "durable", ">=90%") is False  # 0.95 GB/s of a 2 GB/s disk: 48%
    assert verdict(rows, "async save: time to commit", "tp<=1.05x own") is False
    assert verdict(rows, "async save: time to commit", "tp<=1.0x DCP") is False
    assert verdict(rows, "restore 2->4 new", "DCP/tp>=2.0") is False
    assert verdict(rows, "restore 2->4 new", "read amp") is False
    text = table.render(rows + table.baseline_rows(results()))
    assert "FAIL" in text and "baseline: disk write, best (fio x8)" in text
    assert "baseline: memcpy" in text


def test_a_library_that_did_not_run_is_not_measurable():
    res = results()
    res["save"]["durable"]["dcp"] = []
    rows = table.run_rows(res)
    assert verdict(rows, "durable", "DCP/tp>=1.0") is None
    assert table.verdicts(rows)[2] >= 1


def test_extra_rows_are_read_and_a_bad_row_is_named(tmp_path):
    good = tmp_path / "drain.json"
    good.write_text(json.dumps({"rows": [{
        "case": "drain into 2 pools", "ranks": "2", "tierpoint_s": [2.0, 2.2, 2.1],
        "bytes": 10**9, "baseline_bps": 5e8, "baseline": "2 dd streams",
        "targets": [{"what": ">=90% of the pools", "passed": True}]}]}))
    rows = table.load_extra_rows(str(good))
    assert rows[0].case == "drain into 2 pools" and rows[0].separator
    assert round(table.pct_of(rows[0])) == 95
    assert ">=90% of the pools PASS" in table.render(rows)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [{"case": "x"}]}))
    with pytest.raises(ValueError, match="row 0"):
        table.load_extra_rows(str(bad))


def test_best_baseline_is_the_highest_median():
    samples = {"write": {"dd x1": [1.0, 9.0, 1.0], "dd x8": [3.0, 3.0, 2.0],
                         "fio x8": [2.5, 2.5, 2.5]}}
    assert disk.best(samples, "write") == ("dd x8", 3.0)
    assert disk.best(samples, "read") is None


@pytest.mark.parametrize("nbytes,streams", [(10 << 20, 1), (10 << 20, 8), (3 << 20, 8),
                                             ((5 << 20) + 17, 2)])
def test_stream_cuts_cover_the_bytes_once(nbytes, streams):
    cuts = disk._cuts(nbytes, streams)
    assert len(cuts) == streams + 1 and cuts[0] == 0 and cuts[-1] == nbytes
    assert cuts == sorted(cuts)


def test_column_bands_check_bit_exactly():
    import torch

    spec = benchstate.TensorSpec("p", 7, rows=1024, cols=1024, dtype="bfloat16")
    (row0, col0), shape = benchstate.local_box(spec, 2, 4, dim=1)
    assert (row0, col0, shape) == (0, 512, (1024, 256))
    band = torch.empty(shape, dtype=torch.bfloat16)
    benchstate.fill_rows(band, spec, row0, col0)
    full = torch.empty((spec.rows, spec.cols), dtype=torch.bfloat16)
    benchstate.fill_rows(full, spec, 0)
    assert torch.equal(band.view(torch.int16), full[:, 512:768].view(torch.int16))
    assert benchstate.check_rows(band, spec, row0, col0) is None
    band[spec.rows // 3, 5] += 1
    assert "row 341" in benchstate.check_rows(band, spec, row0, col0)


def test_kernel_costs_cover_every_pass(tmp_path):
    arrays = [np.arange(1 << 18, dtype=np.float32).reshape(256, 1024),
              np.ones((64, 512), dtype=np.uint16)]
    chunks = kernel_costs.chunks_of(arrays, 1 << 30, chunk_bytes=256 << 10)
    assert sum(c.nbytes for c, _ in chunks) == sum(a.nbytes for a in arrays)
    assert [o for c, o in chunks[:4]] == [(0, 0), (64, 0), (128, 0), (192, 0)]
    got = kernel_costs.measure(chunks, str(tmp_path), repeats=1)
    assert set(kernel_costs.KERNELS) <= set(got)
    assert all(got[k]["wall_s_per_gib"] > 0 for k in kernel_costs.KERNELS)
    assert not list(tmp_path.iterdir())  # its scratch file is gone


def run_gpu(*args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, os.path.join(BENCH, "gpu.py"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_gpu_bench_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    p = run_gpu("--dry-run", "--gib", "0.01", "--tensors", "20", "--repeats", "1",
                "--dir", str(tmp_path / "scratch"), "--json", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "DRY RUN on CPU tensors" in p.stdout
    for case in ("tierpoint async", "tierpoint blocking", "dcp async_save"):
        assert case in p.stdout
    assert "own blocking save" in p.stdout and "DCP async_save's" in p.stdout
    res = json.loads(out.read_text())
    assert res["dry_run"] and all(len(res["results"][c]["commit"]) == 1
                                  for c in res["results"])


def test_gpu_bench_without_cuda_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    p = run_gpu("--gib", "0.01", timeout=120)
    assert p.returncode == 2
    assert "CUDA is not available" in p.stderr and "--dry-run" in p.stderr


def test_drain_summary_rows_keep_their_unit_and_verdict(tmp_path):
    f = tmp_path / "drain.json"
    f.write_text(json.dumps({"summary": [
        {"what": "drain alone (foreground), GB/s", "value": 0.9, "per_round": [0.8, 0.9, 1.0],
         "reference": 1.0, "reference_is": "pools' parallel dd write", "ratio": 0.9,
         "target": 0.9, "verdict": "PASS"},
        {"what": "save during a capped drain, s to commit", "value": 2.0, "per_round": [2.0],
         "reference": 1.8, "reference_is": "save alone", "ratio": 1.11, "target": None,
         "verdict": ""}]}))
    rows = table.load_extra_rows(str(f))
    assert rows[0].unit == "GB/s" and rows[0].case == "drain alone (foreground)"
    assert rows[0].targets[0].passed is True and rows[1].targets == []
    text = table.render(rows)
    assert "0.90GB/s (0.80-1.00)" in text and "ratio>=0.90 PASS" in text and "vs save alone" in text


def test_gpu_bench_fails_loudly_when_a_worker_fails(tmp_path):
    # one tensor cannot be log-spread: every worker raises while building the state
    p = run_gpu("--dry-run", "--tensors", "1", "--repeats", "1", "--dir", str(tmp_path / "s"),
                timeout=300)
    assert p.returncode != 0
    assert "FAILED" in p.stderr and "Traceback" in p.stderr and "a worker failed" in p.stderr
