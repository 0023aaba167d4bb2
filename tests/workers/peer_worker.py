"""Peer restore scenarios (tests/test_peer_restore.py), under MPI or (``PEER_GLOO=1``)
torch.distributed over gloo.

argv: ROOT MODE LAST [LAYOUT]. Ranks run as "nodes" named by ``TIERPOINT_NODE`` (set per
rank by the launcher), each with its own local tier under ROOT/local/<node>; no capacity tier,
so whatever is restored comes from the nodes' local tiers.

- ``save``: save steps 1..LAST (keep_local=3), and close (with ``PEER_POOLS=1`` the close
  drains nothing more: ``close(drain_newest=False)``).
- ``restore``: restore the newest step every rank can read onto LAYOUT (``rows``: each rank a
  band of rows, as saved but over this job's ranks; ``cols``: a band of columns, a new
  sharding), check it bit-exactly (every value encodes its step and global index), then
  save step LAST on the new layout and close.
  Prints ``RESTORED <step>``, ``ROUTES <json>`` (where this rank's chunks came from) and
  ``FOREIGN <paths>``: the files and directories this process opened or listed under another
  node's local root (an audit hook watches every open/listdir/scandir): peer restore must
  receive other nodes' chunks over the communicator, never read their directories.
"""
import json
import os
import sys

import numpy as np

import tierpoint

ROOT, MODE, LAST = sys.argv[1], sys.argv[2], int(sys.argv[3])
LAYOUT = sys.argv[4] if len(sys.argv) > 4 else "rows"
if os.environ.get("PEER_GLOO"):  # a torch.distributed job (env://), no MPI
    import torch.distributed as dist
    dist.init_process_group("gloo")
    RANK, SIZE = dist.get_rank(), dist.get_world_size()
else:
    from mpi4py import MPI
    RANK, SIZE = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
NODE = os.environ["TIERPOINT_NODE"]
ROWS, COLS = 37, 26
LOCAL = os.path.join(ROOT, "local")
foreign: set = set()


def watch(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], str):
        path = os.path.abspath(args[0])
        if path.startswith(LOCAL + os.sep):
            node = path[len(LOCAL) + 1:].split(os.sep)[0]
            if node != NODE:
                foreign.add(path)


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def band(n: int, parts: int, r: int) -> tuple[int, int]:
    per = -(-n // parts)
    lo = min(r * per, n)
    return lo, min(per, n - lo)


def values(step: int) -> dict:
    index = np.arange(ROWS * COLS, dtype=np.float64).reshape(ROWS, COLS)
    return {"w": index + step * 1e6,
            "v": (np.arange(ROWS * 3, dtype=np.int32) * 3 + step).reshape(ROWS, 3),
            "b": np.arange(19, dtype=np.int64) * 5 + step}


def state_for(step: int, layout: str) -> dict:
    """This rank's part of step ``step`` (zeros for step None: a template)."""
    full = values(step if step is not None else 0)
    out = {"b": full["b"] if step is not None else np.zeros_like(full["b"]), "step": step}
    for name in ("w", "v"):
        a = full[name] if step is not None else np.zeros_like(full[name])
        if layout == "rows":
            lo, n = band(a.shape[0], SIZE, RANK)
            out[name] = tierpoint.Shard(np.ascontiguousarray(a[lo:lo + n]), a.shape, (lo, 0))
        else:
            lo, n = band(a.shape[1], SIZE, RANK)
            out[name] = tierpoint.Shard(np.ascontiguousarray(a[:, lo:lo + n]), a.shape,
                                        (0, lo))
    return out


def checkpointer():
    """No capacity tier; with ``PEER_POOLS=1`` one pool, every 2nd save drained; with
    ``PEER_REPLICAS=1`` partner replicas."""
    pools = [os.path.join(ROOT, "pool")] if os.environ.get("PEER_POOLS") else None
    for pool in pools or ():
        os.makedirs(pool, exist_ok=True)  # a mounted pool, as it were
    replicas = {"replicas": 1} if os.environ.get("PEER_REPLICAS") else {}
    return tierpoint.Checkpointer(
        os.path.join(LOCAL, "{node}"), persistent=pools, run="p", chunk_bytes=256,
        policy=tierpoint.Policy(keep_local=3, drain_every=2 if pools else None, **replicas))


def main() -> int:
    ck = checkpointer()
    if MODE == "save":
        for step in range(1, LAST + 1):
            ck.save(step, state_for(step, "rows"), blocking=True)
        ck.close(drain_newest=False)
        say("SAVED")
        return 0
    sys.addaudithook(watch)
    state = ck.restore(state_for(None, LAYOUT))
    step = state["step"]
    want = state_for(step, LAYOUT)
    for name in ("w", "v"):
        if not np.array_equal(state[name].data, want[name].data):
            say(f"PROBLEM rank {RANK}: {name} of step {step} restored with wrong values")
            return 1
    if not np.array_equal(state["b"], want["b"]):
        say(f"PROBLEM rank {RANK}: b of step {step} restored with wrong values")
        return 1
    say(f"RESTORED {step}")
    say("ROUTES " + json.dumps(ck.last_restore["peers"]))
    say("SOURCE " + ck.last_restore["source"])
    say("FOREIGN " + json.dumps(sorted(foreign)))
    ck.save(LAST, state_for(LAST, LAYOUT), blocking=True)
    ck.close()
    if os.environ.get("PEER_GLOO"):
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
