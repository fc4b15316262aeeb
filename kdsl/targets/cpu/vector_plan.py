"""What a vector loop's body needs, found before any code is emitted: which locals are
vectors, which outer locals are accumulators, and why a loop can't be vectorized (the
reason `vector_obstacle` gives schedules so they refuse early)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from kdsl import types as T
from kdsl.ir.affine import Lin, linear, split_tile
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    Buffer,
    BufferRole,
    Const,
    DeclareLocal,
    Expr,
    Fma,
    If,
    Load,
    LocalVar,
    Loop,
    LoopExec,
    LoopKind,
    LoopVar,
    Select,
    Stmt,
    Store,
)
from kdsl.ir.visit import children, stmt_exprs, walk_all_exprs, walk_expr, walk_stmts

ACCUMULATE = (BinaryOp.ADD, BinaryOp.MUL, BinaryOp.MAX, BinaryOp.MIN)
SCALAR_EXECS = (LoopExec.SERIAL, LoopExec.UNROLLED)
LANE_TEMP_ELEMENTS = 64  # a temporary of this many elements or fewer may be one per lane
MAX_STRIDE = 8  # lanes this many elements apart or fewer are read as whole vectors (strided.py)


@dataclass
class VectorPlan:
    """What a vector loop's body needs: which of its locals are vectors, which outer
    locals it accumulates into (name -> (op, dtype)), or why it can't be vectorized."""

    var: str
    varying_locals: set[str] = field(default_factory=set)
    accumulators: dict[str, tuple[BinaryOp, T.DType]] = field(default_factory=dict)
    # small temporaries allocated in the body: each lane has its own (vectors in memory)
    lane_temps: dict[str, Buffer] = field(default_factory=dict)
    # small temporaries from outside whose elements the body only accumulates into
    # (`acc[r] = acc[r] + x`, a row tile's sums): a vector of partials per element
    array_accumulators: dict[str, tuple[BinaryOp, Buffer]] = field(default_factory=dict)
    problem: str | None = None
    known: dict[int, tuple[Expr, bool]] = field(default_factory=dict, repr=False)

    def varying(self, e: Expr) -> bool:
        """Whether `e` differs between lanes; remembered per node, as traced expressions
        share sub-expressions (a tree can be exponentially larger than its DAG)."""
        hit = self.known.get(id(e))
        if hit is None or hit[0] is not e:
            result = any(map(self.varying, children(e))) or (
                isinstance(e, LoopVar)
                and e.name == self.var
                or isinstance(e, LocalVar)
                and e.name in self.varying_locals
                or isinstance(e, Load)
                and e.buffer in self.lane_temps
            )
            hit = self.known[id(e)] = (e, result)
        return hit[1]


def accumulation(s: Assign | Store) -> tuple[BinaryOp, Expr] | None:
    """(op, x) when `s` is `acc = acc op x` or `acc = x op acc` with an accumulating op;
    `acc = fma(a, b, acc)` (a contracted sum) is (ADD, a * b). `acc` is a local, or an
    element of an array (`t[r] = t[r] + x`: the same subscripts, which x doesn't read)."""
    v = s.value
    mine: Expr = (
        LocalVar(s.local, v.dtype) if isinstance(s, Assign) else Load(s.buffer, s.index, v.dtype)
    )
    if isinstance(v, Fma) and v.c == mine:
        product = Binary(BinaryOp.MUL, v.a, v.b, v.dtype)
        return None if _touches(product, s) else (BinaryOp.ADD, product)
    if not isinstance(v, Binary) or v.op not in ACCUMULATE:
        return None
    for own, x in ((v.lhs, v.rhs), (v.rhs, v.lhs)):
        if own == mine and not _touches(x, s):
            return v.op, x
    return None


def _touches(e: Expr, s: Assign | Store) -> bool:
    """Whether `e` reads what `s` accumulates into (its local, or any of its array)."""
    return _reads(e, s.local) if isinstance(s, Assign) else _loads(e, s.buffer)


def _loads(e: Expr, buffer: str) -> bool:
    return any(isinstance(n, Load) and n.buffer == buffer for n in walk_expr(e))


def _reads(e: Expr, local: str) -> bool:
    return any(isinstance(n, LocalVar) and n.name == local for n in walk_expr(e))


def plan_vector_loop(loop: Loop, buffers: Mapping[str, Buffer] | None = None) -> VectorPlan:
    """`buffers`: the kernel's, by name (a small temporary allocated in the loop then
    becomes one per lane; without them, an obstacle)."""
    plan = VectorPlan(loop.var)
    plan.lane_temps = _lane_temps(loop, buffers or {})
    plan.problem = _accumulators(loop, plan)
    if plan.problem is None:
        _varying_locals(loop, plan)
        plan.array_accumulators = _array_accumulators(loop, buffers or {}, plan)
        plan.problem = next(_obstacles(loop, plan), None)
    return plan


