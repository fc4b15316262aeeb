"""Kernels as a user first writes them, with no schedule, against NumPy: the default
schedule's share of "a naive kernel is already fast" (kdsl/schedule/default.py).

    python benchmarks/naive.py [--quick] [--output benchmarks/RESULTS-naive.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import harness
import numpy as np

import kdsl as kd

# ------------------------------------------------------------------ the kernels


@kd.kernel
def softmax(x, y):
    """Three passes over each row, side by side: each is vectorized, and the third reads
    the exponentials the second kept in y (s.reuse)."""
    i, j = kd.indices(x.shape[0], x.shape[1])
    m = kd.max(x[i, j], over=j)
    e = kd.exp(x[i, j] - m)
    y[i, j] = e / kd.sum(e, over=j)


@kd.kernel
def batched_softmax(x, y):
    """Rows in batches, here a batch of one: the batch and row loops run on threads as
    one loop."""
    b, i, j = kd.indices(x.shape[0], x.shape[1], x.shape[2])
    m = kd.max(x[b, i, j], over=j)
    e = kd.exp(x[b, i, j] - m)
    y[b, i, j] = e / kd.sum(e, over=j)


def _np_batched_softmax(x: np.ndarray, y: np.ndarray) -> None:
    _np_softmax(x[0], y[0])


@kd.kernel
def rmsnorm(x, w, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i, j] = x[i, j] * kd.rsqrt(kd.sum(x[i, j] * x[i, j], over=j) / x.shape[1] + 1e-5) * w[j]


@kd.kernel
def argmax(x, out):
    i, j = kd.indices(x.shape[0], x.shape[1])
    out[i] = kd.argmax(x[i, j], over=j)


@kd.kernel
def histogram(idx, counts):
    """Colliding subscripts: run in the serial order (every count kept)."""
    i = kd.indices(idx.shape[0])
    counts[idx[i]] += 1


@kd.kernel
def gather_rows(table, ids, y):
    """An embedding lookup: rows of a table by token id."""
    t, d = kd.indices(ids.shape[0], table.shape[1])
    y[t, d] = table[ids[t], d]


@kd.kernel
def axpy2d(x, z, y):
    """Elementwise over 2-D arrays: Fortran-ordered (a DataFrame's values, x.T), the
    default schedule walks their first axis innermost; C-ordered, it collapses the nest
    into one loop over all elements (rows of 3 are no masked vector each)."""
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i, j] = 2.0 * x[i, j] + z[i, j]


@kd.kernel
def window_max(x, y):
    """A sliding maximum through a small scratch array per element: one per lane."""
    for i in kd.grid(y.shape[0]):
        buf = kd.zeros((7,), kd.f32)
        for t in range(7):
            buf[t] = x[i + t]
        m = buf[0]
        for t in range(1, 7):
            m = kd.maximum(m, buf[t])
        y[i] = m


@kd.kernel
def complex_multiply(a, b, c):
    """Interleaved complex numbers (re, im, re, im, …): lanes two elements apart."""
    i = kd.indices(a.shape[0] // 2)
    c[2 * i] = a[2 * i] * b[2 * i] - a[2 * i + 1] * b[2 * i + 1]
    c[2 * i + 1] = a[2 * i] * b[2 * i + 1] + a[2 * i + 1] * b[2 * i]


@kd.kernel
def complex_multiply_grid(a, b, c):
    """The same in one loop: its two stores fill each pair, written as whole vectors
    (the implicit form is two loops, each writing every other element)."""
    for i in kd.grid(a.shape[0] // 2):
        c[2 * i] = a[2 * i] * b[2 * i] - a[2 * i + 1] * b[2 * i + 1]
        c[2 * i + 1] = a[2 * i] * b[2 * i + 1] + a[2 * i + 1] * b[2 * i]


@kd.kernel
def luminance(rgb, y):
    """An (n, 3) image's pixels to gray: three channels of each row."""
    i = kd.indices(rgb.shape[0])
    y[i] = 0.299 * rgb[i, 0] + 0.587 * rgb[i, 1] + 0.114 * rgb[i, 2]


@kd.kernel
def normalize3(x, y):
    """(n, 3) vectors to unit length, a statement per component."""
    i = kd.indices(x.shape[0])
    r = kd.sqrt(x[i, 0] * x[i, 0] + x[i, 1] * x[i, 1] + x[i, 2] * x[i, 2])
    y[i, 0] = x[i, 0] / r
    y[i, 1] = x[i, 1] / r
    y[i, 2] = x[i, 2] / r


@kd.kernel
def normalize_rows(x, y):
    """The same as a row operation: rows of any length (3 only at run time)."""
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i, j] = x[i, j] / kd.sqrt(kd.sum(x[i, j] * x[i, j], over=j))


