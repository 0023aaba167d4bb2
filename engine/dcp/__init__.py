"""``tierpoint.dcp``: tierpoint as storage for ``torch.distributed.checkpoint``.

    import torch.distributed.checkpoint as dcp
    dcp.save(state_dict, storage_writer=tierpoint.dcp.StorageWriter(ckpt, step=100))
    dcp.load(state_dict, storage_reader=tierpoint.dcp.StorageReader(ckpt, step=100))

What DCP writes through the writer is an ordinary tierpoint checkpoint (``ckpt.restore``
reads it on any world size); any tierpoint checkpoint loads through the reader. The mapping
between DCP's flattened keys and tierpoint's arrays is one function, ``dcp_key(key, path)``
of what an array's manifest record holds (keys.py says why it is the key DCP flattens to).
No pickle is written. Imports torch.distributed.checkpoint, so it is not imported by
``import tierpoint``.

May import: runtime, format, tiers, restore, view, state (and the Checkpointer it is handed,
never imported).
"""
from __future__ import annotations

from .keys import dcp_key
from .reader import StorageReader
from .writer import StorageWriter

__all__ = ["StorageReader", "StorageWriter", "dcp_key"]
