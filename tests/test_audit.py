"""The audit log: the events a run records, tampering of every kind (with and without a key),
and concurrent appends from several processes."""
import contextlib
import hashlib
import io
import json
import subprocess
import sys

import pytest
import torch

import tierpoint
from tierpoint.trust.audit import AUDIT_FILE, GENESIS, AuditLog, _canonical, read_log, verify_log
from tierpoint.cli import main as cli


def run_cli(*args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli(list(args))
    return rc, out.getvalue()


def test_a_run_records_its_events_in_a_chained_log(tmp_path, monkeypatch):
    key = tmp_path / "audit.key"
    key.write_bytes(b"s3cret-key\n")
    monkeypatch.setenv("TIERPOINT_AUDIT_KEY_FILE", str(key))
    (tmp_path / "pool").mkdir()
    ck = tierpoint.Checkpointer(str(tmp_path / "local"), persistent=str(tmp_path / "pool"),
                                run="r", policy=tierpoint.Policy(keep_local=1, drain_every=2))
    for step in (1, 2, 3):
        ck.save(step, {"w": torch.full((64,), float(step))})
    ck.wait()
    ck.restore({"w": torch.zeros(64)})
    ck.close()
    log = tmp_path / "pool" / "r" / AUDIT_FILE
    records = read_log(str(log))
    events = [(r["event"], r["step"]) for r in records]
    for step in (1, 2, 3):
        assert ("saved", step) in events and ("committed", step) in events
    assert ("drained", 2) in events and ("restored", 3) in events
    assert ("deleted", 1) in events  # the local ring dropped step 1 (keep_local=1)
    committed = {r["step"]: r["digest"] for r in records if r["event"] == "committed"}
    assert committed[3] == tierpoint.format.layout.load_manifest(
        str(tmp_path / "local" / "r" / "step_00000003"))["digest"]
    assert all("hmac" in r and r["user"] and r["host"] for r in records)
    assert [r["seq"] for r in records] == list(range(len(records)))
    rc, out = run_cli("audit", "verify", str(tmp_path / "pool" / "r"), "--json")
    assert rc == 0 and json.loads(out)["ok"] and json.loads(out)["records"] == len(records)
    # verify appends its outcome to the run's log
    assert run_cli("verify", str(tmp_path / "pool" / "r" / "step_00000002"))[0] == 0
    last = read_log(str(log))[-1]
    assert last["event"] == "verified" and last["step"] == 2 and last["detail"]["ok"]


def make_log(path, n=6, key=None):
    log = AuditLog(str(path), key=key, user="tester")
    for i in range(n):
        log.append("committed", run="t", step=i, digest=f"sha256:{i:064x}")
    return path / AUDIT_FILE


def lines_of(path):
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")


def rechain(lines, start, key=None):
    """What a forger without the key can do: recompute hashes and links from ``start`` on."""
    import hmac
    out = list(lines[:start])
    for line in lines[start:]:
        r = json.loads(line)
        r.pop("hash"), r.pop("hmac", None)
        r["prev"] = hashlib.sha256(out[-1]).hexdigest() if out else GENESIS
        r["seq"] = len(out)
        r["hash"] = hashlib.sha256(_canonical(r)).hexdigest()
        if key:
            r["hmac"] = hmac.new(key, _canonical(r), "sha256").hexdigest()
        out.append(_canonical(r))
    return out


def change(lines):
    r = json.loads(lines[2])
    r["step"] = 99
    return lines[:2] + [_canonical(r)] + lines[3:]


def flip(lines):
    line = bytearray(lines[2])
    line[len(line) // 2] ^= 0x01  # one bit of one byte, wherever it falls
    return lines[:2] + [bytes(line)] + lines[3:]


TAMPERING = {
    "changed": change,
    "flipped": flip,
    "removed": lambda lines: lines[:2] + lines[3:],
    "inserted": lambda lines: lines[:3] + [lines[1]] + lines[3:],
    "reordered": lambda lines: lines[:2] + [lines[3], lines[2]] + lines[4:],
    "truncated": lambda lines: lines[:-1] + [lines[-1][:-7]],
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_any_tampering_is_detected(tmp_path, how):
    log = make_log(tmp_path)
    assert verify_log(str(log)) == (6, [])
    write_lines(log, TAMPERING[how](lines_of(log)))
    count, problems = verify_log(str(log))
    assert problems, how
    assert any("line 3" in p or "line 4" in p or "line 6" in p for p in problems), problems
    assert run_cli("audit", "verify", str(log))[0] == 1


def test_a_deleted_log_fails_verification(tmp_path):
    log = make_log(tmp_path)
    log.unlink()
    count, problems = verify_log(str(log))
    assert count == 0 and problems and str(log) in problems[0]
    # The command cannot tell a deleted log from a mistyped path: it never passes, and exits 2
    # (could not run, "does not exist"), as for any missing path.
    assert run_cli("audit", "verify", str(log))[0] == 2


def test_a_recomputed_chain_is_caught_only_with_the_key(tmp_path):
    plain = make_log(tmp_path / "plain")
    write_lines(plain, rechain(change(lines_of(plain)), 2))
    assert verify_log(str(plain)) == (6, [])  # no key: a full recomputation goes unseen
    key = b"k3y"
    keyed = make_log(tmp_path / "keyed", key=key)
    assert verify_log(str(keyed), key) == (6, [])
    write_lines(keyed, rechain(change(lines_of(keyed)), 2))  # the forger has no key
    count, problems = verify_log(str(keyed), key)
    assert count == 6 and all("HMAC" in p for p in problems) and len(problems) == 4
    (tmp_path / "key").write_bytes(key)
    assert run_cli("audit", "verify", str(keyed), "--key", str(tmp_path / "key"))[0] == 1


def test_concurrent_appends_from_processes_never_interleave_or_vanish(tmp_path):
    script = ("import sys\nfrom tierpoint.trust.audit import AuditLog\n"
              "log = AuditLog(sys.argv[1], user='p' + sys.argv[2])\n"
              "for i in range(40):\n"
              "    log.append('verified', run='c', step=i, detail={'pad': 'x' * 3000})\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(p)])
             for p in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    assert verify_log(str(tmp_path / AUDIT_FILE)) == (160, [])
    records = read_log(str(tmp_path / AUDIT_FILE))
    for p in range(4):
        assert sorted(r["step"] for r in records if r["user"] == f"p{p}") == list(range(40))
