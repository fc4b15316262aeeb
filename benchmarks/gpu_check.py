"""The one GPU script: in one call on a GPU machine, run the CUDA tests, then time kdsl
against PyTorch (same run, CUDA events, medians) and print a short table last.

    python benchmarks/gpu_check.py            # logs and RESULTS-gpu.md under $OUT if set

Without a GPU it says so and exits 0 (the PTX tests run everywhere in the test suite).

On a GPU machine where kdsl is not installed (kdsl.kernels lives in ./kernels, mapped
by the package's install), from the repository's root, as run on 2026-12-04:

    ln -sfn ../kernels kdsl/kernels && PYTHONPATH=$PWD python3 benchmarks/gpu_check.py
"""

from __future__ import annotations

import datetime
import os
import statistics
import subprocess
import sys
import time
import traceback
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "gpu-out")
ROTATION_BYTES = 512 << 20  # weights rotated through per timing: several times the L2


def run_tests() -> str:
    log = OUT / "tests.log"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/targets/cuda",
        "-rfE",
        "--timeout=120",
        "-n",
        "4",  # (the emulator's tests are CPU work: the device machine has 16 cores)
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    tail = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(done.stdout[-6000:], done.stderr[-3000:], sep="\n")
    return f"{'PASS' if done.returncode == 0 else 'FAIL'}: {tail}"


def time_gpu(fn, reps: int = 50) -> float:
    """Median milliseconds of `fn` by CUDA events, after warming up."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def time_graph(fn, reps: int = 50) -> float:
    """Median milliseconds of `fn`'s launches replayed from a CUDA graph: for work of a
    few microseconds a launch, where queueing from Python would be the time measured."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # (compiles and loads outside the capture)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_gpu(graph.replay, reps)


def call_overhead(fn, n: int = 20000) -> float:
    """Microseconds per call from Python, launches queued without waiting."""
    import torch

    for _ in range(100):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def compiled(kernel, args, config):
    """`kernel` compiled for `args` with its schedule params set to `config` (its
    ptxas report logged under $OUT)."""
    from kdsl.targets.cuda.call import CudaSpecialization

    specs, _ = kernel._specs(args, {})
    traced = kernel.trace(specs)
    layout = kernel.call_layout(specs, traced)
    code = kernel.ptx_code(traced, config)
    try:
        resources = code.resources
    except Exception as exc:  # (ptxas may be missing there)
        resources = f"no ptxas report: {exc}"
    with (OUT / "resources.txt").open("a") as log:
        log.write(f"--- {kernel.name} {config}\n{resources}\n")
    return CudaSpecialization(
        kernel.name, traced, code, layout.array_pos, layout.scalar_pos, layout.param_names
    )


def relative_error(run, out, want) -> float:
    """‖out − want‖ / ‖want‖ after `run()` writes `out` (poisoned first: every element
    must be written)."""
    out.fill_(float("nan"))
    run()
    return float((out - want).norm() / want.norm())


def each(fn, calls):
    """One call of `fn` for each argument tuple in `calls`, in turn (a rotation through
    memory that the L2 can't hold)."""
    return lambda: [fn(*args) for args in calls]


def variant(kernel, args, config):
    """A call of `kernel` on `args` with its schedule params set to `config`."""
    spec = compiled(kernel, args, config)
    _, bound = kernel._specs(args, {})
    return lambda: spec.run(bound)


