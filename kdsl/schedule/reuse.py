"""`reuse`: a value that two sibling loops both compute from the same elements, computed
once. The first loop also stores it where the second one will write, and the second
reads it back from there:

    Before:  for j:   s = s + exp(x[i, j] - m)
             for j.1: y[i, j.1] = exp(x[i, j.1] - m) / s
    After:   for j:   y[i, j] = exp(x[i, j] - m)
                      s = s + exp(x[i, j] - m)        (one value: computed once)
             for j.1: y[i, j.1] = y[i, j.1] / s

A softmax written as one statement (`y[i, j] = e / kd.sum(e, over=j)`, with `e =
kd.exp(x[i, j] - m)`) takes each exponential once instead of twice, in no memory but
its output's. Nothing rounds or reassociates: the value is stored at its own type (an
output of another dtype is refused) and read back unchanged. (The second loop now uses
the first loop's value: where the two compute it differently, say one in vector code and
one in scalar, the last bits may differ from before.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import fields, replace
from typing import get_args

from kdsl.ir.extents import same_extent
from kdsl.ir.nodes import (
    Assign,
    Binary,
    DeclareLocal,
    Expr,
    Fma,
    Load,
    LocalVar,
    Loop,
    LoopExec,
    LoopKind,
    LoopVar,
    Select,
    Store,
    Unary,
)
from kdsl.ir.passes.in_place import in_place_pairs
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import (
    children,
    map_expr,
    mentions_loop_var,
    rebuild_expr,
    stmt_exprs,
    walk_all_exprs,
    walk_expr,
    walk_stmts,
)
from kdsl.schedule import tree
from kdsl.schedule.step import StepContext


def reuse(ctx: StepContext, loop_a: object, loop_b: object) -> None:
    """Compute the value `loop_b` shares with `loop_a` once, in `loop_a` (see the module
    docstring)."""
    pa, a = ctx.loop(loop_a)
    pb, b = ctx.loop(loop_b)
    if pa[:-1] != pb[:-1] or pa[-1] + 1 != pb[-1]:
        raise ctx.refuse(
            f"loop '{b.var}' does not come right after loop '{a.var}' in one block",
            "name two sibling loops, the second right after the first: reuse(first, second)",
        )
    if a.exec is not LoopExec.SERIAL or b.exec is not LoopExec.SERIAL:
        raise ctx.refuse("one of the loops is already annotated", "reuse before annotating")
    if LoopKind.SERIAL in (a.kind, b.kind) or b.kind is not LoopKind.PARALLEL:
        raise ctx.refuse(
            f"loop '{b.var}' must be a parallel loop and '{a.var}' a parallel or reduction "
            "one (kd.range loops keep their order)",
            "reuse into the loop that stores the result, after the loop that sums it",
        )
    if not same_extent(ctx.kernel, a.extent, b.extent):
        raise ctx.refuse(
            f"loops '{a.var}' and '{b.var}' have different ranges, as far as the kernel's "
            "shape checks prove",
            "reuse between loops over one range",
        )
    store = _single_store(b)
    if store is None:
        raise ctx.refuse(
            f"the body of loop '{b.var}' is not one store to an array",
            "reuse into a loop whose body is one statement, y[i, j] = …",
        )
    problem = _cannot_stash(ctx, a, b, store)
    if problem:
        raise ctx.refuse(problem, f"keep loops '{a.var}' and '{b.var}' as they are")
    value = shared_value(a, b)
    if value is None:
        raise ctx.refuse(
            f"loop '{a.var}' computes no part of what loop '{b.var}' stores "
            f"({format_expr(store.value)}) from the same elements",
            "reuse between loops that compute the same expression of the loop variable",
        )
    if ctx.kernel.buffer(store.buffer).dtype != value.dtype:
        raise ctx.refuse(
            f"'{store.buffer}' holds {ctx.kernel.buffer(store.buffer).dtype}, the shared "
            f"value {format_expr(value)} is {value.dtype}: kept there, it would be rounded",
            f"keep loops '{a.var}' and '{b.var}' as they are",
        )
    index = tuple(_renamed(i, b.var, a.var) for i in store.index)
    stash = Store(
        store.buffer, index, _renamed(value, b.var, a.var), loc=store.loc, checked=store.checked
    )
    back = Load(store.buffer, store.index, value.dtype, loc=store.loc, checked=store.checked)
    shapes = _Shapes()
    kept = shapes.of(value)
    rest = replace(
        store, value=rebuild_expr(store.value, lambda e, _: back if shapes.of(e) == kept else None)
    )
    block = (replace(a, body=(stash, *a.body)), replace(b, body=(rest,)))
    ctx.kernel = replace(ctx.kernel, body=tree.splice(ctx.kernel.body, pa, block[:1]))
    ctx.kernel = replace(ctx.kernel, body=tree.splice(ctx.kernel.body, pb, block[1:]))


def shared_value(a: Loop, b: Loop) -> Expr | None:
    """The largest part of what loop `b`'s one store stores that computes something
    (not a bare load or constant) from `b`'s variable and that loop `a` computes too,
    with `a`'s variable in its place, at every iteration; None if there is none."""
    store = _single_store(b)
    if store is None or not _straight(a):
        return None
    assigned = {s.local for s in a.body if isinstance(s, Assign)}
    assigned |= {s.name for s in a.body if isinstance(s, DeclareLocal)}
    written = {s.buffer for s in a.body if isinstance(s, Store)} | {store.buffer}
    shapes = _Shapes({a.var: b.var})  # (b's expressions can't name a's variable)
    in_a = {shapes.of(e) for s in a.body for top in stmt_exprs(s) for e in _unconditional(top)}
    for e in _unconditional(store.value):
        if not (isinstance(e, Binary | Unary | Fma) and e.dtype.is_float):
            continue
        parts = list(walk_expr(e))
        if not mentions_loop_var(e, b.var):
            continue
        if any(isinstance(x, LocalVar) and x.name in assigned for x in parts):
            continue  # (a local that changes inside `a`)
        if any(isinstance(x, Load) and x.buffer in written for x in parts):
            continue
        if shapes.of(e) in in_a:
            return e
    return None


