"""Preemption on real MPI ranks: one rank gets SIGUSR1 (as Slurm's --signal delivers it, a
real signal, here sent by the rank to itself at step 7); every rank learns it through
stop_requested() at the same step boundary, saves that step and stops. argv: ROOT.
Prints PREEMPT-OK."""
import os
import signal
import sys

import torch
from mpi4py import MPI

import tierpoint

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402

ROOT = sys.argv[1]
W = MPI.COMM_WORLD
RANK, SIZE = W.Get_rank(), W.Get_size()
problems = []

ck = tierpoint.Checkpointer(os.path.join(ROOT, "local"), run="p",
                            policy=tierpoint.Policy(keep_local=10)).handle_preemption()
w = torch.zeros(8, 4)
state = {"w": tierpoint.Shard(w, (8 * SIZE, 4), (8 * RANK, 0)), "step": 0}
stopped = None
for step in range(1, 1000):
    w.fill_(step * 100 + RANK)  # this step's training
    state["step"] = step
    if step == 7 and RANK == 2:
        os.kill(os.getpid(), signal.SIGUSR1)  # the scheduler's warning reaches one rank
    if ck.stop_requested():
        ck.save(step, state, blocking=True)  # the final checkpoint, committed on return
        stopped = step
        break
    if step % 3 == 0:
        ck.save(step, state)  # the regular async checkpoints
steps_stopped = W.allgather(stopped)
if steps_stopped != [7] * SIZE:
    problems.append(f"ranks stopped at {steps_stopped}")
if ck.preempted != (RANK == 2):
    problems.append(f"rank {RANK}: preempted={ck.preempted}")
if ck.steps() != [3, 6, 7]:
    problems.append(f"rank {RANK}: committed {ck.steps()}")
out = ck.restore({"w": tierpoint.Shard(torch.zeros(8, 4), (8 * SIZE, 4), (8 * RANK, 0)),
                  "step": -1})
if out["step"] != 7 or not torch.equal(out["w"].data, torch.full((8, 4), 700.0 + RANK)):
    problems.append(f"rank {RANK}: restored step {out['step']}")
ck.close()
if signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL:
    problems.append("close() did not put the previous SIGUSR1 handler back")
P.report(problems, "PREEMPT")