def benchmarks() -> list[tuple[str, str, str, str, str]]:
    import torch
    import torch.nn.functional as F
    from kdsl.kernels.norms import layernorm_rows, rmsnorm_rows
    from kdsl.kernels.softmax import softmax_rows

    from tests import zoo

    torch.backends.cuda.matmul.allow_tf32 = False
    rows: list[tuple[str, str, str, str, str]] = []

    # call overhead of a cached kernel, and PyTorch's for the same work
    a, b, c = (torch.rand(1, device="cuda") for _ in range(3))
    ours = call_overhead(lambda: zoo.saxpy(2.0, a, b, c))
    theirs = call_overhead(lambda: torch.add(b, a, alpha=2.0, out=c))
    rows.append(
        (
            "call overhead (saxpy n=1)",
            "1",
            f"{ours:.1f} µs",
            f"{theirs:.1f} µs",
            f"{theirs / ours:.2f}",
        )
    )

    import cProfile
    import io
    import pstats

    profile = cProfile.Profile()
    profile.runcall(lambda: [zoo.saxpy(2.0, a, b, c) for _ in range(3000)])
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(14)
    (OUT / "call_profile.txt").write_text(text.getvalue())
    print(text.getvalue()[-3500:])

    # bandwidth: device-to-device copy as the ceiling
    n = 1 << 26  # 256 MiB of f32
    x, y = torch.rand(n, device="cuda"), torch.rand(n, device="cuda")
    out = torch.empty_like(x)
    copy_ms = time_gpu(lambda: out.copy_(x))
    copy_gbs = 2 * 4 * n / copy_ms / 1e6
    rows.append(("copy (torch, the ceiling)", f"{n}", f"{copy_gbs:.0f} GB/s", "", ""))

    def bandwidth_row(name, shape, nbytes, ours_fn, theirs_fn):
        t_ours, t_theirs = time_gpu(ours_fn), time_gpu(theirs_fn)
        gbs = nbytes / t_ours / 1e6
        rows.append(
            (
                name,
                shape,
                f"{t_ours:.3f} ms ({gbs:.0f} GB/s, {100 * gbs / copy_gbs:.0f}% of copy)",
                f"{t_theirs:.3f} ms",
                f"{t_theirs / t_ours:.2f}",
            )
        )

    bandwidth_row(
        "saxpy",
        f"{n}",
        3 * 4 * n,
        lambda: zoo.saxpy(2.0, x, y, out),
        lambda: torch.add(y, x, alpha=2.0, out=out),
    )
    m, k = 16384, 4096
    X = torch.randn(m, k, device="cuda")
    Y = torch.empty_like(X)
    w, bias = torch.rand(k, device="cuda"), torch.rand(k, device="cuda")
    nbytes = 2 * 4 * m * k
    shape = f"{m}×{k}"
    for threads in (256, 512, 1024):  # the schedules' `threads` param, swept by hand
        config = {"threads": threads}
        bandwidth_row(
            f"softmax (threads={threads})",
            shape,
            nbytes,
            variant(softmax_rows, (X, Y), config),
            lambda: torch.softmax(X, -1, out=Y),
        )
        bandwidth_row(
            f"rmsnorm (threads={threads})",
            shape,
            nbytes,
            variant(rmsnorm_rows, (X, w, 1e-5, Y), config),
            lambda: F.rms_norm(X, (k,), w, 1e-5),
        )
        bandwidth_row(
            f"layernorm (threads={threads})",
            shape,
            nbytes,
            variant(layernorm_rows, (X, w, bias, 1e-5, Y), config),
            lambda: F.layer_norm(X, (k,), w, bias, 1e-5),
        )
    # matmul f32 under the default GPU schedule (no tiling yet) against cuBLAS without TF32
    N = 2048
    A, B, C = (torch.randn(N, N, device="cuda") for _ in range(3))
    t_ours, t_theirs = (
        time_gpu(lambda: zoo.matmul(A, B, C), reps=5),
        time_gpu(lambda: torch.matmul(A, B, out=C), reps=5),
    )
    rows.append(flops_row("matmul f32 (default schedule)", f"{N}³", 2 * N**3, t_ours, t_theirs))
    sections = (f32_matmul_rows, tensor_core_rows, quant_rows, attention_rows, autotune_rows)
    for section in sections:
        done = len(rows)
        try:
            rows += section(copy_gbs)
        except Exception as exc:  # a section not yet run on a GPU: report, go on
            with (OUT / "errors.log").open("a") as log:
                log.write(f"--- {section.__name__}\n{traceback.format_exc()}\n")
            rows.append((section.__name__, "", f"ERROR: {type(exc).__name__}: {exc}", "", ""))
        print(*rows[done:], sep="\n", flush=True)  # as they come: a timeout keeps them
    return rows


def flops_row(
    name: str, size: str, flops: float, ours: float, theirs: float
) -> tuple[str, str, str, str, str]:
    """A table row for a compute-bound kernel: times in ms, kdsl's TFLOP/s, the ratio."""
    return (
        name,
        size,
        f"{ours:.2f} ms ({flops / ours / 1e9:.1f} TFLOP/s)",
        f"{theirs:.2f} ms",
        f"{theirs / ours:.2f}",
    )


def f32_matmul_rows(copy_gbs: float) -> list[tuple[str, str, str, str, str]]:
    """The library's f32 matmul (register tiles on the CUDA cores, each thread_tile)
    against cuBLAS without TF32, checked against it first."""
    import torch
    from kdsl.kernels.matmul import product_kernel

    rows = []
    n = 4096
    a, b = (torch.randn(n, n, device="cuda") for _ in range(2))
    c = torch.empty(n, n, device="cuda")
    want = torch.matmul(a, b)
    theirs = time_gpu(partial(torch.matmul, a, b), reps=10)
    for tile in (4, 8):
        run = variant(product_kernel, (a, b, c), {"thread_tile": tile})
        error = relative_error(run, c, want)
        ours = time_gpu(run, reps=5)
        name = f"matmul f32, register tiles {tile}×{tile} (rel. error {error:.1e})"
        rows.append(flops_row(name, f"{n}³", 2 * n**3, ours, theirs))
    return rows


