"""Scheduled IR → GPU launches: which statements each launch runs, its grid and block,
and what the host does around them (shape checks, allocating top-level temporaries).

A loop bound to a GPU axis runs its iterations spread over that axis: iteration `v` on
the block (or thread) whose index is `v` modulo the axis' size, so any extent is right
— one guarded iteration per index when the extent fits, a strided loop when it does
not. Block-bound loops must enclose everything else of their launch (blocks can't wait
for one another), so each top-level nest holding one is a launch of its own, and the
statements between such nests run in single-block launches, in order on one stream.
A top-level `if` on shapes and scalars around such nests (the versions `specialize`
makes) is a launch per nest whose blocks each test the condition.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kdsl.errors import CompileError
from kdsl.ir.affine import constant_bound
from kdsl.ir.evaluate import evaluate
from kdsl.ir.layout import constant_nbytes
from kdsl.ir.nodes import (
    Allocate,
    Binary,
    BinaryOp,
    Cast,
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
    ScalarArg,
    Select,
    Stmt,
    Store,
    Unary,
)
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import walk_all_exprs, walk_expr, walk_stmts
from kdsl.types import INDEX

BLOCK_AXES = {LoopExec.GPU_BLOCK_X: 0, LoopExec.GPU_BLOCK_Y: 1, LoopExec.GPU_BLOCK_Z: 2}
THREAD_AXES = {LoopExec.GPU_THREAD_X: 0, LoopExec.GPU_THREAD_Y: 1, LoopExec.GPU_THREAD_Z: 2}
DEFAULT_THREADS = (256, 4, 1)  # a thread axis whose loop extent is not a constant
MAX_THREADS = 1024
MAX_GRID = (2**31 - 1, 65535, 65535)  # larger extents loop over the grid
WARP = 32


SHARED_BYTES = 48 * 1024  # static shared memory a block may have without opting in
LOCAL_BYTES = 4 * 1024  # a per-thread temporary larger than this goes to scratch
# shared memory a block may have in all when its kernel opts in (dynamic shared memory,
# cuFuncSetAttribute), by architecture: the CUDA programming guide's table of compute
# capabilities. Other architectures keep the static 48 KB.
OPT_IN_SHARED = {
    "sm_80": 163 * 1024,
    "sm_86": 99 * 1024,
    "sm_87": 163 * 1024,
    "sm_89": 99 * 1024,
    "sm_90": 227 * 1024,
}
COMPILER_SHARED = 1024  # kept for the code generator's own tables (block reductions)


def shared_limit(sm: str) -> int:
    """Shared memory a block of a kernel built for `sm` may have, opting in."""
    return OPT_IN_SHARED.get(sm.removesuffix("a"), SHARED_BYTES)


@dataclass(frozen=True)
class Temp:
    """Where a temporary allocated inside a launch lives: 'local' (each thread's own),
    'shared' (the block's; 'dynamic-shared' past the static 48 KB, where the kernel
    opts in to more), 'warp-shared' (a copy in shared memory per warp: a tile
    product's accumulator, whose fragments the warp's lanes hold; 'warp-dynamic' past
    the static 48 KB), or a slice of the global scratch buffer per block or per thread
    (dynamic sizes, or too large for the others)."""

    buffer: str
    place: str  # local, shared, dynamic-shared, warp-shared, warp-dynamic, block-scratch
    # or thread-scratch
    nbytes: Expr  # its size (a constant unless in scratch; a warp's: all warps' copies)


@dataclass(frozen=True)
class Launch:
    """One kernel launch: its statements, the extents that size its grid (None: 1), its
    block shape (threads per axis; a constant of the compiled code) and temporaries."""

    index: int
    body: tuple[Stmt, ...]
    grid: tuple[Expr | None, Expr | None, Expr | None]
    block: tuple[int, int, int]
    temps: tuple[Temp, ...] = ()
    warp_code: bool = False  # tile products on warps: x is a warp's 32 lanes

    def scratch(self, place: str) -> tuple[Temp, ...]:
        return tuple(t for t in self.temps if t.place == place)

    @property
    def dynamic_shared(self) -> int:
        """Bytes of dynamic shared memory a block of this launch needs."""
        sizes = (int(t.nbytes.value) for t in self._dynamic())  # type: ignore[attr-defined]
        return sum(map(_align, sizes))

    def dynamic_offset(self, name: str) -> int:
        """Where temporary `name` starts in the block's dynamic shared memory."""
        mine = [t.buffer for t in self._dynamic()]
        before = self._dynamic()[: mine.index(name)]
        return sum(_align(int(t.nbytes.value)) for t in before)  # type: ignore[attr-defined]

    def _dynamic(self) -> tuple[Temp, ...]:
        return tuple(t for t in self.temps if t.place in ("dynamic-shared", "warp-dynamic"))

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]


