"""Multi-rank failure cases in one 4-rank launch (ranks may run as two "nodes").

Each case checks that every rank raises the same CheckpointError (same class and message,
compared across ranks), that nothing is committed, and that the earlier checkpoint still
restores bit-exactly. Prints FAILURES-OK <cases> on success.
"""
import os
import sys

import torch
from mpi4py import MPI

import tierpoint

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402
import tierpoint.tiers.local

ROOT = sys.argv[1]
LOCAL = os.path.join(ROOT, "{node}")
WORLD = MPI.COMM_WORLD
RANK, SIZE = WORLD.Get_rank(), WORLD.Get_size()
problems = []


def good_state(scale=1.0):
    rows = 4 * SIZE + 1  # uneven: the last rank holds 5 rows
    per = 4
    lo = RANK * per
    n = per + (1 if RANK == SIZE - 1 else 0)
    data = torch.arange(lo * 3, (lo + n) * 3, dtype=torch.float32).reshape(n, 3) * scale
    return {"w": tierpoint.Shard(data, (rows, 3), (lo, 0)), "rep": torch.full((5,), scale)}


def expect_same_error(case, fn, cls, pattern):
    try:
        fn()
    except tierpoint.CheckpointError as e:
        text = f"{type(e).__name__}: {e}"
        if not isinstance(e, cls) or pattern not in str(e):
            problems.append(f"{case}: rank {RANK} raised {text}")
    else:
        text = "no error"
        problems.append(f"{case}: rank {RANK} raised nothing")
    texts = WORLD.allgather(text)
    if len(set(texts)) != 1:
        problems.append(f"{case}: ranks raised different errors: {texts}")


def check_intact(ck, case):
    steps = ck.steps()
    if steps != [1]:
        problems.append(f"{case}: committed steps are {steps}, expected [1]")
    tpl = {"w": tierpoint.Shard(torch.zeros(4 + (1 if RANK == SIZE - 1 else 0), 3),
                                (4 * SIZE + 1, 3), (RANK * 4, 0)), "rep": torch.zeros(5)}
    out = ck.restore(tpl)
    if not torch.equal(out["w"].data, good_state()["w"].data) or out["rep"].tolist() != [1.0] * 5:
        problems.append(f"{case}: step 1 did not restore intact")


ck = tierpoint.Checkpointer(LOCAL, run="f")
ck.save(1, good_state()).wait()
cases = 0

# 1. overlapping shards: rank 1 claims one row of rank 0's.
st = good_state(2.0)
if RANK == 1:
    st["w"] = tierpoint.Shard(torch.zeros(5, 3), (4 * SIZE + 1, 3), (3, 0))
expect_same_error("overlap", lambda: ck.save(2, st), tierpoint.ShardingError, "overlap")
cases += 1

# 2. gapped shards: rank 2 holds one row less.
st = good_state(2.0)
if RANK == 2:
    st["w"] = tierpoint.Shard(torch.zeros(3, 3), (4 * SIZE + 1, 3), (8, 0))
expect_same_error("gap", lambda: ck.save(2, st), tierpoint.ShardingError, "gap")
cases += 1

# 3. ranks disagree on the global shape, then on the dtype.
st = good_state(2.0)
if RANK == 3:
    st["w"] = tierpoint.Shard(st["w"].data, (4 * SIZE + 2, 3), st["w"].offset)
expect_same_error("shape", lambda: ck.save(2, st), tierpoint.ShardingError, "global shape")
st = good_state(2.0)
if RANK == 0:
    st["w"] = tierpoint.Shard(st["w"].data.double(), st["w"].global_shape, st["w"].offset)
expect_same_error("dtype", lambda: ck.save(2, st), tierpoint.ShardingError, "dtype")
cases += 2

# 4. one rank raises during the background write (disk full on rank 2 only): the handle's
#    wait() raises on every rank.
real_write_file = tierpoint.tiers.local.write_file
if RANK == 2:
    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    tierpoint.tiers.local.write_file = disk_full
expect_same_error("disk-full", lambda: ck.save(2, good_state(2.0)).wait(), tierpoint.CheckpointError,
                  "failed on rank 2")
tierpoint.tiers.local.write_file = real_write_file
cases += 1

# 5. a rank that raises while flattening (an unsupported leaf on rank 1 only).
st = good_state(2.0)
if RANK == 1:
    st["bad"] = object()
expect_same_error("bad-leaf", lambda: ck.save(2, st), tierpoint.UnsupportedStateError,
                  "failed on rank 1")
cases += 1

# 6. step already committed.
expect_same_error("exists", lambda: ck.save(1, good_state(3.0)), tierpoint.CheckpointExistsError,
                  "overwrite=True")
cases += 1

check_intact(ck, "after failures")

# 7. a rank that never joins: the others time out naming it (short timeout), nothing hangs.
late = tierpoint.Checkpointer(LOCAL, run="f", timeout=3)
if RANK != 3:
    try:
        late.save(2, good_state(2.0))
        problems.append(f"timeout: rank {RANK} saved without rank 3")
    except tierpoint.CollectiveTimeoutError as e:
        if RANK == 0 and "[3]" not in str(e):
            problems.append(f"timeout: rank 0 did not name rank 3: {e}")
WORLD.Barrier()
check_intact(ck, "after timeout")
cases += 1

# 8. two saves after all that work, and restores see the newest.
ck.save(2, good_state(2.0)).wait()
if ck.steps() != [1, 2]:
    problems.append(f"final: steps {ck.steps()}")
cases += 1

P.report(problems, "FAILURES", str(cases))
