"""One run whose state layout changes between saves (issue 12): the plan cache must plan again
whenever any rank's layout changes, and only then, and every step restores bit-exactly onto
readers whose layout differs from its writers'.

4 ranks as 2 nodes (TIERPOINT_NODE is set by the test). Steps and the save layout of each:
1 rows (a regular grid), 2 rows again (steady: cached), 3 cols (grid, another dim),
4 skewed rows on every rank (irregular boxes), 5 only one array changes layout, 6 rows again
(seen before, but not the last plan: planned again). Each step is then restored on 4 ranks
with the column/row transpose of its layout and on 3 ranks (a sub-communicator) as rows;
every step is drained (a reader whose boxes lie on the other node's tier reads those chunks
from the capacity copy).
Prints LAYOUT-OK <restores> on success.
"""
import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402

import tierpoint  # noqa: E402

ROOT = sys.argv[1]
WORLD = MPI.COMM_WORLD
RANK, N = WORLD.Get_rank(), WORLD.Get_size()
ARRAYS = [("emb", (37, 12), "float32"), ("w0", (20, 33), "int32"), ("w1", (16, 16), "uint8"),
          ("b", (33, 4), "int64")]
STEPS = {1: "rows", 2: "rows", 3: "cols", 4: "rows_skew", 5: "mixed", 6: "rows"}
PLANNED = {1: True, 2: False, 3: True, 4: True, 5: True, 6: True}
READ_AS = {"rows": "cols", "cols": "rows", "rows_skew": "cols_skew", "mixed": "grid"}


def layout_of(step_layout, name):
    if step_layout == "mixed":  # step 4's skew, but one array back on even rows
        return "rows" if name == "w0" else "rows_skew"
    return step_layout


def bits_of(name, shape, dtype, step):
    full = P.global_bits(name, shape, dtype)
    return full ^ full.dtype.type(step)  # each step's values differ


def state(n, rank, step, step_layout, fill):
    out = {"step": step}
    for name, shape, dtype in ARRAYS:
        off, shp = P.box_for(layout_of(step_layout, name), shape, n, rank)
        region = tuple(slice(o, o + s) for o, s in zip(off, shp))
        data = P._c(bits_of(name, shape, dtype, step)[region]) if fill else \
            np.zeros(shp, dtype=P.STORAGE[dtype])
        out[name] = tierpoint.Shard(data, shape, off)
    return out


def check(restored, n, rank, step, step_layout):
    bad = []
    for name, shape, dtype in ARRAYS:
        off, shp = P.box_for(layout_of(step_layout, name), shape, n, rank)
        want = bits_of(name, shape, dtype, step)[tuple(slice(o, o + s) for o, s in zip(off, shp))]
        got = restored[name].data
        if got.shape != want.shape or not np.array_equal(got, want):
            bad.append(f"step {step} {name} read as {step_layout} on {n} ranks, rank {rank}")
    if restored["step"] != step:
        bad.append(f"step {step}: value {restored['step']}")
    return bad


failures = []
POLICY = tierpoint.Policy(keep_local=10, drain_every=1)
POOLS = os.path.join(ROOT, "capacity")
if RANK == 0:
    os.makedirs(POOLS, exist_ok=True)
WORLD.Barrier()
with tierpoint.Checkpointer(os.path.join(ROOT, "{node}"), POOLS, run="lc", policy=POLICY) as ck:
    for step, lay in STEPS.items():
        h = ck.save(step, state(N, RANK, step, lay, True))
        h.wait()
        planned = "plan" in h.stats.get("phases", {})
        if planned != PLANNED[step]:
            failures.append(f"step {step}: planned={planned}, expected {PLANNED[step]}")
# close() drained every step still owed a drain; a new job (as after a restart) restores.
with tierpoint.Checkpointer(os.path.join(ROOT, "{node}"), POOLS, run="lc", policy=POLICY) as ck:
    restores = 0
    for step, lay in STEPS.items():
        read_as = READ_AS[lay]
        out = ck.restore(state(N, RANK, step, read_as, False), step=step)
        failures += check(out, N, RANK, step, read_as)
        restores += 1
WORLD.Barrier()
c = WORLD.Split(0 if RANK < 3 else MPI.UNDEFINED, RANK)
if c != MPI.COMM_NULL:
    node = "node0" if RANK < 2 else "node1"
    os.environ["TIERPOINT_NODE"] = node
    with tierpoint.Checkpointer(os.path.join(ROOT, "{node}"), POOLS, run="lc", comm=c,
                                policy=POLICY) as ck:
        for step, lay in STEPS.items():
            out = ck.restore(state(3, RANK, step, "rows", False), step=step)
            failures += check(out, 3, RANK, step, "rows")
            restores += 1
    c.Free()
P.report(failures, "LAYOUT", str(restores))
