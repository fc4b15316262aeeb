"""The IR printer: Python precedence in expressions, loops with kinds, declarations."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    Buffer,
    BufferRole,
    Cast,
    Check,
    CheckKind,
    Const,
    DeclareLocal,
    DimOf,
    Fma,
    If,
    Kernel,
    Load,
    LocalVar,
    Loop,
    LoopExec,
    LoopKind,
    LoopVar,
    Param,
    ScalarArg,
    Scope,
    Select,
    Store,
    Unary,
    UnaryOp,
)
from kdsl.ir.printer import format_expr, format_kernel, format_stmts

A, B, C = (LocalVar(n, kd.f32) for n in "abc")
P, Q = LocalVar("p", kd.bool_), LocalVar("q", kd.bool_)
N = LocalVar("n", kd.i32)


def op(o, x, y):
    d = kd.bool_ if o.is_comparison else x.dtype
    return Binary(o, x, y, d)


def neg(x):
    return Unary(UnaryOp.NEG, x, x.dtype)


ADD, SUB, MUL, DIV, POW = BinaryOp.ADD, BinaryOp.SUB, BinaryOp.MUL, BinaryOp.DIV, BinaryOp.POW


@pytest.mark.parametrize(
    "expr, text",
    [
        (op(ADD, op(MUL, A, B), C), "a * b + c"),
        (op(MUL, op(ADD, A, B), C), "(a + b) * c"),
        (op(SUB, op(SUB, A, B), C), "a - b - c"),
        (op(SUB, A, op(SUB, B, C)), "a - (b - c)"),
        (op(DIV, A, op(MUL, B, C)), "a / (b * c)"),
        (op(DIV, op(MUL, A, B), C), "a * b / c"),
        (op(POW, A, op(POW, B, C)), "a ** (b ** c)"),
        (op(MUL, A, op(POW, B, C)), "a * b ** c"),
        (neg(op(ADD, A, B)), "-(a + b)"),
        (op(MUL, neg(A), B), "-a * b"),
        (neg(neg(A)), "-(-a)"),
        (op(ADD, A, Const(-2.0, kd.f32)), "a - 2.0"),
        (op(ADD, N, Const(-2, kd.i32)), "n - 2"),
        (op(SUB, N, Const(-2, kd.i32)), "n + 2"),
        (op(SUB, C, op(ADD, N, Const(-2, kd.i32))), "c - (n - 2)"),
        (op(ADD, op(SUB, A, B), Const(-2.0, kd.f32)), "a - b - 2.0"),
        (Unary(UnaryOp.INVERT, P, kd.bool_), "~p"),
        (Unary(UnaryOp.INVERT, op(BinaryOp.AND, P, Q), kd.bool_), "~(p & q)"),
        (op(BinaryOp.AND, op(BinaryOp.OR, P, Q), P), "(p | q) & p"),
        (op(BinaryOp.OR, P, op(BinaryOp.AND, Q, P)), "p | q & p"),
        (op(BinaryOp.AND, op(BinaryOp.LT, A, B), P), "(a < b) & p"),
        (op(BinaryOp.LT, op(ADD, A, B), C), "a + b < c"),
        (op(BinaryOp.EQ, P, op(BinaryOp.LT, A, B)), "p == (a < b)"),
        (op(BinaryOp.SHL, op(ADD, N, Const(1, kd.i32)), Const(2, kd.i32)), "n + 1 << 2"),
        (op(ADD, op(BinaryOp.SHL, N, Const(1, kd.i32)), Const(2, kd.i32)), "(n << 1) + 2"),
        (op(BinaryOp.FLOORDIV, N, op(BinaryOp.MOD, N, N)), "n // (n % n)"),
        (op(BinaryOp.MAX, op(ADD, A, B), C), "max(a + b, c)"),
        (op(BinaryOp.MIN, A, B), "min(a, b)"),
        (Unary(UnaryOp.EXP, op(ADD, A, B), kd.f32), "exp(a + b)"),
        (Cast(op(ADD, N, N), kd.f32), "f32(n + n)"),
        (Select(P, A, op(ADD, B, C), kd.f32), "where(p, a, b + c)"),
        (Fma(A, B, C, kd.f32), "fma(a, b, c)"),
        (Const(float("inf"), kd.f32), "inf"),
        (Const(True, kd.bool_), "True"),
        (DimOf("x", 1), "x.shape[1]"),
        (ScalarArg("eps", kd.f64), "eps"),
        (Load("x", (LoopVar("i"), op(ADD, LoopVar("j"), LoopVar("j"))), kd.f32), "x[i, j + j]"),
        (op(POW, op(POW, A, B), C), "(a ** b) ** c"),
        (op(POW, neg(A), B), "(-a) ** b"),
        (op(POW, Const(-1.0, kd.f32), B), "(-1.0) ** b"),
        (op(POW, A, neg(B)), "a ** -b"),
        (neg(op(POW, A, B)), "-(a ** b)"),
        (op(BinaryOp.EQ, op(BinaryOp.LT, A, B), P), "(a < b) == p"),
    ],
)
def test_expression_text_follows_python_precedence(expr, text):
    assert format_expr(expr) == text


def test_printed_expressions_evaluate_like_the_tree_in_python():
    """The text is valid Python with the tree's meaning."""
    e = op(SUB, op(MUL, neg(A), op(ADD, B, C)), op(SUB, B, op(DIV, A, C)))
    env = {"a": 2.0, "b": 3.0, "c": 5.0, "p": False}
    assert eval(format_expr(e), env) == (-2.0 * (3.0 + 5.0)) - (3.0 - 2.0 / 5.0)
    assert eval(format_expr(op(POW, neg(A), Const(2.0, kd.f32))), env) == 4.0
    assert eval(format_expr(op(POW, A, neg(B))), env) == 2.0**-3.0
    assert eval(format_expr(op(POW, op(POW, A, B), C)), env) == (2.0**3.0) ** 5.0
    assert eval(format_expr(op(BinaryOp.EQ, op(BinaryOp.LT, A, B), P)), env) is False
    minus = op(SUB, C, op(ADD, A, Const(-2.0, kd.f32)))  # printed c - (a - 2.0)
    assert eval(format_expr(minus), env) == 5.0 - (2.0 + -2.0)


