"""Kernel IR → an LLVM IR module for the host CPU: `generate`.

The module exports one function per kernel:

    i64 kdsl_<name>(ptr array_0, …, double|i64 scalar_k, …)

Array arguments (parameters, then results) are NumPy `PyArrayObject*`s, read through
the offsets in `abi.ARRAY_LAYOUT`; scalars arrive as double or i64. The function
returns 0, or an error code `kind << 32 | index` (see `ErrorKind`) that the host
turns into an exception.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from llvmlite import ir

from kdsl import types as T
from kdsl.errors import SourceLoc
from kdsl.ir.flatten import flatten_rows
from kdsl.ir.hashing import source_locations
from kdsl.ir.layout import constant_nbytes
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    Buffer,
    BufferRole,
    Cast,
    Check,
    Const,
    DeclareLocal,
    DimOf,
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
    Param,
    Prefetch,
    ScalarArg,
    Scope,
    Select,
    Stmt,
    Store,
    Unary,
)
from kdsl.ir.visit import from_runtime_values, runtime_locals, walk_expr, walk_stmts
from kdsl.targets.cpu.abi import ARRAY_LAYOUT, WRITEABLE_FLAG
from kdsl.targets.cpu.aliasing import annotate_aliasing
from kdsl.targets.cpu.amx import emit_tile_product, release_tiles
from kdsl.targets.cpu.jit import CACHE_LINE
from kdsl.targets.cpu.ops import I1, I8, I32, I64, PTR, Ops, constant, llvm_type, memory_type
from kdsl.targets.cpu.parallel import emit_parallel_loop
from kdsl.targets.cpu.partials import Chain, Strips, carried_partials
from kdsl.targets.cpu.state import ArrayInfo, CodegenState, ErrorKind
from kdsl.targets.cpu.streaming import fence_streamed_stores
from kdsl.targets.cpu.vector import emit_vector_loop
from kdsl.targets.cpu.vector_plan import named_columns

MAX_HEAP_BYTES = 1 << 62  # a temporary's size beyond this (or past 2^64) fails as out of memory


@dataclass
class ErrorSites:
    """What each error code's index refers to, in the order codegen numbered them."""

    checks: list[Check] = field(default_factory=list)
    accesses: list[tuple[str, SourceLoc | None]] = field(default_factory=list)
    # the compiled kernel's source_locations: the object store shares code between
    # kernels with equal hashes (locations are not hashed), so errors are moved to the
    # lines of the kernel that runs it
    locations: tuple[SourceLoc | None, ...] = ()

    def located_in(self, kernel: Kernel) -> ErrorSites:
        """These sites at `kernel`'s source lines (`kernel` hashes as the compiled one)."""
        now = source_locations(kernel)
        if now == self.locations or len(now) != len(self.locations):
            return self  # the same lines, or an equal program shaped otherwise: keep them
        moved = dict(zip(self.locations, now))
        return ErrorSites(
            [replace(check, loc=moved.get(check.loc, check.loc)) for check in self.checks],
            [(buffer, moved.get(loc, loc)) for buffer, loc in self.accesses],
            now,
        )