@dataclass(frozen=True)
class Plan:
    launches: tuple[Launch, ...]
    host_checks: tuple[Check, ...]  # evaluated from shapes and scalars before launching
    host_temps: tuple[str, ...]  # top-level temporaries: allocated by the host


def host_evaluable(e: Expr) -> bool:
    """Made of shapes, scalars and constants only: the host can compute it."""
    return all(
        isinstance(x, Const | DimOf | ScalarArg | Binary | Unary | Cast | Select)
        for x in walk_expr(e)
    )


def _refuse(kernel: Kernel, what: str, fix: str, loop: Loop | None = None) -> CompileError:
    return CompileError(what, kernel=kernel.name, loc=loop.loc if loop else None, fix=fix)


def plan(kernel: Kernel, shared: int = SHARED_BYTES) -> Plan:
    """Split the kernel's top-level statements into launches (see the module docstring);
    a block may have `shared` bytes of shared memory (`shared_limit` of the GPU)."""
    checks: list[Check] = []
    temps: list[str] = []
    groups: list[list[Stmt]] = [[]]
    for s in kernel.body:
        if isinstance(s, Check) and host_evaluable(s.cond):
            checks.append(s)
        elif isinstance(s, Allocate):
            temps.append(s.buffer)
        elif isinstance(s, Loop) and _binds_blocks(s):
            groups += [[s], []]
        elif isinstance(s, If) and _binds_blocks(s):
            nests, allocated = _versions(kernel, s, ())
            groups += [[nest] for nest in nests] + [[]]
            temps += allocated
        else:
            groups[-1].append(s)
    bodies = [tuple(g) for g in groups if g]
    _check_locals(kernel, bodies)
    launches = tuple(_launch(kernel, n, body, shared) for n, body in enumerate(bodies))
    return Plan(launches, tuple(checks), tuple(temps))


def _versions(kernel: Kernel, version: If, tests: tuple[Expr, ...]) -> tuple[list[Loop], list[str]]:
    """`if cond: nest` (a version of a nest picked by shapes: `specialize`, perhaps
    within another's) as launches of their own: each nest's blocks test the conditions,
    inside its block-bound loops (a launch whose blocks all find them false does
    nothing). The nests, and the temporaries the versions allocate (by the host, as a
    kernel's top-level ones)."""
    if not host_evaluable(version.cond):
        raise CompileError(
            f"loops bound to blocks are inside an if whose test ({format_expr(version.cond)}) "
            "reads memory or a loop's variable: the blocks can't all make it before they start",
            kernel=kernel.name,
            loc=version.loc,
            fix="test it inside the block-bound loops (or, for specialize, choose a loop whose "
            "extent is made of shapes and scalars)",
        )
    tests = (*tests, version.cond)
    nests: list[Loop] = []
    temps: list[str] = []
    for s in version.then:
        if isinstance(s, If) and _binds_blocks(s):
            more, allocated = _versions(kernel, s, tests)
            nests, temps = nests + more, temps + allocated
        elif isinstance(s, Loop) and s.exec in BLOCK_AXES:
            nests.append(_test_in_blocks(kernel, s, tests))
        elif isinstance(s, Allocate):
            temps.append(s.buffer)
        else:
            raise CompileError(
                "an if around loops bound to blocks holds other statements too, which "
                "the blocks can't share",
                kernel=kernel.name,
                loc=version.loc,
                fix="move those statements out of the if, or test the condition inside the "
                "block-bound loops",
            )
    return nests, temps


