"""The save job's pieces, each with the values it is handed (no Checkpointer): the chunk
records a rank writes into its slice, the summary it sends and the coordinator's seal, the
header built from them (pure), and the tier steps that follow a commit (the leftover sweep
apart from the local ring), on real files."""
import json
import os

import pytest
import torch

import tierpoint
from tierpoint.errors import ShardingError
from tierpoint.format import layout
from tierpoint.format.manifest import Manifest
from tierpoint.format.types import Box, WrittenChunk, LocalArray
from tierpoint.options import Options, Policy
from tierpoint.runtime.comm import SingleComm
from tierpoint.runtime.topology import Topology
from tierpoint.save.job import ManifestInputs
from tierpoint.save.records import (header_of_save, seal_save, slice_of_save,
                                    static_header_of_plan, summary_of_slice)
from tierpoint.save.plan import plan_save
from tierpoint.tiers.local import LocalTier
from tierpoint.tiers.ops import Tiering


def test_chunk_records_cross_ranks_as_named_json_objects():
    record = WrittenChunk("w", (1, 0), 4100, 123456, 3, "ab" * 32, 0xFEDCBA9876543210)
    wire = json.loads(json.dumps(record.to_json()))  # what the write phase's agree carries
    assert set(wire) == {"array", "index", "nbytes", "crc32c", "writer", "hash",
                         "fingerprint"}
    assert WrittenChunk.from_json(wire) == record


def _replicated_plan():
    """Two ranks on two nodes, each holding the whole (replicated) 4x2 array."""
    declared = [[LocalArray("w", "float32", (4, 2), Box((0, 0), (4, 2)), True)]
                for _ in range(2)]
    return plan_save(declared, chunk_bytes=16, domains=[0, 1])


def _inputs(plan) -> ManifestInputs:
    ranks = tuple({"rank": r, "node": f"n{r}", "host": f"h{r}", "pid": 10 + r,
                   "tier_dir": f"/ssd/n{r}", "domain": r} for r in range(2))
    return ManifestInputs(run="r", step=7, header=static_header_of_plan(plan, {"w": ["w"]}),
                          replicated=frozenset({"w"}),
                          values={"step": {"key": ["step"], "value": 7}},
                          metadata={"lr": 0.1}, ordinal=3, ranks=ranks, parent=None,
                          code_version="abc", user="u")


def _records(plan, writer: int, sha: str = "s") -> list[WrittenChunk]:
    return [WrittenChunk("w", c.index, 40, 99, writer, f"blake3:{sha}{c.index}", 5)
            for a in plan.arrays for c in a.chunks if c.writer == writer]


def _seal(plan, written):
    """What the save job does with every rank's records (save/records.py), in one process:
    each rank's slice and summary, the coordinator's seal, each leader's header."""
    from tierpoint.format import slices
    docs = [slice_of_save("r", 7, rank, records) for rank, records in enumerate(written)]
    summaries = [summary_of_slice(slices.entry_of(slices.encode(d), d, {"w": "w"}), {"w"},
                                  rank, d) for rank, d in enumerate(docs)]
    return docs, seal_save(summaries, leaders=[0, 1], domain_ranks=lambda d: [d],
                           values={"step": {"key": ["step"], "value": 7}})


def test_a_save_records_a_slice_per_rank_and_a_header_per_directory():
    plan = _replicated_plan()
    docs, sealed = _seal(plan, [_records(plan, 0), _records(plan, 1)])
    assert list(docs[1]) == ["format_version", "run", "step", "rank", "arrays"]
    for doc in docs:  # each replica written once per domain: both slices record every chunk
        assert sorted(doc["arrays"]["w"]) == ["c.0.0", "c.1.0"]
        for record in doc["arrays"]["w"].values():
            assert list(record) == ["nbytes", "crc32c", "hash", "fingerprint"]
            assert record["hash"].startswith("blake3:")  # format version 5
            assert record["fingerprint"] == "0000000000000005"
    assert sealed[0]["digest"] == sealed[1]["digest"] and sealed[0]["bytes"] == 4 * 40
    assert sealed[1]["values"] == {"step": {"key": ["step"], "value": 7}}
    doc = header_of_save(_inputs(plan), sealed[1]["digest"], sealed[1]["slices"],
                         sealed[1]["values"])
    assert list(doc)[:14] == ["format", "format_version", "run", "step", "ordinal", "digest",
                              "time", "unix_time", "world_size", "layout", "versions",
                              "arrays", "groups", "slices"]
    assert doc["format_version"] == 5 and list(doc["slices"]) == ["1"]
    assert list(doc["slices"]["1"]) == ["sha256", "root", "proof", "chunks", "bytes"]
    entry = doc["arrays"]["w"]
    assert list(entry) == ["name", "path", "key", "dtype", "shape", "chunk_shape", "layout"]
    assert entry["layout"] == {"shards": [{"offset": [0, 0], "shape": [4, 2],
                                           "ranks": [0, 1]}]}
    assert doc["layout"]["ranks"][1] == {"rank": 1, "node": "n1", "host": "h1", "pid": 11,
                                         "tier_dir": "/ssd/n1", "domain": 1}
    assert doc["lineage"] == {"parent": None, "code": "abc", "user": "u",
                              "hosts": ["h0", "h1"]}
    assert doc["step"] == 7 and doc["ordinal"] == 3 and doc["metadata"] == {"lr": 0.1}
    assert layout.manifest_problems(doc) == []
    typed = Manifest.from_document(doc)  # the typed manifest reads it
    assert typed.world_size == 2 and typed.domains == [0, 1] and typed.sliced
    assert typed.writers_of(typed.arrays["w"], "c.1.0") == (0, 1)