# ---------------------------------------------------------------------------- statements

I = LoopVar("i")  # noqa: E741


def loop(var, body, kind=LoopKind.PARALLEL, ex=LoopExec.SERIAL, width=1, extent=None):
    return Loop(var, extent or DimOf("x", 0), kind, tuple(body), ex, width)


def test_loop_header_shows_dependence_kind():
    lines = format_stmts((loop("i", [], LoopKind.REDUCTION),))
    assert lines == ["  for i in range(x.shape[0]):  # reduction"]


@pytest.mark.parametrize(
    "ex, width, suffix",
    [
        (LoopExec.SERIAL, 1, "# parallel"),
        (LoopExec.VECTORIZED, 8, "# parallel, vectorized(8)"),
        (LoopExec.UNROLLED, 4, "# parallel, unrolled(4)"),
        (LoopExec.PARALLEL, 1, "# parallel, parallelized"),
        (LoopExec.GPU_THREAD_X, 1, "# parallel, thread.x"),
    ],
)
def test_loop_header_shows_execution_once_scheduled(ex, width, suffix):
    (line,) = format_stmts((loop("i", [], ex=ex, width=width),))
    assert line.endswith(suffix)


def test_nested_statements_indent_two_spaces_per_level():
    store = Store("y", (I,), Load("x", (I,), kd.f32))
    body = (
        DeclareLocal("acc", kd.f32, Const(0.0, kd.f32)),
        loop("i", [If(op(BinaryOp.GT, LocalVar("acc", kd.f32), A), (store,))], LoopKind.SERIAL),
        Assign("acc", op(ADD, LocalVar("acc", kd.f32), Const(1.0, kd.f32))),
    )
    assert format_stmts(body) == [
        "  acc: f32 = 0.0",
        "  for i in range(x.shape[0]):  # serial",
        "    if acc > a:",
        "      y[i] = x[i]",
        "  acc = acc + 1.0",
    ]


def test_check_and_allocate_lines():
    cond = op(BinaryOp.EQ, DimOf("x", 0), DimOf("y", 0))
    body = (Check(cond, CheckKind.BOUNDS, "x and y agree"), Allocate("t"))
    assert format_stmts(body, indent=0) == [
        "check x.shape[0] == y.shape[0]  # bounds",
        "allocate t",
    ]


def test_whole_kernel_with_params_buffers_and_results():
    x = Buffer("x", kd.f32, (DimOf("x", 0),), BufferRole.PARAM, Scope.GLOBAL, contiguous=False)
    t = Buffer("t", kd.f64, (Const(8, kd.i64),), BufferRole.TEMP, Scope.STACK)
    r = Buffer("r", kd.f32, (DimOf("x", 0),), BufferRole.RESULT, Scope.GLOBAL)
    body = (
        Allocate("t"),
        loop(
            "i",
            [
                Store(
                    "r",
                    (I,),
                    op(MUL, Load("x", (I,), kd.f32), Cast(ScalarArg("s", kd.f64), kd.f32)),
                )
            ],
        ),
    )
    k = Kernel(
        "k", (Param("x", kd.f32, 1), Param("s", kd.f64, None, weak=True)), (x, t, r), body, ("r",)
    )
    assert format_kernel(k) == "\n".join(
        [
            "kernel k(x: f32[1d], s: f64) -> r",
            "  buffer x: f32[x.shape[0]] param global, strided",
            "  buffer t: f64[8] temp stack",
            "  buffer r: f32[x.shape[0]] result global",
            "  allocate t",
            "  for i in range(x.shape[0]):  # parallel",
            "    r[i] = x[i] * f32(s)",
        ]
    )


def test_zero_dimensional_buffer_and_no_results():
    x = Buffer("x", kd.i8, (), BufferRole.PARAM, Scope.GLOBAL)
    k = Kernel("z", (Param("x", kd.i8, 0),), (x,), (Store("x", (), Const(1, kd.i8)),))
    assert format_kernel(k).splitlines() == [
        "kernel z(x: i8[0d])",
        "  buffer x: i8[] param global",
        "  x[] = 1",
    ]


def test_ir_view_prints_and_escapes_html():
    @kd.kernel
    def shift(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[i + 1]

    view = shift.lowered(np.ones(4, np.float32), np.ones(3, np.float32))
    assert str(view) == repr(view) == format_kernel(view.kernel)
    assert "< f64(x.shape[0])" in str(view)
    html = view._repr_html_()
    assert html.startswith("<pre>") and html.endswith("</pre>")
    assert "&lt; f64(x.shape[0])" in html and "<" not in html[5:-6]
