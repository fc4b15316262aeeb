"""Strided vector accesses as whole vectors and shuffles, not gathers and scatters.

In a loop vectorized over v (width w), an access whose lanes are s elements apart (s a
small constant: `a[2·v + 1]` of interleaved pairs, `x[v, c]` of rows of 3 pixels) lies
in the s·w consecutive elements of its lanes' runs. A load reads them as one <s·w x T>
vector (s plain vector loads) and picks its lanes out with a shuffle (vpermt2ps); a
store spreads its lanes into place with a shuffle and writes them with a masked store,
which leaves the other elements of the runs as they were (another statement, or none,
writes them: a store never writes an element that the kernel does not).

Which elements a load reads: in each active lane's run, those from the lowest to the
highest phase that it serves (`a[2·v]` with `a[2·v + 1]`: both; `a[2·v + 1]` alone: that
one; the rest masked off). Each lies between two elements the kernel reads, so it is
memory of the array, and what is read besides them is thrown away. The accesses of a
statement that share runs (`a[2·v]`, `a[2·v + 1]`) share its loads: those it evaluates
in every active lane (not in a side of a `where`), under the statement's mask, and with
no bounds check of their own (a checked access reads only its own elements, after its
check). A statement is the unit as for any value (`_VectorLoop.value`): a store in the
next one may change what a load would read.

Where the rows' length is only known at run time (`x[v, c]` of an (n, k) array: k is
taken to be the columns the kernel names), or the array is a strided argument, the
code checks that the lanes are s elements apart after all; a gather or scatter serves
where they are not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from llvmlite import ir

from kdsl.ir.nodes import BufferRole, Const, Expr, Load, Stmt, Store
from kdsl.ir.visit import stmt_exprs, walk_expr
from kdsl.targets.cpu.ops import I1, I8, I32, I64, PTR, memory_type
from kdsl.targets.cpu.vector_plan import (
    Strided,
    strided_access,
    unconditional_loads,
)
from kdsl.types import DType

if TYPE_CHECKING:
    from kdsl.targets.cpu.vector import _VectorLoop

_Run = tuple[str, Strided]  # an array and where its lanes' runs are


class Runs:
    """What a vector loop knows of its current statement's strided loads: the phases of
    the runs they share (found once per statement), and the arrays' row lengths."""

    def __init__(self, vl: _VectorLoop) -> None:
        self.vl = vl
        self.statement: Stmt | None = None
        self.mask: ir.Value | None = None  # the statement's: where its loads share runs
        self.shared: dict[tuple[str, tuple[Expr, ...]], frozenset[int]] | None = None

    @contextmanager
    def of(self, s: Stmt, mask: ir.Value | None) -> Iterator[None]:
        """While statement `s` is emitted under `mask` (then the one around it again)."""
        saved = self.statement, self.mask, self.shared
        self.statement, self.mask, self.shared = s, mask, None
        yield
        self.statement, self.mask, self.shared = saved

    def row(self, name: str) -> int | None:
        """How long the rows of `name` are: its last dimension when it is a constant,
        else the columns the kernel names (a guess the code checks)."""
        last = self.vl.gen.buffers[name].shape[-1]
        if isinstance(last, Const):
            return int(last.value)
        return self.vl.gen.named_columns.get(name)

    def phases(self, e: Load, found: Strided) -> frozenset[int]:
        """The phases of `e`'s runs that its load reads: those of all the statement's
        loads that share them where `e` is one, else its own."""
        if self.vl.mask is self.mask and self.statement is not None:
            if self.shared is None:
                self.shared = self._shared(self.statement)
            hit = self.shared.get((e.buffer, e.index))
            if hit is not None:
                return hit
        return frozenset({found.phase})

    def _shared(self, s: Stmt) -> dict[tuple[str, tuple[Expr, ...]], frozenset[int]]:
        gen = self.vl.gen
        groups: dict[_Run, set[int]] = {}
        members: dict[tuple[str, tuple[Expr, ...]], _Run] = {}
        for e in unconditional_loads(stmt_exprs(s)):
            found = locate(self.vl, e.buffer, e.index)
            if found is None or gen.must_check(e.index, e.checked):
                continue
            run = (e.buffer, _whole_run(found))
            groups.setdefault(run, set()).add(found.phase)
            members[(e.buffer, e.index)] = run
        return {key: frozenset(groups[run]) for key, run in members.items()}


def _whole_run(found: Strided) -> Strided:
    """`found` with its phase left out: what the accesses of one run have in common."""
    return Strided(found.axis, found.step, found.start, 0, found.s)


