"""`cache`: stage the part of a buffer that one iteration of a loop uses into a local copy.

At the start of each iteration of loop `at`, the box of `buffer` that the statements
inside `at` touch (found by footprint inference, kdsl/schedule/bounds.py) is copied into
a new temporary, and those statements use the copy. On CPU this is packing: a panel of
a matmul operand read with a large stride becomes a small contiguous array, reused by
every iteration of the loops inside `at`. On GPU the copy lives in shared memory.

A buffer that is also written inside `at` is copied in, used, and copied back after the
body (read-modify-write), so elements of the box that the body does not write keep
their values. The copy back writes the whole box: if iterations of a parallel loop
around `at` had overlapping boxes they would race, so caching a written buffer inside a
loop that is already parallel is refused.
"""

from __future__ import annotations

from dataclasses import replace

from kdsl.ir.layout import temp_scope
from kdsl.ir.nodes import (
    Allocate,
    Buffer,
    BufferRole,
    Const,
    Expr,
    Load,
    Loop,
    LoopExec,
    LoopKind,
    LoopVar,
    Scope,
    Stmt,
    Store,
)
from kdsl.ir.visit import walk_all_exprs, walk_stmts
from kdsl.schedule import tree
from kdsl.schedule.bounds import (
    Lin,
    NotAffine,
    Span,
    Window,
    region,
    relative,
    size_expr,
)
from kdsl.schedule.step import StepContext

SCOPES = {"stack": Scope.STACK, "heap": Scope.HEAP, "shared": Scope.SHARED}
STACK_MAX_BYTES = 1 << 20  # an explicit scope="stack" copy may be this large
VECTOR_BYTES = 64  # the copy loops' vectors on CPU: one AVX-512 register
_SERIAL_EXECS = (LoopExec.SERIAL, LoopExec.UNROLLED, LoopExec.VECTORIZED)


def cache(
    ctx: StepContext, buffer: object, at: object, layout: object = None, scope: object = None
) -> str:
    """Copy the box of `buffer` used in one iteration of loop `at` into a local buffer,
    at the start of each iteration; returns the local buffer's name (`B.c`).

    It requires: every access of `buffer` inside `at` is affine in the loops inside
    `at` (loops outside are fixed for the iteration); the box's size does not depend on
    loops outside `at` (tiles give constant sizes); `buffer` is not allocated inside
    `at`. `layout` is None or "packed" (the box, dense, in the buffer's axis order),
    "transposed" (axes reversed), or a permutation of the axes ("1,0" or [1, 0]): axis k
    of the copy is axis layout[k] of the buffer. `scope` is None (stack when small and
    of constant size, else heap), "stack", "heap", or "shared" (GPU schedules only).

    The copy loops are parallel, named after the copy (`B.c0` outermost, `B.c1`, …; the
    copy back `B.cw0`, …), innermost along the copy's last axis so their stores are
    contiguous. On CPU, when that axis is also the buffer's last one (any layout that
    keeps the last axis last, "packed" included), the innermost copy loop is vectorized
    with 64-byte vectors, so a copy runs at memory speed without a schedule step of its
    own; a copy outside every parallel loop can be parallelized (`B.c0`).

        for ko:                               for ko:
          for ii: for ki: for ji:               allocate B.c      # [64, 32]
            … B[ko*64 + ki, jo*32 + ji]    →    for B.c0 in range(min(64, K - ko * 64)):
                                                  for B.c1 in range(min(32, N - jo * 32)):  # vectorized(16)
                                                    B.c[B.c0, B.c1] = B[ko * 64 + B.c0, jo * 32 + B.c1]
                                                for ii: for ki: for ji:
                                                  … B.c[ki, ji]
    """
    buf = _buffer(ctx, buffer)
    path, loop = ctx.loop(at)
    order = _layout(ctx, layout, buf)
    written = _check_loop(ctx, buf, path, loop)
    spans, windows = _region(ctx, buf, path, loop)
    shape = tuple(size_expr(spans[d].size) for d in order)
    local = Buffer(
        ctx.fresh(f"{buf.name}.c"),
        buf.dtype,
        shape,
        BufferRole.TEMP,
        _scope(ctx, scope, buf, shape),
        loc=ctx.loc,
    )
    around = tree.enclosing(ctx.kernel.body, path)
    vectorized = any(isinstance(s, Loop) and s.exec is LoopExec.VECTORIZED for s in around)
    copy = _Copy(ctx, buf, local, spans, windows, order, loop, vectorized)
    body = (Allocate(local.name, loc=ctx.loc), copy.inward(), *copy.retarget(loop.body))
    if written:
        body += (copy.outward(),)
    ctx.kernel = replace(
        ctx.kernel,
        body=tree.splice(ctx.kernel.body, path, (replace(loop, body=body),)),
        buffers=(*ctx.kernel.buffers, local),
    )
    return local.name


