"""The state of one trace: open blocks and loops, buffers, names, and the statement recorder.

The recorder implements DESIGN §1's one rule: a statement that mentions index variables
not bound by an enclosing loop becomes a nest of parallel loops over them, and each
reduction inside it is hoisted to the loop depth it depends on (a scalar local), or into
a temporary buffer when its dependencies are not an outer prefix of the nest.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from kdsl import types as T
from kdsl.errors import SourceLoc, TraceError
from kdsl.ir.build import reduction_identity
from kdsl.ir.dependence import Access, accesses, meet_orders
from kdsl.ir.layout import temp_scope
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    Buffer,
    BufferRole,
    Check,
    CheckKind,
    DeclareLocal,
    DimOf,
    Expr,
    If,
    Load,
    LocalVar,
    Loop,
    LoopKind,
    LoopVar,
    Param,
    Stmt,
    Store,
)
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import children, map_expr, walk_expr, walk_stmts
from kdsl.trace.frames import location
from kdsl.trace.reduction import Reduction
from kdsl.trace.values import Value, as_value, to_dtype
from kdsl.trace.versions import LocalVersions
from kdsl.trace.writes import ArrayWrites
from kdsl.types import DType

_TRACES = itertools.count()  # each trace's placeholders are its own: %trace.uid


class Index(Value):
    """An index variable (`kd.Index`): ranges over [0, extent)."""

    __slots__ = ("uid", "name", "extent")

    def __init__(self, uid: int, name: str, extent: Expr, trace: int) -> None:
        super().__init__(LoopVar(f"%{trace}.{uid}"), weak=True)
        self.uid = uid
        self.name = name
        self.extent = extent

    def __repr__(self) -> str:
        return f"<kd.Index {self.name} in range({format_expr(self.extent)})>"

    @property
    def placeholder(self) -> str:
        return self.expr.name  # type: ignore[attr-defined,no-any-return]


@dataclass
class _Guard:
    cond: Expr
    per_statement: bool  # cond mentions unbound indices: wrap each statement instead


@dataclass
class TraceContext:
    kernel: str
    params: list[Param] = field(default_factory=list)
    buffers: dict[str, Buffer] = field(default_factory=dict)
    blocks: list[list[Stmt]] = field(default_factory=lambda: [[]])
    indices: dict[str, Index] = field(default_factory=dict)
    bound: dict[str, str] = field(default_factory=dict)  # placeholder -> loop name
    loop_kinds: dict[str, LoopKind] = field(default_factory=dict)  # open loops
    names: set[str] = field(default_factory=set)
    ties: dict[str, list[tuple[str, int, SourceLoc | None]]] = field(default_factory=dict)
    guards: list[_Guard] = field(default_factory=list)
    offset_used: set[str] = field(default_factory=set)  # indices used inside subscript arithmetic
    alloc_loops: dict[str, set[str]] = field(default_factory=dict)  # temp -> loops around it
    declared_in: dict[str, list[Stmt]] = field(default_factory=dict)  # local/temp -> its block
    # scalar-argument expressions narrowed to an integer dtype (values._note_narrowing)
    narrowed: dict[tuple[Expr, DType], SourceLoc | None] = field(default_factory=dict)
    # the values a kd.range(start, stop[, step]) loop hands the user (t + start, as the
    # IR counts t from 0) -> the user's name for them, for messages
    user_forms: dict[Expr, str] = field(default_factory=dict)
    # in the statement being recorded: the reductions computed so far, by id (each kept
    # alive, so ids stay unique) -> (it, its value, the local or temporary holding that)
    computed: dict[int, tuple[Reduction, Expr, str]] | None = None
    # the indices of kd.range / kd.grid loops that have ended -> the loop's line
    ended: dict[str, SourceLoc | None] = field(default_factory=dict)
    # what the kernel function did that tracing can't follow, raised when it returns:
    # a loop it left by break or return, a kd.when it never entered
    unfollowed: list[TraceError] = field(default_factory=list)
    serial: int = field(default_factory=lambda: next(_TRACES))
    locals: LocalVersions = field(init=False)
    writes: ArrayWrites = field(init=False)

    def __post_init__(self) -> None:
        self.locals = LocalVersions(self)
        self.writes = ArrayWrites(self)

    # ------------------------------------------------------------------ names & blocks

    def fresh(self, name: str) -> str:
        """A kernel-unique name based on `name`: i, i.1, i.2, …"""
        candidate, n = name, 0
        while candidate in self.names:
            n += 1
            candidate = f"{name}.{n}"
        self.names.add(candidate)
        return candidate

    def emit(self, stmt: Stmt) -> None:
        self.blocks[-1].append(stmt)

    def declare(self, name: str) -> None:
        """Local or temporary `name` is declared in the current block, visible until it ends."""
        self.declared_in[name] = self.blocks[-1]

    def in_scope(self, name: str) -> bool:
        block = self.declared_in.get(name)
        return block is None or any(b is block for b in self.blocks)

    def check_scope(self, name: str, loc: SourceLoc | None) -> None:
        if self.in_scope(name):
            return
        if name in self.buffers:
            what, fix = "array", f"allocate it before that block ({name} = kd.alloc(...))"
        else:
            what, fix = "local", f"declare it before that block ({name} = kd.local(...))"
        raise TraceError(
            f"{what} '{name}' is used after the loop or kd.when block that created it has ended",
            loc=loc,
            fix=f"{fix} and update it inside",
        )

    def new_index(self, name: str, extent: object) -> Index:
        ext = self.extent_expr(extent, name)
        idx = Index(len(self.indices), name, ext, self.serial)
        self.indices[idx.placeholder] = idx
        return idx

    def extent_expr(self, extent: object, name: str) -> Expr:
        v = as_value(extent)
        if not v.dtype.is_int:
            raise TraceError(
                f"the extent of index '{name}' is {v.dtype.name}, not an integer",
                loc=location(),
                fix="pass a shape value, an int, or an integer expression",
            )
        return to_dtype(v, T.i64)

    @contextmanager
    def loop(self, idx: Index, kind: LoopKind, loc: SourceLoc | None) -> Iterator[str]:
        """Open a loop over `idx`; statements recorded inside go into its body."""
        if idx.placeholder in self.bound:
            raise TraceError(
                f"index '{idx.name}' is already the variable of an enclosing loop",
                loc=loc,
                fix="create a new index with kd.indices for the inner loop",
            )
        self.writes.check_use([idx.extent], loc)
        extent = self.resolve(idx.extent, loc)
        name = self.fresh(idx.name)
        self.bound[idx.placeholder] = name
        self.loop_kinds[name] = kind
        self.blocks.append([])
        self.writes.loop_opened(self.blocks[-1])
        self.locals.note_uses(extent)  # evaluated once: the body may not change it
        try:
            yield name
        finally:
            body = tuple(self.blocks.pop())
            del self.bound[idx.placeholder]
            del self.loop_kinds[name]
            if kind is LoopKind.PARALLEL:
                _check_independent(body, name, extent)
            self.emit(Loop(name, self.locals.rewrite(extent), kind, body, loc=loc))

    @contextmanager
    def guard(self, cond: Value, loc: SourceLoc | None) -> Iterator[None]:
        self.writes.check_use([cond.expr], loc)
        per_statement = bool(self.free_vars([cond.expr]))
        if per_statement:
            self.guards.append(_Guard(cond.expr, True))
            try:
                yield
            finally:
                self.guards.pop()
            return
        resolved = self.resolve(cond.expr, loc)
        self.blocks.append([])
        self.guards.append(_Guard(resolved, False))
        try:
            yield
        finally:
            self.guards.pop()
            then = tuple(self.blocks.pop())
            self.emit(If(self.locals.rewrite(resolved), then, loc=loc))

    # ------------------------------------------------------------ expression helpers

    def free_vars(
        self, exprs: list[Expr], *, in_loads: bool = True, bound: bool = False
    ) -> list[str]:
        """Unbound index placeholders in `exprs`, in creation order; with in_loads=False,
        not those only inside the subscripts of loads; with bound=True, those of the
        enclosing explicit loops too."""
        found: set[str] = set()
        for e in exprs:
            self._collect_free(e, found, in_loads, bound)
        return sorted(found, key=lambda p: self.indices[p].uid)

    def _collect_free(
        self, e: Expr, found: set[str], in_loads: bool, bound: bool, seen: set[int] | None = None
    ) -> None:
        seen = set() if seen is None else seen  # shared sub-expressions, by identity
        if id(e) in seen:
            return
        seen.add(id(e))
        if isinstance(e, Reduction):
            inner: set[str] = set()
            self._collect_free(e.body, inner, in_loads, bound)
            found |= inner - set(e.over)
            return
        if isinstance(e, Load) and not in_loads:
            return
        if (
            isinstance(e, LoopVar)
            and e.name.startswith("%")
            and (bound or e.name not in self.bound)
        ):
            self.check_index(e.name)
            found.add(e.name)
        for c in children(e):
            self._collect_free(c, found, in_loads, bound, seen)

    def check_index(self, placeholder: str) -> None:
        """Refuse an index that this trace did not make, or whose kd.range / kd.grid loop
        has ended (Python would leave the last value in the variable; a statement would
        instead loop over all of them)."""
        if placeholder not in self.indices:
            raise TraceError(
                "a value made while tracing another kernel (or an earlier trace of this "
                "one) is used here: its index belongs to that trace",
                loc=location(),
                fix="make kdsl values inside the kernel function that uses them; keep "
                "no index or value of a trace in a global, a list or a closure",
            )
        if placeholder in self.ended and placeholder not in self.bound:
            name = self.indices[placeholder].name
            at = self.ended[placeholder]
            raise TraceError(
                f"loop variable '{name}' is used after its loop"
                + (f" (line {at.line})" if at else "")
                + " has ended",
                loc=location(),
                fix=f"use '{name}' inside its loop; for the last iteration's value, write "
                "the loop's last index (e.g. n - 1)",
            )

    def reductions_in(self, exprs: list[Expr]) -> list[Reduction]:
        """Outermost Reduction nodes in `exprs` (each once)."""
        out: list[Reduction] = []
        seen: set[int] = set()

        def visit(e: Expr) -> None:
            if id(e) in seen:
                return
            seen.add(id(e))
            if isinstance(e, Reduction):
                if not any(r is e for r in out):
                    out.append(e)
                return
            for c in children(e):
                visit(c)

        for e in exprs:
            visit(e)
        return out

    def resolve(self, e: Expr, loc: SourceLoc | None) -> Expr:
        """Replace bound index placeholders by their loop names, and reads of locals that
        changed since by snapshots; check that the locals and temporaries `e` reads are
        still in scope."""

        def fn(x: Expr) -> Expr | None:
            if isinstance(x, LocalVar):
                snapshot = self.locals.resolve(x, loc)
                self.check_scope(x.name, loc)
                return snapshot
            if isinstance(x, Load):
                self.check_scope(x.buffer, loc)
            if isinstance(x, LoopVar) and x.name.startswith("%"):
                self.check_index(x.name)
                if x.name not in self.bound:
                    raise TraceError(
                        f"index '{self.indices[x.name].name}' is used where it is not a loop "
                        "variable (in an extent, a shape or a scalar assignment)",
                        loc=loc,
                        fix="use it in a subscripted statement, or loop over it with kd.grid",
                    )
                return LoopVar(self.bound[x.name])
            if isinstance(x, Reduction):
                raise TraceError("internal: unplaced reduction", loc=loc)
            return None

        return map_expr(e, fn)

    # ---------------------------------------------------------------- the recorder

    def record(
        self, exprs: list[Expr], build: Callable[[list[Expr]], Stmt], loc: SourceLoc | None
    ) -> None:
        """Emit the statement `build(exprs)` inside implicit loops over its free indices,
        with its reductions hoisted."""
        if self.computed is not None:  # a part of the statement being recorded
            self._record(exprs, build, loc)
            return
        self.writes.check_use(exprs + [g.cond for g in self.guards if g.per_statement], loc)
        # A reduction used twice in one statement is computed once; not across statements,
        # as those may change what it reads.
        self.computed = {}
        try:
            self._record(exprs, build, loc)
        finally:
            self.computed = None

    def _record(
        self, exprs: list[Expr], build: Callable[[list[Expr]], Stmt], loc: SourceLoc | None
    ) -> None:
        # the statement's expressions, then its per-statement guards' conditions: their
        # reductions (`with kd.when(kd.sum(x[i, j], over=j) < 0):`) are placed alike
        n = len(exprs)
        exprs = exprs + [g.cond for g in self.guards if g.per_statement]
        reductions = self._placed_reductions(exprs)
        deps = {id(r): set(self.free_vars([r])) for r in reductions}
        order: list[str] = []
        for r in sorted(reductions, key=lambda r: len(deps[id(r)])):
            order += [v for v in self.free_vars([r]) if v not in order]
        order += [v for v in self.free_vars(exprs) if v not in order]
        placed = []
        for r in reductions:
            if set(order[: len(deps[id(r)])]) == deps[id(r)]:
                placed.append(r)
            else:
                load = self._materialize(r, loc)
                exprs = [_replace(e, r, load) for e in exprs]
        # a reduction computed into a temporary needs no loop over its indices here,
        # unless the statement or a placed reduction uses them too
        used = set(self.free_vars(exprs)).union(*(deps[id(r)] for r in placed))
        order = [v for v in order if v in used]
        self._nest(order, placed, deps, exprs[:n], exprs[n:], build, loc)

    def _placed_reductions(self, exprs: list[Expr]) -> list[Reduction]:
        """The reductions a statement places in its nest: its outermost ones, and those
        nested in them that reduce over an index of the outer one's loops (inside them,
        that index is taken: they must be computed first, outside)."""
        found = self.reductions_in(exprs)
        for r in found:  # `found` grows as it goes, so nested ones are checked in turn
            loops = set(r.over) | set(self.free_vars([r]))
            found += [
                q
                for q in self.reductions_in([r.body])
                if set(q.over) & loops and all(q is not f for f in found)
            ]
        return found

    def _nest(
        self,
        order: list[str],
        reductions: list[Reduction],
        deps: dict[int, set[str]],
        exprs: list[Expr],
        guards: list[Expr],
        build: Callable[[list[Expr]], Stmt],
        loc: SourceLoc | None,
    ) -> None:
        ready = [r for r in reductions if deps[id(r)] <= set(self.bound)]
        for r in ready:
            acc = self.reduce_now(r, loc)
            exprs = [_replace(e, r, acc) for e in exprs]
            guards = [_replace(g, r, acc) for g in guards]
        pending = [r for r in reductions if all(r is not q for q in ready)]
        remaining = [v for v in order if v not in self.bound]
        if not remaining:
            stmt = build([self.resolve(e, loc) for e in exprs])
            for g in reversed(guards):
                stmt = If(self.resolve(g, loc), (stmt,), loc=loc)
            self.emit(stmt)
            return
        with self.loop(self.indices[remaining[0]], LoopKind.PARALLEL, loc):
            self._nest(order, pending, deps, exprs, guards, build, loc)

    def _computed(self, r: Reduction) -> Expr | None:
        """`r`'s value if this statement computed it already, where it is still visible."""
        if self.computed is None or id(r) not in self.computed:
            return None
        _, value, holder = self.computed[id(r)]
        return value if self.in_scope(holder) else None

    def _remember(self, r: Reduction, value: Expr, holder: str) -> None:
        if self.computed is not None:
            self.computed[id(r)] = (r, value, holder)

    def reduce_now(self, r: Reduction, loc: SourceLoc | None) -> Expr:
        """Emit `acc = init; for over…: acc = acc op body` here (first computing reductions
        in the body that do not vary in its loops); return the accumulator, or the value
        this statement already computed for `r`."""
        done = self._computed(r)
        if done is not None:
            return done
        body = r.body
        for q in self.reductions_in([body]):
            if not self.free_vars([q]):  # it does not vary in r's loops: compute it first
                body = _replace(body, q, self.reduce_now(q, loc))
        acc = self.fresh(f"{r.label}_{'_'.join(self.indices[p].name for p in r.over)}")
        self.emit(DeclareLocal(acc, r.dtype, reduction_identity(r.op, r.dtype), loc=loc))
        self.declare(acc)
        var = LocalVar(acc, r.dtype)
        self._remember(r, var, acc)

        def build(es: list[Expr]) -> Stmt:
            return Assign(acc, Binary(r.op, var, es[0], r.dtype), loc=loc)

        def loops(over: tuple[str, ...]) -> None:
            if not over:
                self.record([body], build, loc)
                return
            with self.loop(self.indices[over[0]], LoopKind.REDUCTION, loc):
                loops(over[1:])

        with self.unguarded():
            loops(r.over)
        return var

    @contextmanager
    def unguarded(self) -> Iterator[None]:
        """Hoisted computations run whatever the per-statement guards say (they have no
        side effects), so they are recorded without them."""
        saved = self.guards
        self.guards = [g for g in saved if not g.per_statement]
        try:
            yield
        finally:
            self.guards = saved

    def _materialize(self, r: Reduction, loc: SourceLoc | None) -> Load:
        """Compute `r` for all values of its free indices into a temporary; return its load."""
        deps = self.free_vars([r])
        shape = tuple(self.resolve(self.indices[p].extent, loc) for p in deps)
        name = self.new_temp(r.label, shape, r.dtype, loc)
        load = Load(name, tuple(LoopVar(p) for p in deps), r.dtype, loc=loc)
        with self.unguarded():
            self.record(
                [*load.index, r], lambda es: Store(name, tuple(es[:-1]), es[-1], loc=loc), loc
            )
        self._remember(r, load, name)  # for other reductions' bodies that use it
        return load

    def new_temp(
        self, label: str, shape: tuple[Expr, ...], dtype: DType, loc: SourceLoc | None
    ) -> str:
        name = self.fresh(label)
        scope = temp_scope(shape, dtype.itemsize)
        self.buffers[name] = Buffer(name, dtype, shape, BufferRole.TEMP, scope, loc=loc)
        self.alloc_loops[name] = set(self.loop_kinds)
        self.emit(Allocate(name, loc=loc))
        self.declare(name)
        return name

    def meets_across(self, store: Store, load: Load, loop: str) -> bool:
        """Whether `load` may read what `store` writes in another iteration of `loop`
        (`carried`), for a statement being recorded in the open loops, `loop` among them."""
        extents = {name: self.indices[p].extent for p, name in self.bound.items()}
        names = list(self.loop_kinds)  # outermost first
        inside = tuple((n, extents[n]) for n in names[names.index(loop) + 1 :])
        return carried(Access(store, inside), Access(load, inside), loop, extents[loop])

    # ------------------------------------------------------------------- shape ties

    def tie(self, idx: Index, buffer: str, axis: int, loc: SourceLoc | None) -> None:
        self.ties.setdefault(idx.placeholder, []).append((buffer, axis, loc))

    def tie_checks(self) -> list[Check]:
        """Checks that the dimensions an index subscripts fit its range.

        An index whose extent is a dimension (`kd.indices(A.shape[1])`) and that is only
        ever a plain subscript (also inside another array's subscript: `x[idx[i]]`) ties
        every dimension it subscripts to that one, as in einsum: they must be equal. An index with any other extent, or one also used in
        subscript arithmetic (`x[i + 1]`, a position rather than a shared dimension),
        only needs each dimension it subscripts plainly to be at least that long.
        """
        checks: list[Check] = []
        for placeholder, uses in self.ties.items():
            idx = self.indices[placeholder]
            ext = idx.extent
            if any(isinstance(e, LoopVar | LocalVar) for e in walk_expr(ext)):
                continue  # a range that depends on a loop: not checkable before the kernel runs
            tied = isinstance(ext, DimOf) and placeholder not in self.offset_used
            seen: list[Expr] = [ext]
            for buffer, axis, loc in uses:
                dim = self.buffers[buffer].shape[axis]
                if any(dim == d for d in seen):
                    continue
                seen.append(dim)
                op, text = (BinaryOp.EQ, "==") if tied else (BinaryOp.LE, "<=")
                what = (
                    f"{format_expr(ext)} {text} {buffer}.shape[{axis}] (index '{idx.name}' "
                    f"ranges over {format_expr(ext)} and subscripts {buffer} axis {axis})"
                )
                checks.append(Check(Binary(op, ext, dim, T.bool_), CheckKind.SHAPE, what, loc=loc))
        return checks


