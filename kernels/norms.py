"""RMS norm and layer norm over the last axis, one pass over each row's memory."""

from __future__ import annotations

import numpy as np
from kdsl.kernels import _device
from kdsl.kernels._checks import as_array, as_float, shape_error
from kdsl.kernels._rows import over_rows, rows_input, statistics_dtype

import kdsl as kd

# one shape in the L3 and one in DRAM (see softmax.py's EXAMPLES)
_ROWS = ((4096, 1024), (16384, 4096))


@kd.kernel(
    examples=[
        {
            "x": kd.spec(rows, kd.f32),
            "w": kd.spec(rows[1:], kd.f32),
            "eps": 1e-5,
            "y": kd.spec(rows, kd.f32),
        }
        for rows in _ROWS
    ]
)
def rmsnorm_rows(x, w, eps, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    ss = kd.empty(x.shape[0], statistics_dtype(x.dtype))
    ss[i] = kd.sum(x[i, j] * x[i, j], over=j)
    y[i, j] = x[i, j] * kd.rsqrt(ss[i] / x.shape[1] + eps) * w[j]


@rmsnorm_rows.schedule(kd.cpu)
def _rms_cpu(s):
    s.fuse("i", "i.1")
    s.vectorize("j", 16)
    s.vectorize("j.1", 16)
    s.parallelize("i")
    next_row_ahead(s, "j.1")


def next_row_ahead(s, output_loop: str) -> None:
    """While a row's output is computed and written, the next row's input streams in and
    its output lines are fetched for writing (a param: the autotuner may drop it). A
    row's passes otherwise wait on memory in turn: beyond the L3 (16384 × 4096) RMS norm
    ran at 78% and layer norm at 76% of a copy's speed without the hints, 98% and 100%
    with them. (Where they don't pay, the tuning kdsl ships says so: on the Zen 4 it was
    made on, RMS norm 16384 × 4096 and layer norm 4096 × 1024 ran faster without them,
    1.08× and 1.13× taking turns.) Beyond the last-level cache the output is written
    past it (s.nontemporal): 16384 × 4096 on a Zen 2, RMS norm 22 → 16 ms, layer norm
    23 → 18 ms."""
    s.nontemporal("y")  # beyond the last-level cache, past it: no read of its lines first
    if s.param("prefetch", [True, False]):
        s.prefetch("x", "i", 1, inside=output_loop)
        s.prefetch("y", "i", 1, inside=output_loop)


@kd.kernel(
    examples=[
        {
            "x": kd.spec(rows, kd.f32),
            "w": kd.spec(rows[1:], kd.f32),
            "b": kd.spec(rows[1:], kd.f32),
            "eps": 1e-5,
            "y": kd.spec(rows, kd.f32),
        }
        for rows in _ROWS
    ]
)
def layernorm_rows(x, w, b, eps, y):
    """The mean and variance from one pass of shifted sums: with c the row's first
    value, Σ(x - c) and Σ(x - c)² lose no precision to a large mean (as plain Σx² does)
    and need no second pass over the row."""
    i, j = kd.indices(x.shape[0], x.shape[1])
    n = x.shape[1]
    acc = statistics_dtype(x.dtype)
    shift = kd.empty(x.shape[0], acc)
    shift[i] = x[i, 0]
    sum1, sum2 = kd.empty(x.shape[0], acc), kd.empty(x.shape[0], acc)
    sum1[i] = kd.sum(x[i, j] - shift[i], over=j)
    sum2[i] = kd.sum((x[i, j] - shift[i]) * (x[i, j] - shift[i]), over=j)
    mean = sum1[i] / n
    inverse = kd.rsqrt(kd.maximum(sum2[i] / n - mean * mean, 0.0) + eps)
    y[i, j] = (x[i, j] - (shift[i] + mean)) * inverse * w[j] + b[j]


@layernorm_rows.schedule(kd.cpu)
def _ln_cpu(s):
    """The sums and the output fused per row: the row stays in cache between the two
    passes."""
    for k in (1, 2, 3):
        s.fuse("i", f"i.{k}")
    s.fuse("j", "j.1")
    for loop in ("j", "j.2"):
        s.vectorize(loop, 16)
    s.parallelize("i")
    next_row_ahead(s, "j.2")


def _rows_on_gpu(s, rows, loops, threads, fused=()):
    """A block per row, its threads across the row; the `rows` statements over rows fused
    (the row stays in L1/L2 between its passes), the `fused` pairs of loops across the
    row too (one pass for both), and its sums combined across the block's threads.
    `threads` lists the block sizes to try, the best measured on an H100 first
    (benchmarks/RESULTS-gpu.md)."""
    for k in range(1, rows):
        s.fuse("i", f"i.{k}")
    for pair in fused:
        s.fuse(*pair)
    s.bind("i", "block.x")
    threads = s.param("threads", threads)
    for loop in loops:
        s.bind(loop, "thread.x", threads)


@rmsnorm_rows.schedule(kd.cuda)
def _rms_cuda(s):
    _rows_on_gpu(s, 2, ("j", "j.1"), [512, 256, 1024])


@layernorm_rows.schedule(kd.cuda)
def _ln_cuda(s):
    # the shift, the two sums (one pass: each thread adds both) and the output: four
    # statements over rows
    _rows_on_gpu(s, 4, ("j", "j.2"), [256, 512, 1024], fused=[("j", "j.1")])


def _weight(func: str, name: str, w: object, x: np.ndarray) -> np.ndarray:
    """A weight or bias: one value per element of x's rows, in x's dtype."""
    w = as_array(func, name, w)
    n = x.shape[-1]
    if w.shape != (n,):
        raise shape_error(
            func,
            f"'{name}' has shape {w.shape}, expected ({n},) for rows of {n}",
            f"pass {name} with one value per element of x's last axis",
        )
    return w.astype(x.dtype, copy=False)


def rmsnorm(
    x: np.ndarray, weight: np.ndarray, eps: float = 1e-5, out: np.ndarray | None = None
) -> np.ndarray:
    """x / sqrt(mean(x²) + eps) * weight over the last axis (on the GPU of PyTorch or
    CuPy CUDA arrays)."""
    if type(x) is not np.ndarray and (dev := _device.on_device("rmsnorm", x, "x")) is not None:
        return _device.over_rows(dev, rmsnorm_rows, x, out, {"weight": weight}, eps)
    x = rows_input("rmsnorm", x)
    w = _weight("rmsnorm", "weight", weight, x)
    return over_rows("rmsnorm", rmsnorm_rows, x, out, w, as_float("rmsnorm", "eps", eps))


def layernorm(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    eps: float = 1e-5,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (on the GPU of
    PyTorch or CuPy CUDA arrays)."""
    if type(x) is not np.ndarray and (dev := _device.on_device("layernorm", x, "x")) is not None:
        weights = {"weight": weight, "bias": bias}
        return _device.over_rows(dev, layernorm_rows, x, out, weights, eps)
    x = rows_input("layernorm", x)
    w, b = _weight("layernorm", "weight", weight, x), _weight("layernorm", "bias", bias, x)
    return over_rows("layernorm", layernorm_rows, x, out, w, b, as_float("layernorm", "eps", eps))


def rmsnorm_reference(x: np.ndarray, weight: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + eps) * weight


def layernorm_reference(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5
) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias
