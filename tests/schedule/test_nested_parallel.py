"""Loops on threads inside loops on threads (`parallelize` of a batch loop and of the
row tiles inside it): the pool runs whichever has work for two chunks, the other on the
caller or inline in each chunk; the results are the serial loops'."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.ir.passes import lower
from kdsl.schedule.recipe import Schedule


def _bmm(a, b, c):
    n, i, j, k = kd.indices(a.shape[0], a.shape[1], b.shape[2], a.shape[2])
    c[n, i, j] = kd.sum(a[n, i, k] * b[n, k, j], over=k)


def _tiles_on_threads(s):
    s.tile("i", "j", 6, 8)
    s.reorder("ji", "k", "ii")
    s.unroll("ii")
    s.vectorize("ji", 8)
    s.parallelize("n")
    s.parallelize("io")
    s.parallelize("jo")


nested = kd.kernel(_bmm, name="nested_bmm")
nested.schedule(kd.cpu)(_tiles_on_threads)
nested_checked = kd.kernel(_bmm, name="nested_bmm_checked", checks=True)
nested_checked.schedule(kd.cpu)(_tiles_on_threads)
by_default = kd.kernel(_bmm, name="default_bmm")


@settings(max_examples=25, deadline=None)
@given(
    batch=st.sampled_from([0, 1, 2, 3, 5]),
    rows=st.sampled_from([1, 5, 7, 13, 61]),
    cols=st.sampled_from([1, 3, 9, 17, 67]),
    depth=st.sampled_from([1, 2, 11, 40]),
    seed=st.integers(0, 2**16),
)
def test_nested_loops_on_threads_compute_the_product(batch, rows, cols, depth, seed) -> None:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, rows, depth), dtype=np.float32)
    b = rng.standard_normal((batch, depth, cols), dtype=np.float32)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    for kernel in (nested, nested_checked, by_default):
        c = np.full((batch, rows, cols), np.nan, np.float32)
        kernel(a, b, c)
        np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4 * depth)


def test_an_error_inside_the_inner_loop_on_threads_is_raised() -> None:
    """A bounds error in a chunk of the inner loop on threads (a batch of one: the
    outer loop runs on the caller) is the call's error, and the pool still works."""

    @kd.kernel(checks=True)
    def gather_rows(x, idx, y):
        n, i, j = kd.indices(y.shape[0], y.shape[1], y.shape[2])
        y[n, i, j] = x[n, idx[i], j]

    @gather_rows.schedule(kd.cpu)
    def _(s):
        s.parallelize("n")
        s.parallelize("i")

    x = np.random.default_rng(0).standard_normal((1, 50, 300), dtype=np.float32)
    idx = np.arange(5000) % 50
    y = np.empty((1, 5000, 300), np.float32)
    gather_rows(x, idx, y)
    np.testing.assert_array_equal(y, x[:, idx])
    idx[4321] = 50
    with pytest.raises(kd.BoundsError, match="idx"):
        gather_rows(x, idx, y)
    idx[4321] = 7
    gather_rows(x, idx, y)
    np.testing.assert_array_equal(y, x[:, idx])


@pytest.mark.parametrize("on_threads", [("b",), ("i",), ("b", "i")])
def test_a_temporary_shaped_by_an_array_the_task_reads_nowhere_else(on_threads) -> None:
    """The task's closure carries what the temporaries' shapes read (z's length here:
    it was left out, and the compile failed with a KeyError)."""

    @kd.kernel
    def scratch(x, z, y):
        for b in kd.grid(x.shape[0]):
            for i in kd.grid(x.shape[1]):
                t = kd.empty((z.shape[0], 2), kd.f64)
                t[0, 0] = x[b, i] * 2.0
                t[0, 1] = x[b, i] + 1.0
                y[b, i] = t[0, 0] + t[0, 1]

    @scratch.schedule(kd.cpu)
    def _(s):
        for loop in on_threads:
            s.parallelize(loop)

    x = np.random.default_rng(1).random((3, 70001))
    y = np.zeros_like(x)
    scratch(x, np.zeros(4), y)
    np.testing.assert_allclose(y, 3 * x + 1)


