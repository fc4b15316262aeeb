"""kdsl vs NumPy, same process: `python benchmarks/run.py [--quick] [--output PATH]`.

Every kdsl result is checked against NumPy before it is timed. The full run writes
benchmarks/RESULTS.md; `--quick` (tiny sizes, a few seconds) writes only to `--output`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import harness
import library
import numpy as np
import schedules
import targets
import tuning

import kdsl as kd
from kdsl.targets.cpu.objects import STORE

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def saxpy_algorithm(a, x, y, z):
    """z = a*x + y, elementwise (out of place, so nothing aliases)."""
    i = kd.indices(x.shape[0])
    z[i] = a * x[i] + y[i]


saxpy = kd.kernel(saxpy_algorithm, name="saxpy")


@kd.kernel
def row_sum(x, out):
    i, j = kd.indices(x.shape[0], x.shape[1])
    out[i] = kd.sum(x[i, j], over=j)


@kd.kernel
def matmul(a, b, c):
    i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
    c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)


@kd.kernel
def add(a, b, c):
    i = kd.indices(c.shape[0])
    c[i] = a[i] + b[i]


def numpy_saxpy(a, x, y, z):
    np.multiply(x, a, out=z)
    np.add(z, y, out=z)


def numpy_row_sum(x, out):
    np.sum(x, axis=1, out=out)


def saxpy_case(n: int) -> harness.Case:
    def make(rng):
        x, y = rng.random((2, n), dtype=np.float32) * 2 - 1
        return 2.5, x, y, np.empty(n, np.float32)

    return harness.Case(
        "saxpy z = a*x + y", f"n = {n:,}", make, saxpy, numpy_saxpy, work=12 * n, unit="GB/s"
    )


def row_sum_case(m: int, n: int) -> harness.Case:
    def make(rng):
        return rng.random((m, n), dtype=np.float32) * 2 - 1, np.empty(m, np.float32)

    return harness.Case(
        "row sum out[i] = Σj x[i, j]",
        f"{m}×{n}",
        make,
        row_sum,
        numpy_row_sum,
        work=4 * m * (n + 1),
        unit="GB/s",
        rtol=1e-4,
        atol=1e-4,
    )


def reversed_cases(n: int, m: int, k: int) -> list[harness.Case]:
    """saxpy on views that run backwards (x[::-1], y[::-1] into z[::-1]) and row sums of
    a matrix flipped left to right (x[:, ::-1]), against NumPy on the same views and
    against kdsl on the same memory forwards."""

    def saxpy_make(rng):
        x, y = rng.random((2, n), dtype=np.float32) * 2 - 1
        return 2.5, x[::-1], y[::-1], np.empty(n, np.float32)[::-1]

    def rows_make(rng):
        return (rng.random((m, k), dtype=np.float32) * 2 - 1)[:, ::-1], np.empty(m, np.float32)

    def forwards(a, x, y, z):
        saxpy(a, x[::-1], y[::-1], z[::-1])

    tolerance = dict(rtol=1e-4, atol=1e-4)
    saxpy_size, rows_size = f"n = {n:,}", f"{m}×{k}"
    saxpy_name, rows_name = "saxpy on reversed views", "row sum of x[:, ::-1]"
    return [
        harness.Case(
            saxpy_name, saxpy_size, saxpy_make, saxpy, numpy_saxpy, work=12 * n, unit="GB/s"
        ),
        harness.Case(
            saxpy_name,
            saxpy_size,
            saxpy_make,
            saxpy,
            forwards,
            work=12 * n,
            unit="GB/s",
            peer="kdsl, the arrays forwards",
        ),
        harness.Case(
            rows_name,
            rows_size,
            rows_make,
            row_sum,
            numpy_row_sum,
            work=4 * m * (k + 1),
            unit="GB/s",
            **tolerance,
        ),
        harness.Case(
            rows_name,
            rows_size,
            rows_make,
            row_sum,
            lambda x, out: row_sum(x[:, ::-1], out),
            work=4 * m * (k + 1),
            unit="GB/s",
            peer="kdsl, the rows forwards",
            **tolerance,
        ),
    ]


def matmul_case(n: int) -> harness.Case:
    return harness.matmul_case(
        "matmul, naive (kd.indices + kd.sum)", f"{n}³", (n, n, n), matmul, tol=1e-4
    )


def overhead_case() -> harness.Case:
    def make(rng):
        a, b = rng.random((2, 1), dtype=np.float32)
        return a, b, np.empty(1, np.float32)

    return harness.Case(
        "call overhead, 3 arrays", "1 element", make, add, lambda a, b, c: np.add(a, b, out=c)
    )


def compile_rows(repeats: int) -> list[harness.Row]:
    """First call of a fresh kernel object on tiny arrays: with LLVM (the object cache
    off), and with its machine code found in the cache directory."""
    x, y, z = np.ones((3, 8), np.float32)

    def first_call(loaded):
        def call():
            fresh = kd.kernel(saxpy_algorithm, name="saxpy")
            fresh(2.5, x, y, z)
            assert fresh.stats()["objects_loaded"] == loaded, "the object cache was not used"

        return call

    STORE.disabled = True
    try:
        cold = harness.median_time(first_call(0), repeats)
    finally:
        STORE.disabled = False
    kd.kernel(saxpy_algorithm, name="saxpy")(2.5, x, y, z)  # stores the object
    cached = harness.median_time(first_call(1), repeats)
    return [
        harness.Row("first call: trace + compile", "saxpy", cold, None),
        harness.Row("first call: trace + cached object", "saxpy", cached, None),
    ]


NOTES = [
    "Times are medians per call over repeats (after warm-up), kdsl and NumPy alternating in "
    "the same process; inputs rotate among several copies so neither side runs on warm caches "
    "the other one filled, and each batch starts after a 0.3 s pause so that OpenBLAS's "
    "worker threads, which spin ~0.1-0.2 s after a call, do not steal cores from the next "
    "side (without the pause the scheduled matmul measured half its speed).",
    "NumPy/kdsl > 1 means kdsl is faster. Rates: GB/s counts bytes read + written once; "
    "GFLOP/s counts 2·n³ for matmul.",
    "NumPy forms: saxpy `np.multiply(x, a, out=z); np.add(z, y, out=z)`; row sum "
    "`np.sum(x, axis=1, out=out)`; matmul `np.matmul(a, b, out=c)` (BLAS, its own threads); "
    "overhead `np.add(a, b, out=c)`.",
    "The naive matmul has no schedule: it shows the default schedule against BLAS, honestly.",
    "Schedule cases (benchmarks/schedules.py): 'parallel' is the default schedule on all "
    "cores against the same kernel with kd.set_num_threads(1); 'empty fork/join' calls the "
    "native pool from Python through ctypes (both sides pay the same ~0.8 µs of ctypes); "
    "'copy' against np.copyto is the memory-bandwidth yardstick, and 'copy, s.nontemporal' the "
    "same copy with its output written past the caches where it is larger than the L3 (no read "
    "of each output line before it is written) against the default schedule; softmax and RMS norm are "
    "DESIGN §1's statements with temporaries, with a fuse/vectorize/parallelize schedule, "
    "against NumPy and against the same kernel with the default schedule (unfused); the "
    "scheduled matmul uses the tile/split/reorder/vectorize/unroll/parallelize schedule of "
    "benchmarks/schedules.py with its params' first choices (the tuning rows tune DESIGN §3's schedule: benchmarks/tuning.py).",
    "First call: a new kernel object traced and compiled (LLVM included) and run on 8 elements; 'cached object': the same with its machine code found in the cache directory (no LLVM).",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and few repeats (smoke test)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"where to write the Markdown table (default: {RESULTS.name} for a full run, "
        "nothing for --quick)",
    )
    ns = parser.parse_args(argv)
    if ns.quick:
        settings = harness.Settings(repeats=3, min_batch_s=0.002, working_set_bytes=1 << 20)
        cases = [
            saxpy_case(10_000),
            row_sum_case(64, 128),
            *reversed_cases(10_000, 64, 128),
            matmul_case(32),
            overhead_case(),
            schedules.parallel_case(10_000),
            schedules.fork_join_case(),
            schedules.copy_case(10_000),
            schedules.nontemporal_case(10_000),
            *schedules.softmax_cases(8, 100),
            *schedules.rmsnorm_cases(8, 100),
            schedules.scheduled_matmul_case(70),
            *library.matmul_cases([(33, 17, 20)]),
            library.epilogue_case(40),
            *library.row_cases(10, 37),
        ]
        compile_repeats = 1
        tuning_budget_s, tuning_n = 4.0, 48
    else:
        settings = harness.Settings(
            repeats=15, min_batch_s=0.05, working_set_bytes=64 << 20, settle_s=0.3
        )
        cases = [
            saxpy_case(1_000_000),
            saxpy_case(10_000_000),
            row_sum_case(4096, 1024),
            *reversed_cases(10_000_000, 16384, 1024),
            matmul_case(256),
            overhead_case(),
            schedules.parallel_case(4_000_000),
            schedules.fork_join_case(),
            schedules.copy_case(10_000_000),
            schedules.nontemporal_case(10_000_000),
            *schedules.softmax_cases(4096, 1024),
            *schedules.rmsnorm_cases(4096, 1024),
            schedules.scheduled_matmul_case(1024),
            *library.matmul_cases(
                [
                    (256, 256, 256),
                    (1024, 1024, 1024),
                    (2048, 2048, 2048),
                    (1000, 1000, 1000),
                    (4096, 64, 4096),
                ]
            ),
            library.epilogue_case(1024),
            *library.row_cases(4096, 1024),
            *library.row_cases(16384, 4096),
        ]
        compile_repeats = 5
        tuning_budget_s, tuning_n = 100.0, 1024
    rng = np.random.default_rng(0)
    rows = [harness.run_case(case, settings, rng) for case in cases]
    rows.extend(compile_rows(compile_repeats))
    tuning_rows, tuning_notes = tuning.run(tuning_budget_s, tuning_n, settings)
    rows.extend(tuning_rows)
    title = "kdsl vs NumPy" + (" (quick run)" if ns.quick else "")
    page = harness.markdown(rows, title, NOTES + tuning_notes + library.row_targets(rows))
    output = ns.output or (None if ns.quick else RESULTS)
    if output is not None:  # (with the targets of the pages beside it)
        page = targets.with_section(page, output.parent)
    harness.publish(page, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
