"""``Checkpointer``: the one object a trainer uses. It runs the phases of a save
(flatten/declare -> plan -> prepare -> write -> commit) and of a restore (choose step ->
plan reads -> read), each phase ending in a collective ``agree`` so that a failure on any
rank is raised as the same CheckpointError on every rank and nothing is committed.

Every public method except ``steps`` and ``close`` is collective: all ranks of the
communicator call it, in the same order, with the same step.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import socket
import threading
import time
import warnings

import numpy as np

from . import comm as comm_mod
from . import dtypes, layout
from .errors import (CheckpointError, CheckpointWarning, CheckpointExistsError, CheckpointNotFoundError,
                     ShardingError, StateMismatchError)
from .options import Options, Policy, expand_root, node_name
from .drain import (CapacityReader, RemoteChunks, check_pools, merge_parts, plan_drain,
                    read_chunk, remove_uncommitted, send_chunks, verify_capacity,
                    write_aggregator_parts)
from .plan import plan_save
from .retention import due_for_drain, local_deletions
from .read import read_array
from .reshard import plan_box_read
from .state import ArrayLeaf, check_json, flatten, host_bits, rebuild
from .types import LocalArray
from .write import fsync_group_dirs, write_group_metadata, write_rank_files

__version__ = "0.1.0"


class SaveHandle:
    """The result of ``save``. ``wait()`` returns the step once it is committed on every
    rank, or raises the save's CheckpointError (the same on every rank)."""

    def __init__(self, step: int, error: CheckpointError | None = None, stats: dict | None = None):
        self.step = step
        self._error = error
        self.stats = stats or {}

    def done(self) -> bool:
        return True

    def wait(self) -> int:
        if self._error is not None:
            raise self._error
        return self.step


class _PhaseRunner:
    """Runs one phase of a collective operation on this rank and agrees on its outcome:
    returns every rank's result, or raises the same CheckpointError on every rank."""

    def __init__(self, comm, what: str, timeout: float):
        self.comm, self.what, self.timeout = comm, what, timeout
        self.seconds: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def run(self, name: str, fn):
        t = time.perf_counter()
        try:
            result, error = fn(), None
        except Exception as e:  # noqa: BLE001 - every failure must reach every rank
            result, error = None, e
        values = self.comm.agree(error, what=self.what, value=result, timeout=self.timeout)
        self.seconds[name] = time.perf_counter() - t
        return values

    def total(self) -> float:
        return time.perf_counter() - self._t0


