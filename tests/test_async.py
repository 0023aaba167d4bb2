"""Async save in one process: save() returns after the snapshot; writing and the commit run in
the background. Where a test needs the background write to still be running when the
trainer acts, it holds the writer at a gate (an Event), never a sleep."""
import threading
import warnings

import numpy as np
import pytest
import torch

import tierpoint
import tierpoint.tiers.local


class WriteGate:
    """Holds every chunk write of the background job until ``open()``; ``entered`` is set
    once the job is inside its first write (so the save is provably still in flight)."""

    def __init__(self, monkeypatch):
        self.entered, self._open = threading.Event(), threading.Event()
        real = tierpoint.tiers.local.write_file

        def gated(*a, **k):
            self.entered.set()
            assert self._open.wait(60), "the test never opened the gate"
            return real(*a, **k)
        monkeypatch.setattr(tierpoint.tiers.local, "write_file", gated)

    def open(self):
        self._open.set()


def state_of(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(300, 70, generator=g), "b": torch.randn(70, generator=g).bfloat16(),
            "i": torch.randint(0, 1 << 30, (33,), generator=g), "step": seed}


def template():
    return {"w": torch.zeros(300, 70), "b": torch.zeros(70, dtype=torch.bfloat16),
            "i": torch.zeros(33, dtype=torch.int64), "step": 0}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in ("w", "b", "i")) and a["step"] == b["step"]


def test_tensors_changed_after_save_returns_do_not_reach_the_checkpoint(tmp_path, monkeypatch):
    gate = WriteGate(monkeypatch)
    with tierpoint.Checkpointer(str(tmp_path), run="a") as ck:
        st = state_of(1)
        want = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
        handle = ck.save(1, st)
        assert gate.entered.wait(60)  # the background job is writing right now
        assert not handle.done()
        for t in (st["w"], st["b"], st["i"]):  # the trainer's next step changes everything
            t.fill_(7)
        st["step"] = 99
        gate.open()
        assert handle.wait() == 1
        assert handle.stats["staged_bytes"] == sum(want[k].nbytes for k in ("w", "b", "i"))
        assert handle.stats["blocking_seconds"] <= handle.stats["seconds"]
        assert handle.stats["mode"] == "background" and "blocking_reason" not in handle.stats
        assert same(ck.restore(template()), want)


def test_back_to_back_saves_each_hold_their_own_values(tmp_path):
    with tierpoint.Checkpointer(str(tmp_path), run="b", policy=tierpoint.Policy(keep_local=5)) as ck:
        st = state_of(0)
        wanted = {}
        handles = []
        for step in range(1, 5):
            fresh = state_of(step)
            for k in ("w", "b", "i"):
                st[k].copy_(fresh[k])  # the trainer updates its tensors in place
            st["step"] = step
            wanted[step] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
            handles.append(ck.save(step, st))  # waits for the previous save's write
        arena = ck._arena.capacity
        assert [h.wait() for h in handles] == [1, 2, 3, 4]
        assert ck.steps() == [1, 2, 3, 4]
        for step, want in wanted.items():
            assert same(ck.restore(template(), step=step), want), step
        assert ck._arena.capacity == arena  # one arena, reused by every save


def test_a_state_larger_than_the_staging_budget_is_staged_in_parts(tmp_path):
    chunk = 64 << 10
    budget = 3 * chunk
    st = {f"layer{i}": torch.arange(i * 100_000, i * 100_000 + 60_000, dtype=torch.float64)
          for i in range(4)}  # 4 x 480 KB, each several chunks: far over the 192 KiB budget
    st["small"] = torch.arange(10, dtype=torch.int32)
    want = {k: v.clone() for k, v in st.items()}
    with tierpoint.Checkpointer(str(tmp_path), run="p", chunk_bytes=chunk,
                                staging_bytes=budget) as ck:
        handle = ck.save(1, st)
        for v in st.values():
            v.zero_()
        handle.wait()
        assert handle.stats["parts"] >= 10 and ck._arena.capacity <= budget
        out = ck.restore({k: torch.zeros_like(v) for k, v in want.items()})
    assert all(torch.equal(out[k], want[k]) for k in want)


def test_a_staging_budget_below_one_chunk_is_refused():
    with pytest.raises(ValueError, match="staging_bytes.*chunk_bytes"):
        tierpoint.Checkpointer("/tmp/unused-tierpoint", staging_bytes=1 << 20, chunk_bytes=4 << 20)


def test_skip_policy_skips_a_save_while_the_previous_one_is_written(tmp_path, monkeypatch):
    gate = WriteGate(monkeypatch)
    with tierpoint.Checkpointer(str(tmp_path), run="s", if_busy="skip") as ck:
        first = ck.save(1, state_of(1))
        assert gate.entered.wait(60)
        with pytest.warns(tierpoint.CheckpointWarning, match="step 2 .*skipped.*step 1"):
            second = ck.save(2, state_of(2))
        assert second.skipped and second.wait() is None
        gate.open()
        assert first.wait() == 1
        assert ck.steps() == [1]
        assert ck.save(3, state_of(3)).wait() == 3  # not busy any more: saved


