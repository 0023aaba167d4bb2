"""What goes wrong with an S3 capacity tier, against the real SeaweedFS server: an unknown
endpoint, a server down, wrong credentials, a missing bucket and no permission each give a
CheckpointError within seconds that names the endpoint and the bucket and says what to do,
never a secret, and the local copy is kept; the server killed during a background drain of
a 2-rank job warns every rank, the saves go on, and once the server is back the next drain
completes with no multipart upload left behind."""
from __future__ import annotations

import os
import re
import socket
import time

import pytest
import torch

import tierpoint
from tierpoint.tiers import s3store
from tierpoint.tiers.s3 import S3Tier

from mpirun import run_ranks
from s3server import unique_prefix


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# (case, the environment's change, what the message must say)
CASES = {
    "unknown endpoint": ({"AWS_ENDPOINT_URL": "http://no-such-host.invalid:8333"},
                         r"host 'no-such-host\.invalid' is not known.*AWS_ENDPOINT_URL"),
    "server down": ({"AWS_ENDPOINT_URL": "PORT"},
                    r"nothing answers there \(the server is down.*start the server"),
    "wrong secret": ({"AWS_SECRET_ACCESS_KEY": "not-the-secret-Zq8"},
                     r"SignatureDoesNotMatch.*check AWS_SECRET_ACCESS_KEY"),
    "unknown access key": ({"AWS_ACCESS_KEY_ID": "no-such-key-Kx1"},
                           r"InvalidAccessKeyId.*check AWS_ACCESS_KEY_ID"),
    "missing bucket": ({"BUCKET": "no-such-bucket-here"},
                       r"bucket 'no-such-bucket-here' does not exist there; create it"),
    "no permission": ({"READONLY": "1"},
                      r"AccessDenied.*no permission on bucket .*need read, write, list and "
                      "delete"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.filterwarnings("ignore::tierpoint.CheckpointWarning")
def test_each_s3_setting_gone_wrong_is_a_clear_error_within_seconds(s3_env, tmp_path,
                                                                     monkeypatch, case):
    change, message = CASES[case]
    bucket_name = change.get("BUCKET", s3_env.bucket)
    endpoint = s3_env.endpoint
    secrets = [s3_env.secret_key, s3_env.readonly_keys[1], "not-the-secret-Zq8"]
    for name, value in change.items():
        if name == "AWS_ENDPOINT_URL":
            endpoint = value if value != "PORT" else f"http://127.0.0.1:{_free_port()}"
            monkeypatch.setenv(name, endpoint)
        elif name == "READONLY":
            key, secret = s3_env.readonly_keys
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        elif name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    url = f"s3://{bucket_name}/{unique_prefix('bad')}"
    ck = tierpoint.Checkpointer(str(tmp_path / "local"), persistent=url, run="r",
                                policy=tierpoint.Policy(drain_every=100))
    ck.save(1, {"w": torch.arange(1000, dtype=torch.float32)}).wait()  # commits locally
    t0 = time.monotonic()
    with pytest.raises(tierpoint.CheckpointError) as e:
        ck.drain(1)
    took = time.monotonic() - t0
    text = str(e.value)
    assert took < 10, f"{case}: the drain took {took:.1f} s to fail"  # 10 attempts: ~12 s
    assert endpoint in text and bucket_name in text, text
    assert re.search(message, text), text
    assert not any(secret in text for secret in secrets), text
    assert ck.steps() == [1]  # the local copy is kept
    ck.close(drain_newest=False)


def test_the_server_killed_mid_drain_warns_every_rank_and_the_next_drain_completes(
        s3_instance, tmp_path):
    server = s3_instance.server
    url = server.url(unique_prefix("killed"))
    nodes = [(1, {"TIERPOINT_NODE": "n0"}), (1, {"TIERPOINT_NODE": "n1"})]
    # The server dies (SIGKILL) right after the first upload of step 2's drain began.
    env = server.env(TIERPOINT_FAULT="drain-upload:rank=0:step=2:at=1:kind=run",
                     TIERPOINT_FAULT_RUN=f"kill -9 {s3_instance.pid}",
                     AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    t0 = time.monotonic()
    proc = run_ranks(nodes, "s3kill_worker.py", "train", tmp_path, url, env=env)
    took = time.monotonic() - t0
    out = proc.stdout
    assert "S3KILL-OK train" in out, out + proc.stderr
    for rank in (0, 1):
        warned = [line for line in out.splitlines() if line.startswith(f"WARNED {rank} ")]
        assert any("drain of run 'r' step 2" in w and server.endpoint in w and
                   server.bucket in w and "the local checkpoint is kept" in w
                   for w in warned), out
        assert f"STEPS {rank} local [1, 2, 3, 4]" in out, out  # saves went on, copies kept
    assert server.secret_key not in out + proc.stderr
    assert took < 120, f"the job took {took:.0f} s with the server down"
    # The server comes back with what it held: an unfinished multipart upload or objects
    # of step 2, no commit. The next drain removes them and completes.
    s3_instance.start()
    client = server.client()
    prefix = url[len(f"s3://{server.bucket}/"):]
    assert 2 not in S3Tier(url).steps("r")
    left = client.list_multipart_uploads(Bucket=server.bucket, Prefix=prefix).get("Uploads", [])
    print(f"the kill left {len(left)} unfinished multipart uploads")
    if not left:  # the kill fell before one began: what it could have left, made certain
        client.create_multipart_upload(Bucket=server.bucket,
                                       Key=f"{prefix}/r/step_00000002/part00000p000/d/x")
    proc = run_ranks(nodes, "s3kill_worker.py", "drain", tmp_path, url,
                     env=dict(env, TIERPOINT_FAULT=""))
    assert proc.stdout.count("S3KILL-OK drain") == 2, proc.stdout + proc.stderr
    assert 2 in S3Tier(url).steps("r")
    assert client.list_multipart_uploads(Bucket=server.bucket,
                                         Prefix=prefix).get("Uploads", []) == []


# TensorStore 0.1.86's messages (as its s3 kvstore raised them here), a fake secret in the
# answer's body: a message names the object, the endpoint and what to do, never the body.
TS_MESSAGES = {
    "503": ("ABORTED: Error reading \"p/r/step_00000001/manifest.ocdbt\": All 7 retry attempts "
            "failed: SlowDown: injected [http_response_code='503'] [http_response_body='<Error>"
            "<Code>SlowDown</Code><Message>injected Zq8-secret</Message></Error>']",
            r"S3 read of s3://bkt/p/r/step_00000001/manifest\.ocdbt \(endpoint http://127\.0\.0"
            r"\.1:9\) failed after 7 retries: the server answered HTTP 503 \(SlowDown\) to every "
            r"attempt: it is overloaded or failing; see the server's logs.*; THEN$"),
    "refused": ("ABORTED: Error reading \"p/manifest.ocdbt\": All 7 retry attempts failed: CURL "
                "error Could not connect to server: Failed to connect to 127.0.0.1 port 9 after "
                "0 ms: Could not connect to server [curl_code='7']",
                r"s3://bkt/p/manifest\.ocdbt .*failed after 7 retries: the server stopped "
                r"answering \(Could not connect to server: .*\): it is down, or the port is "
                r"wrong; start the server or fix AWS_ENDPOINT_URL .*; THEN$"),
    "unknown host": ("ABORTED: Error reading \"p/manifest.ocdbt\": All 7 retry attempts failed: "
                     "CURL error Could not resolve hostname: Could not resolve host: "
                     "no-such-host.invalid [curl_code='6']",
                     r"the endpoint's host 'no-such-host\.invalid' is not known .*check "
                     r"AWS_ENDPOINT_URL"),
    "wrong secret": ("PERMISSION_DENIED: Error reading \"p/manifest.ocdbt\": SignatureDoesNotMatch: "
                     "The request signature we calculated does not match the signature you "
                     "provided. [http_response_body='<Error><Code>SignatureDoesNotMatch</Code>"
                     "<Message>Zq8-secret</Message></Error>'] [http_response_code='403']",
                     r"failed: HTTP 403 \(SignatureDoesNotMatch\): the secret key is wrong for "
                     r"this access key; check AWS_SECRET_ACCESS_KEY / AWS_PROFILE; THEN$"),
}


@pytest.mark.parametrize("case", sorted(TS_MESSAGES))
def test_a_tensorstore_failure_of_the_store_is_described_without_the_answer(monkeypatch, case):
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://no-such-host.invalid:8333"
                       if case == "unknown host" else "http://127.0.0.1:9")
    message, described = TS_MESSAGES[case]
    error = s3store.Bucket("bkt").tensorstore_error("read", "p/", ValueError(message), "THEN")
    assert isinstance(error, tierpoint.CheckpointError)
    assert re.search(described, str(error)), str(error)
    assert "Zq8-secret" not in str(error)
    # Not the store failing (a value TensorStore could not decode): the caller's error.
    assert s3store.Bucket("bkt").tensorstore_error(
        "read", "p/", ValueError("DATA_LOSS: Error decoding ..."), "THEN") is None
