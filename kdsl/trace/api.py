"""The kd.* functions kernels call: indices, loops, locals, temporaries, reductions, math."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import FrameType
from typing import Any

import numpy as np

from kdsl import types as T
from kdsl.errors import SourceLoc, TraceError
from kdsl.ir.nodes import BinaryOp, Const, Expr, LocalVar, LoopKind, LoopVar, Store, UnaryOp
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import walk_expr
from kdsl.trace import hints
from kdsl.trace import values as V
from kdsl.trace.buffers import BufferProxy, LocalProxy
from kdsl.trace.context import Index, Reduction, TraceContext, current
from kdsl.trace.frames import assigned_names, location, user_frame
from kdsl.trace.values import Value, as_value, to_dtype

inf = float("inf")


class constexpr:
    """Marks a compile-time parameter: annotate `n: kd.constexpr`, or pass `kd.constexpr(4)`.

    Its value is a plain Python value during tracing and part of the specialization key.
    """

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"kd.constexpr({self.value!r})"


def _names(api: str, count: int, names: str | None) -> list[str]:
    if names is not None:
        given = names.replace(",", " ").split()
        if len(given) != count:
            raise TraceError(
                f"kd.{api} got {count} extent(s) but names={names!r} has {len(given)}",
                loc=location(),
                fix="give one name per extent",
            )
        params = {p.name for p in current(api).params}
        clash = [n for n in given if n in params]
        if clash:  # (it would be renamed `x.1`, and a schedule naming "x" find no loop)
            raise TraceError(
                f"kd.{api}: the loop name '{clash[0]}' is a parameter's name",
                loc=location(),
                fix='name the loops apart from the parameters, e.g. names="i j"',
            )
        return given
    found = assigned_names()
    return found if len(found) == count else [f"i{n}" for n in builtins.range(count)]


def indices(*extents: object, names: str | None = None) -> Index | tuple[Index, ...]:
    """Index variables over [0, extent); one extent gives one Index, several a tuple; a
    shape (`kd.indices(x.shape)`) gives one per axis."""
    ctx = current("indices")
    extents = _unpacked(extents)
    if not extents:
        raise TraceError(
            "kd.indices() needs at least one extent", loc=location(), fix="e.g. kd.indices(n)"
        )
    made = tuple(
        ctx.new_index(n, e) for n, e in zip(_names("indices", len(extents), names), extents)
    )
    return made[0] if len(made) == 1 else made


def _unpacked(extents: tuple[object, ...]) -> tuple[object, ...]:
    """The extents, a shape given alone (`x.shape`, a tuple) standing for its axes'."""
    if len(extents) == 1 and isinstance(extents[0], tuple | list):
        return tuple(extents[0])
    return extents


def _loops(
    api: str, kind: LoopKind, extents: tuple[object, ...]
) -> Iterator[Index | tuple[Index, ...]]:
    ctx = current(api)
    loc = location()
    if any(g.per_statement for g in ctx.guards):
        raise TraceError(
            f"a kd.{api} loop inside `with kd.when(cond)` whose condition depends on implicit "
            "loops",
            loc=loc,
            fix="put the kd.when inside the loop, or bind the indices with kd.grid first",
        )
    _check_bounds(api, extents, "extent")
    idxs = [ctx.new_index(n, e) for n, e in zip(_names(api, len(extents), None), extents)]

    def nest(k: int) -> Iterator[None]:
        if k == len(idxs):
            yield
            return
        with ctx.loop(idxs[k], kind, loc):
            yield from nest(k + 1)

    frame = user_frame()
    kept = {n: v for n, v in frame.f_locals.items() if isinstance(v, LocalProxy)} if frame else {}
    finished = False
    try:
        for _ in nest(0):
            yield idxs[0] if len(idxs) == 1 else tuple(idxs)
            _check_locals_kept(frame, kept, loc)
        finished = True
    finally:
        ctx.ended.update(dict.fromkeys((i.placeholder for i in idxs), loc))
        if not finished:  # (closed: the body broke out, returned or raised)
            names = ", ".join(i.name for i in idxs)
            ctx.unfollowed.append(
                TraceError(
                    f"the kd.{api} loop over {names} was left before its end (by break "
                    "or return): kdsl traces its body once for all iterations, so it can't "
                    "stop early",
                    loc=loc,
                    fix="put the stopping point into the loop's bounds, or guard the rest "
                    "of the body with `with kd.when(...)`",
                )
            )


