"""kdsl.kernels.quant: GGML's Q8_0/Q4_0 bytes exactly (checked against the gguf package,
ggml's own Python implementation of its reference quantizers), and the fused products
against an exact NumPy model of GGML's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kdsl.kernels import quant

from kdsl.specs import make_arguments
from tests.helpers import asm_loops, run_config

gguf = pytest.importorskip("gguf")
GGML_TYPES = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}
FORMATS = sorted(GGML_TYPES)


def awkward_values(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Random magnitudes from 1e-6 to 1e4, whole numbers (rounding ties), all-zero
    blocks, and blocks whose largest magnitude appears with both signs."""
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 4, (shape[0], 1))
    x = x.astype(np.float32)
    if shape[1] >= 64:
        x[:, 32:64] = np.round(x[:, 32:64] * 4) / 4
        x[0, :32] = 0
        x[-1, :32] = rng.choice([-1.0, 1.0], 32) * 3
    return x


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(1, 32), (3, 96), (37, 256), (64, 4096)])
def test_quantize_writes_ggml_bytes(fmt: str, shape: tuple[int, int]) -> None:
    x = awkward_values(np.random.default_rng(shape[0]), shape)
    expected = gguf.quants.quantize(x, GGML_TYPES[fmt]).tobytes()
    assert quant.quantize(x, fmt).tobytes() == expected
    assert quant.reference_quantize(x, fmt).tobytes() == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_matches_ggml(fmt: str) -> None:
    x = awkward_values(np.random.default_rng(5), (9, 160))
    w = quant.quantize(x, fmt)
    expected = gguf.quants.dequantize(
        np.frombuffer(w.tobytes(), np.uint8).reshape(9, -1), GGML_TYPES[fmt]
    )
    np.testing.assert_array_equal(quant.dequantize(w), expected)
    np.testing.assert_array_equal(quant.reference_dequantize(w), expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_qtensor_is_a_view_of_ggml_bytes(fmt: str) -> None:
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    w = quant.quantize(x, fmt)
    again = quant.QTensor.frombuffer(w.tobytes(), fmt, (4, 64))
    assert again.tobytes() == w.tobytes() and again.nbytes == 4 * 2 * quant.FORMATS[fmt]
    np.testing.assert_array_equal(quant.dequantize(again), quant.dequantize(w))
    with pytest.raises(ValueError, match=f"takes {w.nbytes} bytes"):
        quant.QTensor.frombuffer(w.tobytes()[:-1], fmt, (4, 64))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("activations", ["q8_0", "f32"])
@pytest.mark.parametrize("rows, cols, batch", [(1, 32, 1), (7, 64, 2), (37, 288, 1), (301, 800, 5)])
def test_products_match_ggml_arithmetic(fmt, activations, rows, cols, batch) -> None:
    rng = np.random.default_rng(rows + cols)
    w = quant.quantize(rng.standard_normal((rows, cols)).astype(np.float32), fmt)
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    want = quant.reference_qmatmul(w, x, activations)
    got = quant.qmatmul(w, x, activations=activations)
    assert got.shape == (batch, rows)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    vector = quant.qmatvec(w, x[0], activations=activations)
    np.testing.assert_allclose(vector, want[0], rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.slow(sample=12)
@pytest.mark.parametrize(
    "config",
    [{"rows": 1}, {"rows": 1, "prefetch": 0}, {"rows": 4}, {"rows": 8}],
    ids=str,
)
@pytest.mark.parametrize("rows, batch, cols", [(1, 1, 96), (7, 2, 160), (13, 1, 256), (37, 3, 32)])
def test_every_row_tile_of_the_byte_products(fmt, config, rows, batch, cols) -> None:
    """Each choice of the schedule's `rows` (one row at a time with and without the
    prefetch), on row counts around the tiles and block counts around the groups of
    blocks a vector spans (padded with zero blocks); Q8_0 in either form of its byte
    products (signed_bytes_dot), whichever this CPU takes, with weights of -128."""
    rng = np.random.default_rng(rows * 10 + config["rows"])
    w = quant.quantize(rng.standard_normal((rows, cols)).astype(np.float32), fmt)
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    if fmt == "q8_0":
        w.q[:, :3] = -128  # (a quantizer never writes it; a file may hold it)
    want = quant.reference_qmatmul(w, x, "q8_0")
    activations = quant.quantize_activations(x, fmt)
    kernel = quant.q4_0_dot_q8_0 if fmt == "q4_0" else quant.q8_0_dot_q8_0
    for form in [()] if fmt == "q4_0" else [(True,), (False,)]:  # q8_0: biased or not
        got = rng.standard_normal((batch, rows)).astype(np.float32)
        run_config(kernel, config, w.d, w.q, *activations, got, *form)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("activations", ["q8_0", "f32"])
def test_tuning_examples_are_the_arguments_the_products_get(fmt, activations) -> None:
    """`kdsl autotune` times each product kernel on its declared examples: those are
    made by the same function as this small one, which has the shapes and dtypes of
    what qmatmul passes."""
    w = quant.quantize(np.ones((7, 96), np.float32), fmt)
    if activations == "f32":
        args = (w.scales, w.quants, np.ones((1, 96), np.float32))
    else:
        args = (w.d, w.q, *quant.quantize_activations(np.ones((1, 96), np.float32), fmt))
    (example,) = quant._examples(fmt, activations, [(7, 96)])
    made = make_arguments(example, np.random.default_rng(0)).values()
    want = (*args, np.empty((1, 7), np.float32))
    assert [(a.shape, a.dtype) for a in made] == [(a.shape, a.dtype) for a in want]
    kernel = quant.PRODUCTS[fmt, activations]
    assert kernel.examples and set(example) <= set(kernel.examples[0])  # (and constexprs)


@pytest.mark.parametrize("cols", [quant.LONG_ROW - 32, quant.LONG_ROW])
def test_long_q8_0_rows_take_the_eight_row_kernel(cols: int) -> None:
    """Q8_0 rows of LONG_ROW columns or more run eight at a time, shorter ones one at a
    time: the same products either way."""
    rng = np.random.default_rng(cols)
    w = quant.quantize(rng.standard_normal((13, cols)).astype(np.float32), "q8_0")
    x = rng.standard_normal(cols).astype(np.float32)
    before = quant.q8_0_long_rows.stats()["calls"]
    got = quant.qmatvec(w, x)
    assert quant.q8_0_long_rows.stats()["calls"] == before + (cols >= quant.LONG_ROW)
    want = quant.reference_qmatmul(w, x[None], "q8_0")[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.skipif(
    not dict(__import__("llvmlite.binding").binding.get_host_cpu_features()).get("avx512vnni"),
    reason="the byte products' loop is read as AVX512-VNNI code",
)
@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_the_byte_products_loop_takes_nothing_from_the_stack(fmt: str) -> None:
    """Each core's rows run in a task: the quants' unit stride is a constant there, so
    the loop over blocks addresses them with offsets, not with strides reloaded from the
    stack at each access (a Q8_0 loop had eight such reloads)."""
    w = quant.quantize(np.ones((64, 4096), np.float32), fmt)
    x = np.ones((1, 4096), np.float32)
    kernel = quant.q8_0_long_rows if fmt == "q8_0" else quant.q4_0_dot_q8_0
    args = (w.d, w.q, *quant.quantize_activations(x, fmt), np.empty((1, 64), np.float32))
    loops = [body for body in asm_loops(kernel.asm(*args)) if any("vpdpbusd" in i for i in body)]
    assert loops and all(not [i for i in body if "(%rsp" in i] for body in loops), loops


def test_the_layout_pads_rows_to_whole_groups_of_blocks() -> None:
    """kdsl's layout: scales and quants apart, rows padded to 2 (Q8_0) or 4 (Q4_0)
    blocks with zero scales; GGML's bytes round-trip through it unchanged."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 160)).astype(np.float32)  # 5 blocks a row
    for fmt, padded in (("q8_0", 6), ("q4_0", 8)):
        w = quant.quantize(x, fmt)
        assert w.d.shape == (3, padded) and not w.d[:, 5:].any()
        assert (
            w.q.shape == (3, padded * quant.QUANT_BYTES[fmt])
            and not w.q[:, 5 * quant.QUANT_BYTES[fmt] :].any()
        )
        assert w.nbytes == 3 * 5 * quant.FORMATS[fmt] == len(w.tobytes())
        again = quant.QTensor.frombuffer(w.tobytes(), fmt, (3, 160))
        assert np.array_equal(again.d, w.d) and np.array_equal(again.q, w.q)


@pytest.mark.parametrize("fmt", FORMATS)
def test_activations_are_quantized_in_place(fmt: str) -> None:
    """quantize_activations into `out`: the same buffers every call, holding GGML's Q8_0
    of each x in turn (Q4_0's product reads each block's halves apart), padding zero."""
    rng = np.random.default_rng(11)
    out = quant.Activations(fmt, (3, 160))  # 5 blocks a row, padded to 6 or 8
    for x in (awkward_values(rng, (3, 160)), rng.standard_normal((3, 160)).astype(np.float32)):
        args = quant.quantize_activations(x, fmt, out=out)
        assert args is out.args
        want = quant.reference_quantize(x, "q8_0")
        assert np.array_equal(args[0][:, :5], want.scales) and not args[0][:, 5:].any()
        width = 32 if fmt == "q8_0" else 16  # a block's quants in each array
        quants = [a.reshape(3, -1, width) for a in args[1:]]
        assert np.array_equal(np.concatenate([q[:, :5] for q in quants], axis=2), want.quants)
        assert not any(q[:, 5:].any() for q in quants)
        fresh = quant.quantize_activations(x, fmt)
        assert all(np.array_equal(a, b) for a, b in zip(args, fresh))
    with pytest.raises(ValueError, match="activations"):
        quant.quantize_activations(np.ones((3, 128), np.float32), fmt, out=out)


def test_products_are_close_to_the_float_product() -> None:
    """Quantization error only: RMS about 1% of the result's for Q8_0, 10% for Q4_0."""
    rng = np.random.default_rng(2)
    w32 = rng.standard_normal((64, 512)).astype(np.float32)
    x = rng.standard_normal(512).astype(np.float32)
    exact = w32 @ x
    for fmt, tol in (("q8_0", 0.02), ("q4_0", 0.15)):
        y = quant.qmatvec(quant.quantize(w32, fmt), x)
        assert np.sqrt(np.mean((y - exact) ** 2)) < tol * np.sqrt(np.mean(exact**2))


def test_out_is_written_in_place() -> None:
    rng = np.random.default_rng(3)
    w = quant.quantize_q8_0(rng.standard_normal((10, 64)).astype(np.float32))
    x = rng.standard_normal(64).astype(np.float32)
    out = np.full(10, np.nan, np.float32)
    assert quant.qmatvec(w, x, out=out) is out
    np.testing.assert_allclose(out, quant.reference_qmatmul(w, x)[0], rtol=1e-5, atol=1e-5)


def test_strided_activations() -> None:
    rng = np.random.default_rng(4)
    w = quant.quantize_q4_0(rng.standard_normal((12, 96)).astype(np.float32))
    x = rng.standard_normal((3, 192)).astype(np.float32)[:, ::2]
    np.testing.assert_allclose(
        quant.qmatmul(w, x), quant.reference_qmatmul(w, x), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("activations", [None, "q8_0", "f32"])
@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_no_rows_of_activations(fmt: str, activations: str | None) -> None:
    w = quant.quantize(np.ones((64, 256), np.float32), fmt)
    got = quant.qmatmul(w, np.zeros((0, 256), np.float32), activations=activations)
    assert got.shape == (0, 64) and got.dtype == np.float32


def test_bad_input_is_a_clear_error() -> None:
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match="multiple of 32"):
        quant.quantize_q8_0(rng.standard_normal((2, 33)).astype(np.float32))
    with pytest.raises(ValueError, match="unknown format"):
        quant.quantize(np.ones((1, 32), np.float32), "q5_k")
    w = quant.quantize_q8_0(rng.standard_normal((2, 64)).astype(np.float32))
    with pytest.raises(ValueError, match="can't multiply"):
        quant.qmatvec(w, np.ones(32, np.float32))
    with pytest.raises(TypeError, match="QTensor"):
        quant.qmatvec(np.ones((2, 64), np.float32), np.ones(64, np.float32))
    with pytest.raises(ValueError, match="activations"):
        quant.qmatvec(w, np.ones(64, np.float32), activations="int4")
    with pytest.raises(ValueError, match="'out' has shape"):
        quant.qmatvec(w, np.ones(64, np.float32), out=np.empty(3, np.float32))


@settings(max_examples=20, deadline=None)
@given(
    fmt=st.sampled_from(FORMATS),
    rows=st.integers(1, 40),
    blocks=st.integers(1, 9),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_random_shapes(fmt: str, rows: int, blocks: int, batch: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = awkward_values(rng, (rows, 32 * blocks))
    w = quant.quantize(x, fmt)
    assert w.tobytes() == gguf.quants.quantize(x, GGML_TYPES[fmt]).tobytes()
    a = rng.standard_normal((batch, 32 * blocks)).astype(np.float32)
    want = quant.reference_qmatmul(w, a)
    np.testing.assert_allclose(
        quant.qmatmul(w, a), want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max())
    )


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_a_nan_in_a_block_quantizes_as_the_reference(fmt: str) -> None:
    """Q4_0 took a NaN block's scale from the next block's first value (or read past the
    row's end: a BoundsError); now the scale is NaN and the quants match the reference."""
    x = np.random.default_rng(10).standard_normal((3, 128)).astype(np.float32)
    x[0, 5] = x[1, 100] = np.nan  # a row's first block and another's last
    got = quant.quantize(x, fmt)
    with np.errstate(invalid="ignore"):  # NumPy warns as it casts the NaN block's quants
        want = quant.reference_quantize(x, fmt)
    np.testing.assert_array_equal(got.scales, want.scales)  # NaN where NaN
    np.testing.assert_array_equal(got.quants, want.quants)
