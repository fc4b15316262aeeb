"""llama2 decoding speed: kdsl (examples/llama2.py) against C baselines compiled with
`gcc -O3 -march=native -fopenmp` (benchmarks/llama2_c) and the NumPy reference forward,
all in one run: `python benchmarks/llama2.py [--quick] [--output PATH]`.

Random-weight checkpoints of the shapes of the public stories15M and stories110M models
(written once into kdsl's cache directory), greedy decoding from BOS, tokens per second
over the whole run as llama2.c reports them. Formats: llama2.c's float32 file and its
version-2 int8 file (both kdsl and C), and the float32 file re-quantized to GGML's Q8_0
and Q4_0 at load (kdsl only). The weight-bandwidth bound is the bytes of weights a token
reads over the read bandwidth of a kdsl streaming kernel measured just before each run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import harness
import numpy as np
from kdsl.examples import llama2 as runner
from kdsl.examples import llama2_format as fmt
from kdsl.examples import llama2_reference as ref
from kdsl.kernels.peak import read_probe
from llama2_c.build import compiler_available, run_c

import kdsl as kd
from kdsl.config import cache_root

MODELS = {"stories15M": fmt.STORIES15M, "stories110M": fmt.STORIES110M}


class ReadBandwidth:
    """GB/s of the best of a few reads of an array far larger than the L3, each time
    it is called (the array made once)."""

    def __init__(self, megabytes: int = 512):
        self.x = np.random.default_rng(0).random((megabytes * 256, 1024), dtype=np.float32)
        self.out = np.empty(self.x.shape[0], np.float32)
        read_probe(self.x, self.out)

    def __call__(self, reads: int = 3) -> float:
        best = min(_seconds(lambda: read_probe(self.x, self.out)) for _ in range(reads))
        return self.x.nbytes / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def checkpoints(name: str, config: fmt.Config) -> dict[str, Path]:
    """The model's random checkpoint files, written once per shape."""
    directory = cache_root() / "llama2-bench" / name
    paths = {k: directory / f"model_{k}.bin" for k in ("float32", "int8")}
    paths["tokenizer"] = directory / "tokenizer.bin"
    if not all(p.exists() for p in paths.values()):
        return fmt.write_checkpoint(directory, config, seed=0)
    return paths


def weight_bytes(config: fmt.Config, kind: str) -> float:
    """Bytes of weights one token reads (the embedding row aside)."""
    c = config
    per_layer = 2 * c.dim * c.dim + 2 * c.dim * c.kv_dim + 3 * c.dim * c.hidden_dim
    values = c.n_layers * per_layer + c.vocab_size * c.dim
    per_value = {"float32": 4, "int8": 1 + 4 / 64, "q8_0": 34 / 32, "q4_0": 18 / 32}[kind]
    return values * per_value


def kdsl_runner(paths: dict[str, Path], kind: str, steps: int) -> Callable[[], float]:
    """One greedy run's tok/s, as a function (its kernels compiled here, before timing)."""
    checkpoint = paths["int8" if kind == "int8" else "float32"]
    config, weights = fmt.read_checkpoint(checkpoint)
    quant = kind if kind in ("q8_0", "q4_0") else None
    model = runner.Transformer(config, weights, quant)
    tokenizer = fmt.Tokenizer.read(paths["tokenizer"])
    model.forward(fmt.BOS, 0)  # compile or load every kernel

    def run() -> float:
        sampler = ref.Sampler(config.vocab_size, 0.0, 0.9, 1)
        start = time.perf_counter()
        tokens, _ = ref.generate(model, tokenizer, sampler, "", steps)
        return (len(tokens) - 1) / (time.perf_counter() - start)

    return run


def numpy_runner(paths: dict[str, Path], steps: int) -> Callable[[], float]:
    config, weights = fmt.read_checkpoint(paths["float32"])
    model = ref.Transformer(config, weights)

    def run() -> float:
        start = time.perf_counter()
        for pos in range(steps):
            model.forward(fmt.BOS, pos)
        return steps / (time.perf_counter() - start)

    return run


def c_runner(program: str, paths: dict[str, Path], steps: int) -> Callable[[], float]:
    checkpoint = paths["int8" if program == "runq" else "float32"]
    return lambda: run_c(program, checkpoint, paths["tokenizer"], steps=steps, threads=2).tok_per_s


@dataclasses.dataclass
class Result:
    model: str
    what: str
    tok_per_s: float
    share: float | None  # of the weight-bandwidth bound (weights' bytes / read bandwidth)


