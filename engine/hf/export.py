"""``export_safetensors``: a committed checkpoint as Hugging Face safetensors files.

Who calls: one process (``tierpoint export``), no MPI, whatever world size saved the
checkpoint: arrays are read whole through the read API (``tierpoint.open``: any tier, every
chunk checked as it is read), so the saving layout does not matter.

Memory: one array at a time, whatever the shard size. Each shard file is laid out by the
``safetensors`` library (header, order, alignment) from placeholder zeros, then every array
is read (through the read API, checked), written over its placeholder and dropped before
the next is read (shardfile.py says how, and checks the library's layout first). Peak
memory is therefore about the largest array (tests/test_hf.py measures it), at the cost of
writing each shard's bytes twice (README gives the measured cost).

Layout (names.py): ``model-0000K-of-0000N.safetensors`` and ``model.safetensors.index.json``
(total size and the weight map), as ``transformers``' ``save_pretrained`` writes a sharded
model, one shard too. Each file is written under a temporary name, fsynced and renamed; the
index goes last. Each file's SHA-256 is computed as it is written (shardfile.py: the
header's bytes, then the arrays' in file order, which tile the rest of the file). Element
types are kept bit for bit (bfloat16 as BF16, float8 as F8_E4M3/F8_E5M2). JSON values and
arrays left out by ``select`` are skipped, and the result says which.

Audit (``record_export``): the "exported" record goes to the run's audit log wherever it
lives: the capacity tier's, when the caller names it (``persistent``: a node-local copy
cannot know it), else the log beside the step read (a pool's run directory, the run's
objects on an object store, a run directory without capacity tier); where there is none,
the caller is told why, to say so.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field

from ..dcp.keys import dcp_key
from ..errors import ConfigurationError
from ..runtime.fsutil import fsync_dir, write_atomic
from .names import INDEX_FILE, Item, check_unique, plan_shards, renamed, selected, \
    shard_file_names
from .shardfile import write_shard

FORMAT = "safetensors"
# Format types the safetensors library cannot hold (it has no 128-bit complex type).
UNSUPPORTED = frozenset({"complex128"})
_BLOCK = 1 << 20


@dataclass
class ExportResult:
    """What an export wrote: each file's SHA-256 (of the bytes written, the whole file),
    the arrays written and the bytes of their data, and what was skipped, with why."""

    out: str
    files: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256
    arrays: int = 0
    data_bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    run: str = ""
    step: int = 0
    digest: str = ""

    def to_json(self) -> dict:
        return {"format": FORMAT, "out": self.out, "files": dict(self.files),
                "arrays": self.arrays, "bytes": self.data_bytes, "skipped": list(self.skipped)}


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _exported_name(record, array: str) -> str:
    """An array's name in the export: DCP's flattened key of it (``dcp_key``: its recorded
    state key, else its path decoded); a path that does not decode (shortened on disk, in a
    checkpoint that records no key) is exported under the path itself."""
    try:
        return dcp_key(record.key, record.path or array)
    except ValueError:
        return array


def plan_export(view, select: list[str], renames: list[tuple[str, str]],
                max_shard_bytes: int) -> tuple[list[list[Item]], list[str]]:
    """(the arrays of each output file, notes of what is skipped), from the manifest only."""
    items, skipped = [], []
    for array in view.names():
        record = view.manifest.arrays[array]
        name = _exported_name(record, array)
        if not selected(name, select):
            continue
        if record.dtype in UNSUPPORTED:
            raise ConfigurationError(
                f"array {array!r} ({name}) is {record.dtype}, which safetensors cannot hold; "
                "leave it out with --select")
        items.append(Item(array, renamed(name, renames), view[array].nbytes, record.dtype,
                          tuple(record.shape)))
    if not items:
        raise ConfigurationError(
            f"no array of run {view.run!r} step {view.step} is selected ({len(view)} arrays; "
            f"--select {' '.join(select) or '(none)'}); 'tierpoint info' lists them, and "
            "their exported names are their state keys joined with dots")
    check_unique(items)
    if len(items) < len(view):
        skipped.append(f"{len(view) - len(items)} arrays not selected")
    if view.values:
        names = sorted(view.values)
        skipped.append(f"{len(names)} JSON values ({', '.join(names[:8])}"
                       f"{', ...' if len(names) > 8 else ''}): safetensors holds tensors only")
    return plan_shards(items, max_shard_bytes), skipped


def export_safetensors(view, out: str, *, select: list[str] = (),
                       renames: list[tuple[str, str]] = (), max_shard_bytes: int = 5 * 10**9,
                       config: str | None = None, progress=None) -> ExportResult:
    """Write the arrays of ``view`` (a ``tierpoint.open`` view) into directory ``out`` (made
    if missing; it must not hold an export already). ``select``: globs over the exported
    names (none: every array); ``renames``: (FROM, TO) prefix renames, the first that
    matches applies; ``config``: a config.json copied beside the weights; ``progress``:
    called with the bytes of each array written."""
    shards, skipped = plan_export(view, list(select), list(renames), max_shard_bytes)
    _check_out(out)
    files = shard_file_names(len(shards))
    result = ExportResult(out=os.path.abspath(out), skipped=skipped, run=view.run,
                          step=view.step, digest=view.digest)
    metadata = {"format": "pt", "tierpoint_run": view.run, "tierpoint_step": str(view.step),
                "tierpoint_digest": view.digest}
    weight_map = {}
    read = functools.partial(_bits_of, view)
    for file, shard in zip(files, shards):
        result.files[file] = _commit(os.path.join(out, file), functools.partial(
            write_shard, items=shard, read=read, metadata=metadata, done=progress))
        result.arrays += len(shard)
        result.data_bytes += sum(i.nbytes for i in shard)
        weight_map.update({i.name: file for i in shard})
    if config is not None:
        target = os.path.join(out, "config.json")
        write_atomic(target, _config_bytes(config))
        result.files["config.json"] = sha256_of(target)
    index = {"metadata": {"total_size": result.data_bytes}, "weight_map": weight_map}
    target = os.path.join(out, INDEX_FILE)
    write_atomic(target, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
    result.files[INDEX_FILE] = sha256_of(target)
    fsync_dir(out)
    return result


def _bits_of(view, item: Item):
    """The stored bits of one exported array, read whole through the read API (every chunk
    checked as it is read)."""
    return view[item.array].bits()


def _config_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    try:
        if not isinstance(json.loads(data), dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise ConfigurationError(f"--config {path} is not a JSON object ({e}); pass the "
                                 "model's config.json") from None
    return data


def log_place(step_path: str, run: str, persistent=None) -> str:
    """Where the audit log of the export of ``step_path`` (a checkpoint of run ``run``) is:
    the run's log on the capacity tier ``persistent`` (POSIX pools, or an object store's
    ``s3://BUCKET/PREFIX``: what the job passed as ``persistent=``) when given, else the
    run's, beside the step read (its run directory, or its run's URL)."""
    from ..tiers.registry import capacity_tier, is_url
    if persistent:
        return capacity_tier(persistent).audit_dir(run)
    if is_url(step_path):
        return step_path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(step_path))


def record_export(result: ExportResult, step_path: str, key_file: str | None,
                  persistent=None) -> tuple[str | None, str]:
    """Append an "exported" record (each file's SHA-256) to the run's audit log
    (``log_place``); returns (the log's path or URL, "") or, where that place keeps no log
    of the run, (None, why, to be said: an export is never left unrecorded silently)."""
    from ..trust.audit import read_key
    from ..trust.lineage import user_name
    from ..trust.logs import open_log
    where = log_place(step_path, result.run, persistent)
    if not log_exists(where):
        return None, no_log(where, persistent)
    log = open_log(where, read_key(key_file), user_name())
    log.append("exported", run=result.run, step=result.step, digest=result.digest,
               detail=result.to_json())
    return log.path, ""


def log_exists(where: str) -> bool:
    """Whether a run's audit log is at ``where`` (a run directory, or a run's URL)."""
    from ..trust.logs import open_log
    return open_log(where).exists()


def no_log(where: str, persistent) -> str:
    """Why an export is not recorded at ``where`` (``log_place``), and what to do."""
    from ..tiers.registry import is_url
    if persistent or is_url(where):
        return (f"{where} holds no audit log of the run: pass the run's own capacity tier "
                "(--persistent, as the job's persistent=)")
    return (f"{where} keeps no audit log (a run with a capacity tier logs there, not on the "
            "node-local tier): pass --persistent POOL (or s3://BUCKET/PREFIX), the run's "
            "capacity tier, to record the export in its log")


def _check_out(out: str) -> None:
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ConfigurationError(f"OUT {out} exists and is not a directory; pass a new or "
                                 "empty directory")
    os.makedirs(out, exist_ok=True)
    held = [n for n in os.listdir(out) if n.endswith(".safetensors") or n == INDEX_FILE]
    if held:
        raise ConfigurationError(f"OUT {out} already holds safetensors files ({held[0]}, ...); "
                                 "pass a new or empty directory (an export never mixes its "
                                 "shards with another's)")


def _commit(path: str, write):
    """Write ``path`` under a temporary name, fsync it, rename it into place; returns what
    ``write(tmp)`` returned."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        done = write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return done
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
