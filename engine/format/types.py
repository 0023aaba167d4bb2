"""Small frozen value types shared by planning, I/O and the format module.

Everything here is pure data: no torch, no I/O. A global array is a rectangular index space;
a :class:`Box` is a sub-rectangle of it given by offset and shape.
"""
from __future__ import annotations

from dataclasses import dataclass

Index = tuple[int, ...]


@dataclass(frozen=True, order=True)
class Box:
    """The half-open rectangle ``[offset, offset + shape)`` of a global array."""

    offset: Index
    shape: Index

    def __post_init__(self) -> None:
        if len(self.offset) != len(self.shape):
            raise ValueError(f"box offset {self.offset} and shape {self.shape} differ in rank")

    @classmethod
    def whole(cls, shape: Index) -> "Box":
        return cls((0,) * len(shape), tuple(shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def end(self) -> Index:
        return tuple(o + s for o, s in zip(self.offset, self.shape))

    @property
    def volume(self) -> int:
        v = 1
        for s in self.shape:
            v *= s
        return v

    def intersect(self, other: "Box") -> "Box | None":
        """The common part of two boxes, or None when they do not overlap (or it is empty)."""
        lo = tuple(max(a, b) for a, b in zip(self.offset, other.offset))
        hi = tuple(min(a, b) for a, b in zip(self.end, other.end))
        if any(h <= l for l, h in zip(lo, hi)) and self.ndim:
            return None
        return Box(lo, tuple(h - l for l, h in zip(lo, hi)))

    def contains(self, other: "Box") -> bool:
        return all(so <= oo and oe <= se for so, oo, oe, se in
                   zip(self.offset, other.offset, other.end, self.end))

    def relative_to(self, origin: "Box") -> "Box":
        """This box in the coordinates of ``origin`` (which must contain it)."""
        return Box(tuple(a - b for a, b in zip(self.offset, origin.offset)), self.shape)

    def slices(self) -> tuple:
        """Index selecting this box; ends in ``...`` so a 0-d box selects a view, not a
        scalar copy."""
        return tuple(slice(o, o + s) for o, s in zip(self.offset, self.shape)) + (Ellipsis,)

    def to_json(self) -> dict:
        return {"offset": list(self.offset), "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict) -> "Box":
        return cls(tuple(d["offset"]), tuple(d["shape"]))


@dataclass(frozen=True)
class LocalArray:
    """One rank's declaration of its part of a global array, as exchanged between ranks.

    ``replicated`` means every rank that declares this box holds identical values, so any of
    them may write it.
    """

    name: str
    dtype: str
    global_shape: Index
    box: Box
    replicated: bool

    def to_json(self) -> list:
        return [self.name, self.dtype, list(self.global_shape), list(self.box.offset),
                list(self.box.shape), self.replicated]

    @classmethod
    def from_json(cls, v: list) -> "LocalArray":
        name, dtype, gshape, off, shp, rep = v
        return cls(name, dtype, tuple(gshape), Box(tuple(off), tuple(shp)), bool(rep))


@dataclass(frozen=True)
class ChunkAssignment:
    """A chunk of the saved grid and the one rank that writes it into its domain's
    directory (a replicated chunk has one assignment per domain)."""

    index: Index
    box: Box
    writer: int


@dataclass(frozen=True)
class ArrayPlan:
    """How one global array is laid out on disk and who writes what."""

    name: str
    dtype: str
    shape: Index
    chunk_shape: Index
    chunks: tuple[ChunkAssignment, ...]
    saved_boxes: tuple[tuple[Box, tuple[int, ...]], ...]  # distinct shard boxes and holders


@dataclass(frozen=True)
class SavePlan:
    """The global save plan: identical on every rank, computed from all local declarations."""

    world_size: int
    arrays: tuple[ArrayPlan, ...]

    def writes_of(self, rank: int) -> list[tuple[ArrayPlan, ChunkAssignment]]:
        return [(a, c) for a in self.arrays for c in a.chunks if c.writer == rank]


@dataclass(frozen=True)
class ReadItem:
    """Read one saved chunk and copy its overlap with a requested box into the target.

    ``chunk_region`` is the overlap in chunk-local coordinates, ``target_region`` the same
    elements in the coordinates of the requested box.
    """

    array: str
    chunk_index: Index
    chunk_box: Box
    chunk_region: Box
    target_region: Box


@dataclass
class WrittenChunk:
    """What a writer reports about one chunk it wrote: the save job gathers these from every
    rank and builds the manifest's ``format.manifest.ChunkRecord`` of each chunk from them."""

    array: str
    index: Index
    nbytes: int
    crc32c: int
    writer: int
    hash: str = ""  # of the chunk file's bytes, as format/chunkhash.py records it
    fingerprint: int = 0  # the chunk's contribution to its array's fingerprint

    def to_json(self) -> dict:
        """The record as the save job's write phase sends it to every rank (a JSON object:
        named fields, no positions)."""
        return {"array": self.array, "index": list(self.index), "nbytes": self.nbytes,
                "crc32c": self.crc32c, "writer": self.writer, "hash": self.hash,
                "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, d: dict) -> "WrittenChunk":
        return cls(str(d["array"]), tuple(int(i) for i in d["index"]), int(d["nbytes"]),
                   int(d["crc32c"]), int(d["writer"]), str(d["hash"]),
                   int(d["fingerprint"]))
