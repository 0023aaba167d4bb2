#!/usr/bin/env python3
"""The three ways to save through tierpoint from a torch.distributed.checkpoint trainer, side by
side: dcp.save and dcp.async_save through tierpoint.dcp.StorageWriter, and ckpt.save.

    .venv/bin/python bench/dcp_paths.py

One process (a one-rank gloo group), 64 MiB of float32 in 16 tensors under /var/tmp; for each
path, a warm-up save and then the medians of 5: how long the call blocks the trainer, and how
long until the checkpoint is committed."""
import os, shutil, statistics, time
import torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
import tierpoint, tierpoint.dcp as tdcp
os.environ.setdefault("MASTER_ADDR", "127.0.0.1"); os.environ.setdefault("MASTER_PORT", "29577")
dist.init_process_group("gloo", rank=0, world_size=1)
root = "/var/tmp/dcpmeasure"; shutil.rmtree(root, ignore_errors=True)
state = {f"w{i}": torch.randn(1024, 1024) for i in range(16)}
ck = tierpoint.Checkpointer(root, run="m", policy=tierpoint.Policy(keep_local=2))
step = 0
def run(kind):
    global step
    step += 1
    t0 = time.perf_counter()
    if kind == "dcp.save":
        dcp.save(state, storage_writer=tdcp.StorageWriter(ck, step=step)); r = c = time.perf_counter() - t0
    elif kind == "dcp.async_save":
        f = dcp.async_save(state, storage_writer=tdcp.StorageWriter(ck, step=step)); r = time.perf_counter() - t0
        f.result(); c = time.perf_counter() - t0
    else:
        h = ck.save(step, state); r = time.perf_counter() - t0; h.wait(); c = time.perf_counter() - t0
    return r, c
out = {}
for kind in ("dcp.save", "dcp.async_save", "ckpt.save"):
    run(kind)
    rs = [run(kind) for _ in range(5)]
    out[kind] = (statistics.median(r for r, _ in rs), statistics.median(c for _, c in rs))
for k, (r, c) in out.items():
    print(f"{k}: returns after {r*1e3:.0f} ms, committed after {c*1e3:.0f} ms")
ck.close(); dist.destroy_process_group(); shutil.rmtree(root, ignore_errors=True)