def _array_accumulators(
    loop: Loop, buffers: Mapping[str, Buffer], plan: VectorPlan
) -> dict[str, tuple[BinaryOp, Buffer]]:
    """The small temporaries from outside the loop that its body reads and writes only
    as `t[r] = t[r] op x`, one op each (a split row loop moved inside the vector loop:
    `sum_j[ii] += W[i, j] · x[j]`); the lanes' sums of each element stay apart until the
    loop ends."""
    found: dict[str, tuple[BinaryOp, Buffer]] = {}
    updates: dict[str, list[Store]] = {}
    for s in walk_stmts(loop.body):
        if isinstance(s, Store):
            updates.setdefault(s.buffer, []).append(s)
    for name, stores in updates.items():
        buf = buffers.get(name)
        if buf is None or name in plan.lane_temps or not _small_constant(buf):
            continue
        updated = [accumulation(s) for s in stores]
        ops = {u[0] for u in updated if u is not None}
        if None in updated or len(ops) != 1:
            continue
        if any(plan.varying(i) for s in stores for i in s.index):
            continue  # an element per lane: stored as any array's
        if any(_reads_elsewhere(s, name) for s in walk_stmts(loop.body)):
            continue  # its value is needed during the loop
        found[name] = (ops.pop(), buf)
    return found


def _reads_elsewhere(s: Stmt, name: str) -> bool:
    """Whether `s` reads array `name` other than as its own accumulation's element (`t[r]`
    in `t[r] = t[r] + x`, whose x accumulation() checked)."""
    if isinstance(s, Store) and s.buffer == name:
        return any(_loads(i, name) for i in s.index)
    return any(_loads(e, name) for e in stmt_exprs(s))


def constant_count(buf: Buffer) -> int | None:
    """The elements of a buffer of a constant shape; None for another."""
    if not all(isinstance(d, Const) for d in buf.shape):
        return None
    return math.prod(int(d.value) for d in buf.shape)  # type: ignore[union-attr]


def _small_constant(buf: Buffer) -> bool:
    count = constant_count(buf)
    return buf.role is BufferRole.TEMP and count is not None and count <= LANE_TEMP_ELEMENTS


def _lane_temps(loop: Loop, buffers: Mapping[str, Buffer]) -> dict[str, Buffer]:
    """The temporaries allocated in `loop` of a few elements, of a constant shape: a
    window of a stencil, a small sort's buffer (`buf = kd.zeros((7,), kd.f32)` in a
    kd.grid loop)."""
    found = {}
    for s in walk_stmts(loop.body):
        buf = buffers.get(s.buffer) if isinstance(s, Allocate) else None
        if buf is not None and _small_constant(buf):
            found[buf.name] = buf
    return found


def _accumulators(loop: Loop, plan: VectorPlan) -> str | None:
    declared = {s.name for s in walk_stmts(loop.body) if isinstance(s, DeclareLocal)}
    updates: dict[int, Expr] = {}  # id of each update -> what it adds (multiplies, ...)
    for s in walk_stmts(loop.body):
        if not isinstance(s, Assign) or s.local in declared:
            continue
        found = accumulation(s)
        if found is None:
            return (
                f"local '{s.local}' is assigned inside the loop but is not an accumulator "
                "(acc = acc + x, *, max or min)"
            )
        op, previous = found[0], plan.accumulators.get(s.local)
        if previous is not None and previous[0] is not op:
            return f"local '{s.local}' is accumulated with both {previous[0].value} and {op.value}"
        plan.accumulators[s.local] = (op, s.value.dtype)
        updates[id(s)] = found[1]
    for s in walk_stmts(loop.body):
        exprs = (updates[id(s)],) if id(s) in updates else stmt_exprs(s)
        for name in plan.accumulators:
            if any(_reads(e, name) for e in exprs):
                return f"accumulator '{name}' is read inside the loop, not only accumulated"
    return None


def _varying_locals(loop: Loop, plan: VectorPlan) -> None:
    """Grow plan.varying_locals to a fixpoint: a local is varying when a value assigned to
    it is varying or the assignment is under a varying condition."""
    declared = {s.name for s in walk_stmts(loop.body) if isinstance(s, DeclareLocal)}
    while True:
        before = len(plan.varying_locals)
        for s, masked in _with_masks(loop.body, plan, False):
            if isinstance(s, DeclareLocal | Assign):
                name = s.name if isinstance(s, DeclareLocal) else s.local
                value = s.init if isinstance(s, DeclareLocal) else s.value
                if name in declared and (masked or plan.varying(value)):
                    plan.varying_locals.add(name)
        if len(plan.varying_locals) == before:
            return
        plan.known.clear()