@kd.kernel
def column_sums(x, out):
    """A sum down the columns: in blocks of columns, each row read a block at a time."""
    i, j = kd.indices(x.shape[0], x.shape[1])
    out[j] = kd.sum(x[i, j], over=i)


@kd.kernel
def total(x, out):
    """A sum of one long loop: in parts on all threads (rfactor), combined in order."""
    i = kd.indices(x.shape[0])
    out[0] = kd.sum(x[i], over=i)


@kd.kernel
def transpose(x, y):
    """Reads along j, writes along i: in 16 x 16 tiles, vectorized along the writes."""
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[j, i] = x[i, j]


@kd.kernel
def matmul(a, b, c):
    """A contraction: the default schedule computes it in register tiles of 6 rows × a
    vector of columns (each vector of b serves the tile's rows), b packed a panel of
    columns at a time; one row of a streams b's rows instead."""
    i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
    c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)


@kd.kernel
def batched_matmul(a, b, c):
    """A batch of contractions: the batch loop and the tiles of rows inside it both on
    threads, so that a batch of one keeps both cores."""
    n, i, j, k = kd.indices(a.shape[0], a.shape[1], b.shape[2], a.shape[2])
    c[n, i, j] = kd.sum(a[n, i, k] * b[n, k, j], over=k)


# ------------------------------------------------------------------ the cases


def _rows(shape: tuple[int, ...]):
    def make(rng: np.random.Generator) -> harness.Args:
        x = rng.standard_normal(shape, dtype=np.float32)
        return x, np.empty(shape, np.float32)

    return make


def _np_softmax(x: np.ndarray, y: np.ndarray) -> None:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.divide(e, e.sum(axis=1, keepdims=True), out=y)


def _np_rmsnorm(x: np.ndarray, w: np.ndarray, y: np.ndarray) -> None:
    scale = 1 / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-5)
    np.multiply(x * scale, w, out=y)


