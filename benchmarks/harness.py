"""Benchmark harness: kdsl vs NumPy in one process, checked first, medians over rotated inputs."""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Args = tuple[object, ...]


@dataclass(frozen=True)
class Settings:
    """How hard to measure: repeats per side, the least time one batch of calls takes, and
    how many bytes of inputs to rotate through so caches don't flatter whoever runs second."""

    repeats: int
    min_batch_s: float
    working_set_bytes: int
    settle_s: float = 0.0  # pause before each side's batch (see compare)
    max_sets: int = 8  # most copies of the inputs to rotate through


@dataclass(frozen=True)
class Case:
    """One comparison. Both functions take the same arguments; the last one is the output.
    The peer is NumPy unless `peer` names another (e.g. the same kernel unfused)."""

    name: str
    size: str
    make: Callable[[np.random.Generator], Args]
    kdsl: Callable[..., object]
    numpy: Callable[..., object]
    work: float = 0.0  # per call: bytes moved (unit "GB/s") or flops (unit "GFLOP/s")
    unit: str = ""
    rtol: float = 1e-6
    atol: float = 1e-6
    peer: str = "NumPy"
    reference: Callable[..., object] | None = None  # what checks kdsl when the peer can't


@dataclass(frozen=True)
class Row:
    """A line of the results table; times are seconds per call (NumPy's None when absent)."""

    benchmark: str
    size: str
    kdsl_s: float
    numpy_s: float | None
    unit: str = ""
    work: float = 0.0
    peer: str = "NumPy"

    def cells(self) -> list[str]:
        ratio = f"{self.numpy_s / self.kdsl_s:.2f}×" if self.numpy_s else "—"
        return [
            self.benchmark,
            self.size,
            format_time(self.kdsl_s),
            self.peer if self.numpy_s else "—",
            format_time(self.numpy_s) if self.numpy_s else "—",
            ratio,
            self._rate(self.kdsl_s),
            self._rate(self.numpy_s),
        ]

    def _rate(self, seconds: float | None) -> str:
        if not self.unit or not seconds:
            return "—"
        return f"{self.work / seconds / 1e9:.1f} {self.unit}"


HEADER = ["benchmark", "size", "kdsl", "peer", "peer time", "peer/kdsl", "kdsl rate", "peer rate"]


def matmul_case(
    name: str,
    size: str,
    shape: tuple[int, int, int],
    kdsl_fn: Callable[..., object],
    peer_fn: Callable[..., object] | None = None,
    *,
    peer: str = "NumPy",
    tol: float = 1e-3,
) -> Case:
    """C = A @ B for (m, k, n) = `shape`, on uniform data in [-1, 1): `kdsl_fn(a, b, c)`
    against `peer_fn` (NumPy's matmul by default), rated in GFLOP/s."""
    m, k, n = shape

    def make(rng: np.random.Generator) -> Args:
        a = rng.random((m, k), dtype=np.float32) * 2 - 1
        b = rng.random((k, n), dtype=np.float32) * 2 - 1
        return a, b, np.empty((m, n), np.float32)

    return Case(
        name,
        size,
        make,
        kdsl_fn,
        peer_fn or (lambda a, b, c: np.matmul(a, b, out=c)),
        work=2.0 * m * n * k,
        unit="GFLOP/s",
        rtol=tol,
        atol=tol,
        peer=peer,
    )


def format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def run_case(case: Case, settings: Settings, rng: np.random.Generator) -> Row:
    """Check kdsl against NumPy on fresh inputs, then time both, alternating repeats."""
    first = case.make(rng)
    check(case, first)
    set_bytes = sum(a.nbytes for a in first if isinstance(a, np.ndarray))
    count = min(
        settings.max_sets, max(2, math.ceil(settings.working_set_bytes / max(1, set_bytes)))
    )
    sets = [first] + [case.make(rng) for _ in range(count - 1)]
    kdsl_s, numpy_s = compare(case.kdsl, case.numpy, sets, settings)
    return Row(case.name, case.size, kdsl_s, numpy_s, case.unit, case.work, case.peer)


def check(case: Case, args: Args) -> None:
    """Run NumPy (or the case's reference), poison the output, run kdsl, and require the
    same answer."""
    out = args[-1]
    assert isinstance(out, np.ndarray)
    (case.reference or case.numpy)(*args)
    expected = out.copy()
    out[...] = np.nan if out.dtype.kind in "fc" else -1  # (poison: every element is written)
    case.kdsl(*args)
    np.testing.assert_allclose(out, expected, rtol=case.rtol, atol=case.atol, err_msg=case.name)


