"""Saves of steps older than the local ring's newest, on every rank (tests/test_ring.py).

argv: ROOT STEPS, STEPS a comma-separated list saved in order (keep_local=2, no capacity
tier, local tier ROOT/local/{node}). Prints ``SAVED <step> rank <r>`` per committed save and
``REFUSED <step> rank <r>: <message>`` per OlderStepError.
"""
import os
import sys

import numpy as np
from mpi4py import MPI

import tierpoint

ROOT, STEPS = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
RANK = MPI.COMM_WORLD.Get_rank()


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write per line: ranks share the output


ck = tierpoint.Checkpointer(os.path.join(ROOT, "local", "{node}"), run="o", timeout=120,
                            policy=tierpoint.Policy(keep_local=2))
for step in STEPS:
    try:
        ck.save(step, {"w": np.full(8, float(step)), "step": step}).wait()
        say(f"SAVED {step} rank {RANK}")
    except tierpoint.OlderStepError as e:
        say(f"REFUSED {step} rank {RANK}: {e}")
ck.close()
