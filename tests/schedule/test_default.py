"""The default schedule (DESIGN §3) and the public thread-count setting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.schedule.default import COLUMN_BLOCK, PANEL_TILES, STREAMED_ROWS, TILE_ROWS
from tests.helpers import asm_loops, random_array, vector_register


@kd.kernel
def saxpy(a, x, y):
    i = kd.indices(x.shape[0])
    y[i] = a * x[i] + y[i]


@kd.kernel
def matmul(A, B, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)


def test_a_one_loop_kernel_is_split_vectorized_and_parallelized():
    x = np.ones(10, np.float32)
    steps = str(saxpy.schedule_of(2.0, x, x.copy())).splitlines()[1:]
    assert steps == [
        'io, ii = s.split("i", 8192)',
        's.vectorize("ii", 16)',
        's.parallelize("io")',
    ]
    assert vector_register() in saxpy.asm(2.0, x, x.copy())  # the widest vectors here


def test_matmul_runs_in_register_tiles_vectorized_along_the_unit_stride_loop():
    """TILE_ROWS rows × a vector of the output (8 f64 lanes), the reduction inside the
    columns and the rows unrolled inside it: each vector of B serves the tile's rows.
    The tiles go in panels of PANEL_TILES vectors of columns, each panel of B packed
    whole before the tiles of rows walk it, the panels on threads."""
    a = np.ones((4, 4), np.float64)
    steps = str(matmul.schedule_of(a, a, a.copy())).splitlines()[1:]
    assert steps[7:] == [
        f'io, jo, ii, ji = s.tile("i", "j", {TILE_ROWS}, 8)',
        's.reorder("ji", "k", "ii")',
        's.unroll("ii")',
        's.vectorize("ji", 8)',
        f'joo, joi = s.split("jo", {PANEL_TILES})',
        's.reorder("joo", "io", "joi")',
        's.cache("B", "joo", layout="packed")',
        's.parallelize("joo")',
        's.parallelize("io")',  # (where the panels are too few to go round)
    ]


@kd.kernel
def scaled_matmul(A, B, s, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k] * (B[k, j] * s[j]), over=k)


@kd.kernel
def sum_of_products(A, B, D, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k] * (B[k, j] + D[k, j]), over=k)


def test_only_the_one_array_the_rows_share_along_the_reduction_is_packed():
    """B[k, j]·s[j]: B is packed (read along k), s read in place once a tile. B[k, j] +
    D[k, j]: two such arrays, no one panel to copy, so the register tiles read both in
    place, the tiles of rows on threads. Both against NumPy."""
    a = np.ones((4, 4), np.float32)
    steps = str(scaled_matmul.schedule_of(a, a, a[0].copy(), a.copy())).splitlines()
    assert [step for step in steps if "cache" in step] == [
        's.cache("B", "joo", layout="packed")'
    ], steps
    steps = str(sum_of_products.schedule_of(a, a, a, a.copy())).splitlines()
    assert not any("cache" in step for step in steps), steps
    assert steps[-2:] == ['s.parallelize("io")', 's.parallelize("jo")'], steps
    rng = np.random.default_rng(3)
    x, y = random_array(rng, (13, 37), np.float32), random_array(rng, (37, 19), np.float32)
    z = random_array(rng, (19,), np.float32)
    out = np.full((13, 19), np.nan, np.float32)
    scaled_matmul(x, y, z, out)
    np.testing.assert_allclose(out, x.astype(np.float64) @ (y * z), rtol=1e-5, atol=1e-5)
    d = random_array(rng, (37, 19), np.float32)
    sum_of_products(x, y, d, out)
    np.testing.assert_allclose(out, x.astype(np.float64) @ (y + d), rtol=1e-5, atol=1e-5)


def test_one_row_streams_the_matrix_rows_into_blocks_of_sums():
    """A vector times a matrix (one row, known only at run time: a version of its own)
    walks STREAMED_ROWS rows of B at a time into a block of COLUMN_BLOCK bytes of sums,
    the blocks on threads: B is read row after row, not a vector down each column."""
    a = np.ones((4, 4), np.float32)
    steps = str(matmul.schedule_of(a, a, a.copy())).splitlines()[1:]
    assert steps[:7] == [
        'i.1, j.1, k.1 = s.specialize("i", below=2)',
        f'j.1o, j.1i = s.split("j.1", {COLUMN_BLOCK // 4})',
        f'k.1o, k.1i = s.split("k.1", {STREAMED_ROWS})',
        's.reorder("i.1", "j.1o", "k.1o", "j.1i", "k.1i")',
        's.unroll("k.1i")',
        's.vectorize("j.1i", 16)',
        's.parallelize("j.1o")',
    ], steps


@kd.kernel
def vecmat(x, w, y):
    i, j, k = kd.indices(1, w.shape[1], w.shape[0])
    y[i, j] = kd.sum(x[i, k] * w[k, j], over=k)


@settings(deadline=None, max_examples=20)
@given(
    k=st.sampled_from([0, 1, 3, 4, 5, 17, 4099]),
    n=st.sampled_from([1, 7, 16, 37, 2047, 2049, 4100]),
    dtype=st.sampled_from([np.float32, np.float64, np.int32]),
)
def test_a_constant_single_row_is_streamed_whole(k, n, dtype):
    """One row known when the kernel is traced: no tiles, no second version; every
    column block and row remainder (k not a multiple of STREAMED_ROWS) against NumPy."""
    x = np.ones((1, 3), dtype)
    steps = str(vecmat.schedule_of(x, np.ones((3, 5), dtype), np.ones((1, 5), dtype)))
    assert "specialize" not in steps and "tile" not in steps, steps
    assert f'ko, ki = s.split("k", {STREAMED_ROWS})' in steps, steps
    assert 's.reorder("i", "jo", "ko", "ji", "ki")' in steps, steps
    rng = np.random.default_rng(k * 10000 + n)
    x, w = random_array(rng, (1, k), dtype), random_array(rng, (k, n), dtype)
    y = np.full((1, n), 7, dtype)
    vecmat(x, w, y)
    want = x.astype(np.float64) @ w.astype(np.float64)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)


@settings(deadline=None, max_examples=25)
@given(
    m=st.sampled_from([0, 1, 5, 6, 7, 13, 67]),
    k=st.sampled_from([0, 1, 3, 17, 64]),
    n=st.sampled_from([1, 7, 8, 16, 37, 100]),
    dtype=st.sampled_from([np.float32, np.float64, np.int32]),
)
def test_a_register_tiled_contraction_on_every_edge(m, k, n, dtype):
    rng = np.random.default_rng(m * 10000 + k * 100 + n)
    a, b = random_array(rng, (m, k), dtype), random_array(rng, (k, n), dtype)
    c = np.full((m, n), 7, dtype)
    matmul(a, b, c)
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-4)


def test_the_tile_sums_stay_in_registers():
    """The loop over k holds the tile's FMAs (its rows × the vector's registers), with
    B's vector read once for all of them and no vector kept on the stack. (LLVM may unroll
    the loop: for a Zen 3 it runs two steps of k per iteration, twice the FMAs, each of
    B's vectors still read once per step.)"""
    a = np.ones((64, 64), np.float32)
    loops = asm_loops(matmul.asm(a, a, a.copy()))
    body = max(loops, key=lambda lines: sum(i.startswith("vfmadd") for i in lines))
    registers = 1 if vector_register() == "zmm" else 2
    fmas = sum(i.startswith("vfmadd") for i in body)
    steps, rest = divmod(fmas, TILE_ROWS * registers)
    assert steps >= 1 and rest == 0, body
    vector = [i for i in body if "%ymm" in i or "%zmm" in i]
    reads_of_b = [i for i in vector if i.startswith("vmov") and "(%r" in i]
    assert len(reads_of_b) == steps * registers, body
    assert not [i for i in vector if "(%rsp" in i], body  # (a loop bound there may be)