def _buffer(ctx: StepContext, name: object) -> Buffer:
    if not isinstance(name, str):
        raise ctx.refuse(f"{name!r} is not a buffer name", "name the buffer by its string")
    try:
        return ctx.kernel.buffer(name)
    except KeyError:
        names = ", ".join(b.name for b in ctx.kernel.buffers)
        raise ctx.refuse(
            f"there is no buffer named '{name}'", f"cache one of the buffers: {names}"
        ) from None


def _layout(ctx: StepContext, layout: object, buf: Buffer) -> tuple[int, ...]:
    """Axis k of the copy is axis order[k] of the buffer."""
    n = buf.ndim
    if layout is None or layout == "packed":
        return tuple(range(n))
    if layout == "transposed":
        return tuple(reversed(range(n)))
    order: list[int] | None = None
    if isinstance(layout, str):
        try:
            order = [int(p) for p in layout.split(",")]
        except ValueError:
            order = None
    elif isinstance(layout, list | tuple) and all(
        isinstance(p, int) and not isinstance(p, bool) for p in layout
    ):
        order = list(layout)
    if order is None or sorted(order) != list(range(n)):
        raise ctx.refuse(
            f"layout {layout!r} is not 'packed', 'transposed' or a permutation of the "
            f"{n} axes of '{buf.name}'",
            'use layout="packed", "transposed", or e.g. "1,0" (axis k of the copy is axis '
            "layout[k] of the buffer)",
        )
    return tuple(order)


def _check_loop(ctx: StepContext, buf: Buffer, path: tree.Path, loop: Loop) -> bool:
    """Whether `buf` is written inside `loop` (refusing what cache can't do)."""
    stmts = tuple(walk_stmts(loop.body))
    reads = any(isinstance(e, Load) and e.buffer == buf.name for e in walk_all_exprs(loop.body))
    writes = any(isinstance(s, Store) and s.buffer == buf.name for s in stmts)
    if not (reads or writes):
        raise ctx.refuse(
            f"'{buf.name}' is not used inside loop '{loop.var}'",
            f"cache a buffer that loop '{loop.var}' reads or writes",
        )
    if any(isinstance(s, Allocate) and s.buffer == buf.name for s in stmts):
        raise ctx.refuse(
            f"'{buf.name}' is allocated inside loop '{loop.var}'",
            f"cache it at a loop inside the one that allocates '{buf.name}'",
        )
    if loop.exec is LoopExec.VECTORIZED:
        raise ctx.refuse(
            f"loop '{loop.var}' is vectorized, and a vector loop can't contain the copy loops",
            f"cache before vectorizing, or at a loop around '{loop.var}'",
        )
    around = [s for s in tree.enclosing(ctx.kernel.body, path) if isinstance(s, Loop)]
    parallel = [lp.var for lp in (*around, loop) if lp.exec not in _SERIAL_EXECS]
    if writes and parallel:
        raise ctx.refuse(
            f"'{buf.name}' is written inside loop '{loop.var}', so its copy is written back, "
            f"and loop '{parallel[0]}' around it is already parallel: copies written back "
            "by different threads could overlap",
            f"cache '{buf.name}' before parallelizing, or cache a buffer that is only read",
        )
    return writes


def _region(
    ctx: StepContext, buf: Buffer, path: tree.Path, loop: Loop
) -> tuple[tuple[Span, ...], tuple[Window, ...]]:
    """The box of `buf` used in one iteration of `loop`, and its part inside `buf`."""
    around = [s for s in tree.enclosing(ctx.kernel.body, path) if isinstance(s, Loop)]
    body = loop.body
    uses = [e.index for e in walk_all_exprs(body) if isinstance(e, Load) and e.buffer == buf.name]
    uses += [s.index for s in walk_stmts(body) if isinstance(s, Store) and s.buffer == buf.name]
    try:
        return region(around, loop, uses, buf.shape)
    except NotAffine as err:
        raise ctx.refuse(
            f"the part of '{buf.name}' used in one iteration of loop '{loop.var}' can't be "
            f"bounded: {err}",
            f"cache '{buf.name}' at a loop whose inner loops access it at affine subscripts "
            "(like B[k, j + 1]) over constant tiles (split them first)",
        ) from None


