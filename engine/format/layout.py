"""The on-disk contract. Every path, file name and metadata document of a checkpoint is
defined here and nowhere else.

A checkpoint of run ``R`` at step ``S`` under a tier root ``T`` is the Zarr v3 group::

    T/R/step_<S, 8 digits>/
        zarr.json                    group metadata (attributes.tierpoint: run, step, version)
        <escaped key path>/zarr.json one Zarr v3 array per state entry
        <escaped key path>/c.<i>.<j> its chunks: little-endian bytes + crc32c (4 bytes, LE);
                                     version 4, chunks over 64 KiB: inner chunks of that
                                     form plus an index (Zarr sharding, format/subchunks.py)
        .tierpoint-slices/r<rank>.json  format versions 2 and 3: each saving rank's chunk records
        .tierpoint-manifest.json     the manifest (JSON): versions 2 and 3, the header
                                     (``build_header``; the slices it holds are listed with
                                     their hashes, roots and proofs, format/slices.py);
                                     version 1, every chunk record (``build_manifest``)
        .tierpoint-commit            the commit marker, written last

    T/R/step_<S, 8 digits>.replica-d<D>/   a partner replica (Policy replicas=1): a copy of
                                 the step directory saved domain D wrote on another node
                                 (its zarr.json files, the chunks D wrote, the manifest and
                                 its slices), committed under its own marker, which declares
                                 domain D and says ``replica_of`` (D and its node) and
                                 ``writer_domain``; never parsed as a step directory

Invariants:
- A step directory without a valid commit marker is not a checkpoint (restore, steps, ls
  ignore it); the marker holds the SHA-256 of the manifest, so a damaged manifest is detected;
  the manifest holds each slice's SHA-256 and root, the root's proof leads to the digest, so a
  damaged slice is detected too (``read_manifest``).
- Versions 1 to 4 are read (restore, verify, inspect, drain); version 4 is written.
  Version 3 differs from 2 only in the shape of the digest's tree (by domain, so that
  leaders seal their domain and the coordinator combines one root per domain;
  format/integrity.py); version 4 from 3 only in its chunk files over 64 KiB, which are
  sub-chunked (format/subchunks.py: what a reader of part of a chunk reads and checks).
- Escaped key paths never leave the step directory and never collide with the names above:
  escaped components never start with ``.`` or ``__`` and are never ``zarr.json``.
- Nothing in a checkpoint is executable: metadata is JSON, data is raw array bytes.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import time
import uuid
from typing import Any

from . import dtypes, slices, subchunks, validate
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, FormatVersionError
from ..runtime.fsutil import fsync_dir, write_atomic
from .compact import compact_header, expand_header
from .manifest import Manifest
from .types import ArrayPlan, Index

FORMAT_NAME = "tierpoint"
FORMAT_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
MANIFEST_FILE = ".tierpoint-manifest.json"
SLICES_DIR = ".tierpoint-slices"
COMMIT_FILE = ".tierpoint-commit"
# Under a node-local tier root: where an object store's drain stages the parts it uploads
# (tiers/s3.py); scratch, removed after each upload, never part of a checkpoint.
STAGING_DIR = ".tierpoint-staging"
ZARR_JSON = "zarr.json"
CRC_BYTES = 4
_STEP_RE = re.compile(r"^step_(\d{8,})$")
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_MAX_COMPONENT = 200


# ---- paths --------------------------------------------------------------------------------

def step_dir_name(step: int) -> str:
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    return f"step_{step:08d}"


def run_dir(root: str, run: str) -> str:
    return os.path.join(root, escape_component(run))


def step_dir(root: str, run: str, step: int) -> str:
    return os.path.join(run_dir(root, run), step_dir_name(step))


def parse_step_dir_name(name: str) -> int | None:
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


# ---- partner replicas (node-local tiers) ---------------------------------------------------
#
# A replica of step S of saved domain D, held in another node's local tier: a sibling of that
# node's own step directories, ``step_<S>.replica-d<D>``, holding exactly the files of D's
# step directory (the manifest's bytes unchanged, so its marker's SHA-256 still holds) and
# its own commit marker, written last: the original marker's fields, its ``domain`` D, plus
# ``replica_of`` {"domain": D, "node": D's node} and ``writer_domain`` (the domain whose
# leader wrote the replica). Without that marker a replica does not exist (swept).

REPLICA_MARK = ".replica-d"
_REPLICA_RE = re.compile(r"^step_(\d{8,})\.replica-d(\d+)$")


def replica_dir_name(step: int, domain: int) -> str:
    return f"{step_dir_name(step)}{REPLICA_MARK}{int(domain)}"


def replica_dir(root: str, run: str, step: int, domain: int) -> str:
    return os.path.join(run_dir(root, run), replica_dir_name(step, domain))


def parse_replica_dir_name(name: str) -> tuple[int, int] | None:
    """(step, saved domain) of a replica directory's name, None for any other name."""
    m = _REPLICA_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def replica_marker(original: dict, *, domain: int, node: str, writer_domain: int) -> dict:
    """The fields of a replica's commit marker: those of the original's ``original``
    (format version, step, manifest SHA-256, digest, audit head), declaring ``domain``, and
    saying whose replica it is and which domain's leader wrote it."""
    marker = dict(original, domain=int(domain), committed_at=time.time())
    marker["replica_of"] = {"domain": int(domain), "node": str(node)}
    marker["writer_domain"] = int(writer_domain)
    return marker


