"""The tier contract: one suite every tier implementation runs (as zarr-python's store tests
do), against real files under tmp_path.

Each tier is a ``TierCase`` in ``CASES``: how to make the tier, how to damage one stored
chunk, where its files lie and its fault point inside ``retire``. A new tier (an object
store) inherits every test below by adding one case. Chunk values encode the step and their
position (element k, in C order, of an array is ``10000 * step + k``), so a chunk read into
the wrong place or from the wrong step is caught, and reads are compared bit for bit.

What every tier must do (tiers/base.py's invariants): write through ``prepare``/``write``/
``finish``/``commit`` and list only committed steps; read every chunk back exactly, through
``read_chunk``, ``read_into`` and restore's ``read_array``; open by path through the
registry; pass ``verify``; name a damaged chunk (array, chunk, where) in the read error and
in verify's report; raise CheckpointNotFoundError for a missing step or chunk; never list a
torn (uncommitted) step; sweep what interrupted writes and retires left; let racing
retirers of one step all return without error, exactly one doing the work; report free
space. Every test runs on a checkpoint of format version 3 and 2 (each writer's manifest slice
written beside its chunks, the header committed; 3 shapes the digest's tree by domain) and of
version 1 (one manifest listing every chunk); on versions 2 and 3 a tier also opens a copy by
its header and reads only the slices
asked for, and names a damaged slice.
"""
from __future__ import annotations

import hashlib
import os
import struct
import threading
from dataclasses import dataclass
from typing import Callable

import blake3
import numpy as np
import pytest

import tierpoint
from tierpoint.format import layout, slices
from tierpoint.format.integrity import array_fingerprint, checkpoint_digest, fingerprint_hex
from tierpoint.format.manifest import ArrayRecord
from tierpoint.format.subchunks import inner_shape_of
from tierpoint.format.types import Box
from tierpoint.kernels import crc32c, fingerprint_box
from tierpoint.restore.read import read_array
from tierpoint.restore.reshard import plan_box_read
from tierpoint.tiers import registry
from tierpoint.tiers.base import StepCopy, Tier
from tierpoint.tiers.capacity import CapacityTier
from tierpoint.tiers.local import LocalTier
from tierpoint.tiers.s3 import S3Tier
from tierpoint.trust.verify import verify_checkpoint

from s3server import unique_prefix

RUN = "contract"
ARRAYS = {  # name -> (dtype, shape, chunk shape): edge chunks are padded. Chunk files are
    # larger than OCDBT's inline limit, so the capacity tier keeps them in its data files.
    "model/w": ("float32", (6, 20), (4, 8)),  # a 2 x 3 grid
    "b": ("int64", (30,), (16,)),
    # Chunks over 64 KiB: sub-chunked files in version 4 (inner shape (64, 150)), plain before.
    "big": ("float32", (100, 300), (64, 300)),
}


# ---- the tiers ----------------------------------------------------------------------------

def _flip_file_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _damage_local(tier: LocalTier, copy: StepCopy, array: str, key: str) -> None:
    _flip_file_byte(copy.where(copy.manifest.arrays[array], key), 10)


def _damage_capacity(tier: CapacityTier, copy: StepCopy, array: str, key: str) -> None:
    """Flip a byte of the chunk's value where OCDBT stored it: in a part's data file (the
    values encode their position, so the chunk's bytes occur exactly once)."""
    wanted = chunk_file(copy.step, array, key)
    found = []
    for pool in tier.pools:
        for base, _, files in os.walk(os.path.join(layout.run_dir(pool, RUN), layout.PARTS_DIR)):
            for name in files:
                path = os.path.join(base, name)
                data = open(path, "rb").read()
                at = data.find(wanted)
                if at >= 0:
                    found.append((path, at))
    assert len(found) == 1, found
    _flip_file_byte(found[0][0], found[0][1] + 10)


def _s3_objects(tier: S3Tier, step: int | None = None) -> list[str]:
    """The keys of the objects (and of unfinished multipart uploads) of ``RUN`` (one step)
    on the S3 tier."""
    prefix = tier.location.key(RUN) + "/"
    if step is not None:
        prefix += layout.step_dir_name(step) + "/"
    return sorted([o["Key"] for o in tier.bucket.list(prefix)[0]] +
                  [f"upload:{key}" for key, _ in tier.bucket.uploads(prefix)])


