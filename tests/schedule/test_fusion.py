"""`fuse` and the contraction of temporaries it enables (DESIGN §3): softmax's row max and
row sum become scalars and `e` a row buffer; RMS norm's sum of squares a scalar; a
temporary still needed after the fused loop keeps its full size."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from kdsl.ir.nodes import (
    Allocate,
    BufferRole,
    DeclareLocal,
    DimOf,
    Kernel,
    Loop,
    LoopKind,
    Scope,
)
from kdsl.ir.passes import lower
from kdsl.ir.passes.expand import expand_schedule
from kdsl.ir.printer import format_expr, format_kernel
from kdsl.kernel import KernelFunction
from kdsl.schedule import tree
from kdsl.schedule.recipe import Schedule
from kdsl.targets.interp.interpreter import interpret
from tests.helpers import random_array

SHAPES = [(0, 5), (1, 1), (3, 7), (13, 17), (5, 64)]


@kd.kernel
def softmax(x):
    i, j = kd.indices(x.shape[0], x.shape[1])
    m = kd.empty(x.shape[0], x.dtype)
    m[i] = kd.max(x[i, j], over=j)
    e = kd.empty(x.shape, x.dtype)
    e[i, j] = kd.exp(x[i, j] - m[i])
    s = kd.empty(x.shape[0], x.dtype)
    s[i] = kd.sum(e[i, j], over=j)
    y = kd.empty(x.shape, x.dtype)
    y[i, j] = e[i, j] / s[i]
    return y


def softmax_ref(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@kd.kernel
def rmsnorm(x, w, eps):
    i, j = kd.indices(x.shape[0], x.shape[1])
    ss = kd.empty(x.shape[0], x.dtype)
    ss[i] = kd.sum(x[i, j] * x[i, j], over=j)
    y = kd.empty(x.shape, x.dtype)
    y[i, j] = x[i, j] * kd.rsqrt(ss[i] / x.shape[1] + eps) * w[j]
    return y


def rmsnorm_ref(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * w


@kd.kernel
def reused(x):
    """`t` feeds the first fused pair and is read again by a third loop."""
    i = kd.indices(x.shape[0])
    t = kd.empty(x.shape[0], x.dtype)
    t[i] = x[i] * 2
    y = kd.empty(x.shape[0], x.dtype)
    y[i] = t[i] + 1
    z = kd.empty(x.shape[0], x.dtype)
    z[i] = t[i] * 3
    return y, z


def traced(k: KernelFunction, *args: object) -> Kernel:
    return lower(k.ir(*args).kernel)


def fuse_softmax(s: Schedule) -> None:
    s.fuse("i", "i.1")
    s.fuse("i", "i.2")
    s.fuse("i", "i.3")
    s.fuse("j.1", "j.2")


def run(kernel: Kernel, **args: object) -> list[np.ndarray]:
    return list(interpret(expand_schedule(kernel), args))


def temps(kernel: Kernel) -> dict[str, tuple[str, ...]]:
    """Each temporary's shape, as printed."""
    return {
        b.name: tuple(format_expr(d) for d in b.shape)
        for b in kernel.buffers
        if b.role is BufferRole.TEMP
    }


# --------------------------------------------------------------------------- softmax


def test_fused_softmax_keeps_one_row_buffer_and_two_scalars():
    x = random_array(np.random.default_rng(0), (3, 7), np.float32)
    s = Schedule(traced(softmax, x))
    fuse_softmax(s)
    k = s.kernel
    why = format_kernel(k)
    assert temps(k) == {"e": ("x.shape[1]",)}, why
    (nest,) = [st for st in k.body if isinstance(st, Loop)]
    assert nest.var == "i" and nest.kind is LoopKind.PARALLEL, why
    assert nest.body[0] == Allocate("e"), why  # one row of e per iteration of i
    assert k.buffer("e").shape == (DimOf("x", 1),), why
    assert not any(isinstance(st, Allocate) for st in k.body), why
    scalars = {st.name for st in nest.body if isinstance(st, DeclareLocal)}
    assert {"m", "s"} <= scalars, why
    inner = [(st.var, st.kind) for st in nest.body if isinstance(st, Loop)]
    assert inner == [
        ("j", LoopKind.REDUCTION),
        ("j.1", LoopKind.REDUCTION),  # the exp loop fused with the sum: a reduction
        ("j.3", LoopKind.PARALLEL),
    ], why
    text = format_kernel(k)
    assert "e[j.1] = exp(x[i, j.1] - m)" in text
    assert "sum_j = sum_j + e[j.1]" in text
    assert "y[i, j.3] = e[j.3] / s" in text


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_softmax_matches_numpy(shape):
    x = random_array(np.random.default_rng(1), shape, np.float32)
    s = Schedule(traced(softmax, x))
    fuse_softmax(s)
    (y,) = run(s.kernel, x=x)
    np.testing.assert_allclose(y, softmax_ref(x), rtol=1e-5, atol=1e-7)


def test_fused_softmax_scheduled_further_matches_numpy():
    """The fused rows, split for threads, the row loops vectorized and unrolled."""
    x = random_array(np.random.default_rng(2), (13, 37), np.float32)
    s = Schedule(traced(softmax, x))
    fuse_softmax(s)
    s.split("i", 4)
    s.parallelize("io")
    s.vectorize("j.3", 8)
    jo, ji = s.split("j", 4)
    s.unroll(ji)
    (y,) = run(s.kernel, x=x)
    np.testing.assert_allclose(y, softmax_ref(x), rtol=1e-5, atol=1e-7)


