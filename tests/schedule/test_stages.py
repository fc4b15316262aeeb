"""inline and compute_at: semantics against NumPy (interpreted and compiled) and every
refusal's message."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kdsl as kd
from kdsl.errors import ScheduleError
from kdsl.ir.nodes import Kernel, Loop
from kdsl.ir.passes import lower
from kdsl.ir.passes.expand import expand_schedule
from kdsl.ir.printer import format_kernel
from kdsl.ir.verify import verify
from kdsl.schedule.recipe import Schedule
from kdsl.schedule.tree import loops
from kdsl.targets.interp.interpreter import interpret
from tests.helpers import random_array

SIZES = st.sampled_from([0, 1, 2, 3, 5, 7, 13])
RNG = np.random.default_rng(7)


# --------------------------------------------------------------------------- helpers


def schedule(kernel: object, *args: object) -> Schedule:
    """A Schedule on the traced, lowered IR of `kernel` for these arguments."""
    return Schedule(lower(kernel.ir(*args).kernel))  # type: ignore[attr-defined]


def run(kernel: Kernel, **args: object) -> dict[str, object]:
    """Interpret the scheduled IR on copies of `args`; the arrays after the call."""
    verify(kernel, "scheduled")
    out = {n: a.copy() if isinstance(a, np.ndarray) else a for n, a in args.items()}
    interpret(expand_schedule(kernel), out)
    return out


def vec(n: int = 5) -> np.ndarray:
    return random_array(RNG, (n,), np.float32)


def refusal(s: Schedule, step: str, *args: object) -> str:
    with pytest.raises(ScheduleError) as info:
        getattr(s, step)(*args)
    return str(info.value)


def loop_text(kernel: Kernel) -> str:
    """The printed kernel without its buffer and check lines: the loops a reviewer reads."""
    lines = format_kernel(kernel).splitlines()[1:]
    return "\n".join(ln for ln in lines if not ln.lstrip().startswith(("buffer", "check")))


# --------------------------------------------------------------------------- kernels


@kd.kernel
def blur(x, y):
    i, j = kd.indices(y.shape[0], y.shape[1])
    t = kd.empty((y.shape[0] + 1, y.shape[1]), kd.f32)
    a, b = kd.indices(y.shape[0] + 1, y.shape[1], names="a b")
    t[a, b] = x[a, b] + x[a, b + 1]
    y[i, j] = t[i, j] + t[i + 1, j]


def blur_args(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return random_array(RNG, (h + 1, w + 1), np.float32), random_array(RNG, (h, w), np.float32)


def blur_ref(x: np.ndarray) -> np.ndarray:
    t = x[:, :-1] + x[:, 1:]
    return t[:-1] + t[1:]


@kd.kernel
def softmax(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    m = kd.empty((x.shape[0],), kd.f32)
    e = kd.empty(x.shape, kd.f32)
    s = kd.empty((x.shape[0],), kd.f32)
    m[i] = kd.max(x[i, j], over=j)
    e[i, j] = kd.exp(x[i, j] - m[i])
    s[i] = kd.sum(e[i, j], over=j)
    y[i, j] = e[i, j] / s[i]


def softmax_ref(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------- inline


@given(h=SIZES, w=SIZES)
def test_inline_blur(h: int, w: int) -> None:
    x, y = blur_args(h, w)
    s = schedule(blur, x, y)
    s.inline("t")
    assert "t" not in [b.name for b in s.kernel.buffers]
    assert loop_text(s.kernel) == (
        "  for i in range(y.shape[0]):  # parallel\n"
        "    for j in range(y.shape[1]):  # parallel\n"
        "      y[i, j] = x[i, j] + x[i, j + 1] + (x[i + 1, j] + x[i + 1, j + 1])"
    )
    np.testing.assert_allclose(run(s.kernel, x=x, y=y)["y"], blur_ref(x), rtol=1e-6)


def test_inline_after_tiling_the_consumer() -> None:
    x, y = blur_args(11, 7)
    s = schedule(blur, x, y)
    s.tile("i", "j", 4, 3)
    s.inline("t")
    np.testing.assert_allclose(run(s.kernel, x=x, y=y)["y"], blur_ref(x), rtol=1e-6)


def test_inline_into_a_gather() -> None:
    @kd.kernel
    def gather(x, idx, y):
        i = kd.indices(y.shape[0])
        t = kd.empty(x.shape, kd.f32)
        a = kd.indices(x.shape[0], names="a")
        t[a] = x[a] * 2.0
        y[i] = t[idx[i]]

    x, idx, y = random_array(RNG, (9,), np.float32), RNG.integers(0, 9, 5), np.ones(5, np.float32)
    s = schedule(gather, x, idx, y)
    s.inline("t")
    np.testing.assert_allclose(run(s.kernel, x=x, idx=idx, y=y)["y"], x[idx] * 2)


def test_inline_compiled() -> None:
    @kd.kernel
    def blur2(x, y):
        i, j = kd.indices(y.shape[0], y.shape[1])
        t = kd.empty((y.shape[0] + 1, y.shape[1]), kd.f32)
        a, b = kd.indices(y.shape[0] + 1, y.shape[1], names="a b")
        t[a, b] = x[a, b] + x[a, b + 1]
        y[i, j] = t[i, j] + t[i + 1, j]

    @blur2.schedule(kd.cpu)
    def _(s: Schedule) -> None:
        s.inline("t")

    for h, w in [(1, 1), (6, 13), (0, 3)]:
        x, y = blur_args(h, w)
        blur2(x, y)
        np.testing.assert_allclose(y, blur_ref(x), rtol=1e-6)


# --------------------------------------------------------------------- compute_at

# The blur with `t` computed per 4×3 tile of y: a 5×3 box of t (one halo row), on the
# stack; the producer's loops keep their names `a`, `b` and are clamped at the edges.
BLUR_AT_JO = """\
  for io in range((y.shape[0] + 3) // 4):  # parallel
    for jo in range((y.shape[1] + 2) // 3):  # parallel
      allocate t
      for a in range(min(5, y.shape[0] - io * 4 + 1)):  # parallel
        for b in range(min(3, y.shape[1] - jo * 3)):  # parallel
          t[a, b] = x[io * 4 + a, jo * 3 + b] + x[io * 4 + a, jo * 3 + b + 1]
      for ii in range(min(4, y.shape[0] - io * 4)):  # parallel
        for ji in range(min(3, y.shape[1] - jo * 3)):  # parallel
          y[io * 4 + ii, jo * 3 + ji] = t[ii, ji] + t[ii + 1, ji]"""


def test_compute_at_blur_tile_ir() -> None:
    x, y = blur_args(9, 8)
    s = schedule(blur, x, y)
    s.tile("i", "j", 4, 3)
    s.compute_at("t", "jo")
    assert loop_text(s.kernel) == BLUR_AT_JO
    t = s.kernel.buffer("t")
    assert [d.value for d in t.shape] == [5, 3] and t.scope.value == "stack"  # type: ignore[union-attr]
    np.testing.assert_allclose(run(s.kernel, x=x, y=y)["y"], blur_ref(x), rtol=1e-6)


@given(h=SIZES, w=SIZES, at=st.sampled_from(["io", "jo", "ii", "ji"]))
def test_compute_at_blur_tiled(h: int, w: int, at: str) -> None:
    x, y = blur_args(h, w)
    s = schedule(blur, x, y)
    s.tile("i", "j", 4, 3)
    s.compute_at("t", at)
    np.testing.assert_allclose(run(s.kernel, x=x, y=y)["y"], blur_ref(x), rtol=1e-6)


def test_compute_at_blur_untiled_rows() -> None:
    """At the row loop: two rows of t, full width, and no clamp is needed."""
    x, y = blur_args(6, 5)
    s = schedule(blur, x, y)
    s.compute_at("t", "i")
    text = loop_text(s.kernel)
    assert "for a in range(2):" in text and "for b in range(y.shape[1]):" in text
    assert "t[a, b] = x[i + a, b] + x[i + a, b + 1]" in text
    assert "y[i, j] = t[0, j] + t[1, j]" in text
    np.testing.assert_allclose(run(s.kernel, x=x, y=y)["y"], blur_ref(x), rtol=1e-6)


def test_compute_at_innermost_drops_unit_loops() -> None:
    x, y = blur_args(3, 4)
    s = schedule(blur, x, y)
    s.compute_at("t", "j")
    assert "b" not in [lp.var for lp in loops(s.kernel)]  # one column: no loop over it
    assert [d.value for d in s.kernel.buffer("t").shape] == [2, 1]  # type: ignore[union-attr]
    np.testing.assert_allclose(run(s.kernel, x=x, y=y)["y"], blur_ref(x), rtol=1e-6)


@given(rows=SIZES, cols=SIZES.filter(bool))
def test_compute_at_softmax_reductions(rows: int, cols: int) -> None:
    """The row max and the row sum become one-element buffers per row."""
    x = random_array(RNG, (rows, cols), np.float32)
    s = schedule(softmax, x, x)
    s.compute_at("m", "i.1")
    s.compute_at("s", "i.3")
    assert [d.value for d in s.kernel.buffer("m").shape] == [1]  # type: ignore[union-attr]
    assert [d.value for d in s.kernel.buffer("s").shape] == [1]  # type: ignore[union-attr]
    out = run(s.kernel, x=x, y=np.zeros_like(x))["y"]
    np.testing.assert_allclose(out, softmax_ref(x), rtol=1e-5, atol=1e-7)


def test_compute_at_softmax_ir() -> None:
    x = random_array(RNG, (3, 5), np.float32)
    s = schedule(softmax, x, x)
    s.compute_at("m", "i.1")
    assert (
        "  for i.1 in range(x.shape[0]):  # parallel\n"
        "    allocate m\n"
        "    max_j: f32 = -inf\n"
        "    for j in range(x.shape[1]):  # reduction\n"
        "      max_j = max(max_j, x[i.1, j])\n"
        "    m[0] = max_j\n"
        "    for j.1 in range(x.shape[1]):  # parallel\n"
        "      e[i.1, j.1] = exp(x[i.1, j.1] - m[0])\n"
    ) in loop_text(s.kernel)


@kd.kernel
def shifted(x, y):
    i = kd.indices(y.shape[0])
    t = kd.empty(x.shape, kd.f32)
    a = kd.indices(x.shape[0], names="a")
    t[a] = x[a] * 2.0
    with kd.when(i > 0):
        y[i] = t[i - 1]


@kd.kernel
def reversed_stride(x, y):
    i = kd.indices(y.shape[0])
    t = kd.empty(x.shape, kd.f32)
    a = kd.indices(x.shape[0], names="a")
    t[a] = x[a] * 2.0
    y[i] = t[x.shape[0] - 1 - 2 * i]


@given(n=SIZES)
def test_compute_at_clamps_below_zero(n: int) -> None:
    """Boxes that may start before 0 (t[i - 1] under kd.when, t[n - 1 - 2 * i]) are
    clamped at both ends; the consumer's subscripts stay relative to the box."""
    x, y = vec(n), vec(n)
    s = schedule(shifted, x, y)
    s.compute_at("t", s.split("i", 2)[0])
    want = y.copy()
    want[1:] = 2 * x[:-1]
    np.testing.assert_allclose(run(s.kernel, x=x, y=y)["y"], want)

    x = vec(2 * n + 1)
    s = schedule(reversed_stride, x, y)
    s.compute_at("t", s.split("i", 3)[0])
    assert "y[io * 3 + ii] = t[4 - ii * 2]" in loop_text(s.kernel)
    np.testing.assert_allclose(run(s.kernel, x=x, y=y)["y"], 2 * x[2 * n - 2 * np.arange(n)])


def test_compute_at_per_element_recomputes() -> None:
    """At the consumer's inner loop the reduction runs per element: slow, still exact."""
    x = random_array(RNG, (4, 6), np.float32)
    s = schedule(softmax, x, x)
    s.compute_at("m", "j.1")
    out = run(s.kernel, x=x, y=np.zeros_like(x))["y"]
    np.testing.assert_allclose(out, softmax_ref(x), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("groups", [1, 3, 8])
def test_compute_at_a_quotient_of_an_inner_loop(groups: int) -> None:
    """`2 * g + lane // 8` (a vector's lanes over two blocks, as the quantized
    products read their scales) spans 2 values per g: the box is 2 long."""

    @kd.kernel
    def per_lane(x, y):
        b = kd.indices(x.shape[0], names="b")
        t = kd.empty(x.shape[0], x.dtype)
        t[b] = 2 * x[b]
        g, lane = kd.indices(y.shape[0], 16)
        y[g, lane] = t[2 * g + lane // 8]

    x, y = vec(2 * groups), random_array(RNG, (groups, 16), np.float32)
    s = schedule(per_lane, x, y)
    s.compute_at("t", "g")
    assert "buffer t: f32[2]" in format_kernel(s.kernel)
    want = np.repeat(2 * x.reshape(groups, 2), 8, axis=1)
    np.testing.assert_allclose(run(s.kernel, x=x, y=y)["y"], want, rtol=1e-6)


def test_compute_at_moved_loops_stay_schedulable() -> None:
    x, y = blur_args(5, 6)
    s = schedule(blur, x, y)
    s.split("i", 2)
    s.compute_at("t", "io")
    s.split("a", 2)  # the moved producer's loops are schedulable
    np.testing.assert_allclose(run(s.kernel, x=x, y=y)["y"], blur_ref(x), rtol=1e-6)


def test_compute_at_replays_from_json() -> None:
    x, y = blur_args(5, 6)
    s = schedule(blur, x, y)
    s.tile("i", "j", 4, 3)
    s.compute_at("t", "jo")
    again = Schedule.replay(s.to_json(), lower(blur.ir(x, y).kernel))
    assert again.kernel == s.kernel


def test_compute_at_compiled() -> None:
    @kd.kernel
    def blur3(x, y):
        i, j = kd.indices(y.shape[0], y.shape[1])
        t = kd.empty((y.shape[0] + 1, y.shape[1]), kd.f32)
        a, b = kd.indices(y.shape[0] + 1, y.shape[1], names="a b")
        t[a, b] = x[a, b] + x[a, b + 1]
        y[i, j] = t[i, j] + t[i + 1, j]

    @blur3.schedule(kd.cpu)
    def _(s: Schedule) -> None:
        s.tile("i", "j", 4, 8)
        s.compute_at("t", "jo")

    for h, w in [(1, 1), (9, 13), (0, 2), (4, 16)]:
        x, y = blur_args(h, w)
        blur3(x, y)
        np.testing.assert_allclose(y, blur_ref(x), rtol=1e-6)


def test_compute_at_softmax_compiled() -> None:
    @kd.kernel
    def softmax2(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        m = kd.empty((x.shape[0],), kd.f32)
        e = kd.empty(x.shape, kd.f32)
        s = kd.empty((x.shape[0],), kd.f32)
        m[i] = kd.max(x[i, j], over=j)
        e[i, j] = kd.exp(x[i, j] - m[i])
        s[i] = kd.sum(e[i, j], over=j)
        y[i, j] = e[i, j] / s[i]

    @softmax2.schedule(kd.cpu)
    def _(s: Schedule) -> None:
        s.compute_at("m", "i.1")
        s.compute_at("s", "i.3")

    for shape in [(1, 1), (7, 33), (3, 5)]:
        x = random_array(RNG, shape, np.float32)
        y = np.zeros_like(x)
        softmax2(x, y)
        np.testing.assert_allclose(y, softmax_ref(x), rtol=1e-5, atol=1e-7)


@kd.kernel
def pairs(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    t = kd.empty(x.shape, kd.f32)
    t[i, j] = kd.exp(x[i, j]) * 0.5
    r, c = kd.indices(x.shape[0], y.shape[1], names="r c")
    y[r, c] = t[r, c] + t[r, c + 1]


@given(h=SIZES, w=SIZES)
def test_compute_at_the_fused_loop_that_holds_the_producer(h: int, w: int) -> None:
    """Regression (probe F2): after fuse, compute_at at the fused loop (around the
    producer, not a consumer's) raised an IndexError. The producer stays where it is and
    computes only the part of the row the consumer reads."""
    x, y = random_array(RNG, (h, w + 4), np.float32), random_array(RNG, (h, w), np.float32)
    s = schedule(pairs, x, y)
    s.fuse("i", "r")
    s.compute_at("t", "i")
    assert loop_text(s.kernel) == (
        "  for i in range(x.shape[0]):  # parallel\n"
        "    allocate t\n"
        "    for j in range(min(y.shape[1] + 1, x.shape[1])):  # parallel\n"
        "      t[j] = exp(x[i, j]) * 0.5\n"
        "    for c in range(y.shape[1]):  # parallel\n"
        "      y[i, c] = t[c] + t[c + 1]"
    )
    t = np.exp(x.astype(np.float64)) * 0.5
    want = t[:, :w] + t[:, 1 : w + 1]
    np.testing.assert_allclose(run(s.kernel, x=x, y=y)["y"], want, rtol=1e-6)


def test_compute_at_the_loop_around_a_cached_copy_compiled() -> None:
    """Regression (probe F3): compute_at on the copy `cache` made (computed in that loop
    already) raised an IndexError; it recomputes the same copy."""

    @kd.kernel
    def row_sums(x, out):
        i, j = kd.indices(x.shape[0], x.shape[1])
        out[i] = kd.sum(x[i, j], over=j)

    @row_sums.schedule(kd.cpu)
    def _(s: Schedule) -> None:
        s.compute_at(s.cache("x", "i"), "i")

    for shape in [(1, 1), (13, 101), (3, 17)]:
        x = random_array(RNG, shape, np.float32)
        out = np.zeros(shape[0], np.float32)
        row_sums(x, out)
        np.testing.assert_allclose(out, x.astype(np.float64).sum(axis=1), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ refusals


@kd.kernel
def clobber(x, y):
    i = kd.indices(x.shape[0])
    t = kd.empty(x.shape, kd.f32)
    t[i] = x[i] + 1.0
    x[i] = 0.0
    y[i] = t[i]


@kd.kernel
def twice(x, y):
    i = kd.indices(x.shape[0])
    t = kd.empty(x.shape, kd.f32)
    t[i] = x[i]
    t[i] = x[i] + 1.0
    y[i] = t[i]


@kd.kernel
def returns_temp(x):
    i = kd.indices(x.shape[0])
    t = kd.empty(x.shape, kd.f32)
    t[i] = x[i] + 1.0
    return t


@kd.kernel
def gather(x, idx, y):
    i = kd.indices(y.shape[0])
    t = kd.empty(x.shape, kd.f32)
    a = kd.indices(x.shape[0], names="a")
    t[a] = x[a] * 2.0
    y[i] = t[idx[i]]


@kd.kernel
def ahead(x, m, y):
    a = kd.indices(x.shape[0], names="a")
    t = kd.empty(x.shape[0], x.dtype)
    t[a] = 2 * x[a]
    i = kd.indices(y.shape[0])
    y[i] = kd.where(m[i] > 0, t[i + 1], 0.0)  # the guard reads data: t[i + 1] checked


@ahead.schedule(kd.cpu)
def _ahead_at_tiles(s: Schedule) -> None:
    s.compute_at("t", s.split("i", 4)[0])


@pytest.mark.parametrize("n", [1, 4, 6, 9])
def test_compute_at_keeps_the_check_of_a_checked_read(n: int) -> None:
    """t[i + 1] past t's end is inside the box, where nothing was computed: it raises
    as the whole stage's read would have."""
    x, m, y = vec(n), RNG.random(n).astype(np.float32) + 0.5, vec(n)
    m[-1] = -1  # the guard's other side where t[i + 1] would be past the end
    s = schedule(ahead, x, m, y)
    s.compute_at("t", s.split("i", 4)[0])
    assert "t[where(" in loop_text(s.kernel)
    want = np.where(m > 0, 2 * np.append(x[1:], 0), 0)
    np.testing.assert_allclose(run(s.kernel, x=x, m=m, y=y)["y"], want, rtol=1e-6)
    ahead(x, m, y)
    np.testing.assert_allclose(y, want, rtol=1e-6)
    m[-1] = 1
    with pytest.raises(kd.BoundsError, match="a subscript of 't' fell outside it"):
        ahead(x, m, y)
    with pytest.raises(kd.BoundsError):
        run(s.kernel, x=x, m=m, y=y)


@pytest.mark.parametrize("step", ["inline", "compute_at"])
def test_refuses_a_parameter(step: str) -> None:
    x, y = blur_args(3, 3)
    args = ("x",) if step == "inline" else ("x", "i")
    msg = refusal(schedule(blur, x, y), step, *args)
    assert f'{step}("x"' in msg and "'x' is a kernel parameter, not a temporary" in msg


@pytest.mark.parametrize("step", ["inline", "compute_at"])
def test_refuses_a_result(step: str) -> None:
    args = ("t",) if step == "inline" else ("t", "i")
    msg = refusal(schedule(returns_temp, vec()), step, *args)
    assert f'{step}("t"' in msg and "'t' is a result of the kernel" in msg


def test_refuses_an_unknown_buffer() -> None:
    x, y = blur_args(3, 3)
    msg = refusal(schedule(blur, x, y), "inline", "u")
    assert 'inline("u")' in msg and "there is no buffer named 'u'" in msg
    assert "(t)" in msg  # the fix lists the temporaries


@pytest.mark.parametrize("step", ["inline", "compute_at"])
def test_refuses_a_temporary_written_twice(step: str) -> None:
    args = ("t",) if step == "inline" else ("t", "i.2")
    msg = refusal(schedule(twice, vec(), vec()), step, *args)
    assert f'{step}("t"' in msg and "'t' is written by 2 statements, not one" in msg


def test_inline_refuses_a_reduction() -> None:
    x = random_array(RNG, (3, 4), np.float32)
    msg = refusal(schedule(softmax, x, x), "inline", "m")
    assert 'inline("m")' in msg and "accumulator 'max_j'" in msg
    assert "compute_at('m', loop)" in msg


@pytest.mark.parametrize("step", ["inline", "compute_at"])
def test_refuses_when_an_input_changes_in_between(step: str) -> None:
    args = ("t",) if step == "inline" else ("t", "i.2")
    msg = refusal(schedule(clobber, vec(), vec()), step, *args)
    assert f'{step}("t"' in msg
    assert "'t' is computed from 'x', which is written after 't' is computed" in msg


@pytest.mark.parametrize("step", ["inline", "compute_at"])
def test_refuses_a_split_producer(step: str) -> None:
    x, y = blur_args(5, 5)
    s = schedule(blur, x, y)
    s.split("a", 2)
    args = ("t",) if step == "inline" else ("t", "i")
    msg = refusal(s, step, *args)
    assert f'{step}("t"' in msg and "'t' is stored at t[ao * 2 + ai, b]" in msg


def test_inline_refuses_a_guarded_store() -> None:
    @kd.kernel
    def guarded(x, y):
        i = kd.indices(x.shape[0])
        t = kd.empty(x.shape, kd.f32)
        with kd.when(i > 0):
            t[i] = x[i]
        y[i] = t[i]

    msg = refusal(schedule(guarded, vec(), vec()), "inline", "t")
    assert 'inline("t")' in msg and "contain more than its store" in msg


@pytest.mark.parametrize("step", ["inline", "compute_at"])
def test_refuses_a_nest_that_writes_more(step: str) -> None:
    @kd.kernel
    def two(x, y):
        t = kd.empty(x.shape, kd.f32)
        u = kd.empty(x.shape, kd.f32)
        for i in kd.grid(x.shape[0]):
            t[i] = x[i] + 1.0
            u[i] = x[i] * 2.0
        j = kd.indices(x.shape[0])
        y[j] = t[j] + u[j]

    args = ("t",) if step == "inline" else ("t", "i")
    msg = refusal(schedule(two, vec(), vec()), step, *args)
    assert f'{step}("t"' in msg and "the loops that compute 't' also write 'u'" in msg


def test_refuses_a_read_before_the_producer() -> None:
    @kd.kernel
    def early(x, y):
        i = kd.indices(x.shape[0])
        t = kd.empty(x.shape, kd.f32)
        y[i] = t[i]
        t[i] = x[i] + 1.0

    msg = refusal(schedule(early, vec(), vec()), "inline", "t")
    assert 'inline("t")' in msg and "'t' is read before it is computed" in msg


def test_compute_at_refuses_a_producer_loop() -> None:
    x, y = blur_args(3, 3)
    msg = refusal(schedule(blur, x, y), "compute_at", "t", "b")
    assert 'compute_at("t", "b")' in msg and "loop 'b' is one of the loops that compute 't'" in msg


def test_compute_at_refuses_a_loop_outside_the_consumer() -> None:
    x = random_array(RNG, (3, 4), np.float32)
    msg = refusal(schedule(softmax, x, x), "compute_at", "e", "i")  # m's loop, before e's
    assert 'compute_at("e", "i")' in msg
    assert "loop 'i' is not inside a consumer of 'e'" in msg


def test_compute_at_refuses_reads_outside_the_loop() -> None:
    x = random_array(RNG, (3, 4), np.float32)
    msg = refusal(schedule(softmax, x, x), "compute_at", "e", "i.2")
    assert 'compute_at("e", "i.2")' in msg and "'e' is also read outside loop 'i.2'" in msg


def test_compute_at_refuses_a_data_dependent_read() -> None:
    s = schedule(gather, vec(), np.zeros(5, np.int64), vec())
    msg = refusal(s, "compute_at", "t", "i")
    assert 'compute_at("t", "i")' in msg
    assert "the part of 't' read in one iteration of loop 'i' can't be bounded" in msg
    assert "t[idx[i]]" not in msg and "idx[i] depends on data" in msg


def test_compute_at_refuses_a_size_that_varies() -> None:
    @kd.kernel
    def prefix(x, y):
        t = kd.empty(x.shape, kd.f32)
        a = kd.indices(x.shape[0], names="a")
        t[a] = x[a] * 2.0
        for i in kd.grid(x.shape[0]):
            acc = kd.local(0.0, kd.f32)
            for j in kd.range(i + 1):
                acc += t[j]
            y[i] = acc

    msg = refusal(schedule(prefix, vec(), vec()), "compute_at", "t", "i")
    assert 'compute_at("t", "i")' in msg
    assert (
        "the part of 't' read in one iteration of loop 'i' can't be bounded: its size changes with loop 'i'"
        in msg
    )


def test_compute_at_refuses_a_vectorized_loop() -> None:
    x, y = blur_args(3, 8)
    s = schedule(blur, x, y)
    s.vectorize("j", 4)
    msg = refusal(s, "compute_at", "t", "j")
    assert 'compute_at("t", "j")' in msg and "loop 'j' is vectorized" in msg


def test_refusals_list_the_loops() -> None:
    x, y = blur_args(3, 3)
    msg = refusal(schedule(blur, x, y), "compute_at", "t", "b")
    assert "(the loops are: a, b, i, j)" in msg


def test_nothing_changes_after_a_refusal() -> None:
    x = random_array(RNG, (3, 4), np.float32)
    s = schedule(softmax, x, x)
    before = s.kernel
    refusal(s, "compute_at", "e", "i.2")
    assert s.kernel is before and isinstance(before.body[-1], Loop)
