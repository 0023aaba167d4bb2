"""The runtime the data path runs on: communicators (comm: the one to use; channel, mpicomm,
torchcomm: the channels), collective phases that agree on failure (phases), launch helpers
(distenv), preemption signals (preempt), fault injection points (faults) and durable file
writes (fsutil). The bottom floor: it imports nothing from the package but ``errors`` and
``options``.
"""
