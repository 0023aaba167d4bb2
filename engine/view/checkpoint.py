"""``CheckpointView`` and ``ArrayView``: a committed checkpoint, read-only, for notebooks and
scripts (``tierpoint.open`` builds them; view/__init__.py).

A view is opened by its manifest header alone (checked against the commit marker); the
manifest slices (format version 2) are read when a read needs them or a fingerprint is
asked for. Nothing here writes, takes part in a collective or needs MPI; a view may be read
from several threads at once. Indexing an ``ArrayView`` reads the box it selects
(view/index.py) through view/reader.py: only the chunks the box touches are read, and each is
checked before its bytes are returned.
"""
from __future__ import annotations

import difflib
import math

import numpy as np

from ..format import dtypes
from ..format.manifest import ArrayRecord, Manifest
from ..runtime.channel import ranks_text
from ..tiers.registry import kind_of, open_copy
from .index import box_of
from .locate import Located
from .reader import BoxReader
from .values import as_numpy, as_torch, numpy_dtype


class ArrayView:
    """One saved array of a ``CheckpointView``: ``view["model/w"]``.

    ``a[100:200]`` (numpy basic indexing: integers, slices of step 1, ``...``) reads that part
    and returns it as numpy (bfloat16/float8 as ``ml_dtypes`` types), or as a CPU torch
    tensor when the view was opened with ``torch=True``; ``a.numpy(index)`` and
    ``a.torch(index)`` say which explicitly; ``np.asarray(a)`` reads it whole."""

    def __init__(self, view: "CheckpointView", record: ArrayRecord):
        self._view, self._record = view, record

    def __repr__(self) -> str:
        return (f"ArrayView({self.name!r}, shape={self.shape}, dtype={self.dtype}, "
                f"step={self._view.step})")

    # ---- what the manifest says ----

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._record.shape)

    @property
    def ndim(self) -> int:
        return len(self._record.shape)

    @property
    def size(self) -> int:
        return math.prod(self._record.shape)

    @property
    def dtype(self) -> str:
        """The saved element type's name ("float32", "bfloat16", ...)."""
        return self._record.dtype

    @property
    def numpy_dtype(self) -> np.dtype:
        return numpy_dtype(self._record.dtype)

    @property
    def nbytes(self) -> int:
        return self.size * dtypes.itemsize(self._record.dtype)

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        return tuple(self._record.chunk_shape)

    @property
    def inner_chunk_shape(self) -> tuple[int, ...] | None:
        """The inner chunks of a sub-chunked array's chunk files (None: plain files); a read
        of part of a chunk reads only the inner chunks it touches."""
        return self._record.inner_shape

    @property
    def fingerprint(self) -> str | None:
        """The array's fingerprint (order-independent, layout-independent: equal values saved
        on any sharding give the same one); None where this copy cannot tell
        (``CheckpointView.fingerprints_unavailable`` says why)."""
        return self._view.fingerprint_of(self.name)

    # ---- reads ----

    def __getitem__(self, index):
        return self.torch(index) if self._view.as_torch else self.numpy(index)

    def __array__(self, dtype=None, copy=None):
        values = self.numpy()
        return values if dtype is None else values.astype(dtype)

    def __len__(self) -> int:
        if not self.ndim:
            raise TypeError(f"array {self.name!r} is 0-d; read it with [()]")
        return self.shape[0]

    def bits(self, index=...) -> np.ndarray:
        """The stored bits of ``index`` (bfloat16/float8: unsigned integers of their width)."""
        box, shape = box_of(self.name, self.shape, index)
        return self._view.reader.read(self.name, box).reshape(shape)

    def numpy(self, index=...) -> np.ndarray:
        """The values of ``index`` as a numpy array (a new one, writable)."""
        return as_numpy(self.bits(index), self.dtype)

    def torch(self, index=...):
        """The values of ``index`` as a CPU torch tensor (a new one)."""
        return as_torch(self.bits(index), self.dtype)


