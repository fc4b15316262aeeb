"""The IR's scalar semantics on NumPy scalars: constants, casts, shifts, max/min, fma, libm.

Every value the interpreter computes is a NumPy scalar of its IR dtype (np.float32,
np.int8, ml_dtypes.bfloat16, np.bool_, ...). Operators that NumPy's scalar arithmetic
already implements exactly as the IR defines them (+ - * / // % & | ^ ~ and the
comparisons) are used as Python operators by the translator; this module holds the
rest, each written out so that its semantics do not hang on a NumPy detail.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from kdsl import types as T
from kdsl.ir.nodes import BinaryOp, UnaryOp
from kdsl.types import DType

Scalar = Any  # a NumPy scalar of the value's dtype: its arithmetic is NumPy's
Fn1 = Callable[[Scalar], Scalar]


def numpy_type(d: DType) -> Callable[[object], Scalar]:
    """The NumPy scalar type of dtype `d` (ml_dtypes.bfloat16 for bf16)."""
    return d.to_numpy().type


def wrap(value: int, d: DType) -> Scalar:
    """The Python int `value` modulo 2**bits, as a scalar of integer or bool dtype `d`."""
    if d.is_bool:
        return np.bool_(value != 0)
    value &= (1 << d.bits) - 1
    if d.is_signed and value >> (d.bits - 1):
        value -= 1 << d.bits
    return numpy_type(d)(value)


def constant(value: bool | int | float, d: DType) -> Scalar:
    """A `Const`: ints wrap into `d`; floats are cast from f64 (as the Cast node does)."""
    if isinstance(value, float):
        return cast(T.f64, d)(np.float64(value))
    if d.is_float:
        return cast(T.f64, d)(np.float64(float(value)))
    return wrap(int(value), d)


def argument(value: Any, d: DType) -> Scalar:
    """A scalar kernel argument: passed as f64 (float parameters) or i64 (the others),
    then cast to the parameter's dtype, as the compiled targets receive it."""
    if d.is_float:
        return cast(T.f64, d)(np.float64(float(value)))
    if not isinstance(value, bool | int | np.integer | np.bool_):
        raise TypeError(f"expected an integer, got {value!r}")
    return cast(T.i64, d)(wrap(int(value), T.i64))


# ------------------------------------------------------------------------------- casts


def cast(src: DType, dst: DType) -> Fn1:
    """The Cast node: NumPy's conversion, except as the module docstring of
    kdsl.targets.interp.interpreter says (saturating float->int, !=0 for bool,
    anything->bf16 through f32)."""
    to = numpy_type(dst)
    if src == dst:
        return _identity
    if dst.is_bool:
        zero = numpy_type(src)(0)
        return lambda a: np.bool_(a != zero)
    if dst == T.bf16 and src != T.f32:
        first, second = cast(src, T.f32), cast(T.f32, T.bf16)
        return lambda a: second(first(a))
    if src.is_bool:
        return lambda a: to(int(a))
    if src.is_float and dst.is_int:
        return _saturating(dst)
    if src.is_int and dst.is_int:
        return lambda a: a.astype(to)
    # int -> float and float -> float: NumPy's constructors round to nearest even,
    # once, from the exact value of a NumPy scalar (not through a Python float).
    return to


def _identity(a: Scalar) -> Scalar:
    return a


def _saturating(dst: DType) -> Fn1:
    """float -> int: truncate toward zero; NaN -> 0; beyond the range -> min or max."""
    to = numpy_type(dst)
    info = np.iinfo(dst.to_numpy())
    lo, hi = int(info.min), int(info.max)
    zero, bottom, top = to(0), to(lo), to(hi)

    def run(a: Scalar) -> Scalar:
        v = float(a)
        if v != v:
            return zero
        if v >= hi:  # exact int/float comparisons in Python
            return top
        if v <= lo:
            return bottom
        return to(int(v))

    return run


# ------------------------------------------------------------------------------ shifts


def shift(op: BinaryOp, d: DType) -> Callable[[Scalar, Scalar], Scalar]:
    """`a << s` / `a >> s` for integers of dtype `d` (both operands have it).

    An amount outside [0, bits) gives 0, except `>>` of a negative signed value: -1.
    `>>` is arithmetic for signed dtypes and logical for unsigned ones.
    """
    to, bits = numpy_type(d), d.bits
    zero, minus_one = to(0), (to(-1) if d.is_signed else to(0))

    def shl(a: Scalar, s: Scalar) -> Scalar:
        return a << s if 0 <= int(s) < bits else zero

    def shr(a: Scalar, s: Scalar) -> Scalar:
        if 0 <= int(s) < bits:
            return a >> s
        return minus_one if a < zero else zero

    return shl if op is BinaryOp.SHL else shr