@kd.kernel
def batched_matmul(A, B, C):
    b, i, j, k = kd.indices(A.shape[0], A.shape[1], B.shape[2], A.shape[2])
    C[b, i, j] = kd.sum(A[b, i, k] * B[b, k, j], over=k)


def test_a_batch_of_contractions_keeps_its_batch_loop_parallel():
    """The batch loop runs on threads, and the panels of B inside it too (for a batch
    of one), not collapsed: the division for a tile's rows (`6·io + ii`) stayed in the
    loop over k (1.7× slower)."""
    a = np.ones((2, 7, 9), np.float32)
    steps = str(batched_matmul.schedule_of(a, a[:, :, :7].copy(), a.copy())).splitlines()
    assert 's.parallelize("b.1")' in steps[:10], steps  # (the version for one row)
    assert steps[-10:] == [
        f'io, jo, ii, ji = s.tile("i", "j", {TILE_ROWS}, 16)',
        's.reorder("ji", "k", "ii")',
        's.unroll("ii")',
        's.vectorize("ji", 16)',
        f'joo, joi = s.split("jo", {PANEL_TILES})',
        's.reorder("joo", "io", "joi")',
        's.cache("B", "joo", layout="packed")',
        's.parallelize("b")',
        's.parallelize("joo")',
        's.parallelize("io")',
    ], steps
    rng = np.random.default_rng(4)
    for rows in (13, 1):  # (one row: the version that streams b's rows)
        a = random_array(rng, (3, rows, 5), np.float32)
        b = random_array(rng, (3, 5, 17), np.float32)
        c = np.full((3, rows, 17), np.nan, np.float32)
        batched_matmul(a, b, c)
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


