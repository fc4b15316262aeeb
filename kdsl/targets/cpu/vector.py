"""Explicit vector code for loops scheduled with `vectorize` (LoopExec.VECTORIZED).

A vector loop of width w runs its body once per w consecutive iterations: iteration t
handles the lanes v = t·w + 0 … t·w + w-1 (the expand pass guarantees the extent is a
multiple of w; one more vector with the lanes past the end masked off does the rest).
Every expression of the body is

* uniform — the same in every lane (it does not mention v or a vector local): scalar
  code, emitted by the scalar generator, broadcast where it meets a varying value; or
* varying — a `<w x T>` vector, lane by lane with the scalar operators' semantics.

Memory: a subscript `v + uniform` in the innermost axis of a contiguous buffer is one
vector load or store (a strided parameter checks its stride at run time: one element,
or minus one, the vector's lanes turned around); lanes a few
elements apart (`a[2·v + 1]`, `x[v, 2]` of rows of 3) are whole vectors and shuffles
(strided.py); any other varying address is a gather or scatter; a uniform address is a
scalar access.
Control: a uniform `If` branches; a varying one narrows the *mask* of active lanes, under
which stores are masked, assignments select, and loads are masked (a lane that is off
may be out of bounds, just as a `where` side that the scalar code would not evaluate).
Loops inside the body run with scalar control, so outer-loop vectorization (a vector
accumulator over an inner reduction loop, as in a naive matmul) is plain code.

Locals declared in the body are vectors when any assignment to them is varying or
masked; a local declared outside may only be an accumulator (`acc = acc op x`, op in
+ * max min): it gets a vector of partial results, combined across lanes after the
loop, which reorders a float sum or product (refused under strict_fp). Inside scalar
reduction loops that only accumulate into it (the outer part of a split reduction, the
j of a sum over (j, k) with k vectorized), the partials stay vectors across them and
the lanes are combined once after the outermost. A float sum's partials move up into
levels of block sums every BLOCK trips (partials.py has both).
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from llvmlite import ir

from kdsl import types as T
from kdsl.errors import CompileError, SourceLoc
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    Buffer,
    BufferRole,
    Cast,
    Check,
    Const,
    DeclareLocal,
    Expr,
    Fma,
    If,
    Kernel,
    Load,
    LocalVar,
    Loop,
    LoopKind,
    LoopVar,
    Prefetch,
    Select,
    Stmt,
    Store,
    Unary,
    UnaryOp,
)
from kdsl.ir.visit import children, walk_all_exprs, walk_expr, walk_stmts
from kdsl.targets.cpu.aliasing import scope_groups
from kdsl.targets.cpu.dot import emit_dot_loop
from kdsl.targets.cpu.jit import CACHE_LINE, in_hardware
from kdsl.targets.cpu.ops import I1, I8, I32, I64, PTR, constant, llvm_type, memory_type
from kdsl.targets.cpu.partials import (
    BLOCK,
    COPIES,
    Chain,
    Levels,
    add_blocks,
    blocked,
    combine_into_local,
    horizontal,
    identity,
    identity_slot,
    in_blocks,
    move_up,
    new_counter,
    open_chain,
    open_levels,
    pairwise,
    read_slot,
    reserve,
    with_levels,
)
from kdsl.targets.cpu.state import ErrorKind
from kdsl.targets.cpu.streaming import run_streaming, streamed_store
from kdsl.targets.cpu.strided import (
    Runs,
    filled_runs,
    store_filled_runs,
    strided_load,
    strided_store,
)
from kdsl.targets.cpu.vector_plan import (
    VectorPlan,
    accumulation,
    constant_count,
    plan_vector_loop,
)

if TYPE_CHECKING:
    from kdsl.targets.cpu.codegen import _Codegen

# the normal numbers' magnitudes, f32 (False) and f64 (True)
_NORMAL_RANGE = {
    False: (2.0**-126, (2 - 2**-23) * 2.0**127),
    True: (2.0**-1022, sys.float_info.max),
}

# what _VectorLoop.per_group computes on the values of groups of lanes: arithmetic that is
# safe on the zeros that a masked load reads for a group whose lanes are all off
_PER_GROUP = (Binary, Unary, Cast)
_SAFE_BINARY = frozenset(
    {BinaryOp.ADD, BinaryOp.SUB, BinaryOp.MUL, BinaryOp.MAX, BinaryOp.MIN, BinaryOp.AND}
)
_SAFE_UNARY = frozenset({UnaryOp.NEG, UnaryOp.ABS})


def emit_vector_loop(gen: _Codegen, loop: Loop) -> None:
    plan = plan_vector_loop(loop, gen.buffers)
    if plan.problem:
        raise CompileError(
            f"loop '{loop.var}' can't be vectorized: {plan.problem}",
            kernel=gen.kernel.name,
            loc=loop.loc,
            fix="vectorize an inner loop with a simpler body, or leave it scalar",
        )
    _VectorLoop(gen, loop, plan).emit()


def vector_obstacle(loop: Loop, kernel: Kernel) -> str | None:
    """Why `loop` can't be vectorized (None when it can): schedules check early."""
    return plan_vector_loop(loop, {b.name: b for b in kernel.buffers}).problem


