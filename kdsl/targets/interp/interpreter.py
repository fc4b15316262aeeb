"""The reference interpreter: the executable definition of the IR, run with NumPy scalars.

A kernel is translated once into Python source (nested `for` loops over NumPy scalar
arithmetic in each value's dtype) and executed. Semantics, which the compiled targets
reproduce exactly:
- integers wrap; integer `//` and `%` follow Python (floor) and give 0 for a zero
  divisor; float `//` and `%` are NumPy's floor_divide and remainder;
- shifts by an amount outside [0, bits) give 0 (or -1 for `>>` of a negative value);
- float max/min propagate NaN; comparisons are IEEE (`!=` is true on NaN);
- float→int casts truncate and saturate (NaN → 0); anything→bool is `!= 0`;
  f64→bf16 rounds through f32;
- `where` evaluates only the chosen branch; every subscript is bounds-checked
  (BoundsError), so NumPy's negative-index wraparound never happens silently;
- `fma` rounds once (exactly for f64; through f64 for f32).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from fractions import Fraction

import numpy as np

from kdsl import types as T
from kdsl.errors import BoundsError, ShapeError, SourceLoc
from kdsl.ir.checks import describe_failed_check
from kdsl.ir.evaluate import evaluate
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    BufferRole,
    Cast,
    Check,
    CheckKind,
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
    LoopVar,
    ScalarArg,
    Select,
    Stmt,
    Store,
    Unary,
    UnaryOp,
)
from kdsl.ir.visit import walk_expr
from kdsl.types import DType

_BINARY = {
    BinaryOp.ADD: np.add,
    BinaryOp.SUB: np.subtract,
    BinaryOp.MUL: np.multiply,
    BinaryOp.DIV: np.divide,
    BinaryOp.FLOORDIV: np.floor_divide,
    BinaryOp.MOD: np.remainder,
    BinaryOp.POW: np.power,
    BinaryOp.MAX: np.maximum,
    BinaryOp.MIN: np.minimum,
    BinaryOp.AND: np.bitwise_and,
    BinaryOp.OR: np.bitwise_or,
    BinaryOp.XOR: np.bitwise_xor,
    BinaryOp.LT: np.less,
    BinaryOp.LE: np.less_equal,
    BinaryOp.EQ: np.equal,
    BinaryOp.NE: np.not_equal,
    BinaryOp.GE: np.greater_equal,
    BinaryOp.GT: np.greater,
}
_UNARY = {
    UnaryOp.NEG: np.negative,
    UnaryOp.INVERT: np.invert,
    UnaryOp.ABS: np.abs,
    UnaryOp.EXP: np.exp,
    UnaryOp.LOG: np.log,
    UnaryOp.SQRT: np.sqrt,
    UnaryOp.TANH: np.tanh,
    UnaryOp.FLOOR: np.floor,
    UnaryOp.CEIL: np.ceil,
}


def _shift(op: BinaryOp, d: DType):  # type: ignore[no-untyped-def]
    def run(a, s):  # type: ignore[no-untyped-def]
        if 0 <= int(s) < d.bits:
            return np.left_shift(a, s) if op is BinaryOp.SHL else np.right_shift(a, s)
        if op is BinaryOp.SHR and d.is_signed and a < 0:
            return d.to_numpy().type(-1)
        return d.to_numpy().type(0)

    return run


def _unary(op: UnaryOp, d: DType):  # type: ignore[no-untyped-def]
    if op in _UNARY:
        return _UNARY[op]
    one = d.to_numpy().type(1)
    if op is UnaryOp.RSQRT:
        return lambda a: one / np.sqrt(a)
    if op is UnaryOp.SIGMOID:
        return lambda a: one / (one + np.exp(-a))
    if op is UnaryOp.ERF:
        return lambda a: d.to_numpy().type(math.erf(float(a)))
    raise NotImplementedError(op)


def _cast(src: DType, dst: DType):  # type: ignore[no-untyped-def]
    target = dst.to_numpy()
    if dst.is_bool:
        return lambda a: np.bool_(a != 0)
    if src.is_float and dst.is_int:
        info = np.iinfo(target)

        def saturate(a):  # type: ignore[no-untyped-def]
            v = float(a)
            if math.isnan(v):
                return target.type(0)
            return target.type(min(max(math.trunc(v), info.min), info.max))

        return saturate
    if dst == T.bf16 and src == T.f64:
        return lambda a: np.float32(a).astype(target)
    return lambda a: np.asarray(a, src.to_numpy()).astype(target)[()]


def _fma(d: DType):  # type: ignore[no-untyped-def]
    def run(a, b, c):  # type: ignore[no-untyped-def]
        exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
        if any(math.isinf(float(x)) or math.isnan(float(x)) for x in (a, b, c)):
            return a * b + c
        return d.to_numpy().type(float(exact))

    return run


class _Translator:
    """Kernel IR → the source of a Python function, plus the namespace it runs in."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.buffers = {b.name: b for b in kernel.buffers}
        self.names: dict[str, str] = {}
        self.ns: dict[str, object] = {"np": np, "_load": _load, "_store": _store}
        self.lines: list[str] = []

    def name(self, ir_name: str) -> str:
        if ir_name not in self.names:
            self.names[ir_name] = f"v{len(self.names)}"
        return self.names[ir_name]

    def constant(self, value: object) -> str:
        key = f"c{len(self.ns)}"
        self.ns[key] = value
        return key

    def function(self) -> str:
        arrays = [b.name for b in self.kernel.buffers if b.role is BufferRole.PARAM]
        arrays += list(self.kernel.results)
        scalars = [p.name for p in self.kernel.params if not p.is_array]
        params = [self.name(n) for n in arrays + scalars]
        self.lines = [f"def run({', '.join(params)}):"]
        for b in arrays:
            for axis in range(self.buffers[b].ndim):
                self.lines.append(
                    f"    {self.name(b)}_{axis} = np.int64({self.name(b)}.shape[{axis}])"
                )
        self.block(self.kernel.body, 1)
        self.lines.append("    return None")
        return "\n".join(self.lines)

    def block(self, body: tuple[Stmt, ...], depth: int) -> None:
        pad = "    " * depth
        if not body:
            self.lines.append(f"{pad}pass")
        for s in body:
            match s:
                case Store(buffer=b, index=index, value=v):
                    site = self.constant((b, s.loc))
                    self.lines.append(
                        f"{pad}_store({self.name(b)}, ({self.index(index)}), {self.expr(v)}, {site})"
                    )
                case DeclareLocal(name=n, init=v) | Assign(local=n, value=v):
                    self.lines.append(f"{pad}{self.name(n)} = {self.expr(v)}")
                case Allocate(buffer=b):
                    buf = self.buffers[b]
                    shape = ", ".join(f"max(0, int({self.expr(d)}))" for d in buf.shape)
                    dtype = self.constant(buf.dtype.to_numpy())
                    self.lines.append(f"{pad}{self.name(b)} = np.empty(({shape},), {dtype})")
                case Loop(var=var, extent=ext, body=inner):
                    self.lines.append(
                        f"{pad}for {self.name(var)}_ in range(int({self.expr(ext)})):"
                    )
                    self.lines.append(f"{pad}    {self.name(var)} = np.int64({self.name(var)}_)")
                    self.block(inner, depth + 1)
                case If(cond=c, then=then):
                    self.lines.append(f"{pad}if {self.expr(c)}:")
                    self.block(then, depth + 1)
                case Check(cond=c):
                    fail = self.constant(_check_failure(s))
                    env = self.env(c)
                    self.lines.append(f"{pad}if not {self.expr(c)}: {fail}({env})")

    def env(self, e: Expr) -> str:
        """A dict expression of the values a failed check quotes."""
        parts = [
            f"{self.constant(x)}: {self.expr(x)}"
            for x in dict.fromkeys(walk_expr(e))
            if isinstance(x, DimOf | ScalarArg | LoopVar | LocalVar)
        ]
        return "{" + ", ".join(parts) + "}"

    def index(self, index: tuple[Expr, ...]) -> str:
        return "".join(f"int({self.expr(i)}), " for i in index)

    def expr(self, e: Expr) -> str:
        match e:
            case Const(value=v, dtype=d):
                return self.constant(d.to_numpy().type(v))
            case LoopVar(name=n) | LocalVar(name=n):
                return self.name(n)
            case ScalarArg(name=n):
                return self.name(n)
            case DimOf(buffer=b, axis=a):
                buf = self.buffers[b]
                if buf.role is BufferRole.TEMP:
                    return self.expr(buf.shape[a])
                return f"{self.name(b)}_{a}"
            case Load(buffer=b, index=index):
                return f"_load({self.name(b)}, ({self.index(index)}), {self.constant((b, e.loc))})"
            case Binary(op=op, lhs=x, rhs=y):
                fn = _shift(op, x.dtype) if op in (BinaryOp.SHL, BinaryOp.SHR) else _BINARY[op]
                return f"{self.constant(fn)}({self.expr(x)}, {self.expr(y)})"
            case Unary(op=op, operand=x, dtype=d):
                return f"{self.constant(_unary(op, d))}({self.expr(x)})"
            case Cast(operand=x, dtype=d):
                return f"{self.constant(_cast(x.dtype, d))}({self.expr(x)})"
            case Fma(a=x, b=y, c=z, dtype=d):
                return f"{self.constant(_fma(d))}({self.expr(x)}, {self.expr(y)}, {self.expr(z)})"
            case Select(cond=c, if_true=x, if_false=y):
                return f"({self.expr(x)} if {self.expr(c)} else {self.expr(y)})"
        raise TypeError(f"cannot interpret {e!r}")


