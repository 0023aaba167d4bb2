"""FSDP2 (fully_shard) MLP + AdamW on CPU/gloo: train, save on N ranks, restore on M ranks.

argv: save ROOT REF STEPS EVERY
      restore ROOT REF SAVED_WORLD [SAVED_WORLD ...]

``save`` trains STEPS steps on this world size, saving ``{"model", "optim", "train"}`` (from
``get_state_dict``) every EVERY steps to ROOT under run ``n<WORLD>``. After the last save it
writes, on rank 0, REF/n<WORLD>.npz (the full, unsharded value of every saved tensor, from
``full_tensor()``) and REF/n<WORLD>.json (param_groups, the train values, the loss of the next
step and the full parameters after it in REF/n<WORLD>_after.npz), then runs that next step.

``restore`` builds a fresh model and optimizer (other seed, other lr) for each SAVED_WORLD,
restores the latest checkpoint into the ``get_state_dict`` template, applies it with
``set_state_dict``, and checks: every tensor bit-exact against the reference, param_groups and
train values equal, the optimizer really uses the restored hyperparameters, and that the next
training step gives bit-exactly the loss the saving job got (the forward pass all-gathers the
parameters, so it does not depend on the world size) and parameters close to the saving job's
after the step (gradient averaging over a different world size may round differently).

Prints FSDP-OK save <world> ... / FSDP-OK restore <saved>-><world> ...; on any mismatch prints
FSDP-MISMATCH lines and exits 1 on every rank.
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn

torch.set_num_threads(1)

import tierpoint  # noqa: E402
from tierpoint.runtime import distenv  # noqa: E402

import ranklog  # noqa: E402  (tests/workers/ranklog.py)

RANK, WORLD = distenv.init_torch_distributed_from_mpi("gloo")
# When a rank fails, mpiexec names a rank it killed afterwards and may drop what the failing
# rank wrote last: each rank keeps its own log (see ranklog.py), which the test shows.
ranklog.start(f"{sys.argv[1]}-n{WORLD}", RANK)

from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from tierpoint.cli.demo import SIZES, build_model  # noqa: E402  (dims 50, 23, 5: uneven on 2, 3, 4)
SAVE_LR, SAVE_BETAS, SAVE_WD = 1e-2, (0.9, 0.95), 0.05


def build(seed, lr, betas=(0.9, 0.999), weight_decay=0.01):
    return build_model(WORLD, seed, lr=lr, betas=betas, weight_decay=weight_decay)


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, SIZES[0], generator=g), torch.randn(16, SIZES[-1], generator=g)


def train_step(model, opt, step):
    x, y = batch(step)
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def tensor_leaves(state, prefix=""):
    """{path: tensor} for every tensor in a nested dict/list state, in order."""
    out = {}
    if isinstance(state, torch.Tensor):
        out[prefix] = state
    elif isinstance(state, dict):
        for k, v in state.items():
            out.update(tensor_leaves(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(tensor_leaves(v, f"{prefix}/{i}"))
    return out


def full_numpy(t):
    """The unsharded value of a tensor (collective for a DTensor) as a numpy copy."""
    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().cpu().clone().numpy()


def full_state(model, opt):
    msd, osd = get_state_dict(model, opt)
    return {k: full_numpy(v) for k, v in tensor_leaves({"model": msd, "optim": osd}).items()}


def rows_per_rank(model_sd):
    """'0.weight 13/13/13/11, ...': dim-0 rows of each weight's shard on every rank."""
    import torch.distributed as dist

    mine = [v.to_local().shape[0] for k, v in model_sd.items() if k.endswith("weight")]
    every = [None] * WORLD
    dist.all_gather_object(every, mine)
    names = [k for k in model_sd if k.endswith("weight")]
    return ", ".join(f"{k} " + "/".join(str(r[i]) for r in every) for i, k in enumerate(names))


def plain_json(x):
    return json.loads(json.dumps(x))


def bits_equal(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape
            and a.tobytes() == b.tobytes())