def write_replica_marker(directory: str, marker: dict) -> None:
    """A replica's commit marker (``replica_marker``), atomically, last."""
    write_atomic(os.path.join(directory, COMMIT_FILE), encode_json(marker))


def committed_replicas(root: str, run: str) -> list[tuple[int, int]]:
    """(step, saved domain) of every committed replica of a run under a tier root."""
    try:
        names = os.listdir(run_dir(root, run))
    except FileNotFoundError:
        return []
    found = [(parse_replica_dir_name(n), n) for n in names]
    return sorted(k for k, n in found if k is not None
                  and is_committed(os.path.join(run_dir(root, run), n)))


def escape_component(component: str) -> str:
    """Escape one key component into a safe, unique file name.

    Bytes outside ``[A-Za-z0-9_.-]`` are percent-encoded (UTF-8); a leading ``.`` and a
    leading ``__`` are encoded too, so no name is ``.``/``..``/hidden or Zarr-reserved; the
    empty component becomes ``%``; over-long names are shortened with a hash suffix after
    ``~`` (never produced otherwise), keeping them unique.
    """
    out = "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in component.encode("utf-8"))
    if out == "":
        return "%"
    if out.startswith("."):
        out = "%2E" + out[1:]
    elif out.startswith("__"):
        out = "%5F" + out[1:]
    if out == ZARR_JSON:
        out = "zarr%2Ejson"
    if len(out) > _MAX_COMPONENT:
        digest = hashlib.sha256(component.encode("utf-8")).hexdigest()[:16]
        out = out[:_MAX_COMPONENT - 17] + "~" + digest
    return out


def array_path(key: tuple) -> str:
    """Relative path (``/``-separated) of the array of a flattened state key."""
    return "/".join(escape_component(str(c)) for c in key)


