"""The Schedule recipe, from a user probe: tuple choices match a config saved as JSON,
`replay` onto what `kernel.ir(...)` returns gives the kernel's own IR, and a schedule's
globals are watched like the kernel's."""

from __future__ import annotations

import json

import numpy as np
import pytest

import kdsl as kd
from kdsl.errors import ScheduleError
from kdsl.ir.passes import lower
from kdsl.ir.printer import format_kernel
from kdsl.schedule.recipe import Schedule


@kd.kernel
def transpose(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[j, i] = x[i, j]


@kd.kernel
def gather_rows(x, idx, y):
    i, j = kd.indices(idx.shape[0], x.shape[1])
    y[i, j] = x[idx[i], j]


@gather_rows.schedule(kd.cpu)
def _(s):
    s.vectorize("j", 8)


X = np.arange(6 * 10, dtype=np.float32).reshape(6, 10)


def transposed() -> Schedule:
    return Schedule(lower(transpose.ir(X, X.T.copy()).kernel))


# ------------------------------------------------------------ choices by JSON text


def test_a_tuple_choice_matches_the_list_a_saved_config_holds() -> None:
    """A tuned config goes through JSON, which gives a tuple back as a list: the choice
    is still the configured one (it was "not one of the choices": stale tuning)."""
    config = json.loads(json.dumps({"order": ("j", "i")}))
    s = Schedule(transposed().kernel, config=config)
    order = s.param("order", [("i", "j"), ("j", "i")])
    assert order == ("j", "i") and isinstance(order, tuple)  # as the schedule wrote it
    assert s.chosen == {"order": ("j", "i")}
    s.reorder(*order)
    assert 's.reorder("j", "i")' in str(s)


def test_tuples_nested_in_lists_match_too() -> None:
    s = Schedule(transposed().kernel, config={"tiles": [[4, 16], [2, 2]]})
    assert s.param("tiles", [[(8, 8), (1, 1)], [(4, 16), (2, 2)]]) == [(4, 16), (2, 2)]


def test_a_bool_is_not_the_choice_1() -> None:
    """(Python's `True in (1, 2)` said it was.)"""
    with pytest.raises(ScheduleError, match=r"configured value True is not one of \[1, 2\]"):
        Schedule(transposed().kernel, config={"f": True}).param("f", [1, 2])


def test_a_param_declared_again_with_its_choices_as_lists_is_the_same_param() -> None:
    s = transposed()
    s.param("order", [("i", "j"), ("j", "i")])
    assert s.param("order", [["i", "j"], ["j", "i"]]) == ["i", "j"]  # as this call wrote it


# ------------------------------------------------------------------------- replay


def test_replay_onto_what_ir_returns_gives_the_kernels_own_ir() -> None:
    """The trace is lowered first, as the kernel's own schedule is: the gather's checked
    load (`x[idx[i], j]?`) was missing."""
    x = np.ones((9, 13), np.float32)
    idx = np.array([1, 0, 8], np.int64)
    y = np.zeros((3, 13), np.float32)
    own = gather_rows.schedule_of(x, idx, y)
    recipe = own.to_json()
    for traced in (gather_rows.ir(x, idx, y), gather_rows.ir(x, idx, y).kernel):
        replayed = Schedule.replay(recipe, traced)
        assert format_kernel(replayed.kernel) == format_kernel(own.kernel)
        assert "x[idx[i], j]?" in str(replayed.kernel)  # a Kernel prints as its IR
    lowered = lower(gather_rows.ir(x, idx, y).kernel)  # lowered already: as it is
    assert Schedule.replay(recipe, lowered).kernel == own.kernel


# ------------------------------------------------------------- a schedule's globals

SCHEDULE_WITH_A_GLOBAL = """
import kdsl as kd

@kd.kernel
def scale5(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i, j] = x[i, j] * 5.0

TILE = 8

@scale5.schedule(kd.cpu)
def _(s):
    o, i = s.split("j", TILE)
    s.vectorize(i, TILE)
"""


def test_a_global_the_schedule_reads_compiles_again_when_rebound() -> None:
    """A notebook cell sets `TILE = 4` after a call: calls, lowered() and schedule_of()
    all use the new value (the calls kept the width-8 code)."""
    scope: dict[str, object] = {}
    exec(compile(SCHEDULE_WITH_A_GLOBAL, "<notebook cell>", "exec"), scope)
    kernel = scope["scale5"]
    x = np.arange(5 * 37, dtype=np.float32).reshape(5, 37)
    y = np.zeros_like(x)
    kernel(x, y)
    assert "vectorized(8)" in str(kernel.lowered(x, y))
    scope["TILE"] = 4
    y[:] = 0
    kernel(x, y)
    np.testing.assert_array_equal(y, x * 5.0)
    assert kernel.stats()["compilations"] == 2
    lowered = str(kernel.lowered(x, y))
    assert "vectorized(4)" in lowered and "vectorized(8)" not in lowered
    assert str(kernel.schedule_of(x, y)).splitlines()[-1] == 's.vectorize("ji", 4)'
    scope["TILE"] = 4  # the same value again: no new compile
    kernel(x, y)
    assert kernel.stats()["compilations"] == 2
