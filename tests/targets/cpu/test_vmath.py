"""kd.sin, kd.cos, kd.exp2 and kd.log2 on the CPU — vector loops (kdsl's polynomials),
scalar loops (the C library) and the interpreter — against NumPy: random data over
each function's whole range, tails, special values, and the widths of vector code."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kdsl as kd
from kdsl import types as T
from kdsl.ir.nodes import DimOf, Loop, LoopExec, LoopKind, LoopVar, Store, Unary, UnaryOp
from tests.helpers import check_kernel
from tests.targets.cpu.test_vector import assert_same, run_compiled, ulp_error
from tests.targets.interp.build import at, kernel

NUMPY = {"sin": np.sin, "cos": np.cos, "exp2": np.exp2, "log2": np.log2}
EXACT = {  # the arguments where NumPy's result is exact, and so must be ours
    "sin": lambda x: (x == 0) | ~np.isfinite(x),
    "cos": lambda x: (x == 0) | ~np.isfinite(x),
    "exp2": lambda x: (x % 1 == 0) | ~np.isfinite(x),
    "log2": lambda x: (x <= 0) | ~np.isfinite(x) | (np.log2(np.abs(x)) % 1 == 0),
}
TINY = {np.float32: 1e-45, np.float64: 5e-324}  # the smallest denormal
# ulps from the correctly rounded result (sin and cos: r = x - n·π/2 is rounded once more)
ULPS = {"sin": 2, "cos": 2, "exp2": 1, "log2": 1}


def _kernel(name: str, vector: bool) -> kd.KernelFunction:
    fn = getattr(kd, name)

    def apply(x, y):
        i = kd.indices(x.shape[0])
        y[i] = fn(x[i])

    k = kd.kernel(apply, name=f"{name}_{'vector' if vector else 'scalar'}")
    if not vector:
        k.schedule(kd.cpu)(lambda s: None)  # no vectorize: a scalar loop
    return k


KERNELS = {(name, vector): _kernel(name, vector) for name in NUMPY for vector in (True, False)}


def _points(name: str, dtype: type, n: int, rng: np.random.Generator) -> np.ndarray:
    """Every magnitude the function takes (log-uniform over the dtype's exponents, with
    both signs), and dense where its result changes shape."""
    top = 38 if dtype == np.float32 else 307
    wide = np.exp(rng.uniform(-top * 2.3, top * 2.3, n)) * rng.choice([-1, 1], n)
    dense = {
        "sin": rng.uniform(-10, 10, n),
        "cos": rng.uniform(-1e6, 1e6, n),
        "exp2": rng.uniform(-1100, 1100, n) if dtype == np.float64 else rng.uniform(-160, 140, n),
        "log2": rng.uniform(0, 4, n),
    }[name]
    return np.where(rng.random(n) < 0.5, wide, dense).astype(dtype)


def _check(name: str, x: np.ndarray, got: np.ndarray) -> None:
    """Within ULPS of NumPy's function computed in a wider dtype and rounded (nearly
    always the correctly rounded result), within 4 of NumPy's own (its f32 exp2 is 3
    ulp off in places); NaN where they have NaN, the sign of their zeros."""
    wide = np.float64 if x.dtype == np.float32 else np.longdouble
    with np.errstate(all="ignore"):
        rounded = NUMPY[name](x.astype(wide)).astype(x.dtype)
        for want, ulps in ((rounded, ULPS[name]), (NUMPY[name](x), 4)):
            error = ulp_error(got, want)
            i = int(np.argmax(error))
            assert error[i] <= ulps, f"{name}({x[i]!r}) = {got[i]!r}, not {want[i]!r}"
            zero = want == 0
            np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]), name)


@given(
    name=st.sampled_from(sorted(NUMPY)),
    dtype=st.sampled_from([np.float32, np.float64]),
    n=st.sampled_from([1, 17, 1000]),
    vector=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_compiled_functions_agree_with_numpy(name, dtype, n, vector, seed):
    x = _points(name, dtype, n, np.random.default_rng(seed))
    y = np.full_like(x, np.nan)
    KERNELS[name, vector](x, y)
    _check(name, x, y)


@given(
    name=st.sampled_from(sorted(NUMPY)),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_interpreted_functions_agree_with_numpy(name, dtype, seed):
    x = _points(name, dtype, 200, np.random.default_rng(seed))
    y = np.full_like(x, np.nan)
    KERNELS[name, True].interpret(x, y)
    _check(name, x, y)


def test_python_numbers_are_weak_in_math_functions():
    """kd.exp2(3), kd.log2 of a shape and kd.sin of a float argument take the array's
    dtype, as kd.exp does; computed in f64 and rounded once."""

    @kd.kernel
    def scaled(x, s, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * kd.exp2(3) + kd.log2(x.shape[0]) - kd.sin(s)

    x = np.linspace(-1, 1, 40, dtype=np.float32)
    want = x * np.float32(8) + np.float32(np.log2(40)) - np.float32(np.sin(0.25))
    check_kernel(scaled, [x, 0.25, np.empty_like(x)], {2: want}, rtol=1e-6)


def _special(dtype: type) -> np.ndarray:
    info = np.finfo(dtype)
    tiny, lowest = TINY[dtype], float(np.log2(TINY[dtype]))
    values = [0.0, -0.0, np.inf, -np.inf, np.nan, tiny, -tiny, info.tiny, info.max, -info.max]
    values += [1.0, -1.0, 0.5, 2.0, 3.0, np.pi, -np.pi / 2, 1e5, -3e5, 2.0**60, 1e22]
    values += [lowest, lowest - 0.5, lowest - 1, lowest + 0.5, info.maxexp - 0.01, info.maxexp]
    return np.array(values * 2, dtype)  # 44 lanes: two vectors and a tail


@pytest.mark.parametrize("vector", [True, False], ids=["vector", "scalar"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(NUMPY))
def test_special_values_are_numpys(name, dtype, vector):
    """NaN and ±inf in, ±0, denormals, the edges of exp2's range, powers of two; and
    the values that are exact (sin(-0) = -0, log2(2^k) = k, exp2(k) = 2^k) exactly."""
    x = _special(dtype)
    y = np.full_like(x, 7.0)
    KERNELS[name, vector](x, y)
    _check(name, x, y)
    with np.errstate(all="ignore"):
        exact = EXACT[name](x)
        assert_same(y[exact], NUMPY[name](x[exact]), name)


@pytest.mark.parametrize("name", ["sin", "cos"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sin_and_cos_of_floats_near_a_multiple_of_half_pi(dtype, name):
    """Where x - n·π/2 cancels most bits (Cody–Waite's and Payne–Hanek's test), against
    the correctly rounded result; one large lane among small ones takes the branch."""
    rng = np.random.default_rng(3)  # Cody–Waite's range and past it, up to about max/2^10
    n = np.exp(
        np.concatenate(
            [rng.uniform(0, 25, 300), rng.uniform(25, np.log(np.finfo(dtype).max) - 7, 100)]
        )
    )
    near = (n.astype(np.longdouble) * (np.pi / 2)).astype(dtype)
    x = np.concatenate([near, -near, [0.5] * 15 + [near[-1]]]).astype(dtype)
    # the float closest to a multiple of π/2 (for f64: J.-M. Muller's; for f32 searched)
    x[:2] = 6381956970095103 * 2.0**797 if dtype == np.float64 else 7.729178919452902e28
    y = np.empty_like(x)
    KERNELS[name, True](x, y)
    wide = np.longdouble if dtype == np.float64 else np.float64
    assert ulp_error(y, NUMPY[name](x.astype(wide)).astype(dtype)).max() <= ULPS[name]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", [UnaryOp.SIN, UnaryOp.COS, UnaryOp.EXP2, UnaryOp.LOG2])
def test_vector_math_is_the_same_at_every_width(op, dtype):
    """exp2 is a vreduceps and a vscalefps on a zmm, roundeven and ldexp otherwise; the
    others take the same steps at every width: the same bits either way."""
    d = T.f32 if dtype == np.float32 else T.f64
    x = _points(op.value, dtype, 4096, np.random.default_rng(5))
    store = Store("y", (LoopVar("i"),), Unary(op, at("x", d), d))
    k = kernel({"x": (d, 1), "y": (d, 1)}, (Loop("i", DimOf("x", 0), LoopKind.PARALLEL, (store,)),))
    loop = k.body[0]
    assert isinstance(loop, Loop)
    got = [
        run_compiled(
            replace(k, body=(replace(loop, exec=LoopExec.VECTORIZED, width=w),)),
            {"x": x, "y": np.zeros_like(x)},
        )["y"]
        for w in (2, 8, 16, 32)
    ]
    with np.errstate(over="ignore"):  # (assert_same looks for NaN in f32)
        for other in got[1:]:
            assert_same(other, got[0])  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", [UnaryOp.EXP, UnaryOp.EXP2])
def test_exp_of_a_vector_with_a_lane_out_of_the_normal_range(op, dtype):
    """Without AVX-512, a vector whose results are all normal numbers scales by adding
    to their exponent bits, and one with a lane that is not (here a NaN, an inf or a
    denormal result) takes the clamped two-step path: the other lanes' bits are the
    same either way, and the special lane's are the scalar code's."""
    d = T.f32 if dtype == np.float32 else T.f64
    top = (
        {UnaryOp.EXP2: 127.0, UnaryOp.EXP: 88.0}
        if d == T.f32
        else {UnaryOp.EXP2: 1023.0, UnaryOp.EXP: 709.0}
    )
    x = np.random.default_rng(7).uniform(-top[op], top[op], 4096).astype(dtype)
    store = Store("y", (LoopVar("i"),), Unary(op, at("x", d), d))
    k = kernel({"x": (d, 1), "y": (d, 1)}, (Loop("i", DimOf("x", 0), LoopKind.PARALLEL, (store,)),))
    loop = k.body[0]
    assert isinstance(loop, Loop)
    specials = np.array([np.nan, np.inf, -np.inf, -1e4, 1e4, -top[op] * 1.2], dtype)
    mixed = x.copy()
    mixed[::8] = np.resize(specials, mixed[::8].size)  # a lane of every vector
    for w in (8, 16):
        vector = replace(k, body=(replace(loop, exec=LoopExec.VECTORIZED, width=w),))
        normal, special = (
            run_compiled(vector, {"x": a, "y": np.zeros_like(a)})["y"] for a in (x, mixed)
        )
        keep = np.arange(x.size) % 8 != 0
        np.testing.assert_array_equal(special[keep], normal[keep])
        scalar = run_compiled(k, {"x": mixed[::8].copy(), "y": np.zeros_like(mixed[::8])})["y"]
        with np.errstate(over="ignore"):
            assert_same(special[::8], scalar)  # type: ignore[arg-type]
