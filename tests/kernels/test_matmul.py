"""kdsl.kernels.matmul: every tile edge (sizes 1, primes, not multiples of any tile),
strides, batches and the epilogue against NumPy, under each choice of its search space,
through both of its parallel layouts; and its inner loop in the machine code."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest

import kdsl as kd
from tests.helpers import asm_loops, build_config, keyed_rng, run_config

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


def _one_at_a_time() -> list[dict[str, object]]:
    """Each choice of each param, the others at their first choice."""
    a, b = _operands(4, 4, 4)
    space = mm.product_kernel.search_space(mm.product_kernel.ir(a, b, np.empty((4, 4))).kernel)
    return [{name: choice} for name, choices in space.items() for choice in choices[1:]]


@pytest.mark.parametrize("config", _one_at_a_time(), ids=str)
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
    across, panel = mm.layout(m, k, n, 4, kd.get_num_threads())
    by_rows = mm.kernel_for(True, "rows", panel)
    rows = by_rows.stats()["calls"]
    _close(mm.matmul(a, b), a, b)
    assert by_rows.stats()["calls"] == rows + (across == "rows")
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
    assert mm.panel_width(2048, 4) == mm.PANEL and mm.panel_width(2048, 2) == 2 * mm.PANEL
    for k in (64, 1000, 4096):
        nc = mm.panel_width(k, 4)
        assert k * nc * 4 <= mm.PANEL_BYTES < k * 2 * nc * 4 or nc == max(mm.PANEL_WIDTHS)


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_layout_gives_every_core_work(threads: int) -> None:
    for m, k, n in [(256, 256, 256), (4096, 64, 4096), (4096, 4096, 64), (3, 70, 500)]:
        across, panel = mm.layout(m, k, n, 4, threads)
        assert panel <= mm.panel_width(k, 4)
        panels = -(-n // panel)
        if across == "panels":
            assert panels >= 2 * threads or panel == mm.PANEL
        else:
            assert panels < 2 * threads and m > n


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


def test_float64() -> None:
    a, b = _operands(37, 50, 70)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    got = mm.matmul(a64, b64)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, a64 @ b64, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(
    not dict(__import__("llvmlite.binding").binding.get_host_cpu_features()).get("avx512f"),
    reason="the register tile is sized for AVX-512",
)
@pytest.mark.parametrize("tile_shape", [None, {"mr": 12, "nr": 32}, {"mr": 12, "nr": 16}])
def test_inner_loop_is_register_blocked(tile_shape) -> None:
    """The micro-kernel: per k, mr rows × nr/16 zmm of C updated by broadcast-A ×
    load-B FMAs, the accumulators in registers (no stack traffic inside the loop; none
    of vectors in the edges' tiles) — for
    the default tile and for taller ones (24 of the 32 zmm registers held), and in the
    edge tile of columns too (masked lanes)."""
    a = np.ones((64, 64), np.float32)
    chosen = dict(mm.product_kernel.schedule_of(a, a, a).chosen)
    chosen.update(tile_shape or {})
    tile = chosen["mr"] * chosen["nr"] // 16
    loops = asm_loops(build_config(mm.product_kernel, chosen, a, a, a)[0].compiled.asm)
    fmas = [[i for i in body if re.match(r"vfmadd\d+ps\s.*%zmm", i)] for body in loops]
    best = max(range(len(loops)), key=lambda n: len(fmas[n]))
    body = loops[best]
    assert len(fmas[best]) >= tile and len(fmas[best]) % tile == 0, body
    # the tile loops: LLVM may unroll the full tiles' k loop and not the edge's (znver4)
    tiles = [loops[n] for n in range(len(loops)) if fmas[n] and len(fmas[n]) % tile == 0]
    assert any("{%k" in i for t in tiles for i in t), tiles  # the masked edge of columns
    assert not [i for i in body if "(%rsp" in i], body  # no spills or accumulator reloads
    for t in tiles:  # the edges' tiles: no vector one (a pointer's reload is allowed)
        assert not [i for i in t if "(%rsp" in i and "mm" in i], t
    accumulators = {re.findall(r"%zmm\d+", i)[-1] for i in fmas[best]}
    assert len(accumulators) == tile, body
    broadcasts = sum("vbroadcastss" in i or "{1to16}" in i for i in body)
    assert broadcasts >= len(fmas[best]) * 16 // chosen["nr"], body  # mr per k


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
