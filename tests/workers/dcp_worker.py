"""tierpoint as torch.distributed.checkpoint's storage, on real MPI ranks (gloo).

argv: save ROOT              FSDP2 MLP + AdamW (4 ranks) trained 2 steps; ``get_state_dict``
                             saved through ``dcp.save`` with tierpoint.dcp.StorageWriter (run
                             "dcp"), ``dcp.async_save`` with it (run "async") and through
                             ``ckpt.save`` (run "native"), step 2, the two through the
                             writer with nothing staged by tierpoint (its stats); rank 0
                             writes ROOT/ref.npz (every tensor's full value) and ROOT/ref.json.
      load ROOT RUN HOW      a fresh model and optimizer (other seed, other lr) on this world
                             size, filled from RUN through ``dcp.load`` with StorageReader
                             (HOW=dcp) or ``ckpt.restore`` (HOW=restore), then checked
                             bit-exact against the reference, param_groups and values too.

Prints DCP-OK <what> on rank 0; DCP-MISMATCH lines and exit 1 otherwise.
"""
import json
import os
import sys

import numpy as np
import torch

torch.set_num_threads(1)

import tierpoint  # noqa: E402
import tierpoint.dcp as tdcp  # noqa: E402
from tierpoint.runtime import distenv  # noqa: E402

RANK, WORLD = distenv.init_torch_distributed_from_mpi("gloo")

import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from tierpoint.cli.demo import SIZES, build_model  # noqa: E402
LR, BETAS, WD = 1e-2, (0.9, 0.95), 0.05


def train(model, opt, steps):
    for step in range(1, steps + 1):
        g = torch.Generator().manual_seed(1000 + step)
        x, y = torch.randn(16, SIZES[0], generator=g), torch.randn(16, SIZES[-1], generator=g)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def leaves(state, prefix=""):
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    out = {}
    items = state.items() if isinstance(state, dict) else \
        enumerate(state) if isinstance(state, (list, tuple)) else ()
    for k, v in items:
        out.update(leaves(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def full_state(model, opt):
    msd, osd = get_state_dict(model, opt)
    out = {}
    for k, t in leaves({"model": msd, "optim": osd}).items():
        t = t.full_tensor() if isinstance(t, DTensor) else t  # collective
        out[k] = t.detach().cpu().clone().numpy()
    return out


def checkpointer(root, run):
    return tierpoint.Checkpointer(local=os.path.join(root, "local"), run=run)


def do_save(root):
    model, opt = build_model(WORLD, 0, lr=LR, betas=BETAS, weight_decay=WD)
    train(model, opt, 2)
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd, "train": {"step": 2, "world_size": WORLD}}
    with checkpointer(root, "dcp") as ck:
        through_save = tdcp.StorageWriter(ck, step=2)
        dcp.save(state, storage_writer=through_save)
        steps = ck.steps()
    with checkpointer(root, "native") as ck:
        ck.save(2, state).wait()
    with checkpointer(root, "async") as ck:  # DCP's staging copy, then the same writer
        through_async = tdcp.StorageWriter(ck, step=2)
        dcp.async_save(state, storage_writer=through_async).result()
    # Neither staged a copy of tierpoint's (under async_save, torch's copy is the only one).
    ran = {how: (w.handle.stats["mode"], w.handle.stats["staged_bytes"])
           for how, w in (("dcp.save", through_save), ("dcp.async_save", through_async))}
    problems = [f"{how}: the writer's save ran {mode!r} and staged {staged} bytes"
                for how, (mode, staged) in ran.items() if (mode, staged) != ("blocking", 0)]
    full = full_state(model, opt)
    if RANK == 0:
        np.savez(os.path.join(root, "ref.npz"), **full)
        with open(os.path.join(root, "ref.json"), "w") as f:
            json.dump({"param_groups": json.loads(json.dumps(osd["param_groups"])),
                       "keys": sorted(full)}, f)
    return problems + ([] if steps == [2] else [f"rank {RANK}: steps after dcp.save: {steps}"])


def do_load(root, run, how):
    with np.load(os.path.join(root, "ref.npz")) as z:
        want = {k: z[k] for k in z.files}
    with open(os.path.join(root, "ref.json")) as f:
        ref = json.load(f)
    model, opt = build_model(WORLD, 100 + WORLD, lr=0.5)
    msd, osd = get_state_dict(model, opt)  # initialises AdamW state (zero moments)
    before = full_state(model, opt)
    problems = []
    if sum(before[k].tobytes() == want[k].tobytes() for k in want if k in before) > 2:
        problems.append("the fresh model already equals the checkpoint: the test proves nothing")
    template = {"model": msd, "optim": osd, "train": {"step": -1, "world_size": 0}}
    with checkpointer(root, run) as ck:
        if how == "dcp":
            dcp.load(template, storage_reader=tdcp.StorageReader(ck))
            out = template
        else:
            out = ck.restore(template)
    if out["train"] != {"step": 2, "world_size": 4}:
        problems.append(f"train values {out['train']}")
    set_state_dict(model, opt, model_state_dict=out["model"], optim_state_dict=out["optim"])
    got = full_state(model, opt)
    if sorted(got) != ref["keys"]:
        problems.append(f"keys differ: {sorted(set(got) ^ set(ref['keys']))}")
    bad = [k for k in ref["keys"] if k in got and
           (got[k].dtype, got[k].shape, got[k].tobytes()) != (want[k].dtype, want[k].shape,
                                                              want[k].tobytes())]
    problems += [f"{k}: not bit-exact" for k in bad]
    _, osd2 = get_state_dict(model, opt)
    if json.loads(json.dumps(osd2["param_groups"])) != ref["param_groups"]:
        problems.append(f"param_groups {osd2['param_groups']} != {ref['param_groups']}")
    if not problems and RANK == 0:
        print(f"DCP-OK load {run} via {how} 4->{WORLD} arrays={len(got)} bit_exact=yes",
              flush=True)
    return problems


def main():
    mode, root = sys.argv[1], sys.argv[2]
    problems = do_save(root) if mode == "save" else do_load(root, sys.argv[3], sys.argv[4])
    if mode == "save" and not problems and RANK == 0:
        print("DCP-OK save 4", flush=True)
    if problems:
        for p in problems:
            print(f"DCP-MISMATCH rank {RANK}: {p}", flush=True)
        sys.exit(1)
    distenv.destroy()
    distenv.exit_process(0)


if __name__ == "__main__":
    main()
