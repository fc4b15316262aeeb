"""Tile products on a GPU warp: `tensorize(rows, "mma")` computes the nest exactly as its
loops say — every tile shape, every edge (rows, columns and k cut anywhere), B as rows
of k or in the vnni layout, from zero or from memory — checked without a GPU by the SIMT
emulator (simt.py, whose mma.sync is the PTX ISA's fragment layout), with PTX that
ptxas accepts; and it refuses what it can't compute."""

from __future__ import annotations

import importlib
import re

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.ir.passes.expand import expand_schedule
from kdsl.ir.printer import format_kernel
from kdsl.ir.tile_product import SHAPES
from kdsl.targets.cuda import ptx as nvptx
from tests.targets.cuda import simt

BF16 = ml_dtypes.bfloat16
needs_ptxas = pytest.mark.skipif(nvptx.ptxas_path() is None, reason="ptxas is not on PATH")


def _product(rows: int, cols: int, vnni: bool = False, k_outside: int = 0, name: str = "mma"):
    """c = a @ b with warps of `rows` × `cols` tiles (two warps down, two across);
    `k_outside`: k in blocks of that many, outside the tile (the nest then starts from
    the accumulator in memory)."""

    @kd.kernel(name=f"{name}_{rows}x{cols}_{'vnni' if vnni else 'rows'}_{k_outside}")
    def product(a, b, c):
        i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
        c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)

    @product.schedule(kd.cuda)
    def _(s):
        io, ii = s.split("i", 2 * rows)
        jo, ji = s.split("j", 2 * cols)
        iw, ir = s.split(ii, rows)
        jw, jr = s.split(ji, cols)
        s.reorder(io, jo, iw, jw, ir, jr)
        k, kb = "k", ""
        if k_outside:
            kb, k = s.split("k", k_outside)
            s.reorder(kb, ir, jr)
        s.split(k, 2)
        if vnni:
            s.cache("b", at=kb if k_outside else jw, layout="vnni")
            if k_outside:  # a constant-size copy: the warp's, its lanes across the columns
                s.bind("b.c1", "thread.x")
        s.bind(io, "block.y")
        s.bind(jo, "block.x")
        s.bind(iw, "thread.y")
        s.bind(jw, "thread.z")
        s.tensorize(ir, "mma")

    return product


def _operands(rng: np.random.Generator, m: int, k: int, n: int) -> tuple[np.ndarray, ...]:
    a = rng.uniform(-2, 2, (m, k)).astype(BF16)
    b = rng.uniform(-2, 2, (k, n)).astype(BF16)
    return a, b, np.full((m, n), np.nan, np.float32)


