"""Benchmark cases for the kernel library (kernels/): matmul, its fused epilogue, and the
row kernels against NumPy and against a copy of the same bytes (their bandwidth bound).

PyTorch columns appear when torch is installed (it is optional): `torch.softmax`,
`torch.nn.functional.layer_norm` / `rms_norm` and `torch.matmul` with preallocated
outputs where they take one.
"""

from __future__ import annotations

import math

import harness
import numpy as np
from kdsl.kernels import layernorm, matmul, rmsnorm, softmax

try:
    import torch
except ImportError:  # optional peer
    torch = None

try:
    from scipy.special import erf
except ImportError:  # NumPy has no erf: fall back to the math module, elementwise
    erf = np.vectorize(math.erf, otypes=[np.float32])


def matmul_cases(shapes: list[tuple[int, int, int]]) -> list[harness.Case]:
    def library_matmul(a, b, c):
        matmul(a, b, out=c)

    return [
        harness.matmul_case("library matmul f32", "×".join(map(str, shape)), shape, library_matmul)
        for shape in shapes
    ]


def numpy_gelu_epilogue(a, b, bias, c):
    np.matmul(a, b, out=c)
    c += bias
    c *= 0.5 * (1.0 + erf(c * np.float32(1 / math.sqrt(2))))


def epilogue_case(n: int) -> harness.Case:
    def make(rng):
        a, b = rng.standard_normal((2, n, n), np.float32)
        return a, b, rng.standard_normal(n, np.float32), np.empty((n, n), np.float32)

    return harness.Case(
        "matmul + bias + gelu (fused epilogue)",
        f"{n}³",
        make,
        lambda a, b, bias, c: matmul(a, b, out=c, bias=bias, activation="gelu"),
        numpy_gelu_epilogue,
        work=2.0 * n**3,
        unit="GFLOP/s",
        rtol=1e-3,
        atol=1e-3,
        peer="NumPy matmul, then epilogue",
    )


def _numpy_softmax(x, y):
    np.subtract(x, x.max(axis=1, keepdims=True), out=y)
    np.exp(y, out=y)
    y /= y.sum(axis=1, keepdims=True)


def _numpy_rmsnorm(x, w, y):
    np.multiply(x, 1 / np.sqrt(np.mean(np.square(x), axis=1, keepdims=True) + 1e-5), out=y)
    y *= w


def _numpy_layernorm(x, w, b, y):
    mean = x.mean(axis=1, keepdims=True)
    np.subtract(x, mean, out=y)
    y *= 1 / np.sqrt(np.mean(np.square(y), axis=1, keepdims=True) + 1e-5)
    y *= w
    y += b


def row_cases(rows: int, cols: int) -> list[harness.Case]:
    """Each row kernel against NumPy, then against a copy of the same bytes."""
    kernels = [
        ("softmax", 0, lambda x, y: softmax(x, out=y), _numpy_softmax),
        ("rmsnorm", 1, lambda x, w, y: rmsnorm(x, w, out=y), _numpy_rmsnorm),
        ("layernorm", 2, lambda x, w, b, y: layernorm(x, w, b, out=y), _numpy_layernorm),
    ]
    cases = []
    for name, weights, kdsl_fn, numpy_fn in kernels:

        def make(rng, weights=weights):
            x = rng.standard_normal((rows, cols), np.float32)
            return (x, *rng.standard_normal((weights, cols), np.float32), np.empty_like(x))

        common = dict(work=8.0 * rows * cols, unit="GB/s", rtol=1e-4, atol=1e-5)
        size = f"{rows}×{cols}"
        cases.append(harness.Case(f"library {name}", size, make, kdsl_fn, numpy_fn, **common))
        cases.append(
            harness.Case(
                f"library {name} vs copy",
                size,
                make,
                kdsl_fn,
                lambda x, *rest: np.copyto(rest[-1], x),
                peer="np.copyto (same bytes)",
                reference=numpy_fn,
                **common,
            )
        )
    return cases
