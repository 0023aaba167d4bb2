"""tierpoint inside a torch.distributed job (no MPI): the default group is picked up, and an
explicit ProcessGroup works too. Ranks are started by the test with env:// variables.

argv: ROOT. Saves on the world's ranks, restores with another sharding, checks a rank's
failure reaches every rank. Prints TORCHDIST-OK on rank 0.
"""
import os
import sys

import torch
import torch.distributed as dist

import tierpoint

ROOT = sys.argv[1]
dist.init_process_group("gloo")
RANK, WORLD = dist.get_rank(), dist.get_world_size()
ROWS = 5 * WORLD + 2
problems = []


def rows_of(n, r):
    step = -(-ROWS // n)
    lo = min(r * step, ROWS)
    return lo, min(step, ROWS - lo)


full = torch.arange(ROWS * 3, dtype=torch.int64).reshape(ROWS, 3)
lo, n = rows_of(WORLD, RANK)
state = {"w": tierpoint.Shard(full[lo:lo + n].clone(), (ROWS, 3), (lo, 0)), "it": 11}

# Some library may have imported mpi4py: a one-process MPI world must not hide the torch job.
from mpi4py import MPI  # noqa: E402,F401

ck = tierpoint.Checkpointer(ROOT, run="td")  # comm=None -> default torch group
if ck._comm.kind != "torch":
    problems.append(f"picked {ck._comm.kind} communicator")
ck.save(1, state).wait()

# Restore reversed: rank r reads the rows rank WORLD-1-r saved.
lo2, n2 = rows_of(WORLD, WORLD - 1 - RANK)
holder = torch.zeros(n2, 3, dtype=torch.int64)
out = ck.restore({"w": tierpoint.Shard(holder, (ROWS, 3), (lo2, 0)), "it": 0})
if not torch.equal(holder, full[lo2:lo2 + n2]) or out["it"] != 11:
    problems.append(f"rank {RANK}: wrong values after restore")

# A failure on the last rank reaches every rank as the same error.
bad = dict(state)
if RANK == WORLD - 1:
    bad["oops"] = object()
try:
    ck.save(2, bad)
    problems.append(f"rank {RANK}: save with a bad leaf succeeded")
except tierpoint.UnsupportedStateError as e:
    if f"failed on rank {WORLD - 1}" not in str(e):
        problems.append(f"rank {RANK}: {e}")

# An explicit process group.
group = dist.new_group(list(range(WORLD)))
with tierpoint.Checkpointer(ROOT, run="td2", comm=group) as ck2:
    ck2.save(5, state).wait()
    if ck2.steps() != [5]:
        problems.append(f"explicit group: steps {ck2.steps()}")
# due() over gloo: rank 0's clock decides for every rank (its all-reduce of the verdict).
with tierpoint.Checkpointer(ROOT, run="td4", comm=group,
                            policy=tierpoint.Policy(every_seconds=1e-6)) as ck4:
    answers = [ck4.due(s) for s in (1, 2)]
    if answers != [True, True]:
        problems.append(f"rank {RANK}: due over gloo gave {answers}")
    try:
        ck4.due(3 + (RANK == WORLD - 1))
        problems.append(f"rank {RANK}: due at different steps did not fail")
    except tierpoint.ConfigurationError as e:
        if "different steps" not in str(e):
            problems.append(f"rank {RANK}: due at different steps: {e}")
ck.close()

# Tiers with a torch communicator: the background drain runs on a gloo group of its own.
pool = os.path.join(ROOT, "pool")
os.makedirs(pool, exist_ok=True)
with tierpoint.Checkpointer(os.path.join(ROOT, "ssd"), persistent=[pool], run="td3",
                            policy=tierpoint.Policy(keep_local=1, drain_every=2)) as ck3:
    for step in (1, 2, 3):
        ck3.save(step, state).wait()
    ck3.wait()
    if ck3.capacity_steps() != [2] or ck3.steps() != [3]:
        problems.append(f"tiers: local {ck3.steps()} capacity {ck3.capacity_steps()}")
if sorted(os.listdir(os.path.join(pool, "td3"))) != [".parts", "audit.jsonl", "step_00000002",
                                                      "step_00000003"]:
    problems.append(f"close did not drain the newest: {os.listdir(os.path.join(pool, 'td3'))}")

# combine over torch.distributed: emulated at rank 0 from the gathered values, with the MPI
# relay's results (each domain's combined value; every rank of a domain its domain's reply),
# and an exception in combine names the domain's leader on every rank.
from tierpoint.runtime.comm import Broadcast, Scatter, TorchComm  # noqa: E402

domains = (0,) * (WORLD - 1) + (1,)
groups = [[r for r in range(WORLD) if domains[r] == d] for d in (0, 1)]
tc = TorchComm()
tc.set_domains(domains)
tc = tc.duplicate()  # keeps them
combined, reply = tc.collect({"rank": RANK}, what="tc", timeout=60,
                             combine=lambda rs, vs: {"ranks": rs, "got": [v["rank"] for v in vs]},
                             answer=lambda cs: Scatter([[d, c] for d, c in enumerate(cs)]))
want = [{"ranks": g, "got": g} for g in groups]
if combined != (want if RANK == 0 else None) or reply != [domains[RANK], want[domains[RANK]]]:
    problems.append(f"rank {RANK}: torch combine gave {combined}, {reply}")


def refuse(rs, vs):
    if rs[0] == groups[1][0]:
        raise tierpoint.ShardingError("refused")
    return 0


try:
    tc.collect(RANK, what="tc", timeout=60, combine=refuse, answer=Broadcast)
    problems.append(f"rank {RANK}: torch combine's error was not raised")
except tierpoint.ShardingError as e:
    if str(e) != f"tc failed on rank {groups[1][0]}: refused":
        problems.append(f"rank {RANK}: torch combine raised {e}")

gathered = [None] * WORLD
dist.all_gather_object(gathered, problems)
if RANK == 0:
    flat = [p for ps in gathered for p in ps]
    print("TORCHDIST-FAIL" if flat else "TORCHDIST-OK", *flat, sep="\n  ")
dist.barrier()  # no MPI here to hold ranks while peers tear down their gloo groups
from tierpoint.runtime.distenv import exit_process  # noqa: E402

exit_process(1 if any(gathered) else 0)