def _check_locals_kept(
    frame: FrameType | None, kept: dict[str, LocalProxy], loc: SourceLoc | None
) -> None:
    """Refuse a loop body that bound a kd.local's name to a value (`acc = acc + x[t]`):
    Python would carry that value to the next iteration, but the body is traced once,
    so each iteration would read the local, which nothing updates."""
    if frame is None:
        return
    now = frame.f_locals
    for name, local in kept.items():
        value = now.get(name, local)
        if value is not local and isinstance(value, Value) and not isinstance(value, LocalProxy):
            raise TraceError(
                f"'{name}', a kd.local, is bound to a new value in the loop's body, so the "
                "next iteration would not see it (the body is traced once, and reads the "
                "local, which nothing updates)",
                loc=loc,
                fix=f"update the local in place: `{name} += ...` or `{name}.set(...)`; or "
                "give the value another name",
            )


def range(*args: object) -> Iterator[Value]:  # noqa: A001 - kd.range mirrors Python's range
    """An ordered loop: `for i in kd.range(n)`, `kd.range(start, stop)` or
    `kd.range(start, stop, step)` (a positive constant step); iterations may depend on
    earlier ones. Like Python's range, it runs no iteration when start >= stop."""
    current("range")
    if not 1 <= len(args) <= 3:
        raise TraceError(
            f"kd.range takes 1 to 3 arguments (stop, or start, stop[, step]), not {len(args)}",
            loc=location(),
            fix="e.g. kd.range(n) or kd.range(1, n)",
        )
    start, stop = (0, args[0]) if len(args) == 1 else args[:2]
    step = _step(args[2]) if len(args) == 3 else 1
    _check_bounds("range", (start, stop), "bounds")
    if _is_int(start) and start == 0 and step == 1:
        yield from _loops("range", LoopKind.SERIAL, (stop,))  # type: ignore[misc]
        return
    for what, bound in (("start", start), ("stop", stop)):
        if not as_value(bound).dtype.is_int:
            raise TraceError(
                f"kd.range's {what} is {as_value(bound).dtype.name}, not an integer",
                loc=location(),
                fix="pass ints, shape values or integer expressions",
            )
    count: object  # iterations: max(0, ceil((stop - start) / step)), as Python's range
    if _is_int(start) and _is_int(stop):
        count = len(builtins.range(int(start), int(stop), step))  # type: ignore[call-overload]
    else:
        # in i64 (u8 bounds 5 and 3 would wrap to 254 trips), and `start` read once,
        # before the loop, as Python's range reads it
        if not _is_int(start):  # (named apart: the loop keeps the user's name)
            found = assigned_names()
            start = _local(V.cast(start, T.i64), T.i64, f"{found[0] if found else 'range'}_start")
        count = V.maximum(V.cast(stop, T.i64) - start, 0)
        if step != 1:
            count = (count + (step - 1)) // step  # type: ignore[operator]
    ctx = current("range")
    for t in _loops("range", LoopKind.SERIAL, (count,)):
        value = t * step + start if step != 1 else t + start  # type: ignore[operator]
        ctx.user_forms[value.expr] = t.name  # (messages print it as t)
        yield value


def _check_bounds(api: str, bounds: tuple[object, ...], what: str) -> None:
    """A loop's bounds may not depend on an implicit index (`kd.range(offs[r], offs[r +
    1])` under `r = kd.indices(n)`): each r would need its own loop, so r must be a
    loop of its own, around this one."""
    ctx = current(api)
    exprs = [as_value(b).expr for b in bounds if not isinstance(b, bool | int | np.integer)]
    free = [ctx.indices[p] for p in ctx.free_vars(exprs)]
    if not free:
        return
    names = ", ".join(i.name for i in free)
    extents = ", ".join(format_expr(hints.in_users_names(i.extent)) for i in free)
    read = ", ".join(format_expr(hints.in_users_names(e)) for e in exprs if ctx.free_vars([e]))
    one = len(free) == 1
    raise TraceError(
        f"kd.{api}'s {what} ({read}) depend{'s' if what == 'extent' else ''} on the implicit "
        f"index{'' if one else 'es'} {names}: each {free[0].name} needs a loop of its own, so "
        f"{names} must be {'a real loop' if one else 'real loops'} around this one",
        loc=location(),
        fix=f"loop over {'it' if one else 'them'}: `for {names} in kd.grid({extents}):` "
        f"(in place of kd.indices), with this loop in its body",
    )


