"""`s.reuse(a, b)`: a value that loop `b` computes again from the elements loop `a` read
(a one-statement softmax's exponentials) computed once, kept in `b`'s output between the
two loops — checked against NumPy and the interpreter on shapes with tails, refused
where the output can't keep it, replayed; and the default schedule's use of it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.ir.nodes import Binary, BinaryOp, Load, Store, Unary, UnaryOp
from kdsl.ir.visit import walk_expr, walk_stmts
from kdsl.schedule.recipe import Schedule
from tests.helpers import check_kernel, keyed_rng, random_array


def softmax(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    e = kd.exp(x[i, j] - kd.max(x[i, j], over=j))
    y[i, j] = e / kd.sum(e, over=j)


def weighted(x, w, y):
    """The shared value is part of what is stored, beside another array's."""
    i, j = kd.indices(x.shape[0], x.shape[1])
    e = kd.exp(x[i, j])
    y[i, j] = e * w[j] / kd.sum(e, over=j)


def accumulated(x, w, y):
    """The output is read where it is stored: it can't hold the shared value."""
    i, j = kd.indices(x.shape[0], x.shape[1])
    e = kd.exp(x[i, j])
    y[i, j] = y[i, j] + e / kd.sum(e, over=j) + w[j]


def positive_part(x, w, y):
    """The sum takes the value on one arm of a where only: not computed every time."""
    i, j = kd.indices(x.shape[0], x.shape[1])
    e = kd.exp(x[i, j])
    y[i, j] = e / kd.sum(kd.where(x[i, j] > 0, e, 0.0), over=j) + w[j]


def _reference(name: str, x: np.ndarray, w: np.ndarray, y: np.ndarray) -> np.ndarray:
    wide = x.astype(np.float64)
    e = np.exp(wide - wide.max(axis=1, keepdims=True)) if name == "softmax" else np.exp(wide)
    if name == "softmax":
        return e / e.sum(axis=1, keepdims=True)
    if name == "weighted":
        return e * w / e.sum(axis=1, keepdims=True)
    if name == "accumulated":
        return y + e / e.sum(axis=1, keepdims=True) + w
    with np.errstate(divide="ignore"):  # (a row of no positive value: inf, as the kernel's)
        return e / np.where(x > 0, e, 0).sum(axis=1, keepdims=True) + w


def two_nests(x, w, y):
    """Two nests over the rows: the second's body is a loop."""
    i, j = kd.indices(x.shape[0], x.shape[1])
    w[i] = kd.sum(kd.exp(x[i, j]), over=j)
    y[i, j] = kd.exp(x[i, j])


def data_subscript(x, z, y):
    """The output's row is read from an array the first loop writes: kept before that
    write, the value would land in another row than the second loop's."""
    j = kd.indices(x.shape[0])
    z[j] = kd.cast(kd.exp(x[j]), kd.i64)
    y[z[0], j] = kd.exp(x[j]) * 2.0


def transposed(x, y):
    """Stored transposed, the kept value would make the sum's loop a strided one."""
    i, j = kd.indices(x.shape[0], x.shape[1])
    e = kd.exp(x[i, j])
    y[j, i] = e / kd.sum(e, over=j)


def cheap(x, w, y):
    """A product is not worth a store and a load to compute once."""
    i, j = kd.indices(x.shape[0], x.shape[1])
    p = x[i, j] * w[j]
    y[i, j] = p / kd.sum(p, over=j)


KERNELS = {
    f.__name__: f
    for f in (softmax, weighted, accumulated, positive_part, two_nests, data_subscript)
}


def _stashes(kernel: kd.KernelFunction, *args: np.ndarray) -> list[Store]:
    """The scheduled kernel's stores to `y` that compute an exponential and then use it
    no further (the value kept for the next loop)."""
    lowered = kernel.lowered(*args).kernel
    return [
        s
        for s in walk_stmts(lowered.body)
        if isinstance(s, Store) and s.buffer == "y" and isinstance(s.value, Unary)
    ]


def _exps_read_back(kernel: kd.KernelFunction, *args: np.ndarray) -> int:
    """How many of the scheduled kernel's stores to `y` compute an exponential."""
    lowered = kernel.lowered(*args).kernel
    stores = [s for s in walk_stmts(lowered.body) if isinstance(s, Store) and s.buffer == "y"]
    exp = [s for s in stores if any(_is_exp(e) for e in walk_expr(s.value))]
    return len(exp) - len([s for s in exp if isinstance(s.value, Unary)])


