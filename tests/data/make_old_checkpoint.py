"""Writes the old-format fixtures: small checkpoints saved by 2 ranks by an older release.

- tests/data/v3/ (format version 3) was written by tierpoint at commit 9a4949b (the last
  release that wrote version 3) with
      mpiexec -n 2 python tests/data/make_old_checkpoint.py tests/data/v3
- tests/data/v4/ (format version 4: sub-chunked files, SHA-256 chunk hashes) was written at
  commit 9d450e2 (the last release that wrote version 4) with
      mpiexec -n 2 python tests/data/make_old_checkpoint.py tests/data/v4 --big
  ``--big`` adds the array "big", whose 80 KiB chunks are sub-chunked.

They are kept as they were written, so tests/test_format4.py can check that a newer release
still restores them bit-exactly. Running this script with a newer release writes that
release's format instead, which is not what the fixtures are for.

The values encode their global index (see ``expected``), so a reader can check them
without this script's tensors.
"""
from __future__ import annotations

import sys

import torch


def expected(name: str) -> torch.Tensor:
    """The full tensor of array ``name`` as saved."""
    if name == "w":  # float32 (12, 10): 1000 * row + column
        rows, cols = torch.meshgrid(torch.arange(12), torch.arange(10), indexing="ij")
        return (rows * 1000 + cols).to(torch.float32)
    if name == "b":  # bfloat16 (8, 6): row * 8 + column, exact in bf16
        return torch.arange(48, dtype=torch.float32).reshape(8, 6).to(torch.bfloat16)
    if name == "r":  # int64 (5,): replicated on both ranks
        return torch.arange(5, dtype=torch.int64) * 7
    if name == "big":  # float32 (256, 160): 1000 * row + column, row-sharded (--big only)
        rows, cols = torch.meshgrid(torch.arange(256), torch.arange(160), indexing="ij")
        return (rows * 1000 + cols).to(torch.float32)
    raise KeyError(name)


def main(out: str, big: bool) -> None:
    from mpi4py import MPI

    import tierpoint

    rank = MPI.COMM_WORLD.Get_rank()
    w, b = expected("w"), expected("b")
    state = {"model": {"w": tierpoint.Shard(w[rank * 6:(rank + 1) * 6].clone(), (12, 10),
                                            (rank * 6, 0)),
                       "b": tierpoint.Shard(b[:, rank * 3:(rank + 1) * 3].clone(), (8, 6),
                                            (0, rank * 3))},
             "r": expected("r"), "step": 3}
    if big:
        rows = expected("big")[rank * 128:(rank + 1) * 128].clone()
        state["big"] = tierpoint.Shard(rows, (256, 160), (rank * 128, 0))
    ck = tierpoint.Checkpointer(out, run="old")
    ck.save(3, state, blocking=True)
    ck.close(drain_newest=False)


if __name__ == "__main__":
    main(sys.argv[1], "--big" in sys.argv[2:])
