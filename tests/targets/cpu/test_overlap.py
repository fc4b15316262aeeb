"""kdsl/targets/cpu/overlap.py: whether two strided arrays share memory, from their addresses alone."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kdsl.targets.cpu import overlap
from kdsl.targets.cpu.overlap import Layout, share_memory

BASE = np.zeros((12, 10), np.float32)


def views():
    """Random views of one 12 × 10 matrix: row and column slices with steps, maybe
    transposed."""
    part = st.tuples(st.integers(0, 11), st.integers(1, 12), st.integers(1, 3))
    return st.builds(
        lambda r, c, t: (
            BASE[r[0] : r[1] : r[2], c[0] : c[1] : c[2]].T
            if t
            else BASE[r[0] : r[1] : r[2], c[0] : c[1] : c[2]]
        ),
        part,
        part,
        st.booleans(),
    )


@given(views(), views())
@settings(max_examples=300, deadline=None)
def test_agrees_with_numpy_on_views_of_one_matrix(a, b):
    assert share_memory(Layout.of(a), Layout.of(b)) == np.shares_memory(a, b)


def test_addresses_alone_are_enough():
    """No memory is read: far-away addresses (a GPU's, say) are fine."""
    rows = Layout(1 << 44, (1000, 500), (4000, 4), 4)
    assert not share_memory(rows, Layout((1 << 44) + 2000, (1000, 500), (4000, 4), 4))
    assert share_memory(rows, Layout((1 << 44) + 1996, (1000, 500), (4000, 4), 4))


def test_too_hard_to_tell_counts_as_sharing(monkeypatch):
    monkeypatch.setattr(overlap, "MAX_WORK", 1)
    a, b = BASE[::2, ::7].T, BASE.ravel()[3::9]
    assert not np.shares_memory(a, b)
    assert share_memory(Layout.of(a), Layout.of(b))
