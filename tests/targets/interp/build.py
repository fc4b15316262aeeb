"""Small hand-built kernels for the interpreter's tests: one loop, one store, one op."""

from __future__ import annotations

import numpy as np

import kdsl as kd
from kdsl.errors import SourceLoc
from kdsl.ir.nodes import (
    Binary,
    BinaryOp,
    Buffer,
    BufferRole,
    Cast,
    Const,
    DimOf,
    Expr,
    Kernel,
    Load,
    Loop,
    LoopKind,
    LoopVar,
    Param,
    Scope,
    Stmt,
    Store,
    Unary,
    UnaryOp,
)
from kdsl.ir.verify import verify
from kdsl.targets.interp.interpreter import interpret
from kdsl.types import DType, from_numpy

I = LoopVar("i")  # noqa: E741
LOC = SourceLoc("user.py", 7, 4, 12)


def c(v: bool | int | float, d: DType = kd.i64) -> Const:
    return Const(v, d)


def param(name: str, dtype: DType, ndim: int = 1) -> Buffer:
    shape = tuple(DimOf(name, a) for a in range(ndim))
    return Buffer(name, dtype, shape, BufferRole.PARAM, Scope.GLOBAL)


def kernel(arrays: dict[str, tuple[DType, int]], body: tuple[Stmt, ...], scalars=(), extra=()):
    """A verified kernel over array parameters {name: (dtype, ndim)} and scalar Params."""
    params = tuple(Param(n, d, nd) for n, (d, nd) in arrays.items()) + tuple(scalars)
    buffers = tuple(param(n, d, nd) for n, (d, nd) in arrays.items()) + tuple(extra)
    return verify(Kernel("k", params, buffers, body), "traced")


def elementwise(inputs: dict[str, DType], out: DType, value: Expr, extra=(), params=()) -> Kernel:
    """out[i] = value for i in range(out.shape[0]); `inputs` maps names to dtypes."""
    loop = Loop("i", DimOf("out", 0), LoopKind.PARALLEL, (Store("out", (I,), value, loc=LOC),))
    arrays = {n: (d, 1) for n, d in inputs.items()} | {"out": (out, 1)}
    return kernel(arrays, (loop,), params, extra)


def at(name: str, dtype: DType, index: Expr = I) -> Load:
    return Load(name, (index,), dtype, loc=LOC)


def dtype_of(a: np.ndarray) -> DType:
    found = from_numpy(a.dtype)
    assert found is not None
    return found


def run_binary(op: BinaryOp, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """out[i] = a[i] op b[i], interpreted."""
    dt = dtype_of(a)
    result = kd.bool_ if op.is_comparison else dt
    k = elementwise({"a": dt, "b": dt}, result, Binary(op, at("a", dt), at("b", dt), result))
    out = np.zeros(a.shape, result.to_numpy())
    interpret(k, {"a": a, "b": b, "out": out})
    return out


def run_unary(op: UnaryOp, x: np.ndarray) -> np.ndarray:
    dt = dtype_of(x)
    out = np.zeros(x.shape, x.dtype)
    interpret(elementwise({"x": dt}, dt, Unary(op, at("x", dt), dt)), {"x": x, "out": out})
    return out


def cast_all(values, src: DType, dst: DType) -> np.ndarray:
    x = np.array(values, src.to_numpy())
    out = np.zeros(len(values), dst.to_numpy())
    interpret(elementwise({"x": src}, dst, Cast(at("x", src), dst)), {"x": x, "out": out})
    return out


def bits(a: np.ndarray) -> list[int]:
    """The raw bits of each element (to tell -0.0 from 0.0 and NaNs apart)."""
    return a.view(f"u{a.dtype.itemsize}").tolist()