@kd.kernel
def int8_products(A, B, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)  # (i8 products, summed in i64)


def test_a_contraction_is_as_wide_as_its_sums():
    """i8 products summed in i64 (kd.sum's integer accumulator): vectors of 8 sums, the
    width a register tile of them can hold, not the 16 of the inputs and output. (Each
    product wraps in i8, as the kernel says.)"""
    a = np.ones((8, 8), np.int8)
    steps = str(int8_products.schedule_of(a, a, np.zeros((8, 8), np.int32))).splitlines()
    assert 's.vectorize("ji", 8)' in steps, steps
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (13, 70)).astype(np.int8)
    y = rng.integers(-128, 128, (70, 19)).astype(np.int8)
    out = np.zeros((13, 19), np.int32)
    int8_products(x, y, out)
    wrapped = (x[:, :, None] * y[None, :, :]).astype(np.int64).sum(axis=1)  # i8 products
    np.testing.assert_array_equal(out, wrapped.astype(np.int32))


@kd.kernel
def batched_vecmat(x, w, y):
    i, j, k = kd.indices(y.shape[0], y.shape[1], x.shape[1])
    y[i, j] = kd.sum(x[i, k] * w[i, k, j], over=k)


def test_a_reduction_whose_rows_share_no_read_is_not_tiled():
    """Each row i reads its own w[i]: a tile of rows would share no vector of it. Its
    sums go down the columns of w[i] instead, in blocks of columns (and a version for
    fewer columns than a vector), the rows on threads."""
    rng = np.random.default_rng(2)
    for n in (3, 32, 2049):
        x, w = random_array(rng, (6, 5), np.float32), random_array(rng, (6, 5, n), np.float32)
        y = np.full((6, n), np.nan, np.float32)
        steps = str(batched_vecmat.schedule_of(x, w, y)).splitlines()[1:]
        assert not any(".tile(" in step for step in steps), steps
        assert steps[-4:] == [
            'jo, ji = s.split("j", 2048)',
            's.reorder("jo", "k", "ji")',
            's.vectorize("ji", 16)',
            's.parallelize("i")',
        ], steps
        batched_vecmat(x, w, y)
        np.testing.assert_allclose(y, np.einsum("ik,ikj->ij", x, w), rtol=1e-5, atol=1e-5)


@kd.kernel
def conv2d(X, W, Y):
    i, j, p, q = kd.indices(Y.shape[0], Y.shape[1], W.shape[0], W.shape[1])
    Y[i, j] = kd.sum(X[i + p, j + q] * W[p, q], over=(p, q))


