"""The schedule a kernel gets when it has none (DESIGN §3): fuse sibling nests of
element-wise stores over the same loops (default_fuse.py), vectorize the innermost
unit-stride loop of each nest, and parallelize the outermost parallel loop. A loop two
of whose iterations may write one element (`H[idx[i]] += 1`, `y[j // 4] += x[j]`: a
scatter) is neither vectorized nor parallelized, nor bound on a GPU: colliding
subscripts keep the serial order's result.
Whether the
parallel loop really runs on several threads is decided at run time from the work it
holds, so small calls stay single-threaded.

A contraction (`C[i, j] = Σk A[i, k]·B[k, j]`: the vector loop's body a reduction that
reads something the loop around it does not index) is computed in register tiles:
TILE_ROWS rows of the output × one vector, the reduction outside the rows, so that each
vector read of B serves every row of the tile (`_register_tiles`). Rows whose length is
known only at run time get a second version of their nest for rows shorter than one
vector, vectorized across the rows (`_short_rows_version`).

Every step goes through the same `Schedule` as a user's, so the default prints and
replays like any other; a step the target refuses is skipped.
"""

from __future__ import annotations

from kdsl.errors import ScheduleError
from kdsl.ir.affine import linear
from kdsl.ir.nodes import (
    Allocate,
    Binary,
    BinaryOp,
    Const,
    DeclareLocal,
    Expr,
    Kernel,
    Load,
    Loop,
    LoopExec,
    LoopKind,
    LoopVar,
    Stmt,
    Store,
)
from kdsl.ir.visit import walk_all_exprs, walk_expr, walk_stmts
from kdsl.schedule import tree
from kdsl.schedule.default_fuse import fuse_siblings
from kdsl.schedule.recipe import Schedule

VECTOR_BYTES = 64  # one AVX-512 register
SPLIT_1D = 8192  # a one-loop nest is split so that chunks of it can run in parallel
# rows this many elements long or shorter: x[i, 0], x[i, 1], x[i, 2] with i vectorized are
# whole vector loads and shuffles on the CPU (kdsl/targets/cpu/vector_plan.MAX_STRIDE)
SHORT_ROW = 8
# bytes of a vector across rows shorter than one vector (their elements gathered): on a
# Zen 2, 8 floats a vector ran as fast as 16 and compile in half the time
SHORT_ROWS_VECTOR = 32
# rows of a contraction's register tile: 6 rows × 16 floats is 12 of AVX2's 16 ymm (and 6
# of AVX-512's zmm). Zen 2, 2 threads, a naive matmul (kd.indices + kd.sum): 1024³ 4 ->
# 91 GFLOP/s, 256³ 34 -> 92; its first call compiles in 0.57 s instead of 0.11 (the edge
# rows and columns are code of their own)
TILE_ROWS = 6


def default_schedule(s: Schedule) -> None:
    if s.target == "cuda":
        default_gpu_schedule(s)
        return
    fuse_siblings(s, _plan)
    for nest in [st for st in s.kernel.body if isinstance(st, Loop)]:
        _schedule_nest(s, nest)


def _plan(kernel: Kernel, nest: Loop) -> tuple[int | None, int, bool]:
    """What `_schedule_nest` does to a perfect nest (default_fuse's test that fusing
    changes none of it): how deep its vector loop is and how wide, and whether the nest
    may run on threads."""
    chain = [lp.var for lp in _parallel_chain(nest)]
    vectors = _vector_loops(nest, _fortran(kernel), _short_rows(kernel))
    if len(vectors) != 1 or vectors[0].var not in chain:
        return None, 0, _collides(nest)
    return chain.index(vectors[0].var), _width(kernel, vectors[0]), _collides(nest)


