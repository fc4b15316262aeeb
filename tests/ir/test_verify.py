"""The verifier: each class of bad IR is a CompileError that names the problem."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import kdsl as kd
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
    Const,
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

I = LoopVar("i")  # noqa: E741
N = DimOf("x", 0)
X = Buffer("x", kd.f32, (N,), BufferRole.PARAM, Scope.GLOBAL)
Y = Buffer("y", kd.f32, (DimOf("y", 0),), BufferRole.PARAM, Scope.GLOBAL)
H = Buffer("h", kd.f16, (DimOf("h", 0),), BufferRole.PARAM, Scope.GLOBAL)
T = Buffer("t", kd.f32, (Const(4, kd.i64),), BufferRole.TEMP, Scope.STACK)
PARAMS = (
    Param("x", kd.f32, 1),
    Param("y", kd.f32, 1),
    Param("h", kd.f16, 1),
    Param("s", kd.f64, None),
)


def kernel(*body, buffers=(X, Y, H, T), results=()):
    return Kernel("k", PARAMS, buffers, tuple(body), results)


def x_at(i=I):
    return Load("x", (i,), kd.f32)


def over_x(*body, var="i"):
    return Loop(var, N, LoopKind.PARALLEL, tuple(body))


def good():
    """y[i] = x[i] * f32(s), a local, a temp and a check: every statement kind, valid."""
    acc = LocalVar("acc", kd.f32)
    return kernel(
        Check(Binary(BinaryOp.LE, N, DimOf("y", 0), kd.bool_), CheckKind.SHAPE, "n"),
        Allocate("t"),
        DeclareLocal("acc", kd.f32, Const(0.0, kd.f32)),
        over_x(
            Store(
                "y",
                (I,),
                Binary(BinaryOp.MUL, x_at(), Cast(ScalarArg("s", kd.f64), kd.f32), kd.f32),
            ),
            Assign("acc", Binary(BinaryOp.ADD, acc, x_at(), kd.f32)),
            If(Binary(BinaryOp.LT, I, Const(4, kd.i64), kd.bool_), (Store("t", (I,), acc),)),
        ),
    )


def fails(k, *needles, stage="traced"):
    with pytest.raises(kd.CompileError) as info:
        verify(k, stage)
    message = str(info.value)
    assert f"after stage '{stage}'" in message and "kdsl bug" in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"


def test_valid_kernel_passes_and_is_returned_unchanged():
    k = good()
    assert verify(k, "traced") is k


def test_scheduled_stage_allows_execution_kinds():
    k = kernel(replace(over_x(Store("y", (I,), x_at())), exec=LoopExec.VECTORIZED, width=8))
    assert verify(k, "scheduled") is k


def test_unknown_stage():
    fails(good(), "unknown stage 'parsed'", stage="parsed")


def test_execution_kind_before_scheduling():
    k = kernel(replace(over_x(Store("y", (I,), x_at())), exec=LoopExec.PARALLEL))
    fails(k, "loop i has execution parallelized before scheduling")


def test_unknown_buffer_in_a_store():
    fails(kernel(over_x(Store("z", (I,), x_at()))), "access to unknown buffer z")


def test_unknown_buffer_in_a_load():
    fails(kernel(over_x(Store("y", (I,), Load("z", (I,), kd.f32)))), "bad access z[i]")


def test_unknown_buffer_in_a_shape():
    fails(
        kernel(over_x(Store("y", (I,), Cast(DimOf("z", 0), kd.f32)))), "z.shape[0] does not exist"
    )


def test_axis_out_of_range_in_a_shape():
    fails(kernel(Loop("i", DimOf("x", 1), LoopKind.PARALLEL, ())), "x.shape[1] does not exist")


def test_wrong_number_of_subscripts_in_a_store():
    fails(kernel(over_x(Store("y", (I, I), x_at()))), "y has 1 dimensions, subscripted with 2")


def test_wrong_number_of_subscripts_in_a_load():
    fails(kernel(over_x(Store("y", (I,), Load("x", (), kd.f32)))), "bad access x[]")


def test_float_subscript():
    fails(
        kernel(Store("y", (Const(0.0, kd.f32),), x_at(Const(0, kd.i64)))), "subscript of y is f32"
    )


def test_load_typed_unlike_its_buffer():
    fails(kernel(over_x(Store("y", (I,), Load("x", (I,), kd.f64)))), "load from x typed f64")


def test_binary_operands_of_different_dtypes():
    value = Binary(BinaryOp.ADD, x_at(), Const(1.0, kd.f64), kd.f32)
    fails(kernel(over_x(Store("y", (I,), value))), "operands of x[i] + 1.0 differ: f32, f64")


def test_binary_result_typed_wrongly():
    value = Binary(BinaryOp.ADD, x_at(), x_at(), kd.f64)
    fails(kernel(over_x(Store("y", (I,), Cast(value, kd.f32)))), "x[i] + x[i] typed f64")


def test_comparison_must_be_bool():
    cond = Binary(BinaryOp.LT, x_at(), x_at(), kd.f32)
    fails(kernel(over_x(Store("y", (I,), cond))), "x[i] < x[i] typed f32")


def test_store_of_the_wrong_dtype():
    fails(kernel(over_x(Store("y", (I,), Cast(x_at(), kd.f64)))), "store of f64 into y (f32)")


def test_loop_variable_out_of_scope():
    fails(kernel(over_x(), Store("y", (I,), x_at())), "loop variable i used outside its loop")


def test_loop_variable_in_its_own_extent():
    fails(kernel(Loop("i", I, LoopKind.PARALLEL, ())), "loop variable i used outside its loop")


def test_loop_variable_in_a_buffer_shape():
    bad_t = replace(T, shape=(I,))
    fails(kernel(buffers=(X, Y, H, bad_t)), "loop variable i used outside its loop")


def test_local_read_after_its_block_ends():
    inner = over_x(DeclareLocal("acc", kd.f32, x_at()))
    fails(
        kernel(inner, Store("y", (Const(0, kd.i64),), LocalVar("acc", kd.f32))),
        "local acc read out of scope",
    )


def test_local_read_with_the_wrong_dtype():
    body = (
        DeclareLocal("acc", kd.f32, Const(0.0, kd.f32)),
        Store("y", (Const(0, kd.i64),), Cast(LocalVar("acc", kd.f64), kd.f32)),
    )
    fails(kernel(*body), "local acc read out of scope or with the wrong dtype")


def test_assignment_to_an_undeclared_local():
    fails(kernel(Assign("acc", Const(0.0, kd.f32))), "assignment to undeclared local acc")


def test_local_initialised_with_another_dtype():
    fails(
        kernel(DeclareLocal("acc", kd.f32, Const(0.0, kd.f64))),
        "local acc: f32 initialised with f64",
    )


def test_local_assigned_another_dtype():
    body = (DeclareLocal("acc", kd.f32, Const(0.0, kd.f32)), Assign("acc", Const(0, kd.i32)))
    fails(kernel(*body), "local acc: f32 assigned i32")


def test_duplicate_loop_names_nested():
    fails(kernel(over_x(over_x())), "two loops are named i")


def test_duplicate_loop_names_siblings():
    fails(kernel(over_x(), over_x()), "two loops are named i")


def test_float_loop_extent():
    fails(
        kernel(Loop("i", Const(3.0, kd.f32), LoopKind.SERIAL, ())),
        "extent of loop i is f32, not an integer",
    )


def test_half_precision_arithmetic_must_be_widened():
    h = Load("h", (I,), kd.f16)
    value = Binary(BinaryOp.ADD, h, h, kd.f16)
    fails(kernel(over_x(Store("h", (I,), value))), "arithmetic on f16", "widened to f32")


def test_half_precision_unary_must_be_widened():
    value = Unary(UnaryOp.NEG, Load("h", (I,), kd.f16), kd.f16)
    fails(kernel(over_x(Store("h", (I,), value))), "arithmetic on f16")


def test_half_precision_loads_casts_and_stores_are_fine():
    h = Load("h", (I,), kd.f16)
    value = Cast(Binary(BinaryOp.ADD, Cast(h, kd.f32), x_at(), kd.f32), kd.f16)
    k = kernel(over_x(Store("h", (I,), value)))
    assert verify(k, "traced") is k


def test_non_bool_if_condition():
    fails(kernel(over_x(If(x_at(), ()))), "condition x[i] is f32, not bool")


def test_non_bool_check_condition():
    fails(kernel(Check(N, CheckKind.SHAPE, "n")), "condition x.shape[0] is i64, not bool")


def test_non_bool_select_condition():
    value = Select(I, x_at(), x_at(), kd.f32)
    fails(kernel(over_x(Store("y", (I,), value))), "condition i is i64, not bool")


def test_select_branches_of_different_dtypes():
    value = Select(Const(True, kd.bool_), x_at(), Const(0.0, kd.f64), kd.f32)
    fails(kernel(over_x(Store("y", (I,), value))), "branches of where(True, x[i], 0.0) differ")


def test_unknown_scalar_parameter():
    value = Cast(ScalarArg("eps", kd.f64), kd.f32)
    fails(kernel(Store("y", (Const(0, kd.i64),), value)), "unknown scalar parameter eps")


def test_allocate_of_a_parameter():
    fails(kernel(Allocate("x")), "allocate of x, which is not a temporary")


def test_result_that_is_not_a_result_buffer():
    fails(kernel(results=("t",)), "result 't' is not a RESULT buffer")


def test_two_buffers_with_one_name():
    fails(kernel(buffers=(X, Y, H, T, replace(T, dtype=kd.f64))), "two buffers share a name")


def test_fma_of_integers():
    from kdsl.ir.nodes import Fma

    one = Const(1, kd.i64)
    fails(
        kernel(Store("y", (one,), Cast(Fma(one, one, one, kd.i64), kd.f32))),
        "needs three operands of one float dtype",
    )


def test_error_names_the_kernel():
    with pytest.raises(kd.CompileError, match="in kernel 'k'"):
        verify(kernel(Assign("acc", Const(0.0, kd.f32))), "traced")


def test_float_only_unary_on_an_integer():
    xi = Buffer("x", kd.i32, (N,), BufferRole.PARAM, Scope.GLOBAL)
    value = Unary(UnaryOp.EXP, Load("x", (I,), kd.i32), kd.i32)
    k = Kernel("k", (Param("x", kd.i32, 1),), (xi,), (over_x(Store("x", (I,), value)),))
    fails(k, "exp of i32", "needs a float")


def test_bitwise_operator_on_floats():
    value = Binary(BinaryOp.AND, x_at(), Const(1.0, kd.f32), kd.f32)
    fails(kernel(over_x(Store("y", (I,), value))), "bitwise & on f32")
    value = Unary(UnaryOp.INVERT, x_at(), kd.f32)
    fails(kernel(over_x(Store("y", (I,), value))), "bitwise ~ on f32")


def test_invert_of_bool_is_logical_not():
    p = Binary(BinaryOp.LT, x_at(), Const(0.0, kd.f32), kd.bool_)
    cond = Unary(UnaryOp.INVERT, p, kd.bool_)
    verify(kernel(over_x(If(cond, (Store("y", (I,), x_at()),)))), "traced")


def test_every_traced_kernel_verifies():
    """The tracer's output passes the verifier (the tracer runs it, and so can we)."""

    @kd.kernel
    def k(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i] = kd.sum(x[i, j] * x[i, j], over=j) ** 0.5

    traced = k.ir(np.ones((3, 2), np.float32), np.ones(3, np.float32)).kernel
    assert verify(traced, "traced") is traced
    lowered = k.lowered(np.ones((3, 2), np.float32), np.ones(3, np.float32)).kernel
    assert verify(lowered, "scheduled") is lowered
