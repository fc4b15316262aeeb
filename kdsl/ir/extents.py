"""Loop extents compared as the kernel's entry checks make them equal.

A kernel that indexes `x[i]` and `t[i]` with `i` over `x.shape[0]` checks
`x.shape[0] == t.shape[0]` before its loops run (the trace's shape ties). After those
checks, a loop over `x.shape[0]` and one over `t.shape[0]` run over the same range:
`fuse` may merge them, `inline` may treat `t`'s producer as covering its dimension.
"""

from __future__ import annotations

from kdsl.ir.nodes import Binary, BinaryOp, Check, Const, DimOf, Expr, If, Kernel, Loop, ScalarArg
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import map_expr

_LEAVES = (Const, DimOf, ScalarArg)  # fixed for the whole call, compared as they are


def entry_equalities(kernel: Kernel) -> dict[Expr, Expr]:
    """Each shape, scalar or constant that the checks at the kernel's top, before its
    first loop, prove equal to another, mapped to one of its class: a constant if there
    is one, else the first by printed text (so the choice doesn't depend on the checks'
    order)."""
    parent: dict[Expr, Expr] = {}

    def root(e: Expr) -> Expr:
        while parent.get(e, e) != e:
            e = parent[e]
        return e

    for s in kernel.body:
        if isinstance(s, Loop | If):
            break
        if not (isinstance(s, Check) and isinstance(s.cond, Binary) and s.cond.op is BinaryOp.EQ):
            continue
        a, b = s.cond.lhs, s.cond.rhs
        if isinstance(a, _LEAVES) and isinstance(b, _LEAVES):
            parent.setdefault(a, a)
            parent.setdefault(b, b)
            parent[root(b)] = root(a)
    classes: dict[Expr, list[Expr]] = {}
    for e in parent:
        classes.setdefault(root(e), []).append(e)
    chosen: dict[Expr, Expr] = {}
    for members in classes.values():
        rep = min(members, key=lambda e: (not isinstance(e, Const), format_expr(e)))
        chosen.update((e, rep) for e in members)
    return chosen


def same_extent(kernel: Kernel, a: Expr, b: Expr) -> bool:
    """Whether loops over `a` and over `b` run over the same range once the kernel's
    entry checks have passed."""
    return a == b or equal_after(entry_equalities(kernel), a, b)


def equal_after(equal: dict[Expr, Expr], a: Expr, b: Expr) -> bool:
    """Whether `a` and `b` have the same value once the checks that made `equal`
    (entry_equalities) have passed: for a caller comparing many pairs."""
    if a == b:
        return True

    def canonical(e: Expr) -> Expr | None:
        return equal.get(e) if isinstance(e, _LEAVES) else None  # (leaves hash cheaply)

    return bool(equal) and map_expr(a, canonical) == map_expr(b, canonical)
