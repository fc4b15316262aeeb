"""Hoist bounds checks: prove subscripts in bounds with one check per call.

For a subscript whose least and greatest values over the loops are expressions of the
argument shapes and scalars — linear in the enclosing loop variables, with
coefficients that may be shapes or scalars (`x[2*i + 1]`, `y[i, j - 1]`, a flattened
`x[i * n + j]`), also through `// c`, `min`/`max` with a shape, and locals given one
value — with loop extents known before the kernel runs, one check at the top of the
kernel, "every enclosing loop is empty, or lo >= 0 and hi < dim", replaces a check per
element, so wrong shapes raise ShapeError instead of reading out of bounds. The bounds
are exact (both are taken by some iteration), so a check never refuses a call that
stays in bounds; they are computed in f64, where a product too large for i64 stays too
large instead of wrapping. Subscripts under `kd.when` or in a `kd.where` branch may be
guarded by design, and data-dependent ones can't be proved: `checks=True` covers those
at run time.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any

from kdsl import types as T
from kdsl.ir.nodes import (
    Binary,
    BinaryOp,
    Cast,
    Check,
    CheckKind,
    Const,
    DeclareLocal,
    Expr,
    If,
    Kernel,
    Load,
    LocalVar,
    Loop,
    LoopVar,
    Select,
    Stmt,
    Store,
    Unary,
    UnaryOp,
)
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import (
    children,
    local_definitions,
    map_expr,
    stmt_exprs,
    walk_expr,
    walk_stmts,
)


def _i64(op: BinaryOp, a: Expr, b: Expr) -> Expr:
    return Binary(op, a, b, T.bool_ if op.is_comparison else a.dtype)


def _kernel_level(e: Expr) -> bool:
    return not any(isinstance(x, LoopVar | LocalVar | Load) for x in walk_expr(e))


class _Hoister:
    def __init__(self, kernel: Kernel) -> None:
        self.shapes = {b.name: b.shape for b in kernel.buffers}
        self.values = _single_values(kernel.body)
        self.checks: list[Check] = []
        self.visited: set[int] = set()  # shared sub-expressions, by identity (kept alive)

    def block(self, body: tuple[Stmt, ...], extents: dict[str, Expr], known: bool) -> None:
        for s in body:
            match s:
                case Loop(var=var, extent=ext, body=inner):
                    ok = known and _kernel_level(ext)
                    self.block(inner, {**extents, var: ext}, ok)
                case If():
                    continue  # guarded on purpose
                case _ if known:
                    for e in stmt_exprs(s):
                        self.expr(e, extents)
                    if isinstance(s, Store):
                        self.access(s.buffer, s.index, extents, s)

    def expr(self, e: Expr, extents: dict[str, Expr]) -> None:
        if id(e) in self.visited:
            return
        self.visited.add(id(e))
        if isinstance(e, Select):
            self.expr(e.cond, extents)  # the branches may be guarded on purpose
            return
        if isinstance(e, Load):
            self.access(e.buffer, e.index, extents, e)
        for c in children(e):
            self.expr(c, extents)

    def access(
        self, buffer: str, index: tuple[Expr, ...], extents: dict[str, Expr], node: Load | Store
    ) -> None:
        for axis, sub in enumerate(index):
            if isinstance(sub, LoopVar):
                continue  # a bare index: the shape checks of the trace cover it
            span = value_range(self.inlined(sub), extents)
            if span is None:
                continue
            lo, hi = span
            dim = self.shapes[buffer][axis]
            low, high = _f64_op(BinaryOp.GE, lo, _ZERO), _f64_op(BinaryOp.LT, hi, _f64(dim))
            cond = high if low == Const(True, T.bool_) else _i64(BinaryOp.AND, low, high)
            for ext in extents.values():
                cond = _i64(BinaryOp.OR, _i64(BinaryOp.LE, ext, Const(0, T.i64)), cond)
            what = f"subscript {format_expr(sub)} of '{buffer}' stays in [0, {format_expr(dim)})"
            check = Check(cond, CheckKind.SHAPE, what, loc=node.loc)
            if all(check != c for c in self.checks):
                self.checks.append(check)

    def inlined(self, e: Expr) -> Expr:
        """`e` with each index local that is given one value (its declaration's) replaced
        by that value, as far as that goes."""
        return map_expr(
            e,
            lambda x: (
                self.inlined(self.values[x.name])
                if isinstance(x, LocalVar) and x.name in self.values
                else None
            ),
        )


def _single_values(body: tuple[Stmt, ...]) -> dict[str, Expr]:
    """The index locals given exactly one value, and that value (of the same dtype: a
    narrower local would wrap)."""
    values: dict[str, list[Expr]] = {}
    for name, value in local_definitions(body):
        values.setdefault(name, []).append(value)
    declared = {s.name: s.dtype for s in walk_stmts(body) if isinstance(s, DeclareLocal)}
    return {
        name: vs[0]
        for name, vs in values.items()
        if len(vs) == 1 and declared.get(name) == T.INDEX and vs[0].dtype == T.INDEX
    }


_ZERO, _ONE = Const(0.0, T.f64), Const(1.0, T.f64)
Linear = tuple[Expr, dict[str, Expr]]  # f64: the rest, and each loop variable's coefficient


def _f64(e: Expr) -> Expr:
    if isinstance(e, Const) and not e.dtype.is_bool:
        return Const(float(e.value), T.f64)
    return e if e.dtype == T.f64 else Cast(e, T.f64)


def _f64_op(op: BinaryOp, a: Expr, b: Expr) -> Expr:
    """a op b in f64, constants folded (the checks are read in printed IR)."""
    if isinstance(a, Const) and isinstance(b, Const) and op in _FOLD:
        return Const(_FOLD[op](a.value, b.value), T.bool_ if op.is_comparison else T.f64)
    if op is BinaryOp.ADD and a == _ZERO or op is BinaryOp.MUL and a == _ONE:
        return b
    if op in (BinaryOp.ADD, BinaryOp.SUB) and b == _ZERO or op is BinaryOp.MUL and b == _ONE:
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


def linear(e: Expr, loops: Collection[str]) -> Linear | None:
    """Index `e` as rest + Σ coefficient·loop over the loop variables `loops`, the rest
    and the coefficients f64 expressions of shapes, scalars and constants; None when it
    is not of that form (a product of two loop variables, data, a narrower dtype)."""
    if _kernel_level(e):
        return _f64(e), {}
    if e.dtype != T.INDEX:
        return None
    match e:
        case LoopVar(name=n) if n in loops:
            return _ZERO, {n: _ONE}
        case Binary(op=BinaryOp.ADD | BinaryOp.SUB as op, lhs=a, rhs=b):
            x, y = linear(a, loops), linear(b, loops)
            if x is None or y is None:
                return None
            terms = dict(x[1])
            for var, c in y[1].items():
                terms[var] = _f64_op(op, terms.get(var, _ZERO), c)
            return _f64_op(op, x[0], y[0]), terms
        case Binary(op=BinaryOp.MUL, lhs=a, rhs=b):
            x, y = linear(a, loops), linear(b, loops)
            if x is None or y is None or (x[1] and y[1]):
                return None
            (k, _), other = (x, y) if not x[1] else (y, x)
            scaled = {var: _f64_op(BinaryOp.MUL, c, k) for var, c in other[1].items()}
            return _f64_op(BinaryOp.MUL, other[0], k), scaled
    return None


def value_range(e: Expr, extents: dict[str, Expr]) -> tuple[Expr, Expr] | None:
    """The least and the greatest value index `e` takes over every iteration of the
    loops `extents` (each non-empty), as f64 expressions of shapes and scalars, or None.
    Both are taken (linear forms at the corners of the loops' box, then functions that
    keep order), so a check against them is exact."""
    form = linear(e, extents)
    if form is not None:
        lo = hi = form[0]
        for var, c in form[1].items():
            span = _f64_op(BinaryOp.MUL, c, _f64_op(BinaryOp.SUB, _f64(extents[var]), _ONE))
            if isinstance(c, Const):  # (its sign known: one end moves)
                lo, hi = (
                    (lo, _f64_op(BinaryOp.ADD, hi, span))
                    if c.value > 0
                    else (_f64_op(BinaryOp.ADD, lo, span), hi)
                )
                continue
            lo = _f64_op(BinaryOp.ADD, lo, _f64_op(BinaryOp.MIN, span, _ZERO))
            hi = _f64_op(BinaryOp.ADD, hi, _f64_op(BinaryOp.MAX, span, _ZERO))
        return lo, hi
    match e:
        case Binary(op=BinaryOp.FLOORDIV, lhs=a, rhs=Const(value=int(divisor))) if (
            divisor > 0 and e.dtype == T.INDEX
        ):
            inner = value_range(a, extents)
            if inner is None:
                return None
            by = Const(float(divisor), T.f64)
            return tuple(  # type: ignore[return-value]
                Unary(UnaryOp.FLOOR, _f64_op(BinaryOp.DIV, v, by), T.f64) for v in inner
            )
        case Binary(op=BinaryOp.MIN | BinaryOp.MAX as op, lhs=a, rhs=b) if e.dtype == T.INDEX:
            varying, bound = (a, b) if _kernel_level(b) else (b, a)
            inner = value_range(varying, extents) if _kernel_level(bound) else None
            if inner is None:
                return None
            return _f64_op(op, inner[0], _f64(bound)), _f64_op(op, inner[1], _f64(bound))
    return None


def hoist_bounds_checks(kernel: Kernel) -> Kernel:
    """Add one shape check per affine subscript that isn't already proven (see module doc)."""
    hoister = _Hoister(kernel)
    hoister.block(kernel.body, {}, True)
    leading = 0
    while leading < len(kernel.body) and isinstance(kernel.body[leading], Check):
        leading += 1
    body = (*kernel.body[:leading], *hoister.checks, *kernel.body[leading:])
    return replace(kernel, body=body)