class _Shapes:
    """A number for each expression's structure, equal for equal expressions (as `==`
    compares them, loop variables renamed by `renames`), computed once per node: an
    expression that shares parts costs its number of nodes, not the size of its tree
    (`e = e * e` twenty times over)."""

    def __init__(self, renames: dict[str, str] | None = None) -> None:
        self.renames = renames or {}
        self.numbers: dict[tuple[object, ...], int] = {}
        self.done: dict[int, tuple[Expr, int]] = {}

    def of(self, e: Expr) -> int:
        hit = self.done.get(id(e))
        if hit is not None and hit[0] is e:
            return hit[1]
        parts: list[object] = [type(e)]
        for f in fields(e):
            value = getattr(e, f.name)
            if not f.compare:
                continue
            if isinstance(e, LoopVar) and f.name == "name":
                value = self.renames.get(value, value)
            elif isinstance(value, tuple):
                value = tuple(self.of(v) for v in value)
            elif isinstance(value, _EXPRS):
                value = self.of(value)
            elif isinstance(value, float):  # (0.0 == -0.0, but 1 / x*0.0 is not 1 / x*-0.0)
                value = (value, math.copysign(1.0, value))
            parts.append(value)
        number = self.numbers.setdefault(tuple(parts), len(self.numbers))
        self.done[id(e)] = (e, number)
        return number


def _single_store(b: Loop) -> Store | None:
    if len(b.body) != 1 or not isinstance(b.body[0], Store) or b.body[0].copy_back:
        return None
    return b.body[0]


def _straight(a: Loop) -> bool:
    """Whether `a`'s body is straight-line code: every statement runs every iteration."""
    return all(isinstance(s, Assign | DeclareLocal | Store) for s in a.body)


def _unconditional(e: Expr) -> Iterator[Expr]:
    """`e` and its parts, parents first (each once), but for the arms of a select (which
    may be computed only where they are chosen)."""
    return walk_expr(e, lambda x: (x.cond,) if isinstance(x, Select) else children(x))


def _cannot_stash(ctx: StepContext, a: Loop, b: Loop, store: Store) -> str | None:
    """Why the store's array can't hold the shared value between the loops, if it can't:
    each iteration of `b` must write an element of its own that nothing else touches in
    the two loops (the value kept there is then read back by the iteration it was stored
    for, unchanged)."""
    y = store.buffer
    bare = [i for i in store.index if _is_var(i, b.var)]
    others = [i for i in store.index if not _is_var(i, b.var)]
    if len(bare) != 1 or any(mentions_loop_var(i, b.var) for i in others):
        return f"'{y}' is not written at an element of its own by each iteration of '{b.var}'"
    read = [x for i in store.index for x in walk_expr(i)]
    if any(isinstance(x, LocalVar) for x in read):
        return f"the subscripts of '{y}' read a local"
    written = {s.buffer for s in walk_stmts(a.body) if isinstance(s, Store)}
    if any(isinstance(x, Load) and x.buffer in written for x in read):
        return f"the subscripts of '{y}' read an array that loop '{a.var}' writes"
    loads = [e for e in walk_all_exprs((a, b)) if isinstance(e, Load) and e.buffer == y]
    stores = [s for s in walk_stmts(a.body) if isinstance(s, Store) and s.buffer == y]
    if loads or stores:
        return f"the loops read '{y}', or the first one writes it"
    if any(y in pair for pair in (*ctx.kernel.in_place, *in_place_pairs(ctx.kernel))):
        return f"'{y}' may be updated in place, one view with an array the loops read"
    return None


_EXPRS = get_args(Expr)


def _renamed(e: Expr, old: str, new: str) -> Expr:
    def rename(x: Expr) -> Expr | None:
        return LoopVar(new, x.dtype) if isinstance(x, LoopVar) and x.name == old else None

    return map_expr(e, rename)


def _is_var(e: Expr, name: str) -> bool:
    return isinstance(e, LoopVar) and e.name == name
