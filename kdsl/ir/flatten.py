"""Rows of a C-ordered array addressed as one run of elements.

`collapse` makes a nest over an array's rows and columns one loop `f` that subscripts
`x[f // m, f % m]`, m being the rows' length. In a C-ordered array each row starts m
elements after the one before, so that element is the array's element f counted from
the first: its address is that of `x[0, f]` (0·stride₀ + f·stride₁, the strides being
made from the dimensions, on the CPU and the GPU). The code generators get `x[0, f]`:
no division, and a vector loop over f (a GPU thread's run of elements) loads and
stores whole vectors across the rows' ends, not a masked vector per row. The same
holds for any two neighbouring axes (`x[b, f // m, f % m]`) and, one pair after the
other, for three or more collapsed loops.

Not where subscripts are checked when the code runs (`checks=True`, an access the
bounds pass marked `checked`, a subscript computed from data or a scalar argument):
`x[0, f]` is past the end of row 0 for f ≥ m.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from kdsl.ir.build import index_const
from kdsl.ir.extents import entry_equalities, equal_after
from kdsl.ir.nodes import (
    Assign,
    Binary,
    BinaryOp,
    Buffer,
    BufferRole,
    DeclareLocal,
    Expr,
    If,
    Kernel,
    Load,
    LocalVar,
    Loop,
    Prefetch,
    Stmt,
    Store,
)
from kdsl.ir.visit import (
    from_runtime_values,
    map_expr,
    mentions_local,
    runtime_locals,
    walk_expr,
    walk_stmts,
    with_exprs,
)


def flatten_rows(kernel: Kernel) -> Kernel:
    """`kernel` with each `x[…, e // m, e % m, …]` of a C-ordered array whose axis has m
    elements written `x[…, 0, e, …]`."""
    c_ordered = {b.name: b for b in kernel.buffers if in_c_order(b)}
    if not c_ordered:
        return kernel
    assigned = {s.local for s in walk_stmts(kernel.body) if isinstance(s, Assign)}
    flat = _Flattener(c_ordered, entry_equalities(kernel), assigned, runtime_locals(kernel.body))
    return replace(kernel, body=flat.block(kernel.body, {}))


def in_c_order(buf: Buffer) -> bool:
    """Whether `buf`'s elements lie in C order with no gaps when the kernel runs (the
    addresses flatten_rows makes): a contiguous argument or a temporary, not Fortran."""
    return (buf.contiguous or buf.role is not BufferRole.PARAM) and not buf.fortran


class _Flattener:
    def __init__(
        self,
        buffers: dict[str, Buffer],
        equal: dict[Expr, Expr],
        assigned: set[str],
        runtime: frozenset[str],
    ) -> None:
        self.buffers, self.equal, self.assigned, self.runtime = buffers, equal, assigned, runtime

    def block(self, stmts: tuple[Stmt, ...], outer: Mapping[str, Expr]) -> tuple[Stmt, ...]:
        """The statements rewritten; `outer`: the values of the locals declared around
        them whose value can't change while they are in scope (a tail's `$3 = $2 // m`
        subscripts): none of them, nor a local their value reads, is assigned again, and
        their value reads no array."""
        known = dict(outer)
        out: list[Stmt] = []
        for s in stmts:
            match s:
                case Loop(extent=n, body=body):
                    s = replace(s, extent=self.expr(n, known), body=self.block(body, known))
                case If(cond=c, then=then):
                    s = replace(s, cond=self.expr(c, known), then=self.block(then, known))
                case Store(buffer=name, index=index, value=v, checked=checked):
                    index = tuple(self.expr(i, known) for i in index)
                    s = replace(
                        s,
                        index=self.index(name, index, known, checked),
                        value=self.expr(v, known),
                    )
                case Prefetch(buffer=name, index=index):
                    index = tuple(self.expr(i, known) for i in index)
                    s = replace(s, index=self.index(name, index, known, False))
                case _:
                    s = with_exprs(s, lambda e: self.expr(e, known))
                    if isinstance(s, DeclareLocal):
                        self.declare(known, s)
            out.append(s)
        return tuple(out)

    def declare(self, known: dict[str, Expr], s: DeclareLocal) -> None:
        """Record a local's value where it can't change; forget the values that read an
        earlier local of its name (shadowed from here on)."""
        stale = {s.name}
        while stale:
            name = stale.pop()
            known.pop(name, None)
            stale |= {k for k, v in known.items() if mentions_local(v, name)}
        steady = not any(
            isinstance(x, Load) or isinstance(x, LocalVar) and x.name in self.assigned
            for x in walk_expr(s.init)
        )
        if steady and s.name not in self.assigned:
            known[s.name] = s.init

    def expr(self, e: Expr, known: Mapping[str, Expr]) -> Expr:
        def load(x: Expr) -> Expr | None:
            if not isinstance(x, Load):
                return None
            return replace(x, index=self.index(x.buffer, x.index, known, x.checked))

        return map_expr(e, load)

    def index(
        self, name: str, index: tuple[Expr, ...], known: Mapping[str, Expr], checked: bool
    ) -> tuple[Expr, ...]:
        buf = self.buffers.get(name)
        if buf is None or checked or any(from_runtime_values(i, self.runtime) for i in index):
            return index  # (the code checks each of its subscripts)
        out = list(index)
        for k in range(len(out) - 1):
            rows, cols = (_value(out[a], known) for a in (k, k + 1))
            if (
                isinstance(rows, Binary)
                and isinstance(cols, Binary)
                and rows.op is BinaryOp.FLOORDIV
                and cols.op is BinaryOp.MOD
                and rows.lhs == cols.lhs
                and rows.rhs == cols.rhs
                and equal_after(self.equal, _unclamped(rows.rhs), buf.shape[k + 1])
            ):
                out[k], out[k + 1] = index_const(0), rows.lhs
        return tuple(out)


def _value(e: Expr, known: Mapping[str, Expr]) -> Expr:
    return known.get(e.name, e) if isinstance(e, LocalVar) else e


def _unclamped(m: Expr) -> Expr:
    """`e` for collapse's `max(e, 0)`: equal to an axis's length (never negative) where
    e is."""
    if isinstance(m, Binary) and m.op is BinaryOp.MAX and m.rhs == index_const(0):
        return m.lhs
    return m
