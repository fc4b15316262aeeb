"""Walking and rebuilding IR trees: the traversal every pass and analysis shares."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    Cast,
    Check,
    Const,
    DeclareLocal,
    DimOf,
    Expr,
    Fma,
    If,
    Kernel,
    Load,
    LocalVar,
    Loop,
    LoopVar,
    Prefetch,
    ScalarArg,
    Select,
    Stmt,
    Store,
    Unary,
)


def children(e: Expr) -> tuple[Expr, ...]:
    match e:
        case Const() | LoopVar() | LocalVar() | ScalarArg() | DimOf():
            return ()
        case Load(index=index):
            return index
        case Binary(lhs=a, rhs=b):
            return (a, b)
        case Unary(operand=a) | Cast(operand=a):
            return (a,)
        case Select(cond=c, if_true=a, if_false=b):
            return (c, a, b)
        case Fma(a=a, b=b, c=c):
            return (a, b, c)
    raise TypeError(f"not an IR expression: {e!r}")


def walk_expr(e: Expr, parts: Callable[[Expr], tuple[Expr, ...]] = children) -> Iterator[Expr]:
    """`e` and all its sub-expressions (those `parts` gives: all of them by default),
    parents first; a sub-expression shared by identity is visited once (the walk is
    linear in the DAG, not the tree)."""
    seen: set[int] = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        stack.extend(reversed(parts(x)))


def uses_by_identity(exprs: Iterable[Expr]) -> tuple[dict[int, int], list[Expr]]:
    """How many parents (or of `exprs`' slots) refer to each node, by id, and the nodes,
    each once, children first: a sub-expression shared by identity (a traced value used
    twice) is walked once, so the work is linear in the DAG."""
    uses: dict[int, int] = {}
    order: list[Expr] = []
    for root in exprs:
        stack: list[tuple[Expr, bool]] = [(root, False)]
        while stack:
            e, children_done = stack.pop()
            if children_done:
                order.append(e)
                continue
            uses[id(e)] = uses.get(id(e), 0) + 1
            if uses[id(e)] == 1:
                stack.append((e, True))
                stack.extend((c, False) for c in reversed(children(e)))
    return uses, order


def map_expr(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """Rebuild `e` bottom-up; `fn` returns a replacement for a node or None to keep it.

    A sub-expression shared by identity is rebuilt once and stays shared, so the work
    is linear in the expression's DAG, not its (possibly exponential) tree."""
    return rebuild_expr(e, lambda _, new: fn(new))


def rebuild_expr(e: Expr, fn: Callable[[Expr, Expr], Expr | None]) -> Expr:
    """`map_expr`, with `fn` given each node as it was (to look it up by identity) and
    as rebuilt."""
    done: dict[int, tuple[Expr, Expr]] = {}

    def go(x: Expr) -> Expr:
        hit = done.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1]
        match x:
            case Load(index=index):
                new: Expr = replace(x, index=tuple(go(i) for i in index))
            case Binary(lhs=a, rhs=b):
                new = replace(x, lhs=go(a), rhs=go(b))
            case Unary(operand=a) | Cast(operand=a):
                new = replace(x, operand=go(a))
            case Select(cond=c, if_true=a, if_false=b):
                new = replace(x, cond=go(c), if_true=go(a), if_false=go(b))
            case Fma(a=a, b=b, c=c):
                new = replace(x, a=go(a), b=go(b), c=go(c))
            case _:
                new = x
        out = fn(x, new)
        result = new if out is None else out
        done[id(x)] = (x, result)
        return result

    return go(e)


def stmt_exprs(s: Stmt) -> tuple[Expr, ...]:
    """The expressions a statement evaluates itself (not those of nested statements)."""
    match s:
        case Store(index=index, value=v):
            return (*index, v)
        case Prefetch(index=index):
            return index
        case DeclareLocal(init=v) | Assign(value=v):
            return (v,)
        case Loop(extent=v) | If(cond=v) | Check(cond=v):
            return (v,)
        case Allocate():
            return ()
    raise TypeError(f"not an IR statement: {s!r}")


def walk_stmts(body: tuple[Stmt, ...]) -> Iterator[Stmt]:
    """Every statement in `body`, nested ones included, in program order."""
    for s in body:
        yield s
        if isinstance(s, Loop | If):
            yield from walk_stmts(s.body if isinstance(s, Loop) else s.then)


def local_definitions(body: tuple[Stmt, ...]) -> list[tuple[str, Expr]]:
    """Every value a local is given in `body`: its declaration's and each assignment's,
    in program order."""
    return [
        (s.name, s.init) if isinstance(s, DeclareLocal) else (s.local, s.value)
        for s in walk_stmts(body)
        if isinstance(s, DeclareLocal | Assign)
    ]


