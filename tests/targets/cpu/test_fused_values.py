"""Fused statements share what they compute (kdsl/targets/cpu/vector.py, forget_written)
until a statement writes what a value read; array arguments carry alias scopes
(kdsl/targets/cpu/aliasing.py), one per array but for arrays updated in place."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.targets.cpu.aliasing import scope_groups
from tests.helpers import random_array, sweep
from tests.schedule.test_default_probe_fuse import normalize3


@pytest.mark.parametrize("n", [0, 1, 17, 100_003])
def test_three_fused_statements_take_one_square_root(n: int) -> None:
    x = random_array(np.random.default_rng(n), (n, 3), np.float32)
    y = np.empty_like(x)
    normalize3(x, y)  # (its results: tests/schedule/test_default_probe_fuse.py)
    np.testing.assert_allclose(y, x / np.sqrt((x * x).sum(axis=1, keepdims=True)), rtol=2e-6)
    assert 'fuse("i", "i.1")' in str(normalize3.schedule_of(x, y))
    # Each vector body (the main one and its tails) computes the length once, where it
    # took one per statement before, and divides three times.
    code = normalize3.llvm(x, y)
    roots = re.findall(r"call <\d+ x float> @llvm\.sqrt", code)
    divisions = re.findall(r"fdiv <\d+ x float>", code)
    assert roots and len(divisions) == 3 * len(roots), (roots, divisions)


@kd.kernel
def before_and_after(x, y, z, w):
    """z reads y before the store to y, w after it: fused, w must see the new y."""
    i = kd.indices(x.shape[0])
    z[i] = kd.exp(x[i]) + y[i]
    y[i] = x[i] * 3.0
    w[i] = kd.exp(x[i]) + y[i]


@pytest.mark.parametrize("n", [1, 7, 16, 33, 4099])
def test_a_store_forgets_the_values_that_read_its_array(n: int) -> None:
    rng = np.random.default_rng(n)
    x, y = (random_array(rng, (n,), np.float32) for _ in range(2))
    z, w = np.empty_like(x), np.empty_like(x)
    y0 = y.copy()
    before_and_after(x, y, z, w)
    assert "fuse" in str(before_and_after.schedule_of(x, y, z, w))
    np.testing.assert_allclose(z, np.exp(x) + y0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y, x * np.float32(3.0), rtol=1e-6)
    np.testing.assert_allclose(w, np.exp(x) + x * np.float32(3.0), rtol=1e-6, atol=1e-6)


@kd.kernel
def scaled_in_place(x, y, w):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * w[0]


def test_arrays_updated_in_place_share_a_scope_and_the_call_is_right() -> None:
    rng = np.random.default_rng(5)
    x, w = random_array(rng, (1001,), np.float32), random_array(rng, (1,), np.float32)
    lowered = scaled_in_place.lowered(x, x.copy(), w).kernel
    assert ("y", "x") in lowered.in_place
    assert scope_groups(lowered) == {"x": "x", "y": "x", "w": "w"}
    want = x * w[0]
    scaled_in_place(x, x, w)  # y is x: one view, allowed
    np.testing.assert_array_equal(x, want)
    code = scaled_in_place.llvm(x, x, w)
    assert '!"kdsl.scaled_in_place.w"' in code and '!"kdsl.scaled_in_place.y"' not in code


@pytest.mark.parametrize("checks", [False, True])
@pytest.mark.parametrize("n", [1, 16, 37])
def test_values_under_a_condition_are_forgotten_after_a_store_they_read(
    checks: bool, n: int
) -> None:
    """The same `where` before and after a store to an array its chosen side reads: the
    values computed under the narrowed mask are shared, then forgotten."""

    def before_after_where(x, u, w, y, z):
        i = kd.indices(x.shape[0])
        y[i] = kd.where(x[i] > 0, x[i] * u[i] + w[0], 0.0)
        u[i] = x[i] * 2.0
        z[i] = kd.where(x[i] > 0, x[i] * u[i] + w[0], 1.0)

    kernel = kd.kernel(before_after_where, checks=checks)
    rng = np.random.default_rng(n)
    x, u, w = (random_array(rng, shape, np.float32) for shape in [(n,), (n,), (1,)])
    y, z = np.empty_like(x), np.empty_like(x)
    want_y = np.where(x > 0, x * u + w[0], 0)
    want_z = np.where(x > 0, x * (x * np.float32(2.0)) + w[0], 1)
    kernel(x, u, w, y, z)
    assert "fuse" in str(kernel.schedule_of(x, u, w, y, z))
    np.testing.assert_allclose(y, want_y, rtol=1e-6)
    np.testing.assert_allclose(z, want_z, rtol=1e-6)


def test_the_tasks_of_a_parallel_loop_tag_the_arrays_they_take_from_the_closure() -> None:
    x = random_array(np.random.default_rng(3), (50_000, 3), np.float32)
    code = normalize3.llvm(x, np.empty_like(x))
    tasks = re.split(r"\ndefine ", code)[1:]
    parallel = [t for t in tasks if re.match(r'[^(]*@"?kdsl_normalize3_\w+\.\w+"?\(', t)]
    assert parallel and all("!alias.scope" in t and "!noalias" in t for t in parallel)


# Random programs of element-wise statements over four arrays (`a` only read): the default
# fuses them into one loop whose statements share values, and every result must be what
# running the statements one after another gives.
_ARRAYS = "abcd"
_leaf = st.one_of(
    st.tuples(st.just("load"), st.sampled_from(_ARRAYS), st.integers(0, 2)),
    st.tuples(st.just("const"), st.sampled_from([0.5, -1.25, 2.0])),
)
_expr = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.tuples(st.sampled_from(["add", "sub", "mul", "max"]), inner, inner),
        st.tuples(st.just("where"), st.sampled_from(_ARRAYS), st.integers(0, 2), inner, inner),
    ),
    max_leaves=6,
)
_program = st.lists(
    st.tuples(st.sampled_from("bcd"), st.integers(0, 2), _expr), min_size=2, max_size=5
)


def _build(e, get, where, maximum):
    """`e` over the arrays' values at one element (`get(array, column)`): kdsl values
    (kd.where, kd.maximum) or NumPy arrays (np.where, np.maximum) alike."""
    match e:
        case ("load", name, column):
            return get(name, column)
        case ("const", v):
            return np.float32(v)
        case ("where", name, column, x, y):
            chosen = get(name, column) > 0
            return where(chosen, _build(x, get, where, maximum), _build(y, get, where, maximum))
        case (op, x, y):
            x, y = _build(x, get, where, maximum), _build(y, get, where, maximum)
            if op == "max":
                return maximum(x, y)
            return x + y if op == "add" else x - y if op == "sub" else x * y
    raise AssertionError(e)


@pytest.mark.slow
@settings(max_examples=sweep(30, 12), deadline=None)
@given(
    program=_program,
    n=st.sampled_from([1, 7, 16, 37]),
    columns=st.sampled_from([0, 3]),
    seed=st.integers(0, 2**16),
)
def test_random_fused_statements_match_running_them_in_order(program, n, columns, seed) -> None:
    """Over vectors (`columns` 0: a column is ignored) or rows of 3 read and written by
    constant columns (`x[i, 2]`: whole vectors and shuffles, strided.py)."""

    def statements(a, b, c, d):
        i = kd.indices(a.shape[0])
        arrays = dict(zip(_ARRAYS, (a, b, c, d)))

        def at(name, column):
            return (i, column) if columns else i

        for target, column, e in program:
            arrays[target][at(target, column)] = _build(
                e, lambda name, col: arrays[name][at(name, col)], kd.where, kd.maximum
            )

    kernel = kd.kernel(statements, name=f"random_statements_{columns}")
    rng = np.random.default_rng(seed)
    shape = (n, columns) if columns else (n,)
    given_arrays = [random_array(rng, shape, np.float32) for _ in _ARRAYS]
    want = dict(zip(_ARRAYS, (x.copy() for x in given_arrays)))

    def view(name, column):
        return want[name][:, column] if columns else want[name]

    for target, column, e in program:
        value = _build(e, view, np.where, np.maximum)
        view(target, column)[...] = np.broadcast_to(value, (n,)).astype(np.float32)
    kernel(*given_arrays)
    for name, got in zip(_ARRAYS, given_arrays):
        np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-6, err_msg=name)