def unescape_component(name: str) -> str:
    """The key component ``escape_component`` turned into ``name`` (its exact inverse).

    Percent codes are decoded (UTF-8), ``%`` alone is the empty component. Only names
    ``escape_component`` produces are accepted (the decoded component must escape back to
    ``name``), so a name decodes to one component or raises ValueError; a shortened name
    (``~`` and a hash) lost part of its component and raises ValueError too.
    """
    if "~" in name:  # "~" is percent-encoded everywhere but in a shortened name
        raise ValueError(f"key component {name!r} was shortened (over {_MAX_COMPONENT} "
                         "characters escaped) and cannot be decoded: only the manifest's "
                         "record of its array holds its key")
    raw = b"" if name == "%" else re.sub(rb"%([0-9A-F]{2})", lambda m: bytes([int(m[1], 16)]),
                                         name.encode("ascii", "replace"))
    try:
        component = raw.decode("utf-8")
    except UnicodeDecodeError:
        component = None
    if component is None or escape_component(component) != name:
        raise ValueError(f"{name!r} is not an escaped key component (format/layout.py "
                         "escape_component)")
    return component


def key_of_path(path: str) -> tuple[str, ...]:
    """The state key ``array_path`` turned into ``path``, each component as the string it
    was escaped from (``array_path(key_of_path(p)) == p``; ``key_of_path(array_path(k))``
    is ``k`` with its components as ``str``: a list index comes back as its digits).
    ValueError for a path ``array_path`` does not produce or whose components it
    shortened (``unescape_component``)."""
    return tuple(unescape_component(name) for name in path.split("/"))


def chunk_key(index: Index) -> str:
    """Zarr v3 default chunk key with the ``.`` separator: ``c.0.3``; ``c`` for 0-d arrays."""
    return ".".join(["c", *map(str, index)])


def chunk_index(key: str) -> Index:
    """The grid index of a chunk key (the inverse of ``chunk_key``)."""
    return tuple(int(p) for p in key.split(".")[1:])


def slice_name(rank: int) -> str:
    return f"r{rank:08d}.json"


def slice_key(rank: int) -> str:
    """Where the slice of saving rank ``rank`` lies in a step directory (and, as a key, in a
    drained copy's database): ``.tierpoint-slices/r<rank, 8 digits>.json``."""
    return f"{SLICES_DIR}/{slice_name(rank)}"


def parse_slice_name(name: str) -> int | None:
    m = _SLICE_RE.match(name)
    return int(m.group(1)) if m else None


_SLICE_RE = re.compile(r"^r(\d{8,})\.json$")


# ---- Zarr metadata ------------------------------------------------------------------------

def _fill_value(name: str):
    if name == "bool":
        return False
    if name.startswith("complex"):
        return [0.0, 0.0]
    if name.startswith("float"):
        return 0.0
    return 0


def zarr_array_metadata(plan: ArrayPlan, key: tuple) -> dict:
    """The zarr.json of one array: regular grid, bytes codec + crc32c codec (sub-chunked
    chunks: inside the sharding codec)."""
    return zarr_array_document(plan.dtype, plan.shape, plan.chunk_shape, key)


