"""Waiting for the other ranks without spinning, for the benches' MPI workers.

MPICH's blocking collectives poll in a busy loop. With 2 to 4 ranks on 2 cores, a rank that
waits in ``Barrier`` or ``bcast`` while rank 0 measures a baseline (dd, boto3) takes a core
from the work being measured, so baselines come out low. These wait in a sleeping poll.
"""
from __future__ import annotations

import time


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
