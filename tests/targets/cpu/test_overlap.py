"""kdsl/targets/cpu/overlap.py: whether two strided arrays share memory, from their addresses alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.ir.passes.in_place import in_place_pairs
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


def _pairs(fn, *args):
    return in_place_pairs(fn.ir(*args).kernel)


def test_a_kernel_may_update_an_array_in_place():
    """One statement writes y at all its loops' indices and reads x and y there only:
    x and y may be one array (relu(x, out=x)); anything else may not."""

    @kd.kernel
    def axpy(a, x, w, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = a * x[i, j] + y[i, j] * w[j]

    @kd.kernel
    def shifted(x, y):
        i = kd.indices(x.shape[0] - 1)
        y[i] = x[i + 1]

    @kd.kernel
    def centred(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = x[i, j] - kd.max(x[i, j], over=j)  # (the max: another statement)

    @kd.kernel
    def twice(x, y):
        for i in kd.grid(x.shape[0]):
            for _ in kd.range(2):
                y[i] = x[i] + 1.0  # written twice: x[i] would be read after y[i] changed

    x, w = np.random.default_rng(0).random((3, 5), np.float32), np.ones(5, np.float32)
    assert _pairs(axpy, 2.0, x, w, x) == {("y", "x")}  # (w is read at [j], not [i, j])
    assert not _pairs(shifted, x[0], x[0]) and not _pairs(centred, x, x)
    assert not _pairs(twice, x[0], x[0])
    want = 2 * x + x * w
    axpy(2.0, x, w, x)
    np.testing.assert_allclose(x, want, rtol=1e-6)
    for kernel, args in (
        (shifted, (x[0], x[0])),
        (centred, (x, x)),
        (axpy, (2.0, x, w, x.T.copy().T)),
    ):
        if kernel is axpy:  # the same memory, but not the same view (x[1:] by x[:-1])
            args = (2.0, x[1:], w, x[:-1])
        with pytest.raises(kd.KernelArgumentError, match="share memory"):
            kernel(*args)


def test_an_update_in_place_needs_no_check_in_python(monkeypatch):
    """The same view as input and output passes the entry's own check (Kernel.in_place):
    no call into Python's test of shared memory, nor a second run (19 → 3 µs a call);
    views that only meet still go there and are refused."""
    from kdsl.targets.cpu.call import Specialization

    @kd.kernel
    def axpy(a, x, w, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = a * x[i, j] + y[i, j] * w[j]

    rng = np.random.default_rng(1)
    w = rng.random(301, np.float32)
    for x in (rng.random((997, 301), np.float32), rng.random((301, 997), np.float32).T):
        want = 1.5 * x + x * w
        with monkeypatch.context() as m:
            m.setattr(Specialization, "_sharing", lambda *_: pytest.fail("checked in Python"))
            axpy(1.5, x, w, x)
        np.testing.assert_allclose(x, want, rtol=1e-6)
        with pytest.raises(kd.KernelArgumentError, match="share memory"):
            axpy(1.5, x[1:], w, x[:-1])
    # one view, but elements (2, 0) and (0, 3) are one float: refused as before (reviewed)
    rows = np.lib.stride_tricks.as_strided(
        np.zeros(64, np.float32), (3, 4), strides=(12, 8), writeable=True
    )
    with pytest.raises(kd.KernelArgumentError, match="share memory"):
        axpy(1.5, rows, w[:4], rows)
    reversed_rows = x[::-1, ::-2]  # apart, with negative strides: in place, natively
    want = 1.5 * reversed_rows + reversed_rows * w[: reversed_rows.shape[1]]
    with monkeypatch.context() as m:
        m.setattr(Specialization, "_sharing", lambda *_: pytest.fail("checked in Python"))
        axpy(1.5, reversed_rows, w[: reversed_rows.shape[1]], reversed_rows)
    np.testing.assert_allclose(reversed_rows, want, rtol=1e-6)


def test_zero_d_arrays_are_checked_too():
    """A written 0-d array and another 0-d one: the entry's test of interleaved views
    took the last axis's stride, which a 0-d array has none of (an IndexError)."""

    @kd.kernel
    def twice(a, b):
        b[()] = a[()] * 2.0

    a, b = np.array(3.0, np.float32), np.array(0.0, np.float32)
    twice(a, b)
    assert b == 6.0
    twice(a, a)  # in place: one statement reads and writes the one element
    assert a == 6.0


def test_a_view_whose_rows_overlap_is_not_updated_in_place():
    """A sliding window's rows share elements: y[i, j] = 2 x[i, j] in place would double
    some elements twice (reviewed: it did)."""
    from numpy.lib.stride_tricks import sliding_window_view

    @kd.kernel
    def scale(x, y):
        i, j = kd.indices(y.shape[0], y.shape[1])
        y[i, j] = x[i, j] * 2.0

    w = sliding_window_view(np.arange(8, dtype=np.float32), 4, writeable=True)
    assert not overlap.one_view(Layout.of(w), Layout.of(w))
    with pytest.raises(kd.KernelArgumentError, match="share memory"):
        scale(w, w)


def _elements_meet(a: np.ndarray) -> bool:
    """Brute force: whether two elements of `a` share a byte."""
    starts = np.zeros(1, np.int64)
    for n, s in zip(a.shape, a.strides):
        starts = (starts[:, None] + np.arange(n) * s).ravel()
    starts.sort()
    return bool(starts.size > 1 and (np.diff(starts) < a.itemsize).any())


@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=3).flatmap(
        lambda shape: st.tuples(
            st.just(shape), st.lists(st.integers(-3, 12), min_size=len(shape), max_size=len(shape))
        )
    )
)
@settings(max_examples=300, deadline=None)
def test_overlaps_itself_is_sure(layout):
    """Whenever it says two elements meet they do (brute force), and a view of one
    array made by slicing and transposing never does."""
    shape, steps = layout
    memory = np.zeros(200, np.float32)
    strides = tuple(4 * s for s in steps)
    start = 4 * sum(-s * (n - 1) for n, s in zip(shape, steps) if s < 0)
    a = np.lib.stride_tricks.as_strided(memory[start // 4 :], shape, strides)
    if overlap.overlaps_itself(Layout.of(a)):  # (it may miss a sparse overlap: a sure test)
        assert _elements_meet(a)
    elif 0 in steps[:1] and shape[0] > 1:
        raise AssertionError("a stride of 0 along an axis of two elements was missed")
    assert not any(
        overlap.overlaps_itself(Layout.of(v)) for v in (BASE[::2, 1::3].T, BASE[:, ::-1])
    )


def test_an_output_that_overlaps_itself_is_refused():
    """A writable view whose elements share memory (a stride of 0, rows that meet): the
    threads raced on it and left a different row each call."""
    from numpy.lib.stride_tricks import as_strided

    @kd.kernel
    def copy(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = x[i, j]

    x = np.random.default_rng(1).random((300, 8), np.float32)
    memory = np.zeros(8 * 300, np.float32)
    for strides in ((0, 4), (8, 4)):  # every row one; each row half on the next
        with pytest.raises(kd.KernelArgumentError, match="'y' overlaps itself"):
            copy(x, as_strided(memory, (300, 8), strides))
    copy(as_strided(memory, (300, 8), (0, 4)), np.empty((300, 8), np.float32))  # read: fine
    y = np.empty((300, 8), np.float32)
    copy(x, y)
    np.testing.assert_array_equal(y, x)
    copy(np.ones((2, 0), np.float32), np.empty((2, 0), np.float32))  # strides (0, 4): no elements