def default_gpu_schedule(s: Schedule) -> None:
    """Each top-level nest on the GPU: its outer parallel loops on blocks; threads
    either across the innermost parallel loop (elementwise work: neighbouring threads
    touch neighbouring elements), or across the loops inside it when those walk memory
    with unit stride (rows: a block per row, its threads sharing the row's reductions)."""
    for nest in [st for st in s.kernel.body if isinstance(st, Loop)]:
        chain = _parallel_chain(nest)
        if not chain:
            if nest.kind is LoopKind.REDUCTION:
                _try(s.bind, nest.var, "thread.x")  # one block shares the whole reduction
            continue
        colliding = [k for k, lp in enumerate(chain) if _collides(lp)]
        if colliding:  # the loops down to it run in order, in one block (blocks can't
            rest = chain[colliding[-1] + 1 :]  # sit inside them): its threads share the rest
            if rest:
                _try(s.bind, rest[-1].var, "thread.x")
            continue
        inner = chain[-1]
        rows = [
            c
            for c in inner.body
            if isinstance(c, Loop) and c.kind is not LoopKind.SERIAL and not _collides(c)
        ]
        if rows and max(_strides(c)[0] for c in rows) >= _strides(inner)[0]:
            _bind_blocks(s, chain)
            for child in rows:
                _try(s.bind, _thread_loop(child).var, "thread.x")
        elif len(chain) <= 3:  # a block takes ELEMENTS_PER_THREAD runs of GPU_THREADS
            outer, threads = s.split(inner.var, GPU_THREADS * ELEMENTS_PER_THREAD)
            _bind_blocks(s, [*chain[:-1], _loop(s.kernel, outer)])
            s.bind(threads, "thread.x", GPU_THREADS)
        else:
            _bind_blocks(s, chain[:3])
            s.bind(inner.var, "thread.x")


def _thread_loop(loop: Loop) -> Loop:
    """The loop of a nest to spread over a block's threads: `loop`, or when its extent
    is a constant too small to occupy a warp (a group of one query head, a padding
    axis), the first loop inside it that is not serial, and so on down: the small loop
    then runs in each thread."""
    while isinstance(loop.extent, Const) and int(loop.extent.value) < WARP:
        inner = [c for c in loop.body if isinstance(c, Loop) and c.kind is not LoopKind.SERIAL]
        if not inner:
            break
        loop = inner[0]
    return loop


GPU_THREADS = 256
WARP = 32
# elements per thread in elementwise work, strided by GPU_THREADS (coalesced): their
# loads are in flight together (kdsl/targets/cuda/codegen.STRIDE_TRIPS); one element
# a thread read and wrote at 70% of a copy's speed on an H200
ELEMENTS_PER_THREAD = 4


def _parallel_chain(nest: Loop) -> list[Loop]:
    """The parallel loops perfectly nested from the top of `nest`."""
    chain: list[Loop] = []
    loop: Stmt = nest
    while isinstance(loop, Loop) and loop.kind is LoopKind.PARALLEL:
        chain.append(loop)
        if len(loop.body) != 1:
            break
        loop = loop.body[0]
    return chain


def _bind_blocks(s: Schedule, loops: list[Loop]) -> None:
    """The innermost of `loops` on block.x (the grid's largest axis), outer ones on y, z;
    beyond three, loops stay serial in each block."""
    for loop, axis in zip(reversed(loops[:3]), ("block.x", "block.y", "block.z")):
        s.bind(loop.var, axis)


def _schedule_nest(s: Schedule, nest: Loop) -> None:
    fortran = _fortran(s.kernel)
    vectors = _vector_loops(nest, fortran, _short_rows(s.kernel))
    if not fortran:
        _short_rows_version(s, nest, vectors)
    if fortran and len(vectors) == 1:
        nest, vectors = _vector_loop_inside(s, nest, vectors[0])
    parallel = nest if nest.kind is LoopKind.PARALLEL and not _collides(nest) else None
    if parallel is not None and [v.var for v in vectors] == [parallel.var]:
        if isinstance(nest.extent, Const) and int(nest.extent.value) <= SPLIT_1D:
            parallel = None
        else:
            outer, inner = s.split(nest.var, SPLIT_1D)
            vectors = [_loop(s.kernel, inner)]
            parallel = _loop(s.kernel, outer)
    tiled = _register_tiles(s, nest, vectors)
    if tiled is not None:  # (its vector loop vectorized)
        rows, tiles = tiled
        vectors = []
        if parallel is not None and parallel.var == rows:
            parallel = _loop(s.kernel, tiles)
    for vector in vectors:
        _try(s.vectorize, vector.var, _width(s.kernel, vector))
    if parallel is not None:
        _try(s.parallelize, parallel.var)


