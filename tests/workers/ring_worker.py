"""A trainer of tests/test_ring.py: resume from the newest checkpoint, save up to a step, close.

argv: ROOT LAST. Local tier ROOT/local/{node} (TIERPOINT_NODE per rank, set by the
launcher), capacity pool ROOT/pool, run "r", keep_local=2, drain_every=2, small chunks (so a
drain reads several per rank). Restores the newest checkpoint if there is one and checks it
bit-exactly (each value encodes its step and global index), then saves every later step up
to LAST (waiting for each commit) and closes, which drains. Faults: ``TIERPOINT_FAULT`` as
set by the test (engine/faults.py). Prints ``RESTORED <step>|none``, ``ACKED <step>`` per
commit, ``LOCAL <steps>`` and ``CAPACITY <steps>`` after close, then ``DONE``; a failed check
prints ``PROBLEM ...`` and exits 1.
"""
import os
import sys

import numpy as np
from mpi4py import MPI

import tierpoint

ROOT, LAST = sys.argv[1], int(sys.argv[2])
W = MPI.COMM_WORLD
RANK, SIZE = W.Get_rank(), W.Get_size()
ROWS, COLS = 24, 16


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write per line: ranks share the output


def expected(step: int) -> np.ndarray:
    """The whole array of ``step``: its global index plus the step, in the millions."""
    return np.arange(ROWS * COLS, dtype=np.float64).reshape(ROWS, COLS) + step * 1e6


def rows() -> tuple[int, int]:
    per = -(-ROWS // SIZE)
    lo = min(RANK * per, ROWS)
    return lo, min(per, ROWS - lo)


def main() -> int:
    ck = tierpoint.Checkpointer(os.path.join(ROOT, "local", "{node}"),
                                persistent=[os.path.join(ROOT, "pool")], run="r",
                                chunk_bytes=256, timeout=120,
                                policy=tierpoint.Policy(keep_local=2, drain_every=2))
    lo, n = rows()
    state = {"w": tierpoint.Shard(np.zeros((n, COLS)), (ROWS, COLS), (lo, 0)), "step": -1}
    try:
        state = ck.restore(state)
        start = state["step"]
        if not np.array_equal(state["w"].data, expected(start)[lo:lo + n]):
            say(f"PROBLEM rank {RANK}: step {start} restored with wrong values")
            return 1
        say(f"RESTORED {start}")
    except tierpoint.CheckpointNotFoundError:
        start = 0
        say("RESTORED none")
    for step in range(start + 1, LAST + 1):
        state["w"].data[...] = expected(step)[lo:lo + n]
        state["step"] = step
        if ck.save(step, state).wait() is not None:
            say(f"ACKED {step}")
    ck.close()
    say("DONE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