def _with_masks(
    body: tuple[Stmt, ...], plan: VectorPlan, masked: bool
) -> Iterator[tuple[Stmt, bool]]:
    """Every statement, with whether it runs under a varying condition."""
    for s in body:
        yield s, masked
        if isinstance(s, Loop):
            yield from _with_masks(s.body, plan, masked)
        elif isinstance(s, If):
            yield from _with_masks(s.then, plan, masked or plan.varying(s.cond))


def _obstacles(loop: Loop, plan: VectorPlan) -> Iterator[str]:
    for e in walk_all_exprs(loop.body):
        if isinstance(e, Load) and e.buffer in plan.lane_temps and any(map(plan.varying, e.index)):
            yield f"its lanes read the temporary '{e.buffer}' at subscripts that differ"
    for s, _ in _with_masks(loop.body, plan, False):
        match s:
            case Allocate(buffer=name) if name not in plan.lane_temps:
                yield f"it allocates the temporary '{name}' inside the loop"
            case Store(buffer=name, index=index) if name in plan.lane_temps:
                if any(map(plan.varying, index)):
                    yield f"its lanes write the temporary '{name}' at subscripts that differ"
            case Loop(var=var, exec=LoopExec.VECTORIZED | LoopExec.PARALLEL as how):
                yield f"loop '{var}' inside it is {how.value} too"
            case Loop(var=var, extent=extent) if plan.varying(extent) and (
                split_tile(extent, plan.var) is None
            ):
                yield f"the extent of loop '{var}' inside it differs between lanes"
            case Store(buffer=name, index=index, value=value) if (
                name not in plan.array_accumulators
                and not any(map(plan.varying, index))
                and plan.varying(value)
            ):
                yield (
                    f"it stores values that differ between lanes into one element of "
                    f"'{name}' (the subscripts don't depend on '{plan.var}')"
                )


@dataclass
class Carried:
    """What a scalar reduction loop's iterations only accumulate into, by local: the
    vector loops inside it whose partials may stay vectors across it (by variable: its
    width and those accumulators), and the float sums its body adds to directly, in
    scalar code (by local: how many statements add to it in an iteration, its type)."""

    vectors: dict[str, tuple[int, dict[str, tuple[BinaryOp, T.DType]]]]
    sums: dict[str, tuple[int, T.DType]]


def carried_accumulators(loop: Loop, buffers: Mapping[str, Buffer]) -> Carried:
    """For a scalar reduction loop, the accumulations that may be kept apart across all of
    `loop`: into the locals declared outside it that its body only accumulates into, with
    one op, through reduction loops only (a split reduction's `jo` around its vectorized
    `ji`: its lanes are then combined once after `jo`, not after every `ji`). The sum over
    `loop`'s iterations may be reassociated as any reduction's may."""
    if loop.kind is not LoopKind.REDUCTION or loop.exec not in SCALAR_EXECS:
        return Carried({}, {})
    declared = {s.name for s in walk_stmts(loop.body) if isinstance(s, DeclareLocal)}
    ops: dict[str, BinaryOp] = {}
    refused: set[str] = set()
    vectors: list[tuple[Loop, VectorPlan]] = []
    direct: dict[str, tuple[int, T.DType]] = {}  # scalar sums in the body, not in a loop
    nested: set[str] = set()  # accumulated in scalar code otherwise (in inner loops, ...)

    def accumulated(name: str, op: BinaryOp) -> None:
        if ops.setdefault(name, op) is not op:
            refused.add(name)

    def visit(body: tuple[Stmt, ...], through_reductions: bool, depth: int) -> None:
        for s in body:
            if isinstance(s, Loop) and s.exec is LoopExec.VECTORIZED:
                plan = plan_vector_loop(s, buffers)
                if through_reductions and s.kind is LoopKind.REDUCTION and not plan.problem:
                    vectors.append((s, plan))
                    for name, (op, _) in plan.accumulators.items():
                        accumulated(name, op)
                    refused.update(_read_locals(walk_all_exprs((s,))) - set(plan.accumulators))
                else:
                    refused.update(_read_locals(walk_all_exprs((s,))))
                    refused.update(u.local for u in walk_stmts(s.body) if isinstance(u, Assign))
                continue
            found = accumulation(s) if isinstance(s, Assign) else None
            if isinstance(s, Assign) and found is not None and through_reductions:
                accumulated(s.local, found[0])
                refused.update(_read_locals(walk_expr(found[1])))
                if depth or found[0] is not BinaryOp.ADD or not s.value.dtype.is_float:
                    nested.add(s.local)
                else:
                    count = direct.get(s.local, (0, s.value.dtype))[0]
                    direct[s.local] = (count + 1, s.value.dtype)
            else:
                if isinstance(s, Assign):
                    refused.add(s.local)
                refused.update(_read_locals(e for x in stmt_exprs(s) for e in walk_expr(x)))
            if isinstance(s, Loop):
                visit(s.body, through_reductions and _scalar_reduction(s), depth + 1)
            elif isinstance(s, If):
                visit(s.then, through_reductions, depth)

    visit(loop.body, True, 0)
    carried = set(ops) - refused - declared
    found: dict[str, tuple[int, dict[str, tuple[BinaryOp, T.DType]]]] = {}
    for vector, plan in vectors:
        mine = {n: a for n, a in plan.accumulators.items() if n in carried}
        if mine:
            found[vector.var] = (vector.width, mine)
    sums = {n: a for n, a in direct.items() if n in carried and n not in nested}
    return Carried(found, sums)


