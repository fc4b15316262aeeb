"""The library matmul (kernels/matmul.py) against NumPy (OpenBLAS) and, where installed,
PyTorch, same process: `python benchmarks/matmul.py [--quick] [--output PATH]`.

Both cores (kdsl's pool, OpenBLAS's and PyTorch's threads at 2), then one thread each,
then the fused bias + gelu epilogue, then products of one row (x @ w, LLM decoding's
shape: w read once, rated in GB/s of w; `--one-row` runs only those); the FMA peak of the kdsl probe (kernels/peak.py) is
measured before and after, and the page ends with issue 5's matmul targets, each met or
not with its number. A full run writes benchmarks/RESULTS-matmul.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import harness
import library
import ml_dtypes
import numpy as np
from kdsl.kernels import matmul

from kdsl.cli.demo import machine_peaks
from kdsl.targets.cpu.jit import host_features

try:
    import torch
except ImportError:  # optional peer
    torch = None

RESULTS = Path(__file__).resolve().parent / "RESULTS-matmul.md"
SQUARE = [256, 1024, 2048]
ODD = [(1000, 1000, 1000), (4096, 64, 4096)]
NARROW = [(4096, 4096, 64), (64, 4096, 4096)]
ONE_ROW = [(1, 4096, 4096), (1, 768, 32000), (1, 4096, 11008), (1, 1000, 1000)]
BATCHED = (32, 16, 1024, 1024)


def library_matmul(a, b, c):
    matmul(a, b, out=c)


def torch_matmul(a, b, c):
    torch.matmul(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(c))


def cases(square: list[int], odd: list[tuple[int, int, int]]) -> list[harness.Case]:
    shapes = [(n, n, n) for n in square] + odd
    out = [
        harness.matmul_case("matmul f32", "×".join(map(str, s)), s, library_matmul) for s in shapes
    ]
    if torch is not None:
        out += [
            harness.matmul_case(
                "matmul f32",
                "×".join(map(str, s)),
                s,
                library_matmul,
                torch_matmul,
                peer="PyTorch",
            )
            for s in shapes
        ]
    if library.blas_threads(None) is not None:
        out += [
            harness.matmul_case(
                "matmul f32, 1 thread",
                f"{n}³",
                (n, n, n),
                library.one_thread(library_matmul),
                library.one_thread(lambda a, b, c: np.matmul(a, b, out=c)),
                peer="NumPy, 1 thread",
            )
            for n in square
        ]
    bf16_shapes = [(n, n, n) for n in square[1:]] + odd
    out += [bf16_case(s) for s in bf16_shapes]
    if torch is not None and host_features().get("avx512bf16"):
        # (without it PyTorch's bf16 matmul is no peer: 0.8 GFLOP/s at 1024³ on a Zen 2,
        # 22 s a call at 2048³, and the run took hours)
        out += [bf16_case(s, against_torch=True) for s in bf16_shapes]
    out.append(batched_case(*BATCHED))
    out.append(library.peak_case((square[-1],) * 3, library_matmul))
    out.append(library.epilogue_case(square[min(1, len(square) - 1)]))
    return out


def batched_case(batch: int, m: int, k: int, n: int) -> harness.Case:
    """[batch, m, k] @ [k, n] (a linear layer over a batch of sequences): NumPy's
    matmul calls BLAS once per batch; kdsl's takes the batches' rows as one matrix."""

    def make(rng):
        a = rng.random((batch, m, k), dtype=np.float32) * 2 - 1
        b = rng.random((k, n), dtype=np.float32) * 2 - 1
        return a, b, np.empty((batch, m, n), np.float32)

    return harness.Case(
        "matmul f32, batches against one b",
        f"{batch}×{m}×{k} @ {k}×{n}",
        make,
        library_matmul,
        lambda a, b, c: np.matmul(a, b, out=c),
        work=2.0 * batch * m * k * n,
        unit="GFLOP/s",
        rtol=1e-3,
        atol=1e-3,
    )


def one_row_cases(shapes: list[tuple[int, int, int]]) -> list[harness.Case]:
    """x @ w for x of one row (kernels/vecmat.py), rated by the bytes of w it reads: w
    as given (C order), then transposed (a linear layer's weight [n, k] used as w.T)
    with a bias, then with the bias + gelu epilogue; then the first shape on one thread
    (kdsl and OpenBLAS: each core's own stream)."""
    out = [_one_row_case(s) for s in shapes]
    out.append(_one_row_case(shapes[0], transposed=True))
    out.append(_one_row_case(shapes[0], activation="gelu"))
    if library.blas_threads(None) is not None:
        case = _one_row_case(shapes[0])
        out.append(
            dataclasses.replace(
                case,
                name="matmul f32, one row, 1 thread",
                kdsl=library.one_thread(case.kdsl),
                numpy=library.one_thread(case.numpy),
                peer="NumPy, 1 thread",
            )
        )
    return out


def _one_row_case(
    shape: tuple[int, int, int], transposed: bool = False, activation: str | None = None
) -> harness.Case:
    m, k, n = shape
    epilogue = transposed or activation is not None

    def make(rng):
        x = rng.random((m, k), dtype=np.float32) * 2 - 1
        w = rng.random((n, k) if transposed else (k, n), dtype=np.float32) * 2 - 1
        return (
            x,
            w.T if transposed else w,
            rng.standard_normal(n, np.float32),
            np.empty((m, n), np.float32),
        )

    def numpy_product(x, w, bias, y):
        np.matmul(x, w, out=y)
        if epilogue:
            y += bias

    name = "matmul f32, one row" + (", w transposed + bias" if transposed else "")
    name += f" + bias + {activation}" if activation else ""
    return harness.Case(
        name,
        "×".join(map(str, shape)),
        make,
        lambda x, w, bias, y: matmul(
            x, w, out=y, bias=bias if epilogue else None, activation=activation
        ),
        library.numpy_gelu_epilogue if activation == "gelu" else numpy_product,
        work=4.0 * k * n,
        unit="GB/s",
        rtol=1e-3,
        atol=1e-3,
    )


def bf16_case(shape: tuple[int, int, int], against_torch: bool = False) -> harness.Case:
    """bf16 A and B, f32 sums (AMX tiles where the CPU has them, else vdpbf16ps), against
    the f32 path on the same values widened to f32 — or against PyTorch's bf16 matmul
    (oneDNN, which uses AMX too), both writing bf16."""
    m, k, n = shape

    def make(rng):
        a = rng.uniform(-1, 1, (m, k)).astype(ml_dtypes.bfloat16)
        b = rng.uniform(-1, 1, (k, n)).astype(ml_dtypes.bfloat16)
        out = np.empty((m, n), ml_dtypes.bfloat16 if against_torch else np.float32)
        return a, b, a.astype(np.float32), b.astype(np.float32), out

    def torch_bf16(a, b, a32, b32, c):
        as_torch = [torch.from_numpy(x.view(np.int16)).view(torch.bfloat16) for x in (a, b, c)]
        torch.matmul(as_torch[0], as_torch[1], out=as_torch[2])

    return harness.Case(
        "matmul bf16 inputs",
        "×".join(map(str, shape)),
        make,
        lambda a, b, a32, b32, c: matmul(a, b, out=c),
        torch_bf16 if against_torch else lambda a, b, a32, b32, c: matmul(a32, b32, out=c),
        work=2.0 * m * k * n,
        unit="GFLOP/s",
        rtol=2e-2 if against_torch else 1e-4,  # (bf16 results: 8 bits of mantissa)
        atol=2e-2 if against_torch else 1e-4,
        peer="PyTorch bf16" if against_torch else "kdsl f32 path",
    )


def targets(rows: list[harness.Row], peak: float) -> list[str]:
    """Issue 5's matmul targets, each met or not, from the rows of this run."""

    def row(name: str, size: str, peer: str = "NumPy") -> harness.Row | None:
        return next(
            (r for r in rows if r.benchmark == name and r.size == size and r.peer == peer), None
        )

    def ratio(r: harness.Row | None) -> float:
        return r.numpy_s / r.kdsl_s if r and r.numpy_s else float("nan")

    lines = []

    def check(what: str, r: harness.Row | None, goal: float, stretch: float | None = None) -> None:
        got = ratio(r)
        verdict = "met" if got >= goal else "NOT met"
        if stretch is not None:
            verdict += f"; stretch {stretch:.2f}× {'met' if got >= stretch else 'not met'}"
        lines.append(f"target: {what} ≥ {goal:.2f}×: {got:.2f}× ({verdict})")

    for r in rows:
        if r.benchmark == "matmul f32" and r.peer == "NumPy":
            n = r.size.split("×")
            if len(set(n)) == 1 and n[0] in ("1024", "2048"):
                check(f"f32 {r.size} vs NumPy", r, 1.0, 1.15)
            elif len(set(n)) == 1 and n[0] == "256":
                check(f"f32 {r.size} vs NumPy", r, 0.9)
            elif r.size in ("1000×1000×1000", "4096×64×4096"):
                check(f"f32 {r.size} vs NumPy", r, 0.8)
    for r in rows:
        if r.benchmark == "matmul f32, 1 thread":
            check(f"one thread {r.size} vs NumPy on one thread", r, 1.0)
    top = next((r for r in rows if r.benchmark == "library matmul f32 vs FMA peak"), None)
    if top is not None:
        share = 2.0 * int(top.size.split("×")[0]) ** 3 / top.kdsl_s / 1e9 / peak
        lines.append(
            f"target: {top.size} ≥ 75% of the FMA peak ({peak:.0f} GFLOP/s, the better of "
            f"the probes before and after): {100 * share:.0f}% "
            f"({'met' if share >= 0.75 else 'NOT met'}); against the probe timed beside "
            f"it: {100 * ratio(top):.0f}%"
        )
    for r in rows:
        if r.benchmark == "matmul bf16 inputs" and r.peer == "kdsl f32 path":
            check(f"bf16 inputs {r.size} vs the f32 path (faster)", r, 1.0)
    gelu = next((r for r in rows if r.benchmark.startswith("matmul + bias + gelu")), None)
    if gelu is not None:
        check(f"matmul + bias + gelu {gelu.size} vs NumPy's matmul then epilogue", gelu, 1.2)
    for r in rows:
        if r.benchmark == "matmul f32, one row" and r.size != "1×1000×1000":
            check(f"one row {r.size} vs NumPy (w from DRAM)", r, 1.0)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument(
        "--one-row", action="store_true", help="only the products of one row (no page written)"
    )
    parser.add_argument(
        "--output", type=Path, help=f"where to write the page (default {RESULTS.name})"
    )
    ns = parser.parse_args(argv)
    if torch is not None:
        torch.set_num_threads(2)
    if ns.quick:
        settings = harness.Settings(repeats=3, min_batch_s=0.005, working_set_bytes=1 << 20)
        chosen = [] if ns.one_row else cases([64, 128], [(70, 33, 90)])
        chosen += one_row_cases([(1, 300, 200)])
    else:
        settings = harness.Settings(
            repeats=11, min_batch_s=0.1, working_set_bytes=64 << 20, settle_s=0.3
        )
        chosen = [] if ns.one_row else cases(SQUARE, ODD + NARROW)
        chosen += one_row_cases(ONE_ROW)
    before = None if ns.one_row else machine_peaks(1 << 24)
    rng = np.random.default_rng(0)
    rows = [harness.run_case(case, settings, rng) for case in chosen]
    peak = 0.0 if before is None else machine_peaks(1 << 24, than=before)[0]
    notes = [
        "Times are medians of alternating batches (0.3 s pause before each side: OpenBLAS's "
        "threads spin after a call); inputs uniform in [-1, 1), rotated among copies.",
        "Two threads: kdsl's pool, OpenBLAS and PyTorch at 2; '1 thread' rows set kdsl and "
        "OpenBLAS to one thread around each call. GFLOP/s count 2·m·n·k; the GB/s of the "
        "'one row' rows count the bytes of w (4·k·n), read once.",
        "'vs FMA peak': the probe of kernels/peak.py doing as many flops, timed beside the "
        "matmul; peer/kdsl is then the matmul's share of the peak.",
        f"PyTorch {torch.__version__ if torch else '(not installed)'}.",
        *targets(rows, peak),
    ]
    title = "kdsl matmul vs OpenBLAS" + (" (quick run)" if ns.quick else "")
    default = None if ns.quick or ns.one_row else RESULTS
    harness.publish(harness.markdown(rows, title, notes), ns.output or default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
