"""Hoist bounds checks: prove subscripts in bounds with one check per call.

For a subscript whose least and greatest values over its loops kdsl/ir/ranges.py can
give as expressions of the argument shapes and scalars (linear in the loop variables,
with shapes or scalars as coefficients: `x[2*i + 1]`, `y[i, j - 1]`, a flattened
`x[i * n + j]`; through `// c` and `min`/`max` with a shape; through index locals given
one value), with loop extents known before the kernel runs, one check at the top of
the kernel, "every enclosing loop is empty, or lo >= 0 and hi < dim", replaces a check
per element: wrong shapes raise ShapeError (a wrong scalar, BoundsError) instead of
reading out of bounds. The bounds are exact, so no call that stays in bounds is
refused. Subscripts under `kd.when` or in a `kd.where` branch may be guarded by design,
and data-dependent ones can't be proved: `checks=True` covers those at run time.
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
)
from kdsl.ir.printer import format_expr
from kdsl.ir.ranges import ZERO, f64, f64_op, kernel_level, value_range
from kdsl.ir.visit import (
    children,
    local_definitions,
    map_expr,
    stmt_exprs,
    walk_expr,
    walk_stmts,
)


def _op(op: BinaryOp, a: Expr, b: Expr) -> Expr:
    return Binary(op, a, b, T.bool_ if op.is_comparison else a.dtype)


def _small(e: Expr, most: int = 256) -> bool:
    """Whether `e` has at most `most` nodes as a tree (as its check is printed, quoted
    and evaluated on a GPU's host: a chain of locals can make a DAG whose tree is huge)."""
    for count, _ in enumerate(walk_expr(e)):
        if count >= most:
            return False
    return True


class _Hoister:
    def __init__(self, kernel: Kernel) -> None:
        self.shapes = {b.name: b.shape for b in kernel.buffers}
        self.values = _single_values(kernel.body)
        self.inlined_values: dict[str, Expr] = {}
        self.unbound: set[str] = set()  # loops over a local: a bare index is checked here
        self.checks: list[Check] = []
        self.visited: set[int] = set()  # shared sub-expressions, by identity (kept alive)

    def block(self, body: tuple[Stmt, ...], extents: dict[str, Expr], known: bool) -> None:
        for s in body:
            match s:
                case Loop(var=var, extent=ext, body=inner):
                    if any(isinstance(x, LocalVar) for x in walk_expr(ext)):
                        self.unbound.add(var)  # (the trace ties no shape to its extent)
                    ext = self.inlined(ext)  # (a local's one value, as for subscripts)
                    ok = known and _small(ext) and kernel_level(ext)
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
            if isinstance(sub, LoopVar) and sub.name not in self.unbound:
                continue  # a bare index: the shape checks of the trace cover it
            span = value_range(self.inlined(sub), extents)
            if span is None or not _small(span.lo) or not _small(span.hi):
                continue
            dim = self.shapes[buffer][axis]
            low, high = f64_op(BinaryOp.GE, span.lo, ZERO), f64_op(BinaryOp.LT, span.hi, f64(dim))
            cond = high if low == Const(True, T.bool_) else _op(BinaryOp.AND, low, high)
            for ext in extents.values():
                cond = _op(BinaryOp.OR, _op(BinaryOp.LE, ext, Const(0, T.i64)), cond)
            what = f"subscript {format_expr(sub)} of '{buffer}' stays in [0, {format_expr(dim)})"
            kind = CheckKind.BOUNDS if span.scalars else CheckKind.SHAPE  # (a scalar's value)
            check = Check(cond, kind, what, loc=node.loc)
            if all(check != c for c in self.checks):
                self.checks.append(check)

    def inlined(self, e: Expr) -> Expr:
        """`e` with each index local that is given one value (its declaration's) replaced
        by that value, as far as that goes (each local's made once: a chain of locals
        stays a DAG)."""

        def value(x: Expr) -> Expr | None:
            if not isinstance(x, LocalVar) or x.name not in self.values:
                return None
            if x.name not in self.inlined_values:
                self.inlined_values[x.name] = self.inlined(self.values[x.name])
            return self.inlined_values[x.name]

        return map_expr(e, value)


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


def hoist_bounds_checks(kernel: Kernel) -> Kernel:
    """Add one check per subscript that isn't already proven (see the module's doc)."""
    hoister = _Hoister(kernel)
    hoister.block(kernel.body, {}, True)
    leading = 0
    while leading < len(kernel.body) and isinstance(kernel.body[leading], Check):
        leading += 1
    body = (*kernel.body[:leading], *hoister.checks, *kernel.body[leading:])
    return replace(kernel, body=body)
