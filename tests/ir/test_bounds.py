"""The bounds pass: subscripts proven in bounds by one check per call."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.ir.evaluate import evaluate
from kdsl.ir.nodes import (
    Binary,
    BinaryOp,
    Buffer,
    BufferRole,
    Check,
    CheckKind,
    Const,
    DimOf,
    Kernel,
    Loop,
    LoopKind,
    LoopVar,
    Param,
    Scope,
    Store,
)
from kdsl.ir.passes.bounds import hoist_bounds_checks
from kdsl.ir.printer import format_kernel
from kdsl.ir.visit import walk_stmts
from tests.helpers import check_kernel, random_array

I, J = LoopVar("i"), LoopVar("j")  # noqa: E741
F = np.float32
SIZES = [0, 1, 2, 7, 13]


def c(v, d=kd.i64):
    return Const(v, d)


def b(op, x, y):
    return Binary(op, x, y, kd.i64)


ADD, SUB, MUL = BinaryOp.ADD, BinaryOp.SUB, BinaryOp.MUL


# --------------------------------------------------------------- checks on traced kernels


def bounds_checks(kernel, *args):
    """The checks the bounds pass added to `kernel`'s lowered IR."""
    traced = kernel.ir(*args).kernel
    lowered = kernel.lowered(*args).kernel
    added = [s for s in lowered.body if isinstance(s, Check) and s not in traced.body]
    assert len(lowered.body) == len(traced.body) + len(added)
    return added


@kd.kernel
def stencil(x, y):
    i = kd.indices(y.shape[0])
    y[i] = x[i] + x[i + 2]


def test_stencil_gets_one_check_for_the_offset_read():
    (check,) = bounds_checks(stencil, np.ones(5, F), np.ones(3, F))
    assert check.kind is CheckKind.SHAPE
    assert check.what == "subscript i + 2 of 'x' stays in [0, x.shape[0])"
    assert "x[i + 2]" in check.loc.text
    with pytest.raises(kd.ShapeError) as info:  # (it said: pass arrays whose dimensions agree)
        stencil(np.ones(4, F), np.ones(3, F))
    assert "shorten the loop it runs over" in info.value.fix

    @kd.kernel
    def back(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i - 1]

    with pytest.raises(kd.ShapeError) as info:
        back(np.ones(4, F), np.ones(4, F))
    assert "start the loop it runs over later (kd.range(1, n)" in info.value.fix


def test_checks_go_after_the_tie_checks_and_before_the_loops():
    body = stencil.lowered(np.ones(5, F), np.ones(3, F)).kernel.body
    kinds = [type(s).__name__ for s in body]
    assert kinds == ["Check", "Check", "Loop"]
    assert "stays in" in body[1].what


@pytest.mark.parametrize("n", SIZES)
def test_stencil_is_correct_for_exactly_long_input(n):
    x = random_array(np.random.default_rng(n), (n + 2,), F)
    check_kernel(stencil, [x, np.empty(n, F)], {1: x[:n] + x[2:]})


@pytest.mark.parametrize("n", [1, 2, 7])
def test_too_short_input_is_a_shape_error_not_an_out_of_bounds_read(n):
    x, y = np.ones(n + 1, F), np.ones(n, F)
    for run in (stencil, stencil.interpret):
        with pytest.raises(kd.ShapeError, match=r"i \+ 2 of 'x'") as info:
            run(x, y)
        assert f"x.shape[0] = {n + 1}" in str(info.value)


def test_empty_loop_needs_no_elements():
    stencil(np.ones(0, F), np.ones(0, F))  # 0 iterations: nothing is read