def locate(vl: _VectorLoop, name: str, index: tuple[Expr, ...]) -> Strided | None:
    """Where the lanes of `name[index]` lie, when they are a few elements apart in an
    array laid out in C order (Fortran order: gathers)."""
    buf = vl.gen.buffers.get(name)
    if buf is None or buf.fortran or not index or name in vl.lane_slots:
        return None
    row = vl.runs.row(name) if len(index) > 1 else None
    return strided_access(vl.plan, index, row)


def strided_load(vl: _VectorLoop, e: Load) -> ir.Value | None:
    """The lanes of `e` picked from its runs; None when they are not a few apart."""
    found = locate(vl, e.buffer, e.index)
    if found is None:
        return None
    if vl.gen.must_check(e.index, e.checked):
        vl.bounds_check(e.buffer, e.index, e.loc)
    phases = vl.runs.phases(e, found)
    span = _span(vl, e.buffer, found, phases)
    picks = [k * found.s + found.phase for k in range(vl.w)]
    return vl.b.shuffle_vector(span, ir.Constant(span.type, None), _indices(picks))


def strided_store(vl: _VectorLoop, s: Store, value: ir.Value) -> bool:
    """Store `value`'s lanes at `s`'s elements a few apart, without touching the others
    of their runs; False when they are not a few apart."""
    found = locate(vl, s.buffer, s.index)
    if found is None:
        return False
    gen, b = vl.gen, vl.b
    if gen.must_check(s.index, s.checked):
        vl.bounds_check(s.buffer, s.index, s.loc)
    d = gen.buffers[s.buffer].dtype
    n = found.s * vl.w
    spread = b.shuffle_vector(value, ir.Constant(value.type, None), _indices(range(n), found.s))
    mask = _run_mask(vl, found.s, frozenset({found.phase}), exact=True)
    origin = _origin(vl, s.buffer, found)
    _where_adjacent(
        vl,
        _apart(vl, s.buffer, found),
        lambda: _masked_store(vl, spread, origin, mask, d.itemsize),
        lambda: _scatter(vl, s.buffer, found, origin, value, d.itemsize),
    )
    return True


def _where_adjacent(
    vl: _VectorLoop,
    apart: ir.Value | None,
    adjacent: Callable[[], None],
    scatter: Callable[[], None],
) -> None:
    """`adjacent()` where the runs' elements are adjacent (surely: `apart` None; else as
    `apart` says at run time), `scatter()` where they are not."""
    if apart is None:
        adjacent()
        return
    with vl.b.if_else(apart, likely=True) as (then, otherwise):
        with then:
            adjacent()
        with otherwise:
            scatter()


def _scatter(
    vl: _VectorLoop, name: str, found: Strided, origin: ir.Value, value: ir.Value, size: int
) -> None:
    """`value`'s active lanes to their elements, found by the array's strides."""
    lanes = [k * found.s + found.phase for k in range(vl.w)]
    vl.scatter(value, _addresses(vl, name, found, origin, lanes), size)


def filled_runs(vl: _VectorLoop, body: tuple[Stmt, ...]) -> Iterator[tuple[Stmt, ...]]:
    """`body` in pieces to emit: single statements, and runs of consecutive stores that
    together write every element of their runs (`c[2·v] = …` then `c[2·v + 1] = …`),
    which `store_filled_runs` writes as whole vectors."""
    at = 0
    while at < len(body):
        piece = _filling(vl, body, at)
        yield piece
        at += len(piece)


def _filling(vl: _VectorLoop, body: tuple[Stmt, ...], at: int) -> tuple[Stmt, ...]:
    """The stores from body[at] that fill their runs, or body[at] alone. Their stores
    can wait for the last one: none of them reads the array (a written argument shares
    no memory with another; a temporary is its own), and none checks its bounds."""
    first = _plain_store(vl, body[at])
    if first is None:
        return body[at : at + 1]
    run, phases = _whole_run(first[1]), {first[1].phase}
    for s in body[at + 1 : at + first[1].s]:
        found = _plain_store(vl, s)
        if found is None or found[0].buffer != first[0].buffer or _whole_run(found[1]) != run:
            break
        phases.add(found[1].phase)
    piece = body[at : at + first[1].s]
    name = first[0].buffer
    if len(phases) < first[1].s or any(_reads(s, name) for s in piece):
        return body[at : at + 1]
    return piece


