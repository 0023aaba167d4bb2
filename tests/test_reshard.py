"""Box geometry of restore: the read items of a box tile it exactly, touching only
overlapping chunks."""

import numpy as np
from hypothesis import given, settings, strategies as st

from tierpoint.restore.reshard import plan_box_read
from tierpoint.format.types import Box


@st.composite
def array_and_box(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 12)) for _ in range(ndim))
    chunk = tuple(draw(st.integers(1, s)) for s in shape)
    off = tuple(draw(st.integers(0, s - 1)) for s in shape)
    shp = tuple(draw(st.integers(1, s - o)) for s, o in zip(shape, off))
    return shape, chunk, Box(off, shp)


@settings(max_examples=200, deadline=None)
@given(array_and_box())
def test_read_items_tile_the_box(case):
    shape, chunk, want = case
    items = plan_box_read("a", shape, chunk, want)
    cover = np.zeros(want.shape, dtype=np.int32)
    for it in items:
        cover[it.target_region.slices()] += 1
        # the chunk region and target region are the same global elements
        g1 = tuple(o + c for o, c in zip(it.chunk_box.offset, it.chunk_region.offset))
        g2 = tuple(o + t for o, t in zip(want.offset, it.target_region.offset))
        assert g1 == g2
    assert (cover == 1).all()
    # only chunks that overlap the box are read
    expected = 1
    for o, e, c in zip(want.offset, want.end, chunk):
        expected *= (e - 1) // c - o // c + 1
    assert len(items) == expected


def test_zero_d_box():
    (it,) = plan_box_read("s", (), (), Box((), ()))
    assert it.chunk_index == ()
