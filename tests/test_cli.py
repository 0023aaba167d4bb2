"""The tierpoint command line: every command with right and wrong input (a table), the exit
status that tells "checked and damaged" (1) from "could not run" (2) and "incomplete" (3), one
line on stderr and never a traceback; a closed stdout; gc's pin and keep-every; the newest
verification wins in ls; the README's reference is the parser's.

The table runs in-process (cli.main) on fixtures built once; a few cases run the installed
`tierpoint` script as a subprocess. A new command or option inherits the structural checks:
every command needs rows for a missing path, every path option a row with a missing path,
every bounded number option a row below its bound."""
import argparse
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import tierpoint
from tierpoint.cli import app as cli
from tierpoint.format import layout
from tierpoint.trust.audit import AUDIT_FILE, AuditLog
from mpirun import run_ranks

VENV_BIN = os.path.dirname(sys.executable)
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def save_tree(root: str) -> None:
    """Run "r": steps 1, 2, 3 saved in one process, each drained (pool holds 1..3, the local
    ring the newest two)."""
    os.makedirs(os.path.join(root, "pool"))
    with tierpoint.Checkpointer(os.path.join(root, "local"), persistent=os.path.join(root, "pool"),
                                run="r", policy=tierpoint.Policy(drain_every=1)) as ck:
        for step in (1, 2, 3):
            ck.save(step, {"w": np.arange(64, dtype=np.float32) * step, "n": {"k": step}}).wait()


def damaged_copy(root: str, name: str, file: str, how: str) -> str:
    """A copy of local step 3 with ``file`` truncated or replaced by garbage."""
    dst = os.path.join(root, "bad", name, "r", "step_00000003")
    shutil.copytree(os.path.join(root, "local", "r", "step_00000003"), dst)
    path = os.path.join(dst, file)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2] if how == "truncate" else b"{garbage")
    return dst


def hf_dirs(root: str) -> None:
    """What import reads: a safetensors directory (with a config.json), one holding only a
    pickle weight file (never read), a DCP directory; and an empty tier root to import to."""
    import torch
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    for d in ("safe", "pickled", "imports"):
        os.makedirs(os.path.join(root, "hf", d))
    save_file({"w": torch.arange(6.0)}, os.path.join(root, "hf", "safe", "model.safetensors"))
    with open(os.path.join(root, "hf", "safe", "config.json"), "w") as f:
        f.write('{"model_type": "llama"}\n')
    with open(os.path.join(root, "hf", "pickled", "pytorch_model.bin"), "wb") as f:
        f.write(b"not read")
    with warnings.catch_warnings():  # "torch.distributed ... uninitialized": one process, as meant
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": {"w": torch.arange(4.0)}},
                 checkpoint_id=os.path.join(root, "hf", "dcp"), no_dist=True)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli"))
    save_tree(root)
    proc = run_ranks([(1, {"TIERPOINT_NODE": "n0"}), (1, {"TIERPOINT_NODE": "n1"})],
                     "cli_worker.py", os.path.join(root, "nodes"))
    assert "CLI-OK" in proc.stdout, proc.stdout + proc.stderr
    os.makedirs(os.path.join(root, "empty"))
    with open(os.path.join(root, "afile"), "w") as f:
        f.write("not a directory\n")
    log = os.path.join(root, "pool", "r", AUDIT_FILE)
    os.makedirs(os.path.join(root, "logs"))
    cut = os.path.join(root, "logs", "cut.jsonl")
    data = open(log, "rb").read()
    with open(cut, "wb") as f:
        f.write(data + data[:40])  # a record cut short after the intact ones
    with open(os.path.join(root, "logs", "garbage.jsonl"), "wb") as f:
        f.write(b"this is not JSON\n")
    hf_dirs(root)
    p = {"root": root, "local": f"{root}/local", "pool": f"{root}/pool",
         "run": f"{root}/local/r", "ckpt": f"{root}/local/r/step_00000003",
         "ckpt2": f"{root}/local/r/step_00000002", "head": f"{root}/pool/r/step_00000001",
         "poolrun": f"{root}/pool/r", "log": log, "cutlog": cut,
         "garbagelog": f"{root}/logs/garbage.jsonl", "empty": f"{root}/empty",
         "file": f"{root}/afile", "missing": f"{root}/no/such/path",
         "badmanifest": damaged_copy(root, "m", layout.MANIFEST_FILE, "truncate"),
         "badmarker": damaged_copy(root, "c", layout.COMMIT_FILE, "garbage"),
         "n0": f"{root}/nodes/n0", "n0ckpt": f"{root}/nodes/n0/m/step_00000001",
         "badroot": f"{root}/bad/m", "key": f"{root}/afile", "demo": f"{root}/afile",
         "hfdir": f"{root}/hf/safe", "pickledir": f"{root}/hf/pickled", "dcpdir": f"{root}/hf/dcp",
         "hfconfig": f"{root}/hf/safe/config.json", "imports": f"{root}/hf/imports"}
    return p


