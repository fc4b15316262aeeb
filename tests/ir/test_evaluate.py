"""evaluate: shape and scalar expressions computed on the host."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from kdsl.ir.evaluate import evaluate
from kdsl.ir.nodes import (
    Binary,
    BinaryOp,
    Cast,
    Const,
    DimOf,
    Load,
    LocalVar,
    LoopVar,
    ScalarArg,
    Select,
    Unary,
    UnaryOp,
)

SHAPES = {"x": (7, 3), "y": (0,)}
SCALARS = {"n": 5, "eps": 0.25}
M, K = DimOf("x", 0), DimOf("x", 1)


def c(v, d=kd.i64):
    return Const(v, d)


def b(op, lhs, rhs):
    return Binary(op, lhs, rhs, kd.bool_ if op.is_comparison else lhs.dtype)


def ev(e):
    return evaluate(e, SHAPES, SCALARS)


@pytest.mark.parametrize(
    "expr, value",
    [
        (M, 7),
        (K, 3),
        (DimOf("y", 0), 0),
        (ScalarArg("n", kd.i64), 5),
        (c(11), 11),
        (b(BinaryOp.ADD, M, c(1)), 8),
        (b(BinaryOp.SUB, K, M), -4),
        (b(BinaryOp.MUL, M, K), 21),
        (b(BinaryOp.FLOORDIV, M, c(2)), 3),
        (b(BinaryOp.FLOORDIV, c(-7), c(2)), -4),  # floor, as in Python
        (b(BinaryOp.MOD, c(-7), c(2)), 1),
        (b(BinaryOp.FLOORDIV, M, DimOf("y", 0)), 0),  # integer division by zero is 0
        (b(BinaryOp.MOD, M, DimOf("y", 0)), 0),
        (b(BinaryOp.MAX, M, K), 7),
        (b(BinaryOp.MIN, M, K), 3),
        (b(BinaryOp.SHL, K, c(2)), 12),
        (b(BinaryOp.AND, M, c(5)), 5),
        (b(BinaryOp.LE, K, M), True),
        (b(BinaryOp.EQ, K, M), False),
        (Unary(UnaryOp.NEG, M, kd.i64), -7),
        (Unary(UnaryOp.ABS, c(-4), kd.i64), 4),
        (Unary(UnaryOp.INVERT, c(True, kd.bool_), kd.bool_), False),
        (Unary(UnaryOp.INVERT, c(5), kd.i64), -6),
        (Select(b(BinaryOp.LT, K, M), K, M, kd.i64), 3),
        (Cast(ScalarArg("eps", kd.f64), kd.i64), 0),
        (Cast(c(-2.75, kd.f64), kd.i32), -2),  # truncation toward zero
        (Cast(M, kd.f32), 7.0),
        (Cast(M, kd.bool_), True),
    ],
)
def test_evaluates_shape_expressions(expr, value):
    got = ev(expr)
    assert got == value and type(got) is type(value)


def test_float_arithmetic_on_scalars():
    e = b(BinaryOp.DIV, ScalarArg("eps", kd.f64), Cast(K, kd.f64))
    assert ev(e) == pytest.approx(0.25 / 3)


def test_shapes_may_be_numpy_integers():
    assert evaluate(b(BinaryOp.ADD, M, c(1)), {"x": np.array([[0]] * 7).shape}, {}) == 8
    got = evaluate(M, {"x": (np.int64(7),)}, {})
    assert got == 7 and type(got) is int


def test_select_evaluates_only_the_chosen_branch():
    unknown = Load("x", (c(0), c(0)), kd.i64)  # not evaluable on the host
    assert ev(Select(c(True, kd.bool_), M, unknown, kd.i64)) == 7


@pytest.mark.parametrize(
    "expr",
    [
        Load("x", (c(0), c(0)), kd.f32),
        LoopVar("i"),
        LocalVar("acc", kd.i64),
        Unary(UnaryOp.EXP, c(1.0, kd.f64), kd.f64),
        b(BinaryOp.ADD, M, LoopVar("i")),
    ],
)
def test_run_time_values_are_rejected(expr):
    with pytest.raises(ValueError, match="cannot evaluate"):
        ev(expr)


def test_unknown_buffer_or_scalar_is_a_key_error():
    with pytest.raises(KeyError):
        ev(DimOf("z", 0))
    with pytest.raises(KeyError):
        ev(ScalarArg("m", kd.i64))


def test_returned_array_shape_uses_evaluate():
    """A kernel returning kd.empty of a computed shape gives an array of that shape."""

    @kd.kernel
    def pairs(x, n):
        i = kd.indices(x.shape[0] * 2 + 1)
        out = kd.empty((x.shape[0] * 2 + 1, n), kd.i32)
        j = kd.indices(n)
        out[i, j] = i * 10 + j
        return out

    x = np.zeros(3, np.float32)
    want = np.arange(7)[:, None] * 10 + np.arange(4)[None, :]
    for result in (pairs(x, 4), pairs.interpret(x, 4)):
        assert result.shape == (7, 4) and result.dtype == np.int32
        np.testing.assert_array_equal(result, want)
