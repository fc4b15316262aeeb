"""`kdsl demo`: every library kernel checked against NumPy on random data, then timed.

(The CLI sits above the library, so it may import it; nothing below the CLI does.)

The table gives each kernel's time next to NumPy's (measured in the same run), the
speedup, and its rate as a share of this machine's peak, also measured here (before and
after the kernels, the better of the two): an FMA throughput probe written in kdsl for
compute-bound kernels, and the faster of `np.copyto` and a kdsl copy for memory-bound
ones.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import kdsl as kd
from kdsl.cli.table import format_seconds, format_table
from kdsl.kernels.peak import FLOPS_PER_ELEMENT, copy_probe, fma_probe

ROWS, COLS = 4096, 1024  # 16 MiB of f32: resident in this CPU's 32 MiB L3, like the copy
ROW_BYTES = 4 * ROWS * COLS
HEADS = (1, 8, 1024, 64)  # attention's q, k and v: [B, H, L, D]


@dataclass
class Case:
    name: str
    shape: str
    make: Callable[[np.random.Generator], tuple[np.ndarray, ...]]
    kdsl: Callable[..., np.ndarray]
    numpy: Callable[..., np.ndarray]
    work: float  # flops, or bytes moved
    bound: str  # "compute" or "memory"
    rtol: float = 1e-4


def _cases() -> list[Case]:
    from kdsl.kernels import attention, layernorm, matmul, qmatvec, quant, rmsnorm, softmax
    from kdsl.kernels.attention import textbook
    from kdsl.kernels.norms import layernorm_reference, rmsnorm_reference
    from kdsl.kernels.softmax import reference as softmax_reference

    n = 1024

    def square(rng):
        return tuple(rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))

    def rows_and(count):
        def make(rng):
            x = rng.standard_normal((ROWS, COLS), dtype=np.float32)
            return (x, *(rng.standard_normal(COLS, dtype=np.float32) for _ in range(count)))

        return make

    def q4_0_matrix(rng):
        w = quant.quantize_q4_0(rng.standard_normal((n * 4, n * 4), dtype=np.float32))
        return w, rng.standard_normal(n * 4, dtype=np.float32)

    def numpy_qmatvec(w, x):
        """Dequantize, then BLAS, with x quantized to Q8_0 as GGML (and kdsl) do."""
        x8 = quant.reference_dequantize(quant.reference_quantize(x[None], "q8_0"))[0]
        return quant.reference_dequantize(w) @ x8

    def heads(rng):
        return tuple(rng.standard_normal(HEADS, dtype=np.float32) for _ in range(3))

    row_bytes = 2 * ROW_BYTES  # read x, write y
    q4_bytes = (n * 4) ** 2 * 18 // 32
    return [
        Case("matmul", f"{n}×{n}×{n}", square, matmul, np.matmul, 2 * n**3, "compute"),
        Case(
            "softmax",
            f"{ROWS}×{COLS}",
            rows_and(0),
            softmax,
            softmax_reference,
            row_bytes,
            "memory",
        ),
        Case(
            "rmsnorm",
            f"{ROWS}×{COLS}",
            rows_and(1),
            rmsnorm,
            rmsnorm_reference,
            row_bytes,
            "memory",
        ),
        Case(
            "layernorm",
            f"{ROWS}×{COLS}",
            rows_and(2),
            layernorm,
            layernorm_reference,
            row_bytes,
            "memory",
        ),
        Case(
            "attention",
            "×".join(map(str, HEADS)),
            heads,
            attention,
            textbook,
            4 * math.prod(HEADS) * HEADS[2],  # 4·B·H·L²·D
            "compute",
        ),
        Case(
            "qmatvec Q4_0",
            f"{4 * n}×{4 * n}",
            q4_0_matrix,
            qmatvec,
            numpy_qmatvec,
            q4_bytes,
            "memory",
        ),
    ]


def median_time(fn: Callable[[], object], budget_s: float = 0.4, least: int = 5) -> float:
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < least or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return statistics.median(times)


def machine_peaks(copy_bytes: int, than: tuple[float, float] | None = None) -> tuple[float, float]:
    """(FMA GFLOP/s of the kdsl probe, GB/s of the faster of a kdsl copy and np.copyto
    of `copy_bytes`); with `than` (an earlier probe's), the better of each pair: a
    machine shared with others (a VM) slows down for seconds at a time, and a peak
    probed in such a spell made a kernel's rate read 131% of it."""
    x = np.random.default_rng(0).random(1 << 20, dtype=np.float32)
    y = np.empty_like(x)
    flops = median_time(lambda: fma_probe(x, y))
    a = np.ones(copy_bytes // 4, np.float32)
    b = np.empty_like(a)
    copy = min(median_time(lambda: np.copyto(b, a)), median_time(lambda: copy_probe(a, b)))
    peaks = (FLOPS_PER_ELEMENT * x.size / flops / 1e9, 2 * a.nbytes / copy / 1e9)
    return peaks if than is None else (max(peaks[0], than[0]), max(peaks[1], than[1]))


def add(commands: argparse._SubParsersAction) -> None:
    what = "check and time the library kernels against NumPy"
    commands.add_parser("demo", help=what, description=what[0].upper() + what[1:] + ".").set_defaults(
        run=run
    )


def _row(
    case: Case, error: float, t_kdsl: float, t_numpy: float, peaks: tuple[float, float]
) -> list[str]:
    """The table's row for a case: its check, times, speedup and share of the peak."""
    rate = case.work / t_kdsl / 1e9
    peak, unit = (peaks[0], "GFLOP/s") if case.bound == "compute" else (peaks[1], "GB/s")
    return [
        case.name,
        case.shape,
        "ok" if error <= case.rtol else "WRONG",
        format_seconds(t_kdsl),
        format_seconds(t_numpy),
        f"{t_numpy / t_kdsl:.2f}×",
        f"{rate:.0f} {unit}",
        f"{100 * rate / peak:.0f}%",
    ]


def run(ns: argparse.Namespace) -> int:
    from tqdm import tqdm  # only when the demo runs, not for every `kdsl` command

    started = time.perf_counter()
    rng = np.random.default_rng(2026)
    cases = _cases()
    measured = []
    problems = []
    with tqdm(total=len(cases) + 2, desc="kdsl demo", unit="kernel", leave=False) as bar:
        bar.set_postfix_str("peak probes")
        before = machine_peaks(ROW_BYTES)
        bar.update()
        for case in cases:
            bar.set_postfix_str(case.name)
            args = case.make(rng)
            got, want = case.kdsl(*args), case.numpy(*args)
            error = float(np.max(np.abs(got - want) / (np.abs(want) + 1.0)))
            if not error <= case.rtol:
                problems.append(f"{case.name}: differs from NumPy by {error:.2e}")
            t_kdsl = median_time(lambda: case.kdsl(*args))  # noqa: B023
            t_numpy = median_time(lambda: case.numpy(*args))  # noqa: B023
            measured.append((case, error, t_kdsl, t_numpy))
            bar.update()
        bar.set_postfix_str("peak probes")
        peaks = machine_peaks(ROW_BYTES, than=before)  # (again after the kernels)
        bar.update()
    rows = [_row(*m, peaks) for m in measured]
    headers = ["kernel", "shape", "check", "kdsl", "NumPy", "speedup", "rate", "of peak"]
    print(
        f"kdsl {kd.__version__} demo on {platform.processor() or platform.machine()}, "
        f"{kd.get_num_threads()} threads"
    )
    print(format_table(headers, rows))
    print(
        f"\npeak: {peaks[0]:.0f} GFLOP/s (FMA probe, written in kdsl), "
        f"{peaks[1]:.0f} GB/s (copy of {ROW_BYTES >> 20} MiB, the row kernels' size); "
        "speedup = NumPy time / kdsl time; "
        f"{time.perf_counter() - started:.1f} s in all"
    )
    for problem in problems:
        print(f"ERROR {problem}")
    return 1 if problems else 0
