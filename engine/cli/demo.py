"""A small end-to-end demo: FSDP2 training on 4 MPI ranks, checkpoints, restore on 3 ranks.

    tierpoint demo [--dir DIR]                               the whole story (launches both)
    mpiexec -n 4 python -m tierpoint.cli.demo train --dir DIR [--steps 6 --every 2]
    mpiexec -n 3 python -m tierpoint.cli.demo restore --dir DIR [--steps 2]

``train`` trains a small MLP sharded with FSDP2 (``fully_shard``, CPU/gloo) with AdamW and
saves the model and optimizer state (``get_state_dict``: DTensor shards, step tensors,
param_groups) with tierpoint every ``--every`` steps, recording the loss on a fixed eval
batch. ``restore`` builds a fresh model and optimizer on however many ranks it runs on, fills
them from the latest checkpoint, checks that the eval loss is bit-for-bit the recorded one,
and trains on (saving again at the end). The layer sizes are chosen so that FSDP shards split
unevenly: the same checkpoint is read back into differently cut shards.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

RUN = "demo"
SIZES = (37, 50, 23, 5)
MODEL_NAME = "mlp-" + "-".join(map(str, SIZES))
MARKER = ".tierpoint-demo"  # marks a directory the demo created, and so may clear


# ---- inside the MPI ranks -----------------------------------------------------------------

def _setup():
    import torch

    torch.set_num_threads(1)  # one thread per rank: deterministic and no oversubscription
    from ..runtime.distenv import init_torch_distributed

    return init_torch_distributed("gloo")


def build_model(world: int, seed: int, lr: float = 1e-2, betas=(0.9, 0.95),
                weight_decay: float = 0.05):
    """The demo's FSDP2 MLP on a 1-D CPU mesh of ``world`` ranks, and its AdamW."""
    import torch
    import torch.nn as nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(SIZES, SIZES[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    model = nn.Sequential(*layers)
    mesh = init_device_mesh("cpu", (world,))
    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    return model, opt


def batch(seed: int, n: int = 32):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, SIZES[0], generator=g), torch.randn(n, SIZES[-1], generator=g)


def train_step(model, opt, step: int) -> float:
    import torch.nn.functional as F

    x, y = batch(1000 + step)  # the same batch on every rank
    opt.zero_grad(set_to_none=True)
    loss = F.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def eval_loss(model) -> float:
    import torch
    import torch.nn.functional as F

    x, y = batch(7)
    with torch.no_grad():
        return F.mse_loss(model(x), y).item()


def _rows(model_sd, world: int) -> str:
    """'13/13/13/11, 6/6/6/5, 2/2/1/0': rows of each weight's FSDP shard on each rank."""
    import torch.distributed as dist

    names = [k for k in model_sd if k.endswith("weight")]
    mine = [model_sd[k].to_local().shape[0] for k in names]
    every = [None] * world
    dist.all_gather_object(every, mine)
    return ", ".join("/".join(str(r[i]) for r in every) for i in range(len(names)))


def _say(rank: int, *args) -> None:
    if rank == 0:
        print(*args, flush=True)


def _checkpointer(directory: str):
    from ..api import Checkpointer

    return Checkpointer(local=directory, run=RUN)


def train(directory: str, steps: int, every: int) -> int:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, world = _setup()
    model, opt = build_model(world, seed=0)
    msd, _ = get_state_dict(model, opt)
    _say(rank, f"[train] FSDP2 {MODEL_NAME} MLP + AdamW on {world} ranks; shard rows per rank "
               f"of the 3 weights: {_rows(msd, world)}")
    _say(rank, "[train] each checkpoint: get_state_dict(model, optim) = parameters and AdamW "
               "moments as DTensor shards, step tensors, param_groups, plus the eval loss")
    pending = None
    with _checkpointer(directory) as ckpt:
        for step in range(1, steps + 1):
            loss = train_step(model, opt, step)
            if step % every:
                _say(rank, f"[train] step {step:2d}  loss {loss:.6f}")
                continue
            evaluated = eval_loss(model)
            msd, osd = get_state_dict(model, opt)
            state = {"model": msd, "optim": osd,
                     "train": {"step": step, "loss": loss, "eval_loss": evaluated,
                               "world_size": world}}
            if pending is not None:  # the previous checkpoint, written meanwhile
                pending.wait()
                _say(rank, f"[train]          checkpoint of step {pending.step} was committed "
                           f"{pending.stats['seconds']:.2f} s after its save() call")
            pending = ckpt.save(step, state,
                                metadata={"model": MODEL_NAME, "world_size": world})
            _say(rank, f"[train] step {step:2d}  loss {loss:.6f}  eval {evaluated:.6f}  "
                       f"save() returned after {pending.stats['blocking_seconds']:.3f} s "
                       "(host snapshot; written in the background while training goes on)")
        pending.wait()
        _say(rank, f"[train]          checkpoint of step {pending.step} was committed "
                   f"{pending.stats['seconds']:.2f} s after its save() call")
        # What is really on disk: the ring deletes the oldest once it holds keep_local.
        # Every rank of the demo shares one node-local directory, so rank 0's view is all.
        saved, kept = list(range(every, steps + 1, every)), ckpt.steps()
        _say(rank, _summary(saved, kept, ckpt.policy.keep_local, f"{directory}/{RUN}"))
    from ..runtime.distenv import exit_process

    exit_process(0)  # does not return: skips the interpreter teardown where gloo can abort
    return 0


def _summary(saved: list[int], kept: list[int], keep_local: int, where: str) -> str:
    """'[train] done: saved steps 2, 4, 6; the local tier keeps the newest 2 ...'."""
    def steps(values):
        if not values:
            return "no steps"
        return ("step " if len(values) == 1 else "steps ") + ", ".join(map(str, values))

    gone = [s for s in saved if s not in kept]
    text = f"[train] done: saved {steps(saved)}; on the local tier under {where}: {steps(kept)}"
    if gone:
        text += (f" (the ring keeps the newest {keep_local}, Policy keep_local; "
                 f"{steps(gone)} deleted)")
    return text


def restore(directory: str, more_steps: int) -> int:
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    rank, world = _setup()
    model, opt = build_model(world, seed=1234)  # other initial values: all must come from disk
    msd, osd = get_state_dict(model, opt)  # creates the AdamW state to be filled
    template = {"model": msd, "optim": osd,
                "train": {"step": 0, "loss": 0.0, "eval_loss": 0.0, "world_size": 0}}
    with _checkpointer(directory) as ckpt:
        t0 = time.perf_counter()
        out = ckpt.restore(template)  # latest step committed on every rank
        dt = time.perf_counter() - t0
        set_state_dict(model, opt, model_state_dict=out["model"], optim_state_dict=out["optim"])
        step, saved_eval = out["train"]["step"], out["train"]["eval_loss"]
        _say(rank, f"[restore] fresh model on {world} ranks, shard rows per rank now "
                   f"{_rows(out['model'], world)}; restored step {step} (saved by "
                   f"{out['train']['world_size']} ranks) in {dt:.2f} s")
        evaluated = eval_loss(model)
        same = evaluated == saved_eval
        _say(rank, f"[restore] eval loss {evaluated:.6f} vs {saved_eval:.6f} recorded at save: "
                   + ("bit-exact" if same else f"MISMATCH ({evaluated.hex()} != "
                                                 f"{saved_eval.hex()})"))
        if not same:
            sys.stdout.flush()
            return 1
        for s in range(step + 1, step + more_steps + 1):
            loss = train_step(model, opt, s)
            _say(rank, f"[restore] step {s:2d}  loss {loss:.6f}  (training continues)")
        if more_steps > 0:
            step = step + more_steps
            msd, osd = get_state_dict(model, opt)
            train_values = {"step": step, "loss": loss, "eval_loss": eval_loss(model),
                            "world_size": world}
            ckpt.save(step, {"model": msd, "optim": osd, "train": train_values},
                      metadata={"model": MODEL_NAME, "world_size": world}).wait()
            _say(rank, f"[restore] saved step {step} from {world} ranks")
    from ..runtime.distenv import exit_process

    exit_process(0)  # does not return: skips the interpreter teardown where gloo can abort
    return 0


# ---- the `tierpoint demo` driver (a single process) ---------------------------------------

def _prepare_dir(directory: str) -> None:
    """Create ``directory``, or clear it if an earlier demo made it; refuse anything else."""
    marker = os.path.join(directory, MARKER)
    if os.path.exists(directory):
        if os.path.exists(marker) or (os.path.isdir(directory) and not os.listdir(directory)):
            shutil.rmtree(directory)
        else:
            raise SystemExit(f"tierpoint demo: {directory} exists and was not made by the demo; "
                             "pass --dir with a new or empty directory")
    os.makedirs(directory)
    with open(marker, "w") as f:
        f.write("created by `tierpoint demo`; the next demo run clears this directory\n")


def demo_parser() -> argparse.ArgumentParser:
    """The options of ``tierpoint demo`` (also shown by ``tierpoint --help-all``)."""
    from .common import CliParser, at_least

    p = CliParser(prog="tierpoint demo", description="FSDP2 training on 4 MPI ranks with "
                  "tierpoint checkpoints, then restore on 3 ranks")
    p.add_argument("--dir", default="demo-ckpt", metavar="DIR", help="checkpoint directory (default: "
                   "./demo-ckpt; cleared first)")
    p.add_argument("--steps", type=at_least(1), metavar="N", default=6, help="training steps (default 6)")
    p.add_argument("--every", type=at_least(1), metavar="N", default=2,
                   help="checkpoint every N steps (default 2)")
    p.add_argument("--save-ranks", type=at_least(1), metavar="N", default=4,
                   help="ranks of the training job (default 4)")
    p.add_argument("--restore-ranks", type=at_least(1), metavar="M", default=3,
                   help="ranks of the job that restores (default 3)")
    return p


def main_demo(argv: list[str] | None = None) -> int:
    from ..runtime import distenv

    args = demo_parser().parse_args(argv)
    directory = os.path.abspath(args.dir)
    _prepare_dir(directory)
    n, m = args.save_ranks, args.restore_ranks
    print(f"tierpoint demo: train on {n} MPI ranks, checkpoint every {args.every} steps into "
          f"{directory}, then restore the latest on {m} ranks (each rank holds different, "
          "uneven FSDP shards of the same tensors)", flush=True)
    jobs = [(n, ["train", "--dir", directory, "--steps", str(args.steps),
                 "--every", str(args.every)]),
            (m, ["restore", "--dir", directory])]
    for ranks, job in jobs:
        print(f"$ mpiexec -n {ranks} python -m tierpoint.cli.demo {' '.join(job)}", flush=True)
        t0 = time.perf_counter()
        proc = distenv.launch(ranks, ["-m", "tierpoint.cli.demo", *job], timeout=600)
        if proc.returncode != 0:
            print(f"tierpoint demo: the {ranks}-rank {job[0]} job failed (exit "
                  f"{proc.returncode})", file=sys.stderr)
            return 1
        print(f"  ({job[0]} job took {time.perf_counter() - t0:.1f} s, "
              "most of it starting Python and torch on each rank)", flush=True)
    print(f"$ tierpoint ls {args.dir}", flush=True)
    # The command itself, as a user would type it (the demo does not import the CLI's parser).
    rc = subprocess.run([sys.executable, "-m", "tierpoint.cli", "ls", directory]).returncode
    print(f"The {m}-rank job read the {n}-rank checkpoint into its own shards and got the same "
          "eval loss bit for bit; tierpoint ls shows who saved each step.")
    return rc or 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tierpoint.cli.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("train", help="(under mpiexec) train with checkpoints")
    t.add_argument("--dir", required=True)
    t.add_argument("--steps", type=int, default=6)
    t.add_argument("--every", type=int, default=2)
    r = sub.add_parser("restore", help="(under mpiexec) restore the latest and train on")
    r.add_argument("--dir", required=True)
    r.add_argument("--steps", type=int, default=2, help="steps to train after restoring")
    sub.add_parser("demo", help="the whole demo (same as `tierpoint demo`)", add_help=False)
    args, rest = p.parse_known_args(argv)
    if args.mode == "demo":
        return main_demo(rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.mode == "train":
        if args.steps < 1 or args.every < 1:
            p.error("--steps and --every must be positive")
        return train(args.dir, args.steps, args.every)
    return restore(args.dir, args.steps)


if __name__ == "__main__":
    sys.exit(main())