def _test_in_blocks(kernel: Kernel, nest: Loop, tests: tuple[Expr, ...]) -> Loop:
    """`nest` with its blocks testing `tests`: inside its perfectly nested block loops."""
    body = nest.body
    if len(body) == 1 and isinstance(body[0], Loop) and body[0].exec in BLOCK_AXES:
        return replace(nest, body=(_test_in_blocks(kernel, body[0], tests),))
    if any(_binds_blocks(s) for s in body):
        raise _refuse(
            kernel,
            f"loop '{nest.var}' and loops inside it are bound to blocks with statements "
            "between them, inside an if (a version of the nest: specialize), so the blocks "
            "can't test the condition",
            "bind perfectly nested loops to blocks there (or specialize only in the CPU schedule)",
            nest,
        )
    test = tests[0]
    for more in tests[1:]:
        test = Binary(BinaryOp.AND, test, more, more.dtype)
    return replace(nest, body=(If(test, body, loc=nest.loc),))


def _binds_blocks(s: Stmt) -> bool:
    return any(isinstance(x, Loop) and x.exec in BLOCK_AXES for x in walk_stmts((s,)))


def _check_locals(kernel: Kernel, bodies: list[tuple[Stmt, ...]]) -> None:
    """A top-level local lives in one launch's registers: no other launch can read it."""
    for n, body in enumerate(bodies):
        declared = {s.name for s in body if isinstance(s, DeclareLocal)}
        for m, other in enumerate(bodies):
            if m == n:
                continue
            used = {e.name for e in walk_all_exprs(other) if isinstance(e, LocalVar)}
            for name in sorted(declared & used):
                raise _refuse(
                    kernel,
                    f"the local '{name}' is set in one GPU launch and read in another "
                    "(a loop bound to GPU blocks separates them)",
                    "compute it inside the block-bound loop that uses it, or keep it in a "
                    "one-element array",
                )


def _launch(kernel: Kernel, index: int, body: tuple[Stmt, ...], shared: int) -> Launch:
    grid: list[Expr | None] = [None, None, None]
    block = [1, 1, 1]
    reduces = False
    _check_nesting(kernel, body, outside_blocks=True)
    for loop in (s for s in walk_stmts(body) if isinstance(s, Loop)):
        if loop.exec in BLOCK_AXES:
            axis = BLOCK_AXES[loop.exec]
            if not host_evaluable(loop.extent):
                raise _refuse(
                    kernel,
                    f"loop '{loop.var}' is bound to {loop.exec.value}, but its extent "
                    "depends on other loops, so the grid can't be sized before launching",
                    "bind loops whose extents come from shapes and scalars to blocks",
                    loop,
                )
            old = grid[axis]
            grid[axis] = (
                loop.extent if old is None else Binary(BinaryOp.MAX, old, loop.extent, INDEX)
            )
        elif loop.exec in THREAD_AXES:
            axis = THREAD_AXES[loop.exec]
            bound = constant_bound(loop.extent)
            if loop.width > 1:  # bind(..., threads=n): n of them, striding past n
                want = loop.width if bound is None else min(loop.width, bound)
            else:
                want = bound if bound is not None else DEFAULT_THREADS[axis]
            block[axis] = max(block[axis], max(1, want))
            reduces |= loop.kind is LoopKind.REDUCTION
    if reduces and block[0] > 1 and block[0] % WARP:
        block[0] += WARP - block[0] % WARP  # whole warps: extra threads run no iterations
    warp_code = any(isinstance(s, Loop) and s.exec is LoopExec.MMA for s in walk_stmts(body))
    if warp_code:  # thread.y and .z number the warps; a thread.x loop strides over 32
        _refuse_tiles_in_lanes(kernel, body)
        block[0] = WARP
    if block[0] * block[1] * block[2] > MAX_THREADS:
        raise _refuse(
            kernel,
            f"launch {index} needs {block[0]}×{block[1]}×{block[2]} threads per block, "
            f"more than the GPU's {MAX_THREADS}",
            "split the loops bound to threads by smaller factors",
        )
    threads = block[0] * block[1] * block[2]
    warps = block[1] * block[2] if warp_code else 0
    temps = tuple(_temps(kernel, body, threads, warps, shared))
    shape = (block[0], block[1], block[2])
    return Launch(index, body, (grid[0], grid[1], grid[2]), shape, temps, warp_code)


