"""Row-wise library functions: apply a kernel over the last axis of any array shape."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from kdsl.kernels._checks import apart, as_array, as_axis, out_array

import kdsl as kd


def statistics_dtype(dtype: kd.DType) -> kd.DType:
    """Inside a kernel: the dtype a row's sums and maxima are kept in, `x.dtype` for f32
    and f64 rows, f32 for f16/bf16 (an f16 sum of squares overflows past 65504: a
    4096-wide row of standard deviation 4 normalized to zeros)."""
    return dtype if dtype in (kd.f32, kd.f64) else kd.f32


def rows_input(func: str, x: object) -> np.ndarray:
    """`x` checked for a row-wise function: a float array of at least one dimension."""
    return as_array(func, "x", x, kinds="f", min_ndim=1)


def over_rows(
    func: str,
    kernel: Callable[..., object],
    x: np.ndarray,
    out: object,
    *params: object,
    axis: object = -1,
) -> np.ndarray:
    """Run `kernel(x2, *params, y2)` on x (checked by `rows_input`) viewed as rows ×
    `axis`, writing `out` (the public function `func`'s; its errors name `func`)."""
    axis = as_axis(func, axis, x.ndim)
    last = axis == x.ndim - 1  # the common case skips np.moveaxis (a few µs)
    moved = x if last else np.moveaxis(x, axis, -1)
    rows = moved.reshape(_rows_shape(moved))
    if out is not None:
        target = out_array(func, out, x.shape, x.dtype)
        view = _rows_view(target if last else np.moveaxis(target, axis, -1))
        if view is not None and apart(out, view, rows, *params) is view:
            if rows.strides[0] < 0 and view.strides[0] < 0:
                # rows descending in memory in both (x[::-1] into out[::-1]): the same rows
                # in memory order, contiguous again (softmax 4096×1024 ran at 0.72x the
                # speed of the rows in order, its output not streamed past the cache)
                rows, view = rows[::-1], view[::-1]
            if rows.size:
                kernel(rows, *params, view)  # straight into `out`
            return out
    y = np.empty(rows.shape, x.dtype)
    if rows.size:  # (rows of no elements: nothing to normalize)
        kernel(rows, *params, y)
    result = y.reshape(moved.shape) if last else np.moveaxis(y.reshape(moved.shape), -1, axis)
    if out is None:
        return result
    target[...] = result
    return out


def _rows_shape(a: np.ndarray) -> tuple[int, int]:
    return math.prod(a.shape[:-1]), a.shape[-1]


def _rows_view(a: np.ndarray) -> np.ndarray | None:
    """`a` as rows × last axis without copying, or None when its strides don't allow it."""
    view = a.view()
    try:
        view.shape = _rows_shape(a)
    except AttributeError:
        return None
    return view
