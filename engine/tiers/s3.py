"""The capacity tier on an S3 bucket (``persistent="s3://BUCKET/PREFIX"``): the POSIX capacity
tier's format (tiers/capacity.py), one OCDBT database per aggregator ("part") merged into a
head database, laid out under one key prefix per step so that no link is needed:

    <prefix>/<run>/step_<S>/manifest.ocdbt, d/...      the head (OCDBT manifest, B-tree nodes)
    <prefix>/<run>/step_<S>/part<A>p000/...            aggregator A's part (its data files)
    <prefix>/<run>/step_<S>/.tierpoint-manifest.json   the tierpoint manifest
    <prefix>/<run>/step_<S>/.tierpoint-commit          the commit marker: written last

The head's entries point into the parts' data files by paths relative to the head, so a stock
TensorStore reads any array with ``{"driver": "zarr3", "kvstore": {"driver": "ocdbt", "base":
{"driver": "s3", "bucket": B, "path": "<prefix>/<run>/step_<S>/", "endpoint": E,
"aws_region": R}, "path": "<array>/"}}``.

Why this design (and not TensorStore's OCDBT straight onto its s3 kvstore): TensorStore
uploads each object in one PUT, without multipart uploads or our retry policy, and an OCDBT
commit on S3 is a read-modify-write of its manifest object per batch. Instead each aggregator
writes its part with TensorStore into a staging directory on its node (the node-local tier,
``staging``), exactly as on a POSIX pool, in batches of one data file (64 MiB; the first
16 MiB, one part, so the server is busy from the start), and uploads the part's files with
boto3's transfer manager (objects over ``s3store.MULTIPART_BYTES`` in parallel multipart
uploads; throttling and 5xx retried with backoff; every part, or the object sent in one
PUT, with its CRC32, which the server checks against the bytes it got and refuses on a
mismatch): each batch's data file goes up the moment its commit ends, on the commit's
thread (they are immutable once committed), while the next batch is read and written; the
part's ``manifest.ocdbt`` last, each object checked by size against the staged file. The objects of a checkpoint grow with the aggregators and the bytes (one per 64 MiB
data file), never with the arrays or the ranks. The merge (``finish``, the coordinator) is
TensorStore's, on the s3 kvstore: it writes only the head's few small objects, never a value
again.

The drain's check (``check_index``, every rank its share) reads the merged head's index (its
manifest and B-tree nodes) from the bucket through a fresh reader, so it is the index a
reader will use; each value it names in a data file this node uploaded is then checked (its
crc32c trailers against the manifest) in the staged file, which holds the object's bytes
(size listed, content checked by the server's CRC32 of each part), instead of one range GET
per trailer (about six per chunk: a 200-array checkpoint's check took 0.3-0.6 s on a loaded
SeaweedFS, now ~0.05 s). Values elsewhere (another node's part) are read from the bucket as
before. So the staged part stays until every rank's check is done (``release``: after the
verify phase, failed or not; a killed drain's staging is removed by the run's next write).

Commit without rename: a step exists exactly when its ``.tierpoint-commit`` object does. It is
PUT last (one PUT is atomic: the object appears whole or not at all), after the manifest
object, after every rank checked its share of the merged index (``check_index``), after every
upload completed and was checked. A reader lists and opens only steps with a marker, so it
never sees a partial checkpoint; a drain killed at any point leaves objects under a step
without a marker (and perhaps unfinished multipart uploads), which the next drain's
``prepare``/``sweep`` and ``tierpoint gc`` remove (objects deleted, uploads aborted).
``retire`` deletes the marker first (the copy is gone at once), then everything under the
step. Concurrent retirers in one process are serialised, exactly one does the work (the
capacity retention runs on the coordinator only; a concurrent ``tierpoint gc`` from another
process may delete the same objects twice, which is harmless).

Reads (``S3Copy``): the capacity tier's copy (tiers/capacity_read.py), its kvstore an OCDBT
over TensorStore's s3 kvstore; every chunk passes the one chunk check (tiers/base.py).
Credentials: see tiers/s3store.py; none is ever written into a spec, message or manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading

from ..errors import CheckpointError
from ..format import layout
from ..format.manifest import Manifest
from ..runtime.faults import inject
from ..options import DRAIN_BATCH_BYTES, DRAIN_DATA_FILE_BYTES
from .capacity import drained_document, merge_databases, verify_capacity, write_part
from .capacity_read import CapacityCopy, NoIndex, ValueIndex, open_ocdbt
from . import s3store
from .s3store import Location, bucket

SENT_SUFFIX = ".uploaded.json"  # beside a staged part: its files that went up whole
# What to do once the server answers again, after a read or the merge failed because it
# did not (s3store's ``tensorstore_error``).
RESTORE_AGAIN = ("then restore again, or restore from the local tier if it still holds the "
                 "step")
DRAIN_AGAIN = "nothing is committed, the local copy is kept and the next drain retries"
_RETIRING: dict[str, threading.Lock] = {}  # step URL -> its retire lock (one per process)
_RETIRING_LOCK = threading.Lock()


class S3Tier:
    """The capacity tier at ``url`` (``s3://BUCKET/PREFIX``). ``staging``: the directory (on
    the node-local tier) where an aggregator writes its part before uploading it; default:
    the system's temporary directory."""

    kind = "s3"

    def __init__(self, url: str, *, staging: str | None = None):
        self.location = Location.parse(url)
        self.root = self.location.url().rstrip("/") or url
        self.pools = [self.root]  # one "pool": the bucket (the drain balances over pools)
        self.staging = staging or os.path.join(
            os.environ.get("TMPDIR", "/tmp"), f"tierpoint-s3-staging-{os.getuid()}")
        self.bucket = bucket(self.location.bucket)
        self._staged: dict[tuple[str, int], set[str]] = {}  # (run, step) -> parts staged here

    def __repr__(self) -> str:
        return f"S3Tier({self.root!r})"

    @classmethod
    def copy_at(cls, path: str, manifest: Manifest) -> "S3Copy":
        run_url, _ = path.rstrip("/").rsplit("/", 1)
        tier = cls(run_url.rsplit("/", 1)[0])
        return S3Copy(tier, path.rstrip("/"), manifest)

    @classmethod
    def read_step_file(cls, path: str, name: str) -> bytes:
        """The bytes of object ``name`` of the step at URL ``path`` (FileNotFoundError when
        absent): layout.load_manifest's ``read`` for an s3:// step."""
        where = Location.parse(path.rstrip("/") + "/" + name)
        data = bucket(where.bucket).get(where.prefix)
        if data is None:
            raise FileNotFoundError(f"{path.rstrip('/')}/{name} does not exist")
        return data

    # ---- names ----

    def _run_key(self, run: str) -> str:
        """The key prefix of ``run`` (its name escaped as a local run directory's is)."""
        return self.location.key(layout.escape_component(run)) + "/"

    def _step_key(self, run: str, step: int) -> str:
        return self._run_key(run) + layout.step_dir_name(step) + "/"

    def step_path(self, run: str, step: int) -> str:
        return self.location.url(layout.escape_component(run), layout.step_dir_name(step))

    def _kv_base(self, prefix: str) -> dict:
        return self.bucket.kvstore_spec(prefix)

    def _ocdbt(self, prefix: str) -> dict:
        return {"driver": "ocdbt", "base": self._kv_base(prefix)}

    # ---- reading ----

    def _inventory(self, run: str) -> dict[int, bool]:
        """step -> whether it is committed, for every step with objects under the run."""
        return _inventory(self.bucket, self._run_key(run))

    @classmethod
    def inventory_at(cls, run_url: str) -> dict[int, bool]:
        """step -> whether it is committed, for every step with objects under the run at
        ``run_url`` (``s3://BUCKET/PREFIX/RUN``, the run's name as it is in the keys, so a
        run named by its URL or by ``runs()`` needs no unescaping): the listing ``steps``
        makes, for ``tierpoint.open`` (view/locate.py) and ``markers_at``. A URL naming the
        bucket alone holds no run: {}."""
        where = Location.parse(run_url)
        if not where.prefix:
            return {}
        return _inventory(bucket(where.bucket), where.prefix + "/")

    @classmethod
    def markers_at(cls, run_url: str) -> list[tuple[str, dict]]:
        """(step URL, its commit marker) of every committed step under the run at
        ``run_url`` (``s3://BUCKET/PREFIX/RUN``, the run's name as it is in the keys): what
        ``tierpoint audit verify`` checks the run's S3 audit log against."""
        where = Location.parse(run_url)
        store = bucket(where.bucket)
        prefix = where.prefix + "/"
        out = []
        for step, committed in sorted(cls.inventory_at(run_url).items()):
            if not committed:
                continue
            url = where.url(layout.step_dir_name(step))
            data = store.get(f"{prefix}{layout.step_dir_name(step)}/{layout.COMMIT_FILE}")
            try:
                marker = json.loads(data) if data is not None else None
            except ValueError:
                marker = None
            if isinstance(marker, dict):
                out.append((url, marker))
        return out

    def step_names(self, run: str) -> list[int]:
        """Every step with objects under the run (committed or not)."""
        return sorted(self._inventory(run))

    def steps(self, run: str) -> list[int]:
        return sorted(s for s, committed in self._inventory(run).items() if committed)

    def runs(self) -> list[str]:
        """The runs with a key prefix under the tier's prefix."""
        root = self.location.key() + "/" if self.location.prefix else ""
        _, prefixes = self.bucket.list(root, delimiter="/")
        names = (p[len(root):].rstrip("/") for p in prefixes)
        return sorted(n for n in names if n and not n.startswith("."))

    def is_committed(self, run: str, step: int) -> bool:
        return self.bucket.exists(self._step_key(run, step) + layout.COMMIT_FILE)

    def open(self, run: str, step: int, *, ranks=None) -> "S3Copy":
        path = self.step_path(run, step)
        manifest = layout.read_header(path, lambda name: self.read_step_file(path, name))
        return S3Copy(self, path, manifest).with_slices(ranks)

    def check_index(self, run: str, step: int, manifest: Manifest,
                    share: tuple[int, int] = (0, 1), *, full: bool = False,
                    wanted: list | None = None) -> int:
        """``verify_capacity`` of the merged, uncommitted head through a fresh s3 reader:
        the index (its manifest and B-tree nodes) is read from the bucket. A value it places
        in a data file this node uploaded is read from the staged file (``StagedReads``:
        the same bytes, every part checked by the server against its CRC32 as it was
        stored); any other value, and every value with ``full``, through the bucket."""
        head = self._step_key(run, step)
        kv = open_ocdbt(self._ocdbt(head))
        if not full:
            staging = self._step_staging(run, step)
            sent = staged_uploads(staging)
            if sent:
                kv = StagedReads(kv, ValueIndex(staging, base=self._kv_base(head)), staging,
                                 sent)
        return verify_capacity(self.step_path(run, step), manifest, share, full=full,
                               wanted=wanted, kv=kv)

    # ---- the bucket ----

    def check_pools(self) -> None:
        """A clear error (naming endpoint and bucket) unless the bucket answers."""
        self.bucket.check(self.location.key() + "/")

    def pool_identities(self) -> list:
        return []  # a bucket cannot be swapped under a drain the way a mount can

    def check_pools_unchanged(self, before: list) -> None:
        self.check_pools()

    def free_bytes(self) -> int:
        """An object store reports no free space: effectively unbounded."""
        return 1 << 62

    def audit_dir(self, run: str) -> str | None:
        """Where the run's audit log lives: the run's URL; its records are objects under
        ``<run>/audit/`` (trust/s3audit.py: objects cannot be appended to)."""
        return self.location.url(layout.escape_component(run))

    # ---- writing ----

    def prepare(self, run: str, step: int) -> None:
        self.check_pools()
        self.remove_uncommitted(run, step)

    def _step_staging(self, run: str, step: int) -> str:
        return os.path.join(self.staging, layout.escape_component(run),
                            layout.step_dir_name(step))

    def write(self, run: str, step: int, writer: int, entries, *, pool_of=None,
              progress=None, batch_bytes: int = DRAIN_BATCH_BYTES) -> list[dict]:
        """Write ``entries`` as writer ``writer``'s one part: staged as an OCDBT database on
        this node, uploaded as it is written (the module docstring). The staged part stays
        (for ``check_index``) until ``release``. ``pool_of`` is ignored (one bucket).
        Returns [{"name", "path", "bytes"}]."""
        name = layout.capacity_part_name(writer, 0)
        step_staging = self._step_staging(run, step)
        run_staging = os.path.dirname(step_staging)
        # What earlier drains of the run left (one drain of a run at a time: any other
        # step's staging is stale); this step's other writers' parts are theirs.
        for other in _listdir(run_staging):
            if other != layout.step_dir_name(step):
                shutil.rmtree(os.path.join(run_staging, other), ignore_errors=True)
        local = os.path.join(step_staging, name)
        record = local + SENT_SUFFIX
        if os.path.exists(record):
            os.unlink(record)  # an earlier attempt's: its files are replaced now
        self._staged.setdefault((run, step), set()).add(local)
        prefix = self._step_key(run, step) + name + "/"
        # Batches of one data file (a batch ends with the entry that reaches its size, so
        # the file may be a chunk larger: room for twice that, never a small file holding
        # the overflow): each goes up as soon as it is committed, so the upload starts after
        # the first batch, not after the first two 128 MiB batches; the first batch is one
        # part (16 MiB), so the server is busy from the first 16 MiB read on.
        batch = min(batch_bytes, DRAIN_DATA_FILE_BYTES)
        with PartUpload(self.bucket, local, prefix, step=step, rank=writer) as upload:
            total = write_part(local, entries, progress=progress, batch_bytes=batch,
                               data_file_bytes=2 * batch, committed=upload.send_finished,
                               first_batch_bytes=min(batch, s3store.MULTIPART_BYTES))
            upload.finish()
        # What went up whole, for this node's ranks' ``check_index`` (written last, so a
        # record is only ever beside files that were all uploaded and checked).
        sent = {f"{name}/{relative.replace(os.sep, '/')}": size
                for relative, size in upload.sent.items()}
        with open(record + ".tmp", "w") as f:
            json.dump(sent, f)
        os.replace(record + ".tmp", record)
        return [{"name": name, "path": self.location.url(prefix), "bytes": total}]

    def release(self, run: str, step: int) -> None:
        """Remove the parts this process staged for ``step`` (every rank, once every rank's
        ``check_index`` is done, committed or not; what a killed drain leaves, the run's next
        ``write`` removes)."""
        for local in self._staged.pop((run, step), set()):
            shutil.rmtree(local, ignore_errors=True)
            try:
                os.unlink(local + SENT_SUFFIX)
            except FileNotFoundError:
                pass
        step_staging = self._step_staging(run, step)
        for directory in (step_staging, os.path.dirname(step_staging)):
            try:
                os.rmdir(directory)  # only once empty: other writers may still stage here
            except OSError:
                pass

    def finish(self, run: str, step: int, written: list[dict]) -> None:
        """Merge every writer's part into the head (the coordinator, after all writes); the
        store failing (TensorStore's retries spent) is a CheckpointError naming it."""
        head = self._step_key(run, step)
        try:
            merge_databases(self._ocdbt(head),
                            [self._ocdbt(head + p["name"] + "/") for p in
                             sorted(written, key=lambda p: p["name"])])
        except Exception as e:  # noqa: BLE001 - TensorStore raises ValueError and others
            failed = self.bucket.tensorstore_error("merge", head, e, then=DRAIN_AGAIN)
            if failed is None:
                raise
            raise failed from None

    def commit(self, run: str, step: int, manifest, *, domain: int | None = None,
               rank: int = -1, audit: dict | None = None) -> str:
        """The manifest object, then the marker object (last), holding its SHA-256 (and
        ``audit``, the audit log's head at the commit)."""
        head = self._step_key(run, step)
        # The parts whole on the bucket (their OCDBT manifest is uploaded last), from the
        # objects: some servers list prefixes that have no objects left.
        parts = sorted(o["Key"][len(head):].split("/", 1)[0] for o in self.bucket.list(head)[0]
                       if o["Key"].endswith("/manifest.ocdbt") and
                       o["Key"][len(head):].startswith("part"))
        document = drained_document(manifest, self.kind, parts)
        data = layout.manifest_bytes(document)
        self.bucket.put(head + layout.MANIFEST_FILE, data)
        digest = hashlib.sha256(data).hexdigest()
        inject("drain-commit", rank=rank, step=step)
        self.bucket.put(head + layout.COMMIT_FILE, layout.commit_marker(
            step, digest, document.get("digest", ""),
            format_version=document.get("format_version", layout.FORMAT_VERSION),
            audit=audit))
        self.release(run, step)  # committed: nothing staged here is needed any longer
        return digest

    # ---- removing ----

    def remove_uncommitted(self, run: str, step: int) -> bool:
        """Remove what an interrupted drain or deletion left of ``step`` (objects and
        unfinished multipart uploads); a committed step is kept. Returns whether anything
        was there."""
        if self.is_committed(run, step):
            return False
        prefix = self._step_key(run, step)
        leftovers = bool(self.bucket.uploads(prefix)) or bool(self.bucket.list(prefix)[0])
        self.bucket.remove_prefix(prefix)
        return leftovers

    def uncommitted_steps(self, run: str) -> list[int]:
        """Steps with objects or unfinished multipart uploads under them but no marker:
        interrupted drains (a drain killed mid-upload may leave only an upload), or
        deletions cut short after the marker went."""
        run_prefix = self._run_key(run)
        found = _inventory(self.bucket, run_prefix)
        for key, _ in self.bucket.uploads(run_prefix):
            step = layout.parse_step_dir_name(key[len(run_prefix):].split("/", 1)[0])
            if step is not None:
                found.setdefault(step, False)
        return sorted(s for s, committed in found.items() if not committed)

    def sweep(self, run: str) -> list[int]:
        """Remove every uncommitted step's objects and unfinished multipart uploads."""
        return [s for s in self.uncommitted_steps(run) if self.remove_uncommitted(run, s)]

    def retire(self, run: str, step: int, *, rank: int = -1) -> bool:
        """Delete a committed copy: the marker first (it stops being a checkpoint at once),
        then every object under the step. Of concurrent retirers in this process exactly one
        removes the marker and returns True."""
        url = self.step_path(run, step)
        with _RETIRING_LOCK:
            lock = _RETIRING.setdefault(url, threading.Lock())
        marker = self._step_key(run, step) + layout.COMMIT_FILE
        with lock:
            if not self.bucket.exists(marker):
                return False
            self.bucket.delete([marker])
        inject("capacity-retire", rank=rank, step=step)
        self.bucket.remove_prefix(self._step_key(run, step))
        return True


