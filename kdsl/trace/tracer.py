"""Run a kernel's Python function on proxies and collect the IR it records: `trace`."""

from __future__ import annotations

import dis
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from kdsl import types as T
from kdsl.errors import KdslError, SourceLoc, TraceError
from kdsl.ir.nodes import (
    Allocate,
    Binary,
    BinaryOp,
    Buffer,
    BufferRole,
    Check,
    CheckKind,
    Const,
    DimOf,
    Expr,
    Kernel,
    Param,
    ScalarArg,
    Scope,
)
from kdsl.ir.printer import format_expr
from kdsl.ir.verify import verify
from kdsl.ir.visit import map_stmt_exprs
from kdsl.trace.buffers import BufferProxy
from kdsl.trace.context import TraceContext, activate
from kdsl.trace.values import Value, int_range
from kdsl.types import DType


@dataclass(frozen=True)
class ArraySpec:
    dtype: DType
    ndim: int
    contiguous: bool = True
    shape: tuple[int, ...] | None = None  # only under static_shapes
    fortran: bool = False  # Fortran order (and not C order: two axes of 2+ elements)


@dataclass(frozen=True)
class ScalarSpec:
    dtype: DType
    weak: bool


@dataclass(frozen=True)
class ConstSpec:
    """A constexpr argument. Python calls 100, 100.0 and True equal, and 0.0 and -0.0, but
    they trace differently, so specializations compare by type and exact value (`key`)."""

    value: object = field(compare=False)
    key: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", exact_key(self.value))


_INEXACT = (float, complex, np.floating, np.complexfloating)  # (a `|` union is made per use)


def exact_key(v: object) -> object:
    """`v` compared by type and exact value (see ConstSpec)."""
    if isinstance(v, tuple):
        return (tuple, tuple(exact_key(x) for x in v))
    if isinstance(v, _INEXACT):
        return (type(v), repr(v))  # repr tells -0.0 from 0.0, and NaN equals NaN
    return (type(v), v)


ArgSpec = ArraySpec | ScalarSpec | ConstSpec


def trace(fn: Callable[..., object], name: str, specs: Sequence[tuple[str, ArgSpec]]) -> Kernel:
    """Trace `fn` for arguments described by `specs` (parameter name, spec) into a Kernel."""
    ctx = TraceContext(name)
    args: list[object] = []
    for pname, spec in specs:
        ctx.names.add(pname)
        match spec:
            case ArraySpec(dtype=d, ndim=n, contiguous=c, fortran=f):
                shape = tuple(DimOf(pname, a) for a in range(n))
                ctx.params.append(Param(pname, d, n))
                ctx.buffers[pname] = Buffer(
                    pname, d, shape, BufferRole.PARAM, Scope.GLOBAL, c, fortran=f
                )
                args.append(BufferProxy(ctx, pname))
            case ScalarSpec(dtype=d, weak=w):
                ctx.params.append(Param(pname, d, None, weak=w))
                args.append(Value(ScalarArg(pname, d), weak=w))
            case ConstSpec(value=v):
                args.append(v)
    try:
        with activate(ctx):
            returned = fn(*args)
        if ctx.unfollowed:
            raise ctx.unfollowed[0]
        kernel = _finish(ctx, returned, fn)
    except KdslError as err:
        raise err.with_kernel(name) from None
    static = {p: s.shape for p, s in specs if isinstance(s, ArraySpec) and s.shape is not None}
    return verify(_bake_shapes(kernel, static) if static else kernel, "traced")


