"""kdsl.kernels.matmul: every tile edge (sizes 1, primes, not multiples of any tile),
strides, batches and the epilogue against NumPy, under each choice of its search space,
through both of its parallel layouts; and its inner loop in the machine code. Then
products of one row (kernels/vecmat.py) the same ways."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kdsl as kd
from tests.helpers import (
    asm_loops,
    build_config,
    each_choice,
    keyed_rng,
    run_config,
    sweep,
    vector_register,
)

mm = importlib.import_module("kdsl.kernels.matmul")

# (m, k, n) around mr = 8 rows, nr = 32 columns, nc = 64-column panels of B
SHAPES = [
    (1, 1, 1),
    (1, 300, 1),
    (7, 5, 33),
    (8, 64, 64),
    (9, 17, 65),
    (13, 1, 97),
    (31, 129, 127),
    (67, 45, 29),
    (130, 257, 200),
    (17, 3, 300),
]
KERNELS = [mm.product_kernel, mm.product_rows_kernel]


def _operands(m: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = keyed_rng("mm", m, k, n)
    return rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)


def _close(got: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_every_edge(kernel: kd.KernelFunction, m: int, k: int, n: int) -> None:
    a, b = _operands(m, k, n)
    c = np.full((m, n), np.nan, np.float32)
    kernel(a, b, c)
    _close(c, a, b)


@pytest.mark.slow(sample=9)
@pytest.mark.parametrize(
    "config", each_choice(mm.product_kernel, *_operands(4, 4, 4), np.empty((4, 4))), ids=str
)
def test_every_choice_of_the_search_space(config: dict[str, object]) -> None:
    for m, k, n in [(1, 1, 1), (31, 129, 127), (130, 67, 300)]:
        a, b = _operands(m, k, n)
        c = np.full((m, n), np.nan, np.float32)
        run_config(mm.product_kernel, config, a, b, c)
        _close(c, a, b)


def test_strides() -> None:
    """Views with any strides, the output included; a Fortran-ordered B."""
    a, b = _operands(70, 90, 130)
    out = np.full((80, 300), np.nan, np.float32)
    view = out[5:75, 1::2][:, :130]
    for x, y in [(a[:, ::1], np.asfortranarray(b)), (a[::-1], b[:, ::-1]), (a, b)]:
        assert mm.matmul(x, y, out=view) is view
        _close(view, x, y)
    big = np.zeros((140, 180), np.float32)
    big[::2, ::2] = a
    _close(mm.matmul(big[::2, ::2], b), a, b)


@pytest.mark.parametrize("m,k,n", [(200, 70, 40), (3, 70, 500), (64, 64, 64)])
def test_both_parallel_layouts(m: int, k: int, n: int) -> None:
    """`matmul` shares B's panels among the cores, or A's rows when B is narrow; both
    give the same answer, on one thread too."""
    a, b = _operands(m, k, n)
    plan = mm.layout(m, k, n, 4, kd.get_num_threads())
    by_rows = mm.kernel_for(True, "rows", plan.panel)
    rows = by_rows.stats()["calls"]
    _close(mm.matmul(a, b), a, b)
    assert by_rows.stats()["calls"] == rows + (plan.across == "rows")
    before = kd.get_num_threads()
    kd.set_num_threads(1)
    try:
        for kernel in KERNELS:
            c = np.empty((m, n), np.float32)
            kernel(a, b, c)
            _close(c, a, b)
    finally:
        kd.set_num_threads(before)


def test_panel_width_fits_the_panel_in_l2() -> None:
    """Wide panels of B for short k, narrow ones for long k, always within PANEL_BYTES
    unless even the narrowest is larger."""
    widths = [mm.panel_width(k, 4) for k in (1, 64, 256, 1024, 2048, 4096, 100_000)]
    assert widths == sorted(widths, reverse=True)
    assert widths[0] == max(mm.PANEL_WIDTHS) and widths[-1] == min(mm.PANEL_WIDTHS)
    assert mm.panel_width(2048, 2) == 2 * mm.panel_width(2048, 4)  # bf16: twice as wide
    for k in (64, 1000, 4096):
        nc = mm.panel_width(k, 4)
        assert k * nc * 4 <= mm.PANEL_BYTES < k * 2 * nc * 4 or nc in (
            max(mm.PANEL_WIDTHS),
            min(mm.PANEL_WIDTHS),
        )


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_layout_gives_every_core_work(threads: int) -> None:
    """Two panels a core (or the narrowest), a panel a core in BLIS's order (blocks of
    A's rows), or rows of A where B has too few columns."""
    shapes = [(256, 256, 256), (4096, 64, 4096), (4096, 4096, 64), (3, 70, 500)]
    for m, k, n in [*shapes, (120, 4096, 128), (500, 4096, 1000), (300, 4096, 300)]:
        across, panel, _, block_rows = mm.layout(m, k, n, 4, threads)
        panels = -(-n // panel)
        if block_rows:
            assert panel in mm.BLOCKED_PANELS and panels >= threads
        elif across == "panels":
            assert panel <= max(mm.panel_width(k, 4), mm.PANEL)
            assert panels >= 2 * threads or panel <= mm.PANEL
        else:
            assert panels < 2 * threads and m > n


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_layout_packs_blocks_of_k_for_few_rows_of_a(monkeypatch, dtype: str) -> None:
    """Blocks of BLOCK_DEPTH rows of B where A has two row strips to FEW_ROWS rows and a
    panel of all of k overflows PANEL_BYTES (where _machine says so); all of k for more
    rows or one strip, short k, B shared by rows, or where it doesn't (8-byte elements
    too). Products through the blocks (a partial last one) match: f32 with and without an
    epilogue, bf16 (widened into the copies of A and B) with one. (BLIS's order, which
    comes first where it applies, is off.)"""
    monkeypatch.setattr(mm, "blocks_of_rows", lambda: False)
    monkeypatch.setattr(mm, "blocks_for_few_rows", lambda: True)
    mm.layout.cache_clear()
    try:
        long_k = 4 * mm.PANEL_BYTES // (4 * mm.PANEL)  # a panel of PANEL columns: 4× the bytes
        few, strip = mm.FEW_ROWS, mm.register_tile()[0]
        wide = 2 * mm.PANEL_BYTES // (mm.BLOCK_DEPTH * mm.PANEL)  # bytes an element: overflows
        for m, k, n, itemsize, depth in [
            (64, long_k, 4096, 4, mm.BLOCK_DEPTH),
            (few, long_k, 1000, 4, mm.BLOCK_DEPTH),
            (2 * strip, mm.BLOCK_DEPTH + 1, 4096, wide, mm.BLOCK_DEPTH),
            (64, long_k // 4, 4096, 8, mm.BLOCK_DEPTH),  # f64 overflows: the bytes count
            (64, long_k // 4, 4096, 4, 0),  # where f32 fits
            (few + 1, long_k, 4096, 4, 0),  # more rows: the sums between blocks grow
            (2 * strip - 1, long_k, 4096, 4, 0),  # one row strip: nothing reread
            (64, 64, 4096, 4, 0),  # the panel fits
            (2 * strip, mm.BLOCK_DEPTH, 4096, wide, 0),  # one block is all of k
            (few, long_k, 3, 4, 0),  # rows of A shared: no panels to block
        ]:
            assert mm.layout(m, k, n, itemsize, 2)[2] == depth, (m, k, n, itemsize)
        monkeypatch.setattr(mm, "blocks_for_few_rows", lambda: False)
        mm.layout.cache_clear()
        assert mm.layout(64, long_k, 4096, 4, 2)[2] == 0
        monkeypatch.setattr(mm, "blocks_for_few_rows", lambda: True)
        mm.layout.cache_clear()
        m, k, n = 61, long_k + 3, 300  # (the last block partial)
        assert mm.layout(m, k, n, 4, 1)[2] == mm.BLOCK_DEPTH
        bf16 = dtype == "bfloat16"
        kind = pytest.importorskip("ml_dtypes").bfloat16 if bf16 else np.float32
        a, b = (x.astype(kind) for x in _operands(m, k, n))
        bias = keyed_rng("bias", n).standard_normal(n).astype(kind)
        before = kd.get_num_threads()
        kd.set_num_threads(1)  # (the layout of one thread; the blocks' sums are the same)
        try:
            tol = 2e-2 if bf16 else 1e-4
            got = mm.matmul(a, b, bias=bias, activation="gelu").astype(np.float64)
            want = mm.reference(a, b, bias, "gelu")
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
            if not bf16:
                got = mm.matmul(a, b).astype(np.float64)
                np.testing.assert_allclose(got, mm.reference(a, b), rtol=tol, atol=tol)
        finally:
            kd.set_num_threads(before)
    finally:
        mm.layout.cache_clear()


def test_rows_of_a_that_alias_are_copied_first(monkeypatch) -> None:
    """A whose rows lie a multiple of 4 KiB apart runs the kernel that copies its tile's
    rows first (pack_a first), any other A the one that reads them in place; bf16 (which
    always copies them) and one column don't ask. Products through it match, odd shapes
    and the epilogue included."""
    chosen = []
    real = mm.kernel_for
    monkeypatch.setattr(mm, "kernel_for", lambda *args: chosen.append(args[4]) or real(*args))
    wide = keyed_rng("aliased").standard_normal((40, 2 * mm.ALIASED_ROWS // 4), np.float32)
    for m, k, n, rows in [(7, 37, 23, wide[:7, :37]), (13, 300, 5, wide[::2][:13, :300])]:
        a, b = rows, _operands(m, k, n)[1]
        _close(mm.matmul(a, b), a, b)
        assert chosen[-1] is True
        bias = keyed_rng("bias", n).standard_normal(n).astype(np.float32)
        _close_epilogue(mm.matmul(a, b, bias=bias, activation="gelu"), a, b, bias, "gelu")
        assert chosen[-1] is True
        _close(mm.matmul(a.copy(), b), a, b)
        assert chosen[-1] is False
    assert not mm.aliased_rows(wide[:5, :1])
    assert mm.aliased_rows(wide[:5, :2]) and not mm.aliased_rows(wide[:5, 1:].T)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = wide.astype(ml_dtypes.bfloat16)[:9, :70]  # (rows 4 KiB apart)
    b = _operands(9, 70, 40)[1].astype(ml_dtypes.bfloat16)
    mm.matmul(a, b)
    assert mm.aliased_rows(a) and chosen[-1] is False


def test_large_products_copy_blocks_of_rows_of_a(monkeypatch) -> None:
    """BLIS's order (blocks of BLOCK_ROWS rows of A and BLOCK_DEPTH rows of B, a panel of
    BLOCKED_PANELS a core) for two register tiles' rows and two blocks of k or more,
    where _machine says so; not for fewer, too many cores for the columns, bf16 pairs
    (rows_copied False), or where _machine says no. Products through it match: partial
    blocks of rows, of k and of columns, with and without the epilogue, A strided, on one
    thread too, and bf16 widened as it is copied (where it isn't run as pairs)."""
    monkeypatch.setattr(mm, "blocks_of_rows", lambda: True)
    mm.layout.cache_clear()
    try:
        rows, depth = 2 * mm.register_tile()[0], 2 * mm.BLOCK_DEPTH
        assert mm.layout(rows, depth, 700, 4, 2) == ("panels", 512, depth // 2, mm.BLOCK_ROWS)
        assert mm.layout(rows, depth, 1536, 4, 2).panel == 256  # 3 panels a core, not 2 and 1
        assert mm.layout(rows, depth, 4096, 4, 1).panel == max(mm.BLOCKED_PANELS)
        for m, k, n, threads, copied in [
            (rows - 1, depth, 700, 2, True),
            (rows, depth - 1, 700, 2, True),
            (rows, depth, 700, 8, True),  # 3 panels at most: fewer than the cores
            (rows, depth, 700, 2, False),
        ]:
            assert mm.layout(m, k, n, 4, threads, rows_copied=copied).block_rows == 0
        chosen = []
        real = mm.kernel_for
        monkeypatch.setattr(mm, "kernel_for", lambda *args: chosen.append(args) or real(*args))
        m, k, n = mm.BLOCK_ROWS + 7, depth + 3, 300  # (two blocks of rows, the last partial)
        big, b = _operands(2 * m, 2 * k, n)[0], _operands(m, k, n)[1]
        a = big[::2, ::2]
        bias = keyed_rng("blocks of rows", n).standard_normal(n).astype(np.float32)
        _close(mm.matmul(a, b), a, b)
        _close_epilogue(mm.matmul(a, b, bias=bias, activation="gelu"), a, b, bias, "gelu")
        before = kd.get_num_threads()
        kd.set_num_threads(1)
        try:
            _close(mm.matmul(a, b), a, b)
        finally:
            kd.set_num_threads(before)
        assert [args[-1] for args in chosen] == [mm.BLOCK_ROWS] * 3
        ml_dtypes = pytest.importorskip("ml_dtypes")
        a16, b16 = a.astype(ml_dtypes.bfloat16), b.astype(ml_dtypes.bfloat16)
        got = mm.matmul(a16, b16).astype(np.float64)
        want = mm.reference(a16, b16)
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)  # (a bf16 product)
        assert chosen[-1][-1] == (0 if mm.bf16_pairs_first()[0] else mm.BLOCK_ROWS)
        monkeypatch.setattr(mm, "blocks_of_rows", lambda: False)
        mm.layout.cache_clear()
        assert mm.layout(m, k, n, 4, 2).block_rows == 0
    finally:
        mm.layout.cache_clear()


@pytest.mark.parametrize("plain", [True, False])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 255, 33), (13, 257, 129), (31, 600, 200)])
def test_blocks_of_k_on_every_edge(plain: bool, m: int, k: int, n: int) -> None:
    """k in blocks of 256 (the last one partial, or the only one), the sums of a panel of
    C kept across them and the epilogue after the last: the tunable depth."""
    a, b = _operands(m, k, n)
    kernel = mm.kernel_for(plain, "panels", mm.PANEL, 256)
    c = np.full((m, n), np.nan, np.float32)
    if plain:
        kernel(a, b, c)
        _close(c, a, b)
        return
    bias = keyed_rng("blocks bias", m, k, n).standard_normal(n, np.float32)
    kernel(a, b, bias, c, "gelu", True)
    want = mm.reference(a, b, bias, "gelu")
    np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("panel", mm.PANEL_WIDTHS)
def test_every_panel_width(panel: int) -> None:
    """Each panel width `matmul` may pick, with the epilogue and without, on shapes whose
    columns end in a partial panel and a partial register tile."""
    for m, k, n in [(1, 3, 1), (37, 70, panel + 45), (13, 5, 2 * panel + 1)]:
        a, b = _operands(m, k, n)
        c = np.full((m, n), np.nan, np.float32)
        mm.kernel_for(True, "panels", panel)(a, b, c)
        _close(c, a, b)
        bias = keyed_rng("bias", n).standard_normal(n, np.float32)
        mm.kernel_for(False, "rows", panel)(a, b, bias, c, "relu", True)
        want = mm.reference(a, b, bias, "relu")
        np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("activation", mm.ACTIVATIONS)
def test_epilogue_on_every_edge(activation: str | None) -> None:
    for m, k, n in [(1, 1, 1), (9, 17, 65), (130, 67, 45), (31, 129, 127)]:
        a, b = _operands(m, k, n)
        bias = keyed_rng("bias", n).standard_normal(n, np.float32)
        for kernel in (mm.matmul_kernel, mm.matmul_rows_kernel):
            c = np.full((m, n), np.nan, np.float32)
            kernel(a, b, bias, c, activation, True)
            want = mm.reference(a, b, bias, activation)
            np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_batched_epilogue() -> None:
    rng = keyed_rng("batched")
    a = rng.standard_normal((3, 33, 40), np.float32)
    b = rng.standard_normal((3, 40, 70), np.float32)
    bias = rng.standard_normal(70, np.float32)
    got = mm.matmul(a, b, bias=bias, activation="relu")
    want = np.stack([mm.reference(a[t], b[t], bias, "relu") for t in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(signature=np.matmul.signature, max_side=9))
def test_numpy_shape_rules(shapes: hnp.BroadcastableShapes) -> None:
    """Vectors, matrices and batches broadcast against each other, as np.matmul does."""
    (sa, sb), want_shape = shapes.input_shapes, shapes.result_shape
    rng = keyed_rng("shapes", sa, sb)
    a, b = rng.standard_normal(sa, np.float32), rng.standard_normal(sb, np.float32)
    got = mm.matmul(a, b)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    assert np.shape(got) == want.shape == want_shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_vector_operands_take_the_bias_and_activation() -> None:
    rng = keyed_rng("vectors")
    a, b = rng.standard_normal((5, 40), np.float32), rng.standard_normal((40, 9), np.float32)
    bias = rng.standard_normal(9, np.float32)
    got = mm.matmul(a[0], b, bias=bias, activation="gelu")
    np.testing.assert_allclose(got, mm.reference(a[:1], b, bias, "gelu")[0], rtol=1e-4, atol=1e-4)
    got = mm.matmul(a, b[:, 0], bias=bias[:1], activation="silu")
    want = mm.reference(a, b[:, :1], bias[:1], "silu")[:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    dot = mm.matmul(a[0], b[:, 0])
    assert np.ndim(dot) == 0
    np.testing.assert_allclose(dot, a[0].astype(np.float64) @ b[:, 0], rtol=1e-4)


def test_batches_against_one_b_run_as_one_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """[..., m, k] @ [k, n]: the batches' rows are one matrix (one call packing b once)
    where a and the result merge without a copy; a batch per call where they don't."""
    calls: list[tuple[int, ...]] = []
    real = mm._product_of_matrices
    monkeypatch.setattr(
        mm, "_product_of_matrices", lambda a, *rest: calls.append(a.shape) or real(a, *rest)
    )
    rng = keyed_rng("merged")
    a, b = rng.standard_normal((2, 3, 5, 40), np.float32), rng.standard_normal((40, 9), np.float32)
    want = a.astype(np.float64) @ b
    np.testing.assert_allclose(mm.matmul(a, b), want, rtol=1e-4, atol=1e-4)
    assert calls == [(30, 40)]
    calls.clear()
    every_other = a[:, ::2]  # batches that are not one matrix's rows
    np.testing.assert_allclose(mm.matmul(every_other, b), want[:, ::2], rtol=1e-4, atol=1e-4)
    assert calls == [(5, 40)] * 4


@pytest.mark.parametrize(
    "sa,sb", [((2, 3, 0), (0, 4)), ((2, 3, 5), (5, 0)), ((2, 3, 0), (0,)), ((0, 3, 5), (5, 2))]
)
def test_empty_batched_products(sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    """Sums over k = 0 are zeros; no columns or no batches, an empty result."""
    a, b = np.ones(sa, np.float32), np.ones(sb, np.float32)
    got = mm.matmul(a, b)
    assert got.shape == np.matmul(a, b).shape and not got.any()


def test_vector_dot_vector_into_out_and_batches_into_float64() -> None:
    rng = keyed_rng("out dtypes")
    v, w = rng.standard_normal(50, np.float32), rng.standard_normal(50, np.float32)
    out = np.full((), np.nan, np.float32)
    assert mm.matmul(v, w, out=out) is out
    np.testing.assert_allclose(out, v.astype(np.float64) @ w, rtol=1e-5)
    a, b = rng.standard_normal((3, 4, 9), np.float32), rng.standard_normal((9, 5), np.float32)
    wide = np.full((3, 4, 5), np.nan)
    assert mm.matmul(a, b, out=wide) is wide
    np.testing.assert_allclose(wide, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_broadcast_batches_write_out_in_place() -> None:
    rng = keyed_rng("broadcast out")
    a, b = (
        rng.standard_normal((3, 1, 6, 20), np.float32),
        rng.standard_normal((4, 20, 7), np.float32),
    )
    out = np.full((3, 4, 6, 7), np.nan, np.float32)
    assert mm.matmul(a, b, out=out) is out
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
    square = rng.standard_normal((2, 8, 8), np.float32)
    want = square.astype(np.float64) @ square[0]
    mm.matmul(square, square[0], out=square)  # out is an input: computed apart, then copied
    np.testing.assert_allclose(square, want, rtol=1e-4, atol=1e-4)


def test_float64() -> None:
    a, b = _operands(37, 50, 70)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    got = mm.matmul(a64, b64)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, a64 @ b64, rtol=1e-12, atol=1e-12)


REGISTER = vector_register()  # zmm (AVX-512: 16 f32 lanes, 32 registers) or ymm (AVX2)
LANES = 16 if REGISTER == "zmm" else 8
TALLER = [{"mr": 12, "nr": 32}, {"mr": 12, "nr": 16}] if LANES == 16 else [{"mr": 4, "nr": 16}]


@pytest.mark.parametrize("tile_shape", [None, *TALLER])
def test_inner_loop_is_register_blocked(tile_shape) -> None:
    """The micro-kernel: per k, mr rows × nr/LANES registers of C updated by broadcast-A
    × load-B FMAs, the accumulators in registers (no stack traffic inside the loop; none
    of vectors in the edges' tiles) — for the default tile of this CPU's registers and
    for other ones (with AVX-512, taller: 24 of the 32 zmm registers held), and in the
    edge tile of columns too (masked lanes)."""
    a = np.ones((64, 64), np.float32)
    chosen = dict(mm.product_kernel.schedule_of(a, a, a).chosen)
    chosen.update(tile_shape or {})
    tile = chosen["mr"] * chosen["nr"] // LANES
    loops = asm_loops(build_config(mm.product_kernel, chosen, a, a, a)[0].compiled.asm)
    fmas = [[i for i in body if re.match(rf"vfmadd\d+ps\s.*%{REGISTER}", i)] for body in loops]
    best = max(range(len(loops)), key=lambda n: (len(fmas[n]), -len(loops[n])))  # full tile
    body = loops[best]
    assert len(fmas[best]) >= tile and len(fmas[best]) % tile == 0, body
    # the tile loops: LLVM may unroll the full tiles' k loop and not the edge's (znver4)
    tiles = [loops[n] for n in range(len(loops)) if fmas[n] and len(fmas[n]) % tile == 0]
    # no vector spills or accumulator reloads (a general register's may be: the loop's
    # bound, one load per 32 FMAs, is reloaded on a Zen 4 beside the edge rows' copies)
    assert not [i for i in body if "(%rsp" in i and "mm" in i], body
    if LANES == 16:  # (AVX2 has no mask registers: its edge blends every FMA, and spills)
        assert any("{%k" in i for t in tiles for i in t), tiles  # the masked edge of columns
        for t in tiles:  # the edges' tiles: no vector one (a pointer's reload is allowed)
            assert not [i for i in t if "(%rsp" in i and "mm" in i], t
    accumulators = {re.findall(rf"%{REGISTER}\d+", i)[-1] for i in fmas[best]}
    assert len(accumulators) == tile, body
    broadcasts = sum("vbroadcastss" in i or f"{{1to{LANES}}}" in i for i in body)
    assert broadcasts >= len(fmas[best]) * LANES // chosen["nr"], body  # mr per k


def test_edge_rows_are_copies_of_the_tile_row_not_a_loop() -> None:
    """The rows past the last full tile of mr rows run as a copy of the tile's row per
    row they may have (each under a test of m), not as a loop over rows: a loop indexes
    its accumulators at run time, in memory (the edge ran 1.5× slower per row)."""
    a = np.ones((64, 64), np.float32)
    mr = dict(mm.product_kernel.schedule_of(a, a, a).chosen)["mr"]
    text = str(mm.product_kernel.lowered(a, a, a))
    rows_left = f"a.shape[0] - io * {mr}"
    assert f"if {rows_left} < {mr}:" in text
    assert all(f"if {t} < {rows_left}:" in text for t in range(mr - 1))
    assert not re.search(rf"for .* in range\({re.escape(rows_left)}\)", text), text


# ------------------------------------------------------------------ bf16 operands


def _bf16_operands(m: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a, b = _operands(m, k, n)
    return a.astype(ml_dtypes.bfloat16), b.astype(ml_dtypes.bfloat16)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_bf16_operands_on_every_edge(kernel: kd.KernelFunction, m: int, k: int, n: int) -> None:
    """bf16 A and B (k in pairs, B's rows interleaved), f32 sums: exact products of the
    bf16 values, so only the order of the f32 additions differs from float64."""
    a, b = _bf16_operands(m, k, n)
    c = np.full((m, n), np.nan, np.float32)
    kernel(a, b, c)
    _close(c, a, b)


@pytest.mark.parametrize("pairs", [True, False])
def test_bf16_sums_in_pairs_or_widened(pairs: bool) -> None:
    """Both bf16 paths on any CPU: k in pairs with B's rows interleaved (the "vnni" copy,
    whether the CPU has vdpbf16ps or not) and the copies widened to f32, on edge tiles."""
    for m, k, n in [(1, 1, 1), (13, 7, 33), (70, 129, 67)]:
        a, b = _bf16_operands(m, k, n)
        c = np.full((m, n), np.nan, np.float32)
        run_config(mm.product_kernel, {"bf16_pairs": pairs}, a, b, c)
        _close(c, a, b)


def test_bf16_matmul_returns_bf16_and_fuses_the_epilogue() -> None:
    a, b = _bf16_operands(31, 129, 127)
    bias = keyed_rng("bias", 127).standard_normal(127, np.float32)
    got = mm.matmul(a, b, bias=bias, activation="gelu")
    assert got.dtype == a.dtype
    want = mm.reference(a, b, bias.astype(a.dtype), "gelu")
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-2, atol=1e-2)
    batched = mm.matmul(np.stack([a, a[::-1]]), b, out=np.empty((2, 31, 127), np.float32))
    _close(batched[1], a[::-1], b)


def test_rows_of_a_reach_the_kernel_contiguous(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whose k is strided (a transposed array) is copied once: the kernels read A's
    rows whole (on AMX a strided A ran the product as scalar code, 240× slower)."""
    contiguous = []
    real = mm.kernel_for

    def spy(*args):
        kernel = real(*args)

        def call(a, *rest):
            contiguous.append(a.strides[-1] == a.itemsize)
            kernel(a, *rest)

        return call

    monkeypatch.setattr(mm, "kernel_for", spy)
    a, b = _bf16_operands(40, 33, 20)
    transposed = np.ascontiguousarray(a.T).T  # a's values, k strided
    _close(mm.matmul(transposed, b, out=np.empty((40, 20), np.float32)), a, b)
    assert contiguous == [True]


@pytest.mark.skipif(
    not dict(__import__("llvmlite.binding").binding.get_host_cpu_features()).get("avx512bf16"),
    reason="this CPU has no AVX512-BF16",
)
def test_bf16_inner_loop_uses_dot_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per pair of k: mr broadcasts of A's pair, nr/16 loads of B, mr·nr/16 vdpbf16ps
    into the register tile; no FMAs and no stack traffic in the loop. (The schedule as on
    a CPU without AMX: with it, bf16 products run on tiles, tests/targets/cpu/test_amx.py.)"""
    monkeypatch.setitem(importlib.import_module("kdsl.kernel").TILE_INSTRUCTIONS, "cpu", frozenset)
    kernel = kd.kernel(mm._plain, name="product_on_vectors")
    kernel.schedule(kd.cpu)(mm._blocked("panels", mm.PANEL))
    a, _ = _bf16_operands(64, 64, 64)
    c = np.empty((64, 64), np.float32)
    chosen = kernel.schedule_of(a, a, c).chosen
    tile = chosen["mr"] * chosen["nr"] // 16
    loops = asm_loops(kernel.asm(a, a, c))
    dots = [[i for i in body if i.startswith("vdpbf16ps")] for body in loops]
    best = max(range(len(loops)), key=lambda n: len(dots[n]))
    body = loops[best]
    assert len(dots[best]) == tile, body
    assert not [i for i in body if "(%rsp" in i or i.startswith("vfmadd")], body


def test_bf16_without_dot_products_widens_in_the_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the CPU has no bf16 dot instruction (the schedule's first choice there), the
    packed panel of B and the tile's rows of A hold f32: the register tile's loop is the
    f32 one, with no widening in it (widened as it read, a Zen 2 ran it at 0.48× f32)."""
    monkeypatch.setitem(importlib.import_module("kdsl.kernel").TILE_INSTRUCTIONS, "cpu", frozenset)
    monkeypatch.setattr(mm, "bf16_pairs_first", lambda: [False, True])
    kernel = kd.kernel(mm._plain, name="product_widened")
    kernel.schedule(kd.cpu)(mm._blocked("panels", mm.PANEL))
    a, b = _bf16_operands(70, 129, 67)
    c = np.full((70, 67), np.nan, np.float32)
    kernel(a, b, c)
    _close(c, a, b)
    scheduled = kernel.schedule_of(a, b, c)
    copies = {buf.name: buf.dtype for buf in scheduled.kernel.buffers if ".c" in buf.name}
    assert set(copies.values()) == {kd.f32} and {"a.c", "b.c"} <= copies.keys(), copies
    loops = asm_loops(kernel.asm(a, b, c))
    body = max(loops, key=lambda lines: sum(i.startswith("vfmadd") for i in lines))
    widening = [i for i in body if i.startswith(("vpmovzx", "vpslld", "vpunpck", "vpshufb"))]
    assert sum(i.startswith("vfmadd") for i in body) >= 8 and not widening, body


# ------------------------------------------------------------------ one row: x @ w

vm = importlib.import_module("kdsl.kernels.vecmat")
EDGES = [1, 2, 15, 16, 17, 31, 257, 1000]


def _row(k: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [1, k], w [k, n] and a bias [n], fresh for each shape."""
    rng = keyed_rng("row", k, n)
    x, w = rng.standard_normal((1, k), np.float32), rng.standard_normal((k, n), np.float32)
    return x, w, rng.standard_normal(n, np.float32)


def _close_epilogue(got, x, w, bias=None, activation=None) -> None:
    want = mm.reference(x, w, bias, activation)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


def _one_row_calls() -> int:
    return vm.vecmat_kernel.stats()["calls"]


@pytest.mark.parametrize("k", [0, *EDGES])
def test_one_row_on_every_edge(k: int) -> None:
    """x @ w for x of one row runs vecmat (n = 1 without an epilogue: matvec's dot)."""
    for n in EDGES:
        x, w, _ = _row(k, n)
        calls = _one_row_calls()
        _close(mm.matmul(x, w), x, w)
        assert _one_row_calls() == calls + (n > 1)


@pytest.mark.parametrize("activation", mm.ACTIVATIONS)
def test_one_row_epilogue(activation: str | None) -> None:
    """Bias and activation fused; with k = 0 the result is activation(bias), or zeros."""
    for k, n in [(0, 7), (1, 1), (17, 33), (100, 257), (1000, 31)]:
        x, w, bias = _row(k, n)
        for b in (bias, None):
            got = mm.matmul(x, w, bias=b, activation=activation)
            _close_epilogue(got, x, w, b, activation)
    empty = mm.matmul(np.ones((1, 0), np.float32), np.ones((0, 5), np.float32))
    np.testing.assert_array_equal(empty, np.zeros((1, 5)))


# (with a bias, activation): the epilogues that the tests of layouts and shapes share
ONE_ROW_EPILOGUES = [(False, None), (True, "silu")]


def _layouts(w: np.ndarray) -> list[np.ndarray]:
    """w's values in other layouts: C order, Fortran order (unit stride down k, as a
    transposed [n, k] weight), rows reversed, columns reversed, a strided view."""
    k, n = w.shape
    big = np.zeros((2 * k + 1, 3 * n), np.float32)
    big[1::2, ::3] = w
    reversed_rows = np.ascontiguousarray(w[::-1])[::-1]
    reversed_columns = np.ascontiguousarray(w[:, ::-1])[:, ::-1]
    return [w, np.asfortranarray(w), reversed_rows, reversed_columns, big[1::2, ::3]]


def test_one_row_strides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any strides of w, x and out, with and without the epilogue; a w whose columns
    are contiguous (the transpose of a row-major [n, k]) runs matvec's row streams.
    The shapes in one test: their strided kernels (5-8 s to compile each) are shared,
    where a test a shape compiled them again on whichever worker ran it."""
    streams = []
    real = vm.matvec

    def spy(w, x, out=None):
        streams.append(w.shape)
        return real(w, x, out=out)

    monkeypatch.setattr(vm, "matvec", spy)
    for k, n in [(1, 17), (31, 2), (257, 100), (1000, 257)]:
        x, w, bias = _row(k, n)
        wide = np.zeros((1, 2 * k), np.float32)
        wide[:, ::2] = x
        out = np.full((3, 2 * n), np.nan, np.float32)
        for v in _layouts(w):
            np.testing.assert_array_equal(v, w)
            for with_bias, act in ONE_ROW_EPILOGUES:
                b = bias if with_bias else None
                view = out[1:2, ::2]
                streams.clear()
                assert mm.matmul(wide[:, ::2], v, out=view, bias=b, activation=act) is view
                _close_epilogue(view, x, w, b, act)
                assert streams == ([(n, k)] if v.flags.f_contiguous and k > 1 else [])


def test_one_row_reads_rows_that_descend_in_memory_in_ascending_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """x @ w[::-1] (w's rows descending in memory) runs as x[::-1] @ w: the kernel reads
    the rows in memory order; the product is the same."""
    seen = []
    real = vm.vecmat_kernel

    def spy(xs, ws, x, w, *rest):
        seen.append((ws.strides[1], w.strides[0]))
        return real(xs, ws, x, w, *rest)

    monkeypatch.setattr(vm, "vecmat_kernel", spy)
    for k, n in [(3, 5), (257, 100)]:
        x, w, bias = _row(k, n)
        down = w[::-1]
        seen.clear()
        got = mm.matmul(x, down, bias=bias, activation="relu")
        _close_epilogue(got, x, down, bias, "relu")
        assert seen and all(rows >= 0 and left >= 0 for rows, left in seen)


def test_one_row_out_that_is_an_input() -> None:
    """out= one of the inputs (x @ w into x, w square): computed apart, copied over."""
    x, w, bias = _row(40, 40)
    want = mm.reference(x, w, bias, "gelu")
    got = mm.matmul(x, w, out=x, bias=bias, activation="gelu")
    assert got is x
    np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_one_row_on_any_thread_count(threads: int) -> None:
    """The rows are cut into parts by the thread count (with rows left over): the same
    answer from each cut."""
    before = kd.get_num_threads()
    kd.set_num_threads(threads)
    try:
        for k, n in [(33, 70), (1000, 257), (4099, 17)]:
            x, w, bias = _row(k, n)
            assert vm.parts_for(k, threads) in (0, *range(2, vm.PARTS_PER_THREAD * threads + 1))
            _close_epilogue(mm.matmul(x, w, bias=bias, activation="relu"), x, w, bias, "relu")
    finally:
        kd.set_num_threads(before)


def _cut(x: np.ndarray, w: np.ndarray, parts: int) -> tuple[np.ndarray, ...]:
    """vecmat_kernel's arguments for x @ w cut into `parts` parts (no epilogue)."""
    k, n = w.shape
    rows = k // parts if parts else 0
    split = parts * rows
    xs, ws = x[:split].reshape(parts, rows), w[:split].reshape(parts, rows, n)
    return xs, ws, x[split:], w[split:], np.zeros(1, np.float32), np.full(n, np.nan, np.float32)


def _small_cut() -> tuple[np.ndarray, ...]:
    x, w, _ = _row(64, 16)
    return _cut(x[0], w, 2)


@pytest.mark.slow(sample=3)
@pytest.mark.parametrize("config", each_choice(vm.vecmat_kernel, *_small_cut()), ids=str)
def test_one_row_every_choice_of_the_search_space(config: dict[str, object]) -> None:
    """Parts of rows not a multiple of the rows read together, rows left over, columns
    not a multiple of a segment or of the vectors."""
    for k, n, parts in [(1, 1, 0), (45, 100, 4), (1003, 2100, 8), (70, 8200, 3), (20, 33, 4)]:
        x, w, _ = _row(k, n)
        args = _cut(x[0], w, parts)
        run_config(vm.vecmat_kernel, config, *args)
        _close(args[-1][np.newaxis], x, w)


@pytest.mark.slow
@settings(max_examples=sweep(25, 10), deadline=None)
@given(
    k=st.integers(0, 700),
    n=st.integers(1, 700),
    layout=st.integers(0, 4),
    epilogue=st.sampled_from(ONE_ROW_EPILOGUES),
    seed=st.integers(0, 2**16),
)
def test_one_row_random_shapes(
    k: int, n: int, layout: int, epilogue: tuple[bool, str | None], seed: int
) -> None:
    """Random shapes in every layout, with the epilogues test_one_row_strides compiles
    (each activation and bias is test_one_row_epilogue's: a spec compiles in 2-6 s, and
    each of eight epilogues in three layout classes made this test the suite's slowest)."""
    with_bias, activation = epilogue
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, k), np.float32)
    w = _layouts(rng.standard_normal((k, n), np.float32))[layout]
    bias = rng.standard_normal(n, np.float32) if with_bias else None
    _close_epilogue(mm.matmul(x, w, bias=bias, activation=activation), x, w, bias, activation)


def test_one_row_of_other_dtypes() -> None:
    """bf16 operands and f64 ones keep the GEMM path; f32 sums into an f64 out too."""
    a, b = _bf16_operands(1, 129, 127)
    bias = keyed_rng("bias", 127).standard_normal(127, np.float32)
    got = mm.matmul(a, b, bias=bias, activation="gelu")
    assert got.dtype == a.dtype
    want = mm.reference(a, b, bias.astype(a.dtype), "gelu")
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-2, atol=1e-2)
    _close(mm.matmul(a, b, out=np.empty((1, 127), np.float32)), a, b)
    x, w, _ = _row(300, 70)
    np.testing.assert_allclose(mm.matmul(x.astype(np.float64), w), x.astype(np.float64) @ w)
    _close(mm.matmul(x, w, out=np.empty((1, 70), np.float64)), x, w)


def test_one_row_kernel_checks_no_access_where_it_runs() -> None:
    """Every access of the product proven in bounds before its loops start."""
    from kdsl.ir.passes import lower
    from tests.kernels.test_no_run_time_checks import _checked

    x, w, bias = _row(1003, 300)
    args = (*_cut(x[0], w, 8)[:4], bias, np.empty(300, np.float32), 3, True)
    specs = vm.vecmat_kernel._specs(args, {})[0]
    assert not sorted(set(_checked(lower(vm.vecmat_kernel.trace(specs)))))


@pytest.mark.skipif(
    not dict(__import__("llvmlite.binding").binding.get_host_cpu_features()).get("avx512f"),
    reason="the vectors are sized for AVX-512",
)
def test_one_row_inner_loop_stores_the_sums_once_per_rows() -> None:
    """A part's loop: per 64 columns, `rows` rows × 4 zmm FMAs, the partial sums loaded
    and stored once for all of them."""
    x, w, _ = _row(1024, 1000)
    args = _cut(x[0], w, 8)
    chosen = dict(vm.vecmat_kernel.schedule_of(*args).chosen)
    loops = asm_loops(build_config(vm.vecmat_kernel, chosen, *args)[0].compiled.asm)
    fmas = [[i for i in body if re.match(r"vfmadd\d+ps\s.*%zmm", i)] for body in loops]
    best = max(range(len(loops)), key=lambda n: (len(fmas[n]), -len(loops[n])))  # full tile
    body = loops[best]
    stores = [i for i in body if re.match(r"vmov\w+\s+%zmm\d+, ", i)]
    assert stores and len(fmas[best]) == chosen["rows"] * len(stores), body
