"""The reference interpreter on hand-built IR: statements, buffers, errors and arguments."""

from __future__ import annotations

import time

import ml_dtypes
import numpy as np
import pytest

import kdsl as kd
from kdsl.errors import SourceLoc
from kdsl.ir.checks import check_error, check_operands
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    Buffer,
    BufferRole,
    Cast,
    Check,
    CheckKind,
    DeclareLocal,
    DimOf,
    If,
    Kernel,
    Load,
    LocalVar,
    Loop,
    LoopExec,
    LoopKind,
    LoopVar,
    Param,
    ScalarArg,
    Scope,
    Select,
    Store,
    Unary,
    UnaryOp,
)
from kdsl.ir.verify import verify
from kdsl.targets.interp.interpreter import interpret, python_source
from tests.targets.interp.build import LOC, I, at, bits, c, elementwise, kernel, param

J, K = LoopVar("j"), LoopVar("k")


def add(a, b):
    return Binary(BinaryOp.ADD, a, b, a.dtype)


def mul(a, b):
    return Binary(BinaryOp.MUL, a, b, a.dtype)


# ------------------------------------------------------------------- whole kernels vs NumPy


def test_elementwise_add_matches_numpy_on_strided_arrays():
    k = elementwise({"a": kd.f32, "b": kd.f32}, kd.f32, add(at("a", kd.f32), at("b", kd.f32)))
    rng = np.random.default_rng(0)
    a = rng.standard_normal(2000).astype(np.float32)
    b = rng.standard_normal(4000).astype(np.float32)[::-2]  # negative stride
    out = np.zeros(2000, np.float32)
    interpret(k, {"a": a, "b": b, "out": out})
    np.testing.assert_array_equal(out, a + b)


def matmul() -> Kernel:
    """C[i, j] = sum over k of A[i, k] * B[k, j], with a local accumulator."""
    acc = LocalVar("acc", kd.f32)
    product = mul(Load("A", (I, K), kd.f32), Load("B", (K, J), kd.f32))
    inner = Loop("k", DimOf("A", 1), LoopKind.REDUCTION, (Assign("acc", add(acc, product)),))
    body = (DeclareLocal("acc", kd.f32, c(0.0, kd.f32)), inner, Store("C", (I, J), acc))
    nest = Loop(
        "i", DimOf("A", 0), LoopKind.PARALLEL, (Loop("j", DimOf("B", 1), LoopKind.PARALLEL, body),)
    )
    return kernel({"A": (kd.f32, 2), "B": (kd.f32, 2), "C": (kd.f32, 2)}, (nest,))


def test_matmul_with_a_local_accumulator_matches_numpy_quickly():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((40, 40)), rng.standard_normal((40, 40))
    a, b = a.astype(np.float32), b.astype(np.float32)
    out = np.zeros((40, 40), np.float32)
    start = time.perf_counter()
    interpret(matmul(), {"A": a, "B": b, "C": out})
    assert time.perf_counter() - start < 1.0
    want = np.zeros((40, 40), np.float32)
    for k in range(40):  # the same order of f32 additions
        want += a[:, k : k + 1] * b[k : k + 1, :]
    np.testing.assert_array_equal(out, want)


def test_locals_ifs_and_serial_loops():
    acc = LocalVar("acc", kd.i64)
    odd = Binary(BinaryOp.EQ, Binary(BinaryOp.MOD, I, c(2), kd.i64), c(1), kd.bool_)
    body = (
        DeclareLocal("acc", kd.i64, c(0)),
        Loop(
            "i",
            ScalarArg("n", kd.i64),
            LoopKind.SERIAL,
            (If(odd, (Assign("acc", add(acc, I)),)),),
        ),
        Store("out", (c(0),), acc),
    )
    k = kernel({"out": (kd.i64, 1)}, body, (Param("n", kd.i64, None),))
    out = np.zeros(1, np.int64)
    interpret(k, {"out": out, "n": 10})
    assert out[0] == 1 + 3 + 5 + 7 + 9
    interpret(k, {"out": out, "n": 70_000})  # long loops run in chunks
    assert out[0] == 35_000**2


