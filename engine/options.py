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
- ``TIERPOINT_DIRECT_IO``: ``auto`` (default: chunk files written with O_DIRECT where the
  filesystem takes it) or ``off`` (see ``Options.direct_io``).
- ``TIERPOINT_STAGING_BYTES``: host memory budget of a save's snapshot, bytes per rank
  (default: unbounded, the size of what the rank writes).
- ``TIERPOINT_IF_FULL``: ``raise`` (default) or ``warn`` when a save finds the local tier
  full (see ``Options.if_full``).
- ``TIERPOINT_AUDIT_KEY_FILE``: a file whose bytes key the HMAC of the audit log's records
  (see ``Options.audit_key_file``).
- ``TIERPOINT_FAULT``: fault injection for tests (see ``faults.py``).
"""
from __future__ import annotations

import math
import numbers
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ConfigurationError

# The largest chunk the save planner makes where shard boundaries allow (save/plan.py).
DEFAULT_CHUNK_BYTES = 32 << 20
# The capacity tier's OCDBT writes (tiers/capacity.py): the bytes of one commit (held in
# memory until committed; the next batch fills while one commits, so a pool's writer holds
# about two), and the size its data is cut into files of, written in parallel. Measured here
# (768 MiB, 512 MiB commits): 64 MiB files wrote 0.9-1.2 GB/s, the 2 GiB default 0.4-0.9
# GB/s. A commit writes nothing until it is complete, so a smaller batch starts the pool's
# writes sooner; each commit adds a B-tree node file and a partial data file. Files per part
# grow with its bytes / DRAIN_DATA_FILE_BYTES and / DRAIN_BATCH_BYTES, never with the number
# of arrays or ranks.
DRAIN_BATCH_BYTES = 128 << 20
DRAIN_DATA_FILE_BYTES = 64 << 20
# The drain's reads of local chunks run ahead of the pools' writers by up to this many bytes,
# on as many threads as there are pools (tiers/drain.py), so no pool waits for another's.
DRAIN_READ_AHEAD_BYTES = 128 << 20
# A restore's readers take the next arrays' reads while earlier arrays are read, with the
# targets of up to this many bytes open and not yet finished (restore/read.py read_arrays;
# a GPU leaf's target is a host copy of its bytes), so every reader thread has a read.
RESTORE_AHEAD_BYTES = 128 << 20


@dataclass(frozen=True)
class Policy:
    """What the tiers keep (decisions in ``retention.py``).

    ``keep_local``: the newest committed checkpoints kept on the local tier.
    ``drain_every``: every N-th committed checkpoint (by save count) goes to the capacity tier
    (None: no count rule, e.g. with ``drain_every_seconds`` alone).
    ``every_seconds``: ``Checkpointer.due(step)`` is true once this many seconds have passed
    since the last save (rank 0's clock decides; None: ``due`` is never true by the clock).
    ``drain_every_seconds``: a save is also drained when this many seconds have passed since
    the last drain started (or since the newest capacity copy was saved); rank 0's clock.
    ``keep_persistent``: the capacity tier keeps its newest M (None: all it receives).
    ``keep_every``: the capacity tier also keeps every step divisible by K.
    ``pin``: steps the capacity tier keeps forever.
    ``replicas``: 1 copies each node-local directory's committed checkpoint to the local tier
    of a partner node (tiers/replicas.py: a ring over the domains, never the same node), in
    the background and capped by ``drain_rate``; 0 (the default) keeps no replicas.
    """

    keep_local: int = 2
    drain_every: int | None = 5
    keep_persistent: int | None = None
    keep_every: int | None = None
    pin: frozenset = frozenset()
    every_seconds: float | None = None
    drain_every_seconds: float | None = None
    replicas: int = 0

    def __post_init__(self) -> None:
        if (isinstance(self.replicas, bool) or not isinstance(self.replicas, int)
                or self.replicas not in (0, 1)):
            raise ConfigurationError(
                f"Policy replicas must be 0 (no partner replicas) or 1 (one replica of each "
                f"node's checkpoint on a partner node), not {self.replicas!r}; more than one "
                "replica is not supported")
        _check_int(self.keep_local, "Policy keep_local", 1,
                   "the newest checkpoint is always kept")
        if self.drain_every is not None:
            _check_int(self.drain_every, "Policy drain_every", 1,
                       "1 drains every checkpoint; None: only drain_every_seconds")
        for name in ("every_seconds", "drain_every_seconds"):
            if getattr(self, name) is not None:
                _check_number(getattr(self, name), f"Policy {name}", "seconds, or None")
        for name in ("keep_persistent", "keep_every"):
            value = getattr(self, name)
            if value is not None:
                _check_int(value, f"Policy {name}", 1, "or None for no such limit")
        object.__setattr__(self, "pin", _pinned_steps(self.pin))


@dataclass(frozen=True)
class Options:
    """Engine settings; defaults come from the environment where a variable is set."""

    io_threads: int = 4
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    timeout: float = 1800.0
    # Durability of a save's files before its commit. "fsync": every file and directory is
    # fsynced. "syncfs": the writeback of large chunk files is started as they are written
    # (sync_file_range(2): the device writes while the next chunks are hashed, with no
    # journal commit per file), and everything is made durable by one syncfs(2) per rank
    # (its descriptor opened before the first write, so it reports any writeback error
    # since), which also flushes other processes' dirty data on that filesystem.
    # "none": no flushing at all (tests and throwaway runs only; not crash-safe).
    sync: str = "syncfs"
    small_file_bytes: int = 1 << 20
    # How chunk files of at least small_file_bytes reach the local tier. "auto": direct I/O
    # (O_DIRECT, runtime/directio.py) where the filesystem takes it, so no byte is copied
    # into the page cache (write-once data; the cheapest way on a busy host, and it leaves
    # the trainer's file cache alone); buffered where it does not. "off": always buffered
    # (the data then sits in the page cache, which favours a drain that runs right after).
    direct_io: str = "auto"
    # Bandwidth cap of background drains, bytes/s per aggregator, and of the partner
    # replication, bytes/s per sending node (None: uncapped).
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
    # A file whose bytes key the HMAC of the audit log's records (None: records unkeyed).
    audit_key_file: str | None = None

    def __post_init__(self) -> None:
        _check_int(self.io_threads, _name("io_threads"), 1)
        _check_int(self.chunk_bytes, _name("chunk_bytes"), 1)
        _check_int(self.small_file_bytes, _name("small_file_bytes"), 0)
        _check_number(self.timeout, _name("timeout"), "seconds")
        if self.drain_rate is not None:
            _check_number(self.drain_rate, _name("drain_rate"), "bytes/s, or None for no cap")
        for name in ("sync", "direct_io", "if_busy", "if_full"):
            _check_choice(getattr(self, name), _name(name), CHOICES[name])
        if self.staging_bytes is not None:
            _check_int(self.staging_bytes, _name("staging_bytes"), self.chunk_bytes,
                       f"at least chunk_bytes ({self.chunk_bytes}): a chunk is staged whole")

    @classmethod
    def from_env(cls, **overrides) -> "Options":
        """Options from the keyword arguments; a setting passed as None (or not at all) comes
        from its environment variable when that is set, else from the default."""
        given = {k: v for k, v in overrides.items() if v is not None}
        for field, (variable, parse) in ENVIRONMENT.items():
            if field not in given and variable in os.environ:
                given[field] = _from_env(variable, field, parse)
        return cls(**given)


# The environment variable of each setting, and how its text is read.
ENVIRONMENT = {
    "io_threads": ("TIERPOINT_IO_THREADS", int),
    "timeout": ("TIERPOINT_TIMEOUT", float),
    "drain_rate": ("TIERPOINT_DRAIN_RATE", float),
    "sync": ("TIERPOINT_SYNC", str),
    "direct_io": ("TIERPOINT_DIRECT_IO", str),
    "if_full": ("TIERPOINT_IF_FULL", str),
    "staging_bytes": ("TIERPOINT_STAGING_BYTES", int),
    "audit_key_file": ("TIERPOINT_AUDIT_KEY_FILE", str),
}
CHOICES = {"sync": ("syncfs", "fsync", "none"), "direct_io": ("auto", "off"),
           "if_busy": ("wait", "skip"),
           "if_full": ("raise", "warn")}
_KINDS = {int: "an integer", float: "a number", str: "a string"}


def _name(field: str) -> str:
    """How a message names a setting: the keyword argument, and its variable if it has one."""
    variable = ENVIRONMENT.get(field, (None,))[0]
    return f"{field}= ({variable})" if variable else f"{field}="


def _from_env(variable: str, field: str, parse):
    text = os.environ[variable]
    try:
        return parse(text.strip()) if parse is not str else text
    except ValueError:
        raise ConfigurationError(
            f"environment variable {variable}={text!r} is not {_KINDS[parse]}: set it to "
            f"a valid {field} or unset it for the default") from None


def _check_int(value, what: str, minimum: int, note: str = "") -> None:
    """``value`` must be an integer (not a bool) >= ``minimum``."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or value < minimum):
        extra = f" ({note})" if note else ""
        raise ConfigurationError(
            f"{what} must be an integer >= {minimum}{extra}, not {value!r}")


def _check_number(value, what: str, unit: str) -> None:
    """``value`` must be a finite real number > 0."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise ConfigurationError(f"{what} must be a number > 0 ({unit}), not {value!r}")


def _check_choice(value, what: str, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigurationError(
            f"{what} must be one of {', '.join(map(repr, allowed))}, not {value!r}")


def _pinned_steps(pin) -> frozenset:
    """``Policy.pin`` as a frozenset of step numbers (integers >= 0)."""
    if isinstance(pin, (str, bytes)) or not isinstance(pin, Iterable):
        raise ConfigurationError(
            f"Policy pin must be a collection of step numbers (e.g. {{100, 200}}), not {pin!r}")
    for step in pin:
        _check_int(step, "every step in Policy pin", 0)
    return frozenset(int(step) for step in pin)


def fault_spec() -> str | None:
    """``TIERPOINT_FAULT``: the fault to inject (runtime/faults.py; for tests), read at every
    injection point so a test can set it for the ranks it launches."""
    return os.environ.get("TIERPOINT_FAULT") or None


def fault_command() -> str:
    """``TIERPOINT_FAULT_RUN``: the shell command a ``kind=run`` fault runs."""
    return os.environ.get("TIERPOINT_FAULT_RUN", "true")


def debug() -> bool:
    """Whether TIERPOINT_DEBUG asks for tracebacks."""
    return os.environ.get("TIERPOINT_DEBUG", "") not in ("", "0")


def node_name() -> str:
    return os.environ.get("TIERPOINT_NODE") or socket.gethostname()


def expand_root(template: str, node: str) -> str:
    """The tier root of this node: ``{node}`` in the path is replaced by the node's name."""
    return os.path.abspath(os.path.expanduser(str(template).replace("{node}", node)))
