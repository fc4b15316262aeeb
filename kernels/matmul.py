"""Matrix multiplication: the three-line kernel and a register-blocked CPU schedule."""

from __future__ import annotations

import numpy as np

import kdsl as kd


def _square(n: int) -> dict[str, kd.Spec]:
    return {
        "a": kd.spec((n, n), kd.f32),
        "b": kd.spec((n, n), kd.f32),
        "c": kd.spec((n, n), kd.f32),
    }


@kd.kernel(examples=[_square(1024), _square(256)])
def matmul_kernel(a, b, c):
    i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
    c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)


@matmul_kernel.schedule(kd.cpu)
def _cpu(s):
    """A ti × tj tile of C accumulates in AVX-512 registers while k runs over a panel of
    tk; rows of tiles on all cores."""
    io, jo, ii, ji = s.tile("i", "j", s.param("ti", [8, 6, 4]), s.param("tj", [16, 32]))
    ko, ki = s.split("k", s.param("tk", [256, 128, 512]))
    s.reorder(io, jo, ko, ji, ki, ii)
    s.vectorize(ji, 16)
    s.unroll(ii)
    s.parallelize(io)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a @ b for 2-D arrays (any strides)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"can't multiply shapes {a.shape} and {b.shape}")
    dtype = np.result_type(a, b)
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype)
    matmul_kernel(a.astype(dtype, copy=False), b.astype(dtype, copy=False), out)
    return out