class _Codegen:
    """Emits one LLVM function: the kernel's entry (`for_kernel`) or a task outlined from
    a parallel loop, which shares the kernel, the options and the error sites."""

    def __init__(
        self, kernel: Kernel, fn: ir.Function, checks: bool, strict_fp: bool, sites: ErrorSites
    ) -> None:
        self.kernel = kernel
        self.checks = checks
        self.strict_fp = strict_fp
        self.reduction_depth = 0
        # vector loop -> accumulator -> the chain of its partials that an outer reduction
        # loop keeps (partials.carried_partials)
        self.carried: dict[str, dict[str, Chain]] = {}
        self.is_entry = False  # the kernel's function (for_kernel), not an outlined task
        self.streamed = False  # some stores went past the caches (streaming.py)
        self.memo: dict[int, tuple[Expr, ir.Value]] = {}  # per statement, see expr()
        self.buffers = {b.name: b for b in kernel.buffers}
        self.fn = fn
        self.entry = self.fn.append_basic_block("entry")
        self.b = ir.IRBuilder(self.entry)
        self.ops = Ops(self.b)
        self.state = CodegenState()
        self.sites = sites
        self.loop_extents = {
            s.var: s.extent for s in walk_stmts(kernel.body) if isinstance(s, Loop)
        }
        self.runtime_locals = runtime_locals(kernel.body)
        self.retcode = self.b.alloca(I64, name="retcode")
        self.cleanup = self.fn.append_basic_block("cleanup")
        self.b.store(ir.Constant(I64, 0), self.retcode)

    @functools.cached_property
    def named_columns(self) -> dict[str, int]:
        """vector_plan.named_columns of the whole kernel, found once: each vector loop
        asks, and a walk per loop made compiles quadratic in the kernel's size."""
        return named_columns(self.kernel.body)

    @classmethod
    def for_kernel(
        cls, kernel: Kernel, module: ir.Module, checks: bool, strict_fp: bool, symbol: str
    ) -> _Codegen:
        buffers = {b.name: b for b in kernel.buffers}
        arrays = [buffers[p.name] for p in kernel.params if p.is_array]
        arrays += [buffers[r] for r in kernel.results]
        scalars = [p for p in kernel.params if not p.is_array]
        types = [PTR] * len(arrays) + [
            ir.DoubleType() if p.dtype.is_float else I64 for p in scalars
        ]
        fn = ir.Function(module, ir.FunctionType(I64, types), name=symbol)
        gen = cls(kernel, fn, checks, strict_fp, ErrorSites())
        gen.is_entry = True
        gen._bind_args(arrays, scalars)
        return gen

    # -------------------------------------------------------------- arguments

    def _bind_args(self, arrays: list[Buffer], scalars: list) -> None:  # type: ignore[type-arg]
        written = {s.buffer for s in walk_stmts(self.kernel.body) if isinstance(s, Store)}
        for pos, (buf, arg) in enumerate(zip(arrays, self.fn.args)):
            arg.name = buf.name
            self.state.arrays[buf.name] = self._read_array(buf, arg)
            if buf.name in written and buf.role is BufferRole.PARAM:
                self._check_writeable(arg, pos)
                self._check_self_overlap(self.state.arrays[buf.name], buf.dtype.itemsize, pos)
        for p, arg in zip(scalars, self.fn.args[len(arrays) :]):
            self.bind_scalar(p, arg)
        if not self.kernel.disjoint:
            self._check_aliasing(arrays, written)

    def bind_scalar(self, p: Param, arg: ir.Argument) -> None:
        """A scalar parameter, passed as double or i64, as its own dtype."""
        arg.name = p.name
        src = T.f64 if p.dtype.is_float else T.i64
        self.state.scalars[p.name] = self.ops.cast(arg, src, p.dtype)

    def _field(self, obj: ir.Value, name: str, ty: ir.Type) -> ir.Value:
        addr = self.b.gep(obj, [ir.Constant(I64, ARRAY_LAYOUT[name])], source_etype=I8)
        return self.b.load(addr, typ=ty)

    def _read_array(self, buf: Buffer, obj: ir.Value) -> ArrayInfo:
        b = self.b
        data = self._field(obj, "data", PTR)
        dims_ptr = self._field(obj, "dimensions", PTR)
        strides_ptr = self._field(obj, "strides", PTR)
        dims = [
            b.load(b.gep(dims_ptr, [ir.Constant(I64, a)], source_etype=I64), typ=I64)
            for a in range(buf.ndim)
        ]
        strides = self.known_strides(buf, dims) or [
            b.load(b.gep(strides_ptr, [ir.Constant(I64, a)], source_etype=I64), typ=I64)
            for a in range(buf.ndim)
        ]
        return ArrayInfo(data, dims, strides)

    def known_strides(self, buf: Buffer, dims: list[ir.Value]) -> list[ir.Value] | None:
        """The strides of `buf` made from its dimensions where its layout fixes them (C
        or Fortran order; temporaries and results are C), so that LLVM sees the unit one
        as the constant it is; None for a strided argument's, which the caller gives."""
        if buf.contiguous or buf.role is not BufferRole.PARAM:
            return self._contiguous_strides(dims, buf.dtype)
        if buf.fortran:  # the C strides of the reversed axes
            return self._contiguous_strides(dims[::-1], buf.dtype)[::-1]
        return None

    def _contiguous_strides(self, dims: list[ir.Value], dtype: T.DType) -> list[ir.Value]:
        strides: list[ir.Value] = []
        acc: ir.Value = ir.Constant(I64, dtype.itemsize)
        for d in reversed(dims):
            strides.append(acc)
            acc = self.b.mul(acc, d)
        return strides[::-1]

    def _check_writeable(self, obj: ir.Value, pos: int) -> None:
        flags = self._field(obj, "flags", I32)
        ok = self.b.icmp_unsigned(
            "!=", self.b.and_(flags, ir.Constant(I32, WRITEABLE_FLAG)), ir.Constant(I32, 0)
        )
        self._fail_unless(ok, ErrorKind.READONLY, pos)

    def _check_self_overlap(self, info: ArrayInfo, itemsize: int, pos: int) -> None:
        """A written array two of whose elements surely share memory (threads would race
        on them): overlap.overlaps_itself, in code. Reported as an ALIAS of the array
        with itself."""
        b = self.b
        zero, one = ir.Constant(I64, 0), ir.Constant(I64, 1)
        lo, hi, _ = self._offsets(info, itemsize)
        count: ir.Value = one
        repeats: ir.Value = ir.Constant(I1, 0)
        for d, s in zip(info.dims, info.strides):
            many = b.icmp_signed(">", d, one)
            repeats = b.or_(repeats, b.and_(many, b.icmp_signed("==", s, zero)))
            count = b.mul(count, d)
        packed = b.icmp_signed("<", b.sub(hi, lo), b.mul(count, ir.Constant(I64, itemsize)))
        clash = b.and_(b.icmp_signed(">", count, one), b.or_(repeats, packed))  # (empty: none)
        self._fail_unless(b.not_(clash), ErrorKind.ALIAS, pos << 16 | pos)

    def _extent(self, info: ArrayInfo, itemsize: int) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(lowest address, one past the highest, is-empty) of an array's elements."""
        lo, hi, empty = self._offsets(info, itemsize)
        start = self.b.gep(info.data, [lo], source_etype=I8)
        end = self.b.gep(info.data, [hi], source_etype=I8)
        return start, end, empty

    def _offsets(self, info: ArrayInfo, itemsize: int) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(lowest byte offset, one past the highest, is-empty) of an array's elements
        from its data pointer."""
        b = self.b
        lo, hi = ir.Constant(I64, 0), ir.Constant(I64, itemsize)
        empty = ir.Constant(I1, 0)
        for d, s in zip(info.dims, info.strides):
            off = b.mul(b.sub(d, ir.Constant(I64, 1)), s)
            neg = b.icmp_signed("<", off, ir.Constant(I64, 0))
            lo = b.add(lo, b.select(neg, off, ir.Constant(I64, 0)))
            hi = b.add(hi, b.select(neg, ir.Constant(I64, 0), off))
            empty = b.or_(empty, b.icmp_signed("<=", d, ir.Constant(I64, 0)))
        return lo, hi, empty

    def _check_aliasing(self, arrays: list[Buffer], written: set[str]) -> None:
        b = self.b
        for p, wbuf in enumerate(arrays):
            if wbuf.name not in written or wbuf.role is not BufferRole.PARAM:
                continue
            ws, we, wempty = self._extent(self.state.arrays[wbuf.name], wbuf.dtype.itemsize)
            for q, other in enumerate(arrays):
                if q == p or other.role is not BufferRole.PARAM:
                    continue
                os_, oe, oempty = self._extent(self.state.arrays[other.name], other.dtype.itemsize)
                overlap = b.and_(b.icmp_unsigned("<", ws, oe), b.icmp_unsigned("<", os_, we))
                clash = b.and_(overlap, b.not_(b.or_(wempty, oempty)))
                if len(wbuf.shape) == len(other.shape) > 0:  # (a 0-d array has no stride)
                    apart = self._interleaved(wbuf, other)
                    clash = b.and_(clash, b.not_(apart))
                if (wbuf.name, other.name) in self.kernel.in_place:
                    clash = b.and_(clash, b.not_(self._same_view(wbuf, other)))
                self._fail_unless(b.not_(clash), ErrorKind.ALIAS, p << 16 | q)

    def _same_view(self, wbuf: Buffer, other: Buffer) -> ir.Value:
        """Whether two arrays are one view (the same start, dims and strides): an update
        in place that the kernel allows (Kernel.in_place), let through here so that the
        call needs no check in Python (`relu(x, out=x)`: 19 → 3 µs)."""
        b = self.b
        w, o = self.state.arrays[wbuf.name], self.state.arrays[other.name]
        if wbuf.dtype.itemsize != other.dtype.itemsize or len(w.dims) != len(o.dims):
            return ir.Constant(I1, 0)
        same = b.icmp_unsigned("==", b.ptrtoint(w.data, I64), b.ptrtoint(o.data, I64))
        for mine, theirs in (*zip(w.dims, o.dims), *zip(w.strides, o.strides)):
            same = b.and_(same, b.icmp_signed("==", mine, theirs))
        n = len(w.dims)
        apart = b.or_(
            self._apart(w, wbuf.dtype.itemsize, range(n)),
            self._apart(w, wbuf.dtype.itemsize, range(n)[::-1]),
        )
        return b.and_(same, apart)

    def _apart(self, info: ArrayInfo, itemsize: int, outer_first: range) -> ir.Value:
        """Whether each axis (of two elements or more) steps at least the bytes that the
        axes after it in `outer_first` span: then no two elements share a byte (C order,
        or Fortran's, with any steps and signs). A view whose elements are apart in
        another order of its axes answers no: the caller's exact test decides then (an
        `as_strided` view whose rows overlap must not be updated in place)."""
        b = self.b
        zero, one = ir.Constant(I64, 0), ir.Constant(I64, 1)
        ok: ir.Value = ir.Constant(I1, 1)
        reach: ir.Value = ir.Constant(I64, itemsize)
        for axis in reversed(outer_first):
            d, s = info.dims[axis], info.strides[axis]
            step = b.select(b.icmp_signed("<", s, zero), b.sub(zero, s), s)
            many = b.icmp_signed(">", d, one)
            ok = b.and_(ok, b.or_(b.not_(many), b.icmp_signed(">=", step, reach)))
            reach = b.select(many, b.add(b.mul(step, b.sub(d, one)), reach), reach)
        return ok

    def _interleaved(self, wbuf: Buffer, other: Buffer) -> ir.Value:
        """Two arrays of the same strides whose elements fall between each other's: the
        even and odd elements of one array (`x[::2]`, `x[1::2]`), a complex array's
        `.real` and `.imag`. With s the last axis's stride and every stride a multiple of
        it, each array's elements lie at its start plus multiples of s; they never meet
        when the starts differ, modulo s, by at least each one's itemsize."""
        b = self.b
        w, o = self.state.arrays[wbuf.name], self.state.arrays[other.name]
        zero = ir.Constant(I64, 0)
        s = w.strides[-1]
        step = b.select(b.icmp_signed("<", s, zero), b.sub(zero, s), s)
        nonzero = b.icmp_signed(">", step, zero)
        safe = b.select(nonzero, step, ir.Constant(I64, 1))
        same = nonzero
        for ws, os_ in zip(w.strides, o.strides):
            same = b.and_(same, b.icmp_signed("==", ws, os_))
            same = b.and_(same, b.icmp_signed("==", b.srem(ws, safe), zero))
        gap = b.srem(b.sub(b.ptrtoint(o.data, I64), b.ptrtoint(w.data, I64)), safe)
        gap = b.select(b.icmp_signed("<", gap, zero), b.add(gap, safe), gap)  # in [0, s)
        after_w = b.icmp_signed(">=", gap, ir.Constant(I64, wbuf.dtype.itemsize))
        before_next = b.icmp_signed(">=", b.sub(safe, gap), ir.Constant(I64, other.dtype.itemsize))
        return b.and_(same, b.and_(after_w, before_next))

    # ------------------------------------------------------------------ errors

    def _fail_unless(self, ok: ir.Value, kind: ErrorKind, index: int) -> None:
        fail = self.fn.append_basic_block(f"fail_{kind.name.lower()}")
        cont = self.fn.append_basic_block("ok")
        self.b.cbranch(ok, cont, fail)
        self.b.position_at_end(fail)
        self.b.store(ir.Constant(I64, int(kind) << 32 | index), self.retcode)
        self.b.branch(self.cleanup)
        self.b.position_at_end(cont)

    # -------------------------------------------------------------- statements

    def run(self, body: tuple[Stmt, ...]) -> None:
        """Emit `body`, then the cleanup block that frees temporaries and returns."""
        self.block(body)
        self.finish()

    def finish(self) -> None:
        self.b.branch(self.cleanup)
        self.b.position_at_end(self.cleanup)
        if self.is_entry:  # (not a parallel loop's task)
            release_tiles(self)
        if self.streamed:
            fence_streamed_stores(self.ops)
        self.free(self.state.heap_slots)
        self.b.ret(self.b.load(self.retcode, typ=I64))
        annotate_aliasing(self)

    def block(self, body: tuple[Stmt, ...]) -> None:
        heap: list[ir.Value] = []
        for s in body:
            self.stmt(s, heap)
        self.free(heap)  # temporaries live until the end of their block

    def free(self, heap: list[ir.Value]) -> None:
        for slot in heap:
            self.b.call(self._libc("free", ir.VoidType(), [PTR]), [self.b.load(slot, typ=PTR)])
            self.b.store(ir.Constant(PTR, None), slot)

    def stmt(self, s: Stmt, heap: list[ir.Value]) -> None:
        b = self.b
        self.memo = {}
        match s:
            case Store(buffer=name, index=index, value=v):
                val = self.expr(v)
                dtype = self.buffers[name].dtype
                if dtype.is_bool:
                    val = b.zext(val, I8)
                b.store(val, self.address(name, index, s.loc, s.checked))
            case DeclareLocal(name=n, dtype=d, init=v):
                slot = self.state.locals.get(n) or self._entry_alloca(llvm_type(d), n)
                self.state.locals[n] = slot
                b.store(self.expr(v), slot)
            case Assign(local=n, value=Binary(op=op, lhs=LocalVar(name=acc) as x, rhs=y)) if (
                acc == n and self.reduction_depth and not self.strict_fp
            ):  # an accumulation: may be reassociated
                value = self.ops.binary(op, self.expr(x), self.expr(y), x.dtype, reassociate=True)
                b.store(value, self.state.locals[n])
            case Assign(local=n, value=v):
                b.store(self.expr(v), self.state.locals[n])
            case Allocate(buffer=name):
                self.allocate(self.buffers[name], heap)
            case Loop(exec=LoopExec.VECTORIZED) as loop:
                emit_vector_loop(self, loop)
            case Loop(exec=LoopExec.PARALLEL) as loop:
                emit_parallel_loop(self, loop)
            case Loop(exec=LoopExec.AMX) as loop:
                emit_tile_product(self, loop)
            case Loop(var=var, extent=ext, body=body, kind=kind) as loop:
                reduction = kind is LoopKind.REDUCTION
                self.reduction_depth += reduction
                with carried_partials(self, loop) as strips:
                    self.loop(var, ir.Constant(I64, 0), self.expr(ext), body, strips=strips)
                self.reduction_depth -= reduction
            case If(cond=c, then=then):
                with b.if_then(self.expr(c)):
                    self.block(then)
            case Check(cond=c):
                self._fail_unless(self.expr(c), ErrorKind.CHECK, len(self.sites.checks))
                self.sites.checks.append(s)
            case Prefetch(buffer=name, index=index, write=write):
                self.prefetch(name, index, write)

    def _entry_alloca(self, ty: ir.Type, name: str, size: ir.Value | None = None) -> ir.Value:
        """Allocas go in the entry block so loops don't grow the stack. The result is an
        untyped pointer, like every other address in the generated code."""
        with self.b.goto_block(self.entry):
            self.b.position_at_start(self.entry)
            slot = self.b.alloca(ty, size=size, name=name)
        slot.type = PTR
        return slot

    def loop(
        self,
        var: str,
        start: ir.Value,
        stop: ir.Value,
        body: tuple[Stmt, ...],
        step: ir.Value | int = 1,
        strips: Strips | None = None,
        backwards: ir.Value | None = None,
    ) -> None:
        """for var in [start, stop) by step: body (in `strips` where given: a carried float
        sum's blocks, partials.carried_partials; last to first where the i1 `backwards`
        holds at run time, for a loop of independent iterations by one)

        The heap temporaries that the body allocates first, at a size the loop doesn't
        change, are allocated once around the loop instead of once per iteration (a
        softmax row buffer per row, a packed panel per panel of a parallel loop's
        chunk); a temporary's contents start undefined either way."""
        b = self.b
        hoisted = _invariant_allocations(body, var, self.buffers)
        if hoisted:  # (and only when the loop runs: a loop of no trips allocates nothing)
            with b.if_then(b.icmp_signed("<", start, stop)):
                heap: list[ir.Value] = []
                for s in hoisted:
                    self.stmt(s, heap)
                self.loop(var, start, stop, body[len(hoisted) :], step, strips, backwards)
                self.free(heap)
            return
        mirrored = None if backwards is None else self._entry_alloca(I64, f"{var}.mirrored")

        def iteration(slot: ir.Value) -> None:
            if mirrored is not None and backwards is not None:  # var = start + stop - 1 - t
                t = b.load(slot, typ=I64)
                last = b.sub(b.add(start, stop), ir.Constant(I64, 1))
                b.store(b.select(backwards, b.sub(last, t), t), mirrored)
                slot = mirrored
            self.state.loops[var] = slot
            self.block(body)

        if strips is None:
            self.counted(var, start, stop, step, iteration)
        else:
            strips.emit(self, var, start, stop, iteration)

    def counted(
        self,
        var: str,
        start: ir.Value,
        stop: ir.Value,
        step: ir.Value | int,
        body: Callable[[ir.Value], None],
    ) -> ir.Value:
        """for var in range(start, stop, step): body(the slot that holds var); the slot
        (after the loop: the first value not run)."""
        b = self.b
        slot = self._entry_alloca(I64, var)
        b.store(start, slot)
        one_trip = isinstance(step, int) and _is_const(start, 0) and _is_const(stop, step)
        if one_trip:  # straight-line code
            body(slot)
            return slot
        cond = self.fn.append_basic_block(f"{var}.cond")
        inner = self.fn.append_basic_block(f"{var}.body")
        done = self.fn.append_basic_block(f"{var}.end")
        b.branch(cond)
        b.position_at_end(cond)
        b.cbranch(b.icmp_signed("<", b.load(slot, typ=I64), stop), inner, done)
        b.position_at_end(inner)
        body(slot)
        by = ir.Constant(I64, step) if isinstance(step, int) else step
        b.store(b.add(b.load(slot, typ=I64), by), slot)
        b.branch(cond)
        b.position_at_end(done)
        return slot

    def allocate(self, buf: Buffer, heap: list[ir.Value]) -> None:
        b = self.b
        dims = [self.expr(d) for d in buf.shape]
        strides = self._contiguous_strides(dims, buf.dtype)
        size: ir.Value = ir.Constant(I64, buf.dtype.itemsize)
        too_big: ir.Value = ir.Constant(ir.IntType(1), 0)  # the product wrapped past 2^64
        for d in dims:
            extent = b.select(b.icmp_signed("<", d, ir.Constant(I64, 0)), ir.Constant(I64, 0), d)
            product = b.umul_with_overflow(size, extent)
            size, too_big = b.extract_value(product, 0), b.or_(too_big, b.extract_value(product, 1))
        constant = constant_nbytes(buf.shape, buf.dtype.itemsize)
        if buf.scope is Scope.STACK and constant is not None:
            data = self._entry_alloca(ir.ArrayType(I8, max(1, constant)), buf.name)
            data.align = CACHE_LINE  # whole vectors never straddle two lines
        else:
            slot = self._heap_slot(buf.name)
            # cache-line aligned, as the stack copies are (malloc's 16 bytes would split
            # every other vector load of a packed panel across two lines)
            line = ir.Constant(I64, CACHE_LINE)
            too_big = b.or_(too_big, b.icmp_unsigned(">", size, ir.Constant(I64, MAX_HEAP_BYTES)))
            self._fail_unless(b.not_(too_big), ErrorKind.NO_MEMORY, 0)
            rounded = b.and_(b.add(size, line), ir.Constant(I64, -CACHE_LINE))
            aligned_alloc = self._libc("aligned_alloc", PTR, [I64, I64])
            data = b.call(aligned_alloc, [line, rounded])
            self._fail_unless(
                b.icmp_unsigned("!=", data, ir.Constant(PTR, None)), ErrorKind.NO_MEMORY, 0
            )
            b.store(data, slot)
            heap.append(slot)
        self.state.arrays[buf.name] = ArrayInfo(data, dims, strides)

    def _heap_slot(self, name: str) -> ir.Value:
        """A pointer slot, null from entry, that the cleanup block frees on any exit."""
        slot = self._entry_alloca(PTR, f"{name}.slot")
        with self.b.goto_block(self.entry):
            self.b.position_after(slot)
            self.b.store(ir.Constant(PTR, None), slot)
        self.state.heap_slots.append(slot)
        return slot

    def _libc(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        fn = self.fn.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.fn.module, ir.FunctionType(ret, args), name=name)
        return fn

    # ------------------------------------------------------------- expressions

    def address(
        self, name: str, index: tuple[Expr, ...], loc: SourceLoc | None, checked: bool = False
    ) -> ir.Value:
        b = self.b
        info = self.state.arrays[name]
        idx = [self.expr(i) for i in index]
        if self.must_check(index, checked) and not all(
            self._proven(name, a, i) for a, i in enumerate(index)
        ):
            ok = ir.Constant(I1, 1)
            for v, d in zip(idx, info.dims):
                ok = b.and_(ok, b.icmp_unsigned("<", v, d))
            self._fail_unless(ok, ErrorKind.BOUNDS, len(self.sites.accesses))
            self.sites.accesses.append((name, loc))
        return self._element(info, idx)

    def must_check(self, index: tuple[Expr, ...], checked: bool = False) -> bool:
        """Whether an access at `index` checks its bounds: always when the bounds pass
        marked it `checked` (nothing proved it before its loops run), and when a
        subscript comes from loaded data or a scalar argument, directly or through
        locals (a gather's `x[idx[i]]`, `x[i + n]`: the pass's checks of a scalar's
        value are f64, exact only below 2**53, and this also covers the reads that a
        schedule step makes from them), else with `checks=True`."""
        return (
            self.checks
            or checked
            or any(from_runtime_values(i, self.runtime_locals) for i in index)
        )

    def _element(self, info: ArrayInfo, idx: list[ir.Value]) -> ir.Value:
        """The address of the element at subscripts `idx` (no check)."""
        offset: ir.Value = ir.Constant(I64, 0)
        for v, s in zip(idx, info.strides):
            offset = self.b.add(offset, self.b.mul(v, s))
        return self.b.gep(info.data, [offset], source_etype=I8)

    def prefetch(self, name: str, index: tuple[Expr, ...], write: bool = False) -> None:
        """`prefetcht0` (`prefetchw` for a line to be written) of the element's line: no
        bounds check (the hardware drops a hint to an address it can't read), kept in
        every cache level."""
        at = self._element(self.state.arrays[name], [self.expr(i) for i in index])
        access, keep, data = (ir.Constant(ir.IntType(32), v) for v in (int(write), 3, 1))
        self.ops.intrinsic("llvm.prefetch.p0", ir.VoidType(), [at, access, keep, data])

    def _proven(self, name: str, axis: int, index: Expr) -> bool:
        """A bare loop variable whose extent is the dimension it subscripts is in bounds."""
        if not isinstance(index, LoopVar):
            return False
        extent = self.loop_extents.get(index.name)
        return extent is not None and extent == self.buffers[name].shape[axis]

    def expr(self, e: Expr) -> ir.Value:
        """The value of `e`. A sub-expression shared by object identity (a Python value
        used twice while tracing) is emitted once per statement, so code stays linear in
        the traced program even when its expression tree is exponential."""
        hit = self.memo.get(id(e))
        if hit is not None and hit[0] is e:
            return hit[1]
        value = self._emit(e)
        self.memo[id(e)] = (e, value)
        return value

    def _emit(self, e: Expr) -> ir.Value:
        b, ops = self.b, self.ops
        match e:
            case Const(value=v, dtype=d):
                return constant(v, d)
            case LoopVar(name=n):
                return b.load(self.state.loops[n], typ=I64)
            case LocalVar(name=n, dtype=d):
                return b.load(self.state.locals[n], typ=llvm_type(d))
            case ScalarArg(name=n):
                return self.state.scalars[n]
            case DimOf(buffer=name, axis=a):
                return self.state.arrays[name].dims[a]
            case Load(buffer=name, index=index, dtype=d):
                value = b.load(self.address(name, index, e.loc, e.checked), typ=memory_type(d))
                return b.trunc(value, I1) if d.is_bool else value
            case Binary(op=op, lhs=x, rhs=y):
                return ops.binary(op, self.expr(x), self.expr(y), x.dtype)
            case Unary(op=op, operand=x, dtype=d):
                return ops.unary(op, self.expr(x), d)
            case Cast(operand=x, dtype=d):
                return ops.cast(self.expr(x), x.dtype, d)
            case Fma(a=x, b=y, c=z):
                return ops.fma(self.expr(x), self.expr(y), self.expr(z))
            case Select(cond=c, if_true=x, if_false=y):
                return self.select(c, x, y)
        raise TypeError(f"cannot generate code for {e!r}")

    def select(self, c: Expr, x: Expr, y: Expr) -> ir.Value:
        """A select; as branches when a side loads memory (it may be out of bounds)."""
        b = self.b
        cond = self.expr(c)
        if not any(isinstance(n, Load) for side in (x, y) for n in walk_expr(side)):
            return b.select(cond, self.expr(x), self.expr(y))
        outer = self.memo  # values made in a branch do not dominate what follows it
        with b.if_else(cond) as (then, otherwise):
            with then:
                self.memo = dict(outer)
                tv, tb = self.expr(x), b.block
            with otherwise:
                self.memo = dict(outer)
                fv, fb = self.expr(y), b.block
        self.memo = outer
        phi = b.phi(tv.type)
        phi.add_incoming(tv, tb)
        phi.add_incoming(fv, fb)
        return phi


