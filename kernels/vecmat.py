"""Vector-matrix products, matmul of one row: y = activation(x @ w + bias) for x [k] and
w [k, n], f32, reading w once at the speed of the memory (GEMM's packed panels pay for
their copy of w only when many rows of A reuse it: with one row the copy is half the
traffic).

A core reads DRAM fastest in one long sequential stream, so the rows of w are cut into
`parts` blocks of consecutive rows, a few per core, and each part's products are summed
by one core into a row of partial sums: reading its rows front to back (with w in C
order that is one contiguous stream), `seg` columns at a time, several rows per pass
over the sums (they stay in L1/L2; the FMAs read w straight from memory). The partial
rows, the rows left over (fewer than `parts`) and the epilogue are then one pass over
the columns, LANES at a time (four zmm registers; two ymm with AVX2). (Cores sharing
columns instead, each a block of them down all of k, read w in row segments a stride
apart: one thread on 4096 × 4096, 15.9 GB/s in 4 KiB segments, 22.8 GB/s whole rows;
OpenBLAS's sgemv 23.6.)

When w's unit stride runs along k (w = m.T, as a linear layer's weight [out, in] is
used), x @ w is m @ x: matvec's row streams, then the epilogue as a product of one row.
"""

from __future__ import annotations

import math

import numpy as np
from kdsl.kernels._machine import one_row_lanes
from kdsl.kernels.matvec import matvec

import kdsl as kd

ACTIVATIONS = (None, "relu", "gelu", "silu")
LANES = one_row_lanes()  # columns per vector: four zmm, or two ymm with AVX2
PARTS_PER_THREAD = 4  # parts claimed as cores come free: a core that runs late takes fewer
MIN_ROWS = 32  # fewest rows in a part (its partial sums cost 2/MIN_ROWS of its reads at most)


def activate(v, activation):
    """The epilogue's activation on a traced value (gelu is the exact, erf form)."""
    if activation is None:
        return v
    if activation == "relu":
        return kd.maximum(v, 0)  # (v's dtype: an integer product's too)
    if activation == "gelu":
        return 0.5 * v * (1.0 + kd.erf(v * (1.0 / math.sqrt(2.0))))
    return v * kd.sigmoid(v)  # silu


def _vecmat(xs, ws, x, w, bias, y, activation: kd.constexpr = 0, with_bias: kd.constexpr = False):
    """y = activation(Σ_t xs[t] @ ws[t] + x @ w + bias): the rows of the product cut into
    parts (xs [parts, rows], ws [parts, rows, n]: views of the first parts·rows rows) and
    the rows left over (x, w). `activation` is an index into ACTIVATIONS (a constexpr that
    is not a number or a bool would make every call take kdsl's slower, careful path)."""
    parts, rows, cols = ws.shape[0], ws.shape[1], ws.shape[2]
    part = kd.empty((parts, cols), kd.f32)
    t, j, k = kd.indices(parts, cols, rows, names="t j k")
    part[t, j] = kd.sum(xs[t, k] * ws[t, k, j], over=k)
    c, p, r = kd.indices(cols, parts, w.shape[0], names="c p r")
    acc = kd.sum(part[p, c], over=p) + kd.sum(x[r] * w[r, c], over=r)
    if with_bias:
        acc = acc + bias[c]
    y[c] = activate(acc, ACTIVATIONS[activation])


def _streams(s) -> None:
    """Each part on one core (`t`), its rows read `rows` at a time, `seg` columns of
    them, into sums in L1/L2; then the columns on all cores, `LANES` at a time, with the
    partial sums, the rows left over and the epilogue in registers.

        for t:                          # a part: consecutive rows of w   (parallel)
          for jo:                       # seg columns
            for ko:                     # `rows` rows
              for ji (LANES): for ki (unrolled):  sums[ji] += xs[t, k]·ws[t, k, j]
            part[t, jo·seg + ..] = sums
        for co:                         # LANES columns                  (parallel)
          y[c] = epilogue(Σ_p part[p, c] + Σ_r x[r]·w[r, c])   (LANES lanes)
    """
    seg = s.param("seg", [16384, 4096, 8192, 2048])
    rows = s.param("rows", [8, 4, 2])
    jo, ji = s.split("j", seg)
    ko, ki = s.split("k", rows)
    s.reorder("t", jo, ko, ji, ki)
    s.vectorize(ji, LANES)
    s.unroll(ki)
    s.parallelize("t")
    co, ci = s.split("c", LANES)
    s.vectorize(ci, LANES)
    s.parallelize(co)


def _example(k: int, n: int, parts: int) -> dict[str, kd.Spec]:
    rows = k // parts
    left = k - parts * rows
    shapes = {
        "xs": (parts, rows),
        "ws": (parts, rows, n),
        "x": (left,),
        "w": (left, n),
        "bias": (n,),
        "y": (n,),
    }
    return {name: kd.spec(shape, kd.f32) for name, shape in shapes.items()}


vecmat_kernel = kd.kernel(
    _vecmat, name="vecmat_kernel", examples=[_example(4096, 4096, 8), _example(768, 32000, 8)]
)
vecmat_kernel.schedule(kd.cpu)(_streams)

_NO_BIAS = np.zeros(1, np.float32)
_ONE = np.ones(1, np.float32)


def parts_for(k: int, threads: int) -> int:
    """How many parts `vecmat` cuts k rows into: PARTS_PER_THREAD per thread of at least
    MIN_ROWS rows each, or none (a single pass over the columns) when fewer than two."""
    parts = min(PARTS_PER_THREAD * threads, k // MIN_ROWS)
    return parts if parts >= 2 else 0


def vecmat(
    x: np.ndarray,
    w: np.ndarray,
    y: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
) -> None:
    """y = activation(x @ w + bias) for float32 x [k], w [k, n] (any strides), y [n]
    apart from them, bias [n] or None, activation one of ACTIVATIONS (checked by the
    caller: `matmul`)."""
    if w.strides[0] < 0:
        # rows that descend in memory (w[::-1]): x @ w is x[::-1] @ w[::-1], whose rows
        # ascend (read top-down a row apart, 1 × 4096 × 4096 ran at 0.75x the speed)
        x, w = x[::-1], w[::-1]
    k, n = w.shape
    with_bias = bias is not None
    if n > 1 and k > 1 and w.strides[0] == w.itemsize:
        # w's columns are contiguous: x @ w = w.T @ x, matvec's row streams
        if not with_bias and activation is None:
            matvec(w.T, x, out=y)
            return
        # then the epilogue, as the product of one row: 1 · (w.T @ x)
        x, w = _ONE, matvec(w.T, x)[np.newaxis]
        k = 1
    parts = parts_for(k, kd.get_num_threads())
    rows = k // parts if parts else 0
    split = parts * rows
    xs, ws = x[:split].reshape(parts, rows), w[:split].reshape(parts, rows, n)
    epilogue = ACTIVATIONS.index(activation)
    vecmat_kernel(
        xs, ws, x[split:], w[split:], bias if with_bias else _NO_BIAS, y, epilogue, with_bias
    )
