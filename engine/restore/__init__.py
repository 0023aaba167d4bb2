"""The restore path: a pure restore plan (plan: which step, which tier, which chunk
reads into which target boxes), chunk reads verified by the tier (read), and the executor
that runs the plan and rebuilds the state (execute). It imports format, runtime and tiers.
"""
