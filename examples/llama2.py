"""llama2.c in kdsl: Llama-2 decoding where every step of the forward is a kdsl kernel.

    python examples/llama2.py CHECKPOINT [-t TEMP] [-p TOPP] [-s SEED] [-n STEPS]
                              [-i PROMPT] [-z TOKENIZER] [--quant q8_0|q4_0]

CHECKPOINT is llama2.c's legacy float32 file or its version-2 int8 file ("ak42"; read
through the `int8_groups` kernel below: a new quantized layout is a few lines of kdsl);
`--quant` re-quantizes a float32 file to GGML's Q8_0 or Q4_0 (kdsl.kernels.quant) at
load (dim and hidden_dim must be multiples of its 32-value blocks). Options out of range
are taken as run.c takes them (`--help` says how), and tokenizer.bin's first vocab_size
pieces are read: a tokenizer with fewer is an error. Threads: KDSL_NUM_THREADS (all cores
by default). Prints the text, then `achieved tok/s: N` as llama2.c does. `kdsl llama2 ...`
runs the same.

A float32 token is one kernel call (`float32_forward`, each array stacked by layer: for
each layer, norm; q, k and v in one matrix-vector product; RoPE into the KV cache;
attention over the cache; the output projection with the residual added; norm; w1 and
w3 in one product; SwiGLU; w2 with the residual added; then the classifier's norm and
product), written from the same helpers as the library's kernels and scheduled step by
step: as nine calls a layer, a small model's token spent a tenth of its time between
them. The quantized formats' layers are ten calls, their activations
quantized once per input by the kernel that makes them (each norm, which also adds the
residual that the product before it left apart, and SwiGLU) or, for the attention's
output, by one of its own.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
from kdsl.examples.llama2_format import (
    Config,
    QWeights,
    Weights,
    read_checkpoint,
    rope_tables,
)
from kdsl.examples.llama2_reference import Sampler, add_options, generate, read_tokenizer
from kdsl.kernels import quant
from kdsl.kernels.attention import decode_kernel
from kdsl.kernels.hugepages import HugePageArena
from kdsl.kernels.matvec import added_to, into, product, short_rows

import kdsl as kd

EPS = 1e-5

# ---------------------------------------------------------------------- vector kernels


def _rmsnorm(x, w, y, name="n"):
    """y = rmsnorm(x) · w (its loops `name` and `name`.1)."""
    n = kd.indices(x.shape[0], names=name)
    inverse = 1 / kd.sqrt(kd.sum(x[n] * x[n], over=n) / x.shape[0] + EPS)
    y[n] = w[n] * (inverse * x[n])
    return y


def _swiglu(h13, h, name="i"):
    """h = silu(h1) · h3 for h13 = [h1; h3] (its loop `name`)."""
    i = kd.indices(h.shape[0], names=name)
    a = h13[i]
    h[i] = a * (1 / (1 + kd.exp(-a))) * h13[i + h.shape[0]]
    return h


def _rotate(vec, start, cos, sin, heads, size, store, names):
    """RoPE: pair f of each of `heads` heads (of `size` values) of vec[start:] rotated by
    the position's angle for f, stored as store(head, index in the head, value). (Heads
    and pairs are two indices: `p % half` per element was an integer division per lane,
    two thirds of the kernel's time.)"""
    half = size // 2  # (cos and sin are checked to hold as many angles)
    h, f = kd.indices(heads, half, names=names)
    at = start + h * (2 * half) + 2 * f
    a, b = vec[at], vec[at + 1]
    store(h, 2 * f, a * cos[f] - b * sin[f])
    store(h, 2 * f + 1, a * sin[f] + b * cos[f])


def _rope_into(qkv, cos, sin, heads, kv_heads, head_size, q, k, v):
    """From qkv = [q; k; v]: q rotated into q(h, i, value), k rotated into k(h, i, value)
    and v copied into v(h, i, value) (the cache's row), i < head_size."""
    dim, kv_dim = heads * head_size, kv_heads * head_size
    _rotate(qkv, 0, cos, sin, heads, head_size, q, "h f")
    _rotate(qkv, dim, cos, sin, kv_heads, head_size, k, "hk fk")
    hv, i = kd.indices(kv_heads, head_size, names="hv i")
    v(hv, i, qkv[dim + kv_dim + hv * head_size + i])