@kd.kernel
def interleave(x, y):
    i, k = kd.indices(2, x.shape[1])
    y[2 * k + i] = kd.sqrt(x[i, k] * x[i, k] + 1.0)


def _interleaved(x: np.ndarray) -> np.ndarray:
    want = np.empty(2 * x.shape[1])
    want[0::2], want[1::2] = np.sqrt(x[0] ** 2 + 1), np.sqrt(x[1] ** 2 + 1)
    return want


def test_a_loop_around_the_copy_back_of_a_cache_is_not_put_on_threads() -> None:
    """Each iteration of i writes back y's whole box, which holds the other iteration's
    elements too: on threads they raced (caching inside a loop already on threads was
    refused; parallelizing it after the cache was not)."""
    x = np.random.default_rng(2).random((2, 1 << 14))

    @kd.kernel
    def raced(x, y):
        interleave.fn(x, y)

    @raced.schedule(kd.cpu)
    def _(s):
        ko, ki = s.split("k", 4096)
        s.cache("y", at=ko)
        s.parallelize("i")

    with pytest.raises(kd.ScheduleError, match="writes back a cached copy of 'y'"):
        raced(x, np.zeros(2 * x.shape[1]))

    @kd.kernel
    def inside(x, y):
        interleave.fn(x, y)

    @inside.schedule(kd.cpu)
    def _(s):  # a loop inside the cached one: fine
        ko, ki = s.split("k", 4096)
        s.cache("y", at=ko)
        s.parallelize(ki)

    y = np.zeros(2 * x.shape[1])
    inside(x, y)
    np.testing.assert_allclose(y, _interleaved(x))


def test_the_copy_back_loops_themselves_may_go_on_threads() -> None:
    @kd.kernel
    def doubled(x, y):
        r, c = kd.indices(x.shape[0], x.shape[1])
        y[r, c] = x[r, c] * 2.0 + y[r, c]

    @doubled.schedule(kd.cpu)
    def _(s):
        ro, ri = s.split("r", 64)
        s.cache("y", at=ro)
        s.parallelize("y.c0")
        s.parallelize("y.cw0")

    x = np.random.default_rng(3).random((131, 997))
    y0 = np.random.default_rng(4).random((131, 997))
    y = y0.copy()
    doubled(x, y)
    np.testing.assert_allclose(y, 2 * x + y0)


def _packed_tiles(kc: int, pack_on_threads: bool):
    """A matmul's BLIS-like schedule: b packed per block of columns (and of k), the
    blocks, the tiles of rows, the packing and the tiles of columns all on threads."""

    def schedule(s):
        io, ii = s.split("i", 6)
        jo, jp = s.split("j", 64)
        jr, ji = s.split(jp, 16)
        s.reorder(jo, io, jr, ii, ji)
        k, at = "k", jo
        if kc:
            ko, k = s.split("k", kc)
            s.reorder(jo, ko, io, jr, ii, ji)
            at = ko
        s.reorder(ji, k, ii)
        s.cache("b", at=at, layout="packed")
        s.vectorize(ji, 16)
        s.unroll(ii)
        for loop in (jo, io, *(["b.c0"] if pack_on_threads else []), jr):
            s.parallelize(loop)

    return schedule


@pytest.mark.parametrize("checks", [False, True])
@pytest.mark.parametrize(("kc", "pack_on_threads"), [(0, False), (32, True)])
def test_packed_panels_with_every_level_on_threads(kc, pack_on_threads, checks) -> None:
    """Temporaries allocated in an outer task and read by the inner ones, the packing
    loops on threads inside a loop on threads: the product's every element."""

    def product(a, b, c):
        i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
        c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)

    kernel = kd.kernel(product, name=f"packed_{kc}_{pack_on_threads}_{checks}", checks=checks)
    kernel.schedule(kd.cpu)(_packed_tiles(kc, pack_on_threads))
    rng = np.random.default_rng(kc)
    for m, k, n in [(0, 5, 7), (1, 1, 1), (7, 13, 200), (61, 67, 131), (300, 80, 300)]:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.full((m, n), np.nan, np.float32)
        kernel(a, b, c)
        want = a.astype(np.float64) @ b.astype(np.float64)
        np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-3)


