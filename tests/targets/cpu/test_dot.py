"""Dot-product instructions (kdsl/targets/cpu/dot.py): a short sum of narrow products
inside a vector loop agrees exactly with the interpreter for every signedness, the
full range of each dtype, tails, strided and unit-stride-checked arguments."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.targets.cpu import dot

BF16 = ml_dtypes.bfloat16
BYTE_PAIRS = [(np.uint8, np.int8), (np.int8, np.uint8), (np.int8, np.int8), (np.uint8, np.uint8)]


def full_range(rng: np.random.Generator, shape: tuple[int, ...], dtype: object) -> np.ndarray:
    """Every value of an integer dtype is possible (the extremes are where tricks break)."""
    if np.dtype(dtype) == np.dtype(BF16):
        return rng.standard_normal(shape).astype(BF16)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def make_dot(acc, k: int, width: int, nibble: bool = False):
    """y[r] = Σ_j a[r, j]·b[j], j split by k and its outer part vectorized by `width`."""

    @kd.kernel
    def dot_rows(a, b, y):
        r, j = kd.indices(a.shape[0], a.shape[1])
        left = (a[r, j] & 15) if nibble else a[r, j]
        y[r] = kd.sum(left.astype(acc) * b[j].astype(acc), over=j)

    @dot_rows.schedule(kd.cpu)
    def _(s):
        jo, ji = s.split("j", k)
        s.vectorize(jo, width)
        s.parallelize("r")

    return dot_rows


def expected(a: np.ndarray, b: np.ndarray, wrap: bool) -> np.ndarray:
    exact = (a.astype(np.int64) * b.astype(np.int64)).sum(axis=1)
    return exact.astype(np.int32) if wrap else exact


@pytest.mark.parametrize("da, db", BYTE_PAIRS)
@pytest.mark.parametrize("n", [1, 4, 31, 32, 64, 100, 131])
def test_byte_dot_products_are_exact(da, db, n: int) -> None:
    rng = np.random.default_rng(n)
    a, b = full_range(rng, (7, n), da), full_range(rng, (n,), db)
    y = np.full(7, -1, np.int32)
    kernel = make_dot(kd.i32, 4, 8)
    kernel(a, b, y)
    np.testing.assert_array_equal(y, expected(a, b, wrap=True))
    interp = np.empty_like(y)
    kernel.interpret(a, b, interp)
    np.testing.assert_array_equal(y, interp)


def test_the_instruction_is_used_where_the_cpu_has_it() -> None:
    a, b, y = np.ones((3, 64), np.uint8), np.ones(64, np.int8), np.empty(3, np.int32)
    asm = make_dot(kd.i32, 4, 16).asm(a, b, y)
    assert ("vpdpbusd" in asm) == dot._has("avx512vnni", 16)
    if not dot._has("avx512vnni", 16):  # AVX2: pairs of 16-bit products, no 32-bit multiply
        assert "vpmaddwd" in asm and "vpmulld" not in asm


@pytest.mark.parametrize("width", [4, 8, 16, 2, 32])
def test_every_vector_width(width: int) -> None:
    """Widths with an instruction (4, 8, 16 lanes; 32 as two) and without (2): the wide
    fallback."""
    rng = np.random.default_rng(width)
    a, b = full_range(rng, (5, 157), np.int8), full_range(rng, (157,), np.int8)
    y = np.empty(5, np.int32)
    make_dot(kd.i32, 4, width)(a, b, y)
    np.testing.assert_array_equal(y, expected(a, b, wrap=True))


def test_an_operand_may_be_an_expression_of_loads() -> None:
    """Q4_0's low nibbles: (a & 15) is computed on the whole wide vector."""
    rng = np.random.default_rng(1)
    a, b = full_range(rng, (6, 96), np.uint8), full_range(rng, (96,), np.int8)
    y = np.empty(6, np.int32)
    make_dot(kd.i32, 4, 8, nibble=True)(a, b, y)
    np.testing.assert_array_equal(y, expected(a & 15, b, wrap=True))


