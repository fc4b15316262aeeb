"""Softmax over the last axis: DESIGN §1's four statements, fused to one pass per row."""

from __future__ import annotations

import math

import numpy as np
from kdsl.kernels import _device
from kdsl.kernels._rows import over_rows, rows_input, statistics_dtype

import kdsl as kd

# exp(t) = exp2(t·log2 e): exp2 takes fewer instructions (no range reduction by ln 2),
# which is what bounds a row in the L3 (4096×1024: 11% faster); the product's rounding
# moves a probability by |x - max|·6e-8 of itself
LOG2E = math.log2(math.e)

# one shape in the L3 and one in DRAM: their best params differ (the prefetch hints pay
# only in DRAM), and a call takes the nearest tuned shape's
EXAMPLES = [
    {"x": kd.spec(shape, kd.f32), "y": kd.spec(shape, kd.f32)}
    for shape in ((4096, 1024), (16384, 4096))
]


@kd.kernel(examples=EXAMPLES)
def softmax_rows(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    acc = statistics_dtype(x.dtype)
    m = kd.empty(x.shape[0], acc)
    m[i] = kd.max(x[i, j], over=j)
    e = kd.empty(x.shape, acc)
    e[i, j] = kd.exp2((x[i, j] - m[i]) * LOG2E)
    s = kd.empty(x.shape[0], acc)
    s[i] = kd.sum(e[i, j], over=j)
    # one division a row, then a multiply an element, instead of a division an element
    # (the result moves by at most an ulp; on Zen 4 the speed moved within the noise)
    y[i, j] = e[i, j] * (1 / s[i])


@softmax_rows.schedule(kd.cpu)
def _cpu(s):
    """One pass over each row's memory: the max, the exponentials (kept in a row buffer)
    with their sum, then the scaled row; rows on all cores."""
    s.fuse("i", "i.1")
    s.fuse("i", "i.2")
    s.fuse("i", "i.3")
    s.fuse("j.1", "j.2")
    for loop in ("j", "j.1", "j.3"):
        s.vectorize(loop, 16)
    s.parallelize("i")
    # beyond the last-level cache, the output goes past it (no read of its lines first);
    # or (a param) beyond a quarter of it: at half of it, beside an input as large, the
    # output fills a cache that other cores' data share (in a Zen 3 VM's L3, 4096×1024
    # ran 1.22-1.28× faster so, taking turns). The param is the fraction, not the bytes: the
    # tuning key must not depend on the machine's cache (its choices are hashed)
    share = s.param("stream_share", [1, 4])
    s.nontemporal("y", above=None if share == 1 else kd.cpu.cache_bytes() // share)
    if s.param("prefetch", [True, False]):
        # the next row streams in while this one's exponentials are computed, and its
        # output lines are fetched for writing while this one's are written (beyond the
        # L3: 52% of a copy's speed without the hints, 73% with them)
        s.prefetch("x", "i", 1, inside="j.1")
        s.prefetch("y", "i", 1, inside="j.3")


@softmax_rows.schedule(kd.cuda)
def _cuda(s):
    """A block per row, its threads across the row: the exponentials are recomputed in
    the second and third passes instead of stored (the row stays in L1/L2, so memory
    sees one read and one write), the max and sum combined across the block's threads."""
    s.inline("e")
    s.fuse("i", "i.2")
    s.fuse("i", "i.3")
    s.bind("i", "block.x")
    threads = s.param("threads", [256, 512, 1024])  # the best on an H100 first
    for loop in ("j", "j.2", "j.3"):
        s.bind(loop, "thread.x", threads)


def softmax(x: np.ndarray, axis: int = -1, out: np.ndarray | None = None) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)) along `axis`. On PyTorch or CuPy CUDA arrays it
    runs on their GPU."""
    if type(x) is not np.ndarray and (dev := _device.on_device("softmax", x, "x")) is not None:
        return _device.over_rows(dev, softmax_rows, x, out, {}, axis=axis)
    return over_rows("softmax", softmax_rows, rows_input("softmax", x), out, axis=axis)


def reference(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
