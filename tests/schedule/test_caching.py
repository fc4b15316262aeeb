"""cache: packed and re-laid-out copies, write-back, scopes; semantics against NumPy
(interpreted and compiled) and every refusal's message."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kdsl as kd
from kdsl.ir.nodes import Const, Kernel, Loop, LoopExec, LoopKind, Scope
from kdsl.ir.passes import lower
from kdsl.schedule.recipe import Schedule
from kdsl.schedule.tree import loops
from tests.helpers import random_array
from tests.schedule.test_stages import (
    blur,
    blur_args,
    blur_ref,
    gather,
    loop_text,
    refusal,
    run,
    schedule,
    vec,
)

SIZES = st.sampled_from([0, 1, 2, 3, 5, 7, 13, 67])
RNG = np.random.default_rng(11)


@kd.kernel
def matmul(A, B, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)


def compiled_matmul(name: str) -> kd.KernelFunction:
    """`matmul` as a kernel of its own, for a test to give its own CPU schedule."""
    return kd.kernel(matmul.fn, name=name)


def mm_args(m: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        random_array(RNG, (m, k), np.float32),
        random_array(RNG, (k, n), np.float32),
        random_array(RNG, (m, n), np.float32),
    )


def tiled(s: Schedule) -> tuple[str, str, str, str, str, str]:
    """The matmul schedule of DESIGN §3: 4×32 tiles of C, panels of 64 along k."""
    io, jo, ii, ji = s.tile("i", "j", 4, 32)
    ko, ki = s.split("k", 64)
    s.reorder(io, jo, ko, ii, ki, ji)
    return io, jo, ko, ii, ki, ji


def check_mm(kernel: Kernel, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    out = run(kernel, A=a, B=b, C=c)["C"]
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-5)


def loop_named(kernel: Kernel, name: str) -> Loop:
    return next(lp for lp in loops(kernel) if lp.var == name)


# ------------------------------------------------------------------------ packing

PACKED_B = """\
      for ko in range((A.shape[1] + 63) // 64):  # reduction
        allocate B.c
        for B.c0 in range(min(64, B.shape[0] - ko * 64)):  # parallel
          for B.c1 in range(min(32, B.shape[1] - jo * 32)):  # parallel, vectorized(16)
            B.c[B.c0, B.c1] = B[ko * 64 + B.c0, jo * 32 + B.c1]
        for ii in range(min(4, A.shape[0] - io * 4)):  # parallel
          for ki in range(min(64, A.shape[1] - ko * 64)):  # reduction
            for ji in range(min(32, B.shape[1] - jo * 32)):  # parallel
              sum_k.1[ii, ji] = sum_k.1[ii, ji] + A[io * 4 + ii, ko * 64 + ki] * B.c[ki, ji]"""


def test_pack_a_panel_of_b() -> None:
    a, b, c = mm_args(9, 70, 130)
    s = schedule(matmul, a, b, c)
    ko = tiled(s)[2]
    assert s.cache("B", at=ko, layout="packed") == "B.c"
    assert PACKED_B in loop_text(s.kernel)
    local = s.kernel.buffer("B.c")
    assert local.shape == (Const(64, kd.i64), Const(32, kd.i64)) and local.scope is Scope.STACK
    copy = [loop_named(s.kernel, n) for n in ("B.c0", "B.c1")]
    assert all(lp.kind is LoopKind.PARALLEL for lp in copy)
    check_mm(s.kernel, a, b, c)


@given(m=SIZES, n=SIZES, k=SIZES)
def test_pack_every_operand(m: int, n: int, k: int) -> None:
    a, b, c = mm_args(m, n, k)
    s = schedule(matmul, a, b, c)
    _, jo, ko, *_ = tiled(s)
    s.cache("B", at=ko)
    s.cache("A", at=ko)
    s.cache("C", at=jo)  # written: copied back after each tile
    check_mm(s.kernel, a, b, c)


@pytest.mark.parametrize("layout", ["transposed", "1,0", [1, 0]])
def test_transposed_copy(layout: object) -> None:
    a, b, c = mm_args(5, 37, 71)
    s = schedule(matmul, a, b, c)
    ko = tiled(s)[2]
    s.cache("B", at=ko, layout=layout)  # type: ignore[arg-type]
    assert s.kernel.buffer("B.c").shape == (Const(32, kd.i64), Const(64, kd.i64))
    text = loop_text(s.kernel)
    assert "B.c[B.c0, B.c1] = B[ko * 64 + B.c1, jo * 32 + B.c0]" in text
    assert "B.c[ji, ki]" in text
    check_mm(s.kernel, a, b, c)


def test_write_back() -> None:
    a, b, c = mm_args(6, 40, 3)
    s = schedule(matmul, a, b, c)
    jo = tiled(s)[1]
    s.cache("C", at=jo)
    text = loop_text(s.kernel)
    assert "C[io * 4 + C.cw0, jo * 32 + C.cw1] = C.c[C.cw0, C.cw1]" in text
    check_mm(s.kernel, a, b, c)


def test_cache_untiled_rows_of_a_stencil() -> None:
    """Two rows of x per row of y, full width: a run-time size, so on the heap."""
    x, y = blur_args(5, 9)
    s = schedule(blur, x, y)
    s.inline("t")
    s.cache("x", at="i")
    assert s.kernel.buffer("x.c").scope is Scope.HEAP
    assert "y[i, j] = x.c[0, j] + x.c[0, j + 1] + (x.c[1, j] + x.c[1, j + 1])" in loop_text(
        s.kernel
    )
    np.testing.assert_allclose(run(s.kernel, x=x, y=y)["y"], blur_ref(x), rtol=1e-6)


@given(h=SIZES, w=SIZES, at=st.sampled_from(["io", "jo", "ii"]))
def test_cache_a_stencil_tile(h: int, w: int, at: str) -> None:
    x, y = blur_args(h, w)
    s = schedule(blur, x, y)
    s.inline("t")
    s.tile("i", "j", 4, 3)
    s.cache("x", at=at, scope="heap" if at == "io" else None)
    np.testing.assert_allclose(run(s.kernel, x=x, y=y)["y"], blur_ref(x), rtol=1e-6)


def test_the_copy_is_vector_code() -> None:
    """On CPU a copy along the buffer's last axis is vectorized by cache itself (64-byte
    vectors); a transposed copy, or one inside a vector loop, stays scalar."""
    a, b, c = mm_args(5, 45, 70)
    s = schedule(matmul, a, b, c)
    ko = tiled(s)[2]
    s.cache("B", at=ko)
    s.unroll("B.c0", 4)
    assert loop_named(s.kernel, "B.c1").exec is LoopExec.VECTORIZED
    assert loop_named(s.kernel, "B.c1").width == 16
    s.cache("A", at=ko, layout="transposed")
    assert loop_named(s.kernel, "A.c1").exec is LoopExec.SERIAL
    check_mm(s.kernel, a, b, c)
    s = Schedule(lower(matmul.ir(a, b, c).kernel), target="cuda")
    s.cache("B", at=tiled(s)[2])
    assert loop_named(s.kernel, "B.c1").exec is LoopExec.SERIAL


def test_a_parallel_copy() -> None:
    """A panel packed outside the parallel loop, its copy spread over the threads."""

    mm = compiled_matmul("mm_parallel_copy")

    @mm.schedule(kd.cpu)
    def _(s: Schedule) -> None:
        io, ii = s.split("i", 4)
        jo, ji = s.split("j", 64)
        s.reorder(jo, io, ii, ji)
        s.cache("B", at=jo)
        s.parallelize("B.c0")
        s.parallelize(io)

    for m, n, k in [(1, 1, 1), (9, 70, 130), (0, 3, 2), (300, 200, 700)]:
        a, b, c = mm_args(m, n, k)
        mm(a, b, c)
        # f32 sums of k products in [-1, 1]: rounding grows like sqrt(k) (at k = 700 a
        # result near zero was once off by more than a flat 1e-5)
        atol = 1e-5 * max(1.0, k**0.5)
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-4, atol=atol)


def test_cache_twice_gets_fresh_names() -> None:
    a, b, c = mm_args(5, 9, 7)
    s = schedule(matmul, a, b, c)
    _, jo, ko, *_ = tiled(s)
    assert s.cache("B", at=ko) == "B.c"
    assert s.cache("B.c", at="ii") == "B.c.c"
    check_mm(s.kernel, a, b, c)


def test_cache_replays_from_json() -> None:
    a, b, c = mm_args(5, 9, 7)
    s = schedule(matmul, a, b, c)
    ko = tiled(s)[2]
    s.cache("B", at=ko, layout=[1, 0], scope="stack")  # type: ignore[arg-type]
    again = Schedule.replay(s.to_json(), lower(matmul.ir(a, b, c).kernel))
    assert again.kernel == s.kernel


def test_cache_compiled() -> None:
    mm = compiled_matmul("mm_cached")

    @mm.schedule(kd.cpu)
    def _(s: Schedule) -> None:
        _, jo, ko, *_ = tiled(s)
        s.cache("B", at=ko, layout="packed")
        s.cache("A", at=ko, layout="transposed")
        s.cache("C", at=jo)

    for m, n, k in [(1, 1, 1), (9, 70, 130), (0, 3, 2), (4, 32, 64)]:
        a, b, c = mm_args(m, n, k)
        mm(a, b, c)
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-5)


def test_a_zero_dimensional_buffer_is_cached() -> None:
    """A 0-d array (a scale) copied at a loop: one element, no copy loop to vectorize."""

    @kd.kernel
    def scaled(x, s, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * s[()]

    @scaled.schedule(kd.cpu)
    def _(sch: Schedule) -> None:
        io, _ = sch.split("i", 8)
        sch.cache("s", at=io)

    x, s = np.arange(13, dtype=np.float32), np.array(1.5, np.float32)
    y = np.empty_like(x)
    scaled(x, s, y)
    np.testing.assert_array_equal(y, x * 1.5)


# ------------------------------------------------------------------------ vnni


@kd.kernel
def int8_matmul(A, B, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k].astype(kd.i32) * B[k, j].astype(kd.i32), over=k)


def int8_args(m: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = RNG.integers(-128, 128, (m, k)).astype(np.int8)
    b = RNG.integers(-128, 128, (k, n)).astype(np.int8)
    return a, b, np.full((m, n), -1, np.int32)


@given(m=SIZES, n=SIZES, k=SIZES, split_first=st.booleans())
def test_vnni_copy_interleaves_groups_of_rows(m: int, n: int, k: int, split_first: bool) -> None:
    """B's rows in groups of 4 (int8), each group interleaved along the columns; split
    into groups of 4 first, the inner loop reads the copy at [ko, 4·j + k4] (the
    operand of vpdpbusd), else at [k // 4, 4·j + k % 4]: the same sums either way."""
    a, b, c = int8_args(m, n, k)
    s = schedule(int8_matmul, a, b, c)
    io, jo, ii, ji = s.tile("i", "j", 4, 32)
    if split_first:
        ko, k4 = s.split("k", 4)
        s.reorder(io, jo, ji, ko, ii, k4)
    assert s.cache("B", at=jo, layout="vnni") == "B.c"
    text = loop_text(s.kernel)
    assert "B.c[B.c0, B.c1 * 4 + B.c2] = B[B.c0 * 4 + B.c2, jo * 32 + B.c1]" in text
    read = "B.c[ko, ji * 4 + ki]" if split_first else "B.c[k // 4, ji * 4 + k % 4]"
    assert read in text, text
    out = run(s.kernel, A=a, B=b, C=c)["C"]
    np.testing.assert_array_equal(out, a.astype(np.int64) @ b.astype(np.int64))


def test_refuses_vnni_for_wide_or_written_buffers() -> None:
    s, names = mm_schedule()
    msg = refusal(s, "cache", "B", names[2], "vnni")
    assert "interleaves the rows of a 2-D buffer of 1- or 2-byte elements" in msg
    assert "'B' is 2-D kd.f32" in msg and 'use layout="packed"' in msg

    @kd.kernel
    def bump(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = x[i, j] + 1

    s = schedule(bump, *(np.ones((6, 5), np.int8) for _ in range(2)))
    s.split("i", 2)
    msg = refusal(s, "cache", "y", "io", "vnni")
    assert "'y' is written inside loop 'io', and a \"vnni\" copy is only read" in msg


# ------------------------------------------------------------------------ widened copies


def bf16_args(m: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bf16 = kd.bf16.to_numpy()
    a, b, c = mm_args(m, n, k)
    return a.astype(bf16), b.astype(bf16), c


@given(m=SIZES, n=SIZES, k=SIZES)
def test_copies_widened_to_f32_are_read_as_they_are(m: int, n: int, k: int) -> None:
    """bf16 panels held as f32: converted once as they are copied, and the products read
    them with no conversion left (the values are the same, so the sums are too)."""
    a, b, c = bf16_args(m, n, k)
    s = schedule(matmul, a, b, c)
    io, jo, ko, *_ = tiled(s)
    s.cache("B", at=ko, dtype=kd.f32)
    s.cache("A", at=io, dtype=kd.f32, layout="transposed")
    assert s.kernel.buffer("B.c").dtype == kd.f32 == s.kernel.buffer("A.c").dtype
    text = loop_text(s.kernel)
    assert "B.c[B.c0, B.c1] = f32(B[ko * 64 + B.c0, jo * 32 + B.c1])" in text
    assert "A.c[ko * 64 + ki, ii] * B.c[ki, ji]" in text and "f32(B.c" not in text
    out = run(s.kernel, A=a, B=b, C=c)["C"]
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_int8_copies_widened_to_i32_give_exact_sums() -> None:
    a, b, c = int8_args(9, 37, 70)
    s = schedule(int8_matmul, a, b, c)
    _, _, ko, *_ = tiled(s)
    s.cache("B", at=ko, dtype="i32")  # (a dtype's name does as well)
    assert "B.c[ki, ji]" in loop_text(s.kernel) and "i32(B.c" not in loop_text(s.kernel)
    out = run(s.kernel, A=a, B=b, C=c)["C"]
    np.testing.assert_array_equal(out, a.astype(np.int64) @ b.astype(np.int64))


def test_a_read_of_a_widened_copy_as_it_was_keeps_its_dtype() -> None:
    """A read that does not convert reads the copy back in the buffer's dtype: bf16
    values copied through an f32 copy come out as they went in."""

    @kd.kernel
    def shift(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[i + 1]

    bf16 = kd.bf16.to_numpy()
    x, y = random_array(RNG, (41,), np.float32).astype(bf16), np.zeros(40, bf16)
    s = schedule(shift, x, y)
    io, _ = s.split("i", 8)
    s.cache("x", at=io, dtype=kd.f32)
    assert "bf16(x.c[" in loop_text(s.kernel)
    np.testing.assert_array_equal(run(s.kernel, x=x, y=y)["y"], x[1:])


def test_widened_copies_compiled_and_replayed() -> None:
    mm = compiled_matmul("mm_widened")

    @mm.schedule(kd.cpu)
    def _(s: Schedule) -> None:
        io, jo, ko, ii, ki, ji = tiled(s)
        s.cache("B", at=ko, layout="packed", dtype=kd.f32)
        s.cache("A", at=io, dtype=kd.f32)
        s.vectorize(ji, 16)

    for m, n, k in [(1, 1, 1), (9, 70, 130), (0, 3, 2), (4, 32, 64)]:
        a, b, c = bf16_args(m, n, k)
        mm(a, b, c)
        want = a.astype(np.float64) @ b.astype(np.float64)
        np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)
    a, b, c = bf16_args(5, 9, 7)
    s = schedule(matmul, a, b, c)
    s.cache("B", at=tiled(s)[2], dtype=kd.f32)
    assert 'dtype="f32"' in str(s)
    again = Schedule.replay(s.to_json(), lower(matmul.ir(a, b, c).kernel))
    assert again.kernel == s.kernel


def test_the_kernels_own_conversions_of_a_cached_buffer_stay() -> None:
    """Only the conversion back that a widened copy's reads make is folded away: the
    kernel's own (f32 rounded to bf16, u8 read as i8) stay, with or without dtype=."""

    @kd.kernel
    def rounded(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[i].astype(kd.bf16) * 2.0

    @kd.kernel
    def wrapped(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[i].astype(kd.i8).astype(kd.i32) + 1

    x = (1 + np.arange(40, dtype=np.float32) / 1000).astype(np.float32)  # not bf16 values
    s = schedule(rounded, x, np.zeros(40, np.float32))
    s.cache("x", at=s.split("i", 8)[0])
    want = x.astype(kd.bf16.to_numpy()).astype(np.float32) * 2
    np.testing.assert_array_equal(run(s.kernel, x=x, y=np.zeros(40, np.float32))["y"], want)
    u = np.arange(190, 230, dtype=np.uint8)
    for dtype in (None, kd.i32):
        s = schedule(wrapped, u, np.zeros(40, np.int32))
        s.cache("x", at=s.split("i", 8)[0], dtype=dtype)
        got = run(s.kernel, x=u, y=np.zeros(40, np.int32))["y"]
        np.testing.assert_array_equal(got, u.astype(np.int8).astype(np.int32) + 1)


def test_a_widened_copy_on_the_stack_counts_its_own_bytes() -> None:
    """A 520 × 520 bf16 tile takes 540,800 bytes as it is and 1,081,600 as f32: past the
    stack's 1 MiB only when widened."""

    @kd.kernel
    def doubled(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = x[i, j] * 2

    bf16 = kd.bf16.to_numpy()
    for dtype in (None, kd.f32):
        s = schedule(doubled, np.ones((1030, 1030), bf16), np.zeros((1030, 1030), np.float32))
        jo = s.tile("i", "j", 520, 520)[1]
        if dtype is None:
            s.cache("x", at=jo, scope="stack")
            continue
        with pytest.raises(kd.ScheduleError) as info:
            s.cache("x", at=jo, scope="stack", dtype=dtype)
        assert "takes 1081600 bytes, more than the 1048576 allowed" in str(info.value)


@pytest.mark.parametrize(
    ("buffer", "dtype", "says"),
    [
        ("A", kd.bf16, "in bf16 would change values: bf16 does not hold every f32 exactly"),
        ("A", kd.i32, "in i32 would change values"),
        ("A", "f128", "dtype='f128' is not a kdsl dtype"),
        ("C", kd.f64, "'C' is written inside the loop, and its copy is copied back"),
    ],
)
def test_refuses_a_copy_that_would_change_values(buffer: str, dtype: object, says: str) -> None:
    s, names = mm_schedule()
    with pytest.raises(kd.ScheduleError) as info:
        s.cache(buffer, at=names[1], dtype=dtype)  # type: ignore[arg-type]
    assert says in str(info.value)


def test_refuses_a_widened_vnni_copy() -> None:
    s = schedule(int8_matmul, *int8_args(5, 9, 7))
    _, jo, _, _ = s.tile("i", "j", 4, 32)
    with pytest.raises(kd.ScheduleError) as info:
        s.cache("B", at=jo, layout="vnni", dtype=kd.i32)
    assert "can't hold i32 values" in str(info.value) and 'use layout="packed"' in str(info.value)


@pytest.mark.parametrize(
    ("wide", "narrow", "holds"),
    [
        (kd.f32, kd.bf16, True),
        (kd.f32, kd.f16, True),
        (kd.f64, kd.f32, True),
        (kd.f16, kd.bf16, False),
        (kd.f32, kd.i16, True),
        (kd.f32, kd.i32, False),
        (kd.f64, kd.i32, True),
        (kd.bf16, kd.u8, True),
        (kd.i16, kd.u8, True),
        (kd.i16, kd.i8, True),
        (kd.u16, kd.i8, False),
        (kd.i8, kd.u8, False),
        (kd.i32, kd.f16, False),
    ],
)
def test_which_dtypes_hold_which(wide: kd.DType, narrow: kd.DType, holds: bool) -> None:
    from kdsl.schedule.caching import holds_exactly

    assert holds_exactly(wide, narrow) is holds
    if narrow.is_int:  # NumPy agrees on the integers that are hardest to hold
        limits = np.iinfo(narrow.to_numpy())
        values = np.array([limits.min, limits.max, limits.max - 1], narrow.to_numpy())
        with np.errstate(all="ignore"):
            converted = values.astype(wide.to_numpy())
        assert all(float(a) == float(b) for a, b in zip(values, converted)) is holds


# ------------------------------------------------------------------------ refusals


def mm_schedule() -> tuple[Schedule, tuple[str, ...]]:
    s = schedule(matmul, *mm_args(5, 9, 7))
    return s, tiled(s)


def test_refuses_shared_memory_on_cpu() -> None:
    s, names = mm_schedule()
    msg = refusal(s, "cache", "B", names[2], None, "shared")
    assert 'cache("B", "ko", scope="shared")' in msg
    assert "shared memory exists only on GPUs, and this is a cpu schedule" in msg
    assert "kd.cuda" in msg


def test_shared_memory_in_a_cuda_schedule() -> None:
    s = Schedule(lower(matmul.ir(*mm_args(5, 9, 7)).kernel), target="cuda")
    ko = tiled(s)[2]
    s.cache("B", at=ko, scope="shared")
    assert s.kernel.buffer("B.c").scope is Scope.SHARED


def test_refuses_an_unknown_scope() -> None:
    s, names = mm_schedule()
    msg = refusal(s, "cache", "B", names[2], None, "l2")
    assert 'cache("B", "ko", scope="l2")' in msg and "'l2' is not a memory scope" in msg


def test_refuses_a_dynamic_size_on_the_stack() -> None:
    s = schedule(blur, *blur_args(3, 4))
    s.inline("t")
    msg = refusal(s, "cache", "x", "i", None, "stack")
    assert 'cache("x", "i", scope="stack")' in msg
    assert "the copy of 'x' has a size known only at run time" in msg


def test_refuses_a_large_stack_copy() -> None:
    s = schedule(matmul, *mm_args(5, 9, 7))
    ko, _ = s.split("k", 1 << 12)
    _, ji = s.split("j", 1 << 8)
    s.reorder(ko, ji)
    msg = refusal(s, "cache", "B", "ko", None, "stack")
    assert "the copy of 'B' takes 4194304 bytes" in msg


@pytest.mark.parametrize("layout", ["diagonal", "2,0", "0,0", [0, True]])
def test_refuses_a_bad_layout(layout: object) -> None:
    s, names = mm_schedule()
    msg = refusal(s, "cache", "B", names[2], layout)
    assert 'cache("B", "ko", layout=' in msg
    assert "does not lay out the 2 axes of 'B'" in msg


def test_refuses_an_unused_buffer() -> None:
    s, names = mm_schedule()
    msg = refusal(s, "cache", "C", names[2])
    assert 'cache("C", "ko")' in msg and "'C' is not used inside loop 'ko'" in msg


def test_refuses_an_unknown_buffer() -> None:
    s, names = mm_schedule()
    msg = refusal(s, "cache", "D", names[2])
    assert 'cache("D", "ko")' in msg and "there is no buffer named 'D'" in msg


def test_refuses_a_data_dependent_access() -> None:
    """On the traced IR, before the bounds pass marks the gather's read checked (a
    checked read is left out of the copy: test_refuses_to_drop_a_check)."""
    traced = gather.ir(vec(5), np.zeros(3, np.int64), vec(3)).kernel  # type: ignore[attr-defined]
    s = Schedule(traced)
    s.inline("t")
    msg = refusal(s, "cache", "x", "i")
    assert 'cache("x", "i")' in msg
    assert "the part of 'x' used in one iteration of loop 'i' can't be bounded" in msg


@kd.kernel
def next_where(x, m, y):
    i = kd.indices(y.shape[0])
    y[i] = x[i] + kd.where(m[i] > 0, x[i + 1], 0.0)  # the guard reads data: x[i + 1] checked


@next_where.schedule(kd.cpu)
def _cache_x(s: Schedule) -> None:
    s.split("i", 8)
    s.cache("x", at="io")


@pytest.mark.parametrize("n", [1, 7, 13, 16, 19])
def test_a_checked_read_reads_the_buffer_not_the_copy(n: int) -> None:
    """x[i + 1] past x's end would read an element never copied: it reads x, checked."""
    x, m, y = vec(n), RNG.random(n).astype(np.float32) + 0.5, vec(n)
    m[-1] = -1  # the last element takes the guard's other side: in bounds
    s = schedule(next_where, x, m, y)
    s.split("i", 8)
    s.cache("x", at="io")
    assert "x[io * 8 + ii + 1]?" in loop_text(s.kernel) and "x.c[ii] +" in loop_text(s.kernel)
    want = x + np.where(m > 0, np.append(x[1:], 0), 0)
    np.testing.assert_allclose(run(s.kernel, x=x, m=m, y=y)["y"], want, rtol=1e-6)
    next_where(x, m, y)
    np.testing.assert_allclose(y, want, rtol=1e-6)
    m[-1] = 1  # now x[n] is read
    with pytest.raises(kd.BoundsError, match="a subscript of 'x' of shape"):
        next_where(x, m, y)


def test_refuses_a_copy_that_only_checked_reads_would_use() -> None:
    s = schedule(gather, vec(5), np.zeros(3, np.int64), vec(3))
    s.inline("t")
    msg = refusal(s, "cache", "x", "i")
    assert 'cache("x", "i")' in msg
    assert "every read of 'x' inside loop 'i' (line " in msg
    assert "is checked at each element (nothing proves it inside 'x'), so those reads" in msg
    assert "kd.when(i + 1 < x.shape[0])" in msg


@pytest.mark.parametrize("n", [2, 3, 9, 10])
def test_a_written_copy_checks_its_checked_accesses_against_the_buffer(n: int) -> None:
    """x[i + 2] under a guard that reads data: past x's end it raises, though inside
    the copy's box (where nothing was copied)."""

    @kd.kernel
    def bump(x, m, y):
        for i in kd.range(x.shape[0] - 1):  # (ordered: x[i + 2] is written later)
            x[i] = x[i] + kd.where(m[i] > 0, x[i + 2], 0.0)
        y[0] = 1.0

    @bump.schedule(kd.cpu)
    def _(s: Schedule) -> None:
        s.split("i", 4)
        s.cache("x", at="io")

    x, m, y = vec(n), RNG.random(n).astype(np.float32) + 0.5, vec(1)
    m[-2:] = -1  # the guard's other side where x[i + 2] would be past the end
    want = x.copy()
    for i in range(n - 1):
        want[i] += x[i + 2] if m[i] > 0 else 0
    s = schedule(bump, x, m, y)
    s.split("i", 4)
    s.cache("x", at="io")
    np.testing.assert_allclose(run(s.kernel, x=x, m=m, y=y)["x"], want, rtol=1e-6)
    got = x.copy()
    bump(got, m, y)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    m[-2] = 1
    with pytest.raises(
        kd.BoundsError, match=r"a subscript of 'x' of shape \(\d+,\) fell outside it"
    ):
        bump(x.copy(), m, y)


def test_refuses_a_size_that_varies() -> None:
    @kd.kernel
    def prefix(x, y):
        for i in kd.grid(x.shape[0]):
            acc = kd.local(0.0, kd.f32)
            for j in kd.range(i + 1):
                acc += x[j]
            y[i] = acc

    s = schedule(prefix, np.ones(4, np.float32), np.ones(4, np.float32))
    msg = refusal(s, "cache", "x", "i")
    assert (
        "the part of 'x' used in one iteration of loop 'i' can't be bounded: its size changes with loop 'i'"
        in msg
    )
    s.split("i", 2)
    msg = refusal(s, "cache", "x", "io")
    assert 'cache("x", "io")' in msg and "the extent of loop 'j' (io * 2 + ii + 1)" in msg


def test_refuses_a_buffer_allocated_inside() -> None:
    s, names = mm_schedule()
    msg = refusal(s, "cache", "sum_k.1", names[1])
    assert 'cache("sum_k.1", "jo")' in msg and "'sum_k.1' is allocated inside loop 'jo'" in msg


def test_refuses_write_back_in_a_parallel_loop() -> None:
    s, names = mm_schedule()
    s.parallelize(names[0])
    msg = refusal(s, "cache", "C", names[1])
    assert 'cache("C", "jo")' in msg and "loop 'io' around it is already parallel" in msg
    s.cache("B", at=names[2])  # read only: fine


def test_refuses_a_vectorized_loop() -> None:
    s, names = mm_schedule()
    s.vectorize(names[5], 8)
    msg = refusal(s, "cache", "B", names[5])
    assert 'cache("B", "ji")' in msg and "loop 'ji' is vectorized" in msg
