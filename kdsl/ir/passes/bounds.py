"""Hoist bounds checks: prove affine subscripts in bounds with one check per call.

For a subscript that is affine in the enclosing loop variables (`x[2*i + 1]`,
`y[i, j - 1]`) with loop extents known before the kernel runs, the lowest and highest
values it takes are expressions of the argument shapes. One check at the top of the
kernel, "every enclosing loop is empty, or lo >= 0 and hi < dim", replaces a check
per element, so wrong shapes raise ShapeError instead of reading out of bounds.
Subscripts under `kd.when` or in a `kd.where` branch may be guarded by design, and
data-dependent ones can't be proved: `checks=True` covers those at run time.
"""

from __future__ import annotations

from dataclasses import replace

from kdsl import types as T
from kdsl.ir.nodes import (
    Binary,
    BinaryOp,
    Check,
    CheckKind,
    Const,
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
)
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import children, stmt_exprs, walk_expr

Affine = tuple[int, dict[str, int]]  # constant, coefficient per loop variable


def affine(e: Expr) -> Affine | None:
    """`e` as constant + sum(coeff * loop var), or None when it is not of that form."""
    match e:
        case Const(value=v) if isinstance(v, int) and not isinstance(v, bool):
            return v, {}
        case LoopVar(name=n):
            return 0, {n: 1}
        case Binary(op=BinaryOp.ADD | BinaryOp.SUB as op, lhs=a, rhs=b):
            x, y = affine(a), affine(b)
            if x is None or y is None:
                return None
            sign = 1 if op is BinaryOp.ADD else -1
            terms = dict(x[1])
            for var, c in y[1].items():
                terms[var] = terms.get(var, 0) + sign * c
            return x[0] + sign * y[0], {v: c for v, c in terms.items() if c}
        case Binary(op=BinaryOp.MUL, lhs=a, rhs=b):
            x, y = affine(a), affine(b)
            if x is None or y is None or (x[1] and y[1]):
                return None
            (k, _), other = (x, y) if not x[1] else (y, x)
            return other[0] * k, {v: c * k for v, c in other[1].items() if c * k}
    return None


def _i64(op: BinaryOp, a: Expr, b: Expr) -> Expr:
    return Binary(op, a, b, T.bool_ if op.is_comparison else a.dtype)


def _kernel_level(e: Expr) -> bool:
    return not any(isinstance(x, LoopVar | LocalVar | Load) for x in walk_expr(e))


class _Hoister:
    def __init__(self, kernel: Kernel) -> None:
        self.shapes = {b.name: b.shape for b in kernel.buffers}
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
            form = affine(sub)
            if form is None or not set(form[1]) <= set(extents):
                continue
            const, terms = form
            lo: Expr = Const(const, T.i64)
            hi: Expr = Const(const, T.i64)
            for var, c in terms.items():
                span = _i64(
                    BinaryOp.MUL, Const(c, T.i64), _i64(BinaryOp.SUB, extents[var], Const(1, T.i64))
                )
                if c > 0:
                    hi = _i64(BinaryOp.ADD, hi, span)
                else:
                    lo = _i64(BinaryOp.ADD, lo, span)
            dim = self.shapes[buffer][axis]
            inside = _i64(
                BinaryOp.AND, _i64(BinaryOp.GE, lo, Const(0, T.i64)), _i64(BinaryOp.LT, hi, dim)
            )
            cond = inside
            for ext in extents.values():
                cond = _i64(BinaryOp.OR, _i64(BinaryOp.LE, ext, Const(0, T.i64)), cond)
            what = f"subscript {format_expr(sub)} of '{buffer}' stays in [0, {format_expr(dim)})"
            check = Check(cond, CheckKind.SHAPE, what, loc=node.loc)
            if all(check != c for c in self.checks):
                self.checks.append(check)


def hoist_bounds_checks(kernel: Kernel) -> Kernel:
    """Add one shape check per affine subscript that isn't already proven (see module doc)."""
    hoister = _Hoister(kernel)
    hoister.block(kernel.body, {}, True)
    leading = 0
    while leading < len(kernel.body) and isinstance(kernel.body[leading], Check):
        leading += 1
    body = (*kernel.body[:leading], *hoister.checks, *kernel.body[leading:])
    return replace(kernel, body=body)
