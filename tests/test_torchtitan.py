"""A real DCP-based trainer's checkpoint path over tierpoint: torchtitan's CheckpointManager.

torchtitan's own CheckpointManager (its ModelWrapper over an FSDP2 model, its
OptimizersContainer's flat AdamW state, its LR schedulers, its save interval and load of the
newest step) saves 4 training steps on 2 gloo ranks through tierpoint.dcp's StorageWriter,
and a fresh process group loads it through the StorageReader: bit-exact, and the resumed run's
next step equals the saved run's (tests/workers/torchtitan_worker.py, which holds the
four-method subclass a torchtitan user selects). What it wrote is an ordinary tierpoint
checkpoint: ``tierpoint verify`` passes and ``ckpt.restore`` reads it on another world size.

torchtitan is installed by the Makefile (with --no-deps; setup.py's test extra has what its
checkpoint code imports). Where that code does not import the tests skip, except under
``CI=true`` or ``TIERPOINT_REQUIRE_TORCHTITAN=1`` (set by .ci/run), where the file fails, so
CI cannot pass by skipping.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import tierpoint
from mpirun import run_ranks

try:
    import torchtitan.components.checkpointer  # noqa: F401
except ImportError as missing:
    _reason = (f"torchtitan's checkpoint code does not import ({missing}): `make venv` "
               "installs it (Makefile: torchtitan with --no-deps, its imports in setup.py's "
               "test extra)")
    if os.environ.get("CI") == "true" or os.environ.get("TIERPOINT_REQUIRE_TORCHTITAN") == "1":
        pytest.fail(_reason + " (CI: skipping is not allowed)", pytrace=False)
    pytest.skip(_reason, allow_module_level=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """saved(mode): the root of a run torchtitan saved with its async_mode ``mode``:
    "disabled" (dcp.save) or "async" (dcp.async_save: torch's staged copy, written by
    tierpoint in torch's thread). Each is saved once, by the first test that asks."""
    roots = {}

    def get(mode):
        if mode not in roots:
            root = tmp_path_factory.mktemp(f"titan-{mode}")
            out = run_ranks(2, "torchtitan_worker.py", "save", root, mode).stdout
            assert "TITAN-OK save steps=[2, 4] tensors=24" in out, out
            roots[mode] = root
        return roots[mode]
    return get


# "new-node": a local tier that holds nothing, as on a replacement node: the newest step is
# found on, and loaded from, the capacity tier
@pytest.mark.parametrize("mode, local, tier", [("disabled", "local", "local"),
                                               ("disabled", "new-node", "capacity"),
                                               ("async", "local", "local")])
def test_torchtitan_resumes_bit_exactly_in_a_fresh_process_group(saved, mode, local, tier):
    out = run_ranks(2, "torchtitan_worker.py", "load", saved(mode), local).stdout
    assert f"TITAN-OK load step=4 from {tier} tensors=24 bit_exact=yes resumed=yes" in out, out


@pytest.mark.parametrize("mode", ["disabled", "async"])
def test_what_torchtitan_wrote_verifies_and_restores_with_ckpt_restore(saved, mode):
    root = saved(mode)
    local = str(root / "local")
    view = tierpoint.open(local, run="titan")
    step_dir = view.path
    assert os.path.basename(step_dir) == "step_00000004"
    assert not any(".metadata" in files for _, _, files in os.walk(local))  # no DCP pickle
    capacity_copy = tierpoint.open(str(root / "pool"), run="titan").path
    cli = os.path.join(os.path.dirname(sys.executable), "tierpoint")
    for copy, tier in ((step_dir, "local"), (capacity_copy, "capacity")):
        verified = subprocess.run([cli, "verify", copy], capture_output=True, text=True)
        assert verified.returncode == 0 and f"OK  [{tier} tier, run 'titan' step 4" in \
            verified.stdout, verified.stdout + verified.stderr

    # torchtitan's flattened state: model FQNs at the top, then its Stateful containers
    # (the optimizer's hyperparameters are JSON values, as param_groups.<fqn>.<key>)
    template = {"train_state": {"step": -1}, "lr_scheduler": {"last_epoch": -1},
                "dataloader": None, "optimizer": {}}
    for name in view.names():
        arr = view[name]
        head, _, tail = name.rpartition("/")
        (template[head] if head else template)[tail] = torch.zeros(
            arr.shape, dtype=getattr(torch, str(arr.dtype)))
    template["optimizer"].update({k.split("/", 1)[1]: None for k in view.values
                                  if k.startswith("optimizer/param_groups.")})
    with tierpoint.Checkpointer(local=local, run="titan") as ck:  # 1 process; saved on 2
        out = ck.restore(template)
    assert out["train_state"] == {"step": 4} and out["lr_scheduler"] == {"last_epoch": 4}
    assert out["optimizer"]["param_groups.2.weight.lr"] == view.values[
        "optimizer/param_groups.2.weight.lr"] == pytest.approx(0.0075)  # lr 1e-2, warmed up
    with np.load(root / "ref.npz") as z:
        want = {k: torch.from_numpy(z[k]) for k in z.files if not k.startswith("after5/")}
    got = {f"model/{k}": v for k, v in out.items() if isinstance(v, torch.Tensor)}
    got.update({f"optim/{k}": v for k, v in out["optimizer"].items()
                if isinstance(v, torch.Tensor)})
    assert sorted(got) == sorted(want)
    assert [k for k in want if not torch.equal(got[k], want[k])] == []
