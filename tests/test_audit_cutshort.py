"""An audit trail that cannot be cut short: every commit marker records the log's head at the
commit, and `tierpoint audit verify` cross-checks log and checkpoints (trust/auditcheck.py)."""
import json

import torch

import tierpoint
from tierpoint.format import layout
from tierpoint.trust.audit import AUDIT_FILE, read_log
from test_audit import run_cli


def _save(ck, steps):
    for step in steps:
        ck.save(step, {"w": torch.arange(32, dtype=torch.float32) + step}).wait()


def _cut(log, keep):
    lines = log.read_bytes().split(b"\n")[:-1]
    log.write_bytes(b"\n".join(lines[:keep]) + b"\n")
    return len(lines)


def test_markers_record_the_log_head_and_a_log_cut_short_is_caught(tmp_path, monkeypatch):
    key = tmp_path / "audit.key"
    key.write_bytes(b"another-s3cret\n")
    monkeypatch.setenv("TIERPOINT_AUDIT_KEY_FILE", str(key))
    pool = tmp_path / "pool"
    pool.mkdir()
    with tierpoint.Checkpointer(str(tmp_path / "ssd"), persistent=str(pool), run="r",
                                policy=tierpoint.Policy(keep_local=3, drain_every=2)) as ck:
        _save(ck, (1, 2, 3))
        ck.wait()
    log = pool / "r" / AUDIT_FILE
    records = read_log(str(log))
    by_seq = {r["seq"]: r for r in records}
    # Every marker (local copies and capacity heads) points at a record of the log.
    for root in (tmp_path / "ssd", pool):
        for step in layout.committed_steps(str(root), "r"):
            marker = layout.read_commit_marker(layout.step_dir(str(root), "r", step))
            ref = marker["audit"]
            assert by_seq[ref["seq"]]["hash"] == ref["hash"] and marker["audit_hmac"]
    rc, out = run_cli("audit", "verify", str(pool / "r"), "--local", str(tmp_path / "ssd"),
                      "--json")
    report = json.loads(out)
    assert rc == 0 and report["ok"], report
    assert report["checkpoints"] == 3 + 2  # local 1..3, capacity 2 and 3 (close drained 3)

    # The newest records removed: still a valid chain, but the checkpoints give it away.
    total = _cut(log, len(records) - 3)
    rc, out = run_cli("audit", "verify", str(pool / "r"), "--local", str(tmp_path / "ssd"))
    assert rc == 1, out
    assert "step_00000003" in out and "has no committed or drained record" in out
    assert f"which the log does not hold (it ends at #{total - 4})" in out

    # A marker rewritten to fit the shortened log: caught by its HMAC.
    head = layout.step_dir(str(pool), "r", 3)
    marker = layout.read_commit_marker(head)
    shortened = read_log(str(log))[-1]
    marker["audit"] = {"seq": shortened["seq"], "hash": shortened["hash"]}
    (tmp_path / "pool" / "r" / "step_00000003" / layout.COMMIT_FILE).write_bytes(
        layout.encode_json(marker))
    rc, out = run_cli("audit", "verify", str(pool / "r"))
    assert rc == 1 and "HMAC of its commit marker's audit reference" in out, out


def test_a_committed_checkpoint_missing_from_the_log_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("TIERPOINT_AUDIT_KEY_FILE", raising=False)
    with tierpoint.Checkpointer(str(tmp_path), run="solo",
                                policy=tierpoint.Policy(keep_local=5)) as ck:
        _save(ck, (1, 2))
    log = tmp_path / "solo" / AUDIT_FILE
    assert run_cli("audit", "verify", str(log))[0] == 0
    # Only the last record ("committed" of step 2) removed: its marker's reference (the
    # "saved" record before it) is still there, but the commit is not.
    _cut(log, len(read_log(str(log))) - 1)
    rc, out = run_cli("audit", "verify", str(log))
    assert rc == 1 and "step_00000002" in out and "no committed or drained record" in out
    assert "step_00000001" not in out
