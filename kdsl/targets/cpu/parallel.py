"""Multi-core loops (LoopExec.PARALLEL).

The loop's body is outlined into a task function `i64 task(ptr closure, i64 begin,
i64 end)` that runs iterations [begin, end). Everything the body can see (arrays,
scalars, enclosing loop variables, locals) is copied into a closure struct on the
stack. The kernel calls the native pool (`runtime.py`) with a *grain*: the fewest
iterations worth a thread, computed at run time from the work one iteration holds, so
a small call runs on the calling thread alone.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from llvmlite import ir

from kdsl.ir.affine import constant_bound
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Buffer,
    BufferRole,
    Const,
    DeclareLocal,
    DimOf,
    Expr,
    If,
    Load,
    LocalVar,
    Loop,
    LoopVar,
    Prefetch,
    Stmt,
    Store,
)
from kdsl.ir.visit import (
    local_definitions,
    map_expr,
    mentions_loop_var,
    walk_all_exprs,
    walk_expr,
    walk_stmts,
)
from kdsl.targets.cpu.ops import I64, PTR, smax
from kdsl.targets.cpu.state import ArrayInfo
from kdsl.targets.cpu.streaming import fence_streamed_stores

if TYPE_CHECKING:
    from kdsl.targets.cpu.codegen import _Codegen

PARALLEL_FOR = "kdsl_parallel_for_threads"  # (task, closure, n, grain, threads; 0: default)
MIN_WORK_PER_CHUNK = 32768  # innermost iterations: below this a chunk costs more than it saves
UNKNOWN_EXTENT = 16  # for loops whose extent is only known inside the body


def emit_parallel_loop(gen: _Codegen, loop: Loop) -> None:
    b = gen.b
    stop = gen.expr(loop.extent)
    names, values = _capture(gen, loop)
    closure = gen._entry_alloca(ir.ArrayType(I64, max(1, len(values))), f"{loop.var}.closure")
    for n, v in enumerate(values):
        b.store(v, _slot(b, closure, n))
    task = _outline(gen, loop, [v.type for v in values], names)
    grain = _grain(gen, loop)
    threads = ir.Constant(I64, loop.width)  # parallelize(loop, threads=…); 0: the default
    if gen.streamed:  # the tasks may read what this function stored past the caches
        fence_streamed_stores(gen.ops)
    code = b.call(_runtime(gen.fn.module), [task, closure, stop, grain, threads])
    with b.if_then(b.icmp_signed("!=", code, ir.Constant(I64, 0)), likely=False):
        b.store(code, gen.retcode)
        b.branch(gen.cleanup)


def _slot(b: ir.IRBuilder, closure: ir.Value, n: int) -> ir.Value:
    """The closure's n-th 8-byte slot (every captured value fits in one)."""
    return b.gep(closure, [ir.Constant(I64, 8 * n)], source_etype=ir.IntType(8))


def _runtime(module: ir.Module) -> ir.Function:
    fn = module.globals.get(PARALLEL_FOR)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(I64, [PTR, PTR, I64, I64, I64]), name=PARALLEL_FOR)
    return fn


Captured = list[tuple[str, str, int]]  # (kind, name, position within its kind's values)


def _capture(gen: _Codegen, loop: Loop) -> tuple[Captured, list[ir.Value]]:
    """The values the loop's body uses (arrays, scalars, loop variables, locals),
    flattened, with where each comes from. Only those: a temporary of a block that has
    ended may still be in the state, and its pointer is not valid here."""
    used = _used_names(loop.body, gen.buffers)
    names: Captured = []
    values: list[ir.Value] = []
    for name, info in gen.state.arrays.items():
        if name in used:
            for pos, v in enumerate([info.data, *info.dims, *info.strides]):
                names.append(("array", name, pos))
                values.append(v)
    for name, v in gen.state.scalars.items():
        names.append(("scalar", name, 0))
        values.append(v)
    for kind, slots in (("loop", gen.state.loops), ("local", gen.state.locals)):
        for name, slot in slots.items():
            if name in used:
                names.append((kind, name, 0))
                values.append(gen.b.load(slot, typ=slot.allocated_type))
    return names, values


