"""Verify a committed checkpoint end to end, on either tier, reporting every problem found.

Checks, in order:
1. the commit marker: present, readable, its manifest SHA-256 matches the manifest's bytes,
   and its digest is the manifest's;
2. the manifest against each array's Zarr metadata (zarr.json): shape, chunk shape, data type,
   codecs;
3. every chunk this copy holds: size and crc32c (trailer, manifest and recomputed: the one
   chunk check, ``tiers.base.check_chunk``, its error reported instead of raised), hash
   (SHA-256 or BLAKE3, as the record names: format/chunkhash.py) and fingerprint
   contribution, recomputed from the bytes. On a node-local tier a directory
   holds the chunks of the domain its commit marker declares (a missing one is damage) and
   whatever other chunk files were copied into it (checked too); the chunks of other nodes
   that are not here are counted as unchecked, never as checked. Where the copy lies does
   not matter: nothing is decided by comparing paths (holdings.py);
4. each array's fingerprint against its chunks', and the checkpoint digest (Merkle root)
   against the chunks' hashes.

Format version 2 (format/slices.py): before the chunks, every manifest slice the copy holds
(a drained copy: all; a node-local one: its domain's ranks', and every rank's in a directory
other nodes' copies were gathered into): the header entry's inclusion proof against the
digest (or, where the header lists every slice, the root over all roots), the slice file's
SHA-256 and root against its entry, its records against what the layout says its rank wrote
(none lost, none foreign), replicas against each other; then the chunks those slices record.
The chunks recorded only in other nodes' slices are counted as elsewhere, and the report's
``note`` says where their slices are. The fingerprints are checked where every slice is at
hand (they are sums over all chunks).

The copy is opened through tiers/registry.py by the kind its manifest records; nothing here
knows how a tier stores its files. A problem names the array, chunk and file at fault. A check that could not read every chunk
of the checkpoint is *incomplete*: its report is not ``ok`` unless the caller asked for a
partial check (``partial=True``). Nothing here writes.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from ..errors import CheckpointError, CorruptCheckpointError
from ..format import chunkhash, layout, slices
from ..format.integrity import array_fingerprint, checkpoint_digest, fingerprint_hex
from ..format.manifest import ArrayRecord, Manifest
from ..format.types import Box
from ..kernels import fingerprint_box
from ..tiers import holdings, registry
from ..tiers.base import StepCopy, check_chunk, chunk_file_bytes, chunk_values


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
    # Format version 2: the saving ranks' manifest slices, those checked here and those in
    # other nodes' copies; ``note`` says where the rest are.
    slices_total: int = 0
    slices_checked: int = 0
    slices_elsewhere: int = 0
    note: str = ""
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
                "slices_total": self.slices_total, "slices_checked": self.slices_checked,
                "slices_elsewhere": self.slices_elsewhere, "note": self.note,
                "problems": self.problems}


def _read_marker(path: str, report: Report) -> dict | None:
    marker_path = os.path.join(path, layout.COMMIT_FILE)
    try:
        return json.loads(registry.step_reader(path)(layout.COMMIT_FILE))
    except FileNotFoundError:
        report.add("no commit marker: this is not a committed checkpoint", file=marker_path)
    except (OSError, ValueError, CheckpointError) as e:  # CheckpointError: a store's
        report.add(f"commit marker unreadable: {e}", file=marker_path)
    return None


def _read_manifest(path: str, marker: dict | None, report: Report) -> dict | None:
    manifest_path = os.path.join(path, layout.MANIFEST_FILE)
    try:
        data = registry.step_reader(path)(layout.MANIFEST_FILE)
    except (OSError, CheckpointError) as e:
        report.add(f"manifest unreadable: {e}", file=manifest_path)
        return None
    if marker is not None and hashlib.sha256(data).hexdigest() != marker.get("manifest_sha256"):
        report.add("manifest does not match the SHA-256 in the commit marker (modified or "
                   "damaged)", file=manifest_path)
    try:
        manifest = layout.parse_manifest(data)
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


def _check_zarr_metadata(copy: StepCopy, array: ArrayRecord, report: Report) -> None:
    try:
        raw = _read_metadata(copy, array)
    except CheckpointError as e:
        report.add(str(e), array=array.name, file=copy.where(array, layout.ZARR_JSON))
        return
    where = copy.where(array, layout.ZARR_JSON)
    if raw is None:
        report.add("zarr.json is missing", array=array.name, file=where)
        return
    try:
        meta = json.loads(raw)
    except ValueError as e:
        report.add(f"zarr.json is not valid JSON: {e}", array=array.name, file=where)
        return
    wanted = layout.zarr_array_document(array.dtype, array.shape, array.chunk_shape,
                                        array.key, copy.manifest.format_version)
    if not isinstance(meta, dict):
        report.add("zarr.json is not a JSON object", array=array.name, file=where)
        return
    for field_name in sorted(set(wanted) | set(meta)):
        if meta.get(field_name) != wanted.get(field_name):
            report.add(f"zarr.json field {field_name!r} is {meta.get(field_name)!r}; the "
                       f"manifest implies {wanted.get(field_name)!r}", array=array.name,
                       file=where)


def _read_metadata(copy: StepCopy, array: ArrayRecord) -> bytes | None:
    """An array's zarr.json: read as the copy reads a chunk file (the same no-link rule)."""
    return copy.read_raw(array, layout.ZARR_JSON)


