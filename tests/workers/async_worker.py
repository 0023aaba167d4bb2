"""Async saves on real MPI ranks (4 ranks as 2 "nodes"). argv: ROOT. Prints ASYNC-OK <cases>.

Values encode their global index and the step, and are compared bit-exactly. Cases:
1. back-to-back saves, the trainer overwriting its tensors right after each save() returns;
   every step restores its own values (each node's tier holds its own ranks' rows, so the
   restore keeps the saved sharding; resharding is covered by test_mpi_matrix);
2. a state over the staging budget (staged and written in parts);
3. a background write failure on one rank: wait() raises the same error on every rank,
   nothing is committed on any node, the earlier checkpoint restores;
4. a failure nobody waited for is raised by the next save(), the same on every rank;
5. a failure at the commit on one node's leader: the other node's marker is taken back.
"""
import os
import sys

import numpy as np
import torch
from mpi4py import MPI

import tierpoint

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402

ROOT = sys.argv[1]
W = MPI.COMM_WORLD
RANK, SIZE = W.Get_rank(), W.Get_size()
ROWS, COLS = 4 * SIZE + 3, 10
problems = []


def full(name, step, dtype="float32"):
    bits = P.global_bits(name, (ROWS, COLS), dtype)
    return bits + np.asarray(step, dtype=bits.dtype)  # wraps for ints: still exact


def by_rows(step):
    lo, n = P.split(ROWS, SIZE, "even")[RANK]
    return {name: tierpoint.Shard(P.as_torch(P._c(full(name, step, dt)[lo:lo + n]), dt),
                                  (ROWS, COLS), (lo, 0))
            for name, dt in (("w", "float32"), ("e", "bfloat16"))} | {"step": step}


def template():
    lo, n = P.split(ROWS, SIZE, "even")[RANK]
    return {name: tierpoint.Shard(torch.zeros(n, COLS, dtype=getattr(torch, dt)),
                                  (ROWS, COLS), (lo, 0))
            for name, dt in (("w", "float32"), ("e", "bfloat16"))} | {"step": -1}


def check(out, step, case):
    lo, n = P.split(ROWS, SIZE, "even")[RANK]
    for name, dt in (("w", "float32"), ("e", "bfloat16")):
        want = full(name, step, dt)[lo:lo + n]
        if not np.array_equal(P.torch_bits(out[name].data).view(want.dtype), want):
            problems.append(f"{case}: {name} of step {step} differs on rank {RANK}")
    if out["step"] != step:
        problems.append(f"{case}: step value {out['step']} != {step}")


def error_text(fn):
    try:
        fn()
    except tierpoint.CheckpointError as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def same_everywhere(text, case, must_contain):
    texts = W.allgather(text)
    if len(set(texts)) != 1:
        problems.append(f"{case}: ranks raised different errors: {texts}")
    elif must_contain not in texts[0]:
        problems.append(f"{case}: unexpected error {texts[0]}")


LOCAL = os.path.join(ROOT, "{node}")
ck = tierpoint.Checkpointer(LOCAL, run="a", policy=tierpoint.Policy(keep_local=10))
cases = 0

# 1. back-to-back saves; the tensors change right after each save() returns.
st = by_rows(1)
for step in (1, 2, 3):
    if step > 1:
        fresh = by_rows(step)
        for name in ("w", "e"):
            st[name].data.copy_(fresh[name].data)
        st["step"] = step
    ck.save(step, st)
    for name in ("w", "e"):
        st[name].data.fill_(-1)  # what the next training step would do
ck.wait()
for step in (1, 2, 3):
    check(ck.restore(template(), step=step), step, "back-to-back")
cases += 1

# 2. over the staging budget: one chunk per part at most.
small = tierpoint.Checkpointer(LOCAL, run="budget", chunk_bytes=64, staging_bytes=128)
st = by_rows(4)
handle = small.save(4, st)
for name in ("w", "e"):
    st[name].data.zero_()
handle.wait()
if handle.stats["parts"] < 2:
    problems.append(f"budget: {handle.stats['parts']} part(s) on rank {RANK}")
check(small.restore(template()), 4, "budget")
small.close()
cases += 1

# 3. rank 2's background write fails: every rank raises at wait().
os.environ["TIERPOINT_FAULT"] = "write:rank=2:step=5"
handle = ck.save(5, by_rows(5))
same_everywhere(error_text(handle.wait), "bg-failure", "failed on rank 2")
if 5 in ck.steps():
    problems.append(f"bg-failure: step 5 committed on rank {RANK}")
check(ck.restore(template()), 3, "bg-failure")
cases += 1

# 4. the same failure, not waited for: the next save raises it on every rank.
os.environ["TIERPOINT_FAULT"] = "write:rank=1:step=6"
ck.save(6, by_rows(6))
same_everywhere(error_text(lambda: ck.save(7, by_rows(7))), "next-save", "save of step 6")
del os.environ["TIERPOINT_FAULT"]
ck.save(7, by_rows(7)).wait()
check(ck.restore(template()), 7, "next-save")
cases += 1

# 5. node B's leader (rank 2) fails at the commit; node A's leader may have committed.
os.environ["TIERPOINT_FAULT"] = "commit:rank=2:step=8"
same_everywhere(error_text(ck.save(8, by_rows(8)).wait), "commit", "fault at commit")
del os.environ["TIERPOINT_FAULT"]
if 8 in ck.steps():
    problems.append(f"commit: step 8 stayed committed on rank {RANK}'s node")
check(ck.restore(template()), 7, "commit")
cases += 1

ck.close()
P.report(problems, "ASYNC", str(cases))
