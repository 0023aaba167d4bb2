"""One S3 bucket and prefix as the S3 tier uses it (tiers/s3.py): a boto3 client configured
from the standard AWS settings, the few object operations the tier needs, each failure turned
into a CheckpointError that names the endpoint and the bucket and says what to do, and the
TensorStore ``s3`` kvstore spec of a key prefix.

Settings come from where every AWS tool reads them, through boto3 itself: the endpoint from
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (or the profile's ``endpoint_url``), the region
from ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (or the profile; us-east-1 when none says), the
credentials from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
``AWS_PROFILE`` and the shared config/credentials files, or an instance role. Addressing is
path-style (local S3 servers have no per-bucket host names) and plain http endpoints work.

Credentials never leave this module: no message, spec, manifest or log line carries them
(messages name the endpoint, the bucket and the key; TensorStore is told to read the same
settings itself, ``kvstore_spec``, never given the secrets). Throttling (503 SlowDown) and
5xx answers are retried with backoff by botocore (``RETRIES``); an endpoint that cannot be
reached at all is given up after ``CONNECT_ATTEMPTS`` attempts, so that a server down or a
wrong endpoint is an error within seconds. TensorStore's own requests (its ``s3`` kvstore:
the merge, the drain's check, a restore's reads) are retried within ``TS_RETRIES`` (about
half a minute), not its default quarter of an hour.
"""
from __future__ import annotations

import os
import re
import socket
import threading
import urllib.parse
from dataclasses import dataclass

from ..errors import CheckpointError, CheckpointNotFoundError

SCHEME = "s3://"
# botocore's "standard" mode retries throttling, 5xx and connection errors with exponential
# backoff and jitter (up to 20 s a wait); 10 attempts ride out throttling and a busy server.
RETRIES = {"mode": "standard", "max_attempts": 10}
# An endpoint nothing answers at (connection refused, an unknown host, no connection within
# CONNECT_TIMEOUT_S) is given up after this many attempts: a server down or a wrong
# endpoint is a clear error within seconds (~3 s of backoff), not minutes of retries; the
# local copy is kept and the next drain tries again.
CONNECT_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 5
# TensorStore's own retries of its S3 requests (the merge on the bucket, the drain's check, a
# restore's reads: context resource ``s3_request_retries``), bounded like botocore's above.
# Its default (32 retries, delays doubling from 1 s to 32 s: ~15 minutes) kept a restore
# against a server gone, or one answering 503 to every request, retrying for a quarter of an
# hour. 7 retries, delays doubling from 0.5 s to 8 s (each plus up to 0.5 s of jitter): at
# most ~35 s of waiting per request, so throttling is still ridden out over half a minute,
# and a dead server is an error in well under a minute. (TensorStore cannot tell a refused
# connection from a throttled request, so there is no quicker bound for a dead endpoint.)
TS_RETRIES = {"max_retries": 7, "initial_delay": "0.5s", "max_delay": "8s"}
MULTIPART_BYTES = 16 << 20  # objects above this go up in parts of this size, in parallel
UPLOAD_THREADS = 8  # concurrent part uploads per aggregator
_DELETE_BATCH = 1000  # S3's limit per DeleteObjects request


def is_url(path) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


@dataclass(frozen=True)
class Location:
    """``s3://bucket/prefix``: the prefix without slashes at either end ('' for the bucket's
    root)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> "Location":
        if not is_url(url):
            raise ValueError(f"not an s3:// URL: {url!r}")
        bucket, _, prefix = url[len(SCHEME):].partition("/")
        if not bucket:
            raise CheckpointError(f"{url!r} names no bucket: write s3://BUCKET/PREFIX")
        return cls(bucket, prefix.strip("/"))

    def key(self, *parts: str) -> str:
        """The object key of ``parts`` under the prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def url(self, *parts: str) -> str:
        return f"{SCHEME}{self.bucket}/{self.key(*parts)}"