def _close(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """bf16 products are exact in f32; only the order of the f32 sums differs."""
    want = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    np.testing.assert_array_less(np.abs(c - want), 1e-5 * scale + 1e-30)


_SIZES = st.sampled_from([1, 2, 7, 15, 16, 17, 31, 33, 47])


@settings(max_examples=12, deadline=None)
@given(
    tile=st.sampled_from(SHAPES["mma"]),
    vnni=st.booleans(),
    m=_SIZES,
    k=_SIZES,
    n=_SIZES,
    seed=st.integers(0, 2**32 - 1),
)
def test_tile_products_on_every_edge(tile, vnni: bool, m: int, k: int, n: int, seed: int) -> None:
    a, b, c = _operands(np.random.default_rng(seed), m, k, n)
    simt.run(_product(*tile, vnni=vnni), [a, b, c])
    _close(c, a, b)


def test_tiles_that_start_from_memory() -> None:
    """k in blocks outside the tile: each nest adds into what the last one left."""
    a, b, c = _operands(np.random.default_rng(4), 19, 70, 21)
    kernel = _product(16, 16, k_outside=32)
    simt.run(kernel, [a, b, c])
    _close(c, a, b)
    assert "mma from zero" not in _gpu_ir(kernel, a, b, c)


def test_a_warps_copy_filled_by_its_lanes() -> None:
    """B's block of k cached in the warp's code (a constant size: the warp's copy, in
    shared memory), its columns copied by the lanes, read by the tile product."""
    a, b, c = _operands(np.random.default_rng(9), 21, 75, 30)
    kernel = _product(16, 16, vnni=True, k_outside=32)
    simt.run(kernel, [a, b, c])
    _close(c, a, b)


def test_a_tile_with_nothing_to_add_leaves_its_accumulator() -> None:
    a, b, c = _operands(np.random.default_rng(5), 9, 0, 10)
    simt.run(_product(16, 8), [a, b, c])
    np.testing.assert_array_equal(c, 0)


@needs_ptxas
@pytest.mark.parametrize("sm", ["sm_80", "sm_90"])
@pytest.mark.parametrize("tile", [(16, 8), (32, 32), (64, 32)])
def test_ptx_has_one_mma_per_tile_and_assembles(tile, sm, monkeypatch) -> None:
    monkeypatch.setenv("KDSL_CUDA_ARCH", sm)
    a, b, c = _operands(np.random.default_rng(0), 40, 40, 40)
    text = _product(*tile).ptx(a, b, c)
    assert text.count("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") == (
        tile[0] // 16 * (tile[1] // 8)
    )
    assert "bar.warp.sync" in text
    assert "Compiling entry function" in nvptx.assemble(text, sm)


@kd.kernel
def product_with_transposed(a, bt, c):
    """c = a · btᵀ: B read as columns of k (as attention reads its keys)."""
    i, j, k = kd.indices(a.shape[0], bt.shape[0], a.shape[1])
    c[i, j] = kd.sum(a[i, k] * bt[j, k], over=k)


@product_with_transposed.schedule(kd.cuda)
def _(s):
    s.tensorize(_tile(s, 32, 32), "mma")


@pytest.mark.parametrize(
    "k, shift",
    [(48, 0), (47, 0), (48, 1)],  # words whole; an odd k (rows off 4 bytes); views 2 bytes in
)
def test_words_read_whole_where_they_are_aligned(k: int, shift: int) -> None:
    """Both operands along k: where a pair k, k + 1 is an aligned 32-bit word (rows of
    an even length, starting on 4 bytes) a lane loads it at once, otherwise element by
    element; the products agree either way, edges included."""
    rng = np.random.default_rng(k + shift)
    a = rng.uniform(-2, 2, (37, k + shift)).astype(BF16)[:, shift:]
    bt = rng.uniform(-2, 2, (21, k + shift)).astype(BF16)[:, shift:]
    c = np.full((37, 21), np.nan, np.float32)
    simt.run(product_with_transposed, [a, bt, c])
    _close(c, a, bt.T)


def test_word_loads_are_in_the_ptx(monkeypatch) -> None:
    monkeypatch.setenv("KDSL_CUDA_ARCH", "sm_90")
    a, bt = np.zeros((37, 48), BF16), np.zeros((21, 48), BF16)
    text = product_with_transposed.ptx(a, bt, np.zeros((37, 21), np.float32))
    words = 2 * 4 + 4 * 2  # A's and B's words for a 32 × 32 tile, per step of 16 k
    assert len(re.findall(r"ld\.global(\.nc)?\.b32", text)) == words


def _refusal(schedule, error: type[Exception] = kd.ScheduleError) -> str:
    @kd.kernel
    def product(a, b, c):
        i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
        c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)

    product.schedule(kd.cuda)(schedule)
    a, b, c = _operands(np.random.default_rng(0), 8, 8, 8)
    with pytest.raises(error) as err:
        product.ptx(a, b, c)
    return str(err.value)


def _gpu_ir(kernel, *args) -> str:
    """The IR the CUDA target compiles, as text."""
    specs, _ = kernel._specs(args, {})
    return format_kernel(expand_schedule(kernel.scheduled(kernel.trace(specs), kd.cuda).kernel))


def _tile(s, rows: int = 16, cols: int = 8) -> str:
    io, ii = s.split("i", rows)
    jo, ji = s.split("j", cols)
    s.reorder(io, jo, ii, ji)
    s.split("k", 2)
    s.bind(io, "block.y")
    s.bind(jo, "block.x")
    return ii


def test_the_cpu_has_no_mma() -> None:
    @kd.kernel
    def product(a, b, c):
        i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
        c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)

    @product.schedule(kd.cpu)
    def _(s):
        io, ii = s.split("i", 16)
        s.tensorize(ii, "mma")

    with pytest.raises(kd.ScheduleError) as err:
        product(*_operands(np.random.default_rng(0), 8, 8, 8))
    assert "cpu target here has no 'mma'" in str(err.value) and 's.has("mma")' in str(err.value)


