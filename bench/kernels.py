"""Chunk codec kernels vs memcpy, the two-pass path and TensorStore's zarr3 codecs.

    .venv/bin/python bench/kernels.py [--mib 512] [--repeat 5] [--ts-threads 1]

The data is a 2-D float32 array of ``--mib`` MiB with 8 KiB rows, cut into 32 MiB chunks
of whole rows (chunk shape (4096, 2048)). Every case processes all the chunks, in the same
process, with buffers allocated once (their pages are faulted in by the warm-up round).
One untimed warm-up round, then ``--repeat`` rounds, each running every case once (so
drift hits all cases alike); the table shows the median. Peak memory is about 7.5 x
``--mib`` (3.8 GB at the default). Single-threaded throughout: TensorStore gets a ``data_copy_concurrency`` limit
of ``--ts-threads`` (1 by default) to match.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import tensorstore as ts

from tierpoint.kernels import crc32c, crc_trailer, decode_chunk, encode_chunk

ROW = 2048  # float32 elements per row: 8 KiB
CHUNK_ROWS = 4096  # 32 MiB chunks
CHUNK_SHAPE = (CHUNK_ROWS, ROW)
CHUNK_BYTES = CHUNK_ROWS * ROW * 4
ENCODED = CHUNK_BYTES + 4  # payload + crc32c trailer
STRIDE = CHUNK_BYTES + 4096  # chunk i's encoded bytes start at i * STRIDE


PAGE = 4096
SKEW = 16  # bytes: where glibc malloc (so numpy) puts a big buffer, relative to a page


def page_aligned(shape, dtype, rng=None) -> np.ndarray:
    """An array of ``shape`` starting on a page boundary, random (``rng``) or zero-filled.

    Alignment matters here: NumPy copies contiguous runs with glibc memmove, whose
    ``rep movsb`` path (used for copies of a few KiB up to several MiB, so for one block)
    is several times slower on this AMD VM when source and destination differ in their
    address mod 64. A whole-chunk copy is past that range and does not care. Every buffer
    below is page-aligned so the cases compare the kernels, and one case skews the
    destination by ``SKEW`` bytes to show the cost.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(nbytes + PAGE, np.uint8)
    start = -raw.ctypes.data % PAGE
    out = raw[start:start + nbytes].view(dtype).reshape(shape)
    if rng is not None:
        out[...] = rng.random(shape, dtype=dtype)
    return out