def test_zero_dimensional_arrays():
    k = kernel(
        {"x": (kd.f64, 0), "out": (kd.f64, 0)},
        (Store("out", (), mul(Load("x", (), kd.f64), c(2.0, kd.f64))),),
    )
    out = np.zeros((), np.float64)
    interpret(k, {"x": np.array(1.25), "out": out})
    assert out[()] == 2.5


def test_bf16_values_are_widened_and_rounded_back():
    x = np.array([1.0, 3.140625, -2.5], ml_dtypes.bfloat16)
    value = Cast(mul(Cast(at("x", kd.bf16), kd.f32), c(1.0078125, kd.f32)), kd.bf16)
    out = np.zeros(3, ml_dtypes.bfloat16)
    interpret(elementwise({"x": kd.bf16}, kd.bf16, value), {"x": x, "out": out})
    want = (x.astype(np.float32) * np.float32(1.0078125)).astype(ml_dtypes.bfloat16)
    assert bits(out) == bits(want)


def test_scheduled_execution_kinds_do_not_change_the_result():
    k = elementwise({"x": kd.f32}, kd.f32, Unary(UnaryOp.NEG, at("x", kd.f32), kd.f32))
    loop = k.body[0]
    vectorized = Loop(loop.var, loop.extent, loop.kind, loop.body, LoopExec.VECTORIZED, 8)
    scheduled = verify(Kernel(k.name, k.params, k.buffers, (vectorized,)), "scheduled")
    x = np.arange(11, dtype=np.float32)
    for program in (k, scheduled):
        out = np.zeros(11, np.float32)
        interpret(program, {"x": x, "out": out})
        np.testing.assert_array_equal(out, -x)


def test_negative_zero_constant_is_not_confused_with_zero():
    first, second = np.ones(2, np.float32), np.ones(2, np.float32)
    interpret(elementwise({}, kd.f32, c(0.0, kd.f32)), {"out": first})
    interpret(elementwise({}, kd.f32, c(-0.0, kd.f32)), {"out": second})
    assert not np.signbit(first).any()
    assert np.signbit(second).all()


def test_deep_expressions_are_split_even_inside_a_branch():
    x = at("x", kd.f64)
    deep = x
    for _ in range(300):
        deep = add(deep, x)
    positive = Binary(BinaryOp.GT, x, c(0.0, kd.f64), kd.bool_)
    value = Select(positive, add(c(1.0, kd.f64), deep), c(-1.0, kd.f64), kd.f64)
    out = np.zeros(3)
    interpret(elementwise({"x": kd.f64}, kd.f64, value), {"x": np.arange(3.0), "out": out})
    assert out.tolist() == [-1.0, 302.0, 603.0]


def test_python_source_is_readable():
    source = python_source(matmul())
    assert "for L" in source and "_i" in source and "acc" in source


# ---------------------------------------------------------------------- select / loads


def shifted_by_one(guarded: bool) -> Kernel:
    """out[i] = x[i + 1], guarded by a where(i + 1 < n, ..., -1) when asked."""
    nxt = Binary(BinaryOp.ADD, I, c(1), kd.i64)
    value = at("x", kd.f32, nxt)
    if guarded:
        inside = Binary(BinaryOp.LT, nxt, DimOf("x", 0), kd.bool_)
        value = Select(inside, value, c(-1.0, kd.f32), kd.f32)
    return elementwise({"x": kd.f32}, kd.f32, value)


def test_select_evaluates_only_the_chosen_branch():
    x = np.arange(4, dtype=np.float32)
    out = np.zeros(4, np.float32)
    interpret(shifted_by_one(guarded=True), {"x": x, "out": out})
    np.testing.assert_array_equal(out, [1, 2, 3, -1])


