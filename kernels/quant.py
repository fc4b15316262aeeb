"""GGML's Q8_0 and Q4_0 block formats, bit for bit, with kdsl kernels that quantize,
dequantize and multiply with the dequantization fused into the dot products.

The formats' layout is kernels/qtensor.py's `QTensor` (GGML's values bit for bit);
GGML's own arithmetic in NumPy, the tests' yardstick, is kernels/quant_reference.py.

Matrix-vector products follow GGML: the activations are quantized to Q8_0 per block
too, and each block's integer dot product (32 byte products summed in int32: AVX512-VNNI
`vpdpbusd` on groups of 4 bytes, one per vector lane — see kdsl/targets/cpu/dot.py) is
scaled by both blocks' scales; a vector's 16 lanes span a group of blocks, each lane
taking its block's scales. `activations="f32"` keeps the activations in f32 instead and
dequantizes the weights in registers.
"""

from __future__ import annotations

import numpy as np
from kdsl.kernels import _device
from kdsl.kernels._checks import (
    apart,
    argument_error,
    as_array,
    on_a_gpu,
    out_array,
    shape_error,
    type_name,
    written,
)
from kdsl.kernels._machine import byte_products_biased, one_row_first
from kdsl.kernels.qtensor import (
    BLOCK,
    FORMATS,
    QUANT_BYTES,
    QTensor,
    check_shape,
    padded_blocks,
)
from kdsl.kernels.quant_reference import (
    reference_dequantize,
    reference_qmatmul,
    reference_quantize,
)

import kdsl as kd

# ------------------------------------------------------------------ quantizing


def round_half_away(v):
    """C's roundf on a traced f32 value, exactly: truncate, then step away from zero
    when the dropped fraction is at least one half."""
    t = v.astype(kd.i32)
    step = kd.where(v > 0, 1, -1)
    return t + kd.where(kd.abs(v - t.astype(kd.f32)) >= 0.5, step, 0)