def zarr_array_document(dtype: str, shape, chunk_shape, key,
                        version: int = FORMAT_VERSION) -> dict:
    """The zarr.json of an array from its manifest fields (what verify expects to find in a
    copy of format ``version``)."""
    storage = dtypes.storage_dtype(dtype)
    bytes_codec: dict[str, Any] = {"name": "bytes"}
    if storage.itemsize > 1:
        bytes_codec["configuration"] = {"endian": "little"}
    codecs: list = [bytes_codec, {"name": "crc32c"}]
    inner = subchunks.inner_shape_of(version, chunk_shape, dtype)
    if inner is not None:
        codecs = [subchunks.sharding_codec(inner, bytes_codec)]
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(shape),
        "data_type": dtypes.zarr_data_type(dtype),
        "chunk_grid": {"name": "regular",
                       "configuration": {"chunk_shape": list(chunk_shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
        "fill_value": _fill_value(dtypes.zarr_data_type(dtype)),
        "codecs": codecs,
        "attributes": {"tierpoint": {"dtype": dtype, "key": [str(k) for k in key]}},
    }


def zarr_group_metadata(attributes: dict | None = None) -> dict:
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes or {}}


def encode_json(obj: Any) -> bytes:
    # Compact separators keep json on its C encoder (indent= would not).
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode("utf-8")


# ---- manifest and commit marker -----------------------------------------------------------

def build_header(*, run: str, step: int, world_size: int, ranks: list[dict],
                 arrays: dict[str, dict], groups: list[dict], slice_entries: dict,
                 values: dict[str, dict], metadata: dict | None, versions: dict,
                 ordinal: int = 1, digest: str = "", lineage: dict | None = None) -> dict:
    """The manifest header (format version 3). ``arrays[name]`` holds name, path, key, dtype,
    shape, chunk_shape, layout (``{"shards": [...]}`` or ``{"grid": parts, "group": g}``,
    format/placement.py) and a fingerprint only where known; ``groups[g]`` the holders of a
    grid layout; ``slice_entries`` {rank: SliceEntry document} the slices this directory
    holds; ``digest`` the Merkle root over the slices' roots (format/slices.py)."""
    document = build_manifest(run=run, step=step, world_size=world_size, ranks=ranks,
                              arrays=arrays, values=values, metadata=metadata,
                              versions=versions, ordinal=ordinal, digest=digest,
                              lineage=lineage)
    document["format_version"] = FORMAT_VERSION
    out = {}
    for field_name, value in document.items():
        out[field_name] = value
        if field_name == "arrays":
            out["groups"] = groups
            out["slices"] = {str(r): e for r, e in sorted(slice_entries.items())}
    return out


def build_manifest(*, run: str, step: int, world_size: int, ranks: list[dict],
                   arrays: dict[str, dict], values: dict[str, dict],
                   metadata: dict | None, versions: dict, ordinal: int = 1,
                   digest: str = "", lineage: dict | None = None) -> dict:
    """The manifest document of format version 1 (still read; written by tests' fixtures and
    as the common part of ``build_header``). ``arrays[name]`` holds path, key, dtype, shape,
    chunk_shape, fingerprint, shards (saved boxes and their holders) and chunks (chunk key ->
    nbytes, crc32c, sha256, fingerprint, writers); ``digest`` is the checkpoint's Merkle
    root over the chunks (integrity.checkpoint_digest)."""
    now = time.time()
    return {
        "format": FORMAT_NAME,
        "format_version": 1,
        "run": run,
        "step": step,
        "ordinal": ordinal,  # this save's number in its run (drain_every counts these)
        "digest": digest,  # Merkle root over the chunks' SHA-256 (integrity.py)
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "unix_time": now,
        "world_size": world_size,
        "layout": {"ranks": ranks},
        "versions": versions,
        "arrays": arrays,
        "values": values,
        "metadata": metadata or {},
        "lineage": lineage or {},  # parent checkpoint, code version, user, hosts
    }


def write_manifest(directory: str, manifest: dict) -> bytes:
    """Write the manifest atomically; return its bytes (their hash goes into the marker).
    A version 2 header's per-rank tables are written in their compact form (compact.py)."""
    data = manifest_bytes(manifest)
    write_atomic(os.path.join(directory, MANIFEST_FILE), data)
    return data


def manifest_bytes(manifest: dict) -> bytes:
    """The bytes of a manifest file (or object): a version 2 header's per-rank tables in
    their compact form."""
    return encode_json(compact_header(manifest))


def parse_manifest(data: bytes):
    """A manifest file's document, its per-rank tables expanded (ValueError: not JSON)."""
    document = json.loads(data)
    return expand_header(document) if isinstance(document, dict) else document


def write_slice(directory: str, document: dict) -> bytes:
    """Write one rank's slice atomically and durably; return its bytes (the header records
    their SHA-256)."""
    data = slices.encode(document)
    os.makedirs(os.path.join(directory, SLICES_DIR), exist_ok=True)
    write_atomic(os.path.join(directory, slice_key(document["rank"])), data)
    return data


def write_commit_marker(directory: str, step: int, manifest_sha256: str,
                        digest: str = "", domain: int | None = None,
                        format_version: int = FORMAT_VERSION,
                        audit: dict | None = None) -> None:
    """The last write of a save: after it, the checkpoint exists. ``domain`` (node-local
    copies) names the saving ranks whose chunks this directory holds, by their domain
    number in the manifest's layout, so a moved or copied directory still knows what it
    must contain (see holdings.py); a drained copy holds every chunk and declares none.
    ``audit``: the run's audit log head at the commit (``{"audit": {"seq", "hash"}}``, and
    ``"audit_hmac"`` with a key: trust/audit.py ``RunAudit.reference``), so a log cut short
    after the commit is caught by ``tierpoint audit verify``."""
    write_atomic(os.path.join(directory, COMMIT_FILE),
                 commit_marker(step, manifest_sha256, digest, domain, format_version, audit))


def commit_marker(step: int, manifest_sha256: str, digest: str = "",
                  domain: int | None = None, format_version: int = FORMAT_VERSION,
                  audit: dict | None = None) -> bytes:
    """The bytes of a commit marker (``write_commit_marker``; an object store's tier PUTs
    them as its marker object)."""
    marker = {"format_version": format_version, "step": step,
              "manifest_sha256": manifest_sha256, "digest": digest,
              "committed_at": time.time()}
    if domain is not None:
        marker["domain"] = domain
    marker.update(audit or {})
    return encode_json(marker)


def read_commit_marker(directory: str) -> dict | None:
    """The commit marker's fields, None when it is missing or unreadable."""
    try:
        with open(os.path.join(directory, COMMIT_FILE), "rb") as f:
            marker = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_committed(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, COMMIT_FILE))


