"""Whether two accesses of one array, made in two different iterations of one loop, may
touch the same element: the loop-carried dependences a parallel loop may not have and
`fuse` may not reverse.

Each axis is tested alone, and one whose two subscripts are never equal proves the
accesses apart. On an axis whose subscripts are affine in the loops' variables with
constant coefficients (`kdsl.ir.affine.linear`), the difference of the two subscripts
is a linear form in: the tested loop's two iterations, one of them written as the other
plus 1 + t (t >= 0) for the order asked about; each access's own instance of the loops
around it inside the tested loop (free over their ranges, independently of the other
access's); and the terms both accesses share (outer loops' variables, shapes, scalars:
the same value at both). The form has no integer zero when the GCD of its coefficients
does not divide its constant (`c[2*i]` and `c[2*i + 1]`), or when its least value over
the variables' ranges is above 0 or its greatest below 0 (Banerjee's bounds: `X[8*p +
s]` and `X[8*p + s + 4]` for s < 4). A loop variable ranges from 0 to its extent - 1
where the extent is a constant (or `min(c, n)`: at most c - 1), else without an upper
bound; outer loops' variables and shapes are at least 0, other shared terms anything.
The box of ranges holds every pair of iterations (and more), so a bound outside it is
sound. Anything else on an axis proves nothing there: data (`x[idx[i]]`), `//`, `%`,
min/max, a coefficient that is a shape or a scalar (`x[n*i]`). The answer errs towards
"may meet": a missed dependence would be a wrong result, a false one only a refusal.
Values are exact integers; like kdsl/ir/ranges.py, subscripts are taken not to wrap.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from kdsl.ir.affine import constant_bound, linear
from kdsl.ir.nodes import DimOf, Expr, If, Load, Loop, LoopVar, Stmt, Store
from kdsl.ir.visit import stmt_exprs, walk_expr

Bound = int | float  # an integer, or -inf / inf where unbounded


class Order(Enum):
    """How the first access's iteration of the tested loop compares with the second's."""

    EARLIER = "<"
    LATER = ">"


@dataclass(frozen=True)
class Access:
    """A load or a store, and the loops around it inside the tested loop."""

    node: Load | Store
    loops: tuple[tuple[str, Expr], ...]  # (variable, extent), outermost first

    @property
    def buffer(self) -> str:
        return self.node.buffer

    @property
    def index(self) -> tuple[Expr, ...]:
        return self.node.index

    @property
    def write(self) -> bool:
        return isinstance(self.node, Store)


def accesses(body: tuple[Stmt, ...]) -> list[Access]:
    """Every load and store in `body`, with the loops around it there, in program order
    (a loop's extent and a condition are evaluated outside the statements they hold)."""
    return list(_accesses(body, ()))


def _accesses(body: tuple[Stmt, ...], loops: tuple[tuple[str, Expr], ...]) -> Iterator[Access]:
    for s in body:
        for e in stmt_exprs(s):
            yield from (Access(x, loops) for x in walk_expr(e) if isinstance(x, Load))
        match s:
            case Store():
                yield Access(s, loops)
            case Loop(var=var, extent=extent, body=inner):
                yield from _accesses(inner, (*loops, (var, extent)))
            case If(then=then):
                yield from _accesses(then, loops)


def meet_orders(a: Access, b: Access, loop: str, extent: Expr) -> frozenset[Order]:
    """The orders of a's iteration of `loop` (over [0, extent)) and b's in which the two
    accesses may touch one element: empty where every pair of different iterations is
    proven apart (see the module)."""
    return frozenset(o for o in Order if not _apart(a, b, loop, extent, o))


def _apart(a: Access, b: Access, loop: str, extent: Expr, order: Order) -> bool:
    """Whether some axis proves a and b apart for every pair of iterations in `order`."""
    bound = constant_bound(extent)
    if bound is not None and bound < 2:
        return True  # no two iterations
    last = math.inf if bound is None else bound - 2  # the earlier iteration's, and t's
    for x, y in zip(a.index, b.index, strict=True):
        form = _difference(x, y, a, b, loop)
        if form is not None and not _may_be_zero(_ordered(form, order, last)):
            return True
    return False


@dataclass
class _Form:
    """const + Σ coefficient·variable (each an integer in its range) + first·(a's
    iteration of the tested loop) + second·(b's iteration)."""

    const: int = 0
    coeffs: dict[Hashable, int] = field(default_factory=dict)
    ranges: dict[Hashable, tuple[Bound, Bound]] = field(default_factory=dict)
    first: int = 0
    second: int = 0

    def add(self, key: Hashable, coeff: int, lo: Bound, hi: Bound) -> None:
        self.coeffs[key] = self.coeffs.get(key, 0) + coeff
        self.ranges[key] = (lo, hi)


def _difference(x: Expr, y: Expr, a: Access, b: Access, loop: str) -> _Form | None:
    """Subscript x (of a) - subscript y (of b) as a `_Form`; None unless it is affine
    with constant coefficients in the loop variables that differ between the two."""
    varying = {loop, *(v for v, _ in a.loops), *(v for v, _ in b.loops)}
    form = _Form()
    for side, access, sub, sign in ((0, a, x, 1), (1, b, y, -1)):
        lin = linear(sub)
        if lin is None:
            return None
        form.const += sign * lin.const
        own = dict(access.loops)
        for atom, coeff in lin.terms:
            if isinstance(atom, LoopVar) and atom.name == loop:
                if side == 0:
                    form.first += coeff
                else:
                    form.second -= coeff
            elif isinstance(atom, LoopVar) and atom.name in own:  # this access's own
                form.add((side, atom.name), sign * coeff, 0, _last(own[atom.name]))
            elif any(isinstance(v, LoopVar) and v.name in varying for v in walk_expr(atom)):
                return None  # `i * i`, `n * i`, `i // 2`, a cast of i
            else:  # the same value at both accesses
                lo = 0 if isinstance(atom, LoopVar | DimOf) else -math.inf
                form.add(atom, sign * coeff, lo, math.inf)
    return form


def _last(extent: Expr) -> Bound:
    """The greatest value a loop over `extent` gives its variable, or inf if unknown."""
    bound = constant_bound(extent)
    return math.inf if bound is None else bound - 1


def _ordered(form: _Form, order: Order, last: Bound) -> _Form:
    """`form` with the tested loop's two iterations related by `order`: for a's earlier,
    b's = a's + 1 + t, else a's = b's + 1 + t; t >= 0 and both within [0, last + 1]."""
    p, q = form.first, form.second
    late = q if order is Order.EARLIER else p  # the later iteration's coefficient
    out = _Form(form.const + late, dict(form.coeffs), dict(form.ranges))
    out.add("earlier", p + q, 0, last)
    out.add("t", late, 0, last)
    return out


def _may_be_zero(form: _Form) -> bool:
    """Whether the form may be 0 for integer values in the ranges: not when the GCD of
    its coefficients does not divide its constant, nor when 0 is outside its bounds."""
    terms = [(c, form.ranges[k]) for k, c in form.coeffs.items() if c]
    g = math.gcd(*(c for c, _ in terms))  # 0 when there are no terms
    if (form.const % g if g else form.const) != 0:
        return False
    least = form.const + sum(c * (lo if c > 0 else hi) for c, (lo, hi) in terms)
    most = form.const + sum(c * (hi if c > 0 else lo) for c, (lo, hi) in terms)
    return least <= 0 <= most
