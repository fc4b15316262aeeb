"""`s.specialize(loop, below=n)`: two versions of a nest, picked when the kernel runs by
the loop's extent, each scheduled its own way — checked against NumPy on both sides of
the bound and at it, with what the copy declares renamed, the recipe replayed, and the
refusals; and the default schedule's version for rows shorter than a vector."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.ir.passes import lower
from kdsl.schedule.recipe import Schedule
from tests.helpers import random_array


def _normalize_rows() -> kd.KernelFunction:
    def normalize_rows(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = x[i, j] / kd.sqrt(kd.sum(x[i, j] * x[i, j], over=j))

    return kd.kernel(normalize_rows)


def _batched() -> kd.KernelFunction:
    """Rows under a batch loop with a statement beside them (the batch's first value)."""

    def batched(x, y):
        for b in kd.grid(x.shape[0]):
            first = kd.local(x[b, 0, 0])
            for i in kd.grid(x.shape[1]):
                j = kd.indices(x.shape[2])
                y[b, i, j] = x[b, i, j] * first + kd.sum(x[b, i, j], over=j)

    return kd.kernel(batched)


def _normalized(x: np.ndarray) -> np.ndarray:
    wide = x.astype(np.float64)
    return wide / np.sqrt((wide * wide).sum(axis=1, keepdims=True))


def _rows(rng: np.random.Generator, shape: tuple[int, int], dtype: object) -> np.ndarray:
    return random_array(rng, shape, dtype) + 2  # (no row of zeros: its norm would be 0)


@settings(max_examples=20, deadline=None)
@given(
    rows=st.sampled_from([0, 1, 7, 16, 37]),
    cols=st.sampled_from([1, 3, 7, 8, 9, 15]),
    below=st.sampled_from([1, 4, 8, 9]),
)
def test_each_version_runs_its_own_schedule(rows: int, cols: int, below: int) -> None:
    """Short rows (cols < below) vectorized across the rows, long ones along them: the
    same results either way, at the bound too."""
    kernel = _normalize_rows()

    @kernel.schedule(kd.cpu)
    def _(s):
        i, j, j1 = s.specialize("j", below=below)
        outer, lanes = s.split(i, 4)
        s.vectorize(lanes, 4)
        s.parallelize(outer)
        s.vectorize("j", 8)
        s.vectorize("j.1", 8)
        s.parallelize("i")

    x = _rows(np.random.default_rng(rows * 100 + cols), (rows, cols), np.float32)
    y = np.full_like(x, np.nan)
    kernel(x, y)
    np.testing.assert_allclose(y, _normalized(x), rtol=2e-6)


def test_the_copy_renames_what_it_declares_and_the_recipe_replays() -> None:
    """The copy's loops, its locals and its temporaries get fresh names (the nest keeps
    its own); the steps print with the names returned, and replay to the same IR."""

    @kd.kernel
    def centered(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        t = kd.empty(x.shape, kd.f32)
        t[i, j] = x[i, j] - kd.sum(x[i, j], over=j) / x.shape[1]
        y[i, j] = t[i, j] * 2

    x = _rows(np.random.default_rng(3), (5, 3), np.float32)
    traced = centered.ir(x, x.copy())
    s = Schedule(lower(traced.kernel))
    names = s.specialize("j", below=8)
    assert len(names) == len(set(names)) and not set(names) & {"i", "j", "i.1", "j.1"} - set(names)
    text = str(s.kernel)
    assert "if x.shape[1] < 8:" in text and "if x.shape[1] >= 8:" in text
    declared = [b.name for b in s.kernel.buffers]
    assert len(declared) == len(set(declared))
    assert f'{", ".join(names)} = s.specialize("j", below=8)' in str(s)
    assert Schedule.replay(s.to_json(), traced).kernel == s.kernel

    for shape in ((4, 3), (4, 8), (4, 11)):
        x = _rows(np.random.default_rng(shape[1]), shape, np.float32)
        y = np.full_like(x, np.nan)
        centered(x, y)
        np.testing.assert_allclose(y, 2 * (x - x.mean(axis=1, keepdims=True)), atol=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (("k", 4), "there is no loop named 'k'"),
        (("j", 0), "the bound must be a positive int"),
        (("c", 4), "loop 'c' always runs 3 iterations"),
        (("t", 4), "the extent of loop 't' (m + 1) changes within the nest, with m"),
    ],
)
def test_refusals_say_why(args: tuple[object, ...], message: str) -> None:
    @kd.kernel
    def k(x, y, z):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i] = kd.sum(x[i, j], over=j)
        n, c = kd.indices(x.shape[0], 3)
        z[n, c] = x[n, c]
        for m in kd.grid(x.shape[0]):
            for t in kd.range(m + 1):
                y[m] += x[t, 0]

    @k.schedule(kd.cpu)
    def _(s):
        s.specialize(*args)

    x = np.ones((4, 5), np.float32)
    with pytest.raises(kd.ScheduleError, match=re.escape(message)):
        k(x, np.zeros(4, np.float32), np.zeros((4, 3), np.float32))