# (argv, exit status, a fragment of stderr (or of stdout, prefixed "out:"))
CASES = [
    # ls
    ("ls {local}", 0, "out:       3  local "),
    ("ls {local} --persistent {pool}", 0, "out:       3  local,capacity "),
    ("ls {local} --persistent {pool} --run r --json", 0, 'out:"capacity": "committed"'),
    ("ls {empty}", 0, "out:no checkpoints under"),
    ("ls {missing}", 2, "ROOT {missing} does not exist"),
    ("ls {file}", 2, "is a file, not a directory"),
    ("ls {run}", 2, "is a run directory, not a tier root; pass its parent with --run"),
    ("ls {ckpt}", 2, "is a checkpoint (a step directory), not a tier root"),
    ("ls {local} --run nope", 2, "run 'nope' is not under"),
    ("ls {local} --persistent {missing}", 2, "--persistent pool {missing} does not exist"),
    ("ls {local} --persistent {file}", 2, "--persistent pool {file} is not a directory"),
    ("ls {badroot}", 0, "out:damaged"),
    ("ls {local} --bogus", 2, "tierpoint ls: unrecognized arguments: --bogus"),
    ("ls", 2, "tierpoint ls: the following arguments are required: ROOT"),
    # drain
    ("drain --local {local} --persistent {pool}", 0, "out:r step 3: already on the capacity tier"),
    ("drain --local {local} --persistent {pool} --run r --step 2 --rate 1e9", 0,
     "out:r step 2: already on the capacity tier"),
    ("drain --local {empty} --persistent {pool}", 0, "out:nothing to drain"),
    ("drain --local {missing} --persistent {pool}", 2, "--local {missing} does not exist"),
    ("drain --local {file} --persistent {pool}", 2, "--local {file} is a file"),
    ("drain --local {run} --persistent {pool}", 2, "is a run directory, not a tier root"),
    ("drain --local {local} --persistent {missing}", 2,
     "--persistent pool {missing} does not exist (not mounted?); mount or create it"),
    ("drain --local {local} --persistent {ckpt}", 2, "is a checkpoint (a step directory)"),
    ("drain --local {local} --persistent {pool} --run nope", 2, "run 'nope' is not under"),
    ("drain --local {local} --persistent {pool} --step 999", 2,
     "step 999 of run 'r' is not committed on the local tier"),
    ("drain --local {local} --persistent {pool} --step -1", 2,
     "argument --step: must be an integer >= 0, not -1"),
    ("drain --local {local} --persistent {pool} --rate -5", 2,
     "argument --rate: must be a number of bytes/s > 0, not -5"),
    ("drain --local {local} --persistent {pool} --rate 0", 2, "bytes/s > 0, not 0"),
    ("drain --local {local} --persistent {pool} --rate fast", 2, "not 'fast'"),
    ("drain --local {local}", 2, "the following arguments are required: --persistent"),
    # gc (wrong input only: a gc that runs changes the tree; see the gc test below)
    ("gc --local {empty}", 0, "out:nothing to do"),
    ("gc --local {missing}", 2, "--local {missing} does not exist"),
    ("gc --local {file}", 2, "--local {file} is a file"),
    ("gc --local {ckpt}", 2, "is a checkpoint (a step directory), not a tier root"),
    ("gc --local {local} --persistent {missing}", 2, "--persistent pool {missing} does not exist"),
    ("gc --local {local} --run nope", 2, "run 'nope' is not under"),
    ("gc --local {local} --keep-local 0", 2, "argument --keep-local: must be an integer >= 1"),
    ("gc --local {local} --keep-local -1", 2, "must be an integer >= 1, not -1"),
    ("gc --local {local} --persistent {pool} --keep-persistent 0", 2,
     "argument --keep-persistent: must be an integer >= 1, not 0"),
    ("gc --local {local} --persistent {pool} --keep-every 0", 2,
     "argument --keep-every: must be an integer >= 1, not 0"),
    ("gc --local {local} --persistent {pool} --pin -1", 2,
     "argument --pin: must be an integer >= 0, not -1"),
    ("gc --local {local} --pin 2", 2, "--pin applies to the capacity tier only; add --persistent"),
    ("gc --local {local} --keep-persistent 1", 2, "--keep-persistent applies to the capacity"),
    # verify
    ("verify {ckpt}", 0, "out:: OK  [local tier"),
    ("verify {head} --json", 0, 'out:"complete": true'),
    ("verify {ckpt} --partial", 0, "out:: OK  [local tier"),
    ("verify --all {local} --persistent {pool} --run r", 0, "out:step_00000001: OK"),
    ("verify --all {empty}", 0, "out:no committed checkpoints under"),
    ("verify {n0ckpt}", 3, "out:INCOMPLETE  [local tier, run 'm' step 1, 2 of 4 chunks"),
    ("verify {n0ckpt}", 3, "out:written by nodes [n1] into their own tiers): verify each node's"),
    ("verify {n0ckpt} --partial", 0, "out:accepted: --partial"),
    ("verify --all {n0}", 3, "out:INCOMPLETE"),
    ("verify --all {n0} --partial --json", 0, 'out:"partial": true'),
    ("verify {badmanifest}", 1, "out:FAILED"),
    ("verify {badmarker}", 1, "out:commit marker unreadable"),
    ("verify --all {badroot}", 1, "out:manifest is not valid JSON"),
    ("verify {missing}", 2, "checkpoint {missing} does not exist"),
    ("verify {file}", 2, "is a file, not a checkpoint"),
    ("verify {run}", 2, "is a run directory, not a checkpoint; pass one of its step directories"),
    ("verify {local}", 2, "is a tier root, not a checkpoint"),
    ("verify {empty}", 2, "is not a committed checkpoint (no .tierpoint-commit"),
    ("verify --all {missing}", 2, "ROOT {missing} does not exist"),
    ("verify --all {ckpt}", 2, "is a checkpoint (a step directory), not a tier root"),
    ("verify --all {run}", 2, "is a run directory, not a tier root"),
    ("verify --all {local} --run nope", 2, "run 'nope' is not under"),
    ("verify --all {local} --persistent {missing}", 2, "--persistent pool {missing} does not"),
    ("verify {ckpt} --persistent {pool}", 2, "--persistent goes with --all ROOT"),
    ("verify {ckpt} --run r", 2, "--run goes with --all ROOT"),
    ("verify", 2, "pass one checkpoint's step directory (CKPT) or --all ROOT"),
    ("verify {ckpt} --all {local}", 2, "or --all ROOT (every checkpoint under a tier root), not both"),
    # lineage
    ("lineage {ckpt}", 0, "out:run 'r' step 3"),
    ("lineage {ckpt} --root {local} --json", 0, 'out:"digest_ok": true'),
    ("lineage {missing}", 2, "checkpoint {missing} does not exist"),
    ("lineage {file}", 2, "is a file, not a checkpoint"),
    ("lineage {run}", 2, "is a run directory, not a checkpoint"),
    ("lineage {empty}", 2, "is not a committed checkpoint"),
    ("lineage {badmanifest}", 2, "does not match the SHA-256 in its commit marker"),
    ("lineage {badmarker}", 2, "is unreadable"),
    ("lineage {ckpt} --root {missing}", 2, "--root {missing} does not exist"),
    # audit verify / show
    ("audit verify {poolrun}", 0, "out:committed checkpoints, intact"),
    ("audit verify {log} --json", 0, 'out:"ok": true'),
    ("audit verify {cutlog}", 1, "out:the last record is cut short"),
    ("audit verify {garbagelog}", 1, "out:not a JSON record"),
    ("audit verify {missing}", 2, "LOG {missing} does not exist"),
    ("audit verify {empty}", 2, "holds no audit.jsonl"),
    ("audit verify {ckpt}", 2, "is a checkpoint; its run's log is in the run directory"),
    ("audit verify {local}", 2, "it looks like a tier root: pass one of its run directories"),
    ("audit verify {log} --key {missing}", 2, "--key {missing} does not exist"),
    ("audit verify {poolrun} --local {missing}", 2, "--local {missing} does not exist"),
    ("audit verify {poolrun} --local {local}", 0, "out:committed checkpoints, intact"),
    ("audit verify {log} --key {empty}", 2, "--key {empty} is not a file"),
    ("audit show {poolrun}", 0, "out:committed"),
    ("audit show {log} --json", 0, 'out:"event": "saved"'),
    ("audit show {cutlog}", 2, "is not an audit record"),
    ("audit show {garbagelog}", 2, "line 1 is not an audit record"),
    ("audit show {missing}", 2, "LOG {missing} does not exist"),
    ("audit show {empty}", 2, "holds no audit.jsonl"),
    ("audit show {log} --key {file}", 2, "tierpoint audit show: unrecognized arguments: --key"),
    ("audit", 2, "tierpoint audit: the following arguments are required"),
    # info
    ("info {ckpt}", 0, "out:run 'r' step 3"),
    ("info {head} --json", 0, 'out:"tier": "capacity"'),
    ("info {missing}", 2, "checkpoint {missing} does not exist"),
    ("info {file}", 2, "is a file, not a checkpoint"),
    ("info {run}", 2, "is a run directory, not a checkpoint"),
    ("info {local}", 2, "is a tier root, not a checkpoint"),
    ("info {empty}", 2, "is not a committed checkpoint"),
    ("info {badmanifest}", 2, "does not match the SHA-256 in its commit marker"),
    ("info {badmarker}", 2, "is unreadable"),
    # diff
    ("diff {ckpt} {head}", 1, "out:1 different"),
    ("diff {ckpt} {ckpt} --json", 0, 'out:"identical": 1'),
    ("diff {missing} {ckpt}", 2, "A {missing} does not exist"),
    ("diff {ckpt} {missing}", 2, "B {missing} does not exist"),
    ("diff {run} {ckpt}", 2, "is a run directory, not a checkpoint"),
    ("diff {ckpt} {empty}", 2, "B {empty} is not a committed checkpoint"),
    ("diff {ckpt} {local}", 2, "B {local} is a tier root, not a checkpoint"),
    ("diff {ckpt} {badmarker}", 2, "is unreadable"),
    # export
    ("export {ckpt} {root}/exported --format safetensors", 0,
     "out:model-00001-of-00001.safetensors  sha256 "),
    ("export {ckpt} {root}/x --format safetensors --persistent {missing}", 2,
     "--persistent pool {missing} does not exist"),
    ("export {ckpt} {root}/exported2 --format safetensors --select w --rename w=weight "
     "--max-shard-size 1KB --config {hfconfig} --json", 0, 'out:"config.json": '),
    ("export {missing} {root}/x --format safetensors", 2, "checkpoint {missing} does not exist"),
    ("export {run} {root}/x --format safetensors", 2, "is a run directory, not a checkpoint"),
    ("export {ckpt} {root}/x --format safetensors --config {missing}", 2,
     "--config {missing} does not exist"),
    ("export {ckpt} {file} --format safetensors", 2, "OUT {file} exists and is not a directory"),
    ("export {ckpt} {root}/x --format safetensors --select nope*", 2,
     "no array of run 'r' step 3 is selected"),
    ("export {ckpt} {root}/x --format safetensors --rename nope", 2, "must be FROM=TO"),
    ("export {ckpt} {root}/x --format safetensors --max-shard-size 5XB", 2, "is not a size"),
    ("export {ckpt} {root}/x --format bin", 2, "argument --format: invalid choice: 'bin'"),
    ("export {ckpt} {root}/x", 2, "the following arguments are required: --format"),
    # import
    ("import {hfdir} --local {imports} --run h --step 0", 0,
     "out:1 arrays imported from safetensors"),
    ("import {hfdir} --local {imports} --run h2 --step 0 --into weights --json", 0,
     'out:"config.json": '),
    ("import {dcpdir} --local {imports} --run d --step 0 --trust-pickle", 0,
     "out:1 arrays imported from dcp"),
    ("import {hfdir} --local {local} --run r --step 3", 2,
     "step 3 of run 'r' is already committed under {local}"),
    ("import {dcpdir} --local {imports} --run d2 --step 0", 2,
     ".metadata is a pickle (loading one can run any code its writer put there); pass "
     "--trust-pickle if you trust who wrote it"),
    ("import {dcpdir} --local {imports} --run d3 --step 0 --trust-pickle --into model", 2,
     "--into applies to a safetensors directory"),
    ("import {pickledir} --local {imports} --run p --step 0", 2,
     "holds pickle weight files only (pytorch_model.bin)"),
    ("import {missing} --local {imports} --run h --step 0", 2, "SRC {missing} does not exist"),
    ("import {empty} --local {imports} --run h --step 0", 2, "holds no *.safetensors files"),
    ("import {hfdir} --local {missing} --run h --step 0", 2, "--local {missing} does not exist"),
    ("import {hfdir} --local {run} --run h --step 0", 2, "is a run directory, not a tier root"),
    ("import {hfdir} --local {imports} --run h --step -1", 2,
     "argument --step: must be an integer >= 0, not -1"),
    ("import {hfdir} --local {imports} --step 0", 2, "the following arguments are required: --run"),
    # demo (a run of it is make demo's job; here only what it refuses)
    ("demo --help", 0, "out:--restore-ranks M"),
    ("demo --dir {file}", 2, "exists and was not made by the demo; pass --dir"),
    ("demo --dir {missing} --steps 0", 2, "argument --steps: must be an integer >= 1, not 0"),
    ("demo --dir {missing} --every 0", 2, "argument --every: must be an integer >= 1"),
    ("demo --dir {missing} --save-ranks 0", 2, "argument --save-ranks: must be an integer >= 1"),
    ("demo --dir {missing} --restore-ranks 0", 2, "argument --restore-ranks: must be an integer"),
    # the command itself
    ("--version", 0, f"out:tierpoint {tierpoint.__version__}"),
    ("", 2, "tierpoint: the following arguments are required: COMMAND"),
    ("nope", 2, "invalid choice: 'nope'"),
]