def remove_commit_marker(directory: str) -> None:
    """Un-commit a checkpoint (the first step of overwriting or deleting it)."""
    try:
        os.unlink(os.path.join(directory, COMMIT_FILE))
        fsync_dir(directory)
    except FileNotFoundError:
        return  # gone already (a concurrent remover renamed or deleted the directory)


# ---- drain record (node-local copies) ------------------------------------------------------
#
# ``<step dir>/.tierpoint-drain`` says what this directory's step is owed: {"step": S,
# "state": "owed"} from the moment a drain of it starts (so a drain cut short is redone by
# the next one, whoever asked for it), "drained" once its capacity copy committed (so the
# step may leave the ring even after capacity retention deleted that copy). Written by each
# directory's leader; absent on steps no drain was started for. Not part of the checkpoint:
# not in the manifest, not copied by a drain, not needed to restore.

DRAIN_FILE = ".tierpoint-drain"
DRAIN_STATES = ("owed", "drained")


def write_drain_record(directory: str, step: int, state: str) -> None:
    if state not in DRAIN_STATES:
        raise ValueError(f"drain record state must be one of {DRAIN_STATES}, not {state!r}")
    write_atomic(os.path.join(directory, DRAIN_FILE),
                 encode_json({"step": step, "state": state, "time": time.time()}))


def read_drain_state(directory: str) -> str | None:
    """The drain record's state, None when there is none; a damaged record reads as "owed"
    (draining again is safe, never draining is not)."""
    try:
        with open(os.path.join(directory, DRAIN_FILE), "rb") as f:
            record = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "owed"
    state = record.get("state") if isinstance(record, dict) else None
    return state if state in DRAIN_STATES else "owed"


RETIRED_MARK = ".retired-"


def retire_step_dir(directory: str) -> str | None:
    """Take a step directory out of the hierarchy atomically by renaming it to a name that
    nothing lists as a step (``step_XXXXXXXX.retired-<random>``), so it can be deleted at
    leisure. Returns the new path, or None when it was already gone: of several concurrent
    removers exactly one wins the rename."""
    retired = f"{directory}{RETIRED_MARK}{uuid.uuid4().hex}"
    try:
        os.rename(directory, retired)
    except FileNotFoundError:
        return None
    fsync_dir(os.path.dirname(directory))
    return retired


