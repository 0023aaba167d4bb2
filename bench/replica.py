#!/usr/bin/env python3
"""Partner replica benchmark: what replication copies per node against the local save of the
same run, and what a replication running beside a save costs that save.

    .venv/bin/python bench/replica.py [--mib 256] [--repeats 3] [--cap BYTES_PER_S]
                                      [--dir /var/tmp/tierpoint-replica] [--json PATH]

Two MPI ranks as two nodes (``TIERPOINT_NODE`` n0 and n1), each with its own local tier root
under ``--dir``; the state is ``--mib`` MiB of float32 in 16 tensors, row-sharded over the
two ranks (so each node writes, and replicates, half of it). An untimed warm-up round, then
``--repeats`` rounds, each (every time between quiet barriers, ranks/bench/ranks.py):

1. ``save alone``: a save with ``replicas=0``, from ``save()`` to its commit
   (``handle.wait(replica=False)``): the local save bandwidth, bytes per node / seconds;
2. ``replication alone``: a save with ``replicas=1``; from its commit to the end of its
   replication (``ck.wait()``): bytes copied per node / seconds, uncapped;
3. ``save beside a replication``: a save with ``replicas=1`` committed, then at once the
   next save, timed to its commit while the first save's replication runs (uncapped, then
   capped at ``--cap`` bytes/s per node); whether the replication still ran when that save
   committed is reported (``overlapped``): a save that finished before the replication
   started measures nothing.

Each replica is checked outside the timed part: it is committed on the partner node and
verifies (trust/verify.py). Prints the medians and the ratios (replication / local save
bandwidth; save beside a replication / save alone); ``--json PATH`` writes every number.
Runs in well under 2 minutes at 256 MiB; keep it at 64 MiB or less on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from ranks import as_worker, dispatch, launch, quiet_barrier, quiet_bcast  # noqa: E402
from save_restore import mpiexec_path  # noqa: E402

DEFAULT_DIR = "/var/tmp/tierpoint-replica"
TENSORS = 16


class Bench:
    """One rank's side: its half of the state, the timed saves, the checks."""

    def __init__(self, args):
        import numpy as np
        from mpi4py import MPI
        import tierpoint
        self.np, self.tp, self.args = np, tierpoint, args
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.rows = max(2, (args.mib << 20) // (TENSORS * 4 * 1024)) // 2 * 2
        self.node_bytes = TENSORS * (self.rows // 2) * 1024 * 4
        self.local = os.path.join(args.dir, "local", "{node}")
        self.out: dict = {"bytes_per_node": self.node_bytes, "rows": {}}
        self.step = 0

    def state(self, step: int) -> dict:
        np, half = self.np, self.rows // 2
        lo = self.rank * half
        return {f"t{i}": self.tp.Shard(
            (np.arange(lo * 1024, (lo + half) * 1024, dtype=np.float32) + step + i)
            .reshape(half, 1024), (self.rows, 1024), (lo, 0)) for i in range(TENSORS)}

    def checkpointer(self, run: str, replicas: int, cap=None):
        return self.tp.Checkpointer(self.local, run=run, drain_rate=cap, timeout=600,
                                    policy=self.tp.Policy(keep_local=2, drain_every=None,
                                                          replicas=replicas))

    def save(self, ck, handle=None):
        """Seconds from save() to the commit, between barriers (the step saved); with
        ``handle`` (a list), the save's handle is appended to it."""
        self.step += 1
        state = self.state(self.step)
        quiet_barrier(self.comm)
        t0 = time.perf_counter()
        h = ck.save(self.step, state)
        h.wait(replica=False)  # at the commit, not the replica
        seconds = time.perf_counter() - t0
        quiet_barrier(self.comm)
        if handle is not None:
            handle.append(h)
        return seconds

    def record(self, row: str, value) -> None:
        self.out["rows"].setdefault(row, []).append(value)

    def check_replica(self, ck, step: int) -> None:
        """The partner's replica of this rank's step is committed and verifies (on the
        partner's rank, which reads its own root)."""
        from tierpoint.tiers.local import LocalTier
        from tierpoint.trust.verify import verify_checkpoint
        copies = LocalTier(ck.local_root).replica_copies(ck.run, step)
        if len(copies) != 1 or not verify_checkpoint(copies[0].path, partial=True).ok:
            raise AssertionError(f"rank {self.rank}: no verified replica of step {step} "
                                 f"in {ck.local_root}")

    def open_all(self) -> None:
        """The four runs' Checkpointers, kept for every round (the warm-up round plans each
        run's layout; the timed rounds reuse it, as a trainer's saves do)."""
        self.alone = self.checkpointer("alone", 0)
        self.replicated = self.checkpointer("replicated", 1)
        self.beside = {"uncapped": self.checkpointer("beside-uncapped", 1),
                       "capped": self.checkpointer("beside-capped", 1, self.args.cap)}

    def close_all(self) -> None:
        for ck in (self.alone, self.replicated, *self.beside.values()):
            ck.close()

    def round(self, timed: bool) -> None:
        seconds = self.save(self.alone)
        self.save(self.replicated)
        quiet_barrier(self.comm)
        t0 = time.perf_counter()
        self.replicated.wait()  # the replication of the step just committed
        replication = time.perf_counter() - t0
        quiet_barrier(self.comm)
        self.check_replica(self.replicated, self.step)
        beside = {}
        for label, ck in self.beside.items():
            first: list = []
            self.save(ck, first)  # its replication starts right after its commit
            # Wait (untimed) until that replication has started, so the next save runs
            # beside it (the bench's own probe of the handle; before, a save could start
            # before the replication did, and the capped row overlapped 0 of 3 times).
            job = first[0]._job  # noqa: SLF001
            job._replication_known.wait()  # noqa: SLF001
            seconds = self.save(ck)
            # Overlapped: the first save's replication was still running at this commit.
            beside[label] = (seconds, job.replicated is not None and
                             not job.replicated.is_set())
            ck.wait()
            self.check_replica(ck, self.step - 1)
        if timed:
            self.record("save alone", seconds)
            self.record("replication alone", replication)
            for label, (s, overlapped) in beside.items():
                self.record(f"save beside a replication ({label})", s)
                self.record(f"overlapped ({label})", bool(quiet_bcast(self.comm, overlapped)))


def worker(args) -> None:
    def body():
        bench = Bench(args)
        bench.open_all()
        bench.round(timed=False)
        for _ in range(args.repeats):
            bench.round(timed=True)
        bench.close_all()
        return bench.rank, bench.out
    as_worker(body, args.result)


def measure(mib: int = 256, repeats: int = 3, directory: str = DEFAULT_DIR,
            cap: float = 20e6) -> dict:
    """Run the bench on 2 ranks as 2 nodes; the raw numbers and the summary rows."""
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    result = os.path.join(directory, "result.json")
    common = [sys.executable, os.path.abspath(__file__), "--worker", "--mib", str(mib),
              "--repeats", str(repeats), "--dir", directory, "--cap", str(cap),
              "--result", result]
    cmd = [mpiexec_path(), "-n", "1", "-env", "TIERPOINT_NODE", "n0", *common, ":",
           "-n", "1", "-env", "TIERPOINT_NODE", "n1", *common]
    try:
        r = launch(cmd, result, "replica bench")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    r["config"] = {"mib": mib, "repeats": repeats, "cap": cap}
    r["summary"] = summarize(r)
    return r


def summarize(r: dict) -> list[dict]:
    rows, n = r["rows"], r["bytes_per_node"]
    med = {k: statistics.median(v) for k, v in rows.items() if not k.startswith("overlapped")}
    save_bw = n / med["save alone"]
    out = [{"what": "local save, per node", "value": f"{save_bw / 1e6:.0f} MB/s", "ratio": ""},
           {"what": "replication, per node", "value": f"{n / med['replication alone'] / 1e6:.0f}"
            " MB/s", "ratio": f"{n / med['replication alone'] / save_bw:.2f} x the save"}]
    for label in ("uncapped", "capped"):
        s = med[f"save beside a replication ({label})"]
        overlapped = sum(rows[f"overlapped ({label})"])
        out.append({"what": f"save beside a replication ({label})",
                    "value": f"{s:.3f} s (alone {med['save alone']:.3f} s)",
                    "ratio": f"{s / med['save alone']:.2f} x slower; overlapped "
                             f"{overlapped}/{len(rows[f'overlapped ({label})'])}"})
    return out


def report(r: dict) -> str:
    c = r["config"]
    lines = [f"replica bench: {c['mib']} MiB on 2 ranks as 2 nodes, {c['repeats']} repeats, "
             f"cap {c['cap'] / 1e6:.0f} MB/s (medians)"]
    lines += [f"  {row['what']:<40} {row['value']:<28} {row['ratio']}" for row in r["summary"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=DEFAULT_DIR)
    p.add_argument("--cap", type=float, default=20e6,
                   help="replication cap (drain_rate) of the capped row, B/s per node")
    p.add_argument("--json", help="write the raw numbers and the summary here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return dispatch(args, worker, lambda a: measure(a.mib, a.repeats, a.dir, a.cap), report)


if __name__ == "__main__":
    sys.exit(main())