def _refuse_tiles_in_lanes(kernel: Kernel, body: tuple[Stmt, ...]) -> None:
    """A tile product (mma.sync) is a whole warp's: none may be inside a thread.x loop."""

    def visit(stmts: tuple[Stmt, ...], lanes: bool) -> None:
        for s in stmts:
            if isinstance(s, Loop) and s.exec is LoopExec.MMA and lanes:
                raise _refuse(
                    kernel,
                    f"the tile product '{s.var}' is inside a loop bound to thread.x, whose "
                    f"{WARP} threads are the warp that runs it",
                    "bind the loops over warps to thread.y or thread.z",
                    s,
                )
            if isinstance(s, Loop):
                visit(s.body, lanes or s.exec is LoopExec.GPU_THREAD_X)
            elif isinstance(s, If):
                visit(s.then, lanes)

    visit(body, False)


def _temps(
    kernel: Kernel, body: tuple[Stmt, ...], threads: int, warps: int, limit: int
) -> list[Temp]:
    """Place each temporary: one allocated inside a thread-bound loop (or in a launch of
    one thread per block) is the thread's own, except in a launch of warp code (`warps`
    > 0: tile products on mma.sync), where one allocated in a warp's code (inside loops
    bound to thread.y/z, not .x) is the warp's, in shared memory — its lanes share it as
    they share the warp's work; one allocated outside them is shared by the block's
    threads: in static shared memory while it fits, then in dynamic (up to `limit` in
    all), then in global scratch."""
    out: list[Temp] = []
    shared = dynamic = 0
    by_lanes = _written_by_lanes(body)

    def visit(stmts: tuple[Stmt, ...], per_thread: bool, per_lane: bool) -> None:
        nonlocal shared, dynamic
        for s in stmts:
            if isinstance(s, Allocate):
                buf = kernel.buffer(s.buffer)
                size = constant_nbytes(buf.shape, buf.dtype.itemsize)
                nbytes = _nbytes(buf.shape, buf.dtype.itemsize)
                if warps and per_thread and not per_lane:
                    most = _bounded_nbytes(buf.shape, buf.dtype.itemsize)
                    if most is None:
                        if buf.name in by_lanes:  # (each lane would fill only its part)
                            raise _refuse(
                                kernel,
                                f"the temporary '{buf.name}' of a warp's code is written by "
                                "the warp's lanes (a loop bound to thread.x), but its size "
                                "has no constant bound, so it can't be the warp's, in "
                                "shared memory",
                                "give it a constant shape (split its loops), or leave the "
                                "loop that fills it unbound: every lane then fills its own",
                            )
                        out.append(Temp(buf.name, "thread-scratch", nbytes))
                        continue
                    copies = _align(most) * warps
                    if shared + copies <= SHARED_BYTES:
                        shared += copies
                        out.append(Temp(buf.name, "warp-shared", Const(copies, INDEX)))
                        continue
                    dynamic += copies
                    if shared + dynamic > limit - COMPILER_SHARED:
                        raise _refuse(
                            kernel,
                            f"the warps' temporaries need {shared + dynamic} bytes of shared "
                            f"memory ({warps} warps), more than the {limit - COMPILER_SHARED} "
                            "a block may have on this GPU",
                            "use smaller tiles or fewer warps per block",
                        )
                    out.append(Temp(buf.name, "warp-dynamic", Const(copies, INDEX)))
                elif per_thread or threads == 1:
                    fits = size is not None and size <= LOCAL_BYTES
                    out.append(Temp(buf.name, "local" if fits else "thread-scratch", nbytes))
                elif size is not None and shared + _align(size) <= SHARED_BYTES:
                    shared += _align(size)
                    out.append(Temp(buf.name, "shared", nbytes))
                elif size is not None and shared + dynamic + _align(size) <= (
                    limit - COMPILER_SHARED
                ):
                    dynamic += _align(size)
                    out.append(Temp(buf.name, "dynamic-shared", Const(size, INDEX)))
                else:
                    out.append(Temp(buf.name, "block-scratch", nbytes))
            elif isinstance(s, Loop):
                lanes = per_lane or s.exec is LoopExec.GPU_THREAD_X
                visit(s.body, per_thread or s.exec in THREAD_AXES, lanes)
            elif isinstance(s, If):
                visit(s.then, per_thread, per_lane)

    visit(body, False, False)
    return out