class Data:
    """The preallocated buffers every case reads and writes (page-aligned, reused)."""

    def __init__(self, mib: int):
        self.n = max(1, mib * 2**20 // CHUNK_BYTES)
        rows = self.n * CHUNK_ROWS
        rng = np.random.default_rng(0)
        self.src = page_aligned((rows, ROW), np.float32, rng)
        # a column slab of a twice-as-wide array: each 8 KiB row run is followed by 8 KiB
        # that is skipped, so copying a chunk out of it gathers
        self.wide = page_aligned((rows, 2 * ROW), np.float32, rng)
        self.slab = self.wide[:, :ROW]
        # chunk i's encoded bytes at i * STRIDE (page-aligned), plus room for the skew
        self.encoded = page_aligned((self.n * STRIDE + PAGE,), np.uint8)
        self.target = page_aligned((rows, ROW), np.float32)
        self.nbytes = self.src.nbytes

    def rows(self, array, i):
        return array[i * CHUNK_ROWS:(i + 1) * CHUNK_ROWS]

    def enc(self, i, skew=0):
        return self.encoded[i * STRIDE + skew:i * STRIDE + skew + ENCODED]


FULL = (slice(0, CHUNK_ROWS), slice(0, ROW))


def memcpy(d: Data):
    np.copyto(d.target, d.src)


def fused_encoder(source: str, skew: int = 0):
    def run(d: Data):
        array = getattr(d, source)
        for i in range(d.n):
            encode_chunk(d.enc(i, skew), d.rows(array, i), CHUNK_SHAPE)
    return run


def two_pass_encoder(source: str):
    def run(d: Data):
        array = getattr(d, source)
        for i in range(d.n):
            out = d.enc(i)
            payload = out[:CHUNK_BYTES]
            np.copyto(payload.view(np.float32).reshape(CHUNK_SHAPE), d.rows(array, i))
            out[CHUNK_BYTES:] = np.frombuffer(crc_trailer(crc32c(payload)), np.uint8)
    return run


def crc_only(d: Data):
    for i in range(d.n):
        crc32c(d.enc(i)[:CHUNK_BYTES])


def stored_crc(d: Data, i: int) -> int:
    return int.from_bytes(d.enc(i)[CHUNK_BYTES:].tobytes(), "little")


def fused_decode(d: Data):
    for i in range(d.n):
        crc = decode_chunk(d.enc(i)[:CHUNK_BYTES], CHUNK_SHAPE, np.float32, FULL,
                           d.rows(d.target, i))
        if crc != stored_crc(d, i):  # the reader's verify, part of the timed work
            raise AssertionError(f"chunk {i}: crc mismatch")


def two_pass_decode(d: Data):
    for i in range(d.n):
        payload = d.enc(i)[:CHUNK_BYTES]
        if crc32c(payload) != stored_crc(d, i):
            raise AssertionError(f"chunk {i}: crc mismatch")
        np.copyto(d.rows(d.target, i), payload.view(np.float32).reshape(CHUNK_SHAPE))


def tensorstore_writer(d: Data, with_crc: bool, threads: int):
    codecs = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if with_crc:
        codecs.append({"name": "crc32c"})
    spec = {"driver": "zarr3", "kvstore": "memory://",
            "metadata": {"shape": list(d.src.shape), "data_type": "float32", "codecs": codecs,
                         "chunk_grid": {"name": "regular",
                                        "configuration": {"chunk_shape": list(CHUNK_SHAPE)}}},
            "create": True, "delete_existing": True}
    context = ts.Context({"data_copy_concurrency": {"limit": threads}})
    store = ts.open(spec, context=context).result()  # opening is not timed

    def run(_d: Data):
        store.write(d.src).result()
    run.store = store
    return run


def check_layout(d: Data, ts_crc) -> None:
    """Our encoded chunk 0 is byte for byte what TensorStore stored (untimed)."""
    encode_chunk(d.enc(0), d.rows(d.src, 0), CHUNK_SHAPE)
    stored = ts_crc.store.kvstore.read("c/0/0").result().value
    if bytes(stored) != d.enc(0).tobytes():
        raise AssertionError("encode_chunk's bytes differ from TensorStore's zarr3 chunk")


def run_rounds(cases, d: Data, repeat: int) -> dict[str, list[float]]:
    times = {name: [] for name, _ in cases}
    for rnd in range(repeat + 1):  # round 0 is the warm-up
        for name, fn in cases:
            t0 = time.perf_counter()
            fn(d)
            if rnd:
                times[name].append(time.perf_counter() - t0)
    return times


def report(times, d: Data) -> None:
    med = {name: statistics.median(ts_) for name, ts_ in times.items()}
    base = med["memcpy (np.copyto)"]
    print(f"\n{'case':40s} {'median s':>9s} {'GB/s':>7s} {'x memcpy':>9s}  min..max s")
    for name, t in med.items():
        print(f"{name:40s} {t:9.3f} {d.nbytes / t / 1e9:7.2f} {t / base:9.2f}  "
              f"{min(times[name]):.3f}..{max(times[name]):.3f}")
    print("\nratios (time / time; below 1 means the first is faster)")
    for a, b in [("encode fused, contiguous", "encode two-pass, contiguous"),
                 ("encode fused, strided slab", "encode two-pass, strided slab"),
                 ("decode fused (crc + copy)", "decode two-pass (crc, then copy)"),
                 ("encode fused, contiguous", "tensorstore zarr3 [bytes, crc32c]"),
                 ("tensorstore zarr3 [bytes, crc32c]", "tensorstore zarr3 [bytes]")]:
        print(f"  {a} / {b}: {med[a] / med[b]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="data size in MiB (32 MiB chunks)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds after 1 warm-up")
    parser.add_argument("--ts-threads", type=int, default=1,
                        help="TensorStore data_copy_concurrency limit")
    args = parser.parse_args()

    d = Data(args.mib)
    ts_crc = tensorstore_writer(d, True, args.ts_threads)
    ts_plain = tensorstore_writer(d, False, args.ts_threads)
    cases = [
        ("memcpy (np.copyto)", memcpy),
        ("crc32c alone", crc_only),
        ("encode fused, contiguous", fused_encoder("src")),
        ("encode two-pass, contiguous", two_pass_encoder("src")),
        (f"encode fused, contiguous, dst +{SKEW} B", fused_encoder("src", SKEW)),
        ("encode fused, strided slab", fused_encoder("slab")),
        ("encode two-pass, strided slab", two_pass_encoder("slab")),
        ("tensorstore zarr3 [bytes, crc32c]", ts_crc),
        ("tensorstore zarr3 [bytes]", ts_plain),
        ("decode fused (crc + copy)", fused_decode),
        ("decode two-pass (crc, then copy)", two_pass_decode),
    ]
    print(f"kernels benchmark: {d.n} chunks of {CHUNK_BYTES >> 20} MiB float32 "
          f"{CHUNK_SHAPE}, {d.nbytes / 2**20:.0f} MiB per case, median of {args.repeat} "
          f"rounds after 1 warm-up; TensorStore data_copy_concurrency={args.ts_threads}")
    t0 = time.perf_counter()
    times = run_rounds(cases, d, args.repeat)
    check_layout(d, ts_crc)
    report(times, d)
    print(f"\n(total {time.perf_counter() - t0:.0f} s; GB = 1e9 bytes)")


if __name__ == "__main__":
    main()
