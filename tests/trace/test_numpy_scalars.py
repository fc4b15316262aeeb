"""NumPy scalars in kernels — constants and scalar arguments — are numbers like Python's
(docs/language.md, "Python and NumPy scalars"); mixing two typed kernel values of
different kinds still needs a cast, and the error's fix is code that runs."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from tests.helpers import check_kernel, keyed_rng, random_array
from tests.test_errors import line_of, raises

F = np.float32


@kd.kernel
def times_constant(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * np.int32(3) + np.float64(0.5) - np.float32(2) * x[i]


@kd.kernel
def times_scalar(x, s, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * s


@kd.kernel
def flagged(x, flag, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * flag + kd.where(flag, 1.0, 0.0)


def test_numpy_scalar_constants_take_the_arrays_dtype():
    x = random_array(keyed_rng("np constants"), (9,), F)
    check_kernel(times_constant, [x, np.zeros(9, F)], {1: x * 3 + 0.5 - 2 * x})
    text = str(times_constant.ir(x, np.zeros(9, F)))
    assert "x[i] * 3.0 + 0.5 - 2.0 * x[i]" in text  # f32 constants, no casts


@pytest.mark.parametrize("s", [np.int32(3), np.float64(0.1), np.float32(0.5), np.uint8(7)])
def test_numpy_scalar_arguments_are_numbers(s):
    """An np.int32 or np.float64 argument next to a float32 array, as a Python number
    would be (it was refused: 'mixing f32 and i32 operands')."""
    x = random_array(keyed_rng("np args", str(s.dtype)), (13,), F)
    check_kernel(times_scalar, [x, s, np.zeros(13, F)], {2: x * F(s)})
    text = str(times_scalar.ir(x, s, np.zeros(13, F)))
    assert "y[i] = x[i] * " in text and "f64(" not in text  # computed in f32


@pytest.mark.parametrize("flag", [np.True_, np.False_, True, np.bool_(np.float32(2) > 0)])
def test_a_numpy_bool_is_a_flag_like_true(flag):
    x = random_array(keyed_rng("np flag"), (7,), F)
    want = x * F(bool(flag)) + F(bool(flag))
    check_kernel(flagged, [x, flag, np.zeros(7, F)], {2: want})


def test_a_long_double_argument_says_it_is_not_supported():
    err = raises(
        kd.KernelArgumentError,
        lambda: times_scalar(np.ones(3, F), np.longdouble(2), np.ones(3, F)),
        "long double",
        "float(value)",
    )
    assert "call it as" not in str(err)
    times_scalar(np.ones(3, F), float(np.longdouble(2)), np.ones(3, F))  # the fix runs


def test_a_complex_argument_says_to_pass_two_floats():
    raises(
        kd.KernelArgumentError,
        lambda: times_scalar(np.ones(3, F), np.complex64(1j), np.ones(3, F)),
        "complex",
        "value.real and value.imag",
    )


# ------------------------------------------------------------ typed values of two kinds


@kd.kernel
def mixed(x, n, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * n[i]  # mixed


@kd.kernel
def mixed_fixed(x, n, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * n[i].astype(kd.f32)


@kd.kernel
def mixed_sums(x, n, y):
    i = kd.indices(x.shape[0])
    y[i] = (x[i] + 1.0) * (n[i] + 2)


@kd.kernel
def mixed_sums_fixed(x, n, y):
    i = kd.indices(x.shape[0])
    y[i] = (x[i] + 1.0) * (n[i] + 2).astype(kd.f32)


@kd.kernel
def masked(x, y):
    i = kd.indices(x.shape[0])
    y[i] = (x[i] > 0) * x[i]


@kd.kernel
def masked_fixed(x, y):
    i = kd.indices(x.shape[0])
    y[i] = (x[i] > 0.0).astype(kd.f32) * x[i]


@kd.kernel
def shifted(x, n, y):
    for t in kd.range(1, x.shape[0]):
        y[t] = x[t] * n[t]


@kd.kernel
def shifted_fixed(x, n, y):
    for t in kd.range(1, x.shape[0]):
        y[t] = x[t] * n[t].astype(kd.f32)


@pytest.mark.parametrize(
    "kernel, fixed, fix",
    [
        (mixed, mixed_fixed, "n[i].astype(kd.f32)"),
        (mixed_sums, mixed_sums_fixed, "(n[i] + 2).astype(kd.f32)"),
        (masked, masked_fixed, "(x[i] > 0.0).astype(kd.f32)"),
        (shifted, shifted_fixed, "n[t].astype(kd.f32)"),  # t, not the IR's t + 1
    ],
)
def test_mixing_kinds_shows_a_cast_that_runs(kernel, fixed, fix):
    """The fix is Python the user can paste: parenthesized where it casts a sum, the
    bool of a mask converted (not the floats made bools), the user's loop variable; the
    kernel with it pasted runs."""
    rng = keyed_rng("mix", kernel.name)
    x, n = random_array(rng, (11,), F), random_array(rng, (11,), np.int32)
    args = [x, n, np.zeros(11, F)] if kernel is not masked else [x, np.zeros(11, F)]
    raises(kd.TraceError, lambda: kernel(*args), "needs an explicit cast", fix)
    fixed(*args)


@kd.kernel
def power_zero(x, n, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] ** 0 * n[i]  # an f32 1.0 times an int32


@kd.kernel
def power_zero_fixed(x, n, y):
    i = kd.indices(x.shape[0])
    y[i] = kd.cast(1.0, kd.i32) * n[i]


def test_a_typed_constant_is_cast_with_kd_cast():
    """`1.0.astype(...)` would not run: a constant's fix is kd.cast."""
    x, n, y = np.ones(3, F), np.arange(3, dtype=np.int32), np.zeros(3, F)
    raises(kd.TraceError, lambda: power_zero(x, n, y), "kd.cast(1.0, kd.i32)")
    power_zero_fixed(x, n, y)
    np.testing.assert_array_equal(y, n)


def test_mixing_kinds_reports_the_users_line():
    err = raises(kd.TraceError, lambda: mixed(np.ones(2, F), np.ones(2, np.int32), np.ones(2, F)))
    assert err.loc.line == line_of(mixed, "mixed")
