"""The S3 capacity tier against a real S3 server (SeaweedFS, tests/s3server.py): drains from
4 ranks as 2 nodes, restore on 3 ranks with the local tiers gone, a stock TensorStore reading
a drained array through its s3 kvstore, capacity retention, clear errors for wrong
credentials and a missing bucket, a drain killed mid-upload, the command line, uploads
pipelined and in parts, and throttling / 5xx answers retried (through a proxy that injects
them). (The tier contract itself, tests/test_tier_contract.py, runs on the S3 tier too.)"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tierpoint
from tierpoint.format import layout
from tierpoint.tiers.s3 import SENT_SUFFIX, S3Tier
from tierpoint.trust.verify import verify_checkpoint

from mpirun import run_ranks
from s3server import FaultProxy, unique_prefix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def objects(server, prefix: str) -> list[dict]:
    client = server.client()
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket,
                                                                 Prefix=prefix):
        out += page.get("Contents", [])
    return out


def uploads(server, prefix: str) -> list[str]:
    answer = server.client().list_multipart_uploads(Bucket=server.bucket, Prefix=prefix)
    return [u["Key"] for u in answer.get("Uploads", [])]


def test_drain_from_two_nodes_then_restore_on_three_ranks_from_s3_alone(s3_env, tmp_path):
    prefix = unique_prefix("mpi")
    env = s3_env.env(TIERS_PERSISTENT=s3_env.url(prefix))
    nodes = [(2, {"TIERPOINT_NODE": "n0"}), (2, {"TIERPOINT_NODE": "n1"})]
    proc = run_ranks(nodes, "tiers_worker.py", "save", tmp_path, env=env)
    assert "TIERS-OK save" in proc.stdout, proc.stdout + proc.stderr
    # Objects of one drained checkpoint: per aggregator (2 nodes) one part (its OCDBT manifest
    # and data file), the head's OCDBT manifest and B-tree node(s), our manifest and marker;
    # independent of the arrays and ranks. No upload is left unfinished.
    for step in (5, 10):
        keys = [o["Key"] for o in objects(s3_env, f"{prefix}/t/{layout.step_dir_name(step)}/")]
        parts = {k.split("/")[3] for k in keys if k.split("/")[3].startswith("part")}
        assert parts == {"part00000p000", "part00001p000"}, keys
        assert len(keys) <= 2 * 3 + 6, keys
        assert any(k.endswith(layout.COMMIT_FILE) for k in keys)
    assert uploads(s3_env, prefix) == []
    # The staging on the node-local tiers is gone once uploaded.
    for node in ("n0", "n1"):
        staging = tmp_path / "local" / node / layout.STAGING_DIR
        assert not staging.exists() or not any(staging.rglob("*.ocdbt")), list(staging.rglob("*"))
    # Node loss: the local tiers are gone; 3 ranks restore steps 10 and 5 from S3 alone.
    shutil.rmtree(tmp_path / "local")
    proc = run_ranks(3, "tiers_worker.py", "restore", tmp_path, env=env)
    assert "TIERS-OK restore" in proc.stdout, proc.stdout + proc.stderr


def _save_and_drain(s3_env, tmp_path, url, steps=(1,), run="r", **policy):
    import torch
    ck = tierpoint.Checkpointer(str(tmp_path / "local"), persistent=url, run=run,
                                policy=tierpoint.Policy(drain_every=1, **policy))
    for step in steps:
        w = torch.arange(60 * 70, dtype=torch.float32).reshape(60, 70) + step
        ck.save(step, {"model": {"w": w}, "step": step}).wait()
    ck.wait()
    return ck


def test_stock_tensorstore_reads_a_drained_array_over_s3(s3_env, tmp_path):
    import tensorstore as ts
    url = s3_env.url(unique_prefix("stock"))
    ck = _save_and_drain(s3_env, tmp_path, url)
    assert ck.capacity_steps() == [1]
    ck.close()
    step = S3Tier(url).step_path("r", 1)
    prefix = step[len(f"s3://{s3_env.bucket}/"):] + "/"
    # What the README shows: zarr3 over ocdbt over the s3 kvstore, nothing of tierpoint.
    spec = {"driver": "zarr3", "kvstore": {
        "driver": "ocdbt", "path": "model/w/",
        "base": {"driver": "s3", "bucket": s3_env.bucket, "path": prefix,
                 "endpoint": s3_env.endpoint, "aws_region": s3_env.region}}}
    got = ts.open(spec, open=True).result().read().result()
    want = np.arange(60 * 70, dtype=np.float32).reshape(60, 70) + 1
    assert got.dtype == np.float32 and np.array_equal(got, want)
    # verify / inspect read the s3 copy by its URL.
    report = verify_checkpoint(step)
    assert report.ok and report.tier == "s3", report.problems


def test_a_run_whose_name_is_escaped_drains_to_s3_and_restores_from_there(s3_env, tmp_path):
    import torch
    url = s3_env.url(unique_prefix("escaped"))
    ck = _save_and_drain(s3_env, tmp_path, url, run="q v2")
    assert ck.capacity_steps() == [1]
    ck.close()
    shutil.rmtree(tmp_path / "local")
    out = tierpoint.Checkpointer(str(tmp_path / "local"), persistent=url, run="q v2").restore(
        {"model": {"w": torch.zeros(60, 70)}, "step": 0})
    assert torch.equal(out["model"]["w"],
                       torch.arange(60 * 70, dtype=torch.float32).reshape(60, 70) + 1)


def test_capacity_retention_deletes_old_copies_on_s3(s3_env, tmp_path):
    url = s3_env.url(unique_prefix("keep"))
    ck = _save_and_drain(s3_env, tmp_path, url, steps=(1, 2, 3), keep_persistent=1)
    assert ck.capacity_steps() == [3]
    ck.close()
    assert S3Tier(url).steps("r") == [3]
    prefix = url[len(f"s3://{s3_env.bucket}/"):]
    left = {o["Key"].split("/")[2] for o in objects(s3_env, prefix + "/r/")}
    # Nothing of steps 1 and 2 is left (beside the run's audit log).
    assert left == {layout.step_dir_name(3), "audit"}, left


@pytest.mark.filterwarnings("ignore::tierpoint.CheckpointWarning")
def test_wrong_credentials_and_missing_bucket_are_named_without_the_secret(s3_env, tmp_path,
                                                                           monkeypatch):
    url = s3_env.url(unique_prefix("err"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-Zq8")
    with pytest.raises(tierpoint.CheckpointError) as e:
        S3Tier(url).check_pools()
    text = str(e.value)
    assert s3_env.endpoint in text and s3_env.bucket in text and "SignatureDoesNotMatch" in text
    assert "not-the-secret-Zq8" not in text and s3_env.secret_key not in text
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    missing = "s3://no-such-bucket-here/x"
    with pytest.raises(tierpoint.CheckpointError, match=r"no-such-bucket-here.*" +
                       s3_env.endpoint.replace(".", r"\.") + r".*does not exist"):
        S3Tier(missing).check_pools()
    # Through the Checkpointer: the save commits locally and warns that its drain cannot
    # start; a drain fails with that error; the local copy stays.
    import torch
    ck = tierpoint.Checkpointer(str(tmp_path / "local"), persistent=missing, run="r")
    ck.save(1, {"w": torch.ones(3)}).wait()  # commits; its drain scheduling warns (its thread)
    with pytest.raises(tierpoint.CheckpointError, match="no-such-bucket-here") as e:
        ck.drain(1)
    assert s3_env.secret_key not in str(e.value)
    assert ck.steps() == [1]
    # A restore reads the local copy, warning that the capacity tier cannot be listed.
    with pytest.warns(tierpoint.CheckpointWarning, match="no-such-bucket-here.*local tier only"):
        out = ck.restore({"w": torch.zeros(3)})
    assert torch.equal(out["w"], torch.ones(3))
    ck.close(drain_newest=False)


KILLED_DRAIN = """
import sys, torch, tierpoint
ck = tierpoint.Checkpointer(sys.argv[1], persistent=sys.argv[2], run="r")
if sys.argv[3] == "save":
    w = torch.arange(6 << 20, dtype=torch.float32)  # 24 MiB: a multipart upload
    ck.save(1, {"w": w}).wait()
    ck.close(drain_newest=False)