def test_the_summary_a_rank_sends_at_the_commit_does_not_grow_with_its_chunks():
    declared = [[LocalArray(f"a{i}", "float32", (2, 64), Box((r, 0), (1, 64)), False)
                 for i in range(200)] for r in range(2)]
    plan = plan_save(declared, chunk_bytes=64, domains=[0, 1])
    records = [WrittenChunk(c_plan.name, c.index, 68, 1, 0, "ab" * 32, 7)
               for c_plan, c in plan.writes_of(0)]
    from tierpoint.format import slices
    doc = slice_of_save("r", 1, 0, records)
    summary = summary_of_slice(slices.entry_of(slices.encode(doc), doc,
                                               {a.name: a.name for a in plan.arrays}),
                               set(), 0, doc)
    assert len(records) == 200 * 4 and len(json.dumps(summary)) < 300


def test_replicas_that_differ_are_a_sharding_error_naming_both_ranks():
    plan = _replicated_plan()
    with pytest.raises(ShardingError, match=r"arrays \['w'\]: the replicated chunks written by "
                                            r"rank 0 and by rank 1 differ"):
        _seal(plan, [_records(plan, 0), _records(plan, 1, sha="t")])


class Events:
    """The audit value the Tiering is handed: here, a list of what it recorded."""

    def __init__(self):
        self.events = []

    def event(self, event, step=None, digest="", detail=None):
        self.events.append((event, step, detail))


def _tiering(root, audit) -> Tiering:
    info = {"rank": 0, "node": "n0", "host": "h", "pid": os.getpid(), "tier_dir": str(root)}
    return Tiering(topology=Topology.from_startup(0, [info]), channel=SingleComm(),
                   drain_channel=None, options=Options(), policy=Policy(keep_local=1),
                   run="s", local=LocalTier(str(root)), capacity=None, audit=audit,
                   background=True)


def test_the_leftover_sweep_is_a_step_of_its_own_apart_from_the_local_ring(tmp_path):
    with tierpoint.Checkpointer(str(tmp_path), run="s",
                                policy=tierpoint.Policy(keep_local=2)) as ck:
        for step in (1, 2):
            ck.save(step, {"w": torch.ones(4) * step}).wait()
    interrupted = tmp_path / "s" / "step_00000003"  # a save cut short: no marker
    interrupted.mkdir()
    (interrupted / "junk").write_bytes(b"x")
    audit = Events()
    tiering = _tiering(tmp_path, audit)
    assert tiering.apply_local_retention() == [(1, "retention")]  # the ring only
    assert interrupted.exists() and tiering.local_steps() == [2]
    assert tiering.sweep_leftovers() == [(3, "an interrupted save")]
    assert not interrupted.exists() and tiering.local_steps() == [2]
    assert audit.events == [
        ("deleted", 1, {"tier": "local", "why": "retention"}),
        ("deleted", 3, {"tier": "local", "why": "an interrupted save"})]


def test_close_drain_newest_false_drains_nothing_and_pools_cannot_be_reassigned(tmp_path):
    (tmp_path / "pool").mkdir()
    ck = tierpoint.Checkpointer(str(tmp_path / "ssd"), persistent=[str(tmp_path / "pool")],
                                run="c", policy=tierpoint.Policy(drain_every=100))
    ck.save(1, {"w": torch.ones(8)}).wait()
    with pytest.raises(AttributeError):
        ck.pools = []  # no longer a way to say "do not drain at close"
    ck.close(drain_newest=False)
    assert layout.committed_steps(str(tmp_path / "pool"), "c") == []
    again = tierpoint.Checkpointer(str(tmp_path / "ssd"), persistent=[str(tmp_path / "pool")],
                                   run="c", policy=tierpoint.Policy(drain_every=100))
    again.close()  # the default drains the newest step
    assert layout.committed_steps(str(tmp_path / "pool"), "c") == [1]


def test_drain_is_foreground_only():
    import inspect
    assert "_comm" not in inspect.signature(tierpoint.Checkpointer.drain).parameters


def test_settle_waits_for_every_chunk_write_before_raising_the_first_failure():
    """A part's memory is reused once its writes are settled: a failed chunk must not let
    the part end while another chunk of it is still being written."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from tierpoint.save.write import settle

    release, finished = threading.Event(), []

    def fails():
        raise OSError(28, "No space left on device")

    def slow():
        assert release.wait(60)
        finished.append(True)
        return "written"
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(fails), pool.submit(slow)]
        futures[0].exception()  # the failure is in before the other write ends
        done = threading.Event()
        outcome = []

        def wait():
            try:
                settle(futures)
            except OSError as e:
                outcome.append((e, list(finished)))  # what had finished when it raised
            done.set()
        threading.Thread(target=wait).start()
        assert not done.wait(0.2) and not finished  # still waiting for the slow write
        release.set()
        assert done.wait(60) and finished == [True]
    assert len(outcome) == 1 and outcome[0][0].errno == 28 and outcome[0][1] == [True]


def test_phase_costs_add_up_over_threads():
    import threading
    from tierpoint.runtime.costs import PhaseCosts, measured
    costs = PhaseCosts()

    def work():
        for _ in range(1000):
            costs.add("hash", 0.001, 0.002, 10)
            with measured(costs, "write", 3):
                pass
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with measured(None, "ignored"):  # no costs: nothing recorded, nothing fails
        pass
    out = costs.as_dict()
    assert list(out) == ["hash", "write"]  # data-path order, not insertion order
    assert out["hash"]["calls"] == 4000 and out["hash"]["bytes"] == 40000
    assert out["hash"]["cpu_seconds"] == pytest.approx(4.0)
    assert out["hash"]["busy_seconds"] == pytest.approx(8.0)
    assert out["write"]["calls"] == 4000 and out["write"]["bytes"] == 12000
