"""Expand the loops a schedule annotated, so targets see only simple cases.

* A vectorized loop becomes a main loop whose extent is a multiple of its width (the
  target emits it as vector code) and one masked vector for the rest (a scalar tail
  loop where the target can't vectorize the masked body).
* An unrolled loop becomes copies of its body (fully, or `width` copies per iteration
  of a shorter loop, plus a tail).
* A tensorized tile product right after the loops that zero its accumulator is marked
  to start its tiles at zero.
* A tile `min(c, n - o*c)` is specialized: the full tile (extent `c`, a constant) and
  the edge tile are separate copies, so the full one unrolls and vectorizes exactly; a
  fully unrolled edge tile becomes guarded copies, so its accumulators stay registers too.

Copies get fresh names for the loops, locals and temporaries they declare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from kdsl.ir.affine import constant_bound, split_tile, tile_split
from kdsl.ir.build import index_const, index_op
from kdsl.ir.clone import Cloner
from kdsl.ir.nodes import (
    Assign,
    Binary,
    BinaryOp,
    Const,
    Expr,
    Fma,
    If,
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
from kdsl.ir.tile_product import INSTRUCTIONS as TENSORIZED
from kdsl.ir.tile_product import mark_zero_starts
from kdsl.ir.visit import (
    fresh_namer,
    map_stmt_exprs,
    outer_updates,
    walk_all_exprs,
    walk_expr,
    walk_stmts,
)

MAX_VECTOR_COPIES = 8  # vectors of a constant-extent loop written out one by one
REGISTER_BYTES = 64  # a masked tail's vector narrows by halves down to one register
# a tile of more vectors than this runs as its own loop, with one masked vector at its end,
# not as a full copy and an edge copy: the masked vector costs little next to the loop,
# and the copy a second compile of the body (a split by 8192 of a default schedule)
LONG_TILE = 64
MAX_GROUP = 4  # the most elements a dot-product instruction sums per lane (4 bytes)


class _Expander:
    def __init__(
        self, kernel: Kernel, vectorizable: Callable[[Loop], bool], register_bytes: int
    ) -> None:
        self.kernel = kernel
        self.vectorizable = vectorizable
        self.register_bytes = register_bytes
        self.fresh = fresh_namer(kernel)
        self.cloner = Cloner(self.fresh, kernel.buffers)
        self.tile_conditions: dict[Expr, Expr] = {}  # "the tile is full" -> "it is an edge"

    def block(self, stmts: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
        return tuple(out for s in mark_zero_starts(stmts) for out in self.stmt(s))

    def stmt(self, s: Stmt) -> tuple[Stmt, ...]:
        if isinstance(s, If):
            return (replace(s, then=self.block(s.then)),)
        if not isinstance(s, Loop) or s.exec in TENSORIZED:  # (a tile product: whole)
            return (s,)
        if s.exec is LoopExec.VECTORIZED:  # (expands its body once it knows its tiles)
            return self.specialize_tile(s, self.vector_loop)
        loop = replace(s, body=self.block(s.body))
        if loop.exec is LoopExec.UNROLLED:
            return self.specialize_tile(loop, self.unrolled)
        return self.peel_groups(loop) or self.unswitch(loop)

    # -------------------------------------------------------------------- tiles

    @staticmethod
    def long_vector_tile(loop: Loop, tile: int) -> bool:
        return loop.exec is LoopExec.VECTORIZED and tile > LONG_TILE * loop.width

    def specialize_tile(
        self, loop: Loop, expand: Callable[[Loop], tuple[Stmt, ...]]
    ) -> tuple[Stmt, ...]:
        tile = tile_split(loop.extent)
        step = max(loop.width, 1)
        if tile is None or tile[0] < step or tile[0] % step or self.long_vector_tile(loop, tile[0]):
            return expand(loop)
        c, n = tile
        full = expand(replace(loop, extent=index_const(c)))
        edge_loop = replace(loop, extent=n)
        if loop.exec is LoopExec.UNROLLED and loop.width == 0:
            edge = self.guarded_copies(edge_loop, c - 1)  # (each a clone; the edge: n < c)
        elif loop.exec is LoopExec.VECTORIZED and c == step:  # (the edge: under one vector)
            edge = self.vector_loop(self.cloner.loop(edge_loop), within_one=True)
        else:
            edge = expand(self.cloner.loop(edge_loop))
        is_full, is_edge = (
            index_op(BinaryOp.LE, index_const(c), n),
            index_op(BinaryOp.LT, n, index_const(c)),
        )
        self.tile_conditions[is_full] = is_edge
        return If(is_full, full, loc=loop.loc), If(is_edge, edge, loc=loop.loc)

    def peel_groups(self, loop: Loop) -> tuple[Stmt, ...] | None:
        """A serial loop over groups of at most MAX_GROUP (`split(k, 2)`: k in pairs) runs
        its full groups with the constant extent, so that a dot-product instruction can
        take each group whole, and the last, partial group after them."""
        if loop.exec is not LoopExec.SERIAL:
            return None
        groups = {
            (s.extent, t)
            for s in walk_stmts(loop.body)
            if isinstance(s, Loop)
            and (t := split_tile(s.extent, loop.var)) is not None
            and t[0] <= MAX_GROUP
        }
        if len(groups) != 1:
            return None
        ((extent, (c, n)),) = groups
        full = index_op(
            BinaryOp.FLOORDIV, index_op(BinaryOp.MAX, n, index_const(0)), index_const(c)
        )
        body = tuple(map_stmt_exprs(s, {extent: index_const(c)}.get) for s in loop.body)
        n_all = index_op(BinaryOp.MAX, loop.extent, index_const(0))
        return (replace(loop, extent=full, body=body), *self.tail(loop, full, n_all))

    def unswitch(self, loop: Loop) -> tuple[Stmt, ...]:
        """Move a full-or-edge tile test out of a loop it does not depend on, so that the
        full tile's loop nest has no branch inside (its accumulators can stay in
        registers): `for k: if full: A / if edge: B` → `if full: for k: A / if edge: …`."""
        if loop.exec is not LoopExec.SERIAL:
            return (loop,)
        cond = next(
            (
                s.cond
                for s in walk_stmts(loop.body)
                if isinstance(s, If)
                and s.cond in self.tile_conditions
                and not _depends_on_loop_state(s.cond, loop)
            ),
            None,
        )
        if cond is None:
            return (loop,)
        edge_cond = self.tile_conditions[cond]
        full = replace(loop, body=_decide(loop.body, cond, edge_cond))
        edge_loop = self.cloner.loop(loop)
        edge = replace(edge_loop, body=_decide(edge_loop.body, edge_cond, cond))
        return (
            If(cond, self.unswitch(full), loc=loop.loc),
            If(edge_cond, self.unswitch(edge), loc=loop.loc),
        )

    # ---------------------------------------------------------------- vectorize

    def vector_loop(self, loop: Loop, within_one: bool = False) -> tuple[Stmt, ...]:
        """`loop`, its body not yet expanded: the tiles of a split whose outer loop it is
        get their constant extent first (an unrolled tile expanded before that became
        a full and an edge copy, and the edge's extent differed between lanes). A loop
        `within_one` vector (a tile's edge) is its masked tail alone: no loop of whole
        vectors that would never run (its code compiled for nothing)."""
        w = loop.width
        tiles = {
            (s.extent, t)
            for s in walk_stmts(loop.body)
            if isinstance(s, Loop) and (t := split_tile(s.extent, loop.var)) is not None
        }
        if tiles:
            return self.vector_over_tiles(loop, tiles)
        loop = replace(loop, body=self.block(loop.body))
        if isinstance(loop.extent, Const) and int(loop.extent.value) % w == 0:
            return self.vector_copies(loop)
        if isinstance(loop.extent, Const) and int(loop.extent.value) < w:
            return (replace(loop, exec=LoopExec.SERIAL, width=1),)
        n = index_op(BinaryOp.MAX, loop.extent, index_const(0))
        if within_one:
            return self.masked_tail(loop, index_const(0), n)
        main = index_op(
            BinaryOp.MUL, index_op(BinaryOp.FLOORDIV, n, index_const(w)), index_const(w)
        )
        return replace(loop, extent=main), *self.masked_tail(loop, main, n)

    def masked_tail(self, loop: Loop, start: Expr, n: Expr) -> tuple[Stmt, ...]:
        """Iterations [start, n), fewer than the width, as one vector whose lanes past n
        are off (AVX-512 masks): a scalar tail would run a vectorized matmul's edge tile
        of C one column at a time, with its accumulators in memory. Under the mask the
        body's locals vary between lanes; where the target can't have that (a local as
        an inner loop's extent), the tail stays scalar."""
        vector = self.masked_vector(loop, start, n, loop.width)
        if not self.vectorizable(vector):
            return self.tail(loop, start, n)
        narrowed = self.narrowed_tail(loop, start, n, vector)
        return (If(index_op(BinaryOp.LT, start, n), narrowed, loc=loop.loc),)

    def masked_vector(self, loop: Loop, start: Expr, n: Expr, width: int) -> Loop:
        """One vector of `width` lanes over iterations start + v, those past n off."""
        var = self.fresh(loop.var)
        at = index_op(BinaryOp.ADD, start, LoopVar(var))
        body = self.cloner.block(loop.body, {loop.var: at})
        lanes = If(index_op(BinaryOp.LT, at, n), body, loc=loop.loc)
        return replace(loop, var=var, extent=index_const(width), width=width, body=(lanes,))

    def narrowed_tail(self, loop: Loop, start: Expr, n: Expr, vector: Loop) -> tuple[Stmt, ...]:
        """`vector`, or a copy half as wide when the rest fits in it, while the copy's
        widest elements still fill a register: a vector wider than that is several
        registers, and a tail of 8 columns under a 32-lane f32 mask (a matmul's edge tile
        at n = 1000) ran two zmm of FMAs with the second all off (AVX2, 16 lanes in two ymm:
        n = 1000 ran at 0.95x the GFLOP/s of n = 1008, narrowed at 1.0x)."""
        half = vector.width // 2  # (vector widths are powers of two)
        if half * _widest_element(loop) < self.register_bytes:
            return (vector,)
        narrow = self.narrowed_tail(loop, start, n, self.masked_vector(loop, start, n, half))
        rest = index_op(BinaryOp.SUB, n, start)
        return (
            If(index_op(BinaryOp.LE, rest, index_const(half)), narrow, loc=loop.loc),
            If(index_op(BinaryOp.GT, rest, index_const(half)), (vector,), loc=loop.loc),
        )

    def vector_over_tiles(
        self, loop: Loop, tiles: set[tuple[Expr, tuple[int, Expr]]]
    ) -> tuple[Stmt, ...]:
        """A vector loop over the outer loop of a split whose inner tiles it contains:
        the vectors cover only full tiles, where the inner extent is the constant c
        (the same in every lane); the scalar tail takes the rest, edge tile included."""
        full_tiles = [
            index_op(BinaryOp.FLOORDIV, index_op(BinaryOp.MAX, n, index_const(0)), index_const(c))
            for _, (c, n) in tiles
        ]
        count = full_tiles[0]
        for other in full_tiles[1:]:
            count = index_op(BinaryOp.MIN, count, other)
        w = index_const(loop.width)
        main = index_op(BinaryOp.MUL, index_op(BinaryOp.FLOORDIV, count, w), w)
        constants = {extent: index_const(c) for extent, (c, _) in tiles}
        body = self.block(tuple(map_stmt_exprs(s, constants.get) for s in loop.body))
        n = index_op(BinaryOp.MAX, loop.extent, index_const(0))
        rest = (out for s in self.tail(loop, main, n) for out in self.stmt(s))
        return (replace(loop, extent=main, body=body), *rest)

    def vector_copies(self, loop: Loop) -> tuple[Stmt, ...]:
        """A short vector loop of constant extent becomes one vector per copy: every
        address in a copy is then a constant offset, so a tile of accumulators on the
        stack turns into registers (LLVM's SROA) instead of memory traffic. Not a loop that
        accumulates into a local from outside (a dot product over a constant D): as one
        loop its partial sums stay vectors to the end, where copies would each end in a
        horizontal sum (attention decode's q·k spent most of its time in those)."""
        assert isinstance(loop.extent, Const)
        count = int(loop.extent.value) // loop.width
        if not 2 <= count <= MAX_VECTOR_COPIES or outer_updates(loop):
            return (loop,)
        out: list[Stmt] = []
        for t in range(count):
            var = self.fresh(loop.var)
            at = index_op(BinaryOp.ADD, LoopVar(var), index_const(t * loop.width))
            body = self.cloner.block(loop.body, {loop.var: at})
            out.append(replace(loop, var=var, extent=index_const(loop.width), body=body))
        return tuple(out)

    def tail(self, loop: Loop, start: Expr, n: Expr) -> tuple[Stmt, ...]:
        """A serial loop over iterations [start, n) of `loop`."""
        var = self.fresh(loop.var)
        body = self.cloner.block(loop.body, {loop.var: index_op(BinaryOp.ADD, start, LoopVar(var))})
        rest = index_op(BinaryOp.SUB, n, start)
        return (Loop(var, rest, loop.kind, body, loc=loop.loc),)

    # ------------------------------------------------------------------- unroll

    def unrolled(self, loop: Loop) -> tuple[Stmt, ...]:
        if loop.width == 0:  # fully: the schedule checked the extent has a small bound
            if isinstance(loop.extent, Const):
                return self.copies(loop, index_const(0), int(loop.extent.value))
            bound = constant_bound(loop.extent)
            if bound is not None:
                return self.guarded_copies(loop, bound)
            return (replace(loop, exec=LoopExec.SERIAL, width=0),)
        u = loop.width
        if isinstance(loop.extent, Const) and int(loop.extent.value) <= u:
            return self.copies(loop, index_const(0), int(loop.extent.value))
        n = index_op(BinaryOp.MAX, loop.extent, index_const(0))
        groups = index_op(BinaryOp.FLOORDIV, n, index_const(u))
        var = self.fresh(loop.var)
        start = index_op(BinaryOp.MUL, LoopVar(var), index_const(u))
        main = Loop(var, groups, loop.kind, self.copies(loop, start, u), loc=loop.loc)
        if isinstance(loop.extent, Const) and int(loop.extent.value) % u == 0:
            return (main,)
        return (main, *self.tail(loop, index_op(BinaryOp.MUL, groups, index_const(u)), n))

    def guarded_copies(self, loop: Loop, bound: int) -> tuple[Stmt, ...]:
        """A copy for each trip up to the extent's constant bound, each run when its trip
        is under the extent (an edge tile): subscripts stay constants, so the tile's
        accumulators stay registers, which a serial loop would index in memory (a CPU's
        matmul rows past the last 6-row tile ran 1.5x slower per row that way: Zen 2,
        m = 10 and 16). The tests stay in the loops around: they cost less than a copy
        of those loops per extent (2.2x the compile time of the matmul kernel)."""
        return tuple(
            If(
                index_op(BinaryOp.LT, index_const(t), loop.extent),
                self.cloner.block(loop.body, {loop.var: index_const(t)}),
                loc=loop.loc,
            )
            for t in range(bound)
        )

    def copies(self, loop: Loop, start: Expr, count: int) -> tuple[Stmt, ...]:
        out: list[Stmt] = []
        for t in range(count):
            at = (
                index_const(t)
                if start == index_const(0)
                else index_op(BinaryOp.ADD, start, index_const(t))
            )
            out += self.cloner.block(loop.body, {loop.var: at})
        return tuple(out)


def _depends_on_loop_state(cond: Expr, loop: Loop) -> bool:
    """Could `cond` change between iterations of `loop`? (Tile tests read only loop
    variables and shapes, so: does it read this loop's variable or one inside it.)"""
    inner = {s.var for s in walk_stmts((loop,)) if isinstance(s, Loop)}
    return any(
        (isinstance(e, LoopVar) and e.name in inner) or isinstance(e, LocalVar | Load)
        for e in walk_expr(cond)
    )


def _decide(stmts: tuple[Stmt, ...], true: Expr, false: Expr) -> tuple[Stmt, ...]:
    """`stmts` knowing that `true` holds and `false` does not: tests of them disappear."""
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, If) and s.cond == true:
            out += _decide(s.then, true, false)
        elif isinstance(s, If) and s.cond == false:
            continue
        elif isinstance(s, If):
            out.append(replace(s, then=_decide(s.then, true, false)))
        elif isinstance(s, Loop):
            out.append(replace(s, body=_decide(s.body, true, false)))
        else:
            out.append(s)
    return tuple(out)


def _contract_accumulations(stmts: tuple[Stmt, ...], in_reduction: bool) -> tuple[Stmt, ...]:
    """In reduction loops, `acc + a*b` becomes `fma(a, b, acc)`: one rounding instead of
    two, and one instruction (the accumulation order is already free, see strict_fp)."""

    def fused(acc: Expr, value: Expr) -> Expr:
        if (
            isinstance(value, Binary)
            and value.op is BinaryOp.ADD
            and value.dtype.is_float
            and value.lhs == acc
            and isinstance(value.rhs, Binary)
            and value.rhs.op is BinaryOp.MUL
        ):
            return Fma(value.rhs.lhs, value.rhs.rhs, acc, value.dtype)
        return value

    out: list[Stmt] = []
    for s in stmts:
        match s:
            case Loop(kind=kind, body=body):
                inner = in_reduction or kind is LoopKind.REDUCTION
                s = replace(s, body=_contract_accumulations(body, inner))
            case If(then=then):
                s = replace(s, then=_contract_accumulations(then, in_reduction))
            case Store(buffer=b, index=ix, value=v) if in_reduction:
                s = replace(s, value=fused(Load(b, ix, v.dtype, checked=s.checked), v))
            case Assign(local=n, value=v) if in_reduction:
                s = replace(s, value=fused(LocalVar(n, v.dtype), v))
        out.append(s)
    return tuple(out)


def expand_schedule(
    kernel: Kernel,
    contract: bool = False,
    vectorizable: Callable[[Loop], bool] = lambda loop: True,
    register_bytes: int = REGISTER_BYTES,
) -> Kernel:
    """Expand every vectorized and unrolled loop (see the module docstring); with
    `contract` (kernels that allow reassociation), fuse multiply-adds into accumulators.
    `vectorizable` says whether the target can emit a vector loop (a masked tail);
    `register_bytes`, the width of its vector registers, down to which a masked tail
    narrows."""
    ex = _Expander(kernel, vectorizable, register_bytes)
    body = ex.block(_contract_accumulations(kernel.body, False) if contract else kernel.body)
    return replace(kernel, body=body, buffers=kernel.buffers + tuple(ex.cloner.new_buffers))


def _widest_element(loop: Loop) -> int:
    """Bytes of the widest element that `loop`'s body loads or stores."""
    loads = [e.dtype.itemsize for e in walk_all_exprs(loop.body) if isinstance(e, Load)]
    stores = [s.value.dtype.itemsize for s in walk_stmts(loop.body) if isinstance(s, Store)]
    return max(loads + stores, default=1)
