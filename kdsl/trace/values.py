"""Symbolic values seen by traced code: operators build typed IR with kdsl's promotion rules.

A `Value` wraps an IR expression. Weak values (Python scalars, shape values, loop
indices) adapt to the dtype of the typed operand they meet, as in NumPy 2 and JAX.
f16/bf16 operands are widened to f32 before any arithmetic.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import operator

import numpy as np

from kdsl import types as T
from kdsl.errors import ArgumentTraceError, TraceError
from kdsl.ir.nodes import (
    Binary,
    BinaryOp,
    Cast,
    Const,
    DimOf,
    Expr,
    Fma,
    LocalVar,
    LoopVar,
    ScalarArg,
    Select,
    Unary,
    UnaryOp,
)
from kdsl.trace import hints
from kdsl.trace.frames import called_function, location
from kdsl.trace.reduction import walk_traced
from kdsl.types import DType


def trace_error(what: str, fix: str) -> TraceError:
    return TraceError(what, loc=location(), fix=fix)


_ARRAY_ATTRIBUTES = frozenset({"shape", "ndim", "size", "strides", "T"})
_COMPLEX = frozenset({"real", "imag", "conj", "conjugate"})


def _also_attribute_error(error: type[TraceError]) -> type[TraceError]:
    """`error` for an attribute a value or an array lacks in a kernel (a scalar's .shape,
    an array's .size): the user's error, told at their line, and still an AttributeError,
    so `hasattr(v, "shape")` is False (code that duck-types). A traceback names it as the
    `error` it is, and it pickles as one."""

    def __reduce__(self: TraceError) -> tuple[object, ...]:
        return error(self.what, kernel=self.kernel, loc=self.loc, fix=self.fix).__reduce__()

    names = {"__module__": error.__module__, "__qualname__": error.__qualname__}
    return type(error.__name__, (error, AttributeError), {**names, "__reduce__": __reduce__})


_NoArrayAttribute = _also_attribute_error(TraceError)  # an array's .size, a value's .shape, .real
_NoArgumentAttribute = _also_attribute_error(ArgumentTraceError)  # a scalar argument's .shape


class NotAValue:
    """A trace-time object that is not a scalar (an array): `as_value` raises its error."""

    def value_error(self) -> TraceError:
        raise NotImplementedError


class Value:
    """A symbolic scalar inside a kernel."""

    __slots__ = ("expr", "weak")
    __array_priority__ = 1000  # let NumPy scalars defer to our reflected operators

    def __init__(self, expr: Expr, weak: bool = False) -> None:
        self.expr = expr
        self.weak = weak

    @property
    def dtype(self) -> DType:
        return self.expr.dtype

    def astype(self, dtype: object) -> Value:
        return cast(self, dtype)

    def __repr__(self) -> str:
        from kdsl.ir.printer import format_expr

        text = format_expr(hints.in_users_names(self.expr))
        return f"<kdsl value {text}: {self.dtype.name}{' (weak)' if self.weak else ''}>"

    def __bool__(self) -> bool:
        callee = called_function()
        if callee is builtins.max or callee is builtins.min:  # they compare with `if`
            name = "max" if callee is builtins.max else "min"
            raise trace_error(
                f"Python's {name}() on a symbolic value: it compares with `if`",
                f"use kd.{name}imum(a, b) for two values, or kd.{name}(x[k], over=k) to reduce "
                "over an index",
            )
        logic = hints.logic_fix()
        if logic is not None:  # `0.0 < x[i] < 1.0`, `a and b`: Python's `and` inside
            raise trace_error(*logic)
        fix = (
            "use kd.where(cond, a, b) for a value, or `with kd.when(cond):` for statements; "
            "use & | ~ to combine conditions"
        )
        scalars = [e.name for e in walk_traced(self.expr) if isinstance(e, ScalarArg)]
        if scalars:  # a flag or a size: Python may branch on it, if it is a constexpr
            fix = (
                f"to branch in Python, mark the parameter kd.constexpr (`{scalars[0]}: "
                f"kd.constexpr` in the signature: one compiled version per value); else {fix}"
            )
        raise trace_error(
            "Python `if`, `while`, `and`, `or` or `not` on a symbolic value: its truth is only "
            "known when the kernel runs",
            fix,
        )

    def __index__(self) -> int:
        callee = called_function()
        if isinstance(callee, type) and issubclass(callee, int | float | np.number):
            index = isinstance(self.expr, LoopVar)  # (kd.indices/kd.grid hand out LoopVars)
            raise trace_error(
                f"{callee.__name__}() of a symbolic value: its number is only known when the "
                "kernel runs",
                "subscript with the index itself (x[i]), it is an integer already"
                if index and callee is int
                else _conversion_fix(callee, self.expr),
            )
        module = getattr(callee, "__module__", None)
        if module in ("math", "cmath"):  # (NumPy's functions: __array_ufunc__)
            name = getattr(callee, "__name__", "")
            raise trace_error(
                f"{module}.{name}() on a symbolic value: it needs a concrete number",
                _kd_math_fix(name),
            )
        raise trace_error(
            "a symbolic value used where Python needs a concrete int (range(), a list index, …)",
            "use kd.range(n) / kd.grid(n) for loops over symbolic extents, or mark the "
            "parameter kd.constexpr to get a Python int",
        )

    __int__ = __float__ = __index__  # type: ignore[assignment]

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        """NumPy converting a value: `np.float32(x[i])` gets the message `float(x[i])`
        gets, `np.asarray(v)` its own (not NumPy's 'array element with a sequence')."""
        callee = called_function()
        if isinstance(callee, type) and issubclass(callee, np.number):
            self.__index__()
        raise trace_error(
            "a symbolic value given to a NumPy function or used to subscript a NumPy array: "
            "NumPy computes on concrete arrays",
            "compute with the value's operators and kd functions (kd.exp, kd.where, …), "
            "convert dtypes with v.astype(kd.f32); an array the kernel reads is one of its "
            "arguments (pass it as a parameter, not a global)",
        )

    def __array_ufunc__(
        self, ufunc: np.ufunc, method: str, *inputs: object, **kwargs: object
    ) -> Value:
        """A NumPy scalar meeting a value (`np.float32(2) * v`) calls the ufunc of the
        operator: computed as the operator; any other NumPy function is an error."""
        op = _UFUNC_OPERATORS.get(ufunc) if method == "__call__" and not kwargs else None
        if op is not None:
            return op(*(as_value(x) for x in inputs))  # type: ignore[no-any-return]
        name = ufunc.__name__
        callee = called_function()  # np.sum(v) reaches here as np.add.reduce
        if method != "__call__" and getattr(callee, "__module__", "").startswith("numpy"):
            name = getattr(callee, "__name__", name)
        raise trace_error(
            f"NumPy's np.{name} on a symbolic value: NumPy computes on concrete arrays",
            _kd_math_fix(name),
        )

    def __round__(self, ndigits: object = None) -> Value:
        raise trace_error(
            "round() of a symbolic value: Python rounds concrete numbers", hints.round_fix(ndigits)
        )

    def round(self, decimals: object = 0, out: object = None) -> Value:
        """np.round(v) and np.around(v) call this (a NumPy scalar's method)."""
        raise trace_error(
            "np.round() of a symbolic value: NumPy rounds concrete numbers",
            hints.round_fix(decimals),
        )

    def __trunc__(self) -> Value:
        raise trace_error(
            "math.trunc() of a symbolic value: Python truncates concrete numbers",
            "use x.astype(kd.i64) (it truncates toward zero), or kd.floor / kd.ceil",
        )

    def __divmod__(self, other: object) -> Value:
        raise trace_error("divmod() of a symbolic value", "write the two: a // b and a % b")

    __rdivmod__ = __divmod__

    def __len__(self) -> int:
        raise trace_error(
            "len() of a symbolic value: it is a scalar",
            "for an array's length, use x.shape[0] of the array",
        )

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise trace_error(
            "a symbolic value can't be iterated or unpacked",
            "loop with kd.range or kd.grid; kd.indices(n) with one extent returns one index: "
            "write `i = kd.indices(n)`, not `i, = ...`",
        )

    def __getattr__(self, name: str) -> object:
        if name in _ARRAY_ATTRIBUTES:  # an array's, read from a scalar: the wrong argument
            argument = isinstance(self.expr, ScalarArg)
            raise (_NoArgumentAttribute if argument else _NoArrayAttribute)(
                f"{self._what()} has no .{name}: it is a scalar", loc=location(), fix=self._fix()
            )
        if name.startswith("__"):  # (Python's and NumPy's own probes)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        public = sorted(n for n in dir(type(self)) if not n.startswith("_"))
        close = difflib.get_close_matches(name, public, n=2)
        raise _NoArrayAttribute(
            f"a kdsl value has no .{name}"
            + (" (kdsl has no complex numbers)" if name in _COMPLEX else ""),
            loc=location(),
            fix=(f"did you mean {' or '.join(f'.{c}' for c in close)}? " if close else "")
            + "a value has .dtype and .astype(dtype); compute with its operators and kd "
            "functions (kd.abs, kd.where, …)",
        )

    def __format__(self, spec: str) -> str:
        if not spec:
            return str(self)
        raise trace_error(
            f"a symbolic value formatted with '{spec}': while tracing it has no number to "
            "format (the kernel's code runs later, compiled)",
            "print it without a format spec (it shows the expression), or print numbers from "
            "kernel.interpret(...)'s or the kernel's results",
        )

    def __getitem__(self, index: object) -> Value:
        raise self._error()(
            f"{self._what()} is subscripted, but it is a scalar", loc=location(), fix=self._fix()
        )

    def __setitem__(self, index: object, value: object) -> None:
        raise self._error()(
            f"{self._what()} is written, but it is a scalar (a value, not an array)",
            loc=location(),
            fix="for an output, pass an array (np.zeros(1) for one number) and write out[0]",
        )

    def _error(self) -> type[TraceError]:
        """A scalar argument used as an array is the caller's error: ArgumentTraceError."""
        return ArgumentTraceError if isinstance(self.expr, ScalarArg) else TraceError

    def _what(self) -> str:
        e = self.expr
        return f"parameter '{e.name}'" if isinstance(e, ScalarArg) else "a scalar value"

    def _fix(self) -> str:
        e = self.expr
        if isinstance(e, ScalarArg):
            return f"pass an array as '{e.name}' (np.asarray(v) for a 0-d one)"
        return "read shapes and elements of arrays (kernel parameters), not of values"

    def __hash__(self) -> int:
        return id(self)

    # arithmetic
    def __add__(self, o: object) -> Value:
        return binary(BinaryOp.ADD, self, o)

    def __radd__(self, o: object) -> Value:
        return binary(BinaryOp.ADD, o, self)

    def __sub__(self, o: object) -> Value:
        return binary(BinaryOp.SUB, self, o)

    def __rsub__(self, o: object) -> Value:
        return binary(BinaryOp.SUB, o, self)

    def __mul__(self, o: object) -> Value:
        return binary(BinaryOp.MUL, self, o)

    def __rmul__(self, o: object) -> Value:
        return binary(BinaryOp.MUL, o, self)

    def __truediv__(self, o: object) -> Value:
        return binary(BinaryOp.DIV, self, o)

    def __rtruediv__(self, o: object) -> Value:
        return binary(BinaryOp.DIV, o, self)

    def __floordiv__(self, o: object) -> Value:
        return binary(BinaryOp.FLOORDIV, self, o)

    def __rfloordiv__(self, o: object) -> Value:
        return binary(BinaryOp.FLOORDIV, o, self)

    def __mod__(self, o: object) -> Value:
        return binary(BinaryOp.MOD, self, o)

    def __rmod__(self, o: object) -> Value:
        return binary(BinaryOp.MOD, o, self)

    def __pow__(self, o: object) -> Value:
        return power(self, o)

    def __rpow__(self, o: object) -> Value:
        return power(o, self)

    def __and__(self, o: object) -> Value:
        return binary(BinaryOp.AND, self, o)

    def __rand__(self, o: object) -> Value:
        return binary(BinaryOp.AND, o, self)

    def __or__(self, o: object) -> Value:
        return binary(BinaryOp.OR, self, o)

    def __ror__(self, o: object) -> Value:
        return binary(BinaryOp.OR, o, self)

    def __xor__(self, o: object) -> Value:
        return binary(BinaryOp.XOR, self, o)

    def __rxor__(self, o: object) -> Value:
        return binary(BinaryOp.XOR, o, self)

    def __lshift__(self, o: object) -> Value:
        return binary(BinaryOp.SHL, self, o)

    def __rlshift__(self, o: object) -> Value:
        return binary(BinaryOp.SHL, o, self)

    def __rshift__(self, o: object) -> Value:
        return binary(BinaryOp.SHR, self, o)

    def __rrshift__(self, o: object) -> Value:
        return binary(BinaryOp.SHR, o, self)

    def __lt__(self, o: object) -> Value:
        return binary(BinaryOp.LT, self, o)

    def __le__(self, o: object) -> Value:
        return binary(BinaryOp.LE, self, o)

    def __gt__(self, o: object) -> Value:
        return binary(BinaryOp.GT, self, o)

    def __ge__(self, o: object) -> Value:
        return binary(BinaryOp.GE, self, o)

    def __eq__(self, o: object) -> Value:  # type: ignore[override]
        return binary(BinaryOp.EQ, self, o)

    def __ne__(self, o: object) -> Value:  # type: ignore[override]
        return binary(BinaryOp.NE, self, o)

    def __neg__(self) -> Value:
        return unary(UnaryOp.NEG, self)

    def __pos__(self) -> Value:
        return self

    def __invert__(self) -> Value:
        return unary(UnaryOp.INVERT, self)

    def __abs__(self) -> Value:
        return unary(UnaryOp.ABS, self)


# kd.* functions for the math functions of Python and NumPy of the same meaning
_KD_MATH = {
    **{
        n: f"kd.{n}"
        for n in ("exp", "exp2", "log", "log2", "sqrt", "tanh", "erf", "sin", "cos")
        + ("floor", "ceil", "abs")
    },
    **{"fabs": "kd.abs", "absolute": "kd.abs", "pow": "x ** y", "power": "x ** y"},
    **{"rint": "kd.round", "round": "kd.round", "around": "kd.round"},
    **{"maximum": "kd.maximum", "fmax": "kd.maximum", "minimum": "kd.minimum"},
    **{"fmin": "kd.minimum", "where": "kd.where", "fma": "kd.fma"},
    **{n: f"kd.{n}(x[k], over=k)" for n in ("sum", "prod", "max", "min", "argmax", "argmin")},
    **{"amax": "kd.max(x[k], over=k)", "amin": "kd.min(x[k], over=k)"},
    **{"mean": "kd.sum(x[k], over=k) / n", "tan": "kd.sin(x) / kd.cos(x)"},
    **{
        n: f"a table of np.{n} values computed outside, passed as an array (kdsl has no "
        f"kd.{n}); or kd.sin, kd.exp, kd.log, … where they serve"
        for n in ("arcsin", "arccos", "arctan")
    },
}

_UFUNC_OPERATORS = {
    np.add: operator.add,
    np.subtract: operator.sub,
    np.multiply: operator.mul,
    np.true_divide: operator.truediv,
    np.floor_divide: operator.floordiv,
    np.remainder: operator.mod,
    np.power: operator.pow,
    np.bitwise_and: operator.and_,
    np.bitwise_or: operator.or_,
    np.bitwise_xor: operator.xor,
    np.left_shift: operator.lshift,
    np.right_shift: operator.rshift,
    np.less: operator.lt,
    np.less_equal: operator.le,
    np.greater: operator.gt,
    np.greater_equal: operator.ge,
    np.equal: operator.eq,
    np.not_equal: operator.ne,
}


def _conversion_fix(target: type, expr: Expr) -> str:
    """`np.float32(x[i])` → x[i].astype(kd.f32); `int(v)` → v.astype(kd.i64); `float(v)`
    → v.astype(kd.f32) or kd.f64: the value as the user wrote it in the call."""
    dtype = T.from_numpy(np.dtype(target)) if issubclass(target, np.number) else None
    if dtype is not None:
        dtypes = [dtype]
    else:  # int(), float(), a NumPy type kdsl lacks (np.longdouble)
        dtypes = [T.i64] if issubclass(target, int | np.integer) else [T.f32, T.f64]
    converted = _converted_text(expr)
    if converted is None:
        return "convert the value with " + " or ".join(f".astype(kd.{d.name})" for d in dtypes)
    return "convert with " + " or ".join(f"{converted}.astype(kd.{d.name})" for d in dtypes)


def _converted_text(expr: Expr) -> str | None:
    """The value a conversion call (`np.float32(x[i] + 1)`) converts, as code to call
    .astype on (`(x[i] + 1)`): its text in the user's call, or where the source is not
    at hand (a prompt), the value printed in the user's names; None if neither."""
    loc = location()
    found = loc.expression() if loc is not None else None
    if found is not None and isinstance(found[1], ast.Call) and len(found[1].args) == 1:
        span, arg = found[0], found[1].args[0]
        text = ast.get_source_segment(span, arg) or ast.unparse(arg)
    else:
        text = hints.user_text(expr)
        if text is None:
            return None
        arg = ast.parse(text, mode="eval").body
    atom = isinstance(arg, ast.Name | ast.Subscript | ast.Attribute | ast.Call)
    return text if atom else f"({text})"


def _kd_math_fix(name: str) -> str:
    kd_name = _KD_MATH.get(name)
    if kd_name is None:
        return "use kdsl's math on values: kd.exp, kd.log, kd.sqrt, kd.tanh, kd.abs, …"
    return f"use {kd_name}" + ("(...)" if kd_name.startswith("kd.") and "(" not in kd_name else "")


# ------------------------------------------------------------------------ conversions


def as_value(x: object) -> Value:
    """A Value for `x`: Values pass through, Python and NumPy scalars become weak
    constants (a NumPy scalar of its dtype: it decides only where nothing typed does)."""
    if isinstance(x, Value):
        return x
    # checked first, as np.float64 is a subclass of float
    if isinstance(x, np.generic | np.ndarray) and x.ndim == 0:
        return Value(Const(x.item(), kernel_dtype(x.dtype)), weak=True)
    if isinstance(x, bool):  # weak too: f32 * True is f32, as in NumPy 2
        return Value(Const(x, T.bool_), weak=True)
    if isinstance(x, int):
        return Value(Const(x, T.i64), weak=True)
    if isinstance(x, float):
        return Value(Const(x, T.f64), weak=True)
    if isinstance(x, NotAValue):
        raise x.value_error()
    raise trace_error(
        f"{type(x).__name__} object used as a value inside a kernel",
        "kernels compute on numbers: use a subscripted array element, a scalar or a kd.* value",
    )


def _retype(v: Value, dtype: DType) -> Expr:
    """`v`'s expression as `dtype`, folding constants (a weak value adapting to a typed
    one); an integer constant is checked against the dtype's range even when the dtype
    is its own (a Python int is i64 until it meets a typed operand: 2**63 is not one)."""
    e = v.expr
    if v.dtype == dtype and not (isinstance(e, Const) and dtype.is_int):
        return e
    if isinstance(e, Const):
        value = e.value
        if dtype.is_int:
            if isinstance(value, float):
                raise trace_error(
                    f"the float {value!r} can't become {dtype.name}",
                    "write an integer, or cast the other operand to a float dtype",
                )
            lo, hi = int_range(dtype)
            if not lo <= int(value) <= hi:
                raise trace_error(
                    f"the constant {value!r} does not fit in {dtype.name}",
                    f"use a value in [{lo}, {hi}] or a wider dtype",
                )
            return Const(int(value), dtype)
        if dtype.is_float:
            return Const(float(value), dtype)
        return Const(bool(value), dtype)
    if v.weak and dtype.is_int and e.dtype.is_int and _known_at_entry(e):
        _note_narrowing(e, dtype)
    return Cast(e, dtype)


def _known_at_entry(e: Expr) -> bool:
    """`e` is computed from scalar arguments and shapes (one at least) and constants
    alone: its value is known at the kernel's entry."""
    leaves = [x for x in walk_traced(e) if not isinstance(x, Binary | Unary | Cast)]
    return all(isinstance(x, ScalarArg | DimOf | Const) for x in leaves) and any(
        isinstance(x, ScalarArg | DimOf) for x in leaves
    )


def _note_narrowing(e: Expr, dtype: DType) -> None:
    """A Python int argument or a shape (or an expression of them) took the narrower
    integer dtype of what it met, as a weak scalar does in NumPy; the kernel checks at
    its entry that the value fits, as NumPy 2 does (300 as an int8 would wrap to 44).
    An explicit cast (kd.cast, .astype) wraps, as NumPy's astype does: not noted."""
    from kdsl.trace.context import current  # (the context module imports this one)

    current("trace").narrowed.setdefault((e, dtype), location())


def int_range(d: DType) -> tuple[int, int]:
    if d.is_signed:
        return -(1 << (d.bits - 1)), (1 << (d.bits - 1)) - 1
    return 0, (1 << d.bits) - 1


def widen(v: Value) -> Value:
    """f16/bf16 compute in f32."""
    return Value(Cast(v.expr, T.f32), v.weak) if v.dtype.is_half else v


def _kind_mix_error(a: Value, b: Value) -> TraceError:
    def cast(v: Value, to: DType) -> str:
        return hints.cast_text(v.expr, to.name)

    if a.dtype.is_bool or b.dtype.is_bool:  # a mask meeting numbers: the mask converts
        flag, number = (a, b) if a.dtype.is_bool else (b, a)
        fix = f"convert the bool: {cast(flag, number.dtype)}"
    else:
        fix = f"cast one operand: {cast(b, a.dtype)}, or {cast(a, b.dtype)}"
    for local, other in ((a, b), (b, a)):
        if isinstance(local.expr, LocalVar):  # acc = kd.local(0) gathering floats
            fix = (
                f"declare the local in the dtype it gathers (kd.local(0.0), or "
                f"kd.local(0, kd.{other.dtype.name})); or {fix}"
            )
            break
    return trace_error(
        f"mixing {a.dtype.name} and {b.dtype.name} operands needs an explicit cast",
        fix,
    )


def unify(a: Value, b: Value) -> tuple[Expr, Expr, DType, bool]:
    """Bring two operands to one dtype: (lhs, rhs, dtype, weak)."""
    a, b = widen(a), widen(b)
    if a.weak and b.weak:  # (a Python bool meeting an int or a float takes its kind)
        d = T.promote(a.dtype, b.dtype) or (
            a.dtype if b.dtype.is_bool else b.dtype if a.dtype.is_bool else T.f64
        )
        return _retype(a, d), _retype(b, d), d, True
    if a.weak or b.weak:
        typed, weak = (b, a) if a.weak else (a, b)
        d = typed.dtype
        if weak.dtype.is_float and not d.is_float:
            d = T.f64
        elif d.is_bool and not weak.dtype.is_bool:
            d = weak.dtype
        lhs, rhs = _retype(a, d), _retype(b, d)
        return lhs, rhs, d, False
    d2 = T.promote(a.dtype, b.dtype)
    if d2 is None:
        raise _kind_mix_error(a, b)
    return _retype(a, d2), _retype(b, d2), d2, False


def _compare_wide(a: Value, b: Value) -> bool:
    """Compare in i64, not in the narrow integer dtype of one operand, when the other is
    a weak integer that may not fit it: a shape, a scalar argument, or a constant out of
    its range (`x[i] < x.shape[0]` with int8 x and 200 elements: 200 as an int8 is -56).
    NumPy 2 compares such values exactly too."""
    if a.weak == b.weak:
        return False
    typed, weak = (b, a) if a.weak else (a, b)
    if not (typed.dtype.is_int and weak.dtype.is_int and typed.dtype.bits < 64):
        return False
    if not isinstance(weak.expr, Const):
        return True
    lo, hi = int_range(typed.dtype)
    return not lo <= int(weak.expr.value) <= hi


_BITWISE = {BinaryOp.AND, BinaryOp.OR, BinaryOp.XOR, BinaryOp.SHL, BinaryOp.SHR}
_ARITH = {BinaryOp.ADD, BinaryOp.SUB, BinaryOp.MUL, BinaryOp.FLOORDIV, BinaryOp.MOD}


def binary(op: BinaryOp, x: object, y: object) -> Value:
    xv, yv = as_value(x), as_value(y)
    if op.is_comparison and _compare_wide(xv, yv):
        a, b, d, weak = _retype(xv, T.i64), _retype(yv, T.i64), T.i64, False
    else:
        a, b, d, weak = unify(xv, yv)
    if op in _BITWISE and d.is_float:
        raise trace_error(
            f"bitwise operator {op.value} on {d.name} values",
            "bitwise operators need integers or bools: cast with .astype(kd.i32) first",
        )
    if op in (BinaryOp.SHL, BinaryOp.SHR) and d.is_bool:
        raise trace_error("shift of bool values", "cast to an integer dtype first")
    if (op in _ARITH or op is BinaryOp.DIV) and d.is_bool:
        raise trace_error(
            f"arithmetic operator {op.value} on bool values",
            "use & | ^ for logic, or cast to a number first: cond.astype(kd.i32)",
        )
    if op is BinaryOp.DIV and not d.is_float:
        d = T.f64
        a, b = _retype(Value(a), d), _retype(Value(b), d)
    result = T.bool_ if op.is_comparison else d
    return Value(Binary(op, a, b, result), weak and not op.is_comparison)


def power(x: object, y: object) -> Value:
    """`x ** y`: repeated multiplication for small constant integer exponents, and for
    the constant exponents np.power treats apart its forms, which give its results at
    every value: x·x for 2, sqrt for 0.5 (-0 → -0 and -inf → NaN, where C's pow gives
    +0 and inf), 1/x for -1, x for 1, 1 for 0 (a NaN's too)."""
    base, exp = as_value(x), as_value(y)
    if isinstance(exp.expr, Const) and not exp.dtype.is_float and exp.weak:
        n = int(exp.expr.value)
        if n == 0:
            base = widen(base)
            return Value(_retype(as_value(1), base.dtype), base.weak)
        if 0 < n <= 8:
            result = base
            for _ in range(n - 1):
                result = binary(BinaryOp.MUL, result, base)
            return result
    a, b, d, weak = unify(base, exp)
    if not d.is_float:
        raise trace_error(
            "integer ** with an exponent that is not a constant in 0..8",
            "cast the base to a float dtype, or use a constant exponent",
        )
    if isinstance(b, Const):
        match float(b.value):
            case 0.0:
                return Value(Const(1.0, d), weak)
            case 1.0:
                return Value(a, weak)
            case 2.0:
                return Value(Binary(BinaryOp.MUL, a, a, d), weak)
            case 0.5:
                return Value(Unary(UnaryOp.SQRT, a, d), weak)
            case -1.0:
                return Value(Binary(BinaryOp.DIV, Const(1.0, d), a, d), weak)
    return Value(Binary(BinaryOp.POW, a, b, d), weak)


def unary(op: UnaryOp, x: object) -> Value:
    v = widen(as_value(x))
    if v.dtype.is_bool and op is not UnaryOp.INVERT:
        raise trace_error(f"{op.value} of a bool value", "cast it to a number first")
    if op is UnaryOp.INVERT and v.dtype.is_float:
        raise trace_error("~ on a float value", "~ is bitwise: use it on integers or bools")
    if op.float_only and not v.dtype.is_float:
        v = Value(_retype(v, T.f64), v.weak)
    return Value(Unary(op, v.expr, v.dtype), v.weak)


def maximum(a: object, b: object) -> Value:
    return binary(BinaryOp.MAX, a, b)


def minimum(a: object, b: object) -> Value:
    return binary(BinaryOp.MIN, a, b)


def fma(a: object, b: object, c: object) -> Value:
    """a * b + c, rounded once."""
    x, y, d, weak = unify(as_value(a), as_value(b))
    prod = Value(Binary(BinaryOp.MUL, x, y, d), weak)  # weak factors take c's dtype
    _, z, d, weak = unify(prod, as_value(c))
    if not d.is_float:
        raise trace_error("kd.fma of integers", "use a * b + c for integers")
    x, y = _retype(Value(x), d), _retype(Value(y), d)
    return Value(Fma(x, y, z, d), weak)


def where(cond: object, a: object, b: object) -> Value:
    c = as_value(cond)
    if c.weak and c.dtype.is_int:  # a Python int as a flag, as NumPy takes it
        c = binary(BinaryOp.NE, c, 0)
    if not c.dtype.is_bool:
        raise trace_error(
            f"kd.where condition is {c.dtype.name}, not bool",
            "compare to get a condition, e.g. kd.where(x != 0, a, b)",
        )
    x, y, d, weak = unify(as_value(a), as_value(b))
    return Value(Select(c.expr, x, y, d), weak)


def cast(x: object, dtype: object) -> Value:
    v = as_value(x)
    d = kernel_dtype(dtype)
    return Value(v.expr if v.dtype == d else Cast(v.expr, d))


def kernel_dtype(dtype: object) -> DType:
    """`dtype` as a kdsl dtype, else a TraceError at the user's line."""
    try:
        return T.as_dtype(dtype)
    except TypeError as err:
        raise trace_error(str(err), "kdsl computes with booleans, integers and floats") from None


def can_store(src: Value, dst: DType) -> bool:
    """NumPy's same_kind casting: bool < integers < floats; weak ints go anywhere numeric."""
    order = {T.Kind.BOOL: 0, T.Kind.INT: 1, T.Kind.UINT: 1, T.Kind.FLOAT: 2}
    return order[src.dtype.kind] <= order[dst.kind]


def to_dtype(v: Value, d: DType) -> Expr:
    """`v` converted for storing into a `d` location (the caller checked can_store)."""
    return _retype(v, d)
