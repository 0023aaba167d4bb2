"""tierpoint: distributed, sharded, multi-tier checkpoints for PyTorch training.

    ckpt = tierpoint.Checkpointer(local="/local_ssd/{node}/ckpt", run="my-run")
    ckpt.save(step, {"model": model.state_dict(), "step": step}).wait()
    state = ckpt.restore(template)
"""
from .api import Checkpointer, SaveHandle
from .errors import (CheckpointError, CheckpointWarning, CheckpointExistsError, CheckpointNotFoundError,
                     CollectiveTimeoutError, ConfigurationError, CorruptCheckpointError,
                     FormatVersionError,
                     OlderStepError, RankFailedError, ShardingError, StateMismatchError,
                     TierFullError, UnsupportedStateError)
from .format.layout import FORMAT_VERSION
from .options import Policy
from .state import Shard
from .version import __version__

__all__ = [
    "Checkpointer", "SaveHandle", "Shard", "Policy", "FORMAT_VERSION", "__version__",
    "CheckpointError", "CheckpointWarning", "CheckpointExistsError", "CheckpointNotFoundError",
    "CollectiveTimeoutError", "ConfigurationError", "CorruptCheckpointError", "FormatVersionError",
    "OlderStepError", "RankFailedError", "ShardingError", "StateMismatchError",
    "TierFullError", "UnsupportedStateError",
]