def cases(rows: int, cols: int, n: int) -> list[harness.Case]:
    shape = (rows, cols)
    size = f"{rows}×{cols}"
    moved = 2 * rows * cols * 4  # each element read and written once

    def norm_args(rng: np.random.Generator) -> harness.Args:
        x = rng.standard_normal(shape, dtype=np.float32)
        return x, rng.standard_normal(cols, dtype=np.float32), np.empty(shape, np.float32)

    def argmax_args(rng: np.random.Generator) -> harness.Args:
        return rng.standard_normal(shape, dtype=np.float32), np.empty(rows, np.int64)

    def histogram_args(rng: np.random.Generator) -> harness.Args:
        return rng.integers(0, 256, n).astype(np.int64), np.zeros(256, np.int64)

    def count(idx: np.ndarray, counts: np.ndarray) -> None:
        counts[...] = 0
        histogram(idx, counts)

    def fortran_args(rng: np.random.Generator) -> harness.Args:
        x, z = (np.asfortranarray(rng.standard_normal(shape, dtype=np.float32)) for _ in "xz")
        return x, z, np.empty(shape, np.float32, order="F")

    def np_axpy(x: np.ndarray, z: np.ndarray, y: np.ndarray) -> None:
        np.multiply(x, 2.0, out=y)
        y += z

    def rows3_args(rng: np.random.Generator) -> harness.Args:
        x, z = (rng.standard_normal((n, 3), dtype=np.float32) for _ in "xz")
        return x, z, np.empty((n, 3), np.float32)

    def window_args(rng: np.random.Generator) -> harness.Args:
        return rng.standard_normal(n + 6, dtype=np.float32), np.empty(n, np.float32)

    def np_window_max(x: np.ndarray, y: np.ndarray) -> None:
        np.copyto(y, x[:n])
        for t in range(1, 7):
            np.maximum(y, x[t : t + n], out=y)

    def complex_args(rng: np.random.Generator) -> harness.Args:
        a, b = (rng.standard_normal(2 * n, dtype=np.float32) for _ in "ab")
        return a, b, np.empty(2 * n, np.float32)

    def np_complex_multiply(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
        np.multiply(a.view(np.complex64), b.view(np.complex64), out=c.view(np.complex64))

    def pixel_args(rng: np.random.Generator) -> harness.Args:
        return rng.random((n, 3), dtype=np.float32), np.empty(n, np.float32)

    def np_luminance(rgb: np.ndarray, y: np.ndarray) -> None:
        """The quickest NumPy spelling here (`rgb @ w` took twice as long)."""
        np.multiply(rgb[:, 0], np.float32(0.299), out=y)
        y += np.float32(0.587) * rgb[:, 1]
        y += np.float32(0.114) * rgb[:, 2]

    def vector_args(rng: np.random.Generator) -> harness.Args:
        return rng.standard_normal((n, 3), dtype=np.float32), np.empty((n, 3), np.float32)

    def np_normalize(x: np.ndarray, y: np.ndarray) -> None:
        """The quickest NumPy spelling here (einsum 1.4x, norm and sum(axis=1) 3x this)."""
        r = x[:, 0] * x[:, 0]
        r += x[:, 1] * x[:, 1]
        r += x[:, 2] * x[:, 2]
        np.divide(x, np.sqrt(r, out=r)[:, None], out=y)

    def gather_args(rng: np.random.Generator) -> harness.Args:
        table = rng.standard_normal((32000, 256), dtype=np.float32)
        ids = rng.integers(0, 32000, rows).astype(np.int64)
        return table, ids, np.empty((rows, 256), np.float32)

    def matmul_args(rng: np.random.Generator) -> harness.Args:
        a, b = (rng.standard_normal((cols, cols), dtype=np.float32) for _ in "ab")
        return a, b, np.empty((cols, cols), np.float32)

    def products(shape: tuple[int, ...], inner: int, columns: int):
        """The arguments of a @ b for `a` of `shape` (batch axes first) and b of inner ×
        columns per batch."""

        def make(rng: np.random.Generator) -> harness.Args:
            a = rng.standard_normal(shape, dtype=np.float32)
            b = rng.standard_normal((*shape[:-2], inner, columns), dtype=np.float32)
            return a, b, np.empty((*shape[:-1], columns), np.float32)

        return make

    def np_matmul(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
        np.matmul(a, b, out=c)

    long = 4 * cols  # a vector times a 4000² matrix
    batch = min(512, long)  # a batch of one 512³ product

    return [
        harness.Case(
            "matmul, kd.sum over k",
            f"{cols}³",
            matmul_args,
            matmul,
            lambda a, b, c: np.matmul(a, b, out=c),
            2 * cols**3,
            "GFLOP/s",
            1e-4,
            1e-4,
        ),
        harness.Case(
            "matmul, a batch of one",
            f"1×{batch}³",
            products((1, batch, batch), batch, batch),
            batched_matmul,
            np_matmul,
            2 * batch**3,
            "GFLOP/s",
            1e-4,
            1e-4,
        ),
        harness.Case(
            "vector × matrix, kd.sum over k",
            f"1×{long}·{long}²",
            products((1, long), long, long),
            matmul,
            np_matmul,
            (long * long + 2 * long) * 4,
            "GB/s",
            1e-4,
            1e-3,
        ),
        harness.Case("softmax", size, _rows(shape), softmax, _np_softmax, moved, "GB/s", 1e-5),
        harness.Case(
            "softmax, a batch of one",
            f"1×{size}",
            _rows((1, *shape)),
            batched_softmax,
            _np_batched_softmax,
            moved,
            "GB/s",
            1e-5,
        ),
        harness.Case("rmsnorm", size, norm_args, rmsnorm, _np_rmsnorm, moved, "GB/s", 1e-4, 1e-5),
        harness.Case(
            "argmax of each row",
            size,
            argmax_args,
            argmax,
            lambda x, out: np.argmax(x, axis=1, out=out),
            rows * cols * 4,
            "GB/s",
        ),
        harness.Case(
            "column sums, kd.sum over i",
            size,
            lambda rng: (rng.standard_normal(shape, dtype=np.float32), np.empty(cols, np.float32)),
            column_sums,
            lambda x, out: np.sum(x, axis=0, out=out),
            rows * cols * 4,
            "GB/s",
            1e-4,
            1e-4,
        ),
        harness.Case(
            "sum of one long vector",
            f"{4 * n}",
            lambda rng: (rng.standard_normal(4 * n, dtype=np.float32), np.empty(1, np.float32)),
            total,
            lambda x, out: np.sum(x, out=out.reshape(())),
            4 * n * 4,
            "GB/s",
            1e-4,
            1e-2,
        ),
        harness.Case(
            "transpose",
            f"{cols}×{rows}",
            lambda rng: (
                rng.standard_normal((cols, rows), dtype=np.float32),
                np.empty((rows, cols), np.float32),
            ),
            transpose,
            lambda x, y: np.copyto(y, x.T),
            2 * rows * cols * 4,
            "GB/s",
        ),
        harness.Case(
            "histogram, 256 bins",
            f"{n}",
            histogram_args,
            count,
            lambda idx, counts: np.copyto(counts, np.bincount(idx, minlength=256)),
            n * 8,
            "GB/s",
        ),
        harness.Case(
            "2x + z, Fortran order",
            size,
            fortran_args,
            axpy2d,
            np_axpy,
            3 * rows * cols * 4,
            "GB/s",
        ),
        harness.Case(
            "2x + z, (n, 3) rows",
            f"{n}×3",
            rows3_args,
            axpy2d,
            np_axpy,
            3 * 3 * n * 4,
            "GB/s",
        ),
        harness.Case(
            "sliding max of 7, scratch array",
            f"{n}",
            window_args,
            window_max,
            np_window_max,
            2 * n * 4,
            "GB/s",
        ),
        harness.Case(
            "complex multiply, interleaved",
            f"{n}",
            complex_args,
            complex_multiply,
            np_complex_multiply,
            3 * 2 * n * 4,
            "GB/s",
            1e-5,
            1e-5,
        ),
        harness.Case(
            "complex multiply, one kd.grid loop",
            f"{n}",
            complex_args,
            complex_multiply_grid,
            np_complex_multiply,
            3 * 2 * n * 4,
            "GB/s",
            1e-5,
            1e-5,
        ),
        harness.Case(
            "luminance of (n, 3) pixels",
            f"{n}×3",
            pixel_args,
            luminance,
            np_luminance,
            4 * n * 4,
            "GB/s",
            1e-5,
            1e-5,
        ),
        harness.Case(
            "normalize (n, 3) vectors, x[i, c]",
            f"{n}×3",
            vector_args,
            normalize3,
            np_normalize,
            2 * 3 * n * 4,
            "GB/s",
            1e-5,
            1e-6,
        ),
        harness.Case(
            "normalize (n, 3) rows, kd.sum over j",
            f"{n}×3",
            vector_args,
            normalize_rows,
            np_normalize,
            2 * 3 * n * 4,
            "GB/s",
            1e-5,
            1e-6,
        ),
        harness.Case(
            "embedding rows",
            f"{rows}×256 of 32000",
            gather_args,
            gather_rows,
            lambda table, ids, y: np.take(table, ids, axis=0, out=y),
            2 * rows * 256 * 4,
            "GB/s",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--output", type=Path, help="also write the Markdown page here")
    parser.add_argument("--only", help="run the cases whose name contains this text")
    ns = parser.parse_args(argv)
    if ns.quick:
        settings = harness.Settings(repeats=3, min_batch_s=0.005, working_set_bytes=1 << 20)
        all_cases = cases(64, 100, 10_000)
    else:
        settings = harness.Settings(
            repeats=9, min_batch_s=0.05, working_set_bytes=64 << 20, settle_s=0.3
        )
        all_cases = cases(4096, 1000, 4_000_003)
    if ns.only:
        all_cases = [case for case in all_cases if ns.only in case.name]
    rng = np.random.default_rng(0)
    rows = [harness.run_case(case, settings, rng) for case in all_cases]
    notes = [
        "each kernel as written, with no schedule: the default one fuses statements "
        "over the same loops into one loop (the complex multiply's two, the normalized "
        "vector's three, which then load the vector and take its length once, not once "
        "each: 3.4× NumPy before), vectorizes each loop over a row (the softmax's three passes "
        "each, the second of which stores its exponentials into the output for the "
        "third to divide, instead of the third computing them again: 1.36× faster on "
        "a Zen 3) or, for rows of a few elements read by constant columns (x[i, 2]), the "
        "loop over the rows (and, in a version of its own, for rows found shorter than "
        "a vector when it runs), parallelizes the outer loop (with the loops of rows "
        "inside it: a batch of one, or, where it can't make them one loop, with the "
        "loop inside it on threads too: a batched matmul's row tiles), and keeps loops whose "
        "iterations may write one element serial (the histogram); it walks "
        "Fortran-ordered arrays along their first axis, makes an elementwise nest over "
        "whole C-ordered arrays one loop over all elements (collapse), gives each vector lane its "
        "own copy of a small scratch array, computes a contraction (the matmul) in "
        "register tiles of 6 rows × a vector of columns over panels of b packed 32 columns "
        "at a time (0.73× NumPy before the packing), sums down the columns in blocks "
        "of columns, a long sum in parts on all threads (rfactor), and a transpose in "
        "16 × 16 tiles",
        "a vector times a matrix: one row, so the default runs its version for a single "
        "row, which streams four rows of the matrix at a time into blocks "
        "of 2048 column sums (the blocks on threads); the register tiles read it a vector "
        "of columns at a time down k, a row's length between reads (0.32× NumPy before)",
        "checked against NumPy on fresh random data first; medians of alternating batches",
        "GB/s count each array's bytes read and written once (the histogram: its ids); "
        "GFLOP/s count 2·n³ (NumPy's matmul is BLAS, on its own threads)",
    ]
    title = "kdsl kernels with no schedule vs NumPy" + (" (quick run)" if ns.quick else "")
    harness.publish(harness.markdown(rows, title, notes), ns.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
