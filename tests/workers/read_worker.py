"""Checkpoints for tests/test_read_api.py, saved by real MPI ranks. argv: ROOT MODE

- ``MODE=run`` (4 ranks, one node): run "r", steps 1, 2, 3, each drained to ROOT/pool
  (drain_every=1, every step kept locally in ROOT/local).
- ``MODE=split`` (4 ranks as 2 nodes, TIERPOINT_NODE n0/n1): run "s", step 1 into
  ROOT/split/<node>, no capacity tier (each node's directory holds its own ranks' chunks).

The arrays (``ARRAYS``: shape, dtype, how they are sharded) hold values that encode their
global index and the step (``expected``), so a reader checks any box bit-exactly without
these tensors. Prints READ-SAVE-OK.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402

# name -> (global shape, dtype, layout of patterns.box_for). Sizes chosen so that the chunk
# files of layers/0 are sub-chunked (> 64 KiB per chunk: 4 and 2 inner chunks) and the others
# are plain.
ARRAYS = {
    "model/layers/0/w": ((1024, 256), "float32", "rows"),
    "model/layers/0/e": ((1024, 256), "bfloat16", "cols"),
    "model/layers/1/b": ((48, 40), "bfloat16", "cols"),
    "model/p": ((30, 22), "float32", "grid"),
    "rep": ((5,), "int64", "whole"),
    "opt/count": ((), "float32", "whole"),
}
STEPS = (1, 2, 3)


def expected(name: str, step: int) -> np.ndarray:
    """The stored bits of array ``name`` at ``step``. ``model/layers/0/w`` holds readable
    values (1000 * row + column + step / 4, exact in float32) for the README's example; the
    others the bit patterns of patterns.global_bits."""
    shape, dtype, _ = ARRAYS[name]
    if name == "model/layers/0/w":
        rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        return (rows * 1000.0 + cols + step / 4).astype(np.float32).view(np.uint32)
    return P.global_bits(f"{name}@{step}", shape, dtype)


def state(step: int, rank: int, size: int) -> dict:
    import tierpoint
    out: dict = {}
    for name, (shape, dtype, how) in ARRAYS.items():
        full = expected(name, step)
        offset, box = P.box_for(how, shape, size, rank)
        part = P._c(full[tuple(slice(o, o + n) for o, n in zip(offset, box))])
        leaf = P.as_torch(part, dtype)
        node = out
        *parents, last = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf if how == "whole" else tierpoint.Shard(leaf, shape, offset)
    out["step"] = step
    return out


def main(root: str, mode: str) -> None:
    from mpi4py import MPI

    import tierpoint
    rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    if mode == "run":
        os.makedirs(os.path.join(root, "pool"), exist_ok=True)  # a mounted pool exists
        ck = tierpoint.Checkpointer(os.path.join(root, "local"), run="r",
                                    persistent=[os.path.join(root, "pool")],
                                    policy=tierpoint.Policy(keep_local=3, drain_every=1))
        steps = STEPS
    else:
        ck = tierpoint.Checkpointer(os.path.join(root, "split", "{node}"), run="s")
        steps = (1,)
    for step in steps:
        ck.save(step, state(step, rank, size), metadata={"purpose": "read-api"}).wait()
    ck.wait()  # the background drains
    problems = []
    if mode == "run" and (ck.steps(), ck.capacity_steps()) != (list(STEPS), list(STEPS)):
        problems.append(f"rank {rank}: local {ck.steps()}, capacity {ck.capacity_steps()}")
    ck.close(drain_newest=False)
    P.report(problems, "READ-SAVE")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
