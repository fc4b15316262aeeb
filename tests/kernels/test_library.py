"""The library's public functions against NumPy, on random data over awkward shapes."""

import importlib

import numpy as np
import pytest
from kdsl.kernels import layernorm, matmul, rmsnorm, softmax
from kdsl.kernels.norms import layernorm_reference, rmsnorm_reference
from kdsl.kernels.peak import CHAINS, FLOPS_PER_ELEMENT, copy_probe, fma_probe
from kdsl.kernels.softmax import reference as softmax_reference

from tests.helpers import keyed_rng

ROW_SHAPES = [(1, 1), (3, 17), (37, 101), (2, 5, 7), (0, 4), (64, 1029)]
MATMUL_SHAPES = [(1, 1, 1), (7, 13, 5), (67, 45, 29), (130, 257, 33), (0, 3, 4), (16, 0, 8)]


@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax(shape, dtype):
    x = (keyed_rng(shape).standard_normal(shape) * 4).astype(dtype)
    for axis in range(-len(shape), len(shape)):
        if shape[axis] == 0:  # NumPy's max of nothing raises; kdsl returns the empty array
            assert softmax(x, axis=axis).shape == shape
            continue
        np.testing.assert_allclose(
            softmax(x, axis=axis), softmax_reference(x, axis), rtol=2e-6, atol=1e-7
        )


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_norms(shape):
    rng = keyed_rng("norms", shape)
    x = rng.standard_normal(shape).astype(np.float32) + 3.0  # a mean far from 0
    w, b = rng.standard_normal((2, shape[-1])).astype(np.float32)
    np.testing.assert_allclose(rmsnorm(x, w), rmsnorm_reference(x, w), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        layernorm(x, w, b, eps=1e-3), layernorm_reference(x, w, b, 1e-3), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
@pytest.mark.parametrize("cols", [1, 13, 4096])
def test_narrow_float_rows_keep_their_statistics_in_f32(dtype, cols):
    """f16/bf16 rows are summed and their sums kept in f32: an f16 sum of squares past
    65504 had normalized whole rows to zeros (a 4096-wide row of standard deviation 8)."""
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    rng = keyed_rng("narrow", cols)
    x = (rng.standard_normal((5, cols)) * 8 + 2).astype(dtype)
    w, b = (rng.standard_normal((2, cols)) + 1).astype(dtype)
    wide = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    tol = dict(rtol=2e-2, atol=2e-2)  # one rounding of the output to 8 or 11 bits
    np.testing.assert_allclose(rmsnorm(x, w).astype(np.float64), rmsnorm_reference(*wide[:2]), **tol)
    np.testing.assert_allclose(
        layernorm(x, w, b).astype(np.float64), layernorm_reference(*wide, 1e-5), **tol
    )
    np.testing.assert_allclose(
        softmax(x).astype(np.float64), softmax_reference(wide[0]), rtol=2e-2, atol=1e-6
    )


def test_a_long_f16_softmax_row_sums_past_the_f16_range():
    got = softmax(np.zeros((1, 70_000), np.float16))
    np.testing.assert_allclose(got.astype(np.float64), 1 / 70_000, rtol=1e-2)


def test_out_is_written_and_returned():
    x = keyed_rng("out").standard_normal((9, 31)).astype(np.float32)
    out = np.empty_like(x)
    assert softmax(x, out=out) is out
    np.testing.assert_allclose(out, softmax_reference(x), rtol=2e-6)
    with pytest.raises(ValueError, match="'out' has shape"):
        softmax(x, out=np.empty((9, 30), np.float32))
    columns = np.empty((31, 9), np.float32).T  # not a view of rows: written through a copy
    assert softmax(x, axis=0, out=columns) is columns
    np.testing.assert_allclose(columns, softmax_reference(x, 0), rtol=2e-6)


@pytest.mark.parametrize("name", ["softmax", "rmsnorm", "layernorm"])
def test_rows_descending_in_x_and_out_run_in_memory_order(name, monkeypatch):
    """x[::-1] into out[::-1]: the kernel gets the same rows in memory order (contiguous
    views, whose output may stream past the cache), and out holds the same values."""
    module = importlib.import_module(
        "kdsl.kernels.softmax" if name == "softmax" else "kdsl.kernels.norms"
    )
    attribute = f"{name}_rows"
    real = getattr(module, attribute)
    seen = []

    def spy(rows, *rest):
        seen.append((rows.flags.c_contiguous, rest[-1].flags.c_contiguous))
        return real(rows, *rest)

    monkeypatch.setattr(module, attribute, spy)
    rng = keyed_rng("descending", name)
    x = rng.standard_normal((13, 37)).astype(np.float32)
    w, b = rng.standard_normal(37).astype(np.float32), rng.standard_normal(37).astype(np.float32)
    calls = {
        "softmax": (lambda v, o: softmax(v, out=o), softmax_reference),
        "rmsnorm": (lambda v, o: rmsnorm(v, w, out=o), lambda v: rmsnorm_reference(v, w)),
        "layernorm": (
            lambda v, o: layernorm(v, w, b, out=o),
            lambda v: layernorm_reference(v, w, b),
        ),
    }
    run, reference = calls[name]
    out = np.full_like(x, np.nan)
    down = out[::-1]
    assert run(x[::-1], down) is down
    np.testing.assert_allclose(down, reference(x[::-1]), rtol=2e-5, atol=2e-6)
    assert seen == [(True, True)]


@pytest.mark.parametrize("shape", [(3, 0), (0, 4), (2, 0, 5)])
def test_rows_of_no_elements(shape):
    """Nothing to compute, on every row function (as on a GPU: test_on_device.py)."""
    x, w = np.ones(shape, np.float32), np.ones(shape[-1], np.float32)
    for got in (softmax(x), rmsnorm(x, w), layernorm(x, w, w), layernorm(x, w, w, out=x.copy())):
        assert got.shape == shape


def test_bad_weight_shape_is_a_clear_error():
    x = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match=r"'weight' has shape \(7,\), expected \(8,\)"):
        rmsnorm(x, np.ones(7, np.float32))


