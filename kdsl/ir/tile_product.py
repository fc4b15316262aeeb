"""Recognize a tile product: the loop nest that a matrix instruction (AMX on the CPU,
mma.sync on a GPU warp) computes whole.

    for i in range(R):                  # rows of the tile (R ≤ TR)
      for j in range(C):                # columns (C ≤ TC)
        for p in range(P):              # pairs of k
          for t in range(min(2, K - p·2)):
            acc[i, j] = acc[i, j] + f32(a[a0 + i, k0 + p·2 + t]) · f32(b[b0 + p, 2·(c0 + j) + t])

`acc` is a temporary of constant shape [TR, TC] (SHAPES: which the instruction takes);
`a` holds bf16 rows of k; `b` holds bf16 in the "vnni" layout (`cache(b, at=...,
layout="vnni")`): row p has the two k-rows 2p and 2p + 1 of the original interleaved,
column by column. A GPU warp reads its fragments element by element, so for "mma" `b`
may also be plain rows of k, `b[b0 + p·2 + t, c0 + j]`, or columns of k, `b[c0 + j,
b0 + p·2 + t]` (keys·queryᵀ in attention), and the operands may have more axes before
those two, with subscripts the nest doesn't change (a head of a [B, H, L, D] array).
The loops' execution marks inside the nest don't matter (the nest's meaning is its
loops). The schedule step `tensorize` checks a nest with `match`; the code generator
emits what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kdsl import types as T
from kdsl.ir.affine import constant_bound, split_tile
from kdsl.ir.build import index_const, index_op
from kdsl.ir.nodes import (
    Binary,
    BinaryOp,
    Buffer,
    Cast,
    Const,
    Expr,
    Fma,
    Load,
    Loop,
    LoopExec,
    LoopKind,
    LoopVar,
    Scope,
    Stmt,
    Store,
)
from kdsl.ir.visit import walk_expr

TILE = 16  # rows of a matrix register; 16 f32 (or 32 bf16) make a row of 64 bytes
INSTRUCTIONS = {LoopExec.AMX: "amx", LoopExec.MMA: "mma"}  # a tensorized loop's mark
# the accumulator shapes each instruction takes: AMX holds up to 2 × 2 tiles of 16 × 16;
# a warp holds TR·TC/32 f32 per thread in registers (m16n8 per mma.sync)
SHAPES = {
    "amx": tuple((r, c) for r in (TILE, 2 * TILE) for c in (TILE, 2 * TILE)),
    "mma": tuple((r, c) for r in (16, 32, 64) for c in (8, 16, 32, 64) if r * c <= 2048),
}


@dataclass(frozen=True)
class TileProduct:
    rows: Loop
    cols: Loop
    depth: Expr  # K: the number of products summed into each element
    acc: str  # f32[TR, TC]
    shape: tuple[int, int]  # (TR, TC)
    a: str
    a_at: tuple[Expr, ...]  # a's subscripts where i = p = t = 0 (the last two: row, k)
    b: str
    b_at: tuple[Expr, ...]  # b's subscripts where j = p = t = 0
    b_layout: str = "vnni"  # or (mma only) "rows" of k, b[k, column], or "columns", b[column, k]


def match(loop: Loop, buffers: dict[str, Buffer], instruction: str = "amx") -> TileProduct | str:
    """The tile product that `loop` (the rows loop) is for `instruction`, or why not."""
    nest = _perfect_nest(loop, 4)
    if isinstance(nest, str):
        return nest
    rows, cols, pairs, pair = nest
    if rows.kind is not LoopKind.PARALLEL or cols.kind is not LoopKind.PARALLEL:
        return (
            f"loops '{rows.var}' and '{cols.var}' must be parallel (rows and columns of the tile)"
        )
    if pairs.kind is not LoopKind.REDUCTION or pair.kind is not LoopKind.REDUCTION:
        return f"loops '{pairs.var}' and '{pair.var}' must be the reduction, split in pairs"
    depth = _depth(pairs, pair)
    if depth is None:
        return (
            f"loop '{pair.var}' must run over the pair of k that '{pairs.var}' picks "
            "(split the reduction by 2: ko, k2 = s.split('k', 2))"
        )
    (store,) = pair.body if len(pair.body) == 1 else (None,)
    if not isinstance(store, Store):
        return f"the body of loop '{pair.var}' must be a single accumulation into a buffer"
    acc = buffers[store.buffer]
    shape = _tile_shape(acc)
    if shape not in SHAPES[instruction]:
        heights = sorted({r for r, _ in SHAPES[instruction]})
        widths = sorted({c for _, c in SHAPES[instruction]})
        return (
            f"the accumulator '{acc.name}' must be a temporary of f32 with a constant shape "
            f"of {_either(heights)} rows by {_either(widths)} columns"
            + (" (at most 2048 elements)" if instruction == "mma" else "")
            + " (split the rows and columns by those sizes)"
        )
    if store.index != (LoopVar(rows.var), LoopVar(cols.var)):
        return f"the accumulator must be written at [{rows.var}, {cols.var}]"
    for loop, most in zip((rows, cols), shape):
        bound = constant_bound(loop.extent)
        if bound is None or bound > most:
            return f"loop '{loop.var}' must run at most {most} times (the accumulator's extent)"
    operands = _product_of(store, buffers)
    if operands is None:
        return (
            f"the statement must add a product of two bf16 loads into '{acc.name}' "
            f"({acc.name}[{rows.var}, {cols.var}] += f32(a[..]) * f32(b[..]))"
        )
    names = (rows.var, cols.var, pairs.var, pair.var)
    a, b = sorted(operands, key=lambda load: _coefficients(load.index[-2], names) != (1, 0, 0, 0))
    a_at = _based(a, names, ((1, 0, 0, 0), (0, 0, 2, 1)))
    layouts = B_LAYOUTS if instruction == "mma" else {"vnni": B_LAYOUTS["vnni"]}
    found = ((lay, _based(b, names, wanted)) for lay, wanted in layouts.items())
    b_layout, b_at = next(((lay, at) for lay, at in found if at is not None), ("", None))
    two_d = instruction == "mma" or len(a.index) == len(b.index) == 2  # (AMX: rows of bytes)
    if a_at is None or b_at is None or not two_d:
        k = f"k + {pairs.var}·2 + {pair.var}"
        others = (
            f", as rows of k at [{k}, column + {cols.var}] or as columns of k at [column + "
            f"{cols.var}, {k}] (these axes last, any before them the same for the whole tile)"
            if instruction == "mma"
            else " (2-d arrays)"
        )
        return (
            f"one operand must be read at [row + {rows.var}, {k}], the other in the vnni "
            f"layout at [p + {pairs.var}, 2·(column + {cols.var}) + {pair.var}] (cache it "
            f"with layout='vnni'){others}"
        )
    return TileProduct(rows, cols, depth, acc.name, shape, a.buffer, a_at, b.buffer, b_at, b_layout)


# the right operand's layouts: its last two subscripts' coefficients of the nest's loops
# (rows, columns, pairs of k, k)
B_LAYOUTS = {
    "vnni": ((0, 0, 1, 0), (0, 2, 0, 1)),
    "rows": ((0, 0, 2, 1), (0, 1, 0, 0)),
    "columns": ((0, 1, 0, 0), (0, 0, 2, 1)),
}


def _either(sizes: list[int]) -> str:
    return ", ".join(map(str, sizes[:-1])) + f" or {sizes[-1]}"


def mark_zero_starts(stmts: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
    """A tensorized nest right after the loops that zero its accumulator over the same
    rows and columns is marked (`width` 0) as starting from zero: its tiles start as
    `tilezero` instead of loads of memory just written (a store that a tile load must
    wait for: about a third of a 32 × 32 × 64 product's time). The zeroing loops stay,
    so the IR means the same to every reader."""
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Loop) and s.exec in INSTRUCTIONS and out and _zeroes(out[-1], s):
            s = replace(s, width=0)
        out.append(s)
    return tuple(out)


def _zeroes(init: Stmt, rows: Loop) -> bool:
    """Whether `init` sets the accumulator of tile product `rows` to 0 in its range."""
    nest = _perfect_nest(rows, 4)
    if isinstance(nest, str) or not isinstance(init, Loop):
        return False
    store = nest[3].body[0]
    cols = init.body[0] if len(init.body) == 1 else None
    if not isinstance(cols, Loop) or len(cols.body) != 1 or not isinstance(store, Store):
        return False
    zero = cols.body[0]
    return (
        (init.extent, cols.extent) == (rows.extent, nest[1].extent)
        and isinstance(zero, Store)
        and zero.buffer == store.buffer
        and zero.index == (LoopVar(init.var), LoopVar(cols.var))
        and zero.value == Const(0.0, T.f32)
    )


def _perfect_nest(loop: Loop, depth: int) -> tuple[Loop, ...] | str:
    nest = [loop]
    while len(nest) < depth:
        body = nest[-1].body
        if len(body) != 1 or not isinstance(body[0], Loop):
            return f"loop '{nest[-1].var}' must hold just one loop (rows, columns, pairs of k, k)"
        nest.append(body[0])
    return tuple(nest)


def _depth(pairs: Loop, pair: Loop) -> Expr | None:
    """K when the pairs run over ⌈K/2⌉ and the pair loop `min(2, K - p·2)` (or 2: then
    K = 2·P)."""
    tile = split_tile(pair.extent, pairs.var)
    if tile is not None and tile[0] == 2:
        whole = index_op(
            BinaryOp.FLOORDIV, index_op(BinaryOp.ADD, tile[1], index_const(1)), index_const(2)
        )
        return tile[1] if pairs.extent == whole else None
    if pair.extent == index_const(2):
        return index_op(BinaryOp.MUL, pairs.extent, index_const(2))
    return None


def _tile_shape(acc: Buffer) -> tuple[int, int] | None:
    if acc.dtype != T.f32 or acc.scope not in (Scope.STACK, Scope.HEAP) or len(acc.shape) != 2:
        return None
    if not all(isinstance(d, Const) for d in acc.shape):
        return None
    return int(acc.shape[0].value), int(acc.shape[1].value)  # type: ignore[union-attr]


def _product_of(store: Store, buffers: dict[str, Buffer]) -> tuple[Load, Load] | None:
    """The two bf16 loads whose product `store` adds into the element it writes."""
    here = Load(store.buffer, store.index, T.f32)
    match store.value:
        case Fma(a=x, b=y, c=c) if _same(c, here):
            factors = (x, y)
        case Binary(op=BinaryOp.ADD, lhs=l, rhs=Binary(op=BinaryOp.MUL, lhs=x, rhs=y)) if _same(
            l, here
        ):
            factors = (x, y)
        case Binary(op=BinaryOp.ADD, lhs=Binary(op=BinaryOp.MUL, lhs=x, rhs=y), rhs=r) if _same(
            r, here
        ):
            factors = (x, y)
        case _:
            return None
    loads = tuple(_widened_bf16(f) for f in factors)
    if any(load is None or load.buffer not in buffers for load in loads):
        return None
    return loads  # type: ignore[return-value]


def _same(e: Expr, load: Load) -> bool:
    return isinstance(e, Load) and (e.buffer, e.index, e.dtype) == (
        load.buffer,
        load.index,
        load.dtype,
    )


def _widened_bf16(e: Expr) -> Load | None:
    if isinstance(e, Cast) and e.dtype == T.f32:
        e = e.operand
    return e if isinstance(e, Load) and e.dtype == T.bf16 and len(e.index) >= 2 else None


def _coefficients(e: Expr, names: tuple[str, ...]) -> tuple[int, ...] | None:
    found = _in_loops(e, names)
    return None if found is None else found[0]


def _in_loops(e: Expr, names: tuple[str, ...]) -> tuple[tuple[int, ...], Expr] | None:
    """`e` as Σ coefficient·loop over the loops `names`, plus a rest that doesn't depend
    on them (any expression: locals and loads of the kernel are fine there, the nest
    doesn't change them); None if `e` is not of that form."""
    if not any(isinstance(x, LoopVar) and x.name in names for x in walk_expr(e)):
        return (0,) * len(names), e
    match e:
        case LoopVar(name=n):
            return tuple(int(n == m) for m in names), index_const(0)
        case Binary(op=BinaryOp.ADD | BinaryOp.SUB as op, lhs=a, rhs=b):
            x, y = _in_loops(a, names), _in_loops(b, names)
            if x is None or y is None:
                return None
            sign = 1 if op is BinaryOp.ADD else -1
            return tuple(u + sign * w for u, w in zip(x[0], y[0])), index_op(op, x[1], y[1])
        case (
            Binary(op=BinaryOp.MUL, lhs=a, rhs=Const(value=c))
            | Binary(op=BinaryOp.MUL, lhs=Const(value=c), rhs=a)
        ) if isinstance(c, int):
            x = _in_loops(a, names)
            if x is None:
                return None
            return tuple(u * c for u in x[0]), index_op(BinaryOp.MUL, x[1], index_const(c))
    return None


def _based(
    load: Load, names: tuple[str, ...], wanted: tuple[tuple[int, ...], ...]
) -> tuple[Expr, ...] | None:
    """The load's subscripts with the nest's loops at 0, if the coefficients of the
    loops in its last two are `wanted` (per axis), the axes before those don't have
    them, and nothing else in any subscript depends on the nest."""
    found = [_in_loops(i, names) for i in load.index]
    before = [(0,) * len(names)] * (len(found) - len(wanted))
    if any(f is None for f in found):
        return None
    forms = [f for f in found if f is not None]
    if [coefficients for coefficients, _ in forms] != before + list(wanted):
        return None
    return tuple(base for _, base in forms)
