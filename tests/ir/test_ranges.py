"""Value ranges of index expressions (kdsl/ir/ranges.py): both ends are values the
expression takes over the loops' box (a check against them is exact), or none."""

from __future__ import annotations

import pytest

import kdsl as kd
from kdsl.ir.evaluate import evaluate
from kdsl.ir.nodes import Binary, BinaryOp, Cast, Const, DimOf, Load, LocalVar, LoopVar
from kdsl.ir.ranges import value_range
from kdsl.ir.visit import map_expr

I, J = LoopVar("i"), LoopVar("j")  # noqa: E741
ADD, SUB, MUL = BinaryOp.ADD, BinaryOp.SUB, BinaryOp.MUL


def c(v, d=kd.i64):
    return Const(v, d)


def b(op, x, y):
    return Binary(op, x, y, kd.i64)


N = DimOf("x", 0)  # a shape: 5 below
FLOOR, MIN, MAX, MOD = BinaryOp.FLOORDIV, BinaryOp.MIN, BinaryOp.MAX, BinaryOp.MOD
EXTENTS = {"i": c(4), "j": c(3)}


def _at(expr, values):
    """`expr` with its loop variables replaced by `values`."""
    return map_expr(expr, lambda e: c(values[e.name]) if isinstance(e, LoopVar) else None)


@pytest.mark.parametrize(
    "expr",
    [
        c(3),
        I,
        b(ADD, I, c(2)),
        b(SUB, c(5), I),
        b(ADD, b(MUL, c(2), I), c(1)),
        b(MUL, b(ADD, I, c(1)), c(3)),
        b(SUB, I, J),
        b(SUB, I, I),  # cancelled terms: the value 0 only
        b(ADD, b(MUL, I, N), J),  # flattened: i·n + j
        b(MUL, b(SUB, c(1), I), N),  # a shape times a negative span
        b(SUB, b(MUL, J, N), b(MUL, I, b(ADD, N, c(1)))),
        b(FLOOR, b(SUB, b(MUL, c(3), I), c(4)), c(2)),  # floor division of negatives too
        b(MIN, b(ADD, I, J), b(SUB, N, c(2))),
        b(MAX, c(2), b(SUB, I, J)),
        b(FLOOR, b(MIN, b(MUL, I, N), c(7)), c(3)),
        b(MOD, b(ADD, I, c(1)), N),  # within one period: 1 … 4
        b(MOD, b(ADD, I, J), c(3)),  # across one: 0 … 2
        b(MOD, b(SUB, I, c(2)), N),  # negatives, floor modulo: 3, 4, 0, 1
        b(MOD, b(SUB, c(9), b(ADD, I, J)), N),
        b(MOD, b(ADD, I, c(1)), c(0)),  # a % 0 is 0
        b(MOD, b(ADD, I, c(1)), c(-3)),  # floor modulo by a negative: -2 … 0
        b(MOD, b(ADD, I, c(4)), c(-7)),  # within one period of it: -3 … 0
        b(FLOOR, I, c(-2)),  # by a negative: order reversed
        b(FLOOR, b(ADD, I, J), c(0)),  # a // 0 is 0
        b(FLOOR, b(SUB, b(MUL, c(3), J), I), N),  # by a shape
        b(FLOOR, b(MUL, c(7), I), b(SUB, c(2), N)),  # by a negative made of a shape
        b(MOD, b(FLOOR, b(ADD, I, J), c(2)), c(2)),  # a floor division steps by one too
        b(MOD, b(FLOOR, b(SUB, c(8), I), N), b(SUB, N, c(3))),
        b(ADD, b(FLOOR, I, c(3)), c(1)),  # shifted, scaled or subtracted from a shape
        b(SUB, N, b(MOD, b(ADD, I, J), c(4))),
        b(MUL, c(-3), b(MIN, b(ADD, I, J), c(4))),
        b(MUL, b(MOD, I, c(3)), b(SUB, c(2), N)),
    ],
)
def test_value_range_is_the_least_and_greatest_value(expr):
    """Both ends are values the expression takes (so a check against them is exact)."""
    found = value_range(expr, EXTENTS)
    lo, hi = found.lo, found.hi
    shapes = {"x": (5,)}
    taken = [evaluate(_at(expr, {"i": i, "j": j}), shapes, {}) for i in range(4) for j in range(3)]
    assert (evaluate(lo, shapes, {}), evaluate(hi, shapes, {})) == (min(taken), max(taken))


@pytest.mark.parametrize(
    "expr",
    [
        b(MUL, I, J),  # not linear
        b(MUL, I, I),
        Load("idx", (I,), kd.i64),  # data-dependent
        LocalVar("k", kd.i64),
        b(MOD, b(MUL, c(2), I), c(4)),  # even values only: 3 is never taken
        b(FLOOR, b(MUL, I, J), c(2)),
        b(MIN, I, J),  # extremes of the two together: not always taken
        b(ADD, I, LoopVar("t")),  # a loop whose extent is not known
        Binary(ADD, Cast(I, kd.i32), c(1, kd.i32), kd.i32),  # i32 arithmetic may wrap
    ],
)
def test_no_value_range(expr):
    assert value_range(expr, EXTENTS) is None
