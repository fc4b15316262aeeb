"""Tile products on AMX: `tensorize(rows, "amx")` computes the nest exactly as its loops
say, on every edge (tiles cut by the matrix's rows, columns and k), for every tile
shape, and refuses what it can't compute."""

from __future__ import annotations

import importlib

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.targets.cpu.amx import tile_instructions

BF16 = ml_dtypes.bfloat16
needs_amx = pytest.mark.skipif(
    "amx" not in tile_instructions(), reason="this CPU (or its OS) offers no AMX-BF16"
)


def _product(rows: int, cols: int, panel: int = 64, tensorize: bool = True) -> kd.KernelFunction:
    @kd.kernel(name=f"amx_{rows}x{cols}_{panel}")
    def product(a, b, c):
        i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
        c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)

    @product.schedule(kd.cpu)
    def _(s):
        io, ii = s.split("i", rows)
        jo, jp = s.split("j", panel)
        jr, ji = s.split(jp, cols)
        s.reorder(jo, io, jr, ii, ji)
        ko, k2 = s.split("k", 2)
        s.cache("b", at=jo, layout="vnni")
        s.vectorize(ji, 16)
        if tensorize:
            s.tensorize(ii, "amx")
        s.parallelize(jo)

    return product


def _operands(rng: np.random.Generator, m: int, k: int, n: int) -> tuple[np.ndarray, ...]:
    a = rng.uniform(-2, 2, (m, k)).astype(BF16)
    b = rng.uniform(-2, 2, (k, n)).astype(BF16)
    return a, b, rng.uniform(-9, 9, (m, n)).astype(np.float32)


def _expected(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) @ b.astype(np.float64)


def _close(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """bf16 products are exact in f32; only the order of the f32 sums differs."""
    scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    np.testing.assert_array_less(np.abs(c - _expected(a, b)), 1e-5 * scale + 1e-30)


_KERNELS = {(r, c): _product(r, c) for r in (16, 32) for c in (16, 32)}
_SIZES = st.sampled_from([0, 1, 2, 7, 15, 16, 17, 31, 32, 33, 47, 64, 67, 97])


@needs_amx
@settings(max_examples=40, deadline=None)
@given(
    tile=st.sampled_from(sorted(_KERNELS)),
    m=_SIZES,
    k=_SIZES,
    n=_SIZES,
    seed=st.integers(0, 2**32 - 1),
)
def test_tile_products_on_every_edge(tile, m: int, k: int, n: int, seed: int) -> None:
    a, b, c = _operands(np.random.default_rng(seed), m, k, n)
    _KERNELS[tile](a, b, c)
    _close(c, a, b)


@needs_amx
@pytest.mark.parametrize("m, k, n", [(96, 160, 128), (100, 333, 71), (64, 1024, 64)])
def test_long_products_agree_with_vector_code(m: int, k: int, n: int) -> None:
    """Many blocks of k, full tiles and edges together, against the same schedule
    without tensorize (the vdpbf16ps vector code) and the interpreter."""
    a, b, c = _operands(np.random.default_rng(m * k * n), m, k, n)
    amx, vector = _KERNELS[32, 32], _product(32, 32, tensorize=False)
    c_vector = c.copy()
    amx(a, b, c)
    vector(a, b, c_vector)
    _close(c, a, b)
    np.testing.assert_allclose(c, c_vector, rtol=1e-5, atol=1e-4)
    if m * k * n <= 100 * 333 * 71:
        c_interpreted = c.copy()
        amx.interpret(a, b, c_interpreted)
        np.testing.assert_allclose(c, c_interpreted, rtol=1e-5, atol=1e-4)


@needs_amx
def test_strided_rows_of_k_run_as_scalar_code() -> None:
    """A whose k is not contiguous can't be a tile: the nest runs as written."""
    rng = np.random.default_rng(5)
    wide, b, c = _operands(rng, 37, 2 * 41, 29)
    a = wide[:, ::2]
    b = b[:41]
    _KERNELS[32, 16](a, b, c)
    _close(c, a, b)


@needs_amx
def test_the_tiles_are_amx_instructions() -> None:
    a, b, c = _operands(np.random.default_rng(1), 64, 64, 64)
    asm = _KERNELS[32, 32].asm(a, b, c)
    assert "tdpbf16ps" in asm and "ldtilecfg" in asm and "tilerelease" in asm
    # the tiles start at zero (tilezero) in place of the schedule's loops that zeroed
    # the accumulator in memory, which a tile load would then wait for
    assert "tilezero" in asm and "amx from zero" in str(_KERNELS[32, 32].lowered(a, b, c))
    assert "tdpbf16ps" not in _product(32, 32, tensorize=False).asm(a, b, c)


# --------------------------------------------------------------------- refusals


def _refusal(schedule) -> str:
    @kd.kernel
    def product(a, b, c):
        i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
        c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)

    product.schedule(kd.cpu)(schedule)
    a, b, c = _operands(np.random.default_rng(0), 8, 8, 8)
    with pytest.raises(kd.ScheduleError) as err:
        product(a, b, c)
    return str(err.value)


def _tile(s) -> str:
    io, ii = s.split("i", 32)
    jo, ji = s.split("j", 32)
    s.reorder(io, jo, ii, ji)
    s.split("k", 2)
    s.cache("b", at=jo, layout="vnni")
    return ii


@needs_amx
def test_a_loop_that_is_no_tile_product_is_refused() -> None:
    def schedule(s):
        io, ii = s.split("i", 32)
        s.tensorize(ii, "amx")

    message = _refusal(schedule)
    assert "not a tile product" in message and "vnni" in message


@needs_amx
def test_an_unknown_instruction_is_refused() -> None:
    message = _refusal(lambda s: s.tensorize(_tile(s), "mma"))
    assert "'mma' is not a matrix instruction" in message and "use 'amx'" in message


def test_a_cpu_without_amx_is_told_to_ask_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.import_module("kdsl.kernel"), "tile_instructions", frozenset)
    message = _refusal(lambda s: s.tensorize(_tile(s), "amx"))
    assert "has no 'amx'" in message and 's.has("amx")' in message


@needs_amx
def test_a_step_that_breaks_the_tile_afterwards_is_refused() -> None:
    def schedule(s):
        s.tensorize(_tile(s), "amx")
        s.split("ki", 1)

    message = _refusal(schedule)
    assert "no longer a tile product" in message


@needs_amx
def test_strict_fp_keeps_the_products_in_order() -> None:
    @kd.kernel(strict_fp=True)
    def product(a, b, c):
        i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
        c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)

    product.schedule(kd.cpu)(lambda s: s.tensorize(_tile(s), "amx"))
    a, b, c = _operands(np.random.default_rng(0), 8, 8, 8)
    with pytest.raises(kd.ScheduleError, match="strict_fp"):
        product(a, b, c)
