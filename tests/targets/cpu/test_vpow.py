"""x ** y on the CPU — vector loops (vpow.py), scalar loops (the C library) and the
interpreter — against np.power: C99's special values bit for bit, accuracy over wide
ranges, the shortcuts for a uniform exponent, the same bits at every vector width, and
the constant exponents the tracer rewrites as NumPy does."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

import kdsl as kd
from kdsl import types as T
from kdsl.ir.nodes import Binary, BinaryOp, DimOf, Loop, LoopExec, LoopKind, LoopVar, Store
from tests.targets.cpu.test_vector import assert_same, run_compiled, ulp_error
from tests.targets.interp.build import at, kernel

WIDE = {np.float32: np.float64, np.float64: np.longdouble}  # a reference a few bits wider


def _power(vector: bool) -> kd.KernelFunction:
    def power(x, e, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] ** e[i]

    k = kd.kernel(power, name=f"power_{'vector' if vector else 'scalar'}")
    if not vector:
        k.schedule(kd.cpu)(lambda s: None)  # no vectorize: a scalar loop
    return k


KERNELS = {vector: _power(vector) for vector in (True, False)}
RUNS = ["vector", "scalar", "interpreter"]


def _run(how: str, x: np.ndarray, e: np.ndarray) -> np.ndarray:
    y = np.full_like(x, 7.0)
    if how == "interpreter":
        KERNELS[True].interpret(x, e, y)
    else:
        KERNELS[how == "vector"](x, e, y)
    return y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_loops_call_no_library_pow(dtype):
    """A vectorized ** is kdsl's vector code, not a call of the C library per lane (4x
    slower than NumPy for f32)."""
    x = np.ones(100, dtype)
    assert not re.search(r"\bpowf?\b", KERNELS[True].asm(x, x, x))


def _specials(dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of special bases and exponents: zeros, infinities, NaN, ±1, denormals,
    the largest floats, odd and even integers, halves, fractions and huge exponents."""
    info, tiny = np.finfo(dtype), np.finfo(dtype).smallest_subnormal
    bases = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 3.0, -3.0]
    bases += [tiny, -tiny, info.max, -info.max, info.tiny, 1.0000001, 0.9999999]
    exponents = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 0.5]
    exponents += [-0.5, 2.5, -2.5, 0.1, 1e10, -1e10, 1e30, -1e30, 2.0**24 + 2, 127.0, -149.0]
    x, e = np.meshgrid(np.array(bases, dtype), np.array(exponents, dtype))
    return x.ravel(), e.ravel()


