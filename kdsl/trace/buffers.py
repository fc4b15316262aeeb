"""Proxies for arrays and scalar locals: subscripting and assignment record IR statements."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable

import numpy as np

from kdsl import types as T
from kdsl.errors import ArgumentTraceError, SourceLoc, TraceError
from kdsl.ir.nodes import (
    Assign,
    Binary,
    BinaryOp,
    Const,
    DimOf,
    Expr,
    Load,
    LoopKind,
    LoopVar,
    Store,
)
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import walk_expr
from kdsl.trace.context import Index, TraceContext
from kdsl.trace.frames import location
from kdsl.trace.values import (
    NotAValue,
    Value,
    _NoArrayAttribute,
    as_value,
    can_store,
    to_dtype,
)
from kdsl.types import DType


class _Shape(tuple):  # type: ignore[type-arg]
    """An array's shape inside a kernel: an axis it lacks is the user's error, named (the
    caller's, an ArgumentTraceError, where the array is an argument)."""

    def __new__(cls, name: str, dims: Iterable[Value], argument: bool) -> _Shape:
        shape = super().__new__(cls, dims)
        shape.name, shape.argument = name, argument
        return shape

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        try:
            return super().__getitem__(index)
        except IndexError:
            n, name = len(self), self.name
            has = f"reads only {name}.shape[0]" + (f" to {name}.shape[{n - 1}]" if n > 1 else "")
            error = ArgumentTraceError if self.argument else TraceError
            raise error(
                f"{name}.shape[{index}], but array '{name}' has {n} dimension(s) here",
                loc=location(),
                fix=f"pass an array of {index + 1 if index >= 0 else -index} dimensions or more "
                f"as '{name}', or change the kernel so that it "
                + (has if n else f"treats '{name}' as a 0-d array (no shape)"),
            ) from None


class BufferProxy(NotAValue):
    """An array inside a kernel: `A[i, j]` reads, `A[i, j] = v` writes."""

    def __init__(self, ctx: TraceContext, name: str) -> None:
        self._ctx = ctx
        self.name = name

    @property
    def _buffer(self):  # type: ignore[no-untyped-def]
        return self._ctx.buffers[self.name]

    @property
    def dtype(self) -> DType:
        return self._buffer.dtype  # type: ignore[no-any-return]

    @property
    def ndim(self) -> int:
        return self._buffer.ndim  # type: ignore[no-any-return]

    @property
    def shape(self) -> tuple[Value, ...]:
        b = self._buffer
        if self._argument:
            dims = (Value(DimOf(b.name, a), weak=True) for a in range(b.ndim))
            return _Shape(self.name, dims, argument=True)
        return _Shape(self.name, (Value(d, weak=True) for d in b.shape), argument=False)

    @property
    def _argument(self) -> bool:
        """Whether the array is the kernel's argument (not a temporary of its own): then
        a rank or dtype its code can't use is the caller's error, an ArgumentTraceError."""
        return self._buffer.role.value == "param"  # type: ignore[no-any-return]

    def _error(self) -> type[TraceError]:
        return ArgumentTraceError if self._argument else TraceError

    def __repr__(self) -> str:
        return f"<kdsl array {self.name}: {self.dtype.name}, {self.ndim}-d>"

    def __getattr__(self, attr: str) -> object:
        """NumPy's array attributes and methods (x.size, x.T, x.sum()): a kernel reads
        elements, so each gets the kernel's way of saying it."""
        if attr.startswith("_"):
            raise AttributeError(attr)
        name, n = self.name, self.ndim
        shape = " * ".join(f"{name}.shape[{a}]" for a in range(n)) or "1"
        ways = {
            "size": f"use {shape}",
            "T": f"subscript it with the indices swapped: {name}[j, i] for {name}.T[i, j]",
            "sum": f"reduce over an index: kd.sum({name}[i], over=i)",
            "max": f"reduce over an index: kd.max({name}[i], over=i)",
            "min": f"reduce over an index: kd.min({name}[i], over=i)",
            "astype": f"convert each element: {name}[i].astype(kd.f32)",
        }
        raise _NoArrayAttribute(  # (an AttributeError too: hasattr(x, "size") is False)
            f"{name}.{attr}: inside a kernel an array has only .shape, .ndim and .dtype",
            loc=location(),
            fix=ways.get(attr, f"compute it from {name}.shape and its elements {name}[...]"),
        )

    def __len__(self) -> int:
        raise TraceError(
            f"len() of array '{self.name}' inside a kernel",
            loc=location(),
            fix=f"use {self.name}.shape[0], a symbolic value",
        )

    def __bool__(self) -> bool:
        raise TraceError(
            f"array '{self.name}' used as a truth value",
            loc=location(),
            fix="subscript it to get an element",
        )

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise TraceError(
            f"iterating over array '{self.name}' inside a kernel",
            loc=location(),
            fix="loop with kd.grid/kd.range, or use index variables from kd.indices",
        )

    def _index(self, key: object, loc: SourceLoc | None) -> tuple[Expr, ...]:
        parts = key if isinstance(key, tuple) else (key,)
        if self.ndim == 0 and len(parts) == 1 and parts[0] is Ellipsis:  # x[...], as NumPy does
            parts = ()
        if len(parts) != self.ndim:
            raise self._error()(
                f"array '{self.name}' has {self.ndim} dimension(s) but is subscripted with "
                f"{len(parts)}",
                loc=loc,
                fix=f"give one index per dimension, e.g. {self._example()}"
                if self.ndim
                else f"a 0-d array has no index: write {self.name}[()] (or {self.name}[...])",
            )
        out: list[Expr] = []
        for axis, part in enumerate(parts):
            if isinstance(part, slice) or part is Ellipsis or part is None:
                raise TraceError(
                    f"slicing array '{self.name}' inside a kernel",
                    loc=loc,
                    fix="subscript with index variables instead: i = kd.indices(n); "
                    f"{self.name}[i]",
                )
            if isinstance(part, np.integer):  # (a constexpr from np.argmax, say)
                part = int(part)
            if isinstance(part, bool) or not isinstance(part, int | Value):
                raise TraceError(
                    f"subscript {axis} of '{self.name}' is a {type(part).__name__}",
                    loc=loc,
                    fix="subscripts are ints, index variables or integer expressions",
                )
            if isinstance(part, Index):
                self._ctx.tie(part, self.name, axis, loc)
            elif isinstance(part, Value):
                # arithmetic on an index (x[i + 1]) makes it a position; one only inside
                # another array's subscript (x[idx[i]]) was classified by that subscript
                # (an explicit loop's index too: `indptr[r + 1]` in `for r in kd.grid(n)`)
                used = self._ctx.free_vars([part.expr], in_loads=False, bound=True)
                self._ctx.offset_used.update(used)
            v = as_value(part)
            if not v.dtype.is_int:
                raise TraceError(
                    f"subscript {axis} of '{self.name}' is {v.dtype.name}, not an integer",
                    loc=loc,
                    fix="cast it: idx.astype(kd.i64)",
                )
            e = to_dtype(v, T.i64)
            if isinstance(e, Const) and int(e.value) < 0:  # NumPy-style from the end
                e = _add(self.shape[axis].expr, int(e.value))
            out.append(e)
        return tuple(out)

    def value_error(self) -> TraceError:
        name, loc = self.name, location()
        if self.ndim:
            return TraceError(
                f"array '{name}' used as a value",
                loc=loc,
                fix=f"subscript it: {self._example()}",
            )
        if self._argument:
            return ArgumentTraceError(
                f"argument '{name}' is a 0-d array, used here as a value",
                loc=loc,
                fix=f"pass a Python or NumPy scalar as '{name}' (float({name}) or {name}[()] "
                f"in the caller), or read it in the kernel as {name}[()]",
            )
        return TraceError(
            f"0-d array '{name}' used as a value", loc=loc, fix=f"read it as {name}[()]"
        )

    def _example(self) -> str:
        """The array subscripted, as an example: `x[i, j]`."""
        names = "ijkl" if self.ndim <= 4 else [f"i{a}" for a in range(self.ndim)]
        return f"{self.name}[{', '.join(names[: self.ndim])}]"

    def _dtype_fix(self, d: DType) -> str:
        """How to give this array the dtype `d` instead."""
        if self._argument:
            return f"pass a {d.to_numpy().name} array as '{self.name}'"
        return f"create '{self.name}' with dtype kd.{d.name}"

    def __getitem__(self, key: object) -> Value:
        loc = location()
        load = Load(self.name, self._index(key, loc), self.dtype, loc=loc)
        self._ctx.writes.read(load)
        return Value(load)

    def __setitem__(self, key: object, value: object) -> None:
        loc = location()
        index = self._index(key, loc)
        v = as_value(value)
        if not can_store(v, self.dtype):
            raise self._error()(
                f"storing a {v.dtype.name} value into '{self.name}' ({self.dtype.name}) "
                "would lose its kind",
                loc=loc,
                fix=f"convert explicitly: value.astype(kd.{self.dtype.name}), or "
                + self._dtype_fix(v.dtype),
            )
        ctx = self._ctx
        ctx.check_scope(self.name, loc)

        def build(es: list[Expr]) -> Store:
            store = Store(self.name, tuple(es[:-1]), es[-1], loc=loc)
            _check_race(ctx, store)
            return store

        ctx.record([*index, to_dtype(v, self.dtype)], build, loc)
        ctx.writes.wrote(self.name, index, loc)


def _not_a_value(self: BufferProxy, *_: object) -> None:
    raise self.value_error()


for _op in (
    "add sub mul truediv floordiv mod pow and or xor lshift rshift".split()
):  # arithmetic on an array (x + 1), either side: the same error as x in a value's place
    setattr(BufferProxy, f"__{_op}__", _not_a_value)
    setattr(BufferProxy, f"__r{_op}__", _not_a_value)
for _op in "lt le gt ge neg pos abs invert float int index".split():
    setattr(BufferProxy, f"__{_op}__", _not_a_value)


def _add(e: Expr, k: int) -> Expr:
    return Binary(BinaryOp.ADD, e, Const(k, T.i64), T.i64)


def _check_race(ctx: TraceContext, store: Store) -> None:
    """Under parallel loops, a store may not read its own buffer where another iteration
    writes it (`TraceContext.carried`), nor write one element from several iterations."""
    buffer, index, loc = store.buffer, store.index, store.loc
    parallel = {n for n, k in ctx.loop_kinds.items() if k is LoopKind.PARALLEL}
    parallel -= ctx.alloc_loops.get(buffer, set())  # each of their iterations has its own copy
    in_index = {e.name for i in index for e in walk_expr(i) if isinstance(e, LoopVar)}
    missing = sorted(parallel - in_index)
    if missing:
        fix = (
            "combine the values with kd.sum/kd.max/… over that index, or use kd.range for an "
            "ordered loop"
        )
        if buffer in ctx.alloc_loops:  # a scratch array: one per iteration is what's meant
            fix = (
                f"give each iteration its own '{buffer}': bind the index with `for "
                f"{missing[0]} in kd.grid(n):` and allocate '{buffer}' inside that loop; or {fix}"
            )
        raise TraceError(
            f"'{buffer}[{', '.join(format_expr(i) for i in index)}]' is written by every "
            f"iteration of parallel loop '{missing[0]}': the writes race",
            loc=loc,
            fix=fix,
        )
    for e in (*index, store.value):
        for load in walk_expr(e):
            if not isinstance(load, Load) or load.buffer != buffer or load.index == index:
                continue
            differ = [(a, b) for a, b in zip(load.index, index, strict=True) if a != b]
            racing = [r for a, b in differ if (r := _loop_names(a, b) & parallel)]
            if racing and any(ctx.meets_across(store, load, var) for var in sorted(parallel)):
                raise TraceError(
                    f"'{buffer}' is written at [{', '.join(format_expr(i) for i in index)}] "
                    f"and read at [{', '.join(format_expr(i) for i in load.index)}] under "
                    f"parallel loop(s) {', '.join(sorted(racing[0]))}: iterations "
                    "would race",
                    loc=loc,
                    fix="write the result to another array, or make the loop ordered with kd.range",
                )


def _loop_names(*exprs: Expr) -> set[str]:
    return {x.name for e in exprs for x in walk_expr(e) if isinstance(x, LoopVar)}


def _updating(op: Callable[[Value, object], Value]) -> Callable[[LocalProxy, object], LocalProxy]:
    """A local's augmented assignment for operator `op`: `acc op= o` sets acc to `acc op o`."""

    def update(self: LocalProxy, o: object) -> LocalProxy:
        return self.set(op(Value(self.expr), o))

    return update


class LocalProxy(Value):
    """A scalar variable of a kernel (`kd.local`): read it as a value, update it in place.

    Each read is a node the trace can tell from later ones (kdsl.trace.versions): a
    value built from the local keeps the value it had then, as in Python."""

    __slots__ = ("_ctx", "name", "_dtype")

    def __init__(self, ctx: TraceContext, name: str, dtype: DType) -> None:
        self._ctx = ctx
        self.name = name
        self._dtype = dtype
        self.weak = False

    @property  # type: ignore[override]
    def expr(self) -> Expr:
        return self._ctx.locals.read(self.name, self._dtype)

    @property
    def dtype(self) -> DType:
        return self._dtype

    def __pos__(self) -> Value:
        """A read of the local now (`prev = +acc` keeps this value; `prev = acc` is the
        local itself, as a Python name bound to the same object)."""
        return Value(self.expr)

    def set(self, value: object) -> LocalProxy:
        loc = location()
        v = as_value(value)
        if not can_store(v, self.dtype):
            raise TraceError(
                f"assigning a {v.dtype.name} value to local '{self.name}' ({self.dtype.name})",
                loc=loc,
                fix=f"convert explicitly: value.astype(kd.{self.dtype.name})",
            )
        expr = to_dtype(v, self.dtype)
        ctx = self._ctx
        ctx.check_scope(self.name, loc)
        free = ctx.free_vars([expr] + [g.cond for g in ctx.guards if g.per_statement])
        if free:
            raise TraceError(
                f"local '{self.name}' is updated inside an implicit loop over "
                f"'{ctx.indices[free[0]].name}'",
                loc=loc,
                fix=f"use kd.sum(..., over={ctx.indices[free[0]].name}) for a reduction, or an "
                "explicit `for` over kd.range/kd.grid",
            )
        with ctx.locals.assignment(self.name):
            ctx.record([expr], lambda es: Assign(self.name, es[0], loc=loc), loc)
        return self

    # Every augmented assignment updates the local: one that Python had to fall back on
    # (`acc //= 2` as `acc = acc // 2`) would rebind the name to a value, and the loop's
    # update would be lost without a word.
    __iadd__ = _updating(operator.add)
    __isub__ = _updating(operator.sub)
    __imul__ = _updating(operator.mul)
    __itruediv__ = _updating(operator.truediv)
    __ifloordiv__ = _updating(operator.floordiv)
    __imod__ = _updating(operator.mod)
    __ipow__ = _updating(operator.pow)
    __iand__ = _updating(operator.and_)
    __ior__ = _updating(operator.or_)
    __ixor__ = _updating(operator.xor)
    __ilshift__ = _updating(operator.lshift)
    __irshift__ = _updating(operator.rshift)
