"""Values read from a `kd.local` keep the value it had when they were built.

`b = a * 10.0; a.set(5.0); y[0] = b` stores ten times a's old value, as Python would.
Each read of a local hands out its own `LocalVar` node (equal to every other read of
it, so the IR prints and hashes as before) and remembers the local's version (how
many times it was assigned before) and the blocks open at the read. A read used after
its version ended, or inside a loop that assigns the local after the read was made
outside it (each iteration would see the last one's value), reads a snapshot instead:
`a_old = a`, declared in the innermost block open at both the read and the assignment,
just before the statement holding that assignment. Snapshots are made only when such a
use happens: the accumulator pattern (`acc.set(acc + x[t])` in a loop) costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kdsl.errors import SourceLoc, TraceError
from kdsl.ir.nodes import DeclareLocal, Expr, LocalVar, Stmt
from kdsl.ir.visit import map_expr, map_stmt_exprs, walk_expr
from kdsl.trace.frames import user_frame
from kdsl.types import DType

if TYPE_CHECKING:
    from kdsl.trace.context import TraceContext


@dataclass(eq=False)
class _Read:
    var: LocalVar  # the node handed out: found again by identity
    version: int
    blocks: tuple[list[Stmt], ...]  # open at the read, outermost first
    line: int | None
    used_in: set[int] = field(default_factory=set)  # ids of blocks opened since, used in


@dataclass(frozen=True)
class _End:
    """Where an assignment ended a version: the blocks open then, and their lengths."""

    blocks: tuple[list[Stmt], ...]
    lengths: tuple[int, ...]  # not counting snapshots inserted since


def _shared(a: tuple[list[Stmt], ...], b: tuple[list[Stmt], ...] | list[list[Stmt]]) -> int:
    """How many outer blocks the two stacks share."""
    n = 0
    for x, y in zip(a, b):
        if x is not y:
            break
        n += 1
    return n


class LocalVersions:
    """The reads and assignments of a trace's locals, and the snapshots they need."""

    def __init__(self, ctx: TraceContext) -> None:
        self.ctx = ctx
        self.version: dict[str, int] = {}
        self.reads: dict[int, _Read] = {}  # id(var) -> its read
        self.handed: dict[tuple[str, int, tuple[int, ...]], LocalVar] = {}
        self.unended: dict[str, list[_Read]] = {}  # local -> reads of its current version
        self.ends: dict[tuple[str, int], _End] = {}
        self.snapshots: dict[tuple[str, int, int], LocalVar] = {}
        self.inserted: dict[int, list[int]] = {}  # id(block) -> where snapshots went
        self.replaced: dict[int, tuple[LocalVar, LocalVar]] = {}  # id(var) -> (var, snapshot)

    def read(self, name: str, dtype: DType) -> LocalVar:
        """A node reading local `name` now."""
        blocks = self.ctx.blocks
        version = self.version.get(name, 0)
        key = (name, version, tuple(map(id, blocks)))
        var = self.handed.get(key)
        if var is None:
            var = self.handed[key] = LocalVar(name, dtype)
            frame = user_frame()
            read = _Read(var, version, tuple(blocks), frame.f_lineno if frame else None)
            self.reads[id(var)] = read
            self.unended.setdefault(name, []).append(read)
        return var

    @contextmanager
    def assignment(self, name: str) -> Iterator[None]:
        """Around recording an assignment of `name`: it ends the local's current version."""
        blocks = tuple(self.ctx.blocks)
        lengths = tuple(len(b) - len(self.inserted.get(id(b), ())) for b in blocks)
        yield  # the assignment's own value reads the version it ends
        version = self.version.get(name, 0)
        self.version[name] = version + 1
        reads = self.unended.pop(name, [])
        if not reads:
            return
        self.ends[name, version] = _End(blocks, lengths)
        for read in reads:
            # used in a block opened since the read and still open: in a loop that now
            # assigns the local, whose next iterations would read the new value
            beyond = blocks[_shared(read.blocks, blocks) :]
            if any(id(b) in read.used_in for b in beyond):
                snap = self._snapshot(name, read, None)
                self.replaced[id(read.var)] = (read.var, snap)
                for b in beyond:
                    b[:] = [map_stmt_exprs(s, self.rewrite_node) for s in b]

    def rewrite_node(self, e: Expr) -> Expr | None:
        hit = self.replaced.get(id(e))
        return hit[1] if hit is not None and hit[0] is e else None

    def rewrite(self, e: Expr) -> Expr:
        """`e` (a loop's extent, a condition, resolved before a snapshot was needed) with
        the reads replaced by snapshots since."""
        return map_expr(e, self.rewrite_node) if self.replaced else e

    def resolve(self, var: LocalVar, loc: SourceLoc | None) -> LocalVar | None:
        """What a statement recorded now reads for `var`: its snapshot when its version
        has ended, else None (the local itself)."""
        read = self.reads.get(id(var))
        if read is None or read.var is not var:
            return None  # not a read of a user's local (a reduction's accumulator)
        if read.version == self.version.get(var.name, 0):
            blocks = self.ctx.blocks
            n = _shared(read.blocks, blocks)
            if n < len(blocks):
                read.used_in.add(id(blocks[n]))
            return None
        return self._snapshot(var.name, read, loc)

    def note_uses(self, e: Expr) -> None:
        """`e`, resolved already, counts as used in the innermost block open now."""
        for x in walk_expr(e):
            if isinstance(x, LocalVar):
                self.resolve(x, None)

    def _snapshot(self, name: str, read: _Read, loc: SourceLoc | None) -> LocalVar:
        end = self.ends[name, read.version]
        n = _shared(read.blocks, end.blocks)
        block, anchor = end.blocks[n - 1], end.lengths[n - 1]
        key = (name, read.version, id(block))
        snap = self.snapshots.get(key)
        ctx = self.ctx
        if snap is None and any(b is block for b in ctx.blocks):
            snap = self.snapshots[key] = LocalVar(ctx.fresh(f"{name}_old"), read.var.dtype)
            inserted = self.inserted.setdefault(id(block), [])
            at = anchor + sum(1 for m in inserted if m <= anchor)
            block.insert(at, DeclareLocal(snap.name, snap.dtype, LocalVar(name, snap.dtype)))
            inserted.append(anchor)
            ctx.declared_in[snap.name] = block
        if snap is None or not ctx.in_scope(snap.name):
            at_line = f" at line {read.line}" if read.line else ""
            raise TraceError(
                f"a value read from local '{name}'{at_line} is used after '{name}' changed, "
                "in a loop or kd.when block that has ended since",
                loc=loc,
                fix="keep the value in a local declared before that block (b = kd.local(0.0)) "
                "and set it inside (b.set(...))",
            )
        return snap
