"""Matrix-vector products, the step of LLM decoding: y = w @ x (and y += w @ x, for a
residual), f32, reading w once at the speed of the memory.

A row's products are summed in LANE lanes of a vector, and the lanes added at the end
(with the row's last columns when there are fewer than LANE of them). Several rows can
then share the loop over the columns, each with its own accumulator: one core streams
several rows at once (and loads x once for all of them), which is what it takes to keep
DRAM busy with one thread per core.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import kdsl as kd

LANE = 16


def row_sums(term: Callable[..., object], rows, cols, store: Callable[..., None]) -> None:
    """store(i, Σ_j term(i, j)) for every row i < rows, j < cols, summed in lanes."""
    i, jo, lane = kd.indices(rows, cols // LANE, LANE)
    tail = kd.indices(cols % LANE, names="tail")
    full = LANE * (cols // LANE)
    part = kd.empty((rows, LANE), kd.f32)
    part[i, lane] = kd.sum(term(i, LANE * jo + lane), over=jo)
    store(i, kd.sum(part[i, lane], over=lane) + kd.sum(term(i, full + tail), over=tail))


def row_streams(s) -> None:
    """`rows` rows at a time in the loop over the columns, their lanes in registers, on
    all cores; the rows' final sums in a parallel loop of their own."""
    rows, rest = s.split("i", s.param("rows", [8, 4, 2]))
    s.reorder(rows, "lane", "jo", rest)
    s.vectorize("lane", LANE)
    s.unroll(rest)
    s.parallelize(rows)
    s.parallelize("i.1")


def _example(rows: int, cols: int) -> dict[str, kd.Spec]:
    return {
        "w": kd.spec((rows, cols), kd.f32),
        "x": kd.spec((cols,), kd.f32),
        "y": kd.spec((rows,), kd.f32),
    }


_EXAMPLES = [_example(4096, 4096), _example(32000, 768)]


@kd.kernel(examples=_EXAMPLES)
def matvec_kernel(w, x, y):
    def store(i, total):
        y[i] = total

    row_sums(lambda i, j: w[i, j] * x[j], w.shape[0], w.shape[1], store)


@kd.kernel(examples=_EXAMPLES)
def matvec_add_kernel(w, x, y):
    """y += w @ x: the residual added as each row's sum is stored."""

    def store(i, total):
        y[i] = y[i] + total

    row_sums(lambda i, j: w[i, j] * x[j], w.shape[0], w.shape[1], store)


for _kernel in (matvec_kernel, matvec_add_kernel):
    _kernel.schedule(kd.cpu)(row_streams)


def matvec(
    w: np.ndarray, x: np.ndarray, out: np.ndarray | None = None, accumulate: bool = False
) -> np.ndarray:
    """w @ x for w [rows, cols] and x [cols] (float32, any strides); `accumulate=True`
    adds the product to `out` instead of overwriting it."""
    w, x = np.asarray(w, np.float32), np.asarray(x, np.float32)
    if w.ndim != 2 or x.shape != (w.shape[1],):
        raise ValueError(f"can't multiply w of shape {w.shape} by x of shape {x.shape}")
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True adds to `out`: pass out=")
        out = np.empty(w.shape[0], np.float32)
    elif out.shape != (w.shape[0],):
        raise ValueError(f"out has shape {out.shape}, expected ({w.shape[0]},)")
    (matvec_add_kernel if accumulate else matvec_kernel)(w, x, out)
    return out
