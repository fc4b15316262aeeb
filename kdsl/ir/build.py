"""Builders for index arithmetic (i64), as the passes and schedules write it, and the
identity of each reduction operator."""

from __future__ import annotations

from kdsl import types as T
from kdsl.ir.nodes import Binary, BinaryOp, Const, Expr


def index_const(v: int) -> Const:
    return Const(v, T.INDEX)


def index_op(op: BinaryOp, a: Expr, b: Expr) -> Expr:
    """`a op b` on indices: an index, or a bool for a comparison."""
    return Binary(op, a, b, T.bool_ if op.is_comparison else T.INDEX)


def reduction_identity(op: BinaryOp, dtype: T.DType) -> Const:
    """The value a reduction with `op` starts from (what combining with it changes nothing)."""
    if op is BinaryOp.ADD:
        return Const(False if dtype.is_bool else 0.0 if dtype.is_float else 0, dtype)
    if op is BinaryOp.MUL:
        return Const(True if dtype.is_bool else 1.0 if dtype.is_float else 1, dtype)
    if dtype.is_float:
        return Const(float("-inf") if op is BinaryOp.MAX else float("inf"), dtype)
    if dtype.is_bool:
        return Const(op is BinaryOp.MIN, dtype)
    lo = -(1 << (dtype.bits - 1)) if dtype.is_signed else 0
    hi = (1 << (dtype.bits - 1)) - 1 if dtype.is_signed else (1 << dtype.bits) - 1
    return Const(lo if op is BinaryOp.MAX else hi, dtype)