def tensor_core_rows(copy_gbs: float) -> list[tuple[str, str, str, str, str]]:
    """bf16 matmul on mma.sync (the library's CUDA schedule, a few of its configs)
    against cuBLAS (torch.matmul, bf16)."""
    import torch
    from kdsl.kernels.matmul import product_kernel

    rows = []
    for n in (4096, 8192):
        a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        c = torch.empty(n, n, device="cuda")
        want = torch.matmul(a.float(), b.float())
        theirs = time_gpu(partial(torch.matmul, a, b), reps=10)
        for config in (
            {},
            {"warp_rows": 64, "warp_cols": 32},
            {"warps_down": 4, "warps_across": 2},
        ):
            run = variant(product_kernel, (a, b, c), config)
            error = relative_error(run, c, want)
            ours = time_gpu(run, reps=5)
            name = f"matmul bf16, mma.sync {config or '(default params)'} (rel. error {error:.1e})"
            rows.append(flops_row(name, f"{n}³", 2 * n**3, ours, theirs))
    return rows


def quant_rows(copy_gbs: float) -> list[tuple[str, str, str, str, str]]:
    """Q4_0 / Q8_0 matrix-vector products (f32 activations) against the copy bandwidth,
    over a rotation of distinct matrices larger than the L2 (as a model's layers are),
    for each choice of the schedule's blocks_at_once; PyTorch's f32 matvec of the
    dequantized matrix (also rotated) as the peer."""
    import numpy as np
    import torch
    from kdsl.kernels import quant

    rows = []
    for fmt in ("q4_0", "q8_0"):
        kernel = quant.PRODUCTS[(fmt, "f32")]
        for shape in ((4096, 4096), (14336, 4096)):
            w = np.random.default_rng(0).standard_normal(shape, np.float32)
            qt = quant.quantize(w, fmt)
            count = max(2, -(-ROTATION_BYTES // qt.nbytes))
            d, q = (
                torch.from_numpy(np.ascontiguousarray(t)).cuda() for t in (qt.scales, qt.quants)
            )
            weights = [(d.clone(), q.clone()) for _ in range(count)]
            x = torch.randn(1, shape[1], device="cuda")
            y = torch.empty(1, shape[0], device="cuda")
            dense = torch.from_numpy(quant.dequantize(qt)).cuda()
            denses = [dense.clone() for _ in range(max(2, -(-ROTATION_BYTES // (4 * w.size))))]
            theirs = time_graph(each(torch.matmul, [(m, x[0]) for m in denses])) / len(denses)
            for blocks in (8, 16, 1):  # the schedule's blocks_at_once choices
                spec = compiled(kernel, (d, q, x, y), {"blocks_at_once": blocks})
                ours = time_graph(each(spec.run, [((a, b, x, y),) for a, b in weights])) / count
                gbs = qt.nbytes / ours / 1e6
                rows.append(
                    (
                        f"{fmt} matvec (f32 activations, blocks_at_once={blocks})",
                        f"{shape[0]}×{shape[1]}",
                        f"{ours:.3f} ms ({gbs:.0f} GB/s, {100 * gbs / copy_gbs:.0f}% of copy)",
                        f"{theirs:.3f} ms (f32 matvec)",
                        f"{theirs / ours:.2f}",
                    )
                )
    return rows


def attention_rows(copy_gbs: float) -> list[tuple[str, str, str, str, str]]:
    """Flash attention against PyTorch's SDPA: f32 on the library's CUDA schedule
    (CUDA cores), bf16 on tensor cores (kernels/attention_tc.py)."""
    import torch
    import torch.nn.functional as F
    from kdsl.kernels.attention import flash_kernel
    from kdsl.kernels.attention_tc import flash_mma_kernel

    rows = []
    # f32 at the CPU issue's shape; the GPU issue's: bf16, B=4, H=32, L=4096, D=128
    # (SDPA picks its flash backend there)
    for kernel, dtype, (b, h, length, d), reps in (
        (flash_kernel, torch.float32, (1, 8, 1024, 64), 5),
        (flash_mma_kernel, torch.bfloat16, (4, 32, 4096, 128), 3),
    ):
        q, k, v = (torch.randn(b, h, length, d, device="cuda", dtype=dtype) for _ in range(3))
        o = torch.empty_like(q)
        for causal in (False, True):
            ours = time_gpu(partial(kernel, q, k, v, o, d**-0.5, 1, d, causal), reps=reps)
            theirs = time_gpu(
                partial(F.scaled_dot_product_attention, q, k, v, is_causal=causal), reps=10
            )
            flops = 4 * b * h * length * length * d / (2 if causal else 1)
            kind = "f32" if dtype == torch.float32 else "bf16"
            name = f"attention {kind}{' causal' if causal else ''}"
            rows.append(flops_row(name, f"B={b} H={h} L={length} D={d}", flops, ours, theirs))
    rows.append(decode_row(copy_gbs))
    return rows


def decode_row(copy_gbs: float) -> tuple[str, str, str, str, str]:
    """Decoding (one query per head against a KV cache of 4096, H=32, D=128, f32): the
    cache's bytes against the copy bandwidth, and SDPA on the same tensors."""
    import torch
    import torch.nn.functional as F
    from kdsl.kernels.attention import decode_kernel

    h, length, d = 32, 4096, 128
    q = torch.randn(1, h, 1, d, device="cuda")
    k, v = (torch.randn(1, h, length, d, device="cuda") for _ in range(2))
    o = torch.empty_like(q)
    ours_fn = partial(decode_kernel, q, k, v, o, d**-0.5, 1, d)
    try:  # (a few tens of microseconds: replayed, or Python's launches would be timed)
        ours = time_graph(ours_fn)
    except Exception as exc:
        print(f"decode: no graph ({type(exc).__name__}: {exc}); timed call by call")
        ours = time_gpu(ours_fn)
    theirs = time_graph(partial(F.scaled_dot_product_attention, q, k, v))
    gbs = 2 * k.numel() * 4 / ours / 1e6
    return (
        "attention decode f32",
        f"H={h} KV={length} D={d}",
        f"{ours:.3f} ms ({gbs:.0f} GB/s, {100 * gbs / copy_gbs:.0f}% of copy)",
        f"{theirs:.3f} ms",
        f"{theirs / ours:.2f}",
    )


def autotune_rows(copy_gbs: float) -> list[tuple[str, str, str, str, str]]:
    """`kdsl autotune --target cuda`'s search (kdsl.autotune.gpu.tune_gpu) on a few library
    kernels: the best params against the default ones, each checked against the CPU."""
    from kdsl.kernels.norms import rmsnorm_rows
    from kdsl.kernels.quant import PRODUCTS
    from kdsl.kernels.softmax import softmax_rows

    import kdsl as kd
    from kdsl.autotune.gpu import tune_gpu

    rows, n, k = [], 16384, 4096
    work = [
        (softmax_rows, {"x": kd.spec((n, k), kd.f32), "y": kd.spec((n, k), kd.f32)}),
        (
            rmsnorm_rows,
            {
                "x": kd.spec((n, k), kd.f32),
                "w": kd.spec((k,), kd.f32),
                "eps": 1e-5,
                "y": kd.spec((n, k), kd.f32),
            },
        ),
        (
            PRODUCTS[("q4_0", "f32")],
            {
                "d": kd.spec((k, k // 32), kd.f16),
                "q": kd.spec((k, k // 32, 16), kd.u8),
                "x": kd.spec((1, k), kd.f32),
                "y": kd.spec((1, k), kd.f32),
            },
        ),
    ]
    for kernel, example in work:
        report = tune_gpu(kernel, example, budget_s=20, progress=False)
        dropped = [f"{t.config}: {t.status}" for t in report.failures()]
        best = " ".join(f"{a}={b}" for a, b in (report.best or {}).items()) or "-"
        rows.append(
            (
                f"autotune --target cuda: {kernel.name}",
                ", ".join("x".join(map(str, s)) for s in report.shape),
                f"best {best}: {1e3 * (report.best_time_s or 0):.3f} ms"
                + (f"; dropped {'; '.join(dropped)}" if dropped else ""),
                f"default {1e3 * (report.default_time_s or 0):.3f} ms",
                f"{report.speedup or 0:.2f} (default / best)",
            )
        )
    return rows


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    from kdsl.targets.cuda import driver

    reason = driver.unavailable_reason()
    if reason is not None:
        print(f"no GPU check: {reason}")
        return 0
    import torch

    name = driver.device_name()
    header = f"GPU: {name} ({driver.device_arch()}), PyTorch {torch.__version__}, {datetime.date.today()}"
    tests = run_tests()
    rows = benchmarks()
    lines = [
        "# kdsl on the GPU",
        "",
        header,
        "",
        f"Tests (`pytest tests/targets/cuda`): {tests}",
        "",
        "| kernel | size | kdsl | PyTorch | PyTorch time / kdsl time |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    text = "\n".join(lines) + "\n"
    (OUT / "RESULTS-gpu.md").write_text(text)
    print(text)
    return 0 if tests.startswith("PASS") else 1


if __name__ == "__main__":
    sys.exit(main())
