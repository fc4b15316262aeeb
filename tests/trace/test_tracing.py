"""Tracing: implicit loops and their names, reductions and where they go, explicit loops,
locals, temporaries, guards, returned arrays and Python as the macro language."""

from __future__ import annotations

import importlib.util
import textwrap
import threading

import numpy as np
import pytest

import kdsl as kd
from kdsl.ir.nodes import (
    Allocate,
    BufferRole,
    DeclareLocal,
    If,
    Loop,
    LoopKind,
    Scope,
    Store,
)
from kdsl.ir.visit import walk_stmts
from tests.helpers import check_kernel, random_array

F = np.float32
SIZES = [0, 1, 2, 7, 13]


def rng_for(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def traced(kernel, *args):
    return kernel.ir(*args).kernel


def loops(kernel_ir) -> list[tuple[str, LoopKind]]:
    return [(s.var, s.kind) for s in walk_stmts(kernel_ir.body) if isinstance(s, Loop)]


def loop_names(kernel_ir) -> list[str]:
    return [name for name, _ in loops(kernel_ir)]


def path_to(body, pred, outer=()):
    """The loop names around the first statement matching `pred` (None if none does)."""
    for s in body:
        if pred(s):
            return list(outer)
        inner = s.body if isinstance(s, Loop) else s.then if isinstance(s, If) else None
        if inner is not None:
            found = path_to(inner, pred, (*outer, s.var) if isinstance(s, Loop) else outer)
            if found is not None:
                return found
    return None


def declares(name):
    return lambda s: isinstance(s, DeclareLocal) and s.name == name


def stores_to(buffer):
    return lambda s: isinstance(s, Store) and s.buffer == buffer


# ------------------------------------------------------------------------- loop names


@kd.kernel
def matmul(A, B, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)


def test_implicit_loops_take_the_users_names_and_kinds():
    ir = traced(matmul, np.ones((2, 3), F), np.ones((3, 4), F), np.ones((2, 4), F))
    assert loops(ir) == [
        ("i", LoopKind.PARALLEL),
        ("j", LoopKind.PARALLEL),
        ("k", LoopKind.REDUCTION),
    ]


@pytest.mark.parametrize("m, n, k", [(0, 3, 2), (1, 1, 1), (7, 13, 5), (3, 2, 0)])
def test_matmul_matches_numpy(m, n, k):
    rng = rng_for(m, n, k)
    a, b = random_array(rng, (m, k), F), random_array(rng, (k, n), F)
    check_kernel(matmul, [a, b, np.empty((m, n), F)], {2: a @ b}, rtol=1e-5, atol=1e-5)


@kd.kernel
def two_statements(x, y, z):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i, j] = x[i, j] * 2
    z[i, j] = x[i, j] + 1


def test_later_nests_get_unique_suffixes():
    ir = traced(two_statements, *(np.ones((2, 3), F) for _ in range(3)))
    assert loop_names(ir) == ["i", "j", "i.1", "j.1"]
    assert path_to(ir.body, stores_to("z")) == ["i.1", "j.1"]


def test_names_argument_overrides_the_variable_names():
    @kd.kernel
    def k(x, y):
        p, q = kd.indices(x.shape[0], x.shape[1], names="row col")
        y[p, q] = x[p, q]

    assert loop_names(traced(k, np.ones((2, 3), F), np.ones((2, 3), F))) == ["row", "col"]


def test_names_may_be_comma_separated():
    @kd.kernel
    def k(x, y):
        p, q = kd.indices(x.shape[0], x.shape[1], names="a, b")
        y[p, q] = x[p, q]

    assert loop_names(traced(k, np.ones((2, 3), F), np.ones((2, 3), F))) == ["a", "b"]


def test_names_argument_with_the_wrong_count():
    @kd.kernel
    def k(x, y):
        p, q = kd.indices(x.shape[0], x.shape[1], names="a")
        y[p, q] = x[p, q]

    with pytest.raises(kd.TraceError, match="got 2 extent"):
        k.ir(np.ones((2, 3), F), np.ones((2, 3), F))


def test_indices_not_unpacked_get_positional_names():
    @kd.kernel
    def k(x, y):
        ij = kd.indices(x.shape[0], x.shape[1])
        y[ij] = x[ij]

    assert loop_names(traced(k, np.ones((2, 3), F), np.ones((2, 3), F))) == ["i0", "i1"]


def test_grid_and_range_names_and_kinds():
    @kd.kernel
    def k(x, y):
        for r, c in kd.grid(x.shape[0], x.shape[1]):
            for t in kd.range(3):
                y[r, c] = y[r, c] + x[r, c] * t

    ir = traced(k, np.ones((2, 3), F), np.ones((2, 3), F))
    assert loops(ir) == [
        ("r", LoopKind.PARALLEL),
        ("c", LoopKind.PARALLEL),
        ("t", LoopKind.SERIAL),
    ]


# ------------------------------------------------------------------ reduction placement


@kd.kernel
def row_normalize(x, y):
    i, j, k = kd.indices(x.shape[0], x.shape[1], x.shape[1])
    y[i, j] = x[i, j] / kd.sum(x[i, k], over=k)


def test_reduction_sits_inside_the_loops_it_depends_on_only():
    ir = traced(row_normalize, np.ones((2, 3), F), np.ones((2, 3), F))
    assert path_to(ir.body, declares("sum_k")) == ["i"]
    assert path_to(ir.body, lambda s: isinstance(s, Loop) and s.var == "k") == ["i"]
    assert path_to(ir.body, stores_to("y")) == ["i", "j"]
    assert loop_names(ir) == ["i", "k", "j"]  # once per row, not once per element


