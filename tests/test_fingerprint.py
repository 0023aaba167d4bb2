"""The fingerprint's backends: NumPy and the C extension (each instruction set this CPU runs)
give :func:`fingerprint_reference`'s number on every shape, dtype, offset and layout, and the
C extension is really built wherever a C compiler is (so tests and benchmarks use it).

Values are random bits, and some cases are all ones, the worst case for carries between the
32-bit halves the C loops split each product into. Row lengths straddle the C loops' vector
widths, the four-rows-at-a-time threshold and the line's weight blocks.
"""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierpoint.kernels import fingerprint as fp
from tierpoint.kernels import fingerprint_box, fingerprint_reference

DTYPES = [np.bool_, np.uint8, np.int16, np.uint16, np.float32, np.float64, np.int64,
          np.complex128]
NATIVE = [b for b in fp.BACKENDS if b.startswith("native:")]
ISAS = [b.split(":", 1)[1] for b in NATIVE]
needs_native = pytest.mark.skipif(not NATIVE, reason="the C extension is not built")


def random_bits(rng, shape, dtype, ones=False) -> np.ndarray:
    """A C-contiguous array of ``shape`` whose bytes are random (or all 0xff)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.full(n, 255, np.uint8) if ones else rng.integers(0, 256, size=n, dtype=np.uint8)
    if dtype == np.bool_:
        return (raw & 1).astype(np.bool_).reshape(shape)
    return raw.view(dtype).reshape(shape)


@st.composite
def boxes(draw, max_len=6):
    """(view, offset): a view of random bits with permuted, stepped, offset and reversed axes
    inside a bigger array, or one starting at an odd byte address."""
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, max_len), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    perm = draw(st.permutations(range(ndim)))
    steps = draw(st.lists(st.sampled_from([1, 1, 2, 3]), min_size=ndim, max_size=ndim))
    starts = draw(st.lists(st.integers(0, 2), min_size=ndim, max_size=ndim))
    flips = draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim))
    lengths = [a + s * n for a, s, n in zip(starts, steps, shape)]
    if draw(st.booleans()) and dtype != np.bool_:  # misaligned: a view at byte 1 of a buffer
        n = int(np.prod([lengths[p] for p in perm], dtype=np.int64)) * dtype.itemsize
        raw = rng.integers(0, 256, size=n + 1, dtype=np.uint8)
        storage = raw[1:].view(dtype).reshape(tuple(lengths[p] for p in perm))
    else:
        storage = random_bits(rng, tuple(lengths[p] for p in perm), dtype,
                              ones=draw(st.booleans()))
    base = storage.transpose(np.argsort(perm).astype(int).tolist())
    view = base[tuple(slice(a, a + s * n, s) for a, s, n in zip(starts, steps, shape)) + (...,)]
    view = view[tuple(slice(None, None, -1) if f else slice(None) for f in flips) + (...,)]
    assert view.shape == shape
    offset = tuple(draw(st.lists(st.integers(0, 2**40), min_size=ndim, max_size=ndim)))
    return view, offset


@settings(max_examples=300, deadline=None)
@given(boxes())
def test_every_backend_equals_the_reference(box):
    values, offset = box
    want = fingerprint_reference(values, offset)
    for backend in fp.BACKENDS:
        assert fingerprint_box(values, offset, backend=backend) == want, backend


@settings(max_examples=40, deadline=None)
@given(boxes(max_len=40))
def test_native_equals_numpy_on_bigger_boxes(box):
    values, offset = box
    want = fingerprint_box(values, offset, backend="numpy")
    for backend in NATIVE:
        assert fingerprint_box(values, offset, backend=backend) == want, backend


@needs_native
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize("shape", [(3, 2047), (9, 2048), (6, 2049), (5, 4103), (2, 3, 2055),
                                   (70, 3), (1, 70_000), (70_001,), (1025,), (511,), (0, 5)])
@pytest.mark.parametrize("ones", [False, True])
def test_native_equals_numpy_at_the_loops_edges(dtype, shape, ones):
    rng = np.random.default_rng(sum(shape))
    values = random_bits(rng, shape, dtype, ones=ones)
    offset = tuple(range(3, 3 + len(shape)))
    want = fingerprint_box(values, offset, backend="numpy")
    for backend in NATIVE:
        assert fingerprint_box(values, offset, backend=backend) == want, backend
        if values.ndim >= 2 and values.shape[0] > 1:  # rows in reverse, columns in reverse
            assert fingerprint_box(values[::-1], offset, backend=backend) == \
                fingerprint_box(values[::-1], offset, backend="numpy")
            assert fingerprint_box(values[..., ::-1], offset, backend=backend) == \
                fingerprint_box(values[..., ::-1], offset, backend="numpy")


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_each_c_entry_point_equals_numpy(isa):
    native = fp._native
    rng = np.random.default_rng(11)
    for dim, start, count in [(0, 0, 1), (1, 5, 1000), (7, 2**62, 513), (3, 2**40 + 1, 0)]:
        out = np.empty(count, np.uint64)
        native.fill_weights(dim, start, out, isa)
        assert np.array_equal(out, fp.weights(dim, start, count))
    for itemsize in (1, 2, 4, 8):
        dtype = np.dtype(f"u{itemsize}")
        for n in (0, 1, 7, 511, 512, 513, 1500):
            x = random_bits(rng, (n,), dtype)
            with np.errstate(over="ignore"):
                want = int(np.einsum("j,j->", x, fp.weights(2, 9, n), dtype=np.uint64))
            assert native.contract_line(x, 2, 9, isa) == want
        # three leading axes, one of them reversed, rows in groups of four and a remainder
        x = random_bits(rng, (2, 7, 3, 2050), dtype)[:, ::-1, 1:]
        w = fp.weights(5, 0, 2050)
        out = np.empty(2 * 7 * 2, np.uint64)
        native.contract_last(x, w, out, isa)
        assert np.array_equal(out, np.einsum("...j,j->...", x, w, dtype=np.uint64).ravel())


@needs_native
def test_c_entry_points_refuse_what_they_cannot_read():
    native = fp._native
    x = np.zeros((4, 6), np.uint16)
    w = np.zeros(6, np.uint64)
    with pytest.raises(ValueError, match="contiguous"):
        native.contract_last(x[:, ::2], w[:3], np.zeros(4, np.uint64))
    with pytest.raises(ValueError, match="w must hold 6"):
        native.contract_last(x, w[:5], np.zeros(4, np.uint64))
    with pytest.raises(ValueError, match="out must hold 4"):
        native.contract_last(x, w, np.zeros(3, np.uint64))
    with pytest.raises(ValueError, match="1/2/4/8-byte"):
        native.contract_last(np.zeros((2, 2), np.complex128), w[:2], np.zeros(2, np.uint64))
    with pytest.raises(ValueError, match="instruction set"):
        native.contract_last(x, w, np.zeros(4, np.uint64), "no-such-isa")
    with pytest.raises(ValueError, match="contiguous"):
        native.contract_line(x[0, ::2], 0, 0)
    with pytest.raises(BufferError):
        native.contract_last(x, w, np.zeros(4, np.uint64).tobytes())  # out is read-only


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend 'fortran'"):
        fingerprint_box(np.zeros(3, np.uint8), (0,), backend="fortran")


@needs_native
def test_threads_fingerprint_at_once():
    """Writer threads call the C kernel together (it releases the GIL): every result is right."""
    rng = np.random.default_rng(3)
    arrays = [random_bits(rng, (64, 4096 + i), np.uint16) for i in range(4)]
    want = [fingerprint_box(a, (i, 0), backend="numpy") for i, a in enumerate(arrays)]
    got = [None] * len(arrays)

    def work(i):
        for _ in range(20):
            got[i] = fingerprint_box(arrays[i], (i, 0))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(arrays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


def test_the_c_extension_is_built_where_a_compiler_is():
    """Where ``pip install`` could compile the extension, it must have: a silent fallback to
    NumPy would cost every save about 4x the fingerprint's CPU time."""
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler on PATH: the NumPy fallback is the expected path")
    assert fp._native is not None, (
        "tierpoint.kernels._fingerprint is not importable although a C compiler is on PATH: "
        "rebuild with `pip install -e .` or `python setup.py build_ext --inplace`")
    assert fp.DEFAULT_BACKEND == NATIVE[0]
