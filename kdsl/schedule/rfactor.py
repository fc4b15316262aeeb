"""`rfactor`: a reduction loop whose iterations run independently, each into partial
results of its own, combined in order after it — what lets a sum over one long loop
use every core.

    Before:  acc = init
             for ko: for ki: acc = acc + f(ko, ki)          (ko: a reduction)
    After:   acc = init
             allocate acc.parts[n_ko]
             for ko: (parallel)
                 acc.1 = 0                                   (the operator's identity)
                 for ki: acc.1 = acc.1 + f(ko, ki)
                 acc.parts[ko] = acc.1
             for ko.1: acc = acc + acc.parts[ko.1]           (in order)

The parts add up in another order than the loop did: floating-point sums are
reassociated (refused for strict_fp kernels, as vectorizing a reduction is); the result
depends on how the reduction was split, never on how many threads run it.
"""

from __future__ import annotations

from dataclasses import replace

from kdsl.ir.build import reduction_identity
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    DeclareLocal,
    Expr,
    Load,
    LocalVar,
    Loop,
    LoopExec,
    LoopKind,
    LoopVar,
    Stmt,
    Store,
)
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import locals_used, outer_updates, walk_all_exprs, walk_expr
from kdsl.schedule import tree
from kdsl.schedule.distribute import per_iteration_temp
from kdsl.schedule.step import StepContext
from kdsl.types import DType

COMBINABLE = (BinaryOp.ADD, BinaryOp.MUL, BinaryOp.MAX, BinaryOp.MIN)


def rfactor(ctx: StepContext, name: object) -> str:
    """Make reduction loop `name` parallel (see the module docstring); returns the name
    of the loop that combines the parts."""
    path, loop = ctx.loop(name)
    if loop.kind is not LoopKind.REDUCTION:
        raise ctx.refuse(
            f"loop '{loop.var}' is a {loop.kind.value} loop, not a reduction",
            "rfactor the outer loop of a split reduction: ko, ki = s.split('k', 4096), "
            "then s.rfactor(ko)",
        )
    if loop.exec is not LoopExec.SERIAL:
        raise ctx.refuse(
            f"loop '{loop.var}' is already {loop.exec.value}",
            "rfactor a loop before annotating it (then parallelize it)",
        )
    ops = _combine_ops(ctx, loop)
    parts: dict[str, tuple[str, str]] = {}  # accumulator → (its part in the loop, their buffer)
    allocs: list[Stmt] = []
    for acc, (_, dtype) in ops.items():
        part = ctx.fresh(acc)
        buffer = per_iteration_temp(ctx, f"{acc}.parts", dtype, loop)
        parts[acc] = part, buffer
        allocs.append(Allocate(buffer, loc=ctx.loc))

    def own(e: Expr) -> Expr | None:
        if isinstance(e, LocalVar) and e.name in parts:
            return replace(e, name=parts[e.name][0])
        return None

    def assign(s: Stmt) -> Stmt:
        if isinstance(s, Assign) and s.local in parts:
            return replace(s, local=parts[s.local][0])
        return s

    here = LoopVar(loop.var)
    starts = tuple(
        DeclareLocal(parts[acc][0], dtype, reduction_identity(op, dtype), loc=ctx.loc)
        for acc, (op, dtype) in ops.items()
    )
    ends = tuple(
        Store(parts[acc][1], (here,), LocalVar(parts[acc][0], dtype), loc=ctx.loc)
        for acc, (_, dtype) in ops.items()
    )
    body = starts + tree.rewrite(loop.body, own, assign) + ends
    spread = replace(loop, kind=LoopKind.PARALLEL, body=body)
    combine_var = ctx.fresh(loop.var)
    at = (LoopVar(combine_var),)
    combine = Loop(
        combine_var,
        loop.extent,
        LoopKind.REDUCTION,
        tuple(
            Assign(
                acc,
                Binary(op, LocalVar(acc, dtype), Load(parts[acc][1], at, dtype), dtype),
                loc=ctx.loc,
            )
            for acc, (op, dtype) in ops.items()
        ),
        loc=loop.loc,
    )
    # each accumulator declared beside the loop, and not used between, moves past it:
    # into one block of code with the combining loop (on a GPU, one launch)
    parent, position = path[:-1], path[-1]
    block = tree.body_of(tree.at(ctx.kernel.body, parent)) if parent else ctx.kernel.body
    before = block[:position]
    moved = tuple(
        d
        for n, d in enumerate(before)
        if isinstance(d, DeclareLocal)
        and d.name in ops
        and d.name not in locals_used(before[n + 1 :])
    )
    kept = tuple(s for s in before if s not in moved)
    new_block = (*kept, *allocs, spread, *moved, combine, *block[position + 1 :])
    if parent:
        owner = tree.with_body(tree.at(ctx.kernel.body, parent), new_block)
        ctx.kernel = replace(ctx.kernel, body=tree.splice(ctx.kernel.body, parent, (owner,)))
    else:
        ctx.kernel = replace(ctx.kernel, body=new_block)
    return combine_var


def _combine_ops(ctx: StepContext, loop: Loop) -> dict[str, tuple[BinaryOp, DType]]:
    """Each local the loop accumulates into, declared outside it, with the operator of
    its updates and its type; refused unless every update is `acc = acc ⊕ e` with one
    associative ⊕ and the loop reads the running value nowhere else."""
    updates = outer_updates(loop)
    if not updates:
        raise ctx.refuse(
            f"loop '{loop.var}' accumulates into no local declared outside it",
            "rfactor the loop that a kd.sum (or max, min, product) runs over",
        )
    ops: dict[str, tuple[BinaryOp, DType]] = {}
    for s in updates:
        v = s.value
        acc = LocalVar(s.local, v.dtype)
        operand = None
        if isinstance(v, Binary) and v.op in COMBINABLE:
            operand = v.rhs if v.lhs == acc else v.lhs if v.rhs == acc else None
        if operand is None or acc in walk_expr(operand):
            raise ctx.refuse(
                f"loop '{loop.var}' updates the local '{s.local}' as {format_expr(v)}, "
                "not as one of +, *, max, min of it and a new value",
                "rfactor a reduction (kd.sum, kd.max, kd.min, kd.prod)",
            )
        assert isinstance(v, Binary)
        if ops.get(s.local, (v.op,))[0] is not v.op:
            raise ctx.refuse(
                f"loop '{loop.var}' updates the local '{s.local}' with two operators",
                "rfactor a loop whose updates of each local use one operator",
            )
        if ctx.strict_fp and v.dtype.is_float and v.op in (BinaryOp.ADD, BinaryOp.MUL):
            raise ctx.refuse(
                f"combining parts of '{s.local}' reorders its floating-point sums, and the "
                "kernel is strict_fp",
                "drop strict_fp=True to allow reassociation",
            )
        ops[s.local] = (v.op, v.dtype)
    reads = [e for e in walk_all_exprs(loop.body) if isinstance(e, LocalVar) and e.name in ops]
    if len(reads) != len(updates):
        name = next(n for n in ops if sum(e.name == n for e in reads) > 1)
        raise ctx.refuse(
            f"loop '{loop.var}' reads the running value of '{name}' besides accumulating "
            "into it (a running sum), which its parts don't know",
            "rfactor a loop that only accumulates",
        )
    return ops
