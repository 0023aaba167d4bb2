"""The capacity tier's read side: a drained copy (``CapacityCopy``, a ``StepCopy`` of
base.py) and where its values lie (``ValueIndex``). The write side, the drain's check of a
merged head and the pools are tiers/capacity.py.

How a restore reads a chunk: its key is looked up in the copy's OCDBT index, which
TensorStore reads (``ValueIndex``), and the bytes are read from that data file with
``preadv`` into the restore's own buffers, straight into the target where the chunk maps
onto it (tiers/fileread.py, the local tier's read). Why not ``KvStore.read``: its bytes are
copied twice into fresh memory (TensorStore's read buffer, then ``ReadResult.value``'s bytes
object), each page faulted in. Measured here (1 GiB, two ranks on two cores, cold cache):
about 2 CPU s/GB, where preadv into the restore's buffers with the checks costs about 0.4, so
KvStore reads kept a restore at 50-60% of what the pools deliver to dd, on the CPU alone.

Trust: nothing is believed because the index said so. Every chunk and inner chunk read this
way passes the one chunk check (tiers/base.py: its crc32c and the manifest's); a key the
walk did not find, a value whose length is not the chunk file's, a file that cannot be read,
and a chunk that fails its check are read again through ``KvStore.read``, which decides what
the copy holds (and names what is missing or damaged). So a misread index costs time, never
a wrong byte; tests/test_capacity_read.py checks that the walk finds every key where
TensorStore reads it.

Everything else (manifest slices, verify's ``read_raw``, ``holds``, the metadata the drain
copies) reads through the kvstore.
"""
from __future__ import annotations

import bisect
import os
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ..format import layout
from ..format.manifest import ArrayRecord, Manifest
from ..format.types import ReadItem
from .base import check_chunk, chunk_file_bytes, inner_reads, scatter_checked, scatter_inner
from .fileread import read_item_at


def open_kv(directory: str, context=None):
    """The OCDBT database at ``directory`` as a TensorStore kvstore."""
    return open_ocdbt(layout.ocdbt_spec(directory), context)


def open_ocdbt(spec: dict, context=None):
    """The OCDBT database of kvstore ``spec`` (``{"driver": "ocdbt", "base": ...}``; the
    S3 tier's base is an ``s3`` kvstore) as a TensorStore kvstore."""
    import tensorstore as ts
    return ts.KvStore.open(spec, context=context if context is not None else ts.Context()
                           ).result()


@dataclass(frozen=True)
class Located:
    """Where one value of an OCDBT database is: ``length`` bytes at ``offset`` of the data
    file ``path``, or ``inline`` (a small value is stored in its B-tree leaf)."""

    length: int
    path: str | None = None
    offset: int = 0
    inline: bytes | None = None


class NoIndex:
    """The ``ValueIndex`` of a copy whose data files cannot be read with ``preadv`` (an
    object store's): nothing is located, every read goes through the kvstore."""

    def locate(self, keys) -> None:
        return None

    def get(self, key: str) -> None:
        return None