def _argv(template: str, paths: dict) -> list[str]:
    return [word.format(**paths) for word in template.split()]


@pytest.mark.parametrize("template, status, fragment", CASES,
                         ids=[f"{c[0]}->{c[1]}" for c in CASES])
def test_command_line(paths, capsys, template, status, fragment):
    argv = _argv(template, paths)
    assert cli.main(argv) == status
    out, err = capsys.readouterr()
    where, fragment = (out, fragment[4:]) if fragment.startswith("out:") else (err, fragment)
    assert fragment.format(**paths) in where, f"stdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err
    if status == cli.EXIT_USAGE:  # could not run: exactly one line, naming the command
        assert len(err.splitlines()) == 1, err
        assert err.startswith("tierpoint"), err
        assert re.match(r"tierpoint( [a-z]+){0,2}: ", err), err
    for python_word in ("persistent=", "keep_local", "local=", "Policy."):
        assert python_word not in err
    if "{missing}" in template:
        assert "not a committed checkpoint" not in err


def _commands():
    return list(cli._subcommands(cli.build_parser()))


def _table(command: str) -> list[tuple]:
    return [c for c in CASES if c[0] == command or c[0].startswith(command + " ")]


@pytest.mark.parametrize("command", [name for name, _ in _commands()])
def test_every_command_is_in_the_table(command):
    """A new command inherits the table's coverage: it needs rows here."""
    rows = _table(command)
    assert any(status == 0 for _, status, _ in rows), f"{command}: no case that works"
    assert any(status == 2 for _, status, _ in rows), f"{command}: no case of wrong input"
    sub = dict(_commands())[command]
    for action in cli._options(sub):
        metavar = action.metavar or ""
        if metavar in ("ROOT", "CKPT", "A", "B", "LOG", "POOL", "FILE"):
            opt = action.option_strings[-1] + " " if action.option_strings else ""
            assert any(f"{opt}{{missing}}" in t and s == 2 for t, s, _ in rows), \
                f"{command}: no case with a missing path for {opt or metavar}"
        minimum = getattr(action.type, "minimum", None)
        if minimum is not None:
            below = f"{action.option_strings[-1]} {minimum - 1}"
            assert any(below in t and s == 2 for t, s, _ in rows), \
                f"{command}: no case with {below}"