def _is_int(x: object) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _step(step: object) -> int:
    """kd.range's step: a positive constant."""
    value = step.expr.value if isinstance(step, Value) and isinstance(step.expr, Const) else step
    if not _is_int(value) or value <= 0:  # type: ignore[operator]
        text = format_expr(step.expr) if isinstance(step, Value) else repr(step)
        raise TraceError(
            f"kd.range's step must be a positive constant int, not {text}",
            loc=location(),
            fix="use a step such as 2 (a Python int or a kd.constexpr); for a symbolic or "
            "negative step, loop over kd.range(count) and compute the position from it",
        )
    return int(value)


def grid(*extents: object) -> Iterator[Index | tuple[Index, ...]]:
    """A nest of independent loops: `for i, j in kd.grid(m, n)`, or one per axis of a
    shape: `for i, j in kd.grid(x.shape)`."""
    extents = _unpacked(extents)
    if not extents:
        raise TraceError(
            "kd.grid() needs at least one extent", loc=location(), fix="e.g. kd.grid(m, n)"
        )
    yield from _loops("grid", LoopKind.PARALLEL, extents)


def local(init: object, dtype: object = None) -> LocalProxy:
    """A scalar variable: update with `acc += x` or `acc.set(x)`."""
    return _local(init, dtype, None)


def _local(init: object, dtype: object, name: str | None) -> LocalProxy:
    """kd.local, named `name` (else after the variable the user assigns it to)."""
    from kdsl.ir.nodes import DeclareLocal

    ctx = current("local")
    loc = location()
    v = as_value(init)
    if dtype is not None:
        d = V.kernel_dtype(dtype)
    elif isinstance(init, np.generic):  # kd.local(np.float64(0)): the scalar's dtype
        d = T.compute_dtype(v.dtype)
    elif v.weak and not v.dtype.is_bool:
        d = T.DEFAULT_FLOAT if v.dtype.is_float else T.DEFAULT_INT
    else:
        d = T.compute_dtype(v.dtype)
    if ctx.free_vars([v.expr]):
        raise TraceError(
            "kd.local initialised with a value that depends on an implicit loop index",
            loc=loc,
            fix="bind the index with kd.grid/kd.range first, or use kd.alloc for an array",
        )
    if any(g.per_statement for g in ctx.guards):  # it would be declared per element
        raise TraceError(
            "kd.local inside `with kd.when(cond)` whose condition depends on implicit loops",
            loc=loc,
            fix="declare the local before the kd.when",
        )
    found = assigned_names()
    name = ctx.fresh(name or (found[0] if found else "local"))
    init_expr = V.cast(v, d).expr if not v.weak else to_dtype(v, d)
    ctx.record([init_expr], lambda es: DeclareLocal(name, d, es[0], loc=loc), loc)
    ctx.declare(name)
    return LocalProxy(ctx, name, d)


def _shape(api: str, shape: object) -> tuple[Expr, ...]:
    ctx = current(api)
    loc = location()
    dims = shape if isinstance(shape, tuple | list) else (shape,)
    out = []
    for d in dims:
        e = ctx.extent_expr(d, "shape")
        if ctx.free_vars([e]) or any(isinstance(x, LoopVar | LocalVar) for x in walk_expr(e)):
            raise TraceError(
                f"the shape of kd.{api} depends on a loop index or a local",
                loc=loc,
                fix="compute shapes from argument shapes, scalars and constants",
            )
        out.append(e)
    return tuple(out)


def alloc(shape: object, dtype: object = T.f32) -> BufferProxy:
    """A kernel-local array (registers or stack/heap on CPU); its contents start undefined."""
    ctx = current("alloc")
    label = (assigned_names() or ["tmp"])[0]
    return BufferProxy(
        ctx, ctx.new_temp(label, _shape("alloc", shape), V.kernel_dtype(dtype), location())
    )


