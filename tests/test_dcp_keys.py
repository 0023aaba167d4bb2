"""The one key mapping of tierpoint.dcp (``dcp_key``), in one process, no process group:
``layout.key_of_path`` decodes an array's path exactly as ``layout.array_path`` escaped it.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from tierpoint.format import layout

# Every rule of escape_component: "/", "%", " ", non-ASCII, a leading "." and "__", the
# empty component, "zarr.json"; and dots, which DCP's join keeps as they are.
ODD = ["a/b", "50%", "x y", "gewicht_ä", ".hidden", "..", "__x", "", "zarr.json"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=60), min_size=1, max_size=4))
def test_key_of_path_inverts_array_path(key):
    path = layout.array_path(tuple(key))
    if "~" in path:  # a component over 200 characters escaped, shortened: not invertible
        with pytest.raises(ValueError, match="shortened"):
            layout.key_of_path(path)
        return
    assert layout.key_of_path(path) == tuple(key)
    assert layout.array_path(layout.key_of_path(path)) == path


def test_key_of_path_decodes_each_escape_and_refuses_what_array_path_never_writes():
    for component in ODD + ["layers.0.w", "%2F", "~", "k" * 60]:
        assert layout.key_of_path(layout.array_path((component, "w"))) == (component, "w")
    assert layout.key_of_path(layout.array_path(("groups", 0, "lr"))) == ("groups", "0", "lr")
    for bad in ("a%2fb", "%%", "a b", "a//b", ".x", "__x", "zarr.json", "%C3"):
        with pytest.raises(ValueError, match="not an escaped key component"):
            layout.key_of_path(bad)
    with pytest.raises(ValueError, match="shortened"):  # its key is only in the manifest
        layout.key_of_path(layout.array_path(("k" * 300,)))