def test_the_installed_script_exits_quietly_when_stdout_closes(paths, tmp_path):
    """`tierpoint ... | head -1`: no traceback, no 'Exception ignored'; the status of a
    process killed by SIGPIPE (141) under pipefail. The log is large enough (~1 MB) that the
    command is still writing when head exits."""
    big = tmp_path / "big.jsonl"
    record = open(paths["log"], "rb").read().split(b"\n")[0]
    with open(big, "wb") as f:
        f.write((record + b"\n") * 4000)
    for args in (f"info {paths['ckpt']}", f"audit show {big}", f"audit show {big} --json",
                 "--help-all"):
        proc = subprocess.run(["bash", "-c", f"set -o pipefail; {VENV_BIN}/tierpoint {args} | "
                               "head -1"], capture_output=True, text=True, timeout=120)
        assert proc.stderr == "", proc.stderr
        assert proc.returncode in (0, cli.EXIT_PIPE) and proc.stdout.count("\n") == 1, proc


def test_the_installed_script_smoke(paths):
    """The console script and `python -m tierpoint.cli`: statuses and one line, for real."""
    for command in ([f"{VENV_BIN}/tierpoint"], [sys.executable, "-m", "tierpoint.cli"]):
        ok = subprocess.run(command + ["verify", paths["ckpt"]], capture_output=True,
                            text=True, timeout=120)
        assert ok.returncode == 0 and ": OK" in ok.stdout, ok
        bad = subprocess.run(command + ["info", paths["missing"]], capture_output=True,
                             text=True, timeout=120)
        assert bad.returncode == 2 and bad.stdout == "", bad
        assert bad.stderr == f"tierpoint info: checkpoint {paths['missing']} does not exist; " \
                             "pass a step directory ROOT/RUN/step_<8 digits> ('tierpoint ls " \
                             "ROOT' lists them)\n"
        debug = subprocess.run(command + ["info", paths["missing"]], capture_output=True,
                               text=True, timeout=120, env={**os.environ, "TIERPOINT_DEBUG": "1"})
        assert "Traceback" in debug.stderr and debug.returncode == 2, debug