@pytest.mark.parametrize("how", RUNS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values_are_numpys(dtype, how):
    """C99's (and np.power's): x^±0 = 1 and 1^y = 1 even for NaN, (-1)^±inf = 1, NaN for
    a negative finite x and a non-integer y, the sign of a negative x (-0, -inf too) for
    an odd integer y, zeros and infinities by |x| ≷ 1 and the sign of y; the rest within
    1 ulp of NumPy's."""
    x, e = _specials(dtype)
    got = _run(how, x, e)
    with np.errstate(all="ignore"):
        want = np.power(x, e)
    exact = ~np.isfinite(want) | (want == 0) | (np.abs(want) == 1)
    exact |= ~np.isfinite(x) | (x == 0) | (np.abs(x) == 1) | ~np.isfinite(e) | (e == 0)
    assert_same(got[exact], want[exact], how)
    error = ulp_error(got, want)
    assert error.max() <= 1, f"{how}: x = {x[error.argmax()]!r}, y = {e[error.argmax()]!r}"


def _points(dtype: type, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bases of every magnitude in [1e-30, 1e30] (a third negative, with integer
    exponents for a fifth), exponents in [-10, 10]; bases near 1 with large exponents,
    and results near the ends of the dtype's range (denormals among them)."""
    x = np.exp(rng.uniform(np.log(1e-30), np.log(1e30), n))
    e = rng.uniform(-10, 10, n)
    near_one = slice(0, n // 4)
    x[near_one] = 1 + rng.uniform(-1e-3, 1e-3, n // 4)
    e[near_one] = rng.uniform(-1e5, 1e5, n // 4)
    edge = slice(n // 4, n // 2)
    top = np.log2(np.finfo(dtype).max)
    e[edge] = rng.uniform(-top - 25, top, n // 4) / np.log2(x[edge])  # 2^-149 .. max
    x[::3] *= -1
    e[::5] = np.round(e[::5])
    return x.astype(dtype), e.astype(dtype)


@pytest.mark.parametrize("how", ["vector", "scalar"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_within_one_ulp_of_the_correctly_rounded_power(dtype, how):
    """f32 through f64 and f64 through double-double logarithms: within 1 ulp of the
    power computed a few bits wider and rounded, and of np.power's."""
    x, e = _points(dtype, 100_000, np.random.default_rng(3))
    got = _run(how, x, e)
    with np.errstate(all="ignore"):
        rounded = np.power(x.astype(WIDE[dtype]), e.astype(WIDE[dtype])).astype(dtype)
        for want in (rounded, np.power(x, e)):
            error = ulp_error(got, want)
            i = int(error.argmax())
            assert error[i] <= 1, f"{how}: {x[i]!r} ** {e[i]!r} = {got[i]!r}, not {want[i]!r}"
            zero = want == 0
            np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("exponent", [2.0, -1.0, 2.2])
def test_a_uniform_exponent(dtype, exponent):
    """Every lane's y 2 or -1: x·x and 1/x, which C's pow rounds alike (a vector loop
    branches to them); other uniform exponents the general way, within 1 ulp."""
    x, _ = _specials(dtype)
    x = np.concatenate([x, _points(dtype, 1000, np.random.default_rng(4))[0]])
    e = np.full_like(x, exponent)
    got = _run("vector", x, e)
    with np.errstate(all="ignore"):
        want = np.power(x, e)
        if exponent != 2.2:
            assert_same(got, x * x if exponent == 2 else dtype(1) / x)
    assert_same(got[np.isnan(want) | ~np.isfinite(x)], want[np.isnan(want) | ~np.isfinite(x)])
    assert ulp_error(got, want).max() <= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_power_is_the_same_at_every_width(dtype):
    """f32 takes its f64 logarithm 8 lanes at a time where the vector is longer, exp2
    its AVX-512 form on a zmm and two steps otherwise: the same bits either way."""
    d = T.f32 if dtype == np.float32 else T.f64
    x, e = _points(dtype, 4096, np.random.default_rng(5))
    body = Binary(BinaryOp.POW, at("x", d), at("e", d), d)
    store = Store("y", (LoopVar("i"),), body)
    k = kernel(
        {"x": (d, 1), "e": (d, 1), "y": (d, 1)},
        (Loop("i", DimOf("x", 0), LoopKind.PARALLEL, (store,)),),
    )
    loop = k.body[0]
    assert isinstance(loop, Loop)
    got = [
        run_compiled(
            replace(k, body=(replace(loop, exec=LoopExec.VECTORIZED, width=w),)),
            {"x": x, "e": e, "y": np.zeros_like(x)},
        )["y"]
        for w in (2, 8, 16, 32)
    ]
    with np.errstate(over="ignore"):
        for other in got[1:]:
            assert_same(other, got[0])  # type: ignore[arg-type]


def _constant_power(exponent: object) -> kd.KernelFunction:
    def power(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] ** exponent

    return kd.kernel(power, name="constant_power")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("exponent", [2.0, 0.5, -1.0, -1, 1.0, 0.0, np.float32(0.5)])
def test_constant_exponents_give_numpys_results(dtype, exponent):
    """The exponents np.power treats apart are the same operations here (x·x, sqrt,
    1/x, x, 1): the same bits at every value, -0 ** 0.5 = -0 and -inf ** 0.5 = NaN
    included (C's pow gives +0 and inf there), compiled and interpreted."""
    x, _ = _specials(dtype)
    x = np.concatenate([x, _points(dtype, 100, np.random.default_rng(6))[0]])
    k = _constant_power(exponent)
    with np.errstate(all="ignore"):
        want = np.power(x, dtype(exponent))
    for run in (k, k.interpret):
        y = np.full_like(x, 7.0)
        run(x, y)
        with np.errstate(over="ignore"):  # (assert_same looks for NaN in f32)
            assert_same(y, want, f"x ** {exponent!r}")
