"""The tuning budget covers the whole run: a search on a fake clock starts only the
candidates that fit, the default params are measured whatever the budget says, the final
turns keep their share, and the CLI says where the time went when a run took longer."""

from __future__ import annotations

import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

import kdsl as kd
from kdsl.autotune import measure, tuner
from kdsl.autotune.budget import Budget
from kdsl.autotune.keys import format_shape
from kdsl.autotune.measure import Outcome, turn_s
from kdsl.autotune.strategies import make_strategy, space_size
from kdsl.autotune.tuner import CONFIRM, CONFIRM_ROUNDS, TuneReport, _confirm, _Run, _Session
from kdsl.cli.autotune import summary
from kdsl.targets.cpu import backend, runtime

COMPILE_S = 0.5  # what each candidate "takes" on the fake clock to compile,
CHECK_S = 0.3  # to check and time in the search


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeMeasurer:
    """The default params (measured first) take 2 ms, the others a little over 1 ms,
    each its own time; the clock moves by CHECK_S for a checked measure, by `turn_s`
    (times `turns_slower`) for a final turn."""

    def __init__(self, clock: FakeClock, turns_slower: float = 1.0) -> None:
        self.clock, self.turns_slower = clock, turns_slower
        self.times: dict[int, float] = {}  # id of the scheduled IR → its time
        self.checked = 0
        self.turns = 0

    def measure(self, candidate, min_time, cutoff, timeout, check=True) -> Outcome:
        key = id(candidate.scheduled)
        time_s = self.times.setdefault(
            key, 1e-3 * (1 + len(self.times) / 1000) if self.times else 2e-3
        )
        if check:
            self.checked += 1
            self.clock.now += CHECK_S
        else:
            self.turns += 1
            self.clock.now += self.turns_slower * turn_s(time_s, min_time)
        return Outcome("ok", time_s)


@kd.kernel
def budget_big_space(a, b, c):
    i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
    c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)


@budget_big_space.schedule(kd.cpu)
def _(s):
    factors = [1, 2, 4, 8, 16, 32]
    io, _, _, _ = s.tile("i", "j", s.param("ti", factors), s.param("tj", factors))
    s.split("k", s.param("tk", factors))
    if s.param("parallel", [True, False]):
        s.parallelize(io)


EXAMPLE = {
    "a": kd.spec((96, 64), kd.f32),
    "b": kd.spec((64, 96), kd.f32),
    "c": kd.spec((96, 96), kd.f32),
}


def fake_run(monkeypatch, budget_s: float, setup_s: float, turns_slower: float = 1.0):
    """The search and final turns of `tune` on a fake clock: compiles (here, one at a
    time) take COMPILE_S each, checks CHECK_S, and the setup `setup_s`."""
    clock = FakeClock()
    budget = Budget(budget_s, clock)
    clock.now += setup_s

    def build(*_: object) -> object:
        clock.now += COMPILE_S
        return SimpleNamespace(code=b"")

    monkeypatch.setattr(tuner, "_build_here", build)
    session = _Session(budget_big_space, EXAMPLE, jobs=0)
    report = TuneReport(budget_big_space.name, session.shape, session.space, budget_s=budget_s)
    measurer = FakeMeasurer(clock, turns_slower)
    run = _Run(session, measurer, report, budget)  # type: ignore[arg-type]
    bar = SimpleNamespace(update=lambda n: None, set_postfix_str=lambda s: None)
    run.search(make_strategy("auto", session.space), bar)  # type: ignore[arg-type]
    _confirm(session, measurer, run.times, report, run.min_time, budget)  # type: ignore[arg-type]
    return report, measurer, budget, run


