"""Builders for index arithmetic (i64), as the passes and schedules write it."""

from __future__ import annotations

from kdsl import types as T
from kdsl.ir.nodes import Binary, BinaryOp, Const, Expr


def index_const(v: int) -> Const:
    return Const(v, T.INDEX)


def index_op(op: BinaryOp, a: Expr, b: Expr) -> Expr:
    """`a op b` on indices: an index, or a bool for a comparison."""
    return Binary(op, a, b, T.bool_ if op.is_comparison else T.INDEX)
