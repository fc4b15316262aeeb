"""`inline` and `compute_at`: producer–consumer fusion of a temporary (a *stage*).

A stage is a temporary (`t = kd.empty(...)`) written by one statement
`t[v1, …, vn] = expr` inside parallel loops over v1…vn: its *producer nest*, the
outermost of those loops. Its *consumers* are the statements after the producer, in the
same block, that read it.

* `inline(t)` replaces every read `t[e1, …, en]` by `expr` with vi := ei and deletes the
  producer nest, its allocation and the buffer.
* `compute_at(t, loop)` moves the producer nest into `loop` of the consumer, computing
  only the box of `t` that one iteration of `loop` reads, into a smaller `t`.

Both require that what the producer reads is not overwritten between the producer and
its consumers (conservatively: not written by any statement from the producer to the
last consumer, the consumers included), since the moved computation would see the new
values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kdsl.ir.affine import Lin
from kdsl.ir.extents import same_extent
from kdsl.ir.layout import temp_scope
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Buffer,
    BufferRole,
    Check,
    Const,
    DeclareLocal,
    Expr,
    If,
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
from kdsl.ir.visit import (
    map_expr,
    map_stmt_exprs,
    stmt_exprs,
    walk_all_exprs,
    walk_expr,
    walk_stmts,
)
from kdsl.schedule import tree
from kdsl.schedule.bounds import (
    NotAffine,
    Span,
    Window,
    region,
    relative,
    size_expr,
)
from kdsl.schedule.step import StepContext
from kdsl.types import INDEX


@dataclass(frozen=True)
class Producer:
    """Where a stage is computed."""

    path: tree.Path  # the producer nest
    nest: Stmt
    store: Store
    dims: tuple[str, ...]  # the loop over each dimension of the stage
    extents: tuple[Expr, ...]  # each dimension's range: where the stage is defined

    @property
    def block(self) -> tree.Path:
        return self.path[:-1]


# ------------------------------------------------------------------------- inline


def inline(ctx: StepContext, stage: object) -> None:
    """Replace reads of temporary `stage` by the expression that computes it.

    It requires: `stage` is a temporary written by one store `t[v1, …, vn] = expr` at the
    bottom of a perfect nest of parallel loops over v1…vn; `expr` reads no reduction
    accumulator (use compute_at for those); the buffers `expr` reads are not written
    between the producer and the last consumer.

        for a: for b: t[a, b] = x[a, b] + x[a, b + 1]      for i: for j:
        for i: for j: y[i, j] = t[i, j] + t[i + 1, j]   →    y[i, j] = x[i, j] + x[i, j + 1]
                                                                   + x[i + 1, j] + x[i + 1, j + 1]
    """
    buf = _temporary(ctx, stage)
    prod = _producer(ctx, buf.name)
    accumulators = [x.name for x in walk_expr(prod.store.value) if isinstance(x, LocalVar)]
    if accumulators:
        raise ctx.refuse(
            f"'{buf.name}' is the result of a reduction (its store reads the accumulator "
            f"'{accumulators[0]}'), and inlining would repeat the reduction at every read",
            f"use compute_at('{buf.name}', loop) to compute it inside a loop of its consumer",
        )
    inner: Stmt = prod.nest
    placed = False  # whether the bounds pass checked the store's reads before a loop
    while isinstance(inner, Loop):
        dim = buf.shape[prod.dims.index(inner.var)] if inner.var in prod.dims else None
        if dim is not None and not same_extent(ctx.kernel, inner.extent, dim):
            raise ctx.refuse(
                f"loop '{inner.var}' computes '{buf.name}' over {format_expr(inner.extent)}, "
                "not its whole dimension: a read elsewhere would compute what was never stored",
                f"compute '{buf.name}' over its whole shape, or use compute_at('{buf.name}', loop)",
            )
        statements = [s for s in inner.body if not isinstance(s, Check)]
        placed |= len(statements) < len(inner.body)
        if len(statements) != 1:
            break
        inner = statements[0]
    if inner is not prod.store:
        raise ctx.refuse(
            f"the loops that compute '{buf.name}' contain more than its store (a condition, "
            "or other statements)",
            f"inline a temporary computed by one statement; compute_at('{buf.name}', loop) "
            "moves a whole nest",
        )
    readers = _readers(ctx, prod, buf.name)
    if readers:
        last = max(p[len(prod.block)] for p in readers)
        _check_inputs_unchanged(ctx, prod, buf.name, last)

    def expand(e: Expr) -> Expr | None:
        if isinstance(e, Load) and e.buffer == buf.name:
            values = dict(zip(prod.dims, e.index))
            return map_expr(prod.store.value, lambda x: at(x, values, placed or e.checked))
        return None

    def at(x: Expr, values: dict[str, Expr], checked: bool) -> Expr | None:
        """`x` where the consumer reads: if the producer's checks stay behind or the
        consumer's read was checked, its reads are checked where they run."""
        if isinstance(x, LoopVar):
            return values.get(x.name)
        return replace(x, checked=True) if checked and isinstance(x, Load) else None

    body = tree.without_allocate(tree.splice(ctx.kernel.body, prod.path, ()), buf.name)
    ctx.kernel = replace(
        ctx.kernel,
        body=tuple(map_stmt_exprs(s, expand) for s in body),
        buffers=tuple(b for b in ctx.kernel.buffers if b.name != buf.name),
    )


