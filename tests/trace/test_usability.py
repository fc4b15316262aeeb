"""What a usability probe found: values read from locals keep their value, integer sums
widen as in NumPy, kd.range(start, stop, step), and errors that name the kd.* fix."""

from __future__ import annotations

import math

import numpy as np
import pytest

import kdsl as kd
from kdsl.ir.nodes import DeclareLocal, Loop, LoopKind
from kdsl.ir.visit import walk_stmts
from tests.helpers import check_kernel, keyed_rng, random_array
from tests.test_errors import line_of, raises

F = np.float32
SIZES = [0, 1, 2, 7, 13]


def traced(kernel, *args):
    return kernel.ir(*args).kernel


def declared(kernel_ir) -> list[str]:
    return [s.name for s in walk_stmts(kernel_ir.body) if isinstance(s, DeclareLocal)]


# ---------------------------------------------------- values read from a local keep them


@kd.kernel
def snapshot_set(x, y):
    a = kd.local(1.0, dtype=kd.f32)
    b = a * 10.0
    a.set(x[0])
    y[0] = b
    y[1] = a


@kd.kernel
def snapshot_iadd(x, y):
    a = kd.local(1.0, dtype=kd.f32)
    b = a * 10.0
    a += x[0]
    y[0] = b
    y[1] = a


@pytest.mark.parametrize("kernel", [snapshot_set, snapshot_iadd])
def test_a_value_built_from_a_local_keeps_the_value_it_read(kernel):
    x = random_array(keyed_rng(kernel.name), (3,), F)
    a = x[0] if kernel is snapshot_set else 1.0 + x[0]
    check_kernel(kernel, [x, np.zeros(2, F)], {1: np.array([10.0, a], F)})
    assert declared(traced(kernel, x, np.zeros(2, F))) == ["a", "a_old"]


@kd.kernel
def condition_before_when(x, y, t):
    v1 = kd.local(0.0, dtype=kd.f32)
    i = kd.indices(x.shape[0])
    c1 = x[i] > v1
    with kd.when(t > 0.0):
        v1.set(t)
    with kd.when(t > -1.0):
        y[i] = kd.where(c1, 1.0, 0.0) + v1


@pytest.mark.parametrize("n", SIZES)
def test_a_condition_built_before_a_when_block_that_sets_the_local(n):
    x = random_array(keyed_rng("when", n), (n,), F)
    want = (x > 0).astype(F) + F(0.5)
    check_kernel(condition_before_when, [x, np.zeros(n, F), 0.5], {1: want})


@kd.kernel
def carried_into_a_loop(x, y):
    a = kd.local(1.0, dtype=kd.f32)
    n = kd.local(3, dtype=kd.i64)
    b = a * 10.0
    for t in kd.range(kd.minimum(n, x.shape[0])):  # evaluated once, as Python's range
        y[t] = b + x[t]  # the same b in every iteration
        a += 1.0
        n.set(1)


@pytest.mark.parametrize("n", SIZES)
def test_a_value_from_before_a_loop_that_assigns_the_local(n):
    x = random_array(keyed_rng("loop", n), (n,), F)
    want = np.zeros(n, F)
    want[:3] = x[:3] + 10.0
    check_kernel(carried_into_a_loop, [x, np.zeros(n, F)], {1: want})
    ir = traced(carried_into_a_loop, x, np.zeros(n, F))
    assert declared(ir) == ["a", "n", "a_old", "n_old"]  # both before the loop


@kd.kernel
def accumulate(x, y):
    s = kd.local(0.0, dtype=kd.f32)
    for t in kd.range(x.shape[0]):
        s += x[t]
        s.set(s * 0.5 + x[t])
    y[0] = s


@kd.kernel
def per_iteration(x, y):
    a = kd.local(1.0, dtype=kd.f32)
    for t in kd.range(x.shape[0]):
        b = a * 2.0
        a.set(b + x[t])
        y[t] = b


@pytest.mark.parametrize("n", SIZES)
def test_accumulators_take_no_snapshot_and_values_in_a_loop_are_per_iteration(n):
    x = random_array(keyed_rng("acc", n), (n,), F)
    s, a, want = 0.0, 1.0, np.zeros(n, F)
    for t in range(n):
        s = (s + x[t]) * 0.5 + x[t]
        want[t], a = 2 * a, 2 * a + x[t]
    check_kernel(accumulate, [x, np.zeros(1, F)], {1: np.array([s], F)}, rtol=1e-5)
    check_kernel(per_iteration, [x, np.zeros(n, F)], {1: want}, rtol=1e-5)
    assert declared(traced(accumulate, x, np.zeros(1, F))) == ["s"]
    ir = traced(per_iteration, x, np.zeros(n, F))
    (loop,) = [s for s in ir.body if isinstance(s, Loop)]
    assert isinstance(loop.body[0], DeclareLocal) and loop.body[0].name == "a_old"