def _valid_conv2d(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(X, W.shape)
    return np.einsum("ijpq,pq->ij", windows.astype(np.float64), W.astype(np.float64))


@pytest.mark.parametrize("out_shape, k", [((1, 1), 1), ((7, 13), 3), ((31, 1021), 5), ((3, 2), 7)])
def test_a_convolution_vectorizes_its_outputs_not_the_short_filter(out_shape, k):
    """Both j and the filter's q walk X with unit stride: the parallel j is vectorized
    (each lane an output), not the reduction (its lanes added for every output)."""
    rng = np.random.default_rng(k)
    X = random_array(rng, (out_shape[0] + k - 1, out_shape[1] + k - 1), np.float32)
    W = random_array(rng, (k, k), np.float32)
    Y = np.empty(out_shape, np.float32)
    steps = str(conv2d.schedule_of(X, W, Y)).splitlines()[1:]
    assert steps == ['s.vectorize("j", 16)', 's.parallelize("i")']
    conv2d(X, W, Y)
    np.testing.assert_allclose(Y, _valid_conv2d(X, W), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 8191, 8193, 100_003])
def test_default_schedule_results_do_not_depend_on_the_thread_count(n):
    rng = np.random.default_rng(n)
    x, y = random_array(rng, (n,), np.float32), random_array(rng, (n,), np.float32)
    before = kd.get_num_threads()
    outputs = []
    try:
        for threads in (1, 2, 3):
            kd.set_num_threads(threads)
            out = y.copy()
            saxpy(1.5, x, out)
            outputs.append(out)
    finally:
        kd.set_num_threads(before)
    for out in outputs:
        np.testing.assert_array_equal(out, outputs[0])
    np.testing.assert_allclose(outputs[0], np.float32(1.5) * x + y, rtol=1e-6)


def test_set_num_threads_rejects_nonsense():
    with pytest.raises(ValueError, match="thread"):
        kd.set_num_threads(0)


def test_a_nest_that_scatters_stays_on_one_thread():
    """y[idx[i]] = x[i] with colliding subscripts: the last iteration wins, as in the
    serial order, every time (on threads, it would be whichever wrote last)."""

    @kd.kernel
    def scatter(idx, x, y):
        i = kd.indices(x.shape[0])
        y[idx[i]] = x[i]

    n = 200_000
    idx = np.random.default_rng(3).integers(0, 64, n).astype(np.int64)
    x = np.arange(n, dtype=np.float32)
    y = np.zeros(64, np.float32)
    scatter(idx, x, y)
    assert "parallelized" not in str(scatter.lowered(idx, x, y))
    want = np.zeros(64, np.float32)
    want[idx] = x  # NumPy's fancy assignment: the last write wins too
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("dtype", [np.int32, np.float32])
@pytest.mark.parametrize("n, bins", [(16, 1), (1000, 7), (100_003, 256), (0, 3)])
def test_a_scatter_add_counts_every_collision(n, bins, dtype):
    """H[idx[i]] += 1 in a vector of 16 lanes read each colliding bin before any lane
    wrote it: counts were lost (16 zeros gave [1]). Its loop now runs one iteration
    after another, as the interpreter does, on the CPU and (the default GPU schedule
    leaves the nest on one thread) in the GPU emulator."""
    from tests.targets.cuda import simt

    @kd.kernel
    def hist(idx, H):
        i = kd.indices(idx.shape[0])
        H[idx[i]] += 1

    idx = np.random.default_rng(n).integers(0, bins, n).astype(np.int64)
    want = np.bincount(idx, minlength=bins).astype(dtype)
    for run in (hist, hist.interpret):
        H = np.zeros(bins, dtype)
        run(idx, H)
        np.testing.assert_array_equal(H, want)
    assert "vectorized" not in str(hist.lowered(idx, H))
    if n <= 1000:
        H = np.zeros(bins, dtype)
        simt.run(hist, [idx, H])
        np.testing.assert_array_equal(H, want)


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (3, 1000), (0, 5)])
def test_each_pass_over_a_row_is_vectorized(shape):
    """A softmax written plainly: the row's max, the sum of exponentials and the scaled
    row are three loops side by side in the row's loop; each is vectorized (only the
    last was: 20x slower than the library's softmax at 1000 x 1000)."""

    @kd.kernel
    def softmax(x, y, temp):
        i, j = kd.indices(x.shape[0], x.shape[1])
        m = kd.max(x[i, j], over=j)
        e = kd.exp((x[i, j] - m) / temp)
        y[i, j] = e / kd.sum(e, over=j)

    x = random_array(np.random.default_rng(1), shape, np.float32)
    y = np.full_like(x, np.nan)
    text = str(softmax.lowered(x, y, 0.7))
    for loop in ("j", "j.1", "j.2"):
        assert f"for {loop} in range(max(x.shape[1], 0) // 16 * 16):" in text

    @kd.kernel
    def batched(x, y):  # the three loops one loop further down
        b, i, j = kd.indices(x.shape[0], x.shape[1], x.shape[2])
        e = kd.exp(x[b, i, j] - kd.max(x[b, i, j], over=j))
        y[b, i, j] = e / kd.sum(e, over=j)

    x3 = np.stack([x, x])
    assert str(batched.lowered(x3, x3.copy())).count("# reduction, vectorized(16)") == 4
    softmax(x, y, 0.7)
    z = (x - x.max(axis=1, keepdims=True)) / 0.7
    want = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-7)


