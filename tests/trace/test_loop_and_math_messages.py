"""Messages a usability probe found wrong or vague: a loop whose bounds read per-element
data, chained comparisons and `and`, round() and np.round (kd.round), subscripts printed
in kdsl's own names (t + t_start) or as j + -2. Each fix shown is code that runs."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from tests.helpers import check_kernel, keyed_rng, random_array
from tests.test_errors import line_of, raises

F = np.float32


# ------------------------------------------------- a loop's bounds read per-element data


@kd.kernel
def segment_sums(offs, vals, out):
    r = kd.indices(out.shape[0])
    for t in kd.range(offs[r], offs[r + 1]):  # bounds
        out[r] += vals[t]


@kd.kernel
def segment_sums_to(offs, vals, out):
    r = kd.indices(out.shape[0])
    for t in kd.range(offs[r + 1]):
        out[r] += vals[t]


@kd.kernel
def segment_sums_fixed(offs, vals, out):
    for r in kd.grid(out.shape[0]):
        for t in kd.range(offs[r], offs[r + 1]):
            out[r] += vals[t]


def _segments():
    offs = np.array([0, 2, 2, 7, 8], np.int64)
    return offs, random_array(keyed_rng("csr"), (8,), F), np.zeros(4, F)


@pytest.mark.parametrize("kernel", [segment_sums, segment_sums_to])
def test_a_range_over_per_row_bounds_says_to_loop_over_the_row(kernel):
    """It said 'kd.local initialised with a value that depends on an implicit loop
    index', of a kd.local the user never wrote."""
    offs, vals, out = _segments()
    err = raises(
        kd.TraceError,
        lambda: kernel(offs, vals, out),
        "implicit index r",
        "for r in kd.grid(out.shape[0]):",
    )
    assert "kd.local" not in str(err) and "%" not in str(err)
    assert err.loc.line == line_of(segment_sums, "bounds") or kernel is segment_sums_to
    check_kernel(
        segment_sums_fixed,
        [offs, vals, out],
        {2: np.add.reduceat(vals, offs[:-1]) * (np.diff(offs) > 0)},
    )


def test_a_grid_extent_read_per_element_says_the_same():
    @kd.kernel
    def k(counts, out):
        r = kd.indices(out.shape[0])
        for t in kd.grid(counts[r]):
            out[r, t] = 1.0

    raises(
        kd.TraceError,
        lambda: k(np.ones(3, np.int64), np.zeros((3, 2), F)),
        "kd.grid's extent (counts[r]) depends on the implicit index r",
        "for r in kd.grid(out.shape[0]):",
    )


# --------------------------------------------------- chained comparisons, and, or, not


@kd.kernel
def inside(x, y):
    i = kd.indices(x.shape[0])
    y[i] = kd.where(0.0 < x[i] < 1.0, x[i], 0.0)  # chained


@kd.kernel
def inside_fixed(x, y):
    i = kd.indices(x.shape[0])
    y[i] = kd.where((0.0 < x[i]) & (x[i] < 1.0), x[i], 0.0)


@kd.kernel
def both(x, y):
    i = kd.indices(x.shape[0])
    y[i] = kd.where(x[i] > 0.0 and x[i] < 1.0, x[i], 0.0)


@kd.kernel
def negated(x, y):
    i = kd.indices(x.shape[0])
    y[i] = kd.where(not x[i] > 0.0, x[i], 0.0)


@pytest.mark.parametrize(
    "kernel, what, fix",
    [
        (inside, "chained comparison 0.0 < x[i] < 1.0", "(0.0 < x[i]) & (x[i] < 1.0)"),
        (both, "`and` of symbolic conditions", "(x[i] > 0.0) & (x[i] < 1.0)"),
        (negated, "`not` of a symbolic condition", "~(x[i] > 0.0)"),
    ],
)
def test_python_logic_on_conditions_shows_the_same_with_bitwise_operators(kernel, what, fix):
    x = random_array(keyed_rng("logic"), (9,), F) * 2
    err = raises(kd.TraceError, lambda: kernel(x, np.zeros(9, F)), what, fix)
    assert "Python `if`, `while`" not in str(err)
    if kernel is inside:
        assert err.loc.line == line_of(inside, "chained")
        want = np.where((x > 0) & (x < 1), x, 0)
        check_kernel(inside_fixed, [x, np.zeros(9, F)], {1: want})


def test_a_chained_comparison_in_an_if_says_kd_when_too():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        if 0.0 < x[i] < 1.0:
            y[i] = x[i]

    raises(
        kd.TraceError,
        lambda: k(np.ones(3, F), np.ones(3, F)),
        "(0.0 < x[i]) & (x[i] < 1.0)",
        "`with kd.when(...):` in place of the Python branch",
    )


# ------------------------------------------------------------------------- kd.round


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kd_round_takes_halves_to_even_as_numpy(dtype):
    @kd.kernel
    def rounded(x, y):
        i = kd.indices(x.shape[0])
        y[i] = kd.round(x[i])

    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, 3.7, -0.0, 1e30, np.inf, np.nan], dtype)
    x = np.concatenate([x, np.linspace(-40, 40, 161, dtype=dtype)])  # (vector code too)
    for run in (rounded, rounded.interpret):
        y = np.full_like(x, 7.0)
        run(x, y)
        np.testing.assert_array_equal(y, np.round(x))
        np.testing.assert_array_equal(np.signbit(y), np.signbit(np.round(x)))


@kd.kernel
def python_round(x, y):
    i = kd.indices(x.shape[0])
    y[i] = round(x[i])  # round