def _is_division(e: object) -> bool:
    return isinstance(e, Binary) and e.op is BinaryOp.DIV


def _is_exp(e: object) -> bool:
    return isinstance(e, Unary) and e.op is UnaryOp.EXP


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["softmax", "weighted", "accumulated", "positive_part"]),
    rows=st.sampled_from([0, 1, 2, 5, 17]),
    cols=st.sampled_from([1, 2, 7, 16, 17, 33, 100]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_the_default_computes_the_same_values(
    name: str, rows: int, cols: int, dtype: object
) -> None:
    kernel = kd.kernel(KERNELS[name])
    rng = keyed_rng(name, rows, cols, dtype)
    x = random_array(rng, (rows, cols), dtype)
    w = random_array(rng, (cols,), dtype)
    y = random_array(rng, (rows, cols), dtype)
    args = [x, y] if name == "softmax" else [x, w, y]
    check_kernel(kernel, args, {len(args) - 1: _reference(name, x, w, y)}, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["softmax", "weighted"])
def test_the_default_takes_each_exponential_once(name: str) -> None:
    """The loop that stores the result reads the kept exponentials back: no store to
    `y` computes one and then divides it (each version of the loops: rows short and
    long)."""
    kernel = kd.kernel(KERNELS[name])
    x = np.ones((64, 100), np.float32)
    args = [x, x.copy()] if name == "softmax" else [x, x[0].copy(), x.copy()]
    assert _stashes(kernel, *args) and _exps_read_back(kernel, *args) == 0


@pytest.mark.parametrize("name", ["accumulated", "positive_part"])
def test_the_default_keeps_values_it_cannot_reuse(name: str) -> None:
    kernel = kd.kernel(KERNELS[name])
    x = np.ones((64, 100), np.float32)
    args = [x, x[0].copy(), x.copy()]
    assert not _stashes(kernel, *args) and _exps_read_back(kernel, *args) > 0


def test_an_output_of_another_dtype_is_not_used_to_keep_the_value() -> None:
    """An f16 output would round the f32 exponentials: refused (any other dtype is), and
    the results are the default's."""
    kernel = kd.kernel(softmax)
    x = random_array(keyed_rng("f16"), (9, 31), np.float32)
    y = np.empty((9, 31), np.float16)
    assert not _stashes(kernel, x, y)
    kernel(x, y)
    np.testing.assert_allclose(y, _reference("softmax", x, x[0], y), rtol=2e-3, atol=1e-4)

    @kernel.schedule(kd.cpu)
    def _(s):
        s.reuse("j.1", "j.2")

    with pytest.raises(kd.ScheduleError, match="it would be rounded"):
        kernel(x, y)


def _scheduled(fn, steps) -> kd.KernelFunction:
    kernel = kd.kernel(fn)
    kernel.schedule(kd.cpu)(steps)
    return kernel


@pytest.mark.parametrize(
    "name,loops,message",
    [
        ("softmax", ("j", "j.2"), "does not come right after loop 'j'"),
        ("softmax", ("j.2", "j.1"), "does not come right after loop 'j.2'"),
        ("two_nests", ("i", "i.1"), "the body of loop 'i.1' is not one store"),
        ("accumulated", ("j", "j.1"), "the loops read 'y'"),
        ("positive_part", ("j", "j.1"), "computes no part of what loop 'j.1' stores"),
        ("data_subscript", ("j", "j.1"), "read an array that loop 'j' writes"),
    ],
)
def test_refusals_say_why(name: str, loops: tuple[str, str], message: str) -> None:
    kernel = _scheduled(KERNELS[name], lambda s: s.reuse(*loops))
    x = np.ones((4, 5), np.float32)
    args = [x, x.copy()] if name == "softmax" else [x, x[:, 0].copy(), x.copy()]
    if name == "data_subscript":
        args = [x[0], np.zeros(5, np.int64), x.copy()]
    with pytest.raises(kd.ScheduleError, match=message):
        kernel(*args)


def test_by_hand_then_scheduled_replays_and_runs() -> None:
    """reuse, then the loops vectorized and the rows on threads: the schedule replays to
    the same IR and runs right."""

    def steps(s):
        s.reuse("j.1", "j.2")
        for loop in ("j", "j.1", "j.2"):
            s.vectorize(loop, 8)
        s.parallelize("i")

    kernel = _scheduled(softmax, steps)
    x = random_array(keyed_rng("replay"), (37, 45), np.float32)
    y = np.empty_like(x)
    s = kernel.schedule_of(x, y)
    assert 's.reuse("j.1", "j.2")' in str(s)
    assert Schedule.replay(s.to_json(), kernel.ir(x, y)).kernel == s.kernel
    kernel(x, y)
    np.testing.assert_allclose(y, _reference("softmax", x, x[0], y), rtol=1e-5, atol=1e-7)
    loads = [e for e in walk_expr(s.kernel.body[-1].body[-1].body[0].value) if isinstance(e, Load)]
    assert [e.buffer for e in loads] == ["y"]


def test_a_subscript_read_from_what_the_first_loop_writes_keeps_both_loops() -> None:
    """(A review found the value kept in row 0, read back from row 1.)"""
    kernel = kd.kernel(data_subscript)
    x = np.array([0, 0.5, 1, 1.5], np.float32)
    z, y = np.zeros(4, np.int64), random_array(keyed_rng("rows"), (3, 4), np.float32)
    want = y.copy()
    want[1] = np.exp(x) * 2
    check_kernel(kernel, [x, z, y], {2: want})
    assert not _stashes(kernel, x, z, y)


@pytest.mark.parametrize("name", ["transposed", "cheap"])
def test_the_default_reuses_only_what_pays(name: str) -> None:
    """Not into a transposed output (the sum's loop would no longer be vectorized: 3.5×
    slower), nor a product (a store and a load to save a multiply)."""
    fn = {"transposed": transposed, "cheap": cheap}[name]
    kernel = kd.kernel(fn)
    rng = keyed_rng(name)
    x = random_array(rng, (37, 45), np.float32)
    args = (
        [x, np.empty((45, 37), np.float32)] if name == "transposed" else [x, x[0].copy(), x.copy()]
    )
    lowered = kernel.lowered(*args).kernel
    kept = [s for s in walk_stmts(lowered.body) if isinstance(s, Store) and s.buffer == "y"]
    divides = [any(_is_division(e) for e in walk_expr(s.value)) for s in kept]
    assert kept and all(divides)  # (no store of the value alone)
    if name == "transposed":
        kernel(*args)
        e = np.exp(x.astype(np.float64))
        np.testing.assert_allclose(args[1], (e / e.sum(1, keepdims=True)).T, rtol=1e-5)


def test_a_value_that_shares_its_parts_is_matched_in_linear_time() -> None:
    """`e = e * 0.5 + e * 0.25` sixty times over: a tree of 2⁶⁰ nodes in 180, which the
    comparison walks once per node (a tree walk would not finish: comparing trees, the
    default took 40 s on sixteen of them)."""

    def deep(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        e = x[i, j]
        for _ in range(60):
            e = e * 0.5 + e * 0.25
        e = kd.exp(e)
        y[i, j] = e / kd.sum(e, over=j)

    kernel = kd.kernel(deep)
    x = random_array(keyed_rng("deep"), (5, 7), np.float32)
    y = np.empty_like(x)
    assert _stashes(kernel, x, y)
    kernel(x, y)
    e = np.exp(x.astype(np.float64) * 0.75**60)
    np.testing.assert_allclose(y, e / e.sum(1, keepdims=True), rtol=1e-5)


def test_values_that_differ_in_the_sign_of_a_zero_are_not_one_value() -> None:
    """0.0 == -0.0 in Python, but exp(1 / (x·0.0)) is inf and exp(1 / (x·-0.0)) is 0 for
    x > 0: taken for one value, the output would be inf / inf."""

    def signed_zero(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = kd.exp(1.0 / (x[i, j] * -0.0)) / kd.sum(kd.exp(1.0 / (x[i, j] * 0.0)), over=j)

    kernel = kd.kernel(signed_zero)
    x = np.abs(random_array(keyed_rng("zero"), (3, 17), np.float32)) + 0.5
    y = np.full_like(x, 7.0)
    assert not _stashes(kernel, x, y)
    check_kernel(kernel, [x, y], {1: np.zeros_like(x)})
