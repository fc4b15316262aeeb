"""cache's blocked layouts: a copy's axis cut into blocks ("1//16,0,1%16", or a function
of the axes), BLIS's micro-panels; parsing, the rewritten subscripts, semantics against
NumPy (interpreted and compiled), the recipe, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.ir.nodes import Const
from kdsl.schedule import layouts
from kdsl.schedule.layouts import LayoutError, Part
from kdsl.schedule.recipe import Schedule
from tests.schedule.test_caching import check_mm, compiled_matmul, matmul, mm_args, tiled
from tests.schedule.test_stages import loop_text, refusal, schedule

SIZES = st.sampled_from([0, 1, 2, 3, 5, 13, 17, 67])
MICRO_PANELS = "1//16,0,1%16"


def micro_panels(s: Schedule, width: int = 16) -> None:
    """Tiles of 4 × 64 columns in blocks of `width`, B's panel (all of k) cut in
    micro-panels of 16 columns: the library matmul's shape at a small scale."""
    io, ii = s.split("i", 4)
    jo, jp = s.split("j", 64)
    jr, ji = s.split(jp, width)
    s.reorder(jo, io, jr, ii, ji)
    s.reorder(ji, "k", ii)
    s.cache("B", at=jo, layout=lambda k, n: (n // 16, k, n % 16))


# ------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("layout", "parts"),
    [
        (None, (Part(0), Part(1))),
        ("transposed", (Part(1), Part(0))),
        ([1, 0], (Part(1), Part(0))),
        (("1//16", 0, "1%16"), (Part(1, 16), Part(0), Part(1, 16, inner=True))),
        (MICRO_PANELS, (Part(1, 16), Part(0), Part(1, 16, inner=True))),
        (" 0 % 4 , 1, 0//4", (Part(0, 4, inner=True), Part(1), Part(0, 4))),
        (lambda k, n: (n // 16, k, n % 16), (Part(1, 16), Part(0), Part(1, 16, inner=True))),
    ],
)
def test_parse(layout: object, parts: tuple[Part, ...]) -> None:
    assert layouts.parse(layout, 2) == parts


def test_a_function_is_spelled_as_its_string() -> None:
    assert layouts.spell(lambda i, k: (i // 6, k, i % 6)) == "0//6,1,0%6"
    assert layouts.spell(lambda k, n, w=16: (n // w, k, n % w)) == MICRO_PANELS
    assert layouts.spell(lambda k, n: (n // np.int64(16), k, n % 16)) == MICRO_PANELS
    assert layouts.spell(lambda i, j, k: (k, i, j)) == "2,0,1"
    assert ",".join(map(str, layouts.parse(layouts.spell(lambda k, n: (n, k)), 2))) == "1,0"


@pytest.mark.parametrize(
    ("layout", "why"),
    [
        ("1//16,0", "axis 1 needs both its blocks (1//w) and 1%w"),
        ("1//16,0,1%8", "axis 1 is cut into blocks of two sizes"),
        ("1//0,0,1%0", "a block is a positive int, not 0"),
        ("1,0,1%16", "it names axis 1 more than once"),
        ("0", "it leaves out axis 1"),
        ("0,1,2", "it names axis 2, and the buffer has axes 0 to 1"),
        ("2//16,0,2%16", "it names axis 2, and the buffer has axes 0 to 1"),
        ("1//16,0,1%16,", "it has an empty part (a comma at an end, or two together)"),
        ("1//16,,0,1%16", "it has an empty part"),
        ([1.0, 0], "[1.0, 0] is not a layout"),
        ((), "it names no axes"),
        ("1/16,0,1%16", "'1/16' is not an axis, 'axis//block' or 'axis%block'"),
        (lambda k, n: (n // 16.0, k, n % 16), "a block is a positive int, not 16.0"),
        (lambda k, n: (n + 1, k), "it may only cut an axis with // and %"),
        (lambda k, n: (n, 3), "the layout function returned 3"),
        (lambda k, n: (n // k, n % k), "a block is a positive int, not axis 0"),
        (lambda *axes: axes, "it leaves out axis 1"),
    ],
)
def test_bad_layouts(layout: object, why: str) -> None:
    with pytest.raises(LayoutError) as info:
        layouts.parse(layout, 2)
    assert why in str(info.value)


# ------------------------------------------------------------------------ the copy


def test_micro_panels_are_read_at_plain_subscripts() -> None:
    a, b, c = mm_args(9, 70, 130)
    s = schedule(matmul, a, b, c)
    micro_panels(s)
    local = s.kernel.buffer("B.c")
    assert local.shape[0] == Const(4, kd.i64) and local.shape[2] == Const(16, kd.i64)
    text = loop_text(s.kernel)
    # the copy stores each micro-panel front to back, 16 lanes at a time
    lines = text.splitlines()
    store = lines.index(next(ln for ln in lines if "B.c[B.c0, B.c1, B.c2] = " in ln))
    assert lines[store].strip() == "B.c[B.c0, B.c1, B.c2] = B[B.c1, jo * 64 + B.c0 * 16 + B.c2]"
    assert lines[store - 1].strip().endswith("# parallel, vectorized(16)")
    # and the tile reads it at plain subscripts, no // or % of the column
    reads = [ln for ln in text.splitlines() if "B.c[" in ln and "B.c[B.c0" not in ln]
    assert reads and all("B.c[jio, k, jii]" in ln for ln in reads)
    check_mm(s.kernel, a, b, c)


@given(m=SIZES, n=SIZES, k=SIZES, width=st.sampled_from([16, 8, 32]))
@settings(max_examples=30, deadline=None)
def test_blocked_copies_compute_the_product(m: int, n: int, k: int, width: int) -> None:
    """Tiles as wide as the blocks, narrower (8: subscripts read off) and wider (32: the
    copy is read at `c // 16` and `c % 16`), on every tail."""
    a, b, c = mm_args(m, n, k)
    s = schedule(matmul, a, b, c)
    micro_panels(s, width)
    check_mm(s.kernel, a, b, c)


@given(m=SIZES, n=SIZES, k=SIZES)
@settings(max_examples=20, deadline=None)
def test_blocked_rows_of_a_and_a_written_c(m: int, n: int, k: int) -> None:
    """A's rows in blocks of 3 inside the tile (BLIS's packed A), and C, written, in
    blocks of 8 columns: copied back from its blocks."""
    a, b, c = mm_args(m, n, k)
    s = schedule(matmul, a, b, c)
    io, jo, ko, *_ = tiled(s)
    s.cache("A", at=ko, layout="0//3,1,0%3")
    s.cache("C", at=jo, layout=lambda i, j: (j // 8, i, j % 8))
    check_mm(s.kernel, a, b, c)


@given(m=SIZES, n=SIZES, k=SIZES)
@settings(max_examples=20, deadline=None)
def test_elements_of_a_block_outside_its_blocks(m: int, n: int, k: int) -> None:
    """A layout that walks a block's elements before the blocks ("1%8,0,1//8"): the copy's
    element loop runs a block's whole width, each element tested against the box."""
    a, b, c = mm_args(m, n, k)
    s = schedule(matmul, a, b, c)
    ko = tiled(s)[2]
    s.cache("B", at=ko, layout="1%8,0,1//8")
    assert "if B.c2 * 8 + B.c0 < min(32, B.shape[1] - jo * 32):" in loop_text(s.kernel)
    check_mm(s.kernel, a, b, c)


@pytest.mark.parametrize(("block", "lanes"), [(16, 16), (32, 16), (6, 4), (4, 4), (3, 0), (2, 0)])
def test_a_block_s_elements_are_copied_in_vectors_that_fit_it(block: int, lanes: int) -> None:
    """The innermost copy loop walks a block's elements: its vectors are the widest power
    of two within the block (a full vector at most), none for a block under 4 (a masked
    vector of 16 lanes copied each 2 or 3 elements)."""
    a, b, c = mm_args(9, 70, 13)
    s = schedule(matmul, a, b, c)
    jo = tiled(s)[1]
    s.cache("B", at=jo, layout=f"1//{block},0,1%{block}")
    lines = loop_text(s.kernel).splitlines()
    copy = next(ln for ln in lines if "for B.c2 in" in ln)
    assert copy.endswith(f"vectorized({lanes})") if lanes else "vectorized" not in copy, copy
    check_mm(s.kernel, a, b, c)


@pytest.mark.parametrize("layout", ["1//8,0,1%8", "1%8,0,1//8"])
def test_a_blocked_copy_back_can_run_on_every_thread(layout: str) -> None:
    """The copy back's loops write apart, the element-first layout's tested stores too
    (they were taken for loops that do more than copy, and refused)."""
    a, b, c = mm_args(9, 70, 13)
    s = schedule(matmul, a, b, c)
    jo = tiled(s)[1]
    s.cache("C", at=jo, layout=layout)
    s.parallelize("C.cw0")
    check_mm(s.kernel, a, b, c)


def test_compiled_micro_panels_match_numpy() -> None:
    mm = compiled_matmul("mm_micro_panels")
    mm.schedule(kd.cpu)(lambda s: (micro_panels(s), s.vectorize("jii", 16), s.unroll("ii")))
    rng = np.random.default_rng(5)
    for m, n, k in [(1, 1, 1), (0, 3, 2), (9, 70, 130), (37, 101, 53), (64, 64, 64)]:
        a = rng.standard_normal((m, k), np.float32)
        b = rng.standard_normal((k, n), np.float32)
        c = np.full((m, n), np.nan, np.float32)
        mm(a, b, c)
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


def test_the_recipe_records_a_layout_function_as_its_string() -> None:
    a, b, c = mm_args(9, 70, 130)
    s = schedule(matmul, a, b, c)
    micro_panels(s)
    assert f'layout="{MICRO_PANELS}"' in str(s)
    again = Schedule.replay(s.to_json(), schedule(matmul, a, b, c).kernel)
    assert loop_text(again.kernel) == loop_text(s.kernel)


def test_refuses_a_bad_blocked_layout() -> None:
    s = schedule(matmul, *mm_args(9, 70, 130))
    ko = tiled(s)[2]
    msg = refusal(s, "cache", "B", ko, "1//16,0")
    assert "does not lay out the 2 axes of 'B': axis 1 needs both its blocks" in msg
    assert "lambda k, n: (n // 16, k, n % 16)" in msg
    msg = refusal(s, "cache", "B", ko, lambda k, n: (n * 2, k))
    assert "it may only cut an axis with // and %" in msg
