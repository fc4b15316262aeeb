"""The default schedule's fusion: sibling nests of element-wise stores over the same
loops become one nest, through the schedule's own `fuse` step (which refuses what would
change the result: kdsl/ir/dependence.py), before anything is vectorized.

Each statement of a kernel is its own loop nest (DESIGN §1), so an interleaved complex
multiply, `c[2*i] = …` then `c[2*i + 1] = …`, is two loops that each read all of `a`
and `b` and write every other element of `c`. Fused, each element is read once, and the
two stores, consecutive in one loop, fill whole vectors (kdsl/targets/cpu/strided.py):
4,000,003 complex numbers went from 0.4x NumPy's time to 1.0x (benchmarks/naive.py). A
temporary made by one statement and read by the next at the same element becomes a
scalar (`t[i] = exp(x[i])`, `y[i] = t[i] / (1 + t[i])`: no array, no pass over it).

Kept apart, as they are: nests whose bodies hold anything but stores (a reduction, a
local, a condition), nests over different extents, nests that share no array (nothing
read twice to save), and nests that the default would vectorize or parallelize
differently (a transposing store next to a unit-stride one: fused, neither would be
vectorized). At most MAX_STATEMENTS stores go into one nest, to bound the values held
in registers at once and the streams of memory walked side by side.

Then `reuse_values`: where a loop computes again what the loop right before it computed
from the same elements (a one-statement softmax's exponentials, summed in one loop and
divided by the sum in the next), the first stores it into the second's output and the
second reads it back (`reuse`, kdsl/schedule/reuse.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from kdsl.errors import ScheduleError
from kdsl.ir.extents import same_extent
from kdsl.ir.nodes import (
    Binary,
    BinaryOp,
    Expr,
    Kernel,
    Load,
    Loop,
    LoopExec,
    LoopKind,
    Store,
    Unary,
)
from kdsl.ir.visit import walk_all_exprs, walk_expr, walk_stmts
from kdsl.schedule import tree
from kdsl.schedule.recipe import Schedule
from kdsl.schedule.reuse import shared_value

MAX_STATEMENTS = 16  # stores in one fused nest

# What the default schedule would do to a nest (which loop it vectorizes, how wide,
# whether it parallelizes): nests are fused only where this stays the same.
Plan = Callable[[Kernel, Loop], Hashable]


def fuse_siblings(s: Schedule, plan: Plan) -> None:
    """Fuse, in every block of the kernel (its body, and each loop's), each run of
    sibling nests that `fusible` allows into the first of them."""
    _fuse_block(s, None, plan)


def _fuse_block(s: Schedule, owner: str | None, plan: Plan) -> None:
    first: str | None = None
    for name in [lp.var for lp in _block_loops(s.kernel, owner)]:
        if first is not None and _fuse_nests(s, first, name, plan):
            continue  # `name` is now part of `first`
        first = name if _chain(_loop(s.kernel, name)) is not None else None
    for lp in _block_loops(s.kernel, owner):
        if _chain(lp) is None:  # (a chain's body is stores: nothing to fuse inside)
            _fuse_block(s, lp.var, plan)


def reuse_values(s: Schedule, plan: Plan, owner: str | None = None) -> None:
    """In every block, `reuse` between each loop and the next where the next one
    computes again a costly value the first computed (a math function or a division:
    not worth a store to save a multiply), `reuse` accepts, and neither loop is
    vectorized otherwise than before (a stash into a transposed output would keep the
    first loop from vectorizing: 3.5× slower)."""
    names = [lp.var for lp in _block_loops(s.kernel, owner)]
    for first, second in zip(names, names[1:]):
        a, b = _loop(s.kernel, first), _loop(s.kernel, second)
        value = shared_value(a, b)
        if value is None or not _costly(value):
            continue
        trial = Schedule(s.kernel, target=s.target, strict_fp=s.strict_fp)
        try:
            trial.reuse(first, second)
        except ScheduleError:
            continue  # (its output can't hold the value: computed twice, as written)
        if all(
            plan(trial.kernel, _loop(trial.kernel, n)) == plan(s.kernel, _loop(s.kernel, n))
            for n in (first, second)
        ):
            s.reuse(first, second)
    for name in [lp.var for lp in _block_loops(s.kernel, owner)]:
        reuse_values(s, plan, name)


def _costly(value: Expr) -> bool:
    return any(
        isinstance(e, Unary) and e.op.float_only or isinstance(e, Binary) and e.op is BinaryOp.DIV
        for e in walk_expr(value)
    )


def _block_loops(kernel: Kernel, owner: str | None) -> list[Loop]:
    block = kernel.body if owner is None else _loop(kernel, owner).body
    return [st for st in block if isinstance(st, Loop)]


def _fuse_nests(s: Schedule, a: str, b: str, plan: Plan) -> bool:
    """Fuse nest `b` into its earlier sibling `a`, level by level, if `fusible` allows
    and every level's `fuse` is accepted; whether it was."""
    first, second = _loop(s.kernel, a), _loop(s.kernel, b)
    if not fusible(s.kernel, first, second, plan):
        return False
    pairs = [(x.var, y.var) for x, y in zip(_chain(first) or [], _chain(second) or [])]
    trial = Schedule(s.kernel, target=s.target, strict_fp=s.strict_fp)
    try:
        for x, y in pairs:
            trial.fuse(x, y)
    except ScheduleError:
        return False  # the fused loop would compute something else
    if plan(trial.kernel, _loop(trial.kernel, a)) != plan(s.kernel, first):
        return False
    for x, y in pairs:
        s.fuse(x, y)
    return True


def fusible(kernel: Kernel, first: Loop, second: Loop, plan: Plan) -> bool:
    """Whether the default fuses these sibling nests (if `fuse` accepts): both perfect
    nests of parallel loops over the same extents (equal, or made so by the kernel's
    shape checks) around stores only, sharing an array, with no more than
    MAX_STATEMENTS stores together, scheduled alike."""
    one, two = _chain(first), _chain(second)
    if one is None or two is None or len(one) != len(two):
        return False
    if not all(same_extent(kernel, a.extent, b.extent) for a, b in zip(one, two)):
        return False
    stores = [st for lp in (first, second) for st in walk_stmts(lp.body) if isinstance(st, Store)]
    if len(stores) > MAX_STATEMENTS:
        return False
    if not _arrays(first) & _arrays(second):
        return False  # nothing to read once instead of twice
    return plan(kernel, first) == plan(kernel, second)


def _chain(lp: Loop) -> list[Loop] | None:
    """The loops of `lp`'s nest when it is a perfect nest of parallel loops, none
    annotated yet, whose innermost body is stores; else None."""
    chain: list[Loop] = []
    while lp.kind is LoopKind.PARALLEL and lp.exec is LoopExec.SERIAL:
        chain.append(lp)
        if lp.body and all(isinstance(st, Store) for st in lp.body):
            return chain
        if len(lp.body) != 1 or not isinstance(lp.body[0], Loop):
            return None
        lp = lp.body[0]
    return None


def _arrays(lp: Loop) -> set[str]:
    found = {e.buffer for e in walk_all_exprs(lp.body) if isinstance(e, Load)}
    return found | {st.buffer for st in walk_stmts(lp.body) if isinstance(st, Store)}


def _loop(kernel: Kernel, name: str) -> Loop:
    found = tree.find_loop(kernel.body, name)
    assert found is not None
    return found[1]
