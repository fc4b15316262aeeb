"""Row-wise library functions: apply a kernel over the last axis of any array shape."""

from __future__ import annotations

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
    moved = np.moveaxis(x, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1]) if moved.size else moved.reshape(0, moved.shape[-1])
    y = np.empty(rows.shape, x.dtype)
    kernel(rows, *params, y)
    result = np.moveaxis(y.reshape(moved.shape), -1, axis)
    if out is None:
        return result
    if out.shape != x.shape:
        raise ValueError(f"out has shape {out.shape}, expected {x.shape}")
    out[...] = result
    return out
