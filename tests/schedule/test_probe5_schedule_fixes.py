"""Schedules a user probe found refused without cause, or refused with an unhelpful
message: fuse over extents the shape checks prove equal, a cache bounded by another
buffer's copy loop, vector width 1, and prefetch on a gather. Results against NumPy on
random data at odd sizes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import kdsl as kd
from kdsl.ir.nodes import LoopExec
from kdsl.kernel import KernelFunction
from kdsl.schedule import tree
from kdsl.schedule.recipe import Schedule
from tests.helpers import check_kernel, keyed_rng, random_array


def _kernel(fn: Callable[..., object], steps: Callable[[Schedule], None]) -> KernelFunction:
    k = KernelFunction(fn, name=fn.__name__.lstrip("_"))
    k.schedule(kd.cpu)(steps)
    return k


def _refusal(k: KernelFunction, *args: object) -> kd.ScheduleError:
    with pytest.raises(kd.ScheduleError) as info:
        k(*args)
    err = info.value
    assert err.loc is not None and err.loc.file == __file__, str(err)
    return err


# ------------------------------------------------------------ fuse over checked extents


def _two_passes(x, t, y):
    i = kd.indices(x.shape[0])
    t[i] = x[i] * 2.0
    k = kd.indices(y.shape[0], names="k")
    y[k] = t[k] + 1.0


def _fuse_i_k(s: Schedule) -> None:
    s.fuse("i", "k")


@pytest.mark.parametrize("n", [1, 20, 37])
def test_fuse_accepts_loops_over_dimensions_the_shape_checks_make_equal(n):
    k = _kernel(_two_passes, _fuse_i_k)
    rng = keyed_rng("two_passes", n)
    x = random_array(rng, (n,), np.float32)
    t, y = np.zeros(n, np.float32), np.zeros(n, np.float32)
    check_kernel(k, [x, t, y], {1: 2 * x, 2: 2 * x + 1}, rtol=1e-6)
    lowered = k.lowered(x, t, y).kernel
    assert [lp.var for lp in tree.loops(lowered)] == ["i"]


def _softmax_rows(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    m = kd.empty((x.shape[0],), x.dtype)
    m[i] = kd.max(x[i, j], over=j)
    r, c = kd.indices(y.shape[0], y.shape[1], names="r c")
    y[r, c] = kd.exp(x[r, c] - m[r])


def _fuse_rows(s: Schedule) -> None:
    s.fuse("i", "r")


@pytest.mark.parametrize("shape", [(5, 7), (33, 3)])
def test_fuse_over_checked_extents_contracts_the_temporary(shape):
    k = _kernel(_softmax_rows, _fuse_rows)
    rng = keyed_rng("softmax_rows", shape)
    x = random_array(rng, shape, np.float64)
    y = np.zeros(shape, np.float64)
    want = np.exp(x - x.max(axis=1, keepdims=True))
    check_kernel(k, [x, y], {1: want}, rtol=1e-12)
    assert "allocate m" not in str(k.lowered(x, y))  # the row max became a scalar


def _unrelated_extents(x, y):
    i = kd.indices(x.shape[0])
    x[i] = x[i] * 2.0
    k = kd.indices(y.shape[0], names="k")
    y[k] = y[k] + 1.0


def test_fuse_over_unproven_extents_shows_both_extents():
    k = _kernel(_unrelated_extents, _fuse_i_k)
    err = _refusal(k, np.ones(4, np.float32), np.ones(5, np.float32))
    assert (
        "loops 'i' (over x.shape[0]) and 'k' (over y.shape[0]) have different ranges" in err.what
    ), str(err)
    assert err.loc is not None and err.loc.text.strip() == 's.fuse("i", "k")'
    assert err.fix is not None and "x.shape[0]" in err.fix, str(err)


def _stage(x, t, y):
    i = kd.indices(x.shape[0])
    t[i] = x[i] * 3.0
    k = kd.indices(y.shape[0], names="k")
    y[k] = t[k] - 1.0


def _inline_t(s: Schedule) -> None:
    s.inline("t")


def _stage_temp(x, y):
    i = kd.indices(x.shape[0])
    t = kd.empty((y.shape[0],), x.dtype)
    t[i] = x[i] * 3.0
    k = kd.indices(y.shape[0], names="k")
    y[k] = t[k] - 1.0


@pytest.mark.parametrize("n", [3, 29])
def test_inline_accepts_a_producer_over_a_dimension_checked_equal(n):
    k = _kernel(_stage_temp, _inline_t)
    rng = keyed_rng("stage_temp", n)
    x = random_array(rng, (n,), np.float32)
    y = np.zeros(n, np.float32)
    check_kernel(k, [x, y], {1: 3 * x - 1}, rtol=1e-6)
    assert "t[" not in str(k.lowered(x, y))


# ------------------------------------------------------ cache bounded by its own loops


def _conv2d(X, W, Y):
    i, j, p, q = kd.indices(Y.shape[0], Y.shape[1], W.shape[0], W.shape[1])
    Y[i, j] = kd.sum(X[i + p, j + q] * W[p, q], over=(p, q))


def _cache_x_then_w(s: Schedule) -> None:
    io, jo, ii, ji = s.tile("i", "j", 2, 2)
    s.cache("X", at=jo, layout="transposed")
    s.cache("W", at=io)


def _conv_reference(X: np.ndarray, W: np.ndarray, out: tuple[int, int]) -> np.ndarray:
    p, q = W.shape
    return sum(X[a : a + out[0], b : b + out[1]] * W[a, b] for a in range(p) for b in range(q))


@pytest.mark.parametrize("shape, filt", [((10, 12), (3, 3)), ((13, 7), (2, 5))])
def test_cache_ignores_the_copy_loops_of_another_buffer(shape, filt):
    k = _kernel(_conv2d, _cache_x_then_w)
    rng = keyed_rng("conv2d", shape, filt)
    X = random_array(rng, shape, np.float32)
    W = random_array(rng, filt, np.float32)
    out = (shape[0] - filt[0] + 1, shape[1] - filt[1] + 1)
    Y = np.zeros(out, np.float32)
    check_kernel(k, [X, W, Y], {2: _conv_reference(X, W, out)}, rtol=1e-5, atol=1e-5)
    assert "W.c" in str(k.lowered(X, W, Y))


def _conv2d_bf16(X, W, Y):
    i, j, p, q = kd.indices(Y.shape[0], Y.shape[1], W.shape[0], W.shape[1])
    Y[i, j] = kd.sum(X[i + p, j + q].astype(kd.f32) * W[p, q].astype(kd.f32), over=(p, q))


def _cache_x_then_w_vnni(s: Schedule) -> None:
    io, jo, ii, ji = s.tile("i", "j", 2, 2)
    s.cache("X", at=jo, layout="transposed")
    s.cache("W", at=io, layout="vnni")


def test_a_vnni_cache_beside_another_buffers_copy_loops():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    k = _kernel(_conv2d_bf16, _cache_x_then_w_vnni)
    rng = keyed_rng("conv2d_bf16")
    X = random_array(rng, (11, 9), np.float32).astype(ml_dtypes.bfloat16)
    W = random_array(rng, (3, 3), np.float32).astype(ml_dtypes.bfloat16)
    Y = np.zeros((9, 7), np.float32)
    want = _conv_reference(X.astype(np.float32), W.astype(np.float32), (9, 7))
    check_kernel(k, [X, W, Y], {2: want}, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- vector width 1


def _scale(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i, j] = x[i, j] * 2.0 + 1.0


def _vectorize_width(width: int) -> Callable[[Schedule], None]:
    def steps(s: Schedule) -> None:
        s.vectorize("j", s.param("w", [width, 16]))

    return steps


@pytest.mark.parametrize("width", [1, 8])
def test_vector_width_1_is_scalar_code_and_any_other_width_vectors(width):
    k = _kernel(_scale, _vectorize_width(width))
    rng = keyed_rng("scale", width)
    x = random_array(rng, (7, 13), np.float32)
    y = np.zeros_like(x)
    check_kernel(k, [x, y], {1: 2 * x + 1}, rtol=1e-6)
    execs = {lp.exec for lp in tree.loops(k.lowered(x, y).kernel)}
    assert (LoopExec.VECTORIZED in execs) == (width > 1)


def _unroll_then_vectorize_1(s: Schedule) -> None:
    s.unroll("j", 2)
    s.vectorize("j", 1)


def test_vector_width_1_still_refuses_an_annotated_loop():
    k = _kernel(_scale, _unroll_then_vectorize_1)
    err = _refusal(k, np.ones((2, 3), np.float32), np.ones((2, 3), np.float32))
    assert "loop 'j' is already unrolled" in err.what, str(err)


# ------------------------------------------------------------------ prefetch, gather


def _gather(x, idx, y):
    i, j = kd.indices(idx.shape[0], x.shape[1])
    y[i, j] = x[idx[i], j]


def _prefetch_x(s: Schedule) -> None:
    s.prefetch("x", "i")


def test_prefetch_on_a_gather_names_the_subscript_that_reads_memory():
    k = _kernel(_gather, _prefetch_x)
    x = np.ones((6, 5), np.float32)
    idx = np.array([3, 1, 4], np.int64)
    err = _refusal(k, x, idx, np.zeros((3, 5), np.float32))
    assert "reads or writes 'x' only at subscripts that read memory (idx[i])" in err.what, str(err)
    assert err.fix is not None and "prefetch 'idx'" in err.fix, str(err)