class CheckpointView:
    """A committed checkpoint of one tier, read-only: ``tierpoint.open(...)``.

    ``view["model/w"]`` is an ``ArrayView``; ``names()``/``arrays()`` list them, ``values``
    holds the saved JSON values (step counters, configuration, RNG states, ...),
    ``metadata`` what the save was given, ``lineage`` where it came from (code version,
    parent checkpoint, user, hosts). ``steps()`` lists the run's committed steps in the same
    place; ``at(step)`` opens another of them."""

    def __init__(self, located: Located, *, as_torch: bool = False, threads: int = 4):
        self._located = located
        self.as_torch = bool(as_torch)
        self._threads = threads
        copy = open_copy(located.step_dir, ranks=())  # the header: checked, no slice read
        self.reader = BoxReader([copy], threads=threads)
        self._header: Manifest = copy.manifest
        self._fingerprints: dict[str, str] | None = None

    def __repr__(self) -> str:
        return (f"CheckpointView(run={self.run!r}, step={self.step}, tier={self.tier!r}, "
                f"{len(self._header.arrays)} arrays, path={self.path!r})")

    # ---- the checkpoint ----

    @property
    def path(self) -> str:
        """The step directory (or URL) this view reads."""
        return self._located.step_dir

    @property
    def manifest(self) -> Manifest:
        """The typed manifest header (format/manifest.py), with the slices loaded so far."""
        return self.reader.copy.manifest

    @property
    def run(self) -> str:
        return self._header.run

    @property
    def step(self) -> int:
        return self._header.step

    @property
    def tier(self) -> str:
        """The kind of tier this copy is on ("local", "capacity", ...)."""
        return kind_of(self._header)

    @property
    def digest(self) -> str:
        return self._header.digest

    @property
    def time(self) -> str:
        return self._header.time

    @property
    def world_size(self) -> int:
        return self._header.world_size

    @property
    def format_version(self) -> int:
        return self._header.format_version

    @property
    def values(self) -> dict:
        """The saved JSON values by name ("step", "cfg/lr", ...)."""
        return {k: v["value"] for k, v in sorted(self._header.values.items())}

    @property
    def metadata(self) -> dict:
        return dict(self._header.metadata)

    @property
    def lineage(self) -> dict:
        return dict(self._header.lineage)

    @property
    def bytes_read(self) -> int:
        """Chunk-file bytes this view has read so far (checked as they were read)."""
        return self.reader.bytes_read

    # ---- arrays ----

    def names(self) -> list[str]:
        return sorted(self._header.arrays)

    def arrays(self) -> dict[str, ArrayView]:
        return {n: self[n] for n in self.names()}

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._header.arrays)

    def __contains__(self, name) -> bool:
        return name in self._header.arrays

    def __getitem__(self, name: str) -> ArrayView:
        record = self._header.arrays.get(name)
        if record is None:
            close = difflib.get_close_matches(str(name), self.names(), n=3)
            raise KeyError(f"step {self.step} of run {self.run!r} has no array {name!r}"
                           + (f"; did you mean {', '.join(map(repr, close))}?" if close else
                              f" (it has {len(self)} arrays: view.names() lists them)"))
        return ArrayView(self, record)

    # ---- fingerprints ----

    def fingerprint_of(self, name: str) -> str | None:
        recorded = self._header.arrays[name].fingerprint
        if recorded:
            return recorded
        if self._fingerprints is None:
            full = self.reader.full_manifest()
            self._fingerprints = {} if full is None else {
                n: a.fingerprint for n, a in full.arrays.items()}
        return self._fingerprints.get(name) or None

    @property
    def fingerprints_unavailable(self) -> str | None:
        """Why this copy cannot give the arrays' fingerprints (None: it can)."""
        if not self._header.sliced or self.reader.full_manifest() is not None:
            return None
        held = sorted(self.reader.copy.slice_ranks())
        return (f"this copy holds the manifest slices of saving ranks {ranks_text(held) or 'none'} only "
                f"(of {self.world_size}): an array's fingerprint sums every chunk's; open the "
                "capacity copy, or a directory holding every node's copy")

    # ---- other steps ----

    def steps(self) -> list[int]:
        """The committed steps of this run in the same place (its run directory, or run URL
        on an object store), ascending."""
        return self._located.steps()

    def at(self, step: int | None = None) -> "CheckpointView":
        """Another committed step of the same run in the same place (None: the newest)."""
        return CheckpointView(self._located.at(step), as_torch=self.as_torch,
                              threads=self._threads)

