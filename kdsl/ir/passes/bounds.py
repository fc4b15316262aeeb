"""Prove subscripts in bounds before their loops run, or check them where they run.

For each subscript of each access (a bare index of a loop over shapes is the trace's
shape checks' business), in this order:
- Constants alone keep it in a constant dimension (a temporary's `tile[k]` over
  `range(min(16, n - r))`), or the guards around it do (`x[i + 1]` under
  `kd.when(i + 1 < x.shape[0])`, with the loops' extents): nothing to check.
- kdsl/ir/ranges.py gives its least and greatest values over all its loops as
  expressions of the shapes and scalars (linear in the loop variables, with shapes or
  scalars as coefficients: `x[2*i + 1]`, a flattened `x[i * n + j]`; through `//`,
  `%`, `min`/`max` with a shape; through index locals given one value), the loop
  extents being known before the kernel runs: one check at the top of the kernel,
  "every enclosing loop is empty, or lo >= 0 and hi < dim", replaces a check per
  element: wrong shapes raise ShapeError (a wrong scalar, BoundsError).
- It gives them over the innermost loops only, from values fixed before those start
  (outer loops' variables, locals, and lengths read from arrays the kernel never
  writes: `x[i*j]` over j, `x[j]` for j < i, attention's key tiles of one query tile,
  a ragged `range(lengths[b])`): the same check, placed just before those loops, runs
  once per outer iteration (BoundsError).
- Else (no range known, or the access is under a `kd.when` or in a `kd.where` branch
  whose guard keeps it in bounds in a way not seen above: a check before the guard
  could refuse a good call) the access is marked `checked`: the code checks it where
  it runs.
The bounds are exact, so no call that stays in bounds is refused, and no access reads
or writes outside its array.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from kdsl import types as T
from kdsl.ir.affine import Lin, constant_bound, linear
from kdsl.ir.build import index_const
from kdsl.ir.nodes import (
    Assign,
    Binary,
    BinaryOp,
    Check,
    CheckKind,
    Const,
    DeclareLocal,
    DimOf,
    Expr,
    If,
    Kernel,
    Load,
    LocalVar,
    Loop,
    LoopVar,
    Select,
    Stmt,
    Store,
    Unary,
    UnaryOp,
)
from kdsl.ir.printer import format_expr
from kdsl.ir.ranges import ZERO, f64, f64_op, kernel_level, value_range
from kdsl.ir.visit import (
    children,
    local_definitions,
    map_expr,
    rebuild_expr,
    stmt_exprs,
    walk_expr,
    walk_stmts,
    with_exprs,
)

TRUE = Const(True, T.bool_)


def _op(op: BinaryOp, a: Expr, b: Expr) -> Expr:
    return Binary(op, a, b, T.bool_ if op.is_comparison else a.dtype)


def _small(e: Expr, most: int = 256) -> bool:
    """Whether `e` has at most `most` nodes as a tree (as its check is printed, quoted
    and evaluated on a GPU's host: a chain of locals can make a DAG whose tree is huge)."""
    count, stack = 0, [e]
    while stack:
        count += 1
        if count > most:
            return False
        stack.extend(children(stack.pop()))
    return True


@dataclass(frozen=True, eq=False)
class _Frame:
    loop: Loop
    extent: Expr  # with the index locals given one value inlined
    settled: bool  # the data it reads is proven in bounds before it and never written


@dataclass(frozen=True, eq=False)
class _Guard:
    cond: Expr
    holds: bool  # whether the code runs where `cond` holds (an `if`, a where's first value)


Frames = tuple[_Frame | _Guard, ...]  # what encloses an access, outermost first


class _Hoister:
    def __init__(self, kernel: Kernel) -> None:
        self.shapes = {b.name: b.shape for b in kernel.buffers}
        self.values = _single_values(kernel.body)
        self.inlined_values: dict[str, Expr] = {}
        self.locals = frozenset(
            s.name for s in walk_stmts(kernel.body) if isinstance(s, DeclareLocal)
        )
        self.checks: list[Check] = []  # at the kernel's entry, after the trace's
        self.before: dict[int, list[Check]] = {}  # before the statement of that identity
        self.leading: Check | None = None  # the trace's entry check being looked at
        self.unproven: set[int] = set()  # the Loads and Stores to check at run time, by identity
        self.everywhere: set[int] = set()  # those proven where no guard is around them
        self.visited: set[tuple[int, bool]] = set()  # sub-expressions (kept alive), guarded?
        self.changing: dict[int, frozenset[str]] = {}  # the locals each loop gives values
        written = {s.buffer for s in walk_stmts(kernel.body) if isinstance(s, Store)}
        self.read_only = frozenset(b.name for b in kernel.buffers) - written

    def block(self, body: tuple[Stmt, ...], frames: Frames) -> None:
        for s in body:
            # (a trace's entry check may read data: `nn[0] <= x.shape[0]`)
            self.leading = s if isinstance(s, Check) and not frames else None
            match s:
                case Loop(extent=ext, body=inner):
                    self.expr(ext, frames)
                    settled = all(
                        id(x) not in self.unproven and x.buffer in self.read_only
                        for x in walk_expr(ext)
                        if isinstance(x, Load)
                    )
                    self.block(inner, (*frames, _Frame(s, self.inlined(ext), settled)))
                case If(cond=cond, then=then):
                    self.expr(cond, frames)
                    self.block(then, (*frames, _Guard(cond, True)))
                case _:
                    for e in stmt_exprs(s):
                        self.expr(e, frames)
                    if isinstance(s, Store):
                        self.access(s, frames)
        self.leading = None

    def expr(self, e: Expr, frames: Frames) -> None:
        seen = (id(e), any(isinstance(f, _Guard) for f in frames))
        if seen in self.visited:
            return
        self.visited.add(seen)
        if isinstance(e, Select):  # a branch runs only where the condition picks it
            self.expr(e.cond, frames)
            self.expr(e.if_true, (*frames, _Guard(e.cond, True)))
            self.expr(e.if_false, (*frames, _Guard(e.cond, False)))
            return
        if isinstance(e, Load):
            self.access(e, frames)
        for c in children(e):
            self.expr(c, frames)

    def access(self, node: Load | Store, frames: Frames) -> None:
        proven = True
        for axis, sub in enumerate(node.index):
            if _tied(sub, frames):
                continue
            value, dim = self.inlined(sub), self.shapes[node.buffer][axis]
            proven &= (
                _always_in(value, dim, frames)
                or self.guarded_in(value, dim, frames)
                or self.placed(node, axis, value, dim, frames)
            )
        # (a load shared by a where's branch and the rest of its statement is looked at
        # in both: what's proven where it runs unguarded holds wherever it runs)
        if proven and not any(isinstance(f, _Guard) for f in frames):
            self.everywhere.add(id(node))
        elif not proven:
            self.unproven.add(id(node))

    def guarded_in(self, value: Expr, dim: Expr, frames: Frames) -> bool:
        """Whether what encloses the access keeps `value` in `dim` wherever it runs:
        0 <= value <= dim - 1 each follows from a guard's comparison (`kd.when(i + 1 <
        n)` around `x[i + 1]`) or a loop's extent (`i <= n - 1`) plus something that is
        never negative (loop variables, shapes, constants), as affine forms."""
        if not any(isinstance(f, _Guard) for f in frames):
            return False
        at, size = linear(value), linear(dim)
        if at is None or size is None or not (_plain(at) and _plain(size)):
            return False
        known = [fact for f in frames for fact in self.facts(f)]
        return all(
            _never_negative(t) or any(_never_negative(t - k) for k in known)
            for t in (at, (size - at).plus(-1))
        )

    def facts(self, frame: _Frame | _Guard) -> list[Lin]:
        """Affine forms that are >= 0 where the code inside `frame` runs."""
        if isinstance(frame, _Frame):
            extent = linear(frame.extent)
            return [] if extent is None else [(extent - Lin.of(LoopVar(frame.loop.var))).plus(-1)]
        return list(_comparisons(self.inlined(frame.cond), frame.holds))

    def placed(self, node: Load | Store, axis: int, value: Expr, dim: Expr, frames: Frames) -> bool:
        """Place one exact check of `value` (the subscript on `axis`) against `dim` before the
        outermost enclosing loops over which kdsl/ir/ranges.py knows its range from
        values fixed before they start: at the kernel's entry when those are all of
        them; False when there are none (nor any guard among them: a check before a
        guard could refuse a good call)."""
        for start in range(len(frames) + 1):
            inner = frames[start:]
            loops = [f for f in inner if isinstance(f, _Frame)]
            if len(loops) < len(inner):
                continue
            anchor: Stmt | None  # the statement the check goes before (None: the entry's)
            if start == 0:
                fixed: frozenset[str] = frozenset()
                anchor = self.leading
            elif loops:
                fixed = self.fixed(frames[:start], loops[0].loop)
                anchor = loops[0].loop
            else:
                return False  # no loop left: the access is checked where it runs
            extents = {f.loop.var: f.extent for f in loops}
            # (the first loop's length may be read from data, known just before it; an
            # inner loop's only where the loops around it run)
            data = self.read_only if start and loops and loops[0].settled else frozenset()
            if not all(
                _small(f.extent)
                and kernel_level(f.extent, fixed | (data if f is loops[0] else set()))
                for f in loops
            ):
                continue
            span = value_range(value, extents, fixed)
            if span is None or not _small(span.lo) or not _small(span.hi):
                continue
            low, high = f64_op(BinaryOp.GE, span.lo, ZERO), f64_op(BinaryOp.LT, span.hi, f64(dim))
            cond = high if low == TRUE else _op(BinaryOp.AND, low, high)
            for ext in extents.values():
                cond = _op(BinaryOp.OR, _op(BinaryOp.LE, ext, Const(0, T.i64)), cond)
            sub = node.index[axis]
            text = _as_written(node, axis)
            what = f"subscript {text} of '{node.buffer}' stays in [0, {format_expr(dim)})"
            # (made of values, not only of shapes: inside a loop, or of scalars)
            kind = CheckKind.BOUNDS if span.scalars or start else CheckKind.SHAPE
            offset = linear(sub)
            below = offset is not None and offset.const < 0  # x[i - 1]: i must start at 1
            shorten = (
                "start the loop it runs over later (kd.range(1, n) for a subscript i - 1)"
                if below
                else "shorten the loop it runs over (e.g. kd.indices(n - 1) for a subscript i + 1)"
            )
            longer = "" if below else f", pass a longer '{node.buffer}'"
            fix = (
                f"keep {text} inside [0, {format_expr(dim)}): {shorten}{longer}, "
                "or guard the access with kd.when / kd.where"
            )
            check = Check(cond, kind, what, loc=node.loc, fix=fix)
            where = self.checks if anchor is None else self.before.setdefault(id(anchor), [])
            if all(check != c for c in where):
                where.append(check)
            return True
        return False

    def fixed(self, outer: Frames, loop: Loop) -> frozenset[str]:
        """The names whose values stay the same during `loop` and are known just before
        it: the variables of the loops `outer`, and the locals given no value inside."""
        changing = self.changing.get(id(loop))
        if changing is None:
            changing = self.changing[id(loop)] = frozenset(
                s.name if isinstance(s, DeclareLocal) else s.local
                for s in walk_stmts((loop,))
                if isinstance(s, DeclareLocal | Assign)
            )
        return frozenset(f.loop.var for f in outer if isinstance(f, _Frame)) | (
            self.locals - changing
        )

    def marked(self, body: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
        """`body` with the unproven accesses marked `checked` and the checks placed
        before their statements."""

        def mark(was: Expr, new: Expr) -> Expr | None:
            if isinstance(new, Load) and id(was) in self.unproven:
                return replace(new, checked=True)
            return None

        out: list[Stmt] = []
        for s in body:
            out.extend(self.before.get(id(s), ()))
            match s:
                case Loop(extent=ext, body=inner):
                    new: Stmt = replace(s, extent=rebuild_expr(ext, mark), body=self.marked(inner))
                case If(cond=cond, then=then):
                    new = replace(s, cond=rebuild_expr(cond, mark), then=self.marked(then))
                case _:
                    new = with_exprs(s, lambda e: rebuild_expr(e, mark))
                    if isinstance(new, Store) and id(s) in self.unproven:
                        new = replace(new, checked=True)
            out.append(new)
        return tuple(out)

    def inlined(self, e: Expr) -> Expr:
        """`e` with each index local that is given one value (its declaration's) replaced
        by that value, as far as that goes (each local's made once: a chain of locals
        stays a DAG)."""

        def value(x: Expr) -> Expr | None:
            if not isinstance(x, LocalVar) or x.name not in self.values:
                return None
            if x.name not in self.inlined_values:
                self.inlined_values[x.name] = self.inlined(self.values[x.name])
            return self.inlined_values[x.name]

        return map_expr(e, value)


def _always_in(value: Expr, dim: Expr, frames: Frames) -> bool:
    """Whether constants alone keep `value` within a constant `dim`, whatever the guards:
    each loop it runs over is shorter than a constant (`range(min(16, n))`)."""
    limits = {
        f.loop.var: index_const(c)
        for f in frames
        if isinstance(f, _Frame) and (c := constant_bound(f.extent)) is not None
    }
    span = value_range(value, limits) if isinstance(dim, Const) else None
    return span is not None and (
        f64_op(BinaryOp.GE, span.lo, ZERO) == f64_op(BinaryOp.LT, span.hi, f64(dim)) == TRUE
    )


def _comparisons(cond: Expr, holds: bool) -> Iterator[Lin]:
    """Affine forms >= 0 wherever `cond` is `holds`: from its comparisons of indices
    (`==` where it holds), through `~`, `&` (where it holds) and `|` (where it doesn't)."""
    match cond:
        case Unary(op=UnaryOp.INVERT, operand=a) if a.dtype == T.bool_:
            yield from _comparisons(a, not holds)
        case Binary(op=BinaryOp.AND | BinaryOp.OR as op, lhs=a, rhs=b) if op is (
            BinaryOp.AND if holds else BinaryOp.OR
        ):
            yield from _comparisons(a, holds)
            yield from _comparisons(b, holds)
        case Binary(op=BinaryOp.EQ, lhs=a, rhs=b) if holds and a.dtype == b.dtype == T.INDEX:
            x, y = linear(a), linear(b)
            if x is not None and y is not None and _plain(x) and _plain(y):
                yield from (y - x, x - y)
        case Binary(op=op, lhs=a, rhs=b) if op in _OPPOSITE and a.dtype == b.dtype == T.INDEX:
            op = op if holds else _OPPOSITE[op]
            x, y = linear(a), linear(b)
            if x is not None and y is not None and _plain(x) and _plain(y):
                # (integers: a < b is b - a - 1 >= 0)
                difference = y - x if op in (BinaryOp.LT, BinaryOp.LE) else x - y
                yield difference.plus(-1 if op in (BinaryOp.LT, BinaryOp.GT) else 0)


_OPPOSITE = {  # the comparison that holds where one doesn't
    BinaryOp.LT: BinaryOp.GE,
    BinaryOp.GE: BinaryOp.LT,
    BinaryOp.LE: BinaryOp.GT,
    BinaryOp.GT: BinaryOp.LE,
}


def _plain(form: Lin) -> bool:
    """Loop variables and shapes with small coefficients: no value of it comes near
    i64's ends, where `a < b` would not mean what it means for integers (a scalar
    argument may be anything)."""
    small = 1 << 31
    return abs(form.const) < small and all(
        isinstance(a, LoopVar | DimOf) and abs(c) < small for a, c in form.terms
    )


def _never_negative(form: Lin) -> bool:
    """A constant >= 0 plus positive multiples of loop variables and shapes."""
    return form.const >= 0 and all(c > 0 and isinstance(a, LoopVar | DimOf) for a, c in form.terms)


def _as_written(node: Load | Store, axis: int) -> str:
    """The subscript on `axis` as the user wrote it (`t` of a kd.range(start, stop) loop,
    which the IR counts from 0 and reads as t + t_start), else as the IR has it."""
    written = node.loc.subscripts() if node.loc is not None else None
    if written is not None and len(written) == len(node.index):
        return written[axis]
    return format_expr(node.index[axis])


def _tied(sub: Expr, frames: Frames) -> bool:
    """A bare index of a loop over shapes and constants: the trace's shape checks cover
    it (it ties no shape to a loop over a local, an outer loop's variable or data,
    which the kernel may have written since its entry)."""
    if not isinstance(sub, LoopVar):
        return False
    for f in frames:
        if isinstance(f, _Frame) and f.loop.var == sub.name:
            return not any(
                isinstance(x, LoopVar | LocalVar | Load) for x in walk_expr(f.loop.extent)
            )
    return False


def _single_values(body: tuple[Stmt, ...]) -> dict[str, Expr]:
    """The index locals given exactly one value, and that value (of the same dtype: a
    narrower local would wrap), where it still holds wherever the local does: made of
    no data (which the kernel may write) and no local given another value later."""
    values: dict[str, list[Expr]] = {}
    for name, value in local_definitions(body):
        values.setdefault(name, []).append(value)
    declared = {s.name: s.dtype for s in walk_stmts(body) if isinstance(s, DeclareLocal)}
    single = {
        name: vs[0]
        for name, vs in values.items()
        if len(vs) == 1 and declared.get(name) == T.INDEX and vs[0].dtype == T.INDEX
    }
    while stale := [
        name
        for name, value in single.items()
        if any(
            isinstance(x, Load) or isinstance(x, LocalVar) and x.name not in single
            for x in walk_expr(value)
        )
    ]:
        for name in stale:
            del single[name]
    return single


def hoist_bounds_checks(kernel: Kernel) -> Kernel:
    """Add one check per subscript that isn't already proven, and mark the accesses
    that no check at the entry can prove `checked` (see the module's doc)."""
    hoister = _Hoister(kernel)
    hoister.block(kernel.body, ())
    hoister.unproven -= hoister.everywhere
    body = hoister.marked(kernel.body) if hoister.unproven or hoister.before else kernel.body
    leading = 0
    while leading < len(body) and isinstance(body[leading], Check):
        leading += 1
    return replace(kernel, body=(*body[:leading], *hoister.checks, *body[leading:]))
