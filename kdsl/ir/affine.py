"""Affine index expressions: `Lin`, a constant plus integer multiples of *atoms* (loop
variables, and loop-invariant terms such as `x.shape[0]`, which stay opaque)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kdsl import types as T
from kdsl.ir.build import index_const, index_op
from kdsl.ir.nodes import Binary, BinaryOp, Cast, Const, Expr, Load, LocalVar, LoopVar
from kdsl.ir.visit import walk_expr


@dataclass(frozen=True)
class Lin:
    """const + sum(coeff * atom), atoms in first-seen order."""

    const: int = 0
    terms: tuple[tuple[Expr, int], ...] = field(default=())

    @staticmethod
    def of(atom: Expr, coeff: int = 1) -> Lin:
        return Lin(0, ((atom, coeff),))

    def __add__(self, other: Lin) -> Lin:
        merged = dict(self.terms)
        for atom, c in other.terms:
            merged[atom] = merged.get(atom, 0) + c
        return Lin(self.const + other.const, tuple((a, c) for a, c in merged.items() if c))

    def __mul__(self, k: int) -> Lin:
        if k == 0:
            return Lin()
        return Lin(self.const * k, tuple((a, c * k) for a, c in self.terms))

    def __sub__(self, other: Lin) -> Lin:
        return self + other * -1

    def plus(self, k: int) -> Lin:
        return Lin(self.const + k, self.terms)

    @property
    def is_const(self) -> bool:
        return not self.terms

    def coeff(self, atom: Expr) -> int:
        return dict(self.terms).get(atom, 0)

    def without(self, atoms: Iterable[Expr]) -> Lin:
        drop = set(atoms)
        return Lin(self.const, tuple((a, c) for a, c in self.terms if a not in drop))

    def loop_vars(self) -> list[str]:
        return [x.name for a, _ in self.terms for x in walk_expr(a) if isinstance(x, LoopVar)]

    def expr(self) -> Expr:
        """The expression, written `a*c1 + b - d*c2 + k` (or `k - d*c2`: positive first)."""
        terms = sorted(self.terms, key=lambda t: t[1] < 0)
        out: Expr | None = None
        const = self.const
        if terms and terms[0][1] < 0 and const:
            out, const = index_const(const), 0
        for atom, c in terms:
            if out is None:
                out = atom if c == 1 else index_op(BinaryOp.MUL, atom, index_const(c))
                continue
            term = atom if abs(c) == 1 else index_op(BinaryOp.MUL, atom, index_const(abs(c)))
            out = index_op(BinaryOp.ADD if c > 0 else BinaryOp.SUB, out, term)
        if out is None:
            return index_const(const)
        if const:
            out = index_op(
                BinaryOp.ADD if const > 0 else BinaryOp.SUB, out, index_const(abs(const))
            )
        return out


def linear(e: Expr) -> Lin | None:
    """`e` as a `Lin`; None when it depends on data (loads, locals)."""
    match e:
        case Const(value=v) if isinstance(v, int) and not isinstance(v, bool):
            return Lin(v)
        case Binary(op=BinaryOp.ADD | BinaryOp.SUB as op, lhs=a, rhs=b):
            x, y = linear(a), linear(b)
            if x is None or y is None:
                return None
            return x + y if op is BinaryOp.ADD else x - y
        case Binary(op=BinaryOp.MUL, lhs=a, rhs=b):
            x, y = linear(a), linear(b)
            if x is None or y is None:
                return None
            if x.is_const:
                return y * x.const
            if y.is_const:
                return x * y.const
    if any(isinstance(x, Load | LocalVar) for x in walk_expr(e)):
        return None
    return Lin.of(e if e.dtype == T.INDEX else Cast(e, T.INDEX))


def tile_split(extent: Expr) -> tuple[int, Expr] | None:
    """(c, n) when the extent is `min(c, n)`: a tile that is full when c <= n."""
    if isinstance(extent, Binary) and extent.op is BinaryOp.MIN:
        if isinstance(extent.lhs, Const):
            return int(extent.lhs.value), extent.rhs
        if isinstance(extent.rhs, Const):
            return int(extent.rhs.value), extent.lhs
    return None


def split_tile(extent: Expr, var: str) -> tuple[int, Expr] | None:
    """(c, n) when `extent` is `min(c, n - var·c)`: the inner loop of `split(…, c)` of a
    loop over n, whose outer loop is `var` (full tiles while var < n // c)."""
    tile = tile_split(extent)
    if tile is None:
        return None
    c, rest = tile
    match rest:
        case Binary(op=BinaryOp.SUB, lhs=n, rhs=Binary(op=BinaryOp.MUL, lhs=x, rhs=y)) if {
            x,
            y,
        } == {LoopVar(var), index_const(c)} and LoopVar(var) not in walk_expr(n):
            return c, n
    return None


def constant_bound(extent: Expr) -> int | None:
    """A constant no smaller than the extent, if the extent is a constant or min(c, n)."""
    if isinstance(extent, Const):
        return int(extent.value)
    if isinstance(extent, Binary) and extent.op is BinaryOp.MIN:
        known = [b for s in (extent.lhs, extent.rhs) if (b := constant_bound(s)) is not None]
        return min(known) if known else None
    return None