def is_retired_name(name: str) -> bool:
    return parse_step_dir_name(name.split(RETIRED_MARK)[0]) is not None and RETIRED_MARK in name


def is_retired_replica_name(name: str) -> bool:
    return (RETIRED_MARK in name and
            parse_replica_dir_name(name.split(RETIRED_MARK)[0]) is not None)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def load_manifest(directory: str, read=None) -> dict:
    """Read and check the manifest document of a committed checkpoint directory (version 1:
    the whole manifest; version 2: the header, whose slice entries must belong to its
    digest, format/slices.py). ``read(name)``: the bytes of the step's file or object
    ``name`` (FileNotFoundError when absent); default: the file in ``directory`` (an object
    store's tier passes its own, tiers/registry.py ``step_reader``).

    Raises CheckpointNotFoundError when it is not committed, CorruptCheckpointError when the
    manifest does not match its marker, FormatVersionError for an unknown format version.
    """
    read = read or (lambda name: _read_file(os.path.join(directory, name)))
    marker_path = os.path.join(directory, COMMIT_FILE)
    try:
        marker = json.loads(read(COMMIT_FILE))
    except FileNotFoundError:
        raise CheckpointNotFoundError(
            f"{directory} is not a committed checkpoint (no {COMMIT_FILE}); it is a partial "
            "or interrupted save and is ignored") from None
    except (ValueError, OSError) as e:
        raise CorruptCheckpointError(f"commit marker {marker_path} is unreadable: {e}") from None
    if not isinstance(marker, dict):
        raise CorruptCheckpointError(f"commit marker {marker_path} is not a JSON object")
    _check_version(marker.get("format_version"), marker_path)
    manifest_path = os.path.join(directory, MANIFEST_FILE)
    try:
        data = read(MANIFEST_FILE)
    except FileNotFoundError:
        raise CorruptCheckpointError(
            f"{manifest_path} is missing although the checkpoint is committed") from None
    if hashlib.sha256(data).hexdigest() != marker.get("manifest_sha256"):
        raise CorruptCheckpointError(
            f"manifest {manifest_path} does not match the SHA-256 in its commit marker; "
            "the checkpoint metadata was modified or damaged")
    try:
        manifest = parse_manifest(data)
    except ValueError as e:
        raise CorruptCheckpointError(f"manifest {manifest_path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CorruptCheckpointError(f"{manifest_path} is not a tierpoint manifest")
    _check_version(manifest.get("format_version"), manifest_path)
    problems = manifest_problems(manifest)
    if problems:
        raise CorruptCheckpointError(f"manifest {manifest_path}: {problems[0]}"
                                     + (f" (and {len(problems) - 1} more)"
                                        if len(problems) > 1 else ""))
    return manifest


def read_header(directory: str, read=None) -> Manifest:
    """The typed manifest of a committed directory without any slice read: the whole
    manifest of a version 1 checkpoint, the header of a version 2 one (empty chunk tables;
    its slice entries checked against the digest). CorruptCheckpointError names a slice
    whose entry does not belong to the digest. ``read``: as ``load_manifest``'s."""
    manifest = Manifest.from_document(load_manifest(directory, read))
    if manifest.sliced:
        for rank, problem in slices.entry_problems(manifest):
            where = os.path.join(directory, MANIFEST_FILE)
            raise CorruptCheckpointError(
                f"manifest {where}: " + (f"the slice of rank {rank} ({slice_key(rank)}): "
                                         if rank is not None else "") +
                f"{problem}; the checkpoint metadata was modified or damaged")
    return manifest


def read_slice_file(directory: str, rank: int) -> bytes | None:
    """The bytes of rank ``rank``'s slice in a step directory (None: not there), opened
    without following a link out of the directory."""
    try:
        with open(open_inside(directory, slice_key(rank)), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def slice_files(directory: str) -> list[int]:
    """The ranks whose slice files a step directory holds (listed, not read)."""
    try:
        names = os.listdir(os.path.join(directory, SLICES_DIR))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(r for r in map(parse_slice_name, names) if r is not None)


def slice_documents(manifest: Manifest, ranks, read, where) -> dict[int, dict]:
    """The checked slice documents of ``ranks`` (rank -> document) of a version 2 header:
    each read with ``read(rank)`` (bytes, None when absent) and checked against the header's
    entry (``slices.parse_slice``); ``where(rank)`` names the file in messages. Raises
    CorruptCheckpointError for a slice that is missing although the header lists it, or
    damaged; CheckpointNotFoundError for a rank whose slice the header does not list."""
    documents = {}
    for rank in sorted(set(ranks)):
        if rank not in manifest.slices:
            raise CheckpointNotFoundError(
                f"this copy of step {manifest.step} holds no manifest slice of rank {rank} "
                f"(it holds those of ranks {sorted(manifest.slices)}); that rank's records "
                "are in its own node's copy, or on the capacity tier")
        data = read(rank)
        if data is None:
            raise CorruptCheckpointError(
                f"manifest slice of rank {rank} ({where(rank)}) is missing although the "
                "manifest header lists it; the checkpoint is damaged. Read it from another "
                "copy (the capacity tier)")
        documents[rank] = slices.parse_slice(data, manifest, rank, where(rank))
    return documents


def load_slices(manifest: Manifest, ranks, read, where) -> Manifest:
    """``manifest`` (a header) with the chunk records of the slices of ``ranks`` (see
    ``slice_documents``); a version 1 manifest is returned as it is."""
    if not manifest.sliced:
        return manifest
    return manifest.with_slices(slice_documents(manifest, ranks, read, where))


def read_manifest(directory: str, ranks=None, *, read_slice=None) -> Manifest:
    """The typed manifest of a committed checkpoint directory, checked: version 1 as it is;
    version 2 as its header with the chunk records of the slices of ``ranks`` (None: every
    slice the header lists, the directory's full view), each checked against the header
    (its SHA-256 and root) and the header against the digest. ``read_slice(rank)`` reads a
    slice's bytes (default: the slice file in ``directory``; a drained copy reads its
    database)."""
    manifest = read_header(directory)
    if not manifest.sliced:
        return manifest
    read = read_slice or (lambda rank: read_slice_file(directory, rank))
    return load_slices(manifest, manifest.slices if ranks is None else ranks, read,
                       lambda rank: os.path.join(directory, slice_key(rank)))


def open_inside(step_dir: str, relative: str) -> int:
    """Open a file of a checkpoint for reading without following a symbolic link out of it:
    the file itself must not be a link (O_NOFOLLOW), and its directory must resolve inside
    ``step_dir``. Returns a file descriptor; CorruptCheckpointError names the path else."""
    path = os.path.join(step_dir, relative)
    top = os.path.realpath(step_dir)
    if not os.path.realpath(os.path.dirname(path)).startswith(top + os.sep):
        raise CorruptCheckpointError(
            f"{path} lies outside the checkpoint {step_dir} once links are resolved; "
            "refusing to follow it")
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CorruptCheckpointError(
                f"{path} is a symbolic link; a checkpoint's files are never links, "
                "refusing to follow it") from None
        raise


def manifest_problems(manifest: dict) -> list[str]:
    """Every structural problem of a manifest document (format/validate.py)."""
    return validate.manifest_problems(manifest)


def _check_version(version, where: str) -> None:
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise FormatVersionError(
            f"{where} has format version {version!r}; this tierpoint reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Use the tierpoint release that wrote "
            "it, or upgrade.")


def latest_ordinal(root: str, run: str) -> int:
    """The ``ordinal`` of the newest committed checkpoint of a run under ``root`` (0: none)."""
    steps = committed_steps(root, run)
    if not steps:
        return 0
    try:
        return read_header(step_dir(root, run, steps[-1])).ordinal
    except (CheckpointNotFoundError, CorruptCheckpointError, FormatVersionError):
        return 0


def committed_steps(root: str, run: str) -> list[int]:
    """Committed steps of a run under one tier root, ascending."""
    return committed_steps_in(run_dir(root, run))


def committed_steps_in(directory: str) -> list[int]:
    """Committed steps of the run directory ``directory`` (its name already escaped)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    steps = []
    for name in names:
        step = parse_step_dir_name(name)
        if step is not None and is_committed(os.path.join(directory, name)):
            steps.append(step)
    return sorted(steps)


def list_runs(root: str) -> list[str]:
    """The run directories' names under ``root`` (escaped: ``run_name`` gives the run)."""
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    return [n for n in names if os.path.isdir(os.path.join(root, n)) and not n.startswith(".")]


def run_name(directory_name: str) -> str | None:
    """The run whose directory (``run_dir``) is named ``directory_name``; None for a name
    no run escapes to, or one shortened (over 200 characters escaped), which does not say
    its run."""
    try:
        return unescape_component(directory_name)
    except ValueError:
        return None


def run_names(directory_names) -> list[str]:
    """The runs of run directory names (``list_runs``, an object store's ``runs()``), sorted;
    names that do not decode (``run_name``) are left out."""
    return sorted(r for r in map(run_name, directory_names) if r is not None)


# ---- capacity tier ------------------------------------------------------------------------
#
# A drained checkpoint lives in the capacity pools as one OCDBT database per aggregator
# ("part"), merged without copying into a head database on the first pool:
#
#   <pool 0>/<run>/step_<S>/              head: OCDBT manifest + B-tree nodes, the tierpoint
#                                         manifest and commit marker (plain files)
#   <pool 0>/<run>/step_<S>/part<A>p<P> -> relative symlink to aggregator A's part on pool
#   <pool P>/<run>/.parts/step_<S>/part<A>p<P>/   P, its own OCDBT database (data files); an
#                                         aggregator spreads its chunks over every pool by bytes
#
# The links are relative (``../.parts/...`` within pool 0, ``../../../<pool P>/...`` to the
# others), so a pool copied or moved as a whole, or a set of pools moved together keeping
# their relative places, still reads from its own files; no absolute path is recorded.
#
# Keys inside the database are the Zarr v3 keys of the local layout ("<array>/zarr.json",
# "<array>/c.0.1", "zarr.json"), so a stock TensorStore reads every array with the kvstore
# {"driver": "ocdbt", "base": "file://<head>/", "path": "<array>/"}.

PARTS_DIR = ".parts"


def capacity_head(pools: list[str], run: str, step: int) -> str:
    return step_dir(pools[0], run, step)


def capacity_part_name(aggregator: int, pool: int) -> str:
    return f"part{aggregator:05d}p{pool:03d}"


def capacity_part(pools: list[str], run: str, step: int, aggregator: int, pool: int) -> str:
    return os.path.join(run_dir(pools[pool], run), PARTS_DIR, step_dir_name(step),
                        capacity_part_name(aggregator, pool))


def capacity_parts_dirs(pools: list[str], run: str, step: int) -> list[str]:
    """Every pool's directory of parts of one step (for cleanup)."""
    return [os.path.join(run_dir(pool, run), PARTS_DIR, step_dir_name(step)) for pool in pools]


def file_kvstore(directory: str) -> dict:
    """TensorStore's file kvstore of ``directory``, as a JSON spec: never a ``file://`` URL,
    which TensorStore percent-decodes (an escaped run name, ``q%20v2``, would be read and
    written as ``q v2``, beside the directory the engine lists)."""
    return {"driver": "file", "path": f"{os.path.abspath(directory)}/"}


def ocdbt_spec(directory: str) -> dict:
    return {"driver": "ocdbt", "base": file_kvstore(directory)}