@pytest.mark.parametrize("m, n", [(0, 3), (1, 1), (7, 13), (13, 2)])
def test_row_normalize_matches_numpy(m, n):
    x = random_array(rng_for(m, n), (m, n), F) + 2  # keep the sums away from zero
    check_kernel(row_normalize, [x, np.empty_like(x)], {1: x / x.sum(axis=1, keepdims=True)})


@kd.kernel
def col_normalize(x, y):
    i, j, k = kd.indices(x.shape[0], x.shape[1], x.shape[0])
    y[i, j] = x[i, j] / kd.sum(x[k, j], over=k)


def test_loops_are_ordered_so_the_reduction_is_hoisted():
    ir = traced(col_normalize, np.ones((2, 3), F), np.ones((2, 3), F))
    assert path_to(ir.body, declares("sum_k")) == ["j"]
    assert path_to(ir.body, stores_to("y")) == ["j", "i"]


@pytest.mark.parametrize("m, n", [(0, 2), (1, 1), (7, 13)])
def test_col_normalize_matches_numpy(m, n):
    x = random_array(rng_for(m, n), (m, n), F) + 2
    check_kernel(col_normalize, [x, np.empty_like(x)], {1: x / x.sum(axis=0, keepdims=True)})


def test_three_dimensional_reduction_placement():
    @kd.kernel
    def k(x, y):
        i, j, m, r = kd.indices(x.shape[0], x.shape[1], x.shape[2], x.shape[1])
        y[i, j, m] = x[i, j, m] - kd.max(x[i, r, m], over=r)

    x = random_array(rng_for(3), (2, 3, 5), F)
    ir = traced(k, x, np.empty_like(x))
    assert path_to(ir.body, declares("max_r")) == ["i", "m"]
    assert path_to(ir.body, stores_to("y")) == ["i", "m", "j"]
    check_kernel(k, [x, np.empty_like(x)], {1: x - x.max(axis=1, keepdims=True)})


@kd.kernel
def center(x, y):
    i, k = kd.indices(x.shape[0], x.shape[0])
    y[i] = x[i] - kd.max(x[k], over=k)


def test_reduction_with_no_free_index_is_computed_once_before_the_loop():
    ir = traced(center, np.ones(3, F), np.ones(3, F))
    assert path_to(ir.body, declares("max_k")) == []
    assert loops(ir) == [("k", LoopKind.REDUCTION), ("i", LoopKind.PARALLEL)]


@pytest.mark.parametrize("n", [1, 2, 7, 13])
def test_center_matches_numpy(n):
    x = random_array(rng_for(n), (n,), F)
    check_kernel(center, [x, np.empty_like(x)], {1: x - x.max()})


@kd.kernel
def row_plus_col(x, y):
    i, j, k = kd.indices(x.shape[0], x.shape[1], x.shape[1])
    y[i, j] = kd.sum(x[i, k], over=k) + kd.sum(x[k, j], over=k)


def test_reduction_that_is_not_an_outer_prefix_is_materialized():
    ir = traced(row_plus_col, np.ones((3, 3), F), np.ones((3, 3), F))
    (temp,) = [b for b in ir.buffers if b.role is BufferRole.TEMP]
    assert temp.name == "sum" and len(temp.shape) == 1 and temp.scope is Scope.HEAP
    assert Allocate("sum") in ir.body  # at the top level, before both nests
    assert path_to(ir.body, stores_to("sum")) == ["j"]  # computed once per column
    assert path_to(ir.body, declares("sum_k.1")) == ["i"]  # and once per row
    assert path_to(ir.body, stores_to("y")) == ["i", "j.1"]


@pytest.mark.parametrize("n", [0, 1, 2, 7])
def test_materialized_reduction_matches_numpy(n):
    x = random_array(rng_for(n), (n, n), np.float64)
    want = x.sum(axis=1)[:, None] + x.sum(axis=0)[None, :]
    check_kernel(row_plus_col, [x, np.empty_like(x)], {1: want}, rtol=1e-12, atol=1e-12)