class Checkpointer:
    """Sharded checkpoints of a run under a node-local tier root.

    ``local``: the node-local tier root; ``{node}`` in it is replaced by the node name
    (hostname, or ``TIERPOINT_NODE``). ``persistent`` and ``policy`` configure the capacity
    tier (tiering release). ``comm``: None picks MPI COMM_WORLD when mpi4py is in use, else
    the default torch.distributed group when initialised, else a single process; an mpi4py
    communicator or a torch ProcessGroup may be passed.

    Keyword settings (defaults in ``options.Options``, environment overrides there):
    ``io_threads`` per rank (4), ``chunk_bytes`` the largest chunk the planner makes where
    shard boundaries allow (32 MiB), ``timeout`` of a collective in seconds (1800),
    ``sync`` how files are made durable before the commit ("syncfs" or "fsync"),
    ``drain_rate`` the bandwidth cap of background drains (bytes/s per aggregator),
    ``aggregators`` how many node leaders write the capacity parts (default: one per node).
    """

    def __init__(self, local, persistent=None, run: str = "default", policy: Policy | None = None,
                 comm=None, *, io_threads: int | None = None, chunk_bytes: int | None = None,
                 timeout: float | None = None, sync: str | None = None,
                 drain_rate: float | None = None, aggregators: int | None = None):
        if not isinstance(run, str) or not run:
            raise ValueError("run must be a non-empty string")
        self.run = run
        self.policy = policy or Policy()
        self.options = Options.from_env(io_threads=io_threads, chunk_bytes=chunk_bytes,
                                        timeout=timeout, sync=sync, drain_rate=drain_rate)
        self._comm = comm_mod.resolve(comm)
        self.rank, self.world_size = self._comm.rank, self._comm.size
        self.node = node_name()
        self.local_root = expand_root(local, self.node)
        me = {"rank": self.rank, "node": self.node, "host": socket.gethostname(),
              "pid": os.getpid(), "tier_dir": self.local_root}
        self._ranks = self._comm.agree(None, what="tierpoint startup", value=me,
                                       timeout=self.options.timeout)
        # Ranks that share a node and a local root share a directory: one leader writes
        # its shared files (group metadata, manifest, marker).
        groups: dict[tuple, list[int]] = {}
        for info in self._ranks:
            groups.setdefault((info["node"], info["tier_dir"]), []).append(info["rank"])
        self._group_ranks = groups[(self.node, self.local_root)]
        group_ids = {g: i for i, g in enumerate(groups)}
        self._domains = [group_ids[(i["node"], i["tier_dir"])] for i in self._ranks]
        # Each domain's leader reads its chunks when draining; the first ``aggregators``
        # leaders (default: all) write the capacity parts, leader d serving domain d mod K.
        leaders = [members[0] for members in groups.values()]
        count = len(leaders) if not aggregators else max(1, min(int(aggregators), len(leaders)))
        self._reader_of_rank = [leaders[d] for d in self._domains]
        self._aggregator_of_reader = {leaders[d]: leaders[d % count] for d in range(len(leaders))}
        self._aggregator_index = {leaders[k]: k for k in range(count)}
        self.pools = _pool_list(persistent)
        self.last_drain_error: CheckpointError | None = None
        # Background drains run on a channel of their own, one at a time.
        self._drain_comm = self._comm.duplicate() if self.pools else None
        self._drain_thread: threading.Thread | None = None
        self._drain_outcome: dict = {}
        self._is_leader = self._group_ranks[0] == self.rank
        self._closed = False

    # ---- introspection ---------------------------------------------------------------------

    def step_dir(self, step: int) -> str:
        return layout.step_dir(self.local_root, self.run, step)

    def steps(self) -> list[int]:
        """Committed steps in this rank's local tier directory (not collective)."""
        return layout.committed_steps(self.local_root, self.run)

    # ---- save ------------------------------------------------------------------------------

    def save(self, step: int, state, metadata: dict | None = None, *,
             overwrite: bool = False) -> SaveHandle:
        """Save ``state`` as checkpoint ``step``; returns when it is committed on all ranks.

        ``overwrite=True`` replaces a committed checkpoint of the same step (the old one is
        un-committed first). Errors are raised as CheckpointError on every rank; nothing is
        committed then and earlier checkpoints are untouched.
        """
        self._check_open()
        phases = _PhaseRunner(self._comm, f"save of step {step} (run {self.run!r})",
                              self.options.timeout)
        directory = self.step_dir(step)
        leader = self._is_leader

        # 1. Flatten and declare (local); learn every rank's shards. Rank 0's JSON values
        #    go into the manifest.
        arrays = []

        def declare():
            check_json(metadata, ("metadata",))
            leaves, values = flatten(state)
            arrays.extend(leaves)
            out = {"arrays": [[a.declaration().to_json(), list(a.key)] for a in arrays],
                   "exists": leader and layout.is_committed(directory)}
            if self.rank == 0:
                out["values"] = {v.name: {"key": list(v.key), "value": v.value} for v in values}
                out["ordinal"] = 1 + max([layout.latest_ordinal(self.local_root, self.run)] +
                                         [layout.latest_ordinal(p, self.run) for p in self.pools])
            return out
        gathered = phases.run("declare", declare)
        holders = [r for r, g in enumerate(gathered) if g["exists"]]
        if holders and not overwrite:
            raise CheckpointExistsError(
                f"{phases.what}: step {step} is already committed under "
                f"{self._ranks[holders[0]]['tier_dir']}; pass overwrite=True to replace it or "
                "save under a new step")
        # 2. Plan: pure and deterministic, so every rank computes the same plan.
        plan = plan_save([[LocalArray.from_json(d) for d, _ in g["arrays"]] for g in gathered],
                         chunk_bytes=self.options.chunk_bytes, domains=self._domains)
        keys = {d[0]: k for g in gathered for d, k in g["arrays"]}
        names = [a.name for a in plan.arrays]

        # 3. Leaders clear what is at that step (an interrupted save's leftovers, or the
        #    checkpoint being overwritten, un-committed first), then lay out the groups. Two
        #    phases: leaders sharing one directory must not remove each other's new files.
        phases.run("clear", lambda: leader and _remove_step_dir(directory))
        attributes = {"tierpoint": {"run": self.run, "step": step,
                                    "format_version": layout.FORMAT_VERSION}}
        phases.run("prepare", lambda: leader and write_group_metadata(directory, names,
                                                                      attributes))

        # 4. Write this rank's chunks and its share of the arrays' zarr.json documents
        #    (every directory gets every array's, spread over the ranks that share it).
        def write():
            by_name = {a.name: a for a in arrays}
            work = plan.writes_of(self.rank)
            sources = {p.name: (host_bits(by_name[p.name].obj), by_name[p.name].box)
                       for p, _ in work}
            group = self._group_ranks
            docs = [(p.name, layout.zarr_array_metadata(p, tuple(keys[p.name])))
                    for i, p in enumerate(plan.arrays) if group[i % len(group)] == self.rank]
            records = write_rank_files(directory, self.rank, work, sources, docs,
                                       threads=self.options.io_threads, sync=self.options.sync,
                                       small_file_bytes=self.options.small_file_bytes)
            return [[r.array, list(r.index), r.nbytes, r.crc32c] for r in records]
        written = phases.run("write", write)

        # 5. Commit: every leader's manifest is durable before any marker is written.
        ordinal = gathered[0]["ordinal"]
        manifest = self._manifest(step, plan, keys, gathered[0].get("values", {}), written,
                                  metadata, ordinal)

        def write_manifest():
            if leader:
                fsync_group_dirs(directory, names)
                return hashlib.sha256(layout.write_manifest(directory, manifest)).hexdigest()
        digests = phases.run("manifest", write_manifest)
        phases.run("commit", lambda: leader and layout.write_commit_marker(
            directory, step, digests[self.rank]))
        nbytes = sum(r[2] for rank_records in written for r in rank_records)
        stats = {"seconds": phases.total(), "phases": phases.seconds, "bytes": nbytes}
        self._after_commit(step, ordinal, stats)
        return SaveHandle(step, stats=stats)

    # ---- tiers -----------------------------------------------------------------------------

    def _after_commit(self, step: int, ordinal: int, stats: dict) -> None:
        """Start a background drain when the policy says so, then apply the local ring
        (collective). A step being drained is due and not yet drained, so the ring keeps it."""
        if self.pools and due_for_drain(ordinal, self.policy):
            self._finish_background_drain()
            self._drain_outcome = {}
            self._drain_thread = threading.Thread(
                target=self._background_drain, args=(step,), name="tierpoint-drain",
                daemon=True)
            self._drain_thread.start()
        self._apply_local_retention()

    def _background_drain(self, step: int) -> None:
        try:
            self._drain_outcome["result"] = self.drain(step, rate=self.options.drain_rate,
                                                       _comm=self._drain_comm)
            # The drained step may now leave the local ring (on the drain's channel).
            self._apply_local_retention(self._drain_comm)
        except CheckpointError as e:
            self._drain_outcome["error"] = e
        except Exception as e:  # noqa: BLE001 - never lose a background failure
            self._drain_outcome["error"] = CheckpointError(f"drain of step {step}: {e}")

    def _finish_background_drain(self) -> dict | None:
        """Wait for the background drain; its failure (the same on every rank) becomes a
        CheckpointWarning: the save it followed stays committed on the local tier."""
        thread, self._drain_thread = self._drain_thread, None
        if thread is None:
            return None
        thread.join()
        error = self._drain_outcome.get("error")
        if error is not None:
            self._warn_drain_failed(error)
        return self._drain_outcome.get("result")

    def _warn_drain_failed(self, error: CheckpointError) -> None:
        self.last_drain_error = error
        warnings.warn(f"tierpoint: {error}; the local checkpoint is kept", CheckpointWarning,
                      stacklevel=3)

    def capacity_steps(self) -> list[int]:
        """Committed steps on the capacity tier (not collective)."""
        return layout.committed_steps(self.pools[0], self.run) if self.pools else []

    def _apply_local_retention(self, comm=None) -> None:
        """Delete the local checkpoints the policy no longer wants (collective on ``comm``,
        the foreground channel by default). The foreground and the drain thread may both
        run it; removing a step directory twice is harmless."""
        phases = _PhaseRunner(comm or self._comm, f"local retention of run {self.run!r}",
                              self.options.timeout)

        def prune():
            if not self._is_leader:
                return []
            local = self.steps()
            drained = set(self.capacity_steps())
            due = set()
            if self.pools:
                for s in local:
                    try:
                        o = layout.load_manifest(self.step_dir(s)).get("ordinal", 0)
                    except CheckpointError:
                        continue
                    if due_for_drain(o, self.policy):
                        due.add(s)
            doomed = local_deletions(local, due=due, drained=drained, policy=self.policy)
            for s in doomed:
                _remove_step_dir(self.step_dir(s))
            return doomed
        phases.run("prune", prune)

    def drain(self, step: int | None = None, *, rate: float | None = None,
              progress=None, _comm=None) -> dict:
        """Copy committed local checkpoint ``step`` (default: the newest) to the capacity
        tier, verify it and commit it there (collective). ``rate`` caps each aggregator's
        copy rate in bytes/s; ``progress(nbytes)`` is called as bytes are copied. Returns
        what was done; raises CheckpointError on failure (then no capacity copy of the step
        exists)."""
        self._check_open()
        if not self.pools:
            raise CheckpointError("drain: this Checkpointer has no persistent= capacity tier")
        if _comm is None:  # a foreground drain first lets a background one finish
            self._finish_background_drain()
        phases = _PhaseRunner(_comm or self._comm, f"drain of run {self.run!r}" +
                              (f" step {step}" if step is not None else ""),
                              self.options.timeout)
        step = self._choose_step(step, phases.run("find", self.steps), phases.what)
        head = layout.capacity_head(self.pools, self.run, step)

        def clean():
            if self.rank == 0:
                check_pools(self.pools)
                if layout.is_committed(head):
                    return True
                remove_uncommitted(self.pools, self.run, step)
            return False
        if phases.run("clean", clean)[0]:
            return {"step": step, "already": True}
        manifest = None

        def copy():
            nonlocal manifest
            manifest = layout.load_manifest(self.step_dir(step))
            # Saving ranks map to draining readers through the directory they wrote in.
            ours = {(i["node"], i["tier_dir"]): self._reader_of_rank[i["rank"]]
                    for i in self._ranks}
            work = plan_drain(manifest, [ours.get((r["node"], r["tier_dir"]))
                                         for r in manifest["layout"]["ranks"]])
            local_dir = self.step_dir(step)

            def fetch_local(name, key):
                return read_chunk(local_dir, manifest, name, key)
            me, comm = self.rank, phases.comm
            if me in self._aggregator_index:
                agg = self._aggregator_index[me]
                remote = [RemoteChunks(comm, r, manifest, work.get(r, []))
                          for r in sorted(self._aggregator_of_reader)
                          if self._aggregator_of_reader[r] == me and r != me]
                sources = [(work.get(me, []), fetch_local)] + [(rc.items, rc.fetch)
                                                              for rc in remote]
                try:
                    return write_aggregator_parts(
                        self.pools, self.run, step, agg, manifest, sources,
                        with_metadata=agg == 0, local_step_dir=local_dir, rate=rate,
                        progress=progress)
                finally:
                    for rc in remote:  # senders must never block on a receiver that quit
                        rc.discard_rest()
            if me in self._aggregator_of_reader:
                send_chunks(comm, self._aggregator_of_reader[me], work.get(me, []), fetch_local)
            return None
        parts = [p for written in phases.run("copy", copy) if written for p in written]

        phases.run("merge", lambda: self.rank == 0 and merge_parts(
            head, {p["name"]: p["path"] for p in parts}))
        phases.run("verify", lambda: verify_capacity(head, manifest,
                                                     (phases.comm.rank, phases.comm.size)))

        def commit():
            if self.rank == 0:
                drained = dict(manifest, tier={"kind": "capacity", "pools": self.pools,
                                               "parts": [p["path"] for p in parts]})
                digest = hashlib.sha256(layout.write_manifest(head, drained)).hexdigest()
                layout.write_commit_marker(head, step, digest)
        phases.run("commit", commit)
        return {"step": step, "seconds": phases.total(), "phases": phases.seconds,
                "bytes": sum(p["bytes"] for p in parts), "parts": len(parts)}

    def _manifest(self, step, plan, keys, values, written, metadata, ordinal) -> dict:
        chunks: dict[str, dict] = {a.name: {} for a in plan.arrays}
        for writer, records in enumerate(written):
            for name, index, nbytes, crc in records:
                key = layout.chunk_key(tuple(index))
                known = chunks[name].get(key)
                if known is None:
                    chunks[name][key] = {"nbytes": nbytes, "crc32c": crc, "writers": [writer]}
                elif known["crc32c"] != crc:
                    # Replicas of one chunk written on two nodes differ: the "replicated"
                    # state was not identical on every rank.
                    raise ShardingError(
                        f"array {name!r}: chunk {key} differs between rank "
                        f"{known['writers'][0]} and rank {writer}, but the array was declared "
                        "replicated (identical on every rank); shard it or make it identical")
                else:
                    known["writers"].append(writer)
        arrays = {}
        for a in plan.arrays:
            arrays[a.name] = {
                "name": a.name, "path": a.name, "key": keys[a.name], "dtype": a.dtype,
                "shape": list(a.shape), "chunk_shape": list(a.chunk_shape),
                "shards": [{**box.to_json(), "ranks": list(holders)}
                           for box, holders in a.saved_boxes],
                "chunks": chunks[a.name],
            }
        return layout.build_manifest(
            run=self.run, step=step, world_size=self.world_size, ranks=self._ranks,
            arrays=arrays, values=values, metadata=metadata, versions=_versions(),
            ordinal=ordinal)

    # ---- restore ---------------------------------------------------------------------------

    def restore(self, template, step: int | None = None, *, strict: bool = True):
        """Fill ``template`` from checkpoint ``step`` (default: the latest step committed on
        every rank's tier) and return the state.

        Tensors of the template are filled in place (a DTensor's local shard, a Shard's box,
        a plain tensor whole); JSON values come back as saved. Only the template's keys are
        read. A missing key, or a shape or dtype mismatch, is a StateMismatchError naming the
        key; ``strict=False`` skips keys missing from the checkpoint.
        """
        self._check_open()
        phases = _PhaseRunner(self._comm, f"restore of run {self.run!r}" +
                              (f" step {step}" if step is not None else ""),
                              self.options.timeout)
        found = phases.run("find", lambda: {"local": self.steps(),
                                            "capacity": self.capacity_steps()})
        step = self._choose_step(step, [f["local"] + f["capacity"] for f in found], phases.what)
        mine = found[self.rank]
        local_dir = self.step_dir(step) if step in mine["local"] else None
        head = (layout.capacity_head(self.pools, self.run, step)
                if step in mine["capacity"] else None)
        replaced: dict = {}
        values: dict = {}

        def read():
            capacity = CapacityReader(head) if head else None
            manifest = layout.load_manifest(local_dir or head)
            source = local_dir or head
            arrays, value_leaves = flatten(template)
            for leaf in arrays:
                self._restore_array(local_dir, capacity, manifest, leaf, strict, replaced)
            for v in value_leaves:
                saved = manifest["values"].get(v.name)
                if saved is not None:
                    values[v.name] = saved["value"]
                elif strict:
                    raise StateMismatchError(
                        f"key {v.name!r} of the template is not a JSON value in checkpoint "
                        f"step {step} ({source}); pass strict=False to skip missing keys")
        phases.run("read", read)
        return rebuild(template, values, replaced)

    def _choose_step(self, step, per_rank, what) -> int:
        common = set(per_rank[0]).intersection(*map(set, per_rank[1:]))
        if step is None:
            if not common:
                raise CheckpointNotFoundError(
                    f"{what}: no checkpoint of run {self.run!r} is committed on every rank's "
                    f"tier (rank 0 looks in {self._ranks[0]['tier_dir']})")
            return max(common)
        if step not in common:
            missing = [r for r, steps in enumerate(per_rank) if step not in steps]
            raise CheckpointNotFoundError(
                f"{what}: step {step} is not committed on the tier of ranks {missing} "
                f"(rank {missing[0]} looks in {self._ranks[missing[0]]['tier_dir']})")
        return step

    def _restore_array(self, local_dir, capacity, manifest, leaf: ArrayLeaf, strict,
                       replaced) -> None:
        entry = manifest["arrays"].get(leaf.name)
        if entry is None:
            if strict:
                raise StateMismatchError(
                    f"key {leaf.name!r} is not an array in checkpoint step {manifest['step']}"
                    f" ({local_dir or capacity.head_dir}); pass strict=False to skip missing "
                    "keys")
            return
        if tuple(entry["shape"]) != leaf.global_shape:
            raise StateMismatchError(
                f"key {leaf.name!r}: the checkpoint holds shape {entry['shape']} but the "
                f"template has global shape {list(leaf.global_shape)}")
        if entry["dtype"] != leaf.dtype:
            raise StateMismatchError(
                f"key {leaf.name!r}: the checkpoint holds {entry['dtype']} but the template "
                f"has {leaf.dtype}")
        target, finish = _writable_bits(leaf, replaced)
        items = plan_box_read(leaf.name, tuple(entry["shape"]), tuple(entry["chunk_shape"]),
                              leaf.box)
        read_array(local_dir, entry, items, target, threads=self.options.io_threads,
                   where=f"the local tier ({self.local_root})", capacity=capacity)
        finish()

    # ---- lifecycle -------------------------------------------------------------------------

    def wait(self) -> None:
        """Wait for the background drain, if one runs (a failure becomes a warning)."""
        self._check_open()
        self._finish_background_drain()

    def close(self) -> None:
        """Drain the newest local checkpoint if the capacity tier lacks it (collective when
        a capacity tier is configured), then release the communicator."""
        if self._closed:
            return
        if self.pools:
            self._finish_background_drain()
            newest = self._comm.agree(None, what="close", value=self.steps()[-1:],
                                      timeout=self.options.timeout)
            common = set(newest[0]).intersection(*map(set, newest[1:]))
            if common and max(common) not in self.capacity_steps():
                try:
                    self.drain(max(common))
                except CheckpointError as e:
                    self._warn_drain_failed(e)
        self._closed = True
        for channel in {id(c): c for c in (self._comm, self._drain_comm) if c}.values():
            free = getattr(channel, "free", None)
            if free:
                free()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError("this Checkpointer is closed")



