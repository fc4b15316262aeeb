"""Addressing and rewriting statements in a kernel's loop tree.

A *path* is the list of positions leading to a statement: `(2, 0)` is the first
statement in the body of the third top-level statement. Schedule primitives find a loop
by name, rewrite it, and splice the result back with `splice`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from kdsl.ir.nodes import (
    Allocate,
    Expr,
    If,
    Kernel,
    Loop,
    LoopVar,
    Stmt,
)
from kdsl.ir.visit import map_stmt_exprs, walk_all_exprs, walk_stmts

ExprFn = Callable[[Expr], Expr | None]

Path = tuple[int, ...]


def body_of(s: Stmt) -> tuple[Stmt, ...]:
    if isinstance(s, Loop):
        return s.body
    if isinstance(s, If):
        return s.then
    return ()


def with_body(s: Stmt, body: tuple[Stmt, ...]) -> Stmt:
    if isinstance(s, Loop):
        return replace(s, body=body)
    if isinstance(s, If):
        return replace(s, then=body)
    raise TypeError(f"{type(s).__name__} has no body")


def positions(body: tuple[Stmt, ...], prefix: Path = ()) -> Iterator[tuple[Path, Stmt]]:
    """Every statement with its path, in program order."""
    for n, s in enumerate(body):
        yield (*prefix, n), s
        yield from positions(body_of(s), (*prefix, n))


def loops(kernel: Kernel) -> list[Loop]:
    return [s for s in walk_stmts(kernel.body) if isinstance(s, Loop)]


def loop_names(kernel: Kernel) -> list[str]:
    return [lp.var for lp in loops(kernel)]


def find(body: tuple[Stmt, ...], name: str) -> Path | None:
    found = find_loop(body, name)
    return None if found is None else found[0]


def find_loop(body: tuple[Stmt, ...], name: str) -> tuple[Path, Loop] | None:
    """The loop named `name` and its path, or None."""
    for path, s in positions(body):
        if isinstance(s, Loop) and s.var == name:
            return path, s
    return None


def at(body: tuple[Stmt, ...], path: Path) -> Stmt:
    s = body[path[0]]
    for n in path[1:]:
        s = body_of(s)[n]
    return s


def enclosing(body: tuple[Stmt, ...], path: Path) -> list[Stmt]:
    """The statements around the one at `path`, outermost first."""
    out, block = [], body
    for n in path[:-1]:
        out.append(block[n])
        block = body_of(block[n])
    return out


def splice(body: tuple[Stmt, ...], path: Path, new: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
    """`body` with the statement at `path` replaced by the statements `new`."""
    n, rest = path[0], path[1:]
    if not rest:
        return body[:n] + new + body[n + 1 :]
    inner = with_body(body[n], splice(body_of(body[n]), rest, new))
    return body[:n] + (inner,) + body[n + 1 :]


def substitute(stmts: tuple[Stmt, ...], var: str, value: Expr) -> tuple[Stmt, ...]:
    """Replace loop variable `var` by `value` everywhere in `stmts`."""

    def fn(e: Expr) -> Expr | None:
        return value if isinstance(e, LoopVar) and e.name == var else None

    return tuple(map_stmt_exprs(s, fn) for s in stmts)


def mentions_var(stmts: tuple[Stmt, ...], var: str) -> bool:
    return any(isinstance(e, LoopVar) and e.name == var for e in walk_all_exprs(stmts))


def rewrite(
    stmts: tuple[Stmt, ...],
    expr: ExprFn,
    stmt: Callable[[Stmt], Stmt | None] = lambda s: s,
) -> tuple[Stmt, ...]:
    """`stmts` with `expr` mapped over every expression (loop extents and conditions
    too), then `stmt` applied to every statement, inner ones first and in program
    order; `stmt` returning None deletes the statement."""
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Loop | If):
            head = map_stmt_exprs(with_body(s, ()), expr)
            s = with_body(head, rewrite(body_of(s), expr, stmt))
        else:
            s = map_stmt_exprs(s, expr)
        new = stmt(s)
        if new is not None:
            out.append(new)
    return tuple(out)


def without_allocate(stmts: tuple[Stmt, ...], buffer: str) -> tuple[Stmt, ...]:
    """`stmts` without the allocation of temporary `buffer`, wherever it is."""
    return rewrite(
        stmts,
        lambda e: None,
        lambda s: None if isinstance(s, Allocate) and s.buffer == buffer else s,
    )


def nest_of(body: tuple[Stmt, ...], path: Path) -> list[Loop]:
    """The loops around and inside the loop at `path` (not itself)."""
    loop = at(body, path)
    around = [s for s in enclosing(body, path) if isinstance(s, Loop)]
    return around + [s for s in walk_stmts(body_of(loop)) if isinstance(s, Loop)]