def _plain_store(vl: _VectorLoop, s: Stmt) -> tuple[Store, Strided] | None:
    """`s` with where its lanes lie, when it is a store into an array (not a lane's
    temporary, an accumulator or a register) at runs of a few elements, unchecked (runs
    whose elements may not be adjacent, as the rows of an (n, k) array, are checked at
    run time by `store_filled_runs`)."""
    if not isinstance(s, Store) or s.buffer in vl.plan.array_accumulators:
        return None
    if (s.buffer, s.index) in vl.held or vl.gen.must_check(s.index, s.checked):
        return None
    found = locate(vl, s.buffer, s.index)
    if found is None:
        return None
    return s, found


def _reads(s: Stmt, name: str) -> bool:
    return any(
        isinstance(n, Load) and n.buffer == name for e in stmt_exprs(s) for n in walk_expr(e)
    )


def store_filled_runs(vl: _VectorLoop, piece: tuple[Stmt, ...]) -> None:
    """Stores from `filled_runs`: each value computed as its statement's, then all of
    them interleaved into one <s·w x T> vector, written with plain vector stores (in a
    masked tail: the active lanes' runs). Where the runs' elements are adjacent only if
    the array's strides say so (an (n, k) array's rows, k known at run time), each value
    is scattered to its elements when they are not (a scatter of its own per store:
    rows of 4, or a view of 3 columns of 5, keep the elements the kernel never names)."""
    b = vl.b
    stores = [store for s in piece if (store := _plain_store(vl, s)) is not None]
    assert len(stores) == len(piece)  # as _filling found them
    first, run = stores[0][0], stores[0][1]
    d, n = vl.gen.buffers[first.buffer].dtype, run.s * vl.w
    values = []
    for s, _ in stores:
        with vl.statement_scope(s):
            value = vl.vector(vl.value(s.value))
        values.append(b.zext(value, vl.vtype(I8)) if d.is_bool else value)  # (bytes)
    origin = _origin(vl, first.buffer, run)

    def scatter() -> None:
        for (s, where), value in zip(stores, values):
            _scatter(vl, s.buffer, where, origin, value, d.itemsize)

    _where_adjacent(
        vl,
        _apart(vl, first.buffer, run),
        lambda: _store_whole(vl, stores, values, origin, n, d),
        scatter,
    )


def _store_whole(
    vl: _VectorLoop,
    stores: list[tuple[Store, Strided]],
    values: list[ir.Value],
    origin: ir.Value,
    n: int,
    d: DType,
) -> None:
    """The stores' values interleaved into one <s·w x T> vector and written over their
    runs (adjacent elements)."""
    b, run = vl.b, stores[0][1]
    whole: ir.Value | None = None
    for (_, where), value in zip(stores, values):
        spread = b.shuffle_vector(value, ir.Constant(value.type, None), _indices(range(n), run.s))
        mine = ir.Constant(ir.VectorType(I1, n), [j % run.s == where.phase for j in range(n)])
        whole = spread if whole is None else b.select(mine, spread, whole)
    assert whole is not None
    mask = _run_mask(vl, run.s, frozenset(range(run.s)), exact=True)
    if mask is None:
        b.store(whole, origin, align=d.itemsize)
    else:
        _masked_store(vl, whole, origin, mask, d.itemsize)


def _span(vl: _VectorLoop, name: str, found: Strided, phases: frozenset[int]) -> ir.Value:
    """<s·w x T>: element k·s + p of lane k's run for each phase p from the least to the
    greatest of `phases` (those its loads serve), undefined elsewhere; once per
    statement, mask and run (kept with the statement's values: `_VectorLoop.value`)."""
    run = ("run", name, _whole_run(found), phases)
    key = (vl.structures.setdefault(run, len(vl.structures)), id(vl.mask))
    hit = vl.computed.get(key)
    if hit is None or hit[0] is not vl.mask:
        reads = frozenset([vl.alias_groups.get(name, name)]).union(*map(vl.reads, found.start))
        hit = vl.computed[key] = (vl.mask, _read_span(vl, name, found, phases), reads)
    return hit[1]


def _read_span(vl: _VectorLoop, name: str, found: Strided, phases: frozenset[int]) -> ir.Value:
    b, d = vl.b, vl.gen.buffers[name].dtype
    vt = ir.VectorType(memory_type(d), found.s * vl.w)
    origin, apart = _origin(vl, name, found), _apart(vl, name, found)

    def whole() -> ir.Value:  # the runs' elements, adjacent: vector loads
        mask = _run_mask(vl, found.s, phases, exact=False)
        if mask is None:
            return b.load(origin, typ=vt, align=d.itemsize)
        return vl.masked_read("load", vt, origin, mask, d.itemsize)

    def gathered() -> ir.Value:  # only the phases served, one element each
        at = _addresses(vl, name, found, origin, range(found.s * vl.w))
        mask = _run_mask(vl, found.s, phases, exact=True)
        mask = mask if mask is not None else ir.Constant(ir.VectorType(I1, vt.count), 1)
        return vl.masked_read("gather", vt, at, mask, d.itemsize)

    if apart is None:
        return whole()
    value = vl.either(apart, whole, gathered, likely=True)
    assert value is not None  # (both sides are loads)
    return value


