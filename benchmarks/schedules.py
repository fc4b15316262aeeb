"""Benchmark cases for schedules (DESIGN §3): threads, bandwidth, fusion, a scheduled matmul.

Each case pairs a kdsl kernel with a peer measured in the same run: NumPy, or the same
kdsl kernel without the step being measured (one thread; unfused).
"""

from __future__ import annotations

import dataclasses

import harness
import numpy as np
from llvmlite import ir

import kdsl as kd
from kdsl.targets.cpu import jit, runtime

# ------------------------------------------------------------------ the kernels


def sqrt_chain_algorithm(x, y):
    """16 dependent square roots per element: compute-bound."""
    i = kd.indices(x.shape[0])
    v = x[i]
    for _ in range(16):
        v = kd.sqrt(v * v + 1.0)
    y[i] = v


sqrt_chain = kd.kernel(sqrt_chain_algorithm, name="sqrt_chain")


@kd.kernel
def copy(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i]


def softmax_algorithm(x):
    """DESIGN §1's four statements, with temporaries."""
    i, j = kd.indices(x.shape[0], x.shape[1])
    m = kd.empty(x.shape[0], x.dtype)
    m[i] = kd.max(x[i, j], over=j)
    e = kd.empty(x.shape, x.dtype)
    e[i, j] = kd.exp(x[i, j] - m[i])
    s = kd.empty(x.shape[0], x.dtype)
    s[i] = kd.sum(e[i, j], over=j)
    y = kd.empty(x.shape, x.dtype)
    y[i, j] = e[i, j] / s[i]
    return y


softmax = kd.kernel(softmax_algorithm, name="softmax")
softmax_unfused = kd.kernel(softmax_algorithm, name="softmax_unfused")


@softmax.schedule(kd.cpu)
def _softmax_schedule(s):
    s.fuse("i", "i.1")
    s.fuse("i", "i.2")
    s.fuse("i", "i.3")
    s.fuse("j.1", "j.2")
    for loop in ("j", "j.1", "j.3"):
        s.vectorize(loop, 16)
    s.parallelize("i")


def rmsnorm_algorithm(x, w, eps):
    i, j = kd.indices(x.shape[0], x.shape[1])
    ss = kd.empty(x.shape[0], x.dtype)
    ss[i] = kd.sum(x[i, j] * x[i, j], over=j)
    y = kd.empty(x.shape, x.dtype)
    y[i, j] = x[i, j] * kd.rsqrt(ss[i] / x.shape[1] + eps) * w[j]
    return y


rmsnorm = kd.kernel(rmsnorm_algorithm, name="rmsnorm")
rmsnorm_unfused = kd.kernel(rmsnorm_algorithm, name="rmsnorm_unfused")


@rmsnorm.schedule(kd.cpu)
def _rmsnorm_schedule(s):
    s.fuse("i", "i.1")
    s.vectorize("j", 16)
    s.vectorize("j.1", 16)
    s.parallelize("i")


@kd.kernel
def matmul(a, b, c):
    i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
    c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)


# The register tile's first choices by the CPU's vector registers: 8 × 16 is 8 of
# AVX-512's 32 zmm, but all 16 of AVX2's ymm, which then spill (1024³ on a Zen 2: 34.8
# ms; 6 × 32, the fastest there, 24.3 ms, NumPy 14.7 ms)
_TILE_FIRST = ([8, 4, 6], [16, 32]) if jit.register_bytes() == 64 else ([6, 4, 8], [32, 16])


@matmul.schedule(kd.cpu)
def _matmul_schedule(s):
    """A register tile: 8 rows × 16 columns of C accumulate in 8 AVX-512 registers while
    the k loop runs (6 × 32 with AVX2); panels of 256 k's keep A and B in cache."""
    rows, columns = _TILE_FIRST
    io, jo, ii, ji = s.tile("i", "j", s.param("ti", rows), s.param("tj", columns))
    ko, ki = s.split("k", s.param("tk", [256, 128]))
    s.reorder(io, jo, ko, ji, ki, ii)
    s.vectorize(ji, 16)
    s.unroll(ii)
    s.parallelize(io)


# -------------------------------------------------------------------- the cases


def _one_thread(kernel):
    def run(*args):
        threads = runtime.get_num_threads()
        runtime.set_num_threads(1)
        try:
            kernel(*args)
        finally:
            runtime.set_num_threads(threads)

    return run


