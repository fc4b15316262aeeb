"""Row-wise library functions: apply a kernel over the last axis of any array shape."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def over_rows(
    kernel: Callable[..., object],
    x: np.ndarray,
    out: np.ndarray | None,
    *params: object,
    axis: int = -1,
) -> np.ndarray:
    """Run `kernel(x2, *params, y2)` on x viewed as rows × `axis`, writing `out`."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("expected an array with at least one dimension, got a scalar")
    last = axis in (-1, x.ndim - 1)  # the common case skips np.moveaxis (a few µs)
    moved = x if last else np.moveaxis(x, axis, -1)
    rows = moved.reshape(_rows_shape(moved))
    if out is not None:
        if out.shape != x.shape:
            raise ValueError(f"out has shape {out.shape}, expected {x.shape}")
        target = _rows_view(out if last else np.moveaxis(out, axis, -1))
        if target is not None and target.dtype == x.dtype:
            kernel(rows, *params, target)  # straight into `out`
            return out
    y = np.empty(rows.shape, x.dtype)
    kernel(rows, *params, y)
    result = y.reshape(moved.shape) if last else np.moveaxis(y.reshape(moved.shape), -1, axis)
    if out is None:
        return result
    out[...] = result
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
