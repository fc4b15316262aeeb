"""`kdsl autotune TARGETS...`: tune kernels' schedule params for their example shapes."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass

from kdsl.autotune.gpu import tune_on
from kdsl.autotune.keys import Shape, format_shape
from kdsl.autotune.strategies import STRATEGIES
from kdsl.autotune.tuner import TuneReport
from kdsl.cli.common import UsageError, check_cache_dir, failure, kernels_in
from kdsl.cli.table import format_seconds, format_table
from kdsl.config import available_cores
from kdsl.errors import KdslError
from kdsl.kernel import KernelFunction
from kdsl.specs import ArgExample, Spec, SpecError, check_fits, parse_args_spec
from kdsl.targets.cpu import runtime
from kdsl.targets.cuda import driver

_BUDGET = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?")
_UNIT_S = {None: 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_budget(text: str) -> float:
    """'60s', '2m', '1.5h', '90' (seconds) → seconds."""
    match = _BUDGET.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"--budget {text!r}: write a positive time such as 60s, 2m or 90")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "autotune",
        help="tune kernels' schedule params and store the best in the cache",
        description="Search each kernel's s.param space for its example shapes (declared "
        "with @kd.kernel(examples=...) or given with --shape), check every candidate "
        "against the default schedule's output, and record the fastest in the tuning "
        "database, where later calls find it.",
    )
    p.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="path/to/file.py, package.module, or either with :KERNEL",
    )
    p.add_argument(
        "--shape",
        action="append",
        metavar="SPEC",
        help="example arguments, e.g. 'A=512x256:f32,B=256x128:f32,C=512x128:f32' "
        "(repeat for several shapes); default: the kernels' declared examples",
    )
    p.add_argument("--budget", default="60s", help="time per kernel and shape (default 60s)")
    p.add_argument(
        "--strategy",
        default="auto",
        choices=sorted(STRATEGIES) + ["auto"],
        help="search strategy (default auto: exhaustive for small spaces, else evolutionary)",
    )
    p.add_argument(
        "--target",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cpu (the default), or cuda: tune the CUDA schedules, timing on the GPU",
    )
    p.add_argument(
        "--threads",
        metavar="N[,N...]",
        help="CPU thread counts to tune for, e.g. 1,2: a schedule's best params depend on "
        "them, and calls take the results of their own count (kd.set_num_threads); "
        "default: the current count (KDSL_NUM_THREADS, else the cores)",
    )
    p.add_argument("--jobs", type=int, default=None, help="compile workers (default: cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random strategies")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def _examples(kernel: KernelFunction, shapes: list[str] | None) -> list[dict[str, ArgExample]]:
    if not shapes:
        return list(kernel.examples)
    examples = []
    names = kernel.signature.names
    for text in shapes:
        try:
            example = parse_args_spec(text)
            check_fits(example)  # (before tuning sets up, which would fail on it later)
        except SpecError as err:
            raise UsageError(f"--shape: {err.what}; {err.fix}") from None
        missing = [n for n in names if n not in example and n not in kernel.signature.defaults]
        unknown = [n for n in example if n not in names]
        if missing or unknown:
            problem = (
                f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"
            )
            raise UsageError(f"--shape {text!r}: {problem} (the kernel is {kernel.signature})")
        examples.append({n: example.get(n, kernel.signature.defaults.get(n)) for n in names})
    return examples  # type: ignore[return-value]


def parse_threads(text: str | None, target: str) -> list[int | None]:
    """'1,2' → [1, 2]; None (not given) → [None], the current count."""
    if text is None:
        return [None]
    if target == "cuda":
        raise UsageError("--threads counts CPU threads; --target cuda tunes on the GPU")
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or not all(1 <= n <= runtime.MAX_THREADS for n in counts):
        raise UsageError(
            f"--threads {text!r}: write thread counts from 1 to {runtime.MAX_THREADS}, "
            "separated by commas, such as 1,2"
        )
    cores = available_cores()
    if max(counts) > cores:
        print(
            f"kdsl autotune: note: --threads {max(counts)} is more than the {cores} cores "
            "this process may use; those timings share cores and say little",
            file=sys.stderr,
        )
    return list(dict.fromkeys(counts))


def run(ns: argparse.Namespace) -> int:
    thread_counts = parse_threads(ns.threads, ns.target)
    if ns.target == "cuda" and (reason := driver.unavailable_reason()) is not None:
        raise UsageError(f"--target cuda tunes on a GPU, and here {reason}")
    if ns.jobs is not None and ns.jobs < 0:
        raise UsageError("--jobs must be 0 (compile in this process) or more")
    if ns.seed < 0:  # (NumPy's generators take none)
        raise UsageError(f"--seed {ns.seed}: give an int of 0 or more")
    budget = parse_budget(ns.budget)
    check_cache_dir()
    kernels = [k for target in ns.targets for k in kernels_in(target)]
    work = [(k, e) for k in kernels for e in _examples(k, ns.shape)]
    skipped = [k.name for k in kernels if not _examples(k, ns.shape)]
    if not work:
        raise UsageError(
            f"nothing to tune: {', '.join(skipped)} "
            f"{'declares' if len(skipped) == 1 else 'declare'} no examples; pass --shape "
            "or declare @kd.kernel(examples=[...])"
        )
    results: list[TuneReport | Failed] = []
    for threads in thread_counts:
        with runtime.num_threads_within(threads):
            results += [_tune(ns, kernel, example, budget) for kernel, example in work]
    print(summary(results))
    if skipped:
        print(f"\nskipped (no examples; pass --shape): {', '.join(skipped)}")
    return 1 if any(isinstance(r, Failed) for r in results) else 0


def _tune(
    ns: argparse.Namespace, kernel: KernelFunction, example: dict[str, ArgExample], budget: float
) -> TuneReport | Failed:
    try:
        # `tune`, not `kernel.autotune(**example)`: a parameter may be named `budget`.
        return tune_on(
            ns.target,
            kernel,
            example,
            budget_s=budget,
            strategy=ns.strategy,
            jobs=ns.jobs,
            seed=ns.seed,
            progress=not ns.no_progress,
        )
    except Exception as exc:  # one kernel's error: the others are still tuned
        if isinstance(exc, KdslError):
            message, reason = str(exc.with_kernel(kernel.name)), exc.what.splitlines()[0]
        else:  # a Python error in the kernel's own code, as it traced: the user's frames
            message = failure(f"tracing {kernel.name}", exc)
            reason = message.splitlines()[-1]
        print(message, file=sys.stderr)
        shape = tuple(tuple(e.shape) for e in example.values() if isinstance(e, Spec))
        return Failed(kernel.name, shape, reason, runtime.get_num_threads())


@dataclass(frozen=True)
class Failed:
    """A kernel and example whose tuning stopped on an error."""

    kernel: str
    shape: Shape
    reason: str  # its first line
    threads: int


def summary(results: list[TuneReport | Failed]) -> str:
    """The final table, then the candidates dropped and the kernels failed, and why."""
    rows: list[list[object]] = []
    for r in results:
        if isinstance(r, Failed):
            rows.append([r.kernel, format_shape(r.shape), r.threads, "(failed, below)", *[""] * 5])
            continue
        tried = sum(1 for t in r.trials if t.status not in ("same", "invalid"))
        rows.append(
            [
                r.kernel,
                format_shape(r.shape),
                r.threads or "any",
                _params(r.best) if r.space else "(no params)",
                format_seconds(r.best_time_s),
                format_seconds(r.default_time_s),
                f"{r.speedup:.2f}×" if r.speedup else "-",
                f"{tried} in {format_seconds(r.elapsed_s)}",
                len(r.failures()),
            ]
        )
    headers = [
        "kernel",
        "shape",
        "threads",
        "best params",
        "time",
        "default",
        "speedup",
        "tried",
        "dropped",
    ]
    lines = [format_table(headers, rows)]
    for r in results:
        if isinstance(r, Failed):
            lines.append(f"  failed {r.kernel}: {r.reason}")
            continue
        for trial in r.failures():
            detail = trial.detail.splitlines()[0] if trial.detail else ""
            lines.append(f"  dropped {r.kernel} {_params(trial.config)}: {trial.status} {detail}")
        lines += _over_budget(r)
    return "\n".join(lines)


def _over_budget(report: TuneReport) -> list[str]:
    """Where a run's time went, when it took more than its budget (by over 5%)."""
    budget = report.budget_s
    if budget is None or report.elapsed_s <= 1.05 * budget:
        return []
    phases = report.phases.items()
    spent = ", ".join(f"{name} {format_seconds(s)}" for name, s in phases if s >= 0.01)
    first = report.phases.get("setup", 0.0) + report.phases.get("default params", 0.0)
    why = (
        "the setup (tracing, compiling and running the reference, making the example's "
        "arrays) and the default params (always measured: the baseline) took longer than "
        "the budget by themselves"
        if first > budget
        else "the last candidates or the final turns took longer than the candidates "
        "before them predicted"
    )
    took = f"{format_seconds(report.elapsed_s)} of a {format_seconds(budget)} budget"
    return [f"  over budget {report.kernel} {format_shape(report.shape)}: {took} ({spent}): {why}"]


def _params(config: dict[str, object] | None) -> str:
    if not config:
        return "-"
    return " ".join(f"{k}={v}" for k, v in config.items())