def log(*args):
    if RANK == 0:
        print(*args, flush=True)


def do_save(root, ref, steps, every):
    model, opt = build(0, SAVE_LR, SAVE_BETAS, SAVE_WD)
    saved = []
    with tierpoint.Checkpointer(local=root, run=f"n{WORLD}") as ckpt:
        for step in range(1, steps + 1):
            loss = train_step(model, opt, step)
            if step % every:
                continue
            msd, osd = get_state_dict(model, opt)
            train = {"step": step, "loss": loss, "world_size": WORLD}
            # No wait(): training goes on (and changes the parameters) while the save is
            # written; the checkpoint must still hold the values at the call.
            ckpt.save(step, {"model": msd, "optim": osd, "train": train},
                      metadata={"model": "mlp-37-50-23-5", "world_size": WORLD})
            ranklog.note(f"save of step {step} started")
            saved.append(step)
        last = saved[-1]
        assert last == steps, "STEPS must be a multiple of EVERY"
        msd, osd = get_state_dict(model, opt)
        leaves = tensor_leaves({"model": msd, "optim": osd})
        shards = rows_per_rank(msd)
        full = {k: full_numpy(v) for k, v in leaves.items()}
        groups = plain_json(osd["param_groups"])
        next_loss = train_step(model, opt, last + 1)
        after = {k: v for k, v in full_state(model, opt).items() if k.startswith("model/")}
        if RANK == 0:
            os.makedirs(ref, exist_ok=True)
            np.savez(os.path.join(ref, f"n{WORLD}.npz"), **full)
            np.savez(os.path.join(ref, f"n{WORLD}_after.npz"), **after)
            with open(os.path.join(ref, f"n{WORLD}.json"), "w") as f:
                json.dump({"param_groups": groups, "train": train, "steps": saved,
                           "next_loss": next_loss.hex(), "keys": sorted(full)}, f)
        log(f"shard rows per rank on {WORLD} ranks: {shards}")
        log(f"FSDP-OK save {WORLD} steps={saved} arrays={len(full)} "
            f"loss={loss:.6f} next_loss={next_loss:.6f}")
        ranklog.note("checks done; closing the checkpointer")
    ranklog.note("checkpointer closed")


