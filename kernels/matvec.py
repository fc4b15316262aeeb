"""Matrix-vector products, the step of LLM decoding: y = w @ x (and y += w @ x, for a
residual), f32, reading w once at the speed of the memory.

A row's products are summed in LANE lanes of a vector, and the lanes added at the end
(with the row's last columns when there are fewer than LANE of them). Several rows can
then share the loop over the columns, each with its own accumulator: one core streams
several rows at once (and loads x once for all of them), which is what it takes to keep
DRAM busy with one thread per core when rows are long. Short rows (a small model's
288 columns) read faster one at a time: the matrix is then one sequential stream per
core, which the hardware prefetchers follow, where eight rows of 18 cache lines each are
eight short streams (beyond the L3, 288 columns: 18.1 GB/s one row at a time, 15.3 eight;
4096 columns: 18.4 and 22.7 on an Intel Xeon; on a Zen 2, 288 columns: 24.5 and 17.0, 512:
27.6 and 26.6, 768: 30.6 and 32.8, 2048: 27.3 and 36.1). `matvec` picks by the row's length
(LONG_ROW), and each kernel is tuned on rows of its own kind.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from kdsl.kernels._checks import apart, argument_error, as_array, out_array, shape_error, written
from kdsl.kernels._machine import one_row_first, stream_hints_first

import kdsl as kd

LANE = 16


def row_sums(
    term: Callable[..., object], rows, cols, store: Callable[..., None], prefix: str = ""
) -> None:
    """store(i, Σ_j term(i, j)) for every row i < rows, j < cols, summed in lanes; the
    loops are named i, jo, lane and tail after `prefix` (several products in a kernel)."""
    i, jo, lane = kd.indices(rows, cols // LANE, LANE, names=f"{prefix}i {prefix}jo {prefix}lane")
    tail = kd.indices(cols % LANE, names=f"{prefix}tail")
    full = LANE * (cols // LANE)
    part = kd.empty((rows, LANE), kd.f32)
    part[i, lane] = kd.sum(term(i, LANE * jo + lane), over=jo)
    store(i, kd.sum(part[i, lane], over=lane) + kd.sum(term(i, full + tail), over=tail))


def product(w, x, store: Callable[..., None], prefix: str = "") -> None:
    """store(i, (w @ x)[i]) for every row i of w (row_sums, its loops after `prefix`)."""
    row_sums(lambda i, j: w[i, j] * x[j], w.shape[0], w.shape[1], store, prefix)


def into(y) -> Callable[..., None]:
    """A row_sums store: y[i] = the row's sum."""

    def store(i, total):
        y[i] = total

    return store


def added_to(y) -> Callable[..., None]:
    """A row_sums store: y[i] += the row's sum (a residual)."""

    def store(i, total):
        y[i] = y[i] + total

    return store


LONG_ROW = 768  # columns from which several rows at a time read faster than one
PREFETCH = 64  # one row at a time: a hint this many vectors (4 KiB) ahead of the reads


def row_streams(
    s, rows: tuple[int, ...] = (8, 4, 2, 1), matrix: str = "w", prefix: str = ""
) -> None:
    """`rows` rows at a time in the loop over the columns, their lanes in registers, on
    all cores; the rows' final sums in a parallel loop of their own. One row at a time,
    its sum follows its lanes in the same parallel loop, and the rows of `matrix` are
    prefetched ahead of the reads (see docs/schedules.md, "Streams from DRAM"). `prefix`:
    row_sums' (its params take the same one)."""
    i, jo, lane = (prefix + name for name in ("i", "jo", "lane"))
    tile = s.param(f"{prefix}rows", list(one_row_first(rows)))
    if tile == 1:
        s.fuse(i, f"{i}.1")
        s.reorder(jo, lane)
        s.vectorize(lane, LANE)
        s.parallelize(i)
        ahead = s.param(f"{prefix}prefetch", stream_hints_first(PREFETCH))  # 0: none
        if ahead:
            s.prefetch(matrix, jo, ahead)
        return
    outer, rest = s.split(i, tile)
    s.reorder(outer, lane, jo, rest)
    s.vectorize(lane, LANE)
    s.unroll(rest)
    s.parallelize(outer)
    s.parallelize(f"{i}.1")


