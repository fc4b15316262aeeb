"""The least and the greatest value of an index expression over a box of loops, as
expressions of the argument shapes and scalars (and of names fixed before the loops
start: outer loops' variables, locals) that a check before those loops can evaluate
(kdsl/ir/passes/bounds.py checks subscripts against them).

Handled: expressions linear in the loop variables whose coefficients may be shapes,
scalars or fixed names (`2*i + 1`, a flattened `i*n + j`); around such an expression,
`// d`, `min`/`max` with, and `+`, `-`, `*` by such a value; and `% m` (a circular
`x[(i + 1) % n]`; floor modulo, `a % 0` being 0) of a form that takes every integer
between its extremes (coefficients ±1, or such a form floor-divided). Over a box (each
loop from 0 to its extent - 1, independently of the others) a linear form takes its
extremes at corners, and those functions of one value keep or reverse order (and `%`
of a form that takes every integer between its extremes has known extremes too), so
both bounds are values the expression takes: a check against them is exact. The
bounds are f64, where a product too large for i64 stays too large instead of
wrapping; they are exact while the values involved stay below 2**53 in magnitude
(subscripts of real arrays do). Expressions are analysed as DAGs: a sub-expression
shared by object identity is looked at once.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kdsl import types as T
from kdsl.ir.nodes import (
    Binary,
    BinaryOp,
    Cast,
    Const,
    Expr,
    Load,
    LocalVar,
    LoopVar,
    ScalarArg,
    Select,
    Unary,
    UnaryOp,
)
from kdsl.ir.visit import children

ZERO, ONE = Const(0.0, T.f64), Const(1.0, T.f64)
Linear = tuple[Expr, dict[str, Expr]]  # f64: the rest, and each loop variable's coefficient


@dataclass(frozen=True)
class Range:
    lo: Expr  # f64
    hi: Expr  # f64
    scalars: bool  # whether a scalar argument (or a fixed name) is among what they're made of


def value_range(
    e: Expr, extents: Mapping[str, Expr], fixed: frozenset[str] = frozenset()
) -> Range | None:
    """The least and the greatest value index `e` takes over every iteration of the
    loops `extents` (each non-empty), or None where kdsl can't say (see the module).
    The bounds and the extents are made of shapes, scalars, constants and the loop
    variables, locals and arrays named in `fixed` (outer loops' variables, and locals
    and array data that keep their value during those loops: the bounds are then
    those of one run of the loops)."""
    forms = _Forms(extents, fixed)
    found = forms.range(e)
    return None if found is None else Range(*found, forms.scalars)


def kernel_level(e: Expr, fixed: frozenset[str] = frozenset()) -> bool:
    """Made of shapes, scalars, constants and the loop variables, locals and arrays in
    `fixed` only (no other loop, local or data)."""
    return _Forms({}, fixed).kernel_level(e)


def f64(e: Expr) -> Expr:
    if isinstance(e, Const) and not e.dtype.is_bool:
        return Const(float(e.value), T.f64)
    return e if e.dtype == T.f64 else Cast(e, T.f64)


def f64_op(op: BinaryOp, a: Expr, b: Expr) -> Expr:
    """a op b in f64, constants folded (the checks are read in printed IR)."""
    if isinstance(a, Const) and isinstance(b, Const) and op in _FOLD:
        return Const(_FOLD[op](a.value, b.value), T.bool_ if op.is_comparison else T.f64)
    if op is BinaryOp.MUL and ZERO in (a, b):
        return ZERO
    if op is BinaryOp.ADD and a == ZERO or op is BinaryOp.MUL and a == ONE:
        return b
    if op in (BinaryOp.ADD, BinaryOp.SUB) and b == ZERO or op is BinaryOp.MUL and b == ONE:
        return a
    return Binary(op, a, b, T.bool_ if op.is_comparison else T.f64)


_FOLD: dict[BinaryOp, Callable[[Any, Any], Any]] = {
    BinaryOp.ADD: operator.add,
    BinaryOp.SUB: operator.sub,
    BinaryOp.MUL: operator.mul,
    BinaryOp.MIN: min,
    BinaryOp.MAX: max,
    BinaryOp.GE: operator.ge,
    BinaryOp.LT: operator.lt,
}


class _Forms:
    """The analysis of one expression over the loops `extents`, each sub-expression's
    results kept by identity."""

    def __init__(self, extents: Mapping[str, Expr], fixed: frozenset[str]) -> None:
        self.extents = extents
        self.fixed = fixed
        self.scalars = False
        self.levels: dict[int, tuple[Expr, bool]] = {}
        self.forms: dict[int, tuple[Expr, Linear | None]] = {}

    def kernel_level(self, e: Expr) -> bool:
        """Made of shapes, scalars, constants and `fixed` names only (see kernel_level)."""
        hit = self.levels.get(id(e))
        if hit is None or hit[0] is not e:
            named = isinstance(e, LoopVar | LocalVar)
            level = (
                e.name in self.fixed  # type: ignore[union-attr]
                if named
                else (not isinstance(e, Load) or e.buffer in self.fixed)
                and all(self.kernel_level(c) for c in children(e))
            )
            self.scalars |= isinstance(e, ScalarArg) or named and level
            hit = self.levels[id(e)] = (e, level)
        return hit[1]

    def linear(self, e: Expr) -> Linear | None:
        """Index `e` as rest + Σ coefficient·loop, or None when it is not of that form (a
        product of two loop variables, data, a local, a narrower dtype)."""
        hit = self.forms.get(id(e))
        if hit is None or hit[0] is not e:
            hit = self.forms[id(e)] = (e, self._linear(e))
        return hit[1]

    def _linear(self, e: Expr) -> Linear | None:
        if self.kernel_level(e):
            return f64(e), {}
        if e.dtype != T.INDEX:
            return None
        match e:
            case LoopVar(name=n) if n in self.extents:
                return ZERO, {n: ONE}
            case Binary(op=BinaryOp.ADD | BinaryOp.SUB as op, lhs=a, rhs=b):
                x, y = self.linear(a), self.linear(b)
                if x is None or y is None:
                    return None
                terms = dict(x[1])
                for var, c in y[1].items():
                    terms[var] = f64_op(op, terms.get(var, ZERO), c)
                return f64_op(op, x[0], y[0]), terms
            case Binary(op=BinaryOp.MUL, lhs=a, rhs=b):
                x, y = self.linear(a), self.linear(b)
                if x is None or y is None or (x[1] and y[1]):
                    return None
                (k, _), other = (x, y) if not x[1] else (y, x)
                scaled = {var: f64_op(BinaryOp.MUL, c, k) for var, c in other[1].items()}
                return f64_op(BinaryOp.MUL, other[0], k), scaled
        return None

    def range(self, e: Expr) -> tuple[Expr, Expr] | None:
        form = self.linear(e)
        if form is not None:
            return self._corners(form)
        match e:
            case Binary(op=BinaryOp.FLOORDIV, lhs=a, rhs=d) if (
                e.dtype == T.INDEX and self.kernel_level(d)
            ):
                inner = self.range(a)
                return None if inner is None else _divided(inner, f64(d))
            case Binary(op=BinaryOp.MOD, lhs=a, rhs=m) if (
                e.dtype == T.INDEX and self.kernel_level(m) and self._steps_by_one(a)
            ):
                return self._modulo(a, f64(m))
            case Binary(op=BinaryOp.MIN | BinaryOp.MAX as op, lhs=a, rhs=b) if e.dtype == T.INDEX:
                varying, bound = (a, b) if self.kernel_level(b) else (b, a)
                inner = self.range(varying) if self.kernel_level(bound) else None
                if inner is None:
                    return None
                return f64_op(op, inner[0], f64(bound)), f64_op(op, inner[1], f64(bound))
            case Binary(op=BinaryOp.ADD | BinaryOp.SUB | BinaryOp.MUL as op, lhs=a, rhs=b) if (
                e.dtype == T.INDEX and (self.kernel_level(a) or self.kernel_level(b))
            ):
                return self._shifted(op, a, b)
        return None

    def _shifted(self, op: BinaryOp, a: Expr, b: Expr) -> tuple[Expr, Expr] | None:
        """`a op b` with one side made of shapes and scalars (k) and the other's range
        known (`j // 4 + 1`, `n - j % n`, `2 * (j // 4)`): a function of one value that
        keeps or reverses order, so its extremes are at the other's."""
        k_left = self.kernel_level(a)
        k, other = (f64(a), b) if k_left else (f64(b), a)
        inner = self.range(other)
        if inner is None:
            return None
        lo, hi = (f64_op(op, k, v) if k_left else f64_op(op, v, k) for v in inner)
        if op is BinaryOp.ADD or op is BinaryOp.SUB and not k_left:
            return lo, hi
        if op is BinaryOp.SUB:
            return hi, lo
        return f64_op(BinaryOp.MIN, lo, hi), f64_op(BinaryOp.MAX, lo, hi)

    def _steps_by_one(self, e: Expr) -> bool:
        """Whether `e` takes every integer between its extremes over the box: linear
        with every coefficient ±1, or such a form floor-divided by shapes and scalars."""
        if isinstance(e, Binary) and e.op is BinaryOp.FLOORDIV and self.kernel_level(e.rhs):
            return self._steps_by_one(e.lhs)
        form = self.linear(e)
        return form is not None and all(c in (ONE, Const(-1.0, T.f64)) for c in form[1].values())

    def _modulo(self, a: Expr, m: Expr) -> tuple[Expr, Expr]:
        """a % m as kdsl computes it (floor modulo; a % 0 is 0) for `a` taking every
        integer of [lo, hi]: the ends' own values where [lo, hi] is within one period of
        m (the modulo grows with a there), else the whole period: 0 and m - 1 for m > 0,
        m + 1 and 0 for m < 0 (both taken where a crosses a multiple of m)."""
        lo, hi = self.range(a)  # type: ignore[misc]
        zero = Binary(BinaryOp.EQ, m, ZERO, T.bool_)
        divisor = Select(zero, ONE, m, T.f64)  # (no division by 0 where a host evaluates it)
        floor_lo, floor_hi = (
            Unary(UnaryOp.FLOOR, f64_op(BinaryOp.DIV, v, divisor), T.f64) for v in (lo, hi)
        )
        same = Binary(BinaryOp.EQ, floor_lo, floor_hi, T.bool_)
        positive = Binary(BinaryOp.GT, m, ZERO, T.bool_)
        ends = (
            (lo, floor_lo, Select(positive, ZERO, f64_op(BinaryOp.ADD, m, ONE), T.f64)),
            (hi, floor_hi, Select(positive, f64_op(BinaryOp.SUB, m, ONE), ZERO, T.f64)),
        )
        low, high = (
            Select(
                zero,
                ZERO,
                Select(
                    same, f64_op(BinaryOp.SUB, v, f64_op(BinaryOp.MUL, divisor, q)), whole, T.f64
                ),
                T.f64,
            )
            for v, q, whole in ends
        )
        return low, high

    def _corners(self, form: Linear) -> tuple[Expr, Expr]:
        """A linear form's extremes over the box: each term at 0 or at its extent - 1."""
        lo = hi = form[0]
        for var, c in form[1].items():
            self.kernel_level(self.extents[var])  # (notes a scalar argument among them)
            span = f64_op(BinaryOp.MUL, c, f64_op(BinaryOp.SUB, f64(self.extents[var]), ONE))
            if isinstance(c, Const):  # (its sign known: one end moves)
                if c.value > 0:
                    hi = f64_op(BinaryOp.ADD, hi, span)
                else:
                    lo = f64_op(BinaryOp.ADD, lo, span)
                continue
            lo = f64_op(BinaryOp.ADD, lo, f64_op(BinaryOp.MIN, span, ZERO))
            hi = f64_op(BinaryOp.ADD, hi, f64_op(BinaryOp.MAX, span, ZERO))
        return lo, hi


def _divided(inner: tuple[Expr, Expr], by: Expr) -> tuple[Expr, Expr]:
    """The extremes of v // by (floor division; v // 0 is 0) for v taking its extremes
    `inner`: floor division by a positive number keeps order, by a negative one reverses it."""
    if isinstance(by, Const) and by.value > 0:
        return _floors(inner, by)
    if isinstance(by, Const):
        return _floors(inner[::-1], by) if by.value < 0 else (ZERO, ZERO)
    zero = Binary(BinaryOp.EQ, by, ZERO, T.bool_)
    up = _floors(inner, Select(zero, ONE, by, T.f64))  # (no division by 0 on a host)
    positive = Binary(BinaryOp.GT, by, ZERO, T.bool_)
    lo, hi = (Select(positive, x, y, T.f64) for x, y in (up, up[::-1]))
    return Select(zero, ZERO, lo, T.f64), Select(zero, ZERO, hi, T.f64)


def _floors(inner: tuple[Expr, Expr], by: Expr) -> tuple[Expr, Expr]:
    lo, hi = (Unary(UnaryOp.FLOOR, f64_op(BinaryOp.DIV, v, by), T.f64) for v in inner)
    return lo, hi
