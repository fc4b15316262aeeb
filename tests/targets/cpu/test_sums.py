"""Long float sums on the CPU are blocked (kdsl/targets/cpu/partials.py): their error
stays within a small factor of NumPy's pairwise sum's at any length, where one vector of
partials per lane over the whole axis lost three to four digits (10^7 times 0.1 in f32:
998501.4 for 1000000.015; NumPy 1000000.1). Short sums keep the order they had."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import kdsl as kd
from kdsl.targets.cpu.partials import BLOCK, COPIES, FANOUT, LEVELS

RNG = np.random.default_rng(20240611)
N = 10_000_000


def _data(kind: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    if kind == "tenths":  # the probe's: every rounding error has the same sign
        return np.full(shape, 0.1, dtype)
    return RNG.random(shape, dtype=np.float64).astype(dtype)  # positive, in [0, 1)


def _assert_accurate(got: np.ndarray, x: np.ndarray, axis: int | None = None) -> None:
    """Within 1e-6 of the exact sum (f32; 1e-14 in f64) and within 8x NumPy's own error
    (plus 4 ulp). The unblocked code was off by 2e-4 to 3e-3 on the probe's tenths at
    these lengths (f64: 2.5e-12), though within 4e-7 on random data, whose rounding
    errors cancel."""
    exact = x.astype(np.float64).sum(axis=axis)
    computed = np.float32 if x.dtype.itemsize == 2 else x.dtype  # (f16, bf16: in f32)
    mine = np.abs(got.astype(np.float64) - exact) / np.abs(exact)
    numpy = np.abs(x.sum(axis=axis, dtype=computed).astype(np.float64) - exact) / np.abs(exact)
    eps = np.finfo(computed).eps
    assert np.all(mine <= 8 * numpy + 4 * eps), (mine, numpy)
    assert np.all(mine < (1e-6 if computed == np.float32 else 1e-14)), mine


@kd.kernel
def total(x, out):
    i = kd.indices(x.shape[0])
    out[()] = kd.sum(x[i], over=i)


@kd.kernel
def row_sums(x, y):
    r, j = kd.indices(x.shape[0], x.shape[1])
    y[r] = kd.sum(x[r, j], over=j)


@pytest.mark.parametrize("kind", ["tenths", "uniform"])
def test_a_long_total_is_as_accurate_as_numpys(kind):
    """The probe's case: the default schedule's one vectorized reduction loop."""
    x = _data(kind, (N,))
    out = np.zeros((), np.float32)
    total(x, out)
    _assert_accurate(out, x)
    if kind == "tenths":
        assert abs(float(out) - 1_000_000.015) < 0.2  # (the old code's: 998501.4)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, ml_dtypes.bfloat16])
def test_f64_f16_and_bf16_totals_are_blocked_too(dtype):
    """f64 (8 lanes) like f32; f16 and bf16 sum in f32, here into an f32 result."""
    x = _data("tenths", (N,), dtype)
    out = np.zeros((), np.float64 if dtype == np.float64 else np.float32)
    total(x, out)
    _assert_accurate(out, x)


@pytest.mark.parametrize("kind", ["tenths", "uniform"])
def test_long_rows_are_as_accurate_as_numpys(kind):
    x = _data(kind, (3, N // 3))
    y = np.zeros(3, np.float32)
    row_sums(x, y)
    _assert_accurate(y, x, axis=1)


def test_rows_on_several_threads_are_as_accurate():
    """Each thread's rows are blocked sums of their own."""
    parallel = kd.kernel(row_sums.fn, name="parallel_row_sums")

    @parallel.schedule(kd.cpu)
    def _(s):
        s.vectorize("j", 16)
        s.parallelize("r", threads=2)

    x = _data("tenths", (8, N // 8))
    y = np.zeros(8, np.float32)
    parallel(x, y)
    _assert_accurate(y, x, axis=1)


def test_a_sum_over_two_axes_is_as_accurate():
    """over=(i, j): the vectors of partials are carried across i, which runs in strips of
    as many rows as fill a block (one row where a row is longer than a block)."""

    @kd.kernel
    def both(x, out):
        i, j = kd.indices(x.shape[0], x.shape[1])
        out[()] = kd.sum(x[i, j], over=(i, j))

    for shape in [(1000, 10_000), (100_000, 100)]:
        x = _data("tenths", shape)
        out = np.zeros((), np.float32)
        both(x, out)
        _assert_accurate(out, x.reshape(-1))


@pytest.mark.parametrize("tile", [16, 1000, 4096])
def test_split_tiles_fill_the_blocks_of_the_row(tile):
    """A split reduction with its tiles vectorized: the loop over the tiles runs in strips
    of BLOCK tiles of one vector, or of one tile of 63 vectors, blocked itself; the last,
    partial tile's loop counts its vectors (2887 elements of a 4096 tile: two blocks)."""
    split = kd.kernel(row_sums.fn, name=f"split_row_sums_{tile}")

    @split.schedule(kd.cpu)
    def _(s):
        _, ji = s.split("j", tile)
        s.vectorize(ji, 16)

    x = _data("tenths", (2, N // 2 + 7))
    y = np.zeros(2, np.float32)
    split(x, y)
    _assert_accurate(y, x, axis=1)


def test_a_tile_of_rows_keeps_blocked_sums_per_row():
    """A tile of four rows in the vectorized loop over the columns (a register-blocked
    matrix-vector product's order): their sums are a small array there, and each
    element's partials move up too."""
    tiled = kd.kernel(row_sums.fn, name="row_tile_sums")

    @tiled.schedule(kd.cpu)
    def _(s):
        outer, rows = s.split("r", 4)
        s.reorder(outer, "j", rows)
        s.vectorize("j", 16)

    x = _data("tenths", (5, N // 5))
    y = np.zeros(5, np.float32)
    tiled(x, y)
    assert "sum_j.1[ri] = sum_j.1[ri] + x[ro * 4 + ri, j]" in str(tiled.lowered(x, y))
    _assert_accurate(y, x, axis=1)


def test_a_sum_left_scalar_is_blocked():
    """A column's sum (no unit stride: the default schedule leaves it scalar) runs in
    strips of BLOCK iterations too."""

    @kd.kernel
    def column(x, out):
        i = kd.indices(x.shape[0])
        out[()] = kd.sum(x[i, 0], over=i)

    x = _data("tenths", (N // 2, 2))
    out = np.zeros((), np.float32)
    column(x, out)
    assert "vectorized" not in str(column.lowered(x, out))
    _assert_accurate(out, x[:, 0].copy())


def test_strict_fp_keeps_the_serial_order():
    """strict_fp promises the interpreter's order, one addition after another: no
    blocks (and its error is the serial sum's)."""
    strict = kd.kernel(total.fn, name="strict_total", strict_fp=True)
    x = _data("uniform", (100_000,))
    out = np.zeros((), np.float32)
    strict(x, out)
    assert out == np.add.accumulate(x, dtype=np.float32)[-1]
    serial = np.zeros((), np.float32)
    strict.interpret(x, serial)
    assert out == serial


# ------------------------------------------------------------------------- the order


def _tree(v: np.ndarray) -> np.generic:
    """The lanes added pairwise by halves (LLVM's horizontal sum)."""
    while v.size > 1:
        v = v[: v.size // 2] + v[v.size // 2 :]
    return v[0]


def _vector_row_sum(row: np.ndarray, w: int = 16) -> np.float32:
    """A row's sum in the order of the default schedule's code: COPIES vectors of `w`
    partials (chains) take a trip of COPIES·w elements each, the last full vectors go to
    the first; a chain about to pass BLOCK additions first moves up, the chains added
    pairwise, into LEVELS vectors of sums (each moving up to the next every FANOUT); at
    the end the chains, then each level, then the lanes; the masked tail after."""
    zero = np.float32(-0.0)
    chains = [np.full(w, zero) for _ in range(COPIES)]
    levels = [np.full(w, zero) for _ in range(LEVELS)]
    blocks = count = 0
    trip = COPIES * w
    main, full = row.size // trip * trip, row.size // w * w
    for start in range(0, main, trip):
        if count == BLOCK:  # (the blocks are BLOCK trips long)
            block = (chains[0] + chains[1]) + (chains[2] + chains[3])
            chains, count, blocks = [np.full(w, zero) for _ in range(COPIES)], 0, blocks + 1
            for k in range(LEVELS):
                levels[k] = levels[k] + block
                if k + 1 == LEVELS or blocks % FANOUT ** (k + 1):
                    break
                block, levels[k] = levels[k], np.full(w, zero)
        for c in range(COPIES):
            chains[c] = chains[c] + row[start + c * w : start + (c + 1) * w]
        count += 1
    for start in range(main, full, w):
        chains[0] = chains[0] + row[start : start + w]
    lanes = (chains[0] + chains[1]) + (chains[2] + chains[3])
    for level in levels:
        lanes = lanes + level
    result = np.float32(0) + _tree(lanes)
    if full < row.size:
        tail = np.full(w, zero)
        tail[: row.size - full] += row[full:]
        result = result + _tree(tail)
    return result


@pytest.mark.parametrize("n", [1, 17, 100, 2047, 2048, 2049, 5000, 100_003, 2_100_000])
def test_the_order_of_a_row_sum(n):
    """Bit for bit: rows of up to BLOCK·COPIES·16 = 2048 elements (f32) sum in the order
    they did before blocking; longer ones move each block up, and levels up, as
    documented."""
    x = RNG.standard_normal((2, n)).astype(np.float32)
    y = np.zeros(2, np.float32)
    row_sums(x, y)
    np.testing.assert_array_equal(y, [_vector_row_sum(row) for row in x])


def test_integer_sums_and_maxima_are_not_blocked():
    """Exact or order-free: no blocks, no levels (the code of a sum of i32 and a max)."""
    x = np.arange(100_000, dtype=np.int32)
    out = np.zeros((), np.int32)
    total(x, out)
    assert out == x.sum(dtype=np.int32)  # (wrapping)
    assert ".level" not in total.llvm(x, out, optimized=False)
    floats = np.zeros(100, np.float32), np.zeros((), np.float32)
    assert ".level" in total.llvm(*floats, optimized=False)
    maximum = kd.kernel(lambda x, out: _maximum(x, out), name="maximum")
    assert ".level" not in maximum.llvm(*floats, optimized=False)


def _maximum(x, out):
    i = kd.indices(x.shape[0])
    out[()] = kd.max(x[i], over=i)


def test_a_sum_over_three_axes_is_as_accurate():
    """k vectorized inside j inside i: the chains are carried across i and j, and j runs
    in strips."""

    @kd.kernel
    def three(x, out):
        i, j, k = kd.indices(*x.shape)
        out[()] = kd.sum(x[i, j, k], over=(i, j, k))

    for shape in [(100, 100, 1000), (1000, 1000, 10)]:
        x = _data("tenths", shape)
        out = np.zeros((), np.float32)
        three(x, out)
        _assert_accurate(out, x.reshape(-1))