class PartUpload:
    """The upload of one staged part (directory ``local``) to the keys under ``prefix``:
    ``send_finished`` starts the upload of the data files not sent yet (called when no
    commit is in flight: every file then present is complete); ``finish`` sends the rest,
    ``manifest.ocdbt`` last, waits for every upload and checks each object's size against its
    file. Leaving the block with an error cancels what is in flight (boto3 aborts the
    multipart uploads it began; what a killed process leaves, the next sweep aborts)."""

    def __init__(self, store, local: str, prefix: str, *, step: int, rank: int):
        self.store, self.local, self.prefix = store, local, prefix
        self.step, self.rank = step, rank
        self.sent: dict[str, int] = {}  # relative path -> size
        self._futures = []
        self._manager = None

    def __enter__(self) -> "PartUpload":
        self._manager = self.store.uploader()
        self._faults = _upload_faults(self.rank, self.step)
        return self

    def __exit__(self, kind, error, tb) -> None:
        if error is not None:
            for future in self._futures:
                future.cancel()
        self._manager.shutdown(cancel=error is not None)

    def _files(self) -> list[str]:
        out = []
        for base, _, files in os.walk(self.local):
            out += [os.path.relpath(os.path.join(base, f), self.local) for f in files]
        return sorted(out)

    def _send(self, relative: str) -> None:
        path = os.path.join(self.local, relative)
        self.sent[relative] = os.path.getsize(path)
        # CRC32 of every part (or of the object, sent in one PUT): the server checks it
        # against the bytes it received and refuses a mismatch (BadDigest).
        self._futures.append(self._manager.upload(path, self.store.name,
                                                  self.prefix + relative.replace(os.sep, "/"),
                                                  extra_args={"ChecksumAlgorithm": "CRC32"},
                                                  subscribers=[self._faults]))

    def send_finished(self) -> None:
        for relative in self._files():
            if relative != "manifest.ocdbt" and relative not in self.sent:
                self._send(relative)

    def finish(self) -> None:
        self.send_finished()
        self._wait()
        self._send("manifest.ocdbt")  # the part is whole once its manifest is there
        self._wait()
        objects = {o["Key"][len(self.prefix):]: o["Size"]
                   for o in self.store.list(self.prefix)[0]}
        for relative, size in self.sent.items():
            key = relative.replace(os.sep, "/")
            if objects.get(key) != size:
                raise CheckpointError(
                    f"S3 upload of s3://{self.store.name}/{self.prefix}{key} (endpoint "
                    f"{self.store.endpoint}) left {objects.get(key)} bytes, expected {size}; "
                    "nothing is committed, the next drain copies the step again")

    def _wait(self) -> None:
        for future in self._futures:
            try:
                future.result()
            except Exception as e:  # noqa: BLE001 - botocore's, or the staged file's
                raise self.store.error("upload", future.meta.call_args.key, e) from None
        self._futures = []