def test_a_gpu_before_ampere_has_no_mma(monkeypatch) -> None:
    monkeypatch.setenv("KDSL_CUDA_ARCH", "sm_75")
    message = _refusal(lambda s: s.tensorize(_tile(s), "mma"))
    assert "cuda target here has no 'mma'" in message


def test_has_says_which_gpus_have_it(monkeypatch) -> None:
    seen = {}

    def schedule(s):
        seen[s.has("mma")] = True
        s.default()

    @kd.kernel
    def copy(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i]

    copy.schedule(kd.cuda)(schedule)
    x = np.ones(5, np.float32)
    for sm in ("sm_75", "sm_90"):
        monkeypatch.setenv("KDSL_CUDA_ARCH", sm)
        copy.ptx(x, x.copy())
    assert seen == {False: True, True: True}


@pytest.mark.parametrize("threads", [2, None])
def test_lanes_bound_around_the_tile_afterwards_are_refused(threads) -> None:
    """The lanes of x are the warp's: a loop around the tile bound to them is refused
    when compiled (bound after tensorize)."""

    def schedule(s):
        ii = _tile(s, rows=32)
        iw, ir = s.split(ii, 16)
        s.tensorize(ir, "mma")
        s.bind(iw, "thread.x", threads)

    message = _refusal(schedule, kd.CompileError)
    assert "inside a loop bound to thread.x" in message and "thread.y or thread.z" in message


def test_a_tile_inside_lanes_is_refused_by_the_step() -> None:
    def schedule(s):
        io, ii = s.split("i", 16)
        jo, ji = s.split("j", 8)
        s.reorder(jo, io, ii, ji)
        s.split("k", 2)
        s.bind(jo, "block.x")
        s.bind(io, "thread.x")
        s.tensorize(ii, "mma")

    message = _refusal(schedule)
    assert "bound to thread.x" in message and "warp" in message


def test_too_many_warps_are_refused_when_compiled() -> None:
    """The 32 lanes along x count: 64 warps along y make 2048 threads, over the limit."""

    def schedule(s):
        io, ii = s.split("i", 1024)
        iw, ir = s.split(ii, 16)
        jo, ji = s.split("j", 8)
        s.reorder(io, jo, iw, ir, ji)
        s.split("k", 2)
        s.bind(io, "block.y")
        s.bind(jo, "block.x")
        s.bind(iw, "thread.y", 64)
        s.tensorize(ir, "mma")

    message = _refusal(schedule, kd.CompileError)
    assert "32×64×1 threads per block" in message


def test_a_tile_of_another_shape_is_refused() -> None:
    message = _refusal(lambda s: s.tensorize(_tile(s, 16, 12), "mma"))
    assert "not a tile product" in message and "16, 32 or 64 rows" in message


def test_a_product_that_reads_rows_from_data_is_refused() -> None:
    """A's rows picked by an index array: each element is checked where it runs, and
    an mma reads whole tiles unchecked."""

    @kd.kernel
    def gathered(a, rows, b, c):
        i, j, k = kd.indices(rows.shape[0], b.shape[1], a.shape[1])
        c[i, j] = kd.sum(a[rows[i], k] * b[k, j], over=k)

    gathered.schedule(kd.cuda)(lambda s: s.tensorize(_tile(s), "mma"))
    a, b, c = _operands(np.random.default_rng(0), 8, 8, 8)
    with pytest.raises(kd.ScheduleError, match="'a' where kdsl checks each element"):
        gathered.ptx(a, np.arange(8), b, c)


def test_the_ir_says_mma_and_from_zero() -> None:
    a, b, c = _operands(np.random.default_rng(0), 20, 20, 20)
    text = _gpu_ir(_product(16, 16), a, b, c)
    assert "mma from zero" in text


def test_the_expander_leaves_the_nest_whole(monkeypatch) -> None:
    """Without the zero-start mark (the expander told not to), the nest loads its
    accumulator and still computes the product."""
    monkeypatch.setattr(
        importlib.import_module("kdsl.ir.passes.expand"), "mark_zero_starts", lambda s: s
    )
    a, b, c = _operands(np.random.default_rng(8), 17, 33, 9)
    simt.run(_product(16, 8, name="mma_loaded"), [a, b, c])
    _close(c, a, b)
