"""Integer divisions that every iteration of a loop computes alike, computed once before it.

A subscript such as `key[h // group, t, d]` in a loop over keys t (the kv head of query
head h, in grouped-query attention) divides once per key: two divisions per score, half
the time of a small head's scores (Zen 2, 6 heads of 48 at 256 keys: 21 → 11 µs). LLVM
leaves them in the loop: a division by zero is 0 in kdsl, a select on the divisor that
LLVM does not count as safe to run before a loop that may run no iteration. kdsl's
division is total, so it is: each largest integer expression holding a floor division or
a remainder by a value known when the kernel runs, that reads no array, no local (but
those made here) and none of the variables of the loop or of the loops inside it, becomes
a local declared just before the outermost such loop. Not a division by a constant: LLVM
hoists it itself, and the code generator reads such expressions as they are (a vector
tail's start, `n // 16 * 16`, is a multiple of the width; a tile product's extents are
its tile's). Loop extents stay as they are too (computed once per run of their loop, and
compared by the vectorizer with the dimensions they cover); the bodies of vector loops get
no locals, and tile products (AMX, MMA) are left whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from kdsl.ir.nodes import (
    Binary,
    BinaryOp,
    Const,
    DeclareLocal,
    Expr,
    If,
    Kernel,
    Load,
    LocalVar,
    Loop,
    LoopExec,
    LoopVar,
    Stmt,
)
from kdsl.ir.visit import (
    children,
    fresh_namer,
    rebuild_expr,
    stmt_exprs,
    walk_expr,
    walk_stmts,
    with_exprs,
)

_DIVISIONS = (BinaryOp.FLOORDIV, BinaryOp.MOD)
_RECURSE = (LoopExec.SERIAL, LoopExec.PARALLEL)  # loops whose bodies may take locals
_TILES = (LoopExec.AMX, LoopExec.MMA)  # tile products, matched by their form


def hoist_divisions(kernel: Kernel) -> Kernel:
    return replace(kernel, body=_Hoister(fresh_namer(kernel)).block(kernel.body))


# The most nodes an expression may have, counted as a tree, to be hoisted: an index's
# division is a few. (IR expressions share sub-expressions, and a tree walk, equality or
# hash of a large one is exponential in its depth: every walk here is by identity.)
MAX_NODES = 64


class _Hoister:
    def __init__(self, fresh: Callable[[str], str]) -> None:
        self.fresh = fresh
        self.made: set[str] = set()  # the locals made here: as invariant as what they hold
        self.divides: dict[int, tuple[Expr, bool]] = {}  # `_divides`, for every loop's walk

    def block(self, body: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
        out: list[Stmt] = []
        for s in body:
            if isinstance(s, Loop) and s.exec not in _TILES:
                found = _invariant_divisions(s, self.made, self.divides)
                local = {
                    e: LocalVar(self.fresh("div"), e.dtype) for e in dict.fromkeys(found.values())
                }
                self.made |= {v.name for v in local.values()}
                out += [DeclareLocal(v.name, v.dtype, e) for e, v in local.items()]
                if found:
                    by_id = {i: local[e] for i, e in found.items()}
                    s = replace(s, body=tuple(_replaced(b, by_id) for b in s.body))
                if s.exec in _RECURSE:
                    s = replace(s, body=self.block(s.body))
            elif isinstance(s, If):
                s = replace(s, then=self.block(s.then))
            out.append(s)
        return tuple(out)


def _replaced(s: Stmt, by_id: dict[int, LocalVar]) -> Stmt:
    return with_exprs(s, lambda e: rebuild_expr(e, lambda old, _: by_id.get(id(old))))


def _invariant_divisions(
    loop: Loop, made: set[str], divides: dict[int, tuple[Expr, bool]]
) -> dict[int, Expr]:
    """The largest division-holding integer expressions in `loop`'s body that read no
    array and no local but those `made`, and vary with no loop of it (`loop` included):
    each occurrence by its identity, in program order."""
    varying = {loop.var} | {s.var for s in walk_stmts(loop.body) if isinstance(s, Loop)}
    sizes: dict[int, int] = {}
    found: dict[int, Expr] = {}
    seen: set[int] = set()

    def visit(e: Expr) -> None:
        if id(e) in seen:
            return
        seen.add(id(e))
        if not _divides(e, divides):  # (nor does any part of it: the walk ends here)
            return
        if _tree_size(e, sizes) <= MAX_NODES and _hoistable(e, varying, made):
            found[id(e)] = e
            return
        for c in children(e):
            visit(c)

    for s in _outside_tiles(loop.body):
        if not isinstance(s, Loop):  # (an extent: see the module docstring)
            for e in stmt_exprs(s):
                visit(e)
    return found


def _outside_tiles(body: tuple[Stmt, ...]) -> Iterator[Stmt]:
    """`walk_stmts`, not into tile products."""
    for s in body:
        if isinstance(s, Loop) and s.exec in _TILES:
            continue
        yield s
        if isinstance(s, Loop | If):
            yield from _outside_tiles(s.body if isinstance(s, Loop) else s.then)


def _tree_size(e: Expr, sizes: dict[int, int]) -> int:
    """Nodes of `e` counted as a tree (capped past MAX_NODES), memoized by identity."""
    if id(e) not in sizes:
        sizes[id(e)] = min(1 + sum(_tree_size(c, sizes) for c in children(e)), MAX_NODES + 1)
    return sizes[id(e)]


def _divides(e: Expr, memo: dict[int, tuple[Expr, bool]]) -> bool:
    """Whether `e` holds a floor division or remainder by a value that is not a constant,
    memoized by identity (the memo holds `e`, so that its id is not reused)."""
    if id(e) not in memo:
        own = isinstance(e, Binary) and e.op in _DIVISIONS and not isinstance(e.rhs, Const)
        memo[id(e)] = (e, own or any(_divides(c, memo) for c in children(e)))
    return memo[id(e)][1]


def _hoistable(e: Expr, varying: set[str], made: set[str]) -> bool:
    """An integer expression (holding a division by a variable) that reads nothing that
    changes in the loop."""
    return e.dtype.is_int and not any(
        isinstance(x, Load)
        or (isinstance(x, LocalVar) and x.name not in made)
        or (isinstance(x, LoopVar) and x.name in varying)
        for x in walk_expr(e)
    )
