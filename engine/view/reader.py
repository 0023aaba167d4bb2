"""Reads of boxes of one checkpoint's arrays, for a reader outside any job (no MPI).

The read of a box is the restore's, unchanged: ``restore.plan.plan_reads`` says which chunks
the box overlaps and which region of each it needs (restore/reshard.py: integer division over
the chunk grid, never a search), ``restore.execute.with_records`` loads the manifest slices
recording those chunks (format version 2: found from the header, each proven against the
digest before a chunk is checked against it), and ``restore.read.read_array`` has the copy's
``read_into`` check every chunk the box touches as it copies it out (tiers/base.py: a plain
chunk file whole; a sub-chunked one only the inner chunks the box touches, each against its
own crc32c). A damaged chunk is a CorruptCheckpointError naming the array and the chunk; a
chunk the read does not touch is never read, so damage there does not stop this read.

Who calls: a ``CheckpointView`` (view/checkpoint.py), from one thread or several; the slices
loaded so far are kept (under a lock) so that later reads do not read them again.
"""
from __future__ import annotations

import threading

import numpy as np

from ..errors import CheckpointNotFoundError
from ..format import dtypes
from ..format.manifest import Manifest
from ..format.types import Box
from ..restore.execute import TierCopies, with_records
from ..restore.plan import ArrayRead, TemplateLeaf, plan_reads
from ..restore.read import read_array
from ..tiers.base import StepCopy

# The reading rank ``with_records`` prefers the slices of (a saved rank's own, then its
# domain's, for replicated chunks): a reader outside the job reads like rank 0.
READER_RANK = 0


class BoxReader:
    """Reads boxes of the arrays of one checkpoint from its copies (preference order: the
    first is read, a chunk missing or damaged there is read from the next), with ``threads``
    reader threads per box."""

    def __init__(self, copies: list[StepCopy], *, threads: int):
        self._copies = TierCopies(list(copies))
        self._threads = threads
        self._lock = threading.Lock()
        self.bytes_read = 0  # chunk-file bytes read by every box so far

    @property
    def copy(self) -> StepCopy:
        """The copy read first, with the manifest slices loaded so far."""
        return self._copies.copies[0]

    def full_manifest(self) -> Manifest | None:
        """The manifest with every chunk record (format version 2: every slice loaded, where
        the copy read first holds them all); None where it does not (one node's copy of a
        multi-node save)."""
        with self._lock:
            copy = self.copy
            manifest = copy.manifest
            if manifest.complete:
                return manifest
            if len(copy.slice_ranks()) < manifest.world_size:
                return None
            copy = copy.with_slices()
            self._copies = TierCopies([copy] + self._copies.copies[1:])
            return copy.manifest

    def read(self, name: str, box: Box) -> np.ndarray:
        """The stored bits of ``box`` of array ``name``, every chunk it touches checked."""
        record = self.copy.manifest.arrays[name]
        target = np.empty(box.shape, dtype=dtypes.storage_dtype(record.dtype))
        read = self._plan(name, box)
        if not read.items:
            return target
        self._copies.copies[0].read_ahead([(read.record, item) for item in read.items])
        n = read_array(self._copies.copies, read.record, list(read.items), target,
                       threads=self._threads)
        with self._lock:
            self.bytes_read += n
        return target

    def _plan(self, name: str, box: Box) -> ArrayRead:
        """The reads of ``box``, their chunk records loaded; CheckpointNotFoundError where a
        chunk's records are only in slices these copies do not hold."""
        with self._lock:
            manifest = self.copy.manifest
            record = manifest.arrays[name]
            plan = plan_reads([TemplateLeaf(name, record.shape, record.dtype, box)], manifest)
            self._copies, plan = with_records(self._copies, plan, rank=READER_RANK)
            read = plan.read_of(name)
        if self.copy.manifest.sliced:
            for key in read.chunk_keys():
                if key not in read.record.chunks:
                    raise self._elsewhere(name, key)
        return read

    def _elsewhere(self, name: str, key: str) -> CheckpointNotFoundError:
        copy = self.copy
        manifest = copy.manifest
        writers = manifest.writers_of(manifest.arrays[name], key)
        nodes = sorted({manifest.ranks[w].node for w in writers if w < len(manifest.ranks)})
        return CheckpointNotFoundError(
            f"array {name!r}: chunk {key} is not in this copy ({copy.path}): it was written by "
            f"saving rank(s) {list(writers)} on node(s) {', '.join(nodes) or '?'} into their "
            "own node's tier. Open that node's copy, or the capacity tier's copy (which holds "
            "every chunk)")
