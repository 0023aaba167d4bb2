"""Bring up ``torch.distributed`` inside MPI ranks, and launch MPI jobs.

tierpoint coordinates its own work over MPI (mpi4py), while the training code it checkpoints
usually talks through ``torch.distributed`` (FSDP2, DTensor). When a job is started with
``mpiexec -n N`` there is no ``torchrun`` to set ``MASTER_ADDR`` and friends, so
:func:`init_torch_distributed` creates the group from ``MPI.COMM_WORLD``: rank 0 creates the
rendezvous store on a port the kernel picks and keeps, broadcasts the port, and every rank
joins the same process group with its MPI rank; a rank whose setup fails ends the job at
once. By default single-host (the rendezvous address is loopback).

:func:`launch` runs ``mpiexec -n N python ARGS...`` with the ``mpiexec`` installed next to the
running interpreter (the mpich wheel puts it in the virtual environment's ``bin``), which is
what the demo and the tests use.
"""
from __future__ import annotations

import array
import datetime
import os
import select
import shutil
import subprocess
import sys
import time
from typing import Mapping, Sequence

__all__ = ["init_torch_distributed", "init_torch_distributed_from_mpi", "destroy", "exit_process",
           "find_mpiexec", "launch"]


def init_torch_distributed(backend: str = "gloo", comm=None, *, host: str = "127.0.0.1",
                           timeout: float | None = None) -> tuple[int, int]:
    """Create the default ``torch.distributed`` process group of an MPI job; return (rank, world).

    The way to get the group FSDP2 and DTensor need when the job was started by ``mpiexec``
    or ``srun`` rather than ``torchrun``. Collective over ``comm`` (default
    ``MPI.COMM_WORLD``): every rank must call it; torch ranks are the MPI ranks. If a default
    process group already exists it is left alone and its rank and size are returned.

    The rendezvous is race-free: rank 0 creates the ``TCPStore`` on port 0, so the kernel picks
    a free port and rank 0 holds it from that moment; the port is then broadcast over MPI and
    the other ranks connect to that store. (Choosing a free port, releasing it and binding it
    again later let another process take it in between: 1 launch in 50 under load failed with
    EADDRINUSE.) ``host`` is the address rank 0 listens on and the others connect to:
    loopback, so single-host, unless a reachable address of rank 0's host is given.
    ``timeout`` (seconds, default torch's) bounds the store connection and the group's
    collectives.

    A rank whose setup fails does not leave the others waiting in the rendezvous until its
    timeout: it prints one line naming its rank and the error to stderr and calls
    ``MPI.COMM_WORLD.Abort(1)``, which ends every rank of the job at once (``mpiexec`` and
    ``srun`` exit non-zero).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()

    from mpi4py import MPI

    comm = MPI.COMM_WORLD if comm is None else comm
    rank, world = comm.Get_rank(), comm.Get_size()
    try:
        wait = datetime.timedelta(seconds=timeout) if timeout is not None else None
        store = _rendezvous(comm, host, rank, world, wait)
        os.environ.update(MASTER_ADDR=host, MASTER_PORT=str(store.port), RANK=str(rank),
                          WORLD_SIZE=str(world))
        os.environ.setdefault("LOCAL_RANK", str(rank))
        os.environ.setdefault("LOCAL_WORLD_SIZE", str(world))
        extra = {} if wait is None else {"timeout": wait}
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, **extra)
    except Exception as exc:
        _abort_job(rank, world, exc)
    return rank, world


# The earlier name, kept for trainers that import it.
init_torch_distributed_from_mpi = init_torch_distributed


def _rendezvous(comm, host: str, rank: int, world: int, wait):
    """Rank 0 creates the store holding its port; the others connect once it is broadcast.

    Invariant: no rank tries to connect before rank 0 listens, because the port reaches
    them only after rank 0's store was created; rank 0 does not wait for the workers here
    (``wait_for_workers=False``), since they connect only after the broadcast below.
    """
    import torch.distributed as dist
    from mpi4py import MPI

    extra = {} if wait is None else {"timeout": wait}
    store = None
    if rank == 0:
        store = dist.TCPStore(host, 0, world, is_master=True, wait_for_workers=False, **extra)
    # A buffer broadcast, not mpi4py's lowercase (pickling) bcast: tierpoint never pickles.
    port_buf = array.array("i", [store.port if rank == 0 else 0])
    comm.Bcast([port_buf, MPI.INT], root=0)
    if rank != 0:
        store = dist.TCPStore(host, port_buf[0], world, is_master=False, **extra)
    return store


def _abort_job(rank: int, world: int, exc: BaseException) -> None:
    """End the whole job because this rank's setup failed: one line, then MPI_Abort.

    Raising instead would leave the other ranks blocked in the rendezvous (a broadcast, or
    the group's connection to this rank) until its timeout, 600 s or more.
    """
    text = " ".join(str(exc).split()) or "(no message)"
    sys.stdout.flush()
    sys.stderr.flush()
    # One write(2), so that the line does not interleave with other ranks' output.
    os.write(2, f"tierpoint.runtime.distenv: rank {rank} of {world}: torch.distributed setup failed: "
                f"{type(exc).__name__}: {text}; ending the job (MPI_Abort)\n".encode())
    from mpi4py import MPI

    # Hydra's proxy forwards a rank's output by polling its pipes, and an abort can kill the
    # job before it has read them: the line above was lost about once in a clean-clone run
    # (rank 0 failing). A moment for the forwarder costs nothing on a path that ends the job.
    time.sleep(0.5)
    MPI.COMM_WORLD.Abort(1)
    # MPICH's Abort can return before the process manager kills this process (seen here on
    # rank 0 under hydra: the caller went on with a group that does not exist): never return.
    os._exit(1)


def destroy(comm=None) -> None:
    """Tear down the default process group if one exists, then barrier over MPI.

    Collective over ``comm`` (default ``MPI.COMM_WORLD``); safe to call twice. The MPI barrier
    after ``destroy_process_group`` matters: with gloo on torch 2.13, ranks that leave the
    interpreter while a peer is still tearing its group down die in about half the runs on a
    loaded machine with "terminate called without an active exception" (SIGABRT) at exit,
    even after a clean ``destroy_process_group``. Holding every rank until all have destroyed
    their group removed the failure (0 of 48 runs under load, against about 1 in 2 without).
    Call it on the success path only: a rank that failed should just exit non-zero, which
    makes ``mpiexec`` stop the others, rather than wait here for peers stuck in a collective.
    """
    dist = sys.modules.get("torch.distributed")  # a process that never imported it has no group
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    try:
        from mpi4py import MPI
    except ImportError:  # pragma: no cover - mpi4py is a hard dependency
        return
    if MPI.Is_initialized() and not MPI.Is_finalized():
        (MPI.COMM_WORLD if comm is None else comm).Barrier()


def exit_process(code: int = 0) -> None:
    """End an MPI rank that used gloo without running the interpreter's teardown.

    :func:`destroy` plus a barrier made the gloo exit abort rare but not gone: CI still saw one
    rank die with "terminate called without an active exception" (SIGABRT) after every rank had
    printed its result. The abort comes from a C++ destructor of a gloo thread object during
    static teardown, which no Python-level ordering controls. So on the success path: destroy
    the group, barrier, finalise MPI explicitly, tell the process manager this rank is done
    (:func:`_finalize_pmi`: hydra kills the job when a rank exits without that), flush the
    standard streams, and ``os._exit`` so no static destructor runs. Only call it when nothing
    else in the process still needs to run (``atexit`` handlers are skipped too).
    """
    destroy()
    try:
        from mpi4py import MPI
    except ImportError:  # pragma: no cover - mpi4py is a hard dependency
        MPI = None
    if MPI is not None and MPI.Is_initialized():
        if not MPI.Is_finalized():
            MPI.Finalize()
        _finalize_pmi()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _finalize_pmi(timeout: float = 10.0) -> None:
    """Send PMI's ``finalize`` to the process manager and wait for its acknowledgement.

    MPICH (5.0.2 in the mpich wheel) does not end its PMI connection in ``MPI_Finalize`` but
    in an ``atexit`` handler (so that MPI can be initialised again), and ``os._exit`` skips
    that handler. Hydra (``mpiexec``) then takes the rank for one that died before finalising
    and SIGKILLs the ranks still running: "BAD TERMINATION ... Killed (signal 9)" for a job
    whose every rank succeeded. Measured here, 4-rank launches: ``MPI.Finalize(); os._exit(0)``
    failed that way in 58 of 100, :func:`exit_process` without this handshake in 3 of 100 (its
    ranks had torch loaded and were slower to exit), with it in 0 of 100. Only PMI-1's wire
    protocol is spoken: what MPICH speaks to hydra and to Slurm's ``--mpi=pmi2`` (``PMI_FD``
    set, ``PMI_VERSION`` unset or 1); elsewhere (no PMI socket, PMIx) nothing is sent. The
    wait is bounded: a manager that does not answer cannot keep the rank from exiting.
    """
    fd_text = os.environ.get("PMI_FD")
    if not fd_text or os.environ.get("PMI_VERSION", "1") != "1":
        return
    try:
        fd = int(fd_text)
        os.write(fd, b"cmd=finalize\n")
        reply = b""
        deadline = time.monotonic() + timeout
        while not reply.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return
            chunk = os.read(fd, 256)
            if not chunk:
                return
            reply += chunk
    except (OSError, ValueError):
        return  # no usable PMI socket: nothing to tell


def find_mpiexec() -> str:
    """The ``mpiexec`` next to ``sys.executable`` if there is one, else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    found = shutil.which("mpiexec")
    if found is None:
        raise FileNotFoundError(
            "mpiexec not found next to %s nor on PATH; install the 'mpich' wheel" % sys.executable)
    return found


def launch(n: int, argv: Sequence[str], env: Mapping[str, str] | None = None,
           timeout: float | None = 600, capture: bool = False,
           cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``mpiexec -n n <sys.executable> argv...`` and wait for it.

    With ``capture=False`` (default) the ranks' output goes straight to this process's stdout
    and stderr; with ``capture=True`` it is collected as text on the returned object (stderr
    merged into stdout). ``env`` entries are added to the current environment. On timeout the
    whole job is killed and :class:`subprocess.TimeoutExpired` is raised (with the output so
    far when capturing).
    """
    full_env = dict(os.environ)
    # Ranks launched by the test suite must not inherit a parent's process-group settings.
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
              "LOCAL_WORLD_SIZE"):
        full_env.pop(k, None)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    # One thread per rank: ranks share the machine's cores, oversubscription only slows it down.
    full_env.setdefault("OMP_NUM_THREADS", "1")
    if env:
        full_env.update(env)
    cmd = [find_mpiexec(), "-n", str(int(n)), sys.executable, *map(str, argv)]
    kw = dict(env=full_env, cwd=cwd, text=True)
    if capture:
        kw.update(stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # Start in its own session so a timeout can kill mpiexec and every rank it started.
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err)
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