def measure(
    name: str, steps: int, repeats: int, probe: ReadBandwidth
) -> tuple[list[Result], list[float]]:
    """Every runner's median tok/s, the runners taking turns in each repeat (the machine's
    speed drifts: one runner's repeats in a row would each meet another drift), and its
    median share of the bandwidth bound, each run against the read bandwidth measured
    just before it (this machine's memory switches between a fast and a slow state
    within minutes: a bound from another moment would compare two states)."""
    config = MODELS[name]
    paths = checkpoints(name, config)
    runners: dict[tuple[str, str], Callable[[], float]] = {
        (f"kdsl {kind}", kind): kdsl_runner(paths, kind, steps)
        for kind in ("float32", "int8", "q8_0", "q4_0")
    }
    if compiler_available():
        for program, kind in (("run", "float32"), ("runq", "int8")):
            runners[(f"C {program} ({kind})", kind)] = c_runner(program, paths, steps)
    runners[("NumPy reference (float32)", "")] = numpy_runner(paths, min(steps, 32))
    speeds: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    shares: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    bandwidths = []
    for _ in range(repeats):
        for (what, kind), run in runners.items():
            bandwidths.append(probe())
            speeds[(what, kind)].append(run())
            if kind:
                bound = bandwidths[-1] * 1e9 / weight_bytes(config, kind)
                shares[(what, kind)].append(speeds[(what, kind)][-1] / bound)
    results = [
        Result(
            name,
            what,
            statistics.median(speeds[(what, kind)]),
            statistics.median(shares[(what, kind)]) if kind else None,
        )
        for what, kind in runners
    ]
    return results, bandwidths


def targets(results: list[Result]) -> list[str]:
    by = {(r.model, r.what): r.tok_per_s for r in results}
    shares = {(r.model, r.what): r.share for r in results}
    notes = []

    def ratio(model: str, a: str, b: str, goal: float, label: str) -> None:
        if (model, a) in by and (model, b) in by:
            x = by[(model, a)] / by[(model, b)]
            notes.append(
                f"{model}: {a} {x:.2f}× {b} ({label} ≥ {goal}×: {'met' if x >= goal else 'NOT met'})"
            )

    ratio("stories15M", "kdsl float32", "C run (float32)", 1.3, "target")
    share = shares.get(("stories110M", "kdsl float32"))
    if share is not None:
        notes.append(
            f"stories110M: kdsl float32 at {100 * share:.0f}% of the weight-bandwidth bound "
            f"(target ≥ 95%: {'met' if share >= 0.95 else 'NOT met'})"
        )
    for kind in ("int8", "q8_0", "q4_0"):
        ratio("stories110M", f"kdsl {kind}", "C runq (int8)", 1.6, "target")
    for model in MODELS:
        ratio(model, "kdsl float32", "NumPy reference (float32)", 3.0, "target")
    return notes


def markdown(
    results: list[Result], bandwidths: list[float], probe_mib: int, steps: int, notes: list[str]
) -> str:
    header = ["model", "runner", "tok/s", "vs C (same format)", "share of bandwidth bound"]
    c_by = {
        (r.model, r.what.split("(")[-1].rstrip(")")): r.tok_per_s
        for r in results
        if r.what.startswith("C ")
    }
    rows = []
    for r in results:
        kind = r.what.split()[-1].strip("()")
        c = c_by.get((r.model, kind))
        versus = f"{r.tok_per_s / c:.2f}×" if c and r.what.startswith("kdsl") else "—"
        share = "—" if r.share is None else f"{100 * r.share:.0f}%"
        rows.append([r.model, r.what, f"{r.tok_per_s:.1f}", versus, share])
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        "\n".join(
            [
                "# llama2 decoding: kdsl vs C and NumPy",
                "",
                f"Date: {now}  ",
                f"Machine: {harness.machine()}",
                "",
                line(header),
                "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                *(line(r) for r in rows),
                "",
                f"* greedy decoding from BOS, {steps} steps, 2 threads (KDSL_NUM_THREADS / "
                "OMP_NUM_THREADS); medians of repeated runs, the runners taking turns; random "
                "weights of each model's shape",
                f"* share of the bound: the run's tok/s over (read bandwidth / the weight bytes "
                "one token reads), the read bandwidth measured just before each run "
                f"(kernels.peak.read_probe over {probe_mib} MiB, best of 3); median of the turns. "
                f"The probes read {min(bandwidths):.1f}–{max(bandwidths):.1f} GB/s (median "
                f"{statistics.median(bandwidths):.1f}): this machine's memory runs in a fast and a "
                "slow state",
                *(f"* {n}" for n in notes),
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="stories15M only, few steps")
    parser.add_argument("--output", type=Path, help="also write the Markdown page here")
    ns = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    kd.set_num_threads(2)
    steps, repeats = (64, 1) if ns.quick else (256, 3)
    names = ["stories15M"] if ns.quick else list(MODELS)
    probe_mib = 64 if ns.quick else 512
    probe = ReadBandwidth(probe_mib)
    results, bandwidths = [], []
    for name in names:
        measured, probed = measure(name, steps, repeats, probe)
        results += measured
        bandwidths += probed
    page = markdown(results, bandwidths, probe_mib, steps, targets(results))
    harness.publish(page, ns.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