def _bounded_nbytes(shape: tuple[Expr, ...], itemsize: int) -> int | None:
    """Bytes that hold a buffer of `shape` whatever its extents, when each has a constant
    bound (a tile's `min(c, n)`), else None."""
    size = itemsize
    for d in shape:
        constant = all(isinstance(x, Const | Binary) for x in walk_expr(d))
        most = int(evaluate(d, {}, {})) if constant else constant_bound(d)
        if most is None:
            return None
        size *= max(0, most)
    return size


def _written_by_lanes(body: tuple[Stmt, ...]) -> set[str]:
    """The buffers stored to inside loops bound to thread.x."""
    return {
        x.buffer
        for s in walk_stmts(body)
        if isinstance(s, Loop) and s.exec is LoopExec.GPU_THREAD_X
        for x in walk_stmts(s.body)
        if isinstance(x, Store)
    }


def _align(n: int) -> int:
    return -(-n // 16) * 16


def _nbytes(shape: tuple[Expr, ...], itemsize: int) -> Expr:
    """A buffer's size in bytes, rounded up to 16 (so slices after it stay aligned)."""
    size: Expr = Const(itemsize, INDEX)
    for d in shape:
        d = Binary(BinaryOp.MAX, d, Const(0, INDEX), INDEX)
        size = Binary(BinaryOp.MUL, size, d, INDEX)
    rounded = Binary(BinaryOp.ADD, size, Const(15, INDEX), INDEX)
    return Binary(
        BinaryOp.MUL,
        Binary(BinaryOp.FLOORDIV, rounded, Const(16, INDEX), INDEX),
        Const(16, INDEX),
        INDEX,
    )


def scratch_bytes(temps: tuple[Temp, ...]) -> Expr:
    """The bytes of the temporaries' slices together."""
    total: Expr = Const(0, INDEX)
    for t in temps:
        total = Binary(BinaryOp.ADD, total, t.nbytes, INDEX)
    return total


def _check_after_blocks(kernel: Kernel, body: tuple[Stmt, ...]) -> None:
    """In a block's code, what follows a loop bound to blocks inside it reads nothing
    that loop writes: other blocks write it, and a block can't wait for them (the parts
    of an rfactor bound to blocks inside another block-bound loop, combined after it)."""
    for n, s in enumerate(body):
        if not (isinstance(s, Loop) and s.exec in BLOCK_AXES):
            continue
        written = {x.buffer for x in walk_stmts(s.body) if isinstance(x, Store)}
        later = body[n + 1 :]
        read = sorted(written & {e.buffer for e in walk_all_exprs(later) if isinstance(e, Load)})
        if read:
            raise _refuse(
                kernel,
                f"after loop '{s.var}', bound to {s.exec.value} inside another block-bound "
                f"loop, the block reads '{read[0]}', which other blocks write in that loop: "
                "a block can't wait for the others",
                f"bind loop '{s.var}' to threads instead (a block's threads share it), or bind "
                "only the outer loop to blocks",
                s,
            )


def _check_nesting(kernel: Kernel, body: tuple[Stmt, ...], outside_blocks: bool) -> None:
    """Block-bound loops enclose the rest of their launch: only other block-bound loops
    may be around them."""
    for s in body:
        if isinstance(s, Loop):
            if s.exec in BLOCK_AXES and not outside_blocks:
                raise _refuse(
                    kernel,
                    f"loop '{s.var}' is bound to {s.exec.value} inside a loop or statement "
                    "that is not bound to blocks",
                    "bind the outermost loops of a nest to blocks (reorder first if needed)",
                    s,
                )
            _check_nesting(kernel, s.body, outside_blocks and s.exec in BLOCK_AXES)
            if s.exec in BLOCK_AXES:
                _check_after_blocks(kernel, s.body)
        elif isinstance(s, If):
            _check_nesting(kernel, s.then, False)
