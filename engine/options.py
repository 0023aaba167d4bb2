"""Settings, in one place: the policy, the engine options and the environment variables.

Environment variables read (nowhere else):
- ``TIERPOINT_NODE``: this process's node name (default: the hostname); ranks with the same
  node name share a node-local tier.
- ``TIERPOINT_TIMEOUT``: seconds a collective waits for the other ranks (default 1800).
- ``TIERPOINT_IO_THREADS``: I/O threads per rank (default 4).
- ``TIERPOINT_DEBUG``: include tracebacks of other ranks' failures in error messages; the
  ``tierpoint`` command prints the traceback of an error (see ``debug()``).
- ``TIERPOINT_DRAIN_RATE``: bandwidth cap of background drains, bytes/s per aggregator.
- ``TIERPOINT_SYNC``: how writes are made durable, ``syncfs`` (default on Linux) or
  ``fsync`` (see ``Options.sync``).
- ``TIERPOINT_STAGING_BYTES``: host memory budget of a save's snapshot, bytes per rank
  (default: unbounded, the size of what the rank writes).
- ``TIERPOINT_IF_FULL``: ``raise`` (default) or ``warn`` when a save finds the local tier
  full (see ``Options.if_full``).
- ``TIERPOINT_FAULT``: fault injection for tests (see ``faults.py``).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from .plan import DEFAULT_CHUNK_BYTES


@dataclass(frozen=True)
class Policy:
    """What the tiers keep (decisions in ``retention.py``).

    ``keep_local``: the newest committed checkpoints kept on the local tier.
    ``drain_every``: every N-th committed checkpoint (by save count) goes to the capacity tier.
    ``keep_persistent``: the capacity tier keeps its newest M (None: all it receives).
    ``keep_every``: the capacity tier also keeps every step divisible by K.
    ``pin``: steps the capacity tier keeps forever.
    """

    keep_local: int = 2
    drain_every: int = 5
    keep_persistent: int | None = None
    keep_every: int | None = None
    pin: frozenset = frozenset()

    def __post_init__(self) -> None:
        if self.keep_local < 1:
            raise ValueError("Policy.keep_local must be >= 1 (the newest checkpoint is kept)")
        if self.drain_every < 1:
            raise ValueError("Policy.drain_every must be >= 1")
        if self.keep_persistent is not None and self.keep_persistent < 1:
            raise ValueError("Policy.keep_persistent must be >= 1 or None")
        if self.keep_every is not None and self.keep_every < 1:
            raise ValueError("Policy.keep_every must be >= 1 or None")
        object.__setattr__(self, "pin", frozenset(int(s) for s in self.pin))


@dataclass(frozen=True)
class Options:
    """Engine settings; defaults come from the environment where a variable is set."""

    io_threads: int = 4
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    timeout: float = 1800.0
    # Durability of a save's files before its commit. "fsync": every file and directory is
    # fsynced. "syncfs": large chunk files are fsynced as they are written (so writeback
    # overlaps the copying), small files and directories are made durable by one syncfs(2)
    # per rank, which also flushes other processes' dirty data on that filesystem.
    # "none": no flushing at all (tests and throwaway runs only; not crash-safe).
    sync: str = "syncfs"
    small_file_bytes: int = 1 << 20
    # Bandwidth cap of background drains, bytes/s per aggregator (None: uncapped).
    drain_rate: float | None = None
    # Host memory for a save's snapshot, bytes per rank (None: as much as the rank writes).
    # A bigger state is staged and written in parts; save() then blocks until all but the
    # last part are written.
    staging_bytes: int | None = None
    # A save() while the previous save is still being written: "wait" for it, or "skip"
    # the new one with a warning.
    if_busy: str = "wait"
    # A save that finds the local tier full (TierFullError): "raise" it (like any failed
    # save), or "warn" on every rank and let training go on; either way nothing is
    # committed, the partial step is removed and earlier checkpoints are intact.
    if_full: str = "raise"

    def __post_init__(self) -> None:
        if self.sync not in ("fsync", "syncfs", "none"):
            raise ValueError(f"sync must be 'fsync', 'syncfs' or 'none', not {self.sync!r}")
        if self.if_busy not in ("wait", "skip"):
            raise ValueError(f"if_busy must be 'wait' or 'skip', not {self.if_busy!r}")
        if self.if_full not in ("raise", "warn"):
            raise ValueError(f"if_full must be 'raise' or 'warn', not {self.if_full!r}")
        if self.staging_bytes is not None and self.staging_bytes < self.chunk_bytes:
            raise ValueError(
                f"staging_bytes ({self.staging_bytes}) must be at least chunk_bytes "
                f"({self.chunk_bytes}): a chunk is staged whole")

    @classmethod
    def from_env(cls, **overrides) -> "Options":
        env = {}
        if "TIERPOINT_IO_THREADS" in os.environ:
            env["io_threads"] = int(os.environ["TIERPOINT_IO_THREADS"])
        if "TIERPOINT_TIMEOUT" in os.environ:
            env["timeout"] = float(os.environ["TIERPOINT_TIMEOUT"])
        if "TIERPOINT_DRAIN_RATE" in os.environ:
            env["drain_rate"] = float(os.environ["TIERPOINT_DRAIN_RATE"])
        if "TIERPOINT_SYNC" in os.environ:
            env["sync"] = os.environ["TIERPOINT_SYNC"]
        if "TIERPOINT_IF_FULL" in os.environ:
            env["if_full"] = os.environ["TIERPOINT_IF_FULL"]
        if "TIERPOINT_STAGING_BYTES" in os.environ:
            env["staging_bytes"] = int(os.environ["TIERPOINT_STAGING_BYTES"])
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)


def debug() -> bool:
    """Whether TIERPOINT_DEBUG asks for tracebacks."""
    return os.environ.get("TIERPOINT_DEBUG", "") not in ("", "0")


def node_name() -> str:
    return os.environ.get("TIERPOINT_NODE") or socket.gethostname()


def expand_root(template: str, node: str) -> str:
    """The tier root of this node: ``{node}`` in the path is replaced by the node's name."""
    return os.path.abspath(os.path.expanduser(str(template).replace("{node}", node)))