def _check_chunk(copy: StepCopy, array: ArrayRecord, key: str, report: Report) -> int:
    """Check one chunk (``tiers.base.check_chunk``, reported instead of raised, then the
    SHA-256 and the fingerprint contribution); returns the bytes read."""
    record = array.chunks[key]
    where = copy.where(array, key)
    try:
        data = copy.read_raw(array, key)
    except CheckpointError as e:
        report.add(str(e), array=array.name, chunk=key, file=where)
        return 0
    if data is None:
        report.add("chunk is missing", array=array.name, chunk=key, file=where)
        return 0
    expected = chunk_file_bytes(array)
    try:
        check_chunk(array, key, data, where)
    except CorruptCheckpointError as e:
        report.add(str(e), array=array.name, chunk=key, file=where)
        if len(data) != expected:
            return len(data)
    if len(data) != record.nbytes:
        report.add(f"chunk has {len(data)} bytes, the manifest records {record.nbytes}",
                   array=array.name, chunk=key, file=where)
        return len(data)
    if not record.hash:
        report.add("the manifest records no hash for this chunk", array=array.name,
                   chunk=key, file=where)
    elif chunkhash.hash_of([data], like=record.hash) != record.hash:
        report.add(f"{chunkhash.algorithm_of(record.hash).upper()} hash differs from the "
                   "manifest's", array=array.name, chunk=key, file=where)
    box = array.chunk_box(key)
    values = chunk_values(array, data)
    got = fingerprint_hex(fingerprint_box(values[Box.whole(box.shape).slices()], box.offset))
    if got != record.fingerprint:
        report.add(f"fingerprint contribution {got} differs from the manifest's "
                   f"{record.fingerprint or None}", array=array.name, chunk=key, file=where)
    return len(data)


def verify_checkpoint(path: str, *, partial: bool = False, progress=None) -> Report:
    """Verify the committed checkpoint at ``path`` (a step directory of either tier);
    ``progress(nbytes)`` is called as chunks are read. Returns a Report; never raises for a
    damaged checkpoint (only for a path that cannot be a checkpoint at all). The report is
    ``ok`` only if every chunk was checked, unless ``partial`` accepts a check of the chunks
    this copy holds (one node's local directory of a multi-node checkpoint)."""
    report = Report(path=path, partial=partial)
    if not registry.is_url(path):  # an object store's step: a missing marker is reported
        if not os.path.exists(path):
            raise CheckpointError(f"verify: {path} does not exist")
        if not os.path.isdir(path):
            raise CheckpointError(f"verify: {path} is not a directory (a checkpoint is a "
                                  "step directory, step_<8 digits>)")
    marker = _read_marker(path, report)
    document = _read_manifest(path, marker, report)
    if document is None:
        return report
    manifest = Manifest.from_document(document)
    report.run, report.step = manifest.run, manifest.step
    report.digest = manifest.digest
    try:
        copy = registry.copy_of(path, manifest)
    except CheckpointError as e:
        report.add(str(e), file=os.path.join(path, layout.MANIFEST_FILE))
        return report
    report.tier = copy.tier.kind
    for problem, where in copy.structure_problems():
        report.add(problem, file=where)
    held: set[int] = set()
    if manifest.sliced:
        copy, held = _check_slices(copy, report)
        manifest = copy.manifest
    nodes = manifest.domain_nodes()
    elsewhere: set[str] = set()
    for name, array in manifest.arrays.items():
        _check_zarr_metadata(copy, array, report)
        for key in array.chunks:
            report.chunks_total += 1
            if not (copy.expected(array, key) or copy.holds(array, key)):
                report.chunks_elsewhere += 1
                elsewhere.update(nodes.get(d, "?")
                                 for d in holdings.writer_domains(manifest, array, key))
                continue
            n = _check_chunk(copy, array, key, report)
            report.chunks_checked += 1
            report.bytes_checked += n
            if progress is not None:
                progress(n)
        if manifest.sliced:
            continue  # the fingerprints and the digest: _check_slices and below
        if any(not r.fingerprint for r in array.chunks.values()) or \
                array.fingerprint != array_fingerprint(array.chunks):
            report.add("the array's fingerprint is missing or not the sum of its chunks'",
                       array=name, file=os.path.join(path, layout.MANIFEST_FILE))
    if manifest.sliced:
        _count_unrecorded(copy, report, elsewhere, held)
    report.nodes_elsewhere = sorted(elsewhere)
    if manifest.sliced:
        return report
    lacking = sum(1 for a in manifest.arrays.values() for r in a.chunks.values()
                  if not r.hash)
    if lacking:
        report.add(f"{lacking} chunk records lack their hash",
                   file=os.path.join(path, layout.MANIFEST_FILE))
    else:
        digest = checkpoint_digest(manifest.arrays)
        if digest != manifest.digest:
            report.add(f"digest {manifest.digest!r} is not the Merkle root of the "
                       f"chunks' SHA-256 ({digest})",
                       file=os.path.join(path, layout.MANIFEST_FILE))
    return report