def _s3_flip(tier: S3Tier, step: int, wanted: bytes, offset: int) -> None:
    """Flip a byte of ``wanted`` (bytes that occur once) in whichever object holds them."""
    found = []
    for key in _s3_objects(tier, step):
        data = tier.bucket.get(key)
        at = data.find(wanted) if data is not None else -1
        if at >= 0:
            found.append((key, data, at))
    assert len(found) == 1, [f[0] for f in found]
    key, data, at = found[0]
    data = bytearray(data)
    data[at + offset] ^= 0xFF
    tier.bucket.put(key, bytes(data))


def _damage_s3(tier: S3Tier, copy: StepCopy, array: str, key: str) -> None:
    _s3_flip(tier, copy.step, chunk_file(copy.step, array, key), 10)


def _damage_s3_slice(tier: S3Tier, copy: StepCopy, rank: int) -> None:
    _s3_flip(tier, copy.step, copy.read_slice(rank), 30)


@dataclass
class TierCase:
    name: str
    make: Callable  # tmp_path -> Tier
    damage: Callable  # (tier, copy, array name, chunk key): flip a stored byte of the chunk
    roots: Callable  # tier -> directories holding its files
    retire_fault: str  # the runtime/faults.py point between retire's two halves
    files: Callable | None = None  # (tier, step) -> what it stores of a step, where not files
    server: bool = False  # needs the S3 server (the s3_env fixture)


def _pools(tmp_path):
    pools = [str(tmp_path / "poolA"), str(tmp_path / "poolB")]
    for p in pools:
        os.makedirs(p, exist_ok=True)
    return pools


CASES = [
    TierCase("local", lambda tmp: LocalTier(str(tmp / "local")), _damage_local,
             lambda tier: [tier.root], "retire"),
    TierCase("capacity", lambda tmp: CapacityTier(_pools(tmp)), _damage_capacity,
             lambda tier: tier.pools, "capacity-retire"),
    # A real S3 server (tests/s3server.py), each test under a prefix of its own; the parts
    # are staged under tmp_path.
    TierCase("s3", lambda tmp: S3Tier(f"s3://{_S3['bucket']}/{unique_prefix('contract')}",
                                      staging=str(tmp / "staging")),
             _damage_s3, lambda tier: [], "capacity-retire", files=_s3_objects, server=True),
]
_S3: dict = {}  # the test server's bucket, set by the ``tier`` fixture


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request):
    return request.param


@pytest.fixture
def tier(case, tmp_path, request):
    if case.server:
        _S3["bucket"] = request.getfixturevalue("s3_env").bucket
    return case.make(tmp_path)


# ---- a checkpoint to write ----------------------------------------------------------------

def array_values(step: int, name: str) -> np.ndarray:
    dtype, shape, _ = ARRAYS[name]
    return (10000 * step + np.arange(int(np.prod(shape)))).reshape(shape).astype(dtype)


def _chunk_region(name: str, key: str) -> Box:
    _, shape, chunk = ARRAYS[name]
    index = layout.chunk_index(key)
    offset = tuple(i * c for i, c in zip(index, chunk))
    return Box(offset, tuple(min(c, s - o) for c, s, o in zip(chunk, shape, offset)))