@pytest.mark.parametrize("m,k,n", MATMUL_SHAPES)
def test_matmul(m, k, n):
    rng = keyed_rng("matmul", m, k, n)
    a, b = (
        rng.standard_normal((m, k)).astype(np.float32),
        rng.standard_normal((k, n)).astype(np.float32),
    )
    np.testing.assert_allclose(matmul(a, b), a @ b, rtol=1e-4, atol=1e-4)
    bt = np.asfortranarray(b)  # any strides
    np.testing.assert_allclose(matmul(a[:, ::1], bt), a @ b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m, k", [(1, 1), (7, 13), (1021, 300), (5, 0)])
def test_matmul_of_a_column_runs_as_a_matrix_vector_product(m, k):
    """b of one column takes matvec's row streams (5x faster than the panels), into a
    strided `out` too."""
    from kdsl.kernels.matvec import matvec_for

    rng = keyed_rng("column", m, k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, 1)).astype(np.float32)
    kernel = matvec_for(k)
    before = kernel.stats()["calls"]
    out = np.full((m, 3), np.nan, np.float32)[:, 1:2]
    assert matmul(a, b, out=out) is out
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    assert kernel.stats()["calls"] == before + (m > 0)


def test_out_may_be_an_input():
    """In place, as NumPy's ufuncs allow: computed apart, then copied into `out` (a
    kernel may not write what it reads elsewhere)."""
    from kdsl.kernels import attention
    from kdsl.kernels.attention import reference as attention_reference
    from kdsl.kernels.matvec import matvec

    rng = keyed_rng("in place")
    x = rng.standard_normal((9, 31)).astype(np.float32)
    w, b = rng.standard_normal((2, 31)).astype(np.float32)
    for f, want in [
        (lambda a: softmax(a, axis=0, out=a), softmax_reference(x, 0)),
        (lambda a: rmsnorm(a, w, out=a), rmsnorm_reference(x, w)),
        (lambda a: layernorm(a, w, b, out=a), layernorm_reference(x, w, b, 1e-5)),
    ]:
        a = x.copy()
        assert f(a) is a
        np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-5)
    s = rng.standard_normal((33, 33)).astype(np.float32)
    want = s.astype(np.float64) @ s
    assert matmul(s, s, out=s) is s
    np.testing.assert_allclose(s, want, rtol=1e-4, atol=1e-4)
    q, k = rng.standard_normal((2, 1, 2, 70, 13)).astype(np.float32)
    want = attention_reference(q, k, k)
    attention(q, k, k, out=q)
    np.testing.assert_allclose(q, want, rtol=1e-4, atol=1e-5)
    m, v = rng.standard_normal((40, 40)).astype(np.float32), w[:1].repeat(40)
    want = m.astype(np.float64) @ v
    matvec(m, v, out=v)
    np.testing.assert_allclose(v, want, rtol=1e-4, atol=1e-4)


def test_matmul_shape_mismatch():
    with pytest.raises(ValueError, match="can't multiply"):
        matmul(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32))


def test_peak_probes_compute_what_they_claim():
    x = keyed_rng("probe").random(1000, dtype=np.float32)
    y = np.empty_like(x)
    fma_probe(x, y)
    expected = np.zeros_like(x, dtype=np.float64)
    for k in range(CHAINS):
        v = x.astype(np.float64) + 0.01 * k
        for _ in range(32):
            v = v * 0.999 + 0.001
        expected += v
    np.testing.assert_allclose(y, expected, rtol=1e-5)
    assert FLOPS_PER_ELEMENT == 2 * CHAINS * 32 + CHAINS
    copy_probe(x, y)
    np.testing.assert_array_equal(y, x)


# every activation on one shape, and the one-row and larger shapes without an activation
# and with the costliest (each case compiles two kernels: all twelve pairs took 46 s)
EPILOGUE_CASES = [(act, 19, 31, 23) for act in (None, "relu", "gelu", "silu")]
EPILOGUE_CASES += [(act, *shape) for shape in [(1, 1, 1), (130, 67, 45)] for act in (None, "gelu")]


@pytest.mark.parametrize("activation,m,k,n", EPILOGUE_CASES)
def test_matmul_epilogue(activation, m, k, n):
    from kdsl.kernels.matmul import reference

    rng = keyed_rng("epilogue", activation, m, k, n)
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    bias = rng.standard_normal(n, np.float32)
    for with_bias in (None, bias):
        got = matmul(a, b, bias=with_bias, activation=activation)
        want = reference(a, b, with_bias, activation)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


def test_batched_matmul():
    rng = keyed_rng("batched")
    a = rng.standard_normal((3, 17, 9), np.float32)
    b3, b2 = rng.standard_normal((3, 9, 11), np.float32), rng.standard_normal((9, 11), np.float32)
    np.testing.assert_allclose(matmul(a, b3), a @ b3, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matmul(a, b2), a @ b2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="can't multiply"):
        matmul(a, rng.standard_normal((2, 9, 11), np.float32))


def test_matmul_argument_errors():
    a = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="activation 'tanh' is not one of"):
        matmul(a, a.T, activation="tanh")
    with pytest.raises(ValueError, match=r"'bias' has shape \(3,\), expected \(4,\)"):
        matmul(a, a.T, bias=np.ones(3, np.float32))
