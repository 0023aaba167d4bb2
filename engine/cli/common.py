"""What the ``tierpoint`` commands share: exit statuses, the error for a command line that
cannot run, argument types, and the checks that call a wrong path what it is (missing, a file,
a run directory where a checkpoint is expected, ...) before the library is asked about it, so
that a typo is never reported as a damaged checkpoint."""
from __future__ import annotations

import argparse
import os
import re

from ..format import layout
from ..errors import CheckpointError
from ..view.locate import has_steps, is_step_dir  # noqa: F401 - the commands' path checks

EXIT_OK = 0
EXIT_DAMAGED = 1  # checked, and found damage or a difference
EXIT_USAGE = 2  # could not run: bad usage, a wrong path, unreadable metadata, unknown run/step
EXIT_INCOMPLETE = 3  # verify found no damage but could not check every chunk
EXIT_PIPE = 141  # stdout closed by its reader: what a shell reports for death by SIGPIPE


class UsageError(CheckpointError):
    """A command line that cannot run as given: a wrong path, an unknown run or step, an
    option that does not fit the others. The message says what to do."""


class CliParser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line (exit 2) instead of usage + error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message}; see '{self.prog} --help'\n")


def at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, not {text}")
        return value
    parse.minimum = minimum  # read by tests/test_cli.py: every bound gets a case below it
    return parse


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of bytes/s, not {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of bytes/s > 0, not {text}")
    return value


# ---- paths --------------------------------------------------------------------------------

def is_tier_root(path: str) -> bool:
    return any(has_steps(os.path.join(path, r)) for r in layout.list_runs(path))


def need_dir(path: str, what: str) -> str:
    if not os.path.lexists(path):
        raise UsageError(f"{what} {path} does not exist; check the path")
    if not os.path.isdir(path):
        raise UsageError(f"{what} {path} is a file, not a directory; pass the directory")
    return path


def need_root(path: str, what: str = "tier root") -> str:
    """``path`` is a tier root (or an empty directory), not a run or step directory."""
    need_dir(path, what)
    parent, name = os.path.split(os.path.normpath(os.path.abspath(path)))
    if is_step_dir(path):
        root, run = os.path.split(parent)
        raise UsageError(f"{what} {path} is a checkpoint (a step directory), not a tier root; "
                         f"pass {root} (with --run {run}), or inspect it with 'tierpoint info "
                         f"{path}'")
    if has_steps(path):
        raise UsageError(f"{what} {path} is a run directory, not a tier root; pass its parent "
                         f"with --run: {parent} --run {name}")
    return path


def need_pools(pools: list[str]) -> list[str]:
    from ..tiers.registry import is_url
    if any(is_url(p) for p in pools):
        if len(pools) > 1:
            raise UsageError(f"--persistent {' '.join(pools)}: an object store URL stands "
                             "alone; give one s3://BUCKET/PREFIX")
        return pools  # its bucket is checked when it is used (errors name endpoint, bucket)
    for pool in pools:
        if not os.path.isdir(pool):
            state = "does not exist" if not os.path.lexists(pool) else "is not a directory"
            raise UsageError(f"--persistent pool {pool} {state} (not mounted?); mount or create "
                             "it, or fix the --persistent paths")
        need_root(pool, "--persistent pool")
    return pools


def need_checkpoint(path: str, what: str = "checkpoint") -> str:
    """``path`` is a step directory with a commit marker or a manifest (damaged ones pass:
    telling what is wrong with them is verify's job). An object store's step URL passes
    as it is (opening it says what is wrong)."""
    from ..tiers.registry import is_url
    if is_url(path):
        return path
    if not os.path.lexists(path):
        raise UsageError(f"{what} {path} does not exist; pass a step directory "
                         "ROOT/RUN/step_<8 digits> ('tierpoint ls ROOT' lists them)")
    if not os.path.isdir(path):
        holder = os.path.dirname(os.path.abspath(path))
        raise UsageError(f"{what} {path} is a file, not a checkpoint; pass "
                         + (f"the step directory that holds it, {holder}" if is_step_dir(holder)
                            else "a step directory ROOT/RUN/step_<8 digits>"))
    if any(os.path.lexists(os.path.join(path, f))
           for f in (layout.COMMIT_FILE, layout.MANIFEST_FILE)):
        return path
    parent, name = os.path.split(os.path.normpath(os.path.abspath(path)))
    if has_steps(path):
        steps = layout.committed_steps_in(path)
        example = layout.step_dir(parent, name, steps[-1]) if steps else f"{path}/step_<8 digits>"
        raise UsageError(f"{what} {path} is a run directory, not a checkpoint; pass one of its "
                         f"step directories, e.g. {example} ('tierpoint ls {parent} --run "
                         f"{name}' lists them)")
    if is_tier_root(path):
        raise UsageError(f"{what} {path} is a tier root, not a checkpoint; pass a step "
                         f"directory ROOT/RUN/step_<8 digits> ('tierpoint ls {path}' lists them)")
    raise UsageError(f"{what} {path} is not a committed checkpoint (no {layout.COMMIT_FILE} "
                     f"and no {layout.MANIFEST_FILE} in it: empty, or a save cut short); pass a "
                     "committed step directory ('tierpoint ls ROOT' lists them)")


def runs_of(roots: list[str], run: str | None) -> list[str]:
    """The runs to work on (their names, as a Checkpointer takes them; ``layout.run_dir``
    gives their directories): ``run`` (which must be under one of the roots), or every run
    under the roots."""
    present = sorted({r for root in roots for r in layout.run_names(layout.list_runs(root))})
    if run is None:
        return present
    if run not in present:
        raise UsageError(f"run {run!r} is not under {' or '.join(roots)} (runs there: "
                         f"{', '.join(map(repr, present)) or 'none'}); check --run")
    return [run]


# ---- output -------------------------------------------------------------------------------

def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


_KEYWORDS = re.compile(r"\b(persistent|local)=")


def one_line(error: BaseException) -> str:
    """The error's message on one line, in the command line's words: ``persistent=`` (a
    Checkpointer keyword) is ``--persistent`` here."""
    text = " ".join(str(error).split("\n")).strip() or type(error).__name__
    return _KEYWORDS.sub(lambda m: f"--{m.group(1)}", text)
