"""Hugging Face safetensors export and import (``tierpoint export`` / ``tierpoint import``).

Modules: names.py (what an export writes where: exported names, --select/--rename, shards;
pure), shardfile.py (one safetensors file laid out by the library and filled array by
array, so one array is in memory), export.py (a committed checkpoint as safetensors files,
the audit record in the run's log wherever it lives), load.py (a safetensors or DCP
directory as a tierpoint checkpoint whose lineage names its source and hashes its files).

May import: view (exports read through ``tierpoint.open``), api (imports save through a
single-process ``Checkpointer``), dcp.keys, trust, tiers, runtime, format. Imports ``safetensors``
and torch, so ``import tierpoint`` does not import it.
"""
from __future__ import annotations

from .export import ExportResult, export_safetensors, record_export
from .load import import_checkpoint

__all__ = ["ExportResult", "export_safetensors", "import_checkpoint", "record_export"]