def generate(
    kernel: Kernel, checks: bool = False, strict_fp: bool = False, symbol: str | None = None
) -> tuple[ir.Module, ErrorSites]:
    """An LLVM module with the kernel's entry function named `symbol` (see the module
    docstring), and what its error codes refer to."""
    if not checks:
        kernel = flatten_rows(kernel)
    module = ir.Module(name=kernel.name)
    gen = _Codegen.for_kernel(kernel, module, checks, strict_fp, symbol or f"kdsl_{kernel.name}")
    gen.run(kernel.body)
    return module, gen.sites


def _invariant_allocations(
    body: tuple[Stmt, ...], var: str, buffers: dict[str, Buffer]
) -> tuple[Stmt, ...]:
    """The Allocate statements that open `body`, of temporaries whose shape names
    neither the loop's variable nor a local."""
    found: list[Stmt] = []
    for s in body:
        if not isinstance(s, Allocate):
            break
        buf = buffers[s.buffer]
        names = [e for d in buf.shape for e in walk_expr(d)]
        if any(
            isinstance(e, LocalVar) or (isinstance(e, LoopVar) and e.name == var) for e in names
        ):
            break
        found.append(s)
    return tuple(found)


def _is_const(v: ir.Value, n: int) -> bool:
    return isinstance(v, ir.Constant) and v.constant == n