def test_a_value_used_after_the_block_where_its_local_changed():
    @kd.kernel
    def k(x, y):
        a = kd.local(1.0, dtype=kd.f32)
        with kd.when(x[0] > 0.0):
            b = a * 10.0  # read
            a.set(5.0)
        y[0] = b  # here

    err = raises(
        kd.TraceError,
        lambda: k(np.ones(2, F), np.zeros(2, F)),
        f"read from local 'a' at line {line_of(k, 'read')} is used after 'a' changed",
        "b = kd.local(0.0)",
    )
    assert err.loc.line == line_of(k, "here")


# --------------------------------------------------------- integer reductions widen


@kd.kernel
def sum_rows(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i] = kd.sum(x[i, j], over=j)


@kd.kernel
def prod_rows(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i] = kd.prod(x[i, j], over=j)


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.int16, np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(1000, 100), (3, 0), (1, 1), (4, 7)])
def test_small_integer_sums_accumulate_in_64_bits_as_numpy(dtype, shape):
    x = random_array(keyed_rng(dtype, shape), shape, dtype)
    if shape == (1000, 100) and dtype is not np.bool_:
        x[:] = np.iinfo(dtype).max  # any 8- or 16-bit sum of these wraps
    want = x.sum(axis=1)
    assert want.dtype == (np.uint64 if np.dtype(dtype).kind == "u" else np.int64)
    out = np.zeros(shape[0], want.dtype)
    check_kernel(sum_rows, [x, out], {1: want}, rtol=0, atol=0)
    (acc,) = [s for s in walk_stmts(traced(sum_rows, x, out).body) if isinstance(s, DeclareLocal)]
    assert acc.dtype == kd.u64 if np.dtype(dtype).kind == "u" else kd.i64


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.uint16])
def test_small_integer_products_accumulate_in_64_bits_as_numpy(dtype):
    x = (random_array(keyed_rng(dtype), (5, 12), dtype) % 5).astype(dtype)
    x[x == 0] = 3
    want = x.prod(axis=1)
    check_kernel(prod_rows, [x, np.zeros(5, want.dtype)], {1: want}, rtol=0, atol=0)


def test_32_bit_sums_stay_32_bit_and_max_keeps_its_dtype():
    @kd.kernel
    def k(x, y, z):
        i = kd.indices(x.shape[0])
        y[0] = kd.sum(x[i], over=i)
        z[0] = kd.max(x[i].astype(kd.i8), over=i)

    x = np.full(3, 2**30, np.int32)
    y, z = np.zeros(1, np.int64), np.zeros(1, np.int64)
    k(x, y, z)
    assert y[0] == np.int32(x.sum(dtype=np.int32))  # wraps, as C's int does
    dtypes = [s.dtype for s in walk_stmts(traced(k, x, y, z).body) if isinstance(s, DeclareLocal)]
    assert dtypes == [kd.i32, kd.i8]


# ----------------------------------------------------------- kd.range(start, stop, step)


@kd.kernel
def differences(x, y):
    for j in kd.range(1, x.shape[0]):
        y[j] = x[j] - x[j - 1]


@kd.kernel
def every_third(x, y, start):
    for j in kd.range(start, x.shape[0], 3):
        y[j] = x[j] * 2.0


@kd.kernel
def constant_bounds(x, y):
    for j in kd.range(2, 5):
        y[j] = x[j] + 1.0
    for j in kd.range(5, 2):  # empty, as Python's
        y[j] = 0.0


@pytest.mark.parametrize("n", SIZES)
def test_range_with_start_and_step_matches_python(n):
    x = random_array(keyed_rng("range", n), (n,), F)
    want = np.zeros(n, F)
    want[1:] = x[1:] - x[:-1]
    check_kernel(differences, [x, np.zeros(n, F)], {1: want})
    for start in (0, 1, 5):
        want = np.zeros(n, F)
        want[start::3] = x[start::3] * 2.0
        check_kernel(every_third, [x, np.zeros(n, F), start], {1: want})


def test_range_with_constant_bounds_and_the_users_loop_name():
    x = random_array(keyed_rng("const"), (6,), F)
    want = np.zeros(6, F)
    want[2:5] = x[2:5] + 1.0
    check_kernel(constant_bounds, [x, np.zeros(6, F)], {1: want})
    loops = [s for s in walk_stmts(traced(differences, x, x).body) if isinstance(s, Loop)]
    assert [(s.var, s.kind) for s in loops] == [("j", LoopKind.SERIAL)]


@kd.kernel
def doubled_by_shape(x, y):
    for i, j in kd.grid(x.shape):
        y[i, j] = 2 * x[i, j]


