"""A trainer of tests/test_replicas.py: save steps FIRST..LAST with partner replicas, then close.

argv: ROOT FIRST LAST [KEEP]. Local tier ROOT/local/{node} (TIERPOINT_NODE per rank, set by
the launcher), no capacity tier, run "r", keep_local=KEEP (default 2), Policy(replicas=1),
small chunks (several per rank). Each step's arrays encode their global index and the step
(``w``: float64 rows split over the ranks; ``b``: int32 columns split over the ranks). After
each save it waits for the commit and for the replication (``ck.wait()``), and prints
``ACKED <step>``; every CheckpointWarning it is given is printed as ``WARNING <text>`` (one
line); after close ``OWN <steps>`` and ``STEPS <steps>`` (``Checkpointer.steps()``) of this
rank's root, then ``DONE``. Faults: ``TIERPOINT_FAULT`` as set by the test.

``THREAD_LEVEL``: MPI's thread level (default "multiple"). ``REPLICA_RATE``: the cap
(``drain_rate``, bytes/s) of the replication; ``NO_WAIT=1``: no ``ck.wait()`` between saves
(the next save commits while the replication runs).
``WATCH_OPENS=1``: every file system call that names a path (open, os.open, listdir, scandir,
stat, mkdir, rename) under another node's local root ROOT/local/<node> is printed as
``FOREIGN <call> <path>``: the engine must reach other nodes only over the communicator.
"""
import os
import sys
import warnings

import numpy as np
import mpi4py

# THREAD_LEVEL=serialized: below MPI_THREAD_MULTIPLE the replication runs in the save's
# (the caller's) thread, its transfers one after another in domain order.
mpi4py.rc.thread_level = os.environ.get("THREAD_LEVEL", "multiple")
from mpi4py import MPI  # noqa: E402

import tierpoint  # noqa: E402
from tierpoint.tiers.local import LocalTier  # noqa: E402

ROOT, FIRST, LAST = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
KEEP = int(sys.argv[4]) if len(sys.argv) > 4 else 2
W = MPI.COMM_WORLD
RANK, SIZE = W.Get_rank(), W.Get_size()
ROWS, COLS = 32, 8


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write per line: ranks share the output


def values(step: int) -> tuple[np.ndarray, np.ndarray]:
    w = np.arange(ROWS * COLS, dtype=np.float64).reshape(ROWS, COLS) + step * 1e6
    b = (np.arange(COLS * ROWS, dtype=np.int32).reshape(COLS, ROWS) * 7 + step)
    return w, b


def watch_opens() -> None:
    import builtins
    mine = os.path.realpath(os.path.join(ROOT, "local", os.environ["TIERPOINT_NODE"]))
    local = os.path.realpath(os.path.join(ROOT, "local"))

    def foreign(path) -> bool:
        if isinstance(path, int):
            return False
        full = os.path.realpath(os.fsdecode(path))
        return full.startswith(local + os.sep) and not (full == mine or
                                                          full.startswith(mine + os.sep))

    def wrap(owner, name):
        real = getattr(owner, name)

        def call(*args, **kwargs):
            for path in args[:2] if name == "rename" else args[:1]:
                if foreign(path):
                    say(f"FOREIGN {name} {path}")
            return real(*args, **kwargs)
        setattr(owner, name, call)
    wrap(builtins, "open")
    for name in ("open", "listdir", "scandir", "stat", "mkdir", "rename"):
        wrap(os, name)


def main() -> int:
    if os.environ.get("WATCH_OPENS") == "1":
        watch_opens()
    per = ROWS // SIZE
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", tierpoint.CheckpointWarning)
        ck = tierpoint.Checkpointer(os.path.join(ROOT, "local", "{node}"), run="r",
                                    chunk_bytes=128, timeout=120, sync="fsync",
                                    drain_rate=float(os.environ.get("REPLICA_RATE", 0)) or None,
                                    policy=tierpoint.Policy(keep_local=KEEP, drain_every=None,
                                                            replicas=1))
        for step in range(FIRST, LAST + 1):
            w, b = values(step)
            state = {"w": tierpoint.Shard(w[RANK * per:(RANK + 1) * per].copy(), w.shape,
                                          (RANK * per, 0)),
                     "b": tierpoint.Shard(b[:, RANK * per:(RANK + 1) * per].copy(), b.shape,
                                          (0, RANK * per)),
                     "step": step}
            if ck.save(step, state).wait() is not None:
                say(f"ACKED {step}")
            if os.environ.get("NO_WAIT") != "1":
                ck.wait()
        ck.close()
    for w in caught:
        if issubclass(w.category, tierpoint.CheckpointWarning):
            say("WARNING " + str(w.message).replace("\n", " "))
    local = LocalTier(ck.local_root)
    say(f"OWN {RANK} {local.steps('r')}")
    say(f"STEPS {RANK} {ck.steps()}")
    say("DONE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
