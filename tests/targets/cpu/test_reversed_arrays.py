"""Arrays whose elements run backwards in memory (x[::-1], m[:, ::-1]): a vector loop
reads each vector whole from its last lane's element and turns its lanes around, and
writes the same way (vector.py, `access`), where a gather and, on AVX2, a store per lane
ran a reversed copy at half the speed of the same copy forwards. Against NumPy on fresh
random data, in masked tails, with nothing read before the array's first element and
nothing written that the kernel does not write."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import kdsl as kd
from tests.helpers import keyed_rng, random_array
from tests.targets.cpu.test_strided_vectors import SIZES, guarded

DTYPES = [np.float32, np.float64, np.int8, np.int32, np.float16]


@kd.kernel
def affine(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * 3 + 1


@kd.kernel
def row_sums(m, out):
    i, j = kd.indices(m.shape[0], m.shape[1])
    out[i] = kd.sum(m[i, j] * (j + 1), over=j)


@kd.kernel
def double_positive(x, y):
    """Writes only the lanes under the condition: the others keep y's values."""
    for i in kd.grid(x.shape[0]):
        with kd.when(x[i] > 0):
            y[i] = x[i] * 2


def _expected_affine(x: np.ndarray) -> np.ndarray:
    """affine of x's values laid out forwards (the contiguous code, checked against NumPy
    here): a reversed view must give the same bits."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    affine(x, y)
    with np.errstate(over="ignore"):
        want = (x.astype(np.float64) * 3 + 1).astype(x.dtype) if x.dtype.kind == "f" else x * 3 + 1
    if x.dtype.kind == "f":  # (x·3 and + 1 may round apart: an ulp of x·3)
        tolerance = 8 * float(np.finfo(x.dtype).eps)
        np.testing.assert_allclose(y, want, rtol=tolerance, atol=tolerance)
    else:
        np.testing.assert_array_equal(y, want.astype(x.dtype))
    return y


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", SIZES)
def test_reversed_input_and_output(n, dtype):
    """x[::-1] read, y[::-1] written: the input's first element sits just after an
    inaccessible page, so a vector that reached before it would crash."""
    rng = keyed_rng("reversed", n, str(dtype))
    x = guarded(random_array(rng, (n,), dtype), at_end=False)
    y = random_array(rng, (n,), dtype)
    affine(x[::-1], y[::-1])
    np.testing.assert_array_equal(y, _expected_affine(x))


@pytest.mark.parametrize("n", SIZES)
def test_reversed_input_forward_output(n):
    rng = keyed_rng("reversed in", n)
    x = guarded(random_array(rng, (n,), np.float32), at_end=False)
    y = random_array(rng, (n,), np.float32)
    affine(x[::-1], y)
    np.testing.assert_array_equal(y, _expected_affine(x[::-1]))


@pytest.mark.parametrize("n", SIZES)
def test_a_reversed_output_touches_only_its_elements(n):
    """Every other element of a buffer, backwards (stride -2: gathers and scatters), and
    a reversed slice inside a larger buffer (stride -1): the elements around it keep
    their values."""
    rng = keyed_rng("reversed out", n)
    x = random_array(rng, (n,), np.float32)
    buffer = random_array(rng, (n + 10,), np.float32)
    before = buffer.copy()
    affine(x, buffer[n + 4 : 4 : -1] if n else buffer[4:4])
    want = before.copy()
    want[5 : n + 5] = _expected_affine(x)[::-1]
    np.testing.assert_array_equal(buffer, want)
    every_other = random_array(rng, (2 * n + 1,), np.float32)
    kept = every_other.copy()
    affine(x, every_other[::-2][:n])
    kept[::-2][:n] = _expected_affine(x)
    np.testing.assert_array_equal(every_other, kept)


@pytest.mark.parametrize("cols", [1, 7, 16, 17, 100])
def test_sums_over_reversed_rows(cols):
    """A reduction whose loads run backwards along each row (m[:, ::-1]), rows in either
    order."""
    rng = keyed_rng("reversed rows", cols)
    m = random_array(rng, (13, cols), np.float32)
    weights = np.arange(1, cols + 1, dtype=np.float64)
    for view in (m[:, ::-1], m[::-1, ::-1], m[::-1]):
        out = np.empty(13, np.float32)
        row_sums(view, out)
        np.testing.assert_allclose(out, view.astype(np.float64) @ weights, rtol=1e-5)


@pytest.mark.parametrize("n", SIZES)
def test_conditional_stores_into_a_reversed_view(n):
    rng = keyed_rng("reversed when", n)
    x = random_array(rng, (n,), np.float32)
    y = random_array(rng, (n,), np.float32)
    want = y.copy()
    want[::-1] = np.where(x > 0, x * 2, y[::-1])
    double_positive(x, y[::-1])
    np.testing.assert_array_equal(y, want)


def test_the_reversed_case_turns_vectors_around():
    """The generated code reverses lanes (a shuffle by w-1 … 0) for the stride of minus
    one element; the forward and other strides keep their own branches."""
    x = random_array(keyed_rng("reversed llvm"), (100,), np.float32)
    text = affine.llvm(x[::-1], np.empty(100, np.float32)[::-1])
    assert "shufflevector" in text and "i32 15, i32 14, i32 13" in text


@kd.kernel
def scaled_rows(m, out):
    i, j = kd.indices(m.shape[0], m.shape[1])
    out[i, j] = m[i, j] * (i + 1) - j


@pytest.mark.parametrize("rows, cols", [(1, 5), (7, 1), (3001, 67), (1000, 301)])
def test_rows_on_all_cores_in_either_order(rows, cols):
    """The parallel loop over rows runs each task's rows last to first where the rows
    descend in memory and their elements ascend, or the other way round (one stream
    through memory): every row is still computed once, into its own place, with the
    same bits as the rows laid out in order (the code of C-ordered arrays)."""
    rng = keyed_rng("rows in order", rows, cols)
    m = random_array(rng, (rows, cols), np.float32)
    for view in (m[::-1], m[:, ::-1], m[::-1, ::-1], m[::-2, ::-1], m[1::2, ::-3]):
        laid_out = np.ascontiguousarray(view)
        want = np.empty(view.shape[0], np.float32)
        row_sums(laid_out, want)
        weights = np.arange(1, view.shape[1] + 1, dtype=np.float64)
        np.testing.assert_allclose(want, laid_out @ weights, rtol=1e-4, atol=1e-3)
        sums = random_array(rng, (view.shape[0] + 3,), np.float32)
        kept = sums.copy()
        row_sums(view, sums[view.shape[0] + 1 : 1 : -1])
        kept[view.shape[0] + 1 : 1 : -1] = want
        np.testing.assert_array_equal(sums, kept)
        out, want = np.empty(view.shape, np.float32), np.empty(view.shape, np.float32)
        scaled_rows(view, out)
        scaled_rows(laid_out, want)
        np.testing.assert_array_equal(out, want)


def test_only_strided_arguments_get_the_run_time_turn():
    """The check is in the code of strided arguments (run-time strides), not of C-ordered
    ones (every stride positive)."""
    m = random_array(keyed_rng("mirrored"), (3001, 67), np.float32)
    out = np.empty(3001, np.float32)
    assert ".mirrored" in row_sums.llvm(m[::-1], out, optimized=False)
    assert ".mirrored" not in row_sums.llvm(m, out, optimized=False)


@kd.kernel
def chosen(x, on, y):
    i = kd.indices(x.shape[0])
    y[i] = kd.where(on[i], x[i].astype(kd.f32) * 2, -1.0)


@pytest.mark.parametrize("n", SIZES)
def test_reversed_bf16_and_bool_arrays(n):
    """Elements narrower than their vectors' lanes in registers (bf16 widened, bools
    as bytes) turn around the same way."""
    rng = keyed_rng("reversed bf16", n)
    x = rng.standard_normal(n).astype(ml_dtypes.bfloat16)
    on = rng.random(n) > 0.5
    y = random_array(rng, (n,), np.float32)
    chosen(x[::-1], on[::-1], y[::-1])
    np.testing.assert_array_equal(y, np.where(on, x.astype(np.float32) * 2, -1.0))
    chosen(x[::-1], on, y)
    np.testing.assert_array_equal(y, np.where(on, x[::-1].astype(np.float32) * 2, -1.0))