def test_the_same_subscript_is_checked_once():
    @kd.kernel
    def square(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[i + 1] * x[i + 1] + x[i + 1]

    assert len(bounds_checks(square, np.ones(4, F), np.ones(3, F))) == 1


def test_strided_subscript_uses_the_highest_index():
    @kd.kernel
    def odd(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[2 * i + 1]

    (check,) = bounds_checks(odd, np.ones(7, F), np.ones(3, F))
    assert "2 * i + 1" in check.what
    x = np.arange(7, dtype=F)
    check_kernel(odd, [x, np.empty(3, F)], {1: x[1::2]})
    odd(np.ones(6, F), np.ones(3, F))  # the highest index is 2 * 2 + 1 = 5
    with pytest.raises(kd.ShapeError, match=r"2 \* i \+ 1"):
        odd(np.ones(5, F), np.ones(3, F))


def test_negative_offset_fails_whenever_the_loop_runs():
    @kd.kernel
    def prev(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[i - 1]

    assert len(bounds_checks(prev, np.ones(3, F), np.ones(3, F))) == 1
    with pytest.raises(kd.ShapeError, match="i - 1"):
        prev(np.ones(3, F), np.ones(3, F))
    prev(np.ones(3, F), np.ones(0, F))  # no iterations, no read


def test_two_dimensional_offsets():
    @kd.kernel
    def blur(x, y):
        i, j = kd.indices(y.shape[0], y.shape[1])
        y[i, j] = x[i, j] + x[i + 1, j + 1]

    assert len(bounds_checks(blur, np.ones((4, 5), F), np.ones((3, 4), F))) == 2
    x = random_array(np.random.default_rng(3), (4, 5), F)
    check_kernel(blur, [x, np.empty((3, 4), F)], {1: x[:3, :4] + x[1:, 1:]})
    with pytest.raises(kd.ShapeError, match=r"j \+ 1"):
        blur(np.ones((4, 4), F), np.ones((3, 4), F))


def test_serial_loop_reading_the_previous_iteration_is_checked():
    @kd.kernel
    def scan(x, y):
        y[0] = x[0]
        for t in kd.range(x.shape[0] - 1):
            y[t + 1] = y[t] + x[t + 1]

    assert len(bounds_checks(scan, np.ones(4, F), np.ones(4, F))) >= 2
    with pytest.raises(kd.ShapeError):
        scan(np.ones(4, F), np.ones(3, F))


@kd.kernel
def flattened(x, y):
    i, j = kd.indices(y.shape[0], y.shape[1])
    y[i, j] = x[i * y.shape[1] + j]


def test_flattened_subscripts_are_checked_once():
    """x[i·n + j], n a shape: a read far past x (it crashed the process) is a ShapeError;
    x of exactly the right length runs."""
    assert len(bounds_checks(flattened, np.ones(12, F), np.ones((3, 4), F))) == 1
    with pytest.raises(kd.ShapeError, match=r"i \* y.shape\[1\] \+ j of 'x'"):
        flattened(np.ones(10, F), np.ones((1000, 1000), F))
    x = random_array(np.random.default_rng(2), (12,), F)
    check_kernel(flattened, [x, np.empty((3, 4), F)], {1: x.reshape(3, 4)})
    flattened(np.ones(0, F), np.ones((0, 4), F))  # no iterations


def test_locals_given_one_value_are_seen_through():
    @kd.kernel
    def pairs(x, y):
        for i in kd.grid(y.shape[0]):
            at = kd.local(2 * i + 1, kd.i64)
            half = kd.local(at // 2, kd.i64)
            y[i] = x[at] + x[kd.minimum(half, x.shape[0] - 1)]

    assert len(bounds_checks(pairs, np.ones(7, F), np.ones(3, F))) == 2
    x = random_array(np.random.default_rng(5), (7,), F)
    check_kernel(pairs, [x, np.empty(3, F)], {1: x[1::2] + x[:3]})
    with pytest.raises(kd.ShapeError, match="at of 'x'"):
        pairs(np.ones(5, F), np.ones(3, F))


def test_a_loop_over_a_local_given_one_value():
    """`for t in kd.range(n)` with n a local of the shapes: its extent is known too."""

    @kd.kernel
    def shifted(x, y):
        n = kd.local(y.shape[0] - 1, kd.i64)
        for t in kd.range(n):
            y[t] = x[t + 2]

    assert len(bounds_checks(shifted, np.ones(5, F), np.ones(4, F))) == 2  # y[t], x[t + 2]
    x = random_array(np.random.default_rng(7), (5,), F)
    y = np.zeros(4, F)
    shifted(x, y)
    np.testing.assert_array_equal(y[:3], x[2:])
    with pytest.raises(kd.ShapeError, match=r"t \+ 2 of 'x'"):
        shifted(np.ones(4, F), np.ones(4, F))


def test_a_circular_subscript():
    """x[(i + 1) % n] reads within [0, n): x of n elements or more runs, fewer is refused."""

    @kd.kernel
    def rotated(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[(i + 1) % y.shape[0]]

    x = random_array(np.random.default_rng(9), (5,), F)
    check_kernel(rotated, [x, np.empty(5, F)], {1: np.roll(x, -1)})
    with pytest.raises(kd.ShapeError, match=r"% y.shape\[0\] of 'x'"):
        rotated(np.ones(4, F), np.ones(5, F))
    rotated(np.ones(0, F), np.ones(0, F))  # no iterations


def test_a_bare_index_over_a_local_extent_is_checked():
    """`for t in kd.range(n)`, n a local: the trace ties no shape to n, so y[t] itself is
    checked (a short y was written past its end)."""

    @kd.kernel
    def copy(x, y):
        n = kd.local(x.shape[0], kd.i64)
        for t in kd.range(n):
            y[t] = x[t]

    with pytest.raises(kd.ShapeError, match="subscript t of 'y'"):
        copy(np.arange(1000, dtype=F), np.zeros(4, F))
    x = random_array(np.random.default_rng(3), (6,), F)
    check_kernel(copy, [x, np.empty(6, F)], {1: x})


@pytest.mark.parametrize("m", [0, -1])
def test_a_modulus_of_zero_or_less_as_kdsl_computes_it(m):
    """a % 0 is 0 and a % -1 is 0: index 0 is in bounds, the call runs."""

    @kd.kernel
    def rot(x, y, m):
        i = kd.indices(y.shape[0])
        y[i] = x[(i + 1) % m]

    x = np.arange(5, dtype=F)
    y = np.zeros(3, F)
    rot(x, y, m)
    np.testing.assert_array_equal(y, [0, 0, 0])


def test_bounds_too_large_for_int64_fail_instead_of_wrapping():
    @kd.kernel
    def far(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[(i + 1) * (x.shape[0] * 10**12)]

    with pytest.raises(kd.ShapeError, match="x.shape"):
        far(np.ones(10, F), np.ones(10**7, F))


def lowered_text(kernel, *args) -> str:
    """The kernel's IR after the bounds pass, printed (`x[i]?`: checked where it runs)."""
    return format_kernel(hoist_bounds_checks(kernel.ir(*args).kernel))


def test_nothing_hoisted_under_kd_when_but_checked_where_it_runs():
    @kd.kernel
    def guarded(x, y, slack):
        for i in kd.grid(y.shape[0]):
            with kd.when(i + 2 < x.shape[0] + slack):
                y[i] = x[i + 2]

    assert bounds_checks(guarded, np.ones(2, F), np.ones(5, F), 0) == []
    assert "x[i + 2]?" in lowered_text(guarded, np.ones(2, F), np.ones(5, F), 0)
    x, y = np.arange(4, dtype=F), np.full(5, -1, F)
    check_kernel(guarded, [x, y, 0], {1: np.array([2, 3, -1, -1, -1], F)})
    with pytest.raises(kd.BoundsError, match="'x'"):  # a guard one too loose
        guarded(x, y, 1)


def test_nothing_hoisted_from_where_branches_but_checked_where_they_run():
    @kd.kernel
    def shifted(x, y, slack):
        i = kd.indices(y.shape[0])
        y[i] = kd.where(i + 1 < x.shape[0] + slack, x[i + 1], 0.0)

    assert bounds_checks(shifted, np.ones(3, F), np.ones(3, F), 0) == []
    x = np.arange(3, dtype=F) + 1
    check_kernel(shifted, [x, np.empty(3, F), 0], {1: np.array([2, 3, 0], F)})
    with pytest.raises(kd.BoundsError, match="'x'"):
        shifted(x, np.empty(3, F), 1)


@pytest.mark.parametrize("n", [1, 2, 13])
def test_guards_that_keep_a_subscript_in_bounds_leave_it_unchecked(n):
    """A stencil's edges, as users write them: the guard's comparison (or its
    negation, in a where's second value) and the loop's extent prove the neighbours'
    subscripts in bounds, so no element is checked."""

    @kd.kernel
    def neighbours(x, y):
        for i in kd.grid(x.shape[0]):
            left = kd.where(i >= 1, x[i - 1], 0.0)
            right = kd.where(i + 1 >= x.shape[0], 0.0, x[i + 1])
            y[i] = left + right
            with kd.when((i >= 1) & (i + 1 < x.shape[0])):
                y[i] = x[i + 1] - x[i - 1]

    x = random_array(np.random.default_rng(n), (n,), F)
    assert "]?" not in lowered_text(neighbours, x, np.empty(n, F))
    padded = np.pad(x, 1)
    want = padded[:-2] + padded[2:]
    want[1:-1] = x[2:] - x[:-2]
    check_kernel(neighbours, [x, np.empty(n, F)], {1: want})


@pytest.mark.parametrize("n", [1, 5, 16, 37])
def test_loops_shorter_than_a_constant_need_no_check_even_guarded(n):
    """A temporary of constant shape read in a `where` branch, over loops that a
    constant bounds (`range(min(16, n - r))`): in bounds whatever the guard."""

    @kd.kernel
    def tiles(x, y):
        for t in kd.range((x.shape[0] + 15) // 16):
            tile = kd.alloc((16,))
            r = kd.local(t * 16, kd.i64)
            for k in kd.range(kd.minimum(16, x.shape[0] - r)):
                tile[k] = x[r + k]
            for k in kd.range(kd.minimum(16, x.shape[0] - r)):
                y[r + k] = kd.where(x[r + k] > 0, tile[k], 0.0)

    x = random_array(np.random.default_rng(n), (n,), F)
    assert "]?" not in lowered_text(tiles, x, np.empty(n, F))
    check_kernel(tiles, [x, np.empty(n, F)], {1: np.maximum(x, 0)})


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (3, 5), (13, 7)])
def test_a_product_of_loop_variables_is_checked_once_per_outer_iteration(rows, cols):
    """x[i * j] is linear in j once i is fixed: one check before loop j, none per element."""

    @kd.kernel
    def products(x, y):
        for i, j in kd.grid(y.shape[0], y.shape[1]):
            y[i, j] = x[i * j]

    x = random_array(np.random.default_rng(rows * cols), ((rows - 1) * (cols - 1) + 1,), F)
    y = np.empty((rows, cols), F)
    assert "]?" not in lowered_text(products, x, y)
    placed = hoist_bounds_checks(products.ir(x, y).kernel)
    (outer,) = [s for s in placed.body if isinstance(s, Loop)]
    assert isinstance(outer.body[0], Check) and "i * j" in outer.body[0].what
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    check_kernel(products, [x, y], {1: x[i * j]})
    if rows > 1 and cols > 1:
        with pytest.raises(kd.BoundsError, match=r"i \* j of 'x'"):
            products(x[:-1], y)


def test_a_triangular_loop_is_checked_once_per_row():
    @kd.kernel
    def prefix(x, y):
        for i in kd.grid(y.shape[0]):
            acc = kd.local(0.0)
            for j in kd.range(i + 1):
                acc += x[j]
            y[i] = acc

    x = random_array(np.random.default_rng(7), (7,), F)
    assert "]?" not in lowered_text(prefix, x, np.empty(7, F))
    check_kernel(prefix, [x, np.empty(7, F)], {1: np.cumsum(x)})
    with pytest.raises(kd.BoundsError, match="subscript j of 'x'"):
        prefix(x[:3], np.empty(7, F))  # (it read past x before)


@pytest.mark.parametrize("n", [1, 4, 11])
def test_subscripts_nothing_proves_are_checked_where_they_run(n):
    """A square and a modulus of a non-unit stride: no range is known, so each access
    is checked as it runs, and a bad call raises instead of reading out of bounds."""

    @kd.kernel
    def squares(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[i * i] + x[(2 * i) % 7]

    x = random_array(np.random.default_rng(n), (max((n - 1) ** 2 + 1, 7),), F)
    assert "x[i * i]?" in lowered_text(squares, x, np.empty(n, F))
    i = np.arange(n)
    check_kernel(squares, [x, np.empty(n, F)], {1: x[i * i] + x[(2 * i) % 7]})
    with pytest.raises(kd.BoundsError, match="'x'"):
        squares(x, np.empty(n + 20, F))


def test_data_dependent_subscript_is_not_hoisted():
    @kd.kernel
    def gather(x, idx, y):
        i = kd.indices(idx.shape[0])
        y[i] = x[idx[i]]

    args = (np.ones(5, F), np.zeros(3, np.int64), np.ones(3, F))
    assert bounds_checks(gather, *args) == []
    x = np.arange(5, dtype=F)
    idx = np.array([4, 0, 2], np.int64)
    check_kernel(gather, [x, idx, np.empty(3, F)], {2: x[idx]})


def test_loop_with_an_extent_from_another_loop_is_not_hoisted_to_the_entry():
    @kd.kernel
    def triangle(x, y):
        for i in kd.grid(y.shape[0]):
            for j in kd.range(i):
                y[i] = y[i] + x[j + 1]

    assert bounds_checks(triangle, np.ones(5, F), np.ones(4, F)) == []
    with pytest.raises(kd.BoundsError, match=r"j \+ 1 of 'x'"):
        triangle(np.ones(3, F), np.ones(4, F))


# ----------------------------------------------------------------- the pass on its own


def hand_kernel(*body):
    x = Buffer("x", kd.f32, (DimOf("x", 0),), BufferRole.PARAM, Scope.GLOBAL)
    return Kernel("k", (Param("x", kd.f32, 1),), (x,), tuple(body))


def test_kernel_without_offset_subscripts_is_unchanged():
    k = hand_kernel(
        Loop("i", DimOf("x", 0), LoopKind.PARALLEL, (Store("x", (I,), c(0.0, kd.f32)),))
    )
    assert hoist_bounds_checks(k) == k


def test_constant_subscript_checked_against_the_dimension():
    k = hand_kernel(Store("x", (c(3),), c(0.0, kd.f32)))
    out = hoist_bounds_checks(k)
    (check,) = [s for s in walk_stmts(out.body) if isinstance(s, Check)]
    assert check.what == "subscript 3 of 'x' stays in [0, x.shape[0])"
    assert out.body[-1] == k.body[0]


def test_constant_loop_extent_and_negative_coefficient():
    body = (Store("x", (b(SUB, c(9), I),), c(0.0, kd.f32)),)
    k = hand_kernel(Loop("i", c(10), LoopKind.PARALLEL, body))
    (check,) = hoist_bounds_checks(k).body[:1]
    assert "9 - i" in check.what
    # lo = 9 + -1 * (10 - 1) = 0 and hi = 9: x needs 10 elements.

    assert evaluate(check.cond, {"x": (10,)}, {}) is True
    assert evaluate(check.cond, {"x": (9,)}, {}) is False


# ------------------------------------------------- compiled against the interpreter, random

SUBSCRIPTS = {  # x's subscript in loop j of row i; n is x.shape[0]
    "i + j": lambda i, j, n: i + j,
    "i * j": lambda i, j, n: i * j,
    "2*i - j + 1": lambda i, j, n: 2 * i - j + 1,
    "(i + j) % n": lambda i, j, n: (i + j) % n,
    "(3*j) % 5": lambda i, j, n: (3 * j) % 5,
    "i // 2 + j": lambda i, j, n: i // 2 + j,
    "min(i + j, n - 1)": lambda i, j, n: kd.minimum(i + j, n - 1),
    "j * j": lambda i, j, n: j * j,
    "i - j": lambda i, j, n: i - j,
}
EXTENTS = {  # loop j's extent in row i; m is y.shape[1]
    "m": lambda i, m: m,
    "i + 1": lambda i, m: i + 1,
    "min(4, m - i)": lambda i, m: kd.minimum(4, m - i),
}


def _row_sums(subscript, extent):
    @kd.kernel
    def row_sums(x, y):
        for i in kd.grid(y.shape[0]):
            acc = kd.local(0.0)
            for j in kd.range(extent(i, y.shape[1])):
                acc += x[subscript(i, j, x.shape[0])]
            y[i, 0] = acc

    return row_sums


ROW_SUMS = {(s, e): _row_sums(SUBSCRIPTS[s], EXTENTS[e]) for s in SUBSCRIPTS for e in EXTENTS}


GUARDS = {  # kd.when's condition for x[s], n = x.shape[0]; some let s stray
    "s < n": lambda s, n: s < n,
    "s <= n": lambda s, n: s <= n,
    "0 <= s < n": lambda s, n: (s >= 0) & (s < n),
    "not (s < 0 or s >= n)": lambda s, n: ~((s < 0) | (s >= n)),
    "s >= 0": lambda s, n: s >= 0,
    "s == n - 1": lambda s, n: s == n - 1,
    "s == n": lambda s, n: s == n,
}
GUARDED = ("i + j", "2*i - j + 1", "i - j")


@functools.cache
def _guarded_row_sums(which: str, guard: str, extent: str):
    subscript, when, size = SUBSCRIPTS[which], GUARDS[guard], EXTENTS[extent]

    @kd.kernel
    def guarded_sums(x, y):
        for i in kd.grid(y.shape[0]):
            acc = kd.local(0.0)
            for j in kd.range(size(i, y.shape[1])):
                s = subscript(i, j, x.shape[0])
                with kd.when(when(s, x.shape[0])):
                    acc += x[s]
            y[i, 0] = acc

    return guarded_sums


@given(
    st.sampled_from(GUARDED),
    st.sampled_from(sorted(GUARDS)),
    st.sampled_from(["m", "i + 1"]),
    st.integers(0, 30),
    st.integers(0, 9),
    st.integers(1, 9),
)
@settings(max_examples=120, deadline=None)
def test_guarded_reads_raise_exactly_where_the_interpreter_finds_them_out_of_bounds(
    which, guard, extent, n, rows, m
):
    """Guards that imply the bounds leave the reads unchecked; the others are checked
    where they run: either way the compiled kernel agrees with the interpreter."""
    _agree_with_interpreter(_guarded_row_sums(which, guard, extent), n, rows, m)


@given(
    st.sampled_from(sorted(ROW_SUMS)),
    st.integers(0, 40),
    st.integers(0, 9),
    st.integers(1, 9),
)
@settings(max_examples=150, deadline=None)
def test_compiled_raises_exactly_when_the_interpreter_reads_out_of_bounds(which, n, rows, m):
    """Every access is proved or checked: the compiled kernel raises where an access
    falls outside x (the interpreter checks each one) and agrees with it elsewhere."""
    _agree_with_interpreter(ROW_SUMS[which], n, rows, m)


def _agree_with_interpreter(kernel, n: int, rows: int, m: int) -> None:
    x = random_array(np.random.default_rng(n * 100 + rows * 10 + m), (n,), F)
    out, ref = np.zeros((rows, m), F), np.zeros((rows, m), F)
    try:
        kernel.interpret(x, ref)
    except (kd.BoundsError, kd.ShapeError):
        with pytest.raises((kd.BoundsError, kd.ShapeError)):
            kernel(x, out)
        return
    kernel(x, out)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("writes_lengths", [False, True])
def test_a_ragged_loop_over_lengths_read_from_data(writes_lengths):
    """Rows of different lengths, read from an array the kernel never writes: one check
    before each row's loop, none per element. If the kernel also writes the lengths,
    each element is checked."""

    @kd.kernel
    def ragged(x, lengths, y):
        for b in kd.grid(x.shape[0]):
            for j in kd.range(lengths[b]):
                y[b, j] = 2 * x[b, j]
            if writes_lengths:
                lengths[b] = lengths[b] + 0

    rng = np.random.default_rng(3)
    x, lengths = random_array(rng, (4, 9), F), np.array([9, 0, 3, 7])
    text = lowered_text(ragged, x, lengths, np.zeros((4, 9), F))
    assert ("x[b, j]?" in text) == writes_lengths
    want = np.where(np.arange(9) < lengths[:, None], 2 * x, 0)
    check_kernel(ragged, [x, lengths, np.zeros((4, 9), F)], {2: want})
    with pytest.raises(kd.BoundsError, match="'x'|'y'"):
        ragged(x, np.array([9, 0, 10, 7]), np.zeros((4, 9), F))


@kd.kernel
def from_a_stale_local(x, y):
    a = kd.local(-1, kd.i64)
    for i in kd.range(y.shape[0]):
        t = kd.local(a, kd.i64)  # one value, but made of a local that changes after
        a += 1
        for j in kd.range(y.shape[1]):
            y[i, j] = x[t + j]


@kd.kernel
def over_a_length_written_first(x, nn, y):
    for t in kd.range(1):
        nn[t] = nn[t] + 100
    for j in kd.range(nn[0]):  # (the trace's entry check saw nn[0] before the write)
        y[j] = x[j]


@kd.kernel
def over_a_stored_length(x, nn, y):
    for j in kd.range(nn[0]):
        y[j] = x[j]


@pytest.mark.parametrize(
    ("kernel", "args"),
    [
        (from_a_stale_local, (np.arange(1, 6, dtype=F), np.zeros((1, 3), F))),
        (from_a_stale_local, (np.arange(1, 6, dtype=F), np.zeros((3, 3), F))),
        (over_a_length_written_first, (np.arange(4, dtype=F), np.array([2]), np.zeros(200, F))),
        (over_a_stored_length, (np.arange(5, dtype=F), np.array([], np.int64), np.zeros(5, F))),
        (over_a_stored_length, (np.arange(5, dtype=F), np.array([3]), np.zeros(5, F))),
    ],
)
def test_values_that_change_or_are_missing_are_not_trusted(kernel, args):
    """Found by review: a check read a local's value after it changed, a loop over data
    the kernel wrote was taken for the length the entry saw, and the entry read nn[0]
    of an empty nn. Each now agrees with the interpreter."""
    _same_outcome(kernel, args)


def _same_outcome(kernel, args) -> None:
    """The interpreter (which checks every access) and the compiled kernel both raise,
    or both write the same arrays."""
    outcomes = []
    for run in (kernel.interpret, kernel):
        copies = [np.copy(a) if isinstance(a, np.ndarray) else a for a in args]
        try:
            run(*copies)
            arrays = [a.tolist() for a in copies if isinstance(a, np.ndarray)]
            outcomes.append(("ran", arrays))
        except (kd.BoundsError, kd.ShapeError) as err:
            outcomes.append((type(err).__name__, None))
    assert outcomes[0] == outcomes[1]


# ------------------------------------------------- a second review's cases (all were bugs)


@kd.kernel
def nested_ragged(cnt, lengths, y):
    for b in kd.grid(y.shape[0]):
        for _r in kd.range(cnt[b]):
            for j in kd.range(lengths[b + 1]):  # (read only where loop _r runs)
                y[b, j] = y[b, j] + 1.0


@kd.kernel
def wrapping_guard(x, y, s):
    for i in kd.grid(y.shape[0]):
        with kd.when((s >= 0) & (i + s < x.shape[0])):  # (i + s wraps past i64's end)
            y[i] = x[i + s]


@kd.kernel
def shared_with_a_branch(x, y):
    for i in kd.grid(y.shape[0]):
        v = x[i + 1]  # read by the where's branch and, unguarded, after it
        y[i] = kd.where(i + 1 < x.shape[0], v, 0.0) + v


@kd.kernel
def huge_scalars(x, y, s1, s2):
    for i in kd.grid(y.shape[0]):
        y[i] = x[i + s1 - s2]  # (s1 - s2 rounds to 0 in f64)


@pytest.mark.parametrize(
    ("kernel", "args"),
    [
        (nested_ragged, (np.array([1, 1, 1, 0]), np.array([2, 2, 2, 2]), np.zeros((4, 3), F))),
        (nested_ragged, (np.array([1, 1, 1, 1]), np.array([2, 2, 2, 2, 3]), np.zeros((4, 3), F))),
        (wrapping_guard, (np.arange(5, dtype=F), np.zeros(3, F), 2**63 - 1)),
        (wrapping_guard, (np.arange(5, dtype=F), np.zeros(3, F), 1)),
        (shared_with_a_branch, (np.arange(4, dtype=F), np.zeros(4, F))),
        (shared_with_a_branch, (np.arange(5, dtype=F), np.zeros(4, F))),
        (huge_scalars, (np.arange(4, dtype=F), np.zeros(4, F), 2**60 + 64, 2**60)),
        (huge_scalars, (np.arange(4, dtype=F), np.zeros(4, F), 7, 7)),
    ],
)
def test_a_second_reviews_cases_agree_with_the_interpreter(kernel, args):
    """A check that read lengths of a loop that doesn't run, a guard whose sum wraps, a
    load proven under a where's guard and read outside it too, scalars past 2**53."""
    _same_outcome(kernel, args)


def test_fusing_loops_keeps_their_checks_before_them():
    """A check placed before the second loop moves before the fused loop: nothing is
    written before it fails (it was moved after, and y was written past its end)."""

    @kd.kernel
    def two_rows(x, lengths, y, z):
        for b in kd.grid(x.shape[0]):
            for j in kd.grid(lengths[b]):
                y[b, j] = x[b, j] + 1.0
            for j in kd.grid(lengths[b]):
                z[b, j] = y[b, j] * 2.0

    two_rows.schedule(kd.cpu)(lambda s: s.fuse("j", "j.1"))
    x, lengths = random_array(np.random.default_rng(2), (3, 6), F), np.array([4, 2, 6])
    y, z = np.zeros((3, 6), F), np.zeros((3, 1), F)
    with pytest.raises(kd.BoundsError):
        two_rows(x, lengths, y, z)
    assert not y[:, 1:].any()  # (the checks run before the rows' loop)
    y, z = np.zeros((3, 6), F), np.zeros((3, 6), F)
    two_rows(x, lengths, y, z)
    keep = np.arange(6) < lengths[:, None]
    np.testing.assert_allclose(z, np.where(keep, 2 * (x + 1), 0), rtol=1e-6)


def test_inlining_keeps_the_consumers_check_and_needs_the_whole_temporary():
    @kd.kernel
    def squares(x, y):
        t = kd.alloc((x.shape[0],))
        for a in kd.grid(x.shape[0]):
            t[a] = x[a] * 2.0
        for i in kd.grid(y.shape[0]):
            y[i] = t[i * i]  # checked where it runs: so is x's read, inlined

    @kd.kernel
    def part(x, y):
        t = kd.alloc((x.shape[0],))
        for a in kd.grid(x.shape[0] - 1):
            t[a] = x[a + 1]
        for i in kd.grid(y.shape[0]):
            y[i] = t[i]

    for kernel in (squares, part):
        kernel.schedule(kd.cpu)(lambda s: s.inline("t"))
    x = np.arange(5, dtype=F)
    squares(x, y := np.zeros(3, F))
    np.testing.assert_array_equal(y, 2 * x[[0, 1, 4]])
    with pytest.raises(kd.BoundsError):
        squares(x, np.zeros(4, F))  # 3 · 3 is past x
    with pytest.raises(kd.ScheduleError, match="not its whole dimension"):
        part(x, np.zeros(5, F))
