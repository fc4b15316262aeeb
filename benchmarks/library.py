"""Benchmark cases for the kernel library (kernels/): matmul, its fused epilogue, and the
row kernels against NumPy and against a copy of the same bytes (their bandwidth bound).

PyTorch columns appear when torch is installed (it is optional): `torch.softmax`,
`torch.nn.functional.layer_norm` / `rms_norm` and `torch.matmul` with preallocated
outputs where they take one.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import types
from pathlib import Path

import harness
import numpy as np
from kdsl.kernels import layernorm, matmul, rmsnorm, softmax
from kdsl.kernels.peak import FLOPS_PER_ELEMENT, fma_probe

import kdsl as kd

try:
    import torch

    torch.set_num_threads(2)
except ImportError:  # optional peer
    torch = None

try:
    from scipy.special import erf
except ImportError:  # NumPy has no erf: fall back to the math module, elementwise
    erf = np.vectorize(math.erf, otypes=[np.float32])


def matmul_cases(shapes: list[tuple[int, int, int]]) -> list[harness.Case]:
    """The library matmul against NumPy on both cores at each shape; then, for the square
    shapes from 256 up, the same on one thread each (kdsl and OpenBLAS), and the largest
    against the FMA peak."""

    def library_matmul(a, b, c):
        matmul(a, b, out=c)

    def size(shape):
        return "×".join(map(str, shape))

    cases = [
        harness.matmul_case("library matmul f32", size(shape), shape, library_matmul)
        for shape in shapes
    ]
    square = [s for s in shapes if s[0] == s[1] == s[2] >= 256]
    if square and blas_threads(None) is not None:
        cases += [
            harness.matmul_case(
                "library matmul f32, 1 thread",
                size(shape),
                shape,
                one_thread(library_matmul),
                one_thread(lambda a, b, c: np.matmul(a, b, out=c)),
                peer="NumPy, 1 thread",
            )
            for shape in square
        ]
    if square:
        cases.append(peak_case(max(square), library_matmul))
    return cases


def blas_threads(n: int | None) -> int | None:
    """Set OpenBLAS's thread count (None: only look); its previous count, or None when
    NumPy's BLAS is not an OpenBLAS this can reach."""
    lib = _openblas()
    if lib is None:
        return None
    before = int(lib.get())
    if n is not None:
        lib.set(n)
    return before


@functools.cache
def _openblas() -> types.SimpleNamespace | None:
    """NumPy's bundled OpenBLAS (its symbols carry a scipy_ prefix and a 64 suffix)."""
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for path in sorted(libs.glob("*openblas*")):
        lib = ctypes.CDLL(str(path))
        for prefix, suffix in [("scipy_openblas", "64_"), ("openblas", "")]:
            try:
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}")
                set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}")
            except AttributeError:
                continue
            set_.argtypes = [ctypes.c_int]
            return types.SimpleNamespace(get=get, set=set_)
    return None


def one_thread(fn):
    """`fn` run with one thread for kdsl and for OpenBLAS (a few µs to switch)."""

    def call(*args):
        threads, blas = kd.get_num_threads(), blas_threads(1)
        kd.set_num_threads(1)
        try:
            fn(*args)
        finally:
            kd.set_num_threads(threads)
            blas_threads(blas)

    return call


def peak_case(shape: tuple[int, int, int], kdsl_fn) -> harness.Case:
    """The matmul against the FMA probe (kernels/peak.py) doing as many flops: peer/kdsl
    is the matmul's share of the machine's FMA peak, measured in the same run."""
    m, k, n = shape
    flops = 2.0 * m * n * k
    probes = math.ceil(flops / (FLOPS_PER_ELEMENT << 20))  # calls on ≤ 4 MiB each
    x = np.random.default_rng(1).random(round(flops / FLOPS_PER_ELEMENT / probes), np.float32)
    y = np.empty_like(x)

    def probe(a, b, c):
        for _ in range(probes):
            fma_probe(x, y)

    case = harness.matmul_case(
        "library matmul f32 vs FMA peak",
        "×".join(map(str, shape)),
        shape,
        kdsl_fn,
        probe,
        peer="FMA probe, same flops",
    )
    return dataclasses.replace(case, reference=lambda a, b, c: np.matmul(a, b, out=c))


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
        if torch is not None:
            peer = functools.partial(_torch_row_kernel, name)
            cases.append(
                harness.Case(
                    f"library {name}",
                    size,
                    make,
                    kdsl_fn,
                    peer,
                    peer="PyTorch",
                    reference=numpy_fn,
                    **common,
                )
            )
    return cases


def _torch_row_kernel(name: str, x: np.ndarray, *rest: np.ndarray) -> None:
    """PyTorch's kernel on the same memory (from_numpy: no copy). None of these takes an
    `out=`, so PyTorch allocates its result, as its users' code does."""
    functional = torch.nn.functional
    xt, params = torch.from_numpy(x), [torch.from_numpy(p) for p in rest[:-1]]
    if name == "softmax":
        torch.softmax(xt, 1)
    elif name == "rmsnorm":
        functional.rms_norm(xt, (x.shape[1],), params[0], eps=1e-5)
    else:
        functional.layer_norm(xt, (x.shape[1],), params[0], params[1], eps=1e-5)


# issue 5's goals for the row kernels: a share of the copy's bandwidth, and against PyTorch
_ROW_GOALS = {"softmax": 2.0, "rmsnorm": 2.0, "layernorm": 1.0}


def row_targets(rows: list[harness.Row]) -> list[str]:
    """A line per row-kernel target: ≥ 85% of np.copyto's bandwidth on the same bytes,
    and the ratio to PyTorch."""
    notes = []
    for row in rows:
        name = row.benchmark.removeprefix("library ").removesuffix(" vs copy")
        if name not in _ROW_GOALS or row.numpy_s is None:
            continue
        ratio = row.numpy_s / row.kdsl_s
        if row.peer.startswith("np.copyto"):
            goal, what = 0.85, "of np.copyto's bandwidth"
            shown = f"{100 * ratio:.0f}%"
        elif row.peer == "PyTorch":
            goal, what = _ROW_GOALS[name], "PyTorch"
            shown = f"{ratio:.2f}×"
        else:
            continue
        target = f"{100 * goal:.0f}%" if goal < 1 else f"{goal:.1f}×"
        verdict = "met" if ratio >= goal else "NOT met"
        notes.append(f"target: {name} {row.size} {shown} {what} (≥ {target}: {verdict})")
    return notes
