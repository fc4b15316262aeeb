"""A value read from an array must not be used after the kernel wrote that element.

In Python, `lo = X[r, 0]; X[r, 0] = kd.minimum(lo, hi); X[r, 1] = kd.maximum(lo, hi)`
swaps with the old `lo`. A traced value is an expression, though: `lo` is the load
`X[r, 0]` itself, so each statement using it would read the array again, and the second
one would see the new element (a compare-and-swap lost a value; a row normalized by its
sum, then multiplied by "the same" sum, got 1). Such a use is refused with the fix, as
is a value read before a loop and used in it when the loop writes the element later
(each iteration would see the last one's write). Reads and writes of one element are
told apart from other elements' by their subscripts: `X[r, 0]` and `X[r, 1]` never meet.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kdsl.errors import SourceLoc, TraceError
from kdsl.ir.affine import Lin, linear
from kdsl.ir.nodes import DimOf, Expr, Load, LoopVar, Stmt
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import children, map_expr

if TYPE_CHECKING:
    from kdsl.trace.context import TraceContext


@dataclass(eq=False)
class _Read:
    load: Load  # the node handed out: found again by identity
    writes: int  # how many writes of its array came before it
    blocks: tuple[list[Stmt], ...]  # the blocks open at the read (kept: ids get reused)
    used_in: list[list[Stmt]] = field(default_factory=list)  # loop bodies opened since


@dataclass(frozen=True)
class _Write:
    index: tuple[Expr, ...]
    loc: SourceLoc | None


class ArrayWrites:
    """The reads and writes of a trace's arrays, in order."""

    def __init__(self, ctx: TraceContext) -> None:
        self.ctx = ctx
        self.writes: dict[str, list[_Write]] = {}
        self.reads: dict[int, _Read] = {}  # id(load) -> its read
        self.by_array: dict[str, list[_Read]] = {}
        self.loop_bodies: list[list[Stmt]] = []  # (a kd.when block repeats nothing)

    def loop_opened(self, body: list[Stmt]) -> None:
        self.loop_bodies.append(body)

    def read(self, load: Load) -> None:
        blocks = tuple(self.ctx.blocks)
        read = _Read(load, len(self.writes.get(load.buffer, ())), blocks)
        self.reads[id(load)] = read
        self.by_array.setdefault(load.buffer, []).append(read)

    def check_use(self, exprs: list[Expr], loc: SourceLoc | None) -> None:
        """Refuse a statement using a value read before a write of its element; note
        the blocks the others are used in (see `wrote`)."""
        if not self.reads:
            return
        for load in _loads(exprs):
            read = self.reads.get(id(load))
            if read is None or read.load is not load:
                continue
            for write in self.writes.get(load.buffer, [])[read.writes :]:
                if self._may_meet(write.index, load.index):
                    raise _stale(_element(load, self.ctx), load, write, loc, self._fix(load))
            for b in self.ctx.blocks:  # loops opened since the read, still open
                if (
                    _has(self.loop_bodies, b)
                    and not _has(read.blocks, b)
                    and not _has(read.used_in, b)
                ):
                    read.used_in.append(b)

    def wrote(self, buffer: str, index: tuple[Expr, ...], loc: SourceLoc | None) -> None:
        write = _Write(index, loc)
        self.writes.setdefault(buffer, []).append(write)
        for read in self.by_array.get(buffer, []):
            # used in a loop opened since the read and still open: its next iterations
            # would read this write
            carried = any(_has(self.ctx.blocks, b) for b in read.used_in)
            if carried and self._may_meet(index, read.load.index):
                load = read.load
                raise _carried(_element(load, self.ctx), load, write, self._fix(load))

    def _may_meet(self, a: tuple[Expr, ...], b: tuple[Expr, ...]) -> bool:
        """Whether two subscripts of one array may name one element: not where an axis'
        subscripts never take one value (`X[r, 0]`, `X[r, 1]`; `x[t + 1]`, `x[0]`). An
        index over implicit loops takes every value in each statement (`x[i + 1]` meets
        `x[i]`): subscripts with one are compared as apart only when the other is a
        constant."""
        for x, y in zip(a, b):
            lx, ly = linear(x), linear(y)
            if lx is None or ly is None:
                continue
            if self.ctx.free_vars([x, y]) and not (lx.is_const or ly.is_const):
                continue
            if _apart(lx - ly):
                return False
        return True

    def _fix(self, load: Load) -> str:
        if self.ctx.free_vars(list(load.index)):  # an element per index value: no one local
            return (
                "compute the value into another array first (t = kd.empty(shape, dtype); "
                f"t[i] = …) and read t, or write the results into another array than "
                f"'{load.buffer}'"
            )
        return (
            f"keep the value in a local before the write (v = kd.local("
            f"{_element(load, self.ctx)})), "
            f"or write the results into another array than '{load.buffer}'"
        )


def _loads(exprs: list[Expr]) -> Iterator[Load]:
    """The loads in `exprs` (through trace-time reductions), each node once."""
    seen: set[int] = set()
    stack: list[object] = list(exprs)
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, Load):
            yield e
        body = getattr(e, "body", None)  # a Reduction (kdsl.trace.context)
        stack.extend([body] if body is not None else children(e))  # type: ignore[arg-type]


def _has(blocks: Sequence[list[Stmt]], block: list[Stmt]) -> bool:
    return any(b is block for b in blocks)


def _apart(d: Lin) -> bool:
    """Whether d (a difference of subscripts) is never 0: a constant other than 0, or
    one sign throughout (its atoms, loop variables and shapes, are never negative)."""
    if not all(isinstance(a, LoopVar | DimOf) for a, _ in d.terms):
        return d.is_const and d.const != 0
    coeffs = [c for _, c in d.terms]
    return (d.const > 0 and all(c >= 0 for c in coeffs)) or (
        d.const < 0 and all(c <= 0 for c in coeffs)
    )


def _element(load: Load, ctx: TraceContext) -> str:
    """`X[r, 0]` as the user wrote it (an index's placeholder `%0` by its name)."""

    def named(e: Expr) -> Expr | None:
        idx = ctx.indices.get(e.name) if isinstance(e, LoopVar) else None
        return None if idx is None else LoopVar(idx.name, e.dtype)

    return f"{load.buffer}[{', '.join(format_expr(map_expr(i, named)) for i in load.index)}]"


def _stale(element: str, load: Load, write: _Write, loc: SourceLoc | None, fix: str) -> TraceError:
    where = f" at line {write.loc.line}" if write.loc else ""
    read_at = f" (read at line {load.loc.line})" if load.loc else ""
    return TraceError(
        f"a value read from {element}{read_at} is used after the kernel wrote "
        f"'{load.buffer}'{where}: this statement would read the new element, not the "
        "value Python computed",
        loc=loc,
        fix=fix,
    )


def _carried(element: str, load: Load, write: _Write, fix: str) -> TraceError:
    read_at = f" at line {load.loc.line}" if load.loc else ""
    return TraceError(
        f"a value read from {element}{read_at}, before this loop, is used in the "
        f"loop, and this write to '{load.buffer}' would change it for the next iterations",
        loc=write.loc,
        fix=fix,
    )