def test_out_of_bounds_load_raises_bounds_error():
    x = np.arange(4, dtype=np.float32)
    with pytest.raises(kd.BoundsError) as info:
        interpret(shifted_by_one(guarded=False), {"x": x, "out": np.zeros(4, np.float32)})
    err = info.value
    assert isinstance(err, IndexError)
    assert "subscript [4] is out of bounds for 'x' of shape (4,): x[i + 1] with i = 3" in str(err)
    assert err.loc == LOC


def test_errors_point_at_the_kernel_being_run_not_a_cached_twin():
    elsewhere = SourceLoc("other.py", 99)
    twin = shifted_by_one(guarded=False)
    store = twin.body[0].body[0]
    value = Load("x", store.value.index, kd.f32, loc=elsewhere)
    loop = Loop("i", DimOf("out", 0), LoopKind.PARALLEL, (Store("out", (I,), value),))
    twin = Kernel(twin.name, twin.params, twin.buffers, (loop,))
    args = {"x": np.arange(4, dtype=np.float32), "out": np.zeros(4, np.float32)}
    for k, loc in [(shifted_by_one(guarded=False), LOC), (twin, elsewhere)]:
        with pytest.raises(kd.BoundsError) as info:
            interpret(k, args)
        assert info.value.loc == loc


def test_negative_subscript_does_not_wrap_around():
    prev = at("x", kd.f32, Binary(BinaryOp.SUB, I, c(1), kd.i64))
    k = elementwise({"x": kd.f32}, kd.f32, prev)
    with pytest.raises(kd.BoundsError, match=r"\[-1\]"):
        interpret(k, {"x": np.ones(3, np.float32), "out": np.zeros(3, np.float32)})


def test_out_of_bounds_store_raises_bounds_error():
    store = Store("out", (Binary(BinaryOp.ADD, I, c(1), kd.i64),), at("x", kd.f32), loc=LOC)
    loop = Loop("i", DimOf("x", 0), LoopKind.PARALLEL, (store,))
    params = (Param("x", kd.f32, 1), Param("out", kd.f32, 1))
    k = Kernel("k", params, (param("x", kd.f32), param("out", kd.f32)), (loop,))
    out = np.zeros(3, np.float32)
    with pytest.raises(kd.BoundsError, match=r"subscript \[3\] is out of bounds for 'out'"):
        interpret(verify(k, "traced"), {"x": np.ones(3, np.float32), "out": out})
    np.testing.assert_array_equal(out, [0, 1, 1])


def test_nothing_is_written_before_an_out_of_bounds_access_stops_the_kernel():
    x = np.arange(4, dtype=np.float32)
    out = np.zeros(4, np.float32)
    with pytest.raises(kd.BoundsError):
        interpret(shifted_by_one(guarded=False), {"x": x, "out": out})
    np.testing.assert_array_equal(out, [1, 2, 3, 0])  # iterations before the bad one ran


# --------------------------------------------------------------------------- checks


def checked(kind: CheckKind) -> Kernel:
    cond = Binary(BinaryOp.EQ, DimOf("x", 0), DimOf("out", 0), kd.bool_)
    check = Check(cond, kind, "x.shape[0] == out.shape[0]", loc=LOC)
    k = elementwise({"x": kd.f32}, kd.f32, at("x", kd.f32))
    return Kernel(k.name, k.params, k.buffers, (check, *k.body))


def test_failed_shape_check_quotes_the_values():
    out = np.full(3, 5, np.float32)
    with pytest.raises(kd.ShapeError) as info:
        interpret(checked(CheckKind.SHAPE), {"x": np.ones(4, np.float32), "out": out})
    message = str(info.value)
    assert "x.shape[0] == out.shape[0] does not hold (x.shape[0] = 4, out.shape[0] = 3)" in message
    assert isinstance(info.value, ValueError) and info.value.loc == LOC
    np.testing.assert_array_equal(out, [5, 5, 5])  # stopped before the loop


def test_failed_bounds_check_is_a_bounds_error():
    with pytest.raises(kd.BoundsError, match="does not hold"):
        interpret(
            checked(CheckKind.BOUNDS), {"x": np.ones(2, np.float32), "out": np.ones(1, np.float32)}
        )


