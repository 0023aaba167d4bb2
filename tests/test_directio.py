"""Direct I/O writes of chunk files (engine/runtime/directio.py): the same bytes as a buffered
write whatever the parts' sizes and alignment, and a filesystem that refuses O_DIRECT gets
the buffered write instead, with nothing lost."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch

import tierpoint
from tierpoint.kernels import aligned_empty
from tierpoint.runtime import directio
from tierpoint.runtime.fsutil import write_file
from tierpoint.tiers.local import StepWriter
from tierpoint.trust.verify import verify_checkpoint


def _parts(rng, sizes, aligned_first: bool):
    parts = []
    for n, size in enumerate(sizes):
        if n == 0 and aligned_first:
            buf = aligned_empty(size)
            buf[:] = rng.integers(0, 256, size, dtype=np.uint8)
            parts.append(buf)
        elif n % 3 == 1:
            parts.append(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        else:  # a view that starts at an odd address, of another element type
            raw = rng.integers(0, 256, size * 2 + 3, dtype=np.uint8)
            parts.append(raw[3:3 + size * 2].view(np.uint16))
    return parts


def _concat(parts) -> bytes:
    return b"".join(p.tobytes() if isinstance(p, np.ndarray) else bytes(p) for p in parts)


@pytest.mark.parametrize("sizes,aligned_first", [
    ([4096], True),  # one aligned block, straight from memory
    ([5000, 4, 70000, 4, 12], True),  # aligned head, then unaligned pieces and trailers
    ([1, 2, 3], False),  # a file smaller than a block
    ([directio.BOUNCE_BYTES + 4097, 4], True),  # more than the bounce buffer holds
    ([3 * directio.BOUNCE_BYTES // 4, directio.BOUNCE_BYTES // 2, 7], False),  # refills
])
def test_a_direct_write_has_the_bytes_of_its_parts(tmp_path, sizes, aligned_first):
    rng = np.random.default_rng(sum(sizes))
    parts = _parts(rng, sizes, aligned_first)
    path = str(tmp_path / "f")
    try:
        n = write_file(path, parts, fsync=True, direct=True)
    except OSError as e:
        if directio.refused(e):
            pytest.fail(f"{tmp_path} refuses O_DIRECT; run the tests on a filesystem that "
                        "takes it (ext4, xfs), as the project's machines have")
        raise
    want = _concat(parts)
    assert n == len(want) == os.path.getsize(path)
    with open(path, "rb") as f:
        assert f.read() == want


def test_a_refused_direct_write_is_written_buffered(tmp_path, monkeypatch):
    """A filesystem without O_DIRECT (open fails with EINVAL): the writer writes the file the
    buffered way, and stops trying for the rest of the save."""
    calls = []
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & os.O_DIRECT:
            calls.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    writer = StepWriter(str(tmp_path / "step"), 0, 1, sync="fsync", small_file_bytes=1024,
                        direct=True)
    writer.make_dirs(["w"])
    payload = np.arange(2048, dtype=np.float32)
    for key in ("c.0", "c.1"):
        assert writer.chunk("w", key, [payload, b"\x00\x01\x02\x03"], payload.nbytes + 4) == \
            payload.nbytes + 4
    writer.finish()
    assert len(calls) == 1 and not writer.direct
    for key in ("c.0", "c.1"):
        with open(tmp_path / "step" / "w" / key, "rb") as f:
            assert f.read() == payload.tobytes() + b"\x00\x01\x02\x03"


def test_other_write_errors_are_not_taken_for_a_refusal(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(directio, "_write_parts", full)
    writer = StepWriter(str(tmp_path / "step"), 0, 1, sync="fsync", small_file_bytes=1024,
                        direct=True)
    writer.make_dirs(["w"])
    with pytest.raises(OSError, match="chunk c.0 of array 'w'"):
        writer.chunk("w", "c.0", [np.zeros(4096, np.uint8)], 4096)


def _chunk_files(root) -> dict[str, bytes]:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if name.startswith("c."):
                with open(os.path.join(folder, name), "rb") as f:
                    out[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    return out


def test_saves_with_and_without_direct_io_write_the_same_files(tmp_path):
    """Chunk files of several MiB (sub-chunked: slabs written from the tensors, and gathered
    inner chunks) through either path: the same bytes, verified and restored bit-exactly."""
    rows = torch.arange(1024 * 768, dtype=torch.float32).reshape(1024, 768)
    state = {"w": rows, "b": (rows[:, :512] * 3).to(torch.bfloat16), "v": torch.arange(7)}
    files = {}
    for direct_io in ("auto", "off"):
        ck = tierpoint.Checkpointer(str(tmp_path / direct_io), run="d", direct_io=direct_io)
        handle = ck.save(1, state, blocking=True)
        # Buffered big files have their writeback started; direct ones have none to start.
        assert ("writeback" in handle.stats["costs"]) == (direct_io == "off")
        out = ck.restore({k: torch.zeros_like(v) for k, v in state.items()})
        assert all(torch.equal(out[k], v) for k, v in state.items())
        assert verify_checkpoint(ck.step_dir(1)).ok
        files[direct_io] = _chunk_files(ck.step_dir(1))
        ck.close()
    assert max(len(b) for b in files["auto"].values()) >= 1 << 20  # takes the direct path
    assert files["auto"] == files["off"]


def test_direct_io_is_a_checked_setting(monkeypatch):
    monkeypatch.setenv("TIERPOINT_DIRECT_IO", "sometimes")
    with pytest.raises(tierpoint.ConfigurationError, match="TIERPOINT_DIRECT_IO"):
        tierpoint.Checkpointer("/nonexistent-tierpoint-root", run="d")


def test_a_save_drained_right_after_its_commit_is_written_buffered(tmp_path):
    """Every drain_every-th save is drained as soon as it commits: it goes through the page
    cache so that the drain reads it from memory; the saves in between bypass it."""
    big = torch.arange(512 * 1024, dtype=torch.float32).reshape(512, 1024)  # a 2 MiB chunk
    (tmp_path / "pool").mkdir()
    ck = tierpoint.Checkpointer(str(tmp_path / "local"), str(tmp_path / "pool"), run="d",
                                policy=tierpoint.Policy(drain_every=2))
    buffered = []
    for step in (1, 2, 3, 4):
        handle = ck.save(step, {"w": big * step}, blocking=True)
        buffered.append("writeback" in handle.stats["costs"])
    ck.wait()
    assert buffered == [False, True, False, True]
    assert ck.capacity_steps() == [2, 4]
    out = ck.restore({"w": torch.zeros_like(big)}, step=4)
    assert torch.equal(out["w"], big * 4)
    ck.close()