def test_a_contracted_scalar_grows_back_into_a_buffer_when_reordered():
    """Reordering the fused loop inside its row loop distributes it: the scalar the fuse
    made crosses the new loops, so it becomes a buffer over the rows again."""

    @kd.kernel
    def scale_rows(x):
        i, j = kd.indices(x.shape[0], x.shape[1])
        m = kd.empty(x.shape[0], x.dtype)
        m[i] = x[i, 0] * 2
        y = kd.empty(x.shape, x.dtype)
        y[i, j] = x[i, j] * m[i]
        return y

    x = random_array(np.random.default_rng(3), (5, 11), np.float32)
    s = Schedule(traced(scale_rows, x))
    s.fuse("i", "i.1")
    assert temps(s.kernel) == {}, format_kernel(s.kernel)
    s.reorder("j", "i")
    assert temps(s.kernel) == {"m.1": ("x.shape[0]",)}, format_kernel(s.kernel)
    assert [lp.var for lp in tree.loops(s.kernel)] == ["i.1", "j", "i"]
    (y,) = run(s.kernel, x=x)
    np.testing.assert_array_equal(y, x * (x[:, :1] * 2))


def test_softmax_fused_with_the_decorator_compiles_and_matches_numpy():
    k = KernelFunction(softmax.fn, name="softmax")
    k.schedule(kd.cpu)(fuse_softmax)
    x = random_array(np.random.default_rng(4), (13, 17), np.float32)
    np.testing.assert_allclose(k(x), softmax_ref(x), rtol=1e-5, atol=1e-7)
    lowered = k.lowered(x).kernel
    assert set(temps(lowered)) == {"e"}, format_kernel(lowered)


def test_fusing_the_first_two_softmax_loops_makes_only_the_row_max_a_scalar():
    x = random_array(np.random.default_rng(5), (3, 4), np.float32)
    s = Schedule(traced(softmax, x))
    assert s.fuse("i", "i.1") == "i"
    why = format_kernel(s.kernel)
    assert temps(s.kernel) == {"e": ("x.shape[0]", "x.shape[1]"), "s": ("x.shape[0]",)}, why
    assert s.kernel.buffer("e").scope is Scope.HEAP
    assert [lp.var for lp in tree.loops(s.kernel)] == ["i", "j", "j.1", "i.2", "j.2", "i.3", "j.3"]
    (y,) = run(s.kernel, x=x)
    np.testing.assert_allclose(y, softmax_ref(x), rtol=1e-5, atol=1e-7)


# -------------------------------------------------------------------------- RMS norm


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_rmsnorm_makes_the_sum_of_squares_a_scalar(shape):
    rng = np.random.default_rng(6)
    x, w = random_array(rng, shape, np.float32), random_array(rng, shape[1:], np.float32)
    s = Schedule(traced(rmsnorm, x, w, 1e-5))
    s.fuse("i", "i.1")
    why = format_kernel(s.kernel)
    assert temps(s.kernel) == {}, why
    (nest,) = [st for st in s.kernel.body if isinstance(st, Loop)]
    assert "ss" in {st.name for st in nest.body if isinstance(st, DeclareLocal)}, why
    (y,) = run(s.kernel, x=x, w=w, eps=1e-5)
    np.testing.assert_allclose(y, rmsnorm_ref(x, w, 1e-5), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ no contraction


def test_a_temporary_used_after_the_fused_loop_keeps_its_size():
    x = random_array(np.random.default_rng(7), (11,), np.float32)
    s = Schedule(traced(reused, x))
    s.fuse("i", "i.1")
    k = s.kernel
    why = format_kernel(k)
    assert temps(k) == {"t": ("x.shape[0]",)}, why
    assert Allocate("t") in k.body, why  # still allocated before the loops, not inside
    assert [lp.var for lp in tree.loops(k)] == ["i", "i.2"], why
    y, z = run(k, x=x)
    np.testing.assert_array_equal(y, x * 2 + 1)
    np.testing.assert_array_equal(z, x * 2 * 3)


def test_the_temporary_contracts_once_its_last_reader_is_fused_in():
    x = random_array(np.random.default_rng(8), (11,), np.float32)
    s = Schedule(traced(reused, x))
    s.fuse("i", "i.1")
    s.fuse("i", "i.2")
    assert temps(s.kernel) == {}, format_kernel(s.kernel)
    y, z = run(s.kernel, x=x)
    np.testing.assert_array_equal(y, x * 2 + 1)
    np.testing.assert_array_equal(z, x * 2 * 3)


def test_a_parameter_is_never_contracted():
    @kd.kernel
    def through_output(x, t, y):
        i = kd.indices(x.shape[0])
        t[i] = x[i] * 2
        y[i] = t[i] + 1

    x = random_array(np.random.default_rng(9), (7,), np.float32)
    t, y = np.zeros_like(x), np.zeros_like(x)
    s = Schedule(traced(through_output, x, t, y))
    s.fuse("i", "i.1")
    assert "t[i] = x[i] * 2.0" in format_kernel(s.kernel)
    interpret(expand_schedule(s.kernel), {"x": x, "t": t, "y": y})
    np.testing.assert_array_equal(t, x * 2)
    np.testing.assert_array_equal(y, x * 2 + 1)