def test_reduction_used_twice_in_a_statement_is_computed_once():
    @kd.kernel
    def k(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        s = kd.sum(x[i, j], over=j)
        y[i] = s * s + s

    x = random_array(rng_for(5), (5, 3), np.float64)
    ir = traced(k, x, np.empty(5))
    assert [n for n, kind in loops(ir) if kind is LoopKind.REDUCTION] == ["j"]
    s = x.sum(axis=1)
    check_kernel(k, [x, np.empty(5)], {1: s * s + s}, rtol=1e-12)


@kd.kernel
def sum_of_row_max(x, y):
    i, j, k = kd.indices(x.shape[0], x.shape[1], x.shape[2])
    y[i] = kd.sum(kd.max(x[i, j, k], over=k), over=j)


def test_nested_reductions_nest_their_loops():
    ir = traced(sum_of_row_max, np.ones((2, 3, 4), F), np.ones(2, F))
    assert path_to(ir.body, declares("max_k")) == ["i", "j"]
    assert loops(ir) == [
        ("i", LoopKind.PARALLEL),
        ("j", LoopKind.REDUCTION),
        ("k", LoopKind.REDUCTION),
    ]


@pytest.mark.parametrize("shape", [(0, 3, 2), (1, 1, 1), (3, 2, 7), (5, 13, 2), (2, 0, 3)])
def test_nested_reductions_match_numpy(shape):
    x = random_array(rng_for(*shape), shape, F)
    check_kernel(sum_of_row_max, [x, np.empty(shape[0], F)], {1: x.max(axis=2).sum(axis=1)})


@kd.kernel
def sum_over_two(x, y):
    i, j, k = kd.indices(x.shape[0], x.shape[1], x.shape[2])
    y[i] = kd.sum(x[i, j, k], over=(j, k))


def test_reduction_over_a_tuple_of_indices():
    ir = traced(sum_over_two, np.ones((2, 3, 4), F), np.ones(2, F))
    assert path_to(ir.body, declares("sum_j_k")) == ["i"]
    assert loops(ir)[1:] == [("j", LoopKind.REDUCTION), ("k", LoopKind.REDUCTION)]


@pytest.mark.parametrize("shape", [(0, 2, 2), (1, 1, 1), (3, 7, 2), (2, 0, 5)])
def test_reduction_over_a_tuple_matches_numpy(shape):
    x = random_array(rng_for(*shape), shape, F)
    check_kernel(sum_over_two, [x, np.empty(shape[0], F)], {1: x.sum(axis=(1, 2))})


def test_sum_of_conditions_counts():
    @kd.kernel
    def k(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i] = kd.sum(x[i, j] > 0, over=j)

    x = random_array(rng_for(9), (7, 13), F)
    y = np.empty(7, np.int64)
    check_kernel(k, [x, y], {1: (x > 0).sum(axis=1)})


@kd.kernel
def softmax(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    m = kd.max(x[i, j], over=j)
    e = kd.exp(x[i, j] - m)
    s = kd.sum(e, over=j)
    y[i, j] = e / s


def test_reduction_in_a_reduction_it_does_not_vary_in_is_computed_first_and_once():
    """m is in s's body and in the statement: one max loop and one sum loop per row."""
    ir = traced(softmax, np.ones((2, 3), F), np.ones((2, 3), F))
    assert loops(ir) == [
        ("i", LoopKind.PARALLEL),
        ("j", LoopKind.REDUCTION),
        ("j.1", LoopKind.REDUCTION),
        ("j.2", LoopKind.PARALLEL),
    ]
    assert path_to(ir.body, declares("max_j")) == path_to(ir.body, declares("sum_j")) == ["i"]


@pytest.mark.parametrize("m, n", [(0, 3), (1, 1), (7, 13), (2, 100)])
def test_softmax_matches_numpy(m, n):
    x = random_array(rng_for(m, n), (m, n), F) * 20
    e = np.exp(x - x.max(axis=1, keepdims=True))
    check_kernel(softmax, [x, np.empty_like(x)], {1: e / e.sum(axis=1, keepdims=True)})


@kd.kernel
def minus_col_max_row_sum(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i] = kd.sum(x[i, j] - kd.max(x[i, j], over=i), over=j)


@pytest.mark.parametrize("m, n", [(1, 1), (7, 13), (2, 0)])
def test_reduction_in_a_reduction_over_its_loop_index_is_materialized(m, n):
    """The column max reduces over i, the row sum's loop: it goes to a temporary first."""
    x = random_array(rng_for(m, n), (m, n), F)
    ir = traced(minus_col_max_row_sum, x, np.empty(m, F))
    assert path_to(ir.body, stores_to("max")) == ["j"]
    assert path_to(ir.body, declares("sum_j")) == ["i.1"]
    want = (x - x.max(axis=0, initial=-np.inf)).sum(axis=1)
    check_kernel(minus_col_max_row_sum, [x, np.empty(m, F)], {1: want})


# --------------------------------------------------------------- reduction identities


@kd.kernel
def r_sum(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i] = kd.sum(x[i, j], over=j)


@kd.kernel
def r_prod(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i] = kd.prod(x[i, j], over=j)


@kd.kernel
def r_max(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i] = kd.max(x[i, j], over=j)


@kd.kernel
def r_min(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i] = kd.min(x[i, j], over=j)


def numpy_reduce(name, x):
    dt = x.dtype
    if name in ("max", "min"):
        info = np.finfo(dt) if dt.kind == "f" else np.iinfo(dt)
        lowest = -np.inf if dt.kind == "f" else info.min
        highest = np.inf if dt.kind == "f" else info.max
        init = lowest if name == "max" else highest
        return getattr(np, name)(x, axis=1, initial=init)
    return getattr(np, name)(x, axis=1, dtype=dt)


REDUCERS = {"sum": r_sum, "prod": r_prod, "max": r_max, "min": r_min}


@pytest.mark.parametrize("n", [0, 1, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int8, np.uint16])
@pytest.mark.parametrize("name", sorted(REDUCERS))
def test_reductions_match_numpy_including_empty_ones(name, dtype, n):
    x = random_array(rng_for(n, len(name)), (3, n), dtype)
    if name == "prod" and np.dtype(dtype).kind == "f":
        x = x + 1  # keep products of floats away from underflow
    y = np.zeros(3, dtype)
    check_kernel(REDUCERS[name], [x, y], {1: numpy_reduce(name, x)}, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "name, dtype, identity",
    [
        ("max", np.float32, -np.inf),
        ("min", np.float64, np.inf),
        ("max", np.int8, -128),
        ("min", np.uint16, 65535),
        ("prod", np.int32, 1),
        ("sum", np.float32, 0),
    ],
)
def test_empty_reduction_gives_the_identity(name, dtype, identity):
    y = np.full(2, 7, dtype)
    REDUCERS[name](np.empty((2, 0), dtype), y)
    assert y.tolist() == [identity, identity]


# ------------------------------------------------------------------------------ locals


def test_local_with_explicit_dtype():
    @kd.kernel
    def k(x, y):
        for i in kd.grid(x.shape[0]):
            acc = kd.local(0, dtype=kd.f64)
            for j in kd.range(x.shape[1]):
                acc += x[i, j]
            y[i] = acc

    x = random_array(rng_for(4), (7, 13), F)
    ir = traced(k, x, np.empty(7, np.float64))
    (decl,) = [s for s in walk_stmts(ir.body) if isinstance(s, DeclareLocal)]
    assert decl.name == "acc" and decl.dtype == kd.f64
    check_kernel(k, [x, np.empty(7)], {1: x.astype(np.float64).sum(axis=1)}, rtol=1e-12)


@pytest.mark.parametrize(
    "init, dtype, want",
    [
        (lambda x: 0, None, kd.i64),
        (lambda x: 0.0, None, kd.f32),
        (lambda x: x[0], None, kd.f32),  # x is f16: the local computes in f32
        (lambda x: 1, kd.u8, kd.u8),
    ],
)
def test_local_dtype_inference(init, dtype, want):
    @kd.kernel
    def k(x, y):
        acc = kd.local(init(x), dtype=dtype)
        y[0] = acc

    ir = traced(k, np.ones(2, np.float16), np.ones(1, np.float64))
    (decl,) = [s for s in ir.body if isinstance(s, DeclareLocal)]
    assert decl.dtype == want


def test_local_max_and_set():
    @kd.kernel
    def k(x, y):
        for i in kd.grid(x.shape[0]):
            m = kd.local(-kd.inf)
            for j in kd.range(x.shape[1]):
                m.set(kd.maximum(m, x[i, j]))
            y[i] = m

    x = random_array(rng_for(6), (5, 7), F)
    check_kernel(k, [x, np.empty(5, F)], {1: x.max(axis=1)})


def test_local_read_outside_its_loop_is_a_trace_error():
    @kd.kernel
    def k(x, y):
        for i in kd.grid(x.shape[0]):
            acc = kd.local(x[i])
        y[0] = acc

    with pytest.raises(kd.TraceError, match="local 'acc' is used after the loop"):
        k.ir(np.ones(3, F), np.ones(1, F))


def test_local_declared_inside_when_is_local_to_it():
    @kd.kernel
    def k(x, y):
        for i in kd.grid(x.shape[0]):
            with kd.when(x[i] > 0):
                acc = kd.local(x[i])
            y[i] = acc

    with pytest.raises(kd.TraceError, match="local 'acc' is used after the loop or kd.when"):
        k.ir(np.ones(3, F), np.ones(3, F))


# ------------------------------------------------------------------------------ guards


@kd.kernel
def even_rows(x, y):
    for i in kd.grid(x.shape[0]):
        with kd.when(i % 2 == 0):
            j = kd.indices(x.shape[1])
            y[i, j] = x[i, j] * 2


def test_when_on_a_bound_index_is_an_if_block():
    ir = traced(even_rows, np.ones((3, 2), F), np.ones((3, 2), F))
    (guard,) = [s for s in walk_stmts(ir.body) if isinstance(s, If)]
    assert path_to(ir.body, lambda s: isinstance(s, If)) == ["i"]
    assert isinstance(guard.then[0], Loop) and guard.then[0].var == "j"


@pytest.mark.parametrize("m, n", [(0, 3), (1, 1), (7, 13)])
def test_when_on_a_bound_index_matches_numpy(m, n):
    x = random_array(rng_for(m, n), (m, n), F)
    y = random_array(rng_for(n, m), (m, n), F)
    want = y.copy()
    want[::2] = 2 * x[::2]
    check_kernel(even_rows, [x, y], {1: want})


@kd.kernel
def keep_positive(x, y):
    i = kd.indices(x.shape[0])
    with kd.when(x[i] > 0):
        y[i] = x[i]


@pytest.mark.parametrize("n", [0, 1, 13])
def test_when_on_an_implicit_index_guards_each_element(n):
    x = random_array(rng_for(n), (n,), F)
    y = np.full(n, 9, F)
    check_kernel(keep_positive, [x, y], {1: np.where(x > 0, x, 9)})


@kd.kernel
def rows_where_the_sum_is_negative(x, y, z):
    i, j = kd.indices(x.shape[0], x.shape[1])
    with kd.when(kd.sum(x[i, j], over=j) < 0.0):
        y[i] = 1.0
    with kd.when(kd.argmax(x[i, j], over=j) > 2):
        y[i] = y[i] + kd.sum(x[i, j], over=j)
        z[i, j] = x[i, j] * 2


@pytest.mark.parametrize("rows, cols", [(0, 3), (1, 1), (9, 6), (13, 17)])
def test_when_on_a_reduction_under_implicit_indices(rows, cols):
    """A per-element condition holding a reduction is placed in each guarded statement's
    nest as the statement's own reductions are (it was "internal: unplaced reduction")."""
    x = random_array(rng_for(rows * cols), (rows, cols), F)
    y, z = np.full(rows, 9, F), np.full((rows, cols), 9, F)
    want_y = np.where(x.sum(1) < 0, 1, 9).astype(F)
    on = x.argmax(1) > 2 if cols else np.zeros(rows, bool)
    want_y = np.where(on, want_y + x.sum(1), want_y)
    want_z = np.where(on[:, None], x * 2, 9)
    check_kernel(rows_where_the_sum_is_negative, [x, y, z], {1: want_y, 2: want_z})


@kd.kernel
def sign_of_row_sums(z, y):
    i, j = kd.indices(z.shape[0], z.shape[1])
    y[i] = kd.where(kd.sum(z[i, j], over=j) < 0, -1, 1)


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.float32])
def test_where_of_python_ints_on_a_reduction_into_any_array(dtype):
    """kd.where(<reduction> < 0, -1, 1) stored into an integer array (a TypeError from
    the check of a weak integer's narrowing, which walked into the reduction)."""
    z = np.random.default_rng(3).integers(-9, 9, (11, 6)).astype(np.int32)
    y = np.zeros(11, dtype)
    check_kernel(sign_of_row_sums, [z, y], {1: np.where(z.sum(1) < 0, -1, 1).astype(dtype)})