class ValueIndex:
    """Where the values of the OCDBT database at ``directory`` lie, from TensorStore's dump of
    its newest version (``ts.ocdbt.dump``: the manifest, then B-tree nodes). A walk visits only
    the nodes whose key ranges hold keys asked for; every key is looked up once (an absent
    one too). The dump's shape, as TensorStore 0.1 writes it: a node has ``height`` and
    ``entries``; an interior entry has ``key`` (the least key of its subtree), ``location``
    and ``subtree_common_prefix``, a leaf entry ``key`` and ``inline_value`` or
    ``indirect_value`` (``value:<base path>:<relative path>:<offset>:<length>``, the path
    relative to ``directory``); each node's keys are relative to the concatenated common
    prefixes of the entries above it. When the dump cannot be had or is not that shape,
    nothing is located (every read goes through the kvstore: slower, the same bytes).
    Thread-safe."""

    def __init__(self, directory: str, base: dict | None = None):
        self.directory = os.path.abspath(directory)
        # The kvstore spec the database is read from (default: ``directory`` itself). The
        # S3 tier's drain check reads a merged head's index from the bucket and names the
        # values' files under its staging ``directory``, which mirrors the head's layout.
        self._base_spec = base if base is not None else layout.file_kvstore(self.directory)
        self._found: dict[bytes, Located | None] = {}  # every entry of the leaves visited
        self._usable = True
        self._root: tuple | None = None  # (base kvstore, root location or None), read once
        self._lock = threading.Lock()

    def locate(self, keys) -> None:
        """Look up every key of ``keys`` (str) not looked up yet, in one walk."""
        with self._lock:
            todo = sorted({k.encode("utf-8") for k in keys} - self._found.keys())
            if not todo or not self._usable:
                return
            try:
                found = self._walk(todo)
            except Exception:  # noqa: BLE001 - any surprise in the dump: the kvstore reads
                self._usable = False
                return
            self._found.update(found)
            for key in todo:
                self._found.setdefault(key, None)

    def get(self, key: str) -> Located | None:
        """Where ``key``'s value is (looked up now if it was not yet: a walk to its leaf,
        whose other entries are then known too); None: not found."""
        raw = key.encode("utf-8")
        if raw not in self._found:
            self.locate([key])
        return self._found.get(raw)

    def _walk(self, keys: list[bytes]) -> dict[bytes, Located]:
        import tensorstore as ts
        if self._root is None:  # a committed copy is never written again: read it once
            base = ts.KvStore.open(self._base_spec).result()
            root = ts.ocdbt.dump(base).result()["versions"][-1]["root"]
            self._root = (base, root.get("location"))  # an empty database has no root node
        base, location = self._root
        out: dict[bytes, Located] = {}
        if location is not None:
            self._visit(ts, base, location, b"", keys, out)
        return out

    def _visit(self, ts, base, location: str, prefix: bytes, keys: list[bytes],
               out: dict) -> None:
        node = ts.ocdbt.dump(base, location).result()
        entries = node["entries"]
        if node["height"] == 0:
            for entry in entries:
                key = prefix + bytes(entry["key"])
                if "inline_value" in entry:
                    value = bytes(entry["inline_value"])
                    out[key] = Located(len(value), inline=value)
                else:
                    located = self._reference(entry["indirect_value"])
                    if located is not None:
                        out[key] = located
            return
        starts = [prefix + bytes(entry["key"]) for entry in entries]
        for n, entry in enumerate(entries):  # child n holds the keys from starts[n] on
            lo = bisect.bisect_left(keys, starts[n]) if n else 0
            hi = bisect.bisect_left(keys, starts[n + 1]) if n + 1 < len(starts) else len(keys)
            if lo < hi:
                self._visit(ts, base, entry["location"],
                            prefix + bytes(entry["subtree_common_prefix"]), keys[lo:hi], out)

    def _reference(self, reference: str) -> Located | None:
        """The place an indirect value's reference names; None for a path that is not
        inside the database directory as written (absolute, or with ``..``): such a value
        is left to the kvstore."""
        kind, rest = reference.split(":", 1)
        if kind != "value":
            raise ValueError(f"not a value reference: {reference!r}")
        paths, offset, length = rest.rsplit(":", 2)
        base_path, relative = paths.split(":", 1)
        path = base_path + relative
        if os.path.isabs(path) or ".." in path.split("/"):
            return None
        return Located(int(length), path=os.path.join(self.directory, path), offset=int(offset))


