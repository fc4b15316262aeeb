"""The code that messages suggest, in the user's terms: their source text (a chained
comparison rewritten with &, the argument of a round()), and IR expressions printed with
the user's names (an implicit index as r, not %0; a kd.range loop's t, not t + t_start),
or not at all where the print is no Python the user could paste."""

from __future__ import annotations

import ast

from kdsl.ir.nodes import Const, DimOf, Expr, Load, LocalVar, LoopVar, ScalarArg
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import rebuild_expr, walk_expr
from kdsl.trace.frames import location
from kdsl.trace.reduction import Reduction

_COMPARISONS = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
}


def logic_fix() -> tuple[str, str] | None:
    """(what, fix) for a chained comparison or an `and`/`or`/`not` of comparisons at the
    user's line: the same with & | ~ (each part in parentheses, as & binds tighter than
    a comparison); None for other code (an `if`)."""
    loc = location()
    found = loc.expression() if loc is not None else None
    if found is None:
        return None
    span, node = found

    def text(e: ast.expr) -> str:
        return ast.get_source_segment(span, e) or ast.unparse(e)

    match node:
        case ast.Compare(left=left, ops=ops, comparators=rest) if len(ops) > 1 and all(
            type(op) in _COMPARISONS for op in ops
        ):
            sides = [left, *rest]
            parts = [
                f"({text(a)} {_COMPARISONS[type(op)]} {text(b)})"
                for a, op, b in zip(sides, ops, sides[1:])
            ]
            what = f"the chained comparison {span} on a symbolic value: Python "
            fix = f"compare each pair and combine them with &: {' & '.join(parts)}"
        case ast.BoolOp(op=op, values=values) if all(isinstance(v, ast.Compare) for v in values):
            word, symbol = ("and", "&") if isinstance(op, ast.And) else ("or", "|")
            what = f"`{word}` of symbolic conditions: Python's `{word}` "
            fix = (
                f"combine them with {symbol}: {f' {symbol} '.join(f'({text(v)})' for v in values)}"
            )
        case ast.UnaryOp(op=ast.Not(), operand=ast.Compare() as operand):
            what = "`not` of a symbolic condition: Python's `not` "
            fix = f"negate it with ~: ~({text(operand)})"
        case _:
            return None
    if loc is not None and loc.text.lstrip().startswith(("if ", "elif ", "while ")):
        fix += ", with `with kd.when(...):` in place of the Python branch"
    return what + "needs its truth, which is only known when the kernel runs", fix


def round_fix(digits: object) -> str:
    """kd.round of the argument as the user wrote it (`round(x[i])` → kd.round(x[i]))."""
    loc = location()
    found = loc.expression() if loc is not None else None
    arg = "x"
    if found is not None and isinstance(found[1], ast.Call) and found[1].args:
        arg = ast.get_source_segment(found[0], found[1].args[0]) or arg
    fix = f"use kd.round({arg}): halves to even, as Python's round() and np.round do"
    if isinstance(digits, int) and not isinstance(digits, bool) and digits:
        scale = f"1e{digits}"
        fix += f"; to {digits} digits, kd.round({arg} * {scale}) / {scale}"
    return fix


def in_users_names(e: Expr) -> Expr:
    """`e` with the trace's implicit indices (%0) and kd.range loop values (t + t_start)
    as the user's variables (r, t)."""
    from kdsl.trace.context import active  # (the context module imports this one)

    ctx = active()
    names = {p: i.name for p, i in ctx.indices.items()} if ctx is not None else {}
    forms = ctx.user_forms if ctx is not None else {}

    def named(old: Expr, new: Expr) -> Expr | None:
        if isinstance(old, Reduction):  # as the call that made it, a name to the printer
            over = ", ".join(names.get(p, p) for p in old.over)
            over = over if len(old.over) == 1 else f"({over})"
            body = format_expr(in_users_names(old.body))
            return LocalVar(f"kd.{old.label}({body}, over={over})", old.dtype)
        return LoopVar(forms[old]) if old in forms else _named_index(new, names)

    return rebuild_expr(e, named)


def user_text(e: Expr) -> str | None:
    """`e` as the user could write it in the kernel, or None where the printed IR is not
    such Python: kdsl's own names (a kd.range loop's `t_start`, `i.1`), function-style
    nodes (`f32(n)`, `exp(x)`), or long text."""
    named = in_users_names(e)
    text = format_expr(named)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None
    ours = {
        x.name
        for x in walk_expr(named)
        if isinstance(x, LoopVar | LocalVar | ScalarArg) and not x.name.endswith("_start")
    } | {x.buffer for x in walk_expr(named) if isinstance(x, Load | DimOf)}
    ok = all(
        not isinstance(node, ast.Call) and (not isinstance(node, ast.Name) or node.id in ours)
        for node in ast.walk(tree)
    )
    return text if ok and len(text) <= 40 else None


def _named_index(x: Expr, names: dict[str, str]) -> Expr | None:
    if isinstance(x, LoopVar) and x.name in names:
        return LoopVar(names[x.name])
    return None


def cast_text(e: Expr, to: str) -> str:
    """Code that casts `e` to dtype `to`: x[i].astype(kd.f32), (n[i] + 2).astype(kd.f32),
    kd.cast(1.0, kd.i32) for a constant; in words where `e` has no such text."""
    text = user_text(e)
    if text is None:
        return f"the {e.dtype.name} operand with .astype(kd.{to})"
    if isinstance(e, Const):
        return f"kd.cast({text}, kd.{to})"
    atom = isinstance(ast.parse(text, mode="eval").body, ast.Name | ast.Subscript)
    return f"{text if atom else f'({text})'}.astype(kd.{to})"
