"""Differential tests: each zoo kernel compiled, interpreted and computed by NumPy agree."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import zoo
from tests.helpers import check_kernel, random_array

SIZES = st.sampled_from([0, 1, 2, 3, 5, 7, 13, 31, 64, 97])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@given(
    n=SIZES,
    dtype=st.sampled_from([np.float32, np.float64]),
    scalar=st.sampled_from([2.5, -3, np.float32(0.5)]),
)
def test_saxpy(n, dtype, scalar):
    rng = np.random.default_rng(n)
    x, y = random_array(rng, (n,), dtype), random_array(rng, (n,), dtype)
    out = np.empty(n, dtype)
    check_kernel(zoo.saxpy, [scalar, x, y, out], {3: zoo.saxpy_ref(scalar, x, y)})


@given(m=SIZES, n=SIZES, k=SIZES)
def test_matmul_shapes(m, n, k):
    rng = np.random.default_rng(m * 10000 + n * 100 + k)
    a, b = random_array(rng, (m, k), np.float32), random_array(rng, (k, n), np.float32)
    check_kernel(zoo.matmul, [a, b, np.empty((m, n), np.float32)], {2: a @ b}, rtol=1e-4, atol=1e-4)


@given(layout=st.sampled_from(["c", "f", "sliced", "negative"]), m=SIZES, n=SIZES)
def test_matmul_strided(layout, m, n):
    rng = np.random.default_rng(m + 7 * n)
    base = random_array(rng, (2 * m + 1, 2 * n + 1), np.float32)
    a = {
        "c": np.ascontiguousarray(base[:m, :n]),
        "f": np.asfortranarray(base[:m, :n]),
        "sliced": base[: 2 * m : 2, : 2 * n : 2],
        "negative": base[m - 1 :: -1, :n] if m else base[:0, :n],
    }[layout]
    b = random_array(rng, (n, 3), np.float32)
    check_kernel(zoo.matmul, [a, b, np.empty((m, 3), np.float32)], {2: a @ b}, rtol=1e-4, atol=1e-4)


@given(m=SIZES, n=SIZES.filter(lambda n: n > 0))
def test_softmax(m, n):
    x = random_array(np.random.default_rng(m + n), (m, n), np.float32) * 4
    check_kernel(zoo.softmax, [x, np.empty_like(x)], {1: zoo.softmax_ref(x)})


@given(m=SIZES, n=SIZES, dtype=st.sampled_from([np.float32, np.float64]))
def test_cumsum_rows(m, n, dtype):
    x = random_array(np.random.default_rng(m + n), (m, n), dtype)
    check_kernel(
        zoo.cumsum_rows, [x, np.empty_like(x)], {1: np.cumsum(x, axis=1)}, rtol=1e-4, atol=1e-5
    )


@given(m=SIZES, n=SIZES.filter(lambda n: n > 0))
def test_rmsnorm(m, n):
    rng = np.random.default_rng(m * n + 1)
    x, w = random_array(rng, (m, n), np.float32), random_array(rng, (n,), np.float32)
    check_kernel(
        zoo.rmsnorm,
        [x, w, np.empty_like(x), 1e-5],
        {2: zoo.rmsnorm_ref(x, w, 1e-5)},
        rtol=1e-4,
        atol=1e-5,
    )


@given(blocks=SIZES)
def test_dequant_q4_0(blocks):
    rng = np.random.default_rng(blocks)
    qs = rng.integers(0, 256, (blocks, 16)).astype(np.uint8)
    d = rng.uniform(-2, 2, blocks).astype(np.float16)
    out = np.empty((blocks, 32), np.float32)
    check_kernel(zoo.dequant_q4_0, [qs, d, out], {2: zoo.dequant_q4_0_ref(qs, d)})


@given(n=SIZES, dtype=st.sampled_from([np.float32, np.float64, np.int32]))
def test_relu_where(n, dtype):
    x = random_array(np.random.default_rng(n), (n,), dtype)
    check_kernel(zoo.relu_where, [x, np.empty_like(x)], {1: np.where(x > 0, x, 0)})


@given(m=SIZES, n=SIZES, dtype=st.sampled_from([np.float32, np.float64, np.int64, np.float16]))
def test_kernel_returning_a_new_array(m, n, dtype):
    x = random_array(np.random.default_rng(m + n), (m, n), dtype)
    result = zoo.scaled_copy(x, 3)
    assert result.dtype == x.dtype and result.shape == x.shape
    check_kernel(zoo.scaled_copy, [x, 3], (x * 3).astype(dtype), rtol=1e-3)


@given(m=SIZES, n=SIZES)
def test_row_sum(m, n):
    x = random_array(np.random.default_rng(m * 131 + n), (m, n), np.float64)
    check_kernel(zoo.row_sum, [x, np.empty(m)], {1: x.sum(axis=1)}, rtol=1e-10, atol=1e-12)


@given(n=SIZES, dtype=st.sampled_from([np.float32, np.float64]))
def test_waves(n, dtype):
    x = random_array(np.random.default_rng(n), (n,), dtype)
    check_kernel(zoo.waves, [x, np.empty_like(x)], {1: zoo.waves_ref(x)})


@given(
    n=SIZES,
    dtype=st.sampled_from([np.float32, np.float64]),
    g=st.sampled_from([2.2, 2.0, -1.0, -0.5, 7.0]),
)
def test_powers(n, dtype, g):
    rng = np.random.default_rng(n)
    x = random_array(rng, (n,), dtype) * 4
    e = np.where(rng.random(n) < 0.5, np.round(x * 3), x * 3).astype(dtype)
    check_kernel(zoo.powers, [x, e, g, np.empty_like(x)], {3: zoo.powers_ref(x, e, g)})


@given(n=SIZES, dtype=st.sampled_from([np.float32, np.float64]))
def test_rounded(n, dtype):
    x = np.round(random_array(np.random.default_rng(n), (n,), dtype) * 40) / 8  # halves
    check_kernel(zoo.rounded, [x, np.empty_like(x)], {1: zoo.rounded_ref(x)}, rtol=0, atol=0)


def test_gelu(rng):
    x = random_array(rng, (1001,), np.float32) * 6
    check_kernel(
        zoo.gelu_tanh, [x, np.empty_like(x)], {1: zoo.gelu_tanh_ref(x)}, rtol=1e-5, atol=1e-6
    )


def test_large_elementwise(rng):
    n = 1_000_003
    x, y = random_array(rng, (n,), np.float32), random_array(rng, (n,), np.float32)
    out = np.empty(n, np.float32)
    zoo.saxpy(2.0, x, y, out)
    np.testing.assert_allclose(out, 2 * x + y, rtol=1e-6)