def read_located(located: Located, array: ArrayRecord, key: str, item: ReadItem,
                 target: np.ndarray, where: str) -> int:
    """``item`` of chunk ``key`` from where the index says its value is, checked as it
    lands (tiers/fileread.py); CorruptCheckpointError or OSError when that is not the chunk
    file (the caller reads it through the kvstore then)."""
    if located.length != chunk_file_bytes(array):
        raise CorruptCheckpointError(
            f"array {array.name!r}: chunk {key} ({where}) has {located.length} bytes, "
            f"expected {chunk_file_bytes(array)}")
    if located.inline is not None:
        return scatter_checked(array, key, located.inline, item, target, where)
    fd = os.open(located.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_item_at(fd, located.offset, array, key, item, target, where)
    finally:
        os.close(fd)


class CapacityCopy:
    """One committed (drained) checkpoint on the capacity tier, read through its head with a
    TensorStore context of its own (see ``StepCopy`` in base.py); a restore's chunks as the
    module docstring says.

    Format version 2: the copy holds every saving rank's slice, as the key
    ``.tierpoint-slices/r<rank>.json`` of its database (``layout.slice_key``), not as files
    in the head: each aggregator writes its nodes' slices into its own parts with their
    chunks, so a drain adds no file per rank to pool 0 (the capacity tier's file count grows
    with the aggregators, never with the ranks), and the merge links them like any key.
    Keys under ``.tierpoint-slices/`` are never array paths (escaped components never start
    with ``.``), so a stock TensorStore reading the arrays never meets them. The head's
    header lists every slice (without proofs: the digest is recomputed from all roots)."""

    def __init__(self, tier, path: str, manifest: Manifest, *, kv=None,
                 index: ValueIndex | None = None):
        self.tier, self.path, self.manifest = tier, path, manifest
        self.step = manifest.step
        self._kv = kv if kv is not None else open_kv(path)
        self._index = index if index is not None else ValueIndex(path)

    def __repr__(self) -> str:
        return f"CapacityCopy({self.path!r})"

    def read_failed(self, what: str, e: Exception) -> CheckpointError:
        """The error of a kvstore read of ``what`` that raised ``e`` (TensorStore's): the
        value cannot be had from this copy, CorruptCheckpointError (a reader with another
        copy reads that one instead). S3Copy names a store that failed instead."""
        return CorruptCheckpointError(f"{what}: {e}")

    # ---- manifest slices (format version 2) ----

    def slice_where(self, rank: int) -> str:
        return f"{self.path} key {layout.slice_key(rank)}"

    def read_slice(self, rank: int) -> bytes | None:
        try:
            result = self._kv.read(layout.slice_key(rank)).result()
        except Exception as e:  # noqa: BLE001 - TensorStore raises ValueError and others
            raise self.read_failed(f"manifest slice of rank {rank} cannot be read from the "
                                   f"capacity tier ({self.slice_where(rank)})", e) from None
        return None if result.state == "missing" else bytes(result.value)

    def slice_ranks(self) -> set[int]:
        """Every saving rank's slice (a drained copy holds them all)."""
        if not self.manifest.sliced:
            return set(range(self.manifest.world_size))
        return set(self.manifest.slices)

    def with_slices(self, ranks=None) -> "CapacityCopy":
        """This copy with the chunk records of the slices of ``ranks`` (None: all)."""
        if not self.manifest.sliced:
            return self
        manifest = layout.load_slices(self.manifest, self.slice_ranks() if ranks is None
                                      else ranks, self.read_slice, self.slice_where)
        return type(self)(self.tier, self.path, manifest, kv=self._kv, index=self._index)

    def where(self, array: ArrayRecord, key: str) -> str:
        return f"{self.path} key {array.path}/{key}"

    def read_ahead(self, wanted) -> None:
        """Look up where the chunks of ``wanted`` ((array, ReadItem) in reading order) lie,
        in one walk of the index, before the restore's readers ask for them."""
        self._index.locate(f"{array.path}/{layout.chunk_key(item.chunk_index)}"
                           for array, item in wanted)

    def _read_key(self, array: ArrayRecord, key: str) -> bytes | None:
        try:
            result = self._kv.read(f"{array.path}/{key}").result()
        except Exception as e:  # noqa: BLE001 - TensorStore raises ValueError and others
            raise self.read_failed(f"array {array.name!r}: chunk {key} cannot be read from "
                                   f"the capacity tier ({self.where(array, key)})", e) from None
        return None if result.state == "missing" else bytes(result.value)

    def read_raw(self, array: ArrayRecord, key: str) -> bytes | None:
        return self._read_key(array, key)

    def read_chunk(self, array: ArrayRecord, key: str) -> bytes:
        data = self._read_key(array, key)
        if data is None:
            raise CheckpointNotFoundError(
                f"array {array.name!r}: chunk {key} is missing from the capacity tier "
                f"({self.where(array, key)})")
        check_chunk(array, key, data, self.where(array, key))
        return data

    def read_into(self, array: ArrayRecord, item: ReadItem, target: np.ndarray) -> int:
        """From where the index says the value is (``read_located``); else, or when that
        read fails, through the kvstore (``_read_into_from_kv``), which decides."""
        key = layout.chunk_key(item.chunk_index)
        where = self.where(array, key)
        located = self._index.get(f"{array.path}/{key}")
        if located is not None:
            try:
                return read_located(located, array, key, item, target, where)
            except (CorruptCheckpointError, OSError):
                pass  # read again below; the kvstore's answer is the one that counts
        return self._read_into_from_kv(array, key, item, target, where)

    def _read_into_from_kv(self, array: ArrayRecord, key: str, item: ReadItem,
                           target: np.ndarray, where: str) -> int:
        """The part of a sub-chunked chunk that ``item`` needs by byte ranges (the inner
        chunks it touches, each checked: base.scatter_inner); anything else whole."""
        ranges = inner_reads(array, item)
        if ranges is not None:
            futures = [self._kv.read(f"{array.path}/{key}", byte_range=slice(o, o + n))
                       for o, n in ranges]
            pieces = []
            for (offset, _), future in zip(ranges, futures):
                try:
                    result = future.result()
                except Exception as e:  # noqa: BLE001 - e.g. a range past the end of the value
                    raise self.read_failed(f"array {array.name!r}: chunk {key} cannot be "
                                           f"read from the capacity tier ({where})", e) from None
                if result.state == "missing":
                    raise CheckpointNotFoundError(
                        f"array {array.name!r}: chunk {key} is missing from the capacity tier "
                        f"({where})")
                pieces.append((offset, result.value))
            return scatter_inner(array, key, pieces, item, target, where)
        data = self._read_key(array, key)
        if data is None:
            raise CheckpointNotFoundError(
                f"array {array.name!r}: chunk {key} is missing from the capacity tier "
                f"({where})")
        return scatter_checked(array, key, data, item, target, where)

    def holds(self, array: ArrayRecord, key: str) -> bool:
        return self._read_key(array, key) is not None

    def expected(self, array: ArrayRecord, key: str) -> bool:
        return True  # a drained copy holds every chunk of the checkpoint

    def metadata_entries(self):
        for key in sorted(k.decode() if isinstance(k, bytes) else k
                          for k in self._kv.list().result()):
            if key == layout.ZARR_JSON or key.endswith("/" + layout.ZARR_JSON):
                yield key, bytes(self._kv.read(key).result().value)

    def structure_problems(self) -> list[tuple[str, str]]:
        """A drained copy reads its parts through links in its head: each must resolve (a
        pool that was not copied along, or moved away from the others, breaks them)."""
        out = []
        for name in sorted(os.listdir(self.path)):
            link = os.path.join(self.path, name)
            if os.path.islink(link) and not os.path.isdir(link):
                out.append((f"part {name} links to {os.readlink(link)}, which does not exist: "
                            "copy or move every pool of the capacity tier together, keeping "
                            "their places relative to each other", link))
        return out