@kd.kernel
def negated_by_shape(x):
    i, j, k = kd.indices(x.shape)
    y = kd.empty(x.shape, x.dtype)
    y[i, j, k] = -x[i, j, k]
    return y


@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (7, 5)])
def test_grid_and_indices_take_a_whole_shape(shape):
    """kd.grid(x.shape) is kd.grid(x.shape[0], x.shape[1]); kd.indices(x.shape) too."""
    x = random_array(keyed_rng("by shape", *shape), shape, F)
    check_kernel(doubled_by_shape, [x, np.zeros(shape, F)], {1: 2 * x})
    cube = random_array(keyed_rng("by shape 3d", *shape), (*shape, 2), F)
    np.testing.assert_array_equal(negated_by_shape(cube), -cube)


@pytest.mark.parametrize(
    "args, needle",
    [
        ("0, x.shape[0], 0", "step must be a positive constant int, not 0"),
        ("0, x.shape[0], -1", "step must be a positive constant int, not -1"),
        ("0, x.shape[0], x.shape[0]", "not x.shape[0]"),
        ("0, 1, 2, 3", "kd.range takes 1 to 3 arguments"),
        ("0.5, x.shape[0]", "kd.range's start is f64, not an integer"),
    ],
)
def test_range_refuses_what_it_cant_loop_over(args, needle):
    namespace = {"kd": kd}
    exec(
        f"def k(x, y):\n    for j in kd.range({args}):\n        y[j] = 1.0\n",
        namespace,
    )
    kernel = kd.kernel(namespace["k"])
    with pytest.raises(kd.TraceError, match="fix:") as info:
        kernel(np.ones(3, F), np.ones(3, F))
    assert needle in str(info.value) and "in kernel 'k'" in str(info.value)


# ------------------------------------------------------------------- messages that help


@pytest.mark.parametrize("n", [0, 1, 7])
def test_a_0d_array_is_subscripted_with_ellipsis_or_empty_tuple(n):
    @kd.kernel
    def total(x, out):
        i = kd.indices(x.shape[0])
        out[...] = kd.sum(x[i], over=i) + 2.5

    @kd.kernel
    def scale(x, y, factor):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * factor[()]

    x = random_array(keyed_rng("0d", n), (n,), F)
    check_kernel(total, [x, np.zeros((), F)], {1: np.array(x.sum() + 2.5, F)})
    check_kernel(scale, [x, np.zeros(n, F), np.array(3.0, F)], {1: x * 3})


def test_a_0d_array_with_an_index_says_out_empty_tuple():
    @kd.kernel
    def k(out):
        out[0] = 1.0  # here

    err = raises(kd.TraceError, lambda: k(np.zeros((), F)), "0 dimension(s)", "write out[()]")
    assert err.loc.line == line_of(k, "here")


def test_builtin_max_points_to_kd_maximum():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = max(x[i], 0.0)  # here

    err = raises(
        kd.TraceError, lambda: k(np.ones(3, F), np.ones(3, F)), "Python's max()", "kd.maximum(a, b)"
    )
    assert err.loc.line == line_of(k, "here") and "kd.max(x[k], over=k)" in str(err)


@pytest.mark.parametrize(
    "call, what, fix",
    [
        (np.exp, "NumPy's np.", "kd.exp"),
        (np.sqrt, "NumPy's np.", "kd.sqrt"),
        (np.abs, "NumPy's np.", "kd.abs"),
        (np.sign, "NumPy's np.", "kdsl's math"),
        (math.exp, "needs a concrete", "kd.exp"),
        (math.sqrt, "needs a concrete", "kd.sqrt"),
        (np.float32, "float32() of a symbolic value", "x[i].astype(kd.f32)"),  # was NumPy's
        (np.int16, "int16() of a symbolic value", "x[i].astype(kd.i16)"),  # 'with a sequence'
        (np.asarray, "given to a NumPy function", "v.astype(kd.f32)"),
    ],
)
def test_numpy_and_math_functions_point_to_kd(call, what, fix):
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = call(x[i])  # here

    err = raises(kd.TraceError, lambda: k(np.ones(3, F), np.ones(3, F)), what, fix)
    assert err.loc.line == line_of(k, "here")


def test_numpy_maximum_points_to_kd_maximum_and_numpy_scalars_still_compute():
    @kd.kernel
    def bad(x, y):
        i = kd.indices(x.shape[0])
        y[i] = np.maximum(x[i], 0.0)  # here

    err = raises(kd.TraceError, lambda: bad(np.ones(3, F), np.ones(3, F)), "kd.maximum")
    assert err.loc.line == line_of(bad, "here")

    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = np.float32(2) * x[i] + (np.float32(0) < x[i]).astype(kd.f32) - np.float32(1) / 4

    x = random_array(keyed_rng("npscalar"), (7,), F)
    check_kernel(k, [x, np.zeros(7, F)], {1: 2 * x + (x > 0) - 0.25})


