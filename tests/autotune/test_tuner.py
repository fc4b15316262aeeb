"""The autotuner: exhaustive search of a small space, refused configs, a new process
that runs the tuned kernel without tuning or compiling, and the example's data (the
user's arrays, or random values that an index array can't take). The time budget:
test_budget.py."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

import kdsl as kd
from kdsl.autotune import registry
from kdsl.autotune.budget import Budget
from kdsl.autotune.measure import Outcome
from kdsl.autotune.strategies import config_key
from kdsl.autotune.tuner import CONFIRM, TuneReport, _confirm, tune

ROOT = Path(__file__).resolve().parents[2]

# The kernel's name is part of its identity: xdist workers share the cache directory, and
# each that runs a test of this module tunes the kernel; each tunes its own.
MATMUL_NAME = f"tuner_matmul_{os.getpid()}"
# Written to a file so that a second process can import the very same kernel.
MATMUL_SOURCE = f"""
import kdsl as kd

@kd.kernel(name="{MATMUL_NAME}")
def tuner_matmul(a, b, c):
    i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
    c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)

@tuner_matmul.schedule(kd.cpu)
def _(s):
    io, jo, ii, ji = s.tile("i", "j", s.param("ti", [4, 8]), s.param("tj", [16, 32]))
    s.vectorize(ji, 16)
    s.parallelize(io)
"""
M, K, N = 64, 48, 80  # not square: a mixed-up dimension shows
MATMUL_EXAMPLE = {
    "a": kd.spec((M, K), kd.f32),
    "b": kd.spec((K, N), kd.f32),
    "c": kd.spec((M, N), kd.f32),
}
MATMUL_SHAPE = ((M, K), (K, N), (M, N))

# Run in a fresh interpreter: call the tuned kernel, report its stats and its error.
CALLER_SCRIPT = """
import importlib.util, json, sys
import numpy as np

