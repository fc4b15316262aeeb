"""The interpreter's scalar semantics: integer, float and bool operators, casts and fma."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import kdsl as kd
from kdsl.ir.nodes import Binary, BinaryOp, Cast, Fma, Param, ScalarArg, UnaryOp
from kdsl.targets.interp.interpreter import interpret
from kdsl.types import from_numpy
from tests.targets.interp.build import (
    at,
    bits,
    c,
    cast_all,
    elementwise,
    run_binary,
    run_unary,
)

# ------------------------------------------------------------------------------ integers


def test_integer_floor_division_and_modulo_follow_python():
    a = np.array([7, -7, 7, -7, 0], np.int32)
    b = np.array([2, 2, -2, -2, 3], np.int32)
    np.testing.assert_array_equal(run_binary(BinaryOp.FLOORDIV, a, b), [3, -4, -4, 3, 0])
    np.testing.assert_array_equal(run_binary(BinaryOp.MOD, a, b), [1, 1, -1, -1, 0])


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint32, np.uint64])
def test_integer_division_by_zero_is_zero(dtype):
    a = np.array([5, 0, 100], dtype)
    zero = np.zeros(3, dtype)
    np.testing.assert_array_equal(run_binary(BinaryOp.FLOORDIV, a, zero), [0, 0, 0])
    np.testing.assert_array_equal(run_binary(BinaryOp.MOD, a, zero), [0, 0, 0])


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_int_min_divided_by_minus_one_wraps(dtype):
    lo = np.iinfo(dtype).min
    a, b = np.array([lo], dtype), np.array([-1], dtype)
    assert run_binary(BinaryOp.FLOORDIV, a, b).tolist() == [lo]
    assert run_binary(BinaryOp.MOD, a, b).tolist() == [0]
    assert run_unary(UnaryOp.NEG, a).tolist() == [lo]
    assert run_unary(UnaryOp.ABS, a).tolist() == [lo]


def test_integer_arithmetic_wraps():
    a = np.array([127, -128], np.int8)
    np.testing.assert_array_equal(
        run_binary(BinaryOp.ADD, a, np.array([1, -1], np.int8)), [-128, 127]
    )
    u = np.array([0, 255], np.uint8)
    np.testing.assert_array_equal(
        run_binary(BinaryOp.SUB, u, np.array([1, 0], np.uint8)), [255, 255]
    )
    big = np.array([2**31 - 1], np.int32)
    assert run_binary(BinaryOp.MUL, big, np.array([2], np.int32))[0] == -2
    assert run_unary(UnaryOp.NEG, np.array([3], np.uint8)).tolist() == [253]


def test_integer_ops_match_numpy_on_random_data():
    rng = np.random.default_rng(0)
    a = rng.integers(-(2**31), 2**31, 500).astype(np.int32)
    b = rng.integers(-(2**31), 2**31, 500).astype(np.int32)
    b[::7] = 0
    with np.errstate(all="ignore"):
        for op, want in [
            (BinaryOp.ADD, a + b),
            (BinaryOp.MUL, a * b),
            (BinaryOp.FLOORDIV, np.floor_divide(a, b)),
            (BinaryOp.MOD, np.remainder(a, b)),
            (BinaryOp.XOR, a ^ b),
            (BinaryOp.MAX, np.maximum(a, b)),
            (BinaryOp.LE, a <= b),
        ]:
            np.testing.assert_array_equal(run_binary(op, a, b), want, err_msg=op.name)


@pytest.mark.parametrize(
    "shift, left, right",
    [
        (0, [5, -5], [5, -5]),
        (1, [10, -10], [2, -3]),
        (31, [-(2**31), -(2**31)], [0, -1]),
        (32, [0, 0], [0, -1]),  # shifts by bits or more: 0, or -1 for a negative >>
        (40, [0, 0], [0, -1]),
        (-1, [0, 0], [0, -1]),  # a negative amount is out of range too
    ],
)
def test_shift_semantics_for_signed_integers(shift, left, right):
    a = np.array([5, -5], np.int32)
    s = np.full(2, shift, np.int32)
    np.testing.assert_array_equal(run_binary(BinaryOp.SHL, a, s), left)
    np.testing.assert_array_equal(run_binary(BinaryOp.SHR, a, s), right)


def test_shift_semantics_for_unsigned_integers():
    a = np.array([0x81, 0x81, 0x81, 0x81], np.uint8)
    s = np.array([1, 7, 8, 200], np.uint8)
    np.testing.assert_array_equal(run_binary(BinaryOp.SHL, a, s), [0x02, 0x80, 0, 0])
    np.testing.assert_array_equal(run_binary(BinaryOp.SHR, a, s), [0x40, 0x01, 0, 0])
    top = np.array([2**63, 2**63], np.uint64)
    shifted = run_binary(BinaryOp.SHR, top, np.array([63, 64], np.uint64))
    assert shifted.tolist() == [1, 0]  # logical: no sign to extend


def test_bool_logic():
    t, f = np.array([True, True, False, False]), np.array([True, False, True, False])
    assert run_binary(BinaryOp.AND, t, f).tolist() == [True, False, False, False]
    assert run_binary(BinaryOp.XOR, t, f).tolist() == [False, True, True, False]
    assert run_binary(BinaryOp.MAX, t, f).tolist() == [True, True, True, False]
    assert run_unary(UnaryOp.INVERT, f).tolist() == [False, True, False, True]
    assert run_unary(UnaryOp.INVERT, np.array([0, 5], np.int8)).tolist() == [-1, -6]


# -------------------------------------------------------------------------------- floats


def test_float_ops_match_numpy_on_random_data():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(300).astype(np.float32)
    b = rng.standard_normal(300).astype(np.float32)
    with np.errstate(all="ignore"):
        for op, want in [
            (BinaryOp.ADD, a + b),
            (BinaryOp.SUB, a - b),
            (BinaryOp.MUL, a * b),
            (BinaryOp.DIV, a / b),
        ]:
            got = run_binary(op, a, b)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want, err_msg=op.name)


def test_pow_is_the_double_pow_rounded_once():
    a = np.array([2.0, 0.7, -8.0, 0.0, -10.0], np.float32)
    b = np.array([0.5, 3.3, 1 / 3, -1.0, 41.0], np.float32)
    got = run_binary(BinaryOp.POW, a, b)
    want = [np.float32(math.pow(x, y)) for x, y in zip(a[:2].tolist(), b[:2].tolist())]
    assert got[:2].tolist() == want
    assert np.isnan(got[2]) and got[3] == np.inf and got[4] == -np.inf  # no exceptions


def test_float_floor_division_and_modulo_are_numpys():
    a = np.array([7.0, -7.0, 7.5, 1.0, -0.0, 3.0], np.float64)
    b = np.array([2.0, 2.0, -2.0, 0.0, 5.0, -3.0], np.float64)
    with np.errstate(all="ignore"):
        want_div, want_mod = np.floor_divide(a, b), np.remainder(a, b)
    assert bits(run_binary(BinaryOp.FLOORDIV, a, b)) == bits(want_div)
    assert bits(run_binary(BinaryOp.MOD, a, b)) == bits(want_mod)  # -0.0 included


def test_float_max_and_min_propagate_nan():
    a = np.array([np.nan, 1.0, 2.0], np.float32)
    b = np.array([1.0, np.nan, 3.0], np.float32)
    got = run_binary(BinaryOp.MAX, a, b)
    assert np.isnan(got[0]) and np.isnan(got[1]) and got[2] == 3.0
    assert np.isnan(run_binary(BinaryOp.MIN, a, b)[:2]).all()


def test_float_max_and_min_order_signed_zeros():
    a = np.array([-0.0, 0.0], np.float64)
    b = np.array([0.0, -0.0], np.float64)
    assert bits(run_binary(BinaryOp.MAX, a, b)) == bits(np.array([0.0, 0.0]))
    assert bits(run_binary(BinaryOp.MIN, a, b)) == bits(np.array([-0.0, -0.0]))


def test_comparisons_are_ieee():
    a = np.array([np.nan, 1.0], np.float64)
    np.testing.assert_array_equal(run_binary(BinaryOp.NE, a, a), [True, False])
    np.testing.assert_array_equal(run_binary(BinaryOp.EQ, a, a), [False, True])
    np.testing.assert_array_equal(run_binary(BinaryOp.GE, a, a), [False, True])


def test_float_division_by_zero_gives_inf_without_warnings():
    a = np.array([1.0, -1.0], np.float32)
    with np.errstate(all="raise"):
        got = run_binary(BinaryOp.DIV, a, np.zeros(2, np.float32))
    np.testing.assert_array_equal(got, [np.inf, -np.inf])


def test_unary_functions():
    x = np.array([0.25, 4.0, -1.5, 0.0, np.inf, -np.inf, np.nan], np.float64)
    with np.errstate(all="ignore"):
        for op, want in [
            (UnaryOp.SQRT, np.sqrt(x)),
            (UnaryOp.RSQRT, 1 / np.sqrt(x)),
            (UnaryOp.EXP, [math.exp(v) for v in x[:4]] + [np.inf, 0.0, np.nan]),
            (UnaryOp.EXP2, [2**0.25, 16.0, 2**-1.5, 1.0, np.inf, 0.0, np.nan]),
            (UnaryOp.LOG, [math.log(v) for v in x[:2]] + [np.nan, -np.inf, np.inf, np.nan, np.nan]),
            (UnaryOp.LOG2, [-2.0, 2.0, np.nan, -np.inf, np.inf, np.nan, np.nan]),
            (UnaryOp.SIN, [math.sin(v) for v in x[:4]] + [np.nan] * 3),
            (UnaryOp.COS, [math.cos(v) for v in x[:4]] + [np.nan] * 3),
            (UnaryOp.SIGMOID, [1 / (1 + math.exp(-v)) for v in x[:4]] + [1.0, 0.0, np.nan]),
            (UnaryOp.ERF, [math.erf(v) for v in x]),
            (UnaryOp.TANH, [math.tanh(v) for v in x]),
            (UnaryOp.FLOOR, np.floor(x)),
            (UnaryOp.CEIL, np.ceil(x)),
            (UnaryOp.ROUND, np.round(x)),
            (UnaryOp.ABS, np.abs(x)),
        ]:
            np.testing.assert_array_equal(run_unary(op, x), want, err_msg=op.value)


@pytest.mark.parametrize(
    "op",
    [UnaryOp.EXP, UnaryOp.EXP2, UnaryOp.LOG, UnaryOp.LOG2]
    + [UnaryOp.TANH, UnaryOp.ERF, UnaryOp.SIN, UnaryOp.COS],
)
def test_f32_functions_are_the_double_function_rounded_once(op):
    x = np.abs(np.random.default_rng(2).standard_normal(200).astype(np.float32)) * 3
    got = run_unary(op, x)
    assert got.dtype == np.float32
    fn = (lambda v: 2.0**v) if op is UnaryOp.EXP2 else getattr(math, op.value)
    np.testing.assert_array_equal(got, [np.float32(fn(v)) for v in x.tolist()])


def test_sigmoid_rounds_each_step_in_f32():
    x = np.linspace(-5, 5, 41, dtype=np.float32)
    exp = np.array([math.exp(v) for v in (-x).tolist()], np.float32)
    np.testing.assert_array_equal(run_unary(UnaryOp.SIGMOID, x), 1 / (1 + exp))


# ----------------------------------------------------------------------------------- fma


def fma(a, b, cc, dtype):
    d = from_numpy(np.dtype(dtype))
    value = Fma(at("a", d), at("b", d), at("c", d), d)
    out = np.zeros(len(a), dtype)
    arrays = {n: np.array(v, dtype) for n, v in zip("abc", (a, b, cc))}
    interpret(elementwise({"a": d, "b": d, "c": d}, d, value), {**arrays, "out": out})
    return out


def test_fma_rounds_once():
    eps = 2.0**-30
    assert (np.float64(1 + eps) * np.float64(1 - eps) - 1) == 0.0  # two roundings lose it
    assert fma([1 + eps], [1 - eps], [-1.0], np.float64).tolist() == [-(2.0**-60)]


def test_f32_fma_has_no_double_rounding():
    # exact: 1 + 2**-11 + 2**-24 + 2**-60. Through f64 it becomes the f32 midpoint
    # 1 + 2**-11 + 2**-24, which ties to even (down); rounded once it goes up.
    a = 1 + 2.0**-12
    got = fma([a], [a], [2.0**-60], np.float32)
    assert got.tolist() == [1 + 2.0**-11 + 2.0**-23]


def test_fma_with_infinities_and_zeros():
    inf, nan = np.inf, np.nan
    got = fma([1e308, 1e308, inf, 2.0, -0.0, 1.0], [-10, 10, 0.0, 3.0, 1.0, 1.0],
              [inf, -inf, 1.0, nan, -0.0, -1.0], np.float64)  # fmt: skip
    assert got[0] == inf  # the exact product is finite: inf wins (a*b + c gives NaN)
    assert got[1] == -inf
    assert np.isnan(got[2]) and np.isnan(got[3])
    assert bits(got[4:]) == bits(np.array([-0.0, 0.0]))
    assert fma([1e308, -1e308], [10.0, 10.0], [0.0, 0.0], np.float64).tolist() == [inf, -inf]
    assert fma([1e30], [1e10], [0.0], np.float32).tolist() == [inf]


# --------------------------------------------------------------------------------- casts


@pytest.mark.parametrize(
    "dst, want",
    [
        (kd.i8, [127, -128, 0, 3, -3, 127, 0]),
        (kd.u8, [255, 0, 0, 3, 0, 200, 0]),
        (kd.i32, [2**31 - 1, -(2**31), 0, 3, -3, 200, 0]),
        (kd.u64, [2**64 - 1, 0, 0, 3, 0, 200, 0]),
    ],
)
def test_float_to_int_casts_truncate_and_saturate(dst, want):
    values = [1e20, -1e20, np.nan, 3.7, -3.7, 200.5, -0.9]
    assert cast_all(values, kd.f32, dst).tolist() == want


def test_float_to_int_cast_saturates_infinities():
    assert cast_all([np.inf, -np.inf], kd.f32, kd.i32).tolist() == [2**31 - 1, -(2**31)]
    assert cast_all([np.inf, -np.inf], kd.f64, kd.i64).tolist() == [2**63 - 1, -(2**63)]
    assert cast_all([2.0**63, 2.0**63 - 1024], kd.f64, kd.i64).tolist() == [2**63 - 1, 2**63 - 1024]


def test_cast_to_bool_is_not_equal_to_zero():
    got = cast_all([0.0, -0.0, 2.5, np.nan], kd.f64, kd.bool_).tolist()
    assert got == [False, False, True, True]
    assert cast_all([0, 256], kd.i32, kd.bool_).tolist() == [False, True]


def test_int_to_int_casts_wrap():
    assert cast_all([300, -1, 2**40], kd.i64, kd.u8).tolist() == [44, 255, 0]
    assert cast_all([2**64 - 1], kd.u64, kd.i64).tolist() == [-1]


def test_int_to_float_rounds_once():
    x = 2**55 + 2**31 + 1  # just above an f32 midpoint; through f64 it would tie down
    assert cast_all([x], kd.i64, kd.f32).tolist() == [2.0**55 + 2**32]


def test_float_narrowing_rounds_to_nearest_even():
    assert cast_all([1 + 2**-11 + 2**-40], kd.f64, kd.f16).tolist() == [1 + 2**-10]
    assert cast_all([1 + 2**-11], kd.f64, kd.f16).tolist() == [1.0]  # a tie: to even
    got = cast_all([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20], kd.f32, kd.bf16)
    assert got.astype(np.float64).tolist() == [1.0, 1 + 2**-6, 1 + 2**-7]


def test_f64_to_bf16_goes_through_f32():
    x = 1 + 2**-8 + 2**-30  # f32 rounds it to the bf16 midpoint 1 + 2**-8, then to even
    assert cast_all([x], kd.f64, kd.bf16).astype(np.float64).tolist() == [1.0]


def test_half_widening_is_exact():
    values = np.array([1.5, -(2.0**-14), 65504.0], np.float16)
    assert cast_all(values, kd.f16, kd.f32).tolist() == values.astype(np.float32).tolist()
    b = np.array([3.140625, -0.0], ml_dtypes.bfloat16)
    assert bits(cast_all(b, kd.bf16, kd.f64)) == bits(b.astype(np.float64))


# ----------------------------------------------------------------------- scalar arguments


def test_scalar_arguments_take_the_parameter_dtype():
    value = Binary(BinaryOp.ADD, at("x", kd.i8), Cast(ScalarArg("s", kd.i64), kd.i8), kd.i8)
    k = elementwise({"x": kd.i8}, kd.i8, value, params=(Param("s", kd.i64, None),))
    out = np.zeros(2, np.int8)
    interpret(k, {"x": np.array([100, -100], np.int8), "out": out, "s": 300})
    np.testing.assert_array_equal(out, [-112, -56])  # 300 wraps to 44 in i8


@pytest.mark.parametrize(
    "dtype, value, want",
    [
        (kd.u8, 300, 44),
        (kd.u64, 2**64 - 1, 2**64 - 1),
        (kd.i32, -1, -1),
        (kd.bool_, 2, True),
        (kd.f32, 0.1, float(np.float32(0.1))),
        (kd.f64, 2**60 + 1, float(2**60)),
    ],
)
def test_scalar_argument_conversion(dtype, value, want):
    k = elementwise({}, dtype, ScalarArg("s", dtype), params=(Param("s", dtype, None),))
    out = np.zeros(1, dtype.to_numpy())
    interpret(k, {"out": out, "s": value})
    assert out.tolist() == [want]


def test_constants_wrap_and_round():
    for value, d, want in [(-1, kd.u16, 65535), (0.1, kd.f32, float(np.float32(0.1)))]:
        out = np.zeros(1, d.to_numpy())
        interpret(elementwise({}, d, c(value, d)), {"out": out})
        assert out.tolist() == [want]
