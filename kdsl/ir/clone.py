"""Copies of statements that can sit beside the original in one kernel: everything a
copy declares (loops, locals, temporaries) gets a fresh name, and its uses follow.

The passes that write a loop body out several times (unrolling, a tile's edge) and the
schedule step that runs a second version of a nest (`specialize`) copy through here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Buffer,
    DeclareLocal,
    Expr,
    If,
    Load,
    LocalVar,
    Loop,
    LoopVar,
    Prefetch,
    Stmt,
    Store,
)
from kdsl.ir.visit import map_expr, map_stmt_exprs, walk_stmts


class Cloner:
    """Copies statements of one kernel, naming what they declare with `fresh` (the
    kernel's namer, shared with the caller's own new names). The temporaries the copies
    allocate are in `new_buffers`, for the caller to add to the kernel."""

    def __init__(self, fresh: Callable[[str], str], buffers: tuple[Buffer, ...]):
        self.fresh = fresh
        self.buffers = {b.name: b for b in buffers}
        self.new_buffers: list[Buffer] = []

    def loop(self, loop: Loop) -> Loop:
        (copy,) = self.block((loop,), {})
        assert isinstance(copy, Loop)
        return copy

    def block(self, stmts: tuple[Stmt, ...], values: dict[str, Expr]) -> tuple[Stmt, ...]:
        """`stmts` with loop variables replaced by `values` and everything they declare
        renamed."""
        return self.renamed(stmts, values)[0]

    def renamed(
        self, stmts: tuple[Stmt, ...], values: dict[str, Expr], temps: tuple[str, ...] = ()
    ) -> tuple[tuple[Stmt, ...], dict[str, str]]:
        """`block`, and the name each loop and temporary of `stmts` has in the copy;
        `temps`, temporaries allocated outside `stmts`, are renamed too (the caller
        allocates the copies')."""
        loops: dict[str, str] = {}
        names = {t: self._new_temp(t) for t in temps}
        for s in walk_stmts(stmts):
            if isinstance(s, Loop):
                loops[s.var] = self.fresh(s.var)
            elif isinstance(s, DeclareLocal):
                names[s.name] = self.fresh(s.name)
            elif isinstance(s, Allocate):
                names[s.buffer] = self._new_temp(s.buffer)

        def expr(e: Expr) -> Expr | None:
            match e:
                case LoopVar(name=n) if n in values:
                    return values[n]
                case LoopVar(name=n) if n in loops:
                    return replace(e, name=loops[n])
                case LocalVar(name=n) if n in names:
                    return replace(e, name=names[n])
                case Load(buffer=b) if b in names:
                    return replace(e, buffer=names[b])
            return None

        def stmt(s: Stmt) -> Stmt:
            s = map_stmt_exprs(s, expr) if not isinstance(s, Loop | If) else s
            match s:
                case Loop(var=v, extent=x, body=body):
                    return replace(
                        s, var=loops[v], extent=map_expr(x, expr), body=tuple(stmt(b) for b in body)
                    )
                case If(cond=c, then=then):
                    return replace(s, cond=map_expr(c, expr), then=tuple(stmt(b) for b in then))
                case DeclareLocal(name=n):
                    return replace(s, name=names[n])
                case Assign(local=n) if n in names:
                    return replace(s, local=names[n])
                case Allocate(buffer=b):
                    return replace(s, buffer=names[b])
                case Store(buffer=b) | Prefetch(buffer=b) if b in names:
                    return replace(s, buffer=names[b])
            return s

        return tuple(stmt(s) for s in stmts), loops | names

    def _new_temp(self, name: str) -> str:
        new = self.fresh(name)
        self.buffers[new] = replace(self.buffers[name], name=new)
        self.new_buffers.append(self.buffers[new])
        return new