@pytest.mark.slow(sample=10)
@pytest.mark.parametrize("width", [2, 4, 8, 16, 32])
@pytest.mark.parametrize("small", ["& 15", "& 127", ">> 1", "& 128", "& 255"])
def test_bytes_under_128_times_signed_bytes(width: int, small: str) -> None:
    """A nibble (or any unsigned byte kept under 128) times a signed byte: without VNNI,
    vpmaddubsw's 16-bit pair sums, which only such a bound keeps from saturating (a mask
    of 128 or more takes the exact pairs of i16 instead). Every i8, -128 included, at
    lengths with tails."""
    masks = {"& 15": 15, "& 127": 127, "& 128": 128, "& 255": 255}

    @kd.kernel
    def bounded(a, b, y):
        r, j = kd.indices(a.shape[0], a.shape[1])
        left = a[r, j] >> 1 if small == ">> 1" else a[r, j] & masks[small]
        y[r] = kd.sum(left.astype(kd.i32) * b[j].astype(kd.i32), over=j)

    @bounded.schedule(kd.cpu)
    def _(s):
        jo, ji = s.split("j", 4)
        s.vectorize(jo, width)

    rng = np.random.default_rng(width)
    for n in (1, 37, 4 * width, 4 * width * 3 + 5):
        a, b = full_range(rng, (3, n), np.uint8), full_range(rng, (n,), np.int8)
        b[:2] = -128
        a[:, :2] = 255
        y = np.empty(3, np.int32)
        bounded(a, b, y)
        left = a >> 1 if small == ">> 1" else a & masks[small]
        np.testing.assert_array_equal(y, expected(left, b, wrap=True))
    asm = bounded.asm(a, b, y)
    if not dot._has("avx512vnni", width) and dot._has_avx2(2 * width):
        assert ("vpmaddubsw" in asm) == (small not in ("& 128", "& 255")), small


@pytest.mark.parametrize("width", [2, 4, 8, 16, 32])
@pytest.mark.parametrize("floor", [-127, 0, -128])
def test_signed_bytes_times_bytes_clamped_above_minus_128(width: int, floor: int) -> None:
    """Signed bytes times signed bytes that never hold -128 (clamped from below): without
    VNNI, the first's sign moves onto the second (vpsignb) for vpmaddubsw's pairs, exact
    for every i8 of the first, -128 included; a clamp that lets -128 through (-128)
    takes the exact pairs of i16 instead."""

    @kd.kernel
    def clamped(a, b, y):
        r, j = kd.indices(a.shape[0], a.shape[1])
        y[r] = kd.sum(a[r, j].astype(kd.i32) * kd.maximum(b[j], floor).astype(kd.i32), over=j)

    @clamped.schedule(kd.cpu)
    def _(s):
        jo, ji = s.split("j", 4)
        s.vectorize(jo, width)

    rng = np.random.default_rng(width - floor)
    for n in (1, 37, 4 * width, 4 * width * 3 + 5):
        a, b = full_range(rng, (3, n), np.int8), full_range(rng, (n,), np.int8)
        a[:, :2], b[:1], b[1:2] = -128, -128, 127
        y = np.empty(3, np.int32)
        clamped(a, b, y)
        np.testing.assert_array_equal(y, expected(a, np.maximum(b, floor), wrap=True))
    asm = clamped.asm(a, b, y)
    if not dot._has("avx512vnni", width) and dot._has_avx2(2 * width):
        assert ("vpsignb" in asm) == (floor > -128), floor