# --------------------------------------------------------------------------- max / min


def float_max(a: Scalar, b: Scalar) -> Scalar:
    """IEEE 754-2019 maximum: NaN if either is NaN; +0.0 is greater than -0.0."""
    if a != a:
        return a
    if b != b:
        return b
    if a == b:
        return b if math.copysign(1.0, a) < 0 else a
    return a if a > b else b


def float_min(a: Scalar, b: Scalar) -> Scalar:
    """IEEE 754-2019 minimum: NaN if either is NaN; -0.0 is less than +0.0."""
    if a != a:
        return a
    if b != b:
        return b
    if a == b:
        return a if math.copysign(1.0, a) < 0 else b
    return a if a < b else b


# --------------------------------------------------------------------------------- fma


def fma(d: DType) -> Callable[[Scalar, Scalar, Scalar], Scalar]:
    """a * b + c rounded once, to nearest even, in float dtype `d`.

    The exact value is computed with Fractions; f64 rounds it directly, narrower dtypes
    round it to f64 by round-to-odd first, which makes the second rounding exact.
    """
    narrow = cast(T.f64, d)

    def run(a: Scalar, b: Scalar, c: Scalar) -> Scalar:
        x, y, z = float(a), float(b), float(c)
        if not (math.isfinite(x) and math.isfinite(y)) or math.isnan(z):
            return a * b + c  # inf/NaN product: exact
        if math.isinf(z):
            return c
        exact = Fraction(x) * Fraction(y) + Fraction(z)
        if exact == 0:
            return a * b + c  # a*b == -c exactly: IEEE's zero sign
        if d == T.f64:
            return np.float64(_to_f64(exact))
        return narrow(np.float64(_to_f64_odd(exact)))

    return run


def _to_f64(exact: Fraction) -> float:
    try:
        return float(exact)  # int / int: correctly rounded, to nearest even
    except OverflowError:
        return math.inf if exact > 0 else -math.inf


def _to_f64_odd(exact: Fraction) -> float:
    """`exact` rounded to f64 by round-to-odd (inexact results get an odd last bit)."""
    r = _to_f64(exact)
    if not math.isfinite(r) or Fraction(r) == exact:
        return r
    (bits,) = struct.unpack("<q", struct.pack("<d", r))
    if bits & 1 == 0:
        r = math.nextafter(r, math.inf if exact > r else -math.inf)
    return r


# ---------------------------------------------------------------------- transcendentals


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _exp2(x: float) -> float:
    try:
        return math.pow(2.0, x)
    except OverflowError:
        return math.inf


def _logarithm(fn: Callable[[float], float]) -> Callable[[float], float]:
    """`fn` with C's values where Python raises: -inf at 0, NaN below."""
    return lambda x: fn(x) if x > 0 or x != x else -math.inf if x == 0 else math.nan


def _periodic(fn: Callable[[float], float]) -> Callable[[float], float]:
    """`fn` with C's NaN at ±inf, where Python raises."""
    return lambda x: fn(x) if math.isfinite(x) else math.nan


_LIBM: dict[UnaryOp, Callable[[float], float]] = {
    UnaryOp.EXP: _exp,
    UnaryOp.EXP2: _exp2,
    UnaryOp.LOG: _logarithm(math.log),
    UnaryOp.LOG2: _logarithm(math.log2),
    UnaryOp.TANH: math.tanh,
    UnaryOp.ERF: math.erf,
    UnaryOp.SIN: _periodic(math.sin),
    UnaryOp.COS: _periodic(math.cos),
}


def libm(op: UnaryOp, d: DType) -> Fn1:
    """exp, exp2, log, log2, tanh, erf, sin or cos in float dtype `d`: the C library's
    double function of the value, rounded once to `d` (nearly always the correctly
    rounded result)."""
    fn, narrow = _LIBM[op], cast(T.f64, d)
    return lambda a: narrow(np.float64(fn(float(a))))


def power(d: DType) -> Callable[[Scalar, Scalar], Scalar]:
    """a ** b in float dtype `d`: the C library's double pow, rounded once to `d`."""
    narrow = cast(T.f64, d)
    return lambda a, b: narrow(np.float64(a) ** np.float64(b))
