"""kdsl.kernels.attention against its NumPy reference (and PyTorch's SDPA where installed):
prefill and decode, GQA, causal, awkward lengths and head sizes, argument errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kdsl.kernels import attention
from kdsl.kernels.attention import (
    CPU_KEYS,
    TK,
    TQ,
    _flash_cpu,
    flash_kernel,
    reference,
    textbook,
)

import kdsl as kd
from tests.helpers import each_choice, keyed_rng, run_config

# (B, H, Hkv, Lq, Lk, D): primes, one tile, a tile and one, Lq ≷ Lk, D of 1, 5, 64, 128
PREFILL = [
    (1, 1, 1, 2, 2, 64),
    (1, 2, 2, 7, 7, 64),
    (2, 4, 2, 37, 37, 64),
    (1, 8, 1, 131, 131, 64),
    (1, 2, 1, TQ, TK, 64),
    (1, 8, 1, TQ + 1, 2 * CPU_KEYS + 1, 64),
    (1, 2, 2, 131, 37, 128),
    (1, 2, 2, 37, 131, 128),
    (2, 2, 2, 37, 131, 5),
    (1, 4, 2, 131, 131, 1),
    (1, 1, 1, 200, 300, 64),
]
# (B, H, Hkv, Lk, D) with Lq = 1: a KV cache of any length, split in chunks across cores
DECODE = [
    (1, 1, 1, 1, 64),
    (1, 2, 2, 7, 64),
    (2, 4, 2, 257, 64),
    (1, 8, 1, 1000, 64),
    (1, 2, 2, 600, 128),
    (1, 2, 2, 300, 5),
    (1, 1, 1, 37, 1),
]


def _qkv(key, B, H, Hkv, Lq, Lk, D, dtype=np.float32):
    rng = keyed_rng(key)
    q = rng.standard_normal((B, H, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    return q, k, v


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", PREFILL)
def test_prefill(shape, causal):
    q, k, v = _qkv(("prefill", shape, causal), *shape)
    out = attention(q, k, v, causal=causal)
    assert out.shape == q.shape and out.dtype == np.float32
    _close(out, reference(q, k, v, causal))


_SMALL = _qkv("space", 1, 1, 1, 4, 4, 64)


@pytest.mark.slow(sample=6)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "config", each_choice(flash_kernel, *_SMALL, np.empty_like(_SMALL[0]), 0.125, 1, 64), ids=str
)
def test_prefill_every_choice_of_the_search_space(config, causal):
    """Each choice of each param of flash_kernel's CPU schedule (its register blocks: keys
    and queries of the scores, queries of P·V), the others at their first: queries and
    keys not multiples of any tile, a GQA group of two; causal, the plain tiles and the
    masked ones run."""
    q, k, v = _qkv(("space", str(config), causal), 1, 2, 1, 2 * TQ + 3, 2 * CPU_KEYS + 3, 64)
    o = np.full(q.shape, np.nan, np.float32)
    run_config(flash_kernel, config, q, k, v, o, 0.125, 2, 64, causal, CPU_KEYS)
    _close(o, reference(q, k, v, causal, 0.125))


@pytest.mark.parametrize("shape", DECODE)
def test_decode(shape):
    B, H, Hkv, Lk, D = shape
    q, k, v = _qkv(("decode", shape), B, H, Hkv, 1, Lk, D)
    _close(attention(q, k, v), reference(q, k, v))


def test_decode_causal_is_top_left():
    """One causal query attends key 0 only (top-left, as torch's is_causal)."""
    q, k, v = _qkv("decode causal", 1, 4, 2, 1, 50, 64)
    out = attention(q, k, v, causal=True)
    _close(out, np.repeat(v[:, :, :1], 2, axis=1))


def test_scale_and_large_scores():
    """Scores up to ~100: no overflow in the online softmax (the f32 rounding of
    scores this large is ~1e-5 of them, hence the looser tolerance); a custom scale."""
    q, k, v = _qkv("large", 1, 2, 2, 70, 150, 64)
    q *= 30
    for scale in (None, 0.5):
        for causal in (False, True):
            got, want = attention(q, k, v, causal, scale), reference(q, k, v, causal, scale)
            np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def test_strided_inputs_and_out():
    """[B, L, H, D] arrays viewed as [B, H, L, D] (the usual projection layout)."""
    q, k, v = (
        np.ascontiguousarray(a.transpose(0, 2, 1, 3)) for a in _qkv("strided", 2, 4, 2, 33, 70, 64)
    )
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    out = np.full(q.shape, np.nan, np.float32)
    assert attention(q, k, v, causal=True, out=out) is out
    _close(out, reference(q, k, v, True))


@pytest.mark.parametrize(
    "dtype,causal,D", [("bfloat16", True, 64), ("float16", False, 64), ("bfloat16", False, 20)]
)
def test_16_bit_inputs(dtype, causal, D):
    """bf16 and f16 q, k, v, with masked tiles and a head size padded for P·V: each key
    tile's keys and values are widened to f32 once, into tiles of their own."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    typ = getattr(ml_dtypes, dtype, None) or np.dtype(dtype)
    q, k, v = (a.astype(typ) for a in _qkv(("16 bit", dtype, D), 1, 4, 2, 37, 2 * CPU_KEYS + 5, D))
    want = reference(*(a.astype(np.float32) for a in (q, k, v)), causal)
    _close(attention(q, k, v, causal=causal), want)
    traced = str(flash_kernel.ir(q, k, v, np.empty(q.shape, np.float32), 0.1, 2, D, causal))
    assert "buffer k32: f32" in traced and "buffer v32: f32" in traced


@pytest.mark.parametrize("vector_bytes", [32, 64])
def test_values_block_is_sized_by_the_chunk_of_d(vector_bytes, monkeypatch):
    """P·V's register block holds as many queries as fill its registers (8 ymm, 16 zmm)
    with the chunk of D that the head size allows, at most 4: with AVX2, 4 where D=80
    runs chunks of 16 and 2 where D=64 runs chunks of 32; with AVX-512, 4. The schedule
    reads the chunk with s.extent."""
    from kdsl.kernels import _machine

    monkeypatch.setattr(_machine, "vector_bytes", lambda: vector_bytes)
    avx2 = vector_bytes == 32
    assert _machine.value_queries_first(16) == [4, 2, 1]
    assert _machine.value_queries_first(32) == ([2, 1, 4] if avx2 else [4, 2, 1])
    assert _machine.value_queries_first(64) == ([1, 2, 4] if avx2 else [4, 2, 1])
    kernel = kd.kernel(flash_kernel.fn, name=f"flash_{vector_bytes}")
    kernel.schedule(kd.cpu)(_flash_cpu)
    for D, rows in ((80, 4), (64, 2 if avx2 else 4)):
        q = np.zeros((1, 1, 5, D), np.float32)
        chosen = kernel.schedule_of(q, q, q, q.copy(), 0.1, 1, D, False, CPU_KEYS).chosen
        assert chosen["rpv"] == rows, (D, chosen)


def test_a_key_tile_of_any_multiple_of_nm_and_no_other():
    """flash_kernel's `keys` (a non-causal tile's): 8 keys give the same attention; 6 or 0
    are refused, saying which values it takes."""
    q, k, v = _qkv("keys", 1, 2, 1, 37, 29, 16)
    o = np.full(q.shape, np.nan, np.float32)
    flash_kernel(q, k, v, o, 0.25, 2, 16, False, 8)
    _close(o, reference(q, k, v, False, 0.25))
    for keys in (6, 0):
        with pytest.raises(kd.KernelArgumentError, match=f"keys={keys}: .* multiple of 4"):
            flash_kernel(q, k, v, o, 0.25, 2, 16, False, keys)


def test_the_textbook_numpy_version():
    """kernels.attention.textbook, the f32 NumPy peer that `kdsl demo` and the benchmarks
    time, against the float64 definition, causal and not."""
    q, k, v = _qkv("textbook", 2, 3, 3, 37, 50, 16)
    for causal in (False, True):
        _close(textbook(q, k, v, causal), reference(q, k, v, causal))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "shape", [(1, 2, 1, 20, 70, 20), (2, 1, 1, 131, 131, 64), (1, 1, 1, 1, 3, 1)]
)
def test_the_tensor_core_algorithm_on_the_cpu(shape, causal):
    """kernels/attention_tc.py's flash attention for tensor cores (bf16, p rounded to
    bf16 before its product with v) under the CPU's default schedule: the algorithm
    itself, apart from its GPU schedule (tests/targets/cuda run that in the emulator)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from kdsl.kernels.attention_tc import flash_mma_kernel

    q, k, v = (a.astype(ml_dtypes.bfloat16) for a in _qkv(("mma", shape, causal), *shape))
    o = np.full(q.shape, np.nan, np.float32)
    D, group = shape[-1], shape[1] // shape[2]
    flash_mma_kernel(q, k, v, o, D**-0.5, group, D, causal)
    np.testing.assert_allclose(o, reference(q, k, v, causal), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("Lq,Lk", [(37, 131), (131, 37), (1, 20), (64, 64)])
def test_matches_torch_sdpa(Lq, Lk):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    q, k, v = _qkv(("torch", Lq, Lk), 2, 4, 2, Lq, Lk, 64)
    for causal in (False, True):
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        tk, tv = tk.repeat_interleave(2, dim=1), tv.repeat_interleave(2, dim=1)
        want = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal).numpy()
        _close(attention(q, k, v, causal=causal), want)