def do_restore(root, ref, saved_worlds):
    problems = []
    for n in saved_worlds:
        bad = []
        with open(os.path.join(ref, f"n{n}.json")) as f:
            want = json.load(f)
        with np.load(os.path.join(ref, f"n{n}.npz")) as z:
            want_full = {k: z[k] for k in z.files}
        with np.load(os.path.join(ref, f"n{n}_after.npz")) as z:
            want_after = {k: z[k] for k in z.files}
        # Other seed and other hyperparameters: everything must come from the checkpoint.
        model, opt = build(100 + WORLD, lr=0.5)
        msd, osd = get_state_dict(model, opt)  # initialises AdamW state (step=1, zero moments)
        before = full_state(model, opt)
        differ = sum(not bits_equal(before[k], want_full[k]) for k in want_full if k in before)
        if differ < len(want_full) // 2:
            bad.append(f"fresh model already equals the checkpoint in {len(want_full) - differ} "
                       "arrays: the test would prove nothing")
        template = {"model": msd, "optim": osd,
                    "train": {"step": -1, "loss": 0.0, "world_size": 0}}
        with tierpoint.Checkpointer(local=root, run=f"n{n}") as ckpt:
            steps = ckpt.steps()
            out = ckpt.restore(template)
        if steps != want["steps"]:
            bad.append(f"steps() gave {steps}, saved {want['steps']}")
        if out["train"] != want["train"]:
            bad.append(f"train values {out['train']} != saved {want['train']}")
        # The template's tensors alias the live parameters and optimizer state, so the
        # in-place restore is already live; set_state_dict is still needed for param_groups.
        aliased = all(bits_equal(v, want_full[k]) for k, v in full_state(model, opt).items()
                      if k.startswith("model/"))
        set_state_dict(model, opt, model_state_dict=out["model"], optim_state_dict=out["optim"])
        got = full_state(model, opt)
        if sorted(got) != want["keys"]:
            bad.append(f"state keys differ: {sorted(set(got) ^ set(want['keys']))}")
        mismatched = [k for k in want["keys"] if k in got and not bits_equal(got[k], want_full[k])]
        for k in mismatched[:8]:
            g, w = got[k], want_full[k]
            detail = (f"max |diff| {np.max(np.abs(g.astype(np.float64) - w)):.3g}"
                      if g.shape == w.shape else f"shape {g.shape} != {w.shape}")
            bad.append(f"{k}: not bit-exact ({detail})")
        if len(mismatched) > 8:
            bad.append(f"... and {len(mismatched) - 8} more arrays")
        _, osd2 = get_state_dict(model, opt)
        if plain_json(osd2["param_groups"]) != want["param_groups"]:
            bad.append(f"param_groups {osd2['param_groups']} != saved {want['param_groups']}")
        g0 = opt.param_groups[0]
        if (g0["lr"], tuple(g0["betas"]), g0["weight_decay"]) != (SAVE_LR, SAVE_BETAS, SAVE_WD):
            bad.append(f"optimizer runs with lr={g0['lr']} betas={g0['betas']} "
                       f"wd={g0['weight_decay']}, saved {SAVE_LR} {SAVE_BETAS} {SAVE_WD}")
        steps_t = {k: float(v) for k, v in got.items() if k.endswith("/step")}
        # Training continues: the next step's loss is a forward pass over all-gathered
        # parameters, identical to the saving job's bit for bit; the update after it averages
        # gradients over another world size, so it is compared with a tolerance.
        step = out["train"]["step"]
        loss = train_step(model, opt, step + 1)
        if not math.isfinite(loss):
            bad.append(f"loss after restore is {loss}")
        if loss.hex() != want["next_loss"]:
            bad.append(f"next-step loss {loss.hex()} != {want['next_loss']} from the saving job")
        after = full_state(model, opt)
        worst, exact = 0.0, True
        for k, w in want_after.items():
            g = after[k]
            exact &= bits_equal(g, w)
            diff = float(np.max(np.abs(g.astype(np.float64) - w), initial=0.0))
            worst = max(worst, diff)
            if not np.allclose(g, w, rtol=1e-5, atol=1e-6):
                bad.append(f"{k} after one more step: max |diff| {diff:.3g} from the saving job")
        loss2 = train_step(model, opt, step + 2)
        if not math.isfinite(loss2):
            bad.append(f"second loss after restore is {loss2}")
        if bad:
            problems += [f"{n}->{WORLD}: {b}" for b in bad]
            continue
        log(f"shard rows per rank on {WORLD} ranks: {rows_per_rank(out['model'])}")
        log(f"FSDP-OK restore {n}->{WORLD} step={step} arrays={len(got)} bit_exact=yes "
            f"step_tensors={sorted(set(steps_t.values()))} aliased={'yes' if aliased else 'no'} "
            f"next_loss={loss:.6f} (bit-exact) after_step_exact={'yes' if exact else 'no'} "
            f"max_diff={worst:.3g} loss2={loss2:.6f}")
    return problems


def main():
    mode, root, ref = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "save":
        do_save(root, ref, int(sys.argv[4]), int(sys.argv[5]))
        problems = []
    elif mode == "restore":
        problems = do_restore(root, ref, [int(n) for n in sys.argv[4:]])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    if problems:
        # Every rank compared the same full tensors, so all of them fail together.
        for p in problems:
            log(f"FSDP-MISMATCH {p}")
        sys.stdout.flush()
        sys.exit(1)
    ranklog.note("checks done; destroying the process group")
    distenv.destroy()
    ranklog.note("destroyed; finalising MPI and exiting")
    distenv.exit_process(0)


if __name__ == "__main__":
    main()