# --------------------------------------------------------------------- compute_at


def compute_at(ctx: StepContext, stage: object, loop: object) -> None:
    """Compute temporary `stage` inside `loop` of its consumer, only the box it needs.

    It requires: `stage` is a temporary written by one store `t[v1, …, vn] = …` inside
    parallel loops over v1…vn (a reduction may sit between: softmax's row max); `loop`
    is inside the consumer, a statement after the producer in the same block (or is the
    loop whose body holds both, as after a fuse: the producer then stays in place), and
    contains every read of `stage`, each affine in the loops inside `loop` (and their
    quotients by constants); the producer's inputs are not written from the producer to
    the consumer.

    `t` becomes a buffer of the box's size (constant when the loops inside `loop` have
    constant bounds, as tiles do), allocated in each iteration of `loop`; the producer's
    loops keep their names and run over the box, clamped to the stage's range:

        for a: for b: t[a, b] = f(a, b)              for io: for jo:
        for io: for jo:                                allocate t                # [5, 3]
          for ii: for ji:                      →       for a in range(min(5, n + 1 - io * 4)):
            y[...] = t[io*4 + ii, jo*3 + ji]             for b in range(min(3, m - jo * 3)):
                   + t[io*4 + ii + 1, ...]                 t[a, b] = f(io * 4 + a, jo * 3 + b)
                                                       for ii: for ji:
                                                         y[...] = t[ii, ji] + t[ii + 1, ji]

    A dimension of size 1 loses its loop (the loop variable becomes the box's corner).
    """
    buf = _temporary(ctx, stage)
    prod = _producer(ctx, buf.name)
    lpath, at = ctx.loop(loop)
    _check_in_consumer(ctx, prod, buf.name, lpath, at)
    readers = _readers(ctx, prod, buf.name)
    elsewhere = [p for p in readers if p[: len(lpath)] != lpath or p == lpath]
    if not readers or elsewhere:
        what = "also read outside" if readers else "not read inside"
        raise ctx.refuse(
            f"'{buf.name}' is {what} loop '{at.var}'",
            f"compute_at a loop that contains every read of '{buf.name}' (fuse its "
            "consumers first), or leave it whole",
        )
    _check_inputs_unchanged(ctx, prod, buf.name, max(p[len(prod.block)] for p in readers))
    spans, windows = _region(ctx, buf.name, prod, lpath, at)
    shape = tuple(size_expr(s.size) for s in spans)
    local = replace(buf, shape=shape, scope=temp_scope(shape, buf.dtype.itemsize))
    computed = (Allocate(buf.name, loc=buf.loc), *_producer_over(prod, spans, windows))

    def rebase(e: Expr) -> Expr | None:
        if isinstance(e, Load) and e.buffer == buf.name:
            inside = buf.shape if e.checked else None  # (keeps the check of the whole stage)
            return replace(e, index=relative(e.index, spans, inside))
        return None

    if lpath == prod.block:  # `at` holds the producer (after a fuse): shrink it in place
        body = tree.without_allocate(ctx.kernel.body, buf.name)
        # (found again: removing the allocation before it shifts it)
        store = next(p for p, s in tree.positions(body) if s == prod.store)
        body = tree.splice(body, store[: len(prod.path)], computed)
    else:
        body = tree.without_allocate(tree.splice(ctx.kernel.body, prod.path, ()), buf.name)
        where = tree.find(body, at.var)  # removing the producer shifts the loop
        assert where is not None
        moved = tree.at(body, where)
        assert isinstance(moved, Loop)
        body = tree.splice(body, where, (replace(moved, body=(*computed, *moved.body)),))
    ctx.kernel = replace(
        ctx.kernel,
        body=tuple(map_stmt_exprs(s, rebase) for s in body),  # only `at` reads the stage
        buffers=tuple(local if b.name == buf.name else b for b in ctx.kernel.buffers),
    )


