"""The audit log of a run on the S3 capacity tier (trust/s3audit.py: one object per record,
chained by hash, appended with a conditional PUT), against the real SeaweedFS server of
tests/s3server.py: a run's events logged on S3, `tierpoint audit verify|show` on the run's
URL, a changed, removed or renamed record, the newest records removed (caught by the commit
markers' references), a marker rewritten, and concurrent appenders from several processes."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import torch

import tierpoint
from tierpoint.cli import main as cli
from tierpoint.format import layout
from tierpoint.tiers.s3 import S3Tier
from tierpoint.tiers.s3store import bucket
from tierpoint.trust.s3audit import S3AuditLog

from s3server import unique_prefix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli(list(args))
    return rc, out.getvalue()


def _key(url: str) -> str:
    return url.split("/", 3)[3]


def test_the_server_honours_a_conditional_put(s3_env):
    """What the appends rest on: a PUT with If-None-Match: * creates an object only once."""
    store = bucket(s3_env.bucket)
    key = unique_prefix("cond") + "/x"
    assert store.create(key, b"first")
    assert not store.create(key, b"second")  # 412 PreconditionFailed: another's object
    assert store.get(key) == b"first"
    assert store.create(key, b"first")  # a retried PUT finds its own bytes


def _run(tmp_path, url, steps=(1, 2, 3)):
    with tierpoint.Checkpointer(str(tmp_path / "local"), persistent=url, run="r",
                                policy=tierpoint.Policy(keep_local=3, drain_every=2)) as ck:
        for step in steps:
            ck.save(step, {"w": torch.arange(64, dtype=torch.float32) + step}).wait()
        ck.wait()
        out = ck.restore({"w": torch.zeros(64)})
        assert torch.equal(out["w"], torch.arange(64, dtype=torch.float32) + steps[-1])


def test_a_run_draining_to_s3_keeps_its_chained_audit_log_on_s3(s3_env, tmp_path,
                                                                monkeypatch):
    key = tmp_path / "audit.key"
    key.write_bytes(b"s3-audit-s3cret\n")
    monkeypatch.setenv("TIERPOINT_AUDIT_KEY_FILE", str(key))
    url = s3_env.url(unique_prefix("audit"))
    _run(tmp_path, url)
    run_url = S3Tier(url).audit_dir("r")
    log = S3AuditLog(run_url)
    records = log.records()
    events = {(r["event"], r["step"]) for r in records}
    for step in (1, 2, 3):
        assert ("saved", step) in events and ("committed", step) in events
    assert ("drained", 2) in events and ("restored", 3) in events
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert all(r["hmac"] and r["user"] and r["host"] for r in records)
    # Nothing of the log went to the node-local tier.
    assert not (tmp_path / "local" / "r" / "audit.jsonl").exists()
    # One object per record, named by its sequence number.
    names = [o["Key"] for o in log.bucket.list(log.prefix)[0]]
    assert names == [f"{_key(run_url)}/audit/{i:012d}" for i in range(len(records))]
    # The capacity heads' markers point at records of the S3 log.
    by_seq = {r["seq"]: r for r in records}
    markers = S3Tier.markers_at(run_url)
    assert [layout.parse_step_dir_name(u.rsplit("/", 1)[1]) for u, _ in markers] == [2, 3]
    for _, marker in markers:
        assert by_seq[marker["audit"]["seq"]]["hash"] == marker["audit"]["hash"]
    rc, out = run_cli("audit", "verify", run_url, "--local", str(tmp_path / "local"), "--json")
    report = json.loads(out)
    assert rc == 0 and report["ok"], report
    assert report["records"] == len(records) and report["checkpoints"] == 3 + 2
    rc, out = run_cli("audit", "show", run_url)
    assert rc == 0 and len(out.splitlines()) == len(records) and "drained" in out
    # `tierpoint verify` of an S3 copy appends its outcome to the run's S3 log.
    assert run_cli("verify", S3Tier(url).step_path("r", 3))[0] == 0
    last = log.records()[-1]
    assert last["event"] == "verified" and last["step"] == 3 and last["detail"]["ok"]
    assert run_cli("audit", "verify", run_url + "/audit/")[0] == 0  # its prefix names it too
    rc, out = run_cli("ls", str(tmp_path / "local"), "--persistent", url)
    row = next(line for line in out.splitlines() if line.split()[:2] == ["r", "3"])
    assert rc == 0 and row.split()[-1] == "yes", out  # ls reads the S3 log's verifications


def test_changed_removed_renamed_and_cut_short_records_on_s3_are_reported(s3_env, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("TIERPOINT_AUDIT_KEY_FILE", str(tmp_path / "audit.key"))
    (tmp_path / "audit.key").write_bytes(b"another-s3cret\n")
    url = s3_env.url(unique_prefix("tamper"))
    _run(tmp_path, url)
    run_url = S3Tier(url).audit_dir("r")
    log = S3AuditLog(run_url)
    store, entries = log.bucket, log.entries()
    assert run_cli("audit", "verify", run_url)[0] == 0

    # A record changed (its step), the object overwritten in place.
    name, data = entries[2]
    record = json.loads(data)
    store.put(name, layout.encode_json({**record, "step": 99}))
    rc, out = run_cli("audit", "verify", run_url)
    assert rc == 1 and f"{name}: its hash does not match" in out, out
    assert "HMAC missing or wrong" in out
    store.put(name, data)
    assert run_cli("audit", "verify", run_url)[0] == 0

    # A record removed from the middle: the chain breaks after it.
    store.delete([entries[3][0]])
    rc, out = run_cli("audit", "verify", run_url)
    assert rc == 1 and f"{entries[4][0]}: seq 4, expected 3" in out, out
    assert "does not chain to the record before it" in out
    store.put(*entries[3])

    # A record moved to another name.
    store.delete([entries[5][0]])
    store.put(f"{log.prefix}{5:012d}x", entries[5][1])
    rc, out = run_cli("audit", "verify", run_url)
    assert rc == 1 and "not an audit record's name" in out, out
    store.delete([f"{log.prefix}{5:012d}x"])
    store.put(*entries[5])
    assert run_cli("audit", "verify", run_url)[0] == 0

    # The newest records removed (every record from the drain of step 3 on): a valid but
    # shorter chain; step 3's capacity marker records a head the log no longer holds.
    marker = dict(S3Tier.markers_at(run_url))[S3Tier(url).step_path("r", 3)]
    cut = marker["audit"]["seq"]
    store.delete([n for n, _ in entries[cut:]])
    count, problems = log.verify()
    assert problems == [] and count == cut  # the chain alone cannot tell
    rc, out = run_cli("audit", "verify", run_url)
    assert rc == 1, out
    assert (f"step_00000003: its commit marker records audit record #{cut}, which the log "
            f"does not hold (it ends at #{cut - 1})") in out

    # A marker rewritten to fit the shortened log: its HMAC gives it away.
    shortened = json.loads(entries[cut - 1][1])
    marker["audit"] = {"seq": shortened["seq"], "hash": shortened["hash"]}
    store.put(f"{_key(run_url)}/step_00000003/{layout.COMMIT_FILE}",
              layout.encode_json(marker))
    rc, out = run_cli("audit", "verify", run_url)
    assert rc == 1 and "HMAC of its commit marker's audit reference" in out, out


APPENDER = """
import sys
from tierpoint.trust.s3audit import S3AuditLog
log = S3AuditLog(sys.argv[1], user="p" + sys.argv[2])
lost, create = [0], log.bucket.create
def counted(key, data):
    made = create(key, data)
    lost[0] += not made
    return made
