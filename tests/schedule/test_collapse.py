"""`s.collapse(outer, inner)`: a perfect nest of two loops as one loop over both, the
same iterations in the same order — checked against NumPy over shapes with 0, 1 and
primes, with the CPU target addressing C-ordered rows as one run (no gathers) and
strided arrays still right; the refusals; and the default schedule, which collapses
elementwise nests over whole C-ordered arrays and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from tests.helpers import random_array


def _axpy(**options: object) -> kd.KernelFunction:
    def axpy(x, z, y):
        for i, j in kd.grid(x.shape[0], x.shape[1]):
            y[i, j] = 2 * x[i, j] + z[i, j]

    return kd.kernel(axpy, **options)


def _one_stream(s) -> None:
    f = s.collapse("i", "j")
    chunks, lanes = s.split(f, 64)
    s.vectorize(lanes, 8)
    s.parallelize(chunks)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.sampled_from([0, 1, 2, 7, 13, 37]),
    cols=st.sampled_from([0, 1, 3, 5, 17]),
    dtype=st.sampled_from([np.float32, np.float64, np.int32]),
)
def test_collapsed_nest_matches_numpy(rows: int, cols: int, dtype: type) -> None:
    axpy = _axpy()
    axpy.schedule(kd.cpu)(_one_stream)
    rng = np.random.default_rng(rows * 100 + cols)
    x, z = (random_array(rng, (rows, cols), dtype) for _ in range(2))
    y = np.zeros_like(x)
    axpy(x, z, y)
    np.testing.assert_array_equal(y, 2 * x + z)


@pytest.mark.parametrize("static", [False, True])
def test_three_loops_collapse_pair_by_pair(static: bool) -> None:
    """collapse(collapse(b, i), j): one loop over a 3-D array (constant extents too)."""

    def scale(x, y):
        for b, i, j in kd.grid(x.shape[0], x.shape[1], x.shape[2]):
            y[b, i, j] = x[b, i, j] * 3 - 1

    kernel = kd.kernel(scale, static_shapes=static)

    @kernel.schedule(kd.cpu)
    def _(s):
        f = s.collapse(s.collapse("b", "i"), "j")
        s.vectorize(f, 8)

    x = random_array(np.random.default_rng(3), (3, 5, 7), np.float32)
    y = np.zeros_like(x)
    kernel(x, y)
    np.testing.assert_allclose(y, x * 3 - 1, rtol=1e-6)
    assert "gather" not in kernel.llvm(x, y)


def test_contiguous_rows_are_one_run_and_strided_ones_still_right() -> None:
    """C-ordered arrays: `x[f // m, f % m]` is addressed as element f, whole vectors with
    no gather; a strided array (its rows not m elements apart) gathers, and is right."""
    axpy = _axpy()
    axpy.schedule(kd.cpu)(_one_stream)
    rng = np.random.default_rng(5)
    x, z = (random_array(rng, (101, 3), np.float32) for _ in range(2))
    assert "gather" not in axpy.llvm(x, z, np.empty_like(x))
    wide = random_array(rng, (101, 6), np.float32)
    strided = wide[:, ::2]
    y = np.zeros_like(x)
    axpy(strided, z, y)
    np.testing.assert_allclose(y, 2 * strided + z, rtol=1e-6)
    assert "gather" in axpy.llvm(strided, z, y)


def test_checked_subscripts_keep_their_rows() -> None:
    """With checks=True each subscript is checked against its axis, so the rows are not
    addressed as one run: the result is the same (and the default doesn't collapse)."""
    axpy = _axpy(checks=True)
    axpy.schedule(kd.cpu)(_one_stream)
    rng = np.random.default_rng(6)
    x, z = (random_array(rng, (29, 3), np.float32) for _ in range(2))
    y = np.zeros_like(x)
    axpy(x, z, y)
    np.testing.assert_allclose(y, 2 * x + z, rtol=1e-6)
    assert not any("collapse" in step for step in _steps(_axpy(checks=True), x, z, y))


def test_two_empty_loops_make_no_iterations() -> None:
    """Extents below zero run no iteration: collapsed, -2 × -2 is no 4 iterations (the
    bounds proofs were made for the empty nest); larger arrays are right."""

    def interior(x, y):
        for i, j in kd.grid(x.shape[0] - 2, x.shape[1] - 2):
            y[i, j] = x[i + 2, j + 2] + 1

    kernel = kd.kernel(interior)
    kernel.schedule(kd.cpu)(lambda s: s.collapse("i", "j"))
    rng = np.random.default_rng(12)
    for shape in [(0, 0), (1, 1), (1, 0), (2, 5), (7, 4)]:
        big = np.zeros((12, 12), np.float32)
        y = big[3:9, 3:9]  # (writes past it would land in big)
        x = random_array(rng, shape, np.float32)
        kernel(x, y)
        rows, cols = max(shape[0] - 2, 0), max(shape[1] - 2, 0)
        np.testing.assert_allclose(y[:rows, :cols], x[2:, 2:] + 1, rtol=1e-6)
        assert np.count_nonzero(big) == np.count_nonzero(y[:rows, :cols] != 0)


def test_subscripts_from_scalar_arguments_are_checked_as_before() -> None:
    """`x[(i + k) // m, (i + k) % m]` with k an argument: checked axis by axis when the
    code runs, so not addressed as one run; a valid call still works."""

    def window(x, k, y):
        for i in kd.grid(y.shape[0]):
            y[i] = x[(i + k) // x.shape[1], (i + k) % x.shape[1]]

    x = random_array(np.random.default_rng(13), (4, 3), np.float32)
    y = np.zeros(4, np.float32)
    kd.kernel(window)(x, 4, y)
    np.testing.assert_array_equal(y, x.ravel()[4:8])


def test_reduction_loops_collapse_into_one() -> None:
    """kd.sum over (i, j) is a nest of two reduction loops: one loop over all elements,
    vectorized."""

    def total(x, out):
        i, j = kd.indices(x.shape[0], x.shape[1])
        out[0] = kd.sum(x[i, j], over=(i, j))

    kernel = kd.kernel(total)

    @kernel.schedule(kd.cpu)
    def _(s):
        s.vectorize(s.collapse("i", "j"), 8)

    x = random_array(np.random.default_rng(7), (13, 17), np.float32)
    out = np.zeros(1, np.float32)
    kernel(x, out)
    np.testing.assert_allclose(out[0], x.astype(np.float64).sum(), rtol=1e-5)


def test_collapse_refusals_name_the_loop_and_the_fix() -> None:
    def serial_rows(x, y):
        for i in kd.grid(x.shape[0]):
            for j in kd.range(x.shape[1]):
                y[i, j] = x[i, j]

    def triangle(x, y):
        for i in kd.grid(x.shape[0]):
            for j in kd.grid(i + 1):
                y[i, j] = x[i, j]

    def row_sums(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, 0] = kd.sum(x[i, j], over=j)

    def counted(x, y):
        for i in kd.range(y.shape[0]):
            for j in kd.range(x[0, 0].astype(kd.i64)):
                y[i, j] += 1.0
                x[0, 0] = 1.0

    def ragged(x, y):
        for i in kd.grid(x.shape[0]):
            for j in kd.grid(i + 1):
                y[i, j] = x[i, j]

    cases = [
        (_axpy(), lambda s: s.collapse("j", "i"), "not directly inside"),
        (_axpy(), lambda s: (s.vectorize("j", 8), s.collapse("i", "j")), "already vectorized"),
        (kd.kernel(serial_rows), lambda s: s.collapse("i", "j"), "is parallel and loop 'j' serial"),
        (kd.kernel(triangle), lambda s: s.collapse("i", "j"), "depends on 'i'"),
        (kd.kernel(row_sums), lambda s: s.collapse("i", "j"), "holds other statements"),
        (kd.kernel(counted), lambda s: s.collapse("i", "j"), r"changes with x\[0, 0\]"),
        (kd.kernel(ragged), lambda s: s.collapse("i", "j"), "holds a bounds check"),
        (_axpy(), lambda s: s.collapse("i", "i"), "not directly inside"),
    ]
    x = random_array(np.random.default_rng(8), (4, 4), np.float32)
    for kernel, steps, message in cases:
        kernel.schedule(kd.cpu)(steps)
        args = [x, np.zeros_like(x)] + [x] * (kernel.name == "axpy")
        with pytest.raises(kd.ScheduleError, match=message) as err:
            kernel(*args)
        assert err.value.fix and "collapse" in str(err.value)


def _steps(kernel: kd.KernelFunction, *args: object) -> list[str]:
    return str(kernel.schedule_of(*args)).splitlines()[1:]


def test_default_collapses_elementwise_nests_over_whole_arrays() -> None:
    """Rows of run-time length: one stream, on threads; the same as NumPy over shapes
    with short and long rows."""
    axpy = _axpy()
    rng = np.random.default_rng(9)
    for shape in [(0, 3), (1, 1), (4001, 3), (37, 1000), (5, 0)]:
        x, z = (random_array(rng, shape, np.float32) for _ in range(2))
        y = np.zeros_like(x)
        axpy(x, z, y)
        np.testing.assert_allclose(y, 2 * x + z, rtol=1e-6)
    assert _steps(axpy, x, z, y)[0] == 's.collapse("i", "j")'
    assert any(step.startswith("s.parallelize") for step in _steps(axpy, x, z, y))


def test_default_collapses_the_inner_loops_of_a_batch() -> None:
    """`y[b, i, j] = x[b, i, j] * s[b]` and `y[b, i, j] = x[i, j] + 1`: the loops over
    each batch's rows and columns collapse, in chunks that run on threads together with
    the batches (a batch of one uses every core)."""

    @kd.kernel
    def scaled(x, s, y):
        for b, i, j in kd.grid(x.shape):
            y[b, i, j] = x[b, i, j] * s[b]

    @kd.kernel
    def repeated(x, y):
        for b, i, j in kd.grid(y.shape):
            y[b, i, j] = x[i, j] + 1

    rng = np.random.default_rng(14)
    for shape in [(0, 3, 3), (2, 0, 3), (2, 3, 0), (1, 1, 1), (3, 37, 5), (2, 5000, 3)]:
        x, y = random_array(rng, shape, np.float32), np.zeros(shape, np.float32)
        s = random_array(rng, shape[:1], np.float32)
        scaled(x, s, y)
        np.testing.assert_allclose(y, x * s[:, None, None], rtol=1e-6)
        rows = random_array(rng, shape[1:], np.float32)
        repeated(rows, y)
        np.testing.assert_allclose(y, np.broadcast_to(rows + 1, shape), rtol=1e-6)
    for kernel, args in [(scaled, (x, s, y)), (repeated, (rows, y))]:
        steps = _steps(kernel, *args)
        assert steps[:3] == [
            's.collapse("i", "j")',
            'ijo, iji = s.split("ij", 8192)',
            's.collapse("b", "ijo")',
        ]
        assert 's.parallelize("bijo")' in steps


def test_default_keeps_nests_that_need_their_rows() -> None:
    """A broadcast row (`b[j]`), a loop variable used as a value, a Fortran-ordered or a
    strided array: each element's row and column are needed, so no collapse."""

    def bias(x, b, y):
        for i, j in kd.grid(x.shape[0], x.shape[1]):
            y[i, j] = x[i, j] + b[j]

    def ramp(x, y):
        for i, j in kd.grid(x.shape[0], x.shape[1]):
            y[i, j] = x[i, j] * j

    rng = np.random.default_rng(10)
    x = random_array(rng, (31, 3), np.float32)
    b = random_array(rng, (3,), np.float32)
    y = np.zeros_like(x)
    axpy = _axpy()
    runs = [
        (kd.kernel(bias), (x, b, y), x + b),
        (kd.kernel(ramp), (x, y), x * np.arange(3, dtype=np.float32)),
        (axpy, (np.asfortranarray(x), x, y), 3 * x),
        (axpy, (random_array(rng, (31, 6), np.float32)[:, ::2], x, y), None),
    ]
    for kernel, args, want in runs:
        assert not any("collapse" in step for step in _steps(kernel, *args))
        kernel(*args)
        if want is not None:
            np.testing.assert_allclose(y, want, rtol=1e-6)


def test_default_gpu_schedule_collapses_short_rows_onto_threads() -> None:
    """On a GPU too: rows of 3 become one run of elements over the blocks' threads (not
    a block per row with 3 busy threads), right in the SIMT emulator, and ptxas (where
    installed) accepts the PTX."""
    from kdsl.targets.cuda import ptx as nvptx
    from tests.targets.cuda import simt

    axpy = _axpy()
    rng = np.random.default_rng(11)
    x, z = (random_array(rng, (37, 3), np.float32) for _ in range(2))
    y = np.full_like(x, np.nan)
    simt.run(axpy, [x, z, y])
    np.testing.assert_allclose(y, 2 * x + z, rtol=1e-6)
    traced, _ = axpy._traced((x, z, y), {})
    assert str(axpy.scheduled(traced, kd.cuda)).splitlines()[1] == 's.collapse("i", "j")'
    ptx = axpy.ptx(x, z, y)
    assert "div" not in ptx and "rem" not in ptx
    if nvptx.ptxas_path() is not None:
        nvptx.assemble(ptx, "sm_90")


@kd.kernel
def _batched_rms(x, w, y):
    b, i, j = kd.indices(x.shape[0], x.shape[1], x.shape[2])
    norm = kd.rsqrt(kd.sum(x[b, i, j] * x[b, i, j], over=j) / x.shape[2] + 1e-5)
    y[b, i, j] = x[b, i, j] * norm * w[j]


@pytest.mark.parametrize("shape", [(1, 37, 29), (3, 7, 17), (1, 1, 1), (2, 0, 5), (1, 5, 0)])
def test_default_runs_the_batch_and_its_rows_on_threads(shape) -> None:
    """A batch of rows (`x[b, i, j]`, a row's sum over j): the batch and row loops are
    one parallel loop, so a batch of 1 uses every core; right for any shape."""
    rng = np.random.default_rng(sum(shape))
    x, w = random_array(rng, shape, np.float32), random_array(rng, shape[2:], np.float32)
    y = np.full_like(x, np.nan)
    _batched_rms(x, w, y)
    wide = x.astype(np.float64)
    mean = (wide * wide).sum(axis=2, keepdims=True) / max(shape[2], 1)  # (no row: no mean)
    want = wide / np.sqrt(mean + 1e-5) * w
    np.testing.assert_allclose(y, want, rtol=2e-5, atol=1e-6)
    steps = _steps(_batched_rms, x, w, y)
    assert 's.collapse("b", "i")' in steps and 's.parallelize("bi")' in steps


def test_a_colliding_loop_around_collapsed_rows_stays_in_order() -> None:
    """`y[a, idx[b], i, j] += …`: the rows (i, j) collapse, but two b may write one
    element, so b runs in order on the CPU and is bound to no GPU blocks."""

    @kd.kernel
    def scatter(x, idx, y):
        for a, b, i, j in kd.grid(x.shape):
            y[a, idx[b], i, j] += x[a, b, i, j]

    rng = np.random.default_rng(15)
    x = random_array(rng, (2, 37, 5, 3), np.float32)
    idx = rng.integers(0, 2, 37)
    y = np.zeros((2, 2, 5, 3), np.float32)
    scatter(x, idx, y)
    want = np.zeros((2, 2, 5, 3))
    np.add.at(want, (slice(None), idx), x.astype(np.float64))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)  # (f32 sums of 37)
    assert _steps(scatter, x, idx, y)[-1] == 's.parallelize("a")'
    traced, _ = scatter._traced((x, idx, y), {})
    gpu = str(scatter.scheduled(traced, kd.cuda)).splitlines()[1:]
    assert gpu[0] == 's.collapse("i", "j")' and not any('"b"' in step for step in gpu)


def test_default_keeps_batches_whose_rows_are_not_whole_on_their_own_loop() -> None:
    """A transposed read (`x[i, b, j]`) or a row index used as a value: the batch loop
    alone runs on threads (collapsed, each row would divide for its indices)."""

    @kd.kernel
    def transposed_sums(x, y):
        b, i, j = kd.indices(x.shape[1], x.shape[0], x.shape[2])
        y[b, i] = kd.sum(x[i, b, j], over=j)

    @kd.kernel
    def ramp(x, y):
        b, i, j = kd.indices(x.shape[0], x.shape[1], x.shape[2])
        y[b, i, j] = x[b, i, j] * i + kd.sum(x[b, i, j], over=j)

    rng = np.random.default_rng(16)
    x = random_array(rng, (5, 3, 17), np.float32)
    y = np.zeros((3, 5), np.float32)
    transposed_sums(x, y)
    np.testing.assert_allclose(y, x.sum(axis=2).T, rtol=1e-5, atol=1e-6)
    z = np.zeros_like(x)
    ramp(x, z)
    i = np.arange(3, dtype=np.float32)[None, :, None]
    np.testing.assert_allclose(z, x * i + x.sum(axis=2, keepdims=True), rtol=1e-5, atol=1e-5)
    for kernel, args in [(transposed_sums, (x, y)), (ramp, (x, z))]:
        steps = _steps(kernel, *args)
        assert not any("collapse" in step for step in steps) and 's.parallelize("b")' in steps
