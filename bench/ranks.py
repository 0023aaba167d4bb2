"""Waiting for the other ranks without spinning, for the benches' MPI workers.

MPICH's blocking collectives poll in a busy loop. With 2 to 4 ranks on 2 cores, a rank that
waits in ``Barrier`` or ``bcast`` while rank 0 measures a baseline (dd, boto3) takes a core
from the work being measured, so baselines come out low. These wait in a sleeping poll. Also the benches' common ``main`` ending (``dispatch``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback


def quiet_barrier(comm) -> None:
    """An MPI barrier that sleeps while it waits."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(0.0005)


def quiet_bcast(comm, value, root: int = 0):
    """``comm.bcast(value, root)`` once every rank has arrived (the wait sleeps; the
    broadcast of a small value itself is quick)."""
    quiet_barrier(comm)
    return comm.bcast(value, root=root)


def dispatch(args, worker, measure, report) -> int:
    """A bench's ``main`` once its arguments are parsed: ``--worker`` runs one MPI rank
    (``worker(args)``); else ``measure(args)`` runs the bench, its ``report`` is printed and,
    with ``--json PATH``, the raw numbers are written there."""
    if args.worker:
        worker(args)
        return 0
    r = measure(args)
    print(report(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


def as_worker(body, result_path: str) -> None:
    """One MPI rank of a bench: ``body()`` returns (rank, numbers); rank 0 writes the numbers
    to ``result_path`` (JSON). Any failure prints its traceback and ends the whole job, so a
    measured operation that fails fails the bench loudly."""
    from mpi4py import MPI
    try:
        rank, out = body()
        if rank == 0:
            with open(result_path, "w") as f:
                json.dump(out, f)
    except BaseException:  # noqa: BLE001 - any failure ends the whole job, loudly
        traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)


def launch(cmd: list, result_path: str, what: str) -> dict:
    """Run a bench's MPI launch ``cmd`` (one thread per rank for math libraries) and return
    rank 0's numbers from ``result_path``; RuntimeError naming ``what`` when it failed."""
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: the MPI launch failed with exit status "
                           f"{proc.returncode}; its traceback is above")
    with open(result_path) as f:
        return json.load(f)
