"""``import_checkpoint``: a Hugging Face safetensors directory, or a torch.distributed.checkpoint
(DCP) directory, as an ordinary tierpoint checkpoint.

Who calls: one process (``tierpoint import``), no MPI. The checkpoint is written by a
single-process ``Checkpointer.save(..., blocking=True)``: straight from the source's tensors,
no staging copy. What that means for memory:

- safetensors: the tensors are those the ``safetensors`` library hands out, memory-mapped
  from the files by its default backend, so the state is the files' pages (the page cache,
  read as the save writes each array), not a copy in the heap;
- DCP: its reader reads into tensors this module allocates, so the whole state is in memory
  once (DCP has no lazy read of a whole checkpoint).

Pickle: a safetensors directory's ``*.bin``/``*.pt`` weights are never read (pickle can run
code when loaded): a directory holding only those is refused. DCP's ``.metadata`` file *is* a
pickle: it is read only when the caller says ``trust_pickle=True``; DCP's non-tensor entries
(pickled Python objects) are skipped even then, with a note.

Lineage: the checkpoint's ``lineage["source"]`` records the source's path, format and the
SHA-256 of every regular file at the top level of the source directory (``source_files``:
the weights, and the tokenizer files, README, config, pickles not read too: the whole
published model; hashing reads bytes, it never loads or runs them), so a run restored from
it (``restore(from_run=...)``) has a lineage that reaches the published model (``tierpoint
lineage``). ``lineage["source"]["weights"]`` names the files whose tensors were imported.
"""
from __future__ import annotations

import json
import os
import warnings

from ..errors import CheckpointNotFoundError, ConfigurationError
from .export import sha256_of
from .names import INDEX_FILE

DCP_METADATA = ".metadata"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def source_format(src: str) -> str:
    """"dcp" or "safetensors": what kind of directory ``src`` is (an error says why neither)."""
    if not os.path.isdir(src):
        state = "does not exist" if not os.path.lexists(src) else "is not a directory"
        raise ConfigurationError(f"SRC {src} {state}; pass a Hugging Face model directory "
                                      "(*.safetensors) or a DCP checkpoint directory")
    if os.path.isfile(os.path.join(src, DCP_METADATA)):
        return "dcp"
    names = os.listdir(src)
    if any(n.endswith(".safetensors") for n in names):
        return "safetensors"
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ConfigurationError(
            f"SRC {src} holds pickle weight files only ({', '.join(pickles[:3])}): tierpoint "
            "import reads safetensors (a pickle can run code when it is loaded); convert them "
            "where you trust them, e.g. transformers' save_pretrained(DIR, "
            "safe_serialization=True), and import that directory")
    raise ConfigurationError(f"SRC {src} holds no *.safetensors files and no DCP "
                             f"{DCP_METADATA}; pass a Hugging Face model directory or a DCP "
                             "checkpoint directory")