def _scalar_reduction(loop: Loop) -> bool:
    return loop.kind is LoopKind.REDUCTION and loop.exec in SCALAR_EXECS


def _read_locals(exprs: Iterable[Expr]) -> set[str]:
    return {e.name for e in exprs if isinstance(e, LocalVar)}


# ------------------------------------------------------------------------------ strided


@dataclass(frozen=True)
class Strided:
    """A vector access whose lanes are `s` elements apart, each `phase` elements into its
    run of s: `a[2·v + 1]` (s = 2, phase 1), `x[v, 2]` of rows of 3 (s = 3, phase 2).
    `start` holds the subscripts of lane 0's run with v taken as 0 (`step`·v is added on
    `axis`, the one subscript that differs between lanes)."""

    axis: int
    step: int
    start: tuple[Expr, ...]
    phase: int
    s: int


def strided_access(
    plan: VectorPlan, index: tuple[Expr, ...], row: int | None = None
) -> Strided | None:
    """How the lanes of an access at `index` lie, when they are a few elements apart: v
    times a constant from 2 to MAX_STRIDE in the last subscript (the other subscripts
    the same in every lane), or v in another axis and a constant in the last one, where
    the rows are `row` elements long (s = step · row)."""
    varying = [a for a, i in enumerate(index) if plan.varying(i)]
    if len(varying) != 1:
        return None
    axis, last, v = varying[0], len(index) - 1, LoopVar(plan.var)
    lin = linear(index[axis])
    if lin is None or lin.coeff(v) < 1:
        return None
    step, rest = lin.coeff(v), lin.without([v])
    if any(plan.varying(atom) for atom, _ in rest.terms):
        return None  # v also inside another term (`2·v + v // 3`)
    if axis == last:
        if not 2 <= step <= MAX_STRIDE:
            return None
        phase = rest.const % step  # (a[2·v + 3]: the run from a[2·v + 2], phase 1)
        run = Lin(rest.const - phase, rest.terms).expr()
        return Strided(axis, step, (*index[:axis], run), phase, step)
    column = index[last]
    if row is None or not isinstance(column, Const) or type(column.value) is not int:
        return None
    if not (0 <= column.value < row and 2 <= step * row <= MAX_STRIDE):
        return None
    start = (*index[:axis], rest.expr(), *index[axis + 1 : last], Const(0, T.INDEX))
    return Strided(axis, step, start, column.value, step * row)


def named_columns(body: tuple[Stmt, ...]) -> dict[str, int]:
    """Per array, one more than the largest constant last subscript that `body` names
    (`x[i, 0]`, `x[i, 2]`: 3): how long its rows likely are, where only the run time
    knows (the code that relies on it checks)."""
    found: dict[str, int] = {}
    accesses = [(e.buffer, e.index) for e in walk_all_exprs(body) if isinstance(e, Load)]
    accesses += [(s.buffer, s.index) for s in walk_stmts(body) if isinstance(s, Store)]
    for name, index in accesses:
        last = index[-1] if index else None
        if isinstance(last, Const) and type(last.value) is int and last.value >= 0:
            found[name] = max(found.get(name, 0), last.value + 1)
    return found


def unconditional_loads(exprs: Iterable[Expr]) -> Iterator[Load]:
    """The loads that evaluating `exprs` performs in every active lane: not those in a
    side of a `where` that loads, which vector code evaluates only where it is chosen."""
    seen: set[int] = set()
    stack = list(exprs)
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, Load):
            yield e
        if isinstance(e, Select) and any(
            isinstance(n, Load) for side in (e.if_true, e.if_false) for n in walk_expr(side)
        ):
            stack.append(e.cond)
        else:
            stack.extend(children(e))


# ------------------------------------------------------------------------------ emission
