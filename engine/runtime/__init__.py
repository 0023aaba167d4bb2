"""The runtime the data path runs on: communicators (comm: the one to use; channel, mpicomm,
torchcomm: the channels), collective phases that agree on failure (phases), launch helpers
(distenv), preemption signals (preempt), fault injection points (faults), durable file
writes (fsutil) and what each phase of the data path cost (costs). The bottom floor: it
imports nothing from the package but ``errors`` and ``options``.
"""