class Bucket:
    """A boto3 client for one bucket (thread-safe: boto3 clients are), with the tier's object
    operations. Keys are full object keys (``Location.key``)."""

    _clients: dict = {}  # (settings) -> client: one per process and endpoint
    _lock = threading.Lock()

    def __init__(self, bucket: str):
        import boto3
        from botocore.config import Config

        self.name = bucket
        session = boto3.session.Session()
        self.region = session.region_name or "us-east-1"
        config = Config(retries=dict(RETRIES), s3={"addressing_style": "path"},
                        max_pool_connections=4 * UPLOAD_THREADS,
                        connect_timeout=CONNECT_TIMEOUT_S, read_timeout=120)
        client = session.client("s3", region_name=self.region, config=config)
        # Asked before the standard retry handler (its answer False ends the retries).
        client.meta.events.register_first("needs-retry.s3", _unreachable_ends_retries)
        self.endpoint = client.meta.endpoint_url
        self.client = client

    def __repr__(self) -> str:
        return f"Bucket({self.name!r} at {self.endpoint})"

    @property
    def where(self) -> str:
        return f"bucket {self.name!r} at {self.endpoint}"

    # ---- errors ----

    def error(self, action: str, key: str, e: Exception) -> CheckpointError:
        """A CheckpointError for ``e`` (a botocore error) during ``action`` on ``key``, with
        what to do; no credential is in it (botocore's messages carry none, and the code and
        status are what is named)."""
        from botocore.exceptions import (ClientError, ConnectTimeoutError,
                                         EndpointConnectionError, NoCredentialsError)
        target = f"s3://{self.name}/{key}" if key else f"s3://{self.name}"
        base = f"S3 {action} of {target} (endpoint {self.endpoint}) failed"
        if isinstance(e, NoCredentialsError):
            return CheckpointError(f"{base}: no credentials found; set AWS_ACCESS_KEY_ID and "
                                   "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        if isinstance(e, (EndpointConnectionError, ConnectTimeoutError)):
            host = urllib.parse.urlparse(self.endpoint).hostname or ""
            try:
                socket.getaddrinfo(host, None)
            except OSError:
                return CheckpointError(f"{base}: the endpoint's host {host!r} is not known (no "
                                       "address for it); check AWS_ENDPOINT_URL (or "
                                       "AWS_ENDPOINT_URL_S3, or the profile's endpoint_url)")
            return CheckpointError(f"{base}: nothing answers there (the server is down, or "
                                   "the port is wrong); start the server or fix "
                                   "AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3); the local "
                                   "copy is kept and the next drain retries")
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # A HEAD answer has no body: only its status says what went wrong.
            code = {"404": "NoSuchBucket" if action == "access check" else "NoSuchKey",
                    "403": "AccessDenied"}.get(code, code)
            hint = self._hint(code) or ("see the server's logs; the local copy is kept, so "
                                        "retry the drain")
            return CheckpointError(f"{base}: {code or 'error'} (HTTP {status}): {hint}")
        return CheckpointError(f"{base}: {type(e).__name__}: {e}")

    def _hint(self, code: str) -> str | None:
        """What to do about an answer with S3 error ``code``; None: nothing particular."""
        return {
            "NoSuchBucket": f"bucket {self.name!r} does not exist there; create it or fix "
                            "the persistent= URL",
            "InvalidAccessKeyId": "the access key is not known to the server; check "
                                  "AWS_ACCESS_KEY_ID / AWS_PROFILE",
            "SignatureDoesNotMatch": "the secret key is wrong for this access key; check "
                                     "AWS_SECRET_ACCESS_KEY / AWS_PROFILE",
            "AccessDenied": f"no permission on bucket {self.name!r} (or wrong "
                            "credentials); the credentials need read, write, list and "
                            "delete there",
        }.get(code)

    def tensorstore_error(self, action: str, key: str, e: Exception,
                          then: str) -> CheckpointError | None:
        """A CheckpointError for ``e`` (raised by TensorStore's s3 kvstore, ``kvstore_spec``)
        during ``action`` on ``key`` when it is the store failing: no connection, or error
        answers until TensorStore's retries (``TS_RETRIES``) were spent. It names the endpoint
        and the bucket, what the server did and what to do, ending with ``then`` (how to go
        on: restore again, the next drain retries); None for any other error (a value that
        cannot be decoded: the caller's own error says so). No credential is in it: only
        the object's key, the HTTP status, the S3 error code (the answer's ``<Code>``) and
        curl's error are taken from TensorStore's message, never the rest of the answer."""
        text = str(e)
        curl = re.search(r"CURL error (.*?)\s*\[curl_code='(\d+)'\]", text)
        status = re.search(r"http_response_code='(\d+)'", text)
        if curl is None and status is None:
            return None
        named = re.search(r'Error (?:reading|writing|listing|deleting) "([^"]*)"', text)
        key = named.group(1) if named else key
        tried = re.search(r"All (\d+) retry attempts failed", text)
        base = (f"S3 {action} of s3://{self.name}/{key} (endpoint {self.endpoint}) failed" +
                (f" after {tried.group(1)} retries" if tried else ""))
        if status is None:
            if curl.group(2) == "6":  # CURLE_COULDNT_RESOLVE_HOST
                host = urllib.parse.urlparse(self.endpoint).hostname or ""
                return CheckpointError(f"{base}: the endpoint's host {host!r} is not known (no "
                                       "address for it); check AWS_ENDPOINT_URL (or "
                                       f"AWS_ENDPOINT_URL_S3); {then}")
            return CheckpointError(f"{base}: the server stopped answering ({curl.group(1)}): "
                                   "it is down, or the port is wrong; start the server or "
                                   f"fix AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3); {then}")
        found = re.search(r"<Code>(\w+)</Code>", text)
        code = found.group(1) if found else {"403": "AccessDenied"}.get(status.group(1), "")
        answer = f"HTTP {status.group(1)}" + (f" ({code})" if code else "")
        hint = self._hint(code)
        if hint is not None:
            return CheckpointError(f"{base}: {answer}: {hint}; {then}")
        failing = int(status.group(1)) >= 500 or status.group(1) == "429"
        return CheckpointError(f"{base}: the server answered {answer}" +
                               (" to every attempt" if tried else "") +
                               (": it is overloaded or failing" if failing else "") +
                               "; see the server's logs, and check that AWS_ENDPOINT_URL (or "
                               f"AWS_ENDPOINT_URL_S3) names the right one; {then}")

    def _call(self, action: str, key: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return fn(*args, **kwargs)
        except (BotoCoreError, ClientError) as e:
            raise self.error(action, key, e) from None

    # ---- objects ----

    def check(self, prefix: str = "") -> bool:
        """A clear error unless the bucket exists and these credentials may list it (a
        listing, not a HEAD: its error answer has a body that says which is wrong); returns
        whether any object's key starts with ``prefix``."""
        answer = self._call("access check", prefix, self.client.list_objects_v2,
                            Bucket=self.name, Prefix=prefix, MaxKeys=1)
        return bool(answer.get("KeyCount") or answer.get("Contents"))

    def get(self, key: str) -> bytes | None:
        """The object's bytes, None when there is none."""
        from botocore.exceptions import ClientError
        try:
            return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self.error("read", key, e) from None
        except Exception as e:  # noqa: BLE001 - botocore's connection errors and others
            raise self.error("read", key, e) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError
        try:
            self.client.head_object(Bucket=self.name, Key=key)
            return True
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise self.error("lookup", key, e) from None
        except Exception as e:  # noqa: BLE001
            raise self.error("lookup", key, e) from None

    def put(self, key: str, data: bytes) -> None:
        """One PUT (an object appears whole or not at all)."""
        self._call("write", key, self.client.put_object, Bucket=self.name, Key=key, Body=data)

    def create(self, key: str, data: bytes) -> bool:
        """One PUT that creates the object only if there is none at ``key`` (``If-None-Match:
        *``, which SeaweedFS, MinIO and AWS S3 honour; a server that ignored it would
        overwrite): True when this call created it, False when another writer's object is
        there. A PUT retried after its answer was lost finds its own bytes: True."""
        from botocore.exceptions import ClientError
        try:
            self.client.put_object(Bucket=self.name, Key=key, Body=data, IfNoneMatch="*")
            return True
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 412:  # PreconditionFailed: the key exists
                return self.get(key) == data
            if status == 409:  # ConditionalRequestConflict: a concurrent conditional PUT
                return False
            raise self.error("write", key, e) from None
        except Exception as e:  # noqa: BLE001 - botocore's connection errors and others
            raise self.error("write", key, e) from None

    def list(self, prefix: str, delimiter: str | None = None,
             start_after: str | None = None) -> tuple[list[dict], list[str]]:
        """(objects {"Key", "Size"}, common prefixes) under ``prefix``, every page (keys after
        ``start_after`` only, when given)."""
        objects, prefixes = [], []
        kwargs = {"Bucket": self.name, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if start_after:
            kwargs["StartAfter"] = start_after
        pages = self.client.get_paginator("list_objects_v2").paginate(**kwargs)
        for page in self._call("listing", prefix, list, pages):
            objects += page.get("Contents", [])
            prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        return objects, prefixes

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start:start + _DELETE_BATCH]
            answer = self._call("delete", batch[0], self.client.delete_objects,
                                Bucket=self.name,
                                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            failed = answer.get("Errors") or []
            if failed:
                raise CheckpointError(
                    f"S3 delete of s3://{self.name}/{failed[0].get('Key')} (endpoint "
                    f"{self.endpoint}) failed: {failed[0].get('Code')}; "
                    f"{len(failed)} objects were not deleted, the next sweep retries")

    def uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of every multipart upload begun and not completed or aborted
        under ``prefix``."""
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.name, Prefix=prefix)
        return [(u["Key"], u["UploadId"]) for page in self._call("listing of uploads", prefix,
                                                                   list, pages)
                for u in page.get("Uploads", [])]

    def remove_prefix(self, prefix: str) -> int:
        """Abort every unfinished multipart upload under ``prefix``, then delete every object
        under it (its parts first, then the rest); returns the objects deleted."""
        for key, upload in self.uploads(prefix):
            self._call("abort of an upload", key, self.client.abort_multipart_upload,
                       Bucket=self.name, Key=key, UploadId=upload)
        keys = [o["Key"] for o in self.list(prefix)[0]]
        self.delete(keys)
        return len(keys)

    def uploader(self):
        """A transfer manager for this bucket (boto3's: objects above ``MULTIPART_BYTES`` go
        as multipart uploads, ``UPLOAD_THREADS`` parts at once; a failed upload aborts its
        multipart upload). Use as a context manager; ``upload(path, key)`` returns a
        future."""
        from boto3.s3.transfer import TransferConfig, create_transfer_manager
        config = TransferConfig(multipart_threshold=MULTIPART_BYTES,
                                multipart_chunksize=MULTIPART_BYTES,
                                max_concurrency=UPLOAD_THREADS, use_threads=True)
        return create_transfer_manager(self.client, config)

    # ---- TensorStore ----

    def kvstore_spec(self, prefix: str) -> dict:
        """TensorStore's ``s3`` kvstore for the keys under ``prefix`` (ending in '/'): the
        same endpoint and region as this client, the credentials read by TensorStore from
        the same environment or profile (no secret in the spec); its retries bounded
        (``TS_RETRIES``, a context of the spec's own, so every kvstore opened from it has them
        whatever context it is opened in)."""
        spec = {"driver": "s3", "bucket": self.name, "path": prefix,
                "endpoint": self.endpoint, "aws_region": self.region,
                "context": {"s3_request_retries": dict(TS_RETRIES)}}
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            spec["aws_credentials"] = {"type": "environment"}
        elif os.environ.get("AWS_PROFILE"):
            spec["aws_credentials"] = {"type": "profile", "profile": os.environ["AWS_PROFILE"]}
        return spec


def _unreachable_ends_retries(attempts: int = 1, caught_exception=None, **_):
    """botocore's ``needs-retry`` handler, asked first: False (no more retries) once the
    endpoint could not be reached ``CONNECT_ATTEMPTS`` times for one request; None (the
    standard handler decides: throttling and 5xx retried up to ``RETRIES``) otherwise."""
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError
    if isinstance(caught_exception, (EndpointConnectionError, ConnectTimeoutError)) and \
            attempts >= CONNECT_ATTEMPTS:
        return False
    return None


def bucket(name: str) -> Bucket:
    """The process's client of bucket ``name`` for the current AWS settings (clients are
    made once per bucket, endpoint and region: making one costs ~50 ms)."""
    key = (name, os.environ.get("AWS_ENDPOINT_URL_S3"), os.environ.get("AWS_ENDPOINT_URL"),
           os.environ.get("AWS_REGION"), os.environ.get("AWS_DEFAULT_REGION"),
           os.environ.get("AWS_PROFILE"), os.environ.get("AWS_ACCESS_KEY_ID"),
           hash(os.environ.get("AWS_SECRET_ACCESS_KEY")))
    with Bucket._lock:
        found = Bucket._clients.get(key)
        if found is None:
            found = Bucket._clients[key] = Bucket(name)
        return found


def not_found(url: str, what: str) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(f"{url} is not a committed checkpoint ({what})")
