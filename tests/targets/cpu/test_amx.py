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
from kdsl.ir.passes import lower
from kdsl.ir.passes.expand import expand_schedule
from kdsl.ir.printer import format_kernel
from kdsl.targets.cpu.amx import tile_instructions
from kdsl.targets.interp.interpreter import interpret

BF16 = ml_dtypes.bfloat16
needs_amx = pytest.mark.skipif(
    "amx" not in tile_instructions(), reason="this CPU (or its OS) offers no AMX-BF16"
)


def _product(
    rows: int, cols: int, panel: int = 64, tensorize: bool = True, name: str = "amx"
) -> kd.KernelFunction:
    @kd.kernel(name=f"{name}_{rows}x{cols}_{panel}")
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
def test_the_operands_may_come_in_either_order() -> None:
    @kd.kernel
    def swapped(a, b, c):
        i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
        c[i, j] = kd.sum(b[k, j] * a[i, k], over=k)

    swapped.schedule(kd.cpu)(lambda s: s.tensorize(_tile(s), "amx"))
    a, b, c = _operands(np.random.default_rng(2), 45, 70, 33)
    swapped(a, b, c)
    _close(c, a, b)
    assert "tdpbf16ps" in swapped.asm(a, b, c)


@needs_amx
def test_tiles_that_start_from_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the zeroing loops just before it, a nest loads its accumulator's tiles
    (here: the expander told not to mark the zero start)."""
    monkeypatch.setattr(
        importlib.import_module("kdsl.ir.passes.expand"), "mark_zero_starts", lambda s: s
    )
    kernel = _product(32, 16, name="amx_loaded")
    a, b, c = _operands(np.random.default_rng(4), 50, 77, 40)
    kernel(a, b, c)
    _close(c, a, b)
    asm = kernel.asm(a, b, c)
    assert "tdpbf16ps" in asm and "tilezero" not in asm


@needs_amx
def test_the_expanded_ir_means_what_the_code_computes() -> None:
    """Marking a zero start keeps the zeroing loops: the interpreter agrees on the IR the
    code generator compiles."""
    kernel = _KERNELS[32, 32]
    a, b, c = _operands(np.random.default_rng(6), 40, 40, 40)
    final = expand_schedule(kernel.schedule_of(a, b, c).kernel)
    interpret(final, {"a": a, "b": b, "c": c})
    _close(c, a, b)


@needs_amx
def test_a_recorded_schedule_replays_on_this_cpu() -> None:
    kernel = _KERNELS[16, 32]
    a, b, c = _operands(np.random.default_rng(7), 40, 40, 40)
    recorded = kernel.schedule_of(a, b, c)
    traced = lower(kernel.trace(kernel._specs((a, b, c), {})[0]))
    assert format_kernel(kd.Schedule.replay(recorded.to_json(), traced).kernel) == format_kernel(
        recorded.kernel
    )


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
    message = _refusal(lambda s: s.tensorize(_tile(s), "wmma"))
    assert "'wmma' is not a matrix instruction" in message
    assert "'amx'" in message and "'mma'" in message


def test_a_cpu_without_amx_is_told_to_ask_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(importlib.import_module("kdsl.kernel").TILE_INSTRUCTIONS, "cpu", frozenset)
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
@pytest.mark.parametrize("first", ["parallelize", "unroll", "tensorize"])
def test_a_loop_is_annotated_once(first: str) -> None:
    def schedule(s):
        ii = _tile(s)
        getattr(s, first)(*((ii, "amx") if first == "tensorize" else (ii,)))
        s.tensorize(ii, "amx")

    assert "is already" in _refusal(schedule)


@needs_amx
def test_an_object_with_tiles_is_refused_where_they_are_not_granted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process that may not use AMX gets an error, not SIGILL (the autotuner's
    measuring process asks for them when it loads such an object)."""
    kernel = _product(16, 16, name="amx_refused")
    a, b, c = _operands(np.random.default_rng(8), 20, 20, 20)
    kernel(a, b, c)
    backend = importlib.import_module("kdsl.targets.cpu.backend")
    monkeypatch.setattr(backend, "tile_instructions", frozenset)
    spec = kernel._spec_for((a, b, c), {})
    obj = backend.build_object(spec.compiled.kernel, "0" * 16, False, False)
    assert obj.uses_tiles
    with pytest.raises(kd.CompileError, match="AMX tiles"):
        backend.load_object(spec.compiled.kernel, obj)


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
