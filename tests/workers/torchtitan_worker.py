"""torchtitan's own CheckpointManager with tierpoint as its storage, on real MPI ranks (gloo).

torchtitan (0.3) has no argument for a storage writer: its ``CheckpointManager`` makes the
one call into ``dcp.save`` / ``dcp.async_save`` in ``dcp_save`` and into ``dcp.load`` in
``dcp_load``, and finds steps as ``FOLDER/step-N/.metadata``. ``TierpointCheckpointManager``
below is the subclass a torchtitan user selects in the trainer's config (torchtitan builds
the manager its ``Config`` names; the base class says to override its hooks). It overrides
four methods: those two calls (tierpoint's StorageWriter / StorageReader passed in), where a
step is (``_create_checkpoint_id``: the local copy, else the capacity copy) and which steps
exist (``_find_load_step``: both tiers). Everything else is torchtitan's own code: the state
it collects (its ModelWrapper's flattened FSDP2 model, its OptimizersContainer's flat
FQN-keyed AdamW state, its LR schedulers, the train state), the save interval, async mode,
the choice of the newest step, ``load_state_dict`` into the model.

argv: save ROOT ASYNC   ASYNC is torchtitan's async_mode ("disabled": dcp.save, "async":
                        dcp.async_save). FSDP2 MLP, torchtitan's AdamW container and warmup
                        schedule, 4 training steps with ``manager.save(step)`` at interval 2
                        (steps 2 and 4, each drained to the capacity tier ROOT/pool); rank 0
                        writes ROOT/ref.npz: every tensor's full value after step 4, and the
                        parameters after a 5th step.
      load ROOT LOCAL   a fresh process group, model (other seed) and manager whose local
                        tier is ROOT/LOCAL: ``manager.load()`` (the newest step: from the
                        local tier, or from the capacity tier when LOCAL is a new node's
                        empty one), bit-exact against step 4; then one more training step,
                        bit-exact against the saved run's 5th.

Prints TITAN-OK <what> on rank 0, or TITAN-FAIL and every rank's problems (exit 1).
"""
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from mpi4py import MPI

torch.set_num_threads(1)

import tierpoint  # noqa: E402
import tierpoint.dcp  # noqa: E402
from tierpoint.format.layout import capacity_head, parse_step_dir_name  # noqa: E402
from tierpoint.runtime import distenv  # noqa: E402

RANK, WORLD = distenv.init_torch_distributed_from_mpi("gloo")

import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.stateful import Stateful  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from torchtitan.components.checkpointer import MODEL, AsyncMode, CheckpointManager  # noqa: E402
from torchtitan.components.optimizer import (LRSchedulersContainer,  # noqa: E402
                                             OptimizersContainer, default_adamw)

from tierpoint.cli.demo import SIZES, build_model  # noqa: E402


class TierpointCheckpointManager(CheckpointManager):  # the README's, word for word
    @dataclass(kw_only=True, slots=True)
    class Config(CheckpointManager.Config):
        local: str = ""                     # tierpoint's node-local tier root
        persistent: list[str] = field(default_factory=list)  # its capacity pools
        run: str = "torchtitan"
        keep_local: int = 2
        drain_every: int = 1
        keep_latest_k: int = 0              # retention is tierpoint's Policy, not the purge

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        if self.enable:
            self.tierpoint = tierpoint.Checkpointer(
                local=config.local, persistent=config.persistent or None, run=config.run,
                policy=tierpoint.Policy(keep_local=config.keep_local,
                                        drain_every=config.drain_every))
            self.folder = self.tierpoint.local_root  # _load looks only where it exists
            os.makedirs(self.folder, exist_ok=True)

    def dcp_save(self, state_dict, checkpoint_id, async_mode, enable_garbage_collection=False,
                 to_hf=False):
        assert not to_hf, "export with `tierpoint export --format safetensors` instead"
        writer = tierpoint.dcp.StorageWriter(self.tierpoint, step=_step_of(checkpoint_id))
        if async_mode == AsyncMode.DISABLED:
            return dcp.save(state_dict, storage_writer=writer)
        return dcp.async_save(state_dict, storage_writer=writer, process_group=self.pg)

    def dcp_load(self, state_dict, checkpoint_id, from_hf, from_quantized):
        assert not from_hf, "import with `tierpoint import` instead"
        dcp.load(state_dict, storage_reader=tierpoint.dcp.StorageReader(
            self.tierpoint, _step_of(checkpoint_id)))
        self.states[MODEL].load_state_dict(state_dict)

    def _create_checkpoint_id(self, step, folder=""):  # the local copy, else the capacity one
        ck = self.tierpoint
        if step not in ck.steps(replicas=False) and step in ck.capacity_steps():
            return capacity_head(ck.pools, ck.run, step)
        return ck.step_dir(step)

    def _find_load_step(self, folder=""):  # the newest step on either tier
        own = self.tierpoint.steps(replicas=False)  # this node's own copies
        return max(own + self.tierpoint.capacity_steps(), default=-1)

    def _close(self):
        super()._close()
        self.tierpoint.close()


def _step_of(checkpoint_id):
    return parse_step_dir_name(os.path.basename(checkpoint_id))