def test_when_on_a_scalar_guards_the_whole_nest():
    @kd.kernel
    def k(x, y, s):
        i = kd.indices(x.shape[0])
        with kd.when(s > 0):
            y[i] = x[i]

    x = random_array(rng_for(1), (7,), F)
    ir = traced(k, x, np.empty_like(x), 1.0)
    assert isinstance(ir.body[-1], If) and isinstance(ir.body[-1].then[0], Loop)
    check_kernel(k, [x, np.zeros(7, F), 1.0], {1: x})
    check_kernel(k, [x, np.zeros(7, F), -1.0], {1: np.zeros(7, F)})


def test_when_needs_a_bool():
    @kd.kernel
    def k(x, y):
        for i in kd.grid(x.shape[0]):
            with kd.when(x[i]):
                y[i] = x[i]

    with pytest.raises(kd.TraceError, match="kd.when condition is f32"):
        k.ir(np.ones(2, F), np.ones(2, F))


# ----------------------------------------------------------------------- explicit loops


@kd.kernel
def running_sum(x, y):
    for t in kd.range(x.shape[0]):
        y[t] = kd.where(t > 0, y[t - 1], 0.0) + x[t]


@pytest.mark.parametrize("n", SIZES)
def test_serial_loop_may_read_the_previous_iteration(n):
    x = random_array(rng_for(n), (n,), np.float64)
    check_kernel(running_sum, [x, np.empty(n)], {1: np.cumsum(x)}, rtol=1e-12, atol=1e-12)