def test_math_module_call_is_named():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = math.tanh(x[i])  # here

    err = raises(kd.TraceError, lambda: k(np.ones(3, F), np.ones(3, F)), "math.tanh()", "kd.tanh")
    assert err.loc.line == line_of(k, "here")

    @kd.kernel
    def k2(x, y):
        i = kd.indices(x.shape[0])
        y[i] = math.sin(x[i]) + math.log2(x[i])

    raises(kd.TraceError, lambda: k2(np.ones(3, F), np.ones(3, F)), "math.sin()", "kd.sin")


def test_float_of_a_value_points_to_astype():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = float(x[i])  # here

    err = raises(kd.TraceError, lambda: k(np.ones(3, F), np.ones(3, F)), "float()", ".astype(")
    assert err.loc.line == line_of(k, "here")


@pytest.mark.parametrize(
    "body, what, fix",
    [
        ("max(x[i], 0.0)", "Python's max()", "kd.maximum(a, b)"),
        ("math.exp(x[i])", "math.exp()", "kd.exp"),
        ("float(x[i])", "float()", ".astype("),
    ],
)
def test_a_kernel_typed_at_a_prompt_gets_the_same_messages(body, what, fix):
    """No source file (a REPL, exec): the callee is read from the bytecode."""
    source = f"def k(x, y):\n    i = kd.indices(x.shape[0])\n    y[i] = {body}\n"
    scope: dict[str, object] = {"kd": kd, "math": math}
    exec(compile(source, "<stdin>", "exec"), scope)
    k = kd.kernel(scope["k"])
    raises(kd.TraceError, lambda: k(np.ones(3, F), np.ones(3, F)), what, fix)


