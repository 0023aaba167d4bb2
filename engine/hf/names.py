"""What an export writes where, decided from the manifest alone (no data read). Pure.

An array's exported name is its state key joined with dots, the name DCP and torch's
``state_dict()`` give the same leaf (``dcp.keys.dcp_key``: ``("model", "lm_head.weight")`` ->
``"model.lm_head.weight"``); ``--select`` globs and ``--rename`` prefixes act on that name.
Shards follow Hugging Face's rule: arrays in the checkpoint's name order, a new shard
started when the next array would take the current one past the limit, so a shard is over
the limit only when it holds one array that is (an array is never split). The files are
always named as shards (``model-0000K-of-0000N.safetensors``) and listed in
``model.safetensors.index.json``, one shard too: the layout the issue asks for, which
``transformers`` loads through the index whatever the count.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from ..errors import ConfigurationError

INDEX_FILE = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """Bytes of a size as Hugging Face writes it ("5GB", "500MB", "2GiB", "1000000")."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise ConfigurationError(f"max shard size {text!r} is not a size of at least one "
                                 "byte: write e.g. 5GB, 500MB, 2GiB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[unit])


def parse_rename(text: str) -> tuple[str, str]:
    """``FROM=TO`` as (FROM, TO): names starting with FROM get TO instead (TO may be empty)."""
    if "=" not in text or not text.split("=", 1)[0]:
        raise ConfigurationError(f"--rename {text!r} must be FROM=TO (a non-empty prefix FROM, "
                                 "TO may be empty), e.g. --rename model.=")
    old, new = text.split("=", 1)
    return old, new


def renamed(name: str, renames: list[tuple[str, str]]) -> str:
    """``name`` after the first rename whose prefix it starts with (the others are ignored)."""
    for old, new in renames:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def selected(name: str, patterns: list[str]) -> bool:
    """Whether ``name`` matches one of the globs (no globs: every name)."""
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True)
class Item:
    """One exported array: its name in the checkpoint, its name in the export, its bytes,
    its element type (the format's name, e.g. "bfloat16", which safetensors takes too) and
    its shape."""

    array: str
    name: str
    nbytes: int
    dtype: str = ""
    shape: tuple[int, ...] = ()


def plan_shards(items: list[Item], max_bytes: int) -> list[list[Item]]:
    """The arrays of each output file, in order (see the module docstring)."""
    shards: list[list[Item]] = []
    size = 0
    for item in items:
        if not shards or (shards[-1] and size + item.nbytes > max_bytes):
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards or [[]]


def shard_file_names(count: int) -> list[str]:
    """Hugging Face's sharded file names, ``model-00001-of-0000N.safetensors``, one shard
    too (``model-00001-of-00001.safetensors``, beside the index)."""
    return [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]


def check_unique(items: list[Item]) -> None:
    """Two arrays renamed to one name would overwrite each other in the export."""
    seen: dict[str, str] = {}
    for item in items:
        if item.name in seen:
            raise ConfigurationError(
                f"arrays {seen[item.name]!r} and {item.array!r} would both be exported as "
                f"{item.name!r}; change --rename or narrow --select")
        seen[item.name] = item.array
