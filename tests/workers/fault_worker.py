"""One run of the fault-injection scenario (driven by tests/faultsuite.py).

argv: ROOT LAST_STEP. Ranks run as two "nodes" (TIERPOINT_NODE n0/n1, set per rank by the
launcher), so each node has its own local tier under ROOT/local/<node>.

The run resumes from the newest checkpoint every rank can restore, if any, and checks it
bit-exactly (each value encodes its step and global index); then it saves every step up to
LAST_STEP asynchronously (keep_local=2, drain_every=2, keep_persistent=2, two capacity
pools; with ``FAULT_REPLICAS=1`` partner replicas) and closes, which drains the newest step. Prints ``RESTORED <step>`` or
``RESTORED none``, ``ACKED <step>`` once a save's commit is known (the next save() returned
or wait() did), ``LOOP <seconds>`` (from the timer's start to the end of close) and
``DONE``; a failed check prints ``PROBLEM ...`` and exits 1.

Faults: ``TIERPOINT_FAULT`` (engine/faults.py) as set by the driver, and
``FAULT_TIMER="<rank>:<seconds>"`` or ``"job:<seconds>"``, which SIGKILLs that rank (or the
whole job) that long after startup: a random point in time, wherever the code is then.
"""
import os
import signal
import sys
import threading
import time
import traceback

import numpy as np
from mpi4py import MPI

import tierpoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jobkill import kill_job  # noqa: E402  (tests/jobkill.py: a test helper, not engine code)

ROOT, LAST = sys.argv[1], int(sys.argv[2])
W = MPI.COMM_WORLD
RANK, SIZE = W.Get_rank(), W.Get_size()
ROWS, COLS = 61, 24          # uneven row shards: a chunk grid with several chunks per rank
if os.environ.get("FAULT_PERSISTENT"):
    # Multipart uploads even for this run's small parts (SeaweedFS takes parts under S3's
    # 5 MiB minimum), so that a kill mid-upload can leave one unfinished.
    from tierpoint.tiers import s3store
    s3store.MULTIPART_BYTES = 2048
POOLS = os.environ.get("FAULT_PERSISTENT") or [os.path.join(ROOT, "poolA"),
                                               os.path.join(ROOT, "poolB")]  # or an s3:// URL
RUN = "f"


def say(line: str) -> None:
    """One write per line: the launcher merges the ranks' output, and a line written in two
    pieces (as print does) can be cut by another rank's."""
    os.write(1, (line + "\n").encode())


def rows(r: int) -> tuple[int, int]:
    per = -(-ROWS // SIZE)
    lo = min(r * per, ROWS)
    return lo, min(per, ROWS - lo)


def expected(step: int) -> dict:
    lo, n = rows(RANK)
    index = np.arange(ROWS * COLS, dtype=np.float64).reshape(ROWS, COLS)
    return {"w": index[lo:lo + n] + step * 1e6,
            "b": np.arange(17, dtype=np.int64) * 7 + step}


def fill(state: dict, step: int) -> None:
    """Training, as far as the checkpoint can tell: new values in the same buffers."""
    want = expected(step)
    state["w"].data[...] = want["w"]
    state["b"][...] = want["b"]
    state["step"] = step


def fresh_state() -> dict:
    lo, n = rows(RANK)
    return {"w": tierpoint.Shard(np.zeros((n, COLS)), (ROWS, COLS), (lo, 0)),
            "b": np.zeros(17, dtype=np.int64), "step": -1}


def arm_timer() -> None:
    spec = os.environ.get("FAULT_TIMER")
    if not spec:
        return
    who, seconds = spec.split(":")
    if who == "job" and RANK == 0:
        action = kill_job
    elif who != "job" and int(who) == RANK:
        def action():
            os.kill(os.getpid(), signal.SIGKILL)
    else:
        return
    timer = threading.Timer(float(seconds), action)
    timer.daemon = True
    timer.start()


def main() -> int:
    ck = tierpoint.Checkpointer(os.path.join(ROOT, "local", "{node}"), persistent=POOLS,
                                run=RUN, chunk_bytes=512,
                                timeout=float(os.environ.get("FAULT_TIMEOUT", "120")),
                                policy=tierpoint.Policy(
                                    keep_local=2, drain_every=2, keep_persistent=2,
                                    replicas=int(os.environ.get("FAULT_REPLICAS", "0"))))
    t = time.perf_counter()
    arm_timer()
    state = fresh_state()
    try:
        state = ck.restore(state)
        start = state["step"]
        want = expected(start)
        if not (np.array_equal(state["w"].data, want["w"]) and
                np.array_equal(state["b"], want["b"])):
            say(f"PROBLEM rank {RANK}: step {start} restored with wrong values")
            return 1
        say(f"RESTORED {start}")
    except tierpoint.CheckpointNotFoundError:
        start = 0
        say("RESTORED none")
    previous = None
    for step in range(start + 1, LAST + 1):
        fill(state, step)
        # A restart on another layout may resume from an older (capacity) step than the
        # local tiers hold: the steps after it are redone, and replace what is there; one
        # the ring deletes at once (keep_local newer steps are there) is saved all the same.
        handle = ck.save(step, state, overwrite=True, if_older="warn")
        if previous is not None and previous.wait() is not None:
            say(f"ACKED {previous.step}")
        previous = handle
    if previous is not None and previous.wait() is not None:
        say(f"ACKED {previous.step}")
    ck.close()
    say(f"LOOP {time.perf_counter() - t:.3f}")
    say("DONE")
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except tierpoint.CheckpointError:
        # What a trainer does with an error it cannot go on from: print it and end the
        # whole job. Abort rather than exit: after a timed-out collective MPI_Finalize
        # would wait for the rank that hung.
        traceback.print_exc()
        sys.stderr.flush()
        W.Abort(1)
    W.Barrier()
    sys.exit(code)
