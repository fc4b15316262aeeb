"""Loop distribution with scalar expansion: what lets `reorder` move a loop across the
statements around it.

`for j: (acc = 0; for k: acc += a*b; c[j] = acc)` cannot be interchanged as is. Split
into three loops over j, the accumulator crosses from one to the next, so it becomes a
buffer indexed by j (`acc[j]`), and the middle loop is a perfect nest `for j: for k`.
Distributing a loop is legal when its iterations are independent (kind parallel).
"""

from __future__ import annotations

from dataclasses import replace

from kdsl.ir.layout import temp_scope
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    Buffer,
    BufferRole,
    Const,
    DeclareLocal,
    Expr,
    Load,
    LocalVar,
    Loop,
    LoopKind,
    LoopVar,
    Stmt,
    Store,
)
from kdsl.ir.visit import (
    buffers_accessed,
    locals_used,
    outer_updates,
    rename_loop_vars,
    walk_expr,
)
from kdsl.schedule import tree
from kdsl.schedule.step import StepContext
from kdsl.types import DType


def upper_bound(extent: Expr) -> Expr:
    """A loop-invariant bound on a loop's extent: a constant when one can be derived
    (the tile size of `min(f, n - o*f)`, or `(min(64, …) + 7) // 8` for a split of a
    split), else the extent itself."""
    bound = _constant_bound(extent)
    return extent if bound is None else Const(bound, extent.dtype)


def _constant_bound(e: Expr) -> int | None:
    """An upper bound of a non-negative extent expression, if a constant one follows."""
    if isinstance(e, Const):
        return int(e.value)
    if not isinstance(e, Binary):
        return None
    lhs, rhs = _constant_bound(e.lhs), _constant_bound(e.rhs)
    if e.op is BinaryOp.MIN:
        known = [b for b in (lhs, rhs) if b is not None]
        return min(known) if known else None
    if e.op is BinaryOp.ADD and lhs is not None and rhs is not None:
        return lhs + rhs
    if e.op is BinaryOp.FLOORDIV and lhs is not None and isinstance(e.rhs, Const):
        return lhs // int(e.rhs.value) if int(e.rhs.value) > 0 else None
    return None


def distribute(ctx: StepContext, path: tree.Path, keep: int) -> tuple[Stmt, ...]:
    """Split the loop at `path` around its statement `keep`: the statements before it,
    it, and those after it each get a copy of the loop (the middle keeps the name).

    Returns the statements that replace the loop; updates ctx.kernel's buffers and
    records the copies in ctx.clones.
    """
    loop = tree.at(ctx.kernel.body, path)
    assert isinstance(loop, Loop)
    if loop.kind is not LoopKind.PARALLEL:
        raise ctx.refuse(
            f"loop '{loop.var}' has statements around loop '{loop.body[keep].var}'"  # type: ignore[union-attr]
            f" and is a {loop.kind.value} loop, so they can't be split into separate loops",
            "reorder only loops that are perfectly nested, or parallel loops around them",
        )
    updates = outer_updates(loop)
    if updates:
        raise ctx.refuse(
            f"loop '{loop.var}' updates the local '{updates[0].local}' declared outside it",
            "keep the loop as it is, or reorder loops inside it",
        )
    groups = [loop.body[:keep], (loop.body[keep],), loop.body[keep + 1 :]]
    later = [groups[1] + groups[2], groups[2]]  # what each earlier group's values reach
    allocs: list[Stmt] = []
    for local in _crossing_locals(groups[0], later[0]):
        groups, alloc = _expand_local(ctx, loop, local, groups)
        allocs.append(alloc)
    for buffer in _crossing_buffers(groups[0], later[0]):
        groups, alloc = _expand_buffer(ctx, loop, buffer, groups)
        allocs.append(alloc)
    out: list[Stmt] = list(allocs)
    for n, group in enumerate(groups):
        if not group:
            continue
        copy = replace(loop, body=group)
        if n != 1:
            copy_name = ctx.fresh(loop.var)
            copy = rename_loop_vars(copy, {loop.var: copy_name})  # type: ignore[assignment]
            ctx.clones.setdefault(loop.var, []).append(copy_name)
        out.append(copy)
    return tuple(out)