@pytest.mark.parametrize("width", [4, 8])
@pytest.mark.parametrize("mask", [15, 127])
def test_a_sum_of_products_chains_the_instructions(width: int, mask: int) -> None:
    """Q4_0's two halves: low nibbles against one part of b, high against another. Without
    VNNI, two nibble products' i16 pair sums are added before they are widened (one
    vpmaddwd for both: 2·2·15·128 < 2^15); bytes up to 127 are widened apart (two such
    sums could leave i16). Every i8 of b, -128 included."""

    @kd.kernel
    def halves(a, b, y):
        r, j = kd.indices(a.shape[0], a.shape[1])
        low = (a[r, j] & mask).astype(kd.i32) * b[j].astype(kd.i32)
        high = (a[r, j] >> (8 - mask.bit_length())).astype(kd.i32) * b[j + a.shape[1]].astype(
            kd.i32
        )
        y[r] = kd.sum(low + high, over=j)

    @halves.schedule(kd.cpu)
    def _(s):
        jo, ji = s.split("j", 4)
        s.vectorize(jo, width)

    rng = np.random.default_rng(5)
    a, b = full_range(rng, (5, 48), np.uint8), full_range(rng, (96,), np.int8)
    b[:3], a[:, :3] = -128, 255
    y = np.empty(5, np.int32)
    halves(a, b, y)
    shift = 8 - mask.bit_length()
    want = expected(a & mask, b[:48], wrap=True) + expected(a >> shift, b[48:], wrap=True)
    np.testing.assert_array_equal(y, want)
    asm = halves.asm(a, b, y)
    if dot._has("avx512vnni", width):
        assert asm.count("vpdpbusd") >= 2
    elif dot._has_avx2(2 * width):
        pairs, widened = asm.count("vpmaddubsw"), asm.count("vpmaddwd")
        assert pairs and widened == (pairs // 2 if mask == 15 else pairs), (pairs, widened)


def test_int16_pairs() -> None:
    rng = np.random.default_rng(2)
    a, b = full_range(rng, (9, 67), np.int16), full_range(rng, (67,), np.int16)
    y = np.empty(9, np.int32)
    make_dot(kd.i32, 2, 16)(a, b, y)
    np.testing.assert_array_equal(y, expected(a, b, wrap=True))


@pytest.mark.parametrize("n", [1, 2, 33, 64, 257])
def test_bf16_pairs_accumulate_in_f32(n: int) -> None:
    rng = np.random.default_rng(n)
    a, b = full_range(rng, (4, n), BF16), full_range(rng, (n,), BF16)
    y = np.empty(4, np.float32)
    make_dot(kd.f32, 2, 16)(a, b, y)
    want = (a.astype(np.float64) * b.astype(np.float64)).sum(axis=1)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.sqrt(n))


def make_pairs(acc, strict_fp: bool = False):
    """y[r, p] = Σ_m a[r, 2p + m]·b[2p + m] over m < 2: the sum is a local of the vector
    loop over p (not an accumulator across its iterations)."""

    @kd.kernel(strict_fp=strict_fp)
    def pairs(a, b, y):
        r, p, m = kd.indices(y.shape[0], y.shape[1], 2)
        y[r, p] = kd.sum(a[r, 2 * p + m].astype(acc) * b[2 * p + m].astype(acc), over=m)

    @pairs.schedule(kd.cpu)
    def _(s):
        s.vectorize("p", 16)

    return pairs


@pytest.mark.parametrize("strict_fp", [False, True])
def test_pairs_summed_in_a_vector_local(strict_fp: bool) -> None:
    """vdpbf16ps adds each pair before the accumulator, so strict_fp keeps the generic
    code (products added in order); both agree with the interpreter."""
    rng = np.random.default_rng(3)
    a, b = full_range(rng, (3, 2 * 37), BF16), full_range(rng, (2 * 37,), BF16)
    kernel = make_pairs(kd.f32, strict_fp)
    y, interp = np.empty((3, 37), np.float32), np.empty((3, 37), np.float32)
    kernel(a, b, y)
    kernel.interpret(a, b, interp)
    np.testing.assert_allclose(y, interp, rtol=1e-6, atol=1e-6)
    used = "vdpbf16ps" in kernel.asm(a, b, y)
    assert used == (not strict_fp and dot._has("avx512bf16", 16))


def test_int16_pairs_in_a_vector_local() -> None:
    rng = np.random.default_rng(4)
    a, b = full_range(rng, (2, 2 * 53), np.int16), full_range(rng, (2 * 53,), np.int16)
    y = np.empty((2, 53), np.int32)
    make_pairs(kd.i32)(a, b, y)
    want = (a.astype(np.int64) * b.astype(np.int64)).reshape(2, 53, 2).sum(-1)
    np.testing.assert_array_equal(y, want.astype(np.int32))


@pytest.mark.parametrize("step", [1, 2])
def test_strided_arguments(step: int) -> None:
    """A view with unit last stride takes the wide loads (checked at run time); another
    last stride takes the generic code. Both are exact."""
    rng = np.random.default_rng(step)
    base = full_range(rng, (11, 150 * step + 3), np.uint8)
    a = base[::2, 3 : 3 + 150 * step : step]
    b = full_range(rng, (300,), np.int8)[::2]
    y = np.empty(a.shape[0], np.int32)
    make_dot(kd.i32, 4, 8)(a, b, y)
    np.testing.assert_array_equal(y, expected(a, b, wrap=True))


