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
vector read of B serves every row of the tile (`_register_tiles`), B packed a panel of
columns at a time (`_packed_panels`); a single row (a vector times a matrix: a version
of its own where the rows are known at run time) streams B's rows through blocks of
sums instead (`_streamed_rows`). Rows whose length is known only at run time get a
second version of their nest for rows shorter than one vector, vectorized across the
rows (`_short_rows_version`). A sum down the columns
runs in blocks of columns whose sums stay in L1 (`_column_blocks`), and a reduction of
one long loop into a value in parts on all threads (`_parts_on_threads`); a transpose
in tiles (`_transpose_tiles`). An elementwise nest over whole C-ordered arrays is one
loop over all their elements (`_collapsed_rows`), and the loop on threads takes the
parallel loops of rows inside it along (`_with_loops_below`: a batch of one).

Every step goes through the same `Schedule` as a user's, so the default prints and
replays like any other; a step the target refuses is skipped.
"""

from __future__ import annotations

from kdsl.errors import ScheduleError
from kdsl.ir.affine import linear
from kdsl.ir.extents import same_extent
from kdsl.ir.flatten import in_c_order
from kdsl.ir.nodes import (
    Allocate,
    Binary,
    BinaryOp,
    BufferRole,
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
from kdsl.ir.visit import (
    map_expr,
    mentions_loop_var,
    stmt_exprs,
    walk_all_exprs,
    walk_stmts,
)
from kdsl.schedule import tree
from kdsl.schedule.default_fuse import fuse_siblings, reuse_values
from kdsl.schedule.recipe import Schedule

VECTOR_BYTES = 64  # one AVX-512 register
SPLIT_1D = 8192  # a one-loop nest is split so that chunks of it can run in parallel
# rows this many elements long or shorter: x[i, 0], x[i, 1], x[i, 2] with i vectorized are
# whole vector loads and shuffles on the CPU (kdsl/targets/cpu/vector_plan.MAX_STRIDE)
SHORT_ROW = 8
# bytes of a block of column sums (a reduction down the columns): in L1 while the rows
# stream by; each row read COLUMN_BLOCK contiguous bytes at a time (Zen 2, 4096 x 4096
# floats: 2048, 4096 and 8192 bytes took 6.3, 4.9 and 4.4 ms)
COLUMN_BLOCK = 8192
# rows of a part of a sum over two loops (kd.sum(x[i, j], over=(i, j))) that a thread takes
PART_ROWS = 16
# elements of a side of a transpose's tile: 16 rows of 16 floats read, 16 written, in L1
# (Zen 2, 2048² floats: tiles of 16 took 2.9 ms, of 32 5.8 ms, of 64 10.0)
TRANSPOSE_TILE = 16
# bytes of a vector across rows shorter than one vector (their elements gathered): on a
# Zen 2, 8 floats a vector ran as fast as 16 and compile in half the time
SHORT_ROWS_VECTOR = 32
# rows of a contraction's register tile: 6 rows × 16 floats is 12 of AVX2's 16 ymm (and 6
# of AVX-512's zmm). Zen 2, 2 threads, a naive matmul (kd.indices + kd.sum): 1024³ 4 ->
# 91 GFLOP/s, 256³ 34 -> 92; its first call compiles in 0.57 s instead of 0.11 (the edge
# rows and columns are code of their own)
TILE_ROWS = 6
# vectors of columns per panel of a contraction's shared operand packed whole: its k rows
# of 2 vectors stay in a core's L2. Zen 2, 2 threads, naive matmuls against NumPy (one
# process each; the packing's strided reads swing 0.5-0.75x between processes where B
# spans more pages than the TLB holds): 1000³ 0.44 -> 1.00×, 2000³ 0.21 -> 0.94,
# 64×4096×4096 0.09 -> 0.75, 4096×64×4096 0.51 -> 0.77 (4 vectors: 0.99, 0.85, 0.72,
# 0.86; 8: 0.55, 0.74, 0.68, 0.96). The first call compiles in 1.17 s instead of 0.98.
# Where B's part of a tile fits L2 unpacked (256³) the copy costs more than it saves:
# 208 -> 232 µs (NumPy 240); a version for reductions under 512 kept 208 but took the
# first call to 1.76 s, so it isn't made
PANEL_TILES = 2
# rows of B that a contraction of a single row streams at once into its block of sums
# (`_streamed_rows`): Zen 2, a vector times a 4000² matrix, one row at a time 2.3 ms, four
# 1.74 (NumPy 1.65)
STREAMED_ROWS = 4


def default_schedule(s: Schedule) -> None:
    if s.target == "cuda":
        default_gpu_schedule(s)
        return
    fuse_siblings(s, _plan)
    reuse_values(s, _vector_plan)
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


def _vector_plan(kernel: Kernel, loop: Loop) -> tuple[tuple[str, int], ...]:
    """Which loops of `loop`'s nest the default vectorizes, and how wide (default_fuse's
    test that a `reuse` changes none of it)."""
    vectors = _vector_loops(loop, _fortran(kernel), _short_rows(kernel))
    return tuple((v.var, _width(kernel, v)) for v in vectors)


def default_gpu_schedule(s: Schedule) -> None:
    """Each top-level nest on the GPU: its outer parallel loops on blocks; threads
    either across the innermost parallel loop (elementwise work: neighbouring threads
    touch neighbouring elements), or across the loops inside it when those walk memory
    with unit stride (rows: a block per row, its threads sharing the row's reductions)."""
    for nest in [st for st in s.kernel.body if isinstance(st, Loop)]:
        collapsed = _collapsed_rows(s, nest)  # (rows of 3: not 3 busy threads a block)
        nest = collapsed[0] if collapsed else nest
        chain = _parallel_chain(nest)
        if not chain:
            if nest.kind is LoopKind.REDUCTION:
                _try(s.bind, nest.var, "thread.x")  # one block shares the whole reduction
            continue
        colliding = [k for k, lp in enumerate(chain) if _collides(lp, collapsed)]
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
    collapsed = _collapsed_rows(s, nest)
    if collapsed is not None:  # (its accesses, x[f // m, f % m], run in unit stride)
        nest, vectors = collapsed[0], [collapsed[1]]
    else:
        vectors = _vector_loops(nest, fortran, _short_rows(s.kernel))
    if not fortran:  # (these read C order's rows as the contiguous axis)
        _short_rows_version(s, nest, vectors)
        if _column_blocks(s, nest, vectors) or _transpose_tiles(s, nest, vectors):
            return
    if _parts_on_threads(s, nest, vectors):
        return
    if fortran and len(vectors) == 1:
        nest, vectors = _vector_loop_inside(s, nest, vectors[0])
    spread = not _collides(nest, collapsed)
    parallel = nest if nest.kind is LoopKind.PARALLEL and spread else None
    if parallel is not None and [v.var for v in vectors] == [parallel.var]:
        if isinstance(nest.extent, Const) and int(nest.extent.value) <= SPLIT_1D:
            parallel = None
        else:
            outer, inner = s.split(nest.var, SPLIT_1D)
            vectors = [_loop(s.kernel, inner)]
            parallel = _loop(s.kernel, outer)
    elif parallel is not None and collapsed is not None:
        parallel, vectors = _chunks_with_batches(s, parallel, collapsed[1])
    if _streamed_rows(s, nest, vectors):
        return
    tiled = _register_tiles(s, nest, vectors)
    on_threads: list[str] = []
    if tiled is not None:  # (its vector loop vectorized)
        rows, on_threads = tiled
        vectors = []
        if parallel is not None and parallel.var == rows:
            parallel = _loop(s.kernel, on_threads[0])
    for vector in vectors:
        _try(s.vectorize, vector.var, _width(s.kernel, vector))
    if parallel is not None:
        loops = _with_loops_below(s, parallel.var)
        for loop in loops + [name for name in on_threads if name not in loops]:
            _try(s.parallelize, loop)


def _chunks_with_batches(s: Schedule, top: Loop, rows: Loop) -> tuple[Loop, list[Loop]]:
    """Collapsed rows inside batch loops (`y[b, i, j] = x[b, i, j] · s[b]`, rows `ij`):
    the rows in chunks of SPLIT_1D elements, and the batches with the chunks as the loop
    on threads (a batch of one ran on one core), dividing once a chunk. Zen 2, 6M floats
    scaled per batch: a batch of 1 2.5 → 1.7 ms, of 3 2.1 → 1.8 ms, of 4 1.64 either
    way. The loop on threads and the vector loop."""
    if isinstance(rows.extent, Const) and int(rows.extent.value) <= SPLIT_1D:
        return top, [rows]
    names = [lp.var for lp in _parallel_chain(_loop(s.kernel, top.var))]
    if rows.var not in names or any(
        _collides(_loop(s.kernel, n)) for n in names[1 : names.index(rows.var)]
    ):
        return top, [rows]  # (a loop of them may write one element twice: in order)
    try:
        with s._all_or_none():
            chunks, lanes = s.split(rows.var, SPLIT_1D)
            name = top.var
            for inner in names[1 : names.index(rows.var)] + [chunks]:
                name = s.collapse(name, inner)
    except ScheduleError:
        return top, [rows]
    return _loop(s.kernel, name), [_loop(s.kernel, lanes)]


def _with_loops_below(s: Schedule, name: str) -> list[str]:
    """The loops to run on threads: loop `name` and the parallel loops perfectly nested
    in it that hold loops, down to the first annotated one (a vector loop), collapsed
    into one (`collapse`) where every array reads them as neighbouring axes of C order
    (`x[b, i, j]`): a batch of 1 (shape (1, 4096, 1000)) ran on one thread, as did the
    odd batch out (3 on 2 threads). kdsl/ir/flatten.py drops the division from the
    addresses. Zen 2, a row softmax of (1, 4096, 1000): 5.2 → 2.6 ms. Where the first
    of them can't be collapsed, it runs on threads inside loop `name` instead: the pool
    runs a loop too short for two threads (a batch of one) on the caller, which leaves
    the threads to the loop inside, and a loop inside one already on threads inline
    (Zen 2, a naive batched matmul of one 512³ product 4.0 → 2.0 ms). Their names."""
    top = _loop(s.kernel, name)
    loop: Stmt = top
    below: list[Loop] = []
    while isinstance(loop, Loop) and len(loop.body) == 1 and isinstance(loop.body[0], Loop):
        loop = loop.body[0]
        if loop.kind is not LoopKind.PARALLEL or loop.exec is not LoopExec.SERIAL:
            break
        if _collides(loop) or not _child_loops(loop.body):
            break  # (innermost: a division an element, which no vector loop shares)
        below.append(loop)
    # only where the arrays' addresses lose the division: elsewhere (a transposed
    # x[i, b, j], a tile's x[b, 6·io + ii, k], i as a value) it would stay in the inner
    # loops, and a batched matmul ran 1.7× slower
    nested = [below[0].var] if below else []
    while below and not _whole_rows(s.kernel, [top, *below], trailing=False):
        below.pop()
    if not below:
        return [name, *nested]
    try:
        with s._all_or_none():
            for inner in below:
                name = s.collapse(name, inner.var)
    except ScheduleError:  # (an extent that depends on the loop around it)
        return [name, *nested]
    return [name]


def _collapsed_rows(s: Schedule, nest: Loop) -> tuple[Loop, Loop] | None:
    """An elementwise nest over whole C-ordered arrays (`y[i, j] = 2·x[i, j] + z[i, j]`:
    each array subscripted by the nest's loops in order, which appear nowhere else) as
    one loop over all the elements (`collapse`): one stream, vectorized across the rows'
    ends, where a vector loop along each row ended it with a masked vector. Zen 2, 4M
    rows of 3 floats: 12.9 → 3.3 ms; of 7: 4.4 → 1.9 ms; 4096 rows of 1000: 1.1 ms
    either way. Where that holds for the inner loops only (a batch's `y[b, i, j] =
    x[i, j] * s[b]`), those collapse. Not where each subscript is checked when the code
    runs (`checks=True`): there each element's row and column are computed. The nest
    and the loop made, or None where it doesn't apply."""
    chain = _parallel_chain(nest)
    if s.checks or len(chain) < 2 or _child_loops(chain[-1].body) or _collides(nest):
        return None
    for start in range(len(chain) - 1):
        if not _whole_rows(s.kernel, chain[start:]):
            continue
        try:
            with s._all_or_none():
                name = chain[start].var
                for lp in chain[start + 1 :]:
                    name = s.collapse(name, lp.var)
        except ScheduleError:
            return None
        return _loop(s.kernel, chain[0].var if start else name), _loop(s.kernel, name)
    return None


def _whole_rows(kernel: Kernel, loops: list[Loop], trailing: bool = True) -> bool:
    """Whether the body of the innermost of `loops` (a perfect nest) stores only to, and
    reads their variables only as, `x[…, i, j]`: the loops' variables in order ending
    the subscripts (with `trailing=False`, anywhere in them: `x[b, i, j]` for loops b
    and i) of a C-ordered array whose axes they run over fully (the other subscripts
    free of those variables)."""
    rows = tuple(LoopVar(lp.var) for lp in loops)

    def whole(name: str, index: tuple[Expr, ...]) -> bool:
        buf = kernel.buffer(name)
        starts = [len(index) - len(rows)] if trailing else range(len(index) - len(rows) + 1)
        lead = next((p for p in starts if p >= 0 and index[p : p + len(rows)] == rows), -1)
        others = index[:lead] + index[lead + len(rows) :]
        return (
            lead >= 0
            and not any(mentions_loop_var(i, lp.var) for i in others for lp in loops)
            and in_c_order(buf)  # (where flatten_rows drops the division)
            and all(
                same_extent(kernel, lp.extent, buf.shape[lead + k])
                for k, lp in enumerate(loops)
                if k  # (the rows' count doesn't enter an element's address)
            )
        )

    def strip(e: Expr) -> Expr | None:
        return Const(0, e.dtype) if isinstance(e, Load) and whole(e.buffer, e.index) else None

    values: list[Expr] = []
    for st in walk_stmts(loops[-1].body):
        if isinstance(st, Store) and not whole(st.buffer, st.index):
            return False
        values += [st.value] if isinstance(st, Store) else stmt_exprs(st)
    rest = [map_expr(e, strip) for e in values]
    return not any(mentions_loop_var(e, lp.var) for e in rest for lp in loops)


def _transpose_tiles(s: Schedule, nest: Loop, vectors: list[Loop]) -> bool:
    """A nest whose reads walk one axis and whose writes another (`y[j, i] = x[i, j]`):
    no loop walks every access with unit stride, so none was vectorized, and each
    element written or read was a new cache line. In tiles of TRANSPOSE_TILE ×
    TRANSPOSE_TILE elements (their lines stay in L1), the loop along the writes
    innermost and vectorized, its reads gathered from the tile: Zen 2, 2048² floats:
    34 → 2.9 ms (NumPy 31). A batch loop around them runs on threads, and the tiles
    inside it too (a batch of one of 2048²: 5.4 → 2.8 ms). Whether it applied."""
    chain = _parallel_chain(nest)
    if vectors or len(chain) < 2 or _child_loops(chain[-1].body):
        return False
    if any(_collides(lp) for lp in chain):
        return False
    outer, inner = chain[-2], chain[-1]
    along = [lp for lp in (outer, inner) if _stores_along(lp)]
    if len(along) != 1:
        return False
    across = inner if along[0] is outer else outer
    width = min(_width(s.kernel, along[0]), TRANSPOSE_TILE)
    try:
        with s._all_or_none():
            tiles, columns, rows, lanes = s.tile(
                outer.var, inner.var, TRANSPOSE_TILE, TRANSPOSE_TILE
            )
            order = {outer.var: rows, inner.var: lanes}
            s.reorder(tiles, columns, order[across.var], order[along[0].var])
            s.vectorize(order[along[0].var], width)
            if len(chain) > 2:  # (a batch's: both on threads, for a batch of one)
                s.parallelize(chain[0].var)
            s.parallelize(tiles)
    except ScheduleError:
        return False
    return True


def _stores_along(loop: Loop) -> bool:
    """Whether every store in `loop` walks it along the stored array's contiguous axis
    (its variable in the last subscript alone), and some read does not."""
    stores = [st.index for st in walk_stmts(loop.body) if isinstance(st, Store)]
    reads = [e.index for e in walk_all_exprs(loop.body) if isinstance(e, Load)]

    def along(index: tuple[Expr, ...]) -> bool:
        uses = [mentions_loop_var(i, loop.var) for i in index]
        return bool(uses) and uses[-1] and not any(uses[:-1])

    moving = [r for r in reads if any(mentions_loop_var(i, loop.var) for i in r)]
    return bool(stores) and all(map(along, stores)) and not all(map(along, moving))


def _parts_on_threads(s: Schedule, nest: Loop, vectors: list[Loop]) -> bool:
    """A reduction of one long loop into a value (`kd.sum(x[i], over=i)`, a dot
    product), or of a perfect nest of two (`kd.sum(x[i, j], over=(i, j))`): in chunks
    of SPLIT_1D iterations (of PART_ROWS rows), each chunk's part on a thread of its
    own and the parts combined in order after them (`rfactor`); the vectors inside, and
    the parts' own sum vectorized (a long one blocked, as any vector sum:
    kdsl/targets/cpu/partials.py). Zen 2: a sum of 16M floats 3.4 → 1.9 ms (both cores
    reading DRAM; NumPy 4.6), of 4096² floats 3.6 → 2.0 ms. Whether it applied."""
    if nest.kind is not LoopKind.REDUCTION or len(vectors) != 1:
        return False
    inner = vectors[0]
    if (
        _child_loops(inner.body)
        or inner is not nest
        and (nest.body != (inner,) or inner.kind is not LoopKind.REDUCTION)
    ):
        return False
    chunk = SPLIT_1D if inner is nest else PART_ROWS
    if isinstance(nest.extent, Const) and int(nest.extent.value) <= chunk:
        return False
    try:
        with s._all_or_none():
            chunks, rest = s.split(nest.var, chunk)
            parts = s.rfactor(chunks)
            s.parallelize(chunks)
            s.vectorize(rest if inner is nest else inner.var, _width(s.kernel, inner))
            s.vectorize(parts, _width(s.kernel, inner))  # (summed as accurately as a row)
    except ScheduleError:
        return False
    return True


def _column_blocks(s: Schedule, nest: Loop, vectors: list[Loop]) -> bool:
    """A reduction down the columns (`out[j] = kd.sum(x[i, j], over=i)`, `y = wᵀ·x`):
    the vector loop (the columns) holds one reduction loop of straight statements that
    walks down the rows of an array. Each vector of columns would sum its strip alone,
    reading one vector of every row. Instead the columns go in blocks of COLUMN_BLOCK
    bytes of sums (`split`, `reorder(blocks, i, lanes)`: the sums become a buffer that
    stays in L1) and the reduction reads that many contiguous bytes of each row; the
    blocks run on threads (or the loop around them). Zen 2: column sums of 4096 × 1024
    floats 2.57 → 0.72 ms (NumPy 0.89), wᵀ·x of 4096² 11.9 → 4.4 ms. Fewer columns than
    a vector keep their sums in one register (a version of their own: in memory, the
    masked store of each row's sums took 1M rows of 3 from 1.4 to 9.6 ms). Whether it
    applied."""
    found = _reduction_in_vector_loop(nest, vectors)
    if found is None or len(found[0]) > 1 and _shared_by_rows(found[0][-2], found[1]):
        return False  # (a contraction: in register tiles)
    chain, reduction = found
    columns = chain[-1]
    if not _strides(reduction)[1]:
        return False  # (the reduction walks along a row)
    sums = [st.dtype.itemsize for st in columns.body if isinstance(st, DeclareLocal)]
    width = _width(s.kernel, columns)
    try:
        with s._all_or_none():
            if not isinstance(columns.extent, Const):  # fewer columns than a vector: their
                narrow = _specialized(s, nest, columns, width)
                s.vectorize(narrow[columns.var], width)  # sums in one register, as before
                if len(chain) > 1 and not _collides(chain[0]):
                    s.parallelize(narrow[chain[0].var])
            blocks, lanes = s.split(columns.var, COLUMN_BLOCK // max(sums, default=4))
            s.reorder(blocks, reduction.var, lanes)
            s.vectorize(lanes, width)
            if len(chain) == 1:
                s.parallelize(blocks)
            elif not _collides(chain[0]):  # (batches that may write one row stay in order)
                s.parallelize(chain[0].var)
    except ScheduleError:
        return False
    return True


def _short_rows_version(s: Schedule, nest: Loop, vectors: list[Loop]) -> None:
    """Rows whose length is known only at run time, walked by loops inside the rows'
    loop (a row's sum, then its scaled elements): where a row turns out shorter than
    one vector, those loops' vectors would be a masked tail each, a few lanes of work
    for a vector's cost and a sum across lanes. A version of the nest for such rows
    (`specialize`) vectorizes the rows' loop instead, each lane a row, the loops
    inside it scalar; the nest as it is runs the longer rows. Zen 2, normalizing rows
    of 3 floats (12M of them): 40.6 → 11.0 ms; rows of 12: 17.0 → 10.7."""
    if not vectors or isinstance(vectors[0].extent, Const):
        return
    chain = _parallel_chain(nest)
    if any(v.extent != vectors[0].extent or v in chain for v in vectors):
        return  # (a vector loop in the chain: an elementwise nest's, a contraction's)
    parents = {_parent_loop(nest, v) for v in vectors}
    if len(parents) != 1 or (name := parents.pop()) is None:
        return
    row = _loop(s.kernel, name)
    if row.kind is not LoopKind.PARALLEL or _collides(row):
        return
    below = min(_width(s.kernel, v) for v in vectors)
    width = _width(s.kernel, row) * SHORT_ROWS_VECTOR // VECTOR_BYTES
    try:
        with s._all_or_none():
            copy = _specialized(s, nest, vectors[0], below)
            if row.var == nest.var:
                outer, lanes = s.split(copy[row.var], SPLIT_1D)
                s.vectorize(lanes, width)
                s.parallelize(outer)
            else:  # (the loops around the rows: threads for the outermost, as before)
                s.vectorize(copy[row.var], width)
                if nest.kind is LoopKind.PARALLEL and not _collides(nest):
                    s.parallelize(copy[nest.var])
    except ScheduleError:
        pass  # (the rows' loop can't be vectorized: one version, as before)


def _specialized(s: Schedule, nest: Loop, loop: Loop, below: int) -> dict[str, str]:
    """`s.specialize(loop, below)`: the copy's loop names by the nest's."""
    order = [lp.var for lp in walk_stmts((nest,)) if isinstance(lp, Loop)]
    return dict(zip(order, s.specialize(loop.var, below=below)))


def _parent_loop(nest: Loop, loop: Loop) -> str | None:
    """The name of the loop of `nest` whose body holds `loop` (through ifs), if any."""
    path = tree.find((nest,), loop.var)
    around = [s for s in tree.enclosing((nest,), path) if isinstance(s, Loop)] if path else []
    return around[-1].var if around else None


def _contraction(
    kernel: Kernel, nest: Loop, vectors: list[Loop]
) -> tuple[list[Loop], Loop, int, int] | None:
    """If the nest is a contraction (`_reduction_in_vector_loop`, its rows sharing
    reads: `_shared_by_rows`): its parallel chain (rows and columns last), its
    reduction loop, the bytes of its widest sum (a local of the columns' body; 0 for
    none) and the vector width the sums allow."""
    found = _reduction_in_vector_loop(nest, vectors)
    if found is None or len(found[0]) < 2 or not _shared_by_rows(found[0][-2], found[1]):
        return None
    chain, reduction = found
    columns = chain[-1]
    sums = max(
        (st.dtype.itemsize for st in columns.body if isinstance(st, DeclareLocal)), default=0
    )
    width = min(_width(kernel, columns), VECTOR_BYTES // max(sums, 1))
    return chain, reduction, sums, width


def _streamed_rows(s: Schedule, nest: Loop, vectors: list[Loop]) -> bool:
    """A contraction of a single row (`y = x·W` for a vector x): a register tile's
    vector of columns would read W a vector at a time with a row's stride between reads.
    Instead the row walks its columns in blocks of COLUMN_BLOCK bytes of sums (in L1,
    the blocks on threads) while STREAMED_ROWS rows of W stream through them at once
    (`split`, `reorder(rows, blocks, ko, lanes, ki)`). Where the rows are known only at
    run time this is a version of the nest for one row (`specialize`), the register
    tiles the other. (Two to five rows stay in tiles: streaming read W once per row,
    slower on a Zen 2 at 2 and 3 rows of 4000² within the L3.) Zen 2, 2 threads, a
    vector times a 4000² matrix: 5.1 → 1.74 ms (NumPy 1.65), 768 × 32000: 9.0 → 2.4 ms
    (NumPy 2.05); the naive matmul's first call compiles in 0.98 s instead of 0.76.
    Whether the whole nest is done (its rows the constant 1)."""
    found = _contraction(s.kernel, nest, vectors)
    if found is None:
        return False
    chain, reduction, sums, width = found
    rows, columns = chain[-2], chain[-1]
    if isinstance(columns.extent, Const) and int(columns.extent.value) < width:
        return False
    single = isinstance(rows.extent, Const)
    if isinstance(rows.extent, Const) and int(rows.extent.value) != 1:
        return False
    try:
        with s._all_or_none():
            names = (
                {lp.var: lp.var for lp in walk_stmts((nest,)) if isinstance(lp, Loop)}
                if single
                else _specialized(s, nest, rows, 2)
            )
            blocks, lanes = s.split(names[columns.var], COLUMN_BLOCK // (sums or 4))
            ko, ki = s.split(names[reduction.var], STREAMED_ROWS)
            s.reorder(names[rows.var], blocks, ko, lanes, ki)
            s.unroll(ki)
            s.vectorize(lanes, width)
            if len(chain) > 2 and not _collides(chain[0]):  # (a batch of them)
                s.parallelize(names[chain[0].var])
            s.parallelize(blocks)
    except ScheduleError:
        return False
    return single


def _register_tiles(s: Schedule, nest: Loop, vectors: list[Loop]) -> tuple[str, list[str]] | None:
    """A contraction's output in tiles of TILE_ROWS rows × one vector of columns (`tile`
    and `reorder`, as a user's matmul schedule): the reduction inside the columns and
    the rows unrolled inside it, so the sums stay in registers over the whole reduction
    and each vector of the operand that the rows share is read once per tile. Applied
    where the vector loop's parent in the nest's parallel chain (the rows) has a body of
    just the vector loop, whose body holds one reduction loop of straight statements,
    reading something the rows don't index and something they do, and the columns are not
    a constant under one vector. Then, where the shared operand is one array read along
    the reduction and the columns, the tiles go in panels of PANEL_TILES of them, each
    panel of it packed (`_packed_panels`); the panels run on threads (each packs its
    own), and the tiles of rows inside them too, which the pool takes where there are
    too few panels to go round (one panel: 32 columns of f32). The rows' loop and the
    loops to run on threads, outermost first (the vector loop vectorized), or None where
    it doesn't apply."""
    found = _contraction(s.kernel, nest, vectors)
    if found is None:
        return None
    chain, reduction, _, width = found  # (the tile's sums: as wide as the widest)
    rows, columns = chain[-2], chain[-1]
    if any(
        isinstance(lp.extent, Const) and int(lp.extent.value) < n
        for lp, n in ((rows, TILE_ROWS), (columns, width))
    ):
        return None
    try:
        with s._all_or_none():
            tiles, column_tiles, row, column = s.tile(rows.var, columns.var, TILE_ROWS, width)
            s.reorder(column, reduction.var, row)
            s.unroll(row)
            s.vectorize(column, width)
    except ScheduleError:
        return None
    shared = _shared_operand(s.kernel, reduction, rows, columns)
    panels = None if shared is None else _packed_panels(s, shared, tiles, column_tiles)
    return rows.var, [tiles] if panels is None else [panels, tiles]


def _shared_operand(kernel: Kernel, reduction: Loop, rows: Loop, columns: Loop) -> str | None:
    """The parameter array that a contraction's rows share (`B` of `A[i, k]·B[k, j]`):
    the one array read with subscripts that name the reduction and the columns, not
    the rows; None where there are several or it is a temporary."""
    reads = {
        e.buffer
        for e in walk_all_exprs(reduction.body)
        if isinstance(e, Load)
        and not any(mentions_loop_var(i, rows.var) for i in e.index)
        and any(mentions_loop_var(i, reduction.var) for i in e.index)
        and any(mentions_loop_var(i, columns.var) for i in e.index)
    }
    params = {b.name for b in kernel.buffers if b.role is BufferRole.PARAM}
    return reads.pop() if len(reads) == 1 and reads <= params else None


def _packed_panels(s: Schedule, shared: str, tiles: str, column_tiles: str) -> str | None:
    """The register tiles in panels of PANEL_TILES vectors of columns, each panel's part
    of the shared operand copied whole (all of the reduction) into contiguous rows
    before the tiles of rows walk it (`cache(..., layout="packed")`, as the library's
    matmul does): a tile then reads its vectors one after another instead of a row's
    length apart, and the panel stays in L2 while every tile of rows passes. The panel
    loop's name, or None where it can't be done."""
    try:
        with s._all_or_none():
            panels, tiles_in_panel = s.split(column_tiles, PANEL_TILES)
            s.reorder(panels, tiles, tiles_in_panel)
            s.cache(shared, at=panels, layout="packed")
    except ScheduleError:
        return None
    return panels


def _reduction_in_vector_loop(nest: Loop, vectors: list[Loop]) -> tuple[list[Loop], Loop] | None:
    """Where the nest's one vector loop ends its parallel chain and holds one reduction
    loop of straight statements (a contraction's, a sum down the columns): the chain and
    that reduction loop."""
    chain = _parallel_chain(nest)
    if len(vectors) != 1 or not chain or vectors[0] is not chain[-1]:
        return None
    inner = _child_loops(chain[-1].body)
    if len(inner) != 1 or inner[0].kind is not LoopKind.REDUCTION or _child_loops(inner[0].body):
        return None
    return chain, inner[0]


def _shared_by_rows(rows: Loop, reduction: Loop) -> bool:
    """Whether the reduction reads something the rows' loop indexes and something it
    doesn't (`A[i, k]` and `B[k, j]` for rows i): a contraction, whose rows can share
    the reads of B."""
    reads = [e.index for e in walk_all_exprs(reduction.body) if isinstance(e, Load)]
    by_row = [any(mentions_loop_var(i, rows.var) for i in index) for index in reads]
    return any(by_row) and not all(by_row)


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


def _collides(loop: Loop, collapsed: tuple[Loop, Loop] | None = None) -> bool:
    """Whether two iterations of `loop` may write one element: a store inside it (to an
    array it doesn't allocate) none of whose subscripts takes a different value in each
    iteration (`H[idx[i]] += 1`, `y[j // 4] += x[j]`, `y[perm[i], j]` for i; not
    `y[perm[i], j]` for j). Its lanes would read an element before any lane wrote it
    (counts lost), its threads write it in any order: it stays serial, in the serial
    order (a user's `vectorize` or `bind` is the user's promise that they never meet).
    Not the loop `_collapsed_rows` made (`collapsed`'s second), which spreads over its
    arrays' rows and columns together (`y[ij // m, ij % m]`: `//` and `%` hide it)."""
    if collapsed is not None and loop.var == collapsed[1].var:
        return False
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
    terms = [(a, c) for a, c in lin.terms if mentions_loop_var(a, var)]
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
        uses = [mentions_loop_var(i, lp.var) for i in index]
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
    axes = [a for a, sub in enumerate(index) if mentions_loop_var(sub, var)]
    if len(axes) != 1 or axes[0] == len(index) - 1:
        return False
    lin = linear(index[axes[0]])
    if lin is None:
        return False
    step = lin.coeff(LoopVar(var))
    if any(mentions_loop_var(a, var) for a, _ in lin.without([LoopVar(var)]).terms):
        return False
    return 2 <= step * row <= SHORT_ROW


def _width(kernel: Kernel, lp: Loop) -> int:
    sizes = [max(4, e.dtype.itemsize) for e in walk_all_exprs(lp.body) if isinstance(e, Load)]
    sizes += [
        max(4, kernel.buffer(st.buffer).dtype.itemsize)
        for st in walk_stmts(lp.body)
        if isinstance(st, Store)
    ]
    return VECTOR_BYTES // max(sizes, default=4)
