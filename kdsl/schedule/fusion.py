"""`fuse`: merge two sibling loops over the same range, then contract temporaries.

After `fuse(a, b)` the body of `b` runs right after the body of `a`, iteration by
iteration. That is legal when no iteration of `b` touches an element of a buffer the two
loops share (one writing it) that a later iteration of `a` touches: those would now
come in the other order (kdsl/ir/dependence.py proves the subscripts apart: `c[2*i]` and
`c[2*i + 1]`). Where one touches what an earlier iteration of `a` does (`y[i + 1] = …`
then `… = y[i]`), the order would be kept, but the fused loop's iterations would depend
on each other: refused too (serial `kd.range` loops are not fused at all).

Contraction is where fusion saves memory traffic: a temporary that is now used only
inside the fused loop, always at the current iteration along one axis, loses that axis.
A temporary left with no axes becomes a scalar local (softmax's row max and row sum);
one with axes left becomes a per-iteration buffer (softmax's `e` becomes a row).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from kdsl.ir.dependence import Order, accesses, meet_orders
from kdsl.ir.extents import same_extent
from kdsl.ir.layout import temp_scope
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    BufferRole,
    Check,
    DeclareLocal,
    Expr,
    Kernel,
    Load,
    LocalVar,
    Loop,
    LoopExec,
    LoopKind,
    LoopVar,
    Stmt,
    Store,
)
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import walk_all_exprs, walk_expr, walk_stmts
from kdsl.schedule import tree
from kdsl.schedule.step import StepContext
from kdsl.types import DType


def fuse(ctx: StepContext, loop_a: object, loop_b: object) -> str:
    pa, a = ctx.loop(loop_a)
    pb, b = ctx.loop(loop_b)
    if pa[:-1] != pb[:-1] or pa[-1] >= pb[-1]:
        raise ctx.refuse(
            f"loops '{a.var}' and '{b.var}' are not siblings with '{a.var}' first",
            "fuse two loops of one block, the earlier one first: fuse(earlier, later)",
        )
    if a.exec is not LoopExec.SERIAL or b.exec is not LoopExec.SERIAL:
        raise ctx.refuse("one of the loops is already annotated", "fuse before annotating")
    if not same_extent(ctx.kernel, a.extent, b.extent):
        ea, eb = format_expr(a.extent), format_expr(b.extent)
        raise ctx.refuse(
            f"loops '{a.var}' (over {ea}) and '{b.var}' (over {eb}) have different ranges, "
            "as far as the kernel's shape checks prove",
            f"fuse loops over one range: write both over the same extent (e.g. {ea}), or "
            "split both by the same factor first",
        )
    kind = _fused_kind(ctx, a, b)
    block = _block(ctx.kernel, pa)
    b_body = tree.substitute(b.body, b.var, LoopVar(a.var))
    before, after = _move_between(ctx, a, b_body, block[pa[-1] + 1 : pb[-1]])
    carried = _check_dependences(ctx, a, b, b_body)
    if carried is not None:
        raise ctx.refuse(
            f"fusing '{a.var}' and '{b.var}' makes the fused loop's iterations depend on "
            f"each other: an iteration of '{b.var}' touches an element of '{carried}' that "
            f"an earlier iteration of '{a.var}' writes or reads (one of them writing it)",
            "keep the loops apart, or write both statements in one kd.range loop if that "
            "order is what you want",
        )
    fused = replace(a, kind=kind, body=a.body + b_body)
    new_block = block[: pa[-1]] + before + (fused,) + after + block[pb[-1] + 1 :]
    _set_block(ctx, pa, new_block)
    _contract(ctx, a.var)
    return a.var


def _fused_kind(ctx: StepContext, a: Loop, b: Loop) -> LoopKind:
    kinds = {a.kind, b.kind}
    if LoopKind.SERIAL in kinds:
        raise ctx.refuse(
            "fusing serial (kd.range) loops is not supported",
            "fuse parallel or reduction loops",
        )
    return LoopKind.REDUCTION if LoopKind.REDUCTION in kinds else LoopKind.PARALLEL


def _block(kernel: Kernel, path: tree.Path) -> tuple[Stmt, ...]:
    return kernel.body if len(path) == 1 else tree.body_of(tree.at(kernel.body, path[:-1]))


def _set_block(ctx: StepContext, path: tree.Path, block: tuple[Stmt, ...]) -> None:
    if len(path) == 1:
        ctx.kernel = replace(ctx.kernel, body=block)
        return
    parent = tree.with_body(tree.at(ctx.kernel.body, path[:-1]), block)
    ctx.kernel = replace(ctx.kernel, body=tree.splice(ctx.kernel.body, path[:-1], (parent,)))


def _move_between(
    ctx: StepContext, a: Loop, b_body: tuple[Stmt, ...], between: tuple[Stmt, ...]
) -> tuple[tuple[Stmt, ...], tuple[Stmt, ...]]:
    """Where the statements between the loops go: before the fused loop (allocations,
    and locals and bounds checks that do not depend on the first loop: a check must
    come before the accesses it guards), or after it (a
    statement using the first loop's result, such as a sum's store, when the second
    loop neither uses what it writes nor writes what it reads)."""
    written_a, written_b = _written(a.body), _written(b_body)
    used_b = _reads(b_body) | written_b
    before: list[Stmt] = []
    after: list[Stmt] = []
    written_after: set[str] = set()
    for s in between:
        reads = _reads((s,))
        if not reads & written_after and (
            isinstance(s, Allocate)
            or (isinstance(s, DeclareLocal | Check) and not reads & written_a)
        ):
            before.append(s)
        elif not isinstance(s, Allocate | Check) and not (
            _written((s,)) & used_b or reads & written_b
        ):
            after.append(s)
            written_after |= _written((s,))
        else:
            raise ctx.refuse(
                f"a statement between the loops depends on loop '{a.var}' or has effects",
                "fuse loops that are adjacent, or move the statement out of the way",
            )
    return tuple(before), tuple(after)


def _written(stmts: tuple[Stmt, ...]) -> set[str]:
    out = {s.buffer for s in walk_stmts(stmts) if isinstance(s, Store)}
    out |= {s.name for s in walk_stmts(stmts) if isinstance(s, DeclareLocal)}
    return out | {s.local for s in walk_stmts(stmts) if isinstance(s, Assign)}


def _names_read(exprs: Iterable[Expr]) -> set[str]:
    """Buffers loaded and locals read."""
    return {
        x.buffer if isinstance(x, Load) else x.name for x in exprs if isinstance(x, Load | LocalVar)
    }


def _read(e: Expr) -> set[str]:
    return _names_read(walk_expr(e))


def _reads(stmts: tuple[Stmt, ...]) -> set[str]:
    return _names_read(walk_all_exprs(stmts))


def _accesses(stmts: tuple[Stmt, ...], buffer: str) -> list[tuple[Expr, ...]]:
    found = [e.index for e in walk_all_exprs(stmts) if isinstance(e, Load) and e.buffer == buffer]
    return found + [
        s.index for s in walk_stmts(stmts) if isinstance(s, Store) and s.buffer == buffer
    ]


def _private_axes(accesses: list[tuple[Expr, ...]], var: str) -> list[int]:
    """The axes at which every access subscripts exactly the loop variable `var`."""
    if not accesses:
        return []
    ndim = len(accesses[0])
    return [d for d in range(ndim) if all(ix[d] == LoopVar(var) for ix in accesses)]


def _check_dependences(ctx: StepContext, a: Loop, b: Loop, b_body: tuple[Stmt, ...]) -> str | None:
    """Refuse the fusion if an iteration of `b` touches an element that a later iteration
    of `a` touches (one writing it), or both use a local one updates; return a buffer of
    which one touches an element an earlier iteration of `a` does (the fused loop's
    iterations then depend on each other), if any."""
    wa, wb = _written(a.body), _written(b_body)
    ra, rb = _reads(a.body), _reads(b_body)
    carried: str | None = None
    for name in sorted((wa & (rb | wb)) | (ra & wb)):
        if any(name == buf.name for buf in ctx.kernel.buffers):
            orders = _meet_orders(a, b_body, name)
            if Order.LATER not in orders:
                if Order.EARLIER in orders:
                    carried = carried or name
                continue
            what = f"'{b.var}' would read or overwrite elements of '{name}' out of order"
        else:
            what = f"both loops use the local '{name}', and one of them updates it"
        raise ctx.refuse(
            f"fusing '{a.var}' and '{b.var}' changes the result: {what}",
            "fuse only loops whose shared buffers are indexed by the loop variable itself",
        )
    return carried


def _meet_orders(a: Loop, b_body: tuple[Stmt, ...], buffer: str) -> frozenset[Order]:
    """How an iteration of `a` and one of `b_body` (on a's variable) touching one element
    of `buffer`, one of them writing it, may be ordered."""
    first = [x for x in accesses(a.body) if x.buffer == buffer]
    second = [y for y in accesses(b_body) if y.buffer == buffer]
    orders: set[Order] = set()
    for x in first:
        for y in second:
            if x.write or y.write:
                orders |= meet_orders(x, y, a.var, a.extent)
    return frozenset(orders)


# ---------------------------------------------------------------- contraction


def _contract(ctx: StepContext, var: str) -> None:
    for buf in [b for b in ctx.kernel.buffers if b.role is BufferRole.TEMP]:
        _, loop = ctx.loop(var)
        inside = _accesses(loop.body, buf.name)
        if not inside or len(inside) != len(_accesses(ctx.kernel.body, buf.name)):
            continue  # also used outside the loop: needs its full extent
        axes = _private_axes(inside, var)
        if not axes:
            continue
        body = _drop_axis(tree.without_allocate(loop.body, buf.name), buf.name, axes[0])
        shape = buf.shape[: axes[0]] + buf.shape[axes[0] + 1 :]
        if not shape and _declared_first(body, buf.name):
            body = _to_local(body, buf.name, buf.dtype)
            buffers = tuple(b for b in ctx.kernel.buffers if b.name != buf.name)
        else:
            body = (Allocate(buf.name, loc=buf.loc), *body)
            small = replace(buf, shape=shape, scope=temp_scope(shape, buf.dtype.itemsize))
            buffers = tuple(small if b.name == buf.name else b for b in ctx.kernel.buffers)
        kernel_body = tree.without_allocate(ctx.kernel.body, buf.name)
        path = tree.find(kernel_body, var)  # removing the allocation may shift the loop
        assert path is not None
        kernel_body = tree.splice(kernel_body, path, (replace(loop, body=body),))
        ctx.kernel = replace(ctx.kernel, body=kernel_body, buffers=buffers)


def _drop_axis(stmts: tuple[Stmt, ...], buffer: str, axis: int) -> tuple[Stmt, ...]:
    def drop(index: tuple[Expr, ...]) -> tuple[Expr, ...]:
        return index[:axis] + index[axis + 1 :]

    def expr(e: Expr) -> Expr | None:
        if isinstance(e, Load) and e.buffer == buffer:
            return replace(e, index=drop(e.index))
        return None

    def stmt(s: Stmt) -> Stmt:
        if isinstance(s, Store) and s.buffer == buffer:
            return replace(s, index=drop(s.index))
        return s

    return tree.rewrite(stmts, expr, stmt)


def _declared_first(body: tuple[Stmt, ...], buffer: str) -> bool:
    """Is the first access of `buffer` in program order a store at the top of `body`?"""
    for s in body:
        reads = any(isinstance(e, Load) and e.buffer == buffer for e in walk_all_exprs((s,)))
        if isinstance(s, Store) and s.buffer == buffer:
            return not reads
        if reads or any(isinstance(x, Store) and x.buffer == buffer for x in walk_stmts((s,))):
            return False
    return False


def _to_local(body: tuple[Stmt, ...], buffer: str, dtype: DType) -> tuple[Stmt, ...]:
    """Scalar buffer → local: the first store declares it, later ones assign it."""

    def expr(e: Expr) -> Expr | None:
        if isinstance(e, Load) and e.buffer == buffer:
            return LocalVar(buffer, dtype)
        return None

    declared = False

    def stmt(s: Stmt) -> Stmt:
        nonlocal declared
        if isinstance(s, Store) and s.buffer == buffer:
            if not declared:
                declared = True
                return DeclareLocal(buffer, dtype, s.value, loc=s.loc)
            return Assign(buffer, s.value, loc=s.loc)
        return s

    return tree.rewrite(body, expr, stmt)
