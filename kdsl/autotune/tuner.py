"""The autotuner: search a schedule's `s.param` space for one kernel and example shape.

The work alternates between two phases so that both cores stay busy and no timing is
disturbed: a batch of candidates is compiled in a pool of worker processes (LLVM is the
slow part, and it runs in parallel there), then the batch is measured one candidate at
a time in the measuring process (`measure.Measurer`) while nothing else runs. Applying
the schedule to the IR happens here, in Python, and is cheap; candidates whose scheduled IR
is the same are compiled and measured once. The default params come first, alone; later
batches start only as far as the time left covers them (`budget.Budget`).

Every candidate's outputs are compared with those of the kernel under kdsl's heuristic
default schedule (an oracle independent of the user's schedule) before its time counts;
a refused schedule, a compile error, wrong outputs or a crash drops the candidate, with
the reason kept in the report. The best config goes to the tuning database with the
default config's time, and its machine code to the object cache, so the next process
runs it without tuning or compiling.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from kdsl.autotune import registry
from kdsl.autotune.budget import Budget
from kdsl.autotune.database import Entry
from kdsl.autotune.keys import Shape, format_shape, shape_of, target_key, tuning_key
from kdsl.autotune.measure import Candidate, Measurer, Outcome, failure_text, turn_s
from kdsl.autotune.strategies import (
    STRATEGIES,
    Config,
    Strategy,
    config_key,
    default_config,
    make_strategy,
    space_size,
)
from kdsl.autotune.worker import Failure, WorkerPool
from kdsl.config import VERSION
from kdsl.errors import KdslError, KernelArgumentError, ScheduleError
from kdsl.ir.nodes import Kernel, Loop, LoopExec
from kdsl.ir.visit import walk_stmts
from kdsl.specs import ArgExample, Spec
from kdsl.targets.cpu import backend, runtime
from kdsl.targets.cpu.objects import STORE
from kdsl.targets.cuda.arrays import device_array
from kdsl.types import from_numpy

if TYPE_CHECKING:
    from tqdm import tqdm

    from kdsl.kernel import KernelFunction
    from kdsl.trace.tracer import ArgSpec

SLOW_CUTOFF = 2.0  # stop measuring a candidate once it is this much slower than the best
CONFIRM = 3  # how many of the fastest are measured again at the end
CONFIRM_ROUNDS = 3  # turns each of them and the default take


@dataclass(frozen=True)
class Trial:
    config: Config
    status: str  # ok, slow, same (as an earlier candidate), invalid, compile-error, wrong, ...
    time_s: float | None = None
    detail: str = ""


@dataclass
class TuneReport:
    """What one tuning run tried and found."""

    kernel: str
    shape: Shape
    space: dict[str, tuple[object, ...]]
    trials: list[Trial] = field(default_factory=list)
    best: Config | None = None
    best_time_s: float | None = None
    default_time_s: float | None = None
    elapsed_s: float = 0.0
    budget_s: float | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds spent in each
    threads: int = 0  # the CPU threads each config ran on (0: a GPU's run)

    @property
    def speedup(self) -> float | None:
        if self.best_time_s and self.default_time_s:
            return self.default_time_s / self.best_time_s
        return None

    @property
    def per_minute(self) -> float:
        evaluated = sum(1 for t in self.trials if t.status not in ("same", "invalid"))
        return 60.0 * evaluated / max(self.elapsed_s, 1e-9)

    def failures(self) -> list[Trial]:
        return [t for t in self.trials if t.status not in ("ok", "slow", "same", "invalid")]


def example_of(names: tuple[str, ...], args: tuple[object, ...]) -> dict[str, ArgExample]:
    """The example of concrete arguments: NumPy arrays stay, for their values (an index
    array's random stand-in would subscript out of bounds); specs stay."""
    example: dict[str, ArgExample] = {}
    for name, value in zip(names, args):
        if isinstance(value, Spec):
            example[name] = value
        elif isinstance(value, np.ndarray):
            if from_numpy(value.dtype) is None:
                raise KdslError(f"argument '{name}' has a dtype kdsl can't tune ({value.dtype})")
            example[name] = value
        elif isinstance(value, bool | int | float):
            example[name] = value
        elif (array := device_array(value)) is not None:  # a CUDA array: its shape, dtype
            example[name] = Spec(tuple(array.shape), array.dtype)
        else:
            raise KdslError(
                f"argument '{name}' is a {type(value).__name__}; tune with NumPy or CUDA "
                "arrays and Python scalars"
            )
    return example


def example_values(fn: KernelFunction, example: Mapping[str, ArgExample]) -> list[ArgExample]:
    """The example's value of each parameter, in order; an error naming any missing."""
    names = fn.signature.names
    missing = [n for n in names if n not in example]
    if missing:
        raise KdslError(
            f"the example for kernel '{fn.name}' gives no value for {', '.join(missing)}",
            fix=f"give every parameter: {', '.join(names)}",
        )
    return [example[n] for n in names]


def progress_bar(report: TuneReport, progress: bool, target: str = "") -> tqdm:
    """The run's bar: a step per config tried (a text bar in terminals and notebooks)."""
    from tqdm import tqdm  # (not at kdsl import)

    return tqdm(
        total=min(space_size(report.space), 10**6),
        desc=f"{report.kernel} {format_shape(report.shape)}{target}",
        unit="cfg",
        disable=not progress,
        leave=True,
    )


def record_best(report: TuneReport, key: tuple[str, str, str]) -> bool:
    """The report's best config into the tuning database under `key` (kernel identity,
    target, signature) and its thread count; False when there is none."""
    if report.best is None or report.best_time_s is None:
        return False
    kernel_id, target, signature = key
    registry.record(
        Entry(
            kernel_id=kernel_id,
            kernel_name=report.kernel,
            target=target,
            signature=signature,
            shape=report.shape,
            config=report.best,
            time_s=report.best_time_s,
            default_time_s=report.default_time_s,
            kdsl_version=VERSION,
            created=time.time(),
            threads=report.threads,
        )
    )
    return True


def example_key(fn: KernelFunction, example: Mapping[str, ArgExample]) -> tuple[str, str, str]:
    """Where the tuning database files `fn`'s results for `example` on this CPU: the
    kernel's identity, the target, the argument signature."""
    specs, _ = example_specs(fn, example_values(fn, example))
    traced = fn.trace(specs)
    return tuning_key(fn, specs, traced, fn.search_space(traced), target_key())


def example_specs(
    fn: KernelFunction, examples: Sequence[ArgExample]
) -> tuple[tuple[ArgSpec, ...], list[object]]:
    # Only shapes, dtypes and orders are needed here: the measuring process makes the
    # data (a copy of an array in its order, as make_arguments makes it)
    placeholders = [
        np.empty_like(e, order="K")
        if isinstance(e, np.ndarray)
        else np.empty(e.shape, e.dtype.to_numpy())
        if isinstance(e, Spec)
        else e
        for e in examples
    ]
    return fn._specs(placeholders, {})


class _Session:
    """One tuning run's kernel and example, and its compile workers."""

    def __init__(self, fn: KernelFunction, example: Mapping[str, ArgExample], jobs: int) -> None:
        self.jobs = jobs
        self.fn = fn
        self.examples = example_values(fn, example)
        specs, bound = example_specs(fn, self.examples)
        self.shape = shape_of(bound)
        self.traced = fn.trace(specs)
        self.layout = fn.call_layout(specs, self.traced)
        self.space = fn.search_space(self.traced)
        self.key = tuning_key(fn, specs, self.traced, self.space, target_key())
        self.pool = WorkerPool(jobs) if jobs else None
        self.measured: dict[str, tuple[Config, Candidate]] = {}  # key → first config, code

    def candidate(self, scheduled: Kernel, obj: backend.ObjectCode) -> Candidate:
        fn = self.fn
        layout = self.layout
        return Candidate(fn.name, self.traced, scheduled, obj, layout, fn.checks, fn.strict_fp)

    def compile_all(
        self, work: list[tuple[Kernel, str]], budget: Budget | None
    ) -> list[backend.ObjectCode | str]:
        """Object code for each (scheduled IR, key), or why it failed; the time it took
        goes to `budget`'s estimates of what candidates take to compile."""
        options = (self.fn.checks, self.fn.strict_fp)
        start = budget.clock() if budget is not None else 0.0
        if self.pool is None:
            replies = [_build_here(scheduled, key, *options) for scheduled, key in work]
        else:
            replies = self.pool.run([("build", (ir, key, *options)) for ir, key in work])
        if budget is not None:
            budget.compiled(budget.clock() - start, len(work), self.jobs)
        return [failure_text(r) if isinstance(r, Failure) else r for r in replies]  # type: ignore[misc]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def _build_here(scheduled: Kernel, key: str, checks: bool, strict_fp: bool) -> object:
    try:
        return backend.build_object(scheduled, key, checks, strict_fp)
    except Exception as exc:  # a candidate's failure, reported, never fatal
        return Failure("error", f"{type(exc).__name__}: {exc}")


def check_budget(budget_s: object, kernel: str) -> float:
    """The tuning budget in seconds: a finite number above 0 (KernelArgumentError if not:
    a budget of 0 or less would try no config at all)."""
    if isinstance(budget_s, int | float) and not isinstance(budget_s, bool):
        if math.isfinite(budget_s) and budget_s > 0:
            return float(budget_s)
    raise KernelArgumentError(
        f"autotune budget={budget_s!r}: the budget must be a positive number of "
        "seconds per example",
        kernel=kernel,
        fix=f"write {kernel}.autotune(..., budget=60), or `--budget 60s` on the command line",
    )


def check_jobs(jobs: object, kernel: str) -> int:
    """The compile workers: None (one a core), or 0 (compile in this process) or more
    (KernelArgumentError if not: below 0 no worker would start, and tuning would wait)."""
    if jobs is None:
        return os.cpu_count() or 1
    if isinstance(jobs, int) and not isinstance(jobs, bool) and jobs >= 0:
        return jobs
    raise KernelArgumentError(
        f"autotune jobs={jobs!r}: jobs is the number of compile workers, 0 or more",
        kernel=kernel,
        fix=f"write {kernel}.autotune(..., jobs=2), jobs=0 to compile in this process, or "
        "leave it out (one a core)",
    )


def check_strategy(strategy: object, kernel: str) -> str:
    """A search strategy's name (KernelArgumentError if it names none)."""
    names = [*STRATEGIES, "auto"]
    if isinstance(strategy, str) and strategy in names:
        return strategy
    raise KernelArgumentError(
        f"autotune strategy={strategy!r} is not a search strategy",
        kernel=kernel,
        fix=f"pass one of {', '.join(repr(n) for n in names)}",
    )


def tune(
    fn: KernelFunction,
    example: Mapping[str, ArgExample],
    *,
    budget_s: float = 60.0,
    strategy: str = "auto",
    jobs: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TuneReport:
    """Tune `fn`'s schedule params for one example call; record the best config. The
    budget covers the whole run (see `budget.Budget`)."""
    budget = Budget(check_budget(budget_s, fn.name))
    jobs = check_jobs(jobs, fn.name)
    with budget.phase("setup"):
        session = _Session(fn, example, jobs)
    report = TuneReport(
        fn.name,
        session.shape,
        session.space,
        budget_s=budget.seconds,
        threads=runtime.get_num_threads(),
    )
    search = make_strategy(strategy, session.space, seed=seed)
    measurer: Measurer | None = None
    bar = progress_bar(report, progress)
    try:
        with budget.phase("setup"):
            reference = fn.scheduled_ir(session.traced, heuristic=True)
            ref_key = backend.kernel_key(reference, fn.checks, fn.strict_fp)
            # (not an estimate of the candidates': the heuristic schedule compiles faster)
            ref_obj = session.compile_all([(reference, ref_key)], None)[0]
            if isinstance(ref_obj, str):
                raise KdslError(f"kernel '{fn.name}' does not compile by default: {ref_obj}")
            measurer = Measurer(session.examples, seed, session.candidate(reference, ref_obj))
            measurer.start()  # the example's arrays, made once, and the reference run
        run = _Run(session, measurer, report, budget)
        run.search(search, bar)
        with budget.phase("final turns"):
            _confirm(session, measurer, run.times, report, run.min_time, budget)
    except KdslError as exc:
        told = _random_indices(fn, session.examples, exc)
        if told is None:
            raise
        raise told from None
    finally:
        bar.close()
        if measurer is not None:
            measurer.close()
        session.close()
    report.elapsed_s = budget.elapsed()
    report.phases = dict(budget.phases)
    report.threads = _threads_that_mattered(session, report.threads)
    _record(session, report)
    return report


def _threads_that_mattered(session: _Session, threads: int) -> int:
    """The thread count a run's result is filed under: the run's, or 0 (it serves any
    count) where no candidate measured ran a loop on threads, or there is no pool: the
    count changed nothing then, and another count would only tune it again."""
    parallel = any(
        isinstance(st, Loop) and st.exec is LoopExec.PARALLEL
        for _, candidate in session.measured.values()
        for st in walk_stmts(candidate.scheduled.body)
    )
    return threads if parallel and runtime.has_thread_pool() else 0


def _random_indices(
    fn: KernelFunction, examples: Sequence[ArgExample], exc: KdslError
) -> KdslError | None:
    """The reference run's BoundsError told as what it likely is when integer arrays of
    the example hold random values: indices that the kernel's subscripts never take in
    real use. None for any other error."""
    if "BoundsError: " not in exc.what:
        return None
    names = fn.signature.names
    random = [(n, e) for n, e in zip(names, examples) if isinstance(e, Spec) and e.dtype.is_int]
    if not random or any(e.values is not None for _, e in random):
        return None
    bounds = exc.what.split("BoundsError: ", 1)[1].splitlines()[0]
    bounds = bounds.removeprefix(f"in kernel '{fn.name}': ")
    arrays = ", ".join(f"'{n}'" for n, _ in random)
    held = f"array {arrays} holds" if len(random) == 1 else f"arrays {arrays} hold"
    name, first = random[0]
    return KdslError(
        f"the default schedule's run on the example's random data failed: {bounds} "
        f"(integer {held} random values, not valid indices)",
        kernel=fn.name,
        fix=f"tune on your own arrays, {fn.name}.autotune({', '.join(names)}), whose "
        "values are used as they are; or give each index array its range of valid "
        f"values in the example, e.g. '{name}': kd.spec({first.shape}, "
        f"kd.{first.dtype.name}, low=0, high=ROWS)",
    )


def _confirm(
    session: _Session,
    measurer: Measurer,
    times: dict[str, float | None],
    report: TuneReport,
    min_time: float,
    budget: Budget,
) -> None:
    """Measure the fastest few and the default again, taking turns, and rank them by
    these times alone: the search timed them one after another, and a machine whose
    speed drifts (another process, a frequency change, memory shared with a neighbour)
    can flatter whichever ran in a fast moment (a 1.10× "win" over the default that
    measured 0.89× taking turns, benchmarks/ship_tuning.py). Each keeps its best median
    of CONFIRM_ROUNDS; a turn after the first is taken only if the budget covers it (the
    search kept it time for them all). A single finalist is not measured again."""
    ranked = sorted((t, k) for k, t in times.items() if t is not None and k in session.measured)
    keys = [k for _, k in ranked[:CONFIRM]]
    default = config_key(default_config(report.space))
    keys += [k for k, (c, _) in session.measured.items() if config_key(c) == default]
    keys = list(dict.fromkeys(keys))
    if len(keys) < 2:
        return
    best: dict[str, float] = {}
    turn_took = 0.0
    for turn in range(CONFIRM_ROUNDS):
        if turn and budget.left() < turn_took:
            break
        start = budget.clock()
        for key in keys:
            again = measurer.measure(session.measured[key][1], min_time, None, 600.0, check=False)
            if again.status == "ok" and again.time_s is not None:
                best[key] = min(again.time_s, best.get(key, again.time_s))
        turn_took = budget.clock() - start
    for key, time_s in best.items():
        config = session.measured[key][0]
        if config_key(config) == default:
            report.default_time_s = time_s
    if best:
        winner = min(best, key=best.__getitem__)
        report.best, report.best_time_s = dict(session.measured[winner][0]), best[winner]


def _progress_note(report: TuneReport) -> str:
    note = f"best {report.best_time_s * 1e3:.3g} ms"  # type: ignore[operator]
    return note + (f" ({report.speedup:.2f}× default)" if report.speedup else "")


class _Run:
    """The search of one run: batches of candidates, each compiled (in parallel) then
    checked and timed one at a time, while the budget covers them."""

    def __init__(
        self, session: _Session, measurer: Measurer, report: TuneReport, budget: Budget
    ) -> None:
        self.session, self.measurer, self.report, self.budget = session, measurer, report, budget
        self.times: dict[str, float | None] = {}  # scheduled IR's key → time (None: dropped)
        self.min_time = min(0.2, max(0.02, budget.seconds / 300))

    def search(self, search: Strategy, bar: tqdm) -> None:
        """The default params first, alone: they are measured whatever the budget (the
        baseline), and what they cost is the first estimate of what the others will.
        Then batches of up to two candidates per compile worker, the last one cut to
        what the time left covers."""
        size, phase = 1, "default params"
        while configs := search.propose(size):
            with self.budget.phase(phase):
                ended = self.batch(configs, search, first=size == 1)
            bar.update(len(configs))
            if self.report.best_time_s:
                bar.set_postfix_str(_progress_note(self.report))
            if ended:
                return
            size, phase = max(2 * self.session.jobs, 2), "search"

    def final_turns_s(self, more: int) -> float:
        """The time to keep for the final turns if `more` candidates are measured ok."""
        finalists = len(self.session.measured) + more
        if finalists < 2:
            return 0.0
        time_s = self.report.default_time_s or self.report.best_time_s or 0.0
        return CONFIRM_ROUNDS * min(finalists, CONFIRM + 1) * turn_s(time_s, self.min_time)

    def batch(self, configs: list[Config], search: Strategy, first: bool) -> bool:
        """Measure `configs` (all of them if `first`, else as many as the budget covers);
        True when the budget ends the search."""
        session, report, fn = self.session, self.report, self.session.fn
        fresh: list[tuple[Config, Kernel, str]] = []
        for config in configs:
            try:
                scheduled = fn.scheduled_ir(session.traced, config)
            except ScheduleError as exc:
                observe(report, search, Trial(config, "invalid", detail=str(exc.args[0])))
                continue
            key = backend.kernel_key(scheduled, fn.checks, fn.strict_fp)
            if key in self.times or any(key == k for _, _, k in fresh):
                report.trials.append(Trial(config, "same", self.times.get(key)))
                search.observe(config, self.times.get(key))
                continue
            fresh.append((config, scheduled, key))
        fits = len(fresh) if first else self.fitting(len(fresh), session.jobs)
        ended = fits < len(fresh) or (not first and self.budget.left() <= 0)
        fresh = fresh[:fits]
        built = session.compile_all([(scheduled, key) for _, scheduled, key in fresh], self.budget)
        for (config, scheduled, key), obj in zip(fresh, built):
            if not first and self.budget.left() < self.budget.measure_s() + self.final_turns_s(1):
                return True  # the compiles took longer than expected
            self.times[key] = self.measure(config, scheduled, key, obj, search)
        return ended

    def fitting(self, most: int, jobs: int) -> int:
        return self.budget.fitting(most, jobs, self.final_turns_s)

    def measure(
        self,
        config: Config,
        scheduled: Kernel,
        key: str,
        obj: backend.ObjectCode | str,
        search: Strategy,
    ) -> float | None:
        """Check and time one compiled candidate; its time if it is ok."""
        report = self.report
        if isinstance(obj, str):
            trial = Trial(config, "compile-error", detail=obj)
        else:
            cutoff = SLOW_CUTOFF * report.best_time_s if report.best_time_s else None
            timeout = max(60.0, 100 * (report.default_time_s or 0.0))
            candidate = self.session.candidate(scheduled, obj)
            start = self.budget.clock()
            outcome: Outcome = self.measurer.measure(candidate, self.min_time, cutoff, timeout)
            self.budget.measured(self.budget.clock() - start)
            trial = Trial(config, outcome.status, outcome.time_s, outcome.detail)
            if outcome.status == "ok":
                self.session.measured[key] = (config, candidate)
        observe(report, search, trial)
        return trial.time_s if trial.status == "ok" else None


def observe(report: TuneReport, search: Strategy, trial: Trial) -> None:
    if trial.detail:
        trial = replace(trial, detail=one_line(trial.detail, report.kernel))
    report.trials.append(trial)
    ok = trial.status == "ok"
    search.observe(trial.config, trial.time_s if ok else None)
    if not ok or trial.time_s is None:
        return
    if config_key(trial.config) == config_key(default_config(report.space)):
        report.default_time_s = trial.time_s
    if report.best_time_s is None or trial.time_s < report.best_time_s:
        report.best, report.best_time_s = dict(trial.config), trial.time_s


def one_line(detail: str, kernel: str) -> str:
    """A dropped candidate's reason as one line: the first line of the error, without the
    kernel's name (the report names it) or the class of a kdsl error before it (the
    trial's status says as much: "compile-error", not "compile-error CompileError: in
    kernel 'k': ...")."""
    line = detail.strip().partition("\n")[0]
    kind, colon, rest = line.partition(": ")
    if colon and kind in _subclasses(KdslError):
        line = rest
    return line.removeprefix(f"in kernel '{kernel}': ")


def _subclasses(cls: type) -> set[str]:
    """The names of `cls` and of every class below it."""
    names = {cls.__name__}
    subs: list[type] = cls.__subclasses__()
    for sub in subs:
        names |= _subclasses(sub)
    return names


def _record(session: _Session, report: TuneReport) -> None:
    if not record_best(report, session.key):
        return
    best = config_key(report.best)  # type: ignore[arg-type]
    for key, (config, candidate) in session.measured.items():
        if config_key(config) == best:
            STORE.save(key, candidate.obj)