def _writable_bits(leaf: ArrayLeaf, replaced: dict):
    """(numpy bits of the requested box to fill, function to call once filled)."""
    obj = leaf.obj
    if isinstance(obj, np.generic) or (isinstance(obj, np.ndarray) and not obj.flags.writeable):
        fresh = np.array(obj)  # immutable scalar or read-only array: return a filled copy

        def keep():
            replaced[leaf.name] = fresh[()] if isinstance(obj, np.generic) else fresh
        return host_bits(fresh), keep
    if isinstance(obj, np.ndarray):
        return host_bits(obj), lambda: None
    tensor = obj.detach()
    if tensor.device.type == "cpu":
        return dtypes.tensor_bits(tensor), lambda: None
    import torch
    staging = torch.empty(tuple(tensor.shape), dtype=tensor.dtype)
    return dtypes.tensor_bits(staging), lambda: tensor.copy_(staging)


def _remove_step_dir(directory: str) -> None:
    """Un-commit, then delete, whatever is at ``directory``. Several leaders may remove
    the same directory at once on a shared filesystem, so missing files are not errors."""
    if not os.path.lexists(directory):
        return
    try:
        layout.remove_commit_marker(directory)
    except FileNotFoundError:  # removed meanwhile by another leader or the drain thread
        return
    shutil.rmtree(directory, ignore_errors=True)
    if os.path.lexists(directory):
        raise CheckpointError(f"could not remove the old contents of {directory}; check its "
                              "permissions")


def _pool_list(persistent) -> list[str]:
    if persistent is None:
        return []
    pools = [persistent] if isinstance(persistent, (str, os.PathLike)) else list(persistent)
    return [os.path.abspath(os.path.expanduser(str(p))) for p in pools]


def _versions() -> dict:
    out = {"tierpoint": __version__, "python": platform.python_version(),
           "numpy": np.__version__}
    try:
        import torch
        out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return out
