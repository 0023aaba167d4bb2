"""Which step ``tierpoint.open(PATH_OR_ROOT, step, run=...)`` means.

``PATH_OR_ROOT`` may be a step directory (``ROOT/RUN/step_<8 digits>``), a run directory
(``ROOT/RUN``) or a tier root (``ROOT``, with ``run=`` unless it holds one run only), on
either tier: the capacity tier's step directories on its first pool are committed the same
way (marker last), so a pool is a root like a node-local one. An object store's URL is read
the same way: a step URL (``s3://BUCKET/PREFIX/RUN/step_<8 digits>``), a run URL
(``s3://BUCKET/PREFIX/RUN``) or the tier's root URL (``s3://BUCKET/PREFIX``, the
``persistent=`` it was drained to), listed by the tier itself (``runs()``, ``inventory_at``:
a step is committed exactly when its commit object, written last, is there). ``step=None``
means the newest committed step of the run. Only committed steps exist here (a step without
its commit marker is a save or drain cut short). Reads listings only; the copy is opened by
tiers/registry.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import CheckpointNotFoundError, ConfigurationError
from ..format import layout
from ..tiers.registry import is_url, url_tier


@dataclass(frozen=True)
class Located:
    """A step to open (a directory, or an object store's URL), and the run it belongs to on
    one tier (its run directory or run URL), whose committed steps ``steps`` lists."""

    run_dir: str
    step_dir: str

    @classmethod
    def of(cls, run_dir: str, step: int) -> "Located":
        return cls(run_dir, _join(run_dir, layout.step_dir_name(step)))

    def steps(self) -> list[int]:
        """The committed steps of the run in this place, ascending."""
        return committed_steps(self.run_dir)

    def at(self, step: int | None) -> "Located":
        """Step ``step`` of the same run (None: the newest committed one)."""
        return Located.of(self.run_dir, _pick(self.run_dir, self.steps(), step))


def locate(path, step: int | None = None, run: str | None = None) -> Located:
    """The run and step ``path`` (with ``step``, ``run``) names, a directory or a URL;
    raises CheckpointNotFoundError for a path or step that is not there (naming what is),
    and ConfigurationError for arguments that contradict the path."""
    path = os.fspath(path)
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ConfigurationError(f"tierpoint.open step= must be a non-negative int or None "
                                 f"(the newest committed step), not {step!r}")
    url = is_url(path)
    what = "URL" if url else "directory"
    if url:
        path = path.rstrip("/")
        parent, _, name = path.rpartition("/")
    elif not os.path.isdir(path):
        state = "does not exist" if not os.path.lexists(path) else "is not a directory"
        raise CheckpointNotFoundError(
            f"tierpoint.open: {path} {state}; pass a step directory ROOT/RUN/step_<8 "
            "digits>, a run directory ROOT/RUN, or a tier root ROOT with run=")
    else:
        parent, name = os.path.split(os.path.normpath(os.path.abspath(path)))
    if _names_a_step(path, name):  # committed or not: opening it says which
        number = layout.parse_step_dir_name(name)
        if run is not None or (step is not None and step != number):
            raise ConfigurationError(
                f"tierpoint.open: {path} is one checkpoint (a step {what}); pass its run "
                f"{what} {parent} to choose another step, and no run=")
        return Located(parent, path)
    if has_steps(path):
        if run is not None:
            raise ConfigurationError(
                f"tierpoint.open: {path} is a run {what}; pass run= only with a tier root "
                f"(here: tierpoint.open({parent!r}, run={run!r}))")
        return Located.of(path, _pick(path, committed_steps(path), step))
    directory = _run_under(path, run)
    return Located.of(directory, _pick(directory, committed_steps(directory), step))


def _run_under(root: str, run: str | None) -> str:
    """The run directory (run URL) of ``run`` under tier root ``root``, or of its only run
    holding steps when ``run`` is None."""
    every = runs_in(root)
    if run is not None and layout.escape_component(run) in every:
        return _join(root, layout.escape_component(run))
    runs = [r for r in every if has_steps(_join(root, r))]  # a listing each: only when needed
    if run is not None:
        raise CheckpointNotFoundError(
            f"tierpoint.open: run {run!r} is not under {root} (runs there: "
            f"{', '.join(map(repr, runs)) or 'none'})")
    if not runs:
        raise CheckpointNotFoundError(
            f"tierpoint.open: {root} holds no checkpoints (no step_<8 digits> "
            f"{'prefixes' if is_url(root) else 'directories'} in it or in its runs)")
    if len(runs) > 1:
        raise ConfigurationError(
            f"tierpoint.open: {root} is a tier root holding the runs "
            f"{', '.join(map(repr, runs))}; pass run= to choose one")
    return _join(root, runs[0])


def _pick(run_dir: str, steps: list[int], step: int | None) -> int:
    if not steps:
        raise CheckpointNotFoundError(
            f"tierpoint.open: the run {run_dir} holds no committed checkpoint")
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
    """Whether directory ``path`` is meant as one checkpoint: named as a step directory, or
    holding a commit marker or manifest (a damaged one is still a checkpoint, to be told so)."""
    return (layout.parse_step_dir_name(os.path.basename(os.path.normpath(path))) is not None
            or any(os.path.lexists(os.path.join(path, f))
                   for f in (layout.COMMIT_FILE, layout.MANIFEST_FILE)))


def _names_a_step(path: str, name: str) -> bool:
    """Whether ``path`` (last component ``name``) is meant as one checkpoint: a URL named
    as a step (an object store has no directory to look into), a directory by
    ``is_step_dir``."""
    if is_url(path):
        return layout.parse_step_dir_name(name) is not None
    return is_step_dir(path)


def has_steps(directory: str) -> bool:
    """Whether ``directory`` (or a URL) holds steps, committed or not: a run directory (run
    URL)."""
    tier = url_tier(directory)
    if tier is not None:
        return bool(tier.inventory_at(directory))
    try:
        return any(layout.parse_step_dir_name(n) is not None for n in os.listdir(directory))
    except OSError:
        return False


def committed_steps(run_dir: str) -> list[int]:
    """The committed steps of the run directory (or run URL) ``run_dir``, ascending."""
    tier = url_tier(run_dir)
    if tier is None:
        return layout.committed_steps_in(run_dir)
    return sorted(s for s, committed in tier.inventory_at(run_dir).items() if committed)


def runs_in(root: str) -> list[str]:
    """The run names (as escaped in paths and keys) under a tier root directory or URL."""
    tier = url_tier(root)
    return layout.list_runs(root) if tier is None else tier(root).runs()


def _join(place: str, name: str) -> str:
    """``name`` under a directory or a URL."""
    return f"{place}/{name}" if is_url(place) else os.path.join(place, name)