def _check_in_consumer(
    ctx: StepContext, prod: Producer, stage: str, lpath: tree.Path, at: Loop
) -> None:
    if lpath[: len(prod.path)] == prod.path:
        raise ctx.refuse(
            f"loop '{at.var}' is one of the loops that compute '{stage}'",
            f"name a loop of the statement that reads '{stage}'",
        )
    depth = len(prod.block)
    if lpath == prod.block:
        return  # `at` holds the producer and its consumers: computed in it already
    if lpath[:depth] != prod.block or lpath[depth] < prod.path[-1]:
        raise ctx.refuse(
            f"loop '{at.var}' is not inside a consumer of '{stage}' (a statement after "
            f"the loops that compute '{stage}', in the same block)",
            f"name a loop of the statement that reads '{stage}'",
        )
    if at.exec is LoopExec.VECTORIZED:
        raise ctx.refuse(
            f"loop '{at.var}' is vectorized, and a vector loop can't contain a loop nest",
            f"compute_at before vectorizing, or at a loop around '{at.var}'",
        )


def _region(
    ctx: StepContext, stage: str, prod: Producer, lpath: tree.Path, at: Loop
) -> tuple[tuple[Span, ...], tuple[Window, ...]]:
    """The box of `stage` read in one iteration of `at`, and its part inside the stage."""
    around = [s for s in tree.enclosing(ctx.kernel.body, lpath) if isinstance(s, Loop)]
    reads = [e.index for e in walk_all_exprs(at.body) if isinstance(e, Load) and e.buffer == stage]
    try:
        return region(around, at, reads, prod.extents)
    except NotAffine as err:
        raise ctx.refuse(
            f"the part of '{stage}' read in one iteration of loop '{at.var}' can't be "
            f"bounded: {err}",
            f"compute_at a loop whose inner loops read '{stage}' at affine subscripts "
            f"(like t[i + 1, 2 * j]) over constant tiles (split them), or inline '{stage}'",
        ) from None


def _producer_over(
    prod: Producer, spans: tuple[Span, ...], windows: tuple[Window, ...]
) -> tuple[Stmt, ...]:
    """The producer nest, its loops running over the box's windows, storing into the box."""
    unit = {v for v, w in zip(prod.dims, windows) if w.count == Const(1, INDEX)}
    counts = dict(zip(prod.dims, (w.count for w in windows)))
    shift = {
        v: (w.start if v in unit else w.start + Lin.of(LoopVar(v))).expr()
        for v, w in zip(prod.dims, windows)
    }
    moved = map_stmt_exprs(
        prod.nest, lambda e: shift.get(e.name) if isinstance(e, LoopVar) else None
    )

    def reshape(s: Stmt) -> tuple[Stmt, ...]:
        if isinstance(s, Store) and s.buffer == prod.store.buffer:
            return (replace(s, index=relative(s.index, spans)),)
        if not tree.body_of(s):
            return (s,)
        body = tuple(x for b in tree.body_of(s) for x in reshape(b))
        if isinstance(s, Loop) and s.var in counts:
            return body if s.var in unit else (replace(s, extent=counts[s.var], body=body),)
        return (tree.with_body(s, body),)

    return reshape(moved)


# ---------------------------------------------------------------- shared analysis


def _temporary(ctx: StepContext, stage: object) -> Buffer:
    if not isinstance(stage, str):
        raise ctx.refuse(f"{stage!r} is not a buffer name", "name the temporary by its string")
    try:
        buf = ctx.kernel.buffer(stage)
    except KeyError:
        temps = [b.name for b in ctx.kernel.buffers if b.role is BufferRole.TEMP]
        raise ctx.refuse(
            f"there is no buffer named '{stage}'",
            f"name a temporary made with kd.empty in the kernel ({', '.join(temps) or 'none'})",
        ) from None
    if buf.role is BufferRole.PARAM:
        raise ctx.refuse(
            f"'{stage}' is a kernel parameter, not a temporary",
            "inline or compute_at temporaries made with kd.empty inside the kernel",
        )
    if buf.role is BufferRole.RESULT:
        raise ctx.refuse(
            f"'{stage}' is a result of the kernel: the caller receives all of it",
            "inline or compute_at the temporaries that feed it instead",
        )
    return buf


