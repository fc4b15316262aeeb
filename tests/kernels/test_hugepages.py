"""HugePageArena: copies of weights in memory advised as transparent huge pages."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from kdsl.kernels.hugepages import ALIGN, HUGE_PAGE, HugePageArena

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _random(shape: tuple[int, ...], dtype, rng) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(-128, 128, shape).astype(dtype)


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (13, 288), (3, 0, 5), (31, 17, 3)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.float16, np.float64])
def test_a_copy_holds_the_same_values_in_c_order_on_a_cache_line(shape, dtype) -> None:
    rng = np.random.default_rng(len(shape) * 100 + np.dtype(dtype).itemsize)
    arena = HugePageArena()
    arena.copy(_random((3,), np.int8, rng))  # (so that the next copy must be realigned)
    source = _random(shape, dtype, rng)
    strided = np.flip(source, axis=-1) if source.ndim > 1 else source[::-1]
    copy = arena.copy(strided)
    assert copy.shape == strided.shape and copy.dtype == strided.dtype
    np.testing.assert_array_equal(copy, strided)
    assert copy.flags.c_contiguous and copy.flags.writeable
    assert copy.ctypes.data % ALIGN == 0
    assert not np.shares_memory(copy, source)


def test_an_empty_array_is_filled_in_parts_beside_the_copies() -> None:
    """`empty`: a new array of the shape and dtype asked for, C-ordered on a cache line, apart
    from the arena's other arrays (the llama2 runner fills its stacked layers a layer at a
    time)."""
    rng = np.random.default_rng(2)
    arena = HugePageArena(chunk_bytes=1 << 16)
    before = arena.copy(_random((5,), np.int8, rng))
    stacked = arena.empty((3, 7, 11), np.float32)
    after = arena.copy(_random((9,), np.float64, rng))
    assert stacked.shape == (3, 7, 11) and stacked.dtype == np.float32
    assert stacked.flags.c_contiguous and stacked.ctypes.data % ALIGN == 0
    layers = [_random((7, 11), np.float32, rng) for _ in range(3)]
    for layer, values in zip(stacked, layers):
        layer[...] = values
    np.testing.assert_array_equal(stacked, np.stack(layers))
    assert not np.shares_memory(stacked, before) and not np.shares_memory(stacked, after)
    assert arena.empty((0, 4), np.int8).shape == (0, 4)


def test_copies_do_not_overlap_and_outlive_the_arena() -> None:
    rng = np.random.default_rng(1)
    arena = HugePageArena(chunk_bytes=1 << 16)
    sources = [rng.standard_normal(n).astype(np.float32) for n in (5000, 11, 9000, 1, 70000)]
    copies = [arena.copy(s) for s in sources]  # the last one is bigger than a chunk
    del arena
    for c in copies:
        c += 1  # written after the arena is gone: each copy holds its chunk
    for n, (s, c) in enumerate(zip(sources, copies)):
        np.testing.assert_array_equal(c, s + 1)
        assert not any(np.shares_memory(c, other) for other in copies[n + 1 :])


def _flags_of(address: int) -> list[str]:
    """The VmFlags of the mapping holding `address` (Linux's /proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        span = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if span:
            inside = int(span[1], 16) <= address < int(span[2], 16)
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not THP.exists(), reason="transparent huge pages are a Linux feature")
def test_the_memory_is_advised_as_huge_pages_on_their_boundary() -> None:
    copy = HugePageArena().copy(np.arange(3 * HUGE_PAGE // 4, dtype=np.float32))
    assert copy.ctypes.data % HUGE_PAGE == 0  # the first copy starts the chunk
    assert "hg" in _flags_of(copy.ctypes.data)  # MADV_HUGEPAGE