def _used_names(body: tuple[Stmt, ...], buffers: dict[str, Buffer]) -> set[str]:
    """The arrays, loop variables and locals `body` reads or writes, those that the
    shapes of the temporaries it allocates read included."""
    shapes = [
        dim
        for st in walk_stmts(body)
        if isinstance(st, Allocate)
        for dim in buffers[st.buffer].shape
    ]
    used: set[str] = set()
    for e in [*walk_all_exprs(body), *(x for dim in shapes for x in walk_expr(dim))]:
        if isinstance(e, Load | DimOf):
            used.add(e.buffer)
        elif isinstance(e, LoopVar | LocalVar):
            used.add(e.name)
    used |= {s.buffer for s in walk_stmts(body) if isinstance(s, Store | Prefetch)}
    used |= {s.local for s in walk_stmts(body) if isinstance(s, Assign)}
    return used


def _outline(gen: _Codegen, loop: Loop, types: list[ir.Type], names: Captured) -> ir.Function:
    fnty = ir.FunctionType(I64, [PTR, I64, I64])
    task = ir.Function(gen.fn.module, fnty, name=f"{gen.fn.name}.{loop.var}")
    task.linkage = "internal"
    sub = type(gen)(gen.kernel, task, gen.checks, gen.strict_fp, gen.sites)
    sub.reduction_depth = gen.reduction_depth
    sub.named_columns = gen.named_columns  # (the same kernel's: found once)
    closure, begin, end = task.args
    parts: dict[str, list[ir.Value]] = {}
    for n, (kind, name, _) in enumerate(names):
        ptr = _slot(sub.b, closure, n)
        value = sub.b.load(ptr, typ=types[n])
        if kind == "array":
            parts.setdefault(name, []).append(value)
        elif kind == "scalar":
            sub.state.scalars[name] = value
        else:
            slot = sub._entry_alloca(value.type, name)
            sub.b.store(value, slot)
            (sub.state.loops if kind == "loop" else sub.state.locals)[name] = slot
    for name, flat in parts.items():
        ndim = (len(flat) - 1) // 2
        strides = list(flat[1 + ndim :])
        # the unit stride of a C- or Fortran-ordered argument as the constant it is:
        # passed in, it was none, and a serial loop over a row in each task ran 20x slower
        # (gathers); kdsl's vector loops took it from the stack at each access (a Q8_0
        # product's inner loop reloaded eight: 1024x4096 in the L3, 165 -> 138 µs). The
        # others stay loads from the closure (LLVM reloads them rather than keep them in
        # registers, which a matmul tile's sums need)
        buf = gen.buffers[name]
        if buf.role is BufferRole.PARAM and ndim and (buf.contiguous or buf.fortran):
            strides[0 if buf.fortran else -1] = ir.Constant(I64, buf.dtype.itemsize)
        sub.state.arrays[name] = ArrayInfo(flat[0], flat[1 : 1 + ndim], strides)
    sub.loop(loop.var, begin, end, loop.body, backwards=_backwards(sub, loop))
    sub.finish()
    return task