@settings(max_examples=25, deadline=None)
@given(
    pair=st.sampled_from(BYTE_PAIRS),
    rows=st.integers(0, 5),
    n=st.integers(0, 140),
    width=st.sampled_from([4, 8, 16]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_the_interpreter(pair, rows: int, n: int, width: int, seed: int):
    rng = np.random.default_rng(seed)
    a, b = full_range(rng, (rows, n), pair[0]), full_range(rng, (n,), pair[1])
    kernel = make_dot(kd.i32, 4, width)
    y, interp = np.empty(rows, np.int32), np.empty(rows, np.int32)
    kernel(a, b, y)
    kernel.interpret(a, b, interp)
    np.testing.assert_array_equal(y, interp)
    np.testing.assert_array_equal(y, expected(a, b, wrap=True))


def make_tiled_matmul(group: int):
    """C = A·B over a register tile: k in groups of `group`, B copied with its rows
    interleaved ("vnni"), A's group broadcast to every lane."""

    @kd.kernel
    def matmul(a, b, c):
        i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
        acc = kd.i32 if c.dtype == kd.i32 else kd.f32
        c[i, j] = kd.sum(a[i, k].astype(acc) * b[k, j].astype(acc), over=k)

    @matmul.schedule(kd.cpu)
    def _(s):
        io, jo, ii, ji = s.tile("i", "j", 4, 32)
        ko, kg = s.split("k", group)
        s.reorder(io, jo, ji, ko, ii, kg)
        s.cache("b", at=jo, layout="vnni")
        s.vectorize(ji, 32)
        s.unroll(ii)
        s.parallelize(io)

    return matmul


@pytest.mark.parametrize("da, db", BYTE_PAIRS)
def test_byte_matmul_on_a_register_tile(da, db) -> None:
    """A's 4 bytes broadcast against 4 interleaved rows of B: vpdpbusd into each row of
    the tile (held in registers), the K tail by plain code; exact for every signedness.
    The shapes in one test: one compile (~12 s) serves them all, where a test each
    compiled it again on whichever worker ran it."""
    kernel = make_tiled_matmul(4)
    for m, k, n in [(1, 1, 1), (5, 7, 33), (9, 64, 64), (13, 131, 70)]:
        rng = np.random.default_rng(m * k * n)
        a, b = full_range(rng, (m, k), da), full_range(rng, (k, n), db)
        c = np.full((m, n), -1, np.int32)
        kernel(a, b, c)
        np.testing.assert_array_equal(c, a.astype(np.int64) @ b.astype(np.int64))
    if dot._has("avx512vnni", 16):  # (an assembly without it can't hold it: 5 s to ask)
        assert "vpdpbusd" in kernel.asm(a, b, c)
    # the tail tile (70 = 2·32 + 6) reads each lane's 4 bytes of B as one masked word:
    # AVX2 has no masked byte loads, and LLVM made a branch per byte of one
    ir = kernel.llvm(a, b, c, optimized=False)
    words = r'(%"[^"]+") = call <(\d+) x i32> @"llvm\.masked\.load\.v\d+i32\.p0"\(.*<\d+ x i1> %'
    casts = [f"bitcast <{n} x i32> {v} to <{4 * int(n)} x i8>" for v, n in re.findall(words, ir)]
    assert any(cast in ir for cast in casts)


def test_bf16_matmul_on_a_register_tile() -> None:
    rng = np.random.default_rng(5)
    a, b = full_range(rng, (13, 131), BF16), full_range(rng, (131, 70), BF16)
    c = np.full((13, 70), np.nan, np.float32)
    kernel = make_tiled_matmul(2)
    kernel(a, b, c)
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)
    if dot._has("avx512bf16", 16):
        # the tile of the last columns (a masked tail: 70 = 2·32 + 6) takes the
        # instruction too, 4 rows × 2 registers of it as in the full tiles
        assert kernel.asm(a, b, c).count("vdpbf16ps") >= 2 * 4 * 2
