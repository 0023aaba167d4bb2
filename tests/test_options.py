"""Every bad argument, setting or environment variable of Policy and Checkpointer raises
ConfigurationError: a CheckpointError (as the README promises of every error) and still a
ValueError (as earlier releases raised), whose message names the argument, its environment
variable where it has one, and the values allowed."""
import pytest

import tierpoint
from tierpoint.errors import error_class
from tierpoint.options import Options

BAD_POLICIES = [
    (dict(keep_local=0), "Policy keep_local must be an integer >= 1"),
    (dict(keep_local="2"), "Policy keep_local must be an integer >= 1"),
    (dict(drain_every=0), "Policy drain_every must be an integer >= 1"),
    (dict(drain_every=2.5), "Policy drain_every must be an integer >= 1"),
    (dict(keep_persistent=0), "Policy keep_persistent must be an integer >= 1 (or None"),
    (dict(keep_every=-5), "Policy keep_every must be an integer >= 1 (or None"),
    (dict(pin=7), "Policy pin must be a collection of step numbers"),
    (dict(pin=[3, "x"]), "every step in Policy pin must be an integer >= 0, not 'x'"),
    (dict(pin=[-1]), "every step in Policy pin must be an integer >= 0, not -1"),
]

BAD_SETTINGS = [
    (dict(io_threads=0), "io_threads= (TIERPOINT_IO_THREADS) must be an integer >= 1, not 0"),
    (dict(chunk_bytes=0), "chunk_bytes= must be an integer >= 1"),
    (dict(timeout=0), "timeout= (TIERPOINT_TIMEOUT) must be a number > 0 (seconds), not 0"),
    (dict(timeout=float("nan")), "timeout= (TIERPOINT_TIMEOUT) must be a number > 0"),
    (dict(drain_rate=-1.0), "drain_rate= (TIERPOINT_DRAIN_RATE) must be a number > 0"),
    (dict(sync="sometimes"),
     "sync= (TIERPOINT_SYNC) must be one of 'syncfs', 'fsync', 'none', not 'sometimes'"),
    (dict(if_busy="queue"), "if_busy= must be one of 'wait', 'skip', not 'queue'"),
    (dict(if_full="ignore"), "if_full= (TIERPOINT_IF_FULL) must be one of 'raise', 'warn'"),
    (dict(staging_bytes=1 << 20, chunk_bytes=4 << 20),
     "staging_bytes= (TIERPOINT_STAGING_BYTES) must be an integer >= 4194304 (at least "
     "chunk_bytes"),
]

BAD_ENVIRONMENT = [
    ("TIERPOINT_IO_THREADS", "four", "environment variable TIERPOINT_IO_THREADS='four' is not "
                                     "an integer: set it to a valid io_threads or unset it"),
    ("TIERPOINT_IO_THREADS", "0", "io_threads= (TIERPOINT_IO_THREADS) must be an integer >= 1"),
    ("TIERPOINT_TIMEOUT", "5m", "environment variable TIERPOINT_TIMEOUT='5m' is not a number"),
    ("TIERPOINT_DRAIN_RATE", "fast", "TIERPOINT_DRAIN_RATE='fast' is not a number"),
    ("TIERPOINT_STAGING_BYTES", "1.5G", "TIERPOINT_STAGING_BYTES='1.5G' is not an integer"),
    ("TIERPOINT_SYNC", "never", "sync= (TIERPOINT_SYNC) must be one of"),
    ("TIERPOINT_IF_FULL", "drop", "if_full= (TIERPOINT_IF_FULL) must be one of"),
]

BAD_CHECKPOINTER = [
    (dict(local=None), "Checkpointer local= must be the node-local tier's root directory"),
    (dict(local=""), "Checkpointer local= must be the node-local tier's root directory"),
    (dict(run=""), "Checkpointer run= must be a non-empty string naming the run, not ''"),
    (dict(run=7), "Checkpointer run= must be a non-empty string"),
    (dict(policy={"keep_local": 2}), "Checkpointer policy= must be a tierpoint.Policy or None"),
    (dict(aggregators=0), "Checkpointer aggregators= must be an integer >= 1, or None"),
    (dict(io_threads=-1), "io_threads= (TIERPOINT_IO_THREADS) must be an integer >= 1"),
    (dict(sync="maybe"), "sync= (TIERPOINT_SYNC) must be one of"),
]


def _check(info, fragment):
    """The error is also a CheckpointError and a ValueError, and says ``fragment``."""
    err = info.value
    assert isinstance(err, tierpoint.CheckpointError) and isinstance(err, ValueError)
    assert fragment in str(err), str(err)


@pytest.mark.parametrize("kwargs,fragment", BAD_POLICIES)
def test_bad_policy_values(kwargs, fragment):
    with pytest.raises(tierpoint.ConfigurationError) as info:
        tierpoint.Policy(**kwargs)
    _check(info, fragment)


@pytest.mark.parametrize("kwargs,fragment", BAD_SETTINGS)
def test_bad_settings(kwargs, fragment):
    with pytest.raises(tierpoint.ConfigurationError) as info:
        Options.from_env(**kwargs)
    _check(info, fragment)


@pytest.mark.parametrize("variable,text,fragment", BAD_ENVIRONMENT)
def test_bad_environment_variables(monkeypatch, variable, text, fragment):
    monkeypatch.setenv(variable, text)
    with pytest.raises(tierpoint.ConfigurationError) as info:
        Options.from_env()
    _check(info, fragment)


def test_an_argument_overrides_its_environment_variable_even_when_that_is_bad(monkeypatch):
    monkeypatch.setenv("TIERPOINT_TIMEOUT", "5m")
    assert Options.from_env(timeout=12.5).timeout == 12.5
    monkeypatch.setenv("TIERPOINT_TIMEOUT", "30")
    assert Options.from_env().timeout == 30.0


def test_the_audit_key_file_is_a_setting_with_its_environment_variable(monkeypatch):
    monkeypatch.delenv("TIERPOINT_AUDIT_KEY_FILE", raising=False)
    assert Options.from_env().audit_key_file is None
    monkeypatch.setenv("TIERPOINT_AUDIT_KEY_FILE", "/keys/run")
    assert Options.from_env().audit_key_file == "/keys/run"
    assert Options.from_env(audit_key_file="/keys/other").audit_key_file == "/keys/other"


@pytest.mark.parametrize("kwargs,fragment", BAD_CHECKPOINTER)
def test_bad_checkpointer_arguments(tmp_path, kwargs, fragment):
    kwargs = {"local": str(tmp_path / "local"), **kwargs}
    with pytest.raises(tierpoint.ConfigurationError) as info:
        tierpoint.Checkpointer(**kwargs)
    _check(info, fragment)
    assert not (tmp_path / "local").exists()  # refused before anything was created


def test_good_values_are_kept():
    policy = tierpoint.Policy(keep_local=3, drain_every=1, keep_persistent=4, keep_every=10,
                              pin=[5, 10])
    assert policy.pin == frozenset({5, 10})
    options = Options.from_env(io_threads=2, timeout=1, drain_rate=1e6, sync="fsync",
                               staging_bytes=64 << 20)
    assert (options.io_threads, options.timeout, options.staging_bytes) == (2, 1, 64 << 20)


def test_the_error_crosses_ranks_as_itself():
    # Errors are rebuilt on every rank from their class name: a rank whose arguments were
    # refused is reported as ConfigurationError on the others too.
    assert error_class("ConfigurationError") is tierpoint.ConfigurationError