def test_colliding_subscripts_stay_serial_and_distinct_ones_do_not():
    """y[j // 4] += x[j] (four iterations per element) neither vectorized nor on
    threads; a row scatter y[perm[i], j] keeps its column loop vectorized (and on a
    GPU its rows run in order, one block's threads across the columns; emulated)."""
    from tests.targets.cuda import simt

    @kd.kernel
    def pool(x, y):
        j = kd.indices(x.shape[0])
        y[j // 4] += x[j]

    @kd.kernel
    def permute_rows(perm, x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[perm[i], j] = x[i, j]

    rng = np.random.default_rng(2)
    x = random_array(rng, (100_003,), np.float32)
    y = np.zeros(25_001, np.float32)
    pool(x, y)
    want_pool = np.add.reduceat(x.astype(np.float64), np.arange(0, x.size, 4))
    np.testing.assert_allclose(y, want_pool, rtol=1e-5, atol=1e-6)
    text = str(pool.lowered(x, y))
    assert "vectorized" not in text and "parallelized" not in text
    perm = rng.integers(0, 5, 9).astype(np.int64)  # rows collide: the last one wins
    x2 = random_array(rng, (9, 70), np.float32)
    want = np.zeros((5, 70), np.float32)
    want[perm] = x2
    y2 = np.zeros((5, 70), np.float32)
    permute_rows(perm, x2, y2)
    np.testing.assert_array_equal(y2, want)
    assert "# parallel, vectorized(" in str(permute_rows.lowered(perm, x2, y2))
    y2[...] = 0
    simt.run(permute_rows, [perm, x2, y2])
    np.testing.assert_array_equal(y2, want)


def test_the_gpu_default_spreads_threads_past_a_loop_too_small_for_a_warp(monkeypatch):
    """Under a block's loop, a loop of extent 1 (one query head of a group) around an
    elementwise pass: the threads take the loop inside it, not it (it had taken them:
    one thread did the whole pass)."""
    from kdsl.ir.nodes import Loop, LoopExec
    from kdsl.ir.visit import walk_stmts

    monkeypatch.setenv("KDSL_CUDA_ARCH", "sm_90")

    @kd.kernel
    def heads(x, y):
        for t in kd.grid(x.shape[0]):
            r, j = kd.indices(1, x.shape[1])
            top = kd.alloc((1,))
            top[r] = kd.max(x[t, j], over=j)
            y[t, r, j] = x[t, j] - top[r]

    x = random_array(np.random.default_rng(0), (3, 40), np.float32)
    traced, _ = heads._traced((x, np.empty((3, 1, 40), np.float32)), {})
    scheduled = heads.scheduled(traced, kd.cuda).kernel
    execs = {s.var: s.exec for s in walk_stmts(scheduled.body) if isinstance(s, Loop)}
    assert execs["j"] is execs["j.1"] is LoopExec.GPU_THREAD_X
    assert execs["r.1"] is LoopExec.SERIAL


@kd.kernel
def add2d(x, z, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i, j] = x[i, j] * 2.0 + z[i, j]


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (17, 1), (0, 5), (33, 257)])
def test_fortran_ordered_arrays_vectorize_their_first_axis(shape):
    """An elementwise nest over Fortran-ordered arrays: its first axis is the contiguous
    one, so it goes innermost and vectorized (1000 × 1000 took 2.9 ms, 37× NumPy:
    the inner loop walked a stride of 4000 bytes, not vectorized)."""
    rng = np.random.default_rng(sum(shape))
    x, z = (np.asfortranarray(random_array(rng, shape, np.float32)) for _ in range(2))
    y = np.asfortranarray(np.full(shape, np.nan, np.float32))
    add2d(x, z, y)
    np.testing.assert_allclose(y, x * 2 + z, rtol=1e-6)
    if min(shape) > 1:
        steps = str(add2d.schedule_of(x, z, y)).splitlines()[1:]
        assert steps == ['s.reorder("j", "i")', 's.vectorize("i", 16)', 's.parallelize("j")']
        assert "Fortran order" in str(add2d.lowered(x, z, y))