else:
    print("DRAINED", ck.drain(1)["step"], ck.capacity_steps())
    ck.close(drain_newest=False)
"""


def test_a_drain_killed_mid_upload_leaves_nothing_committed_and_the_next_completes(
        s3_env, tmp_path):
    url = s3_env.url(unique_prefix("kill"))
    local = str(tmp_path / "local")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".pkg") + os.pathsep +
               os.environ.get("PYTHONPATH", ""))

    def run(mode, **extra):
        return subprocess.run([sys.executable, "-c", KILLED_DRAIN, local, url, mode],
                              env=dict(env, **extra), capture_output=True, text=True,
                              timeout=300)
    assert run("save").returncode == 0
    killed = run("drain", TIERPOINT_FAULT="drain-upload:kind=kill:at=1")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    tier = S3Tier(url)
    assert tier.steps("r") == [] and not tier.is_committed("r", 1)
    # What a kill can leave besides objects: a multipart upload begun and never completed.
    client = s3_env.client()
    orphan = f"{url[len(f's3://{s3_env.bucket}/'):]}/r/{layout.step_dir_name(1)}/part00000p000/d/x"
    client.create_multipart_upload(Bucket=s3_env.bucket, Key=orphan)
    assert uploads(s3_env, orphan)
    done = run("drain")
    assert done.returncode == 0 and "DRAINED 1 [1]" in done.stdout, done.stdout + done.stderr
    prefix = url[len(f"s3://{s3_env.bucket}/"):]
    assert uploads(s3_env, prefix) == []
    assert not any(o["Key"] == orphan for o in objects(s3_env, prefix))
    report = verify_checkpoint(tier.step_path("r", 1))
    assert report.ok, report.problems


def test_the_command_line_lists_inspects_verifies_and_sweeps_an_s3_tier(s3_env, tmp_path,
                                                                         capsys):
    from tierpoint import cli
    url = s3_env.url(unique_prefix("cli"))
    _save_and_drain(s3_env, tmp_path, url, steps=(1, 2)).close()
    step = S3Tier(url).step_path("r", 2)
    local = str(tmp_path / "local")
    capsys.readouterr()
    assert cli.main(["ls", local, "--persistent", url]) == 0
    listed = capsys.readouterr().out
    assert "local,capacity" in listed and " 2 " in listed, listed
    assert cli.main(["info", step, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == step and info["tier"] == "s3" and info["step"] == 2
    assert info["arrays"]["model/w"]["shape"] == [60, 70]
    assert cli.main(["verify", step]) == 0
    assert "OK" in capsys.readouterr().out.upper()
    # A drain cut short: objects without a marker; gc removes them (and keeps step 2).
    tier = S3Tier(url)
    tier.bucket.put(tier._step_key("r", 7) + "part00000p000/d/x", b"left over")
    assert cli.main(["gc", "--local", local, "--persistent", url]) == 0
    out = capsys.readouterr().out
    assert "r step 7: removed an interrupted drain or deletion" in out, out
    assert tier.steps("r") == [1, 2] and tier.bucket.list(tier._step_key("r", 7))[0] == []
    # `tierpoint drain` takes the newest local step to S3 (the job did not drain it).
    import torch
    ck = tierpoint.Checkpointer(local, persistent=url, run="r",
                                policy=tierpoint.Policy(drain_every=100))
    ck.save(3, {"model": {"w": torch.zeros(60, 70)}, "step": 3}).wait()
    ck.close(drain_newest=False)
    assert cli.main(["drain", "--local", local, "--persistent", url, "--run", "r"]) == 0
    assert "drained r step 3" in capsys.readouterr().out
    assert tier.steps("r") == [1, 2, 3]


def test_a_part_is_uploaded_while_it_is_written_large_objects_in_parts(s3_env, tmp_path,
                                                                        monkeypatch):
    from tierpoint.tiers import s3store
    monkeypatch.setattr(s3store, "MULTIPART_BYTES", 5 << 20)  # S3's smallest part size
    tier = S3Tier(s3_env.url(unique_prefix("mp")), staging=str(tmp_path / "staging"))
    chunks = [(f"a/c.{n}", bytes([n]) * (6 << 20) + n.to_bytes(4, "little")) for n in range(3)]
    yielded, started = [], []
    real = tier.bucket.uploader

    def uploader():
        manager = real()
        upload = manager.upload

        def recorded(path, bucket, key, **kwargs):
            started.append((key, len(yielded)))
            return upload(path, bucket, key, **kwargs)
        manager.upload = recorded
        return manager
    monkeypatch.setattr(tier.bucket, "uploader", uploader)

    def entries():
        for entry in chunks:
            yielded.append(entry[0])
            yield entry
    tier.prepare("r", 1)
    written = tier.write("r", 1, 0, entries(), batch_bytes=6 << 20)  # a commit per chunk
    assert written[0]["bytes"] == sum(len(d) for _, d in chunks)
    # Data files of committed batches went up while later chunks were still being read.
    assert any(n < len(chunks) for _, n in started), started
    assert started[-1][0].endswith("/manifest.ocdbt")  # the part's manifest last
    head = tier._step_key("r", 1)
    sizes = {o["Key"]: o for o in tier.bucket.list(head)[0]}
    big = [k for k, o in sizes.items() if o["Size"] > (5 << 20)]
    assert len(big) >= 3, sizes
    for key in big:  # a multipart upload's ETag is "<md5 of the parts' md5s>-<parts>"
        assert sizes[key]["ETag"].strip('"').endswith("-2"), sizes[key]
    # The staged part stays for the drain's check, beside the record of the files that went
    # up whole (every data file and the part's manifest, at their sizes), until released.
    step_staging = tmp_path / "staging" / "r" / layout.step_dir_name(1)
    sent = json.loads((step_staging / ("part00000p000" + SENT_SUFFIX)).read_text())
    assert {f"{head}{k}": v for k, v in sent.items()} == {
        k: o["Size"] for k, o in sizes.items()}, (sent, sizes)
    # The part reads back through the merged head, every byte.
    tier.finish("r", 1, written)
    from tierpoint.tiers.capacity_read import open_ocdbt
    kv = open_ocdbt(tier._ocdbt(head))
    for key, data in chunks:
        assert kv.read(key).result().value == data
    tier.release("r", 1)
    assert not (tmp_path / "staging" / "r").exists()  # the staging is gone


def _drained_twice_state(tmp_path, url):
    """A Checkpointer on ``url`` (no background drains) with step 1 saved: one array whose
    chunk files go up in a multipart upload (over 5 MiB at the test's part size), one
    small."""
    import torch
    ck = tierpoint.Checkpointer(str(tmp_path / "local"), persistent=url, run="r",
                                policy=tierpoint.Policy(drain_every=None))
    state = {"w": torch.arange(3 << 20, dtype=torch.float32), "b": torch.ones(1000)}
    ck.save(1, state).wait()
    return ck, state


def _staging_of(tmp_path):
    return tmp_path / "local" / layout.STAGING_DIR / "r"


def test_the_drain_check_reads_the_index_from_the_bucket_and_uploaded_bytes_from_staging(
        s3_env, tmp_path, monkeypatch):
    """The drain's check walks the merged head's index as the bucket holds it and reads each
    value's trailer from the staged file that went up (the server checked those bytes
    against each part's CRC32 as it stored them): staged files zeroed after their upload
    fail the check; without the record of what went up, the same check reads the bucket
    and passes; a head whose index object is gone from the bucket fails. A failed check
    commits nothing, keeps the local copy and removes the staging."""
    from tierpoint.errors import CheckpointError
    url = s3_env.url(unique_prefix("check"))
    ck, state = _drained_twice_state(tmp_path, url)
    real, damage = S3Tier.finish, {}

    def finish(self, run, step, written):
        real(self, run, step, written)
        staging = _staging_of(tmp_path) / layout.step_dir_name(step)
        if damage["what"].startswith("staged"):
            files = list(staging.glob("part*/d/*"))
            assert files, list(staging.rglob("*"))
            for f in files:
                f.write_bytes(bytes(f.stat().st_size))
        if damage["what"] == "staged, no record":
            for f in staging.glob("*" + SENT_SUFFIX):
                f.unlink()
        if damage["what"] == "index":
            self.bucket.delete([self._step_key(run, step) + "manifest.ocdbt"])
    monkeypatch.setattr(S3Tier, "finish", finish)
    tier = S3Tier(url)
    for what, error in (("staged", "fails its crc32c check"),
                        ("index", "missing from the capacity copy")):
        damage["what"] = what
        with pytest.raises(CheckpointError, match=error):
            ck.drain(1)
        assert tier.steps("r") == [] and ck.steps() == [1], what
        assert not _staging_of(tmp_path).exists(), list(_staging_of(tmp_path).rglob("*"))
    damage["what"] = "staged, no record"
    assert ck.drain(1)["step"] == 1 and tier.steps("r") == [1]
    assert not _staging_of(tmp_path).exists()
    ck.close(drain_newest=False)
    shutil.rmtree(tmp_path / "local")
    import torch
    restored = tierpoint.Checkpointer(str(tmp_path / "local"), persistent=url, run="r").restore(
        {name: torch.zeros_like(value) for name, value in state.items()}, 1)
    for name, value in state.items():
        assert torch.equal(restored[name], value), name


def test_a_part_damaged_on_the_way_is_refused_and_no_upload_is_left(s3_env, tmp_path,
                                                                     monkeypatch):
    """Bytes of one part changed after botocore computed its CRC32 (between the staged
    file and the server) are refused by the server (BadDigest): the drain fails with an
    error naming the object, commits nothing, leaves no unfinished multipart upload and
    keeps the local copy; the next drain completes."""
    from tierpoint.errors import CheckpointError
    from tierpoint.tiers import s3store
    monkeypatch.setattr(s3store, "MULTIPART_BYTES", 5 << 20)  # S3's smallest part size
    prefix = unique_prefix("damaged")
    url = s3_env.url(prefix)
    ck, state = _drained_twice_state(tmp_path, url)
    client = s3store.bucket(s3_env.bucket).client
    damaged = []

    def damage(request, **_):
        if "partNumber=2" in request.url and not damaged:
            body = request.body.read()
            request.body = bytes([body[0] ^ 1]) + body[1:]
            damaged.append(request.url)
    client.meta.events.register("before-send.s3.UploadPart", damage)
    try:
        with pytest.raises(CheckpointError, match=r"S3 upload of s3://\S+/part00000p000/d/"
                                                  r"\w+ \(endpoint .*\) failed: BadDigest"):
            ck.drain(1)
    finally:
        client.meta.events.unregister("before-send.s3.UploadPart", damage)
    assert damaged
    tier = S3Tier(url)
    assert tier.steps("r") == [] and ck.steps() == [1]
    assert uploads(s3_env, prefix) == []
    assert ck.drain(1)["step"] == 1 and tier.steps("r") == [1]
    ck.close(drain_newest=False)


def throttling(request) -> tuple[int, str] | None:
    """``FaultProxy``'s refusals: the first two attempts of every boto3 PUT or POST (object
    and part uploads, multipart create/complete) are answered with 503 SlowDown, then 500
    InternalError; the first attempt of every TensorStore request (the merge's, the drain
    check's, the restore's) with 503 SlowDown for a read, 500 for a write. Only once: each
    TensorStore retry waits 0.5-1 s (s3store.TS_RETRIES) and about a dozen of its requests
    follow one another."""
    if request.client == "tensorstore" and request.attempt == 1:
        return (503, "SlowDown") if request.command in ("GET", "HEAD") else \
            (500, "InternalError")
    if request.client == "boto3" and request.command in ("PUT", "POST") and \
            request.attempt <= 2:
        return (503, "SlowDown") if request.attempt == 1 else (500, "InternalError")
    return None


def test_throttling_and_5xx_answers_are_retried_with_backoff(s3_env, tmp_path, monkeypatch):
    """boto3's and TensorStore's requests ride out error answers (botocore's RETRIES,
    TensorStore's s3store.TS_RETRIES): the drain commits, the restore through the same proxy
    is bit-exact."""
    import torch
    url = s3_env.url(unique_prefix("retry"))
    with FaultProxy(s3_env.endpoint, refuse=throttling) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        ck = _save_and_drain(s3_env, tmp_path, url)
        assert ck.capacity_steps() == [1]
        ck.close()
        shutil.rmtree(tmp_path / "local")
        ck = tierpoint.Checkpointer(str(tmp_path / "local"), persistent=url, run="r")
        out = ck.restore({"model": {"w": torch.zeros(60, 70)}, "step": 0})
        ck.close(drain_newest=False)
    want = torch.arange(60 * 70, dtype=torch.float32).reshape(60, 70) + 1
    assert torch.equal(out["model"]["w"], want)
    boto3 = [r for r in proxy.refused if r.client == "boto3"]
    assert {r.command for r in boto3} >= {"PUT"} and any(r.attempt == 2 for r in boto3), boto3
    tensorstore = {r.command for r in proxy.refused if r.client == "tensorstore"}
    assert tensorstore >= {"GET", "HEAD", "PUT"}, proxy.refused
    # Every refused request came again and went through (the restore read every chunk).
    tried = {(r.command, r.path, r.range): r.attempt for r in proxy.requests}
    for r in proxy.refused:
        assert tried[(r.command, r.path, r.range)] > r.attempt, r