@settings(max_examples=25, deadline=None)
@given(
    rows=st.sampled_from([0, 1, 15, 16, 17, 8193]),
    cols=st.sampled_from([1, 2, 3, 7, 8, 15, 16, 17, 40]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_the_default_vectorizes_rows_shorter_than_a_vector_across_them(rows, cols, dtype):
    """A row operation whose row length is known only at run time: rows under one
    vector run a version vectorized across the rows (Zen 2, 4M rows of 3 floats: 41 ->
    11 ms); longer rows keep their vectors along the row (vectorized across the rows,
    rows of 16 ran 2.6x slower: every element a gather)."""
    kernel = _normalize_rows()
    x = _rows(np.random.default_rng(rows + cols), (rows, cols), dtype)
    width = 64 // np.dtype(dtype).itemsize
    steps = str(kernel.schedule_of(x, x.copy())).splitlines()[1:]
    assert steps[:4] == [
        f'i.1, j.2, j.1.1 = s.specialize("j", below={width})',
        'i.1o, i.1i = s.split("i.1", 8192)',
        f's.vectorize("i.1i", {width // 2})',  # (a row's elements are gathered)
        's.parallelize("i.1o")',
    ]
    assert steps[4:] == [f's.vectorize("j", {width})', f's.vectorize("j.1", {width})'] + [
        's.parallelize("i")'
    ]
    y = np.full_like(x, np.nan)
    kernel(x, y)
    np.testing.assert_allclose(y, _normalized(x), rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_rows_of_a_constant_length_get_one_version() -> None:
    @kd.kernel
    def sums(x, y):
        i, j = kd.indices(x.shape[0], 5)
        y[i] = kd.sum(x[i, j], over=j)

    x = np.ones((9, 5), np.float32)
    assert "specialize" not in str(sums.schedule_of(x, np.zeros(9, np.float32)))


@pytest.mark.parametrize("cols", [3, 70])
def test_on_the_gpu_each_version_is_a_launch_whose_blocks_test_the_shape(cols, monkeypatch):
    """A CUDA schedule: short rows a thread each, long rows a block each, its threads
    sharing the row's sum (barriers inside the version's test, which every thread of
    the block agrees on). Emulated, and assembled by ptxas where it is installed."""
    from kdsl.targets.cuda import ptx as nvptx
    from tests.targets.cuda import simt

    kernel = _normalize_rows()

    @kernel.schedule(kd.cuda)
    def _(s):
        i, _, _ = s.specialize("j", below=32)
        blocks, threads = s.split(i, 128)
        s.bind(blocks, "block.x")
        s.bind(threads, "thread.x")
        s.bind("i", "block.x")
        s.bind("j", "thread.x")
        s.bind("j.1", "thread.x")

    rows = 130 if cols < 32 else 5  # (a past-the-tile thread; the emulator's time)
    x = _rows(np.random.default_rng(cols), (rows, cols), np.float32)
    y = np.full_like(x, np.nan)
    simt.run(kernel, [x, y])
    np.testing.assert_allclose(y, _normalized(x), rtol=1e-5)
    monkeypatch.setenv("KDSL_CUDA_ARCH", "sm_90")
    text = kernel.ptx(x, y)
    assert text.count(".entry") == 2
    if nvptx.ptxas_path() is not None:
        assert "Compiling entry function" in nvptx.assemble(text, "sm_90")


def test_versions_within_versions_on_the_gpu_and_what_it_refuses(monkeypatch):
    """A version specialized again: each nest a launch testing both conditions. Block
    loops with statements between them, or a version chosen by data, are refused with
    what to do instead of an error about the user's bindings."""
    from tests.targets.cuda import simt

    monkeypatch.setenv("KDSL_CUDA_ARCH", "sm_90")
    nested = _normalize_rows()

    @nested.schedule(kd.cuda)
    def _(s):
        i, j, _ = s.specialize("j", below=32)
        i2, _, _ = s.specialize(j, below=4)
        for rows in (i, i2, "i"):
            s.bind(rows, "block.x")
        for loop in ("j", "j.1", "j.2", "j.1.1", "j.2.1", "j.1.1.1"):
            s.bind(loop, "thread.x")

    for cols in (2, 9, 40):
        x = _rows(np.random.default_rng(cols), (3, cols), np.float32)
        y = np.full_like(x, np.nan)
        simt.run(nested, [x, y])
        np.testing.assert_allclose(y, _normalized(x), rtol=1e-5)
    assert nested.ptx(x, y).count(".entry") == 3

    batched = _batched()

    @batched.schedule(kd.cuda)
    def _(s):
        s.specialize("j", below=8)
        for b, i, j, j1 in (("b", "i", "j", "j.1"), ("b.1", "i.1", "j.2", "j.1.1")):
            s.bind(b, "block.y")
            s.bind(i, "block.x")
            s.bind(j, "thread.x")
            s.bind(j1, "thread.x")

    x3 = np.ones((2, 3, 5), np.float32)
    with pytest.raises(kd.CompileError, match="statements between them, inside an if"):
        batched.ptx(x3, x3.copy())

    @kd.kernel
    def by_data(n, x, y):
        for i in kd.grid(x.shape[0]):
            for j in kd.range(n[0]):
                y[i] += x[i, j]

    @by_data.schedule(kd.cuda)
    def _(s):
        s.specialize("j", below=4)
        s.bind("i", "block.x")
        s.bind("i.1", "block.x")

    n = np.array([3], np.int64)
    with pytest.raises(kd.CompileError, match="reads memory or a loop.s variable"):
        by_data.ptx(n, np.ones((4, 5), np.float32), np.zeros(4, np.float32))


def test_steps_after_specialize_find_one_producer_per_version() -> None:
    """A temporary only the nest uses gets a copy of its own in the copy (compute_at
    works in each version); one another nest reads stays shared, and a step that needs
    its one producer says to come before specialize."""

    @kd.kernel
    def scaled(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        t = kd.empty(x.shape, kd.f32)
        t[i, j] = x[i, j] * 2
        y[i, j] = t[i, j] + kd.sum(t[i, j], over=j)

    x = _rows(np.random.default_rng(1), (6, 5), np.float32)
    traced = lower(scaled.ir(x, x.copy()).kernel)
    s = Schedule(traced)
    s.fuse("i", "i.1")
    names = s.specialize("j.1", below=8)
    s.compute_at("t", "i")
    s.compute_at("t.1", names[0])
    assert "t.1" in [b.name for b in s.kernel.buffers]

    @kd.kernel
    def softmax(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        m = kd.empty((x.shape[0],), kd.f32)
        m[i] = kd.max(x[i, j], over=j)
        y[i, j] = kd.exp(x[i, j] - m[i])

    s = Schedule(lower(softmax.ir(x, x.copy()).kernel))
    s.specialize("j", below=8)
    with pytest.raises(kd.ScheduleError, match="before specializing the nest that writes it"):
        s.compute_at("m", "i.1")


def test_the_default_keeps_colliding_rows_serial_in_both_versions() -> None:
    """y[perm[b], i, j]: two batches may write one row, so neither version puts the
    batches on threads; rows under a loop with statements beside them are vectorized
    themselves (not the batch loop)."""

    @kd.kernel
    def scatter_rows(perm, x, y):
        b, i, j = kd.indices(x.shape[0], x.shape[1], x.shape[2])
        y[perm[b], i, j] = x[b, i, j] / kd.sum(x[b, i, j], over=j)

    perm = np.array([1, 1, 0, 2], np.int64)
    x = _rows(np.random.default_rng(4), (4, 300, 3), np.float32)
    assert "parallelize" not in str(scatter_rows.schedule_of(perm, x, x.copy()))
    y = np.zeros_like(x)
    scatter_rows(perm, x, y)
    want = np.zeros_like(x)
    for b in range(4):
        want[perm[b]] = x[b] / x[b].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(y, want, rtol=1e-6)

    batched = _batched()

    steps = str(batched.schedule_of(x, x.copy())).splitlines()[1:4]
    assert steps == [
        'b.1, i.1, j.2, j.1.1 = s.specialize("j", below=16)',
        's.vectorize("i.1", 8)',
        's.parallelize("b.1")',
    ]
    y = np.full_like(x, np.nan)
    batched(x, y)
    np.testing.assert_allclose(y, x * x[:, :1, :1] + x.sum(axis=2, keepdims=True), rtol=1e-5)


def test_on_the_gpu_a_version_allocates_its_temporaries_on_the_host() -> None:
    """A temporary only the nest uses gets a copy for the copy of the nest, allocated
    inside its version: on the GPU the host allocates it, as a top-level one."""
    from tests.targets.cuda import simt

    @kd.kernel
    def scaled(x, y):
        t = kd.empty(x.shape, kd.f32)
        for i in kd.grid(x.shape[0]):
            j = kd.indices(x.shape[1])
            t[i, j] = x[i, j] * 2
            y[i, j] = t[i, j] + kd.sum(t[i, j], over=j)

    @scaled.schedule(kd.cuda)
    def _(s):
        rows, *inner = s.specialize("j", below=8)
        s.bind("i", "block.x")
        s.bind(rows, "block.x")
        for loop in ["j", "j.1", "j.2", *inner]:
            s.bind(loop, "thread.x")

    for cols in (5, 20):
        x = _rows(np.random.default_rng(cols), (4, cols), np.float32)
        y = np.full_like(x, np.nan)
        simt.run(scaled, [x, y])
        np.testing.assert_allclose(y, 2 * x + 2 * x.sum(axis=1, keepdims=True), rtol=1e-5)
