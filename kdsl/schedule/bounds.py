"""Footprint inference: the box of a buffer that one iteration of a loop touches.

`compute_at` and `cache` need the region of a buffer used by the statements inside a
loop `at`, as a box `[lo_d, lo_d + size_d)` per dimension. Subscripts must be affine
in the loops inside `at`; loops outside `at` (and `at` itself) are fixed during one
iteration, so their variables may appear in `lo` freely. A loop inside `at` ranges
over `[0, extent)`, bounded by the constant `c` of a tile `min(c, n - o*c)`, so boxes of
tiled loops have constant sizes; a box is then clamped to the buffer's extent so the
edge tile reads nothing out of bounds.

Expressions are handled as `Lin`: a constant plus integer multiples of *atoms* — loop
variables, and loop-invariant terms such as `x.shape[0]`, which stay opaque.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kdsl import types as T
from kdsl.ir.affine import Lin, linear
from kdsl.ir.build import index_const, index_op
from kdsl.ir.nodes import Binary, BinaryOp, Const, DimOf, Expr, Loop, LoopVar, Select
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import walk_expr, walk_stmts
from kdsl.schedule.distribute import upper_bound

PROOF_DEPTH = 3  # how many loop-variable bounds `provably_nonneg` substitutes in a row


class NotAffine(Exception):
    """A subscript or extent outside what footprint inference handles; says which."""


def mentions(e: Expr, names: Iterable[str]) -> list[str]:
    wanted = set(names)
    return [x.name for x in walk_expr(e) if isinstance(x, LoopVar) and x.name in wanted]


# ------------------------------------------------------------------------ the loops


def inner_bounds(at: Loop, used: Iterable[str]) -> dict[str, Lin]:
    """The loops inside `at` named in `used` (those a region's subscripts mention: the
    extent of another, say a copy loop of another buffer's cache, bounds nothing there):
    a loop-invariant bound on each one's extent."""
    inner = [s for s in walk_stmts(at.body) if isinstance(s, Loop)]
    names, wanted = {lp.var for lp in inner}, set(used)
    out = {}
    for lp in (lp for lp in inner if lp.var in wanted):
        bound = upper_bound(lp.extent)
        lin = linear(bound)
        if lin is None or mentions(bound, names):
            raise NotAffine(
                f"the extent of loop '{lp.var}' ({format_expr(lp.extent)}) changes inside "
                f"loop '{at.var}', so the region it covers has no simple bound"
            )
        out[lp.var] = lin
    return out


def provably_nonneg(lin: Lin, ranges: Mapping[str, Expr], depth: int = PROOF_DEPTH) -> bool:
    """Is `lin` ≥ 0 for every value of the loop variables (each in [0, ranges[v]))?

    Loop variables and shapes are ≥ 0; a loop variable with a negative coefficient is
    replaced by its largest value, `extent - 1` (each side of a `min` extent is tried).
    """
    negative = [(a, c) for a, c in lin.terms if c < 0]
    if not negative:
        return lin.const >= 0 and all(isinstance(a, LoopVar | DimOf) for a, _ in lin.terms)
    if depth == 0:
        return False
    for atom, c in negative:
        if not isinstance(atom, LoopVar) or atom.name not in ranges:
            continue
        for extent in _sides(ranges[atom.name]):
            top = linear(extent)
            if top is None:
                continue
            bounded = lin.without([atom]) + top.plus(-1) * c
            if provably_nonneg(bounded, ranges, depth - 1):
                return True
    return False


def _sides(extent: Expr) -> list[Expr]:
    if isinstance(extent, Binary) and extent.op is BinaryOp.MIN:
        return [extent, *_sides(extent.lhs), *_sides(extent.rhs)]
    return [extent]


# ------------------------------------------------------------------------ the box


@dataclass(frozen=True)
class Span:
    """One dimension of a box: [lo, lo + size)."""

    lo: Lin
    size: Lin


def footprint(
    indices: list[tuple[Expr, ...]], bounds: Mapping[str, Lin], ranges: Mapping[str, Expr]
) -> tuple[Span, ...]:
    """The box covering every subscript in `indices` while the loops `bounds` (inside
    the loop of interest) run over [0, bound); `ranges` are the fixed loops around."""
    ndim = len(indices[0])
    return tuple(_span([ix[d] for ix in indices], bounds, ranges) for d in range(ndim))


def _span(subscripts: list[Expr], bounds: Mapping[str, Lin], ranges: Mapping[str, Expr]) -> Span:
    inner: dict[Expr, Lin] = {LoopVar(v): b for v, b in bounds.items()}
    los, his = [], []
    for e in subscripts:
        lin = linear(e)
        if lin is None:
            raise NotAffine(f"the subscript {format_expr(e)} depends on data")
        for atom, _ in lin.terms:
            if (count := _quotient_count(atom, bounds)) is not None:
                inner[atom] = count
            if atom not in inner and mentions(atom, bounds):
                raise NotAffine(
                    f"the subscript {format_expr(e)} is not affine in the loops "
                    f"{', '.join(mentions(atom, bounds))}"
                )
        lo = hi = lin.without(inner)
        for atom, c in lin.terms:
            if atom in inner:
                reach = _last(inner[atom]) * c  # c * (bound - 1)
                if reach.is_const:
                    lo, hi = lo.plus(min(0, reach.const)), hi.plus(max(0, reach.const))
                elif c > 0:
                    hi = hi + reach
                else:
                    lo = lo + reach
        los.append(lo)
        his.append(hi)
    lo, hi = _extreme(los, -1, subscripts), _extreme(his, 1, subscripts)
    return Span(lo, (hi - lo).plus(1))


def _quotient_count(atom: Expr, bounds: Mapping[str, Lin]) -> Lin | None:
    """How many values `v // c` takes, for an inner loop `v` of a constant bound: such a
    term (a lane's block, `2 * g + lane // 8`) spans a box as a loop of that many
    iterations would."""
    match atom:
        case Binary(op=BinaryOp.FLOORDIV, lhs=LoopVar(name=v), rhs=Const(value=int(c))) if (
            c > 0 and v in bounds and bounds[v].is_const
        ):
            return Lin(_last(bounds[v]).const // c + 1)
    return None


def _last(bound: Lin) -> Lin:
    """The largest index below `bound` (a constant bound of 0 counts as 1: no access)."""
    if bound.is_const:
        return Lin(max(bound.const, 1) - 1)
    return bound.plus(-1)


def _extreme(candidates: list[Lin], sign: int, subscripts: list[Expr]) -> Lin:
    """The lowest (sign -1) or highest (sign 1) of `candidates`, which must differ by
    constants."""
    best = candidates[0]
    for other in candidates[1:]:
        gap = other - best
        if not gap.is_const:
            texts = ", ".join(sorted({format_expr(s) for s in subscripts}))
            raise NotAffine(f"the subscripts {texts} are not a constant distance apart")
        if gap.const * sign > 0:
            best = other
    return best


# ------------------------------------------------------------------------ clamping


@dataclass(frozen=True)
class Window:
    """The part of a span inside [0, extent): `count` elements from `start`."""

    start: Lin
    count: Expr


def clamp(span: Span, extent: Expr, ranges: Mapping[str, Expr]) -> Window:
    """Clamp `span` to [0, extent); skip the clamps that `ranges` prove unneeded."""
    end = linear(extent)
    if end is None:
        raise NotAffine(f"the extent {format_expr(extent)} depends on data")
    if provably_nonneg(span.lo, ranges):
        start = span.lo
        room = end - span.lo
        if provably_nonneg(room - span.size, ranges):
            return Window(start, size_expr(span.size))
        return Window(start, Binary(BinaryOp.MIN, size_expr(span.size), room.expr(), T.INDEX))
    start = Lin.of(Binary(BinaryOp.MAX, span.lo.expr(), index_const(0), T.INDEX))
    stop = Binary(BinaryOp.MIN, (span.lo + span.size).expr(), extent, T.INDEX)
    return Window(start, index_op(BinaryOp.SUB, stop, start.expr()))


def size_expr(size: Lin) -> Expr:
    """A size as an expression, never negative."""
    if size.is_const:
        return index_const(max(size.const, 0))
    if provably_nonneg(size, {}):
        return size.expr()
    return Binary(BinaryOp.MAX, size.expr(), index_const(0), T.INDEX)


def relative(
    index: tuple[Expr, ...], spans: tuple[Span, ...], inside: tuple[Expr, ...] | None = None
) -> tuple[Expr, ...]:
    """`index` relative to the box's corner: e - lo per dimension, simplified. With the
    buffer's shape `inside`, for an access checked at each element: a subscript outside
    the buffer (perhaps inside the box, where nothing was copied or computed) becomes -1,
    outside the box too, so the box's check raises as the buffer's would have."""
    out = []
    for d, (e, span) in enumerate(zip(index, spans)):
        lin = linear(e)
        assert lin is not None, "footprint accepted only affine subscripts"
        rel = (lin - span.lo).expr()
        if inside is not None:
            ok = Binary(
                BinaryOp.AND,
                Binary(BinaryOp.GE, e, index_const(0), T.bool_),
                Binary(BinaryOp.LT, e, inside[d], T.bool_),
                T.bool_,
            )
            rel = Select(ok, rel, index_const(-1), T.INDEX)
        out.append(rel)
    return tuple(out)


def region(
    around: Iterable[Loop], at: Loop, indices: list[tuple[Expr, ...]], extents: Sequence[Expr]
) -> tuple[tuple[Span, ...], tuple[Window, ...]]:
    """The box covering `indices` (accesses inside loop `at`, which the loops `around`
    enclose) in one iteration of `at`, and its part inside [0, extents)."""
    ranges = {lp.var: lp.extent for lp in (*around, at)}
    inner = {s.var for s in walk_stmts(at.body) if isinstance(s, Loop)}
    used = {v for index in indices for e in index for v in mentions(e, inner)}
    spans = footprint(indices, inner_bounds(at, used), ranges)
    varying = sorted({v for s in spans for v in s.size.loop_vars()})
    if varying:  # a buffer's shape can't depend on loops
        raise NotAffine(f"its size changes with loop {', '.join(repr(v) for v in varying)}")
    return spans, tuple(clamp(s, ext, ranges) for s, ext in zip(spans, extents))