def _check_independent(body: tuple[Stmt, ...], var: str, extent: Expr) -> None:
    """The iterations of a parallel loop over [0, extent) may not depend on each other:
    no statement of its body reads an element another iteration writes (`b[j] = a[j + 1];
    a[j] = …`; see `carried`)."""
    # (a temporary allocated in the body is each iteration's own: `t = kd.zeros(8)` per
    # row, then read at t[idx[i]], was refused)
    own = {s.buffer for s in walk_stmts(body) if isinstance(s, Allocate)}
    found = [x for x in accesses(body) if x.buffer not in own]
    stores = [x for x in found if x.write]
    for n, store in enumerate(stores):
        for other in found:
            if other.write and (other in stores[: n + 1] or _scatters(store, other)):
                continue  # (each pair of stores once; a scatter's collisions stay serial)
            if carried(store, other, var, extent):
                what = "written again" if other.write else "read"
                raise TraceError(
                    f"'{store.buffer}' is written at "
                    f"[{', '.join(format_expr(i) for i in store.index)}] and {what} at "
                    f"[{', '.join(format_expr(i) for i in other.index)}] in parallel loop "
                    f"'{var}': its iterations would depend on each other",
                    loc=other.node.loc or store.node.loc,
                    fix="use kd.range for an ordered loop, or write to another array",
                )


