"""`s.prefetch(buffer, loop, distance)`: a hint that never changes results — checked
against NumPy and the interpreter on shapes where the hinted addresses run past the
buffer's end — the statement it places, the instruction it becomes, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from tests.helpers import check_kernel, random_array


def _row_sums_kernel(distance: int, in_vector_loop: bool = False) -> kd.KernelFunction:
    """y[i] = Σ_j w[i, j]·x[j] with the columns in vectors of 16 and `w` prefetched
    `distance` vectors ahead: at the loop over the vectors, or (`in_vector_loop`) at that
    loop inside the vectorized loop over the lanes (a hint at the first lane)."""

    @kd.kernel
    def row_sums(w, x, y):
        i, jo, lane = kd.indices(w.shape[0], w.shape[1] // 16, 16)
        part = kd.empty((w.shape[0], 16), kd.f32)
        part[i, lane] = kd.sum(w[i, 16 * jo + lane] * x[16 * jo + lane], over=jo)
        y[i] = kd.sum(part[i, lane], over=lane)

    @row_sums.schedule(kd.cpu)
    def _(s):
        if in_vector_loop:
            s.vectorize("lane", 16)
            s.parallelize("i")
            s.prefetch("w", "jo", distance)
            return
        s.fuse("i", "i.1")
        s.reorder("jo", "lane")
        s.vectorize("lane", 16)
        s.parallelize("i")
        s.prefetch("w", "jo", distance)

    return row_sums


def _expected(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    full = 16 * (w.shape[1] // 16)
    return w[:, :full].astype(np.float64) @ x[:full]


@settings(max_examples=15, deadline=None)
@given(
    rows=st.sampled_from([0, 1, 2, 7, 13, 37]),
    cols=st.sampled_from([0, 15, 16, 17, 48, 113, 300]),
    distance=st.sampled_from([1, 3, 32, 1000]),
    in_vector_loop=st.booleans(),
)
def test_results_never_change(rows: int, cols: int, distance: int, in_vector_loop: bool) -> None:
    rng = np.random.default_rng(rows * 1000 + cols)
    w, x = random_array(rng, (rows, cols), np.float32), random_array(rng, (cols,), np.float32)
    y = random_array(rng, (rows,), np.float32)
    kernel = _row_sums_kernel(distance, in_vector_loop)
    check_kernel(kernel, [w, x, y], {2: _expected(w, x)}, rtol=1e-5, atol=1e-5)


def test_the_hint_reads_the_iteration_ahead_and_becomes_prefetcht0() -> None:
    w, x, y = np.ones((3, 64), np.float32), np.ones(64, np.float32), np.zeros(3, np.float32)
    kernel = _row_sums_kernel(32)
    text = str(kernel.lowered(w, x, y))
    assert "prefetch w[i, 16 * (jo + 32) + 0]" in text  # the inner lane loop at its start
    assert "prefetcht0" in kernel.asm(w, x, y)
    assert 's.prefetch("w", "jo", 32)' in str(kernel.schedule_of(w, x, y))


def test_locals_of_the_loop_are_resolved_in_the_hint() -> None:
    @kd.kernel
    def pairs(v, out):
        h, f = kd.indices(out.shape[0], out.shape[1] // 2)
        at = h * out.shape[1] + 2 * f  # one local, read twice
        out[h, 2 * f] = v[at] - v[at + 1]
        out[h, 2 * f + 1] = v[at] + v[at + 1]

    @pairs.schedule(kd.cpu)
    def _(s):
        s.prefetch("v", "h", 2)

    v, out = random_array(np.random.default_rng(0), (5 * 12,), np.float32), np.zeros((5, 12))
    out = out.astype(np.float32)
    text = str(pairs.lowered(v, out))
    assert "prefetch v[(h + 2) * out.shape[1]" in text.replace("  ", " ")
    want = np.empty((5, 12))
    pairs_v = v.reshape(5, 6, 2).astype(np.float64)
    want[:, 0::2], want[:, 1::2] = pairs_v[..., 0] - pairs_v[..., 1], pairs_v.sum(-1)
    check_kernel(pairs, [v, out], {1: want}, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (("nope", "j", 4), "there is no buffer named 'nope'"),
        (("t", "j", 4), "there is a temporary named 't'"),
        (("x", "i.1", 4), "loop 'i.1' reads or writes no element of 'x' that moves with loop"),
        (("w", "i.1", 1, "i"), "loop 'i' is not inside loop 'i.1'"),
        (("w", "j", 0), "the prefetch distance must be a positive int"),
        (("w", "missing", 4), "there is no loop named 'missing'"),
    ],
)
def test_refusals_say_why(args: tuple[object, ...], message: str) -> None:
    @kd.kernel
    def row_sums(w, x, y):
        i, j = kd.indices(w.shape[0], w.shape[1])
        t = kd.empty(w.shape, kd.f32)  # a temporary: later steps may shrink or inline it
        t[i, j] = w[i, j] * x[j]
        y[i] = kd.sum(t[i, j], over=j)

    @row_sums.schedule(kd.cpu)
    def _(s):
        s.prefetch(*args)

    with pytest.raises(kd.ScheduleError, match=message.replace("(", r"\(")):
        row_sums(np.ones((2, 3), np.float32), np.ones(3, np.float32), np.zeros(2, np.float32))


def _scaled_rows_kernel(distance: int) -> kd.KernelFunction:
    """y = x / Σ_j x[i, j] per row (two passes over each row, vectorized), the next
    rows' x and y fetched `distance` rows ahead inside the output loop."""

    @kd.kernel
    def scaled_rows(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        total = kd.empty(x.shape[0], kd.f32)
        total[i] = kd.sum(x[i, j], over=j)
        y[i, j] = x[i, j] / total[i]

    @scaled_rows.schedule(kd.cpu)
    def _(s):
        s.fuse("i", "i.1")
        s.vectorize("j", 16)
        s.vectorize("j.1", 16)
        s.parallelize("i")
        s.prefetch("x", "i", distance, inside="j.1")
        s.prefetch("y", "i", distance, inside="j.1")

    return scaled_rows


@settings(max_examples=12, deadline=None)
@given(
    rows=st.sampled_from([0, 1, 2, 7, 37]),
    cols=st.sampled_from([1, 15, 16, 17, 113]),
    distance=st.sampled_from([1, 2, 1000]),
)
def test_rows_ahead_inside_an_inner_loop_never_change_results(
    rows: int, cols: int, distance: int
) -> None:
    rng = np.random.default_rng(rows * 100 + cols)
    x = rng.uniform(0.5, 1.5, (rows, cols)).astype(np.float32)  # sums far from zero
    y = random_array(rng, (rows, cols), np.float32)
    want = x.astype(np.float64) / x.astype(np.float64).sum(axis=1, keepdims=True)
    check_kernel(_scaled_rows_kernel(distance), [x, y], {1: want}, rtol=1e-5, atol=1e-6)


def test_a_written_buffer_is_fetched_for_writing() -> None:
    """Inside the output loop: the next row of x (read: prefetcht0) and of y (written:
    prefetchw), at each vector's first lane."""
    kernel = _scaled_rows_kernel(1)
    x, y = np.ones((4, 64), np.float32), np.zeros((4, 64), np.float32)
    text = str(kernel.lowered(x, y))
    assert "prefetch x[i + 1, j.1]" in text and "prefetch for write y[i + 1, j.1]" in text
    asm = kernel.asm(x, y)
    assert "prefetcht0" in asm and "prefetchw" in asm


def test_inside_a_loop_the_outer_loops_locals_are_resolved() -> None:
    """A local of the moving loop's body (a row's start) in the inner loop's index: the
    hint advances the row through it."""

    @kd.kernel
    def pair_sums(v, out):
        for i in kd.grid(out.shape[0]):
            start = kd.local(2 * i * out.shape[1], kd.i64)
            j = kd.indices(out.shape[1], names="j")
            out[i, j] = v[start + 2 * j] + v[start + 2 * j + 1]

    @pair_sums.schedule(kd.cpu)
    def _(s):
        s.prefetch("v", "i", 1, inside="j")

    rng = np.random.default_rng(4)
    v, out = random_array(rng, (7 * 22,), np.float32), np.zeros((7, 11), np.float32)
    text = str(pair_sums.lowered(v, out)).replace("  ", " ")
    assert "prefetch v[2 * (i + 1) * out.shape[1] + 2 * j]" in text
    want = v.reshape(7, 11, 2).astype(np.float64).sum(-1)
    check_kernel(pair_sums, [v, out], {1: want}, rtol=1e-6, atol=1e-6)


def test_ptx_ignores_the_hint() -> None:
    """A GPU schedule may carry the step (a shared recipe); the GPU code has no prefetch."""

    @kd.kernel
    def scale(x, y):
        i = kd.indices(x.shape[0])
        y[i] = 2 * x[i]

    @scale.schedule(kd.cuda)
    def _(s):
        s.prefetch("x", "i", 8)
        s.bind("i", "thread.x")

    x = np.ones(100, np.float32)
    ptx = scale.ptx(x, np.zeros_like(x))
    assert ".entry" in ptx and "prefetch" not in ptx


def test_a_parallel_loop_left_with_only_the_hint_captures_its_buffer() -> None:
    """Regression: `reorder` distributes the hint into a loop of its own, without the
    reads; parallelized, that loop's task did not capture the hinted buffer (KeyError)."""

    @kd.kernel
    def row_sums(w, x, y):
        i, j = kd.indices(w.shape[0], w.shape[1])
        y[i] = kd.sum(w[i, j] * x[j], over=j)

    @row_sums.schedule(kd.cpu)
    def _(s):
        s.prefetch("w", "i", 2)
        s.reorder("j", "i")
        s.parallelize("i.1")  # the copy of 'i' that holds the hint

    rng = np.random.default_rng(1)
    w, x = random_array(rng, (37, 113), np.float32), random_array(rng, (113,), np.float32)
    y = np.zeros(37, np.float32)
    assert "prefetch w[i.1 + 2, 0]" in str(row_sums.lowered(w, x, y))
    want = w.astype(np.float64) @ x
    check_kernel(row_sums, [w, x, y], {2: want}, rtol=1e-5, atol=1e-5)
