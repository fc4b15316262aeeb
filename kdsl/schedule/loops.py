"""The loop primitives: split, reorder, the execution annotations (unroll,
vectorize, parallelize, tensorize, bind), the memory hints (prefetch, nontemporal) and
versions of a nest for short and long loops (specialize).
Each takes the step's context, checks legality against the loops' dependence kinds, and
leaves the rewritten kernel in `ctx.kernel`.
"""

from __future__ import annotations

import math
from dataclasses import replace

from kdsl.ir.affine import constant_bound
from kdsl.ir.build import index_const, index_op
from kdsl.ir.clone import Cloner
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    BufferRole,
    Check,
    Const,
    DeclareLocal,
    DimOf,
    Expr,
    If,
    Kernel,
    Load,
    LocalVar,
    Loop,
    LoopExec,
    LoopKind,
    LoopVar,
    Prefetch,
    Stmt,
    Store,
)
from kdsl.ir.printer import format_expr
from kdsl.ir.tile_product import INSTRUCTIONS as TENSORIZED
from kdsl.ir.tile_product import match as match_tile_product
from kdsl.ir.visit import (
    buffers_accessed,
    map_expr,
    mentions_loop_var,
    outer_updates,
    walk_all_exprs,
    walk_expr,
    walk_stmts,
)
from kdsl.schedule import tree
from kdsl.schedule.caching import copies_back
from kdsl.schedule.distribute import distribute
from kdsl.schedule.layouts import MAX_FACTOR
from kdsl.schedule.step import StepContext, as_int

MAX_FULL_UNROLL = 64
MAX_UNROLL = 1024  # copies of a body: beyond, LLVM's compile time explodes (10^5 ran for minutes)
MAX_UNROLLED_NESTS = 64  # copies of a loop nest (statements with loops inside them)
GPU_AXES = {e.value: e for e in LoopExec if e.value.startswith(("block.", "thread."))}


def _positive_int(ctx: StepContext, value: object, what: str, most: int = MAX_FACTOR) -> int:
    n = as_int(value)
    if n is None or n < 1:
        raise ctx.refuse(
            f"the {what} must be a positive int, not {value!r}",
            f"pass an integer ≥ 1 as the {what}",
        )
    if n > most:
        raise ctx.refuse(
            f"the {what} {n} is larger than {most}",
            f"pass an integer between 1 and {most} as the {what}",
        )
    return n


def _set(ctx: StepContext, path: tree.Path, loop: Loop) -> None:
    ctx.kernel = replace(ctx.kernel, body=tree.splice(ctx.kernel.body, path, (loop,)))


# -------------------------------------------------------------------------- split