def safetensors_files(src: str) -> list[str]:
    """The weight files of a Hugging Face directory: those its index names, else every
    ``*.safetensors`` file, sorted."""
    index = os.path.join(src, INDEX_FILE)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            try:
                weight_map = json.load(f)["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigurationError(f"{index} is not a safetensors index (no weight_map: "
                                         f"{e})") from None
        files = sorted(set(weight_map.values()))
        missing = [n for n in files if not os.path.isfile(os.path.join(src, n))]
        if missing:
            raise CheckpointNotFoundError(f"{index} names {missing[0]}, which is not in {src}")
        return files
    return sorted(n for n in os.listdir(src) if n.endswith(".safetensors"))


def source_files(src: str) -> list[str]:
    """Every regular file at the top level of ``src`` (a symbolic link to one too, as a Hugging
    Face cache snapshot holds), sorted: what lineage hashes. Subdirectories are not walked
    (a source's files are at its top level; a cache's ``.cache/`` is not the model)."""
    return sorted(n for n in os.listdir(src) if os.path.isfile(os.path.join(src, n)))


def read_safetensors(src: str, into: str) -> tuple[dict, list[str], list[str]]:
    """(the state to save, the weight files read, notes): every tensor under key ``into`` (a dict
    keyed by the tensor's name; ``into=""``: at the top level)."""
    from safetensors import safe_open
    files = safetensors_files(src)
    tensors, origin = {}, {}
    for name in files:
        with safe_open(os.path.join(src, name), framework="pt") as f:
            for key in f.keys():
                if key in tensors:
                    raise ConfigurationError(f"tensor {key!r} is in both {origin[key]} and "
                                             f"{name} of {src}")
                tensors[key], origin[key] = f.get_tensor(key), name
    notes = []
    pickles = sorted(n for n in os.listdir(src) if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        notes.append(f"not read (pickle): {', '.join(pickles)}")
    return ({into: tensors} if into else tensors), files, notes


def read_dcp(src: str) -> tuple[dict, list[str], list[str]]:
    """(the state to save, the files read, notes) of a DCP directory, nested as it was saved
    (DCP's planner records each flattened key's object path)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    reader = dcp.FileSystemReader(src)
    metadata = reader.read_metadata()  # the pickle the caller trusted
    flat, skipped = {}, []
    for key, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            flat[key] = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
        else:
            skipped.append(key)
    with warnings.catch_warnings():  # "torch.distributed ... uninitialized": one process, as meant
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(flat, storage_reader=reader, no_dist=True)
    paths = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    state: dict = {}
    for key, tensor in flat.items():
        _place(state, tuple(paths.get(key, (key,))), tensor)
    notes = [f"skipped {len(skipped)} non-tensor DCP entries (pickled objects): "
             f"{', '.join(sorted(skipped)[:8])}"] if skipped else []
    return _lists(state), source_files(src), notes


def _place(state: dict, path: tuple, value) -> None:
    node = state
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _lists(node):
    """Dicts keyed 0..n-1 by ints (list positions in DCP's object paths) back as lists."""
    if not isinstance(node, dict):
        return node
    out = {k: _lists(v) for k, v in node.items()}
    if out and all(isinstance(k, int) for k in out) and sorted(out) == list(range(len(out))):
        return [out[i] for i in range(len(out))]
    return out


def import_checkpoint(src: str, local: str, run: str, step: int, *, trust_pickle: bool = False,
                      into: str | None = None) -> dict:
    """Write the tensors of ``src`` as checkpoint ``step`` of ``run`` under tier root
    ``local``; returns {"path", "source", "notes", "arrays"}. ``into``: the state key a
    Hugging Face directory's tensors go under (None: "model"; "": the top level); a DCP
    directory keeps its own nesting, and refuses ``into``."""
    from ..api import Checkpointer
    from ..runtime.comm import SingleComm
    from ..format import layout
    kind = source_format(src)
    target = layout.step_dir(local, run, step)
    if layout.is_committed(target):  # before anything is read: an import never replaces one
        raise ConfigurationError(f"step {step} of run {run!r} is already committed under "
                                 f"{local} ({target}); import under another --step or --run")
    if kind == "dcp":
        if not trust_pickle:
            raise ConfigurationError(
                f"SRC {src} is a torch.distributed.checkpoint directory, whose {DCP_METADATA} "
                "is a pickle (loading one can run any code its writer put there); pass "
                "--trust-pickle if you trust who wrote it")
        if into is not None:
            raise ConfigurationError(f"--into applies to a safetensors directory; SRC {src} is "
                                     "a DCP checkpoint, which keeps the nesting it was saved "
                                     "with")
        state, read, notes = read_dcp(src)
    else:
        state, read, notes = read_safetensors(src, "model" if into is None else into)
    source = {"path": os.path.abspath(src), "format": kind,
              "files": {n: sha256_of(os.path.join(src, n)) for n in source_files(src)},
              "weights": read}
    with Checkpointer(local, run=run, comm=SingleComm()) as ckpt:
        ckpt.source = source
        ckpt.save(step, state, metadata={"imported_from": source["path"]}, blocking=True)
        path = ckpt.step_dir(step)
    return {"path": path, "source": source, "notes": notes, "arrays": _count(state)}


def _count(node) -> int:
    if isinstance(node, dict):
        return sum(_count(v) for v in node.values())
    if isinstance(node, list):
        return sum(_count(v) for v in node)
    return 1