class S3Copy(CapacityCopy):
    """One committed checkpoint on the S3 tier: the capacity tier's copy, read through an
    OCDBT kvstore over TensorStore's s3 kvstore (no ``preadv`` index)."""

    def __init__(self, tier: S3Tier, path: str, manifest: Manifest, *, kv=None, index=None):
        if kv is None:
            kv = open_ocdbt(tier._ocdbt(_key_of(path) + "/"))
        super().__init__(tier, path, manifest, kv=kv, index=index or NoIndex())

    def __repr__(self) -> str:
        return f"S3Copy({self.path!r})"

    def read_failed(self, what: str, e: Exception) -> CheckpointError:
        """A read that failed because the store did (no connection, or error answers until
        TensorStore's retries, ``s3store.TS_RETRIES``, were spent) is that store's error,
        naming the endpoint and the bucket and what to do (s3store's
        ``tensorstore_error``), not a damaged copy; any other failure is the capacity
        tier's (CorruptCheckpointError)."""
        failed = self.tier.bucket.tensorstore_error("read", _key_of(self.path), e,
                                                    then=RESTORE_AGAIN)
        if failed is None:
            return super().read_failed(what, e)
        return CheckpointError(f"{what}: {failed}")

    def structure_problems(self) -> list[tuple[str, str]]:
        """Every part the manifest lists must be whole (its OCDBT manifest object there)."""
        out = []
        head = _key_of(self.path) + "/"
        for name in self.manifest.tier.get("parts", []):
            key = f"{head}{name}/manifest.ocdbt"
            if not self.tier.bucket.exists(key):
                out.append((f"part {name} of the copy is missing (no {key}): the copy is "
                            "damaged; drain the step again from a local copy",
                            f"s3://{self.tier.bucket.name}/{key}"))
        return out


