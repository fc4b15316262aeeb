"""Which array parameters a kernel may update in place (`relu(x, out=x)`), found on the
traced IR, where the statement that allows it is still recognizable (a schedule keeps
it true, not recognizable: tiles subscript with `io * 4 + ii`)."""

from __future__ import annotations

from dataclasses import replace

from kdsl.ir.nodes import If, Kernel, Load, Loop, LoopVar, Stmt, Store
from kdsl.ir.visit import walk_all_exprs, walk_expr


def mark_in_place(kernel: Kernel) -> Kernel:
    """`kernel` with its in-place pairs noted (Kernel.in_place), for the CPU entry's check
    of arguments that share memory."""
    return replace(kernel, in_place=tuple(sorted(in_place_pairs(kernel))))


def in_place_pairs(kernel: Kernel) -> frozenset[tuple[str, str]]:
    """The (written, other) parameter pairs that may be one array, the same view of it
    (`relu(x, out=x)`): one statement writes `written`, at distinct loop variables, bare,
    that are all the loops around it, and every access of either array is in that
    statement, at its subscripts (`y[i, j] = f(x[i, j], y[i, j], w[j])`). Each element
    is then read only by the iteration that writes it, before it writes it, in any
    order of the iterations and with the pointers taken not to alias."""
    stores: dict[str, list[tuple[Store, tuple[str, ...]]]] = {}

    def visit(body: tuple[Stmt, ...], loops: tuple[str, ...]) -> None:
        for s in body:
            if isinstance(s, Store):
                stores.setdefault(s.buffer, []).append((s, loops))
            elif isinstance(s, Loop):
                visit(s.body, (*loops, s.var))
            elif isinstance(s, If):
                visit(s.then, loops)

    visit(kernel.body, ())
    loads: dict[str, list[int]] = {}
    for e in walk_all_exprs(kernel.body):
        if isinstance(e, Load):
            loads.setdefault(e.buffer, []).append(id(e))
    params = [p.name for p in kernel.params if p.is_array]
    pairs = set()
    for written, found in stores.items():
        if len(found) != 1:
            continue
        store, loops = found[0]
        names = [i.name for i in store.index if isinstance(i, LoopVar)]
        if len(names) != len(store.index) or sorted(names) != sorted(loops):
            continue
        mine = {id(e): e for e in walk_expr(store.value) if isinstance(e, Load)}
        for other in params:
            if other == written or other in stores:
                continue
            ids = loads.get(written, []) + loads.get(other, [])
            if all(i in mine and mine[i].index == store.index for i in ids):
                pairs.add((written, other))
    return frozenset(pairs)
