"""Matrix multiplication with a fused epilogue: the three-line kernel, plus bias and an
activation applied as each register tile of C is written back, and a register-blocked
CPU schedule with its search space."""

from __future__ import annotations

import math

import numpy as np

import kdsl as kd

ACTIVATIONS = (None, "relu", "gelu", "silu")


def activate(v, activation):
    """The epilogue's activation on a traced value (gelu is the exact, erf form)."""
    if activation is None:
        return v
    if activation == "relu":
        return kd.maximum(v, 0.0)
    if activation == "gelu":
        return 0.5 * v * (1.0 + kd.erf(v * (1.0 / math.sqrt(2.0))))
    return v * kd.sigmoid(v)  # silu


def _square(n: int) -> dict[str, kd.Spec]:
    f32 = kd.f32
    return {
        "a": kd.spec((n, n), f32),
        "b": kd.spec((n, n), f32),
        "bias": kd.spec((1,), f32),
        "c": kd.spec((n, n), f32),
    }


@kd.kernel(examples=[_square(1024), _square(256)])
def matmul_kernel(a, b, bias, c, activation: kd.constexpr = None, with_bias: kd.constexpr = False):
    i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
    acc = kd.sum(a[i, k] * b[k, j], over=k)
    if with_bias:
        acc = acc + bias[j]
    c[i, j] = activate(acc, activation)


@matmul_kernel.schedule(kd.cpu)
def _cpu(s):
    """A ti × tj tile of C accumulates in AVX-512 registers while k runs over a panel of
    tk; the epilogue runs on the tile as it is stored; rows of tiles on all cores."""
    io, jo, ii, ji = s.tile("i", "j", s.param("ti", [8, 6, 4]), s.param("tj", [16, 32]))
    ko, ki = s.split("k", s.param("tk", [256, 128, 512]))
    s.reorder(io, jo, ko, ji, ki, ii)
    s.vectorize(ji, 16)
    s.unroll(ii)
    s.parallelize(io)


_NO_BIAS = np.zeros(1, np.float32)


def matmul(
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    activation: str | None = None,
) -> np.ndarray:
    """activation(a @ b + bias) for 2-D arrays of any strides, or batched: `a` of rank 3
    ([batch, m, k]) against `b` of rank 2 or 3. The bias (length n) and the activation
    (None, "relu", "gelu", "silu") are applied in registers as C is written."""
    a, b = np.asarray(a), np.asarray(b)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {ACTIVATIONS}")
    if a.ndim not in (2, 3) or b.ndim not in (2, 3) or (a.ndim == 2 and b.ndim == 3):
        raise ValueError(
            f"expected a of rank 2 or 3 and b of rank 2 (or 3 with a), got {a.shape} and {b.shape}"
        )
    if a.shape[-1] != b.shape[-2] or (a.ndim == b.ndim == 3 and a.shape[0] != b.shape[0]):
        raise ValueError(f"can't multiply shapes {a.shape} and {b.shape}")
    dtype = np.result_type(a, b)
    shape = (*a.shape[:-1], b.shape[-1])
    if out is None:
        out = np.empty(shape, dtype)
    elif out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    if bias is not None:
        bias = np.asarray(bias, dtype)
        if bias.shape != (b.shape[-1],):
            raise ValueError(f"bias has shape {bias.shape}, expected ({b.shape[-1]},)")
    args = (bias if bias is not None else _NO_BIAS.astype(dtype), activation, bias is not None)
    a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
    if a.ndim == 2:
        matmul_kernel(a, b, args[0], out, *args[1:])
    else:
        for n in range(a.shape[0]):
            matmul_kernel(a[n], b[n] if b.ndim == 3 else b, args[0], out[n], *args[1:])
    return out


_erf = np.vectorize(math.erf, otypes=[np.float64])


def reference(a, b, bias=None, activation=None):
    """NumPy, unfused, in float64 (erf elementwise from the math module: slow, exact)."""
    v = np.matmul(a.astype(np.float64), b.astype(np.float64))
    if bias is not None:
        v = v + bias
    if activation == "relu":
        v = np.maximum(v, 0.0)
    elif activation == "gelu":
        v = 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0)))
    elif activation == "silu":
        v = v / (1.0 + np.exp(-v))
    return v
