"""Errors raised by tierpoint.

Every error derives from :class:`CheckpointError` (an ``Exception``) and, where one fits, from
the matching built-in, so ``except FileNotFoundError`` keeps working for callers that expect it.
Errors that cross ranks are rebuilt on every rank from their class name and message (never
pickled), so each class must be constructible from a single message string.
"""
from __future__ import annotations


class CheckpointError(Exception):
    """Base class of every error tierpoint raises."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No committed checkpoint matches the request (missing, uncommitted or half-written)."""


class CheckpointExistsError(CheckpointError, FileExistsError):
    """A committed checkpoint already exists at that step and overwrite was not asked for."""


class FormatVersionError(CheckpointError, ValueError):
    """The checkpoint was written in a format version this tierpoint does not read."""


class CorruptCheckpointError(CheckpointError, OSError):
    """Bytes on disk do not match their checksum, or metadata is unreadable."""


class ShardingError(CheckpointError, ValueError):
    """The ranks' shards of one array overlap, leave gaps or disagree on shape or dtype."""


class StateMismatchError(CheckpointError, ValueError):
    """The restore template does not match the checkpoint (missing key, shape or dtype)."""


class UnsupportedStateError(CheckpointError, TypeError):
    """A state leaf has a type or dtype tierpoint cannot store."""


class RankFailedError(CheckpointError):
    """Another rank failed; raised on the ranks whose own part succeeded."""


class CollectiveTimeoutError(CheckpointError, TimeoutError):
    """A collective did not complete in time; the message names the late ranks."""


class TierFullError(CheckpointError, OSError):
    """A tier's device has no room for a save or drain (ENOSPC, or a quota); nothing was
    committed and earlier checkpoints are untouched. ``if_full="warn"`` makes a save's
    TierFullError a warning, so that training goes on."""


class OlderStepError(CheckpointError, ValueError):
    """A save of a step that the local ring would delete as soon as it is committed (newer
    steps fill ``keep_local``); nothing was written. ``save(..., if_older="warn")`` saves it
    anyway."""


class ConfigurationError(CheckpointError, ValueError):
    """A bad argument, setting or environment variable (of ``Policy``, ``Checkpointer`` or
    the ``TIERPOINT_*`` variables): the message names it and says which values are allowed.
    A ``ValueError`` too, so ``except ValueError`` written for earlier releases still works."""


class CheckpointWarning(UserWarning):
    """Something went wrong that lost no checkpoint (e.g. a drain failed and the local copy
    is kept); issued on every rank."""


_BY_NAME = {cls.__name__: cls for cls in (
    CheckpointError, CheckpointNotFoundError, CheckpointExistsError, FormatVersionError,
    CorruptCheckpointError, ShardingError, StateMismatchError, UnsupportedStateError,
    RankFailedError, CollectiveTimeoutError, TierFullError, OlderStepError,
    ConfigurationError)}


def error_class(name: str) -> type[CheckpointError]:
    """The CheckpointError subclass called ``name``; RankFailedError for anything else."""
    return _BY_NAME.get(name, RankFailedError)