def test_a_search_starts_only_the_candidates_that_fit(monkeypatch) -> None:
    """10 s: 1 for the setup, 0.8 for each candidate, the rest kept for the final turns
    of the 3 fastest and the default (estimated from the default's time, 2 ms)."""
    report, measurer, budget, run = fake_run(monkeypatch, budget_s=10.0, setup_s=1.0)
    assert space_size(report.space) == 432
    each = COMPILE_S + CHECK_S
    turns = CONFIRM_ROUNDS * (CONFIRM + 1) * turn_s(2e-3, run.min_time)
    fit = 1 + int((10.0 - 1.0 - each - turns) // each)  # the default, then what fits
    assert measurer.checked == fit == 10
    assert measurer.turns == CONFIRM_ROUNDS * (CONFIRM + 1)
    # everything (setup, compiles, checks, the final turns) within the budget ...
    assert budget.elapsed() <= 10.0
    # ... and used: one more candidate would not have fit
    assert budget.elapsed() + each > 10.0
    assert report.best is not None and report.default_time_s is not None


def test_the_default_params_are_measured_past_the_budget(monkeypatch) -> None:
    """The setup alone took 3x the budget: the default is still compiled and measured
    (it is the baseline); nothing else starts, and a lone finalist takes no turns."""
    report, measurer, budget, _ = fake_run(monkeypatch, budget_s=5.0, setup_s=15.0)
    assert measurer.checked == 1 and measurer.turns == 0
    assert [t.status for t in report.trials] == ["ok"]
    assert report.trials[0].config == {"ti": 1, "tj": 1, "tk": 1, "parallel": True}
    assert report.default_time_s == report.best_time_s is not None
    assert budget.elapsed() == pytest.approx(15.0 + COMPILE_S + CHECK_S)


def test_final_turns_past_the_budget_stop_after_the_first(monkeypatch) -> None:
    """Turns that take far longer than their estimate: the first is taken by every
    finalist (it ranks them), the next ones only if they fit."""
    _, measurer, budget, _ = fake_run(monkeypatch, budget_s=10.0, setup_s=1.0, turns_slower=20)
    assert measurer.turns == CONFIRM + 1
    assert budget.elapsed() > 10.0


def test_budget_counts_phases_and_fits_batches() -> None:
    clock = FakeClock()
    budget = Budget(10.0, clock)
    with budget.phase("setup"):
        clock.now += 2.0
    budget.compiled(4.0, count=4, jobs=2)  # two rounds: 2 s each
    budget.measured(0.5)
    budget.measured(1.5)
    assert budget.phases == {"setup": 2.0} and budget.left() == 8.0
    assert budget.batch_s(3, jobs=2) == 2 * 2.0 + 3 * 1.0
    assert budget.fitting(8, jobs=2) == 4  # 2 rounds + 4 checks: 8 s
    assert budget.fitting(8, jobs=2, reserve=lambda n: 0.5 * n) == 2
    clock.now += 9.0
    assert budget.fitting(8, jobs=2) == 0


def test_compiles_are_expected_in_parallel_once_they_ran_so() -> None:
    budget = Budget(10.0, FakeClock())
    budget.compiled(1.0, count=1, jobs=2)  # one candidate: nothing known of parallel runs
    assert budget.compile_s(4, jobs=2) == 4.0
    budget.compiled(1.0, count=2, jobs=2)  # two at once took one's time
    assert budget.compile_s(4, jobs=2) == 2.0
    assert budget.compile_s(4, jobs=0) == 4.0


def test_a_tuning_run_stops_near_its_budget() -> None:
    """A real run of 432 configs with a 1 s budget: only the setup and the default params
    (their time is in the report) may run past it; the margin is for a loaded machine."""
    started = time.perf_counter()
    report = tuner.tune(budget_big_space, EXAMPLE, budget_s=1, jobs=2, progress=False)
    wall = time.perf_counter() - started
    measured = sum(1 for t in report.trials if t.status not in ("same", "invalid"))
    assert 0 < measured < 432 and report.best is not None and report.per_minute > 0
    fixed = report.phases["setup"] + report.phases["default params"]
    assert report.elapsed_s < max(1.0, fixed) + 3.0
    assert wall < report.elapsed_s + 5.0


# ------------------------------------------------- the example's arrays, made once


@kd.kernel
def budget_doubles_in_place(x):
    i = kd.indices(x.shape[0])
    x[i] = x[i] * 2.0


@budget_doubles_in_place.schedule(kd.cpu)
def _(s):
    s.split("i", s.param("f", [4, 8, 16]))


def test_example_arrays_are_made_once_per_shape(monkeypatch) -> None:
    """In the measuring process: one fill for the setup, and no array the size of the
    example's for any candidate (its check and timing reuse the copies); a kernel that
    writes its input still finds the example's values at each check."""
    made = []
    real = measure.make_arguments

    def counting(*args: object) -> dict[str, object]:
        made.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(measure, "make_arguments", counting)
    example = {"x": kd.spec((1 << 20,), kd.f32)}  # 4 MiB
    session = _Session(budget_doubles_in_place, example, jobs=0)
    candidates = []
    for f in (4, 8, 16):
        scheduled = budget_doubles_in_place.scheduled_ir(session.traced, {"f": f})
        key = backend.kernel_key(scheduled, False, False)
        obj = backend.build_object(scheduled, key, False, False)
        candidates.append(session.candidate(scheduled, obj))
    bench = measure.Bench()
    bench.setup(session.examples, seed=0, threads=runtime.get_num_threads())
    bench.reference_run(candidates[0])
    arrays = [id(a) for copy in bench.copies for a in copy]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for candidate in candidates + candidates:
            assert bench.measure(candidate, 0.001, None).status == "ok"
        assert bench.measure(candidates[1], 0.001, None, check=False).status == "ok"
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(made) == 1
    assert peak < 4 << 20
    assert [id(a) for copy in bench.copies for a in copy] == arrays
    np.testing.assert_array_equal(bench.reference[0], 2 * bench.inputs[0])


def test_a_tuning_run_sets_up_the_measuring_process_once(monkeypatch) -> None:
    asked: list[str] = []
    real = measure.Worker.ask

    def counting(self, request, timeout=None):
        asked.append(request[0])
        return real(self, request, timeout)

    monkeypatch.setattr(measure.Worker, "ask", counting)
    example = {"x": kd.spec((1000,), kd.f32)}
    report = tuner.tune(budget_doubles_in_place, example, budget_s=30, jobs=0, progress=False)
    assert len(report.trials) == 3
    assert asked.count("setup") == 1 and asked.count("reference_run") == 1
    assert asked.count("measure") >= 3


# ------------------------------------------------------- the comparison in chunks


def test_compare_finds_the_first_difference_past_the_first_chunk(monkeypatch) -> None:
    monkeypatch.setattr(measure, "COMPARE_CHUNK", 7)
    want = np.linspace(-1, 1, 50, dtype=np.float32)
    got = want.copy()
    got[23] += 0.5
    got[40] += 0.5
    assert measure.compare([want, got], [want, want]) == (
        f"output 1 differs: {float(got[23])!r} vs {float(want[23])!r} at flat index 23"
    )
    ints = np.arange(30, dtype=np.int32).reshape(5, 6)
    wrong = ints.copy()
    wrong[3, 1] = -1
    assert measure.compare([wrong], [ints]) == "output 0 differs at 19 (integers must match)"
    rounded = want * np.float32(1 + 1e-6)  # reassociation's rounding: not a difference
    assert measure.compare([rounded, ints], [want, ints]) is None


# ------------------------------------------------------------ the CLI's explanation


def _report(elapsed: float, phases: dict[str, float]) -> TuneReport:
    report = TuneReport("kern", ((64, 64),), {"p": (1, 2)}, budget_s=5.0)
    report.elapsed_s, report.phases = elapsed, phases
    return report


def test_the_summary_explains_a_run_over_its_budget() -> None:
    slow_default = {"setup": 4.0, "default params": 3.0, "search": 0.0, "final turns": 0.0}
    late = {"setup": 1.0, "default params": 1.0, "search": 3.5, "final turns": 1.5}
    on_time = {"setup": 1.0, "default params": 1.0, "search": 2.5, "final turns": 0.7}
    lines = summary([_report(7.0, slow_default), _report(7.0, late), _report(5.2, on_time)])
    over = [line for line in lines.splitlines() if "over budget" in line]
    assert len(over) == 2, lines
    shape = format_shape(((64, 64),))
    assert f"over budget kern {shape}: 7.00 s of a 5.00 s budget" in over[0]
    assert "(setup 4.00 s, default params 3.00 s)" in over[0]
    assert "default params (always measured: the baseline)" in over[0]
    assert "by themselves" in over[0]
    assert "search 3.50 s, final turns 1.50 s" in over[1]
    assert "took longer than the candidates before them predicted" in over[1]
