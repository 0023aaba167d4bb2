"""What goes wrong with an S3 capacity tier, against the real SeaweedFS server: an unknown
endpoint, a server down, wrong credentials, a missing bucket and no permission each give a
CheckpointError within seconds that names the endpoint and the bucket and says what to do,
never a secret, and the local copy is kept; the server killed during a background drain of
a 2-rank job warns every rank, the saves go on, and once the server is back the next drain
completes with no multipart upload left behind. A restore from the bucket alone whose
TensorStore reads fail (a server answering 503 to every one of them, or one killed as the
restore began reading) fails within TensorStore's bounded retries (s3store.TS_RETRIES),
naming the endpoint and the bucket and what to do; the copy is intact once the server is
back."""
from __future__ import annotations

import os
import re
import shutil
import socket
import time

import pytest
import torch

import tierpoint
from tierpoint.tiers import s3store
from tierpoint.tiers.s3 import S3Tier

from mpirun import run_ranks
from s3server import FaultProxy, unique_prefix


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


# TensorStore's retries of one request, as s3store.TS_RETRIES bounds them: 7 retries waiting
# 0.5, 1, 2, 4, 8, 8, 8 s (each plus up to 0.5 s of jitter), at most ~35 s (measured: 33-35 s
# a restore). Its default (32 retries, delays doubling from 1 s to 32 s) took 15 minutes:
# measured once by hand, with its defaults (``TS_RETRIES = {}``), the restore with 503 to
# every TensorStore GET failed after 898 s (33 GETs of the head's manifest.ocdbt), a read
# from a port nothing listens at after 898 s too.
TS_BOUND_S = 60


def _drained_then_local_gone(server, tmp_path, url):
    """Step 1 of run 'r' drained to ``url``, the local tier removed; the state saved."""
    state = {"model": {"w": torch.arange(60 * 70, dtype=torch.float32).reshape(60, 70)},
             "step": 1}
    ck = tierpoint.Checkpointer(str(tmp_path / "local"), persistent=url, run="r",
                                policy=tierpoint.Policy(drain_every=1))
    ck.save(1, state).wait()
    ck.wait()
    assert ck.capacity_steps() == [1]
    ck.close()
    shutil.rmtree(tmp_path / "local")
    return state


def _restore(tmp_path, url):
    ck = tierpoint.Checkpointer(str(tmp_path / "local"), persistent=url, run="r")
    try:
        return ck.restore({"model": {"w": torch.zeros(60, 70)}, "step": 0})
    finally:
        ck.close(drain_newest=False)


def _failed_restore(tmp_path, url) -> tuple[str, float]:
    t0 = time.monotonic()
    with pytest.raises(tierpoint.CheckpointError) as e:
        _restore(tmp_path, url)
    return str(e.value), time.monotonic() - t0


def test_a_restore_whose_tensorstore_reads_get_503_forever_fails_within_the_bound(
        s3_env, tmp_path, monkeypatch):
    """boto3's requests pass (the listing, the header), every TensorStore request is answered
    503 SlowDown: its first read is retried TS_RETRIES times, then the restore fails with an
    error naming the proxy's endpoint and the bucket, the answer and what to do."""
    url = s3_env.url(unique_prefix("ts503"))
    state = _drained_then_local_gone(s3_env, tmp_path, url)

    def throttled(request):
        return (503, "SlowDown") if request.client == "tensorstore" else None
    with FaultProxy(s3_env.endpoint, refuse=throttled) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        text, took = _failed_restore(tmp_path, url)
    print(f"the restore failed in {took:.1f} s: {text}")
    assert took < TS_BOUND_S, f"the restore took {took:.0f} s to fail"
    retries = s3store.TS_RETRIES["max_retries"]
    assert max(r.attempt for r in proxy.refused) == retries + 1, proxy.refused
    assert proxy.endpoint in text and s3_env.bucket in text, text
    assert re.search(rf"failed after {retries} retries: the server answered HTTP 503 "
                     r"\(SlowDown\) to every attempt.*AWS_ENDPOINT_URL.*restore again, or "
                     r"restore from the local tier", text), text
    assert s3_env.secret_key not in text and s3_env.access_key not in text, text
    # Nothing is lost: straight to the server, the same restore is bit-exact.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    assert torch.equal(_restore(tmp_path, url)["model"]["w"], state["model"]["w"])