def split(ctx: StepContext, name: object, factor: object) -> tuple[str, str]:
    """`for v in range(n)` → `for vo in range(ceil(n/f)): for vi in range(min(f, n - vo*f))`."""
    path, loop = ctx.loop(name)
    f = _positive_int(ctx, factor, "split factor")
    if loop.exec is not LoopExec.SERIAL:
        raise ctx.refuse(
            f"loop '{loop.var}' is already {loop.exec.value}",
            "split a loop before annotating it (unroll, vectorize, parallelize, bind)",
        )
    outer, inner = ctx.fresh(f"{loop.var}o"), ctx.fresh(f"{loop.var}i")
    n = loop.extent
    start = index_op(BinaryOp.MUL, LoopVar(outer), index_const(f))
    if isinstance(n, Const):
        count: Expr = index_const(-(-int(n.value) // f))
        exact = int(n.value) % f == 0
    else:
        count = index_op(
            BinaryOp.FLOORDIV, index_op(BinaryOp.ADD, n, index_const(f - 1)), index_const(f)
        )
        exact = False
    tile = (
        index_const(f)
        if exact
        else index_op(BinaryOp.MIN, index_const(f), index_op(BinaryOp.SUB, n, start))
    )
    body = tree.substitute(loop.body, loop.var, index_op(BinaryOp.ADD, start, LoopVar(inner)))
    inner_loop = Loop(inner, tile, loop.kind, body, loc=loop.loc)
    _set(ctx, path, Loop(outer, count, loop.kind, (inner_loop,), loc=loop.loc))
    return outer, inner


def tile(ctx: StepContext, l1: object, l2: object, f1: object, f2: object) -> tuple[str, ...]:
    """Split two nested loops and order the pieces (outer1, outer2, inner1, inner2): one
    step, so a refusal leaves nothing half done."""
    if l1 == l2:
        raise ctx.refuse(
            f"tile names loop '{l1}' twice", "tile two loops of one nest, the outer one first"
        )
    o1, i1 = split(ctx, l1, f1)
    o2, i2 = split(ctx, l2, f2)
    reorder(ctx, (o1, o2, i1, i2))
    return o1, o2, i1, i2


def collapse(ctx: StepContext, outer: object, inner: object) -> str:
    """`for a in range(n): for b in range(m): body` → `for ab in range(n*m): body` with
    `a = ab // m` and `b = ab % m`: the same iterations in the same order, as one loop
    (split's inverse). A 2-D elementwise nest over C-ordered arrays becomes one stream:
    the code generators address `x[ab // m, ab % m]` of an array whose rows are m long
    as its element ab, with no division (kdsl/ir/flatten.py), so short rows cost no
    masked vector each."""
    opath, o = ctx.loop(outer)
    _, i = ctx.loop(inner)
    if i not in o.body:
        raise ctx.refuse(
            f"loop '{i.var}' is not directly inside loop '{o.var}'",
            "collapse a loop and the loop that is all of its body (a perfect nest): "
            "name the outer loop first",
        )
    if o.body != (i,):
        other = next(st for st in o.body if st is not i)
        what = (
            "a bounds check for the loops inside it (kernel.lowered(...) prints it)"
            if isinstance(other, Check)
            else "other statements"
        )
        raise ctx.refuse(
            f"loop '{o.var}' holds {what} besides loop '{i.var}'",
            "collapse a perfect nest: a loop whose body is just the other loop",
        )
    for lp in (o, i):
        if lp.exec is not LoopExec.SERIAL:
            raise ctx.refuse(
                f"loop '{lp.var}' is already {lp.exec.value}",
                "collapse loops before annotating them (unroll, vectorize, parallelize, bind)",
            )
    if o.kind is not i.kind:
        raise ctx.refuse(
            f"loop '{o.var}' is {o.kind.value} and loop '{i.var}' {i.kind.value}",
            "collapse two loops of one kind (two parallel loops, two reduction loops)",
        )
    written = {st.buffer for st in walk_stmts((i,)) if isinstance(st, Store)}
    assigned = {st.local for st in walk_stmts((i,)) if isinstance(st, Assign)}
    changing = [
        e
        for e in walk_expr(i.extent)
        if (isinstance(e, LoopVar) and e.name == o.var)
        or (isinstance(e, Load) and e.buffer in written)
        or (isinstance(e, LocalVar) and e.name in assigned)
    ]
    if changing:
        raise ctx.refuse(
            f"the extent of loop '{i.var}' ({format_expr(i.extent)}) changes with "
            f"{format_expr(changing[0])} from one iteration of loop '{o.var}' to the next",
            "collapse a rectangular nest: an inner extent fixed before the outer loop starts",
        )
    m = _at_least_zero(i.extent)  # (two empty loops, -2 × -2, make no 4 iterations)
    n = _at_least_zero(o.extent)
    if isinstance(n, Const) and isinstance(m, Const):
        n = index_const(int(n.value) * int(m.value))
    else:
        n = index_op(BinaryOp.MUL, n, m)
    var = ctx.fresh(f"{o.var}{i.var}")
    flat = LoopVar(var)
    body = tree.substitute(i.body, o.var, index_op(BinaryOp.FLOORDIV, flat, m))
    body = tree.substitute(body, i.var, index_op(BinaryOp.MOD, flat, m))
    _set(ctx, opath, Loop(var, n, o.kind, body, loc=o.loc))
    return var


def _at_least_zero(extent: Expr) -> Expr:
    """`max(extent, 0)`, as a loop runs it: the same where it can't be negative."""
    if isinstance(extent, Const):
        return index_const(max(0, int(extent.value)))
    if isinstance(extent, DimOf):
        return extent
    return index_op(BinaryOp.MAX, extent, index_const(0))


# ------------------------------------------------------------------------ reorder


def reorder(ctx: StepContext, names: tuple[object, ...]) -> None:
    """Permute nested loops: `names` outermost first. Loops between them stay in place;
    statements around inner loops are distributed into loops of their own."""
    if len(names) < 2:
        raise ctx.refuse("reorder needs at least two loops", "name the loops outermost first")
    if len(set(names)) != len(names):
        raise ctx.refuse("a loop is named twice", "name each loop once")
    paths = sorted((ctx.loop(n)[0] for n in names), key=len)
    for a, b in zip(paths, paths[1:]):
        if b[: len(a)] != a:
            raise ctx.refuse(
                "the loops are not nested in one another",
                "reorder loops of one nest; to merge sibling loops use fuse",
            )
    chain_names = _chain_names(ctx, paths[0], len(paths[-1]) - len(paths[0]))
    order = iter(names)
    new_chain = [str(next(order)) if n in names else n for n in chain_names]
    moved = [n for n, (a, b) in enumerate(zip(chain_names, new_chain)) if a != b]
    if not moved:
        return
    chain_names, new_chain = chain_names[moved[0] :], new_chain[moved[0] :]
    _make_perfect(ctx, chain_names)  # loops that keep their place may hold other statements
    top = ctx.loop(chain_names[0])[0]
    by_name = {n: ctx.loop(n)[1] for n in chain_names}
    _check_permutation(ctx, chain_names, new_chain, by_name)
    inner: tuple[Stmt, ...] = by_name[chain_names[-1]].body
    for var in reversed(new_chain):
        inner = (replace(by_name[var], body=inner),)
    ctx.kernel = replace(ctx.kernel, body=tree.splice(ctx.kernel.body, top, inner))


def _chain_names(ctx: StepContext, top: tree.Path, depth: int) -> list[str]:
    """The loops from `top` down `depth` levels, each the one loop inside the previous."""
    lp = tree.at(ctx.kernel.body, top)
    assert isinstance(lp, Loop)
    names = [lp.var]
    for _ in range(depth):
        inner = [s for s in lp.body if isinstance(s, Loop | If)]
        if len(inner) != 1 or not isinstance(inner[0], Loop):
            what = (
                f"{len(inner)} loops in sequence"
                if all(isinstance(s, Loop) for s in inner)
                else "a condition (kd.when) around the inner loops"
            )
            raise ctx.refuse(
                f"loop '{lp.var}' contains {what}",
                "reorder loops of one perfect nest; fuse sibling loops first",
            )
        lp = inner[0]
        names.append(lp.var)
    return names


def _make_perfect(ctx: StepContext, chain: list[str]) -> None:
    """Distribute the chain's loops, innermost first, so each holds only the next one.
    Innermost first: a local expanded into a buffer gains each enclosing axis in turn."""
    for outer, inner in reversed(list(zip(chain, chain[1:]))):
        path, lp = ctx.loop(outer)
        if len(lp.body) == 1:
            continue
        keep = next(n for n, s in enumerate(lp.body) if isinstance(s, Loop) and s.var == inner)
        stmts = distribute(ctx, path, keep)
        ctx.kernel = replace(ctx.kernel, body=tree.splice(ctx.kernel.body, path, stmts))


def _check_permutation(
    ctx: StepContext, old: list[str], new: list[str], loops: dict[str, Loop]
) -> None:
    position = {v: n for n, v in enumerate(new)}
    updates = outer_updates(loops[old[0]])
    for a_pos, a in enumerate(old):
        for b in old[a_pos + 1 :]:
            if position[a] < position[b]:
                continue  # a stays outside b
            la, lb = loops[a], loops[b]
            if mentions_loop_var(lb.extent, a):
                raise ctx.refuse(
                    f"the extent of loop '{b}' depends on loop '{a}', so '{b}' can't move "
                    f"outside it",
                    f"keep '{a}' outside '{b}' (split loops evenly or reorder the outer loops)",
                )
            kinds = {la.kind, lb.kind}
            if LoopKind.SERIAL in kinds and kinds != {LoopKind.PARALLEL, LoopKind.SERIAL}:
                raise ctx.refuse(
                    f"loops '{a}' ({la.kind.value}) and '{b}' ({lb.kind.value}) can't be "
                    "interchanged: an ordered loop's iterations depend on earlier ones",
                    "keep the serial loop (kd.range) where it is",
                )
            _check_updates(ctx, a, b, updates)


_ASSOCIATIVE = (BinaryOp.ADD, BinaryOp.MUL, BinaryOp.MAX, BinaryOp.MIN)


def _check_updates(ctx: StepContext, a: str, b: str, updates: list[Assign]) -> None:
    for s in updates:
        v = s.value
        acc = LocalVar(s.local, v.dtype)
        accumulates = isinstance(v, Binary) and v.op in _ASSOCIATIVE and acc in (v.lhs, v.rhs)
        if not accumulates:
            raise ctx.refuse(
                f"the nest updates the local '{s.local}' in order, and interchanging "
                f"'{a}' and '{b}' changes that order",
                "keep the loops' order, or compute the values into a buffer first",
            )
        assert isinstance(v, Binary)
        if ctx.strict_fp and v.dtype.is_float and v.op in (BinaryOp.ADD, BinaryOp.MUL):
            raise ctx.refuse(
                f"interchanging '{a}' and '{b}' changes the order of the floating-point "
                f"accumulation into '{s.local}', and the kernel is strict_fp",
                "drop strict_fp=True to allow reassociation, or keep the loops' order",
            )


# --------------------------------------------------------------- annotations


def _annotate(ctx: StepContext, name: object, exec_: LoopExec, width: int) -> list[Loop]:
    """Set how a loop (and its distributed copies) executes; return the loops annotated."""
    path, loop = ctx.loop(name)
    _unannotated(ctx, loop)
    done = [replace(loop, exec=exec_, width=width)]
    _set(ctx, path, done[0])
    for cpath, clone in _clones(ctx, loop.var):
        done.append(replace(clone, exec=exec_, width=width))
        _set(ctx, cpath, done[-1])
    return done


def _clones(ctx: StepContext, var: str) -> list[tuple[tree.Path, Loop]]:
    """The copies of loop `var` that distributing its body made (ctx.clones) and that
    are still in the kernel, with their paths."""
    found = []
    for copy in ctx.clones.get(var, []):
        clone = tree.find_loop(ctx.kernel.body, copy)
        if clone is not None:
            found.append(clone)
    return found


def _unannotated(ctx: StepContext, loop: Loop) -> None:
    if loop.exec is not LoopExec.SERIAL:
        raise ctx.refuse(
            f"loop '{loop.var}' is already {loop.exec.value}", "annotate each loop once"
        )


def unroll(ctx: StepContext, name: object, factor: object = None) -> None:
    """Unroll fully (factor None: the extent must have a constant bound) or by `factor`."""
    path, loop = ctx.loop(name)
    if factor is None:
        bound = constant_bound(loop.extent)
        if bound is None or bound > MAX_FULL_UNROLL:
            raise ctx.refuse(
                f"loop '{loop.var}' has no constant extent ≤ {MAX_FULL_UNROLL} to unroll fully",
                "split it by a small factor first, or pass unroll(loop, factor)",
            )
        width = 0  # fully
    else:
        width = _positive_int(ctx, factor, "unroll factor", MAX_UNROLL)
    _check_copies(ctx, path, replace(loop, exec=LoopExec.UNROLLED, width=width))
    _annotate(ctx, name, LoopExec.UNROLLED, width)


def _check_copies(ctx: StepContext, path: tree.Path, unrolled: Loop) -> None:
    """Refuse an unroll whose loop, with the unrolled loops around and inside it, makes
    more copies of a statement than MAX_UNROLL, or of a loop nest than MAX_UNROLLED_NESTS:
    LLVM's compile time grows with them (a matmul's i and j unrolled by 16 each, with
    the k loop inside: 17 s; by 32 each: 3 minutes)."""
    around = [s for s in tree.enclosing(ctx.kernel.body, path) if isinstance(s, Loop)]
    chain = [s for s in around if s.exec is LoopExec.UNROLLED] + [unrolled]
    copies = math.prod(_copies(s) for s in chain) * _inner_copies(unrolled.body)
    loops = any(
        isinstance(s, Loop) and (s.exec is not LoopExec.UNROLLED or s.width)
        for s in walk_stmts(unrolled.body)
    ) or (len(chain) > 1 and unrolled.width > 0)  # (a partial unroll leaves a loop)
    most = MAX_UNROLLED_NESTS if loops else MAX_UNROLL
    if copies > most:
        what = "a loop nest" if loops else "the loop body"
        names = " × ".join(s.var for s in chain)
        raise ctx.refuse(
            f"unrolling '{unrolled.var}' makes {copies} copies of {what} ({names} and the "
            f"unrolled loops inside), more than {most}: LLVM would take seconds to minutes to compile them",
            "unroll fewer or smaller loops (split one by a small factor first), or vectorize "
            "one of them instead",
        )


def _copies(loop: Loop) -> int:
    """Copies of its body an unrolled loop makes (a full unroll: its constant bound)."""
    return loop.width or constant_bound(loop.extent) or 1


def _inner_copies(body: tuple[Stmt, ...]) -> int:
    """The most copies the unrolled loops nested in `body` make of one statement."""
    most = 1
    for s in body:
        inner = _inner_copies(tree.body_of(s))
        if isinstance(s, Loop) and s.exec is LoopExec.UNROLLED:
            inner *= _copies(s)
        most = max(most, inner)
    return most


def _cpu_only(ctx: StepContext, loop: Loop, on: str) -> None:
    """vectorize and parallelize are CPU steps: the GPU target would run the loop
    serially in one thread (the symmetric of refusing bind on CPU)."""
    if ctx.target == "cuda":
        raise ctx.refuse(
            f"{ctx.step.primitive} runs a loop on {on}, and this is a GPU schedule: the "
            "loop would run serially, in one GPU thread",
            f'bind the loop to GPU blocks or threads instead: s.bind("{loop.var}", '
            f'"block.x") or s.bind("{loop.var}", "thread.x")',
        )


def vectorize(ctx: StepContext, name: object, width: object) -> None:
    """Run the loop as vector code, `width` lanes at a time (a power of two up to 64).
    Width 1 leaves it scalar: a no-op once the loop is found not yet annotated (as
    unroll's factor 1), so that a param's choices may include "no vectors",
    `s.param("w", [1, 8, 16])`."""
    path, loop = ctx.loop(name)
    _cpu_only(ctx, loop, "a CPU's vector registers")
    w = _positive_int(ctx, width, "vector width")
    if w & (w - 1) or w > 64:
        raise ctx.refuse(
            f"vector width {w} is not a power of two between 1 and 64",
            "use 4, 8 or 16 (16 f32 lanes fill an AVX-512 register), or 1 for scalar code",
        )
    if w == 1:
        _unannotated(ctx, loop)
        return
    for other in tree.nest_of(ctx.kernel.body, path):
        if other.exec is LoopExec.VECTORIZED:
            raise ctx.refuse(
                f"loop '{other.var}' around or inside it is already vectorized",
                "vectorize one loop of a nest",
            )
    if loop.kind is LoopKind.SERIAL:
        raise ctx.refuse(
            f"loop '{loop.var}' is serial (kd.range): its iterations depend on earlier ones",
            "vectorize a parallel or reduction loop",
        )
    if loop.kind is LoopKind.REDUCTION and ctx.strict_fp and _float_accumulation(loop):
        raise ctx.refuse(
            f"vectorizing reduction loop '{loop.var}' reorders floating-point sums, and the "
            "kernel is strict_fp",
            "drop strict_fp=True, or vectorize a parallel loop instead",
        )
    _annotate(ctx, name, LoopExec.VECTORIZED, w)


def recheck_annotations(ctx: StepContext) -> None:
    """After any step: every vectorized loop must still be one the target can emit, and
    every tensorized one a tile product (a later reorder or cache can change what is
    inside them)."""
    for loop in tree.loops(ctx.kernel):
        if loop.exec in TENSORIZED:
            buffers = {b.name: b for b in ctx.kernel.buffers}
            found = match_tile_product(loop, buffers, TENSORIZED[loop.exec])
            if isinstance(found, str):
                raise ctx.refuse(
                    f"tensorized loop '{loop.var}' is no longer a tile product: {found}",
                    "tensorize after the steps that change the tile's loops",
                )
        reason = (
            loop.exec is LoopExec.VECTORIZED
            and ctx.vector_check is not None
            and ctx.vector_check(loop, ctx.kernel)
        )
        if reason:
            raise ctx.refuse(
                f"loop '{loop.var}' can't be vectorized: {reason}",
                "vectorize an inner loop with a simpler body, or vectorize after this step",
            )


def _float_accumulation(loop: Loop) -> bool:
    return any(
        isinstance(s, Assign) and isinstance(s.value, Binary) and s.value.dtype.is_float
        for s in walk_stmts(loop.body)
    )


def parallelize(ctx: StepContext, name: object, threads: object = None) -> None:
    """Run a parallel loop's iterations in chunks on the thread pool. Loops on threads
    may nest (a batch loop and the rows inside it): the pool gives its threads to the
    outermost of them with work for two chunks, a loop around it too short for that (a
    batch of one) running on the caller and the loops inside it inline in each chunk
    (kdsl/targets/cpu/runtime.py). (So a batch of 3 on 2 threads still runs one batch
    on one thread at the end.) A loop holding the copy back of a cache is refused: the
    copies written back by its iterations may overlap."""
    _, loop = ctx.loop(name)
    _cpu_only(ctx, loop, "a CPU's cores")
    n = 0 if threads is None else _positive_int(ctx, threads, "thread count")
    if loop.kind is not LoopKind.PARALLEL:
        raise ctx.refuse(
            f"loop '{loop.var}' is a {loop.kind.value} loop: its iterations are not independent",
            "parallelize a parallel loop (an implicit index or kd.grid), e.g. an outer one",
        )
    updates = outer_updates(loop)
    if updates:
        raise ctx.refuse(
            f"loop '{loop.var}' updates the local '{updates[0].local}' declared outside it",
            "parallelize a loop that contains the local's declaration",
        )
    _refuse_copies_back(ctx, loop, "threads")
    _annotate(ctx, name, LoopExec.PARALLEL, n)


def _refuse_copies_back(ctx: StepContext, loop: Loop, what: str) -> None:
    """Refuse to run the iterations of `loop` (and of its distributed copies) at once
    where one writes back a cached copy (caching.copies_back), as `cache` refuses to
    cache a written buffer inside a loop that already runs so."""
    for lp in (loop, *(clone for _, clone in _clones(ctx, loop.var))):
        backs = copies_back(lp)
        if backs:
            raise ctx.refuse(
                f"loop '{lp.var}' writes back a cached copy of '{backs[0]}' in each iteration: "
                f"copies written back by different {what} could overlap",
                "put a loop inside the cached one (or the copy's own loops) there, or leave "
                f"'{backs[0]}' uncached",
            )


def tensorize(ctx: StepContext, name: object, instruction: object) -> None:
    """Mark a tile product's rows loop to run on a matrix instruction; its nest is then
    compiled whole (a later step that changes it is refused).

    Before (the sum a scalar, or already a [rows, columns] temporary):
        for ii: for ji: sum = 0; for ko: for ki: sum += f32(a[.., ko·2+ki]) · f32(b.c[ko, ..])
    After (`acc` zeroed, used and freed around it as any reduction temporary):
        for ii: for ji: for ko: for ki: acc[ii, ji] += …        # amx (or mma)
    Legal when the target has the instruction (`s.has`), the kernel is not strict_fp, and
    the nest matches kdsl/ir/tile_product.py ("amx": B cached with layout="vnni"; "mma",
    on a GPU: B so cached or as it is, and no loop bound to thread.x around the nest: a
    warp's 32 lanes share it)."""
    _, loop = ctx.loop(name)
    _unannotated(ctx, loop)
    if instruction not in _MATRIX_INSTRUCTIONS:
        known = "; ".join(f"{k!r} ({v})" for k, v in _MATRIX_INSTRUCTIONS.items())
        raise ctx.refuse(f"{instruction!r} is not a matrix instruction kdsl knows", f"use {known}")
    if instruction not in ctx.tile_instructions():
        raise ctx.refuse(
            f"the {ctx.target} target here has no {instruction!r} instruction",
            f'ask `s.has("{instruction}")` first, and schedule the product without it otherwise',
        )
    if ctx.strict_fp:
        raise ctx.refuse(
            "matrix instructions sum the products in their own order, and the kernel is strict_fp",
            "drop strict_fp=True, or leave the product to vector code",
        )
    path, _ = ctx.loop(name)
    around = tree.enclosing(ctx.kernel.body, path)
    lanes = [a for a in around if isinstance(a, Loop) and a.exec is LoopExec.GPU_THREAD_X]
    if instruction == "mma" and lanes:
        raise ctx.refuse(
            f"loop '{lanes[0].var}' around the tile product is bound to thread.x, whose 32 "
            "threads are the warp that runs each mma.sync",
            "bind the loops over warps to thread.y or thread.z",
        )
    checked = [
        e.buffer
        for e in [*walk_all_exprs(loop.body), *walk_stmts(loop.body)]
        if isinstance(e, Load | Store)
        and (e.checked or any(isinstance(x, Load) for i in e.index for x in walk_expr(i)))
    ]
    if checked:
        raise ctx.refuse(
            f"loop '{loop.var}' reads or writes '{checked[0]}' where kdsl checks each element "
            "(nothing proves its subscripts in bounds before the loops), and a matrix "
            "instruction reads whole tiles unchecked",
            "keep the product's subscripts affine in its loops, with extents made of shapes, "
            "constants and values fixed before the nest, and no guard around its reads",
        )
    _accumulate_in_tile(ctx, loop)
    path, loop = ctx.loop(name)
    found = match_tile_product(loop, {b.name: b for b in ctx.kernel.buffers}, str(instruction))
    if isinstance(found, str):
        raise ctx.refuse(f"loop '{loop.var}' is not a tile product: {found}", _TILE_PRODUCT_FIX)
    mark = next(e for e, i in TENSORIZED.items() if i == instruction)
    _set(ctx, path, replace(loop, exec=mark, width=1))


_MATRIX_INSTRUCTIONS = {
    "amx": "the CPU's AMX-BF16 tiles",
    "mma": "a GPU warp's bf16 mma.sync, sm_80 and later",
}


def _accumulate_in_tile(ctx: StepContext, rows: Loop) -> None:
    """`for i: for j: sum = 0; for p: for t: sum += …; use(sum)` → the same with the sums
    in a [rows, columns] temporary (moving the pairs loop out past the tile's loops and
    back makes it one, as for a register tile): the form a matrix instruction computes."""
    cols = rows.body[0] if len(rows.body) == 1 else None
    if not isinstance(cols, Loop):
        return
    pairs = [s for s in cols.body if isinstance(s, Loop) and s.kind is LoopKind.REDUCTION]
    if len(pairs) != 1 or len(pairs[0].body) != 1 or not isinstance(pairs[0].body[0], Loop):
        return
    pair = pairs[0].body[0]
    reorder(ctx, (cols.var, pairs[0].var, rows.var, pair.var))
    reorder(ctx, (rows.var, cols.var, pairs[0].var, pair.var))


_TILE_PRODUCT_FIX = (
    "split rows and columns by the tile's sizes (amx: 16 or 32; mma: 16, 32 or 64 rows by "
    "8 to 64 columns), k by 2, cache the right operand with layout='vnni' (amx), and order "
    "the loops rows, columns, k pairs, k"
)


def prefetch(
    ctx: StepContext, buffer: object, name: object, distance: object = 1, inside: object = None
) -> None:
    """At the top of each iteration of a loop, fetch the cache lines of `buffer` that the
    iteration `distance` ahead will read: DRAM's latency then overlaps the work between.

    Before:  for j: … w[i, 16·j + l] …              (l a loop inside j)
    After:   for j: prefetch w[i, 16·(j + d)]; … w[i, 16·j + l] …
    One prefetch per distinct read (loops inside the loop at their first iteration, its
    locals by their definitions). With `inside` (a loop within it), the hints go at the
    top of that loop's iterations instead, for its reads, with the outer loop `distance`
    ahead: a row's loop fetching the next row bit by bit while it computes this one.

    Before:  for i: …; for j: … x[i, j] …
    After:   for i: …; for j: prefetch x[i + d, j]; … x[i, j] …
    A hint: results never change, and an address past the buffer's end is allowed (the
    hardware drops it). Best as the last step: it puts a statement in the loop, so a
    later step needing a perfect nest there is refused."""
    path, loop = ctx.loop(name)
    d = _positive_int(ctx, distance, "prefetch distance")
    names = [b.name for b in ctx.kernel.buffers if b.role is not BufferRole.TEMP]
    if buffer not in names:
        what = "a temporary" if any(b.name == buffer for b in ctx.kernel.buffers) else "no buffer"
        raise ctx.refuse(
            f"there is {what} named {buffer!r} (a hint is for the arrays a kernel streams "
            "from memory)",
            f"name one of {', '.join(names)}",
        )
    where_path, where = path, loop
    if inside is not None:
        where_path, where = ctx.loop(inside)
        if where_path[: len(path)] != path or where_path == path:
            raise ctx.refuse(
                f"loop '{where.var}' is not inside loop '{loop.var}'",
                f"name a loop nested in '{loop.var}' as inside=",
            )
    every = _accesses_at_top(where, str(buffer), loop)
    accesses = [
        (index, write)
        for index, write in every
        if not _loads_in(index) and any(mentions_loop_var(i, loop.var) for i in index)
    ]
    if not accesses:
        gathers = [load for index, _ in every for load in _loads_in(index)]
        if gathers:
            raise ctx.refuse(
                f"loop '{where.var}' reads or writes '{buffer}' only at subscripts that read "
                f"memory ({format_expr(gathers[0])}), and a prefetch computes its address "
                "without loading",
                f"prefetch '{gathers[0].buffer}', which the subscript reads, instead, or "
                "leave the gather's reads to the hardware",
            )
        raise ctx.refuse(
            f"loop '{where.var}' reads or writes no element of '{buffer}' that moves with "
            f"loop '{loop.var}'",
            "prefetch at the loop whose iterations walk through the buffer",
        )
    ahead = index_op(BinaryOp.ADD, LoopVar(loop.var), index_const(d))

    def shift(e: Expr) -> Expr | None:
        return ahead if isinstance(e, LoopVar) and e.name == loop.var else None

    hints: dict[tuple[Expr, ...], bool] = {}  # index → written (then fetched for writing)
    for index, write in accesses:
        moved = tuple(map_expr(i, shift) for i in index)
        hints[moved] = hints.get(moved, False) or write
    body: tuple[Stmt, ...] = tuple(
        Prefetch(str(buffer), i, loc=ctx.loc, write=w) for i, w in hints.items()
    )
    body += where.body
    _set(ctx, where_path, replace(where, body=body))


def specialize(ctx: StepContext, name: object, below: object) -> tuple[str, ...]:
    """Two versions of the nest holding a loop whose extent is known only when the
    kernel runs: a copy for when the loop runs fewer than `below` iterations, the nest
    as it was otherwise, each to be scheduled its own way (rows shorter than a vector:
    vectorized across the rows instead of along them).

    Before:  for i: … for j in range(n): …
    After:   if n < below: for i.1: … for j.1 in range(n): …
             if n >= below: for i: … for j in range(n): …
    The copy's loops (and locals, temporaries) get fresh names: returned in the order
    the nest lists its loops, outermost first."""
    path, loop = ctx.loop(name)
    n = _positive_int(ctx, below, "bound")
    if isinstance(loop.extent, Const):
        raise ctx.refuse(
            f"loop '{loop.var}' always runs {loop.extent.value} iterations, which the "
            "compiler knows already",
            "schedule the nest for that extent directly",
        )
    top = next(
        (
            p
            for p in (path[:k] for k in range(1, len(path) + 1))
            if isinstance(tree.at(ctx.kernel.body, p), Loop)
        ),
    )
    nest = tree.at(ctx.kernel.body, top)
    assert isinstance(nest, Loop)
    declared = {s.name for s in walk_stmts((nest,)) if isinstance(s, DeclareLocal)}
    moving = [
        e
        for e in walk_expr(loop.extent)
        if isinstance(e, LoopVar) or isinstance(e, LocalVar) and e.name in declared
    ]
    if moving:
        raise ctx.refuse(
            f"the extent of loop '{loop.var}' ({format_expr(loop.extent)}) changes within "
            f"the nest, with {format_expr(moving[0])}",
            "specialize on a loop whose extent is fixed before the nest starts (a shape)",
        )
    # the temporaries only this nest uses, allocated before it: the copy's own, so that a
    # later step (compute_at, inline) finds one producer of each in each version
    temps = sorted(_used_only_in(ctx.kernel, top))
    cloner = Cloner(ctx.fresh, ctx.kernel.buffers)
    (copy,), names = cloner.renamed((nest,), {}, tuple(temps))
    allocations = tuple(Allocate(names[t], loc=ctx.loc) for t in temps)
    short = index_op(BinaryOp.LT, loop.extent, index_const(n))
    long = index_op(BinaryOp.GE, loop.extent, index_const(n))
    versions = (If(short, (*allocations, copy), loc=ctx.loc), If(long, (nest,), loc=ctx.loc))
    body = tree.splice(ctx.kernel.body, top, versions)
    buffers = ctx.kernel.buffers + tuple(cloner.new_buffers)
    ctx.kernel = replace(ctx.kernel, body=body, buffers=buffers)
    return tuple(names[lp.var] for lp in walk_stmts((nest,)) if isinstance(lp, Loop))


def _used_only_in(kernel: Kernel, top: tree.Path) -> set[str]:
    """The temporaries allocated outside the nest at `top` that only it reads or writes."""
    nest = tree.at(kernel.body, top)
    inside = buffers_accessed((nest,))
    allocated = {s.buffer for s in walk_stmts((nest,)) if isinstance(s, Allocate)}
    temps = {b.name for b in kernel.buffers if b.role is BufferRole.TEMP}
    elsewhere = buffers_accessed(tree.splice(kernel.body, top, ()))
    return (inside & temps) - allocated - elsewhere


def nontemporal(ctx: StepContext, buffer: object, above: object = None) -> None:
    """Write `buffer` past the caches when it is larger than the last-level cache (or
    than `above` bytes): its lines are then not read before they are written (a store
    to a line not in cache reads it first), nor do they push the inputs out. For outputs
    streamed to DRAM once, such as a norm's over rows that don't fit the cache; smaller
    ones are written as before, to stay in cache for what reads them next. A hint:
    results never change.
    On the CPU: the contiguous stores of it in vector loops (movnt from the first cache
    line boundary on, the stores before it and after the last whole line masked:
    kdsl/targets/cpu/streaming.py); a GPU ignores it."""
    written = {s.buffer for s in walk_stmts(ctx.kernel.body) if isinstance(s, Store)}
    names = [
        b.name for b in ctx.kernel.buffers if b.role is not BufferRole.TEMP and b.name in written
    ]
    if buffer not in names:
        found = [b for b in ctx.kernel.buffers if b.name == buffer]
        what = (
            "no buffer"
            if not found
            else "a temporary"
            if found[0].role is BufferRole.TEMP
            else "an array the kernel only reads"
        )
        raise ctx.refuse(
            f"there is {what} named {buffer!r} (the hint is for arrays the kernel writes "
            "to memory)",
            f"name one of {', '.join(names)}" if names else "the kernel writes no array",
        )
    what = "size in bytes above which it streams"
    size = 0 if above is None else _positive_int(ctx, above, what, most=1 << 62)
    ctx.kernel = replace(
        ctx.kernel,
        buffers=tuple(
            replace(b, nontemporal=True, nontemporal_above=size) if b.name == buffer else b
            for b in ctx.kernel.buffers
        ),
    )


def _accesses_at_top(loop: Loop, buffer: str, outer: Loop) -> list[tuple[tuple[Expr, ...], bool]]:
    """The indices of `buffer`'s reads and writes (True) in `loop`, written with what is
    known at the top of an iteration: inner loops' variables at 0, the locals of
    `outer`'s body (`outer`: `loop` or one around it) by their initial values."""
    starts: dict[str, Expr] = {
        s.var: index_const(0) for s in walk_stmts(loop.body) if isinstance(s, Loop)
    }
    for s in walk_stmts(outer.body):
        if isinstance(s, DeclareLocal):
            starts.setdefault(s.name, s.init)
    accesses = [
        (e.index, False)
        for e in walk_all_exprs(loop.body)
        if isinstance(e, Load) and e.buffer == buffer
    ]
    accesses += [
        (s.index, True)
        for s in walk_stmts(loop.body)
        if isinstance(s, Store) and s.buffer == buffer
    ]
    return [(tuple(_substitute(i, starts) for i in raw), write) for raw, write in accesses]


def _loads_in(index: tuple[Expr, ...]) -> list[Load]:
    """The reads of memory in subscripts `index` (a gather's `idx[i]`): a prefetch of
    such an access would have to load."""
    return [x for i in index for x in walk_expr(i) if isinstance(x, Load)]


def _substitute(e: Expr, values: dict[str, Expr], depth: int = 8) -> Expr:
    """`e` with the inner loop variables and locals named in `values` replaced (locals
    defined by other locals resolved a few levels deep; deeper ones are left as they are,
    which a hint may be)."""

    def fn(x: Expr) -> Expr | None:
        if isinstance(x, LoopVar | LocalVar) and x.name in values:
            value = values[x.name]
            return _substitute(value, values, depth - 1) if depth > 0 else value
        return None

    return map_expr(e, fn)


def bind(ctx: StepContext, name: object, axis: object, threads: object = None) -> None:
    _, loop = ctx.loop(name)
    width = 1 if threads is None else _positive_int(ctx, threads, "thread count")
    if threads is not None and (not str(axis).startswith("thread.") or width > 1024):
        raise ctx.refuse(
            f"threads={threads!r} does not fit {axis!r}",
            "give threads= (at most 1024) only when binding to thread.x, y or z",
        )
    if ctx.target != "cuda":
        raise ctx.refuse(
            "bind maps loops to GPU blocks and threads, and this is a CPU schedule",
            "use parallelize on CPU; bind in a schedule for kd.cuda",
        )
    if axis not in GPU_AXES:
        raise ctx.refuse(f"{axis!r} is not a GPU axis", f"use one of {', '.join(sorted(GPU_AXES))}")
    if loop.kind is LoopKind.SERIAL:
        raise ctx.refuse(
            f"loop '{loop.var}' is a serial loop: GPU threads run it out of order",
            "bind parallel loops, or reductions to threads",
        )
    if loop.kind is LoopKind.REDUCTION and str(axis).startswith("block."):
        raise ctx.refuse(
            f"loop '{loop.var}' is a reduction: blocks can't combine their parts",
            "bind a reduction to thread.x (its threads combine their parts), or split it "
            "and bind the parallel loops around it to blocks",
        )
    _refuse_copies_back(ctx, loop, "blocks or threads")
    for bound in _annotate(ctx, name, GPU_AXES[str(axis)], width):  # (and its copies)
        _check_axis_free(ctx, bound, str(axis))


def _check_axis_free(ctx: StepContext, loop: Loop, axis: str) -> None:
    """One GPU index can't number two nested loops: both would take its value, and only
    the iterations where they are equal (a diagonal) would run."""
    path = tree.find(ctx.kernel.body, loop.var)
    assert path is not None
    nest = tree.nest_of(ctx.kernel.body, path)
    other = next((lp for lp in nest if lp.exec.value == axis), None)
    if other is None:
        return
    used = {lp.exec.value for lp in nest}
    kind = axis.split(".")[0]  # another block axis for a block loop, thread for thread
    free = [a for a in sorted(GPU_AXES) if a.startswith(kind) and a not in used]
    raise ctx.refuse(
        f"loop '{other.var}' in the same nest is already bound to {axis}, and loops "
        f"'{other.var}' and '{loop.var}' can't share one GPU axis",
        f"bind '{loop.var}' to another axis{f', e.g. {free[0]}' if free else ''}, or leave "
        "one of them unbound",
    )