def _check_slices(copy: StepCopy, report: Report) -> tuple[StepCopy, set[int]]:
    """Format version 2: every slice this copy holds (the header's, and those a gathered
    directory proves), each reported rather than raised: its entry's proof (or, where the
    header lists every slice, the roots' root) against the digest, the file's SHA-256 and
    root against the entry, its records against what the layout says its rank wrote, and
    replicas against each other. Returns the copy with the records of every good slice, and
    the ranks whose slices it holds."""
    manifest = copy.manifest
    header = os.path.join(copy.path, layout.MANIFEST_FILE)
    for rank, problem in slices.entry_problems(manifest):
        report.add(problem if rank is None else f"manifest slice of rank {rank}: {problem}",
                   file=header if rank is None else copy.slice_where(rank))
    documents = {}
    for rank in sorted(manifest.slices):
        data = copy.read_slice(rank)
        if data is None:
            report.add(f"manifest slice of rank {rank} is missing although the header lists "
                       "it", file=copy.slice_where(rank))
            continue
        try:
            documents[rank] = slices.parse_slice(data, manifest, rank, copy.slice_where(rank))
        except CorruptCheckpointError as e:
            report.add(str(e), file=copy.slice_where(rank))
    try:
        held = copy.slice_ranks()  # a gathered directory's unlisted slices proven here
        for rank in sorted(held - set(manifest.slices)):
            documents[rank] = slices.parse_slice(copy.read_slice(rank) or b"", manifest, rank,
                                                 copy.slice_where(rank), unlisted=True)
    except CheckpointError as e:
        held = set(manifest.slices)
        report.add(str(e), file=copy.path)
    for rank in sorted(documents):
        for name, key, problem in slices.record_problems(manifest, rank, documents[rank]):
            report.add(problem, array=name, chunk=key, file=copy.slice_where(rank))
    copy = copy.tier.copy_at(copy.path, manifest.with_slices(documents))
    for name, key, a, b in copy.manifest.conflicts:
        report.add(f"replicas differ: the slices of ranks {a} and {b} record different "
                   "bytes", array=name, chunk=key, file=copy.slice_where(b))
    report.slices_total = manifest.world_size
    report.slices_checked = len(held)
    away = sorted(set(range(manifest.world_size)) - held)
    report.slices_elsewhere = len(away)
    if away:
        nodes = sorted({manifest.ranks[r].node for r in away if r < len(manifest.ranks)})
        report.note = (f"the manifest slices of {len(away)} saving ranks (nodes "
                       f"{', '.join(nodes)}) are in their own nodes' copies, not here: their "
                       "chunks are counted as elsewhere; the capacity copy holds them all")
    for name, array in copy.manifest.arrays.items():
        if not copy.manifest.complete:
            break
        if array.fingerprint != array_fingerprint(array.chunks):
            report.add("the array's fingerprint is not the sum of its chunks'", array=name,
                       file=header)
    return copy, held


def _count_unrecorded(copy: StepCopy, report: Report, elsewhere: set, held: set) -> None:
    """Format version 2: the chunks of the grid that no slice read here records are in
    other nodes' copies (counted as elsewhere); with every slice here, a chunk no slice
    records is damage (a header whose layout leaves it without a writer)."""
    manifest = copy.manifest
    for name, array in manifest.arrays.items():
        unrecorded = array.chunk_count - len(array.chunks)
        if unrecorded <= 0:
            continue
        if manifest.complete:
            report.add(f"{unrecorded} chunks of the array are recorded in no manifest slice",
                       array=name, file=os.path.join(copy.path, layout.MANIFEST_FILE))
            continue
        report.chunks_total += unrecorded
        report.chunks_elsewhere += unrecorded
    elsewhere.update(r.node for r in manifest.ranks if r.rank not in held)


def total_bytes(path: str) -> int:
    """The chunk bytes a verify of ``path`` will read (for a progress bar); 0 if unknown."""
    try:
        with open(os.path.join(path, layout.MANIFEST_FILE), "rb") as f:
            manifest = json.loads(f.read())
        if "slices" in manifest:
            return sum(e["bytes"] for e in manifest["slices"].values())
        return sum(r["nbytes"] for e in manifest["arrays"].values()
                   for r in e["chunks"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0