def empty(shape: object, dtype: object = T.f32) -> BufferProxy:
    """A new array; returned from the kernel it becomes a NumPy array for the caller."""
    ctx = current("empty")
    label = (assigned_names() or ["out"])[0]
    return BufferProxy(
        ctx, ctx.new_temp(label, _shape("empty", shape), V.kernel_dtype(dtype), location())
    )


def zeros(shape: object, dtype: object = T.f32) -> BufferProxy:
    """Like kd.empty, filled with zeros."""
    ctx = current("zeros")
    loc = location()
    label = (assigned_names() or ["zeros"])[0]
    dims = _shape("zeros", shape)
    d = V.kernel_dtype(dtype)
    buf = ctx.new_temp(label, dims, d, loc)
    idxs = [ctx.new_index(f"{buf}_{a}", Value(e, weak=True)) for a, e in enumerate(dims)]
    zero = to_dtype(as_value(0), d)
    ctx.record(
        [*(i.expr for i in idxs), zero],
        lambda es: Store(buf, tuple(es[:-1]), es[-1], loc=loc),
        loc,
    )
    return BufferProxy(ctx, buf)


def when(cond: object) -> AbstractContextManager[None]:
    """`with kd.when(cond):` — the statements inside run only where `cond` holds."""
    ctx = current("when")
    c = as_value(cond)
    loc = location()
    if not c.dtype.is_bool:
        raise TraceError(
            f"kd.when condition is {c.dtype.name}, not bool",
            loc=loc,
            fix="compare to get a condition, e.g. kd.when(x > 0)",
        )
    return _When(ctx, c, loc)


class _When(AbstractContextManager[None]):
    """kd.when's guard: one never entered (`kd.when(x > 0)` as a statement, its `with`
    forgotten) would guard nothing, so the trace is refused when the kernel returns."""

    def __init__(self, ctx: TraceContext, cond: Value, loc: SourceLoc | None) -> None:
        self._ctx, self._cond, self._loc = ctx, cond, loc
        self._guards: list[AbstractContextManager[None]] = []  # one per entry (a `with`)
        self._unused = TraceError(
            "kd.when(...) is not used in a `with` statement, so it guards nothing",
            loc=loc,
            fix="write `with kd.when(cond):` and indent the statements it guards under it",
        )
        ctx.unfollowed.append(self._unused)

    def __enter__(self) -> None:
        if self._unused in self._ctx.unfollowed:
            self._ctx.unfollowed.remove(self._unused)
        self._guards.append(self._ctx.guard(self._cond, self._loc))
        self._guards[-1].__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        return self._guards.pop().__exit__(*exc)


# ------------------------------------------------------------------------- reductions

_REDUCERS = {"sum": BinaryOp.ADD, "prod": BinaryOp.MUL, "max": BinaryOp.MAX, "min": BinaryOp.MIN}


def _reduce(label: str, x: object, over: object) -> Value:
    ctx = current(label)
    loc = location()
    if over is None:
        free = [ctx.indices[p].name for p in ctx.free_vars([as_value(x).expr])]
        hint = f"over={free[0]}" if len(free) == 1 else f"over=({', '.join(free)})"
        raise TraceError(
            f"kd.{label} needs over=: the index (or indices) to reduce",
            loc=loc,
            fix=f"e.g. kd.{label}(..., {hint})"
            if free
            else f"e.g. k = kd.indices(n); kd.{label}(x[k], over=k)",
        )
    axes = over if isinstance(over, tuple | list) else (over,)
    if not axes or not all(isinstance(a, Index) for a in axes):
        raise TraceError(
            f"kd.{label}(..., over=) needs an index variable or a tuple of them",
            loc=loc,
            fix=f"e.g. k = kd.indices(n); kd.{label}(x[k], over=k)"
            + (f"; for two values, kd.{label}imum(a, b)" if label in ("max", "min") else ""),
        )
    for a in axes:
        if a.placeholder in ctx.bound:  # type: ignore[union-attr]
            raise TraceError(
                f"kd.{label} over '{a.name}', which is already the variable of an enclosing loop",  # type: ignore[union-attr]
                loc=loc,
                fix="reduce over a fresh index from kd.indices",
            )
    v = V.widen(as_value(x))
    if label in ("sum", "prod") and v.dtype.bits < 32 and not v.dtype.is_float:
        # as NumPy does: bool and 8- and 16-bit integers sum in 64 bits (a 32-bit
        # integer sum stays 32-bit, as in C: the library's int8 dot products rely on it)
        v = V.cast(v, T.u64 if v.dtype.kind is T.Kind.UINT else T.i64)
    r = Reduction(_REDUCERS[label], v.expr, tuple(a.placeholder for a in axes), v.dtype, label)  # type: ignore[union-attr]
    if ctx.free_vars([r]):
        return Value(r)  # type: ignore[arg-type]
    return Value(ctx.reduce_now(r, loc))