def _producer(ctx: StepContext, stage: str) -> Producer:
    stores = [
        (p, s)
        for p, s in tree.positions(ctx.kernel.body)
        if isinstance(s, Store) and s.buffer == stage
    ]
    if len(stores) != 1:
        tops = {p[0] for p, _ in stores}
        versions = len(tops) > 1 and all(isinstance(ctx.kernel.body[t], If) for t in tops)
        raise ctx.refuse(
            f"'{stage}' is written by {len(stores)} statements, not one"
            + (", one in each version of its nest (specialize)" if versions else ""),
            "inline or compute_at before specializing the nest that writes it"
            if versions
            else "inline or compute_at a temporary written once, as t[i, j] = … (not accumulated)",
        )
    path, store = stores[0]
    around = tree.enclosing(ctx.kernel.body, path)
    loops = {s.var: (n, s) for n, s in enumerate(around) if isinstance(s, Loop)}
    dims: list[str] = []
    for e in store.index:
        if (
            not isinstance(e, LoopVar)
            or e.name not in loops
            or e.name in dims
            or loops[e.name][1].kind is not LoopKind.PARALLEL
        ):
            target = format_expr(Load(stage, store.index, ctx.kernel.buffer(stage).dtype))
            raise ctx.refuse(
                f"'{stage}' is stored at {target}: its subscripts must be distinct variables "
                "of the parallel loops around the store",
                "apply inline/compute_at before splitting or reordering the producer's loops",
            )
        dims.append(e.name)
    top = min((loops[d][0] for d in dims), default=len(around))
    for s in around[top:]:
        if isinstance(s, Loop) and s.var not in dims:
            raise ctx.refuse(
                f"'{stage}' is stored again in every iteration of loop '{s.var}'",
                "inline or compute_at a temporary written once per element",
            )
    extents = tuple(loops[d][1].extent for d in dims)
    for d, ext in zip(dims, extents):
        if any(isinstance(x, LoopVar) and x.name in dims for x in walk_expr(ext)):
            raise ctx.refuse(
                f"the range of loop '{d}' that computes '{stage}' depends on another of its loops",
                "inline or compute_at a temporary computed over a rectangular range",
            )
    prod = Producer(
        path[: top + 1], tree.at(ctx.kernel.body, path[: top + 1]), store, tuple(dims), extents
    )
    _check_writes_only(ctx, prod, stage)
    return prod


def _check_writes_only(ctx: StepContext, prod: Producer, stage: str) -> None:
    """The producer nest must compute the stage and nothing else."""
    stmts = tuple(walk_stmts((prod.nest,)))
    declared = {s.name for s in stmts if isinstance(s, DeclareLocal)}
    others = [s.buffer for s in stmts if isinstance(s, Store | Allocate) and s.buffer != stage]
    others += [s.local for s in stmts if isinstance(s, Assign) and s.local not in declared]
    if others:
        raise ctx.refuse(
            f"the loops that compute '{stage}' also write '{others[0]}'",
            "inline or compute_at a temporary whose loops compute only it",
        )


def _readers(ctx: StepContext, prod: Producer, stage: str) -> list[tree.Path]:
    """The statements that read `stage`; each must come after the producer, in its block."""
    paths = [
        p
        for p, s in tree.positions(ctx.kernel.body)
        if any(
            isinstance(x, Load) and x.buffer == stage for e in stmt_exprs(s) for x in walk_expr(e)
        )
    ]
    depth = len(prod.block)
    for p in paths:
        if p[:depth] != prod.block or p[depth] <= prod.path[-1]:
            where = (
                "before it is computed"
                if p[:depth] == prod.block
                else "outside the block where it is computed"
            )
            raise ctx.refuse(
                f"'{stage}' is read {where}",
                f"read '{stage}' only in statements after the loops that compute it",
            )
    return paths


def _check_inputs_unchanged(ctx: StepContext, prod: Producer, stage: str, last: int) -> None:
    """What the producer reads is not written by the statements after it in its block,
    up to the one at position `last` (the last consumer) included."""
    body = ctx.kernel.body
    block = tree.body_of(tree.at(body, prod.block)) if prod.block else body
    nest = (prod.nest,)
    declared = {s.name for s in walk_stmts(nest) if isinstance(s, DeclareLocal)}
    reads = {x.buffer for x in walk_all_exprs(nest) if isinstance(x, Load)}
    reads |= {x.name for x in walk_all_exprs(nest) if isinstance(x, LocalVar)} - declared
    between = block[prod.path[-1] + 1 : last + 1]
    written = {s.buffer for s in walk_stmts(between) if isinstance(s, Store)}
    written |= {s.local for s in walk_stmts(between) if isinstance(s, Assign)}
    changed = sorted(reads & written)
    if changed:
        name = changed[0]
        raise ctx.refuse(
            f"'{stage}' is computed from '{name}', which is written after '{stage}' is "
            "computed and before its last use, so moving the computation changes its value",
            f"keep '{stage}' where it is (or write '{name}' after the last use of '{stage}')",
        )
