"""`cache`: stage the part of a buffer that one iteration of a loop uses into a local copy.

At the start of each iteration of loop `at`, the box of `buffer` that the statements
inside `at` touch (found by footprint inference, kdsl/schedule/bounds.py) is copied into
a new temporary, and those statements use the copy. On CPU this is packing: a panel of
a matmul operand read with a large stride becomes a small contiguous array, reused by
every iteration of the loops inside `at`. On GPU the copy lives in shared memory.

A buffer that is also written inside `at` is copied in, used, and copied back after the
body (read-modify-write), so elements of the box that the body does not write keep
their values. The copy back writes the whole box: if iterations of a parallel loop
around `at` had overlapping boxes they would race, so caching a written buffer inside a
loop that is already parallel is refused, and so is parallelizing a loop around such a
copy later (`copies_back`).

A copy of a buffer only read may hold its values converted to a wider dtype (`dtype`:
bf16 widened to f32, say) when the wider one holds every value of the buffer's exactly:
the conversion is then made once per element copied instead of at each read (a
matmul's packed panels, read once per row of the other operand), and reads that
convert to that dtype read the copy as it is.

An access that the bounds pass could not prove in bounds (`checked`, checked at each
element) must still fail outside the buffer, and a subscript past the buffer's end may
be inside the box, where nothing was copied. Such a read of a buffer that is only read
keeps reading the buffer itself (a gather need not be affine then); the copy of a
buffer also written checks such an access against the buffer's shape.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import replace

from kdsl.ir.affine import Lin, linear
from kdsl.ir.build import index_const, index_op
from kdsl.ir.layout import temp_scope
from kdsl.ir.nodes import (
    Allocate,
    BinaryOp,
    Buffer,
    BufferRole,
    Cast,
    Const,
    Expr,
    If,
    Load,
    Loop,
    LoopExec,
    LoopKind,
    LoopVar,
    Scope,
    Stmt,
    Store,
)
from kdsl.ir.visit import walk_all_exprs, walk_stmts
from kdsl.schedule import layouts, tree
from kdsl.schedule.bounds import (
    NotAffine,
    Span,
    Window,
    region,
    relative,
    size_expr,
)
from kdsl.schedule.distribute import upper_bound
from kdsl.schedule.step import StepContext
from kdsl.types import DType, Kind, as_dtype

SCOPES = {"stack": Scope.STACK, "heap": Scope.HEAP, "shared": Scope.SHARED}
STACK_MAX_BYTES = 1 << 20  # an explicit scope="stack" copy may be this large
VECTOR_BYTES = 64  # the copy loops' vectors on CPU: one AVX-512 register
_SERIAL_EXECS = (LoopExec.SERIAL, LoopExec.UNROLLED, LoopExec.VECTORIZED)


def cache(
    ctx: StepContext,
    buffer: object,
    at: object,
    layout: object = None,
    scope: object = None,
    dtype: object = None,
) -> str:
    """Copy the box of `buffer` used in one iteration of loop `at` into a local buffer,
    at the start of each iteration; returns the local buffer's name (`B.c`).

    It requires: every access of `buffer` inside `at` (but a checked read: see the
    module) is affine in the loops inside `at` and their quotients by constants (`lane
    // 8`; loops outside are fixed for the iteration); the box's size does not depend on
    loops outside `at` (tiles give constant sizes); `buffer` is not allocated inside
    `at`. `layout` is None or "packed" (the box, dense, in the buffer's axis order),
    "transposed" (axes reversed), or a permutation of the axes ("1,0" or [1, 0]): axis k
    of the copy is axis layout[k] of the buffer, whole or cut in blocks ("1//16,0,1%16",
    or `lambda k, n: (n // 16, k, n % 16)`: micro-panels, kdsl/schedule/layouts.py; a
    subscript `16·x + y` with y a loop of at most 16 iterations is read off as block x,
    element y); or "vnni" for a 2-D buffer of 1- or 2-byte elements that is only read:
    rows in groups of g (4 bytes' worth: 2 bf16, 4 int8) interleaved along the columns,
    `copy[r // g, c·g + r % g] = box[r, c]`, the operand layout of the CPU's dot-product
    instructions (a matmul's B for vdpbf16ps or vpdpbusd). `scope` is None (stack when
    small and of constant size, else heap), "stack", "heap", or "shared" (GPU schedules
    only). `dtype` (a buffer only read) makes the copy hold its values converted to a
    dtype that represents each of them exactly (`kd.f32` for a bf16, f16, int8 or int16
    buffer).

    The copy loops are parallel, named after the copy (`B.c0` outermost, `B.c1`, …; the
    copy back `B.cw0`, …), innermost along the copy's last axis so their stores are
    contiguous. On CPU, when that axis is also the buffer's last one (any layout that
    keeps the last axis last, "packed" included), the innermost copy loop is vectorized
    with 64-byte vectors, so a copy runs at memory speed without a schedule step of its
    own; a copy outside every parallel loop can be parallelized (`B.c0`).

        for ko:                               for ko:
          for ii: for ki: for ji:               allocate B.c      # [64, 32]
            … B[ko*64 + ki, jo*32 + ji]    →    for B.c0 in range(min(64, K - ko * 64)):
                                                  for B.c1 in range(min(32, N - jo * 32)):  # vectorized(16)
                                                    B.c[B.c0, B.c1] = B[ko * 64 + B.c0, jo * 32 + B.c1]
                                                for ii: for ki: for ji:
                                                  … B.c[ki, ji]
    """
    buf = _buffer(ctx, buffer)
    path, loop = ctx.loop(at)
    group = _vnni_group(ctx, buf) if layout == "vnni" else 1
    parts = _layout(ctx, "packed" if group > 1 else layout, buf)
    written = _check_loop(ctx, buf, path, loop)
    if written and group > 1:
        raise ctx.refuse(
            f"'{buf.name}' is written inside loop '{loop.var}', and a \"vnni\" copy is only read",
            'cache it with layout="packed", or cache a buffer that the loop only reads',
        )
    held = _held_dtype(ctx, buf, dtype, written, group)
    uses = _uses(ctx, buf, loop, written)
    spans, windows = _region(ctx, buf, path, loop, uses)
    shape = tuple(_part_extent(p, size_expr(spans[p.axis].size)) for p in parts)
    if group > 1:
        rows, cols = shape
        shape = (_ceil_div(rows, group), index_op(BinaryOp.MUL, cols, index_const(group)))
    local = Buffer(
        ctx.fresh(f"{buf.name}.c"),
        held,
        shape,
        BufferRole.TEMP,
        _scope(ctx, scope, buf, shape, held),
        loc=ctx.loc,
    )
    around = tree.enclosing(ctx.kernel.body, path)
    vectorized = any(isinstance(s, Loop) and s.exec is LoopExec.VECTORIZED for s in around)
    copy = _Copy(ctx, buf, local, spans, windows, parts, loop, vectorized, group, written)
    body = (Allocate(local.name, loc=ctx.loc), copy.inward(), *copy.retarget(loop.body))
    if written:
        body += (copy.outward(),)
    ctx.kernel = replace(
        ctx.kernel,
        body=tree.splice(ctx.kernel.body, path, (replace(loop, body=body),)),
        buffers=(*ctx.kernel.buffers, local),
    )
    return local.name


def copies_back(loop: Loop) -> list[str]:
    """The buffers that a cached copy is written back to inside `loop`, where `loop` is
    not one of the write-back's own loops (its body more than the copy): the boxes that
    iterations of `loop` running at once would write back may overlap."""
    stmts = list(walk_stmts(loop.body))
    backs = [st.buffer for st in stmts if isinstance(st, Store) and st.copy_back]
    copying = all(
        isinstance(st, Loop | If) or isinstance(st, Store) and st.copy_back for st in stmts
    )  # (an If: a block's element tested against the box, in a blocked layout)
    return [] if copying else backs


def _buffer(ctx: StepContext, name: object) -> Buffer:
    if not isinstance(name, str):
        raise ctx.refuse(f"{name!r} is not a buffer name", "name the buffer by its string")
    try:
        return ctx.kernel.buffer(name)
    except KeyError:
        names = ", ".join(b.name for b in ctx.kernel.buffers)
        raise ctx.refuse(
            f"there is no buffer named '{name}'", f"cache one of the buffers: {names}"
        ) from None


def _layout(ctx: StepContext, layout: object, buf: Buffer) -> tuple[layouts.Part, ...]:
    """The copy's axes: which axis of the buffer each walks, whole or cut in blocks."""
    try:
        return layouts.parse(layout, buf.ndim)
    except layouts.LayoutError as err:
        raise ctx.refuse(
            f"layout {layout!r} does not lay out the {buf.ndim} axes of '{buf.name}': {err}",
            'use layout="packed", "transposed", "vnni", a permutation such as "1,0" (axis k '
            "of the copy is axis layout[k] of the buffer), or blocks such as "
            '"1//16,0,1%16" (= lambda k, n: (n // 16, k, n % 16))',
        ) from None


def _held_dtype(ctx: StepContext, buf: Buffer, dtype: object, written: bool, group: int) -> DType:
    """The dtype of the copy's elements: the buffer's, or `dtype` where it may convert."""
    if dtype is None:
        return buf.dtype
    try:
        dtype = as_dtype(dtype)
    except TypeError:
        raise ctx.refuse(
            f"dtype={dtype!r} is not a kdsl dtype", "pass one such as kd.f32"
        ) from None
    if dtype == buf.dtype:
        return buf.dtype
    if written:
        raise ctx.refuse(
            f"'{buf.name}' is written inside the loop, and its copy is copied back, so it "
            f"can't hold {dtype.name} values",
            "leave out dtype=, or cache a buffer that the loop only reads",
        )
    if group > 1:
        raise ctx.refuse(
            f'a "vnni" copy interleaves {buf.dtype.name} pairs for dot-product '
            f"instructions, and can't hold {dtype.name} values",
            'leave out dtype=, or use layout="packed"',
        )
    if not holds_exactly(dtype, buf.dtype):
        raise ctx.refuse(
            f"a copy of '{buf.name}' ({buf.dtype.name}) in {dtype.name} would change values: "
            f"{dtype.name} does not hold every {buf.dtype.name} exactly",
            "convert to a wider dtype (kd.f32 holds every bf16, f16, int8 and int16 value), "
            "or leave out dtype=",
        )
    return dtype


_SIGNIFICAND_BITS = {"bf16": 8, "f16": 11, "f32": 24, "f64": 53}


def holds_exactly(wide: DType, narrow: DType) -> bool:
    """Whether every value of `narrow` is a value of `wide`."""
    if narrow.is_bool or wide.is_bool:
        return False
    if wide.is_float:
        if narrow.is_float:
            return wide.bits > narrow.bits
        return narrow.bits <= _SIGNIFICAND_BITS[wide.name]
    if narrow.is_float:
        return False
    if narrow.kind is wide.kind:
        return wide.bits > narrow.bits
    return narrow.kind is Kind.UINT and wide.bits > narrow.bits  # unsigned into signed


def _vnni_group(ctx: StepContext, buf: Buffer) -> int:
    """Rows per group of a "vnni" copy: as many as fill 4 bytes."""
    if buf.ndim != 2 or buf.dtype.itemsize > 2 or buf.dtype.is_bool:
        raise ctx.refuse(
            f'layout "vnni" interleaves the rows of a 2-D buffer of 1- or 2-byte '
            f"elements, and '{buf.name}' is {buf.ndim}-D {buf.dtype}",
            'use layout="packed" for it',
        )
    return 4 // buf.dtype.itemsize


def _ceil_div(n: Expr, g: int) -> Expr:
    if isinstance(n, Const):  # (a copy of constant size stays on the stack)
        return index_const(-(-int(n.value) // g))
    return index_op(
        BinaryOp.FLOORDIV, index_op(BinaryOp.ADD, n, index_const(g - 1)), index_const(g)
    )


def _divmod(row: Expr, g: int, bounds: Mapping[str, int]) -> tuple[Expr, Expr]:
    """(row // g, row % g), read off `g·x + y` when y is a loop of at most g iterations
    (`bounds`: a loop split by g), so the inner loop keeps a plain subscript."""
    lin = linear(row)
    if lin is not None and lin.is_const:
        return index_const(lin.const // g), index_const(lin.const % g)
    if lin is not None and lin.const % g == 0:
        small = [
            a
            for a, c in lin.terms
            if c == 1 and isinstance(a, LoopVar) and bounds.get(a.name, g + 1) <= g
        ]
        if small and all(c % g == 0 for a, c in lin.terms if a != small[0]):
            rest = Lin(lin.const // g, tuple((a, c // g) for a, c in lin.terms if a != small[0]))
            return rest.expr(), small[0]
    return (
        index_op(BinaryOp.FLOORDIV, row, index_const(g)),
        index_op(BinaryOp.MOD, row, index_const(g)),
    )


def _block_left(count: Expr, block: Expr, g: int) -> Expr:
    """The elements of block `block` (of g) among `count`: min(g, count - g·block)."""
    left = index_op(BinaryOp.SUB, count, index_op(BinaryOp.MUL, block, index_const(g)))
    return index_op(BinaryOp.MIN, index_const(g), left)


def _interleaved(col: Expr, member: Expr, g: int) -> Expr:
    """Column `col`, row `member` of its group, in a "vnni" copy's row: g·col + member."""
    return index_op(BinaryOp.ADD, index_op(BinaryOp.MUL, col, index_const(g)), member)


def _check_loop(ctx: StepContext, buf: Buffer, path: tree.Path, loop: Loop) -> bool:
    """Whether `buf` is written inside `loop` (refusing what cache can't do)."""
    stmts = tuple(walk_stmts(loop.body))
    reads = any(isinstance(e, Load) and e.buffer == buf.name for e in walk_all_exprs(loop.body))
    writes = any(isinstance(s, Store) and s.buffer == buf.name for s in stmts)
    if not (reads or writes):
        raise ctx.refuse(
            f"'{buf.name}' is not used inside loop '{loop.var}'",
            f"cache a buffer that loop '{loop.var}' reads or writes",
        )
    if any(isinstance(s, Allocate) and s.buffer == buf.name for s in stmts):
        raise ctx.refuse(
            f"'{buf.name}' is allocated inside loop '{loop.var}'",
            f"cache it at a loop inside the one that allocates '{buf.name}'",
        )
    if loop.exec is LoopExec.VECTORIZED:
        raise ctx.refuse(
            f"loop '{loop.var}' is vectorized, and a vector loop can't contain the copy loops",
            f"cache before vectorizing, or at a loop around '{loop.var}'",
        )
    around = [s for s in tree.enclosing(ctx.kernel.body, path) if isinstance(s, Loop)]
    parallel = [lp.var for lp in (*around, loop) if lp.exec not in _SERIAL_EXECS]
    if writes and parallel:
        raise ctx.refuse(
            f"'{buf.name}' is written inside loop '{loop.var}', so its copy is written back, "
            f"and loop '{parallel[0]}' around it is already parallel: copies written back "
            "by different threads could overlap",
            f"cache '{buf.name}' before parallelizing, or cache a buffer that is only read",
        )
    return writes


def _uses(ctx: StepContext, buf: Buffer, loop: Loop, written: bool) -> list[tuple[Expr, ...]]:
    """The subscripts of the accesses of `buf` inside `loop` that the copy serves."""
    loads = [e for e in walk_all_exprs(loop.body) if isinstance(e, Load) and e.buffer == buf.name]
    uses = [e.index for e in loads if written or not e.checked]
    uses += [
        s.index for s in walk_stmts(loop.body) if isinstance(s, Store) and s.buffer == buf.name
    ]
    if not uses:
        where = f" (line {loads[0].loc.line})" if loads[0].loc else ""
        raise ctx.refuse(
            f"every read of '{buf.name}' inside loop '{loop.var}'{where} is checked at each "
            f"element (nothing proves it inside '{buf.name}'), so those reads keep reading "
            f"'{buf.name}' and a copy would serve none",
            f"guard the subscripts so that kdsl proves them (kd.when(i + 1 < "
            f"{buf.name}.shape[0]), kd.where), or leave '{buf.name}' uncached",
        )
    return uses


def _region(
    ctx: StepContext, buf: Buffer, path: tree.Path, loop: Loop, uses: list[tuple[Expr, ...]]
) -> tuple[tuple[Span, ...], tuple[Window, ...]]:
    """The box of `buf` that `uses` touch in one iteration of `loop`, and its part
    inside `buf`."""
    around = [s for s in tree.enclosing(ctx.kernel.body, path) if isinstance(s, Loop)]
    try:
        return region(around, loop, uses, buf.shape)
    except NotAffine as err:
        raise ctx.refuse(
            f"the part of '{buf.name}' used in one iteration of loop '{loop.var}' can't be "
            f"bounded: {err}",
            f"cache '{buf.name}' at a loop whose inner loops access it at affine subscripts "
            "(like B[k, j + 1]) over constant tiles (split them first)",
        ) from None


def _scope(
    ctx: StepContext, scope: object, buf: Buffer, shape: tuple[Expr, ...], held: DType
) -> Scope:
    itemsize = held.itemsize  # (the copy's elements, maybe wider than the buffer's)
    if scope is None:
        return temp_scope(shape, itemsize)
    if scope not in SCOPES:
        raise ctx.refuse(
            f"{scope!r} is not a memory scope for a cached copy",
            "use scope='stack', 'heap', 'shared' (GPU), or leave it out to choose by size",
        )
    if scope == "shared" and ctx.target != "cuda":
        raise ctx.refuse(
            f"shared memory exists only on GPUs, and this is a {ctx.target} schedule",
            f"leave scope out for the copy of '{buf.name}' on CPU (stack or heap by size); "
            "use scope='shared' in a schedule for kd.cuda",
        )
    if scope == "stack":
        sizes = [int(d.value) for d in shape if isinstance(d, Const)]
        if len(sizes) != len(shape):
            raise ctx.refuse(
                f"the copy of '{buf.name}' has a size known only at run time, so it can't "
                "live on the stack",
                "split the loops inside the cached loop by constant factors, or use scope='heap'",
            )
        size = itemsize
        for n in sizes:
            size *= n
        if size > STACK_MAX_BYTES:
            raise ctx.refuse(
                f"the copy of '{buf.name}' takes {size} bytes, more than the "
                f"{STACK_MAX_BYTES} allowed on the stack",
                "use smaller tiles, or scope='heap'",
            )
    return SCOPES[str(scope)]


def _part_extent(part: layouts.Part, size: Expr) -> Expr:
    """The extent of a copy's axis over `size` elements of its buffer axis."""
    if not part.block:
        return size
    return index_const(part.block) if part.inner else _ceil_div(size, part.block)


def _vector_copy(
    ctx: StepContext, buf: Buffer, parts: tuple[layouts.Part, ...], inside: bool
) -> bool:
    """Whether the innermost copy loops run as vector code: on CPU, when they walk both
    the buffer and the copy with unit stride (the copy's last axis is the buffer's last,
    whole or the elements of its blocks) and no loop around them is a vector loop already."""
    last = parts[-1] if parts else None
    return (
        ctx.target == "cpu"
        and not inside
        and last is not None
        and last.axis == buf.ndim - 1
        and (last.inner or not last.block)
    )


class _Copy:
    """The copy loops between a buffer's box and its local copy, and the rewrite of the
    accesses to use the copy."""

    def __init__(
        self,
        ctx: StepContext,
        buf: Buffer,
        local: Buffer,
        spans: tuple[Span, ...],
        windows: tuple[Window, ...],
        parts: tuple[layouts.Part, ...],
        at: Loop,
        vectorized: bool,
        group: int = 1,
        written: bool = False,
    ) -> None:
        self.ctx, self.buf, self.local = ctx, buf, local
        self.spans, self.windows, self.parts, self.at = spans, windows, parts, at
        self.group, self.written = group, written
        self.vectors = group == 1 and _vector_copy(ctx, buf, parts, vectorized)

    @functools.cached_property
    def _inner_bounds(self) -> dict[str, int]:
        """The constant bounds of the loops inside `at` (most iterations each runs)."""
        inner = [s for s in walk_stmts(self.at.body) if isinstance(s, Loop)]
        return {
            lp.var: int(bound.value)
            for lp in inner
            if isinstance(bound := upper_bound(lp.extent), Const)
        }

    def local_index(
        self,
        index: tuple[Expr, ...],
        checked: bool = False,
        copying: Mapping[str, int] | None = None,
    ) -> tuple[Expr, ...]:
        """The copy's subscript for the buffer's `index`; `copying`: the bounds of the copy
        loops around it (the loops over a block's elements), besides those inside `at`."""
        rel = relative(index, self.spans, self.buf.shape if checked else None)
        bounds = {**self._inner_bounds, **copying} if copying else self._inner_bounds
        if self.group > 1:
            row, col = rel
            high, low = _divmod(row, self.group, bounds)
            return high, _interleaved(col, low, self.group)
        out = []
        for p in self.parts:
            out.append(_divmod(rel[p.axis], p.block, bounds)[p.inner] if p.block else rel[p.axis])
        return tuple(out)

    def inward(self) -> Stmt:
        """local[...] = buf[...], loops in the copy's axis order (contiguous stores)."""
        if self.group > 1:
            return self._grouped_nest()
        return self._nest(self.parts, "", inward=True)

    def _grouped_nest(self) -> Stmt:
        """The copy into a "vnni" layout: over row groups, columns, rows of the group, so
        that the stores are contiguous."""
        g = self.group
        names = [self.ctx.fresh(f"{self.local.name}{k}") for k in range(3)]
        group, col, member = (LoopVar(n) for n in names)
        rows, cols = (w.count for w in self.windows)
        row = index_op(BinaryOp.ADD, index_op(BinaryOp.MUL, group, index_const(g)), member)
        where = (
            (self.windows[0].start + Lin.of(row)).expr(),
            (self.windows[1].start + Lin.of(col)).expr(),
        )
        here = (group, _interleaved(col, member, g))
        stmt: Stmt = Store(self.local.name, here, Load(self.buf.name, where, self.buf.dtype))
        extents = (_ceil_div(rows, g), cols, _block_left(rows, group, g))
        for n, extent in reversed(list(zip(names, extents))):
            stmt = Loop(n, extent, LoopKind.PARALLEL, (stmt,), loc=self.ctx.loc)
        return stmt

    def outward(self) -> Stmt:
        """buf[...] = local[...], loops in the buffer's axis order (contiguous stores),
        or in the copy's where it cuts axes in blocks."""
        whole = tuple(layouts.Part(d) for d in range(self.buf.ndim))
        return self._nest(self.parts if layouts.blocked(self.parts) else whole, "w", False)

    def _nest(self, parts: tuple[layouts.Part, ...], tag: str, inward: bool) -> Stmt:
        names = [self.ctx.fresh(f"{self.local.name}{tag}{k}") for k in range(len(parts))]
        var = {(p.axis, p.inner): LoopVar(n) for p, n in zip(parts, names)}
        offsets, copying = [], {}
        for d in range(self.buf.ndim):
            block = next((p.block for p in parts if p.axis == d), 0)
            if block:  # element block·outer + inner of the window
                offset = Lin.of(var[d, False]) * block + Lin.of(var[d, True])
                copying[var[d, True].name] = block
            else:
                offset = Lin.of(var[d, False])
            offsets.append(offset)
        where = tuple((w.start + o).expr() for w, o in zip(self.windows, offsets))
        here = self.local_index(where, copying=copying)
        stmt: Stmt = (
            Store(
                self.local.name, here, self._converted(Load(self.buf.name, where, self.buf.dtype))
            )
            if inward
            else Store(
                self.buf.name, where, Load(self.local.name, here, self.buf.dtype), copy_back=True
            )
        )
        extents = []
        for k, p in enumerate(parts):
            count = self.windows[p.axis].count
            if not p.block:
                extents.append(count)
            elif not p.inner:
                extents.append(_ceil_div(count, p.block))
            elif any(q.axis == p.axis for q in parts[:k]):  # (inside its block's loop)
                extents.append(_block_left(count, var[p.axis, False], p.block))
            else:  # outside it: a block's whole width, each element tested at the store
                extents.append(index_op(BinaryOp.MIN, index_const(p.block), count))
                stmt = If(index_op(BinaryOp.LT, offsets[p.axis].expr(), count), (stmt,))
        lanes = self._lanes(parts[-1]) if self.vectors else 0  # (a 0-d buffer: no parts)
        for n, extent in reversed(list(zip(names, extents))):
            stmt = Loop(n, extent, LoopKind.PARALLEL, (stmt,), loc=self.ctx.loc)
            if n == names[-1] and lanes:
                stmt = replace(stmt, exec=LoopExec.VECTORIZED, width=lanes)
        return stmt

    def _lanes(self, innermost: layouts.Part) -> int:
        """The vector width of the innermost copy loop: a full vector, or for the elements
        of a block, the widest power of two within the block (none under 4: a masked
        vector a block of 2 or 3 would cost more than its scalar copies)."""
        lanes = max(2, min(64, VECTOR_BYTES // self.local.dtype.itemsize))
        if not innermost.inner:
            return lanes
        within = 1 << (innermost.block.bit_length() - 1)
        return min(lanes, within) if within >= 4 else 0

    def _converted(self, value: Expr) -> Expr:
        held = self.local.dtype
        return value if held == self.buf.dtype else Cast(value, held)

    def retarget(self, stmts: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
        """`stmts` with the accesses of the buffer that the copy serves made accesses of
        the copy (a checked read of a buffer only read keeps reading the buffer). A copy
        in another dtype is read back as the buffer's dtype, and a conversion of that to
        the copy's dtype reads the copy as it is (exact: the copy holds every value)."""
        name, local, held = self.buf.name, self.local.name, self.local.dtype
        # the casts made below (not the kernel's own), kept alive so no id is reused
        reads_back: dict[int, Cast] = {}

        def expr(e: Expr) -> Expr | None:
            if isinstance(e, Load) and e.buffer == name and (self.written or not e.checked):
                index = self.local_index(e.index, e.checked)
                copy = replace(e, buffer=local, index=index, dtype=held)
                if held == e.dtype:
                    return copy
                back = Cast(copy, e.dtype)
                reads_back[id(back)] = back
                return back
            if isinstance(e, Cast) and reads_back.get(id(e.operand)) is e.operand:
                inner = reads_back[id(e.operand)].operand  # the copy's read, converted again
                return inner if e.dtype == held else Cast(inner, e.dtype)
            return None

        def stmt(s: Stmt) -> Stmt:
            if isinstance(s, Store) and s.buffer == name:
                index = self.local_index(s.index, s.checked)
                return replace(s, buffer=self.local.name, index=index)
            return s

        return tree.rewrite(stmts, expr, stmt)
