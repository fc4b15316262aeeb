"""kdsl: a kernel DSL embedded in Python. This module is the public API (DESIGN.md)."""

from kdsl.errors import (
    BoundsError,
    CompileError,
    KdslError,
    KernelArgumentError,
    ScheduleError,
    ShapeError,
    TraceError,
)
from kdsl.kernel import IRView, KernelFunction, Target, cpu, cuda, kernel
from kdsl.trace.api import (
    abs,
    alloc,
    cast,
    ceil,
    constexpr,
    empty,
    erf,
    exp,
    floor,
    fma,
    grid,
    indices,
    inf,
    local,
    log,
    max,
    maximum,
    min,
    minimum,
    prod,
    range,
    rsqrt,
    sigmoid,
    sqrt,
    sum,
    tanh,
    when,
    where,
    zeros,
)
from kdsl.trace.context import Index
from kdsl.types import DType, bf16, bool_, f16, f32, f64, i8, i16, i32, i64, u8, u16, u32, u64

__version__ = "0.1.0"

__all__ = [
    "BoundsError", "CompileError", "DType", "Index", "IRView", "KdslError", "KernelArgumentError",
    "KernelFunction", "ScheduleError", "ShapeError", "Target", "TraceError", "abs", "alloc",
    "bf16", "bool_", "cast", "ceil", "constexpr", "cpu", "cuda", "empty", "erf", "exp", "f16",
    "f32", "f64", "floor", "fma", "grid", "i8", "i16", "i32", "i64", "indices", "inf", "kernel",
    "local", "log", "max", "maximum", "min", "minimum", "prod", "range", "rsqrt", "sigmoid",
    "sqrt", "sum", "tanh", "u8", "u16", "u32", "u64", "when", "where", "zeros",
]
