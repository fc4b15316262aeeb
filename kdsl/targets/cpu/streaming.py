"""Nontemporal stores (`s.nontemporal(buffer)`): a vector loop writing such a buffer
past the caches.

A store to a line that is not in cache reads the line first (read for ownership), so
an output streamed to DRAM costs a read and a write per line where a copy by `memcpy`
(which writes past the caches) costs the write alone; and its lines push the inputs
out of the cache on the way. A vector loop whose body stores to a buffer the schedule
marked, at consecutive elements (`y[i, j]` in the loop over j), writes it with movnt
stores when the buffer is larger than the last-level cache. movntps needs the
register's alignment, and NumPy's large arrays start 16 bytes into a page; a line
written in part past the cache and in part through it costs more than the read saved
(a row of 4096 floats 16 bytes off: softmax 16384 × 4096 28 ms aligned to registers,
24 ms to lines, on a Zen 2). So the iterations before the first element at a cache
line's start run as one vector with the lanes past them masked off, then whole vectors
of whole lines, each stored past the cache, then the rest masked. A smaller buffer, or
one whose elements are not aligned to their size, takes the loop as it is without the
hint; so does a loop with accumulators or an inner loop, or whose vectors are not whole
cache lines, or with an access that relies on vectors starting at multiples of their
width (a load of one element per group of lanes, `x[j // 32]`; a strided one). On the
streaming path the loop's prefetches of the buffer are dropped: they would fetch the
lines the stores bypass. Such stores are weakly ordered, so a function that made them
(a parallel loop's task too) ends with a fence, and one that starts a parallel loop
after them fences first: sfence, which glibc's memcpy ends its own with (a locked
instruction, LLVM's x86 seq_cst fence, is not documented to order them); the caller,
or the threads of the tasks, read the output next.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import llvmlite.binding as llvm
from llvmlite import ir

from kdsl.ir.nodes import (
    Binary,
    BinaryOp,
    BufferRole,
    Const,
    Expr,
    Load,
    LocalVar,
    Loop,
    LoopVar,
    Prefetch,
    Store,
)
from kdsl.ir.visit import walk_all_exprs, walk_expr, walk_stmts
from kdsl.targets.cpu import jit
from kdsl.targets.cpu.ops import I1, I64, Ops, smin

if TYPE_CHECKING:
    from kdsl.targets.cpu.vector import _VectorLoop


def streamed_store(vl: _VectorLoop) -> Store | None:
    """The first store in the vector loop's body that can stream, or None."""
    gen, loop = vl.gen, vl.loop
    plan = vl.plan
    if plan.accumulators or plan.array_accumulators or loop.var in gen.carried:
        return None
    if any(isinstance(s, Loop) for s in walk_stmts(loop.body)):
        return None
    if isinstance(loop.extent, Const) and int(loop.extent.value) <= vl.w:
        return None  # one vector: nothing to stream
    if not all(
        _consecutive(i, loop.var) or all(_fixed(e, loop.var) for e in i) for i in _indices(loop)
    ):
        return None  # an access that assumes its vectors start at multiples of w (a grouped
        # load's `x[j // c]`, a strided one's `a[2·j + 1]`), which the streamed ones don't
    for s in loop.body:
        if not isinstance(s, Store):
            continue
        buf = gen.buffers[s.buffer]
        laid_out = buf.role is not BufferRole.PARAM or (buf.contiguous and not buf.fortran)
        whole = vl.w * buf.dtype.itemsize % jit.CACHE_LINE == 0
        if buf.nontemporal and laid_out and whole and _consecutive(s.index, loop.var):
            return s
    return None


