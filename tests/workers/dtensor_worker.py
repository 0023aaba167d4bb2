"""DTensor leaves on CPU/gloo device meshes: save with one set of placements on N ranks,
restore with other placements on M ranks; values encode global indices, bit-exact.

argv: save ROOT | restore ROOT SAVED_WORLD [SAVED_WORLD ...]
Prints DTENSOR-OK <mode> <checks> on success.
"""
import os
import sys

import numpy as np
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

sys.path.insert(0, os.path.dirname(__file__))
import patterns as P  # noqa: E402

import tierpoint  # noqa: E402
from tierpoint.runtime.distenv import init_torch_distributed_from_mpi  # noqa: E402

RANK, WORLD = init_torch_distributed_from_mpi("gloo")
A, B = P.mesh_shape(WORLD)
MESH1 = init_device_mesh("cpu", (WORLD,))
MESH2 = init_device_mesh("cpu", (A, B))

# name, shape, dtype, save layout, restore layout
ARRAYS = [
    ("layers.0.weight", (13, 7), "float32", "d0", "d1"),
    ("layers.0.bias", (13,), "bfloat16", "d0", "rep"),
    ("layers.1.weight", (9, 10), "bfloat16", "d1", "2d"),
    ("embed", (11, 6), "float64", "2d", "d0"),
    ("norm", (6, 5), "float16", "rep", "hsdp"),
    ("hsdp.weight", (10, 3), "int64", "hsdp", "d0"),
]


def placements(layout):
    return {"d0": (MESH1, [Shard(0)]), "d1": (MESH1, [Shard(1)]), "rep": (MESH1, [Replicate()]),
            "2d": (MESH2, [Shard(0), Shard(1)]), "hsdp": (MESH2, [Replicate(), Shard(0)])}[layout]


def make(name, shape, dtype, layout, fill):
    mesh, pl = placements(layout)
    local_shape, offset = compute_local_shape_and_global_offset(shape, mesh, pl)
    full = P.global_bits(name, shape, dtype)
    region = tuple(slice(o, o + s) for o, s in zip(offset, local_shape))
    bits = full[region] if fill else np.zeros(local_shape, dtype=full.dtype)
    local = P.as_torch(P._c(bits), dtype)
    stride = torch.empty(shape).stride()
    return DTensor.from_local(local, mesh, pl, run_check=False, shape=torch.Size(shape),
                              stride=stride), region


def state(side, fill):
    out = {"model": {}, "extra": {"step": torch.tensor(42, dtype=torch.int64), "tag": "dt"}}
    regions = {}
    for name, shape, dtype, save_l, rest_l in ARRAYS:
        out["model"][name], regions[name] = make(name, shape, dtype,
                                                 save_l if side == "save" else rest_l, fill)
    return out, regions


mode, root = sys.argv[1], sys.argv[2]
problems = []
checks = 0
if mode == "save":
    st, _ = state("save", True)
    with tierpoint.Checkpointer(os.path.join(root, f"w{WORLD}"), run="dt") as ck:
        ck.save(3, st, metadata={"world": WORLD}).wait()
    checks = 1
else:
    for saved in sys.argv[3:]:
        tpl, regions = state("restore", False)
        with tierpoint.Checkpointer(os.path.join(root, f"w{saved}"), run="dt") as ck:
            out = ck.restore(tpl)
        for name, shape, dtype, _, _ in ARRAYS:
            got = P.torch_bits(out["model"][name].to_local())
            want = P.global_bits(name, shape, dtype)[regions[name]]
            if got.shape != want.shape or not np.array_equal(got.view(want.dtype), want):
                problems.append(f"{name}: saved on {saved}, restored on {WORLD}, rank {RANK}")
            checks += 1
        if out["extra"]["step"].item() != 42 or out["extra"]["tag"] != "dt":
            problems.append(f"extra: {out['extra']}")

import torch.distributed as dist  # noqa: E402
gathered = [None] * WORLD
dist.all_gather_object(gathered, problems)
if RANK == 0:
    flat = [p for ps in gathered for p in ps]
    if flat:
        print("DTENSOR-FAIL", *flat, sep="\n  ")
        sys.exit(1)
    print(f"DTENSOR-OK {mode} {checks}")
from tierpoint.runtime.distenv import exit_process  # noqa: E402
exit_process(0)