def compare(
    kdsl_fn: Callable[..., object],
    numpy_fn: Callable[..., object],
    sets: Sequence[Args],
    settings: Settings,
) -> tuple[float, float]:
    """Median seconds per call of each function, calls cycling through the argument sets."""
    sides = [kdsl_fn, numpy_fn]
    for fn in sides:  # warm-up: every input set once, through each side
        for args in sets:
            fn(*args)
    batches = [_calibrate(fn, sets, settings.min_batch_s) for fn in sides]
    times: list[list[float]] = [[], []]
    for _ in range(settings.repeats):
        for side, fn in enumerate(sides):
            # BLAS worker threads keep spinning for ~0.1-0.2 s after a call; without a
            # pause they steal cores from whichever side runs next.
            time.sleep(settings.settle_s)
            times[side].append(_batch(fn, batches[side]))
    return statistics.median(times[0]), statistics.median(times[1])


def _calibrate(fn: Callable[..., object], sets: Sequence[Args], min_s: float) -> list[Args]:
    """A list of calls (argument sets in rotation) long enough to take at least min_s."""
    number = len(sets)
    while True:
        calls = [sets[k % len(sets)] for k in range(number)]
        if _batch(fn, calls) * number >= min_s:
            return calls
        number *= 2


def _batch(fn: Callable[..., object], calls: Sequence[Args]) -> float:
    start = time.perf_counter()
    for args in calls:
        fn(*args)
    return (time.perf_counter() - start) / len(calls)


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of single calls of fn (for one-off costs such as compiling)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cpu_times() -> list[int] | None:
    """The machine's CPU time counters (Linux /proc/stat: user, nice, system, idle, iowait,
    irq, softirq, steal, …), or None where they can't be read."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


_START_TIMES = _cpu_times()


def _steal_note() -> str:
    """The share of CPU time a virtual machine's host gave to others while this ran."""
    now = _cpu_times()
    if _START_TIMES is None or now is None or len(now) < 8:
        return ""
    spent = [b - a for a, b in zip(_START_TIMES, now)]
    busy = sum(spent) - spent[3]  # all but idle
    if busy <= 0:
        return ""
    return f", {100 * spent[7] / busy:.0f}% of the busy CPU time stolen by the VM's host"


def machine() -> str:
    """CPU model, LLVM's name for it, cores and their load, OS and Python: where the numbers
    came from (a load above the benchmark's own ~1 means something else competed for the CPU)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    import llvmlite.binding as llvm

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{model} (LLVM: {llvm.get_host_cpu_name()}), {usable} usable of {os.cpu_count()} "
        f"logical cores (load average {os.getloadavg()[0]:.2f} at the end{_steal_note()}); "
        f"{platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, NumPy {np.__version__}"
    )


def tuning() -> str:
    """The tuning results kernel calls could take: the cache directory's database, and
    the rows kdsl ships for this CPU (kdsl/autotune/shipped.py)."""
    from kdsl.autotune import registry, shipped
    from kdsl.autotune.keys import target_key

    own = len(registry.database().entries())
    ships = len(shipped.entries(target_key()))
    return (
        f"{own} rows in the cache directory's database, {ships} shipped with kdsl for this CPU "
        "(library calls of a tuned signature take the nearest tuned shape's params)"
    )


def publish(page: str, output: Path | None) -> None:
    """Print a results page, and write it to `output` when there is one."""
    print(page)
    if output is not None:
        output.write_text(page, encoding="utf-8")
        print(f"wrote {output}", file=sys.stderr)


def markdown(rows: Sequence[Row], title: str, notes: Sequence[str]) -> str:
    """The results as a Markdown page: title, date, machine, an aligned table, notes."""
    table = [HEADER] + [r.cells() for r in rows]
    widths = [max(len(line[c]) for line in table) for c in range(len(HEADER))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        f"# {title}",
        "",
        f"Date: {now}  ",
        f"Machine: {machine()}  ",
        f"Tuning: {tuning()}",
        "",
        line(HEADER),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        *(line(cells) for cells in table[1:]),
        "",
        *(f"* {n}" for n in notes),
    ]
    return "\n".join(parts) + "\n"