def store_q8_0(x, d, q):
    """Inside a kernel: GGML's quantize_row_q8_0 of the traced f32 array x, a vector or
    rows ([(rows,) 32 · blocks]): per block, d = max|x| / 127 into `d` [(rows,) blocks]
    and q = round(x / d) into `q` [(rows,) blocks, 2, 16], the block's two halves (which
    may lie apart: the Q4_0 product reads them from two arrays). Its loops are named r
    (rows), b, j, half and h (schedule_store_q8_0)."""
    *r, b, j = kd.indices(*d.shape, BLOCK, names="r b j" if len(d.shape) == 2 else "b j")
    scale = kd.empty(d.shape, kd.f32)
    scale[(*r, b)] = kd.max(kd.abs(x[(*r, BLOCK * b + j)]), over=j) / 127
    d[(*r, b)] = scale[(*r, b)]
    inverse = kd.where(scale[(*r, b)] != 0, 1 / scale[(*r, b)], 0)
    half, h = kd.indices(2, BLOCK // 2, names="half h")
    v = x[(*r, BLOCK * b + (BLOCK // 2) * half + h)] * inverse
    q[(*r, b, half, h)] = round_half_away(v).astype(kd.i8)


def schedule_store_q8_0(s, rows: bool = False):
    """store_q8_0's loops fused per block (and row), its values 16 to a vector."""
    for k in (1, 2):
        if rows:
            s.fuse("r", f"r.{k}")
        s.fuse("b", f"b.{k}")
    s.vectorize("j", 16)
    s.vectorize("h", 16)


@kd.kernel
def q8_0_blocks(x, d, q):
    """GGML's quantize_row_q8_0 of the rows of x (store_q8_0)."""
    store_q8_0(x, d, q)


@q8_0_blocks.schedule(kd.cpu)
def _q8_0_blocks_cpu(s):
    schedule_store_q8_0(s, rows=True)
    s.parallelize("r")


@kd.kernel
def q4_0_blocks(x, d, q):
    """GGML's quantize_row_q4_0: d = -m / 8 for m the block's first value of largest
    magnitude; nibble = min(15, trunc(x / d + 8.5)), value j low and j + 16 high."""
    r, b, j = kd.indices(d.shape[0], d.shape[1], BLOCK)
    amax = kd.empty(d.shape, kd.f32)
    amax[r, b] = kd.max(kd.abs(x[r, BLOCK * b + j]), over=j)
    first = kd.empty(d.shape, kd.i32)
    first[r, b] = kd.min(kd.where(kd.abs(x[r, BLOCK * b + j]) == amax[r, b], j, BLOCK), over=j)
    scale = kd.empty(d.shape, kd.f32)
    # a NaN makes amax NaN and matches no value (first = BLOCK): the scale is then NaN,
    # as the reference's, read inside the block (not the next block's first value)
    m = x[r, BLOCK * b + kd.minimum(first[r, b], BLOCK - 1)]
    scale[r, b] = kd.where(first[r, b] < BLOCK, m, amax[r, b]) / -8
    d[r, b] = scale[r, b]
    inverse = kd.where(scale[r, b] != 0, 1 / scale[r, b], 0)
    h = kd.indices(BLOCK // 2, names="h")
    low = kd.minimum((x[r, BLOCK * b + h] * inverse + 8.5).astype(kd.i8), 15)
    high = kd.minimum((x[r, BLOCK * b + h + 16] * inverse + 8.5).astype(kd.i8), 15)
    q[r, b, h] = (low | (high << 4)).astype(kd.u8)


@q4_0_blocks.schedule(kd.cpu)
def _q4_0_blocks_cpu(s):
    for k in range(1, 5):
        s.fuse("r", f"r.{k}")
        s.fuse("b", f"b.{k}")
    s.vectorize("j", 16)
    s.vectorize("j.1", 16)
    s.vectorize("h", 16)
    s.parallelize("r")


_QUANTIZERS = {"q8_0": q8_0_blocks, "q4_0": q4_0_blocks}


def quantize(x: np.ndarray, fmt: str) -> QTensor:
    """`x` ([rows, cols] or [cols], cols a multiple of 32) in GGML's `fmt`, bit for bit
    what GGML's reference quantizer writes."""
    x = as_array("quantize", "x", x).astype(np.float32, copy=False)
    matrix = x.reshape(1, -1) if x.ndim == 1 else x
    check_shape("quantize", fmt, matrix.shape)
    out = QTensor.empty(fmt, matrix.shape)
    quants = out.quants
    if fmt == "q8_0":  # a block's halves, as q8_0_blocks writes them
        quants = quants.reshape(*quants.shape[:2], 2, BLOCK // 2)
    _QUANTIZERS[fmt](matrix, out.scales, quants)
    return out


def quantize_q8_0(x: np.ndarray) -> QTensor:
    return quantize(x, "q8_0")


def quantize_q4_0(x: np.ndarray) -> QTensor:
    return quantize(x, "q4_0")


# ------------------------------------------------------------------ dequantizing


@kd.kernel
def q8_0_values(d, q, y):
    r, b, j = kd.indices(q.shape[0], q.shape[1], BLOCK)
    y[r, BLOCK * b + j] = d[r, b].astype(kd.f32) * q[r, b, j].astype(kd.f32)


@kd.kernel
def q4_0_values(d, q, y):
    r, b, h = kd.indices(q.shape[0], q.shape[1], BLOCK // 2)
    scale = d[r, b].astype(kd.f32)
    y[r, BLOCK * b + h] = scale * ((q[r, b, h] & 15).astype(kd.f32) - 8)
    y[r, BLOCK * b + h + 16] = scale * ((q[r, b, h] >> 4).astype(kd.f32) - 8)


def dequantize(w: QTensor, out: np.ndarray | None = None) -> np.ndarray:
    """The f32 values a QTensor stands for."""
    _check_qtensor("dequantize", w)
    kernel = q8_0_values if w.format == "q8_0" else q4_0_values
    target = out_array("dequantize", out, w.shape, np.float32)
    y = apart(out, target)
    kernel(w.scales, w.quants, y)
    return written(y, target, out)


# ------------------------------------------------------------------ products
#
# Every product kernel computes y[t, r] = Σ_c x[t, c]·w[r, c] for a batch of t rows of
# activations; rows r of the weights are split between the cores and each row's blocks
# are read once for the whole batch.


LANES = 16  # i32 lanes of a vector: each sums one group of 4 quant bytes


def _examples(fmt: str, activations: str, shapes: list[tuple[int, int]]) -> list[dict]:
    """`kdsl autotune`'s calls of a product kernel: weights of `fmt` (rows × cols for
    each shape) by one vector of activations, in the layout the kernel reads."""
    f16, f32, i8 = kd.f16, kd.f32, kd.i8
    quants, width = (i8 if fmt == "q8_0" else kd.u8), QUANT_BYTES[fmt]
    examples: list[dict] = []
    for rows, cols in shapes:
        y = kd.spec((1, rows), f32)
        if activations == "f32":  # QTensor.scales and .quants
            blocks = cols // BLOCK
            d, q = kd.spec((rows, blocks), f16), kd.spec((rows, blocks, width), quants)
            examples.append({"d": d, "q": q, "x": kd.spec((1, cols), f32), "y": y})
            continue
        blocks = padded_blocks(cols, fmt)  # QTensor.d and .q, and Activations.args
        d, q, xd = (
            kd.spec((rows, blocks), f16),
            kd.spec((rows, blocks * width), quants),
            kd.spec((1, blocks), f16),
        )
        halves = ("xq",) if fmt == "q8_0" else ("xlow", "xhigh")
        x = {name: kd.spec((1, blocks * BLOCK // len(halves)), i8) for name in halves}
        examples.append({"d": d, "q": q, "xd": xd, **x, "y": y})
    return examples


# the shapes each product kernel runs (qmatmul picks by format and row length): a model's
# rows beyond the L3, where the params that pay differ from those in cache
_SHORT, _LONG = [(32000, 768)], [(4096, 4096), (11008, 4096)]


def signed_bytes_dot(w, x, over, biased: bool, offset=None):
    """Σ w·x over `over` for signed weight bytes w and activation bytes x (a trace-time
    macro), in the form the CPU's byte products take. `biased` (VNNI's vpdpbusd, unsigned
    × signed): the weights made unsigned by adding 128 (flipping the top bit), and
    `offset`, 128·Σx over the same bytes, computed once per call, taken back out.
    Otherwise signed × signed, with x clamped at -127: quantized activations never reach
    -128 (store_q8_0 rounds within ±127), and the clamp lets the compiler move the
    weights' signs onto them (AVX2: vpsignb, vpmaddubsw; the Q8_0 product of 4096×4096
    ran 1.12–1.30× the biased form's speed on a Zen 3: benchmarks/quant.py)."""
    if biased:
        unsigned = (w.astype(kd.u8) ^ 128).astype(kd.i32)
        return kd.sum(unsigned * x.astype(kd.i32), over=over) - offset
    return kd.sum(w.astype(kd.i32) * kd.maximum(x, -127).astype(kd.i32), over=over)


BIASED = byte_products_biased()  # the form of the byte products (signed_bytes_dot)


@kd.kernel(examples=_examples("q8_0", "q8_0", _SHORT))
def q8_0_dot_q8_0(d, q, xd, xq, y, biased: kd.constexpr = BIASED):
    """A vector's lane l sums bytes 4l … 4l+3 of a group of 2 blocks (one vpdpbusd lane),
    scaled by its block's scales, group after group in f32; the lanes are added once per
    row. The first statements prepare, once per call, what every row needs of the
    activations: their scales in f32 and (biased) each lane's offset."""
    t, r, g, lane, m = kd.indices(xq.shape[0], q.shape[0], d.shape[1] // 2, LANES, 4)
    at, block = 64 * g + 4 * lane + m, 2 * g + lane // 8
    b = kd.indices(xd.shape[1], names="b")
    xscale = kd.empty(xd.shape, kd.f32)
    xscale[t, b] = xd[t, b].astype(kd.f32)
    offset = None
    if biased:
        tb, gb, lb, mb = kd.indices(xq.shape[0], d.shape[1] // 2, LANES, 4, names="tb gb lb mb")
        offsets = kd.empty((xq.shape[0], d.shape[1] // 2, LANES), kd.i32)
        offsets[tb, gb, lb] = 128 * kd.sum(xq[tb, 64 * gb + 4 * lb + mb].astype(kd.i32), over=mb)
        offset = offsets[t, g, lane]
    dot = signed_bytes_dot(q[r, at], xq[t, at], m, biased, offset)
    lanes = kd.empty((xq.shape[0], q.shape[0], LANES), kd.f32)
    scale = d[r, block].astype(kd.f32) * xscale[t, block]
    lanes[t, r, lane] = kd.sum(dot.astype(kd.f32) * scale, over=g)
    y[t, r] = kd.sum(lanes[t, r, lane], over=lane)


@kd.kernel(examples=_examples("q4_0", "q8_0", _SHORT + _LONG[:1]))
def q4_0_dot_q8_0(d, q, xd, xlow, xhigh, y):
    """As for Q8_0, over groups of 4 blocks: lane l holds nibble bytes 4l … 4l+3 of the
    group, whose low nibbles multiply the activations' first halves of the blocks
    (`xlow`, the same bytes of the group) and high nibbles their second halves (`xhigh`):
    two chained vpdpbusd. The nibbles are unsigned bytes as they are; the -8 of every
    value is 8·Σx of the lane."""
    t, r, g, lane, m = kd.indices(xlow.shape[0], q.shape[0], d.shape[1] // 4, LANES, 4)
    at, block = 64 * g + 4 * lane + m, 4 * g + lane // 4
    low_x, high_x = xlow[t, at].astype(kd.i32), xhigh[t, at].astype(kd.i32)
    offset = kd.empty((xlow.shape[0], d.shape[1] // 4, LANES), kd.i32)
    offset[t, g, lane] = 8 * kd.sum(low_x + high_x, over=m)
    b = kd.indices(xd.shape[1], names="b")
    xscale = kd.empty(xd.shape, kd.f32)
    xscale[t, b] = xd[t, b].astype(kd.f32)
    nibbles = q[r, at]
    products = (nibbles & 15).astype(kd.i32) * low_x + (nibbles >> 4).astype(kd.i32) * high_x
    dot = kd.sum(products, over=m) - offset[t, g, lane]
    lanes = kd.empty((xlow.shape[0], q.shape[0], LANES), kd.f32)
    scale = d[r, block].astype(kd.f32) * xscale[t, block]
    lanes[t, r, lane] = kd.sum(dot.astype(kd.f32) * scale, over=g)
    y[t, r] = kd.sum(lanes[t, r, lane], over=lane)


PREFETCH = 64  # iterations of a row's loop over blocks ahead (4 KiB of quants for the
# byte products' groups of blocks, 1-2 KiB for the f32 products' single blocks)


def _lanes_across_blocks(s, lane, width, batch=("t", "t.1"), block="b", rows=(1,)):
    """Rows of weights on all cores, the batch inside each row (its blocks are read
    once), and the lanes of a block across a vector that accumulates block after block:
    its row's sum then leaves the registers once. `batch`: the batch loops of the
    lanes' statement and of the row sum. A choice of `rows` above 1 runs that many rows
    at a time in the loop over the blocks, each with its own vector of lanes: a core
    then streams several rows at once, which keeps more reads from DRAM in flight (the
    row sums are then a loop of their own). One row at a time, the quants and scales
    are prefetched PREFETCH iterations of the blocks' loop ahead (a row's work per cache
    line leaves too few reads in flight otherwise: Q4_0 32000×768 beyond the L3 read 13.0
    GB/s without the hint, 17.9 with it; Q8_0 16.8 and 21.4)."""
    s.reorder("r", batch[0])
    s.reorder("r.1", batch[1])
    tile = s.param("rows", list(one_row_first(rows)))
    if tile == 1:
        s.fuse("r", "r.1")
        s.fuse(*batch)
        s.reorder(block, lane)
        s.vectorize(lane, width)
        s.parallelize("r")
        ahead = s.param("prefetch", [PREFETCH, 0])  # 0: no hint
        if ahead:
            s.prefetch("q", block, ahead)
            s.prefetch("d", block, ahead)
        return
    outer, inner = s.split("r", tile)
    s.reorder(outer, batch[0], lane, block, inner)
    s.vectorize(lane, width)
    s.unroll(inner)
    s.parallelize(outer)
    s.parallelize("r.1")


# One row at a time, except Q8_0 rows of LONG_ROW columns or more (`qmatmul` picks):
# 11008×4096 over a rotation of six matrices beyond the L3 read 16 GB/s one row at a
# time, 21 four, 22–26 eight; the short rows of llama2's models (288–2048 columns) ran a
# quarter slower eight at a time (stories15M Q8_0 417 → 312 tok/s). Q4_0's group of four
# blocks per vector keeps as many reads in flight either way (1, 4, 8 rows: 15–17 GB/s).
# (Those are an Intel Xeon's numbers; on AMD Zen 4 one row at a time was the faster for
# each shape measured, Q8_0 and Q4_0 4096×4096 and 11008×4096: _machine.one_row_first.)
LONG_ROW = 4096


@q8_0_dot_q8_0.schedule(kd.cpu)
def _q8_0_dot_cpu(s):
    _lanes_across_blocks(s, "lane", LANES, ("t.1", "t.2"), "g", rows=(1, 4, 8))


q8_0_long_rows = kd.kernel(
    q8_0_dot_q8_0.fn, name="q8_0_long_rows", examples=_examples("q8_0", "q8_0", _LONG)
)


@q8_0_long_rows.schedule(kd.cpu)
def _q8_0_long_rows_cpu(s):
    _lanes_across_blocks(s, "lane", LANES, ("t.1", "t.2"), "g", rows=(8, 4, 1))


@q4_0_dot_q8_0.schedule(kd.cpu)
def _q4_0_dot_cpu(s):
    _lanes_across_blocks(s, "lane.1", LANES, ("t.2", "t.3"), "g.1", rows=(1, 4, 8))


@kd.kernel(examples=_examples("q8_0", "f32", _LONG[:1]))
def q8_0_dot_f32(d, q, x, y):
    """Weights dequantized in registers: lane j of a vector accumulates block after
    block, and the lanes are added once per row."""
    t, r, b, j = kd.indices(x.shape[0], q.shape[0], q.shape[1], BLOCK)
    lanes = kd.empty((x.shape[0], q.shape[0], BLOCK), kd.f32)
    weight = d[r, b].astype(kd.f32) * q[r, b, j].astype(kd.f32)
    lanes[t, r, j] = kd.sum(weight * x[t, BLOCK * b + j], over=b)
    y[t, r] = kd.sum(lanes[t, r, j], over=j)


@kd.kernel(examples=_examples("q4_0", "f32", _LONG[:1]))
def q4_0_dot_f32(d, q, x, y):
    t, r, b, h = kd.indices(x.shape[0], q.shape[0], q.shape[1], BLOCK // 2)
    lanes = kd.empty((x.shape[0], q.shape[0], BLOCK // 2), kd.f32)
    scale = d[r, b].astype(kd.f32)
    low = ((q[r, b, h] & 15).astype(kd.f32) - 8) * x[t, BLOCK * b + h]
    high = ((q[r, b, h] >> 4).astype(kd.f32) - 8) * x[t, BLOCK * b + h + 16]
    lanes[t, r, h] = kd.sum(scale * (low + high), over=b)
    y[t, r] = kd.sum(lanes[t, r, h], over=h)


@q8_0_dot_f32.schedule(kd.cpu)
def _q8_0_f32_cpu(s):
    _lanes_across_blocks(s, "j", 16)


@q4_0_dot_f32.schedule(kd.cpu)
def _q4_0_f32_cpu(s):
    _lanes_across_blocks(s, "h", 16)


def _rows_on_blocks(s, lane: str) -> None:
    """On a GPU: a block per row (and activation vector), the row's lanes on its threads
    summing block after block, then added across them (shuffles): one pass over the
    row's bytes, each block's read by the threads together. Several blocks' loads are
    issued before their sums (the loop over blocks unrolled): one block's at a time
    kept a few hundred bytes in flight per multiprocessor, and the products read at
    3-12% of a copy's speed on an H200."""
    s.fuse("t", "t.1")
    s.fuse("r", "r.1")
    s.bind("t", "block.y")
    s.bind("r", "block.x")
    s.bind(lane, "thread.x")
    s.bind(f"{lane}.1", "thread.x")
    s.unroll("b", s.param("blocks_at_once", [8, 16, 1]))


@q8_0_dot_f32.schedule(kd.cuda)
def _q8_0_f32_gpu(s):
    _rows_on_blocks(s, "j")


@q4_0_dot_f32.schedule(kd.cuda)
def _q4_0_f32_gpu(s):
    _rows_on_blocks(s, "h")


PRODUCTS = {  # (weights, activations) → the product kernel
    ("q8_0", "q8_0"): q8_0_dot_q8_0,
    ("q4_0", "q8_0"): q4_0_dot_q8_0,
    ("q8_0", "f32"): q8_0_dot_f32,
    ("q4_0", "f32"): q4_0_dot_f32,
}


class Activations:
    """Buffers for rows of activations [n, cols] in Q8_0, laid out as the product with
    `fmt` weights reads them, and filled in place by `quantize` (one kernel call);
    `args` are the product's activation arguments: the scales padded like the weights'
    (f16 [n, padded blocks]), then the quants [n, padded blocks · 32] for Q8_0 weights,
    or for Q4_0 each block's first and second halves apart ([n, padded blocks · 16]
    each: the values that the low and the high nibbles of a weight byte multiply).
    `scales` and `quants` are views of the unpadded blocks, as store_q8_0 writes them,
    for kernels that make and quantize activations in one."""

    def __init__(self, fmt: str, shape: tuple[int, int]):
        n, cols = self.shape = check_shape("Activations", fmt, shape)
        blocks, padded, halves = cols // BLOCK, padded_blocks(cols, fmt), BLOCK // 2
        d = np.zeros((n, padded), np.float16)
        if fmt == "q8_0":
            quants = np.zeros((n, padded, 2, halves), np.int8)
            self.args: tuple[np.ndarray, ...] = (d, quants.reshape(n, -1))
        else:
            quants = np.zeros((2, n, padded, halves), np.int8).transpose(1, 2, 0, 3)
            self.args = (d, quants[:, :, 0].reshape(n, -1), quants[:, :, 1].reshape(n, -1))
        self.scales, self.quants = d[:, :blocks], quants[:, :blocks]

    def quantize(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        if x.shape != self.shape:
            raise shape_error(
                "quantize_activations",
                f"these buffers hold activations {self.shape}, got {x.shape}",
                f"pass buffers made by Activations(fmt, {x.shape}), or none",
            )
        q8_0_blocks(x, self.scales, self.quants)
        return self.args


def quantize_activations(
    x: np.ndarray, fmt: str, out: Activations | None = None
) -> tuple[np.ndarray, ...]:
    """The rows of x ([n, cols]) in Q8_0, as the product with `fmt` weights reads them
    (Activations.args); into `out`'s buffers when given (Activations(fmt, x.shape))."""
    return (out or Activations(fmt, x.shape)).quantize(x)


def qmatmul(
    w: QTensor, x: np.ndarray, out: np.ndarray | None = None, activations: str | None = None
) -> np.ndarray:
    """x @ wᵀ for x of shape [n, cols] (or [cols]): GGML's mul_mat. `activations="q8_0"`
    (GGML's way, and the fast one on the host: the default there) quantizes each row of x
    per block first; "f32" (the GPU's way and default) multiplies the f32 activations by
    the weights dequantized in registers. On a GPU, x is a PyTorch tensor or a CuPy
    array there, and w's blocks are on the same device (`w.to(x)`)."""
    return _product("qmatmul", w, x, out, activations)


def qmatvec(
    w: QTensor, x: np.ndarray, out: np.ndarray | None = None, activations: str | None = None
) -> np.ndarray:
    """w @ x for a vector x of length cols: the decoding step of a quantized model."""
    return _product("qmatvec", w, x, out, activations)


def _check_qtensor(func: str, w: object) -> None:
    if not isinstance(w, QTensor):
        raise argument_error(
            func,
            f"'w' is {type_name(w)}, expected a QTensor",
            "quantize the weights first (quantize_q8_0/quantize_q4_0)",
        )


def _product(
    func: str, w: QTensor, x: object, out: np.ndarray | None, activations: str | None
) -> np.ndarray:
    """qmatmul and qmatvec: x by wᵀ, into `out` when given (any strides: the kernels
    write through them); on x's GPU when x is a CUDA array."""
    _check_qtensor(func, w)
    if activations not in (None, "q8_0", "f32"):
        raise argument_error(
            func, f"activations must be 'q8_0' or 'f32', got {activations!r}", "pass one of those"
        )
    dev = _device.on_device(func, x, "x") if type(x) is not np.ndarray else None
    if dev is None:
        x = as_array(func, "x", x).astype(np.float32, copy=False)
    shape = tuple(x.shape)  # type: ignore[attr-defined]
    if func == "qmatvec" and len(shape) != 1:
        raise shape_error(
            func, f"'x' has shape {shape}, expected a vector", "use qmatmul for rows of x"
        )
    if len(shape) not in (1, 2) or shape[-1] != w.shape[1]:
        raise shape_error(
            func,
            f"can't multiply x of shape {shape} by weights {w.shape} transposed",
            f"pass x of shape ({w.shape[1]},) or (n, {w.shape[1]})",
        )
    if dev is not None:
        if activations == "q8_0":
            raise argument_error(
                func,
                "on a GPU the activations stay f32 (the weights are dequantized in registers)",
                "leave activations out, or pass activations='f32'",
            )
        return _device.qproduct(dev, w, x, out, PRODUCTS[(w.format, "f32")])  # type: ignore[no-any-return]
    if on_a_gpu(w.d):
        raise argument_error(
            func,
            "'w' holds its blocks on a GPU, and 'x' is in host memory",
            "pass x on w's GPU (e.g. torch.as_tensor(x, device='cuda')), or move the "
            "blocks to the host: w.to(x)",
        )
    assert isinstance(x, np.ndarray)
    vector = x.ndim == 1
    batch = x.reshape(1, -1) if vector else x
    rows_shape = (batch.shape[0], w.shape[0])
    target = out_array(func, out, rows_shape[1:] if vector else rows_shape, np.float32)
    if target.size == 0:  # no rows of x (or of w): nothing to multiply
        return target if out is None else out
    y = apart(out, target, x)
    rows = y[None] if vector else y
    kernel = PRODUCTS[(w.format, activations or "q8_0")]
    if kernel is q8_0_dot_q8_0 and w.shape[1] >= LONG_ROW:
        kernel = q8_0_long_rows
    if activations == "f32":
        kernel(w.scales, w.quants, batch, rows)
    else:
        kernel(w.d, w.q, *quantize_activations(batch, w.format), rows)
    return written(y, target, out)


__all__ = [  # the formats and the reference, with the kernels: one module to import
    "BLOCK",
    "FORMATS",
    "QUANT_BYTES",
    "QTensor",
    "dequantize",
    "qmatmul",
    "qmatvec",
    "quantize",
    "quantize_q4_0",
    "quantize_q8_0",
    "reference_dequantize",
    "reference_qmatmul",
    "reference_quantize",
]