def _origin(vl: _VectorLoop, name: str, found: Strided) -> ir.Value:
    """The address of lane 0's run: its first element's (computed before any branch)."""
    b, info = vl.b, vl.gen.state.arrays[name]
    offset: ir.Value = ir.Constant(I64, 0)
    for a, (i, stride) in enumerate(zip(found.start, info.strides)):
        at = vl.uniform(i)
        if a == found.axis:
            at = b.add(at, b.mul(vl.base, ir.Constant(I64, found.step)))
        offset = b.add(offset, b.mul(at, stride))
    return b.gep(info.data, [offset], source_etype=I8)


def _adjacent(vl: _VectorLoop, name: str, found: Strided) -> bool:
    """Whether the runs are surely s adjacent elements each: along the last axis of an
    array in C order."""
    buf = vl.gen.buffers[name]
    last = found.axis == len(found.start) - 1
    return last and (buf.contiguous or buf.role is not BufferRole.PARAM)


def _apart(vl: _VectorLoop, name: str, found: Strided) -> ir.Value | None:
    """Whether the runs are s adjacent elements each, at run time (None: surely so). The
    lanes are step·stride[axis] bytes apart and a run's elements stride[last]: they must
    be s · the element's size and the element's size."""
    if _adjacent(vl, name, found):
        return None
    buf, info = vl.gen.buffers[name], vl.gen.state.arrays[name]
    b, size, last = vl.b, buf.dtype.itemsize, len(found.start) - 1
    lanes = b.mul(info.strides[found.axis], ir.Constant(I64, found.step))
    return b.and_(
        b.icmp_signed("==", lanes, ir.Constant(I64, found.s * size)),
        b.icmp_signed("==", info.strides[last], ir.Constant(I64, size)),
    )


def _addresses(
    vl: _VectorLoop, name: str, found: Strided, origin: ir.Value, positions: Iterable[int]
) -> ir.Value:
    """<n x ptr>: where each of `positions` (k·s + p: phase p of lane k's run) is, by
    the strides (for when the runs' elements are not adjacent)."""
    b, info = vl.b, vl.gen.state.arrays[name]
    where = list(positions)
    s, n = found.s, len(where)
    lane = ir.Constant(ir.VectorType(I64, n), [j // s for j in where])
    phase = ir.Constant(ir.VectorType(I64, n), [j % s for j in where])
    step = b.mul(info.strides[found.axis], ir.Constant(I64, found.step))
    offset = b.add(
        b.mul(lane, vl.ops.splat(step, n)),
        b.mul(phase, vl.ops.splat(info.strides[len(found.start) - 1], n)),
    )
    at = b.gep(origin, [offset], source_etype=I8)
    at.type = ir.VectorType(PTR, n)  # llvmlite types a GEP as one pointer
    return at


def _run_mask(vl: _VectorLoop, s: int, phases: frozenset[int], exact: bool) -> ir.Value | None:
    """<s·w x i1>: the elements of the active lanes' runs at `phases` (exact), or at any
    phase from their least to their greatest; None where that is all of them."""
    lo, hi = min(phases), max(phases)
    n = s * vl.w
    wanted = [(j % s in phases) if exact else lo <= j % s <= hi for j in range(n)]
    if vl.mask is None:
        return None if all(wanted) else ir.Constant(ir.VectorType(I1, n), wanted)
    b = vl.b
    spread = b.shuffle_vector(vl.mask, ir.Constant(vl.mask.type, None), _indices(range(n), s))
    return spread if all(wanted) else b.and_(spread, ir.Constant(spread.type, wanted))


def _masked_store(
    vl: _VectorLoop, value: ir.Value, at: ir.Value, mask: ir.Value | None, align: int
) -> None:
    assert mask is not None  # a store of one phase of s > 1: never every element
    name = f"llvm.masked.store.{vl.ops.suffix(value.type)}.{vl.ops.suffix(at.type)}"
    vl.ops.intrinsic(name, ir.VoidType(), [value, at, ir.Constant(I32, align), mask])


def _indices(positions: Iterable[int], every: int = 1) -> ir.Constant:
    """A shuffle's constant mask: each of `positions` (divided by `every`: each lane
    repeated that many times)."""
    picks = [j // every for j in positions]
    return ir.Constant(ir.VectorType(I32, len(picks)), picks)