def test_passing_check_runs_the_kernel():
    x, out = np.arange(3, dtype=np.float32), np.zeros(3, np.float32)
    interpret(checked(CheckKind.SHAPE), {"x": x, "out": out})
    np.testing.assert_array_equal(out, x)


def test_check_inside_a_loop_quotes_loop_variables_and_locals():
    acc = LocalVar("acc", kd.i64)
    small = Binary(BinaryOp.LT, add(acc, I), DimOf("x", 0), kd.bool_)
    check = Check(small, CheckKind.BOUNDS, "acc + i < x.shape[0]", loc=LOC)
    body = (DeclareLocal("acc", kd.i64, c(5)), Loop("i", c(3), LoopKind.SERIAL, (check,)))
    k = kernel({"x": (kd.f32, 1)}, body)
    with pytest.raises(kd.BoundsError) as info:
        interpret(k, {"x": np.ones(7, np.float32)})
    assert "(acc = 5, i = 2, x.shape[0] = 7)" in str(info.value)
    assert "guard it with kd.when" in str(info.value)
    assert check_operands(check) == (acc, I, DimOf("x", 0))


def test_check_error_is_shared_by_the_targets():
    cond = Binary(BinaryOp.EQ, DimOf("A", 1), DimOf("B", 0), kd.bool_)
    check = Check(cond, CheckKind.SHAPE, "A.shape[1] == B.shape[0]", loc=LOC)
    err = check_error(check, {DimOf("A", 1): 256, DimOf("B", 0): 300})
    assert isinstance(err, kd.ShapeError) and err.loc == LOC
    assert err.what == "A.shape[1] == B.shape[0] does not hold (A.shape[1] = 256, B.shape[0] = 300)"
    assert err.fix == "pass arrays whose dimensions agree"


def test_check_quotes_scalar_parameters():
    cond = Binary(BinaryOp.GT, ScalarArg("n", kd.i64), c(0), kd.bool_)
    k = Kernel("k", (Param("n", kd.i64, None),), (), (Check(cond, CheckKind.SHAPE, "n > 0"),))
    with pytest.raises(kd.ShapeError, match=r"n > 0 does not hold \(n = -2\)"):
        interpret(k, {"n": -2})


# ------------------------------------------------------------------ results and temps


def test_result_and_temporary_buffers():
    n = DimOf("x", 0)
    twice = Binary(BinaryOp.MUL, n, c(2), kd.i64)
    temp = Buffer("t", kd.f64, (twice,), BufferRole.TEMP, Scope.HEAP)
    result = Buffer("r", kd.f64, (n,), BufferRole.RESULT, Scope.GLOBAL)
    # a temporary's DimOf is its declared shape
    fill_t = Loop("i", DimOf("t", 0), LoopKind.PARALLEL, (Store("t", (I,), Cast(I, kd.f64)),))
    t_2j = Load("t", (Binary(BinaryOp.MUL, J, c(2), kd.i64),), kd.f64)
    store = Store("r", (J,), add(t_2j, Cast(Load("x", (J,), kd.f32), kd.f64)))
    body = (Allocate("t"), fill_t, Loop("j", n, LoopKind.PARALLEL, (store,)))
    k = Kernel("k", (Param("x", kd.f32, 1),), (param("x", kd.f32), temp, result), body, ("r",))
    x = np.array([0.5, 1.5, 2.5], np.float32)
    (r,) = interpret(verify(k, "traced"), {"x": x})
    assert r.dtype == np.float64 and r.shape == (3,) and r.flags.c_contiguous
    np.testing.assert_array_equal(r, [0.5, 3.5, 6.5])