def _backwards(gen: _Codegen, loop: Loop) -> ir.Value | None:
    """Whether a task runs its iterations last to first (an i1 known at run time), or None
    where no read tells: the first read of an argument of run-time strides subscripted by
    the loop's variable alone in one axis and by an inner loop in a later one. Where those
    two strides differ in sign (m[::-1] or m[:, ::-1], read a row at a time), the rows in
    the other order make one stream through memory in one direction, which the hardware
    prefetchers follow: read up a row and then back two, a row sum of m[::-1] ran at 0.67x
    the speed of m's, of m[:, ::-1] at 0.57x (a Zen 3, 16000 x 1000 floats)."""
    inner = [s.var for s in walk_stmts(loop.body) if isinstance(s, Loop)]
    for e in walk_all_exprs(loop.body):
        if not isinstance(e, Load):
            continue
        buf = gen.buffers[e.buffer]
        if buf.role is not BufferRole.PARAM or buf.contiguous or buf.fortran:
            continue  # (C or Fortran order: every stride positive)
        outer = [a for a, i in enumerate(e.index) if mentions_loop_var(i, loop.var)]
        if len(outer) != 1 or not isinstance(e.index[outer[0]], LoopVar):
            continue
        later = [
            a
            for a, i in enumerate(e.index)
            if a > outer[0] and any(mentions_loop_var(i, v) for v in inner)
        ]
        if later:
            b, zero = gen.b, ir.Constant(I64, 0)
            strides = gen.state.arrays[e.buffer].strides
            signs = [b.icmp_signed("<", strides[a], zero) for a in (outer[0], later[-1])]
            return b.xor(*signs)
    return None


def _grain(gen: _Codegen, loop: Loop) -> ir.Value:
    """max(1, MIN_WORK_PER_CHUNK / the innermost iterations in one iteration of `loop`)."""
    work = _work(gen, loop.body, loop.var, _single_definitions(loop.body))
    b = gen.b
    grain = b.sdiv(ir.Constant(I64, MIN_WORK_PER_CHUNK), smax(b, work, 1))
    return smax(b, grain, 1)


def _single_definitions(body: tuple[Stmt, ...]) -> dict[str, Expr]:
    """The locals of `body` declared once and never assigned again, with their values."""
    given = Counter(name for name, _ in local_definitions(body))
    return {
        s.name: s.init
        for s in walk_stmts(body)
        if isinstance(s, DeclareLocal) and given[s.name] == 1
    }


def _work(
    gen: _Codegen, body: tuple[Stmt, ...], var: str, definitions: dict[str, Expr]
) -> ir.Value:
    total: ir.Value = ir.Constant(I64, 1)
    for s in body:
        if isinstance(s, Loop):
            extent = _extent_estimate(gen, s.extent, var, definitions)
            inner = gen.b.mul(extent, _work(gen, s.body, var, definitions))
            total = gen.b.add(total, inner)
        elif isinstance(s, If):
            total = gen.b.add(total, _work(gen, s.then, var, definitions))
    return total


def _extent_estimate(
    gen: _Codegen, extent: Expr, var: str, definitions: dict[str, Expr]
) -> ir.Value:
    """The extent as of the parallel loop's first iteration, when the kernel can compute
    it before the loop from sizes and scalars alone (locals of the body replaced by
    their definitions: a chunk's length `n = min(CH, L - c0)` is known at c0 = 0; never
    from an array's data, which may not be there when the loop is empty); else a
    constant bound or a guess."""
    first = _first_iteration(extent, var, definitions)
    known = all(
        not isinstance(e, Load)
        and (not isinstance(e, LoopVar) or e.name in gen.state.loops)
        and (not isinstance(e, LocalVar) or e.name in gen.state.locals)
        for e in walk_expr(first)
    )
    if known:
        return gen.expr(first)
    bound = constant_bound(extent)
    return ir.Constant(I64, UNKNOWN_EXTENT if bound is None else bound)


def _first_iteration(e: Expr, var: str, definitions: dict[str, Expr]) -> Expr:
    """`e` with the body's locals replaced by their definitions (as deep as they nest)
    and `var` by 0."""
    for _ in range(len(definitions)):
        if not any(isinstance(x, LocalVar) and x.name in definitions for x in walk_expr(e)):
            break
        e = map_expr(e, lambda x: definitions.get(x.name) if isinstance(x, LocalVar) else None)
    return map_expr(e, lambda x: Const(0, x.dtype) if x == LoopVar(var) else None)
