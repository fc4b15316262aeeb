"""A vectorized outer loop of a split with its inner tile unrolled (register blocking):
each step was accepted, then the compile failed ("the extent of loop 'ii.1.1' inside it
differs between lanes"). The schedules the random search found, run at odd sizes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import kdsl as kd
from kdsl.kernel import KernelFunction
from kdsl.schedule.recipe import Schedule
from tests.helpers import check_kernel, keyed_rng, random_array


def _axpy(a, x, y, out):
    i = kd.indices(x.shape[0])
    out[i] = a * x[i] + y[i]


def _stencil3(x, y):
    i = kd.indices(y.shape[0])
    y[i] = x[i] + 2 * x[i + 1] + x[i + 2]


def _rowsum(x, out):
    i, j = kd.indices(x.shape[0], x.shape[1])
    out[i] = kd.sum(x[i, j], over=j)


def _colsum(x, out):
    i, j = kd.indices(x.shape[0], x.shape[1])
    out[j] = kd.sum(x[i, j], over=i)


def _mv(a, x, y):
    i, j = kd.indices(a.shape[0], a.shape[1])
    y[i] = kd.sum(a[i, j] * x[j], over=j)


def _total(x, out):
    i, j = kd.indices(x.shape[0], x.shape[1])
    out[0] = kd.sum(x[i, j], over=(i, j))


Steps = Callable[[Schedule], None]


def _split_vectorize_unroll(factor: int, width: int, unroll: int | None, first: bool) -> Steps:
    def steps(s: Schedule) -> None:
        io, ii = s.split("i", factor)
        if first:
            s.unroll(ii, unroll)
        s.vectorize(io, width)
        if not first:
            s.unroll(ii, unroll)

    return steps


def _tile_vectorize_unroll(outer: str, inner: str, vector: str, unrolled: str) -> Steps:
    def steps(s: Schedule) -> None:
        s.tile(outer, inner, 4, 4)
        s.vectorize(vector, 8)
        s.unroll(unrolled)

    return steps


def _kernel(fn: Callable[..., None], steps: Steps) -> KernelFunction:
    k = KernelFunction(fn, name=fn.__name__.lstrip("_"))
    k.schedule(kd.cpu)(steps)
    return k


ONE_D = [
    pytest.param(2, 8, 2, False, id="split2-vec8-unroll2"),
    pytest.param(2, 8, None, False, id="split2-vec8-unroll"),
    pytest.param(2, 8, 2, True, id="unroll-before-vectorize"),
    pytest.param(3, 4, None, False, id="split3-vec4-unroll"),
    pytest.param(7, 32, 2, True, id="split7-unroll2-vec32"),
]


@pytest.mark.parametrize("factor, width, unroll, first", ONE_D)
@pytest.mark.parametrize("n", [1, 37, 61, 131])
def test_axpy_vector_over_unrolled_tiles(factor, width, unroll, first, n):
    k = _kernel(_axpy, _split_vectorize_unroll(factor, width, unroll, first))
    rng = keyed_rng("axpy", factor, width, unroll, first, n)
    x, y = random_array(rng, (n,), np.float32), random_array(rng, (n,), np.float32)
    out = np.zeros(n, np.float32)
    check_kernel(k, [1.5, x, y, out], {3: 1.5 * x + y}, rtol=1e-5)


@pytest.mark.parametrize("n", [3, 40, 99])
def test_stencil_vector_over_unrolled_tiles(n):
    k = _kernel(_stencil3, _split_vectorize_unroll(2, 8, 2, False))
    rng = keyed_rng("stencil3", n)
    x = random_array(rng, (n + 2,), np.float64)
    y = np.zeros(n, np.float64)
    check_kernel(k, [x, y], {1: x[:-2] + 2 * x[1:-1] + x[2:]}, rtol=1e-12)


@pytest.mark.parametrize(
    "fn, steps",
    [
        (_rowsum, _tile_vectorize_unroll("j", "i", "io.2", "ii")),
        (_colsum, _tile_vectorize_unroll("i", "j", "jo.2", "ji")),
    ],
    ids=["rowsum", "colsum"],
)
@pytest.mark.parametrize("shape", [(37, 23), (70, 9), (5, 3)])
def test_reductions_vector_over_unrolled_tiles(fn, steps, shape):
    k = _kernel(fn, steps)
    rng = keyed_rng(fn.__name__, shape)
    x = random_array(rng, shape, np.float32)
    axis = 1 if fn is _rowsum else 0
    out = np.zeros(shape[1 - axis], np.float32)
    check_kernel(k, [x, out], {1: x.sum(axis=axis)}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(37, 23), (66, 5)])
def test_mv_vector_over_unrolled_tiles(shape):
    k = _kernel(_mv, _tile_vectorize_unroll("j", "i", "io.2", "ii"))
    rng = keyed_rng("mv", shape)
    a = random_array(rng, shape, np.float32)
    x = random_array(rng, (shape[1],), np.float32)
    y = np.zeros(shape[0], np.float32)
    check_kernel(k, [a, x, y], {2: a @ x}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(37, 23), (300, 11)])
def test_total_vector_over_unrolled_tiles(shape):
    k = _kernel(_total, _split_vectorize_unroll(7, 32, 2, True))
    rng = keyed_rng("total", shape)
    x = random_array(rng, shape, np.float64)
    out = np.zeros(1, np.float64)
    check_kernel(k, [x, out], {1: np.array([x.sum()])}, rtol=1e-10)


def test_the_full_tiles_are_unrolled_inside_the_vectors():
    """The vectors run the constant tile unrolled (no loop left inside them); the scalar
    tail takes the edge tile."""
    k = _kernel(_axpy, _split_vectorize_unroll(2, 8, 2, False))
    x = np.ones(37, np.float32)
    lowered = str(k.lowered(1.0, x, x, x.copy()))
    vector_loop = lowered.split("vectorized(8)")[1].split("\n  for ")[0]
    assert "for " not in vector_loop, lowered
    assert vector_loop.count("out[") == 2, lowered