def test_a_server_killed_as_the_restore_begins_reading_fails_it_within_the_bound(
        s3_instance, tmp_path, monkeypatch):
    """The server is killed (SIGKILL) on TensorStore's first request, after boto3 listed the
    steps and read the header: the proxy dies with it (that request is dropped, every retry
    refused), the restore fails within the bound naming the endpoint and the bucket and
    saying to start the server; once it is back, the restore is bit-exact."""
    server = s3_instance.server
    url = server.url(unique_prefix("tskill"))
    state = _drained_then_local_gone(server, tmp_path, url)
    killed = []

    def kill_on_first_read(request):
        if request.client == "tensorstore" and not killed:
            killed.append(request)
            s3_instance.kill()
    with FaultProxy(server.endpoint, on_request=kill_on_first_read) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        text, took = _failed_restore(tmp_path, url)
    assert killed and killed[0].command == "GET", proxy.requests
    print(f"the restore failed in {took:.1f} s: {text}")
    assert took < TS_BOUND_S, f"the restore took {took:.0f} s to fail"
    assert proxy.endpoint in text and server.bucket in text, text
    retries = s3store.TS_RETRIES["max_retries"]
    assert re.search(rf"failed after {retries} retries: the server stopped answering \(.*\): "
                     r"it is down, or the port is wrong; start the server or fix AWS_ENDPOINT_URL"
                     r".*restore again, or restore from the local tier", text), text
    assert server.secret_key not in text and server.access_key not in text, text
    s3_instance.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    assert torch.equal(_restore(tmp_path, url)["model"]["w"], state["model"]["w"])


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
    "wrong secret": ("PERMISSION_DENIED: Error reading \"p/manifest.ocdbt\": "
                     "SignatureDoesNotMatch: The request signature we calculated does not "
                     "match the signature you provided. [http_response_body='<Error><Code>"
                     "SignatureDoesNotMatch</Code>"
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


@pytest.mark.filterwarnings("ignore::tierpoint.CheckpointWarning")
def test_a_drain_whose_merge_gets_503_forever_fails_within_the_bound_and_keeps_the_copy(
        s3_env, tmp_path, monkeypatch):
    """The parts go up (boto3's requests pass), every TensorStore request of the merge is
    answered 503: the drain fails within the bound, naming the endpoint and the bucket,
    commits nothing and keeps the local copy; the next drain, straight to the server,
    commits."""
    url = s3_env.url(unique_prefix("merge503"))

    def checkpointer():  # the tier's endpoint is the one set when it is made
        return tierpoint.Checkpointer(str(tmp_path / "local"), persistent=url, run="r",
                                      policy=tierpoint.Policy(drain_every=100))
    ck = checkpointer()
    ck.save(1, {"w": torch.arange(1000, dtype=torch.float32)}).wait()
    ck.close(drain_newest=False)

    def throttled(request):
        return (503, "SlowDown") if request.client == "tensorstore" else None
    with FaultProxy(s3_env.endpoint, refuse=throttled) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        ck = checkpointer()
        t0 = time.monotonic()
        with pytest.raises(tierpoint.CheckpointError) as e:
            ck.drain(1)
        took = time.monotonic() - t0
        ck.close(drain_newest=False)
    text = str(e.value)
    print(f"the drain failed in {took:.1f} s: {text}")
    assert proxy.refused, "TensorStore's requests did not go through the proxy"
    assert took < TS_BOUND_S, f"the drain took {took:.0f} s to fail"
    assert proxy.endpoint in text and s3_env.bucket in text, text
    assert re.search(r"S3 merge of .* failed after \d+ retries: the server answered HTTP 503 "
                     r"\(SlowDown\) to every attempt.*the local copy is kept and the next "
                     r"drain retries", text), text
    assert s3_env.secret_key not in text, text
    assert S3Tier(url).steps("r") == []
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    ck = checkpointer()
    assert ck.steps() == [1]  # the local copy is kept
    assert ck.drain(1)["step"] == 1 and S3Tier(url).steps("r") == [1]
    ck.close(drain_newest=False)