def test_the_same_read_under_grid_is_a_race():
    @kd.kernel
    def k(x, y):
        for t in kd.grid(x.shape[0]):
            y[t] = kd.where(t > 0, y[t - 1], 0.0) + x[t]

    with pytest.raises(kd.TraceError, match="race"):
        k.ir(np.ones(3, F), np.ones(3, F))


@kd.kernel
def grid2(x, y):
    for i, j in kd.grid(x.shape[0], x.shape[1]):
        y[i, j] = x[i, j] + i * 100 + j


@pytest.mark.parametrize("m, n", [(0, 2), (1, 1), (7, 13)])
def test_grid_with_two_extents(m, n):
    x = random_array(rng_for(m, n), (m, n), F)
    want = x + np.arange(m)[:, None] * 100 + np.arange(n)[None, :]
    assert loops(traced(grid2, x, np.empty_like(x))) == [
        ("i", LoopKind.PARALLEL),
        ("j", LoopKind.PARALLEL),
    ]
    check_kernel(grid2, [x, np.empty_like(x)], {1: want})


def test_grid_with_one_extent_yields_the_index():
    seen = []

    @kd.kernel
    def k(x):
        for i in kd.grid(x.shape[0]):
            seen.append(i)
            x[i] = 0

    k.ir(np.ones(2, F))
    assert isinstance(seen[0], kd.Index)


# ------------------------------------------------------------------------- temporaries


@kd.kernel
def private_rows(x, y):
    for i in kd.grid(x.shape[0]):
        t = kd.alloc((4,), kd.f32)
        j = kd.indices(4)
        t[j] = x[i, j] * 2
        t[0] = t[0] + t[3]  # one element, written by each iteration of i: its own copy
        y[i, j] = t[j]


@pytest.mark.parametrize("m", [0, 1, 7])
def test_alloc_inside_grid_is_private_per_iteration(m):
    x = random_array(rng_for(m), (m, 4), F)
    want = 2 * x
    want[:, 0] += 2 * x[:, 3]
    ir = traced(private_rows, x, np.empty_like(x))
    assert path_to(ir.body, lambda s: s == Allocate("t")) == ["i"]
    assert ir.buffer("t").scope is Scope.STACK
    check_kernel(private_rows, [x, np.empty_like(x)], {1: want})


@kd.kernel
def reversed_rows(x, y):
    for i in kd.grid(x.shape[0]):
        t = kd.alloc((x.shape[1],), kd.f64)
        j = kd.indices(x.shape[1])
        t[j] = x[i, j] * 2
        y[i, j] = t[x.shape[1] - 1 - j]


@pytest.mark.parametrize("m, n", [(0, 3), (1, 1), (7, 13), (2, 0)])
def test_alloc_of_dynamic_size_inside_grid(m, n):
    x = random_array(rng_for(m, n), (m, n), F)
    assert traced(reversed_rows, x, np.empty_like(x)).buffer("t").scope is Scope.HEAP
    check_kernel(reversed_rows, [x, np.empty_like(x)], {1: 2 * x[:, ::-1]})


def test_alloc_outside_grid_is_shared_and_races():
    @kd.kernel
    def k(x, y):
        t = kd.alloc((4,), kd.f32)
        for i in kd.grid(x.shape[0]):
            t[0] = x[i]
            y[i] = t[0]

    with pytest.raises(kd.TraceError, match="race"):
        k.ir(np.ones(3, F), np.ones(3, F))


def test_alloc_read_outside_its_loop_is_a_trace_error():
    @kd.kernel
    def k(x, y):
        for i in kd.grid(x.shape[0]):
            t = kd.alloc((3,), kd.f32)
            t[0] = x[i]
        y[0] = t[0]

    with pytest.raises(kd.TraceError, match="array 't' is used after the loop"):
        k(np.ones(3, F), np.ones(1, F))


