"""A point-to-point receive over gloo ends at the channel's ``point_timeout``: rank 0
receives from rank 1, which sends nothing until rank 0 gave up; rank 0 must raise a
CollectiveTimeoutError naming rank 1 at the limit. Gloo closes the connection of a wait that
timed out (the channel is not used again), so the ranks then meet on the default group only
and end. Ranks are started by the test with env:// variables; prints POINT <outcome> on
rank 0."""
import os
import sys
import time

import torch.distributed as dist

import tierpoint
from tierpoint.runtime.torchcomm import TorchComm

dist.init_process_group("gloo")
comm = TorchComm(None)
comm.point_timeout = 1.5
if comm.rank == 0:
    t = time.monotonic()
    try:
        comm.recv_bytes(1)
        outcome = "no-error"
    except tierpoint.CollectiveTimeoutError as e:
        outcome = f"{time.monotonic() - t:.1f}s:{e}"
    sys.stdout.write(f"POINT {outcome}\n")
    sys.stdout.flush()
dist.barrier()  # rank 1 is silent until here
os._exit(0)  # tierpoint's gloo group is broken by design after the timeout: no teardown
