"""The default schedule's fusion of loops of rows (`fuse_rows`, kdsl/schedule/default_fuse.py):
DESIGN §1's four-statement softmax becomes one loop of rows with its temporaries shrunk,
against NumPy at sizes 0, 1, primes and past a vector; and what it leaves apart."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.ir.nodes import BufferRole
from tests.helpers import random_array


def steps(kernel, *args) -> list[str]:
    return str(kernel.schedule_of(*args)).splitlines()[1:]


@kd.kernel
def softmax(x):
    i, j = kd.indices(x.shape[0], x.shape[1])
    m = kd.empty(x.shape[0], x.dtype)
    m[i] = kd.max(x[i, j], over=j)
    e = kd.empty(x.shape, x.dtype)
    e[i, j] = kd.exp(x[i, j] - m[i])
    s = kd.empty(x.shape[0], x.dtype)
    s[i] = kd.sum(e[i, j], over=j)
    y = kd.empty(x.shape, x.dtype)
    y[i, j] = e[i, j] / s[i]
    return y


def numpy_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_four_statements_run_as_one_loop_of_rows_with_row_sized_temporaries():
    x = np.ones((4, 40), np.float32)
    assert steps(softmax, x)[:3] == [
        's.fuse("i", "i.1")',
        's.fuse("i", "i.2")',
        's.fuse("i", "i.3")',
    ]
    assert 's.parallelize("i")' in steps(softmax, x)
    lowered = softmax.lowered(x).kernel
    sizes = {b.name: b.shape for b in lowered.buffers if b.role is BufferRole.TEMP}
    assert len(sizes["e"]) == 1, sizes  # (a row: its exponentials, not the whole matrix)
    assert all(name not in sizes or len(sizes[name]) <= 1 for name in "ms"), sizes


@settings(deadline=None, max_examples=20)
@given(
    rows=st.sampled_from([0, 1, 3, 17]),
    cols=st.sampled_from([1, 2, 15, 16, 17, 1031]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_the_fused_softmax_matches_numpy(rows, cols, dtype):
    x = random_array(np.random.default_rng(rows * 10000 + cols), (rows, cols), dtype) * 8
    np.testing.assert_allclose(softmax(x), numpy_softmax(x), rtol=1e-5, atol=1e-7)


@kd.kernel
def shifted_rows(x, y):
    """The second nest reads the row after the one the first wrote: fused, row i would
    read t[i + 1] before it is written. `fuse` refuses; the nests stay apart."""
    i, j = kd.indices(x.shape[0] - 1, x.shape[1])
    t = kd.empty(x.shape, x.dtype)
    t[i, j] = x[i + 1, j] * 2
    t[x.shape[0] - 1, j] = x[0, j]
    y[i, j] = t[i + 1, j] + kd.sum(t[i, j], over=j)


def test_rows_that_read_another_rows_temporary_stay_apart():
    x = random_array(np.random.default_rng(1), (9, 5), np.float32)
    y = np.full((8, 5), np.nan, np.float32)
    shifted_rows(x, y)
    t = np.concatenate([x[1:] * 2, x[:1]]).astype(np.float64)
    want = t[1:] + t[:-1].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert not any(step.startswith('s.fuse("i"') for step in steps(shifted_rows, x, y))


@kd.kernel
def scaled_product(a, b, c):
    """A contraction's rows (columns with a reduction inside them) keep their register
    tiles: not fused with the scaling that follows."""
    i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
    t = kd.empty(c.shape, c.dtype)
    t[i, j] = kd.sum(a[i, k] * b[k, j], over=k)
    c[i, j] = t[i, j] * 2


@pytest.mark.parametrize("m", [1, 7])
def test_a_contraction_is_not_fused_with_its_rows(m):
    rng = np.random.default_rng(m)
    a, b = random_array(rng, (m, 13), np.float32), random_array(rng, (13, 37), np.float32)
    c = np.full((m, 37), np.nan, np.float32)
    scaled_product(a, b, c)
    np.testing.assert_allclose(c, 2 * (a.astype(np.float64) @ b), rtol=1e-5, atol=1e-5)
    assert not any("fuse" in step for step in steps(scaled_product, a, b, c))
    assert any("tile" in step for step in steps(scaled_product, a, b, c))