def _into_heads(buffer, *at):
    """A store(h, i, value) into buffer[h, *at, i]."""

    def store(h, i, value):
        buffer[(h, *at, i)] = value

    return store


@kd.kernel
def rope_into_cache(qkv, cos, sin, q, key, value):
    """From qkv = [q; k; v]: q rotated into `q` [heads, head_size], k rotated into the key
    cache's row for this position ([kv heads, head_size], a strided view of the cache)
    and v copied into the value cache's row."""
    heads, kv_heads, size = q.shape[0], key.shape[0], q.shape[1]
    _rope_into(
        qkv, cos, sin, heads, kv_heads, size, _into_heads(q), _into_heads(key), _into_heads(value)
    )


# ---------------------------------------------------------------------- a float32 layer


def _attend(q, key, value, pos, scale, out):
    """out[h·D + d] = softmax(q[h] · key[h // group, :pos + 1]ᵀ · scale) · value[…] for
    each query head h ([kv heads, seq_len, D] caches, `group` query heads to a kv head)."""
    heads, size = q.shape[0], q.shape[1]
    group = heads // key.shape[0]
    score = kd.empty((heads, key.shape[1]), kd.f32)
    h, t, d = kd.indices(heads, pos + 1, size, names="ah at ad")
    score[h, t] = kd.sum(q[h, d] * key[h // group, t, d], over=d) * scale
    h, t = kd.indices(heads, pos + 1, names="mh mt")
    top = kd.empty((heads,), kd.f32)
    top[h] = kd.max(score[h, t], over=t)
    score[h, t] = kd.exp(score[h, t] - top[h])
    total = kd.empty((heads,), kd.f32)
    total[h] = kd.sum(score[h, t], over=t)
    h, d, t = kd.indices(heads, size, pos + 1, names="oh od ot")
    out[h * size + d] = kd.sum(score[h, t] * value[h // group, t, d], over=t) / total[h]


def _float32_layer(x, rms_att, wqkv, wo, rms_ffn, w13, w2, cos, sin, key, value, pos, scale):
    """A layer of run.c's forward on x: the token's key and value written into the
    layer's caches ([kv heads, seq_len, head_size]) at `pos`."""
    heads, size = x.shape[0] // key.shape[2], key.shape[2]
    xb = _rmsnorm(x, rms_att, kd.empty(x.shape, kd.f32), "n")
    qkv = kd.empty((wqkv.shape[0],), kd.f32)
    product(wqkv, xb, into(qkv), "q")
    q = kd.empty((heads, size), kd.f32)
    _rope_into(
        qkv,
        cos,
        sin,
        heads,
        key.shape[0],
        size,
        _into_heads(q),
        _into_heads(key, pos),
        _into_heads(value, pos),
    )
    att = kd.empty(x.shape, kd.f32)
    _attend(q, key, value, pos, scale, att)
    product(wo, att, added_to(x), "o")
    xb = _rmsnorm(x, rms_ffn, kd.empty(x.shape, kd.f32), "f")
    h13 = kd.empty((w13.shape[0],), kd.f32)
    product(w13, xb, into(h13), "u")
    hb = _swiglu(h13, kd.empty((w2.shape[1],), kd.f32), "g")
    product(w2, hb, added_to(x), "d")


class _Layer:
    """Layer `n` of an array stacked by layer ([n_layers, ...]) as a one-layer helper
    indexes it: `w[i, j]` is `stack[n, i, j]` (a view at trace time)."""

    def __init__(self, stack, n):
        self.stack, self.n = stack, n

    @property
    def shape(self):
        return self.stack.shape[1:]

    def _at(self, index):
        return (self.n, *(index if isinstance(index, tuple) else (index,)))

    def __getitem__(self, index):
        return self.stack[self._at(index)]

    def __setitem__(self, index, value):
        self.stack[self._at(index)] = value


@kd.kernel
def float32_forward(
    x, rms_att, wqkv, wo, rms_ffn, w13, w2, cos, sin, key, value, pos, scale, rms_final, wcls, y
):
    """run.c's forward from the token's embedding x to its logits y, in one call: each
    layer (its arrays stacked by layer, the caches [layer, kv heads, seq_len, head_size]),
    then the classifier's norm and product. (A call per layer and one for the classifier
    made one: stories15M float32 479 → 493 tok/s on a Zen 2; nine calls a layer made one
    before: 423 → 456.)"""
    for layer in kd.range(wqkv.shape[0]):
        stacked = (rms_att, wqkv, wo, rms_ffn, w13, w2)
        _float32_layer(
            x,
            *(_Layer(a, layer) for a in stacked),
            cos,
            sin,
            _Layer(key, layer),
            _Layer(value, layer),
            pos,
            scale,
        )
    product(wcls, _rmsnorm(x, rms_final, kd.empty(x.shape, kd.f32), "c"), into(y), "c")


@float32_forward.schedule(kd.cpu)
def _float32_forward_cpu(s):
    """Each product as kernels/matvec.py streams rows; attention with a head per task:
    its scores' dot products along D, the rest along the keys, the output along D."""
    for norm in ("n", "f", "c"):
        s.vectorize(norm, 16)
        s.vectorize(f"{norm}.1", 16)
    for prefix, matrix in (("q", "wqkv"), ("o", "wo"), ("u", "w13"), ("d", "w2")):
        short_rows(s, matrix, prefix)
    for loop in ("mh", "mh.1", "mh.2", "oh"):
        s.fuse("ah", loop)
    for loop in ("ad", "mt", "mt.1", "mt.2", "od", "g"):
        s.vectorize(loop, 16)
    s.parallelize("ah")
    short_rows(s, "wcls", "c")


# ---------------------------------------------------------------------- quantized activations
#
# A quantized matrix's input is quantized by the kernel that makes it: rmsnorm or SwiGLU
# into a temporary, then per group (int8) or per block (GGML's Q8_0), in one call. The
# residual is added there too: a quantized product writes its output apart (`r`), and
# the rmsnorm that comes next adds it to x first.


_NORM_LOOPS = ("a", "a.1", "n", "n.1")  # _residual_rmsnorm's


def _residual_rmsnorm(x, r, w):
    """x += r, and r = 0 (added once); then rmsnorm(x) · w, as a temporary."""
    a = kd.indices(x.shape[0], names="a")
    x[a] = x[a] + r[a]
    r[a] = 0
    return _rmsnorm(x, w, kd.empty(x.shape, kd.f32))


def _store_groups(v, xq, xs):
    """runq.c's activations: per group of v, scale = max|v| / 127 into xs and
    q = round(v / scale) into xq (halves away from zero; an all-zero group gets q = 0)."""
    g, k = kd.indices(xs.shape[0], v.shape[0] // xs.shape[0], names="g k")
    at = g * (v.shape[0] // xs.shape[0]) + k
    scale = kd.empty(xs.shape, kd.f32)
    scale[g] = kd.max(kd.abs(v[at]), over=k) / 127
    xs[g] = scale[g]
    xq[at] = quant.round_half_away(v[at] / kd.where(scale[g] != 0, scale[g], 1)).astype(kd.i8)


def _store_groups_cpu(s):
    s.fuse("g", "g.1")
    s.fuse("g", "g.2")
    s.vectorize("k", 16)
    s.vectorize("k.1", 16)


def _vectorize_then(store_cpu, *loops):
    """The schedule of a kernel that makes a vector in `loops` (16 values to a vector)
    and then quantizes it (`store_cpu`: the quantizer's schedule)."""

    def schedule(s):
        for loop in loops:
            s.vectorize(loop, 16)
        store_cpu(s)

    return schedule


@kd.kernel
def quantize_groups(x, xq, xs):
    _store_groups(x, xq, xs)


quantize_groups.schedule(kd.cpu)(_store_groups_cpu)


@kd.kernel
def rmsnorm_groups(x, r, w, xq, xs):
    _store_groups(_residual_rmsnorm(x, r, w), xq, xs)


rmsnorm_groups.schedule(kd.cpu)(_vectorize_then(_store_groups_cpu, *_NORM_LOOPS))


@kd.kernel
def swiglu_groups(h13, xq, xs):
    _store_groups(_swiglu(h13, kd.empty(xq.shape, kd.f32)), xq, xs)


swiglu_groups.schedule(kd.cpu)(_vectorize_then(_store_groups_cpu, "i"))


@kd.kernel
def quantize_q8_0(x, d, q):
    quant.store_q8_0(x, d, q)


quantize_q8_0.schedule(kd.cpu)(quant.schedule_store_q8_0)


@kd.kernel
def rmsnorm_q8_0(x, r, w, d, q):
    quant.store_q8_0(_residual_rmsnorm(x, r, w), d, q)


rmsnorm_q8_0.schedule(kd.cpu)(_vectorize_then(quant.schedule_store_q8_0, *_NORM_LOOPS))


@kd.kernel
def swiglu_q8_0(h13, d, q):
    quant.store_q8_0(_swiglu(h13, kd.empty((h13.shape[0] // 2,), kd.f32)), d, q)


swiglu_q8_0.schedule(kd.cpu)(_vectorize_then(quant.schedule_store_q8_0, "i"))


# ---------------------------------------------------------------------- int8 groups


def int8_groups(size: int) -> Callable[..., object]:
    """The kernel for llama2.c's version-2 layout with groups of `size`: int8 weights
    with a float32 scale per group along the row. Lane l of a group is its bytes 4l …
    4l+3 (a vpdpbusd lane), summed in the form of this CPU's byte products
    (quant.signed_bytes_dot; runq.c's activations stay within ±127 too). The group size
    is a constant of the kernel, so a group's lanes are one vector in registers (one
    kernel per group size, made once)."""
    if size not in _INT8_KERNELS:
        lanes = size // 4

        @kd.kernel
        def int8_groups(q, s, xq, xs, y, biased: kd.constexpr = quant.BIASED):
            r, g, lane, m = kd.indices(s.shape[0], s.shape[1], lanes, 4)
            at = g * size + 4 * lane + m
            offset = None
            if biased:  # 128·Σxq of each lane, once per call
                gb, lb, mb = kd.indices(s.shape[1], lanes, 4, names="gb lb mb")
                xsum = kd.empty((s.shape[1], lanes), kd.i32)
                xsum[gb, lb] = 128 * kd.sum(xq[gb * size + 4 * lb + mb].astype(kd.i32), over=mb)
                offset = xsum[g, lane]
            dot = quant.signed_bytes_dot(q[r, at], xq[at], m, biased, offset)
            partial = kd.empty((s.shape[0], lanes), kd.f32)
            partial[r, lane] = kd.sum(dot.astype(kd.f32) * s[r, g] * xs[g], over=g)
            y[r] = kd.sum(partial[r, lane], over=lane)

        @int8_groups.schedule(kd.cpu)
        def _(s):
            # one row at a time: the matrix is one stream per core (as kernels/matvec.py's
            # short rows; eight at a time read 32000×768 at 9.3 GB/s, one at 14.2), the
            # row's sum right after its lanes and its quants prefetched, as the GGML
            # formats' products do (kernels/quant.py, _lanes_across_blocks)
            tile = s.param("rows", [1, 4, 8])
            if tile == 1:
                rows = s.fuse("r", "r.1")
                s.reorder("g", "lane")
                s.prefetch("q", "g", quant.PREFETCH)
                s.prefetch("s", "g", quant.PREFETCH)
            else:
                rows, rest = s.split("r", tile)
                s.reorder(rows, "lane", "g", rest)
                s.unroll(rest)
                s.parallelize("r.1")
            if lanes > 1:  # a group of 4 (a small model's odd hidden size) stays scalar
                s.vectorize("lane", lanes)
            s.parallelize(rows)

        _INT8_KERNELS[size] = int8_groups
    return _INT8_KERNELS[size]


_INT8_KERNELS: dict[int, Callable[..., object]] = {}


@kd.kernel
def dequantize_row(q, s, y):
    j = kd.indices(q.shape[0])
    y[j] = q[j].astype(kd.f32) * s[j // (q.shape[0] // s.shape[0])]


# ---------------------------------------------------------------------- the layers' inputs


class QuantizedInput:
    """What quantized matrices read: a vector, or its rmsnorm (after adding the pending
    residual r to x) or the SwiGLU of [h1; h3], quantized in place by one kernel call
    (`kernels`, one for each) into `out`; returns `args`, the products' arguments."""

    def __init__(self, kernels: tuple[Callable[..., object], ...], out: tuple, args: tuple):
        self.quantize, self.rmsnorm, self.swiglu = kernels
        self.out, self.args = out, args

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        self.quantize(x, *self.out)
        return self.args

    def normed(self, x: np.ndarray, r: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
        self.rmsnorm(x, r, w, *self.out)
        return self.args

    def gated(self, h13: np.ndarray) -> tuple[np.ndarray, ...]:
        self.swiglu(h13, *self.out)
        return self.args


def int8_input(group: int, size: int) -> QuantizedInput:
    """runq.c's activations for a vector of `size`: int8, a float32 scale per `group`."""
    out = (np.empty(size, np.int8), np.empty(size // group, np.float32))
    return QuantizedInput((quantize_groups, rmsnorm_groups, swiglu_groups), out, out)


def ggml_input(fmt: str, size: int) -> QuantizedInput:
    """GGML's Q8_0 activations for a vector of `size`, laid out for `fmt` weights."""
    x = quant.Activations(fmt, (1, size))
    kernels = (quantize_q8_0, rmsnorm_q8_0, swiglu_q8_0)
    return QuantizedInput(kernels, (x.scales[0], x.quants[0]), x.args)


# ---------------------------------------------------------------------- the layers' matrices


# Each matrix is copied out of the memory-mapped checkpoint into a HugePageArena: read
# once per token, it streams faster from huge pages than from the file's 4 KiB ones.


class Int8Linear:
    """llama2.c's version-2 int8 rows with a float32 scale per group."""

    def __init__(self, q: np.ndarray, s: np.ndarray, arena: HugePageArena):
        self.q, self.s = arena.copy(q), arena.copy(s)
        self.group = q.shape[1] // s.shape[1]
        if not self.group % 4 == 0:
            raise ValueError(f"int8 group size {self.group} is not a multiple of 4")
        self.kernel = int8_groups(self.group)

    def __call__(self, x: tuple[np.ndarray, ...], y: np.ndarray) -> None:
        self.kernel(self.q, self.s, *x, y)


class GgmlLinear:
    """GGML's Q8_0 or Q4_0 rows; activations quantized to Q8_0 per block, as GGML does."""

    def __init__(self, w: quant.QTensor, arena: HugePageArena):
        self.d, self.q = arena.copy(w.d), arena.copy(w.q)
        self.kernel = quant.q8_0_dot_q8_0 if w.format == "q8_0" else quant.q4_0_dot_q8_0

    def __call__(self, x: tuple[np.ndarray, ...], y: np.ndarray) -> None:
        self.kernel(self.d, self.q, *x, y[None])


Linear = Int8Linear | GgmlLinear  # y = W x of a QuantizedInput's args


class QuantizedLayer:
    """A layer of quantized matrices: ten kernel calls, each matrix's input quantized by
    the kernel that makes it (QuantizedInput)."""

    def __init__(self, rms_att, qkv: Linear, wo: Linear, rms_ffn, w13: Linear, w2: Linear):
        self.rms_att, self.qkv, self.wo = rms_att, qkv, wo
        self.rms_ffn, self.w13, self.w2 = rms_ffn, w13, w2

    def __call__(self, t: Transformer, n: int, pos: int, cos, sin) -> None:
        x, r, at_dim = t.x, t.residual, t.at_dim
        self.qkv(at_dim.normed(x, r, self.rms_att), t.qkv)
        keys, values = t.key_cache[n, None, :, : pos + 1], t.value_cache[n, None, :, : pos + 1]
        rope_into_cache(t.qkv, cos, sin, t.q, keys[0, :, pos], values[0, :, pos])
        decode_kernel(t.q4, keys, values, t.att4, t.scale, t.group, t.q.shape[1])
        self.wo(at_dim(t.att_flat), r)  # (the products' outputs go to r, which the next
        self.w13(at_dim.normed(x, r, self.rms_ffn), t.h13)  # norm adds to x)
        self.w2(t.at_hidden.gated(t.h13), r)


class QuantizedModel:
    """Quantized matrices: each layer's calls, then the classifier's."""

    def __init__(self, layers: list[QuantizedLayer], classifier: Linear):
        self.layers, self.classifier = layers, classifier

    def __call__(self, t: Transformer, pos: int) -> None:
        cos, sin = t.rope_cos[pos], t.rope_sin[pos]
        for n, layer in enumerate(self.layers):
            layer(t, n, pos, cos, sin)
        self.classifier(t.at_dim.normed(t.x, t.residual, t.rms_final), t.logits)


class Float32Model:
    """Float32 matrices: a token's layers and classifier in one kernel call
    (float32_forward), each array stacked by layer."""

    def __init__(self, w: Weights, arena: HugePageArena):
        def stacked(*parts) -> np.ndarray:
            """The layers' arrays (each the concatenation of `parts`' rows) stacked, made
            a layer at a time in the arena (no second copy of the whole)."""
            first = np.concatenate([p[0] for p in parts])
            out = arena.empty((len(parts[0]), *first.shape), np.float32)
            for n, layer in enumerate(out):
                layer[...] = np.concatenate([p[n] for p in parts])
            return out

        self.weights = (
            stacked(w.rms_att),
            stacked(w.wq, w.wk, w.wv),
            stacked(w.wo),
            stacked(w.rms_ffn),
            stacked(w.w1, w.w3),
            stacked(w.w2),
        )
        self.rms_final, self.wcls = (
            arena.copy(np.asarray(a, np.float32)) for a in (w.rms_final, w.wcls)
        )

    def __call__(self, t: Transformer, pos: int) -> None:
        cos, sin = t.rope_cos[pos], t.rope_sin[pos]
        caches = (t.key_cache, t.value_cache)
        float32_forward(
            t.x, *self.weights, cos, sin, *caches, pos, t.scale, self.rms_final, self.wcls, t.logits
        )


# ---------------------------------------------------------------------- the model


class Transformer:
    """The forward of llama2.c's run.c (float32) / runq.c (int8), one token at a time,
    with a KV cache [n_layers, seq_len, kv_dim]; the same interface as the NumPy
    reference (kdsl.examples.llama2_reference.Transformer), so they share `generate`."""

    def __init__(
        self, config: Config, weights: Weights | QWeights, quant_format: str | None = None
    ):
        self.config = c = config
        if isinstance(weights, QWeights):
            if quant_format is not None:
                raise ValueError("--quant re-quantizes a float32 checkpoint, not an int8 one")
            model = _int8_model(c, weights)
        else:
            model = _float_model(c, weights, quant_format)
        self.model, self.embed, inputs = model
        # what quantized matrices read, one per length of vector (made in place, as x)
        self.at_dim, self.at_hidden = inputs(c.dim), inputs(c.hidden_dim)
        self.rms_final = np.asarray(weights.rms_final, np.float32)
        self.rope_cos, self.rope_sin = (np.ascontiguousarray(t) for t in rope_tables(c))
        # head-major, as the library's attention reads it: [layer, kv head, position, d]
        cache = (c.n_layers, c.n_kv_heads, c.seq_len, c.head_size)
        self.key_cache, self.value_cache = np.zeros(cache, np.float32), np.zeros(cache, np.float32)
        self.x = np.empty(c.dim, np.float32)
        self.qkv = np.empty(c.dim + 2 * c.kv_dim, np.float32)
        self.q = np.empty((c.n_heads, c.head_size), np.float32)
        self.att = np.empty((c.n_heads, c.head_size), np.float32)
        self.att_flat = self.att.reshape(-1)
        self.att4 = self.att[None, :, None]  # [batch, heads, query, d], as attention's
        self.q4 = self.q[None, :, None]
        self.scale, self.group = 1 / math.sqrt(c.head_size), c.n_heads // c.n_kv_heads
        self.h13 = np.empty(2 * c.hidden_dim, np.float32)
        # a quantized product's output that the next norm adds to x (zero otherwise)
        self.residual = np.zeros(c.dim, np.float32)
        self.logits = np.empty(c.vocab_size, np.float32)

    def forward(self, token: int, pos: int) -> np.ndarray:
        self.embed(token, self.x)
        self.model(self, pos)
        return self.logits


def _float_model(c: Config, w: Weights, quant_format: str | None):
    """Layers for float32 weights as they are, or re-quantized to a GGML format."""
    arena = HugePageArena()
    table = np.asarray(w.token_embedding, np.float32)

    def embed(token: int, x: np.ndarray) -> None:
        x[...] = table[token]

    if quant_format is None:
        return Float32Model(w, arena), embed, _no_input
    if quant_format not in quant.FORMATS:
        raise ValueError(f"--quant must be one of {sorted(quant.FORMATS)}, got {quant_format!r}")
    _check_blocks(c, quant_format)

    def linear(m: np.ndarray) -> GgmlLinear:
        return GgmlLinear(quant.quantize(m, quant_format), arena)

    quantized = []
    for n in range(c.n_layers):
        qkv = linear(np.concatenate([w.wq[n], w.wk[n], w.wv[n]]))
        w13 = linear(np.concatenate([w.w1[n], w.w3[n]]))
        wo, w2 = linear(w.wo[n]), linear(w.w2[n])
        quantized.append(QuantizedLayer(w.rms_att[n], qkv, wo, w.rms_ffn[n], w13, w2))
    inputs = functools.partial(ggml_input, quant_format)
    return QuantizedModel(quantized, linear(w.wcls)), embed, inputs


def _no_input(size: int) -> None:
    """What float32 layers need of the quantized inputs: none (their kernels make their
    own)."""


def _check_blocks(c: Config, quant_format: str) -> None:
    """GGML's formats store a row in blocks of quant.BLOCK values: every matrix's rows
    (dim values long, w2's hidden_dim) must be whole blocks."""
    rows = (("dim", c.dim, "wq, wk, wv, wo, w1, w3 and wcls"), ("hidden_dim", c.hidden_dim, "w2"))
    for what, size, names in rows:
        if size % quant.BLOCK:
            raise ValueError(
                f"--quant {quant_format} stores rows in blocks of {quant.BLOCK} values, but the "
                f"rows of {names} have {what} = {size}: --quant needs model dimensions (dim, "
                f"hidden_dim) that are multiples of {quant.BLOCK}, and this model's are "
                f"({c.dim}, {c.hidden_dim}); run without --quant"
            )


def _int8_model(c: Config, w: QWeights):
    arena = HugePageArena()
    layers = []
    for n in range(c.n_layers):
        qkv = Int8Linear(
            np.concatenate([w.wq.q[n], w.wk.q[n], w.wv.q[n]]),
            np.concatenate([w.wq.s[n], w.wk.s[n], w.wv.s[n]]),
            arena,
        )
        w13 = Int8Linear(
            np.concatenate([w.w1.q[n], w.w3.q[n]]),
            np.concatenate([w.w1.s[n], w.w3.s[n]]),
            arena,
        )
        wo = Int8Linear(w.wo.q[n], w.wo.s[n], arena)
        w2 = Int8Linear(w.w2.q[n], w.w2.s[n], arena)
        layers.append(QuantizedLayer(w.rms_att[n], qkv, wo, w.rms_ffn[n], w13, w2))
    table = w.token_embedding

    def embed(token: int, x: np.ndarray) -> None:
        dequantize_row(table.q[token], table.s[token], x)

    classifier = Int8Linear(w.wcls.q, w.wcls.s, arena)
    model = QuantizedModel(layers, classifier)
    return model, embed, functools.partial(int8_input, classifier.group)


# ---------------------------------------------------------------------- command line


def parser(prog: str = "llama2") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Llama-2 decoding with kdsl kernels, with llama2.c's options and rules.",
    )
    add_options(p)
    p.add_argument(
        "--quant",
        choices=sorted(quant.FORMATS),
        help=f"re-quantize a float32 checkpoint at load (needs dim and hidden_dim that are "
        f"multiples of {quant.BLOCK})",
    )
    return p


def main(argv: Sequence[str] | None = None, prog: str = "llama2") -> int:
    args = parser(prog).parse_args(argv)
    try:
        config, weights = read_checkpoint(args.checkpoint)
        tokenizer = read_tokenizer(args.z, config.vocab_size)
        sampler = Sampler(config.vocab_size, args.t, args.p, args.s)
        transformer = Transformer(config, weights, args.quant)
    except (OSError, ValueError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    transformer.forward(1, 0)  # compile (or load) every kernel before the clock starts
    transformer.key_cache[...] = 0
    transformer.value_cache[...] = 0
    start = time.perf_counter()
    tokens, text = generate(transformer, tokenizer, sampler, args.i, args.n)
    elapsed = time.perf_counter() - start
    print(text)
    print(f"achieved tok/s: {(len(tokens) - 1) / elapsed:f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