def _return_location(fn: Callable[..., object]) -> SourceLoc | None:
    """The first `return` of `fn` that returns something (the trace has left it)."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is None:
        return None
    instrs = list(dis.get_instructions(code))
    line = None
    for before, ins in zip(instrs, instrs[1:]):
        line = _line(before) or line
        implicit = before.opname == "LOAD_CONST" and before.argval is None
        returns = ins.opname == "RETURN_VALUE" and not implicit
        returns |= ins.opname == "RETURN_CONST" and ins.argval is not None  # (3.12)
        if returns:
            at = _line(ins) or line
            return SourceLoc(code.co_filename, at) if at else None
    return None


def _line(ins: dis.Instruction) -> int | None:
    """The source line of an instruction, on each Python's `dis` (3.13: line_number;
    3.11: positions; 3.10: starts_line, on the first instruction of a line only)."""
    for value in (getattr(ins, "line_number", None), getattr(ins, "positions", None)):
        line = getattr(value, "lineno", value)
        if isinstance(line, int) and not isinstance(line, bool) and line > 0:
            return line
    start = ins.starts_line
    return start if isinstance(start, int) and not isinstance(start, bool) else None


def _finish(ctx: TraceContext, returned: object, fn: Callable[..., object]) -> Kernel:
    outs = returned if isinstance(returned, tuple) else () if returned is None else (returned,)
    results: list[str] = []
    top = ctx.blocks[0]
    for out in outs:
        if isinstance(out, BufferProxy) and out.name in results:
            raise TraceError(
                f"array '{out.name}' is returned twice: each result is an array of its own",
                loc=_return_location(fn),
                fix=f"return it once, and copy it on the host where two are needed "
                f"({out.name}.copy())",
            )
        if not isinstance(out, BufferProxy) or ctx.buffers[out.name].role is not BufferRole.TEMP:
            what = (
                f"a value of dtype {out.dtype.name}"
                if isinstance(out, Value)
                else f"parameter '{out.name}'"
                if isinstance(out, BufferProxy)
                else f"a {type(out).__name__}"
            )
            raise TraceError(
                f"a kernel can return only arrays it created with kd.empty/kd.zeros, not {what}",
                loc=_return_location(fn),
                fix="write results into an output argument, or return kd.empty(shape, dtype)",
            )
        alloc = next((s for s in top if isinstance(s, Allocate) and s.buffer == out.name), None)
        if alloc is None:
            raise TraceError(
                f"returned array '{out.name}' was created inside a loop or kd.when",
                loc=ctx.buffers[out.name].loc,
                fix="create returned arrays at the top level of the kernel",
            )
        top.remove(alloc)
        ctx.buffers[out.name] = replace(
            ctx.buffers[out.name], role=BufferRole.RESULT, scope=Scope.GLOBAL
        )
        results.append(out.name)
    params = [b for b in ctx.buffers.values() if b.role is BufferRole.PARAM]
    others = [b for b in ctx.buffers.values() if b.role is not BufferRole.PARAM]
    body = (*ctx.tie_checks(), *_argument_checks(ctx.narrowed), *top)
    return Kernel(ctx.kernel, tuple(ctx.params), tuple(params + others), body, tuple(results))


def _argument_checks(narrowed: dict[tuple[Expr, DType], SourceLoc | None]) -> list[Check]:
    """At the kernel's entry: each expression of scalar arguments and shapes that met
    another integer dtype fits it (values._note_narrowing); none where every value does."""
    checks = []
    for (e, dtype), loc in narrowed.items():
        (lo, hi), (least, most) = int_range(dtype), int_range(e.dtype)
        bounds = [Binary(BinaryOp.LE, Const(lo, e.dtype), e, T.bool_)] if lo > least else []
        if hi < most:
            bounds.append(Binary(BinaryOp.LE, e, Const(hi, e.dtype), T.bool_))
        if not bounds:
            continue
        cond = functools.reduce(lambda a, b: Binary(BinaryOp.AND, a, b, T.bool_), bounds)
        text = format_expr(e)
        what = (
            f"{lo} <= {text} <= {hi} ('{text}' meets {dtype.name} values and becomes {dtype.name})"
        )
        checks.append(Check(cond, CheckKind.ARGUMENT, what, loc=loc))
    return checks


def _bake_shapes(kernel: Kernel, shapes: dict[str, tuple[int, ...]]) -> Kernel:
    """static_shapes=True: parameter dimensions become constants."""

    def fn(e: Expr) -> Expr | None:
        if isinstance(e, DimOf) and e.buffer in shapes:
            return Const(shapes[e.buffer][e.axis], e.dtype)
        return None

    from kdsl.ir.visit import map_expr

    buffers = tuple(
        replace(b, shape=tuple(map_expr(d, fn) for d in b.shape)) for b in kernel.buffers
    )
    body = tuple(map_stmt_exprs(s, fn) for s in kernel.body)
    return replace(kernel, buffers=buffers, body=body)
