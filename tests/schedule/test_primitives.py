"""Schedule primitives: what each does to a traced kernel's loops, every refusal and its
message, and the schedule as data (printing, JSON, params)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest

import kdsl as kd
from kdsl.ir.nodes import Kernel, Loop, LoopExec, LoopKind
from kdsl.ir.passes import lower
from kdsl.ir.passes.expand import expand_schedule
from kdsl.ir.printer import format_expr, format_kernel
from kdsl.ir.visit import walk_stmts
from kdsl.kernel import KernelFunction
from kdsl.schedule import tree
from kdsl.schedule.recipe import Schedule
from kdsl.targets.interp.interpreter import interpret
from tests.helpers import random_array

# --------------------------------------------------------------------------- kernels


@kd.kernel
def matmul(A, B, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)


@kd.kernel(strict_fp=True)
def strict_matmul(A, B, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)


@kd.kernel
def sum_rows_cols(x, out):
    i, j, k = kd.indices(x.shape[0], x.shape[1], x.shape[2])
    out[i] = kd.sum(x[i, j, k], over=(j, k))


@kd.kernel
def two_steps(x, y, z):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * 2
    z[i] = y[i] + 1


@kd.kernel
def shifted(x, y, z):
    i = kd.indices(x.shape[0] - 1)
    y[i] = x[i] * 2
    z[i] = y[i + 1] + 1


@kd.kernel
def square(x, y):
    for i, j in kd.grid(8, 8):
        y[i, j] = x[i, j] * x[i, j]


@kd.kernel
def ordered(x, y):
    for i in kd.range(8):
        for j in kd.range(8):
            y[i, j] = x[i, j] + 1


@kd.kernel
def row_scan(x, y):
    for i in kd.range(x.shape[0]):
        acc = kd.local(0.0)
        for j in kd.range(x.shape[1]):
            acc += x[i, j]
        y[i] = acc


@kd.kernel
def total(x, y):
    acc = kd.local(0.0)
    for i in kd.grid(x.shape[0]):
        acc += x[i]
    for k in kd.grid(x.shape[0]):
        y[k] = acc


@kd.kernel
def update_outside(x, y):
    acc = kd.local(0.0)
    for i in kd.grid(x.shape[0]):
        acc += x[i, 0]
        j = kd.indices(x.shape[1])
        y[i, j] = x[i, j] * 2


@kd.kernel
def guarded(x, y):
    for i in kd.grid(x.shape[0]):
        j = kd.indices(x.shape[1])
        with kd.when(x[i, 0] > 0):
            y[i, j] = x[i, j]


@kd.kernel
def two_rows(x, y, z):
    for i in kd.grid(x.shape[0]):
        j = kd.indices(x.shape[1])
        y[i, j] = x[i, j] * 2
        z[i, j] = y[i, j] + 1


@kd.kernel
def between(x, y, z):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * 2
    z[0] = 5.0
    z[i] = y[i] + 1


@kd.kernel
def two_sums(x, total, squares):
    i, j = kd.indices(x.shape[0], x.shape[1])
    total[i] = kd.sum(x[i, j], over=j)
    squares[i] = kd.sum(x[i, j] * x[i, j], over=j)


@kd.kernel
def different_ranges(x, y, z):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * 2
    k = kd.indices(x.shape[0] - 1)
    z[k] = x[k + 1]


@kd.kernel
def two_ranges(x, y):
    for i in kd.range(x.shape[0]):
        y[i] = x[i] * 2
    for k in kd.range(x.shape[0]):
        y[k] = y[k] + 1


RNG = np.random.default_rng(7)
A, B = random_array(RNG, (13, 17), np.float32), random_array(RNG, (17, 11), np.float32)
C = np.empty((13, 11), np.float32)
V = random_array(RNG, (9,), np.float32)
M = random_array(RNG, (8, 8), np.float32)


def schedule(k: KernelFunction, *args: object, **options: object) -> Schedule:
    return Schedule(lower(k.ir(*args).kernel), **options)  # type: ignore[arg-type]


def mm(**options: object) -> Schedule:
    return schedule(matmul, A, B, C, **options)


def loops(kernel: Kernel) -> list[str]:
    """Each loop as 'var in extent: kind' (and how it runs, if not serially), indented."""
    out = []
    for path, s in tree.positions(kernel.body):
        if isinstance(s, Loop):
            depth = sum(isinstance(x, Loop) for x in tree.enclosing(kernel.body, path))
            how = "" if s.exec is LoopExec.SERIAL else f" {s.exec.value}/{s.width}"
            out.append(f"{'  ' * depth}{s.var} in {format_expr(s.extent)}: {s.kind.value}{how}")
    return out


def assert_loops(kernel: Kernel, *expected: str) -> None:
    assert loops(kernel) == list(expected), format_kernel(kernel)


@contextmanager
def refused(step: str, what: str, loops: str | None, fix: str, call: str = "") -> Iterator[None]:
    """The step in the `with` block is refused with a message naming the step, the
    reason, the loops there are, the user's line (this file's) and a fix."""
    with pytest.raises(kd.ScheduleError) as info:
        yield
    err, msg = info.value, str(info.value)
    assert f"schedule step {step} is not possible: {what}" in msg, msg
    if loops is not None:
        assert f"(the loops are: {loops})" in msg, msg
    assert err.loc is not None and err.loc.file == __file__, msg
    line = err.loc.text.strip()
    assert line == (call or f"s.{step}"), msg
    assert f'File "{__file__}", line {err.loc.line}\n    {line}' in msg, msg
    assert err.fix is not None and fix in err.fix and msg.endswith(f"fix: {err.fix}"), msg


# ----------------------------------------------------------------- transformations


def test_split_makes_an_outer_and_a_tail_guarded_inner_loop():
    s = mm()
    assert s.split("i", 4) == ("io", "ii")
    assert_loops(
        s.kernel,
        "io in (A.shape[0] + 3) // 4: parallel",
        "  ii in min(4, A.shape[0] - io * 4): parallel",
        "    j in B.shape[1]: parallel",
        "      k in A.shape[1]: reduction",
    )
    assert "C[io * 4 + ii, j] = sum_k" in format_kernel(s.kernel)


def test_split_of_a_constant_extent_by_a_divisor_has_constant_tiles():
    s = schedule(square, M, M.copy())
    assert s.split("j", 4) == ("jo", "ji")
    assert s.split("i", 3) == ("io", "ii")
    assert_loops(
        s.kernel,
        "io in 3: parallel",
        "  ii in min(3, 8 - io * 3): parallel",
        "    jo in 2: parallel",
        "      ji in 4: parallel",
    )


def test_split_keeps_a_reduction_a_reduction():
    s = mm()
    s.split("k", 8)
    assert_loops(
        s.kernel,
        "i in A.shape[0]: parallel",
        "  j in B.shape[1]: parallel",
        "    ko in (A.shape[1] + 7) // 8: reduction",
        "      ki in min(8, A.shape[1] - ko * 8): reduction",
    )


def test_tile_splits_two_loops_and_orders_the_pieces():
    s = mm()
    assert s.tile("i", "j", 4, 8) == ("io", "jo", "ii", "ji")
    assert_loops(
        s.kernel,
        "io in (A.shape[0] + 3) // 4: parallel",
        "  jo in (B.shape[1] + 7) // 8: parallel",
        "    ii in min(4, A.shape[0] - io * 4): parallel",
        "      ji in min(8, B.shape[1] - jo * 8): parallel",
        "        k in A.shape[1]: reduction",
    )
    assert [str(step) for step, _ in s.steps] == [
        'tile("i", "j", 4, 8)',
    ]


def test_reorder_of_a_perfect_nest_permutes_it():
    s = schedule(square, M, M.copy())
    s.reorder("j", "i")
    assert_loops(s.kernel, "j in 8: parallel", "  i in 8: parallel")


def test_reorder_distributes_statements_around_the_inner_loop():
    """The accumulator crosses the split loops, so it becomes a row buffer."""
    s = mm()
    s.reorder("k", "j")
    assert_loops(
        s.kernel,
        "i in A.shape[0]: parallel",
        "  j.1 in B.shape[1]: parallel",
        "  k in A.shape[1]: reduction",
        "    j in B.shape[1]: parallel",
        "  j.2 in B.shape[1]: parallel",
    )
    text = format_kernel(s.kernel)
    assert "buffer sum_k.1: f32[B.shape[1]] temp" in text
    assert "sum_k.1[j] = sum_k.1[j] + A[i, k] * B[k, j]" in text
    assert "C[i, j.2] = sum_k.1[j.2]" in text


def test_reorder_of_two_reductions_is_allowed_without_strict_fp():
    s = schedule(sum_rows_cols, np.ones((2, 3, 4), np.float32), np.ones(2, np.float32))
    s.reorder("k", "j")
    assert_loops(
        s.kernel,
        "i in x.shape[0]: parallel",
        "  k in x.shape[2]: reduction",
        "    j in x.shape[1]: reduction",
    )


def test_unroll_fully_or_by_a_factor():
    s = mm()
    s.split("k", 4)
    s.unroll("ki")
    s.unroll("j", 2)
    assert_loops(
        s.kernel,
        "i in A.shape[0]: parallel",
        "  j in B.shape[1]: parallel unrolled/2",
        "    ko in (A.shape[1] + 3) // 4: reduction",
        "      ki in min(4, A.shape[1] - ko * 4): reduction unrolled/0",
    )


def test_unrolled_loops_expand_into_copies():
    """A full tile is copied four times; the edge tile (fewer than four) is a copy per
    iteration it may have, each run when the tile reaches it: constant subscripts, no
    loop (its accumulators can stay registers)."""
    s = mm()
    s.split("k", 4)
    s.unroll("ki")
    expanded = expand_schedule(s.kernel)
    text = format_kernel(expanded)
    assert "if 4 <= A.shape[1] - ko * 4:" in text
    assert "if A.shape[1] - ko * 4 < 4:" in text
    for t in range(4):
        assert f"A[i, ko * 4 + {t}]" in text
    for t in range(3):
        assert f"if {t} < A.shape[1] - ko * 4:" in text
    assert "if 3 < A.shape[1] - ko * 4:" not in text  # (the edge is shorter than 4)
    assert_loops(
        expanded,
        "i in A.shape[0]: parallel",
        "  j in B.shape[1]: parallel",
        "    ko in (A.shape[1] + 3) // 4: reduction",
    )


def test_vectorize_annotates_and_expands_to_a_main_loop_and_a_masked_tail():
    s = mm()
    s.vectorize("j", 8)
    assert_loops(
        s.kernel,
        "i in A.shape[0]: parallel",
        "  j in B.shape[1]: parallel vectorized/8",
        "    k in A.shape[1]: reduction",
    )
    assert_loops(
        expand_schedule(s.kernel),
        "i in A.shape[0]: parallel",
        "  j in max(B.shape[1], 0) // 8 * 8: parallel vectorized/8",
        "    k in A.shape[1]: reduction",
        "  j.1 in 8: parallel vectorized/8",
        "    k.1 in A.shape[1]: reduction",
    )
    text = format_kernel(expand_schedule(s.kernel))
    assert "if max(B.shape[1], 0) // 8 * 8 < max(B.shape[1], 0):" in text
    assert "if max(B.shape[1], 0) // 8 * 8 + j.1 < max(B.shape[1], 0):" in text


def test_parallelize_with_and_without_a_thread_count():
    s = mm()
    s.split("i", 16)
    s.parallelize("io")
    assert_loops(
        s.kernel,
        "io in (A.shape[0] + 15) // 16: parallel parallelized/0",
        "  ii in min(16, A.shape[0] - io * 16): parallel",
        "    j in B.shape[1]: parallel",
        "      k in A.shape[1]: reduction",
    )
    s = mm()
    s.parallelize("j", 4)
    assert loops(s.kernel)[1] == "  j in B.shape[1]: parallel parallelized/4"


def test_bind_maps_loops_to_gpu_axes():
    s = mm(target="cuda")
    s.bind("i", "block.x")
    s.bind("j", "thread.x")
    assert_loops(
        s.kernel,
        "i in A.shape[0]: parallel block.x/1",
        "  j in B.shape[1]: parallel thread.x/1",
        "    k in A.shape[1]: reduction",
    )


def test_bind_puts_sibling_loops_on_one_axis():
    """Loops side by side (a row's passes) share thread.x: only nested loops can't."""
    s = schedule(two_steps, V, V.copy(), V.copy(), target="cuda")
    s.bind("i", "thread.x")
    s.bind("i.1", "thread.x")
    assert_loops(
        s.kernel, "i in x.shape[0]: parallel thread.x/1", "i.1 in x.shape[0]: parallel thread.x/1"
    )


def test_fuse_merges_sibling_loops():
    s = schedule(two_steps, V, V.copy(), V.copy())
    assert s.fuse("i", "i.1") == "i"
    assert_loops(s.kernel, "i in x.shape[0]: parallel")
    assert "y[i] = x[i] * 2.0\n    z[i] = y[i] + 1.0" in format_kernel(s.kernel)


# --------------------------------------------------------------- the decorator path


def _decorated() -> KernelFunction:
    k = KernelFunction(matmul.fn, name="matmul")

    @k.schedule(kd.cpu)
    def _(s: Schedule) -> None:
        io, jo, ii, ji = s.tile("i", "j", s.param("ti", [4, 8]), s.param("tj", [8, 16]))
        s.unroll(ii)
        s.parallelize(io)

    return k


def test_a_schedule_attached_with_the_decorator_runs_and_prints():
    k = _decorated()
    c = np.empty_like(C)
    k(A, B, c)
    np.testing.assert_allclose(c, A @ B, rtol=1e-5, atol=1e-5)
    assert str(k.schedule_of(A, B, C)).splitlines() == [
        "# schedule for matmul (cpu)",
        "# param ti in [4, 8]: 4",
        "# param tj in [8, 16]: 8",
        'io, jo, ii, ji = s.tile("i", "j", 4, 8)',
        's.unroll("ii")',
        's.parallelize("io")',
    ]
    lowered = k.lowered(A, B, C).kernel
    assert [lp.var for lp in tree.loops(lowered)][:2] == ["io", "jo"], format_kernel(lowered)
    assert not any(lp.exec is LoopExec.UNROLLED for lp in tree.loops(lowered))


def test_a_refusal_in_a_decorated_schedule_points_at_its_line():
    k = KernelFunction(matmul.fn, name="matmul")

    @k.schedule(kd.cpu)
    def _(s: Schedule) -> None:
        s.parallelize("k")

    with refused(
        'parallelize("k")',
        "loop 'k' is a reduction loop: its iterations are not independent",
        "i, j, k",
        "parallelize a parallel loop",
    ):
        k(A, B, C.copy())


# ------------------------------------------------------------------ schedule as data


def test_a_schedule_prints_its_params_and_steps():
    s = mm()
    s.split("i", s.param("ti", [4, 6]))
    s.reorder("io", "j", "ii")
    s.vectorize("j", 8)
    assert str(s) == "\n".join(
        [
            "# schedule for matmul (cpu)",
            "# param ti in [4, 6]: 4",
            'io, ii = s.split("i", 4)',
            's.reorder("io", "j", "ii")',
            's.vectorize("j", 8)',
        ]
    )


def test_a_schedule_replays_from_json_to_the_same_ir():
    s = mm(config={"tk": 8})
    s.tile("i", "j", 4, 8)
    s.split("k", s.param("tk", [4, 8]))
    s.reorder("ko", "ji")
    s.unroll("ii")
    s.vectorize("ji", 8)
    s.parallelize("io")
    fresh = lower(matmul.ir(A, B, C).kernel)
    again = Schedule.replay(s.to_json(), fresh)
    assert again.kernel == s.kernel, format_kernel(again.kernel)
    assert str(again) == str(s)
    assert s.to_dict()["config"] == {"tk": 8}
    assert s.to_dict()["params"] == {"tk": [4, 8]}


def test_numpy_integers_are_factors_and_choices():
    """Regression (probe F1): np.int64 factors and choices were refused, and formatting
    the refusal raised a TypeError; they are recorded as the ints they are."""
    s = mm()
    ti = s.param("ti", list(np.arange(4, 12, 4)))
    s.split("i", ti)
    s.tile("j", "k", np.int64(4), np.int32(3))
    s.vectorize("ji", np.int64(4))
    s.unroll("ii", np.uint8(2))
    assert s.space == {"ti": (4, 8)} and type(s.space["ti"][0]) is int
    assert str(s).splitlines()[1:] == [
        "# param ti in [4, 8]: 4",
        'io, ii = s.split("i", 4)',
        'jo, ko, ji, ki = s.tile("j", "k", 4, 3)',
        's.vectorize("ji", 4)',
        's.unroll("ii", 2)',
    ]
    again = Schedule.replay(s.to_json(), lower(matmul.ir(A, B, C).kernel))
    assert again.kernel == s.kernel
    c = C.copy()
    interpret(expand_schedule(s.kernel), {"A": A, "B": B, "C": c})
    np.testing.assert_allclose(c, A @ B, rtol=1e-5, atol=1e-5)


def test_replayed_schedule_interprets_to_the_same_result():
    s = mm()
    s.tile("i", "j", 4, 8)
    s.reorder("io", "jo", "k", "ii")
    s.vectorize("ji", 4)
    c = C.copy()
    interpret(expand_schedule(s.kernel), {"A": A, "B": B, "C": c})
    np.testing.assert_allclose(c, A @ B, rtol=1e-5, atol=1e-5)


def test_a_kernels_schedule_replays_onto_what_ir_returns():
    """docs/schedules.md: replay(k.schedule_of(...).to_json(), k.ir(...)) (an IRView)."""

    @kd.kernel
    def scale(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 2.0

    x = np.arange(40, dtype=np.float32)
    recipe = scale.schedule_of(x, x.copy()).to_json()
    replayed = kd.Schedule.replay(recipe, scale.ir(x, x.copy()))
    assert replayed.kernel == scale.schedule_of(x, x.copy()).kernel


def test_param_is_the_first_choice_unless_configured():
    s = mm()
    assert s.param("tile", [32, 64]) == 32
    assert s.param("tile", [32, 64]) == 32  # declaring it again with the same choices
    assert mm(config={"tile": 64}).param("tile", [32, 64]) == 64
    assert s.space == {"tile": (32, 64)} and s.chosen == {"tile": 32}


def test_extent_is_a_loops_constant_trip_count_or_none():
    """s.extent: a constant extent as an int (a trace-time one; of its split, the outer
    loop, and the inner one where the factor divides), None where the extent is a
    shape's or a tile's that may be short; a loop split away is no longer there."""

    @kd.kernel
    def rows(x, y):
        i, j = kd.indices(x.shape[0], 48)
        y[i, j] = x[i, j] * 2.0

    seen = {}

    @rows.schedule(kd.cpu)
    def _(s):
        seen["i"], seen["j"] = s.extent("i"), s.extent("j")
        jo, ji = s.split("j", 16)
        seen["refused"] = _refusal(lambda: s.extent("j"))  # (split: named jo and ji now)
        jio, jii = s.split(ji, 5)  # 16 = 3 · 5 + 1: the last tile is short
        io, ii = s.split("i", 4)
        seen.update({n: s.extent(n) for n in (jo, jio, jii, ii)})

    x = random_array(np.random.default_rng(0), (5, 48), np.float32)
    y = np.empty_like(x)
    rows(x, y)
    np.testing.assert_array_equal(y, 2 * x)
    assert seen.pop("refused").startswith("schedule step extent('j') is not possible")
    assert seen == {"i": None, "j": 48, "jo": 3, "jio": 4, "jii": None, "ii": None}


def _refusal(query) -> str:
    with pytest.raises(kd.ScheduleError) as info:
        query()
    return str(info.value).split(": ", 1)[1]


# -------------------------------------------------------------------------- refusals
# One test per refusal: the message names the step, says why, lists the loops, quotes
# the line of this file that called the primitive and says what to do instead.

ANY_LOOP = "use one of the loop names listed"


def test_param_refuses_no_choices():
    s = mm()
    with refused(
        "param('t', [])",
        "a param needs a name and at least one choice",
        None,
        's.param("tile", [32, 64])',
        call='s.param("t", [])',
    ):
        s.param("t", [])


def test_param_refuses_a_repeated_choice():
    """Regression (probe F9): accepted, then the autotuner died with a ValueError."""
    s = mm()
    with refused(
        "param('w', [16, 8, 16])",
        "param 'w' lists the choice 16 more than once",
        None,
        "list each choice once: s.param('w', [16, 8])",
        call='s.param("w", [16, 8, np.int64(16)])',
    ):
        s.param("w", [16, 8, np.int64(16)])


def test_param_refuses_a_second_set_of_choices():
    s = mm()
    s.param("t", [1, 2])
    with refused(
        "param('t', …)",
        "param 't' was declared before with other choices [1, 2]",
        None,
        "give each param one set of choices, or a new name",
        call='s.param("t", [1, 3])',
    ):
        s.param("t", [1, 3])


def test_param_refuses_a_configured_value_that_is_not_a_choice():
    s = mm(config={"t": 5})
    with refused(
        "param('t', …)",
        "the configured value 5 is not one of [1, 3]",
        None,
        "tune again",
        call='s.param("t", [1, 3])',
    ):
        s.param("t", [1, 3])


def test_replay_refuses_an_unknown_primitive():
    recipe = {"steps": [["frobnicate", ["i"], {}]]}
    with refused(
        'frobnicate("i")',
        "'frobnicate' is not a schedule primitive",
        "i, j, k",
        "use one of bind, cache, collapse, compute_at, fuse, inline, nontemporal, parallelize, prefetch, reorder,",
        call="Schedule.replay(recipe, lower(matmul.ir(A, B, C).kernel))",
    ):
        Schedule.replay(recipe, lower(matmul.ir(A, B, C).kernel))


def test_a_misspelled_step_names_the_closest_steps():
    """Regression (probe F8): `s.vectorise` was a raw AttributeError from kdsl's frames."""
    k = KernelFunction(matmul.fn, name="matmul")

    @k.schedule(kd.cpu)
    def _(s):
        s.vectorise("j", 16)

    with pytest.raises(kd.ScheduleError) as info:
        k(A, B, C.copy())
    err, msg = info.value, str(info.value)
    assert msg.startswith("in kernel 'matmul': 'vectorise' is not a schedule step\n"), msg
    assert err.loc is not None and err.loc.file == __file__, msg
    assert err.loc.text.strip() == 's.vectorise("j", 16)', msg
    assert err.fix is not None and err.fix.startswith("did you mean s.vectorize? the steps are")


def test_extent_refuses_an_unknown_loop():
    s = mm()
    step, fix = "extent('q')", "name one of i, j, k"
    with refused(step, "there is no loop named 'q'", None, fix, call='s.extent("q")'):
        s.extent("q")


def test_split_refuses_an_unknown_loop():
    s = mm()
    with refused('split("q", 4)', "there is no loop named 'q'", "i, j, k", ANY_LOOP):
        s.split("q", 4)


def test_split_refuses_a_loop_that_is_not_a_name():
    s = mm()
    with refused("split(3, 4)", "3 is not a loop name", "i, j, k", "name loops by their strings"):
        s.split(3, 4)


@pytest.mark.parametrize("factor", [0, -3])
def test_split_refuses_a_factor_below_one(factor):
    s = mm()
    with refused(
        f'split("k", {factor})',
        f"the split factor must be a positive int, not {factor}",
        "i, j, k",
        "pass an integer ≥ 1 as the split factor",
        call='s.split("k", factor)',
    ):
        s.split("k", factor)


@pytest.mark.parametrize("factor", [True, 2.5, "4"], ids=["bool", "float", "str"])
def test_split_refuses_a_factor_that_is_not_an_int(factor):
    s = mm()
    with refused(
        f'split("k", {json.dumps(factor)})',
        f"the split factor must be a positive int, not {factor!r}",
        "i, j, k",
        "pass an integer ≥ 1 as the split factor",
        call='s.split("k", factor)',
    ):
        s.split("k", factor)


def test_a_refused_numpy_factor_prints_as_itself():
    s = mm()
    with refused(
        'split("k", 0)',
        "the split factor must be a positive int, not 0",
        "i, j, k",
        "pass an integer ≥ 1 as the split factor",
        call='s.split("k", np.int64(0))',
    ):
        s.split("k", np.int64(0))
    with refused(
        'split("k", np.float32(4.0))',
        "the split factor must be a positive int, not np.float32(4.0)",
        "i, j, k",
        "pass an integer ≥ 1 as the split factor",
        call='s.split("k", np.float32(4))',
    ):
        s.split("k", np.float32(4))


def test_split_refuses_an_annotated_loop():
    s = mm()
    s.vectorize("j", 8)
    with refused(
        'split("j", 4)',
        "loop 'j' is already vectorized",
        "i, j, k",
        "split a loop before annotating it",
    ):
        s.split("j", 4)


def test_a_refused_tile_quotes_the_tile_line():
    s = schedule(two_steps, V, V.copy(), V.copy())
    with pytest.raises(kd.ScheduleError) as info:
        s.tile("i", "i.1", 4, 4)
    err = info.value
    assert err.loc is not None and err.loc.file == __file__
    assert err.loc.text.strip() == 's.tile("i", "i.1", 4, 4)'
    assert "the loops are not nested in one another" in str(err)
    assert err.fix is not None and "to merge sibling loops use fuse" in err.fix


def test_reorder_refuses_a_single_loop():
    s = mm()
    with refused('reorder("i")', "reorder needs at least two loops", "i, j, k", "name the loops"):
        s.reorder("i")


def test_reorder_refuses_a_loop_named_twice():
    s = mm()
    with refused('reorder("i", "i")', "a loop is named twice", "i, j, k", "name each loop once"):
        s.reorder("i", "i")


def test_reorder_refuses_an_unknown_loop():
    s = mm()
    with refused('reorder("j", "q")', "there is no loop named 'q'", "i, j, k", ANY_LOOP):
        s.reorder("j", "q")


def test_reorder_refuses_sibling_loops():
    s = schedule(two_steps, V, V.copy(), V.copy())
    with refused(
        'reorder("i.1", "i")',
        "the loops are not nested in one another",
        "i, i.1",
        "to merge sibling loops use fuse",
    ):
        s.reorder("i.1", "i")


def test_reorder_refuses_loops_of_different_nests():
    s = schedule(different_ranges, V, V.copy(), V.copy())
    s.split("k", 2)
    with refused(
        'reorder("ki", "i")',
        "the loops are not nested in one another",
        "i, ko, ki",
        "reorder loops of one nest",
    ):
        s.reorder("ki", "i")


def test_reorder_refuses_to_move_a_loop_outside_the_one_its_extent_depends_on():
    s = mm()
    s.split("i", 4)
    with refused(
        'reorder("ii", "io")',
        "the extent of loop 'ii' depends on loop 'io', so 'ii' can't move outside it",
        "io, ii, j, k",
        "keep 'io' outside 'ii'",
    ):
        s.reorder("ii", "io")


def test_reorder_refuses_two_reductions_under_strict_fp():
    x = np.ones((2, 3, 4), np.float32)
    s = schedule(sum_rows_cols, x, np.ones(2, np.float32), strict_fp=True)
    with refused(
        'reorder("k", "j")',
        "interchanging 'j' and 'k' changes the order of the floating-point accumulation "
        "into 'sum_j_k', and the kernel is strict_fp",
        "i, j, k",
        "drop strict_fp=True",
    ):
        s.reorder("k", "j")


def test_reorder_refuses_two_serial_loops():
    s = schedule(ordered, M, M.copy())
    with refused(
        'reorder("j", "i")',
        "loops 'i' (serial) and 'j' (serial) can't be interchanged: an ordered loop's "
        "iterations depend on earlier ones",
        "i, j",
        "keep the serial loop (kd.range) where it is",
    ):
        s.reorder("j", "i")


def test_reorder_refuses_a_serial_loop_around_a_reduction():
    """No traced kernel nests a reduction loop directly in a serial one; build it."""
    s = schedule(ordered, M, M.copy())
    outer = s.kernel.body[-1]
    assert isinstance(outer, Loop) and isinstance(outer.body[0], Loop)
    inner = replace(outer.body[0], kind=LoopKind.REDUCTION)
    s.kernel = replace(s.kernel, body=(*s.kernel.body[:-1], replace(outer, body=(inner,))))
    with refused(
        'reorder("j", "i")',
        "loops 'i' (serial) and 'j' (reduction) can't be interchanged",
        "i, j",
        "keep the serial loop (kd.range) where it is",
    ):
        s.reorder("j", "i")


def test_reorder_refuses_to_distribute_a_serial_loop():
    s = schedule(row_scan, M, V[:8].copy())
    with refused(
        'reorder("j", "i")',
        "loop 'i' has statements around loop 'j' and is a serial loop, so they can't be "
        "split into separate loops",
        "i, j",
        "reorder only loops that are perfectly nested",
    ):
        s.reorder("j", "i")


def test_reorder_refuses_to_distribute_a_loop_that_updates_an_outer_local():
    s = schedule(update_outside, M, M.copy())
    with refused(
        'reorder("j", "i")',
        "loop 'i' updates the local 'acc' declared outside it",
        "i, j",
        "keep the loop as it is",
    ):
        s.reorder("j", "i")


def test_reorder_refuses_a_condition_around_the_inner_loop():
    s = schedule(guarded, M, M.copy())
    with refused(
        'reorder("j", "i")',
        "loop 'i' contains a condition (kd.when) around the inner loops",
        "i, j",
        "reorder loops of one perfect nest",
    ):
        s.reorder("j", "i")


def test_reorder_refuses_a_loop_holding_loops_in_sequence():
    s = schedule(two_rows, M, M.copy(), M.copy())
    with refused(
        'reorder("j", "i")',
        "loop 'i' contains 2 loops in sequence",
        "i, j, j.1",
        "fuse sibling loops first",
    ):
        s.reorder("j", "i")


def test_unroll_refuses_a_loop_without_a_constant_extent():
    s = mm()
    with refused(
        'unroll("k")',
        "loop 'k' has no constant extent ≤ 64 to unroll fully",
        "i, j, k",
        "split it by a small factor first, or pass unroll(loop, factor)",
    ):
        s.unroll("k")


def test_unroll_refuses_a_factor_below_one():
    s = mm()
    with refused(
        'unroll("k", 0)',
        "the unroll factor must be a positive int, not 0",
        "i, j, k",
        "pass an integer ≥ 1 as the unroll factor",
    ):
        s.unroll("k", 0)


def test_unroll_refuses_an_annotated_loop():
    s = mm()
    s.parallelize("i")
    with refused(
        'unroll("i", 2)', "loop 'i' is already parallel", "i, j, k", "annotate each loop once"
    ):
        s.unroll("i", 2)


def test_unroll_refuses_nested_unrolls_that_copy_a_loop_nest_too_often():
    """Unrolls multiply: i and j of a matmul by 16 each made 256 copies of the k loop,
    which LLVM took 17 s to compile (by 64 each: minutes); with i's 8 it is 64."""
    s = mm()
    s.unroll("i", 16)
    with refused(
        'unroll("j", 16)',
        "unrolling 'j' makes 256 copies of a loop nest (i × j and the unrolled loops "
        "inside), more than 64",
        "i, j, k",
        "unroll fewer or smaller loops",
    ):
        s.unroll("j", 16)
    s.unroll("j", 4)
    s = mm()
    s.unroll("j", 16)
    with refused(
        'unroll("i", 16)', "unrolling 'i' makes 256 copies of a loop nest (i and", None, "vectorize"
    ):
        s.unroll("i", 16)
    s = mm()
    s.unroll("k", 1024)  # (one loop's body, no loop inside: up to MAX_UNROLL)
    with refused('unroll("j", 2)', "unrolling 'j' makes 2048 copies", None, "unroll fewer"):
        s.unroll("j", 2)


def test_tile_refuses_one_loop_named_twice():
    s = mm()
    with refused('tile("i", "i", 4, 4)', "tile names loop 'i' twice", "i, j, k", "two loops"):
        s.tile("i", "i", 4, 4)


def test_reorder_takes_its_loops_as_one_sequence_too():
    apart = mm()
    apart.reorder("k", "j", "i")
    for order in (("k", "j", "i"), ["k", "j", "i"]):
        s = mm()
        s.reorder(order)
        assert format_kernel(s.kernel) == format_kernel(apart.kernel)


def test_vectorize_refuses_a_serial_loop():
    s = schedule(row_scan, M, V[:8].copy())
    with refused(
        'vectorize("j", 4)',
        "loop 'j' is serial (kd.range): its iterations depend on earlier ones",
        "i, j",
        "vectorize a parallel or reduction loop",
    ):
        s.vectorize("j", 4)


@pytest.mark.parametrize("width", [3, 12, 128])
def test_vectorize_refuses_a_width_that_is_no_power_of_two_in_range(width):
    s = mm()
    with refused(
        f'vectorize("j", {width})',
        f"vector width {width} is not a power of two between 1 and 64",
        "i, j, k",
        "use 4, 8 or 16",
        call='s.vectorize("j", width)',
    ):
        s.vectorize("j", width)


def test_vectorize_refuses_a_width_below_one():
    s = mm()
    with refused(
        'vectorize("j", 0)',
        "the vector width must be a positive int, not 0",
        "i, j, k",
        "pass an integer ≥ 1 as the vector width",
    ):
        s.vectorize("j", 0)


def test_vectorize_refuses_a_float_reduction_under_strict_fp():
    s = schedule(strict_matmul, A, B, C, strict_fp=True)
    with refused(
        'vectorize("k", 8)',
        "vectorizing reduction loop 'k' reorders floating-point sums, and the kernel is strict_fp",
        "i, j, k",
        "drop strict_fp=True, or vectorize a parallel loop instead",
    ):
        s.vectorize("k", 8)


def test_vectorize_of_an_integer_reduction_is_allowed_under_strict_fp():
    a = random_array(RNG, (3, 5), np.int32)
    b = random_array(RNG, (5, 2), np.int32)
    s = schedule(strict_matmul, a, b, np.empty((3, 2), np.int32), strict_fp=True)
    s.vectorize("k", 8)
    assert tree.loops(s.kernel)[2].exec is LoopExec.VECTORIZED


def test_vectorize_refuses_what_the_target_can_not_vectorize():
    s = mm(vector_check=lambda loop, kernel: "it has no unit-stride access")
    with refused(
        'vectorize("i", 4)',
        "loop 'i' can't be vectorized: it has no unit-stride access",
        "i, j, k",
        "vectorize an inner loop with a simpler body",
    ):
        s.vectorize("i", 4)
    assert tree.loops(s.kernel)[0].exec is LoopExec.SERIAL  # the refused step left no trace


def test_parallelize_refuses_a_reduction_loop():
    s = mm()
    with refused(
        'parallelize("k")',
        "loop 'k' is a reduction loop: its iterations are not independent",
        "i, j, k",
        "parallelize a parallel loop (an implicit index or kd.grid)",
    ):
        s.parallelize("k")


def test_parallelize_refuses_a_serial_loop():
    s = schedule(row_scan, M, V[:8].copy())
    with refused(
        'parallelize("i")',
        "loop 'i' is a serial loop: its iterations are not independent",
        "i, j",
        "parallelize a parallel loop",
    ):
        s.parallelize("i")


def test_parallelize_refuses_a_loop_that_updates_an_outer_local():
    s = schedule(total, V, V.copy())
    with refused(
        'parallelize("i")',
        "loop 'i' updates the local 'acc' declared outside it",
        "i, k",
        "parallelize a loop that contains the local's declaration",
    ):
        s.parallelize("i")


def test_parallelize_refuses_zero_threads():
    s = mm()
    with refused(
        'parallelize("i", 0)',
        "the thread count must be a positive int, not 0",
        "i, j, k",
        "pass an integer ≥ 1 as the thread count",
    ):
        s.parallelize("i", 0)


def test_parallelize_refuses_a_cuda_schedule():
    """Regression (probe F7): the GPU target ran the loop serially, in one thread."""
    s = mm(target="cuda")
    with refused(
        'parallelize("i")',
        "parallelize runs a loop on a CPU's cores, and this is a GPU schedule: the loop "
        "would run serially, in one GPU thread",
        "i, j, k",
        'bind the loop to GPU blocks or threads instead: s.bind("i", "block.x") or '
        's.bind("i", "thread.x")',
    ):
        s.parallelize("i")


def test_vectorize_refuses_a_cuda_schedule():
    s = mm(target="cuda")
    with refused(
        'vectorize("j", 8)',
        "vectorize runs a loop on a CPU's vector registers, and this is a GPU schedule",
        "i, j, k",
        's.bind("j", "block.x") or s.bind("j", "thread.x")',
    ):
        s.vectorize("j", 8)


def test_bind_refuses_a_cpu_schedule():
    s = mm()
    with refused(
        'bind("i", "block.x")',
        "bind maps loops to GPU blocks and threads, and this is a CPU schedule",
        "i, j, k",
        "use parallelize on CPU",
    ):
        s.bind("i", "block.x")


def test_bind_refuses_an_unknown_axis():
    s = mm(target="cuda")
    with refused(
        'bind("i", "warp.x")',
        "'warp.x' is not a GPU axis",
        "i, j, k",
        "use one of block.x, block.y, block.z, thread.x, thread.y, thread.z",
    ):
        s.bind("i", "warp.x")


def test_bind_refuses_a_reduction_loop_on_blocks():
    s = mm(target="cuda")
    with refused(
        'bind("k", "block.x")',
        "loop 'k' is a reduction: blocks can't combine their parts",
        "i, j, k",
        "bind a reduction to thread.x",
    ):
        s.bind("k", "block.x")


def test_bind_takes_a_reduction_loop_on_threads():
    s = mm(target="cuda")
    s.bind("k", "thread.x", threads=128)
    (k,) = [lp for lp in walk_stmts(s.kernel.body) if isinstance(lp, Loop) and lp.var == "k"]
    assert (k.exec, k.width) == (LoopExec.GPU_THREAD_X, 128)


def test_bind_refuses_threads_for_a_block_axis():
    s = mm(target="cuda")
    with refused(
        'bind("i", "block.x", threads=64)',
        "threads=64 does not fit 'block.x'",
        "i, j, k",
        "only when binding to thread.x",
    ):
        s.bind("i", "block.x", threads=64)


@pytest.mark.parametrize(
    "first, second, axis, free",
    [("i", "j", "block.x", "block.y"), ("j", "i", "thread.x", "thread.y")],
)
def test_bind_refuses_two_nested_loops_on_one_axis(first, second, axis, free):
    """Regression (probe F6): both loops took the one index, so only the diagonal ran."""
    s = mm(target="cuda")
    s.bind(first, axis)
    with refused(
        f'bind("{second}", "{axis}")',
        f"loop '{first}' in the same nest is already bound to {axis}, and loops "
        f"'{first}' and '{second}' can't share one GPU axis",
        "i, j, k",
        f"bind '{second}' to another axis, e.g. {free}, or leave one of them unbound",
        call="s.bind(second, axis)",
    ):
        s.bind(second, axis)


def test_fuse_refuses_nested_loops():
    s = mm()
    with refused(
        'fuse("i", "j")',
        "loops 'i' and 'j' are not siblings with 'i' first",
        "i, j, k",
        "fuse(earlier, later)",
    ):
        s.fuse("i", "j")


def test_fuse_refuses_the_later_loop_first():
    s = schedule(two_steps, V, V.copy(), V.copy())
    with refused(
        'fuse("i.1", "i")',
        "loops 'i.1' and 'i' are not siblings with 'i.1' first",
        "i, i.1",
        "the earlier one first",
    ):
        s.fuse("i.1", "i")


def test_fuse_refuses_loops_over_different_ranges():
    s = schedule(different_ranges, V, V.copy(), V.copy())
    with refused(
        'fuse("i", "k")',
        "loops 'i' (over x.shape[0]) and 'k' (over x.shape[0] - 1) have different ranges",
        "i, k",
        "fuse loops over one range: write both over the same extent (e.g. x.shape[0])",
    ):
        s.fuse("i", "k")


def test_fuse_refuses_serial_loops():
    s = schedule(two_ranges, V, V.copy())
    with refused(
        'fuse("i", "k")',
        "fusing serial (kd.range) loops is not supported",
        "i, k",
        "fuse parallel or reduction loops",
    ):
        s.fuse("i", "k")


def test_fuse_refuses_an_annotated_loop():
    s = schedule(two_steps, V, V.copy(), V.copy())
    s.vectorize("i.1", 4)
    with refused(
        'fuse("i", "i.1")', "one of the loops is already annotated", "i, i.1", "fuse before"
    ):
        s.fuse("i", "i.1")


def test_fuse_refuses_to_read_what_the_first_loop_writes_at_another_iteration():
    s = schedule(shifted, V, V.copy(), V.copy())
    with refused(
        'fuse("i", "i.1")',
        "fusing 'i' and 'i.1' changes the result: 'i.1' would read or overwrite elements "
        "of 'y' out of order",
        "i, i.1",
        "fuse only loops whose shared buffers are indexed by the loop variable itself",
    ):
        s.fuse("i", "i.1")


def test_fuse_refuses_a_local_one_loop_updates_and_the_other_reads():
    s = schedule(total, V, V.copy())
    with refused(
        'fuse("i", "k")',
        "fusing 'i' and 'k' changes the result: both loops use the local 'acc', and one "
        "of them updates it",
        "i, k",
        "fuse only loops",
    ):
        s.fuse("i", "k")


def test_fuse_moves_a_sums_store_past_the_fused_loop():
    """Between two reductions over j: the first sum's store (which needs the first loop)
    moves after the fused loop, the second sum's initial value before it: one pass."""
    x = random_array(np.random.default_rng(3), (5, 7), np.float32)
    total, squares = np.empty(5, np.float32), np.empty(5, np.float32)
    s = schedule(two_sums, x, total, squares)
    s.fuse("i", "i.1")
    assert s.fuse("j", "j.1") == "j"
    text = format_kernel(s.kernel)
    assert text.count("for j") == 1, text
    assert text.index("sum_j.1: f32 = 0.0") < text.index("for j") < text.index("total[i] =")
    interpret(s.kernel, {"x": x, "total": total, "squares": squares})
    np.testing.assert_allclose(total, x.sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(squares, (x * x).sum(axis=1), rtol=1e-5)


def test_fuse_refuses_to_move_a_statement_with_effects():
    s = schedule(between, V, V.copy(), V.copy())
    with refused(
        'fuse("i", "i.1")',
        "a statement between the loops depends on loop 'i' or has effects",
        "i, i.1",
        "fuse loops that are adjacent",
    ):
        s.fuse("i", "i.1")


# ----------------------------------------------------------------------- known bugs


def test_a_refused_tile_leaves_the_schedule_as_it_was():
    s = schedule(two_steps, V, V.copy(), V.copy())
    before = s.kernel
    with pytest.raises(kd.ScheduleError):
        s.tile("i", "i.1", 4, 4)
    assert s.kernel == before, format_kernel(s.kernel)
    assert s.steps == []


def test_a_refused_tile_names_the_tile_step():
    s = schedule(two_steps, V, V.copy(), V.copy())
    with refused('tile("i", "i.1", 4, 4)', "", "i, i.1", "reorder loops of one nest", call=""):
        s.tile("i", "i.1", 4, 4)


def test_a_generator_schedule_is_refused_where_it_is_attached():
    """Its body would never run: the kernel ran with no schedule, without a word."""
    kernel = kd.kernel(matmul, name="generator_schedule")
    with pytest.raises(kd.ScheduleError, match="generator or async function") as info:

        @kernel.schedule(kd.cpu)
        def steps(s):
            s.vectorize("j", 8)
            yield

    assert info.value.loc is not None and info.value.loc.file == __file__


def operands() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return random_array(rng, (5, 3), np.float32), random_array(rng, (3, 7), np.float32)


@pytest.mark.parametrize("header", ["def steps(s, extra):", "def steps():"])
def test_a_schedule_function_of_another_arity_is_refused_where_it_is_attached(header):
    """It raised Python's TypeError at the first call, naming no kernel."""
    kernel = kd.kernel(matmul.fn, name="arity_schedule")
    namespace: dict[str, object] = {}
    exec(compile(f"{header}\n    pass\n", __file__, "exec"), namespace)
    with pytest.raises(kd.ScheduleError, match="called with one argument, the Schedule") as info:
        kernel.schedule(kd.cpu)(namespace["steps"])
    assert info.value.loc is not None and info.value.loc.file == __file__
    assert "def steps(s):" in info.value.fix
    # a function that also takes optional arguments is called as it allows
    kernel.schedule(kd.cpu)(lambda s, width=8: s.vectorize("j", width))


@pytest.mark.parametrize(
    ("step", "words"),
    [
        (lambda s: s.vectorize("j", widht=8), "unexpected keyword argument 'widht'"),
        (lambda s: s.split("j"), "missing 1 required positional argument"),
        (lambda s: s.unroll("j", 2, 3), "positional argument"),
    ],
)
def test_a_step_called_with_arguments_it_does_not_take_names_the_users_line(step, words):
    """Python's TypeError named neither the kernel nor the step's arguments."""
    kernel = kd.kernel(matmul.fn, name="wrong_arguments")
    kernel.schedule(kd.cpu)(step)
    a, b = operands()
    with pytest.raises(kd.ScheduleError, match=words) as info:
        kernel(a, b, np.empty((5, 7), np.float32))
    assert info.value.loc is not None and info.value.loc.file == __file__
    assert info.value.kernel == "wrong_arguments"
    assert info.value.fix.startswith("call it as s.")


def test_a_schedule_functions_own_type_error_is_its_own():
    kernel = kd.kernel(matmul.fn, name="own_type_error")

    @kernel.schedule(kd.cpu)
    def steps(s):
        len(5)

    a, b = operands()
    with pytest.raises(TypeError, match="has no len"):
        kernel(a, b, np.empty((5, 7), np.float32))


def test_a_schedule_kept_past_its_function_takes_no_steps():
    """A step on it did nothing that ran, silently; and the kernel keeps the last
    schedule it built, which a step on it would have changed under the next compile."""
    kernel = kd.kernel(matmul.fn, name="kept_schedule")
    kept = []

    @kernel.schedule(kd.cpu)
    def steps(s):
        s.vectorize("j", 4)
        kept.append(s)

    a, b = operands()
    kernel(a, b, np.empty((5, 7), np.float32))
    for late in (lambda s: s.unroll("k", 2), lambda s: s.param("t", [1, 2])):
        with pytest.raises(kd.ScheduleError, match="this schedule is finished") as info:
            late(kept[0])
        assert info.value.loc is not None and info.value.loc.file == __file__
    assert [str(step) for step, _ in kept[0].steps] == ['vectorize("j", 4)']
    # its replay is a fresh schedule that takes steps
    again = Schedule.replay(kept[0].to_json(), kernel.ir(a, b, np.empty((5, 7), np.float32)))
    again.unroll("k", 2)


def test_a_layout_block_past_two_to_the_31_is_refused_at_its_step():
    """It was taken, and the call then ran out of memory without naming the step."""
    s = mm()
    with pytest.raises(kd.ScheduleError, match="a block of 1099511627776 elements is more than"):
        s.cache("B", at="i", layout="0,1//1099511627776,1%1099511627776")
