"""Whether two strided arrays share memory, exactly.

A kernel that writes one array argument while reading another must refuse arrays that
share memory. Comparing the address ranges the arrays span is quick, but too coarse
for views of one buffer: a matrix's left and right column halves, its even and odd
rows, a block and another's transpose all span overlapping ranges without sharing a
byte. Where the ranges meet, NumPy's exact solver (`np.shares_memory`, a bounded
search over the strides' integer combinations) decides. It is given views of the
addresses alone (the memory is never read), so it serves GPU arrays too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kdsl.ir.nodes import If, Kernel, Load, Loop, LoopVar, Stmt, Store
from kdsl.ir.visit import walk_all_exprs, walk_expr

MAX_WORK = 100_000  # the solver's bound: past it, the arrays are taken to share memory


@dataclass(frozen=True)
class Layout:
    """Where an array's elements lie: its first element's address, its shape, its
    strides in bytes and its element size."""

    address: int
    shape: Sequence[int]
    strides: Sequence[int]
    itemsize: int

    @staticmethod
    def of(a: np.ndarray) -> Layout:  # type: ignore[type-arg]
        return Layout(a.__array_interface__["data"][0], a.shape, a.strides, a.itemsize)

    def view(self) -> np.ndarray:  # type: ignore[type-arg]
        """An array at these addresses, for the solver only (never read)."""
        interface = {
            "version": 3,
            "shape": tuple(self.shape),
            "strides": tuple(self.strides),
            "typestr": f"|V{self.itemsize}",
            "data": (self.address, True),
        }
        return np.asarray(_Interface(interface))


class _Interface:
    def __init__(self, interface: dict[str, object]) -> None:
        self.__array_interface__ = interface


def share_memory(a: Layout, b: Layout) -> bool:
    """Whether some byte belongs to an element of both (True when the solver would
    take too long to say)."""
    try:
        return bool(np.shares_memory(a.view(), b.view(), max_work=MAX_WORK))
    except np.exceptions.TooHardError:
        return True


def overlaps_itself(a: Layout) -> bool:
    """Whether two elements of `a` surely share memory: a stride of 0 along an axis of
    two elements or more, or fewer bytes spanned than its elements fill (a writable
    `as_strided` view whose rows overlap). The CPU entry makes the same test in its
    code (codegen's _check_self_overlap)."""
    count, lo, hi, repeats = 1, 0, a.itemsize, False
    for n, s in zip(a.shape, a.strides):
        repeats |= n > 1 and s == 0
        count *= n
        lo, hi = (lo + (n - 1) * s, hi) if s < 0 else (lo, hi + (n - 1) * s)
    return count > 1 and (repeats or hi - lo < count * a.itemsize)  # (none: no overlap)


def one_view(a: Layout, b: Layout) -> bool:
    """Whether `a` and `b` are the same view of an array whose elements are all apart
    (a sliding window's rows overlap: one element there is several of the view's), so
    that distinct subscripts are distinct elements: what an in-place update needs."""
    if a != b:
        return False
    reach = a.itemsize  # bytes spanned by the axes of smaller stride
    for stride, n in sorted((abs(s), n) for n, s in zip(a.shape, a.strides) if n > 1):
        if stride < reach:
            return False
        reach = stride * (n - 1) + reach
    return True


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