def test_a_read_of_a_temp_kept_past_its_loop_is_a_trace_error():
    @kd.kernel
    def k(x, y):
        for i in kd.grid(x.shape[0]):
            t = kd.alloc((3,), kd.f32)
            t[0] = x[i]
            v = t[0]
        y[0] = v

    with pytest.raises(kd.TraceError, match="array 't' is used after the loop"):
        k.ir(np.ones(3, F), np.ones(1, F))


def test_zeros_temporary_starts_at_zero():
    @kd.kernel
    def k(x, y):
        z = kd.zeros((4,), kd.f32)
        i = kd.indices(x.shape[0])
        z[1] = x[0]
        y[i] = z[i % 4]

    x = np.arange(1, 6, dtype=F)
    check_kernel(k, [x, np.empty(5, F)], {1: np.array([0, 1, 0, 0, 0], F)})


@pytest.mark.parametrize("n", [0, 1, 7])
def test_zeros_returned(n):
    @kd.kernel
    def k(x):
        z = kd.zeros((x.shape[0], 2), kd.i32)
        i = kd.indices(x.shape[0])
        z[i, 1] = x[i].astype(kd.i32)
        return z

    x = np.arange(n, dtype=F) + 0.5
    want = np.stack([np.zeros(n), np.arange(n)], axis=1).astype(np.int32)
    check_kernel(k, [x], want)


def test_zeros_of_rank_zero_and_of_an_int_shape():
    @kd.kernel
    def k(x):
        return kd.zeros((), kd.f64), kd.zeros(x.shape[0], kd.bool_)

    for run in (k, k.interpret):
        s, v = run(np.ones(3, F))
        assert s.shape == () and s == 0 and s.dtype == np.float64
        assert v.shape == (3,) and not v.any() and v.dtype == np.bool_


# --------------------------------------------------------------------- returned arrays


@kd.kernel
def doubled(x):
    i, j = kd.indices(x.shape[0], x.shape[1])
    out = kd.empty(x.shape, x.dtype)
    out[i, j] = x[i, j] * 2
    return out


@pytest.mark.parametrize("m, n", [(0, 2), (1, 1), (7, 13)])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_empty_returned_becomes_a_new_array(m, n, dtype):
    x = random_array(rng_for(m, n), (m, n), dtype)
    ir = traced(doubled, x)
    assert ir.results == ("out",) and ir.buffer("out").role is BufferRole.RESULT
    assert Allocate("out") not in ir.body
    result = doubled(x)
    assert result.dtype == dtype and result.shape == (m, n)
    check_kernel(doubled, [x], (x * 2).astype(dtype))


@kd.kernel
def split_stats(x):
    i, j = kd.indices(x.shape[0], x.shape[1])
    total = kd.empty((x.shape[0],), kd.f64)
    biggest = kd.empty((x.shape[0],), x.dtype)
    total[i] = kd.sum(x[i, j], over=j)
    biggest[i] = kd.max(x[i, j], over=j)
    return total, biggest