def staged_uploads(step_staging: str) -> dict[str, int]:
    """Path (relative to the step's head, as its index names data files) -> size, of the
    staged files of a step that this node's writers uploaded whole (their records,
    ``SENT_SUFFIX``, written after the upload's checks)."""
    out: dict[str, int] = {}
    for name in _listdir(step_staging):
        if name.endswith(SENT_SUFFIX):
            try:
                with open(os.path.join(step_staging, name)) as f:
                    out.update(json.load(f))
            except (OSError, ValueError):
                continue  # no record: those values are read from the bucket
    return out


class _Value:
    """A kvstore read's answer as ``verify_capacity`` uses it, already resolved."""

    state = "value"

    def __init__(self, value: bytes):
        self.value = value

    def result(self) -> "_Value":
        return self


class StagedReads:
    """The reads of ``verify_capacity`` on a merged S3 head: where the head's index (read
    from the bucket: ``index``, a ``ValueIndex`` naming data files under ``staging``) puts a
    value in a data file that ``sent`` lists, its bytes are read from that staged file
    (the uploaded object's bytes: its size was checked by listing, its content by the
    server against each part's CRC32); an inline value is the index's own bytes; anything
    else (a key the index lacks, a range outside the value, a file not uploaded from here,
    a failed read) goes through ``kv``, the head over TensorStore's s3 kvstore, which then
    decides."""

    def __init__(self, kv, index, staging: str, sent: dict[str, int]):
        self.kv, self.index, self.staging, self.sent = kv, index, staging, sent

    def read(self, key: str, byte_range: slice | None = None):
        located = self.index.get(key)
        if located is not None:
            try:
                data = self._staged(located, byte_range)
            except OSError:
                data = None
            if data is not None:
                return _Value(data)
        if byte_range is None:
            return self.kv.read(key)
        return self.kv.read(key, byte_range=byte_range)

    def _staged(self, located, byte_range: slice | None) -> bytes | None:
        lo, hi = (0, located.length) if byte_range is None else \
            (byte_range.start, byte_range.stop)
        if not 0 <= lo <= hi <= located.length:
            return None
        if located.inline is not None:
            return bytes(located.inline[lo:hi])
        relative = os.path.relpath(located.path, self.staging).replace(os.sep, "/")
        size = self.sent.get(relative)
        if size is None or located.offset + located.length > size or \
                os.path.getsize(located.path) != size:
            return None
        fd = os.open(located.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, hi - lo, located.offset + lo)
        finally:
            os.close(fd)
        return data if len(data) == hi - lo else None


