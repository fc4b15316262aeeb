"""Arrays on huge pages, for weights that a kernel streams from DRAM on every call.

A matrix-vector product reads each weight once per call, at the speed of the memory;
with 4 KiB pages the core also walks the page tables once per 4 KiB it streams, far
more pages than its TLB holds. A checkpoint's memory-mapped weights are file pages of
4 KiB; NumPy asks for transparent huge pages (2 MiB) only for an allocation of 4 MiB
or more, so a small model's per-layer matrices are 4 KiB pages too. Copied into one
region aligned to 2 MiB and advised as huge pages (MADV_HUGEPAGE, where the kernel
offers transparent huge pages "always" or on "madvise"), they stream faster: on a Zen 2,
stories15M's 32000 × 288 classifier 1.31 → 1.00 ms, float32 decoding 357 → 430 tok/s.
Where the system gives no huge pages, the arena is plain memory and nothing changes.
"""

from __future__ import annotations

import contextlib
import math
import mmap

import numpy as np

HUGE_PAGE = 2 << 20
CHUNK = 64 << 20  # bytes reserved at a time: most arrays share a chunk's huge pages
ALIGN = 64  # each array starts on a cache line


class HugePageArena:
    """Copies of arrays, packed into chunks of memory advised as huge pages; the copies
    stay valid as long as they are referenced (each holds its chunk)."""

    def __init__(self, chunk_bytes: int = CHUNK):
        self.chunk_bytes = chunk_bytes
        self._chunk = np.empty(0, np.uint8)
        self._used = 0

    def copy(self, a: np.ndarray) -> np.ndarray:
        """A C-ordered, writable copy of `a` in the arena."""
        a = np.asarray(a)
        out = self.empty(a.shape, a.dtype)
        out[...] = a
        return out

    def empty(self, shape: tuple[int, ...], dtype: object) -> np.ndarray:
        """A new C-ordered array in the arena (its values unset): to fill in parts, where
        a copy would first need the whole array elsewhere."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        start = -(-self._used // ALIGN) * ALIGN
        if start + nbytes > self._chunk.size:
            self._chunk, start = _huge_chunk(max(self.chunk_bytes, nbytes)), 0
        self._used = start + nbytes
        return self._chunk[start : self._used].view(dtype).reshape(shape)


def _huge_chunk(nbytes: int) -> np.ndarray:
    """`nbytes` of anonymous memory (a multiple of the huge page, at least one) starting
    on a huge page's boundary, advised as huge pages."""
    size = -(-max(nbytes, 1) // HUGE_PAGE) * HUGE_PAGE
    # private: shared anonymous memory is shmem, whose huge pages are another setting
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    region = mmap.mmap(-1, size + HUGE_PAGE, flags=flags)  # the slack aligns the start
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux only
        with contextlib.suppress(OSError):  # (EINVAL: a kernel built without them)
            region.madvise(mmap.MADV_HUGEPAGE)
    raw = np.frombuffer(region, np.uint8)
    skip = -raw.ctypes.data % HUGE_PAGE
    return raw[skip : skip + size]