class TrainState(Stateful):
    def __init__(self):
        self.step = 0

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = int(state["step"])


def trainer(root, seed, local="local", async_mode="disabled"):
    model = build_model(WORLD, seed)[0]  # the demo's FSDP2 MLP (its own AdamW is unused)
    optim = OptimizersContainer(_adamw(), model_parts=[model])
    sched = LRSchedulersContainer.Config(warmup_steps=2).build(optimizers=optim,
                                                               training_steps=10)
    state = TrainState()
    config = TierpointCheckpointManager.Config(
        enable=True, interval=2, async_mode=async_mode, last_save_model_only=False,
        local=os.path.join(root, local), persistent=[os.path.join(root, "pool")], run="titan")
    manager = config.build(  # as torchtitan's Trainer builds its checkpointer
        dataloader=None, model_parts=[model], optimizers=optim, lr_schedulers=sched,
        states={"train_state": state}, sd_adapter=None)
    assert type(manager) is TierpointCheckpointManager
    return model, optim, sched, state, manager


def _adamw():
    config = default_adamw(lr=1e-2)
    config.implementation = "for-loop"  # "fused" is torchtitan's CUDA default
    return config


def train_step(model, optim, sched, state):
    state.step += 1
    g = torch.Generator().manual_seed(1000 + state.step)
    x, y = torch.randn(16, SIZES[0], generator=g), torch.randn(16, SIZES[-1], generator=g)
    optim.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    optim.step()
    sched.step()


def full(tensors):
    """Every tensor's full value (a collective for DTensors), as numpy, by name."""
    out = {}
    for k, t in sorted(tensors.items()):
        if isinstance(t, torch.Tensor):
            t = t.full_tensor() if isinstance(t, DTensor) else t
            out[k] = t.detach().cpu().clone().numpy()
    return out


def snapshot(model, optim):
    return {**{f"model/{k}": v for k, v in full(model.state_dict()).items()},
            **{f"optim/{k}": v for k, v in full(optim.state_dict()).items()}}


def do_save(root, async_mode):
    os.makedirs(os.path.join(root, "pool"), exist_ok=True)
    model, optim, sched, state, manager = trainer(root, seed=0, async_mode=async_mode)
    for _ in range(4):
        train_step(model, optim, sched, state)
        manager.save(state.step)
    at4 = snapshot(model, optim)
    train_step(model, optim, sched, state)
    at5 = {f"after5/{k}": v for k, v in full(model.state_dict()).items()}
    manager.maybe_wait_for_saving()  # as torchtitan's trainer does before its next save
    steps = manager.tierpoint.steps()
    manager.close()  # drains the newest step if not yet
    if RANK == 0:
        np.savez(os.path.join(root, "ref.npz"), **at4, **at5)
    problems = [] if steps == [2, 4] else [f"rank {RANK}: steps saved: {steps}, not [2, 4]"]
    return problems, f"save steps={steps} tensors={len(at4)}"


def do_load(root, local):
    with np.load(os.path.join(root, "ref.npz")) as z:
        want = {k: z[k] for k in z.files}
    model, optim, sched, state, manager = trainer(root, seed=100 + WORLD, local=local)
    problems = []
    tier = "local" if 4 in manager.tierpoint.steps() else "capacity"
    before = snapshot(model, optim)
    if any(before[k].tobytes() == want[k].tobytes() for k in before if k.startswith("model/")):
        problems.append("the fresh model already equals the checkpoint: the test proves nothing")
    if not manager.load():
        problems.append("manager.load() found no checkpoint")
    got = snapshot(model, optim)
    expected = sorted(k for k in want if not k.startswith("after5/"))
    if sorted(got) != expected:
        problems.append(f"tensors differ: {sorted(set(got) ^ set(expected))}")
    problems += [f"{k}: not bit-exact after load" for k in expected
                 if k in got and not torch.equal(torch.from_numpy(got[k]),
                                                 torch.from_numpy(want[k]))]
    if (state.step, sched.state_dict()) != (4, {"last_epoch": 4}):
        problems.append(f"train step {state.step}, scheduler {sched.state_dict()}: not 4")
    train_step(model, optim, sched, state)  # the resumed run continues as the saved one did
    after5 = full(model.state_dict())
    problems += [f"{k}: step 5 after resume differs" for k, v in after5.items()
                 if not torch.equal(torch.from_numpy(v), torch.from_numpy(want[f"after5/{k}"]))]
    manager.close()
    return ([f"rank {RANK}: {p}" for p in problems],
            f"load step=4 from {tier} tensors={len(got)} bit_exact=yes resumed=yes")


def main():
    mode, root, arg = sys.argv[1:4]
    problems, detail = do_save(root, arg) if mode == "save" else do_load(root, arg)
    everyone = [p for ps in MPI.COMM_WORLD.allgather(problems) for p in ps]
    if everyone:  # every rank exits non-zero, so that none waits in a teardown collective
        if RANK == 0:
            print("TITAN-FAIL", *everyone, sep="\n  ", flush=True)
        sys.exit(1)
    if RANK == 0:
        print(f"TITAN-OK {detail}", flush=True)
    distenv.exit_process(0)


if __name__ == "__main__":
    main()
