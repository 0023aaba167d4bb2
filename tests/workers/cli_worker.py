"""A checkpoint written by several "nodes", for the command-line tests. argv: ROOT
Each rank (its node from TIERPOINT_NODE) saves its rows of one array, step 1 of run "m", into
ROOT/{node}: each node's directory then holds only the chunks its ranks wrote, so a verify
of one node's copy cannot check every chunk. Prints CLI-OK.
"""
import os
import sys

import numpy as np
from mpi4py import MPI

import tierpoint

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402

W = MPI.COMM_WORLD
ROWS, COLS = 12, 5
lo, n = P.split(ROWS, W.Get_size(), "even")[W.Get_rank()]
data = np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS)[lo:lo + n].copy()
with tierpoint.Checkpointer(os.path.join(sys.argv[1], "{node}"), run="m",
                            chunk_bytes=64) as ck:
    ck.save(1, {"w": tierpoint.Shard(data, (ROWS, COLS), (lo, 0))}).wait()
W.Barrier()
if W.Get_rank() == 0:
    print("CLI-OK", flush=True)