@pytest.mark.parametrize("layouts", ["FCF", "CFC", "FFF"])
def test_mixed_orders_matmul_and_row_sums_of_fortran_arrays(layouts):
    rng = np.random.default_rng(len(layouts))

    def array(shape, order):
        return np.asarray(random_array(rng, shape, np.float32), order="F" if order == "F" else "C")

    a, b = array((13, 29), layouts[0]), array((29, 7), layouts[1])
    c = array((13, 7), layouts[2])
    matmul(a, b, c)
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-5)
    x, z = array((13, 29), layouts[0]), array((13, 29), layouts[1])
    y = array((13, 29), layouts[2])
    add2d(x, z, y)
    np.testing.assert_allclose(y, x * 2 + z, rtol=1e-6)


def test_a_strided_array_vectorized_along_another_axis_than_its_last():
    """A vector loop over a strided array's first axis loads contiguously where that
    axis' stride is the element's size at run time (columns of a Fortran array), and
    lane by lane elsewhere (rows of a C array): both give the same values."""

    @kd.kernel
    def scale(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = x[i, j] * 3.0

    @scale.schedule(kd.cpu)
    def _(s):
        s.reorder("j", "i")
        s.vectorize("i", 16)

    rng = np.random.default_rng(3)
    base = random_array(rng, (37, 10), np.float32)
    for x in (np.asfortranarray(base)[:, ::2], base[:, ::2]):  # axis 0 stride 4; 80 bytes
        y = np.full(x.shape, np.nan, np.float32)
        scale(x, y)
        np.testing.assert_allclose(y, x * 3, rtol=1e-6)


@kd.kernel
def column_sums(x, out):
    i, j = kd.indices(x.shape[0], x.shape[1])
    out[j] = kd.sum(x[i, j], over=i)


@kd.kernel
def transposed_matvec(w, x, y):  # y = wᵀ·x
    i, j = kd.indices(w.shape[1], w.shape[0])
    y[i] = kd.sum(w[j, i] * x[j], over=j)


def test_a_sum_down_the_columns_goes_in_blocks_of_columns():
    """Each row read a block of columns at a time into a block of sums that stays in L1
    (Zen 2, 4096 × 1024: 2.57 → 0.72 ms); fewer columns than a vector keep theirs in a
    register (a version of their own)."""
    x = np.ones((9, 40), np.float32)
    steps = str(column_sums.schedule_of(x, np.empty(40, np.float32))).splitlines()[1:]
    assert steps == [
        'j.1, i.1 = s.specialize("j", below=16)',
        's.vectorize("j.1", 16)',
        'jo, ji = s.split("j", 2048)',
        's.reorder("jo", "i", "ji")',
        's.vectorize("ji", 16)',
        's.parallelize("jo")',
    ]


@settings(deadline=None, max_examples=30)
@given(
    rows=st.sampled_from([0, 1, 7, 300]),
    cols=st.sampled_from([0, 1, 3, 15, 16, 17, 2047, 2048, 2049, 4100]),
    dtype=st.sampled_from([np.float32, np.float64, np.int32]),
)
def test_column_sums_and_transposed_products_on_every_edge(rows, cols, dtype):
    rng = np.random.default_rng(rows * 10000 + cols)
    x = random_array(rng, (rows, cols), dtype)
    out = np.full(cols, 7, dtype)
    column_sums(x, out)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype != np.int32 else {}
    np.testing.assert_allclose(out, x.astype(np.float64).sum(axis=0), **tol)
    v = random_array(rng, (rows,), dtype)
    y = np.full(cols, 7, dtype)
    transposed_matvec(x, v, y)
    np.testing.assert_allclose(y, x.T.astype(np.float64) @ v.astype(np.float64), **tol)


@kd.kernel
def transpose(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[j, i] = x[i, j]


@kd.kernel
def batched_transpose_add(x, z, y):
    b, i, j = kd.indices(x.shape[0], x.shape[1], x.shape[2])
    y[b, j, i] = x[b, i, j] + z[b, j, i] * 2


def test_a_transpose_goes_in_tiles_vectorized_along_its_writes():
    """Reads along j, writes along i: tiles of 16 × 16 (their lines in L1), the loop
    along the writes innermost and vectorized (Zen 2, 2048²: 34 -> 2.9 ms, NumPy 31)."""
    x = np.ones((40, 50), np.float32)
    steps = str(transpose.schedule_of(x, x.T.copy())).splitlines()[1:]
    assert steps == [
        'io, jo, ii, ji = s.tile("i", "j", 16, 16)',
        's.reorder("io", "jo", "ji", "ii")',
        's.vectorize("ii", 16)',
        's.parallelize("io")',
    ]


@settings(deadline=None, max_examples=20)
@given(
    batch=st.sampled_from([1, 3]),
    rows=st.sampled_from([0, 1, 15, 16, 17, 70]),
    cols=st.sampled_from([1, 5, 16, 33]),
    dtype=st.sampled_from([np.float32, np.float64, np.int8]),
)
def test_transposes_on_every_edge(batch, rows, cols, dtype):
    rng = np.random.default_rng(batch * 10000 + rows * 100 + cols)
    x = random_array(rng, (rows, cols), dtype)
    y = np.zeros((cols, rows), dtype)
    transpose(x, y)
    np.testing.assert_array_equal(y, x.T)
    x3 = random_array(rng, (batch, rows, cols), dtype)
    z3 = random_array(rng, (batch, cols, rows), dtype)
    y3 = np.zeros_like(z3)
    batched_transpose_add(x3, z3, y3)
    np.testing.assert_array_equal(y3, x3.transpose(0, 2, 1) + z3 * 2)
    steps = str(batched_transpose_add.schedule_of(x3, z3, y3))
    assert 's.parallelize("b")' in steps and ".tile(" in steps
    assert 's.parallelize("io")' in steps  # (the tiles too: a batch of one on threads)


def test_column_sums_of_batches_that_may_meet_stay_in_order():
    """y[perm[b], j] += Σi x[b, i, j]: two batches may add to one row, so the batches
    run in order (on threads, additions were lost)."""

    @kd.kernel
    def scatter_sums(perm, x, y):
        b, i, j = kd.indices(x.shape[0], x.shape[1], x.shape[2])
        y[perm[b], j] += kd.sum(x[b, i, j], over=i)

    perm = np.zeros(64, np.int64)
    x = np.random.default_rng(0).integers(1, 3, (64, 2, 2100)).astype(np.float32)
    y = np.zeros((1, 2100), np.float32)
    assert "parallelize" not in str(scatter_sums.schedule_of(perm, x, y))
    scatter_sums(perm, x, y)
    np.testing.assert_array_equal(y[0], x.sum(axis=(0, 1)))