spec = importlib.util.spec_from_file_location("tuned_kernels", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
rng = np.random.default_rng(7)
a = rng.standard_normal((64, 48), dtype=np.float32)
b = rng.standard_normal((48, 80), dtype=np.float32)
c = np.zeros((64, 80), np.float32)
module.tuner_matmul(a, b, c)
error = float(np.max(np.abs(c - a.astype(np.float64) @ b.astype(np.float64))))
print(json.dumps({"stats": module.tuner_matmul.stats(), "error": error}))
"""


def import_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tuned_matmul(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TuneReport]:
    """The matmul's source file, and the report of tuning it once (2 x 2 configs)."""
    path = tmp_path_factory.mktemp("tuner") / "tuned_kernels.py"
    path.write_text(MATMUL_SOURCE)
    kernel = import_file(path).tuner_matmul
    report = tune(kernel, MATMUL_EXAMPLE, budget_s=30, jobs=2, progress=False)
    return path, report


def test_small_space_is_searched_exhaustively(tuned_matmul: tuple[Path, TuneReport]) -> None:
    _, report = tuned_matmul
    assert report.space == {"ti": (4, 8), "tj": (16, 32)}
    every = [{"ti": ti, "tj": tj} for ti, tj in itertools.product((4, 8), (16, 32))]
    assert sorted(config_key(t.config) for t in report.trials) == sorted(map(config_key, every))
    assert {t.status for t in report.trials} <= {"ok", "slow"}, report.trials
    first = report.trials[0]  # the default config leads, measured with no cutoff
    assert first.config == {"ti": 4, "tj": 16} and first.status == "ok"
    # the fastest few and the default are measured again at the end, taking turns, and
    # those times alone rank them (a search time may be a fast moment's: see
    # test_the_winner_is_ranked_by_the_final_turns_alone)
    assert report.default_time_s is not None

    ok = sorted((t for t in report.trials if t.status == "ok"), key=lambda t: t.time_s)
    finalists = [t.config for t in ok[:CONFIRM]] + [first.config]
    assert report.best in finalists
    assert report.best_time_s <= report.default_time_s
    assert report.speedup == pytest.approx(report.default_time_s / report.best_time_s)
    assert report.per_minute > 0
    assert report.failures() == []


def test_best_config_is_recorded_once(tuned_matmul: tuple[Path, TuneReport]) -> None:
    _, report = tuned_matmul
    (entry,) = registry.database().entries(MATMUL_NAME)
    assert entry.shape == MATMUL_SHAPE == report.shape
    assert entry.config == report.best
    assert entry.time_s == report.best_time_s
    assert entry.default_time_s == report.default_time_s
    assert entry.source == "autotune"


def test_new_process_runs_tuned_kernel_without_compiling(
    tuned_matmul: tuple[Path, TuneReport], tmp_path: Path
) -> None:
    path, _ = tuned_matmul
    script = tmp_path / "call_tuned.py"
    script.write_text(CALLER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # KDSL_CACHE_DIR: the tests' (conftest.py)
    done = subprocess.run(
        [sys.executable, str(script), str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    stats = result["stats"]
    assert stats["tuning"] == {"64x48, 48x80, 64x80": "tuned"}
    assert stats["compilations"] == 1
    assert stats["objects_loaded"] == stats["compilations"]  # no LLVM in this process
    assert result["error"] < 1e-3


@kd.kernel
def tuner_refusals(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i, j] = x[i, j] * 3.0 - 1.0


@tuner_refusals.schedule(kd.cpu)
def _(s):
    s.split("j", s.param("f", [8, 0, 32]))  # splitting by 0 is refused


def test_refused_choice_is_invalid_and_tuning_goes_on() -> None:
    example = {"x": kd.spec((20, 100), kd.f32), "y": kd.spec((20, 100), kd.f32)}
    report = tune(tuner_refusals, example, budget_s=30, jobs=0, progress=False)
    by_factor = {t.config["f"]: t for t in report.trials}
    assert sorted(by_factor) == [0, 8, 32]
    refused = by_factor[0]
    assert refused.status == "invalid" and refused.time_s is None
    assert "split" in refused.detail and "factor" in refused.detail
    assert {by_factor[8].status, by_factor[32].status} <= {"ok", "slow"}
    assert report.best in ({"f": 8}, {"f": 32})
    assert refused not in report.failures()  # a refused schedule is not a dropped candidate


def test_example_order_does_not_matter() -> None:
    """An example dict lists parameters in any order; each gets its own shape."""
    example = {"y": kd.spec((7, 40), kd.f32), "x": kd.spec((7, 40), kd.f32)}
    report = tune(tuner_refusals, example, budget_s=30, jobs=0, progress=False)
    assert report.shape == ((7, 40), (7, 40))
    mixed = {"y": kd.spec((40, 7), kd.f32), "x": kd.spec((7, 40), kd.f32)}
    with pytest.raises(kd.KdslError, match="reference run failed.*ShapeError"):  # x, y disagree
        tune(tuner_refusals, mixed, budget_s=30, jobs=0, progress=False)


@kd.kernel
def tuner_gather(table, idx, out):
    i = kd.indices(idx.shape[0])
    out[i] = table[idx[i]]


@tuner_gather.schedule(kd.cpu)
def _(s):
    s.split("i", s.param("f", [8, 16]))


def test_arrays_are_tuned_on_their_own_values() -> None:
    """Random stand-ins for `idx` would subscript `table` out of bounds."""
    table = np.arange(50, dtype=np.float32)
    idx = np.arange(40, dtype=np.int64) * 7 % 50
    out = np.zeros(40, np.float32)
    (report,) = tuner_gather.autotune(table, idx, out, budget=2, jobs=0, progress=False)
    assert report.best is not None and report.failures() == []
    assert not out.any()  # candidates wrote copies


@kd.kernel
def tuner_fortran(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i, j] = x[i, j] * 2.0


@tuner_fortran.schedule(kd.cpu)
def _(s):
    s.split("i", s.param("ti", [4, 8]))


def test_fortran_ordered_arrays_are_tuned_as_they_are_called() -> None:
    """Their copies and placeholders were C-ordered: the tuning made was for the C
    signature, and a Fortran call found none."""
    x = np.asfortranarray(np.arange(60, dtype=np.float32).reshape(6, 10))
    y = np.asfortranarray(np.zeros((6, 10), np.float32))
    tuner_fortran.autotune(x, y, budget=2, jobs=0, progress=False)
    tuner_fortran(x, y)
    assert list(tuner_fortran.stats()["tuning"].values()) == ["tuned"]
    np.testing.assert_array_equal(y, 2 * x)


def test_random_index_data_is_named_and_a_spec_range_fixes_it() -> None:
    example = {
        "table": kd.spec((50,), kd.f32),
        "idx": kd.spec((40,), kd.i64),
        "out": kd.spec((40,), kd.f32),
    }
    with pytest.raises(kd.KdslError) as raised:
        tune(tuner_gather, example, budget_s=2, jobs=0, progress=False)
    message = str(raised.value)
    assert "random data failed: a subscript of 'table'" in message
    assert "integer array 'idx' holds random values" in message
    assert "tuner_gather.autotune(table, idx, out)" in message
    assert "'idx': kd.spec((40,), kd.i64, low=0, high=ROWS)" in message
    example["idx"] = kd.spec((40,), kd.i64, low=0, high=50)
    report = tune(tuner_gather, example, budget_s=2, jobs=0, progress=False)
    assert report.best is not None and report.failures() == []


class _Turns:
    """A measurer whose times come from a table (one per candidate), as if each config's
    speed were steady while the search had timed them at different moments."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    def measure(self, candidate: str, *_: object, **__: object) -> Outcome:
        return Outcome("ok", self.seconds[candidate])


def test_the_winner_is_ranked_by_the_final_turns_alone() -> None:
    """The search timed "fast" in a fast moment (1 ms) and the default in a slow one;
    taking turns at the end, "steady" is the faster and "fast" the slowest: the earlier
    times must not decide."""
    space = {"p": ("default", "fast", "steady")}
    session = SimpleNamespace(measured={p: ({"p": p}, p) for p in space["p"]})
    report = TuneReport("k", ((8,),), space)
    searched = {"default": 3e-3, "fast": 1e-3, "steady": 2e-3}
    turns = _Turns({"default": 2e-3, "fast": 2.5e-3, "steady": 1.5e-3})
    _confirm(session, turns, searched, report, 0.01, Budget(60))  # type: ignore[arg-type]
    assert report.best == {"p": "steady"} and report.best_time_s == 1.5e-3
    assert report.default_time_s == 2e-3


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"jobs": -1}, "jobs=-1: jobs is the number of compile workers"),
        ({"jobs": 1.5}, "jobs=1.5"),
        ({"jobs": "x"}, "jobs='x'"),
        ({"target": "gpu"}, "target='gpu' is not a kdsl target"),
        ({"strategy": None}, "strategy=None is not a search strategy"),
    ],
)
def test_autotune_options_of_the_wrong_kind_are_named(options, complaint) -> None:
    """jobs=-1 waited forever (no worker starts); the others were Python's errors."""
    x = np.ones(8, np.float32)
    with pytest.raises(kd.KernelArgumentError, match=complaint.replace("(", r"\(")):
        tuner_fortran.autotune(x, x.copy(), budget=1, progress=False, **options)