@pytest.mark.parametrize("point", ["snapshot", "write", "manifest", "commit"])
def test_a_background_failure_surfaces_at_wait_and_commits_nothing(tmp_path, monkeypatch, point):
    with tierpoint.Checkpointer(str(tmp_path), run="f") as ck:
        ck.save(1, state_of(1)).wait()
        monkeypatch.setenv("TIERPOINT_FAULT", f"{point}:step=2")
        handle = ck.save(2, state_of(2))
        with pytest.raises(tierpoint.CheckpointError, match=f"No space left.*fault at {point}"):
            handle.wait()
        monkeypatch.delenv("TIERPOINT_FAULT")
        assert ck.steps() == [1]
        ck.wait()
        assert open_inside(tmp_path) == []  # the writer's syncfs descriptor was let go
        assert same(ck.restore(template()), state_of(1))
        assert ck.save(2, state_of(2)).wait() == 2  # the failed step can be saved again
        assert same(ck.restore(template()), state_of(2))


def open_inside(root) -> list[str]:
    """The paths under ``root`` this process holds a descriptor of."""
    import os
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            found.append(target)
    return found


def test_an_unwaited_failure_surfaces_at_the_next_save_then_at_close(tmp_path, monkeypatch):
    ck = tierpoint.Checkpointer(str(tmp_path), run="n")
    monkeypatch.setenv("TIERPOINT_FAULT", "write:step=1")  # read in the background: left set
    ck.save(1, state_of(1))  # nobody waits for this one
    with pytest.raises(tierpoint.CheckpointError, match="save of step 1.*No space left"):
        ck.save(2, state_of(2))
    assert ck.save(2, state_of(2)).wait() == 2  # raised once; the next save goes ahead
    monkeypatch.setenv("TIERPOINT_FAULT", "commit:step=3")
    ck.save(3, state_of(3))
    with pytest.raises(tierpoint.CheckpointError, match="save of step 3.*fault at commit"):
        ck.close()
    reopened = tierpoint.Checkpointer(str(tmp_path), run="n")
    assert reopened.steps() == [2]
    reopened.close()


def test_a_failure_inside_a_with_block_is_not_hidden_by_close(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERPOINT_FAULT", "write:step=1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KeyError):
            with tierpoint.Checkpointer(str(tmp_path), run="w") as ck:
                ck.save(1, state_of(1))
                raise KeyError("the trainer's own error")
    assert any("save of step 1" in str(w.message) for w in caught)


def test_the_checkpoint_is_readable_by_stock_zarr_after_an_async_save(tmp_path):
    import zarr
    with tierpoint.Checkpointer(str(tmp_path), run="z") as ck:
        st = {"w": torch.arange(1000, dtype=torch.float32).reshape(40, 25)}
        ck.save(1, st)
        st["w"].zero_()
        path = ck.step_dir(1)
    arr = zarr.open_array(str(tmp_path / "z" / "step_00000001" / "w"), mode="r")
    assert np.array_equal(arr[...], np.arange(1000, dtype=np.float32).reshape(40, 25))
    assert path.endswith("step_00000001")


def test_async_saves_across_mpi_ranks(tmp_path):
    from mpirun import run_ranks
    nodes = [(2, {"TIERPOINT_NODE": "nodeA"}), (2, {"TIERPOINT_NODE": "nodeB"})]
    proc = run_ranks(nodes, "async_worker.py", tmp_path)
    assert "ASYNC-OK 5" in proc.stdout, proc.stdout + proc.stderr
    for node in ("nodeA", "nodeB"):  # failed steps 5, 6 and 8 left no commit on either node
        assert tierpoint.Checkpointer(str(tmp_path / node), run="a").steps() == [1, 2, 3, 7]


def test_a_blocking_save_writes_from_the_tensors_and_raises_directly(tmp_path, monkeypatch):
    with tierpoint.Checkpointer(str(tmp_path), run="k") as ck:
        handle = ck.save(1, state_of(1), blocking=True)
        assert handle.done() and ck._arena.capacity == 0  # no staging memory was used
        assert handle.stats["staged_bytes"] == 0 and handle.stats["seconds"] > 0
        assert (handle.stats["mode"], handle.stats["blocking_reason"]) == ("blocking",
                                                                           "blocking=True")
        monkeypatch.setenv("TIERPOINT_FAULT", "write:step=2")
        with pytest.raises(tierpoint.CheckpointError, match="save of step 2.*No space left"):
            ck.save(2, state_of(2), blocking=True)
        assert ck.save(3, state_of(3)).wait() == 3  # the error was raised: not raised again
        assert ck.steps() == [1, 3] and same(ck.restore(template(), step=1), state_of(1))