def test_unwritten_elements_are_garbage_not_zero():
    results = {
        d: Buffer("r", d, (c(2),), BufferRole.RESULT, Scope.GLOBAL)
        for d in (kd.f32, kd.i32, kd.bool_)
    }
    for d, buf in results.items():
        k = Kernel("k", (), (buf,), (Store("r", (c(0),), c(1, d)),), ("r",))
        (r,) = interpret(verify(k, "traced"), {})
        assert r[0] == 1 and r[1] != 0 and (d.is_float) == bool(np.isnan(r[1]))


def test_empty_result_and_no_results():
    result = Buffer("r", kd.i32, (c(0),), BufferRole.RESULT, Scope.GLOBAL)
    (r,) = interpret(Kernel("k", (), (result,), (), ("r",)), {})
    assert r.shape == (0,) and r.dtype == np.int32
    assert interpret(Kernel("k", (), (), ()), {}) == ()


# ---------------------------------------------------------------------------- arguments


def copy_kernel() -> Kernel:
    return elementwise({"x": kd.f32}, kd.f32, at("x", kd.f32))


@pytest.mark.parametrize(
    "args, message",
    [
        ({"x": np.ones(2, np.float32)}, "argument 'out' is missing"),
        ({"x": np.ones(2, np.float64), "out": np.ones(2, np.float32)}, "should be a 1-d float32"),
        ({"x": np.ones((2, 2), np.float32), "out": np.ones(2, np.float32)}, "got a 2-d float32"),
        ({"x": [1.0, 2.0], "out": np.ones(2, np.float32)}, "got list"),
    ],
)
def test_bad_arguments_name_the_parameter(args, message):
    with pytest.raises(kd.KernelArgumentError, match=message) as info:
        interpret(copy_kernel(), args)
    assert "k(x: f32[1d], out: f32[1d])" in str(info.value)


def test_read_only_output_is_an_argument_error():
    out = np.zeros(2, np.float32)
    out.flags.writeable = False
    with pytest.raises(kd.KernelArgumentError, match="'out' is read-only"):
        interpret(copy_kernel(), {"x": np.ones(2, np.float32), "out": out})
    x = np.ones(2, np.float32)
    x.flags.writeable = False  # only read: fine
    interpret(copy_kernel(), {"x": x, "out": np.zeros(2, np.float32)})


def test_float_for_an_integer_scalar_is_an_argument_error():
    k = elementwise({}, kd.i64, ScalarArg("n", kd.i64), params=(Param("n", kd.i64, None),))
    with pytest.raises(kd.KernelArgumentError, match="'n' should be a i64 scalar"):
        interpret(k, {"out": np.zeros(1, np.int64), "n": 2.5})


# ---------------------------------------------------------------------- ill-typed IR


@pytest.mark.parametrize(
    "value, dtype",
    [
        (Unary(UnaryOp.EXP, at("x", kd.i32), kd.i32), kd.i32),
        (Binary(BinaryOp.AND, at("x", kd.f32), at("x", kd.f32), kd.f32), kd.f32),
        (Binary(BinaryOp.ADD, at("x", kd.bool_), at("x", kd.bool_), kd.bool_), kd.bool_),
        (Binary(BinaryOp.DIV, at("x", kd.i32), at("x", kd.i32), kd.i32), kd.i32),
    ],
)
def test_ill_typed_ir_is_refused(value, dtype):
    k = Kernel(
        "k",
        (Param("x", dtype, 1), Param("out", dtype, 1)),
        (param("x", dtype), param("out", dtype)),
        (Loop("i", DimOf("x", 0), LoopKind.PARALLEL, (Store("out", (I,), value),)),),
    )
    with pytest.raises(kd.CompileError, match="the interpreter cannot run"):
        interpret(k, {"x": np.ones(1, dtype.to_numpy()), "out": np.ones(1, dtype.to_numpy())})


def test_store_of_another_dtype_is_refused():
    k = Kernel(
        "k",
        (Param("out", kd.f32, 1),),
        (param("out", kd.f32),),
        (Store("out", (c(0),), c(1.0, kd.f64)),),
    )
    with pytest.raises(kd.CompileError, match="a store of f64 into out"):
        interpret(k, {"out": np.zeros(1, np.float32)})
