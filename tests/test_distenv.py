"""distenv.exit_process under a real mpiexec (hydra): every rank's exit is a clean one.

MPICH 5 ends its PMI connection in an atexit handler, which os._exit skips; without
exit_process's own PMI finalize, hydra took a rank that exited first for a dead one and
SIGKILLed the others (about half of all 4-rank launches here, and the rare "Killed (signal 9)"
of the FSDP test's ranks after they had passed every check). Eight launches in a row must
all end with the exit code the ranks gave.
"""
from tierpoint import distenv

LAUNCHES = 8
EXITER = """
import os, sys
from mpi4py import MPI
from tierpoint import distenv
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