def sum(x: object, over: object = None) -> Value:  # noqa: A001
    """Sum of `x` over the index (or indices) `over`."""
    return _reduce("sum", x, over)


def prod(x: object, over: object = None) -> Value:
    return _reduce("prod", x, over)


def max(x: object, over: object = None) -> Value:  # noqa: A001
    return _reduce("max", x, over)


def min(x: object, over: object = None) -> Value:  # noqa: A001
    return _reduce("min", x, over)


def argmax(x: object, over: object = None) -> Value:
    """The first position along index `over` of the greatest value of `x` (a NaN counts
    as the greatest, as in NumPy's argmax), an i64; over an empty range, its length."""
    return _arg("argmax", max, x, over)


def argmin(x: object, over: object = None) -> Value:
    """The first position of the least value (a NaN counts as the least, as in NumPy)."""
    return _arg("argmin", min, x, over)


def _arg(label: str, extreme: Callable[..., Value], x: object, over: object) -> Value:
    """Two reductions over `over`: the extreme, then the first position holding it (or
    a NaN: the extreme is NaN then)."""
    loc = location()
    current(label)
    if not isinstance(over, Index):
        raise TraceError(
            f"kd.{label} takes one index variable, over=",
            loc=loc,
            fix=f"e.g. j = kd.indices(n); kd.{label}(x[i, j], over=j)",
        )
    value = as_value(x)
    best = extreme(value, over=over)
    length = Value(over.extent)
    first = min(V.where((value == best) | (value != value), over, length), over=over)
    return minimum(first, length)


# ------------------------------------------------------------------------------ math


def _unary(op: UnaryOp):  # type: ignore[no-untyped-def]
    def fn(x: object, *more: object) -> Value:
        current(op.value)
        if more:  # (kd.round(x, 2), as NumPy's round takes decimals)
            raise TraceError(
                f"kd.{op.value} takes one value, not {1 + len(more)} arguments",
                loc=location(),
                fix=hints.round_fix(more[0]) if op is UnaryOp.ROUND else f"call kd.{op.value}(x)",
            )
        return V.unary(op, x)

    fn.__name__ = op.value
    fn.__doc__ = f"Elementwise {op.value} (floats; integers are converted to f64)."
    return fn


exp = _unary(UnaryOp.EXP)
exp2 = _unary(UnaryOp.EXP2)
log = _unary(UnaryOp.LOG)
log2 = _unary(UnaryOp.LOG2)
sqrt = _unary(UnaryOp.SQRT)
rsqrt = _unary(UnaryOp.RSQRT)
tanh = _unary(UnaryOp.TANH)
sigmoid = _unary(UnaryOp.SIGMOID)
erf = _unary(UnaryOp.ERF)
sin = _unary(UnaryOp.SIN)
cos = _unary(UnaryOp.COS)
floor = _unary(UnaryOp.FLOOR)
ceil = _unary(UnaryOp.CEIL)
round = _unary(UnaryOp.ROUND)  # noqa: A001 - kd.round mirrors np.round
round.__doc__ = "Elementwise rounding to the nearest integer, halves to even, as np.round."


def abs(x: object) -> Value:  # noqa: A001
    current("abs")
    return V.unary(UnaryOp.ABS, x)


def maximum(a: object, b: object) -> Value:
    current("maximum")
    return V.maximum(a, b)


def minimum(a: object, b: object) -> Value:
    current("minimum")
    return V.minimum(a, b)


def fma(a: object, b: object, c: object) -> Value:
    current("fma")
    return V.fma(a, b, c)


def where(cond: object, a: object, b: object) -> Value:
    current("where")
    return V.where(cond, a, b)


def cast(x: object, dtype: object) -> Value:
    current("cast")
    return V.cast(x, dtype)
