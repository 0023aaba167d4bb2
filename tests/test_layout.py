"""Key escaping: no key leaves the checkpoint directory or collides with format files."""
import os

from hypothesis import given, settings, strategies as st

from tierpoint.format import layout


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=4))
def test_escaped_paths_stay_inside_and_are_safe(key):
    path = layout.array_path(tuple(key))
    base = "/ckpt/step_00000001"
    full = os.path.normpath(os.path.join(base, path))
    assert full.startswith(base + "/")
    for part in path.split("/"):
        assert part not in ("", ".", "..", layout.ZARR_JSON, layout.MANIFEST_FILE,
                            layout.COMMIT_FILE)
        assert not part.startswith(".") and not part.startswith("__")
        assert len(part.encode()) <= 255


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_escaping_is_injective(a, b):
    if a != b:
        assert layout.escape_component(a) != layout.escape_component(b)


def test_readable_names_stay_readable():
    assert layout.array_path(("model", "layers.0.weight")) == "model/layers.0.weight"
    assert layout.array_path(("a/b",)) == "a%2Fb"
    assert layout.array_path(("..",)) == "%2E."
    assert layout.array_path(("",)) == "%"
    assert layout.array_path(("zarr.json",)) == "zarr%2Ejson"
    assert layout.array_path(("__x",)) == "%5F_x"
    assert layout.array_path(("gewicht_ä",)) == "gewicht_%C3%A4"
    long = layout.escape_component("k" * 1000)
    assert len(long) <= 200 and "~" in long


def test_chunk_keys():
    assert layout.chunk_key((0, 3)) == "c.0.3"
    assert layout.chunk_key(()) == "c"