def chunk_keys(name: str) -> list[str]:
    _, shape, chunk = ARRAYS[name]
    grid = [-(-s // c) for s, c in zip(shape, chunk)]
    return [layout.chunk_key(tuple(i)) for i in np.ndindex(*grid)]


def chunk_payload(step: int, name: str, key: str) -> np.ndarray:
    """The chunk's elements padded to the full chunk shape with zeros, as Zarr stores it."""
    dtype, _, chunk = ARRAYS[name]
    box = _chunk_region(name, key)
    out = np.zeros(chunk, dtype=dtype)
    out[Box.whole(box.shape).slices()] = array_values(step, name)[box.slices()]
    return out


def inner_shape(name: str):
    """The inner chunk shape of ``name``'s chunk files in the version under test."""
    dtype, _, chunk = ARRAYS[name]
    return inner_shape_of(FORMAT_VERSION["value"], chunk, dtype)


def chunk_file(step: int, name: str, key: str) -> bytes:
    """A chunk file written here, independently of the engine's writer: the payload and its
    crc32c; sub-chunked (version 4, Zarr sharding_indexed with the index at the end): each
    inner chunk in C order of the inner grid with its crc32c, then the (offset, nbytes)
    index with its crc32c."""
    payload = chunk_payload(step, name, key)
    inner = inner_shape(name)
    if inner is None:
        raw = payload.tobytes()
        return raw + crc32c(raw).to_bytes(4, "little")
    pieces, index = [], []
    grid = [c // i for c, i in zip(payload.shape, inner)]
    for position in np.ndindex(*grid):
        raw = payload[tuple(slice(p * i, (p + 1) * i) for p, i in zip(position, inner))].tobytes()
        index.append(struct.pack("<QQ", sum(map(len, pieces)), len(raw) + 4))
        pieces.append(raw + crc32c(raw).to_bytes(4, "little"))
    entries = b"".join(index)
    return b"".join(pieces) + entries + crc32c(entries).to_bytes(4, "little")


def chunk_crc(name: str, data: bytes) -> int:
    """The manifest's crc32c of a chunk file: its payload's; a sub-chunked file's, over its
    inner chunks' crc32c values."""
    inner = inner_shape(name)
    if inner is None:
        return crc32c(data[:-4])
    _, _, chunk = ARRAYS[name]
    stride = int(np.prod(inner)) * np.dtype(ARRAYS[name][0]).itemsize + 4
    count = int(np.prod([c // i for c, i in zip(chunk, inner)]))
    return crc32c(b"".join(data[(n + 1) * stride - 4:(n + 1) * stride] for n in range(count)))


def manifest_document_v1(step: int) -> dict:
    """The version 1 manifest: every chunk record (writers included) in one document."""
    arrays = {}
    for name, (dtype, shape, chunk) in ARRAYS.items():
        chunks = {}
        for n, key in enumerate(chunk_keys(name)):
            data = chunk_file(step, name, key)
            box = _chunk_region(name, key)
            values = chunk_payload(step, name, key)[Box.whole(box.shape).slices()]
            chunks[key] = {"nbytes": len(data), "crc32c": chunk_crc(name, data)}
            if FORMAT_VERSION["value"] >= 5:  # BLAKE3, named in the value, under "hash"
                chunks[key]["hash"] = "blake3:" + blake3.blake3(data).hexdigest()
            else:
                chunks[key]["sha256"] = hashlib.sha256(data).hexdigest()
            chunks[key].update(fingerprint=fingerprint_hex(fingerprint_box(values, box.offset)),
                               writers=[n % 2])
        arrays[name] = {"name": name, "path": name, "key": name.split("/"), "dtype": dtype,
                        "shape": list(shape), "chunk_shape": list(chunk),
                        "fingerprint": "", "shards": [], "chunks": chunks}
        record = ArrayRecord.from_document(name, arrays[name])
        arrays[name]["fingerprint"] = array_fingerprint(record.chunks)
    ranks = [{"rank": r, "node": "n0", "host": "h0", "pid": 1, "tier_dir": "/nowhere",
              "domain": 0} for r in range(2)]
    return layout.build_manifest(run=RUN, step=step, world_size=2, ranks=ranks, arrays=arrays,
                                 values={"lr": {"value": 0.5}}, metadata={"note": "contract"},
                                 versions={}, digest=checkpoint_digest(
                                     {n: ArrayRecord.from_document(n, a)
                                      for n, a in arrays.items()}))


def slice_documents(step: int) -> list[dict]:
    """Version 2: each writer's slice (chunk n of an array is writer n % 2's)."""
    v1 = manifest_document_v1(step)
    arrays: list[dict] = [{}, {}]
    for name, a in v1["arrays"].items():
        for key, rec in a["chunks"].items():
            arrays[rec["writers"][0]].setdefault(name, {})[key] = {
                f: rec[f] for f in ("nbytes", "crc32c", "hash", "sha256", "fingerprint")
                if f in rec}
    return [slices.slice_document(run=RUN, step=step, rank=w, arrays=arrays[w])
            for w in (0, 1)]


def manifest_document_sliced(step: int, version: int) -> dict:
    """The header of version 3 or 2 (both writers share one node-local directory, so the
    digest's tree is the same: one domain; tests/test_slices.py covers trees of several
    domains): layouts (one box per chunk, held by its writer) and both writers' slice
    entries with their proofs (format/slices.py)."""
    v1 = manifest_document_v1(step)
    ranks = v1["layout"]["ranks"]
    tree = slices.DigestTree.single(2)
    arrays = {}
    for name, a in v1["arrays"].items():
        shards = [{**_chunk_region(name, key).to_json(), "ranks": rec["writers"]}
                  for key, rec in a["chunks"].items()]
        arrays[name] = {f: a[f] for f in ("name", "path", "key", "dtype", "shape",
                                          "chunk_shape")}
        arrays[name]["layout"] = {"shards": shards}
    paths = {n: a["path"] for n, a in arrays.items()}
    digest, entries = slices.seal([slices.entry_of(slices.encode(d), d, paths)
                                   for d in slice_documents(step)], tree)
    document = layout.build_header(run=RUN, step=step, world_size=2, ranks=ranks,
                                   arrays=arrays, groups=[],
                                   slice_entries={r: e.to_document()
                                                  for r, e in enumerate(entries)},
                                   values=v1["values"], metadata=v1["metadata"], versions={},
                                   digest=digest)
    document["format_version"] = version
    return document


FORMAT_VERSION = {"value": 5}  # set per test by the ``version`` fixture


@pytest.fixture(params=[5, 4, 3, 2, 1], ids=lambda v: f"v{v}", autouse=True)
def version(request):
    """Every contract test runs on a checkpoint of each format version: version 5 (what a
    save writes: sub-chunked chunk files, BLAKE3 chunk hashes), 4 (SHA-256), 3, 2 and 1
    (what older tierpoints wrote, still read)."""
    FORMAT_VERSION["value"] = request.param
    yield request.param
    FORMAT_VERSION["value"] = 5


def manifest_document(step: int) -> dict:
    version = FORMAT_VERSION["value"]
    return (manifest_document_v1(step) if version == 1 else
            manifest_document_sliced(step, version))


def metadata_entries(document: dict) -> list[tuple[str, bytes]]:
    out = [(layout.ZARR_JSON, layout.encode_json(layout.zarr_group_metadata(
        {"tierpoint": {"run": RUN, "step": document["step"]}})))]
    out.append(("model/" + layout.ZARR_JSON, layout.encode_json(layout.zarr_group_metadata())))
    for name, a in document["arrays"].items():
        out.append((f"{a['path']}/{layout.ZARR_JSON}", layout.encode_json(
            layout.zarr_array_document(a["dtype"], a["shape"], a["chunk_shape"], a["key"],
                                       document["format_version"]))))
    return out


def write_step(tier: Tier, step: int, *, commit: bool = True) -> dict:
    """Write checkpoint ``step`` as two writers (each its own chunks, writer 0 also the
    metadata) through the generic write path; commit unless told not to."""
    document = manifest_document(step)
    tier.prepare(RUN, step)
    written = []
    for writer in (0, 1):
        entries = metadata_entries(document) if writer == 0 else []
        if FORMAT_VERSION["value"] >= 2:  # each writer's slice, beside its chunks
            entries.append((layout.slice_key(writer),
                            slices.encode(slice_documents(step)[writer])))
        entries += [(f"{name}/{key}", chunk_file(step, name, key)) for name in ARRAYS
                    for n, key in enumerate(chunk_keys(name)) if n % 2 == writer]
        written += tier.write(RUN, step, writer, iter(entries))
    tier.finish(RUN, step, written)
    if commit:
        tier.commit(RUN, step, document, domain=0)
    return document


def files_of_step(case: TierCase, tier: Tier, step: int) -> list[str]:
    if case.files is not None:
        return case.files(tier, step)
    name = layout.step_dir_name(step)
    return [os.path.join(base, f) for root in case.roots(tier)
            for base, dirs, files in os.walk(root) for f in files + dirs
            if name in os.path.join(base, f)]


def read_whole(copies: list, name: str) -> np.ndarray:
    array = copies[0].manifest.arrays[name]
    target = np.full(array.shape, -1, dtype=array.dtype)
    items = plan_box_read(name, array.shape, array.chunk_shape, Box.whole(array.shape))
    read_array(copies, array, items, target, threads=3)
    return target


# ---- the contract -------------------------------------------------------------------------

def test_write_commit_list_read(tier, version):
    assert isinstance(tier, Tier) and tier.steps(RUN) == []
    write_step(tier, 3)
    write_step(tier, 7)
    assert tier.steps(RUN) == [3, 7] and tier.is_committed(RUN, 7)
    copy = tier.open(RUN, 7)
    assert isinstance(copy, StepCopy) and copy.step == 7 and copy.tier.kind == tier.kind
    assert copy.manifest.format_version == version and copy.manifest.complete
    assert copy.slice_ranks() == {0, 1}
    if version >= 2:  # the header alone, then one writer's slice: only its records
        header = tier.open(RUN, 7, ranks=())
        assert header.manifest.loaded == frozenset() and not header.manifest.arrays["b"].chunks
        one = header.with_slices([1])
        assert set(one.manifest.arrays["b"].chunks) == {"c.1"}
    assert copy.manifest.values == {"lr": {"value": 0.5}}
    for name in ARRAYS:
        array = copy.manifest.arrays[name]
        for key in chunk_keys(name):
            assert copy.expected(array, key) and copy.holds(array, key)
            assert copy.read_chunk(array, key) == chunk_file(7, name, key)
        got = read_whole([copy], name)
        assert got.tobytes() == array_values(7, name).tobytes()  # bit for bit
    # A box that cuts through chunks, read into a strided target (not the direct path).
    array = copy.manifest.arrays["model/w"]
    want = Box((1, 3), (4, 6))
    target = np.zeros((4, 12), dtype="float32")[:, ::2]
    items = plan_box_read("model/w", array.shape, array.chunk_shape, want)
    read_array([copy], array, items, target, threads=2)
    assert np.array_equal(target, array_values(7, "model/w")[want.slices()])
    # A column band of the sub-chunked array (version 4: part of each chunk file's inner
    # chunks; earlier versions: plain chunk files).
    big = copy.manifest.arrays["big"]
    assert big.inner_shape == ((64, 150) if version >= 4 else None)
    want = Box((10, 160), (85, 100))
    target = np.zeros(want.shape, dtype="float32")
    read_array([copy], big, plan_box_read("big", big.shape, big.chunk_shape, want), target,
               threads=2)
    assert np.array_equal(target, array_values(7, "big")[want.slices()])


def test_a_copy_lists_its_zarr_metadata(tier):
    document = write_step(tier, 3)
    assert dict(tier.open(RUN, 3).metadata_entries()) == dict(metadata_entries(document))
    assert tier.open(RUN, 3).structure_problems() == []


def test_a_copy_opens_by_path_through_the_registry(tier):
    document = write_step(tier, 2)
    copy = registry.open_copy(tier.step_path(RUN, 2))
    assert type(copy) is type(tier.open(RUN, 2)) and copy.tier.kind == tier.kind
    assert copy.manifest.digest == document["digest"]
    assert read_whole([copy], "b").tobytes() == array_values(2, "b").tobytes()


def test_a_committed_copy_verifies(tier):
    write_step(tier, 4)
    report = verify_checkpoint(tier.step_path(RUN, 4))
    assert report.ok and report.problems == [] and report.tier == tier.kind
    assert report.chunks_checked == report.chunks_total == sum(len(chunk_keys(n)) for n in ARRAYS)


def test_a_damaged_chunk_is_named(case, tier):
    write_step(tier, 5)
    copy = tier.open(RUN, 5)
    array = copy.manifest.arrays["model/w"]
    case.damage(tier, copy, "model/w", "c.0.1")
    where = copy.where(array, "c.0.1")
    with pytest.raises(tierpoint.CorruptCheckpointError) as e:
        copy.read_chunk(array, "c.0.1")
    assert "'model/w'" in str(e.value) and "c.0.1" in str(e.value) and where in str(e.value)
    with pytest.raises(tierpoint.CorruptCheckpointError, match=r"'model/w'.*c\.0\.1"):
        read_whole([tier.open(RUN, 5)], "model/w")
    assert copy.read_chunk(array, "c.0.0") == chunk_file(5, "model/w", "c.0.0")  # the others
    report = verify_checkpoint(tier.step_path(RUN, 5))
    assert report.damaged and not report.ok
    assert {(p["array"], p["chunk"], p["file"]) for p in report.problems} == {
        ("model/w", "c.0.1", where)}


def _damage_local_slice(tier: LocalTier, copy: StepCopy, rank: int) -> None:
    _flip_file_byte(os.path.join(copy.path, layout.slice_key(rank)), 30)


def _damage_capacity_slice(tier: CapacityTier, copy: StepCopy, rank: int) -> None:
    """Flip a byte of the slice where OCDBT stored it (its bytes occur once, in a part)."""
    wanted = copy.read_slice(rank)
    found = []
    for pool in tier.pools:
        for base, _, files in os.walk(os.path.join(layout.run_dir(pool, RUN), layout.PARTS_DIR)):
            for name in files:
                path = os.path.join(base, name)
                at = open(path, "rb").read().find(wanted)
                if at >= 0:
                    found.append((path, at))
    assert len(found) == 1, found
    _flip_file_byte(found[0][0], found[0][1] + 30)


@pytest.mark.parametrize("version", [5, 4, 3, 2], indirect=True, ids=["v5", "v4", "v3", "v2"])  # v1: none
def test_a_damaged_slice_is_named(case, tier, version):
    write_step(tier, 5)
    copy = tier.open(RUN, 5, ranks=())
    where = copy.slice_where(1)
    {"local": _damage_local_slice, "capacity": _damage_capacity_slice,
     "s3": _damage_s3_slice}[case.name](tier, copy, 1)
    with pytest.raises(tierpoint.CorruptCheckpointError) as e:
        tier.open(RUN, 5)
    assert "manifest slice of rank 1" in str(e.value) and where in str(e.value)
    assert tier.open(RUN, 5, ranks=[0]).manifest.loaded == {0}  # the other slice is intact
    report = verify_checkpoint(tier.step_path(RUN, 5))
    assert report.damaged and any(p["file"] == where and "rank 1" in p["problem"]
                                  for p in report.problems), report.problems


def test_a_missing_step_or_chunk_is_not_found(tier):
    with pytest.raises(tierpoint.CheckpointNotFoundError):
        tier.open(RUN, 9)
    with pytest.raises(tierpoint.CheckpointNotFoundError):
        registry.open_copy(tier.step_path(RUN, 9))
    write_step(tier, 1)
    copy = tier.open(RUN, 1)
    array = copy.manifest.arrays["b"]
    ghost = copy.manifest.arrays["model/w"]
    # A record for a chunk the copy does not have (its key is not in the other array).
    import dataclasses
    renamed = dataclasses.replace(ghost, path="absent")
    with pytest.raises(tierpoint.CheckpointNotFoundError, match=r"c\.0\.0"):
        copy.read_chunk(renamed, "c.0.0")
    assert copy.read_raw(renamed, "c.0.0") is None and not copy.holds(renamed, "c.0.0")
    assert copy.read_chunk(array, "c.0") == chunk_file(1, "b", "c.0")


def test_a_torn_step_is_not_listed_and_is_swept(case, tier):
    write_step(tier, 1)
    write_step(tier, 2, commit=False)  # every byte written, the marker never
    assert tier.steps(RUN) == [1] and not tier.is_committed(RUN, 2)
    with pytest.raises(tierpoint.CheckpointNotFoundError):
        tier.open(RUN, 2)
    assert files_of_step(case, tier, 2)
    assert tier.sweep(RUN) == [2]
    assert files_of_step(case, tier, 2) == [] and tier.steps(RUN) == [1]
    assert read_whole([tier.open(RUN, 1)], "model/w").tobytes() == \
        array_values(1, "model/w").tobytes()
    assert tier.sweep(RUN) == []  # nothing left to sweep


def test_a_retire_cut_short_is_swept(case, tier, monkeypatch):
    write_step(tier, 6)
    monkeypatch.setenv("TIERPOINT_FAULT", f"{case.retire_fault}:kind=error")
    with pytest.raises(RuntimeError):
        tier.retire(RUN, 6)
    monkeypatch.delenv("TIERPOINT_FAULT")
    assert tier.steps(RUN) == [] and files_of_step(case, tier, 6)  # gone, files left
    assert tier.sweep(RUN) == [6]
    assert files_of_step(case, tier, 6) == []


def test_a_new_write_replaces_an_interrupted_one(case, tier):
    write_step(tier, 8, commit=False)
    write_step(tier, 8)
    assert tier.steps(RUN) == [8]
    assert read_whole([tier.open(RUN, 8)], "b").tobytes() == array_values(8, "b").tobytes()


def test_concurrent_retires_of_one_step(case, tier):
    write_step(tier, 3)
    write_step(tier, 4)
    barrier = threading.Barrier(6)
    errors, won = [], []

    def retire():
        barrier.wait()
        try:
            won.append(tier.retire(RUN, 3))
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)
    threads = [threading.Thread(target=retire) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(won) == [False] * 5 + [True]  # exactly one did the work
    assert tier.steps(RUN) == [4] and files_of_step(case, tier, 3) == []
    with pytest.raises(tierpoint.CheckpointNotFoundError):
        tier.open(RUN, 3)
    assert tier.retire(RUN, 3) is False  # already gone: nothing to do
    assert read_whole([tier.open(RUN, 4)], "b").tobytes() == array_values(4, "b").tobytes()


def test_free_space_is_reported(tier):
    free = tier.free_bytes()
    assert isinstance(free, int) and free > 0
    if registry.is_url(tier.root):
        return  # an object store: no device to compare with
    root = tier.root if os.path.isdir(tier.root) else os.path.dirname(tier.root)
    st = os.statvfs(root)
    assert free <= st.f_blocks * st.f_frsize * len(getattr(tier, "pools", [tier.root]))


def test_every_tier_is_registered_under_its_kind(tier):
    assert registry.tier_class(tier.kind) is type(tier)


# ---- copies of one checkpoint on several tiers, in preference order -----------------------

def test_a_chunk_falls_through_to_the_next_copy(tmp_path):
    local, capacity = LocalTier(str(tmp_path / "local")), CapacityTier(_pools(tmp_path))
    for t in (local, capacity):
        write_step(t, 2)
    first, second = local.open(RUN, 2), capacity.open(RUN, 2)
    _damage_local(local, first, "model/w", "c.1.2")
    os.unlink(first.where(first.manifest.arrays["model/w"], "c.0.0"))
    with pytest.warns(tierpoint.CheckpointWarning, match=r"'model/w'.*c\.1\.2.*capacity tier"):
        got = read_whole([first, second], "model/w")
    assert got.tobytes() == array_values(2, "model/w").tobytes()
    _damage_capacity(capacity, second, "model/w", "c.1.2")
    with pytest.raises(tierpoint.CorruptCheckpointError, match=r"'model/w'.*c\.1\.2"):
        with pytest.warns(tierpoint.CheckpointWarning):
            read_whole([first, second], "model/w")
    with pytest.raises(tierpoint.CheckpointNotFoundError,
                       match=r"'model/w': chunk c\.0\.0 is missing .*Restore with ranks"):
        read_whole([first], "model/w")


# ---- no tier's mechanics outside its module -----------------------------------------------

ENGINE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine")


def _sources():
    for folder, _, files in os.walk(ENGINE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ENGINE), open(path, encoding="utf-8").read()


def test_only_the_capacity_tier_touches_tensorstore_and_only_the_registry_reads_the_kind():
    import ast
    touching, reading_kind = [], []
    for rel, source in _sources():
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] == "tensorstore" for n in names):
                    touching.append(rel)
            if isinstance(node, ast.Constant) and node.value == "kind" and \
                    not rel.startswith("runtime/"):  # faults.py's own "kind" of a fault
                reading_kind.append(rel)
    # The capacity tier's two modules: its write side and pools, and its read side.
    assert sorted(set(touching)) == [os.path.join("tiers", "capacity.py"),
                                     os.path.join("tiers", "capacity_read.py")]
    # The registry reads a copy's recorded kind; the capacity tier writes it into its copies'
    # manifests (a local copy records none). Nothing else looks at it.
    assert sorted(set(reading_kind)) == [os.path.join("tiers", "capacity.py"),
                                         os.path.join("tiers", "registry.py")]
