"""Test kernels covering DESIGN §1, each with its NumPy reference."""

from __future__ import annotations

import numpy as np

import kdsl as kd


@kd.kernel
def saxpy(a, x, y, out):
    i = kd.indices(x.shape[0])
    out[i] = a * x[i] + y[i]


def saxpy_ref(a, x, y):
    return a * x + y


@kd.kernel
def matmul(A, B, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)


@kd.kernel
def softmax(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    m = kd.empty((x.shape[0],), kd.f32)
    m[i] = kd.max(x[i, j], over=j)
    e = kd.empty(x.shape, kd.f32)
    e[i, j] = kd.exp(x[i, j] - m[i])
    s = kd.empty((x.shape[0],), kd.f32)
    s[i] = kd.sum(e[i, j], over=j)
    y[i, j] = e[i, j] / s[i]


def softmax_ref(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@kd.kernel
def cumsum_rows(x, y):
    for i in kd.grid(x.shape[0]):
        acc = kd.local(0.0)
        for j in kd.range(x.shape[1]):
            acc += x[i, j]
            y[i, j] = acc


@kd.kernel
def rmsnorm(x, w, y, eps):
    for i in kd.grid(x.shape[0]):
        j = kd.indices(x.shape[1])
        ss = kd.sum(x[i, j] * x[i, j], over=j)
        y[i, j] = x[i, j] * kd.rsqrt(ss / x.shape[1] + eps) * w[j]


def rmsnorm_ref(x, w, eps):
    return x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * w


@kd.kernel
def dequant_q4_0(qs, d, out):
    """GGML Q4_0: 16 bytes per block, low nibbles are values 0..15, high ones 16..31."""
    b, j = kd.indices(qs.shape[0], 16)
    out[b, j] = ((qs[b, j] & 0xF).astype(kd.i32) - 8).astype(kd.f32) * d[b]
    out[b, j + 16] = ((qs[b, j] >> 4).astype(kd.i32) - 8).astype(kd.f32) * d[b]


def dequant_q4_0_ref(qs, d):
    low = (qs & 0xF).astype(np.int32) - 8
    high = (qs >> 4).astype(np.int32) - 8
    return np.concatenate([low, high], axis=1).astype(np.float32) * d.astype(np.float32)[:, None]


@kd.kernel
def relu_where(x, y):
    i = kd.indices(x.shape[0])
    y[i] = kd.where(x[i] > 0, x[i], 0)


@kd.kernel
def scaled_copy(x, alpha):
    i, j = kd.indices(x.shape[0], x.shape[1])
    out = kd.empty(x.shape, x.dtype)
    out[i, j] = x[i, j] * alpha
    return out


@kd.kernel
def row_sum(x, out):
    i, j = kd.indices(x.shape[0], x.shape[1])
    out[i] = kd.sum(x[i, j], over=j)


@kd.kernel
def gelu_tanh(x, y):
    i = kd.indices(x.shape[0])
    v = x[i]
    y[i] = 0.5 * v * (1.0 + kd.tanh(0.7978845608 * (v + 0.044715 * v * v * v)))


def gelu_tanh_ref(x):
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))


@kd.kernel
def waves(x, y):
    """sin of arguments past Cody–Waite's range (Payne–Hanek), cos, exp2 and log2."""
    i = kd.indices(x.shape[0])
    v = x[i]
    y[i] = kd.sin(v * 1e10) * kd.cos(v) + kd.exp2(v * 8.0) - kd.log2(kd.abs(v) + 0.5)


def waves_ref(x):
    t = x.dtype.type
    return np.sin(x * t(1e10)) * np.cos(x) + np.exp2(x * t(8)) - np.log2(np.abs(x) + t(0.5))


@kd.kernel
def powers(x, e, g, y):
    """** with an array of exponents (NaN for a negative x and a fraction) and with a
    scalar one (2 and -1 take shortcuts in vector code)."""
    i = kd.indices(x.shape[0])
    y[i] = x[i] ** e[i] + kd.abs(x[i]) ** g


@kd.kernel
def rounded(x, y):
    """Halves to even, as np.round: 2.5 → 2, -0.5 → -0."""
    i = kd.indices(x.shape[0])
    y[i] = kd.round(x[i] * 4.0)


def rounded_ref(x):
    return np.round(x * x.dtype.type(4))


@kd.kernel
def power_of(x, e, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] ** e[i]


def powers_ref(x, e, g):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.power(x, e) + np.power(np.abs(x), x.dtype.type(g))
