"""Verify a committed checkpoint end to end, on either tier, reporting every problem found.

Checks, in order:
1. the commit marker: present, readable, its manifest SHA-256 matches the manifest's bytes,
   and its digest is the manifest's;
2. the manifest against each array's Zarr metadata (zarr.json): shape, chunk shape, data type,
   codecs;
3. every chunk this copy holds: size, crc32c (trailer, manifest and recomputed), SHA-256 and
   fingerprint contribution, recomputed from the bytes. On a node-local tier a directory
   holds the chunks of the domain its commit marker declares (a missing one is damage) and
   whatever other chunk files were copied into it (checked too); the chunks of other nodes
   that are not here are counted as unchecked, never as checked. Where the copy lies does
   not matter: nothing is decided by comparing paths (holdings.py);
4. each array's fingerprint against its chunks', and the checkpoint digest (Merkle root)
   against the chunks' hashes.

A problem names the array, chunk and file at fault. A check that could not read every chunk
of the checkpoint is *incomplete*: its report is not ``ok`` unless the caller asked for a
partial check (``partial=True``). Nothing here writes.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..format import dtypes
from ..tiers import holdings
from ..format import layout
from ..errors import CheckpointError
from ..format.integrity import array_fingerprint, checkpoint_digest, fingerprint_hex
from ..kernels import crc32c, fingerprint_box, split_trailer
from ..format.types import Box


@dataclass
class Report:
    """What ``verify_checkpoint`` found: ``problems`` (damage; empty when what was checked is
    intact) and how much was checked: ``chunks_total`` chunks in the checkpoint, of which
    ``chunks_checked`` were read here and ``chunks_elsewhere`` are not in this copy (written
    by the nodes in ``nodes_elsewhere`` into their own tiers)."""

    path: str
    tier: str = "local"
    run: str = ""
    step: int | None = None
    digest: str = ""
    chunks_total: int = 0
    chunks_checked: int = 0
    chunks_elsewhere: int = 0
    bytes_checked: int = 0
    nodes_elsewhere: list[str] = field(default_factory=list)
    partial: bool = False  # the caller accepts a check of this copy's chunks alone
    problems: list[dict] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        return bool(self.problems)

    @property
    def complete(self) -> bool:
        """Every chunk of the checkpoint was read and checked in this copy."""
        return self.chunks_elsewhere == 0

    @property
    def ok(self) -> bool:
        """Nothing damaged, and everything checked (or a partial check was asked for)."""
        return not self.problems and (self.complete or self.partial)

    def add(self, problem: str, *, array: str | None = None, chunk: str | None = None,
            file: str | None = None) -> None:
        self.problems.append({"array": array, "chunk": chunk, "file": file,
                              "problem": problem})

    def to_json(self) -> dict:
        return {"path": self.path, "tier": self.tier, "run": self.run, "step": self.step,
                "ok": self.ok, "damaged": self.damaged, "complete": self.complete,
                "partial": self.partial, "digest": self.digest,
                "chunks_total": self.chunks_total, "chunks_checked": self.chunks_checked,
                "chunks_elsewhere": self.chunks_elsewhere,
                "nodes_elsewhere": self.nodes_elsewhere, "bytes_checked": self.bytes_checked,
                "problems": self.problems}


def _read_marker(path: str, report: Report) -> dict | None:
    marker_path = os.path.join(path, layout.COMMIT_FILE)
    try:
        with open(marker_path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        report.add("no commit marker: this is not a committed checkpoint", file=marker_path)
    except (OSError, ValueError) as e:
        report.add(f"commit marker unreadable: {e}", file=marker_path)
    return None


def _read_manifest(path: str, marker: dict | None, report: Report) -> dict | None:
    manifest_path = os.path.join(path, layout.MANIFEST_FILE)
    try:
        with open(manifest_path, "rb") as f:
            data = f.read()
    except OSError as e:
        report.add(f"manifest unreadable: {e}", file=manifest_path)
        return None
    if marker is not None and hashlib.sha256(data).hexdigest() != marker.get("manifest_sha256"):
        report.add("manifest does not match the SHA-256 in the commit marker (modified or "
                   "damaged)", file=manifest_path)
    try:
        manifest = json.loads(data)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        report.add(f"manifest is not valid JSON: {e}", file=manifest_path)
        return None
    problems = layout.manifest_problems(manifest)
    for problem in problems:
        report.add(f"manifest: {problem}", file=manifest_path)
    if problems:  # nothing in it can be trusted to find the chunks
        return None
    if marker is not None and marker.get("digest", "") != manifest.get("digest", ""):
        report.add("the digest in the commit marker differs from the manifest's",
                   file=os.path.join(path, layout.COMMIT_FILE))
    return manifest


class _Source:
    """Reads a checkpoint's files from a local step directory or a drained copy."""

    def __init__(self, path: str, manifest: dict):
        self.path = path
        self.capacity = manifest.get("tier", {}).get("kind") == "capacity"
        if self.capacity:
            from ..tiers.drain import CapacityReader
            self._reader = CapacityReader(path)

    def where(self, name: str, key: str) -> str:
        return (f"{self.path} key {name}/{key}" if self.capacity
                else os.path.join(self.path, name, key))

    def read(self, name: str, key: str) -> bytes | None:
        """The file's bytes, None when missing; CheckpointError for a link out of it."""
        if self.capacity:
            return self._reader.read(f"{name}/{key}")
        try:
            with open(layout.open_inside(self.path, os.path.join(name, key)), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None


def _check_part_links(head: str, report: Report) -> None:
    """A drained copy reads its parts through links in its head: each must resolve (a pool
    that was not copied along, or moved away from the others, breaks them)."""
    for name in sorted(os.listdir(head)):
        link = os.path.join(head, name)
        if os.path.islink(link) and not os.path.isdir(link):
            report.add(f"part {name} links to {os.readlink(link)}, which does not exist: "
                       "copy or move every pool of the capacity tier together, keeping their "
                       "places relative to each other", file=link)


def _check_zarr_metadata(source: _Source, name: str, entry: dict, report: Report) -> None:
    where = source.where(entry["path"], layout.ZARR_JSON)
    try:
        raw = source.read(entry["path"], layout.ZARR_JSON)
    except CheckpointError as e:
        report.add(str(e), array=name, file=where)
        return
    if raw is None:
        report.add("zarr.json is missing", array=name, file=where)
        return
    try:
        meta = json.loads(raw)
    except ValueError as e:
        report.add(f"zarr.json is not valid JSON: {e}", array=name, file=where)
        return
    wanted = layout.zarr_array_document(entry["dtype"], entry["shape"], entry["chunk_shape"],
                                        entry.get("key", []))
    if not isinstance(meta, dict):
        report.add("zarr.json is not a JSON object", array=name, file=where)
        return
    for field_name in sorted(set(wanted) | set(meta)):
        if meta.get(field_name) != wanted.get(field_name):
            report.add(f"zarr.json field {field_name!r} is {meta.get(field_name)!r}; the "
                       f"manifest implies {wanted.get(field_name)!r}", array=name, file=where)


def _chunk_box(entry: dict, key: str) -> Box:
    index = layout.chunk_index(key)
    chunk = tuple(entry["chunk_shape"])
    offset = tuple(i * c for i, c in zip(index, chunk))
    return Box(offset, tuple(min(c, s - o) for c, s, o in zip(chunk, entry["shape"], offset)))


def _check_chunk(source: _Source, name: str, entry: dict, key: str, record: dict,
                 report: Report) -> int:
    """Check one chunk; returns the bytes read."""
    where = source.where(entry["path"], key)
    try:
        data = source.read(entry["path"], key)
    except CheckpointError as e:
        report.add(str(e), array=name, chunk=key, file=where)
        return 0
    if data is None:
        report.add("chunk is missing", array=name, chunk=key, file=where)
        return 0
    storage = dtypes.storage_dtype(entry["dtype"])
    expected = int(np.prod(entry["chunk_shape"], dtype=np.int64)) * storage.itemsize
    if len(data) != expected + layout.CRC_BYTES or len(data) != record["nbytes"]:
        report.add(f"chunk has {len(data)} bytes, expected {expected + layout.CRC_BYTES}",
                   array=name, chunk=key, file=where)
        return len(data)
    payload, stored = split_trailer(data)
    actual = crc32c(payload)
    if not actual == stored == record["crc32c"]:
        report.add(f"crc32c mismatch (computed {actual:#010x}, trailer {stored:#010x}, "
                   f"manifest {record['crc32c']:#010x})", array=name, chunk=key, file=where)
    if "sha256" not in record:
        report.add("the manifest records no SHA-256 for this chunk", array=name, chunk=key,
                   file=where)
    elif hashlib.sha256(data).hexdigest() != record["sha256"]:
        report.add("SHA-256 differs from the manifest's", array=name, chunk=key, file=where)
    box = _chunk_box(entry, key)
    values = np.frombuffer(payload, dtype=storage).reshape(entry["chunk_shape"])
    got = fingerprint_hex(fingerprint_box(values[Box.whole(box.shape).slices()], box.offset))
    if got != record.get("fingerprint"):
        report.add(f"fingerprint contribution {got} differs from the manifest's "
                   f"{record.get('fingerprint')}", array=name, chunk=key, file=where)
    return len(data)


def verify_checkpoint(path: str, *, partial: bool = False, progress=None) -> Report:
    """Verify the committed checkpoint at ``path`` (a step directory of either tier);
    ``progress(nbytes)`` is called as chunks are read. Returns a Report; never raises for a
    damaged checkpoint (only for a path that cannot be a checkpoint at all). The report is
    ``ok`` only if every chunk was checked, unless ``partial`` accepts a check of the chunks
    this copy holds (one node's local directory of a multi-node checkpoint)."""
    report = Report(path=path, partial=partial)
    if not os.path.exists(path):
        raise CheckpointError(f"verify: {path} does not exist")
    if not os.path.isdir(path):
        raise CheckpointError(f"verify: {path} is not a directory (a checkpoint is a step "
                              "directory, step_<8 digits>)")
    marker = _read_marker(path, report)
    manifest = _read_manifest(path, marker, report)
    if manifest is None:
        return report
    report.run, report.step = manifest.get("run", ""), manifest.get("step")
    report.digest = manifest.get("digest", "")
    source = _Source(path, manifest)
    report.tier = "capacity" if source.capacity else "local"
    if source.capacity:
        _check_part_links(path, report)
    domains = holdings.saved_domains(manifest)
    declared = holdings.declared_domain(path)
    nodes = holdings.domain_nodes(manifest)
    elsewhere: set[str] = set()
    for name, entry in manifest["arrays"].items():
        _check_zarr_metadata(source, name, entry, report)
        for key, record in entry["chunks"].items():
            report.chunks_total += 1
            if not (source.capacity or holdings.expected_here(record, domains, declared) or
                    holdings.chunk_present(path, entry["path"], key)):
                report.chunks_elsewhere += 1
                elsewhere.update(nodes.get(d, "?")
                                 for d in holdings.writer_domains(record, domains))
                continue
            n = _check_chunk(source, name, entry, key, record, report)
            report.chunks_checked += 1
            report.bytes_checked += n
            if progress is not None:
                progress(n)
        try:
            consistent = entry.get("fingerprint") == array_fingerprint(entry["chunks"])
        except KeyError:
            consistent = False
        if not consistent:
            report.add("the array's fingerprint is missing or not the sum of its chunks'",
                       array=name, file=os.path.join(path, layout.MANIFEST_FILE))
    report.nodes_elsewhere = sorted(elsewhere)
    try:
        digest = checkpoint_digest(manifest["arrays"])
    except KeyError as e:
        report.add(f"a chunk record lacks {e}", file=os.path.join(path, layout.MANIFEST_FILE))
    else:
        if digest != manifest.get("digest"):
            report.add(f"digest {manifest.get('digest')!r} is not the Merkle root of the "
                       f"chunks' SHA-256 ({digest})",
                       file=os.path.join(path, layout.MANIFEST_FILE))
    return report


def total_bytes(path: str) -> int:
    """The chunk bytes a verify of ``path`` will read (for a progress bar); 0 if unknown."""
    try:
        with open(os.path.join(path, layout.MANIFEST_FILE), "rb") as f:
            manifest = json.loads(f.read())
        return sum(r["nbytes"] for e in manifest["arrays"].values()
                   for r in e["chunks"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0