log.bucket.create = counted
print("READY", flush=True)
sys.stdin.readline()  # every writer starts at once
for i in range(int(sys.argv[3])):
    log.append("verified", run="c", step=i, detail={"writer": sys.argv[2]})
print("LOST", lost[0], flush=True)
"""


def test_concurrent_appenders_on_s3_lose_no_record(s3_env):
    url = s3_env.url(unique_prefix("race"), "c")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".pkg") + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    writers, each = 4, 50
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, url, str(p), str(each)],
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for p in range(writers)]
    for p in procs:
        assert p.stdout.readline().strip() == "READY"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * writers, outs
    lost = sum(int(o.split()[1]) for o in outs)
    log = S3AuditLog(url)
    assert log.verify() == (writers * each, [])
    records = log.records()
    for p in range(writers):
        assert sorted(r["step"] for r in records if r["user"] == f"p{p}") == list(range(each))
    print(f"{lost} appends lost a race and chained after the winner's record")


def test_an_append_that_loses_the_race_chains_after_the_winners_record(s3_env):
    """The race made certain: writer B appends between A's read of the newest record and A's
    PUT of the next number; A's conditional PUT is refused, A reads B's record and chains
    after it."""
    url = s3_env.url(unique_prefix("lost"), "c")
    a, b = S3AuditLog(url, user="a"), S3AuditLog(url, user="b")
    a.append("verified", run="c", step=0)
    refused = []

    class Racing:
        def __init__(self, store):
            self.store = store

        def __getattr__(self, name):
            return getattr(self.store, name)

        def create(self, key, data):
            if not refused:
                b.append("verified", run="c", step=1)  # takes A's number first
            made = self.store.create(key, data)
            refused.append(not made)
            return made
    a.bucket = Racing(a.bucket)
    record = a.append("verified", run="c", step=2)
    assert refused == [True, False] and record["seq"] == 2
    assert [(r["user"], r["seq"]) for r in S3AuditLog(url).records()] == [
        ("a", 0), ("b", 1), ("a", 2)]
    assert S3AuditLog(url).verify() == (3, [])


def test_lineage_follows_parents_across_s3_copies(s3_env, tmp_path):
    """A fine-tune restored from a pretraining run, both drained to S3 and the local tiers
    gone: `tierpoint lineage` of the fine-tune's S3 copy finds its parent on the bucket
    (the recorded local path is gone: the parent is searched beside the copy, through the
    registry), its digest checked; and with --root s3://... from a local copy."""
    url = s3_env.url(unique_prefix("lineage"))
    local = str(tmp_path / "local")
    with tierpoint.Checkpointer(local, persistent=url, run="pretrain",
                                policy=tierpoint.Policy(drain_every=1)) as ck:
        ck.save(5, {"w": torch.arange(16, dtype=torch.float32)}).wait()
    with tierpoint.Checkpointer(local, persistent=url, run="ft",
                                policy=tierpoint.Policy(drain_every=1)) as ft:
        state = ft.restore({"w": torch.zeros(16)}, from_run="pretrain")
        ft.save(1, state).wait()
    ft_local = layout.step_dir(local, "ft", 1)
    rc, out = run_cli("lineage", ft_local, "--json")
    chain = json.loads(out)
    assert rc == 0 and [(e["run"], e["step"]) for e in chain] == [("ft", 1), ("pretrain", 5)]
    import shutil
    shutil.rmtree(local)  # only the S3 copies are left
    ft_url = S3Tier(url).step_path("ft", 1)
    rc, out = run_cli("lineage", ft_url, "--json")
    chain = json.loads(out)
    assert rc == 0, out
    assert [(e["run"], e["step"], e["digest_ok"]) for e in chain] == [
        ("ft", 1, True), ("pretrain", 5, True)]
    assert chain[0]["path"] == ft_url and chain[1]["path"] == S3Tier(url).step_path(
        "pretrain", 5)
    # The parent's copy deleted (its marker gone): reported as not found.
    store = bucket(s3_env.bucket)
    store.delete([f"{_key(S3Tier(url).step_path('pretrain', 5))}/{layout.COMMIT_FILE}"])
    rc, out = run_cli("lineage", ft_url)
    assert rc == 1 and "NOT FOUND" in out, out