@kd.kernel
def numpy_round(x, y):
    i = kd.indices(x.shape[0])
    y[i] = np.round(x[i] * 2.0)


@kd.kernel
def numpy_rint(x, y):
    i = kd.indices(x.shape[0])
    y[i] = np.rint(x[i])


@kd.kernel
def round_digits(x, y):
    i = kd.indices(x.shape[0])
    y[i] = round(x[i], 2)


@pytest.mark.parametrize(
    "kernel, what, fix",
    [
        (python_round, "round() of a symbolic value", "kd.round(x[i]): halves to even"),
        (numpy_round, "np.round() of a symbolic value", "kd.round(x[i] * 2.0)"),
        (numpy_rint, "np.rint on a symbolic value", "kd.round"),
        (round_digits, "round() of a symbolic value", "kd.round(x[i] * 1e2) / 1e2"),
    ],
)
def test_rounding_points_to_kd_round(kernel, what, fix):
    """round() suggested kd.floor(x + 0.5), which takes halves up (2.5 → 3, where
    Python and NumPy give 2)."""
    err = raises(kd.TraceError, lambda: kernel(np.ones(3, F), np.ones(3, F)), what, fix)
    assert "kd.floor(x + 0.5)" not in str(err)
    if kernel is python_round:
        assert err.loc.line == line_of(python_round, "round")


# ---------------------------------------------------- subscripts in the user's names


@kd.kernel
def windows(data, out):
    for i in kd.grid(out.shape[0]):
        acc = kd.local(0.0)
        for t in kd.range(i, i + 4):
            acc += data[t]  # window
        out[i] = acc


@kd.kernel
def from_two_back(x, y):
    for j in kd.range(2, y.shape[0]):
        y[j] = x[j - 2]


def test_an_out_of_bounds_subscript_is_named_as_written():
    """A kd.range(start, stop) loop's t is t + t_start in the IR (it counts from 0): the
    message said 'subscript t + t_start of 'data''; and j + 2 - 2 for j - 2."""
    err = raises(
        kd.KdslError,
        lambda: windows(np.ones(5, F), np.zeros(4, F)),
        "subscript t of 'data'",
        "keep t inside [0, data.shape[0])",
    )
    assert "t_start" not in str(err)
    assert err.loc.line == line_of(windows, "window")
    err = raises(
        kd.ShapeError,
        lambda: from_two_back(np.ones(3, F), np.ones(8, F)),
        "subscript j - 2 of 'x'",
    )
    assert "j + 2 - 2" not in str(err)


def test_negative_offsets_print_as_subtraction():
    @kd.kernel
    def taps(x, y):
        j = kd.indices(y.shape[0])
        acc = 0.0
        for offset in (-2, 0, 1):
            acc = acc + x[j + 2 + offset]
        y[j] = acc

    text = str(taps.ir(np.ones(9, F), np.ones(6, F)))
    assert "x[j + 2 - 2]" in text and "+ -" not in text


# ------------------------------------------- a reduction inside the mistaken expression
# (a probe found each a raw TypeError naming an internal node: the messages' walks and
# printer knew no unplaced reduction)


@kd.kernel
def if_on_a_sum(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    if kd.sum(x[i, j], over=j) > 0:  # if
        y[i] = 1.0


@kd.kernel
def sum_times_ints(x, n, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i] = kd.sum(x[i, j], over=j) * n[i]  # mix


@kd.kernel
def float_of_a_sum(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i] = float(kd.sum(x[i, j], over=j))  # float


@kd.kernel
def chained_on_a_sum(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i] = kd.where(0.0 < kd.sum(x[i, j], over=j) < 1.0, 1.0, 0.0)  # chain


@pytest.mark.parametrize(
    "kernel, marker, needles",
    [
        (if_on_a_sum, "if", ["Python `if`", "kd.where"]),
        (sum_times_ints, "mix", ["mixing f32 and i32", "n[i].astype(kd.f32)"]),
        (float_of_a_sum, "float", ["float() of a symbolic value", ".astype(kd.f32)"]),
        (chained_on_a_sum, "chain", ["chained comparison", "&"]),
    ],
    ids=["if", "mix", "float", "chain"],
)
def test_mistakes_around_a_reduction_get_the_users_message(kernel, marker, needles):
    x = random_array(keyed_rng("reduction mistakes"), (4, 6), F)
    args = [x, np.arange(4, dtype=np.int32), np.zeros(4, F)]
    if kernel is not sum_times_ints:
        del args[1]
    err = raises(kd.TraceError, lambda: kernel(*args), *needles)
    assert err.loc is not None and err.loc.line == line_of(kernel, marker)


def test_a_reduction_prints_as_the_call_that_made_it(capsys):
    """print() of a traced value holding a reduction (a TypeError before), and the
    message of a loop bound that holds one."""

    @kd.kernel
    def shown(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        print(kd.sum(x[i, j], over=j) * 2)
        y[i] = kd.max(x[i, j], over=j)

    @kd.kernel
    def bound_by_a_sum(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        for _ in kd.range(kd.sum(x[i, j], over=j).astype(kd.i64)):  # bound
            y[i] += 1.0

    x = random_array(keyed_rng("printed reduction"), (4, 6), F)
    y = np.zeros(4, F)
    shown(x, y)
    assert "kd.sum(x[i, j], over=j) * 2" in capsys.readouterr().out
    np.testing.assert_array_equal(y, x.max(1))
    err = raises(kd.TraceError, lambda: bound_by_a_sum(x, y), "kd.sum(x[i, j], over=j)")
    assert err.loc is not None and err.loc.line == line_of(bound_by_a_sum, "bound")