def short_rows(s, matrix: str = "w", prefix: str = "") -> None:
    """row_streams, one row at a time unless tuned otherwise."""
    row_streams(s, (1, 8, 4, 2), matrix, prefix)


def _example(rows: int, cols: int) -> dict[str, kd.Spec]:
    return {
        "w": kd.spec((rows, cols), kd.f32),
        "x": kd.spec((cols,), kd.f32),
        "y": kd.spec((rows,), kd.f32),
    }


# Each kernel is tuned on the rows matvec_for gives it, beyond the L3 (as a model's layers
# are read): a config tuned on the other kind of row reached them as the nearest tuned
# shape (on a Zen 2, 8 rows at a time from 4096 x 4096 slowed stories15M's 864 x 288
# products by 30%).
_SHORT_ROWS = [_example(32000, 288)]
_LONG_ROWS = [_example(32000, LONG_ROW), _example(4096, 4096), _example(11008, 4096)]


@kd.kernel(examples=_SHORT_ROWS)
def matvec_kernel(w, x, y):
    product(w, x, into(y))


@kd.kernel(examples=_SHORT_ROWS)
def matvec_add_kernel(w, x, y):
    """y += w @ x: the residual added as each row's sum is stored."""
    product(w, x, added_to(y))


matvec_long_rows = kd.kernel(matvec_kernel.fn, name="matvec_long_rows", examples=_LONG_ROWS)
matvec_add_long_rows = kd.kernel(
    matvec_add_kernel.fn, name="matvec_add_long_rows", examples=_LONG_ROWS
)
for _kernel in (matvec_kernel, matvec_add_kernel):
    _kernel.schedule(kd.cpu)(short_rows)
for _kernel in (matvec_long_rows, matvec_add_long_rows):
    _kernel.schedule(kd.cpu)(row_streams)


def matvec_for(cols: int, accumulate: bool = False) -> kd.KernelFunction:
    """The kernel for rows of `cols` columns: y = w @ x, or y += w @ x."""
    if cols >= LONG_ROW:
        return matvec_add_long_rows if accumulate else matvec_long_rows
    return matvec_add_kernel if accumulate else matvec_kernel


def matvec(
    w: np.ndarray, x: np.ndarray, out: np.ndarray | None = None, accumulate: bool = False
) -> np.ndarray:
    """w @ x for w [rows, cols] and x [cols] (float32, any strides); `accumulate=True`
    adds the product to `out` instead of overwriting it."""
    w, x = as_array("matvec", "w", w), as_array("matvec", "x", x)
    if w.dtype != np.float32 or x.dtype != np.float32:  # (astype costs even when a no-op)
        w, x = w.astype(np.float32, copy=False), x.astype(np.float32, copy=False)
    if w.ndim != 2 or x.shape != (w.shape[1],):
        raise shape_error(
            "matvec",
            f"can't multiply w of shape {w.shape} by x of shape {x.shape}",
            "pass w [rows, cols] and x [cols]",
        )
    if out is None and accumulate:
        raise argument_error(
            "matvec", "accumulate=True adds to `out`, and none was given", "pass out="
        )
    target = out_array("matvec", out, (w.shape[0],), np.float32)
    y = apart(out, target, w, x)
    if accumulate and y is not target:
        y[...] = target
    # rows that descend in memory (w[::-1]) are read in ascending order, the sums stored
    # in reverse: the prefetchers follow one rising stream, not a row up then two back
    # (32000 × 288 read top-down ran at 0.42x the speed of the same rows in order)
    rows, sums = (w[::-1], y[::-1]) if w.strides[0] < 0 else (w, y)
    matvec_for(w.shape[1], accumulate)(rows, x, sums)
    return written(y, target, out)
