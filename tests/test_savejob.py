"""The save job's pieces, each with the values it is handed (no Checkpointer): the chunk
records that cross ranks, the manifest built from them (pure), and the tier steps that follow
a commit (the leftover sweep apart from the local ring), on real files."""
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
from tierpoint.save.job import ManifestInputs, manifest_of_save
from tierpoint.save.plan import plan_save
from tierpoint.tiers.local import LocalTier
from tierpoint.tiers.ops import Tiering


def test_chunk_records_cross_ranks_as_named_json_objects():
    record = WrittenChunk("w", (1, 0), 4100, 123456, 3, "ab" * 32, 0xFEDCBA9876543210)
    wire = json.loads(json.dumps(record.to_json()))  # what the write phase's agree carries
    assert set(wire) == {"array", "index", "nbytes", "crc32c", "writer", "sha256",
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
    return ManifestInputs(run="r", step=7, plan=plan, keys={"w": ["w"]},
                          values={"step": {"key": ["step"], "value": 7}},
                          metadata={"lr": 0.1}, ordinal=3, ranks=ranks, parent=None,
                          code_version="abc", user="u")


def _records(plan, writer: int, sha: str = "s") -> list[WrittenChunk]:
    return [WrittenChunk("w", c.index, 40, 99, writer, f"{sha}{c.index}", 5)
            for a in plan.arrays for c in a.chunks if c.writer == writer]


def test_the_manifest_of_a_save_is_built_from_the_typed_records_in_the_same_shape():
    plan = _replicated_plan()
    doc = manifest_of_save(_inputs(plan), [_records(plan, 0), _records(plan, 1)])
    assert list(doc)[:12] == ["format", "format_version", "run", "step", "ordinal", "digest",
                              "time", "unix_time", "world_size", "layout", "versions",
                              "arrays"]
    entry = doc["arrays"]["w"]
    assert list(entry) == ["name", "path", "key", "dtype", "shape", "chunk_shape",
                           "fingerprint", "shards", "chunks"]
    assert doc["layout"]["ranks"][1] == {"rank": 1, "node": "n1", "host": "h1", "pid": 11,
                                         "tier_dir": "/ssd/n1", "domain": 1}
    for record in entry["chunks"].values():  # each replica written once per domain
        assert list(record) == ["nbytes", "crc32c", "sha256", "fingerprint", "writers"]
        assert record["writers"] == [0, 1] and record["fingerprint"] == "0000000000000005"
    assert doc["lineage"] == {"parent": None, "code": "abc", "user": "u",
                              "hosts": ["h0", "h1"]}
    assert doc["step"] == 7 and doc["ordinal"] == 3 and doc["metadata"] == {"lr": 0.1}
    typed = Manifest.from_document(doc)  # the typed manifest reads it
    assert typed.world_size == 2 and typed.domains == [0, 1]


def test_replicas_that_differ_are_a_sharding_error_naming_both_ranks():
    plan = _replicated_plan()
    with pytest.raises(ShardingError, match=r"'w': chunk c\.\d\.\d differs between rank 0 "
                                            r"and rank 1"):
        manifest_of_save(_inputs(plan), [_records(plan, 0), _records(plan, 1, sha="t")])


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