def _crossing_locals(first: tuple[Stmt, ...], rest: tuple[Stmt, ...]) -> list[DeclareLocal]:
    used = locals_used(rest)
    return [s for s in first if isinstance(s, DeclareLocal) and s.name in used]


def _crossing_buffers(first: tuple[Stmt, ...], rest: tuple[Stmt, ...]) -> list[str]:
    used = buffers_accessed(rest)
    return [s.buffer for s in first if isinstance(s, Allocate) and s.buffer in used]


def per_iteration_temp(ctx: StepContext, base: str, dtype: DType, loop: Loop) -> str:
    """A new temporary, named from `base`, of one `dtype` element per iteration of
    `loop` (as many as its extent's constant bound where it has one); its name."""
    name = ctx.fresh(base)
    shape = (upper_bound(loop.extent),)
    buf = Buffer(name, dtype, shape, BufferRole.TEMP, temp_scope(shape, dtype.itemsize))
    ctx.kernel = replace(ctx.kernel, buffers=(*ctx.kernel.buffers, buf))
    return name


def _expand_local(
    ctx: StepContext, loop: Loop, local: DeclareLocal, groups: list[tuple[Stmt, ...]]
) -> tuple[list[tuple[Stmt, ...]], Stmt]:
    """The local becomes a buffer with one element per iteration of `loop`."""
    name = per_iteration_temp(ctx, local.name, local.dtype, loop)
    index: tuple[Expr, ...] = (LoopVar(loop.var),)

    def read(e: Expr) -> Expr | None:
        if isinstance(e, LocalVar) and e.name == local.name:
            return Load(name, index, local.dtype)
        return None

    def stmt(s: Stmt) -> Stmt:
        match s:
            case DeclareLocal(name=n, init=v) if n == local.name:
                return Store(name, index, v, loc=s.loc)
            case Assign(local=n, value=v) if n == local.name:
                return Store(name, index, v, loc=s.loc)
        return s

    new_groups = [tree.rewrite(g, read, stmt) for g in groups]
    return new_groups, Allocate(name, loc=local.loc)


def _expand_buffer(
    ctx: StepContext, loop: Loop, name: str, groups: list[tuple[Stmt, ...]]
) -> tuple[list[tuple[Stmt, ...]], Stmt]:
    """A temporary allocated in the loop gains a leading axis over the loop's iterations."""
    buf = ctx.kernel.buffer(name)
    if any(isinstance(e, LoopVar) for d in buf.shape for e in walk_expr(d)):
        raise ctx.refuse(
            f"the temporary '{name}' inside loop '{loop.var}' has a shape that depends on a loop",
            "give the temporary a shape that does not depend on loop variables",
        )
    shape = (upper_bound(loop.extent), *buf.shape)
    grown = replace(buf, shape=shape, scope=temp_scope(shape, buf.dtype.itemsize))
    ctx.kernel = replace(
        ctx.kernel, buffers=tuple(grown if b.name == name else b for b in ctx.kernel.buffers)
    )
    var = LoopVar(loop.var)

    def index(e: Expr) -> Expr | None:
        if isinstance(e, Load) and e.buffer == name:
            return replace(e, index=(var, *e.index))
        return None

    def stmt(s: Stmt) -> Stmt | None:
        match s:
            case Allocate(buffer=b) if b == name:
                return None
            case Store(buffer=b) if b == name:
                return replace(s, index=(var, *s.index))
        return s

    new_groups = [tree.rewrite(g, index, stmt) for g in groups]
    alloc = next(s for s in groups[0] if isinstance(s, Allocate) and s.buffer == name)
    return new_groups, alloc
