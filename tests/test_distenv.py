"""distenv under a real mpiexec (hydra): torch.distributed setup, and clean exits.

init_torch_distributed: rank 0 creates the rendezvous store on a port it holds from the start
(the old choose-release-rebind of a free port lost the port to another process in about 1 of
50 launches under load, and then the other ranks waited 600 s); a rank whose setup fails ends
the job at once instead of leaving the others in the rendezvous.

exit_process: every rank's exit is a clean one.

MPICH 5 ends its PMI connection in an atexit handler, which os._exit skips; without
exit_process's own PMI finalize, hydra took a rank that exited first for a dead one and
SIGKILLed the others (about half of all 4-rank launches here, and the rare "Killed (signal 9)"
of the FSDP test's ranks after they had passed every check). Eight launches in a row must
all end with the exit code the ranks gave.
"""
import time

from tierpoint.runtime import distenv

LAUNCHES = 8
SETUP_LAUNCHES = 5
# Each rank joins the group through distenv, then all ranks sum their ranks.
ALL_REDUCER = """
import os, torch, torch.distributed as dist
from tierpoint.runtime import distenv
rank, world = distenv.init_torch_distributed("gloo")
t = torch.tensor([float(rank)])
dist.all_reduce(t)
os.write(1, f"rank {rank} of {world}: sum {t.item():g}\\n".encode())  # one write: no interleaving
distenv.exit_process(0)
"""
# One rank (argv[1]) asks for a backend this CPU build of torch lacks: a real setup failure
# on that rank while the others are already in the rendezvous. The group's timeout is set
# to 600 s, so a job that waited for it instead of ending would exceed the test's bound.
ONE_FAILS = """
import os, sys
from mpi4py import MPI
from tierpoint.runtime import distenv
rank = MPI.COMM_WORLD.Get_rank()
backend = "nccl" if rank == int(sys.argv[1]) else "gloo"
distenv.init_torch_distributed(backend, timeout=600)
os.write(1, f"rank {rank} set up\\n".encode())
distenv.exit_process(0)
"""
EXITER = """
import os, sys
from mpi4py import MPI
from tierpoint.runtime import distenv
rank = MPI.COMM_WORLD.Get_rank()
MPI.COMM_WORLD.Barrier()
os.write(1, f"rank {rank} exiting\\n".encode())
distenv.exit_process(int(sys.argv[1]) if rank == 1 else 0)
"""


def launch(code: int):
    return distenv.launch(4, ["-c", EXITER, str(code)], timeout=120, capture=True)


def test_every_rank_exits_cleanly_launch_after_launch():
    for i in range(LAUNCHES):
        proc = launch(0)
        assert proc.returncode == 0, f"launch {i + 1} of {LAUNCHES}:\n{proc.stdout}"
        assert sorted(proc.stdout.split("\n"))[1:] == [f"rank {r} exiting" for r in range(4)], \
            proc.stdout
        assert "BAD TERMINATION" not in proc.stdout


def test_a_ranks_exit_code_reaches_mpiexec():
    proc = launch(3)
    assert proc.returncode == 3, proc.stdout
    assert proc.stdout.count("exiting") == 4, proc.stdout


def test_torch_distributed_setup_launch_after_launch():
    for i in range(SETUP_LAUNCHES):
        proc = distenv.launch(4, ["-c", ALL_REDUCER], timeout=300, capture=True)
        assert proc.returncode == 0, f"launch {i + 1} of {SETUP_LAUNCHES}:\n{proc.stdout}"
        lines = sorted(l for l in proc.stdout.splitlines() if l.startswith("rank "))
        assert lines == [f"rank {r} of 4: sum 6" for r in range(4)], proc.stdout


def _good_launch_seconds() -> float:
    """How long a whole 4-rank launch that sets up torch.distributed takes here and now:
    the failure tests' bound is derived from it, so a loaded machine does not fail them."""
    started = time.monotonic()
    proc = distenv.launch(4, ["-c", ALL_REDUCER], timeout=300, capture=True)
    assert proc.returncode == 0, proc.stdout
    return time.monotonic() - started


def test_a_rank_whose_setup_fails_ends_the_job_at_once():
    # A job that waited for the 600 s timeout would exceed this; one that ends at once, as a
    # good launch does, stays far inside it.
    bound = 3 * _good_launch_seconds() + 30
    for failing in (2, 0):  # a rank already past the port broadcast, and rank 0 itself
        started = time.monotonic()
        proc = distenv.launch(4, ["-c", ONE_FAILS, str(failing)], timeout=bound, capture=True)
        took = time.monotonic() - started
        assert proc.returncode != 0, proc.stdout
        assert (f"tierpoint.runtime.distenv: rank {failing} of 4: torch.distributed setup failed: "
                f"RuntimeError: Distributed package doesn't have NCCL built in") in proc.stdout, \
            proc.stdout
        assert "set up" not in proc.stdout.replace("setup", ""), proc.stdout
        assert took < bound, (took, bound)