@pytest.mark.parametrize("m, n", [(0, 3), (1, 1), (7, 13)])
def test_two_returned_arrays_come_back_as_a_tuple(m, n):
    x = random_array(rng_for(m, n), (m, n), F)
    for run in (split_stats, split_stats.interpret):
        total, biggest = run(x)
        assert total.dtype == np.float64 and biggest.dtype == np.float32
        np.testing.assert_allclose(total, x.sum(axis=1), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(biggest, x.max(axis=1, initial=-np.inf))


def test_returning_an_array_created_in_a_loop_is_an_error():
    @kd.kernel
    def k(x):
        for i in kd.grid(x.shape[0]):
            out = kd.empty((2,), kd.f32)
            out[0] = x[i]
        return out

    with pytest.raises(kd.TraceError, match="created inside a loop"):
        k.ir(np.ones(2, F))


# ------------------------------------------------------ Python as the macro language


@kd.kernel
def add_three_times(x, y):
    i = kd.indices(x.shape[0])
    for _ in range(3):
        y[i] = y[i] + x[i]


def test_python_loop_on_python_values_is_unrolled():
    ir = traced(add_three_times, np.ones(2, F), np.ones(2, F))
    assert loop_names(ir) == ["i", "i.1", "i.2"]
    assert len([s for s in walk_stmts(ir.body) if isinstance(s, Store)]) == 3


@pytest.mark.parametrize("n", SIZES)
def test_unrolled_python_loop_matches_numpy(n):
    x, y = random_array(rng_for(n), (n,), F), random_array(rng_for(n + 1), (n,), F)
    check_kernel(add_three_times, [x, y], {1: y + 3 * x})


def test_python_loop_builds_one_expression():
    @kd.kernel
    def horner(x, y):
        i = kd.indices(x.shape[0])
        v = x[i] * 0
        for c in (1.0, -2.0, 3.0):
            v = v * x[i] + c
        y[i] = v

    x = random_array(rng_for(2), (13,), F)
    ir = traced(horner, x, np.empty_like(x))
    assert loop_names(ir) == ["i"]
    check_kernel(horner, [x, np.empty_like(x)], {1: (x - 2) * x + 3})


def _helper_module(tmp_path):
    path = tmp_path / "kdsl_trace_helpers.py"
    path.write_text(
        textwrap.dedent(
            """
            import kdsl as kd

            def row_mean(x, i):
                j = kd.indices(x.shape[1])
                return kd.sum(x[i, j], over=j) / x.shape[1]
            """
        )
    )
    spec = importlib.util.spec_from_file_location("kdsl_trace_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_helper_function_from_another_module(tmp_path):
    helpers = _helper_module(tmp_path)

    @kd.kernel
    def centered(x, y):
        i, c = kd.indices(x.shape[0], x.shape[1])
        y[i, c] = x[i, c] - helpers.row_mean(x, i)

    x = random_array(rng_for(8), (7, 13), F)
    ir = traced(centered, x, np.empty_like(x))
    assert loops(ir) == [
        ("i", LoopKind.PARALLEL),
        ("j", LoopKind.REDUCTION),  # named in the helper's frame
        ("c", LoopKind.PARALLEL),
    ]
    check_kernel(centered, [x, np.empty_like(x)], {1: x - x.mean(axis=1, keepdims=True)})


# ------------------------------------------------------------------------- constexpr


def test_constexpr_controls_tracing():
    @kd.kernel
    def power(n: kd.constexpr, x, y):
        i = kd.indices(x.shape[0])
        v = x[i]
        for _ in range(n - 1):
            v = v * x[i]
        y[i] = v

    x = random_array(rng_for(3), (7,), F)
    for n in (1, 2, 5):
        check_kernel(power, [n, x, np.empty_like(x)], {2: x**n})
    assert power.stats()["compilations"] == 3


def test_constexpr_int_and_float_are_different_specializations():
    @kd.kernel
    def scale(c: kd.constexpr, x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * c

    x = np.array([3], np.int8)
    y = np.zeros(1, np.float64)
    scale(100, x, y)
    assert y[0] == 44  # i8 arithmetic wraps: 300 - 256
    scale(100.0, x, y)
    assert y[0] == 300  # a float constant makes it f64


def test_constexpr_zero_and_negative_zero_are_different_specializations():
    @kd.kernel
    def reciprocal(c: kd.constexpr, x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] / c

    x, y = np.ones(1), np.zeros(1)
    reciprocal(0.0, x, y)
    assert y[0] == np.inf
    reciprocal(-0.0, x, y)
    assert y[0] == -np.inf
    assert reciprocal.stats()["compilations"] == 2


def test_an_int_beyond_64_bits_is_an_error_on_a_cached_call_too():
    """The second call takes the fast path; ctypes would wrap 2**64 + 7 to 7 there."""

    @kd.kernel
    def add(n, x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] + n

    x, y = np.zeros(2, np.int64), np.zeros(2, np.int64)
    add(7, x, y)
    with pytest.raises(kd.KernelArgumentError, match="does not fit in 64 bits"):
        add(2**64 + 7, x, y)
    assert (y == 7).all()


def test_repeated_constexpr_calls_take_the_cached_path_per_value():
    """Calls repeat a kernel's constexpr values (a library's head size, a group): each
    value keeps its own specialization on the fast path, by type and exact value."""

    @kd.kernel
    def scale(c: kd.constexpr, x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * c

    x, y = np.array([3], np.int8), np.zeros(1, np.float64)
    for _ in range(3):
        for c, want in [(100, 44), (100.0, 300), (1, 3), (-0.0, -0.0), (0.0, 0.0)]:
            scale(c, x, y)
            assert y[0] == want and np.signbit(y[0]) == np.signbit(want)
    assert scale.stats()["compilations"] == 5
    assert len(scale._fast) == 5  # one cached entry per value, none per call


def test_string_and_none_constexprs_take_the_fast_path():
    """A constexpr that is a string or None (matmul's activation="gelu" or None) keeps its
    specialization on the fast path by value (they took the careful path: 60-80 µs more a
    call); a string or None where an array belongs is still refused."""

    @kd.kernel
    def act(x, y, kind: kd.constexpr = None):
        i = kd.indices(x.shape[0])
        y[i] = kd.maximum(x[i], 0.0) if kind == "relu" else x[i] * (2.0 if kind is None else 3.0)

    x, y = np.array([-1.0, 2.0]), np.zeros(2)
    for _ in range(2):
        for kind, want in [("relu", [0.0, 2.0]), (None, [-2.0, 4.0]), ("twice", [-3.0, 6.0])]:
            act(x, y, kind)
            np.testing.assert_array_equal(y, want)
    assert act.stats()["compilations"] == 3
    assert len(act._fast) == 3
    act._careful_call = None  # (a call that needs it now fails)
    act(x, y, "relu")
    act(x, y)
    np.testing.assert_array_equal(y, [-2.0, 4.0])
    del act._careful_call  # (the instance's None hid the method)
    for wrong in ("y", None):
        with pytest.raises(kd.KernelArgumentError, match="'y'"):
            act(x, wrong, "relu")


def test_calls_by_keyword_take_the_cached_path_too():
    """Naming the parameters cost ~10 µs a call (the careful path's binding); a call
    naming them in any order is the positional call, and a wrong name is still refused."""

    @kd.kernel
    def axpy(a, x, y):
        i = kd.indices(x.shape[0])
        y[i] = a * x[i] + y[i]

    x = random_array(rng_for(5), (5,), F)
    y = np.zeros(5, F)
    axpy(2.0, y=y, x=x)
    axpy(x=x, a=1.0, y=y)
    np.testing.assert_allclose(y, 3 * x, rtol=1e-6)
    assert len(axpy._fast) == 1 and axpy.stats()["compilations"] == 1
    with pytest.raises(kd.KernelArgumentError, match="unexpected argument.*'z'"):
        axpy(2.0, x=x, z=y)  # (it said "missing argument 'y'")
    with pytest.raises(kd.KernelArgumentError, match="'a' given twice"):
        axpy(2.0, x, y, a=1.0)


def test_a_constexpr_left_to_its_default_takes_the_fast_path():
    """A call that leaves a constexpr to its default is the call that passes it, on the
    fast path (it took the careful path: a Q8_0 product's call 43 µs against 19; and
    before that, the fast path's key read the omitted constexpr: IndexError)."""

    @kd.kernel
    def scale(x, y, c: kd.constexpr = 2):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * c

    x, y = np.array([3.0]), np.zeros(1)
    for _ in range(2):
        scale(x, y)
        assert y[0] == 6.0
        scale(x, y, 3)
        assert y[0] == 9.0
    assert scale.stats()["compilations"] == 2
    scale._careful_call = None  # (a call that needs it now fails)
    scale(x, y)
    assert y[0] == 6.0
    scale(x, y, c=3)
    assert y[0] == 9.0


def test_trailing_float_constexpr():
    """Regression: the direct call path once passed it on to the compiled function."""

    @kd.kernel
    def scale(x, y, c: kd.constexpr):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * c

    x = np.arange(3, dtype=F)
    check_kernel(scale, [x, np.empty_like(x), 0.5], {1: x * 0.5})


# ---------------------------------------------------------------------- einsum ties


def test_gather_ties_the_index_and_output_lengths():
    @kd.kernel
    def gather(x, idx, y):
        i = kd.indices(idx.shape[0])
        y[i] = x[idx[i]]

    with pytest.raises(kd.ShapeError, match="idx.shape"):
        gather(np.ones(4, F), np.zeros(3, np.int64), np.ones(5, F))


def test_plain_subscripts_tie_dimensions():
    @kd.kernel
    def copy(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i]

    for run in (copy, copy.interpret):
        with pytest.raises(kd.ShapeError, match=r"x.shape\[0\] == y.shape\[0\]"):
            run(np.ones(3, F), np.ones(4, F))


@pytest.mark.parametrize("rows", [0, 1, 7])
def test_an_explicit_loops_index_with_an_offset_is_a_position(rows):
    """`indptr[r + 1]` (in a loop's extent) makes r a position, as `x[i + 1]` does for
    an implicit loop: the CSR product's indptr, one longer than y, is accepted (its r
    was tied to y's length before: "y.shape[0] == indptr.shape[0]")."""

    @kd.kernel
    def spmv(indptr, indices, data, x, y):
        for r in kd.grid(y.shape[0]):
            acc = kd.local(0.0, kd.f32)
            for j in kd.range(indptr[r + 1] - indptr[r]):
                acc += data[indptr[r] + j] * x[indices[indptr[r] + j]]
            y[r] = acc

    rng = np.random.default_rng(rows)
    lengths = rng.integers(0, 4, rows)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = rng.integers(0, 5, indptr[-1]).astype(np.int64)
    data, x = rng.random(indptr[-1]).astype(F), rng.random(5).astype(F)
    want = np.array([data[a:b] @ x[indices[a:b]] for a, b in zip(indptr, indptr[1:])], F)
    for run in (spmv, spmv.interpret):
        y = np.full(rows, np.nan, F)
        run(indptr, indices, data, x, y)
        np.testing.assert_allclose(y, want.reshape(rows), rtol=1e-6)
    with pytest.raises(kd.ShapeError, match=r"y.shape\[0\] <= indptr.shape\[0\]"):
        spmv(indptr[:-2] if rows > 1 else indptr[:0], indices, data, x, np.ones(rows + 1, F))


def test_cache_hits_count_the_calls_that_compiled_nothing():
    """It was calls - compilations: -1 after k.asm(...) (a compilation with no call)."""

    @kd.kernel
    def double(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 2.0

    x = np.ones(5, F)
    double.asm(x, x.copy())
    assert double.stats()["cache_hits"] == 0
    double(x, x.copy())  # compiled by asm: a hit
    double(x.astype(np.float64), np.ones(5))  # a new signature: compiles
    double(x, x.copy())
    assert double.stats()["calls"] == 3 and double.stats()["cache_hits"] == 2


def test_a_call_that_raised_is_no_cache_hit():
    @kd.kernel
    def copy(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i]

    x = np.random.default_rng(3).random(7).astype(F)
    with pytest.raises(kd.ShapeError):
        copy(x, np.empty(5, F))  # compiles, then its shapes are checked: a compiling call
    with pytest.raises(kd.ShapeError):
        copy(x, np.empty(3, F))  # the fast path's check: no compile, and no hit
    with pytest.raises(kd.KernelArgumentError):
        copy(x, None)
    assert copy.stats()["cache_hits"] == 0 and copy.stats()["compilations"] == 1
    y = np.empty_like(x)
    copy(x, y)
    np.testing.assert_array_equal(y, x)
    assert copy.stats()["calls"] == 4 and copy.stats()["cache_hits"] == 1


def test_a_call_that_waited_for_another_threads_compile_is_a_cache_hit():
    @kd.kernel
    def triple(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 3.0

    second_calls = threading.Event()
    traced = triple.trace

    def trace_once_the_second_call_starts(specs):
        second_calls.wait(timeout=10)
        return traced(specs)  # (the second thread waits for this compile meanwhile)

    triple.trace = trace_once_the_second_call_starts
    x = np.random.default_rng(4).random(33).astype(F)
    outs = [np.empty_like(x) for _ in range(2)]
    first = threading.Thread(target=triple, args=(x, outs[0]))
    first.start()
    second_calls.set()
    triple(x, outs[1])
    first.join()
    for y in outs:
        np.testing.assert_array_equal(y, x * F(3.0))
    stats = triple.stats()
    assert stats["calls"] == 2 and stats["compilations"] == 1 and stats["cache_hits"] == 1


def test_loop_names_that_are_parameters_are_refused():
    """They were renamed x.1 and y.1, and a schedule naming "x" found no loop."""

    @kd.kernel
    def clash(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1], names="x y")
        y[i, j] = x[i, j] * 2.0

    a = np.ones((2, 3), F)
    with pytest.raises(kd.TraceError, match="the loop name 'x' is a parameter's name"):
        clash(a, a.copy())