def test_a_reduction_without_over_names_the_index():
    @kd.kernel
    def one(x, y):
        i = kd.indices(x.shape[0])
        y[0] = kd.sum(x[i])  # here

    @kd.kernel
    def two(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[0] = kd.max(x[i, j])

    err = raises(kd.TraceError, lambda: one(np.ones(3, F), np.ones(1, F)), "needs over=", "over=i")
    assert err.loc.line == line_of(one, "here")
    raises(kd.TraceError, lambda: two(np.ones((2, 3), F), np.ones(1, F)), "over=(i, j)")


def test_kd_max_of_two_values_points_to_kd_maximum():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = kd.max(x[i], 0.0)

    raises(kd.TraceError, lambda: k(np.ones(3, F), np.ones(3, F)), "kd.maximum(a, b)")


def test_a_0d_array_argument_used_as_a_scalar():
    @kd.kernel
    def k(x, y, temp):
        i = kd.indices(x.shape[0])
        y[i] = x[i] / temp  # here

    err = raises(
        kd.TraceError,
        lambda: k(np.ones(3, F), np.ones(3, F), np.array(2.0)),
        "argument 'temp' is a 0-d array",
        "float(temp)",
        "temp[()]",
    )
    assert err.loc.line == line_of(k, "here")

    @kd.kernel
    def left(x, y, temp):
        i = kd.indices(x.shape[0])
        y[i] = temp + x[i]

    raises(kd.TraceError, lambda: left(np.ones(3, F), np.ones(3, F), np.array(2.0)), "0-d array")


def test_a_float_into_an_int_output_names_both_fixes():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 2.0  # here

    err = raises(
        kd.TraceError,
        lambda: k(np.ones(3, F), np.zeros(3, np.int32)),
        "value.astype(kd.i32)",
        "pass a float32 array as 'y'",
    )
    assert err.loc.line == line_of(k, "here")


@pytest.mark.parametrize("shape", [(3, 1), (5, 13), (4, 0), (0, 3), (64, 257)])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_argmax_and_argmin_are_numpys(shape, dtype):
    """The first position of the extreme; ties, NaNs (the extreme, as in NumPy) and an
    empty row (its length) included; compiled and interpreted."""

    @kd.kernel
    def positions(x, hi, lo):
        i, j = kd.indices(x.shape[0], x.shape[1])
        hi[i] = kd.argmax(x[i, j], over=j)
        lo[i] = kd.argmin(x[i, j], over=j)

    rng = np.random.default_rng(shape[1])
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    if shape == (5, 13):
        x[1, 4] = np.nan if dtype == np.float32 else x[1, 4]
        x[2, :] = 1  # a tie everywhere: the first
        x[3, [7, 9]] = x[3].max() + 1
    for run in (positions, positions.interpret):
        hi, lo = np.full(shape[0], -5, np.int64), np.full(shape[0], -5, np.int64)
        run(x, hi, lo)
        if shape[1]:
            np.testing.assert_array_equal(hi, np.argmax(x, axis=1))
            np.testing.assert_array_equal(lo, np.argmin(x, axis=1))
        else:
            assert (hi == 0).all() and (lo == 0).all()


def test_argmax_takes_one_index():
    @kd.kernel
    def flat(x, out):
        i, j = kd.indices(x.shape[0], x.shape[1])
        out[0] = kd.argmax(x[i, j], over=(i, j))

    with pytest.raises(kd.TraceError, match="kd.argmax takes one index variable"):
        flat(np.ones((2, 2), np.float32), np.zeros(1, np.int64))


@pytest.mark.parametrize(
    "dtype, bounds, trips",
    [(np.uint8, [5, 3], 0), (np.uint16, [5, 3], 0), (np.int8, [-100, 100], 200)],
)
def test_kd_range_bounds_are_read_once_in_64_bits(dtype, bounds, trips):
    """Bounds from narrow arrays: u8 5..3 ran 254 trips (the count wrapped), int8
    -100..100 none; a start that the loop changes is read once, as Python reads it."""

    @kd.kernel
    def count(a, y):
        for _ in kd.range(a[0], a[1]):
            y[0] += 1.0

    @kd.kernel
    def moving(x, y):
        s = kd.local(2)
        for j in kd.range(s, 6):
            y[j] = x[j]
            s += 1

    y = np.zeros(1, np.float32)
    count(np.array(bounds, dtype), y)
    assert y[0] == trips
    x, y = np.arange(10, dtype=np.float32), np.zeros(10, np.float32)
    moving(x, y)
    np.testing.assert_array_equal(y, np.where((x >= 2) & (x < 6), x, 0))


def test_unary_plus_reads_a_local_now():
    """`prev = +acc` keeps acc's value (it returned the local itself: acc - prev was 0)."""

    @kd.kernel
    def steps(x, y):
        acc = kd.local(0.0, kd.f32)
        for t in kd.range(x.shape[0]):
            prev = +acc
            acc += x[t]
            y[t] = acc - prev

    x = np.arange(1, 6, dtype=np.float32)
    for run in (steps, steps.interpret):
        y = np.zeros(5, np.float32)
        run(x, y)
        np.testing.assert_array_equal(y, x)


_SCALE = 2.0


def _act(v):
    return kd.maximum(v, 0.0)


def test_rebound_globals_and_helpers_are_read_again(monkeypatch):
    """A notebook cell sets a constant and redefines a helper: every signature's next call
    sees both (the float32 signature kept 2·relu while a new float64 one saw 3·|x|)."""
    import sys

    module = sys.modules[__name__]

    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = _act(x[i]) * _SCALE

    x = random_array(keyed_rng("rebound"), (9,), F)
    y = np.empty(9, F)
    k(x, y)
    np.testing.assert_allclose(y, 2 * np.maximum(x, 0))
    k(x, y)
    assert k.stats()["compilations"] == 1  # nothing rebound: the same code
    monkeypatch.setattr(module, "_SCALE", 3.0)
    monkeypatch.setattr(module, "_act", lambda v: kd.abs(v))
    for dtype in (F, np.float64, F):
        y = np.empty(9, dtype)
        k(x.astype(dtype), y)
        np.testing.assert_allclose(y, 3 * np.abs(x), rtol=1e-6)


def test_a_changed_closure_variable_is_read_again():
    def make():
        factor = 2.0

        @kd.kernel
        def k(x, y):
            i = kd.indices(x.shape[0])
            y[i] = x[i] * factor

        def set_factor(value):
            nonlocal factor
            factor = value

        return k, set_factor

    k, set_factor = make()
    x, y = random_array(keyed_rng("closure"), (5,), F), np.empty(5, F)
    k(x, y)
    np.testing.assert_allclose(y, 2 * x)
    set_factor(5.0)
    k(x, y)
    np.testing.assert_allclose(y, 5 * x)
    assert "5.0" in str(k.ir(x, y))


@pytest.mark.parametrize(
    "body, what, fix",
    [
        (lambda v: round(v), "round() of a symbolic value", "kd.floor(x + 0.5)"),
        (lambda v: math.trunc(v), "math.trunc() of a symbolic value", "astype(kd.i64)"),
        (lambda v: divmod(v, 3.0)[0], "divmod() of a symbolic value", "a // b and a % b"),
        (lambda v: v * len(v), "len() of a symbolic value", "x.shape[0]"),
        (lambda v: np.sum(v), "NumPy's np.sum", "kd.sum(x[k], over=k)"),
        (lambda v: np.max(v), "NumPy's np.max", "kd.max(x[k], over=k)"),
    ],
)
def test_python_builtins_and_numpy_reductions_point_to_kd(body, what, fix):
    """These escaped as raw TypeErrors; np.sum's error pointed into NumPy's source."""

    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = body(x[i])

    err = raises(kd.TraceError, lambda: k(np.ones(3, F), np.ones(3, F)), what, fix)
    assert err.loc.file == __file__


def test_an_if_on_a_scalar_parameter_suggests_constexpr():
    @kd.kernel
    def k(x, y, use_bias):
        i = kd.indices(x.shape[0])
        if use_bias:  # here
            y[i] = x[i] + 1.0

    err = raises(
        kd.TraceError, lambda: k(np.ones(3, F), np.ones(3, F), True), "use_bias: kd.constexpr"
    )
    assert err.loc.line == line_of(k, "here")


def test_misspelt_kernel_option_names_the_right_one():
    with pytest.raises(kd.KernelArgumentError, match="did you mean 'static_shapes'"):

        @kd.kernel(static_shape=True)
        def k(x):
            x[0] = 1.0


def test_a_kernel_called_inside_a_kernel_says_so():
    @kd.kernel
    def inner(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i]

    @kd.kernel
    def outer(x, y):
        inner(x, y)  # here

    err = raises(
        kd.KernelArgumentError,
        lambda: outer(np.ones(3, F), np.ones(3, F)),
        "called inside another kernel",
        "plain Python function",
    )
    assert err.loc.line == line_of(outer, "here")


def test_a_list_for_a_constexpr_suggests_a_tuple():
    @kd.kernel
    def k(x, ks: kd.constexpr):
        x[0] = float(sum(ks))

    raises(
        kd.KernelArgumentError, lambda: k(np.ones(3, F), [1, 2]), "must be hashable", "tuple(ks)"
    )
    raises(kd.KernelArgumentError, lambda: k(np.ones(3, F), np.arange(2)), "tuple(ks.tolist())")
    x = np.ones(3, F)
    k(x, (1, 2))
    assert x[0] == 3.0


def test_a_shared_scratch_array_suggests_one_per_iteration():
    @kd.kernel
    def window_max(x, y):
        i = kd.indices(y.shape[0])
        buf = kd.zeros((3,), kd.f32)
        for t in range(3):
            buf[t] = x[i + t]
        y[i] = kd.maximum(kd.maximum(buf[0], buf[1]), buf[2])

    raises(
        kd.TraceError,
        lambda: window_max(np.ones(9, F), np.ones(7, F)),
        "the writes race",
        "allocate 'buf' inside that loop",
    )


def test_python_bools_are_weak_like_python_ints_and_floats():
    """NumPy 2: f32 * True is f32, i32 + True is i32, and np.where(1, a, b) takes 1 as
    true; all three were refused ('mixing f32 and bool_ operands')."""

    @kd.kernel
    def axpb(x, a, b, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * a + b

    @kd.kernel
    def maybe_neg(x, flag, y):
        i = kd.indices(x.shape[0])
        keep = kd.local(True)
        y[i] = kd.where(flag, x[i], -x[i]) * kd.where(keep, 1, 0)

    x = random_array(keyed_rng("weak-bool"), (6,), F)
    check_kernel(axpb, [x, True, False, np.zeros(6, F)], {3: x * True + False})
    ints = np.arange(6, dtype=np.int32)
    check_kernel(axpb, [ints, 2, True, np.zeros(6, np.int32)], {3: ints * 2 + True})
    for flag in (1, 0, True):
        check_kernel(maybe_neg, [x, flag, np.zeros(6, F)], {2: np.where(flag, x, -x)})
    traced = maybe_neg.ir(x, 1, np.zeros(6, F)).kernel
    (keep,) = [s for s in walk_stmts(traced.body) if isinstance(s, DeclareLocal)]
    assert keep.dtype == kd.bool_  # (a weak bool is no int64 local)


def test_an_int_local_gathering_floats_says_how_to_declare_it():
    """The fix said `x.astype(kd.f32)` for an f32 array named x (a placeholder x)."""

    @kd.kernel
    def total(x, y):
        acc = kd.local(0)
        for t in kd.range(x.shape[0]):
            acc += x[t]
        y[0] = acc

    raises(
        kd.TraceError,
        lambda: total(np.ones(4, F), np.zeros(1, F)),
        "mixing i64 and f32",
        "kd.local(0.0)",
    )


def test_a_kd_range_from_a_scalar_start_keeps_the_users_loop_name():
    """The start's local took the name 'j' and the loop became 'j.1', so a schedule's
    s.unroll("j") was refused."""

    @kd.kernel
    def shifted(x, y, start):
        for j in kd.range(start, x.shape[0]):
            y[j] = x[j] + 1.0

    @shifted.schedule(kd.cpu)
    def _(s):
        s.unroll("j", 4)

    x = random_array(keyed_rng("range-name"), (11,), F)
    y = np.zeros(11, F)
    shifted(x, y, 3)
    np.testing.assert_array_equal(y, np.where(np.arange(11) >= 3, x + 1, 0))
    assert "for j in range" in str(shifted.ir(x, y, 3))


_TRACES = 0


def _counted(v):
    global _TRACES
    _TRACES += 1  # a helper that sets a global while traced
    return v * _SCALE


def test_a_global_set_again_to_an_equal_value_is_no_change(monkeypatch):
    """SCALE = float(cfg['scale']) before each call re-traced every call (1.3 ms), as did
    a helper setting a global while traced; a change of type or sign still counts."""
    import sys

    module = sys.modules[__name__]

    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = _counted(x[i])

    x, y = random_array(keyed_rng("equal-rebind"), (6,), F), np.empty(6, F)
    for _ in range(5):
        monkeypatch.setattr(module, "_SCALE", float("2.0"))  # a new float object each time
        k(x, y)
    assert k.stats()["compilations"] == 1
    np.testing.assert_allclose(y, 2 * x, rtol=1e-6)
    for value, want in ((-0.0, -0.0 * x), (2, 2 * x), (3.0, 3 * x)):  # sign, type, value
        monkeypatch.setattr(module, "_SCALE", value)
        k(x, y)
        np.testing.assert_array_equal(np.signbit(y), np.signbit(want.astype(F)))
    assert k.stats()["compilations"] == 4


def test_a_python_bool_meeting_a_python_int_is_an_int():
    """Both weak: bool + int had no common dtype and fell back to f64 (x[i + skip * 2]:
    a float subscript; flag | 4: a float bit operation)."""

    @kd.kernel
    def shifted(x, skip, flag, y):
        i = kd.indices(y.shape[0])
        y[i] = x[i + skip * 2] & (flag | 4)

    x = np.arange(10, dtype=np.int32)
    check_kernel(shifted, [x, True, True, np.zeros(8, np.int32)], {3: x[2:] & 5})


def test_a_value_read_before_a_write_of_its_element_is_refused():
    """`lo` is the load X[r, 0]: used after X[r, 0] was written, the statement read the
    new element (a compare-and-swap lost a value, silently)."""

    @kd.kernel
    def swap(X):
        for r in kd.grid(X.shape[0]):
            lo = X[r, 0]
            hi = X[r, 1]
            X[r, 0] = kd.minimum(lo, hi)
            X[r, 1] = kd.maximum(lo, hi)  # here

    err = raises(
        kd.TraceError,
        lambda: swap(np.ones((2, 2), F)),
        "a value read from X[r, 0]",
        "v = kd.local(X[r, 0])",
    )
    assert err.loc.line == line_of(swap, "here")

    @kd.kernel
    def swapped(X):  # the fix: locals keep the old values
        for r in kd.grid(X.shape[0]):
            lo = kd.local(X[r, 0])
            hi = kd.local(X[r, 1])
            X[r, 0] = kd.minimum(lo, hi)
            X[r, 1] = kd.maximum(lo, hi)

    x = random_array(keyed_rng("swap"), (9, 2), F)
    check_kernel(swapped, [x], {0: np.sort(x, axis=1)})


@pytest.mark.parametrize("case", ["tuple", "reduction", "carried"])
def test_more_uses_after_a_write_are_refused(case):
    @kd.kernel
    def tuple_swap(X):
        i = kd.indices(X.shape[0])
        X[i, 0], X[i, 1] = kd.minimum(X[i, 0], X[i, 1]), kd.maximum(X[i, 0], X[i, 1])

    @kd.kernel
    def restore(X):
        i, j = kd.indices(X.shape[0], X.shape[1])
        s = kd.sum(X[i, j], over=j)
        X[i, j] = X[i, j] / s
        X[i, j] = X[i, j] * s

    @kd.kernel
    def carried(x, y):
        v = x[0] * 2.0
        for t in kd.range(y.shape[0]):
            y[t] = v
            x[0] = 100.0

    kernel, fix = {
        "tuple": (tuple_swap, "into another array first"),
        "reduction": (restore, "into another array first"),
        "carried": (carried, "kd.local(x[0])"),
    }[case]
    args = [np.ones((3, 2), F)] if case != "carried" else [np.ones(3, F), np.ones(4, F)]
    raises(kd.TraceError, lambda: kernel(*args), "a value read from", fix)


def test_reads_and_writes_of_other_elements_are_fine():
    """X[r, 1] is not X[r, 0]; a read after the write reads the new value, as in Python."""

    @kd.kernel
    def shift(X):
        for r in kd.grid(X.shape[0]):
            a = X[r, 1]
            X[r, 0] = X[r, 0] + a
            X[r, 1] = a * 2.0
            X[r, 2] = X[r, 0]

    x = random_array(keyed_rng("other-elements"), (5, 3), F)
    want = x.copy()
    want[:, 0] += x[:, 1]
    want[:, 1] = x[:, 1] * 2
    want[:, 2] = want[:, 0]
    check_kernel(shift, [x], {0: want})


@pytest.mark.parametrize(
    "body, what, fix",
    [
        (lambda x, y, i: y.__setitem__(i, x[i] * x.size), "x.size", "x.shape[0]"),
        (lambda x, y, i: y.__setitem__(i, x.T[i]), "x.T", "indices swapped"),
        (lambda x, y, i: y.__setitem__(i, x[int(i)]), "int() of a symbolic", "x[i]"),
        (lambda x, y, i: y.__setitem__(i, np.sin(x[i])), "np.sin", "use kd.sin"),
        (lambda x, y, i: y.__setitem__(i, np.tan(x[i])), "np.tan", "kd.sin(x) / kd.cos(x)"),
        (lambda x, y, i: y.__setitem__(i, np.arcsin(x[i])), "np.arcsin", "a table of np.arcsin"),
    ],
)
def test_array_attributes_int_of_an_index_and_sin_say_what_to_do(body, what, fix):
    """Raw AttributeErrors (x.size, x.T), 'x.astype(kd.f32)' for int(i), kd.sin for np.sin,
    and a list of unrelated functions for np.arcsin."""

    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        body(x, y, i)

    raises(kd.TraceError, lambda: k(np.ones(3, F), np.ones(3, F)), what, fix)


def test_writing_a_scalar_parameter_and_a_0d_constexpr_say_what_to_do():
    @kd.kernel
    def k(x, s):
        s[()] = x[0]

    raises(kd.TraceError, lambda: k(np.ones(3, F), 0.0), "is written, but it is a scalar", "out[0]")

    @kd.kernel
    def scaled(x, p: kd.constexpr):
        x[0] = x[0] * p

    raises(kd.KernelArgumentError, lambda: scaled(np.ones(3, F), np.array(2.0)), "p.item()")


def test_an_int_past_int64_suggests_uint64():
    @kd.kernel
    def add(seed, out):
        out[0] = out[0] + seed

    raises(kd.KernelArgumentError, lambda: add(2**63, np.zeros(1, np.uint64)), "np.uint64(")


def test_array_reads_in_conditions_extents_and_when_blocks():
    """After a review: a stale read in a kd.when condition or a loop extent was missed
    (an if/else as two kd.when blocks gave all 1s); a kd.when block counted as a loop
    (an in-place leaky ReLU was refused); a closed block's id could stand for a new
    one; x[i + 1] and x[i] over implicit indices were told apart; x[t + 1] for t >= 0
    met x[0]."""

    @kd.kernel
    def ifelse(x):
        for i in kd.grid(x.shape[0]):
            v = x[i]
            with kd.when(v > 0):
                x[i] = -1.0
            with kd.when(v <= 0):  # here
                x[i] = 1.0

    err = raises(kd.TraceError, lambda: ifelse(np.ones(5, F)), "a value read from x[i]")
    assert err.loc.line == line_of(ifelse, "here")

    @kd.kernel
    def count_then_reset(cnt, y):
        k = cnt[0]
        cnt[0] = 0
        for t in kd.range(k):
            y[t] = 1.0

    raises(kd.TraceError, lambda: count_then_reset(np.array([3]), np.zeros(5, F)), "cnt[0]")

    @kd.kernel
    def shifted(x, y):
        i = kd.indices(y.shape[0])
        v = x[i]
        x[i + 1] = 0.0
        y[i] = v

    raises(kd.TraceError, lambda: shifted(np.ones(6, F), np.ones(5, F)), "a value read from x[i]")

    @kd.kernel
    def leaky(x):
        for i in kd.grid(x.shape[0]):
            v = x[i]
            with kd.when(v < 0):
                x[i] = v * 0.1

    @kd.kernel
    def two_loops(x, y):
        for r in kd.grid(x.shape[0]):
            v = x[r]
            for t in kd.range(y.shape[1]):
                y[r, t] = v
            for _ in kd.range(3):
                x[r] = x[r] + 1.0

    @kd.kernel
    def minus_first(x):
        base = x[0]
        for t in kd.range(1, x.shape[0]):
            x[t] = x[t] - base

    x = random_array(keyed_rng("when-reads"), (7,), F)
    check_kernel(leaky, [x], {0: np.where(x < 0, x * F(0.1), x)})
    check_kernel(two_loops, [x, np.zeros((7, 4), F)], {0: x + 3, 1: np.repeat(x[:, None], 4, 1)})
    check_kernel(minus_first, [x], {0: np.concatenate([x[:1], x[1:] - x[0]])})