def walk_all_exprs(body: tuple[Stmt, ...]) -> Iterator[Expr]:
    for s in walk_stmts(body):
        for e in stmt_exprs(s):
            yield from walk_expr(e)


def map_stmt_exprs(s: Stmt, fn: Callable[[Expr], Expr | None]) -> Stmt:
    """Rebuild one statement (and its nested ones) with `map_expr(…, fn)` on every expression."""
    return with_exprs(s, lambda e: map_expr(e, fn))


def with_exprs(s: Stmt, m: Callable[[Expr], Expr]) -> Stmt:
    """One statement (and its nested ones) with each expression `e` replaced by `m(e)`."""
    match s:
        case Store(index=index, value=v):
            return replace(s, index=tuple(m(i) for i in index), value=m(v))
        case Prefetch(index=index):
            return replace(s, index=tuple(m(i) for i in index))
        case DeclareLocal(init=v):
            return replace(s, init=m(v))
        case Assign(value=v):
            return replace(s, value=m(v))
        case Loop(extent=v, body=body):
            return replace(s, extent=m(v), body=tuple(with_exprs(b, m) for b in body))
        case If(cond=v, then=then):
            return replace(s, cond=m(v), then=tuple(with_exprs(b, m) for b in then))
        case Check(cond=v):
            return replace(s, cond=m(v))
        case Allocate():
            return s
    raise TypeError(f"not an IR statement: {s!r}")


def rename_loop_vars(s: Stmt, renames: dict[str, str]) -> Stmt:
    """Rename loops and their uses, e.g. to keep loop names unique in a kernel."""

    def fn(e: Expr) -> Expr | None:
        if isinstance(e, LoopVar) and e.name in renames:
            return replace(e, name=renames[e.name])
        return None

    def go(st: Stmt) -> Stmt:
        match st:
            case Loop(var=var, body=body):
                st = replace(st, var=renames.get(var, var), body=tuple(go(b) for b in body))
            case If(then=then):
                st = replace(st, then=tuple(go(b) for b in then))
        return st

    return go(map_stmt_exprs(s, fn))


def fresh_namer(kernel: Kernel) -> Callable[[str], str]:
    """A function giving kernel-unique names (for loops, locals and buffers) from a base."""
    taken = {b.name for b in kernel.buffers} | {p.name for p in kernel.params}
    for s in walk_stmts(kernel.body):
        if isinstance(s, Loop):
            taken.add(s.var)
        elif isinstance(s, DeclareLocal | Assign):
            taken.add(s.name if isinstance(s, DeclareLocal) else s.local)

    def fresh(base: str) -> str:
        name, n = base, 0
        while name in taken:
            n += 1
            name = f"{base}.{n}"
        taken.add(name)
        return name

    return fresh


def buffers_accessed(body: tuple[Stmt, ...]) -> set[str]:
    """The buffers `body` reads or stores to."""
    read = {e.buffer for e in walk_all_exprs(body) if isinstance(e, Load)}
    return read | {s.buffer for s in walk_stmts(body) if isinstance(s, Store)}


def locals_used(body: tuple[Stmt, ...]) -> set[str]:
    """The locals `body` reads or assigns."""
    read = {e.name for e in walk_all_exprs(body) if isinstance(e, LocalVar)}
    return read | {s.local for s in walk_stmts(body) if isinstance(s, Assign)}


def outer_updates(loop: Loop) -> list[Assign]:
    """Assignments in `loop` to locals declared outside it: they carry values from one
    iteration to the next, so they constrain reordering, distribution and threads."""
    declared = {s.name for s in walk_stmts(loop.body) if isinstance(s, DeclareLocal)}
    return [s for s in walk_stmts(loop.body) if isinstance(s, Assign) and s.local not in declared]


def mentions_loop_var(e: Expr, name: str) -> bool:
    """Whether `e` reads the variable of loop `name`."""
    return any(isinstance(x, LoopVar) and x.name == name for x in walk_expr(e))


def mentions_local(e: Expr, name: str) -> bool:
    """Whether `e` reads local `name`."""
    return any(isinstance(x, LocalVar) and x.name == name for x in walk_expr(e))


def from_runtime_values(e: Expr, runtime_locals: frozenset[str]) -> bool:
    """`e` reads array data or a scalar argument, or a local computed from them."""
    return any(
        isinstance(x, Load | ScalarArg) or (isinstance(x, LocalVar) and x.name in runtime_locals)
        for x in walk_expr(e)
    )


def runtime_locals(body: tuple[Stmt, ...]) -> frozenset[str]:
    """The locals whose value comes from array data or scalar arguments, directly or
    through other locals (`j = kd.local(idx[i])`)."""
    definitions = local_definitions(body)
    found: set[str] = set()
    while True:
        new = {
            name
            for name, value in definitions
            if name not in found and from_runtime_values(value, frozenset(found))
        }
        if not new:
            return frozenset(found)
        found |= new
