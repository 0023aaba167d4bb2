"""The communicator to use (``resolve``), and the names other modules import from here.

The channels themselves: channel.py (the collective contract every channel keeps, the
coordinator's answering, the single process), mpicomm.py (MPI, relayed through the domains'
leaders), torchcomm.py (torch.distributed over gloo, flat). Costs per collective: a rank that
does not lead its domain sends its value and receives its reply; a domain's leader O(its
domain); rank 0 O(ranks) bytes in O(domains) messages over MPI (one domain, the default:
O(ranks) messages).
"""
from __future__ import annotations

import os
import sys

from ..errors import RankFailedError
from .channel import (Broadcast, Comm, Scatter, SingleComm, _Backoff, _inlined, _parse_all,
                      _rebuild, describe_error)
from .mpicomm import MPIComm
from .torchcomm import TorchComm

_MPI_LAUNCH_VARS = ("PMI_RANK", "PMI_SIZE", "PMI_FD", "OMPI_COMM_WORLD_SIZE",
                    "MPI_LOCALNRANKS", "PMIX_RANK")


def resolve(comm=None) -> Comm:
    """The communicator to use.

    ``None`` picks MPI COMM_WORLD when mpi4py is in use (imported, or this process was
    started by an MPI launcher), else the default torch.distributed group when one is
    initialised, else a single process. An mpi4py communicator or a torch ProcessGroup may
    be passed explicitly.
    """
    if isinstance(comm, Comm):
        return comm
    if comm is not None:
        if type(comm).__module__.startswith("mpi4py"):
            return MPIComm(comm)
        return TorchComm(comm)
    mpi_world = None
    if "mpi4py.MPI" in sys.modules or any(v in os.environ for v in _MPI_LAUNCH_VARS):
        from mpi4py import MPI
        mpi_world = MPI.COMM_WORLD
        if mpi_world.Get_size() > 1:
            return MPIComm(mpi_world)
    # A one-process MPI world (mpi4py imported by someone, no launcher) must not hide a
    # torch.distributed job started by torchrun. A process that never imported
    # torch.distributed has no such job (and importing it here would cost a numpy-only user
    # seconds).
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return TorchComm(None)
    if mpi_world is not None:
        return MPIComm(mpi_world)
    return SingleComm()


__all__ = ["Broadcast", "Scatter", "Comm", "SingleComm", "MPIComm", "TorchComm", "resolve",
           "RankFailedError", "describe_error", "_rebuild", "_parse_all", "_inlined",
           "_Backoff"]
