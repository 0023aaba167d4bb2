"""restore(from_run=...): a run (a fine-tune) starts from another run's checkpoint; its
saves record that checkpoint as their lineage parent with no manual step, and its audit log
says where it came from."""
import contextlib
import io
import json

import pytest
import torch

import tierpoint
from tierpoint.cli import main as cli
from tierpoint.format import layout


def _w(step):
    return torch.arange(48, dtype=torch.float32).reshape(6, 8) * 3 + step


def test_a_fine_tune_starts_from_the_pretraining_run(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    with tierpoint.Checkpointer(str(tmp_path / "ssd"), persistent=str(pool), run="pre",
                                policy=tierpoint.Policy(drain_every=2)) as pre:
        for step in (100, 200):
            pre.save(step, {"w": _w(step), "step": step}).wait()
    pre_manifest = layout.load_manifest(str(pool / "pre" / "step_00000200"))

    # The fine-tune restores the newest of "pre" from the capacity tier alone (its local
    # tier is a new, empty one) and saves its own steps.
    ft = tierpoint.Checkpointer(str(tmp_path / "ssd2"), persistent=str(pool), run="ft")
    assert ft.steps() == []
    out = ft.restore({"w": torch.zeros(6, 8), "step": None}, from_run="pre")
    assert torch.equal(out["w"], _w(200)) and out["step"] == 200
    ft.save(1, {"w": out["w"] + 1, "step": 1}).wait()
    ft.close(drain_newest=False)

    lineage = layout.load_manifest(str(tmp_path / "ssd2" / "ft" / "step_00000001"))["lineage"]
    assert lineage["parent"]["run"] == "pre" and lineage["parent"]["step"] == 200
    assert lineage["parent"]["digest"] == pre_manifest["digest"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["lineage", str(tmp_path / "ssd2" / "ft" / "step_00000001"), "--json",
                    "--root", str(pool)]) == 0
    chain = json.loads(out.getvalue())
    assert [(e["run"], e["step"]) for e in chain] == [("ft", 1), ("pre", 200)]
    assert all(e["digest_ok"] for e in chain)
    # The fine-tune's audit log (on the capacity tier, where a run's log lives when it has
    # one) records the restore and the run it came from.
    records = [json.loads(line) for line in
               (pool / "ft" / "audit.jsonl").read_text().splitlines()]
    restored = [r for r in records if r["event"] == "restored"]
    assert restored and restored[0]["step"] == 200
    assert restored[0]["detail"]["from_run"] == "pre"


def test_from_run_names_a_run_that_is_not_there(tmp_path):
    with tierpoint.Checkpointer(str(tmp_path), run="ft") as ck:
        with pytest.raises(tierpoint.CheckpointNotFoundError, match="'nope'"):
            ck.restore({"w": torch.zeros(2)}, from_run="nope")
        with pytest.raises(tierpoint.ConfigurationError, match="from_run"):
            ck.restore({"w": torch.zeros(2)}, from_run="")
