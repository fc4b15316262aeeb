"""A parallel loop's iterations may not depend on each other (DESIGN §1, "Legality,
enforced"): reads of the array a loop writes, at subscripts proven apart in different
iterations (kdsl/ir/dependence.py), are accepted and give NumPy's results; those that
may meet another iteration's write are refused at trace time."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from tests.helpers import check_kernel, keyed_rng, random_array
from tests.test_errors import line_of, raises

F = np.float32


@kd.kernel
def pairsort_grid(X):
    for p, s in kd.grid(X.shape[0] // 8, 4):
        a = kd.local(X[8 * p + s])
        b = kd.local(X[8 * p + s + 4])
        X[8 * p + s] = kd.minimum(a, b)
        X[8 * p + s + 4] = kd.maximum(a, b)


@kd.kernel
def pairsort_range(X):
    for p in kd.grid(X.shape[0] // 8):
        for s in kd.range(4):
            a = kd.local(X[8 * p + s])
            b = kd.local(X[8 * p + s + 4])
            X[8 * p + s] = kd.minimum(a, b)
            X[8 * p + s + 4] = kd.maximum(a, b)


def pairsort_ref(x: np.ndarray) -> np.ndarray:
    """A bitonic compare-exchange step: in each block of 8, element s against s + 4."""
    out, k = x.copy(), len(x) // 8
    halves = x[: 8 * k].reshape(k, 2, 4)
    out[: 8 * k] = np.concatenate([halves.min(axis=1), halves.max(axis=1)], axis=1).ravel()
    return out


@pytest.mark.parametrize("kernel", [pairsort_grid, pairsort_range], ids=["grid", "range"])
@pytest.mark.parametrize("k", [1, 7, 129])
@pytest.mark.parametrize("extra", [0, 5])
def test_compare_exchange_in_place(kernel, k, extra):
    """X[8*p + s] and X[8*p + s + 4], s < 4, never meet: accepted in both spellings."""
    x = random_array(keyed_rng("pairsort", k, extra), (8 * k + extra,), F)
    check_kernel(kernel, [x], {0: pairsort_ref(x)})


@kd.kernel
def odd_to_even(X):
    i = kd.indices(X.shape[0] // 2)
    X[2 * i] = X[2 * i + 1] * 2.0


@kd.kernel
def scatter_rows_odd_to_even(X, idx):
    i = kd.indices(idx.shape[0])
    X[idx[i], 2 * i] = X[idx[i], 2 * i + 1] + 1.0


@pytest.mark.parametrize("n", [1, 7, 1021])
def test_interleaved_halves_in_one_statement(n):
    x = random_array(keyed_rng("odd_to_even", n), (2 * n + n % 2,), F)
    want = x.copy()
    want[0 : 2 * n : 2] = x[1 : 2 * n : 2] * 2
    check_kernel(odd_to_even, [x], {0: want})


@pytest.mark.parametrize("n", [1, 7, 100])
def test_one_axis_proves_the_iterations_apart(n):
    """A data-dependent row proves nothing, the interleaved columns do."""
    rng = keyed_rng("scatter_rows", n)
    x = random_array(rng, (5, 2 * n), F)
    idx = rng.integers(0, 5, n).astype(np.int64)
    want = x.copy()
    for i in range(n):
        want[idx[i], 2 * i] = x[idx[i], 2 * i + 1] + 1
    check_kernel(scatter_rows_odd_to_even, [x, idx], {0: want})


# ------------------------------------------------------------------- still refused


def test_a_neighbour_in_the_block_is_refused():
    """Iterations s and s + 1 meet: one statement is refused as it is recorded."""

    @kd.kernel
    def k(X):
        for p, s in kd.grid(X.shape[0] // 8, 4):
            X[8 * p + s] = X[8 * p + s + 1]  # here

    err = raises(
        kd.TraceError,
        lambda: k(np.zeros(16, F)),
        "'X' is written at [8 * p + s] and read at [8 * p + s + 1] under parallel loop(s) p, s",
        "kd.range",
    )
    assert err.loc.line == line_of(k, "here")


def test_a_neighbour_through_a_local_is_refused():
    @kd.kernel
    def k(X):
        for p, s in kd.grid(X.shape[0] // 8, 4):
            a = kd.local(X[8 * p + s + 1])  # here
            X[8 * p + s] = a

    err = raises(
        kd.TraceError,
        lambda: k(np.zeros(16, F)),
        "'X' is written at [8 * p + s] and read at [8 * p + s + 1] in parallel loop 's': "
        "its iterations would depend on each other",
        "kd.range",
    )
    assert err.loc.line == line_of(k, "here")


def test_two_writes_that_meet_across_iterations_are_refused():
    """Iteration i's X[2*i + 2] is iteration i + 1's X[2*i]: the compiled loop's result
    depended on the threads' order (a review found it); X[i, 0] and X[i, 1] never meet,
    and a scatter's collisions (subscripts read from data) stay the default schedule's."""

    @kd.kernel
    def k(X):
        for i in kd.grid(X.shape[0] // 2 - 1):
            X[2 * i] = 1.0
            X[2 * i + 2] = 2.0  # here

    err = raises(
        kd.TraceError,
        lambda: k(np.zeros(10, F)),
        "'X' is written at [2 * i] and written again at [2 * i + 2] in parallel loop 'i'",
        "kd.range",
    )
    assert err.loc.line == line_of(k, "here")

    @kd.kernel
    def pairs(X, idx, H):
        for i in kd.grid(X.shape[0]):
            X[i, 0] = 1.0
            X[i, 1] = 2.0
            H[idx[i]] = 1.0
            H[idx[i] + 1] = 2.0

    X, H = np.zeros((3, 2), F), np.zeros(6, F)
    pairs(X, np.array([0, 2, 4]), H)
    np.testing.assert_array_equal(X, [[1, 2]] * 3)
    np.testing.assert_array_equal(H, [1, 2] * 3)


def test_a_wider_block_is_refused_for_the_outer_loop():
    """With s < 5, X[8*p + 4 + 4] of iteration p is X[8*(p + 1) + 0] of the next."""

    @kd.kernel
    def k(X):
        for p in kd.grid(X.shape[0] // 8):
            for s in kd.range(5):
                b = kd.local(X[8 * p + s + 4])  # here
                X[8 * p + s] = b

    raises(
        kd.TraceError,
        lambda: k(np.zeros(16, F)),
        "read at [8 * p + s + 4] in parallel loop 'p'",
        "kd.range",
    )


@kd.kernel
def scalar_stride(X, m):
    for i in kd.grid(X.shape[0] // 2):
        X[m * i] = X[m * i + 1]


@kd.kernel
def shape_stride(X):
    for i in kd.grid(X.shape[0] // 2):
        X[(X.shape[0] // 2) * i] = X[(X.shape[0] // 2) * i + 1]


@kd.kernel
def gather(X, idx):
    i = kd.indices(idx.shape[0])
    X[idx[i]] = X[idx[i] + 1]


@kd.kernel
def scatter_rows_two_apart(X, idx):
    i = kd.indices(idx.shape[0])
    X[2 * i, idx[i]] = X[2 * i + 2, idx[i]]


@pytest.mark.parametrize(
    "kernel, args",
    [
        (scalar_stride, (np.zeros(8, F), 1)),  # m = 1: X[i] = X[i + 1]
        (shape_stride, (np.zeros(2, F),)),
        (gather, (np.zeros(8, F), np.zeros(3, np.int64))),
        (scatter_rows_two_apart, (np.zeros((8, 2), F), np.zeros(3, np.int64))),
    ],
    ids=["scalar-stride", "shape-stride", "gather", "rows-two-apart"],
)
def test_what_may_meet_is_refused(kernel, args):
    """A symbolic coefficient, a data-dependent subscript, a column that proves nothing
    beside rows that meet: refused, whatever the values turn out to be."""
    raises(kd.TraceError, lambda: kernel(*args), "is written at", "iterations would race")


@pytest.mark.parametrize("n", [1, 5, 97, 1000])
def test_a_temporary_of_each_iteration_may_be_read_and_written_anywhere(n):
    """Allocated in the body, it is the iteration's own: a gather from it, or a
    histogram into it, can't meet another iteration's (both were refused)."""

    @kd.kernel
    def gather(x, idx, y):
        for i in kd.grid(x.shape[0]):
            t = kd.zeros((8,), kd.f32)
            for q in kd.grid(8):
                t[q] = x[i, q] * 2.0
            y[i] = t[idx[i]]

    @kd.kernel
    def histogram(x, h):
        for i in kd.grid(x.shape[0]):
            t = kd.zeros((4,), kd.i32)
            for j in kd.range(x.shape[1]):
                t[x[i, j] % 4] += 1
            for b in kd.grid(4):
                h[i, b] = t[b]

    rng = np.random.default_rng(n)
    x, idx = rng.random((n, 8)).astype(np.float32), rng.integers(0, 8, n)
    y = np.full(n, np.nan, np.float32)
    gather(x, idx, y)
    np.testing.assert_array_equal(y, 2 * x[np.arange(n), idx])
    assert "parallelized" in str(gather.lowered(x, idx, y))
    xi, h = rng.integers(0, 100, (n, 13)), np.full((n, 4), -1, np.int32)
    histogram(xi, h)
    np.testing.assert_array_equal(h, [np.bincount(r % 4, minlength=4) for r in xi])
