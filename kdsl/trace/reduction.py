"""The trace's one expression node of its own: a reduction not yet placed in the loop
nest (the recorder hoists it when the statement that holds it is recorded), and the walk
of trace-time expressions that looks inside it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kdsl.ir.nodes import BinaryOp, Expr
from kdsl.ir.visit import children, walk_expr
from kdsl.types import DType


@dataclass(frozen=True, eq=False)
class Reduction:
    """A trace-time expression: a reduction not yet placed in the loop nest."""

    op: BinaryOp  # ADD, MUL, MAX or MIN
    body: Expr
    over: tuple[str, ...]  # placeholders of the reduced indices
    dtype: DType
    label: str  # 'sum', 'max', … for the accumulator's name


def parts(e: Expr) -> tuple[Expr, ...]:
    """`e`'s sub-expressions, a reduction's body among them (the IR's `children` knows
    no Reduction: its walks raised TypeError inside the messages meant for the user)."""
    return (e.body,) if isinstance(e, Reduction) else children(e)


def walk_traced(e: Expr) -> Iterator[Expr]:
    """`walk_expr` over a trace-time expression: reductions and their bodies included."""
    return walk_expr(e, parts)
