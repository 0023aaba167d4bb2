"""An example trainer for slurm/train.sbatch: FSDP2 on CPU (gloo) over MPI ranks, checkpointed
with tierpoint to node-local SSD and drained to capacity pools; stops cleanly on Slurm's
time-limit signal and resumes from the latest checkpoint on any number of ranks.

    sbatch --ntasks=4 slurm/train.sbatch slurm/train_example.py [--every 20] [--max-steps N]

Settings from the environment (the sbatch template sets TIERPOINT_LOCAL):
  TIERPOINT_LOCAL        node-local tier root; ``{node}`` becomes the node's name
  TIERPOINT_PERSISTENT   capacity pools, space-separated (optional; without, local only)

Each job restores the newest checkpoint of the run, if any (from the local tier, or from the
capacity tier when the node's copy is gone; tierpoint reshards to this job's ranks), trains,
saves every ``--every`` steps in the background, and asks ``stop_requested()`` at every step.
When Slurm's warning signal arrived (on any rank), or at ``--max-steps``, every rank saves
that step with ``blocking=True`` and ``close()`` drains it to the capacity tier.

Rank 0 prints lines a test can check, each starting with ``EXAMPLE``: the restored step and
where it was read, the eval loss (as ``float.hex``, so equality is bit-for-bit) and a SHA-256
of every full tensor of the model and optimizer state, once after restoring and once at the
final save. A restore is exact when the hashes after restoring equal those of the save.
"""
from __future__ import annotations

import signal
import time

T0 = time.monotonic()

# Slurm's warning can come before the trainer got to handle_preemption() (importing torch
# alone takes seconds). Python's default action for SIGUSR1 is to die, so note such an early
# signal here, first thing, and replay it once the checkpointer's handlers are installed.
_early: list[int] = []


def _note_early(signum, frame):
    _early.append(signum)


for _sig in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(_sig, _note_early)

import argparse  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

RUN = "example"
def say(rank: int, *parts) -> None:
    if rank == 0:
        print(f"[{time.monotonic() - T0:6.1f}s]", *parts, flush=True)


def full_hashes(tree, prefix: str = "") -> dict[str, str]:
    """SHA-256 of every tensor in a state dict, whole (collective: a DTensor is gathered)."""
    import torch
    from torch.distributed.tensor import DTensor

    out: dict[str, str] = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) \
        if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, DTensor):
            value = value.full_tensor()
        if isinstance(value, torch.Tensor):
            out[name] = hashlib.sha256(value.detach().contiguous().numpy().tobytes()).hexdigest()
        else:
            out.update(full_hashes(value, name + "."))
    return out


def report(rank: int, phase: str, step: int, msd, osd, loss_value: float) -> None:
    hashes = full_hashes({"model": msd, "optim": osd})  # every rank: the gathers are collective
    say(rank, f"EXAMPLE-{phase} step={step} eval_loss={loss_value.hex()} tensors={len(hashes)}")
    for name, digest in sorted(hashes.items()):
        say(rank, f"EXAMPLE-HASH {phase} {name} {digest}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--every", type=int, default=20, help="async checkpoint every N steps")
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop (saving) at this step even without a signal; 0: no limit")
    p.add_argument("--step-seconds", type=float, default=0.0,
                   help="extra time per step, standing in for a bigger model's compute")
    p.add_argument("--run", default=RUN, help="tierpoint run name")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # ranks share the cores; one thread each is deterministic too
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    import tierpoint
    from tierpoint.cli.demo import build_model, eval_loss, train_step
    from tierpoint.runtime.distenv import exit_process, init_torch_distributed

    rank, world = init_torch_distributed("gloo")
    local = os.environ.get("TIERPOINT_LOCAL")
    if not local:
        print("train_example: set TIERPOINT_LOCAL (the node-local tier root)", file=sys.stderr)
        return 2
    pools = os.environ.get("TIERPOINT_PERSISTENT", "").split() or None
    # The demo's model (uneven FSDP shards on 2, 3 or 4 ranks) and its training step.
    model, opt = build_model(world, seed=0)
    ckpt = tierpoint.Checkpointer(local, persistent=pools, run=args.run).handle_preemption()
    if _early:  # the scheduler's warning came during startup: hand it to tierpoint now
        say(rank, f"EXAMPLE-EARLY-SIGNAL {signal.Signals(_early[0]).name} during startup")
        os.kill(os.getpid(), _early[0])
    job = os.environ.get("SLURM_JOB_ID", "-")
    say(rank, f"EXAMPLE-START job={job} world={world} local={ckpt.local_root} "
              f"pools={' '.join(ckpt.pools) or '-'}")

    msd, osd = get_state_dict(model, opt)  # creates the AdamW state a restore fills
    template = {"model": msd, "optim": osd,
                "train": {"step": 0, "eval_loss": 0.0, "world_size": 0}}
    start = 0
    local_before = ckpt.steps()  # this rank's node-local steps (not collective)
    try:
        out = ckpt.restore(template)
    except tierpoint.CheckpointNotFoundError:
        say(rank, "EXAMPLE-FRESH no checkpoint yet; training from the initial values")
    else:
        set_state_dict(model, opt, model_state_dict=out["model"], optim_state_dict=out["optim"])
        start = out["train"]["step"]
        saved = out["train"]["eval_loss"]
        say(rank, f"EXAMPLE-RESTORED step={start} saved_by={out['train']['world_size']} "
                  f"from={ckpt.parent['path']} local_steps_before={local_before}")
        msd, osd = get_state_dict(model, opt)
        now = eval_loss(model)
        report(rank, "AFTER-RESTORE", start, msd, osd, now)
        say(rank, f"EXAMPLE-EVAL-MATCH {'yes' if now == saved else 'NO'} "
                  f"restored={now.hex()} saved={saved.hex()}")

    step, reason = start, None
    while reason is None:
        step += 1
        loss = train_step(model, opt, step)
        if args.step_seconds:
            time.sleep(args.step_seconds)
        if ckpt.stop_requested():  # collective: every rank stops at the same step
            reason = "signal"
        elif args.max_steps and step >= args.max_steps:
            reason = "max-steps"
        elif step % args.every == 0:
            msd, osd = get_state_dict(model, opt)
            ckpt.save(step, {"model": msd, "optim": osd,
                             "train": {"step": step, "eval_loss": eval_loss(model),
                                       "world_size": world}})
            say(rank, f"EXAMPLE-SAVE step={step} loss={loss:.6f} (async)")

    if reason == "signal":
        say(rank, f"EXAMPLE-STOP step={step} signalled_here={ckpt.preempted}")
    msd, osd = get_state_dict(model, opt)
    final_eval = eval_loss(model)
    ckpt.save(step, {"model": msd, "optim": osd,
                     "train": {"step": step, "eval_loss": final_eval, "world_size": world}},
              blocking=True)  # committed on the local tier when it returns
    report(rank, "FINAL-SAVE", step, msd, osd, final_eval)
    ckpt.close()  # drains the newest step to the capacity tier (collective)
    say(rank, f"EXAMPLE-CLOSED reason={reason} step={step} capacity_steps={ckpt.capacity_steps()}"
              f" trained={step - start}")
    exit_process(0)  # does not return: skips the interpreter teardown where gloo can abort
    return 0


if __name__ == "__main__":
    sys.exit(main())