def _consecutive(index: tuple[Expr, ...], var: str) -> bool:
    """Whether the subscripts are `[a, b, …, var + u]` with a, b, …, u fixed during the
    loop over `var` (outer loops' variables, parameters, constants: no locals or loads,
    which might change from one iteration to the next)."""
    if not index:
        return False
    *outer, last = index
    match last:
        case LoopVar(name=n) if n == var:
            offsets: list[Expr] = []
        case Binary(op=BinaryOp.ADD, lhs=LoopVar(name=n), rhs=u) if n == var:
            offsets = [u]
        case Binary(op=BinaryOp.ADD, lhs=u, rhs=LoopVar(name=n)) if n == var:
            offsets = [u]
        case _:
            return False
    return all(_fixed(e, var) for e in [*outer, *offsets])


def _indices(loop: Loop) -> list[tuple[Expr, ...]]:
    """The subscripts of every load, store and prefetch in the loop's body."""
    stmts = [s.index for s in walk_stmts(loop.body) if isinstance(s, Store | Prefetch)]
    return stmts + [e.index for e in walk_all_exprs(loop.body) if isinstance(e, Load)]


def _fixed(e: Expr, var: str) -> bool:
    return not any(
        isinstance(x, LocalVar | Load) or (isinstance(x, LoopVar) and x.name == var)
        for x in walk_expr(e)
    )


def run_streaming(vl: _VectorLoop, store: Store, stop: ir.Value, plain: Callable[[], None]) -> None:
    """The vector loop's iterations [0, stop) with `store` nontemporal where its buffer is
    larger than the last-level cache (or its `nontemporal_above` bytes) and its elements
    aligned to their size; `plain()` runs them otherwise."""
    gen, b = vl.gen, vl.b
    buf = gen.buffers[store.buffer]
    item = buf.dtype.itemsize
    with vl.statement_scope(store):
        vl.base = ir.Constant(I64, 0)
        address = b.ptrtoint(vl.first_lane(store.buffer, store.index), I64)
    total: ir.Value = ir.Constant(I64, item)
    for d in gen.state.arrays[store.buffer].dims:
        total = b.mul(total, d)
    above = buf.nontemporal_above or jit.last_level_cache_bytes()
    big = b.icmp_signed(">", total, ir.Constant(I64, above))
    aligned = b.icmp_unsigned(
        "==", b.and_(address, ir.Constant(I64, item - 1)), ir.Constant(I64, 0)
    )
    runs = b.icmp_signed(">", stop, ir.Constant(I64, 0))
    stream = b.select(runs, b.and_(big, aligned), ir.Constant(I1, 0))  # (no poison branch)
    with b.if_else(stream) as (then, otherwise):
        with then:
            vl.streaming, gen.streamed = (store.buffer, store.index), True
            line = ir.Constant(I64, jit.CACHE_LINE - 1)
            to_boundary = b.and_(b.sub(ir.Constant(I64, 0), address), line)
            head = smin(b, b.udiv(to_boundary, ir.Constant(I64, item)), stop)
            _partial_vector(vl, ir.Constant(I64, 0), head)
            whole = b.mul(b.sdiv(b.sub(stop, head), ir.Constant(I64, vl.w)), ir.Constant(I64, vl.w))
            last = b.add(head, whole)
            gen.counted(vl.loop.var, head, last, vl.w, vl.lanes_of(1))
            _partial_vector(vl, last, stop)
            vl.streaming = None
        with otherwise:
            plain()


def _partial_vector(vl: _VectorLoop, first: ir.Value, end: ir.Value) -> None:
    """The iterations [first, end), fewer than a vector's, as one with the lanes past
    `end` masked off (nothing when there are none)."""
    b = vl.b
    vl.copy, vl.base = 0, first
    count = b.sub(end, first)
    active = b.icmp_signed("<", vl.lanes, vl.splat(count))
    vl.masked(active, lambda: vl.block(vl.loop.body))


def fence_streamed_stores(ops: Ops) -> None:
    """Make the function's nontemporal stores visible before it returns."""
    if llvm.get_process_triple().startswith("x86_64"):
        ops.intrinsic("llvm.x86.sse.sfence", ir.VoidType(), [])
    else:
        ops.b.fence("seq_cst")
