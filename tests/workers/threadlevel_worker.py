"""MPI initialised at MPI_THREAD_SERIALIZED: tierpoint warns, then saves and drains in the
caller's thread (no background collectives), and everything still commits and restores.
argv: ROOT. Prints THREADLEVEL-OK."""
import os
import sys
import warnings

import mpi4py

mpi4py.rc.thread_level = "serialized"
from mpi4py import MPI  # noqa: E402

import torch  # noqa: E402

import tierpoint  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402

ROOT = sys.argv[1]
RANK, SIZE = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
problems = []
if MPI.Query_thread() != MPI.THREAD_SERIALIZED:
    problems.append(f"thread level {MPI.Query_thread()}")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ck = tierpoint.Checkpointer(os.path.join(ROOT, "local"), persistent=os.path.join(ROOT, "pool"),
                                run="t", policy=tierpoint.Policy(keep_local=1, drain_every=1))
if not any("MPI_THREAD_MULTIPLE" in str(w.message) for w in caught):
    problems.append("no warning about the thread level")


def state(step):
    rows = torch.arange(RANK * 40, RANK * 40 + 40, dtype=torch.int64).reshape(8, 5) + step
    return {"w": tierpoint.Shard(rows, (8 * SIZE, 5), (8 * RANK, 0))}


for step in (1, 2):
    handle = ck.save(step, state(step))
    if not handle.done():
        problems.append(f"step {step}: save() returned before its commit")
    if (handle.stats["mode"], handle.stats["blocking_reason"]) != (
            "blocking", "MPI below MPI_THREAD_MULTIPLE"):
        problems.append(f"step {step}: the handle's stats do not say why it blocked: "
                        f"{handle.stats}")
    if ck._tiering._drain_thread is not None:
        problems.append(f"step {step}: a background drain thread was started")
if ck.capacity_steps() != [1, 2] or ck.steps() != [2]:
    problems.append(f"capacity {ck.capacity_steps()} local {ck.steps()}")
tpl = {"w": tierpoint.Shard(torch.zeros(8, 5, dtype=torch.int64), (8 * SIZE, 5), (8 * RANK, 0))}
if not torch.equal(ck.restore(tpl, step=1)["w"].data, state(1)["w"].data):  # capacity tier
    problems.append("step 1 from the capacity tier differs")
ck.close()
P.report(problems, "THREADLEVEL")
