"""Evaluate scalar IR expressions of shapes and scalar parameters in plain Python.

Used where the host needs a value before or after running a kernel: the shapes of
returned arrays and the numbers quoted in a failed check's message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from kdsl.ir.nodes import (
    Binary,
    BinaryOp,
    Cast,
    Const,
    DimOf,
    Expr,
    ScalarArg,
    Select,
    Unary,
    UnaryOp,
)

_BINARY: dict[BinaryOp, Callable[..., bool | int | float]] = {
    BinaryOp.ADD: lambda a, b: a + b,
    BinaryOp.SUB: lambda a, b: a - b,
    BinaryOp.MUL: lambda a, b: a * b,
    BinaryOp.DIV: lambda a, b: a / b,
    BinaryOp.FLOORDIV: lambda a, b: a // b if b else 0,
    BinaryOp.MOD: lambda a, b: a % b if b else 0,
    BinaryOp.POW: lambda a, b: a**b,
    BinaryOp.MAX: max,
    BinaryOp.MIN: min,
    BinaryOp.AND: lambda a, b: a & b,
    BinaryOp.OR: lambda a, b: a | b,
    BinaryOp.XOR: lambda a, b: a ^ b,
    BinaryOp.SHL: lambda a, b: a << b,
    BinaryOp.SHR: lambda a, b: a >> b,
    BinaryOp.LT: lambda a, b: a < b,
    BinaryOp.LE: lambda a, b: a <= b,
    BinaryOp.EQ: lambda a, b: a == b,
    BinaryOp.NE: lambda a, b: a != b,
    BinaryOp.GE: lambda a, b: a >= b,
    BinaryOp.GT: lambda a, b: a > b,
}
_UNARY: dict[UnaryOp, Callable[..., bool | int | float]] = {
    UnaryOp.NEG: lambda a: -a,
    UnaryOp.ABS: abs,
    UnaryOp.INVERT: lambda a: (not a) if isinstance(a, bool) else ~a,
    UnaryOp.FLOOR: math.floor,
    UnaryOp.CEIL: math.ceil,
    UnaryOp.ROUND: round,  # (Python's: halves to even)
    UnaryOp.SQRT: math.sqrt,
}


def evaluate(
    e: Expr, shapes: Mapping[str, Sequence[int]], scalars: Mapping[str, object]
) -> bool | int | float:
    """The value of `e`, an expression over shapes (`DimOf`), scalars and constants."""

    def ev(x: Expr) -> bool | int | float:
        match x:
            case Const(value=v):
                return v
            case DimOf(buffer=b, axis=a):
                return int(shapes[b][a])
            case ScalarArg(name=n):
                return scalars[n]  # type: ignore[return-value]
            case Binary(op=op, lhs=a, rhs=b):
                return _BINARY[op](ev(a), ev(b))
            case Unary(op=op, operand=a) if op in _UNARY:
                return _UNARY[op](ev(a))
            case Select(cond=c, if_true=a, if_false=b):
                return ev(a) if ev(c) else ev(b)
            case Cast(operand=a, dtype=d):
                v = ev(a)
                return bool(v) if d.is_bool else int(v) if d.is_int else float(v)
        raise ValueError(f"cannot evaluate {x!r} on the host")

    return ev(e)


def compile_evaluator(
    exprs: Sequence[Expr],
) -> Callable[[Mapping[str, Sequence[int]], Mapping[str, object]], tuple[bool | int | float, ...]]:
    """`evaluate` for several expressions at once, made into one Python function (for
    the per-call host work of a GPU launch: a few µs instead of a tree walk each)."""
    env: dict[str, object] = {}

    def bind(value: object) -> str:
        name = f"_{len(env)}"
        env[name] = value
        return name

    def src(x: Expr) -> str:
        match x:
            case Const(value=v):
                return bind(v)
            case DimOf(buffer=b, axis=a):
                return f"S[{b!r}][{a}]"
            case ScalarArg(name=n):
                return f"V[{n!r}]"
            case Binary(op=op, lhs=a, rhs=b):
                return f"{bind(_BINARY[op])}({src(a)}, {src(b)})"
            case Unary(op=op, operand=a) if op in _UNARY:
                return f"{bind(_UNARY[op])}({src(a)})"
            case Select(cond=c, if_true=a, if_false=b):
                return f"({src(a)} if {src(c)} else {src(b)})"
            case Cast(operand=a, dtype=d):
                return f"{'bool' if d.is_bool else 'int' if d.is_int else 'float'}({src(a)})"
        raise ValueError(f"cannot evaluate {x!r} on the host")

    body = "".join(f"{src(e)}, " for e in exprs)
    return eval(f"lambda S, V: ({body})", env)  # type: ignore[no-any-return]