def _short_rows_version(s: Schedule, nest: Loop, vectors: list[Loop]) -> None:
    """Rows whose length is known only at run time, walked by loops inside the rows'
    loop (a row's sum, then its scaled elements): where a row turns out shorter than
    one vector, those loops' vectors would be a masked tail each, a few lanes of work
    for a vector's cost and a sum across lanes. A version of the nest for such rows
    (`specialize`) vectorizes the rows' loop instead, each lane a row, the loops
    inside it scalar; the nest as it is runs the longer rows. Zen 2, normalizing rows
    of 3 floats (12M of them): 40.6 → 11.0 ms; rows of 12: 17.0 → 10.7."""
    chain = _parallel_chain(nest)
    if not chain or not vectors or any(v in chain for v in vectors) or _collides(chain[-1]):
        return
    extents = {v.extent for v in vectors}
    if len(extents) != 1 or isinstance(vectors[0].extent, Const):
        return
    below = min(_width(s.kernel, v) for v in vectors)
    order = [lp.var for lp in walk_stmts((nest,)) if isinstance(lp, Loop)]
    try:
        with s._all_or_none():
            copy = dict(zip(order, s.specialize(vectors[0].var, below=below)))
            rows = _loop(s.kernel, copy[chain[-1].var])
            outer, lanes = s.split(rows.var, SPLIT_1D)
            s.vectorize(lanes, _width(s.kernel, rows) * SHORT_ROWS_VECTOR // VECTOR_BYTES)
            s.parallelize(copy[chain[0].var] if len(chain) > 1 else outer)
    except ScheduleError:
        pass  # (the rows' loop can't be vectorized: one version, as before)


def _register_tiles(s: Schedule, nest: Loop, vectors: list[Loop]) -> tuple[str, str] | None:
    """A contraction's output in tiles of TILE_ROWS rows × one vector of columns (`tile`
    and `reorder`, as a user's matmul schedule): the reduction inside the columns and
    the rows unrolled inside it, so the sums stay in registers over the whole reduction
    and each vector of the operand that the rows share is read once per tile. Applied
    where the vector loop's parent in the nest's parallel chain (the rows) has a body of
    just the vector loop, whose body holds one reduction loop of straight statements,
    reading something the rows don't index and something they do, and the columns are not
    a constant under one vector. The rows' loop and the loop of tiles of rows (the
    vector loop vectorized), or None where it doesn't apply."""
    chain = _parallel_chain(nest)
    if len(vectors) != 1 or len(chain) < 2 or vectors[0] is not chain[-1]:
        return None
    rows, columns = chain[-2], chain[-1]
    inner = _child_loops(columns.body)
    if len(inner) != 1 or inner[0].kind is not LoopKind.REDUCTION or _child_loops(inner[0].body):
        return None
    # the tile's sums are locals of the columns' body: as wide as its widest element
    sums = [st.dtype.itemsize for st in columns.body if isinstance(st, DeclareLocal)]
    width = min(_width(s.kernel, columns), VECTOR_BYTES // max(sums, default=1))
    if any(
        isinstance(lp.extent, Const) and int(lp.extent.value) < n
        for lp, n in ((rows, TILE_ROWS), (columns, width))
    ):
        return None
    reads = [e.index for e in walk_all_exprs(inner[0].body) if isinstance(e, Load)]
    by_row = [any(_mentions(i, rows.var) for i in index) for index in reads]
    if all(by_row) or not any(by_row):
        return None
    try:
        with s._all_or_none():
            tiles, _, row, column = s.tile(rows.var, columns.var, TILE_ROWS, width)
            s.reorder(column, inner[0].var, row)
            s.unroll(row)
            s.vectorize(column, width)
    except ScheduleError:
        return None
    return rows.var, tiles


def _fortran(kernel: Kernel) -> frozenset[str]:
    """The parameter arrays in Fortran order: their first axis is the contiguous one."""
    return frozenset(b.name for b in kernel.buffers if b.fortran)


def _vector_loop_inside(s: Schedule, nest: Loop, vector: Loop) -> tuple[Loop, list[Loop]]:
    """An elementwise nest over Fortran-ordered arrays vectorizes its outer loop (their
    first axis): moved innermost, each thread walks whole columns in order (1000 × 1000:
    0.08 ms, as C order; 2.9 ms unscheduled). The nest and its vector loop after that."""
    chain = _parallel_chain(nest)
    if vector not in chain[:-1] or _child_loops(chain[-1].body):
        return nest, [vector]
    order = [lp.var for lp in chain if lp is not vector] + [vector.var]
    _try(s.reorder, *order)
    return _loop(s.kernel, order[0]), [_loop(s.kernel, vector.var)]


def _short_rows(kernel: Kernel) -> dict[str, int]:
    """The C-ordered arrays whose rows are SHORT_ROW elements or fewer, with their
    length: the last dimension where it is a constant, else (as the CPU target takes
    it, and checks at run time) one more than the largest constant last subscript the
    kernel names (`x[i, 2]`: 3)."""
    named: dict[str, int] = {}
    accesses = [(e.buffer, e.index) for e in walk_all_exprs(kernel.body) if isinstance(e, Load)]
    accesses += [(st.buffer, st.index) for st in walk_stmts(kernel.body) if isinstance(st, Store)]
    for name, index in accesses:
        last = index[-1] if index else None
        if isinstance(last, Const) and type(last.value) is int and last.value >= 0:
            named[name] = max(named.get(name, 0), last.value + 1)
    rows: dict[str, int] = {}
    for buf in kernel.buffers:
        if buf.fortran or len(buf.shape) < 2:
            continue
        last = buf.shape[-1]
        row = int(last.value) if isinstance(last, Const) else named.get(buf.name)
        if row is not None and row <= SHORT_ROW:
            rows[buf.name] = row
    return rows


def _vector_loops(
    loop: Loop, fortran: frozenset[str] = frozenset(), rows: dict[str, int] | None = None
) -> list[Loop]:
    """The loops of `loop`'s nest to vectorize: where its body holds several loops (a
    softmax's row max, its sum of exponentials, its scaled row), those of each of them;
    else the one candidate of the nest (_vector_candidate)."""
    children = _child_loops(loop.body)
    if len(children) > 1:
        picked = [v for child in children for v in _vector_loops(child, fortran, rows)]
        if picked:
            return picked
    elif children and len(below := _vector_loops(children[0], fortran, rows)) > 1:
        return below  # (side by side further down: a batch's rows)
    loops = [lp for lp in walk_stmts((loop,)) if isinstance(lp, Loop)]
    best = _vector_candidate(loops, fortran, rows)
    return [] if best is None else [best]


def _child_loops(body: tuple[Stmt, ...]) -> list[Loop]:
    """The loops directly in `body` (inside an `if` too), not those inside them."""
    found: list[Loop] = []
    for st in body:
        found.extend([st] if isinstance(st, Loop) else _child_loops(tree.body_of(st)))
    return found


def _collides(loop: Loop) -> bool:
    """Whether two iterations of `loop` may write one element: a store inside it (to an
    array it doesn't allocate) none of whose subscripts takes a different value in each
    iteration (`H[idx[i]] += 1`, `y[j // 4] += x[j]`, `y[perm[i], j]` for i; not
    `y[perm[i], j]` for j). Its lanes would read an element before any lane wrote it
    (counts lost), its threads write it in any order: it stays serial, in the serial
    order (a user's `vectorize` or `bind` is the user's promise that they never meet)."""
    inside = {st.buffer for st in walk_stmts(loop.body) if isinstance(st, Allocate)}
    return any(
        isinstance(st, Store)
        and st.buffer not in inside
        and not any(_spreads(i, loop.var) for i in st.index)
        for st in walk_stmts(loop.body)
    )


def _spreads(sub: Expr, var: str) -> bool:
    """Whether subscript `sub` takes a different value for each value of loop `var`
    (the other loops fixed): var times a nonzero constant, or times a shape (`i * n +
    j`), plus terms without var; not through data, `//` or `%`."""
    lin = linear(sub)
    if lin is None:
        return False
    terms = [(a, c) for a, c in lin.terms if _mentions(a, var)]
    return bool(terms) and all(
        a == LoopVar(var) or isinstance(a, Binary) and a.op is BinaryOp.MUL for a, _ in terms
    )


def _try(step: object, *args: object) -> None:
    try:
        step(*args)  # type: ignore[operator]
    except ScheduleError:
        pass  # the target can't do it here: the loop stays scalar / serial


def _loop(kernel: Kernel, name: str) -> Loop:
    return next(lp for lp in walk_stmts(kernel.body) if isinstance(lp, Loop) and lp.var == name)


def _vector_candidate(
    loops: list[Loop], fortran: frozenset[str] = frozenset(), rows: dict[str, int] | None = None
) -> Loop | None:
    """The loop that most accesses walk with unit stride, and none gathers: a parallel
    loop before a reduction's (whose lanes would be added up for every element it
    makes), then the innermost. A convolution `Y[i, j] = Σ X[i + p, j + q]·W[p, q]`
    vectorizes j, each lane an output, not the filter's short q (1000² by 3×3: 0.67 ms
    against 16.5). An access to a short row by a constant (`x[i, 2]` of rows of 3, see
    `_short_rows`) counts as unit stride for i: its lanes are loaded as whole vectors."""
    best: tuple[tuple[bool, int], Loop] | None = None
    for lp in loops:
        if lp.kind is LoopKind.SERIAL or lp.exec is not LoopExec.SERIAL or _collides(lp):
            continue
        if isinstance(lp.extent, Const) and int(lp.extent.value) < 4:
            continue
        unit, strided = _strides(lp, fortran, rows)
        rank = (lp.kind is LoopKind.PARALLEL, unit)
        if unit and not strided and (best is None or rank >= best[0]):  # ties: the deeper
            best = (rank, lp)
    return best[1] if best else None


def _strides(
    lp: Loop, fortran: frozenset[str] = frozenset(), rows: dict[str, int] | None = None
) -> tuple[int, int]:
    """How many accesses in `lp` have its variable only in their contiguous subscript
    (the last; the first of a Fortran-ordered array) or reach a short row by a constant
    (`x[i, 2]`, rows in `rows`), and how many have it elsewhere (they would need
    gathers)."""
    unit = strided = 0
    accesses: list[tuple[str, tuple[Expr, ...]]] = [
        (e.buffer, e.index) for e in walk_all_exprs(lp.body) if isinstance(e, Load)
    ]
    accesses += [(st.buffer, st.index) for st in walk_stmts(lp.body) if isinstance(st, Store)]
    for buffer, index in accesses:
        uses = [_mentions(i, lp.var) for i in index]
        if not any(uses):
            continue
        if buffer in fortran:
            uses.reverse()
        if uses[-1] and not any(uses[:-1]):
            unit += 1
        elif rows and buffer in rows and _short_row(index, lp.var, rows[buffer]):
            unit += 1
        else:
            strided += 1
    return unit, strided


def _short_row(index: tuple[Expr, ...], var: str, row: int) -> bool:
    """Whether `x[index]`, in rows `row` long, is `x[…, k·var + …, …, c]`: var in one
    axis but the last, with a constant coefficient k, and the last subscript a constant
    c in the row, such that the lanes of a vector over var are k·row ≤ SHORT_ROW
    elements apart (kdsl/targets/cpu/vector_plan.strided_access reads them whole)."""
    last = index[-1]
    if not isinstance(last, Const) or type(last.value) is not int or not 0 <= last.value < row:
        return False
    axes = [a for a, sub in enumerate(index) if _mentions(sub, var)]
    if len(axes) != 1 or axes[0] == len(index) - 1:
        return False
    lin = linear(index[axes[0]])
    if lin is None:
        return False
    step = lin.coeff(LoopVar(var))
    if any(_mentions(a, var) for a, _ in lin.without([LoopVar(var)]).terms):
        return False
    return 2 <= step * row <= SHORT_ROW


def _mentions(e: Expr, var: str) -> bool:
    return any(isinstance(x, LoopVar) and x.name == var for x in walk_expr(e))


def _width(kernel: Kernel, lp: Loop) -> int:
    sizes = [max(4, e.dtype.itemsize) for e in walk_all_exprs(lp.body) if isinstance(e, Load)]
    sizes += [
        max(4, kernel.buffer(st.buffer).dtype.itemsize)
        for st in walk_stmts(lp.body)
        if isinstance(st, Store)
    ]
    return VECTOR_BYTES // max(sizes, default=4)
