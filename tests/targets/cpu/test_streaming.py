"""`s.nontemporal(buffer)`: an output written past the caches where it is larger than the
last-level cache (kdsl/targets/cpu/streaming.py). The threshold is made 0 bytes here
(compiled into a fresh cache), so that small arrays take the streaming path: the masked
run up to a cache line's start, whole lines stored past the cache, the masked rest.
Against NumPy on fresh random data, at every element offset from a line's start, with
the memory around the output untouched; and the paths without the hint where it can't
apply (elements not aligned to their size, strided outputs, buffers under the
threshold)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kdsl.kernels import layernorm, rmsnorm, softmax

import kdsl as kd
from kdsl.ir.passes import lower
from kdsl.schedule.recipe import Schedule
from kdsl.targets.cpu import jit
from tests.helpers import keyed_rng, random_array

SENTINEL = -7
SHAPES = [(3, 1), (2, 5), (4, 16), (5, 17), (3, 33), (2, 100), (7, 257), (0, 9), (4, 0)]


@pytest.fixture
def stream_all(cache_dir, monkeypatch):
    """Every marked buffer streams (threshold 0 bytes), compiled into a fresh cache."""
    monkeypatch.setattr(jit, "last_level_cache_bytes", lambda: 0)


def scaling(width: int = 16, hinted: bool = True, above: int | None = None) -> kd.KernelFunction:
    @kd.kernel
    def scale(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = x[i, j] * 2 + 1

    @scale.schedule(kd.cpu)
    def _(s):
        s.vectorize("j", width)
        s.parallelize("i")
        s.prefetch("y", "i", 1, inside="j")  # dropped on the streaming path
        if hinted:
            s.nontemporal("y", above=above)

    return scale


def padded_output(
    shape: tuple[int, ...], dtype: type, offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """An output `offset` elements past a cache line's start, inside a sentinel-filled
    block (returned too) that shows any write outside it."""
    count = int(np.prod(shape))
    item = np.dtype(dtype).itemsize
    raw = np.full(count + 64 // item + 64, SENTINEL, dtype)
    start = (-raw.ctypes.data % 64) // item + offset
    return raw[start : start + count].reshape(shape), raw


def check(kernel: kd.KernelFunction, x: np.ndarray, y: np.ndarray, raw: np.ndarray) -> None:
    kernel(x, y)
    np.testing.assert_array_equal(y, x * 2 + 1)
    outside = np.ones(raw.size, bool)
    if y.size:
        first = (y.ctypes.data - raw.ctypes.data) // raw.itemsize
        outside[first : first + y.size] = False
    assert np.all(raw[outside] == SENTINEL), "a write outside the output"


@pytest.mark.parametrize("shape", SHAPES)
def test_every_offset_from_a_line_streams_the_same_values(stream_all, shape):
    kernel, rng = scaling(), keyed_rng("stream", shape)
    for offset in range(16):  # every f32 position in a 64-byte line
        x = random_array(rng, shape, np.float32)
        y, raw = padded_output(shape, np.float32, offset)
        check(kernel, x, y, raw)


def test_the_streaming_path_stores_past_the_cache_and_drops_the_hints(stream_all):
    x = np.ones((8, 1024), np.float32)
    asm = scaling().asm(x, np.empty_like(x))
    assert "vmovntps" in asm or "movntps" in asm
    # weakly ordered stores: each function that makes them (the parallel task's) fences
    assert asm.count("sfence") >= 1
    # without the hint: no nontemporal store at all
    assert "movnt" not in scaling(hinted=False).asm(x, np.empty_like(x))


@given(
    rows=st.integers(0, 6),
    cols=st.integers(0, 300),
    dtype=st.sampled_from([np.float32, np.float64, np.int32, np.int16]),
    offset=st.integers(0, 31),
    data=st.data(),
)
def test_random_shapes_dtypes_and_offsets(rows, cols, dtype, offset, data):
    """The vector width is a whole number of cache lines (64 bytes) for each dtype."""
    width = 64 // np.dtype(dtype).itemsize * data.draw(st.sampled_from([1, 2]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jit, "last_level_cache_bytes", lambda: 0)
        kernel = scaling(width)
        rng = keyed_rng("stream-random", rows, cols, np.dtype(dtype).name, offset)
        x = random_array(rng, (rows, cols), dtype)
        y, raw = padded_output((rows, cols), dtype, offset % (64 // np.dtype(dtype).itemsize))
        check(kernel, x, y, raw)


def test_outputs_it_cannot_stream_are_written_as_without_the_hint(stream_all):
    """Elements not aligned to their size (an offset of one byte) and strided outputs
    take the plain loop; vectors narrower than a cache line too."""
    kernel, rng = scaling(), keyed_rng("stream-plain")
    x = random_array(rng, (5, 77), np.float32)
    block = np.full(x.nbytes + 65, SENTINEL, np.int8)
    unaligned = np.frombuffer(block, np.float32, count=x.size, offset=1).reshape(x.shape)
    kernel(x, unaligned)
    np.testing.assert_array_equal(unaligned, x * 2 + 1)
    wide = np.full((5, 154), SENTINEL, np.float32)
    kernel(x, wide[:, ::2])
    np.testing.assert_array_equal(wide[:, ::2], x * 2 + 1)
    assert np.all(wide[:, 1::2] == SENTINEL)
    narrow = scaling(width=8)
    y, raw = padded_output(x.shape, np.float32, 3)
    check(narrow, x, y, raw)
    assert "movnt" not in narrow.asm(x, y)


def test_outputs_under_the_threshold_are_written_through_the_cache(cache_dir, monkeypatch):
    """The size is compared when the kernel runs: one compiled kernel takes both paths."""
    monkeypatch.setattr(jit, "last_level_cache_bytes", lambda: 4096)
    kernel, rng = scaling(), keyed_rng("stream-threshold")
    for shape in [(4, 100), (40, 100)]:  # 1600 and 16000 bytes
        x = random_array(rng, shape, np.float32)
        y, raw = padded_output(shape, np.float32, 5)
        check(kernel, x, y, raw)


def test_a_threshold_of_its_own(cache_dir):
    """`above=` bytes instead of the cache's size (compared when the kernel runs too);
    refused unless a positive int."""
    kernel, rng = scaling(above=3000), keyed_rng("stream-above")
    for shape in [(4, 100), (40, 100)]:  # 1600 and 16000 bytes
        x = random_array(rng, shape, np.float32)
        y, raw = padded_output(shape, np.float32, 5)
        check(kernel, x, y, raw)
    assert re.search(r"icmp sgt i64 %\S+, 3000\b", kernel.llvm(x, y, optimized=False))
    assert "y: f32[y.shape[0], y.shape[1]] param global, nontemporal above 3000 bytes" in str(
        kernel.lowered(x, y)
    )
    for bad in (0, -1, 2.5, "big"):
        with pytest.raises(kd.ScheduleError, match="above which it streams must be a positive"):
            scaling(above=bad)(x, y)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["softmax", "rmsnorm", "layernorm"])
def test_the_library_row_kernels_stream_the_same_values(stream_all, monkeypatch, name):
    from kdsl.kernels import norms
    from kdsl.kernels.softmax import reference as softmax_reference
    from kdsl.kernels.softmax import softmax_rows

    kernel = {"softmax": softmax_rows, "rmsnorm": norms.rmsnorm_rows}.get(
        name, norms.layernorm_rows
    )
    for compiled in ("_fast", "_by_spec"):  # compiled again, with the threshold at 0
        monkeypatch.setattr(kernel, compiled, {})
    # (or at a byte, where the tuning streams softmax from a share of the cache)
    monkeypatch.setattr(jit, "cache_bytes", lambda: {3: 4})
    before = kernel.stats()
    rng = keyed_rng("stream-library", name)
    for shape in [(3, 1), (5, 17), (4, 1000), (2, 4099)]:
        x = random_array(rng, shape, np.float32)
        w, b = (random_array(rng, shape[1:], np.float32) for _ in range(2))
        y, raw = padded_output(shape, np.float32, 3)
        if name == "softmax":
            softmax(x, out=y)
            reference = softmax_reference(x)
        elif name == "rmsnorm":
            rmsnorm(x, w, out=y)
            reference = norms.rmsnorm_reference(x, w)
        else:
            layernorm(x, w, b, out=y)
            reference = norms.layernorm_reference(x, w, b)
        np.testing.assert_allclose(y, reference, rtol=2e-5, atol=1e-6)
        assert np.count_nonzero(raw != SENTINEL) <= y.size
    after = kernel.stats()  # built here, not loaded from the cache: no object yet
    assert after["compilations"] > before["compilations"]
    assert after["objects_loaded"] == before["objects_loaded"]


def test_loads_that_assume_aligned_vectors_keep_the_loop_as_it_was(stream_all):
    """A load of one element per group of lanes (`s[i, j // 32]`, a Q8_0 scale's
    pattern) reads its elements for vectors starting at multiples of the width: the
    loop doesn't stream (the streamed vectors start at a cache line instead)."""

    @kd.kernel
    def dequantize(q, s, y):
        i, j = kd.indices(q.shape[0], q.shape[1])
        y[i, j] = q[i, j] * s[i, j // 32]

    @dequantize.schedule(kd.cpu)
    def _(sched):
        sched.vectorize("j", 16)
        sched.nontemporal("y")

    rng = keyed_rng("stream-grouped")
    q = random_array(rng, (3, 320), np.float32)
    scales = random_array(rng, (3, 10), np.float32)
    for offset in (0, 3, 12):
        y, raw = padded_output(q.shape, np.float32, offset)
        dequantize(q, scales, y)
        np.testing.assert_array_equal(y, q * np.repeat(scales, 32, axis=1))
    assert "movnt" not in dequantize.asm(q, scales, y)


def test_stores_past_the_cache_are_fenced_before_other_threads_read_them(stream_all):
    """A serial stage streams y, then a parallel stage's tasks read it: a fence before
    the tasks start, and one before the kernel returns."""

    @kd.kernel
    def two_stages(x, y, z):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = x[i, j] + 1
        z[i, j] = y[i, j] * 2

    @two_stages.schedule(kd.cpu)
    def _(s):
        s.vectorize("j", 16)
        s.parallelize("i.1")
        s.nontemporal("y")

    rng = keyed_rng("stream-fence")
    x = random_array(rng, (33, 70), np.float32)
    y, z = np.empty_like(x), np.empty_like(x)
    two_stages(x, y, z)
    np.testing.assert_array_equal(z, (x + 1) * 2)
    entry = two_stages.asm(x, y, z).split(".i:")[0]  # (the task's function follows)
    assert entry.count("sfence") == 2, entry


def test_the_step_names_the_arrays_it_can_mark():
    @kd.kernel
    def rows(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        t = kd.empty(x.shape, x.dtype)
        t[i, j] = x[i, j] + 1
        y[i, j] = t[i, j] * 2

    x = np.ones((2, 3), np.float32)
    kernel = lower(rows.ir(x, np.empty_like(x)).kernel)
    for name, what in [
        ("t", "a temporary"),
        ("x", "an array the kernel only reads"),
        ("z", "no buffer"),
    ]:
        with pytest.raises(kd.ScheduleError) as info:
            Schedule(kernel).nontemporal(name)
        message = str(info.value)
        assert f"there is {what} named '{name}'" in message, message
        assert "name one of y" in message and __file__ in message, message
    s = Schedule(kernel)
    s.nontemporal("y")
    declared = [line for line in str(s.kernel).splitlines() if line.startswith("  buffer ")]
    assert [line.endswith(", nontemporal") for line in declared] == [False, True, False]