def _upload_faults(rank: int, step: int):
    """A transfer subscriber whose progress callbacks (in the transfer's threads, as each
    upload's bytes go out; inside a multipart upload, part by part) are the fault point
    ``drain-upload``: a kill there is a kill mid-upload."""
    from s3transfer.subscribers import BaseSubscriber

    class UploadFaults(BaseSubscriber):
        def on_progress(self, future, bytes_transferred, **kwargs):
            inject("drain-upload", rank=rank, step=step)
    return UploadFaults()


def _inventory(store, run_prefix: str) -> dict[int, bool]:
    """step -> whether it is committed, for every step with objects under ``run_prefix`` (a
    run's key prefix, ending in '/'): one listing of the keys under ``<run>/step_`` (pages of
    1,000; a checkpoint has about a dozen objects; the audit log's objects are not listed),
    not a request per step."""
    found: dict[int, bool] = {}
    for o in store.list(run_prefix + "step_")[0]:
        name, _, rest = o["Key"][len(run_prefix):].partition("/")
        step = layout.parse_step_dir_name(name)
        if step is not None:
            found[step] = found.get(step, False) or rest == layout.COMMIT_FILE
    return found


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _key_of(url: str) -> str:
    """The object key (prefix) an s3:// URL names."""
    return Location.parse(url).prefix

