"""The partial results of a vector loop's accumulators, and how they become the local's.

A vector loop keeps a vector of `width` partials per accumulator (COPIES of them where
its body is short: independent chains of operations), combined across lanes into the
local after the loop, or after the scalar reduction loops around it that only
accumulate, which carry them across (`carried_partials`: a split reduction's `jo`
around its vectorized `ji`, the `j` of a sum over (j, k) with k vectorized).

A float sum is blocked, so that its rounding error grows like NumPy's pairwise sum's
and not with the length of the axis: a vector of partials (a chain) takes at most BLOCK
additions, then moves up, one vector addition, into the first of LEVELS vectors of
block sums; every FANOUT blocks a level moves up into the next likewise, and the last
takes any number. No chain or level then adds more than a few dozen terms: 10^7 times
0.1 in f32 comes within 5e-8 of the exact sum (NumPy: 1.1e-7), where one chain per
lane over the whole axis was off by 1.5e-3. The blocks are a loop around the vector
loop's own, whose instructions are unchanged.

A chain that an outer reduction loop carries moves up across that loop's iterations:
where its vector loops take as many trips in every iteration (the rows of a sum over
two axes, a split's tiles), the outer loop runs in strips of as many iterations as fill
a block (`Strips`, its size computed before it), after each of which the chain moves
up; otherwise (a triangular nest) the chain counts its additions across the vector
loop's runs (`reserve`). A float sum in scalar code directly in a reduction loop at the
kernel's top level (a column's sum, which is not vectorized) runs in strips of STRIP
iterations. Integer sums (exact), max, min and products, and every sum under strict_fp
(which promises the serial order), are not blocked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llvmlite import ir

from kdsl import types as T
from kdsl.ir.nodes import (
    Assign,
    BinaryOp,
    DeclareLocal,
    If,
    LocalVar,
    Loop,
    LoopExec,
    LoopVar,
    Stmt,
)
from kdsl.ir.visit import walk_expr, walk_stmts
from kdsl.targets.cpu.ops import I64, Ops, constant, smax, smin
from kdsl.targets.cpu.vector_plan import carried_accumulators

if TYPE_CHECKING:
    from kdsl.targets.cpu.codegen import _Codegen

COPIES = 4  # vector iterations per trip of a loop with accumulators
BLOCK = 32  # additions into a chain before it moves up (NumPy: 16 per accumulator)
FANOUT = 16  # blocks (or sums of a level below) that a level adds before it moves up
LEVELS = 4  # levels of block sums; the last adds any number (FANOUT^3 blocks apiece)
# a scalar sum's strip of iterations: LLVM vectorizes such a loop and adds its lanes
# after each strip, a cost 32 iterations made measurable (a column's sum: 1.18x)
STRIP = 256

Found = dict[str, tuple[int, dict[str, tuple[BinaryOp, T.DType]]]]  # see carried_accumulators


@dataclass
class Levels:
    """The block sums of one float sum at one width: LEVELS vectors (slots), and how many
    blocks have moved up into the first (`blocks`, which says when a level is full)."""

    slots: list[ir.Value]
    blocks: ir.Value
    dtype: T.DType


@dataclass
class Chain:
    """A vector of partials; for a blocked sum, also the additions into it since it last
    moved up (`count`) and the levels it moves up into."""

    slot: ir.Value
    count: ir.Value | None = None
    levels: Levels | None = None


def blocked(op: BinaryOp, d: T.DType) -> bool:
    """Whether an accumulation is a float sum, whose partials are blocked (integer sums
    are exact, and max, min and products don't grow an error with the length)."""
    return d.is_float and op is BinaryOp.ADD


def open_chain(
    gen: _Codegen,
    op: BinaryOp,
    d: T.DType,
    width: int | None,
    name: str,
    levels: Levels | None,
    counted: bool = True,
) -> Chain:
    """A new chain of `op` into `name`: its identity, and for a blocked sum the levels
    (`levels`, or new ones) and, unless its blocks are an outer loop's strips (`counted`
    False), a count."""
    slot = identity_slot(gen, op, d, width, name)
    if not blocked(op, d):
        return Chain(slot)
    levels = levels or open_levels(gen, d, width, name)
    return Chain(slot, new_counter(gen, f"{name}.count") if counted else None, levels)


def open_levels(
    gen: _Codegen, d: T.DType, width: int | None, name: str, blocks: ir.Value | None = None
) -> Levels:
    """New levels for a float sum into `name`, counting their blocks in `blocks` (a count
    that other levels moving up at the same time share) or a new count."""
    slots = [identity_slot(gen, BinaryOp.ADD, d, width, f"{name}.level") for _ in range(LEVELS)]
    return Levels(slots, new_counter(gen, f"{name}.blocks") if blocks is None else blocks, d)


def new_counter(gen: _Codegen, name: str) -> ir.Value:
    """A new count, zero here."""
    slot = gen._entry_alloca(I64, name)
    gen.b.store(ir.Constant(I64, 0), slot)
    return slot


def reserve(gen: _Codegen, chain: Chain, slots: list[ir.Value], trips: ir.Value) -> None:
    """Before a block of `trips` additions into `chain` (and into `slots`, the other
    vectors of partials that its loop updates alongside it: their sums are its): move the
    partials up first when the block would take the chain past BLOCK, and count it."""
    assert chain.count is not None and chain.levels is not None
    b = gen.b
    count = b.load(chain.count, typ=I64)
    full = b.icmp_signed(">", b.add(count, trips), ir.Constant(I64, BLOCK))
    with b.if_then(full, likely=False):
        move_up(gen, slots, chain.levels)
    b.store(b.add(b.select(full, ir.Constant(I64, 0), count), trips), chain.count)


def move_up(gen: _Codegen, slots: list[ir.Value], levels: Levels) -> None:
    """Move the sum of the vectors of partials in `slots` up into `levels`, and start them
    again from zero."""
    block = pairwise(gen.ops, BinaryOp.ADD, slots, levels.dtype)
    for slot in slots:
        _restart(gen.ops, BinaryOp.ADD, levels.dtype, slot)
    add_blocks(gen, [(levels, block)])


def in_blocks(
    gen: _Codegen,
    var: str,
    start: ir.Value,
    stop: ir.Value,
    size: ir.Value | int,
    block: Callable[[ir.Value, ir.Value], None],
) -> None:
    """block(first, last) for each block [first, last) of `size` of [start, stop)."""
    b = gen.b

    def each(slot: ir.Value) -> None:
        first = b.load(slot, typ=I64)
        last = b.add(first, ir.Constant(I64, size) if isinstance(size, int) else size)
        block(first, smin(b, stop, last))

    gen.counted(f"{var}.block", start, stop, size, each)


@dataclass
class Strips:
    """A carried loop run in strips of `size` iterations (a value computed before it),
    after each of which `chains` move up: the chains of float sums whose vector loops
    take the same number of trips in each of its iterations (a split's tiles, the rows of
    a sum over two axes), so that they keep no count, and its scalar sums'."""

    size: ir.Value
    chains: list[Chain]

    def emit(
        self,
        gen: _Codegen,
        var: str,
        start: ir.Value,
        stop: ir.Value,
        iteration: Callable[[ir.Value], None],
    ) -> None:
        """for var in [start, stop): iteration(var's slot), in strips."""
        b = gen.b
        at = gen._entry_alloca(I64, var)

        def strip(first: ir.Value, last: ir.Value) -> None:
            def each(slot: ir.Value) -> None:
                b.store(b.add(first, b.load(slot, typ=I64)), at)
                iteration(at)

            # (counted from zero: LLVM unrolls it as it did the loop whole, see vector.run)
            gen.counted(f"{var}.strip", ir.Constant(I64, 0), b.sub(last, first), 1, each)
            together: dict[int, tuple[list[ir.Value], Levels]] = {}  # by their levels
            for chain in self.chains:
                assert chain.levels is not None
                together.setdefault(id(chain.levels), ([], chain.levels))[0].append(chain.slot)
            for slots, levels in together.values():  # one block for chains that share
                move_up(gen, slots, levels)

        in_blocks(gen, var, start, stop, self.size, strip)


def add_blocks(gen: _Codegen, sums: list[tuple[Levels, ir.Value]]) -> None:
    """Add each block's sum into the first of its levels (levels of one type that share
    their count of blocks); a level that has taken FANOUT sums (every FANOUT^k blocks)
    moves up into the next and starts again."""
    b, ops, d = gen.b, gen.ops, sums[0][0].dtype
    count = sums[0][0].blocks
    blocks = b.add(b.load(count, typ=I64), ir.Constant(I64, 1))
    b.store(blocks, count)
    below = [block for _, block in sums]
    with ExitStack() as nested:
        for k in range(LEVELS):
            slots = [levels.slots[k] for levels, _ in sums]
            for slot, block in zip(slots, below):
                b.store(ops.binary(BinaryOp.ADD, read_slot(b, slot), block, d), slot)
            if k + 1 == LEVELS:
                break
            every = ir.Constant(I64, FANOUT ** (k + 1) - 1)
            full = b.icmp_signed("==", b.and_(blocks, every), ir.Constant(I64, 0))
            nested.enter_context(b.if_then(full, likely=False))
            below = [read_slot(b, slot) for slot in slots]
            for slot in slots:
                _restart(ops, BinaryOp.ADD, d, slot)


def total(
    ops: Ops, op: BinaryOp, d: T.DType, slots: list[ir.Value], levels: Levels | None
) -> ir.Value:
    """The vector of all the partials: `slots` combined pairwise, then the levels' sums."""
    return with_levels(ops, op, d, pairwise(ops, op, slots, d), levels)


def with_levels(
    ops: Ops, op: BinaryOp, d: T.DType, partials: ir.Value, levels: Levels | None
) -> ir.Value:
    """`partials` op each level's sums (a blocked sum's; none for another), in a branch
    taken only where some block moved up: a short sum's levels are all zero, and adding
    them cost a dot product of 48 floats a fifth of its time (Zen 2, llama2's scores)."""
    if levels is None:
        return partials
    b = ops.b
    moved = b.icmp_signed("!=", b.load(levels.blocks, typ=I64), ir.Constant(I64, 0))
    before = b.block
    with b.if_then(moved, likely=False):
        summed = partials
        for slot in levels.slots:
            summed = ops.binary(op, summed, read_slot(b, slot), d)
        after = b.block
    result = b.phi(partials.type)
    result.add_incoming(partials, before)
    result.add_incoming(summed, after)
    return result


@contextmanager
def carried_partials(gen: _Codegen, loop: Loop) -> Iterator[Strips | None]:
    """Emit scalar reduction loop `loop` (in the `with` block) with the partial results of
    the vector loops inside it kept as vectors across all of it: a split reduction's
    `for jo: for ji (vectorized)` combines its lanes once after `jo`, as one vectorized
    loop does after itself, not after each `ji`. The vector loops that follow one another
    in its body (an unrolled middle loop's copies) take turns among COPIES chains of
    partials; a blocked sum's chains of one width share their levels. At the kernel's top
    level, its scalar float sums are chains too. Yields the strips to run `loop` in
    (None: run it whole)."""
    carried = carried_accumulators(loop, gen.buffers)
    found = {
        var: (width, {n: a for n, a in accumulators.items() if n not in gen.carried.get(var, {})})
        for var, (width, accumulators) in carried.vectors.items()
    }  # (less what an outer reduction loop carries already)
    chains = _vector_chains(gen, loop, found)
    strips = _strip_chains(gen, loop)  # (chain, iterations at most)
    scalars: dict[str, tuple[Chain, ir.Value]] = {}  # the chain, the local's own slot
    top = not gen.strict_fp and any(s is loop for s in _top_level(gen.kernel.body))
    for name, (n, d) in carried.sums.items() if top else ():
        chain = open_chain(gen, BinaryOp.ADD, d, None, name, None, counted=False)
        scalars[name] = (chain, gen.state.locals[name])
        gen.state.locals[name] = chain.slot  # (its statements add to the chain)
        strips.append((chain, ir.Constant(I64, STRIP // n)))
    size: ir.Value = ir.Constant(I64, 1)
    for k, (_, most) in enumerate(strips):
        size = most if k == 0 else smin(gen.b, size, most)
    yield Strips(smax(gen.b, size, 1), [c for c, _ in strips]) if strips else None
    for var, (_, accumulators) in found.items():
        for name in accumulators:
            del gen.carried[var][name]
    for name, (chain, own) in scalars.items():
        gen.state.locals[name] = own
        d = carried.sums[name][1]
        combine_into_local(gen, name, BinaryOp.ADD, d, [([chain.slot], chain.levels)])
    ops = {n: a for _, accumulators in found.values() for n, a in accumulators.items()}
    for name, widths in chains.items():
        groups = [([c.slot for c in mine], mine[0].levels) for mine in widths.values()]
        combine_into_local(gen, name, *ops[name], groups)


def _vector_chains(gen: _Codegen, loop: Loop, found: Found) -> dict[str, dict[int, list[Chain]]]:
    """The chains of the vector loops in `found` (name -> width -> chains), each loop's
    in gen.carried. Those whose vector loops are all in the body of one scalar loop (this
    one or one inside it) and take as many trips in each of its iterations keep no count:
    that loop runs in strips (`_strip_chains`)."""
    users: dict[tuple[str, int, int], list[str]] = {}  # (name, width, turn) -> vector loops
    turns: dict[tuple[str, int], int] = {}
    for var, (width, accumulators) in found.items():
        for name in accumulators:
            turn = turns.get((name, width), 0)
            turns[(name, width)] = turn + 1
            users.setdefault((name, width, turn % COPIES), []).append(var)
    ops = {n: a for _, accumulators in found.values() for n, a in accumulators.items()}
    homes = _homes(loop)
    chains: dict[str, dict[int, list[Chain]]] = {}
    for (name, width, _), loops in users.items():
        op, d = ops[name]
        home = {id(homes[var][0]) for var in loops}
        counted = len(home) > 1 or not all(_invariant(*homes[var]) for var in loops)
        mine = chains.setdefault(name, {}).setdefault(width, [])
        chain = open_chain(gen, op, d, width, name, mine[0].levels if mine else None, counted)
        mine.append(chain)
        for var in loops:
            gen.carried.setdefault(var, {})[name] = chain
    return chains


def _strip_chains(gen: _Codegen, loop: Loop) -> list[tuple[Chain, ir.Value]]:
    """The chains without a count (this loop's or an outer one's) of the vector loops in
    this loop's body, each with the most iterations of it whose trips fill no more than a
    block: BLOCK // its loops' ⌈extent / width⌉ (computed here, before the loop)."""
    b, trips = gen.b, {}
    for vector in _vector_loops(loop.body):
        for chain in gen.carried.get(vector.var, {}).values():
            if chain.count is None and chain.levels is not None:
                width = ir.Constant(I64, vector.width)
                extent = b.add(gen.expr(vector.extent), ir.Constant(I64, vector.width - 1))
                before = trips.get(id(chain), (chain, ir.Constant(I64, 0)))[1]
                trips[id(chain)] = (chain, b.add(before, b.sdiv(extent, width)))
    block = ir.Constant(I64, BLOCK)
    return [(chain, b.sdiv(block, smax(b, n, 1))) for chain, n in trips.values()]


def _homes(loop: Loop) -> dict[str, tuple[Loop, Loop]]:
    """Each vector loop inside `loop` (by variable), with the loop whose body holds it
    (in branches): `loop` or a loop inside it."""
    found = {}
    for home in [loop, *(s for s in walk_stmts(loop.body) if isinstance(s, Loop))]:
        for vector in _vector_loops(home.body):
            found[vector.var] = (home, vector)
    return found


def _vector_loops(body: tuple[Stmt, ...]) -> Iterator[Loop]:
    """The vector loops in `body` (in branches, but in no inner loop)."""
    for s in body:
        if isinstance(s, If):
            yield from _vector_loops(s.then)
        elif isinstance(s, Loop) and s.exec is LoopExec.VECTORIZED:
            yield s


def _invariant(home: Loop, vector: Loop) -> bool:
    """Whether the extent of `vector` is the same in every iteration of `home`: it reads
    no variable of `home`, of a loop inside it, nor a local that `home` sets."""
    inside = {home.var}
    for s in walk_stmts(home.body):
        match s:
            case Loop(var=name) | DeclareLocal(name=name) | Assign(local=name):
                inside.add(name)
    return not any(
        isinstance(e, LoopVar | LocalVar) and e.name in inside for e in walk_expr(vector.extent)
    )


def _top_level(body: tuple[Stmt, ...]) -> Iterator[Stmt]:
    """The statements of `body` that no loop is around (in branches too)."""
    for s in body:
        yield s
        if isinstance(s, If):
            yield from _top_level(s.then)


def identity_slot(
    gen: _Codegen, op: BinaryOp, d: T.DType, width: int | None, name: str
) -> ir.Value:
    """A new vector of `width` partial results of `op` (None: a scalar), each its identity."""
    start = constant(identity(op, d), d)
    slot = gen._entry_alloca(
        start.type if width is None else ir.VectorType(start.type, width), f"{name}.lanes"
    )
    _restart(gen.ops, op, d, slot)
    return slot


def _restart(ops: Ops, op: BinaryOp, d: T.DType, slot: ir.AllocaInstr) -> None:
    """Set a vector of partials (or a scalar) back to the identity of `op`."""
    start, t = constant(identity(op, d), d), slot.allocated_type
    ops.b.store(ops.splat(start, t.count) if isinstance(t, ir.VectorType) else start, slot)


def combine_into_local(
    gen: _Codegen,
    name: str,
    op: BinaryOp,
    d: T.DType,
    groups: list[tuple[list[ir.Value], Levels | None]],
) -> None:
    """local `name` op= every lane of the partials of each group (a width's vectors of
    partials and their levels)."""
    b, ops = gen.b, gen.ops
    acc = gen.state.locals[name]
    result = read_slot(b, acc)
    for slots, levels in groups:
        lanes = total(ops, op, d, slots, levels)
        if isinstance(lanes.type, ir.VectorType):
            lanes = horizontal(ops, op, lanes, d)
        result = ops.binary(op, result, lanes, d)
    b.store(result, acc)


def pairwise(ops: Ops, op: BinaryOp, slots: list[ir.Value], d: T.DType) -> ir.Value:
    """The vectors in `slots` combined lane by lane, pairwise."""
    parts = [read_slot(ops.b, slot) for slot in slots]
    while len(parts) > 1:
        parts = [ops.binary(op, x, y, d) for x, y in zip(parts[::2], parts[1::2])] + parts[
            len(parts) // 2 * 2 :
        ]
    return parts[0]


def horizontal(ops: Ops, op: BinaryOp, v: ir.Value, d: T.DType) -> ir.Value:
    """All lanes of `v` combined with `op`."""
    t = v.type.element
    name = f"llvm.vector.reduce.{{}}.{ops.suffix(v.type)}"
    if d.is_float and op in (BinaryOp.ADD, BinaryOp.MUL):
        kind = "fadd" if op is BinaryOp.ADD else "fmul"
        start = constant(identity(op, d), d)
        return ops.intrinsic(name.format(kind), t, [start, v], flags=("reassoc",))
    if d.is_float and (folded := ops.extreme_of_lanes(op, v)) is not None:
        return folded
    if d.is_float:
        kind = "fmaximum" if op is BinaryOp.MAX else "fminimum"
    elif op in (BinaryOp.MAX, BinaryOp.MIN):
        kind = ("s" if d.is_signed else "u") + op.name.lower()
    else:
        kind = op.name.lower()
    return ops.intrinsic(name.format(kind), t, [v])


def read_slot(b: ir.IRBuilder, slot: ir.AllocaInstr) -> ir.Value:
    return b.load(slot, typ=slot.allocated_type)


def identity(op: BinaryOp, d: T.DType) -> bool | int | float:
    """x op identity == x for every x (-0.0 for a float sum, so that -0.0 survives)."""
    if op is BinaryOp.ADD:
        return -0.0 if d.is_float else 0
    if op is BinaryOp.MUL:
        return 1
    if d.is_float:
        return float("-inf") if op is BinaryOp.MAX else float("inf")
    if d.is_bool:
        return op is BinaryOp.MIN
    if op is BinaryOp.MAX:
        return -(1 << (d.bits - 1)) if d.is_signed else 0
    return (1 << (d.bits - 1)) - 1 if d.is_signed else (1 << d.bits) - 1