class _VectorLoop:
    def __init__(self, gen: _Codegen, loop: Loop, plan: VectorPlan) -> None:
        self.gen, self.b, self.ops = gen, gen.b, gen.ops
        self.loop, self.plan, self.w = loop, plan, loop.width
        self.lanes: ir.Value = ir.Constant(ir.VectorType(I64, self.w), list(range(self.w)))
        self.vslots: dict[str, ir.Value] = {}  # vector locals
        self.lane_slots: dict[str, ir.Value] = {}  # the lanes' temporaries: a vector each
        self.held: dict[tuple[str, tuple[Expr, ...]], ir.Value] = {}  # see inner_loop
        self.partials: dict[str, list[ir.Value]] = {}  # accumulators' vectors of partials
        self.chains: dict[str, Chain] = {}  # the first of each, with a float sum's count
        self.array_levels: dict[str, list[Levels]] = {}  # an array's float sums': by element
        self.copy = 0  # which of them this copy of the body updates
        # the store written past the caches on this path (streaming.py): buffer, index
        self.streaming: tuple[str, tuple[Expr, ...]] | None = None
        self.base: ir.Value = ir.Constant(I64, 0)  # lane 0's iteration
        self.mask: ir.Value | None = None  # the active lanes; None: all
        self.wider: tuple[ir.Value | None, ...] = ()  # the masks a `where` side narrows
        self.spare_slots: dict[str, ir.Value] = {}  # by element type: off_lanes_elsewhere
        self.some_active = True  # the mask has an active lane (code runs only then)
        # values computed in the current block, by structure and mask (see `value`), with
        # what each read (see `forget_written`)
        self.computed: dict[tuple[int, int], tuple[ir.Value | None, ir.Value, frozenset[str]]] = {}
        self.read_sets: dict[int, tuple[Expr, frozenset[str]]] = {}  # id(node) -> its reads
        self.alias_groups = scope_groups(gen.kernel)
        self.numbers: dict[int, tuple[Expr, int]] = {}  # id(node) -> (node, its structure)
        self.structures: dict[tuple[object, ...], int] = {}
        self.runs = Runs(self)  # the statement's strided loads (strided.py)

    def vtype(self, t: ir.Type) -> ir.VectorType:
        return ir.VectorType(t, self.w)

    # ------------------------------------------------------------------ the loop

    def emit(self) -> None:
        """The loop, then each accumulator's partial results combined into its local.

        An accumulating body without loops of its own runs COPIES vector iterations per
        trip, each into its own partials: independent chains hide the latency of the
        adds; the remaining iterations (fewer than COPIES·w) follow one vector at a time.
        A float sum's chains run in blocks (`run`), unless the loop is too short to fill
        one; where it is carried, its chain and count are the outer loop's.
        """
        gen, b = self.gen, self.b
        nested = any(isinstance(s, Loop) for s in walk_stmts(self.loop.body))
        extent = self.loop.extent
        few = isinstance(extent, Const) and int(extent.value) <= BLOCK * self.w
        short = isinstance(extent, Const) and int(extent.value) <= self.w
        copies = COPIES if self.plan.accumulators and not (nested or short) else 1
        self.refuse_strict_fp()
        for name, (op, buf) in self.plan.array_accumulators.items():
            self.open_array_partials(name, op, buf, few)
        carried = gen.carried.get(self.loop.var, {})
        self.open_partials(copies, few, carried)
        reduction = self.loop.kind is LoopKind.REDUCTION
        gen.reduction_depth += reduction
        start: ir.Value = ir.Constant(I64, 0)
        stop = gen.expr(extent)
        counted = {n: c for n, c in self.chains.items() if c.count is not None}
        if copies > 1:
            trip = ir.Constant(I64, copies * self.w)
            start = b.mul(b.sdiv(stop, trip), trip)
            self.run(ir.Constant(I64, 0), start, copies, few, counted)
            # fewer than COPIES trips follow, which only a carried chain needs to count
            counted = {n: c for n, c in counted.items() if n in carried}
        streamed = streamed_store(self)
        if streamed is None:
            self.run(start, stop, 1, few or copies > 1, counted)
        else:  # (no accumulators: one copy, from 0)
            run_streaming(self, streamed, stop, lambda: self.run(start, stop, 1, few, counted))
        gen.reduction_depth -= reduction
        for name, (op, d) in self.plan.accumulators.items():
            if name in carried and copies > 1:  # the lanes stay apart until the outer
                slot = carried[name].slot  # loop ends (a tree of adds: its latency is short)
                b.store(pairwise(self.ops, op, self.partials[name], d), slot)
            elif name not in carried:
                groups = [(self.partials[name], self.chains[name].levels)]
                combine_into_local(gen, name, op, d, groups)
        for name, (op, buf) in self.plan.array_accumulators.items():
            self.close_array_partials(name, op, buf)

    def open_partials(self, copies: int, few: bool, carried: dict[str, Chain]) -> None:
        """`copies` vectors of partials per accumulator: the first the chain an outer loop
        carries, or a new one (blocked unless the loop has `few` trips), then new ones."""
        gen = self.gen
        for name, (op, d) in self.plan.accumulators.items():
            chain = carried.get(name) or (
                Chain(identity_slot(gen, op, d, self.w, name))
                if few
                else open_chain(gen, op, d, self.w, name, None)
            )
            own = [identity_slot(gen, op, d, self.w, name) for _ in range(copies - 1)]
            self.chains[name] = chain
            self.partials[name] = [chain.slot, *own]

    def refuse_strict_fp(self) -> None:
        """A float sum or product's vector partials reorder it: not under strict_fp."""
        gen = self.gen
        arrays = {n: (op, buf.dtype) for n, (op, buf) in self.plan.array_accumulators.items()}
        for name, (op, d) in {**self.plan.accumulators, **arrays}.items():
            if gen.strict_fp and d.is_float and op in (BinaryOp.ADD, BinaryOp.MUL):
                raise CompileError(
                    f"vectorizing loop '{self.loop.var}' reorders the float accumulation "
                    f"into '{name}', and the kernel is strict_fp",
                    kernel=gen.kernel.name,
                    loc=self.loop.loc,
                    fix="drop strict_fp=True, or vectorize another loop",
                )

    def run(
        self, start: ir.Value, stop: ir.Value, copies: int, few: bool, chains: dict[str, Chain]
    ) -> None:
        """The iterations [start, stop), `copies` vectors a trip. With blocked partials
        (float sums), in blocks of BLOCK trips unless there are `few` trips: the `chains`
        count each block before it runs (`reserve`: a chain about to pass BLOCK additions
        moves up first), a chain carried in strips (no count) moves up between blocks, an
        array's elements after each. A carried chain's run of one block (a row of a sum
        over two axes) is one loop, as it was unblocked: a loop nest there cost 3-12%."""
        gen, b, var = self.gen, self.b, self.loop.var
        step = copies * self.w
        carried = gen.carried.get(var, {})
        strips = {n: c.levels for n, c in carried.items() if c.count is None and c.levels}

        def block(first: ir.Value, last: ir.Value, inner: bool = False) -> None:
            trips = b.sdiv(b.sub(last, first), ir.Constant(I64, step))
            for name, chain in chains.items():
                reserve(gen, chain, self.partials[name], trips)
            if inner:  # counted from zero: LLVM unrolls it as it did the loop unblocked
                for name, levels in strips.items():  # (from the block's start, it did not)
                    with b.if_then(b.icmp_signed("!=", first, start)):
                        move_up(gen, self.partials[name], levels)
                size = b.sub(last, first)
                gen.counted(var, ir.Constant(I64, 0), size, step, self.lanes_of(copies, first))
            else:
                gen.counted(var, first, last, step, self.lanes_of(copies))
            for name, levels in self.array_levels.items():
                self.move_array_up(name, levels)

        if few or not (chains or strips or self.array_levels):
            block(start, stop)
            return
        blocks = functools.partial(in_blocks, gen, var, start, stop, BLOCK * step)
        if not (strips or any(n in carried for n in chains)):
            blocks(lambda f, t: block(f, t, inner=True))
            return
        one = b.icmp_signed("<=", b.sub(stop, start), ir.Constant(I64, BLOCK * step))
        with b.if_else(one, likely=True) as (then, otherwise):
            with then:
                block(start, stop)
            with otherwise:
                blocks(lambda f, t: block(f, t, inner=True))

    def open_array_partials(self, name: str, op: BinaryOp, buf: Buffer, few: bool) -> None:
        """A vector of partials per element of the array accumulator `name`, each the
        identity of `op` (lane_slot addresses them, as a lane temporary's vectors); a
        float sum's levels for each, unless the loop has `few` trips."""
        gen, count = self.gen, constant_count(buf) or 1
        start = self.splat(constant(identity(op, buf.dtype), buf.dtype))
        slots = gen._entry_alloca(ir.ArrayType(start.type, count), f"{name}.lanes")
        self.lane_slots[name] = slots
        for k in range(count):
            self.b.store(start, self.b.gep(slots, [ir.Constant(I64, k)], source_etype=start.type))
        if blocked(op, buf.dtype) and not few:
            blocks = new_counter(gen, f"{name}.blocks")
            self.array_levels[name] = [
                open_levels(gen, buf.dtype, self.w, name, blocks) for _ in range(count)
            ]

    def array_partial(self, name: str, k: int) -> tuple[ir.Value, ir.VectorType]:
        """Where the lanes' partials of element k of array accumulator `name` are."""
        vt = self.vtype(memory_type(self.gen.buffers[name].dtype))
        return self.b.gep(self.lane_slots[name], [ir.Constant(I64, k)], source_etype=vt), vt

    def move_array_up(self, name: str, levels: list[Levels]) -> None:
        """Each element's partials up into its levels, and back to zero."""
        d = self.gen.buffers[name].dtype
        sums = []
        for k, mine in enumerate(levels):
            at, vt = self.array_partial(name, k)
            sums.append((mine, self.b.load(at, typ=vt)))
            self.b.store(self.splat(constant(identity(BinaryOp.ADD, d), d)), at)
        add_blocks(self.gen, sums)

    def close_array_partials(self, name: str, op: BinaryOp, buf: Buffer) -> None:
        """Each element of `name` combined with its lanes' partials (the identity where
        the loop never updated it)."""
        b, d = self.b, buf.dtype
        dims = [int(e.value) for e in buf.shape]  # type: ignore[attr-defined]
        levels = self.array_levels.pop(name, None)
        for k, index in enumerate(itertools.product(*map(range, dims))):
            at, vt = self.array_partial(name, k)
            lanes = with_levels(
                self.ops, op, d, b.load(at, typ=vt), None if levels is None else levels[k]
            )
            at = self.gen.address(name, tuple(Const(i, T.INDEX) for i in index), None, False)
            old = b.load(at, typ=memory_type(d))
            b.store(self.ops.binary(op, old, horizontal(self.ops, op, lanes, d), d), at)
        del self.lane_slots[name]

    def lanes_of(self, copies: int, offset: ir.Value | None = None) -> Callable[[ir.Value], None]:
        """The vector loop's body, `copies` times: w consecutive iterations each, from the
        loop counter's value (plus `offset`)."""

        def body(slot: ir.Value) -> None:
            first = self.b.load(slot, typ=I64)
            if offset is not None:
                first = self.b.add(first, offset)
            for copy in range(copies):
                self.copy = copy
                self.base = self.b.add(first, ir.Constant(I64, copy * self.w))
                self.block(self.loop.body)

        return body

    def inner_loop(self, loop: Loop) -> None:
        """A loop inside the vector loop: dot-product instructions where it is a short
        sum of narrow products (dot.py), else scalar control with a vector body."""
        if not emit_dot_loop(self, loop):
            self.scalar_control_loop(loop)

    def scalar_control_loop(self, loop: Loop) -> None:
        """A loop inside the vector loop: scalar control (a uniform extent), vector body.

        Vectors of a temporary that the loop updates in place at one address (a tile of
        accumulators: `acc[r, j] = acc[r, j] + …`) live in registers for the whole loop:
        loaded before it, stored after it (LLVM keeps such stores inside the loop)."""
        gen, b = self.gen, self.b
        reduction = loop.kind is LoopKind.REDUCTION
        gen.reduction_depth += reduction
        stop = self.uniform(loop.extent)

        def body(slot: ir.Value) -> None:
            gen.state.loops[loop.var] = slot
            self.block(loop.body)

        held = self.registers_for(loop)
        if not held:
            self.gen.counted(loop.var, ir.Constant(I64, 0), stop, 1, body)
        else:
            with b.if_then(b.icmp_signed(">", stop, ir.Constant(I64, 0))):
                for (name, index), slot in held.items():
                    b.store(self.load(Load(name, index, gen.buffers[name].dtype)), slot)
                self.held.update(held)
                self.gen.counted(loop.var, ir.Constant(I64, 0), stop, 1, body)
                for key in held:
                    del self.held[key]
                self.computed.clear()  # values made in the loop's body don't dominate here
                gen.memo = {}
                for (name, index), slot in held.items():
                    self.write_back(name, index, read_slot(b, slot))
        gen.reduction_depth -= reduction

    def write_back(self, name: str, index: tuple[Expr, ...], value: ir.Value) -> None:
        dtype = self.gen.buffers[name].dtype
        self.access(name, index, None, lambda at: self.store_at(at, value, dtype))

    def registers_for(self, loop: Loop) -> dict[tuple[str, tuple[Expr, ...]], ir.Value]:
        """Slots for the temporaries' vectors `loop` updates at loop-invariant addresses: a
        tile of them (`acc[0, j]`, `acc[1, j]`, …) when its subscripts tell them apart.
        A store in an inner loop or a branch is fine: the slot starts as the memory's
        value and is written back after the loop, and the temporary is this thread's.
        Under a mask (a vector loop's tail) the load and the write-back are masked."""
        if self.gen.checks:
            return {}
        inner = {st.var for st in walk_stmts((loop,)) if isinstance(st, Loop)}
        inner |= {st.name for st in walk_stmts(loop.body) if isinstance(st, DeclareLocal)}
        loaded: dict[str, set[tuple[Expr, ...]]] = {}
        for e in walk_all_exprs(loop.body):
            if isinstance(e, Load):
                loaded.setdefault(e.buffer, set()).add(e.index)
        stored: dict[str, list[tuple[Expr, ...]]] = {}
        for st in walk_stmts(loop.body):
            if isinstance(st, Store) and st.index not in stored.get(st.buffer, []):
                stored.setdefault(st.buffer, []).append(st.index)
        held: dict[tuple[str, tuple[Expr, ...]], ir.Value] = {}
        for name, indices in stored.items():
            buf = self.gen.buffers[name]
            if (
                buf.role is not BufferRole.TEMP
                or buf.dtype.is_bool
                or not loaded.get(name, set()) <= set(indices)
                or any((name, index) in self.held for index in indices)  # by a loop around
                or not _apart(indices)
                or not all(self.fixed_across_lanes(index, inner) for index in indices)
            ):
                continue
            vt = self.vtype(memory_type(buf.dtype))
            for index in indices:
                held[(name, index)] = self.gen._entry_alloca(vt, f"{name}.reg")
        return held

    def fixed_across_lanes(self, index: tuple[Expr, ...], inner: set[str]) -> bool:
        """Whether `index` stays put while the loop runs (it names none of `inner`, the
        loop's own variables and locals) yet differs between the lanes."""
        moves = any(
            isinstance(e, LoopVar | LocalVar) and e.name in inner
            for i in index
            for e in walk_expr(i)
        )
        return not moves and any(map(self.plan.varying, index))

    # ------------------------------------------------------------------ statements

    def block(self, body: tuple[Stmt, ...]) -> None:
        """The statements of `body`, which share the values they compute until a
        statement writes what a value read (`forget_written`); none come in from before
        (another copy of the body, or a loop's last trip, made them) or go out."""
        self.computed.clear()
        for piece in filled_runs(self, body):
            if len(piece) == 1:
                self.stmt(piece[0])
            else:
                store_filled_runs(self, piece)
        self.computed.clear()

    def stmt(self, s: Stmt) -> None:
        with self.statement_scope(s):
            self.statement(s)

    @contextmanager
    def statement_scope(self, s: Stmt) -> Iterator[None]:
        """While statement `s` is emitted: its strided loads (strided.py); after it, the
        values computed so far that it may have changed are forgotten."""
        self.gen.memo = {}  # the scalar generator's values for this statement (_Codegen.expr)
        with self.runs.of(s, self.mask):
            yield
        self.forget_written(s)

    def forget_written(self, s: Stmt) -> None:
        """Drop the values that statement `s` may have changed: those reading the array it
        stores to (or any array that may be the same memory: aliasing.scope_groups) or
        the local it assigns; all of them after a loop or a condition (their values
        don't reach past them). Fused statements so share loads and whatever is computed
        from them: three components of a vector divided by its length load the vector
        and take the square root once, not three times."""
        match s:
            case Store(buffer=name):
                written = self.alias_groups.get(name, name)
            case DeclareLocal(name=name) | Assign(local=name):
                written = _LOCAL + name
            case Check() | Prefetch():
                return
            case _:
                self.computed.clear()
                return
        for key, (_, _, reads) in list(self.computed.items()):
            if written in reads:
                del self.computed[key]

    def reads(self, e: Expr) -> frozenset[str]:
        """The arrays (by alias group) and locals (`_LOCAL` + name) that `e` reads."""
        hit = self.read_sets.get(id(e))
        if hit is None or hit[0] is not e:
            found: set[str] = set()
            if isinstance(e, Load):
                found.add(self.alias_groups.get(e.buffer, e.buffer))
            elif isinstance(e, LocalVar):
                found.add(_LOCAL + e.name)
            for name in _fields(type(e)):
                v = getattr(e, name)
                for child in v if isinstance(v, tuple) else (v,):
                    if isinstance(child, Expr):
                        found |= self.reads(child)
            hit = self.read_sets[id(e)] = (e, frozenset(found))
        return hit[1]

    def statement(self, s: Stmt) -> None:
        gen, b = self.gen, self.b
        match s:
            case Store():
                self.store(s)
            case DeclareLocal(name=n, dtype=d, init=v) if n in self.plan.varying_locals:
                slot = self.vslots.get(n) or gen._entry_alloca(self.vtype(llvm_type(d)), n)
                self.vslots[n] = slot
                self.assign(slot, v)
            case Assign(local=n, value=v) if n in self.plan.varying_locals:
                self.assign(self.vslots[n], v)
            case Assign(local=n) if n in self.plan.accumulators:
                self.accumulate(s)
            case DeclareLocal() | Assign():  # a uniform local, never under a mask
                gen.stmt(s, [])
            case Loop():
                self.inner_loop(s)
            case If(cond=c, then=then) if not self.plan.varying(c):
                with b.if_then(self.uniform(c)):
                    self.block(then)
            case If(cond=c, then=then):
                self.masked(self.and_mask(self.value(c)), lambda: self.block(then))
            case Check():
                self.check(s)
            case Prefetch(buffer=name) if self.streaming and name == self.streaming[0]:
                pass  # the stores bypass the cache: fetching their lines is wasted
            case Prefetch(index=index) if not any(
                isinstance(e, LocalVar) and e.name in self.plan.varying_locals
                for i in index
                for e in walk_expr(i)
            ):  # once per vector, at its first lane: a vector's elements share few lines
                self.at_first_lane(lambda: gen.stmt(s, []))
            case Prefetch():
                pass
            case Allocate(buffer=name) if name in self.plan.lane_temps:
                buf = self.plan.lane_temps[name]
                count = constant_count(buf) or 1
                vt = ir.ArrayType(self.vtype(memory_type(buf.dtype)), count)
                self.lane_slots[name] = self.lane_slots.get(name) or gen._entry_alloca(vt, name)
            case Allocate(buffer=name):
                raise CompileError(f"a temporary ('{name}') inside vector loop '{self.loop.var}'")

    def at_first_lane(self, emit: Callable[[], None]) -> None:
        """Run scalar code (`emit`) that reads the vector loop's variable as its first lane."""
        gen, var = self.gen, self.loop.var
        slot = gen._entry_alloca(I64, f"{var}.first")
        self.b.store(self.base, slot)
        before = gen.state.loops.get(var)
        gen.state.loops[var] = slot
        emit()
        if before is None:
            del gen.state.loops[var]
        else:
            gen.state.loops[var] = before

    def masked(self, mask: ir.Value, emit: Callable[[], None]) -> None:
        """Run `emit` with `mask` as the active lanes, skipping it when none is active."""
        saved = self.mask, self.some_active, self.wider
        with self.b.if_then(self.any(mask)):
            self.mask, self.some_active, self.wider = mask, True, ()
            emit()
        self.mask, self.some_active, self.wider = saved

    def assign(self, slot: ir.Value, value: Expr) -> None:
        new = self.vector(self.value(value))
        if self.mask is not None:
            new = self.b.select(self.mask, new, read_slot(self.b, slot))
        self.b.store(new, slot)

    def accumulate(self, s: Assign | Store) -> None:
        """`acc = acc op x` into the local's partials; `t[r] = t[r] op x` into the
        partials of the array accumulator's element r."""
        found = accumulation(s)
        assert found is not None  # plan_vector_loop made it an accumulator
        op, x = found
        if isinstance(s, Assign):
            slot = self.partials[s.local][self.copy]
            d = self.plan.accumulators[s.local][1]
            vt = slot.allocated_type
        else:
            slot = self.lane_slot(s.buffer, s.index, s.loc)
            d = self.plan.array_accumulators[s.buffer][1].dtype
            vt = self.vtype(memory_type(d))
        old = self.b.load(slot, typ=vt)
        if isinstance(s.value, Fma):  # keep the single rounding of the contracted sum
            a, b = (self.vector(self.value(e)) for e in (s.value.a, s.value.b))
            new = self.ops.fma(a, b, old)
        else:
            new = self.ops.binary(op, old, self.vector(self.value(x)), d)
        if self.mask is not None:
            new = self.b.select(self.mask, new, old)
        self.b.store(new, slot)

    def check(self, s: Check) -> None:
        gen = self.gen
        ok = self.all(self.value(s.cond)) if self.plan.varying(s.cond) else self.uniform(s.cond)
        gen._fail_unless(ok, ErrorKind.CHECK, len(gen.sites.checks))
        gen.sites.checks.append(s)

    def lane_slot(self, name: str, index: tuple[Expr, ...], loc: SourceLoc | None) -> ir.Value:
        """Where the lanes' vector of `name[index]` is, for a temporary each lane has its
        own (the subscripts are the same in every lane: plan_vector_loop checked)."""
        gen, b = self.gen, self.b
        buf = self.plan.lane_temps.get(name) or self.plan.array_accumulators[name][1]
        dims = [int(d.value) for d in buf.shape]  # type: ignore[attr-defined]
        if gen.checks or not all(gen._proven(name, a, i) for a, i in enumerate(index)):
            ok: ir.Value = ir.Constant(I1, 1)
            for i, d in zip(index, dims):
                ok = b.and_(ok, b.icmp_unsigned("<", self.uniform(i), ir.Constant(I64, d)))
            gen._fail_unless(ok, ErrorKind.BOUNDS, len(gen.sites.accesses))
            gen.sites.accesses.append((name, loc))
        flat: ir.Value = ir.Constant(I64, 0)
        for i, d in zip(index, dims):
            flat = b.add(b.mul(flat, ir.Constant(I64, d)), self.uniform(i))
        vt = self.vtype(memory_type(buf.dtype))
        return b.gep(self.lane_slots[name], [flat], source_etype=vt)

    def store(self, s: Store) -> None:
        gen, b = self.gen, self.b
        if s.buffer in self.plan.array_accumulators:
            self.accumulate(s)
            return
        if s.buffer in self.lane_slots:
            at = self.lane_slot(s.buffer, s.index, s.loc)
            value = self.vector(self.value(s.value))
            if gen.buffers[s.buffer].dtype.is_bool:
                value = b.zext(value, self.vtype(I8))
            if self.mask is not None:  # lanes that are off keep their element
                value = b.select(self.mask, value, b.load(at, typ=value.type))
            b.store(value, at)
            return
        slot = self.held.get((s.buffer, s.index))
        if slot is not None:  # kept in a register for the enclosing loop
            value = self.vector(self.value(s.value))
            if self.mask is not None:  # lanes that are off keep the register's value
                value = b.select(self.mask, value, read_slot(b, slot))
            b.store(value, slot)
            return
        if not any(map(self.plan.varying, s.index)):
            gen.stmt(s, [])  # the value is uniform too (plan_vector_loop checked)
            return
        buf = gen.buffers[s.buffer]
        value = self.vector(self.value(s.value))
        if buf.dtype.is_bool:
            value = b.zext(value, self.vtype(I8))
        if strided_store(self, s, value):
            return
        nontemporal = self.streaming == (s.buffer, s.index)
        self.access(
            s.buffer,
            s.index,
            s.loc,
            lambda at: self.store_at(at, value, buf.dtype, nontemporal),
            s.checked,
        )

    # ------------------------------------------------------------------ expressions

    def value(self, e: Expr) -> ir.Value:
        """`e`: a scalar when uniform, a vector when varying. Equal sub-expressions of a
        statement are computed once (per mask: masked loads have zeros where lanes are
        off): traced code repeats them, and a tree can be exponentially larger than the
        computation it spells."""
        n = self.structure(e)
        # a value computed under a mask that this one narrows holds in all of its lanes
        # (`v` in the condition and both sides of kd.where(v > 0, v·a, v + b): a chain of
        # such steps was computed 3^depth times)
        for mask in (self.mask, *reversed(self.wider)):
            hit = self.computed.get((n, id(mask)))
            if hit is not None and hit[0] is mask:
                return hit[1]
        hit = self.computed[(n, id(self.mask))] = (self.mask, self.compute(e), self.reads(e))
        return hit[1]

    def structure(self, e: Expr) -> int:
        """A number that equal expressions share (source locations aside)."""
        hit = self.numbers.get(id(e))
        if hit is None or hit[0] is not e:
            parts: list[object] = [type(e)]
            for name in _fields(type(e)):
                v = getattr(e, name)
                if isinstance(v, tuple):  # a Load's subscripts
                    parts.append(tuple(self.structure(i) for i in v))
                else:
                    parts.append(self.structure(v) if isinstance(v, Expr) else repr(v))
            n = self.structures.setdefault(tuple(parts), len(self.structures))
            hit = self.numbers[id(e)] = (e, n)
        return hit[1]

    def compute(self, e: Expr) -> ir.Value:
        if not self.plan.varying(e):
            return self.uniform(e)
        spread = self.per_group(e)
        if spread is not None:
            return spread
        ops = self.ops
        match e:
            case LoopVar(dtype=d):
                lanes = self.b.add(self.splat(self.base), self.lanes)
                return lanes if d == T.INDEX else ops.cast(lanes, T.INDEX, d)
            case LocalVar(name=n):
                return read_slot(self.b, self.vslots[n])
            case Load():
                return self.load(e)
            case Binary(op=BinaryOp.DIV, lhs=x, rhs=y) if (
                x.dtype.is_float and not self.gen.strict_fp and not self.plan.varying(y)
            ):
                return self.divided_by_uniform(self.vector(self.value(x)), self.uniform(y))
            case Binary(op=op, lhs=x, rhs=y):
                return ops.binary(
                    op, self.vector(self.value(x)), self.vector(self.value(y)), x.dtype
                )
            case Unary(op=op, operand=x, dtype=d):
                return ops.unary(op, self.value(x), d)
            case Cast(operand=x, dtype=d):
                return ops.cast(self.value(x), x.dtype, d)
            case Fma(a=x, b=y, c=z):
                return ops.fma(*(self.vector(self.value(t)) for t in (x, y, z)))
            case Select(cond=c, if_true=x, if_false=y):
                return self.select(c, x, y)
        raise TypeError(f"cannot generate vector code for {e!r}")

    def uniform(self, e: Expr) -> ir.Value:
        """Scalar code for uniform `e`; under a mask, loads run only if a lane is active."""
        gen, b = self.gen, self.b
        if self.some_active or not any(isinstance(n, Load) for n in walk_expr(e)):
            return gen.expr(e)
        assert self.mask is not None
        before = b.block
        with b.if_then(self.any(self.mask)), self.branch():
            value, computed = gen.expr(e), b.block
        phi = b.phi(value.type)
        phi.add_incoming(value, computed)
        phi.add_incoming(ir.Constant(value.type, None), before)
        return phi

    def divided_by_uniform(self, x: ir.Value, y: ir.Value) -> ir.Value:
        """x / y for y the same in every lane: x · (1/y), within 1.5 ulp, while 1/y is a
        normal number (a zmm division costs ~10 FMAs; the scalar reciprocal is one
        division per vector, hoisted when y is loop-invariant); a division otherwise (a
        tiny y's reciprocal overflows, a huge one's is subnormal; 0, inf and NaN)."""
        b, t = self.b, y.type
        reciprocal = b.fdiv(ir.Constant(t, 1.0), y)
        size = self.ops.intrinsic(f"llvm.fabs.{self.ops.suffix(t)}", t, [reciprocal])
        tiny, largest = _NORMAL_RANGE[t == ir.DoubleType()]
        normal = b.and_(
            b.fcmp_ordered(">=", size, ir.Constant(t, tiny)),
            b.fcmp_ordered("<=", size, ir.Constant(t, largest)),
        )
        with b.if_else(normal) as (then, otherwise):
            with then:
                fast, fast_from = b.fmul(x, self.splat(reciprocal)), b.block
            with otherwise:
                slow, slow_from = b.fdiv(x, self.splat(y)), b.block
        result = b.phi(x.type)
        result.add_incoming(fast, fast_from)
        result.add_incoming(slow, slow_from)
        return result

    def vector(self, v: ir.Value) -> ir.Value:
        return v if isinstance(v.type, ir.VectorType) else self.splat(v)

    def splat(self, v: ir.Value) -> ir.Value:
        return self.ops.splat(v, self.w)

    def select(self, c: Expr, x: Expr, y: Expr) -> ir.Value:
        """As in the scalar code, a side that loads is evaluated only where it is chosen."""
        b = self.b
        loads = any(isinstance(n, Load) for side in (x, y) for n in walk_expr(side))
        if not self.plan.varying(c):
            cond = self.uniform(c)
            if not loads:
                return b.select(cond, self.vector(self.value(x)), self.vector(self.value(y)))
            with b.if_else(cond) as (then, otherwise):
                with then, self.branch():
                    tv, tb = self.vector(self.value(x)), b.block
                with otherwise, self.branch():
                    fv, fb = self.vector(self.value(y)), b.block
            phi = b.phi(tv.type)
            phi.add_incoming(tv, tb)
            phi.add_incoming(fv, fb)
            return phi
        cond = self.value(c)
        if not loads:
            return b.select(cond, self.vector(self.value(x)), self.vector(self.value(y)))
        tv = self.narrowed(self.and_mask(cond), x)
        fv = self.narrowed(self.and_mask(b.not_(cond)), y)
        return b.select(cond, tv, fv)

    @contextmanager
    def branch(self) -> Iterator[None]:
        """Code in a conditional block: what it computes is not available after it."""
        saved, saved_scalar = dict(self.computed), dict(self.gen.memo)
        yield
        self.computed, self.gen.memo = saved, saved_scalar

    def narrowed(self, mask: ir.Value, e: Expr) -> ir.Value:
        saved = self.mask, self.some_active, self.wider
        self.mask, self.some_active, self.wider = mask, False, (*self.wider, self.mask)
        value = self.vector(self.value(e))
        self.mask, self.some_active, self.wider = saved
        return value

    def and_mask(self, cond: ir.Value) -> ir.Value:
        return cond if self.mask is None else self.b.and_(self.mask, cond)

    def any(self, mask: ir.Value) -> ir.Value:
        return self.ops.intrinsic(f"llvm.vector.reduce.or.{self.ops.suffix(mask.type)}", I1, [mask])

    def all(self, cond: ir.Value) -> ir.Value:
        """Every active lane of `cond` is true."""
        if self.mask is not None:
            cond = self.b.or_(cond, self.b.not_(self.mask))
        return self.ops.intrinsic(
            f"llvm.vector.reduce.and.{self.ops.suffix(cond.type)}", I1, [cond]
        )

    # ------------------------------------------------------------------ memory

    def load(self, e: Load) -> ir.Value:
        slot = self.held.get((e.buffer, e.index))
        if slot is not None:
            return read_slot(self.b, slot)
        if e.buffer in self.lane_slots:
            at = self.lane_slot(e.buffer, e.index, e.loc)
            value = self.b.load(at, typ=self.vtype(memory_type(e.dtype)))
            return self.b.trunc(value, self.vtype(I1)) if e.dtype.is_bool else value
        value = self.grouped_load(e)
        if value is None:
            value = strided_load(self, e)
        if value is None:
            value = self.access(
                e.buffer, e.index, e.loc, lambda at: self.load_at(at, e.dtype), e.checked
            )
        return self.b.trunc(value, self.vtype(I1)) if e.dtype.is_bool else value

    def access(
        self,
        name: str,
        index: tuple[Expr, ...],
        loc: SourceLoc | None,
        emit: Callable[[_Lanes], ir.Value | None],
        checked: bool = False,
    ) -> ir.Value | None:
        """Emit a load or store (`emit`) of the lanes' elements of `name[index]`."""
        gen, b = self.gen, self.b
        info, buf = gen.state.arrays[name], gen.buffers[name]
        if gen.must_check(index, checked):
            self.bounds_check(name, index, loc)
        axis = self.unit_axis(index)
        if axis is None:
            offset: ir.Value = self.splat(ir.Constant(I64, 0))
            for i, stride in zip(index, info.strides):
                offset = b.add(offset, b.mul(self.vector(self.value(i)), self.splat(stride)))
            return emit(_Lanes(self.gep(info.data, offset)))
        first, stride = self.first_lane(name, index, axis), info.strides[axis[0]]

        def spread() -> _Lanes:  # lane k at first + k·stride
            return _Lanes(self.gep(first, b.mul(self.lanes, self.splat(stride))))

        if buf.contiguous or buf.fortran or buf.role is not BufferRole.PARAM:
            unit = axis[0] == (0 if buf.fortran else len(index) - 1)  # (C order: the last)
            return emit(_Lanes(first, contiguous=True) if unit else spread())
        # strided: along any axis, contiguous where its stride is the element's size at run
        # time (the first axis of a Fortran-ordered array, the rows of a transposed one),
        # or minus that (x[::-1]: one vector from the last lane's element, its lanes turned
        # around; a gather, and on AVX2 a store per lane, ran a reversed copy at half speed)
        size = buf.dtype.itemsize

        def backwards() -> _Lanes:  # from the last lane's element, w - 1 strides on
            last = b.gep(first, [b.mul(stride, ir.Constant(I64, self.w - 1))], source_etype=I8)
            return _Lanes(last, contiguous=True, reversed=True)

        return self.either(
            b.icmp_signed("==", stride, ir.Constant(I64, size)),
            lambda: emit(_Lanes(first, contiguous=True)),
            lambda: self.either(
                b.icmp_signed("==", stride, ir.Constant(I64, -size)),
                lambda: emit(backwards()),
                lambda: emit(spread()),
            ),
        )

    def either(
        self,
        condition: ir.Value,
        then: Callable[[], ir.Value | None],
        otherwise: Callable[[], ir.Value | None],
        likely: bool | None = None,
    ) -> ir.Value | None:
        """`then()` where `condition` holds, `otherwise()` elsewhere: their value (None for
        stores)."""
        b = self.b
        with b.if_else(condition, likely=likely) as (yes, no):
            with yes:
                tv, tb = then(), b.block
            with no:
                fv, fb = otherwise(), b.block
        if tv is None or fv is None:
            return None
        phi = b.phi(tv.type)
        phi.add_incoming(tv, tb)
        phi.add_incoming(fv, fb)
        return phi

    def grouped_load(self, e: Load) -> ir.Value | None:
        """`x[…, v // c + u]` with c dividing the width (one scale per group of c lanes):
        the w/c consecutive elements from x[…, base // c + u] (every vector starts at a
        multiple of w), each repeated for its c lanes; None for any other load. Under a
        mask, an element is read when a lane of its group is on."""
        c = self.load_groups(e)
        return None if c is None else self.spread(self.group_values(e, c, {}), c)

    def load_groups(self, e: Load) -> int | None:
        """c when `e` is a grouped load (`grouped_load`) of memory, None otherwise."""
        buf = self.gen.buffers[e.buffer]
        if (
            (e.buffer, e.index) in self.held
            or e.buffer in self.lane_slots
            or self.gen.must_check(e.index, e.checked)
            or not e.index
            or any(map(self.plan.varying, e.index[:-1]))
            or not (buf.contiguous or buf.role is not BufferRole.PARAM)
        ):
            return None
        found = self.grouped(e.index[-1])
        return None if found is None else found[0]

    def per_group(self, e: Expr) -> ir.Value | None:
        """Arithmetic on grouped loads only (and uniform values), `d[r, v // 8]·s[v // 8]`:
        computed on the w/c values of the groups, then spread to their lanes, instead of
        on all w lanes (a Q8_0 product's two scales per vector: 2 lanes converted and
        multiplied, not 16); None for any other expression (a load alone included)."""
        if not isinstance(e, _PER_GROUP):  # (a load alone: grouped_load)
            return None
        c = self.groups_of(e, {})
        return None if c is None else self.spread(self.group_values(e, c, {}), c)

    def groups_of(self, e: Expr, seen: dict[int, int | None]) -> int | None:
        """The c of the grouped loads that varying `e` is computed from, when they share
        one and every operation is safe on the values of groups whose lanes are all off
        (a masked load reads zeros there: no division). `seen`: the answers so far, by
        node (traced values share their parts: a tree can be exponentially larger)."""
        if id(e) in seen:
            return seen[id(e)]
        if not self.plan.varying(e):
            found: int | None = 0  # (any c)
        elif isinstance(e, Load):  # (a bool in memory is a byte: load() narrows it)
            found = None if e.dtype.is_bool else self.load_groups(e)
        elif (
            not isinstance(e, _PER_GROUP)
            or (isinstance(e, Binary) and e.op not in _SAFE_BINARY)
            or (isinstance(e, Unary) and e.op not in _SAFE_UNARY)
        ):
            found = None
        else:
            parts = {self.groups_of(x, seen) for x in children(e)} - {0}
            found = parts.pop() if len(parts) == 1 and None not in parts else None
        seen[id(e)] = found
        return found

    def group_values(self, e: Expr, c: int, made: dict[int, ir.Value]) -> ir.Value:
        """Varying `e` (`groups_of` said c) on the w/c values of the vector's groups;
        `made`: the values so far, by node."""
        if id(e) in made:
            return made[id(e)]
        n, b, ops = self.w // c, self.b, self.ops
        match e:
            case _ if not self.plan.varying(e):
                value = ops.splat(self.uniform(e), n)
            case Load(index=index):
                found = self.grouped(index[-1])
                assert found is not None
                first = b.add(b.sdiv(self.base, ir.Constant(I64, c)), self.uniform(found[1]))
                value = self.run_at(e, first, n, self.group_mask(c))
            case Binary(op=op, lhs=x, rhs=y):
                value = ops.binary(
                    op, self.group_values(x, c, made), self.group_values(y, c, made), x.dtype
                )
            case Unary(op=op, operand=x, dtype=d):
                value = ops.unary(op, self.group_values(x, c, made), d)
            case Cast(operand=x, dtype=d):
                value = ops.cast(self.group_values(x, c, made), x.dtype, d)
            case _:
                raise AssertionError(f"not a grouped expression: {e!r}")
        made[id(e)] = value
        return value

    def spread(self, groups: ir.Value, c: int) -> ir.Value:
        """Each of the w/c group values repeated for its c lanes."""
        lanes = ir.Constant(ir.VectorType(I32, self.w), [k // c for k in range(self.w)])
        return self.b.shuffle_vector(groups, ir.Constant(groups.type, None), lanes)

    def run_at(
        self, e: Load, first: ir.Value, n: int, mask: ir.Value | None = None, per_word: int = 1
    ) -> ir.Value:
        """The n consecutive elements of `e`'s buffer from position `first` of its last
        axis, the other subscripts of `e` being uniform (only those `mask` selects). With
        `per_word` > 1, `mask` selects whole words of that many elements (32 or 64 bits),
        read as integers: AVX2 masks loads of such lanes (vpmaskmovd/q) but not of bytes, and
        LLVM splits a byte-masked load into a branch per byte, slow to run and to compile."""
        b, info = self.b, self.gen.state.arrays[e.buffer]
        offset: ir.Value = b.mul(first, info.strides[-1])
        for i, stride in zip(e.index[:-1], info.strides):
            offset = b.add(offset, b.mul(self.uniform(i), stride))
        at = b.gep(info.data, [offset], source_etype=I8)
        vt = ir.VectorType(memory_type(e.dtype), n)
        if mask is None:
            return b.load(at, typ=vt, align=e.dtype.itemsize)
        if per_word == 1:
            return self.masked_read("load", vt, at, mask, e.dtype.itemsize)
        words = ir.VectorType(ir.IntType(8 * per_word * e.dtype.itemsize), n // per_word)
        return b.bitcast(self.masked_read("load", words, at, mask, e.dtype.itemsize), vt)

    def group_mask(self, c: int) -> ir.Value | None:
        """<w/c x i1>: whether any lane of each group of c is on (None: all are)."""
        if self.mask is None:
            return None
        b, undefined = self.b, ir.Constant(self.mask.type, None)
        any_on: ir.Value | None = None
        for k in range(c):
            lanes = ir.Constant(ir.VectorType(I32, self.w // c), list(range(k, self.w, c)))
            kth = b.shuffle_vector(self.mask, undefined, lanes)
            any_on = kth if any_on is None else b.or_(any_on, kth)
        return any_on

    def grouped(self, e: Expr) -> tuple[int, Expr] | None:
        """(c, u) when `e` is v // c + u (u uniform, c > 1 dividing the width)."""
        varying = self.plan.varying
        match e:
            case Binary(
                op=BinaryOp.FLOORDIV, lhs=LoopVar(name=n), rhs=Const(value=c), dtype=T.INDEX
            ) if n == self.loop.var and isinstance(c, int) and c > 1 and self.w % c == 0:
                return c, Const(0, T.INDEX)
            case Binary(
                op=BinaryOp.FLOORDIV,
                lhs=Binary(op=BinaryOp.ADD, lhs=start, rhs=LoopVar(name=n)),
                rhs=Const(value=c),
                dtype=T.INDEX,
            ) if (
                n == self.loop.var
                and isinstance(c, int)
                and c > 1
                and self.w % c == 0
                and not varying(start)
                and _multiple_of(start, c)
            ):  # a masked tail's lanes: (start + v) // c, start a multiple of the width
                return c, Binary(BinaryOp.FLOORDIV, start, Const(c, T.INDEX), T.INDEX)
            case Binary(op=BinaryOp.ADD, lhs=x, rhs=y, dtype=T.INDEX) if varying(x) != varying(y):
                inner = self.grouped(x if varying(x) else y)
                other = y if varying(x) else x
                return (
                    None
                    if inner is None
                    else (inner[0], Binary(BinaryOp.ADD, other, inner[1], T.INDEX))
                )
        return None

    def first_lane(
        self, name: str, index: tuple[Expr, ...], axis: tuple[int, Expr] | None = None
    ) -> ir.Value:
        """The address of the first lane's element of `name[index]`, whose only varying
        subscript is `v + u` in an axis (`axis`: unit_axis's answer, found if not given)."""
        b, info = self.b, self.gen.state.arrays[name]
        axis = axis or self.unit_axis(index)
        assert axis is not None, "first_lane of an access that is not along one axis"
        offset: ir.Value = ir.Constant(I64, 0)
        for a, (i, stride) in enumerate(zip(index, info.strides)):
            at = b.add(self.base, self.uniform(axis[1])) if a == axis[0] else self.uniform(i)
            offset = b.add(offset, b.mul(at, stride))
        return b.gep(info.data, [offset], source_etype=I8)

    def unit_axis(self, index: tuple[Expr, ...]) -> tuple[int, Expr] | None:
        """(axis, u) when the only varying subscript is `v + u` in axis `axis`."""
        varying = [a for a, i in enumerate(index) if self.plan.varying(i)]
        if len(varying) != 1:
            return None
        offset = self.affine(index[varying[0]])
        return None if offset is None else (varying[0], offset)

    def affine(self, e: Expr) -> Expr | None:
        """u (uniform) when `e` is v + u."""
        varying = self.plan.varying
        match e:
            case LoopVar(name=n, dtype=T.INDEX) if n == self.loop.var:
                return Const(0, T.INDEX)
            case Binary(op=BinaryOp.ADD, lhs=x, rhs=y, dtype=T.INDEX) if varying(x) != varying(y):
                u = self.affine(x if varying(x) else y)
                other = y if varying(x) else x
                return None if u is None else Binary(BinaryOp.ADD, other, u, T.INDEX)
            case Binary(op=BinaryOp.SUB, lhs=x, rhs=y, dtype=T.INDEX) if not varying(y):
                u = self.affine(x)
                return None if u is None else Binary(BinaryOp.SUB, u, y, T.INDEX)
        return None

    def gep(self, base: ir.Value, offsets: ir.Value) -> ir.Value:
        """<w x ptr>: base + each lane's byte offset."""
        ptrs = self.b.gep(base, [offsets], source_etype=I8)
        ptrs.type = self.vtype(PTR)  # llvmlite types a GEP as one pointer
        return ptrs

    def load_at(self, at: _Lanes, d: T.DType) -> ir.Value:
        vt = self.vtype(memory_type(d))
        if not at.contiguous:
            return self.masked_read("gather", vt, at.address, self.active(), d.itemsize)
        if self.mask is None:
            value = self.b.load(at.address, typ=vt, align=d.itemsize)
        else:
            value = self.masked_read("load", vt, at.address, self.in_memory(at), d.itemsize)
        return self.turned(value) if at.reversed else value

    def in_memory(self, at: _Lanes) -> ir.Value:
        """The active lanes' mask in the order of their elements in memory."""
        return self.turned(self.active()) if at.reversed else self.active()

    def turned(self, v: ir.Value) -> ir.Value:
        """v's lanes in the opposite order."""
        order = ir.Constant(ir.VectorType(I32, self.w), [self.w - 1 - k for k in range(self.w)])
        return self.b.shuffle_vector(v, v, order)

    def masked_read(
        self, kind: str, vt: ir.VectorType, address: ir.Value, mask: ir.Value, align: int
    ) -> ir.Value:
        """llvm.masked.load (contiguous) or .gather: the lanes `mask` selects, zero else."""
        name = f"llvm.masked.{kind}.{self.ops.suffix(vt)}.{self.ops.suffix(address.type)}"
        zero = ir.Constant(vt, None)
        if kind == "load" or in_hardware("gather") or isinstance(mask, ir.Constant):
            return self.ops.intrinsic(name, vt, [address, ir.Constant(I32, align), mask, zero])
        every = ir.Constant(mask.type, 1)
        at = self.off_lanes_elsewhere(address, mask, vt.element)
        read = self.ops.intrinsic(name, vt, [at, ir.Constant(I32, align), every, zero])
        return self.b.select(mask, read, zero)

    def scatter(self, value: ir.Value, address: ir.Value, align: int) -> None:
        """llvm.masked.scatter of `value`'s active lanes to their `address`es."""
        mask = self.active()
        if self.mask is not None and not in_hardware("scatter"):
            address = self.off_lanes_elsewhere(address, mask, value.type.element)
            mask = ir.Constant(mask.type, 1)
        name = f"llvm.masked.scatter.{self.ops.suffix(value.type)}.{self.ops.suffix(address.type)}"
        self.ops.intrinsic(name, ir.VoidType(), [value, address, ir.Constant(I32, align), mask])

    def off_lanes_elsewhere(self, address: ir.Value, mask: ir.Value, ty: ir.Type) -> ir.Value:
        """The lanes' addresses, those `mask` leaves off pointing at a slot on the stack.
        Where LLVM splits a gather or scatter into a load or store per lane (CPUs without
        its instruction, or whose gathers it deems slow: jit.in_hardware), one of every
        lane is straight-line code, where a masked one took a branch per lane: 64 lanes
        of f32 made 128 blocks, and a kernel of strided arguments compiled 2-3x slower.
        (aliasing.py looks through the select to the array's addresses.)"""
        spare = self.spare_slots.get(str(ty))
        if spare is None:
            spare = self.spare_slots[str(ty)] = self.gen._entry_alloca(ty, "off.lanes")
        return self.b.select(mask, address, self.ops.splat(spare, address.type.count))

    def store_at(self, at: _Lanes, value: ir.Value, d: T.DType, nontemporal: bool = False) -> None:
        """Store the lanes; `nontemporal`: a movnt store, its address at a cache line's
        start (streaming.py makes it so)."""
        if at.reversed:
            value = self.turned(value)
        if at.contiguous and self.mask is None and nontemporal:
            stored = self.b.store(value, at.address, align=CACHE_LINE)
            hint = self.b.module.add_metadata([ir.Constant(I32, 1)])
            stored.set_metadata("nontemporal", hint)
            return
        if at.contiguous and self.mask is None:
            self.b.store(value, at.address, align=d.itemsize)
            return
        if not at.contiguous:
            self.scatter(value, at.address, d.itemsize)
            return
        name = f"llvm.masked.store.{self.ops.suffix(value.type)}.{self.ops.suffix(at.address.type)}"
        align = ir.Constant(I32, d.itemsize)
        self.ops.intrinsic(name, ir.VoidType(), [value, at.address, align, self.in_memory(at)])

    def active(self) -> ir.Value:
        return self.mask if self.mask is not None else ir.Constant(self.vtype(I1), 1)

    def bounds_check(self, name: str, index: tuple[Expr, ...], loc: SourceLoc | None) -> None:
        """Like the scalar code's: every subscript of every active lane is in bounds."""
        gen, b = self.gen, self.b
        proven = [
            self.proven(name, a, i) if self.plan.varying(i) else gen._proven(name, a, i)
            for a, i in enumerate(index)
        ]
        if all(proven):
            return
        ok: ir.Value = ir.Constant(self.vtype(I1), 1)
        for i, d in zip(index, gen.state.arrays[name].dims):
            ok = b.and_(ok, b.icmp_unsigned("<", self.vector(self.value(i)), self.splat(d)))
        gen._fail_unless(self.all(ok), ErrorKind.BOUNDS, len(gen.sites.accesses))
        gen.sites.accesses.append((name, loc))

    def proven(self, name: str, axis: int, index: Expr) -> bool:
        """v itself, where the loop runs over (a multiple of w below) the dimension."""
        if index != LoopVar(self.loop.var):
            return False
        dim, extent = self.gen.buffers[name].shape[axis], self.loop.extent
        match _rounded_down(extent):  # (max(n, 0) // c) * c <= n, as the expand pass writes it
            case (Binary(op=BinaryOp.MAX, lhs=n, rhs=Const(value=0)), c) if c > 0:
                return n == dim
        return extent == dim


_FIELDS: dict[type, tuple[str, ...]] = {}


_LOCAL = "local:"  # (a local's name among the arrays that an expression reads)


def _fields(node: type) -> tuple[str, ...]:
    """The fields of an IR node class that make up its meaning (not its location)."""
    if node not in _FIELDS:
        _FIELDS[node] = tuple(f.name for f in fields(node) if f.name != "loc")
    return _FIELDS[node]


def _apart(indices: list[tuple[Expr, ...]]) -> bool:
    """Whether these subscripts of one buffer can never name the same element: each pair
    differs by distinct constants on some axis (rows of a tile), so each may live in a
    register of its own."""
    if len(set(indices)) != len(indices):
        return False
    return all(
        any(
            isinstance(x, Const) and isinstance(y, Const) and x.value != y.value
            for x, y in zip(p, q, strict=True)
        )
        for n, p in enumerate(indices)
        for q in indices[n + 1 :]
    )


@dataclass
class _Lanes:
    """Where the lanes' elements are: consecutive from `address` (`reversed`: the last
    lane's first), or at <w x ptr>."""

    address: ir.Value
    contiguous: bool = False
    reversed: bool = False


def _rounded_down(e: Expr) -> tuple[Expr, int] | None:
    """(x, m) when `e` is `x // m * m` (how the expand pass ends a vector loop's main part)."""
    match e:
        case Binary(
            op=BinaryOp.MUL,
            lhs=Binary(op=BinaryOp.FLOORDIV, lhs=x, rhs=Const(value=m)),
            rhs=Const(value=m2),
        ) if isinstance(m, int) and m == m2:
            return x, m
    return None


def _multiple_of(e: Expr, c: int) -> bool:
    """Whether `e` is `x // m * m` with c dividing m (where a vector loop's tail starts)."""
    rounded = _rounded_down(e)
    return rounded is not None and rounded[1] % c == 0