@given(
    B=st.integers(1, 2),
    kv_heads=st.integers(1, 2),
    group_and_D=st.sampled_from([(1, 64), (2, 64), (1, 5)]),  # kernels compiled above
    Lq=st.integers(1, 80),
    Lk=st.integers(1, 150),
    causal=st.booleans(),
)
def test_shapes_property(B, kv_heads, group_and_D, Lq, Lk, causal):
    group, D = group_and_D
    q, k, v = _qkv(("hyp", B, kv_heads, group, Lq, Lk, D), B, kv_heads * group, kv_heads, Lq, Lk, D)
    _close(attention(q, k, v, causal=causal), reference(q, k, v, causal))


def test_empty_queries():
    q, k, v = _qkv("empty", 1, 2, 2, 0, 5, 8)
    assert attention(q, k, v).shape == (1, 2, 0, 8)


@pytest.mark.parametrize(
    "shapes,err,message",
    [
        (
            ((2, 4, 8), (2, 4, 8), (2, 4, 8)),
            kd.ShapeError,
            r"'q' has shape \(2, 4, 8\), expected 4 dimensions",
        ),
        (((1, 4, 5, 8), (1, 3, 5, 8), (1, 3, 5, 8)), kd.ShapeError, "multiple of the kv heads"),
        (((1, 4, 5, 8), (1, 2, 5, 8), (1, 2, 6, 8)), kd.ShapeError, "'k' has shape .* but 'v'"),
        (((1, 4, 5, 8), (1, 2, 5, 16), (1, 2, 5, 16)), kd.ShapeError, "batch and head size"),
        (((1, 4, 5, 8), (1, 2, 0, 8), (1, 2, 0, 8)), kd.ShapeError, "no keys"),
    ],
)
def test_shape_errors_name_the_parameter(shapes, err, message):
    q, k, v = (np.ones(s, np.float32) for s in shapes)
    with pytest.raises(err, match=message) as info:
        attention(q, k, v)
    assert "fix:" in str(info.value)


def test_argument_errors():
    q = np.ones((1, 2, 3, 8), np.float32)
    with pytest.raises(kd.KernelArgumentError, match="'k' is None"):
        attention(q, None, q)
    with pytest.raises(kd.KernelArgumentError, match="'v' has dtype complex64"):
        attention(q, q, q.astype(np.complex64))
    with pytest.raises(kd.ShapeError, match=r"'out' has shape \(1, 2, 3, 7\)"):
        attention(q, q, q, out=np.empty((1, 2, 3, 7), np.float32))
    frozen = np.empty_like(q)
    frozen.flags.writeable = False
    with pytest.raises(kd.KernelArgumentError, match="'out' is read-only"):
        attention(q, q, q, out=frozen)
    with pytest.raises(kd.KernelArgumentError, match="'out' has dtype int32"):
        attention(q, q, q, out=np.empty(q.shape, np.int32))
    assert isinstance(kd.ShapeError("x"), ValueError)  # callers may catch ValueError