def test_locals_and_temporaries_of_the_outer_task_in_the_inner_ones() -> None:
    """A local the outer task updates in a serial loop, and a temporary it allocates
    there, read by the loops on threads inside it."""

    @kd.kernel
    def rows(x, idx, y):
        for b in kd.grid(x.shape[0]):
            s = kd.local(x[b, 0] * 2.0)
            for r in kd.range(3):
                s.set(s + 1.0)
                t = kd.empty((y.shape[2],), kd.f64)
                for i in kd.grid(y.shape[2]):
                    t[i] = s * x[b, idx[i]] + r
                for i2 in kd.grid(y.shape[2]):
                    y[b, r, i2] = t[y.shape[2] - 1 - i2] + b

    @rows.schedule(kd.cpu)
    def _(s):
        for loop in ("b", "i", "i2"):
            s.parallelize(loop)

    rng = np.random.default_rng(5)
    for batch, width, n in [(1, 50, 100003), (2, 30, 70001), (5, 7, 13), (3, 5, 0)]:
        x = rng.standard_normal((batch, width))
        idx = rng.integers(0, width, n)
        y = np.full((batch, 3, n), np.nan)
        rows(x, idx, y)
        s = x[:, 0] * 2.0
        for r in range(3):
            s = s + 1.0
            t = s[:, None] * x[:, idx] + r
            np.testing.assert_allclose(y[:, r], t[:, ::-1] + np.arange(batch)[:, None])


def _interleave_schedule(target: str):
    x = np.zeros((2, 1 << 12))
    return Schedule(lower(interleave.ir(x, np.zeros(2 << 12)).kernel), target=target)


def test_the_copy_back_is_found_however_the_cache_was_renamed_or_copied() -> None:
    """The write-back is marked in the IR, not found by name: a second cache of the
    buffer around the first (the inner write-back then stores to the outer copy), a
    specialized version's renamed copies, the distributed copy of a loop that reorder
    made: each is refused, where they were wrong results; the copy's own loops stay
    allowed in the specialized version too."""
    s = _interleave_schedule("cpu")
    ko, ki = s.split("k", 256)
    s.cache("y", at=ko)
    s.cache("y", at="i")
    with pytest.raises(kd.ScheduleError, match="writes back a cached copy"):
        s.parallelize(ko)
    s = _interleave_schedule("cpu")
    ko, ki = s.split("k", 256)
    s.cache("y", at=ko)
    names = s.specialize(ko, below=4)
    with pytest.raises(kd.ScheduleError, match="writes back a cached copy"):
        s.parallelize(names[0])

    @kd.kernel
    def doubled(x, y):
        r, c = kd.indices(x.shape[0], x.shape[1])
        y[r, c] = x[r, c] * 2.0 + y[r, c]

    x = np.zeros((100, 40))
    s = Schedule(lower(doubled.ir(x, x.copy()).kernel), target="cpu")
    ro, ri = s.split("r", 16)
    s.cache("y", at=ro)
    names = s.specialize("c", below=8)
    s.parallelize(next(n for n in names if n.startswith("y.cw0")))  # (its own rows)


def test_a_distributed_copy_of_the_loop_is_checked_too() -> None:
    @kd.kernel
    def parts(x, z, y):
        for i in kd.grid(x.shape[0]):
            for j in kd.grid(x.shape[1]):
                z[i, j] = x[i, j] * 2.0
            y[2 * i] = x[i, 0] + 1.0
            y[2 * i + 1] = x[i, 1] + 1.0

    x = np.zeros((300, 4))
    s = Schedule(lower(parts.ir(x, x.copy(), np.zeros(600)).kernel), target="cpu")
    s.reorder("j", "i")  # (the stores after j go to a copy of i, "i.1")
    s.cache("y", at="i.1")
    with pytest.raises(kd.ScheduleError, match="loop 'i.1' writes back a cached copy"):
        s.parallelize("i")


def test_gpu_blocks_around_a_copy_back_are_refused_as_threads_are() -> None:
    s = _interleave_schedule("cuda")
    ko, ki = s.split("k", 256)
    s.cache("y", at=ko, scope="shared")
    with pytest.raises(kd.ScheduleError, match="different blocks or threads"):
        s.bind("i", "block.x")
