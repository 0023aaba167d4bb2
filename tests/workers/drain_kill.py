"""Save steps 1..5 (drain_every=5, so step 5 drains) and die (SIGKILL) inside the drain.
argv: ROOT POINT with POINT 'copy' (after the first chunk is written to a part), 'merge'
(all parts written, before they are merged) or 'commit' (after the parts are merged into the
head, before the verification and the marker)."""
import os
import signal
import sys

import torch

import tierpoint
import tierpoint.tiers.capacity
import tierpoint.tiers.local

ROOT, POINT = sys.argv[1], sys.argv[2]
if POINT == "copy":
    real = tierpoint.tiers.local.LocalCopy.read_chunk
    calls = []

    def read_then_die(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    tierpoint.tiers.local.LocalCopy.read_chunk = read_then_die
else:
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    if POINT == "merge":
        tierpoint.tiers.capacity.CapacityTier.finish = die
    else:
        tierpoint.tiers.capacity.CapacityTier.check_index = die

ck = tierpoint.Checkpointer(os.path.join(ROOT, "local"), persistent=[os.path.join(ROOT, "pool")],
                            run="k", policy=tierpoint.Policy(keep_local=2, drain_every=5))
for step in range(1, 6):
    ck.save(step, {"a": torch.full((64, 8), float(step)), "b": torch.arange(5) + step})
ck.close()  # waits for the background drain of step 5
print("survived", flush=True)
