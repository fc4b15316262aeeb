"""Tuning results, from a user probe: tuple choices survive the database, a database of
another layout is set aside, an incomplete config is refused, re-importing an export
keeps the rows' source, and a dropped candidate's reason is one clean line."""

from __future__ import annotations

import json
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest

import kdsl as kd
from kdsl.autotune.database import TuningDB
from kdsl.autotune.strategies import make_strategy
from kdsl.autotune.tuner import Trial, TuneReport, observe, one_line, tune
from kdsl.kernel import KernelFunction
from tests.autotune.test_database import make_entry
from tests.autotune.test_dispatch import record


def transpose_kernel(name: str) -> KernelFunction:
    """y = xᵀ, its loop order a param whose choices are tuples."""

    def transpose(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[j, i] = x[i, j]

    kernel = kd.kernel(transpose, name=name)

    @kernel.schedule(kd.cpu)
    def _(s):
        s.reorder(*s.param("order", [("i", "j"), ("j", "i")]))

    return kernel


def arrays() -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(24 * 40, dtype=np.float32).reshape(24, 40)
    return x, np.zeros((40, 24), np.float32)


# ------------------------------------------------------------------ tuple choices


@pytest.mark.usefixtures("cache_dir")
def test_a_tuned_tuple_choice_is_used_by_later_calls() -> None:
    """The database holds ("j", "i") as the JSON list ["j", "i"]: every call said "stale
    tuning ignored" (and tuning again could not help)."""
    kernel = transpose_kernel("probe5_tuple_db")
    x, y = arrays()
    record(kernel, (x, y), {"order": ("j", "i")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel(x, y)
    np.testing.assert_array_equal(y, x.T)
    assert kernel.stats()["tuning"] == {"24x40, 40x24": "tuned"}
    assert kernel.schedule_of(x, y).chosen == {"order": ("j", "i")}


@pytest.mark.usefixtures("cache_dir")
def test_autotune_then_call_in_one_process_uses_the_tuned_tuple() -> None:
    kernel = transpose_kernel("probe5_tuple_inproc")
    x, y = arrays()
    (report,) = kernel.autotune(x, y, budget=30, jobs=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel(x, y)
    np.testing.assert_array_equal(y, x.T)
    assert kernel.stats()["tuning"] == {"24x40, 40x24": "tuned"}
    assert kernel.schedule_of(x, y).chosen == report.best


# ----------------------------------------------------- a database of another layout


def foreign_database(path: Path, version: int) -> None:
    """A valid SQLite file whose `tuning` table has other columns (an older kdsl's)."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE tuning (a INTEGER)")
    db.execute("INSERT INTO tuning VALUES (1)")
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


@pytest.mark.parametrize("version", [0, 1])
def test_a_tuning_table_of_other_columns_is_set_aside_and_rebuilt(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / "tuning.sqlite"
    foreign_database(path, version)
    db = TuningDB(path)
    with pytest.warns(RuntimeWarning, match=r"has the columns \(a\).*started a new one"):
        assert db.entries() == []
    db.record(make_entry())
    assert db.entries() == [make_entry()]
    (aside,) = tmp_path.glob("tuning.sqlite.corrupt-*")
    assert sqlite3.connect(aside).execute("SELECT a FROM tuning").fetchall() == [(1,)]


def test_calls_and_the_cli_recover_from_a_foreign_database(cache_dir: Path, capsys) -> None:
    """Every call warned "can't read tuning results" with the fix "set KDSL_CACHE_DIR to
    a writable directory", and `kdsl cache list` exited 1."""
    from kdsl.cli import main

    cache_dir.mkdir(parents=True, exist_ok=True)
    foreign_database(cache_dir / "tuning.sqlite", 0)
    kernel = transpose_kernel("probe5_foreign")
    x, y = arrays()
    with pytest.warns(RuntimeWarning, match="moved it to") as told:
        kernel(x, y)
    assert not [w for w in told if "writable" in str(w.message)]
    np.testing.assert_array_equal(y, x.T)
    assert main(["cache", "list"]) == 0
    assert "tuning results: none" in capsys.readouterr().out


# ------------------------------------------------------------- an incomplete config


def two_param_kernel(name: str) -> KernelFunction:
    def affine(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 2.0 + 0.5

    kernel = kd.kernel(affine, name=name)

    @kernel.schedule(kd.cpu)
    def _(s):
        io, ii = s.split("i", s.param("t", [16, 64]))
        if s.param("vectorized", [False, True]):
            s.vectorize(ii, s.param("w", [4, 8]))  # reached only when vectorized

    return kernel


@pytest.mark.usefixtures("cache_dir")
def test_a_config_missing_a_param_is_refused_not_called_tuned() -> None:
    """An imported `{"t": 64}` for params t and vectorized showed as "tuned", the other
    param silently taking its first choice."""
    kernel = two_param_kernel("probe5_incomplete")
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    y = np.zeros_like(x)
    record(kernel, (x, y), {"t": 64})
    with pytest.warns(RuntimeWarning, match=r"give no value for 'vectorized' \(one of"):
        kernel(x, y)
    np.testing.assert_allclose(y, x * 2.0 + 0.5, rtol=1e-6)
    assert kernel.stats()["tuning"] == {"1000, 1000": "stale tuning ignored (default params)"}


@pytest.mark.usefixtures("cache_dir")
def test_a_param_that_only_another_choice_reaches_may_be_left_out() -> None:
    """The autotuner's configs hold the params the default choices reach: `w`, read
    only when vectorized, is not among them."""
    kernel = two_param_kernel("probe5_dependent")
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    y = np.zeros_like(x)
    record(kernel, (x, y), {"t": 64, "vectorized": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel(x, y)
    np.testing.assert_allclose(y, x * 2.0 + 0.5, rtol=1e-6)
    assert kernel.stats()["tuning"] == {"1000, 1000": "tuned"}
    assert kernel.schedule_of(x, y).chosen == {"t": 64, "vectorized": True, "w": 4}


# ------------------------------------------------------------------ re-importing


def test_reimporting_an_export_keeps_the_source_of_unchanged_rows(tmp_path: Path) -> None:
    db = TuningDB(tmp_path / "tuning.sqlite")
    db.record(make_entry(0))
    db.record(make_entry(1))
    exported = tmp_path / "export.json"
    db.export(exported)
    assert db.import_(exported) == 2
    assert [e.source for e in db.entries()] == ["autotune", "autotune"]

    doc = json.loads(exported.read_text())
    doc["entries"][1]["time_s"] = 5e-4  # another result for the same key
    exported.write_text(json.dumps(doc))
    db.import_(exported)
    assert [(e.source, e.time_s) for e in db.entries()] == [("autotune", 1e-3), ("import", 5e-4)]


# ------------------------------------------------------ dropped candidates' reasons


def test_a_dropped_candidates_reason_is_one_line_without_repeats() -> None:
    """It read "compile-error error: CompileError: in kernel 'k': ..." and went on with
    the source excerpt and the fix."""
    raw = (
        "CompileError: in kernel 'axpy': loop 'io' can't be vectorized: the extent of "
        "loop 'ii' inside it differs between lanes\n"
        '  File "user.py", line 5\n    y[i] = 2.0 * x[i]\n    ^^^^\n  fix: vectorize ii'
    )
    report = TuneReport("axpy", ((8,), (8,)), {"f": (1, 2)})
    observe(
        report,
        make_strategy("exhaustive", report.space),
        Trial({"f": 2}, "compile-error", detail=raw),
    )
    (trial,) = report.failures()
    assert trial.detail == (
        "loop 'io' can't be vectorized: the extent of loop 'ii' inside it differs between lanes"
    )
    assert one_line("RuntimeError: LLVM failed\nmore", "axpy") == "RuntimeError: LLVM failed"


HISTOGRAM_EXAMPLE = {
    "idx": kd.spec((20000,), kd.i64, low=0, high=16),
    "h": kd.spec((16,), kd.i64),
}


@kd.kernel
def probe5_histogram(idx, h):
    i = kd.indices(idx.shape[0])
    h[idx[i]] += 1


@probe5_histogram.schedule(kd.cpu)
def _(s):
    if s.param("how", ["serial", "vectorized"]) == "vectorized":
        s.vectorize("i", 8)  # a false promise: the subscripts collide


@pytest.mark.usefixtures("cache_dir")
def test_a_wrong_candidate_names_the_parameter_it_got_wrong() -> None:
    """It said "output 1 differs at 0"."""
    report = tune(probe5_histogram, HISTOGRAM_EXAMPLE, budget_s=30, jobs=0, progress=False)
    (wrong,) = report.failures()
    assert wrong.status == "wrong" and wrong.config == {"how": "vectorized"}
    assert wrong.detail.startswith("'h' differs at ") and "\n" not in wrong.detail
