"""Expanded IR → an LLVM module for the NVPTX back end: one entry function per launch.

Every entry takes the same parameters, so the host builds them once per call:

    void kdsl_<name>_<launch>(ptr data, i64 dim…, [i64 stride…] for each array
                              (parameters, results, then host-allocated temporaries),
                              double|i64 scalar…, ptr scratch, ptr errors)

Strides (in bytes) are passed only for parameters that may be non-contiguous. The code
is the CPU target's statement by statement (the same operators and semantics, shared
through `_Codegen`); what differs is here: loops bound to GPU axes, reductions across
the threads of a block (warp shuffles, then shared memory), barriers, where
temporaries live, stores outside thread-bound loops made by one thread, and errors
recorded in a device word instead of returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from llvmlite import ir

from kdsl import types as T
from kdsl.errors import CompileError
from kdsl.ir.build import reduction_identity
from kdsl.ir.layout import constant_nbytes
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    Buffer,
    BufferRole,
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
    Prefetch,
    Stmt,
    Store,
    UnaryOp,
)
from kdsl.ir.visit import outer_updates, walk_all_exprs, walk_expr, walk_stmts
from kdsl.targets.cpu import vmath, vpow
from kdsl.targets.cpu.codegen import ErrorSites, _Codegen
from kdsl.targets.cpu.ops import I1, I8, I32, I64, PTR, Ops, constant, llvm_type
from kdsl.targets.cpu.state import ArrayInfo, ErrorKind
from kdsl.targets.cuda.mma import emit_mma
from kdsl.targets.cuda.plan import (
    BLOCK_AXES,
    THREAD_AXES,
    WARP,
    Launch,
    Plan,
    host_evaluable,
    scratch_bytes,
)
from kdsl.types import INDEX

SHARED = ir.PointerType(addrspace=3)
_AXIS = "xyz"
# trips of a lanes' stride loop run together: their loads in flight at once. One 4-byte
# load in flight per thread keeps about 8 KB in flight per multiprocessor, under half
# of what an H100/H200's bandwidth times its latency asks (a block-per-row RMS norm
# read at 59% of a copy's speed on an H200, softmax at 40%)
STRIDE_TRIPS = 4
VECTOR = 4  # 4-byte elements a thread takes together where they are 16-byte aligned
DYNAMIC_SHARED = "kdsl_dynamic_shared"


@dataclass(frozen=True)
class EntryParams:
    """The parameter list every entry of one kernel shares."""

    arrays: tuple[tuple[str, bool], ...]  # (buffer, its strides are passed)
    scalars: tuple[str, ...]

    @classmethod
    def of(cls, kernel: Kernel, host_temps: tuple[str, ...]) -> EntryParams:
        buffers = {b.name: b for b in kernel.buffers}
        names = [p.name for p in kernel.params if p.is_array] + list(kernel.results)
        names += list(host_temps)
        arrays = tuple((n, _strided(buffers[n])) for n in names)
        return cls(arrays, tuple(p.name for p in kernel.params if not p.is_array))


def _strided(buf: Buffer) -> bool:
    return buf.role is BufferRole.PARAM and not buf.contiguous


class GpuOps(Ops):
    """Operators for the GPU: the transcendental functions and ** come from kdsl's own
    polynomials (vmath.py and vpow.py, the CPU's vector code) on one-lane vectors, since
    there is no C library on the device and a CUDA toolkit's libdevice may not be
    installed."""

    def unary(self, op: UnaryOp, a: ir.Value, d: T.DType) -> ir.Value:
        if op in vmath.FUNCTIONS and not isinstance(a.type, ir.VectorType):
            if op in (UnaryOp.TANH, UnaryOp.ERF) and d == T.f64:
                raise CompileError(
                    f"{op.value} of f64 is not available on the CUDA target",
                    fix=f"compute {op.value} in f32 (cast the operand)",
                )
            lane = ir.Constant(I32, 0)
            vec = self.b.insert_element(ir.Constant(ir.VectorType(a.type, 1), None), a, lane)
            return self.b.extract_element(vmath.FUNCTIONS[op](self, vec), lane)
        return super().unary(op, a, d)

    def binary(
        self, op: BinaryOp, a: ir.Value, c: ir.Value, d: T.DType, reassociate: bool = False
    ) -> ir.Value:
        if op is BinaryOp.POW and d.is_float and not isinstance(a.type, ir.VectorType):
            lane = ir.Constant(I32, 0)
            one = ir.Constant(ir.VectorType(a.type, 1), None)
            x, y = (self.b.insert_element(one, v, lane) for v in (a, c))
            return self.b.extract_element(vpow.power(self, x, y), lane)
        return super().binary(op, a, c, d, reassociate)

    def libm(self, name32: str, x: ir.Value) -> ir.Value:
        raise CompileError(
            f"{name32.rstrip('f')} of this type has no GPU implementation in kdsl",
            fix="compute it in f32",
        )


class GpuCodegen(_Codegen):
    """Emits one launch's entry function."""

    def __init__(
        self,
        kernel: Kernel,
        launch: Launch,
        params: EntryParams,
        module: ir.Module,
        symbol: str,
        checks: bool,
        strict_fp: bool,
        sites: ErrorSites,
    ) -> None:
        buffers = {b.name: b for b in kernel.buffers}
        types: list[ir.Type] = []
        for name, strided in params.arrays:
            types += [PTR] + [I64] * (buffers[name].ndim * (2 if strided else 1))
        scalars = [next(p for p in kernel.params if p.name == n) for n in params.scalars]
        types += [ir.DoubleType() if p.dtype.is_float else I64 for p in scalars]
        types += [PTR, PTR]  # scratch, errors
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), types), name=symbol)
        fn.calling_convention = "ptx_kernel"
        super().__init__(kernel, fn, checks, strict_fp, sites)
        self.ops = GpuOps(self.b)
        self.launch = launch
        self.thread_depth = 0  # thread-bound loops around the statement being emitted
        self.lane_depth = 0  # those bound to thread.x
        # tile products on warps: the block's x threads are one warp's lanes, and code
        # in loops bound to thread.y/z is a warp's (its stores ordered by warp syncs)
        self.on_warps = launch.warp_code
        self.divergent = 0  # ifs around it (their threads may disagree)
        self.temps = {t.buffer: t for t in launch.temps}
        self.group: _Group | None = None  # the vector group being emitted, if any
        self.shared_count = 0
        self._bind_gpu_args(params, buffers, scalars)

    # -------------------------------------------------------------- arguments

    def _bind_gpu_args(
        self, params: EntryParams, buffers: dict[str, Buffer], scalars: list
    ) -> None:  # type: ignore[type-arg]
        args = iter(self.fn.args)
        for name, strided in params.arrays:
            buf = buffers[name]
            data = next(args)
            data.name = name
            # the host refuses a call whose written array shares memory with another
            # (call.py), and makes results and temporaries fresh: loads may pass
            # stores, and read-only arrays go through the non-coherent cache
            data.add_attribute("noalias")
            dims = [next(args) for _ in range(buf.ndim)]
            if strided:
                strides = [next(args) for _ in range(buf.ndim)]
            else:
                strides = self._contiguous_strides(dims, buf.dtype)
            self.state.arrays[name] = ArrayInfo(data, dims, strides)
        for p in scalars:
            self.bind_scalar(p, next(args))
        self.scratch, self.errors = next(args), next(args)
        self.scratch.name, self.errors.name = "scratch", "errors"

    # ----------------------------------------------------------- the hardware

    def sreg(self, name: str, axis: int) -> ir.Value:
        value = self.ops.intrinsic(f"llvm.nvvm.read.ptx.sreg.{name}.{_AXIS[axis]}", I32, [])
        return self.b.zext(value, I64)

    def barrier(self) -> None:
        self.ops.intrinsic("llvm.nvvm.barrier0", ir.VoidType(), [])

    def thread_linear(self) -> ir.Value:
        b = self.b
        bx, by, _ = self.launch.block
        x, y, z = (self.sreg("tid", a) for a in range(3))
        return b.add(x, b.mul(ir.Constant(I64, bx), b.add(y, b.mul(ir.Constant(I64, by), z))))

    def block_linear(self) -> ir.Value:
        b = self.b
        x, y, z = (self.sreg("ctaid", a) for a in range(3))
        nx, ny = self.sreg("nctaid", 0), self.sreg("nctaid", 1)
        return b.add(x, b.mul(nx, b.add(y, b.mul(ny, z))))

    def block_count(self) -> ir.Value:
        b = self.b
        return b.mul(self.sreg("nctaid", 0), b.mul(self.sreg("nctaid", 1), self.sreg("nctaid", 2)))

    # ------------------------------------------------------------------ errors

    def _fail_unless(self, ok: ir.Value, kind: ErrorKind, index: int) -> None:
        """Record the first error in the device's error word and end this thread."""
        fail = self.fn.append_basic_block(f"fail_{kind.name.lower()}")
        cont = self.fn.append_basic_block("ok")
        self.b.cbranch(ok, cont, fail)
        self.b.position_at_end(fail)
        code = ir.Constant(I64, int(kind) << 32 | index)
        self.b.cmpxchg(self.errors, ir.Constant(I64, 0), code, "monotonic", "monotonic")
        self.b.branch(self.cleanup)
        self.b.position_at_end(cont)

    def finish(self) -> None:
        self.b.branch(self.cleanup)
        self.b.position_at_end(self.cleanup)
        self.b.ret_void()

    # -------------------------------------------------------------- statements

    def block(self, body: tuple[Stmt, ...]) -> None:
        """The statements, with a barrier after each that writes memory when another
        statement follows it (in this body, or in the next trip of its loop): the
        block's, or in a warp's code (loops bound to warps, in a launch of tile
        products) the warp's."""
        sync = self.barrier if not self.thread_depth else self.warp_sync
        needs = [self._needs_barrier(s) for s in body]
        looped = body is not self.launch.body and sum(needs) > 1
        for n, s in enumerate(body):
            self.stmt(s, [])
            if needs[n] and (n < len(body) - 1 or looped):
                sync()

    def _needs_barrier(self, s: Stmt) -> bool:
        """After a statement that writes memory (or runs threads), before others of the
        block (or warp) read it: only where all its threads arrive together."""
        if self.launch.threads == 1 or self.divergent:
            return False
        if self.thread_depth and (self.lane_depth or not self.on_warps):
            return False
        return any(
            isinstance(x, Store) or (isinstance(x, Loop) and x.exec in THREAD_AXES)
            for x in walk_stmts((s,))
        )

    def warp_sync(self) -> None:
        """Orders the memory accesses of the warp's lanes (bar.warp.sync)."""
        self.ops.intrinsic("llvm.nvvm.bar.warp.sync", ir.VoidType(), [ir.Constant(I32, -1)])

    def stmt(self, s: Stmt, heap: list[ir.Value]) -> None:
        group = self.group
        if group is not None and isinstance(s, Store) and group.takes(s.buffer, s.index):
            self.memo = {}
            group.stores.setdefault((s.buffer, s.index), []).append(self.expr(s.value))
            return
        match s:
            case Loop(exec=e) if e in BLOCK_AXES or e in THREAD_AXES:
                self.memo = {}
                self.bound_loop(s)
            case Loop(exec=LoopExec.MMA) if self.launch.threads > WARP and not self.thread_depth:
                self.memo = {}
                with self.b.if_then(self._first_warp()):  # one warp computes it for all
                    emit_mma(self, s)
            case Loop(exec=LoopExec.MMA):
                self.memo = {}
                emit_mma(self, s)
            case Store(buffer=name) if self._warp_stores(name):
                with self.b.if_then(self._first_lane()):  # one lane stores for its warp
                    super().stmt(s, heap)
            case Loop(exec=LoopExec.PARALLEL | LoopExec.VECTORIZED):
                super().stmt(replace(s, exec=LoopExec.SERIAL), heap)
            case Store() if self.launch.threads > 1 and not self.thread_depth:
                with self.b.if_then(self._first_thread()):  # one thread stores for all
                    super().stmt(s, heap)
            case If(cond=c) if host_evaluable(c):
                super().stmt(s, heap)  # (shapes and scalars: every thread agrees)
            case If():
                self.divergent += 1
                super().stmt(s, heap)
                self.divergent -= 1
            case Allocate(buffer=name):
                self.allocate_gpu(self.buffers[name])
            case Prefetch():
                pass  # a CPU schedule's hint; a GPU hides latency with its warps
            case _:
                super().stmt(s, heap)

    def _warp_stores(self, buffer: str) -> bool:
        """Whether a store in this place is the warp's (made by one lane for all, as an
        update in place read by every lane must be): in a warp's code (not the lanes'),
        to memory the lanes share (not a thread's own temporary)."""
        if not (self.on_warps and self.thread_depth and not self.lane_depth):
            return False
        temp = self.temps.get(buffer)
        return temp is None or temp.place not in ("local", "thread-scratch")

    def _first_lane(self) -> ir.Value:
        return self._first_thread((0,))

    def _first_warp(self) -> ir.Value:
        return self._first_thread((1, 2))

    def _first_thread(self, axes: tuple[int, ...] = (0, 1, 2)) -> ir.Value:
        """Whether this thread's index is 0 along `axes` (the block's, by default)."""
        ok: ir.Value = ir.Constant(I1, 1)
        for axis in axes:
            if self.launch.block[axis] > 1:
                zero = self.b.icmp_unsigned("==", self.sreg("tid", axis), ir.Constant(I64, 0))
                ok = self.b.and_(ok, zero)
        return ok

    def bound_loop(self, loop: Loop) -> None:
        """for v = index; v < extent; v += size of the axis."""
        thread = loop.exec in THREAD_AXES
        axis = (THREAD_AXES if thread else BLOCK_AXES)[loop.exec]
        hw = ("tid", "ntid") if thread else ("ctaid", "nctaid")
        combines = self._combines(loop) if thread else []
        saved = []
        for name, op, dtype in combines:  # each thread starts its part from the identity
            slot = self.state.locals[name]
            saved.append(self.b.load(slot, typ=llvm_type(dtype)))
            self.b.store(self._identity(op, dtype), slot)
        reduction = loop.kind is LoopKind.REDUCTION
        self.reduction_depth += reduction
        lanes = loop.exec is LoopExec.GPU_THREAD_X
        self.thread_depth += thread
        self.lane_depth += lanes
        start, step = self.sreg(hw[0], axis), self.sreg(hw[1], axis)
        if lanes and not self.on_warps and _straight(loop.body):
            stop = self.expr(loop.extent)
            runs = self._contiguous_runs(loop)
            if runs:
                self.vector_trips(loop.var, start, stop, loop.body, step, runs)
            else:
                self.stride_trips(loop.var, start, stop, loop.body, step)
        else:
            self.loop(loop.var, start, self.expr(loop.extent), loop.body, step)
        self.lane_depth -= lanes
        self.thread_depth -= thread
        self.reduction_depth -= reduction
        for (name, op, dtype), init in zip(combines, saved):
            slot = self.state.locals[name]
            total = self.block_reduce(self.b.load(slot, typ=llvm_type(dtype)), op, dtype, axis)
            self.b.store(self.ops.binary(op, init, total, dtype), slot)

    def stride_trips(
        self, var: str, start: ir.Value, stop: ir.Value, body: tuple[Stmt, ...], step: ir.Value
    ) -> None:
        """for var = start; var < stop; var += step: body, in trips of STRIDE_TRIPS."""

        def trip(at: ir.Value) -> None:
            self.state.loops[var] = at
            self.block(body)

        self._in_trips(var, start, stop, step, trip)

    def _in_trips(
        self,
        name: str,
        start: ir.Value,
        stop: ir.Value,
        step: ir.Value,
        trip: Callable[[ir.Value], None],
    ) -> None:
        """for v = start; v < stop; v += step: trip(the slot holding v) — STRIDE_TRIPS
        trips at a time while that many remain (straight-line code: their loads issue
        together), then the rest one at a time."""
        b = self.b
        span = b.mul(step, ir.Constant(I64, STRIDE_TRIPS - 1))  # v … v + span: one turn

        def trips(at: ir.Value) -> None:
            first = b.load(at, typ=I64)
            for k in range(STRIDE_TRIPS):
                slot = self._entry_alloca(I64, f"{name}.{k}")
                b.store(b.add(first, b.mul(step, ir.Constant(I64, k))), slot)
                trip(slot)

        turns = self.counted(f"{name}.trips", start, b.sub(stop, span), b.add(span, step), trips)
        self.counted(name, b.load(turns, typ=I64), stop, step, trip)

    def _contiguous_runs(self, loop: Loop) -> list[str]:
        """The arrays that `loop`'s body reads or writes along their last axis at the
        loop's variable, when a thread may take VECTOR consecutive elements of each as
        one 16-byte access: every access to the variable is such a subscript, of a
        contiguous array of 4-byte elements in global memory, its other subscripts
        made of loop variables, shapes and scalars (the last: the variable, plus such
        an offset); no array is both read and written so; no `if` in the body; no
        bounds checks asked for or marked by the bounds pass (they check each
        element). Else []."""
        if self.checks or any(isinstance(s, If) for s in walk_stmts(loop.body)):
            return []
        read: set[str] = set()
        written: set[str] = set()
        for e in [*walk_all_exprs(loop.body), *walk_stmts(loop.body)]:
            if not isinstance(e, Load | Store):
                continue
            uses = [any(x == LoopVar(loop.var) for x in walk_expr(i)) for i in e.index]
            if not any(uses):
                continue
            buf = self.buffers[e.buffer]
            if (
                e.checked
                or _offset_of(e.index[-1], loop.var) is None
                or any(uses[:-1])
                or any(isinstance(x, LocalVar | Load) for i in e.index for x in walk_expr(i))
                or buf.dtype.itemsize != 4
                or e.buffer in self.temps
                or _strided(buf)
            ):
                return []
            (written if isinstance(e, Store) else read).add(e.buffer)
        return [] if read & written else sorted(read | written)

    def vector_trips(
        self,
        var: str,
        start: ir.Value,
        stop: ir.Value,
        body: tuple[Stmt, ...],
        step: ir.Value,
        runs: list[str],
    ) -> None:
        """The lanes' stride loop with VECTOR consecutive elements a thread, each array
        in `runs` read or written 16 bytes at a time, when all of them are 16-byte
        aligned, rows included (a uniform test); else `stride_trips`. The body runs
        once per element of a group, taking its element of the group's vector loads
        and leaving its stored values to the group's vector stores. Elements past the
        last whole group are the first threads'."""
        b = self.b
        bits: ir.Value = ir.Constant(I64, 0)
        for n in runs:
            info = self.state.arrays[n]
            bits = b.or_(bits, b.ptrtoint(info.data, I64))
            for stride in info.strides[:-1]:
                bits = b.or_(bits, stride)
        for e in [*walk_all_exprs(body), *walk_stmts(body)]:  # where each run starts
            if isinstance(e, Load | Store) and e.buffer in runs:
                offset = _offset_of(e.index[-1], var)
                if offset is not None:
                    self.memo = {}
                    bits = b.or_(bits, b.mul(self.expr(offset), ir.Constant(I64, 4)))
        aligned = b.icmp_unsigned("==", b.and_(bits, ir.Constant(I64, 15)), ir.Constant(I64, 0))
        with b.if_else(aligned) as (vector, scalar):
            with vector:
                groups = b.sdiv(stop, ir.Constant(I64, VECTOR))
                self._in_trips(
                    f"{var}.group", start, groups, step, lambda at: self._group(var, at, body, runs)
                )
                rest = b.add(b.mul(groups, ir.Constant(I64, VECTOR)), start)
                self.loop(var, rest, stop, body, step)
            with scalar:
                self.stride_trips(var, start, stop, body, step)

    def _group(self, var: str, at: ir.Value, body: tuple[Stmt, ...], runs: list[str]) -> None:
        """One group of VECTOR elements: the vector loads, the body per element, the
        vector stores."""
        b = self.b
        first = b.mul(b.load(at, typ=I64), ir.Constant(I64, VECTOR))
        lanes = []
        for lane in range(VECTOR):
            slot = self._entry_alloca(I64, f"{var}.{lane}")
            b.store(b.add(first, ir.Constant(I64, lane)), slot)
            lanes.append(slot)
        self.state.loops[var] = lanes[0]
        group = _Group(set(runs), var)
        for e in walk_all_exprs(body):
            if isinstance(e, Load) and group.takes(e.buffer, e.index) and e not in group.loads:
                self.memo = {}
                vt = ir.VectorType(llvm_type(e.dtype), VECTOR)
                group.loads[e] = b.load(self.address(e.buffer, e.index, e.loc), typ=vt, align=16)
        self.group = group
        for lane, slot in enumerate(lanes):
            self.state.loops[var] = slot
            group.lane = lane
            self.block(body)
        self.group = None
        self.state.loops[var] = lanes[0]
        for (name, index), values in group.stores.items():
            vt = ir.VectorType(values[0].type, VECTOR)
            vector: ir.Value = ir.Constant(vt, None)
            for lane, value in enumerate(values):
                vector = b.insert_element(vector, value, ir.Constant(I32, lane))
            self.memo = {}
            b.store(vector, self.address(name, index, None), align=16)

    def _emit(self, e: Expr) -> ir.Value:
        group = self.group
        if group is not None and isinstance(e, Load) and e in group.loads:
            return self.b.extract_element(group.loads[e], ir.Constant(I32, group.lane))
        return super()._emit(e)

    # -------------------------------------------------------------- reductions

    def _combines(self, loop: Loop) -> list[tuple[str, BinaryOp, T.DType]]:
        """The outer locals a thread-bound loop accumulates into, with their operators:
        after the loop, each is combined across the threads."""
        updates = outer_updates(loop)
        if not updates:
            return []
        first = updates[0]
        if loop.kind is not LoopKind.REDUCTION:
            raise self._refuse(
                loop,
                f"loop '{loop.var}' is bound to {loop.exec.value} but updates the local "
                f"'{first.local}' declared outside it",
                "bind a loop that contains the local's declaration",
            )
        if self.thread_depth or self.divergent:
            raise self._refuse(
                loop,
                f"the reduction over '{loop.var}' is combined across threads, which needs "
                "every thread of the block, but it is inside another thread-bound loop or an if",
                "bind the reduction loop at the block's level",
            )
        if loop.exec is not LoopExec.GPU_THREAD_X and self.launch.block[0] > 1:
            raise self._refuse(
                loop,
                f"the reduction over '{loop.var}' is bound to {loop.exec.value}",
                "bind reductions to thread.x",
            )
        found: dict[str, tuple[str, BinaryOp, T.DType]] = {}
        for a in updates:
            op = _accumulation(a)
            known = found.get(a.local)
            if op is None or (known is not None and known[1] is not op):
                raise self._refuse(
                    loop,
                    f"the local '{a.local}' is updated in loop '{loop.var}' in a way threads "
                    "can't combine (only acc = acc + x, * x, max or min can be)",
                    "make the loop a plain reduction, or leave it unbound",
                )
            found[a.local] = (a.local, op, a.value.dtype)
        return list(found.values())

    def _refuse(self, loop: Loop, what: str, fix: str) -> CompileError:
        return CompileError(what, kernel=self.kernel.name, loc=loop.loc, fix=fix)

    def _identity(self, op: BinaryOp, d: T.DType) -> ir.Value:
        return constant(reduction_identity(op, d).value, d)

    def block_reduce(self, v: ir.Value, op: BinaryOp, d: T.DType, axis: int) -> ir.Value:
        """`v` combined over the threads of axis x that share the other thread indices;
        every one of them gets the result."""
        n = self.launch.block[axis]
        if n == 1:
            return v
        for offset in (16, 8, 4, 2, 1):
            if offset < n:
                v = self.ops.binary(op, v, self._shuffle(v, offset), d)
        warps = -(-n // WARP)
        if warps == 1:
            return v
        b = self.b
        t = v.type
        table = self._shared_array(
            ir.ArrayType(t, warps * self.launch.block[1] * self.launch.block[2])
        )
        tx = self.sreg("tid", 0)
        group = b.add(
            self.sreg("tid", 1), b.mul(ir.Constant(I64, self.launch.block[1]), self.sreg("tid", 2))
        )
        base = b.mul(group, ir.Constant(I64, warps))
        self.barrier()  # earlier readers of the table are done
        lane0 = b.icmp_unsigned("==", b.urem(tx, ir.Constant(I64, WARP)), ir.Constant(I64, 0))
        with b.if_then(lane0):
            slot = b.gep(table, [b.add(base, b.udiv(tx, ir.Constant(I64, WARP)))], source_etype=t)
            b.store(v, slot)
        self.barrier()
        total = b.load(b.gep(table, [base], source_etype=t), typ=t)
        for k in range(1, warps):
            index = b.add(base, ir.Constant(I64, k))
            total = self.ops.binary(
                op, total, b.load(b.gep(table, [index], source_etype=t), typ=t), d
            )
        return total

    def _shuffle(self, v: ir.Value, offset: int) -> ir.Value:
        """The value of lane (this lane xor offset), through 32-bit shuffles."""
        b, t = self.b, v.type
        bits = (
            1
            if t == I1
            else (
                t.width
                if isinstance(t, ir.IntType)
                else {"half": 16, "float": 32, "double": 64}[str(t)]
            )
        )
        if bits == 64:
            halves = b.bitcast(v, ir.VectorType(I32, 2))
            out: ir.Value = ir.Constant(ir.VectorType(I32, 2), None)
            for k in range(2):
                lane = ir.Constant(I32, k)
                part = self._shuffle32(b.extract_element(halves, lane), offset)
                out = b.insert_element(out, part, lane)
            return b.bitcast(out, t)
        as_int = b.bitcast(v, ir.IntType(bits)) if not isinstance(t, ir.IntType) else v
        wide = b.zext(as_int, I32) if bits < 32 else as_int
        got = self._shuffle32(wide, offset)
        narrow = b.trunc(got, ir.IntType(bits)) if bits < 32 else got
        return b.bitcast(narrow, t) if not isinstance(t, ir.IntType) else narrow

    def _shuffle32(self, v: ir.Value, offset: int) -> ir.Value:
        args = [ir.Constant(I32, -1), v, ir.Constant(I32, offset), ir.Constant(I32, WARP - 1)]
        return self.ops.intrinsic("llvm.nvvm.shfl.sync.bfly.i32", I32, args)

    # -------------------------------------------------------------- temporaries

    def _shared_array(self, ty: ir.Type) -> ir.Value:
        """A block's shared memory of type `ty`, as a generic pointer."""
        self.shared_count += 1
        g = ir.GlobalVariable(
            self.fn.module, ty, f"{self.fn.name}.shared{self.shared_count}", addrspace=3
        )
        g.linkage = "internal"
        g.align = 16
        return self.b.addrspacecast(g, PTR)

    def _dynamic_shared(self) -> ir.Value:
        """The block's dynamic shared memory (sized at launch), as a generic pointer: one
        extern array that every entry of the module shares."""
        module = self.fn.module
        g = module.globals.get(DYNAMIC_SHARED)
        if g is None:
            g = ir.GlobalVariable(module, ir.ArrayType(I8, 0), DYNAMIC_SHARED, addrspace=3)
            g.linkage = "external"
            g.align = 16
        return self.b.addrspacecast(g, PTR)

    def allocate_gpu(self, buf: Buffer) -> None:
        temp = self.temps[buf.name]
        dims = [self.expr(d) for d in buf.shape]
        strides = self._contiguous_strides(dims, buf.dtype)
        size = constant_nbytes(buf.shape, buf.dtype.itemsize)
        if temp.place == "local":
            data = self._entry_alloca(ir.ArrayType(I8, max(1, size or 0)), buf.name)
            data.align = 16
        elif temp.place == "shared":
            data = self._shared_array(ir.ArrayType(I8, max(1, size or 0)))
        elif temp.place == "dynamic-shared":
            offset = ir.Constant(I64, self.launch.dynamic_offset(buf.name))
            data = self.b.gep(self._dynamic_shared(), [offset], source_etype=I8)
        elif temp.place in ("warp-shared", "warp-dynamic"):  # this warp's copy of all
            copies = int(temp.nbytes.value)  # type: ignore[attr-defined]
            each = copies // (self.launch.block[1] * self.launch.block[2])
            if temp.place == "warp-shared":
                table = self._shared_array(ir.ArrayType(I8, max(1, copies)))
            else:
                offset = ir.Constant(I64, self.launch.dynamic_offset(buf.name))
                table = self.b.gep(self._dynamic_shared(), [offset], source_etype=I8)
            warp = self.b.udiv(self.thread_linear(), ir.Constant(I64, WARP))
            data = self.b.gep(table, [self.b.mul(warp, ir.Constant(I64, each))], source_etype=I8)
        else:
            data = self._scratch_slice(temp.buffer, temp.place)
        self.state.arrays[buf.name] = ArrayInfo(data, dims, strides)

    def _scratch_slice(self, name: str, place: str) -> ir.Value:
        """This block's (or thread's) slice of the scratch buffer for temporary `name`:
        all blocks' slices first, then all threads'."""
        b = self.b
        per_block = self.expr(scratch_bytes(self.launch.scratch("block-scratch")))
        mine = self.launch.scratch(place)
        before = mine[: [t.buffer for t in mine].index(name)]
        offset = self.expr(scratch_bytes(before))
        if place == "block-scratch":
            start = b.mul(self.block_linear(), per_block)
        else:
            per_thread = self.expr(scratch_bytes(mine))
            threads = ir.Constant(I64, self.launch.threads)
            me = b.add(b.mul(self.block_linear(), threads), self.thread_linear())
            start = b.add(b.mul(self.block_count(), per_block), b.mul(me, per_thread))
        return b.gep(self.scratch, [b.add(start, offset)], source_etype=I8)


def _accumulation(a: Assign) -> BinaryOp | None:
    """The operator of `acc = acc op x` (or an fma into acc), else None."""
    v, me = a.value, LocalVar(a.local, a.value.dtype)
    if isinstance(v, Fma) and v.c == me:
        return BinaryOp.ADD
    if isinstance(v, Binary) and v.op in (BinaryOp.ADD, BinaryOp.MUL, BinaryOp.MAX, BinaryOp.MIN):
        if v.lhs == me or v.rhs == me:
            return v.op
    return None


def generate(
    kernel: Kernel, plan: Plan, symbol: str, checks: bool = False, strict_fp: bool = False
) -> tuple[ir.Module, ErrorSites, EntryParams]:
    """An LLVM module for NVPTX with one entry per launch, named `symbol_<n>`."""
    module = ir.Module(name=kernel.name)
    module.triple = "nvptx64-nvidia-cuda"
    params = EntryParams.of(kernel, plan.host_temps)
    sites = ErrorSites()
    for launch in plan.launches:
        gen = GpuCodegen(
            kernel, launch, params, module, f"{symbol}_{launch.index}", checks, strict_fp, sites
        )
        gen.run(launch.body)
    return module, sites, params


def _straight(body: tuple[Stmt, ...]) -> bool:
    """Statements with no loop or allocation inside: cheap to repeat for several trips."""
    return not any(isinstance(s, Loop | Allocate) for s in walk_stmts(body))


@dataclass
class _Group:
    """A group of VECTOR consecutive elements of a lanes' loop (`var`) being emitted:
    its vector loads of the `runs` arrays, and the values each element stores."""

    runs: set[str]
    var: str
    lane: int = 0
    loads: dict[Load, ir.Value] = field(default_factory=dict)
    stores: dict[tuple[str, tuple[Expr, ...]], list[ir.Value]] = field(default_factory=dict)

    def takes(self, buffer: str, index: tuple[Expr, ...]) -> bool:
        return buffer in self.runs and _offset_of(index[-1], self.var) is not None


def _offset_of(index: Expr, var: str) -> Expr | None:
    """`o` when `index` is `var` (o = 0) or `o + var` / `var + o` with `o` free of
    `var`; else None."""
    if index == LoopVar(var):
        return Const(0, INDEX)
    if isinstance(index, Binary) and index.op is BinaryOp.ADD:
        for this, other in ((index.rhs, index.lhs), (index.lhs, index.rhs)):
            if this == LoopVar(var) and all(x != LoopVar(var) for x in walk_expr(other)):
                return other
    return None