def _check_failure(check: Check):  # type: ignore[no-untyped-def]
    def fail(values: dict[Expr, object]) -> None:
        cls = ShapeError if check.kind is CheckKind.SHAPE else BoundsError
        fix = "pass arrays whose dimensions agree" if cls is ShapeError else "check the subscript"
        raise cls(describe_failed_check(check, values), loc=check.loc, fix=fix)

    return fail


def _out_of_bounds(
    array: np.ndarray, index: tuple[int, ...], site: tuple[str, SourceLoc | None]
) -> BoundsError:
    name, loc = site
    return BoundsError(
        f"subscript [{', '.join(map(str, index))}] is out of bounds for '{name}' of shape {array.shape}",
        loc=loc,
        fix="check the subscript against the array's shape",
    )


def _load(array: np.ndarray, index: tuple[int, ...], site: tuple[str, SourceLoc | None]) -> object:
    for i, n in zip(index, array.shape):
        if not 0 <= i < n:
            raise _out_of_bounds(array, index, site)
    return array[index]


def _store(
    array: np.ndarray, index: tuple[int, ...], value: object, site: tuple[str, SourceLoc | None]
) -> None:
    for i, n in zip(index, array.shape):
        if not 0 <= i < n:
            raise _out_of_bounds(array, index, site)
    array[index] = value


@functools.lru_cache(maxsize=256)
def _compiled(kernel: Kernel):  # type: ignore[no-untyped-def]
    translator = _Translator(kernel)
    source = translator.function()
    exec(compile(source, f"<kdsl interpreter: {kernel.name}>", "exec"), translator.ns)
    return translator.ns["run"]


def interpret(kernel: Kernel, args: Mapping[str, object]) -> tuple[np.ndarray, ...]:
    """Run `kernel` on `args` (parameter name → array or scalar), in place; return the
    kernel's result arrays."""
    buffers = {b.name: b for b in kernel.buffers}
    scalars = {
        p.name: p.dtype.to_numpy().type(args[p.name]) for p in kernel.params if not p.is_array
    }
    shapes = {p.name: np.shape(args[p.name]) for p in kernel.params if p.is_array}
    results = tuple(
        np.empty(
            tuple(max(0, int(evaluate(d, shapes, scalars))) for d in buffers[r].shape),
            buffers[r].dtype.to_numpy(),
        )
        for r in kernel.results
    )
    arrays = [args[b.name] for b in kernel.buffers if b.role is BufferRole.PARAM]
    with np.errstate(all="ignore"):
        _compiled(kernel)(*arrays, *results, *scalars.values())
    return results
