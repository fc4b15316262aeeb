"""Symbolic values: kdsl's promotion table, weak Python scalars and operator legality."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from kdsl.ir.nodes import Binary, BinaryOp, Cast, Const, Fma, Load, Select, Store, Unary, UnaryOp
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import walk_expr, walk_stmts


def value_of(fn, x=np.float32, y=np.float32, s=0.5):
    """The Value `fn(x, y, s)` builds while tracing, where x and y are 2-d arrays of the
    given dtypes and s is a scalar argument."""
    seen = []

    @kd.kernel
    def probe(x, y, s):
        seen.append(fn(x, y, s))

    probe.ir(np.zeros((3, 4), x), np.zeros((3, 4), y), s)
    (v,) = seen
    return v


def dtype_of(fn, x=np.float32, y=np.float32, s=0.5):
    return value_of(fn, x, y, s).dtype


def text_of(fn, x=np.float32, y=np.float32, s=0.5):
    return format_expr(value_of(fn, x, y, s).expr)


def trace_error(fn, x=np.float32, y=np.float32, s=0.5):
    with pytest.raises(kd.TraceError) as info:
        value_of(fn, x, y, s)
    return str(info.value)


def add(x, y, s):
    return x[0, 0] + y[0, 0]


# ------------------------------------------------------------------ typed with typed


@pytest.mark.parametrize(
    "a, b, result",
    [
        (np.float32, np.float32, kd.f32),
        (np.float32, np.float64, kd.f64),
        (np.float64, np.float32, kd.f64),
        (np.float16, np.float32, kd.f32),
        (np.float16, np.float64, kd.f64),
        (np.int8, np.int32, kd.i32),
        (np.int8, np.int8, kd.i8),
        (np.uint8, np.int8, kd.i16),
        (np.uint32, np.int32, kd.i64),
        (np.uint16, np.uint64, kd.u64),
        (np.int64, np.int16, kd.i64),
    ],
)
def test_same_kind_operands_promote_like_numpy(a, b, result):
    assert dtype_of(add, a, b) == result


def test_half_plus_half_computes_in_f32():
    v = value_of(add, np.float16, np.float16)
    assert v.dtype == kd.f32
    assert text_of(add, np.float16, np.float16) == "f32(x[0, 0]) + f32(y[0, 0])"


def test_bf16_computes_in_f32():
    pytest.importorskip("ml_dtypes")
    import ml_dtypes

    assert dtype_of(add, ml_dtypes.bfloat16, ml_dtypes.bfloat16) == kd.f32


def test_the_narrower_operand_is_cast_explicitly():
    v = value_of(add, np.float32, np.float64)
    assert isinstance(v.expr, Binary) and v.expr.lhs == Cast(v.expr.lhs.operand, kd.f64)
    assert isinstance(v.expr.lhs.operand, Load) and v.expr.lhs.operand.dtype == kd.f32


@pytest.mark.parametrize(
    "a, b", [(np.float32, np.int32), (np.int64, np.float64), (np.uint64, np.int8)]
)
def test_mixing_kinds_needs_astype(a, b):
    message = trace_error(add, a, b)
    assert "needs an explicit cast" in message and "astype" in message


def test_mixing_bool_and_int_needs_a_cast():
    assert "explicit cast" in trace_error(add, np.bool_, np.int32)


# ------------------------------------------------------------------------ weak scalars


@pytest.mark.parametrize(
    "fn, x, result",
    [
        (lambda x, y, s: x[0, 0] * 2.0, np.float32, kd.f32),
        (lambda x, y, s: 2.0 * x[0, 0], np.float32, kd.f32),
        (lambda x, y, s: x[0, 0] + 1, np.int32, kd.i32),
        (lambda x, y, s: x[0, 0] - 1, np.uint8, kd.u8),
        (lambda x, y, s: x[0, 0] + 1, np.float16, kd.f32),
        (lambda x, y, s: x[0, 0] * 0.5, np.int32, kd.f64),
        (lambda x, y, s: x[0, 0] / 2, np.int32, kd.f64),
        (lambda x, y, s: x[0, 0] / 2, np.float32, kd.f32),
        (lambda x, y, s: x[0, 0] * s, np.float32, kd.f32),  # a Python float argument
        (lambda x, y, s: x[0, 0] / x.shape[1], np.float32, kd.f32),
        (lambda x, y, s: x[0, 0] + x.shape[1], np.int8, kd.i8),
        (lambda x, y, s: x[0, 0] + 1, np.bool_, kd.i64),
        (lambda x, y, s: x[0, 0] * kd.exp2(3), np.float32, kd.f32),  # weak through math
        (lambda x, y, s: x[0, 0] + kd.exp2(s), np.float32, kd.f32),
        (lambda x, y, s: x[0, 0] - kd.log2(x.shape[1]), np.float16, kd.f32),
        (lambda x, y, s: kd.sin(0.5) * x[0, 0], np.float64, kd.f64),
    ],
)
def test_weak_scalars_take_the_typed_operands_dtype(fn, x, result):
    v = value_of(fn, x)
    assert v.dtype == result and not v.weak


def test_rms_style_expression_stays_f32():
    def rms(x, y, s):
        ss = x[0, 0] * x[0, 0]
        return ss / x.shape[1] + s

    assert dtype_of(rms) == kd.f32
    assert text_of(rms) == "x[0, 0] * x[0, 0] / f32(x.shape[1]) + f32(s)"


def test_weak_constants_are_folded_into_the_typed_dtype():
    v = value_of(lambda x, y, s: x[0, 0] * 2, np.float32)
    assert v.expr.rhs == Const(2.0, kd.f32)


def test_weak_with_weak_stays_weak():
    v = value_of(lambda x, y, s: x.shape[0] * x.shape[1] + 1)
    assert v.dtype == kd.i64 and v.weak
    w = value_of(lambda x, y, s: s * x.shape[1])
    assert w.dtype == kd.f64 and w.weak


def test_numpy_scalar_arguments_are_weak_like_python_numbers():
    """A NumPy scalar is a number: it takes the dtype of the typed operand it meets, of
    any kind (NumPy 2 would make np.float64 · f32 an f64, np.int32 · f32 an f64)."""
    assert dtype_of(lambda x, y, s: x[0, 0] * s, np.float64, s=np.float32(0.5)) == kd.f64
    assert dtype_of(lambda x, y, s: x[0, 0] * s, np.float16, s=np.float32(0.5)) == kd.f32
    assert dtype_of(lambda x, y, s: x[0, 0] + s, np.int32, s=np.int64(3)) == kd.i32
    assert dtype_of(lambda x, y, s: x[0, 0] + s, np.int32, s=3) == kd.i32
    assert dtype_of(lambda x, y, s: x[0, 0] * s, np.float32, s=np.float64(0.5)) == kd.f32
    assert dtype_of(lambda x, y, s: x[0, 0] * s, np.float32, s=np.int32(3)) == kd.f32
    assert dtype_of(lambda x, y, s: x[0, 0] * s, np.float32, s=np.True_) == kd.f32
    assert dtype_of(lambda x, y, s: x[0, 0] * s, np.int32, s=np.float32(0.5)) == kd.f64


def test_numpy_scalar_constants_are_weak_like_python_numbers():
    assert dtype_of(lambda x, y, s: x[0, 0] + np.int8(2), np.int32) == kd.i32
    assert dtype_of(lambda x, y, s: x[0, 0] + np.int64(2), np.int32) == kd.i32
    assert dtype_of(lambda x, y, s: x[0, 0] * np.float64(2.0), np.float32) == kd.f32
    assert dtype_of(lambda x, y, s: x[0, 0] * np.int32(3), np.float32) == kd.f32
    assert dtype_of(lambda x, y, s: np.float32(2) * x[0, 0], np.float64) == kd.f64


def test_numpy_scalar_alone_keeps_its_dtype():
    """Where nothing typed decides: two NumPy scalars promote as NumPy's, and
    kd.local(np.float64(0)) declares an f64 local."""
    assert dtype_of(lambda x, y, s: s * np.float32(2), s=np.float32(0.5)) == kd.f32
    assert dtype_of(lambda x, y, s: kd.local(np.float64(0)), np.float32) == kd.f64
    assert dtype_of(lambda x, y, s: kd.local(np.int8(0)), np.float32) == kd.i8


def test_weak_constant_that_does_not_fit_is_an_error():
    assert "300 does not fit in i8" in trace_error(lambda x, y, s: x[0, 0] + 300, np.int8)
    assert "does not fit in u8" in trace_error(lambda x, y, s: x[0, 0] + -1, np.uint8)


# -------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, y, s: x[0, 0] < y[0, 0],
        lambda x, y, s: x[0, 0] <= 1,
        lambda x, y, s: x[0, 0] == y[0, 0],
        lambda x, y, s: x[0, 0] != 0.5,
        lambda x, y, s: x[0, 0] >= y[0, 0],
        lambda x, y, s: 1 > x[0, 0],
        lambda x, y, s: x.shape[0] > x.shape[1],
    ],
)
def test_comparisons_give_bool(fn):
    v = value_of(fn)
    assert v.dtype == kd.bool_ and not v.weak


def test_comparison_operands_are_unified_first():
    assert text_of(lambda x, y, s: x[0, 0] < y[0, 0], np.float16, np.float64) == (
        "f64(f32(x[0, 0])) < y[0, 0]"
    )


def test_conditions_combine_with_bitwise_operators():
    v = value_of(lambda x, y, s: (x[0, 0] < 1) & ~(y[0, 0] > 2) | (x[0, 0] == 0))
    assert v.dtype == kd.bool_


@pytest.mark.parametrize(
    "fn, needle",
    [
        (lambda x, y, s: x[0, 0] & 1, "bitwise operator & on f32"),
        (lambda x, y, s: x[0, 0] | y[0, 0], "bitwise operator | on f32"),
        (lambda x, y, s: x[0, 0] << 1, "bitwise operator << on f32"),
        (lambda x, y, s: ~x[0, 0], "~ on a float value"),
    ],
)
def test_bitwise_on_floats_is_an_error(fn, needle):
    message = trace_error(fn)
    assert needle in message and "integers or bools" in message


def test_bitwise_on_integers():
    assert dtype_of(lambda x, y, s: x[0, 0] & 0xF, np.uint8) == kd.u8
    assert dtype_of(lambda x, y, s: (x[0, 0] >> 4) ^ y[0, 0], np.uint8, np.uint8) == kd.u8
    assert dtype_of(lambda x, y, s: ~x[0, 0], np.int16) == kd.i16


@pytest.mark.parametrize(
    "fn, needle",
    [
        (lambda x, y, s: x[0, 0] + y[0, 0], "arithmetic operator + on bool"),
        (lambda x, y, s: x[0, 0] * y[0, 0], "arithmetic operator * on bool"),
        (lambda x, y, s: x[0, 0] << y[0, 0], "shift of bool"),
        (lambda x, y, s: -x[0, 0], "neg of a bool"),
        (lambda x, y, s: kd.exp(x[0, 0]), "exp of a bool"),
    ],
)
def test_bool_arithmetic_is_an_error(fn, needle):
    assert needle in trace_error(fn, np.bool_, np.bool_)


def test_bool_true_division_is_an_error():
    message = trace_error(lambda x, y, s: x[0, 0] / y[0, 0], np.bool_, np.bool_)
    assert "arithmetic operator / on bool" in message


def test_bool_logic_is_fine():
    assert dtype_of(lambda x, y, s: (x[0, 0] & y[0, 0]) ^ ~x[0, 0], np.bool_, np.bool_) == kd.bool_


def test_integer_true_division_is_f64():
    assert text_of(lambda x, y, s: x[0, 0] / y[0, 0], np.int32, np.int32) == (
        "f64(x[0, 0]) / f64(y[0, 0])"
    )


def test_floor_division_and_modulo_keep_the_dtype():
    assert dtype_of(lambda x, y, s: x[0, 0] // y[0, 0], np.int16, np.int16) == kd.i16
    assert dtype_of(lambda x, y, s: x[0, 0] % 3, np.float32) == kd.f32


# ------------------------------------------------------------------------------ power


def ops_in(v):
    return {e.op for e in walk_expr(v.expr) if isinstance(e, Binary)}


def test_square_is_a_multiplication():
    v = value_of(lambda x, y, s: x[0, 0] ** 2)
    assert ops_in(v) == {BinaryOp.MUL} and format_expr(v.expr) == "x[0, 0] * x[0, 0]"


def test_small_integer_powers_are_multiplications_for_integers_too():
    v = value_of(lambda x, y, s: x[0, 0] ** 3, np.int32)
    assert ops_in(v) == {BinaryOp.MUL} and v.dtype == kd.i32


def test_power_zero_is_one():
    v = value_of(lambda x, y, s: x[0, 0] ** 0, np.float16)
    assert v.expr == Const(1.0, kd.f32)


def test_exponents_numpy_treats_apart_are_its_operations():
    """x ** 0.5 is sqrt, ** 2.0 a product, ** -1 a division, ** 1.0 x, ** 0.0 one: what
    np.power computes for them (its sqrt gives -0 at -0 and NaN at -inf, where C's pow
    gives +0 and inf)."""
    v = value_of(lambda x, y, s: x[0, 0] ** 0.5)
    assert v.expr == Unary(UnaryOp.SQRT, v.expr.operand, kd.f32)
    assert format_expr(value_of(lambda x, y, s: x[0, 0] ** 2.0).expr) == "x[0, 0] * x[0, 0]"
    assert format_expr(value_of(lambda x, y, s: x[0, 0] ** -1).expr) == "1.0 / x[0, 0]"
    assert format_expr(value_of(lambda x, y, s: x[0, 0] ** -1.0).expr) == "1.0 / x[0, 0]"
    assert format_expr(value_of(lambda x, y, s: x[0, 0] ** 1.0).expr) == "x[0, 0]"
    assert value_of(lambda x, y, s: x[0, 0] ** 0.0, np.float64).expr == Const(1.0, kd.f64)
    assert value_of(lambda x, y, s: x[0, 0] ** np.float32(0.5)).expr.op is UnaryOp.SQRT


def test_other_exponents_are_pow_on_floats():
    assert value_of(lambda x, y, s: x[0, 0] ** -2).expr.op is BinaryOp.POW
    assert value_of(lambda x, y, s: x[0, 0] ** 9).expr.op is BinaryOp.POW
    assert value_of(lambda x, y, s: x[0, 0] ** 2.2).expr.op is BinaryOp.POW
    assert value_of(lambda x, y, s: x[0, 0] ** s).expr.op is BinaryOp.POW


def test_integer_power_with_symbolic_exponent_is_an_error():
    message = trace_error(lambda x, y, s: 2 ** x[0, 0], np.int32)
    assert "integer **" in message and "cast the base to a float" in message


# ------------------------------------------------------------------- math functions


@pytest.mark.parametrize(
    "x, result",
    [(np.float32, kd.f32), (np.float64, kd.f64), (np.float16, kd.f32), (np.int32, kd.f64)],
)
def test_float_functions_widen_halves_and_convert_integers(x, result):
    functions = (kd.exp, kd.exp2, kd.log, kd.log2, kd.sqrt, kd.rsqrt, kd.tanh, kd.sigmoid)
    for fn in (*functions, kd.erf, kd.sin, kd.cos, kd.floor):
        assert dtype_of(lambda x, y, s, fn=fn: fn(x[0, 0]), x) == result


def test_abs_and_negation_keep_integer_dtypes():
    assert dtype_of(lambda x, y, s: kd.abs(x[0, 0]), np.int8) == kd.i8
    assert dtype_of(lambda x, y, s: abs(x[0, 0]), np.int8) == kd.i8
    assert dtype_of(lambda x, y, s: -x[0, 0], np.uint16) == kd.u16


def test_maximum_and_minimum_promote():
    assert dtype_of(lambda x, y, s: kd.maximum(x[0, 0], y[0, 0]), np.int8, np.int16) == kd.i16
    assert dtype_of(lambda x, y, s: kd.minimum(x[0, 0], 0), np.float32) == kd.f32


def test_where_unifies_its_branches():
    v = value_of(lambda x, y, s: kd.where(x[0, 0] > 0, x[0, 0], 0))
    assert isinstance(v.expr, Select) and v.dtype == kd.f32
    assert v.expr.if_false == Const(0.0, kd.f32)
    assert (
        dtype_of(lambda x, y, s: kd.where(x[0, 0] > 0, x[0, 0], y[0, 0]), np.float32, np.float64)
        == kd.f64
    )
    assert (
        dtype_of(lambda x, y, s: kd.where(x[0, 0] > 0, x[0, 0], y[0, 0]), np.float16, np.float16)
        == kd.f32
    )


def test_where_of_two_weak_values_stays_weak():
    v = value_of(lambda x, y, s: kd.where(x[0, 0] > 0, 1, 2))
    assert v.weak and v.dtype == kd.i64


def test_where_needs_a_bool_condition():
    assert "kd.where condition is f32" in trace_error(lambda x, y, s: kd.where(x[0, 0], 1, 2))


def test_fma_dtypes():
    v = value_of(lambda x, y, s: kd.fma(x[0, 0], y[0, 0], 1.0))
    assert isinstance(v.expr, Fma) and v.dtype == kd.f32
    assert dtype_of(lambda x, y, s: kd.fma(x[0, 0], y[0, 0], 1.0), np.float16, np.float16) == kd.f32
    assert dtype_of(lambda x, y, s: kd.fma(x[0, 0], 2.0, y[0, 0]), np.float32, np.float64) == kd.f64


def test_fma_of_weak_factors_takes_the_addends_dtype():
    assert dtype_of(lambda x, y, s: kd.fma(2.0, s, x[0, 0])) == kd.f32


def test_fma_of_integers_is_an_error():
    assert "kd.fma of integers" in trace_error(
        lambda x, y, s: kd.fma(x[0, 0], y[0, 0], 1), np.int32, np.int32
    )


def test_cast_and_astype():
    v = value_of(lambda x, y, s: kd.cast(x[0, 0], kd.i8))
    assert v.expr == Cast(v.expr.operand, kd.i8) and not v.weak
    assert dtype_of(lambda x, y, s: x[0, 0].astype(np.float64)) == kd.f64
    assert dtype_of(lambda x, y, s: x[0, 0].astype("f16")) == kd.f16
    assert dtype_of(lambda x, y, s: x[0, 0].astype(kd.u32)) == kd.u32


def test_cast_to_the_same_dtype_adds_no_node():
    v = value_of(lambda x, y, s: kd.cast(x[0, 0], kd.f32))
    assert isinstance(v.expr, Load)


def test_cast_makes_a_weak_value_typed():
    v = value_of(lambda x, y, s: kd.cast(x.shape[0], kd.i32))
    assert v.dtype == kd.i32 and not v.weak
    assert (
        dtype_of(lambda x, y, s: kd.cast(x.shape[0], kd.i32) + y[0, 0], np.float32, np.int64)
        == kd.i64
    )


def test_unknown_dtype_in_astype():
    with pytest.raises(kd.TraceError, match="not a kdsl dtype"):
        value_of(lambda x, y, s: x[0, 0].astype("complex64"))


# ------------------------------------------------------------------------ stores


def stored(kernel, *args):
    traced = kernel.ir(*args).kernel
    return [s for s in walk_stmts(traced.body) if isinstance(s, Store)][-1].value


def test_store_of_f64_into_f32_is_a_cast():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 2

    value = stored(k, np.ones(2, np.float64), np.ones(2, np.float32))
    assert isinstance(value, Cast) and value.dtype == kd.f32


def test_store_of_int_into_float_is_allowed():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] + 1

    assert stored(k, np.ones(2, np.int32), np.ones(2, np.float32)).dtype == kd.f32


def test_store_of_float_into_int_names_the_buffer():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i]

    with pytest.raises(kd.TraceError, match=r"into 'y' \(i16\)"):
        k.ir(np.ones(2, np.float32), np.ones(2, np.int16))


def test_weak_constant_store_is_folded():
    @kd.kernel
    def k(y):
        i = kd.indices(y.shape[0])
        y[i] = 3

    assert stored(k, np.ones(2, np.float16)) == Const(3.0, kd.f16)


def test_values_refuse_python_truth_and_iteration():
    assert "Python `if`" in trace_error(lambda x, y, s: bool(x[0, 0] > 0))
    assert "can't be iterated" in trace_error(lambda x, y, s: list(x[0, 0]))
    assert "concrete int" in trace_error(lambda x, y, s: range(x.shape[0]))