def test_an_unexpected_error_is_one_line_that_asks_for_the_traceback(paths, capsys, monkeypatch):
    import tierpoint.trust.inspect

    def broken(path):
        raise KeyError("arrays")
    monkeypatch.setattr(tierpoint.trust.inspect, "info", broken)
    assert cli.main(["info", paths["ckpt"]]) == 2
    err = capsys.readouterr().err
    assert err == "tierpoint info: unexpected KeyError: 'arrays'; rerun with TIERPOINT_DEBUG=1 " \
                  "for the traceback and report it\n"


def test_a_verify_that_cannot_be_recorded_still_reports_and_says_so(paths, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("TIERPOINT_AUDIT_KEY_FILE", paths["missing"])
    assert cli.main(["verify", paths["head"]]) == 0
    out, err = capsys.readouterr()
    assert ": OK  [capacity tier" in out
    assert err == f"tierpoint verify: could not append to the audit log in {paths['poolrun']}: " \
                  f"audit key file {paths['missing']}: No such file or directory; the outcome " \
                  "above is not recorded\n"


def test_gc_applies_pin_and_keep_every_to_the_capacity_tier(paths, tmp_path, capsys):
    """The README says gc applies the whole capacity policy: --pin and --keep-every too."""
    for name in ("local", "pool"):
        shutil.copytree(paths[name], tmp_path / name, symlinks=True)
    heads = [layout.capacity_head([str(tmp_path / "pool")], "r", s) for s in (1, 2, 3)]
    assert all(layout.is_committed(h) for h in heads)
    argv = ["gc", "--local", str(tmp_path / "local"), "--persistent", str(tmp_path / "pool")]
    assert cli.main(argv + ["--keep-persistent", "1", "--pin", "1"]) == 0
    assert layout.committed_steps(str(tmp_path / "pool"), "r") == [1, 3]
    assert "r step 2: removed from the capacity tier" in capsys.readouterr().out
    assert cli.main(argv + ["--keep-persistent", "1", "--keep-every", "3"]) == 0
    assert layout.committed_steps(str(tmp_path / "pool"), "r") == [3]


def test_ls_shows_the_newest_verification_over_every_log(paths, tmp_path, capsys):
    """An older passing record in the pool's log must not hide a newer failure recorded in the
    local tier's log (the old ls let the last root read win)."""
    for name in ("local", "pool"):
        shutil.copytree(paths[name], tmp_path / name, symlinks=True)
    local_run, pool_run = str(tmp_path / "local" / "r"), str(tmp_path / "pool" / "r")
    AuditLog(pool_run, user="t").append("verified", run="r", step=3,
                                        detail={"ok": True, "problems": 0})
    AuditLog(local_run, user="t").append("verified", run="r", step=3,
                                         detail={"ok": False, "problems": 2})
    AuditLog(local_run, user="t").append("verified", run="r", step=2,
                                         detail={"ok": False, "problems": 1})
    AuditLog(pool_run, user="t").append("verified", run="r", step=2,
                                        detail={"ok": True, "problems": 0})
    assert cli.main(["ls", str(tmp_path / "local"), "--persistent", str(tmp_path / "pool")]) == 0
    rows = {ln.split()[1]: ln.split()[-1] for ln in capsys.readouterr().out.splitlines()
            if ln.startswith("r ")}
    assert rows["3"] == "FAILED" and rows["2"] == "yes", rows


def _readme_section(title: str) -> str:
    text = open(README).read()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def test_the_readme_reference_is_the_parser():
    """README's "Command line" section holds `tierpoint --help-all` verbatim, and every
    `tierpoint <command> --option` the README shows anywhere exists."""
    section = _readme_section("Command line")
    block = section.split("```\n")[1]
    assert block.rstrip("\n") == cli.reference(cli.build_parser()), \
        "regenerate README's Command line block with `tierpoint --help-all`"
    commands = dict(_commands())
    for name in commands:
        assert f"tierpoint {name} " in block
    text = open(README).read()
    for match in re.finditer(r"tierpoint ((?:audit )?[a-z]+)((?: [^`\n]*)?)", text):
        name, rest = match.group(1), match.group(2)
        if name not in commands:
            continue
        known = {o for a in commands[name]._actions for o in a.option_strings}
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
            assert option in known, f"README: `tierpoint {name}{rest}` shows {option}"


def test_help_has_no_markup_and_documents_the_exit_statuses(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out
    for status in ("0 ", "1 ", "2 ", "3 ", "141 "):
        assert f"\n  {status}" in out
    assert "TIERPOINT_DEBUG" in out
    for name, sub in _commands():
        assert "``" not in sub.format_help()
    assert isinstance(cli.build_parser(), argparse.ArgumentParser)