def parallel_case(n: int) -> harness.Case:
    def make(rng):
        return rng.random(n, dtype=np.float32), np.empty(n, np.float32)

    return harness.Case(
        "parallel: 16 sqrt per element, all cores",
        f"n = {n:,}",
        make,
        sqrt_chain,
        _one_thread(sqrt_chain),
        work=16 * n,
        unit="Gsqrt/s",
        rtol=1e-5,
        peer="kdsl, 1 thread",
    )


def copy_case(n: int) -> harness.Case:
    def make(rng):
        return rng.random(n, dtype=np.float32), np.empty(n, np.float32)

    return harness.Case(
        "copy y = x (bandwidth)",
        f"n = {n:,}",
        make,
        copy,
        lambda x, y: np.copyto(y, x),
        work=8 * n,
        unit="GB/s",
        peer="np.copyto",
    )


@kd.kernel
def streamed_copy(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i]


@streamed_copy.schedule(kd.cpu)
def _streamed_copy_schedule(s):
    """The default schedule, the output written past the caches beyond the L3."""
    s.default()
    s.nontemporal("y")


def nontemporal_case(n: int) -> harness.Case:
    """A copy with s.nontemporal against the same copy with the default schedule: the
    read of each output line before it is written, which the step saves."""
    base = copy_case(n)
    return dataclasses.replace(
        base,
        name="copy y = x, s.nontemporal (past the caches)",
        kdsl=streamed_copy,
        numpy=copy,
        peer="kdsl, default schedule",
    )


def numpy_softmax(x, y):
    np.subtract(x, x.max(axis=1, keepdims=True), out=y)
    np.exp(y, out=y)
    y /= y.sum(axis=1, keepdims=True)


def _returning(kernel):
    def run(*args):
        args[-1][...] = kernel(*args[:-1])

    return run


def softmax_cases(m: int, n: int) -> list[harness.Case]:
    def make(rng):
        return rng.standard_normal((m, n), dtype=np.float32), np.empty((m, n), np.float32)

    common = dict(work=8 * m * n, unit="GB/s", rtol=1e-5, atol=1e-7)
    return [
        harness.Case(
            "softmax, fused schedule",
            f"{m}×{n}",
            make,
            _returning(softmax),
            numpy_softmax,
            **common,
        ),
        harness.Case(
            "softmax, fused vs unfused",
            f"{m}×{n}",
            make,
            _returning(softmax),
            _returning(softmax_unfused),
            peer="kdsl unfused (default)",
            **common,
        ),
    ]


def numpy_rmsnorm(x, w, eps, y):
    ms = np.mean(np.square(x), axis=1, keepdims=True)
    np.multiply(x, 1 / np.sqrt(ms + eps), out=y)
    y *= w


def rmsnorm_cases(m: int, n: int) -> list[harness.Case]:
    def make(rng):
        x = rng.standard_normal((m, n), dtype=np.float32)
        w = rng.standard_normal(n, dtype=np.float32)
        return x, w, 1e-5, np.empty((m, n), np.float32)

    common = dict(work=8 * m * n, unit="GB/s", rtol=1e-4, atol=1e-5)
    return [
        harness.Case(
            "RMS norm, fused schedule",
            f"{m}×{n}",
            make,
            _returning(rmsnorm),
            numpy_rmsnorm,
            **common,
        ),
        harness.Case(
            "RMS norm, fused vs unfused",
            f"{m}×{n}",
            make,
            _returning(rmsnorm),
            _returning(rmsnorm_unfused),
            peer="kdsl unfused (default)",
            **common,
        ),
    ]


def scheduled_matmul_case(n: int) -> harness.Case:
    name = "matmul, tile/split/reorder/vectorize/parallelize"
    return harness.matmul_case(name, f"{n}³", (n, n, n), matmul)


def _empty_task() -> int:
    """The address of a JIT-compiled task that does nothing: `i64 task(ptr, i64, i64)`."""
    module = ir.Module("empty_task")
    fn = ir.Function(module, runtime.TASK_TYPE, name="kdsl_bench_empty_task")
    ir.IRBuilder(fn.append_basic_block()).ret(ir.Constant(ir.IntType(64), 0))
    return jit.load_object(jit.emit_object(jit.optimize(module)), fn.name)


def fork_join_case() -> harness.Case:
    """An empty loop of 2 chunks through the pool (called from Python via ctypes), against
    the same call with 1 thread, which runs the task inline with no synchronization."""
    task = _empty_task()

    def make(rng):
        return (np.empty(1),)

    def run(threads: int):
        def call(_out):
            _out[0] = runtime.call_parallel_for(task, None, 2, 1, threads)

        return call

    return harness.Case(
        "empty fork/join (2 chunks, via ctypes)",
        "2 threads",
        make,
        run(2),
        run(1),
        peer="1 thread, inline",
    )