def _scatters(*stores: Access) -> bool:
    """Whether a store's subscripts read data (`H[idx[i]]`): two iterations may write
    one element by design, and the default schedule keeps such a loop serial."""
    return any(isinstance(x, Load) for st in stores for i in st.index for x in walk_expr(i))


def carried(store: Access, load: Access, var: str, extent: Expr) -> bool:
    """Whether `load` may read (or, a store, write) what `store` writes in another
    iteration of the loop `var` over [0, extent). A read at the written subscripts themselves, or at ones that differ
    only where the loop is not mentioned, counts as the iteration's own; other subscripts
    must be proven apart (kdsl/ir/dependence.py: `X[8*p + s]` and `X[8*p + s + 4]` for
    s < 4)."""
    if load.buffer != store.buffer or load.index == store.index:
        return False
    differ = [(a, b) for a, b in zip(load.index, store.index, strict=True) if a != b]
    return any(LoopVar(var) in (*walk_expr(a), *walk_expr(b)) for a, b in differ) and bool(
        meet_orders(store, load, var, extent)
    )


def _replace(e: Expr, old: Reduction, new: Expr) -> Expr:
    if e is old:
        return new
    if isinstance(e, Reduction):
        return e
    return map_expr(e, lambda x: new if x is old else None)


# ---------------------------------------------------------------- the active trace

_active = threading.local()


def active() -> TraceContext | None:
    """The trace running in this thread, if any."""
    return getattr(_active, "ctx", None)


def current(api_name: str) -> TraceContext:
    ctx: TraceContext | None = getattr(_active, "ctx", None)
    if ctx is None:
        raise TraceError(
            f"kd.{api_name} was called outside a kernel",
            loc=location(),
            fix="call it inside a function decorated with @kd.kernel",
        )
    return ctx


@contextmanager
def activate(ctx: TraceContext) -> Iterator[TraceContext]:
    previous = getattr(_active, "ctx", None)
    _active.ctx = ctx
    try:
        yield ctx
    finally:
        _active.ctx = previous
