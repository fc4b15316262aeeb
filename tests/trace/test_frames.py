"""The user's frame: the names a call's result is stored to, and source locations."""

from __future__ import annotations

import inspect
import os
import sys

import numpy as np
import pytest

import kdsl as kd
from kdsl.ir.nodes import Load, Store
from kdsl.ir.visit import walk_all_exprs, walk_stmts
from kdsl.trace.frames import assigned_names, location, user_frame

_seen: list[list[str]] = []


def probe(result=None):
    """Record the names the caller stores this call's result to; return `result`."""
    _seen.append(assigned_names(sys._getframe(1)))
    return result


def names_from(fn) -> list[list[str]]:
    _seen.clear()
    fn()
    return list(_seen)


def here():
    return location(sys._getframe(1))


def line_of(fn, marker: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(n for n, text in enumerate(lines) if f"# {marker}" in text)


# ------------------------------------------------------------------- assigned_names


def test_tuple_unpacking():
    def f():
        i, j = probe((1, 2))
        a, b, c = probe((1, 2, 3))

    assert names_from(f) == [["i", "j"], ["a", "b", "c"]]


def test_single_name():
    def f():
        x = probe()  # noqa: F841

    assert names_from(f) == [["x"]]


def test_for_loop_target():
    def f():
        for i in probe([0]):  # noqa: B007
            pass

    assert names_from(f) == [["i"]]


def test_for_loop_with_unpacking():
    def f():
        for i, j in probe([(0, 1)]):  # noqa: B007
            pass

    assert names_from(f) == [["i", "j"]]


def test_result_not_stored():
    def f():
        probe()
        print(probe(""), end="")
        return probe()

    assert names_from(f) == [[], [], []]


def test_result_stored_to_something_other_than_a_name():
    class Box:
        value = None

    def f():
        box, items = Box(), [None]
        box.value = probe()
        items[0] = probe()
        first = [probe()]  # noqa: F841 - inside a list display, not the stored value

    assert names_from(f) == [[], [], []]


def test_nested_unpacking_is_not_plain_names():
    def f():
        a, (b, c) = probe((1, (2, 3)))

    assert names_from(f) == [[]]


def test_closure_and_global_names():
    def f():
        captured = None

        def inner():
            nonlocal captured
            captured = probe()

        inner()
        return captured

    assert names_from(f) == [["captured"]]
    _seen.clear()
    exec("module_level = probe()", {"probe": probe})
    assert _seen == [["module_level"]]


def test_names_inside_a_kernel_come_from_its_frame():
    @kd.kernel
    def k(x, y):
        row, col = kd.indices(x.shape[0], x.shape[1])
        y[row, col] = x[row, col]

    text = str(k.ir(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32)))
    assert "for row in" in text and "for col in" in text


@pytest.mark.parametrize("folder", ["kernels", "examples"])
def test_kernels_shipped_inside_the_package_are_users_code(folder):
    """An installed wheel holds kdsl.kernels and kdsl.examples inside the package (an
    editable install beside it): their kernels' loops are named as a user's are, which
    their schedules rely on (the int8 llama2 kernel's fuse("r", ...))."""
    source = (
        "@kd.kernel\n"
        "def k(x, y):\n"
        "    row, col = kd.indices(x.shape[0], x.shape[1])\n"
        "    y[row, col] = x[row, col]\n"
    )
    path = os.path.join(os.path.dirname(os.path.abspath(kd.__file__)), folder, "shipped.py")
    namespace = {"kd": kd}
    exec(compile(source, path, "exec"), namespace)
    text = str(namespace["k"].ir(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32)))
    assert "for row in" in text and "for col in" in text
    assert user_frame() is not None


# ------------------------------------------------------------------------- location


def test_location_gives_line_and_column_span_of_the_call():
    def f():
        loc = here()  # marker
        return loc

    loc = f()
    assert loc.file == __file__ and loc.line == line_of(f, "marker")
    text = loc.text
    assert text.strip() == "loc = here()  # marker"
    assert text[loc.col : loc.end_col] == "here()"


def test_location_of_a_call_inside_an_expression():
    def f():
        return [1, here(), 2][1]  # marker

    loc = f()
    assert loc.line == line_of(f, "marker")
    assert loc.text[loc.col : loc.end_col] == "here()"


def test_location_excerpt_puts_a_caret_under_the_span():
    def f():
        return here()  # marker

    excerpt = f().excerpt().splitlines()
    assert excerpt[0].endswith(f"line {line_of(f, 'marker')}")
    assert excerpt[1].strip() == "return here()  # marker"
    caret_line = excerpt[2]
    start = caret_line.index("^")
    assert excerpt[1][start : start + len("here()")] == "here()"
    assert caret_line.strip() == "^" * len("here()")


def test_user_frame_skips_kdsl_internals():
    frame = user_frame()
    assert frame is not None and frame.f_code.co_filename == __file__


def test_traced_nodes_carry_the_users_line_and_span():
    @kd.kernel
    def k(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[i] + x[i + 2]  # marker

    ir = k.ir(np.ones(5, np.float32), np.ones(3, np.float32)).kernel
    (store,) = [s for s in walk_stmts(ir.body) if isinstance(s, Store)]
    loads = [e for e in walk_all_exprs(ir.body) if isinstance(e, Load)]
    assert store.loc.line == line_of(k.fn, "marker")
    assert store.loc.text[store.loc.col : store.loc.end_col] == "y[i]"
    spans = {e.loc.text[e.loc.col : e.loc.end_col] for e in loads}
    assert spans == {"x[i]", "x[i + 2]"}


def test_trace_error_points_at_the_users_line():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] & 1  # marker

    with pytest.raises(kd.TraceError) as info:
        k.ir(np.ones(2, np.float32), np.ones(2, np.float32))
    loc = info.value.loc
    assert loc.line == line_of(k.fn, "marker")
    assert loc.text[loc.col : loc.end_col] == "x[i] & 1"
