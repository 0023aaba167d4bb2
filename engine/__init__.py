"""tierpoint: distributed, sharded, multi-tier checkpoints for PyTorch training.

    ckpt = tierpoint.Checkpointer(local="/local_ssd/{node}/ckpt", run="my-run")
    ckpt.save(step, {"model": model.state_dict(), "step": step}).wait()
    state = ckpt.restore(template)
    view = tierpoint.open("/pool/ckpt/my-run")   # read-only, for analysis (view/__init__.py)
    view["model/w"][100:200]
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
# tierpoint.open, the read API; not in __all__, so ``from tierpoint import *`` keeps the builtin
from .view import open  # noqa: A001,F401

# The import paths of tierpoint 0.1, from before the package was grouped into subpackages
# (docs/architecture.md), stay importable: ``tierpoint.distenv.init_torch_distributed``,
# ``from tierpoint.verify import verify_checkpoint`` and the like still work.
_MOVED = {"distenv": "runtime.distenv", "verify": "trust.verify", "inspect": "trust.inspect",
          "lineage": "trust.lineage", "audit": "trust.audit"}


def _keep_old_import_paths() -> None:
    import importlib
    import sys
    for old, new in _MOVED.items():
        module = importlib.import_module(f"{__name__}.{new}")
        sys.modules.setdefault(f"{__name__}.{old}", module)
        globals().setdefault(old, module)


_keep_old_import_paths()

__all__ = [
    "Checkpointer", "SaveHandle", "Shard", "Policy", "FORMAT_VERSION", "__version__",
    "CheckpointError", "CheckpointWarning", "CheckpointExistsError", "CheckpointNotFoundError",
    "CollectiveTimeoutError", "ConfigurationError", "CorruptCheckpointError", "FormatVersionError",
    "OlderStepError", "RankFailedError", "ShardingError", "StateMismatchError",
    "TierFullError", "UnsupportedStateError",
]