def test_below_thread_multiple_saves_and_drains_run_in_the_callers_thread(tmp_path):
    from mpirun import run_ranks
    (tmp_path / "pool").mkdir()
    proc = run_ranks(2, "threadlevel_worker.py", tmp_path)
    assert "THREADLEVEL-OK" in proc.stdout, proc.stdout + proc.stderr


def test_a_save_in_flight_at_interpreter_exit_is_committed(tmp_path):
    import subprocess
    import sys
    script = ("import sys, torch, tierpoint\n"
              "ck = tierpoint.Checkpointer(sys.argv[1], run='x')\n"
              "ck.save(1, {'w': torch.arange(1 << 24, dtype=torch.float32)})\n"
              "assert not ck._job.finished()  # still writing when the script ends\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "waiting for the save of step 1 to commit before exit" in proc.stderr
    with tierpoint.Checkpointer(str(tmp_path), run="x") as ck:
        assert ck.steps() == [1]
        out = ck.restore({"w": torch.zeros(1 << 24)})
    assert torch.equal(out["w"], torch.arange(1 << 24, dtype=torch.float32))


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    from mpirun import run_ranks
    proc = run_ranks(4, "preempt_worker.py", tmp_path)
    assert "PREEMPT-OK" in proc.stdout, proc.stdout + proc.stderr


def test_preemption_handlers_only_set_a_flag(tmp_path):
    import os
    import signal
    with tierpoint.Checkpointer(str(tmp_path), run="s") as ck:
        ck.handle_preemption(signals=(signal.SIGUSR2,))
        assert not ck.preempted and not ck.stop_requested()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert ck.preempted and ck.stop_requested()
        assert ck._preemption.signal_name == "SIGUSR2"
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL


def chunk_files(step_dir) -> dict:
    """{path: bytes} of the chunk files of a step directory (keys ``c`` / ``c.<i>...``)."""
    import os
    return {os.path.join(d, f): os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(step_dir) if ".tierpoint" not in d
            for f in files if f == "c" or f.startswith("c.")}


@pytest.mark.parametrize("blocking", [False, True])
def test_a_save_reports_what_each_phase_of_its_data_path_cost(tmp_path, blocking):
    st = state_of(3)
    with tierpoint.Checkpointer(str(tmp_path), run="c", chunk_bytes=16 << 10) as ck:
        handle = ck.save(1, st, blocking=blocking)
        handle.wait()
        files = chunk_files(ck.step_dir(1))
    costs = handle.stats["costs"]
    payload = sum(st[k].nbytes for k in ("w", "b", "i"))
    assert len(files) > 3  # "w" is several chunks of 16 KiB
    for phase in ("crc32c", "hash", "write"):  # one call per chunk file, over its bytes
        assert (costs[phase]["calls"], costs[phase]["bytes"]) == (len(files),
                                                                  sum(files.values())), phase
    # The fingerprint goes over the elements (no padding, no trailer).
    assert (costs["fingerprint"]["calls"], costs["fingerprint"]["bytes"]) == (len(files), payload)
    assert costs["sync"]["calls"] == 1  # the syncfs (the default sync mode) at the end
    if blocking:  # written straight from the tensors: nothing was copied
        assert "copy" not in costs
    else:
        assert costs["copy"]["bytes"] == payload == handle.stats["staged_bytes"]
    for phase, c in costs.items():
        assert c["cpu_seconds"] >= 0 and c["busy_seconds"] >= 0, phase
    order = (["copy"] if not blocking else []) + ["crc32c", "hash", "fingerprint", "write"]
    assert [p for p in costs if p in order] == order  # in the data path's order


def test_the_writers_do_not_wait_for_one_batch_before_starting_the_next(tmp_path, monkeypatch):
    """Every array is a batch of its own here: the first chunk file's write is held until a
    chunk of another batch has been written (a barrier per batch would never get there)."""
    import os
    import tierpoint.save.staging
    monkeypatch.setattr(tierpoint.save.staging, "BATCH_BYTES", 1)
    real = tierpoint.tiers.local.write_file
    first, other_written, lock = [], threading.Event(), threading.Lock()

    def gated(path, *a, **k):
        if os.path.basename(path) == "zarr.json":
            return real(path, *a, **k)
        array = os.path.dirname(path)
        with lock:
            if not first:
                first.append(array)
        if array == first[0]:
            assert other_written.wait(60), "no other batch was written while the first was held"
            return real(path, *a, **k)
        n = real(path, *a, **k)
        other_written.set()
        return n
    monkeypatch.setattr(tierpoint.tiers.local, "write_file", gated)
    st = {f"a{i}": torch.full((64,), float(i)) for i in range(6)}
    with tierpoint.Checkpointer(str(tmp_path), run="w", io_threads=4) as ck:
        assert ck.save(1, st).wait() == 1
        out = ck.restore({k: torch.zeros(64) for k in st})
    assert all(torch.equal(out[k], st[k]) for k in st)
