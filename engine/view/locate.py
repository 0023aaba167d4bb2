"""Which step directory ``tierpoint.open(PATH_OR_ROOT, step, run=...)`` means.

``PATH_OR_ROOT`` may be a step directory (``ROOT/RUN/step_<8 digits>``), a run directory
(``ROOT/RUN``) or a tier root (``ROOT``, with ``run=`` unless it holds one run only), on
either tier: the capacity tier's step directories on its first pool are committed the same
way (marker last), so a pool is a root like a node-local one. ``step=None`` means the newest
committed step of the run. An object store's step URL (``s3://...``) opens that one step.
Only committed steps exist here (a directory without its commit marker is a save cut short).
Reads the directory listings only; the copy is opened by tiers/registry.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import CheckpointNotFoundError, ConfigurationError
from ..format import layout
from ..tiers.registry import is_url


@dataclass(frozen=True)
class Located:
    """A step directory to open, and the run directory of one tier it belongs to."""

    run_dir: str | None  # None: an object store's step URL, opened alone
    step_dir: str

    @classmethod
    def of(cls, run_dir: str, step: int) -> "Located":
        return cls(run_dir, os.path.join(run_dir, layout.step_dir_name(step)))

    def steps(self) -> list[int]:
        """The committed steps of the run in this place, ascending."""
        if self.run_dir is None:
            raise ConfigurationError(
                f"tierpoint.open: {self.step_dir} was opened by its URL alone; list the "
                "run's steps with 'tierpoint ls' and open each step's URL")
        return layout.committed_steps_in(self.run_dir)

    def at(self, step: int | None) -> "Located":
        """Step ``step`` of the same run (None: the newest committed one)."""
        return Located.of(self.run_dir, _pick(self.run_dir, self.steps(), step))


def locate(path, step: int | None = None, run: str | None = None) -> Located:
    """The run directory and step ``path`` (with ``step``, ``run``) names; raises
    CheckpointNotFoundError for a path or step that is not there (naming what is), and
    ConfigurationError for arguments that contradict the path."""
    path = os.fspath(path)
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ConfigurationError(f"tierpoint.open step= must be a non-negative int or None "
                                 f"(the newest committed step), not {step!r}")
    if is_url(path):  # an object store's step URL: that one step, opened by the registry
        if step is not None or run is not None:
            raise ConfigurationError(
                f"tierpoint.open: {path} is an object store URL; pass the URL of one step "
                "(.../RUN/step_<8 digits>), without step= or run=")
        return Located(None, path)
    if not os.path.isdir(path):
        state = "does not exist" if not os.path.lexists(path) else "is not a directory"
        raise CheckpointNotFoundError(
            f"tierpoint.open: {path} {state}; pass a step directory ROOT/RUN/step_<8 "
            "digits>, a run directory ROOT/RUN, or a tier root ROOT with run=")
    parent, name = os.path.split(os.path.normpath(os.path.abspath(path)))
    if is_step_dir(path):  # committed or not: opening it says which (layout.read_header)
        number = layout.parse_step_dir_name(name)
        if run is not None or (step is not None and step != number):
            raise ConfigurationError(
                f"tierpoint.open: {path} is one checkpoint (a step directory); pass its run "
                f"directory {parent} to choose another step, and no run=")
        return Located(parent, path)
    if has_steps(path):
        if run is not None:
            raise ConfigurationError(
                f"tierpoint.open: {path} is a run directory; pass run= only with a tier root "
                f"(here: tierpoint.open({parent!r}, run={run!r}))")
        return Located.of(path, _pick(path, layout.committed_steps_in(path), step))
    runs = [r for r in layout.list_runs(path) if has_steps(os.path.join(path, r))]
    if run is None:
        if not runs:
            raise CheckpointNotFoundError(
                f"tierpoint.open: {path} holds no checkpoints (no step_<8 digits> directories "
                "in it or in its run directories)")
        if len(runs) > 1:
            raise ConfigurationError(
                f"tierpoint.open: {path} is a tier root holding the runs "
                f"{', '.join(map(repr, runs))}; pass run= to choose one")
        directory = os.path.join(path, runs[0])
    else:
        directory = layout.run_dir(path, run)
        if not os.path.isdir(directory):
            raise CheckpointNotFoundError(
                f"tierpoint.open: run {run!r} is not under {path} (runs there: "
                f"{', '.join(map(repr, runs)) or 'none'})")
    return Located.of(directory, _pick(directory, layout.committed_steps_in(directory), step))


def _pick(run_dir: str, steps: list[int], step: int | None) -> int:
    if not steps:
        raise CheckpointNotFoundError(
            f"tierpoint.open: the run directory {run_dir} holds no committed checkpoint")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise CheckpointNotFoundError(
            f"tierpoint.open: step {step} is not a committed checkpoint in {run_dir} "
            f"(committed steps: {_listed(steps)})")
    return step


def _listed(steps: list[int]) -> str:
    return ", ".join(map(str, steps[:20])) + (f", ... ({len(steps)} in all)"
                                              if len(steps) > 20 else "")


def is_step_dir(path: str) -> bool:
    """Whether ``path`` is meant as one checkpoint: named as a step directory, or holding a
    commit marker or manifest (a damaged one is still a checkpoint, to be told so)."""
    return (layout.parse_step_dir_name(os.path.basename(os.path.normpath(path))) is not None
            or any(os.path.lexists(os.path.join(path, f))
                   for f in (layout.COMMIT_FILE, layout.MANIFEST_FILE)))


def has_steps(directory: str) -> bool:
    """Whether ``directory`` holds step directories (committed or not): a run directory."""
    try:
        return any(layout.parse_step_dir_name(n) is not None for n in os.listdir(directory))
    except OSError:
        return False