def _scope(ctx: StepContext, scope: object, buf: Buffer, shape: tuple[Expr, ...]) -> Scope:
    itemsize = buf.dtype.itemsize
    if scope is None:
        return temp_scope(shape, itemsize)
    if scope not in SCOPES:
        raise ctx.refuse(
            f"{scope!r} is not a memory scope for a cached copy",
            "use scope='stack', 'heap', 'shared' (GPU), or leave it out to choose by size",
        )
    if scope == "shared" and ctx.target != "cuda":
        raise ctx.refuse(
            f"shared memory exists only on GPUs, and this is a {ctx.target} schedule",
            f"leave scope out for the copy of '{buf.name}' on CPU (stack or heap by size); "
            "use scope='shared' in a schedule for kd.cuda",
        )
    if scope == "stack":
        sizes = [int(d.value) for d in shape if isinstance(d, Const)]
        if len(sizes) != len(shape):
            raise ctx.refuse(
                f"the copy of '{buf.name}' has a size known only at run time, so it can't "
                "live on the stack",
                "split the loops inside the cached loop by constant factors, or use scope='heap'",
            )
        size = itemsize
        for n in sizes:
            size *= n
        if size > STACK_MAX_BYTES:
            raise ctx.refuse(
                f"the copy of '{buf.name}' takes {size} bytes, more than the "
                f"{STACK_MAX_BYTES} allowed on the stack",
                "use smaller tiles, or scope='heap'",
            )
    return SCOPES[str(scope)]


def _vector_copy(ctx: StepContext, buf: Buffer, order: tuple[int, ...], inside: bool) -> bool:
    """Whether the innermost copy loops run as vector code: on CPU, when they walk both
    the buffer and the copy with unit stride (the copy's last axis is the buffer's last)
    and no loop around them is a vector loop already."""
    return ctx.target == "cpu" and not inside and buf.ndim > 0 and order[-1] == buf.ndim - 1


class _Copy:
    """The copy loops between a buffer's box and its local copy, and the rewrite of the
    accesses to use the copy."""

    def __init__(
        self,
        ctx: StepContext,
        buf: Buffer,
        local: Buffer,
        spans: tuple[Span, ...],
        windows: tuple[Window, ...],
        order: tuple[int, ...],
        at: Loop,
        vectorized: bool,
    ) -> None:
        self.ctx, self.buf, self.local = ctx, buf, local
        self.spans, self.windows, self.order, self.at = spans, windows, order, at
        self.vectors = _vector_copy(ctx, buf, order, vectorized)

    def local_index(self, index: tuple[Expr, ...]) -> tuple[Expr, ...]:
        rel = relative(index, self.spans)
        return tuple(rel[d] for d in self.order)

    def inward(self) -> Stmt:
        """local[...] = buf[...], loops in the copy's axis order (contiguous stores)."""
        return self._nest(self.order, "", inward=True)

    def outward(self) -> Stmt:
        """buf[...] = local[...], loops in the buffer's axis order (contiguous stores)."""
        return self._nest(tuple(range(self.buf.ndim)), "w", inward=False)

    def _nest(self, dims: tuple[int, ...], tag: str, inward: bool) -> Stmt:
        names = [self.ctx.fresh(f"{self.local.name}{tag}{k}") for k in range(len(dims))]
        var = {d: LoopVar(n) for d, n in zip(dims, names)}
        where = tuple((w.start + Lin.of(var[d])).expr() for d, w in enumerate(self.windows))
        here = self.local_index(where)
        stmt: Stmt = (
            Store(self.local.name, here, Load(self.buf.name, where, self.buf.dtype))
            if inward
            else Store(self.buf.name, where, Load(self.local.name, here, self.buf.dtype))
        )
        for d, n in reversed(list(zip(dims, names))):
            stmt = Loop(n, self.windows[d].count, LoopKind.PARALLEL, (stmt,), loc=self.ctx.loc)
            if n == names[-1] and self.vectors:
                lanes = max(2, min(64, VECTOR_BYTES // self.buf.dtype.itemsize))
                stmt = replace(stmt, exec=LoopExec.VECTORIZED, width=lanes)
        return stmt

    def retarget(self, stmts: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
        """`stmts` with every access of the buffer made an access of the copy."""
        name = self.buf.name

        def expr(e: Expr) -> Expr | None:
            if isinstance(e, Load) and e.buffer == name:
                return replace(e, buffer=self.local.name, index=self.local_index(e.index))
            return None

        def stmt(s: Stmt) -> Stmt:
            if isinstance(s, Store) and s.buffer == name:
                return replace(s, buffer=self.local.name, index=self.local_index(s.index))
            return s

        return tree.rewrite(stmts, expr, stmt)
