"""Python that tracing can't follow, found by a probe of the front end: each ran and gave
a wrong result without a word (a loop left by break, a loop variable read after its
loop, a kd.when without `with`, an augmented assignment Python had to fall back on, a
value kept from another kernel's trace). Each is now a TraceError at the user's line,
or, for the augmented assignments, the right result."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from tests.helpers import keyed_rng, random_array
from tests.test_errors import line_of, raises

F = np.float32


def operands(n: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = keyed_rng("unfollowed", n)
    return random_array(rng, (n,), F), random_array(rng, (n,), F)


@kd.kernel
def broken_range(x, y):
    for t in kd.range(x.shape[0]):  # loop
        y[t] = x[t]
        break


@kd.kernel
def returned_from_grid(x, y):
    for t in kd.grid(x.shape[0]):  # loop
        y[t] = x[t]
        return


@pytest.mark.parametrize(("kernel", "api"), [(broken_range, "range"), (returned_from_grid, "grid")])
def test_a_loop_left_by_break_or_return_is_refused(kernel, api):
    """Python runs one iteration; the trace had run the body for all of them."""
    err = raises(kd.TraceError, lambda: kernel(*operands()), f"the kd.{api} loop over t was left")
    assert err.loc.line == line_of(kernel.fn, "loop")


def test_an_error_in_a_loop_body_is_the_one_raised():
    @kd.kernel
    def fails(x, y):
        for t in kd.range(x.shape[0]):
            y[t] = x[t].nonexistent  # (AttributeError or a kdsl error, not "left")

    with pytest.raises(Exception) as info:
        fails(*operands())
    assert "was left before its end" not in str(info.value)


@kd.kernel
def last_marker(x, y):
    for t in kd.range(x.shape[0]):
        y[t] = x[t]
    y[t] = -1.0  # after


def test_a_loop_variable_used_after_its_loop_is_refused():
    """Python leaves the last index in t; the statement had looped over every t."""
    err = raises(
        kd.TraceError,
        lambda: last_marker(*operands()),
        "loop variable 't' is used after its loop",
        "n - 1",
    )
    assert err.loc.line == line_of(last_marker.fn, "after")


def test_an_index_of_kd_indices_still_serves_every_statement():
    @kd.kernel
    def twice(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i]
        y[i] = y[i] * 2.0

    x, y = operands()
    twice(x, y)
    np.testing.assert_allclose(y, 2 * x)


@kd.kernel
def unguarded(x, y):
    i = kd.indices(x.shape[0])
    kd.when(x[i] > 0)  # when
    y[i] = x[i]


def test_kd_when_without_with_is_refused():
    err = raises(kd.TraceError, lambda: unguarded(*operands()), "not used in a `with` statement")
    assert err.loc.line == line_of(unguarded.fn, "when")


@pytest.mark.parametrize(
    ("op", "rhs"),
    [("+", "x[t]"), ("//", "2"), ("%", "(x[t] + 5)"), ("**", "2"), ("&", "(x[t] + 60)")]
    + [("|", "x[t] * 8"), ("^", "x[t]"), ("<<", "1"), (">>", "1"), ("-", "x[t]")],
)
def test_every_augmented_assignment_updates_a_local(op, rhs):
    """`acc //= 2` was `acc = acc // 2` in Python's fallback: the name rebound to a value,
    and the loop's updates lost (or a race reported on a loop the user never wrote)."""
    namespace = {"kd": kd}
    exec(
        f"def k(x, y):\n"
        f"    acc = kd.local(1011, dtype=kd.i32)\n"
        f"    for t in kd.range(x.shape[0]):\n"
        f"        acc {op}= {rhs}\n"
        f"    y[()] = acc\n",
        namespace,
    )
    kernel = kd.kernel(namespace["k"], name="augmented")
    x = keyed_rng("augmented", op).integers(0, 9, 5).astype(np.int32)
    want = np.int32(1011)
    with np.errstate(all="ignore"):
        for t in range(x.size):
            want = np.int32(
                eval(f"want {op} np.int32({rhs})", {"want": want, "np": np, "x": x, "t": t})
            )
    y = np.zeros((), np.int32)
    kernel(x, y)
    assert y == want


def test_a_value_kept_from_another_kernels_trace_is_refused():
    kept = []

    @kd.kernel
    def keeps(x, y):
        i = kd.indices(x.shape[0])
        kept.append(x[i] * 3.0)
        y[i] = x[i]

    @kd.kernel
    def uses(x, y):
        j = kd.indices(x.shape[0])
        y[j] = kept[0] + x[j]  # kept

    keeps(*operands())
    err = raises(kd.TraceError, lambda: uses(*operands()), "made while tracing another kernel")
    assert err.loc.line == line_of(uses.fn, "kept")


def test_one_kd_when_serves_two_with_statements():
    """Its guard was a generator context manager: the second `with` raised AttributeError."""

    @kd.kernel
    def guarded_twice(x, y):
        i = kd.indices(x.shape[0])
        positive = kd.when(x[i] > 0)
        with positive:
            y[i] = x[i]
        with positive:
            y[i] = y[i] * 2.0

    x, _ = operands()
    y = np.zeros_like(x)
    guarded_twice(x, y)
    np.testing.assert_allclose(y, np.where(x > 0, 2 * x, 0))
