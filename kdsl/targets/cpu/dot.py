"""Dot-product instructions for a short reduction inside a vector loop.

In a loop vectorized over v (width w), an inner loop over m of constant extent K whose
body is `acc = acc + P(A) * P(B)` (or a sum of such products), with A and B narrow
values read at subscripts `K·v + m + u` of their last axis, sums K adjacent products
into each lane:

    lane v of acc  +=  Σ_m  A[K·v + m] · B[K·v + m]

That is exactly what the CPU's dot-product instructions compute, reading A and B as
single w·K-element vectors:

* u8/i8 → i32, K = 4: AVX512-VNNI `vpdpbusd` (unsigned × signed bytes; a signed×signed
  or unsigned×unsigned pair is moved into that form by flipping the top bit of one side
  and subtracting the constant it adds, so every integer result is exact);
* i16 → i32, K = 2: `vpdpwssd`;
* bf16 → f32, K = 2: AVX512-BF16 `vdpbf16ps` (which flushes denormal inputs and adds the
  pair before the accumulator: a reassociation, so never under strict_fp).

A vector loop's tail (a mask of active lanes) reads only its lanes' elements and keeps
the sums of the others: a register tile's last columns run at the full tiles' speed (a
matmul with n % 32 ≠ 0 ran at half speed when its edge tiles fell back to gathers).
Without VNNI, AVX2 takes bytes as `vpmaddubsw` (unsigned × signed, adjacent products
summed in i16) then `vpmaddwd` against ones, where no i16 sum can saturate: an unsigned
byte under 128 (a nibble) by any signed one, or signed by signed when one side is never
-128 (`kd.maximum(x, -127)`: the other's sign moves onto it with `vpsignb`, GGML's Q8_0
trick); several such products are added in i16 while their bound allows. Other bytes
and i16 pairs take `vpmaddwd` on widened words. Without any, the same wide loads feed
widening multiplies and K-way adds. The operands may be any element-wise expression of
such loads (a nibble `q & 15`, say) and of values that do not depend on v or m.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llvmlite import ir

from kdsl import types as T
from kdsl.ir.nodes import (
    Assign,
    Binary,
    BinaryOp,
    BufferRole,
    Cast,
    Const,
    Expr,
    Fma,
    Load,
    LocalVar,
    Loop,
    LoopVar,
    Store,
    Unary,
)
from kdsl.ir.visit import walk_all_exprs, walk_expr
from kdsl.targets.cpu import jit
from kdsl.targets.cpu.ops import F32, I32, I64
from kdsl.targets.cpu.vector_plan import accumulation

if TYPE_CHECKING:
    from kdsl.targets.cpu.vector import _VectorLoop

_BYTES = (T.i8, T.u8)


@dataclass(frozen=True)
class _Dot:
    slot: ir.Value  # the accumulator's vector
    acc: T.DType  # i32 or f32
    k: int
    pairs: tuple[tuple[Expr, Expr], ...]  # the narrow operands of each product added


def emit_dot_loop(vl: _VectorLoop, loop: Loop) -> bool:
    """Emit `loop` (inside vector loop `vl`) as dot products; False when it isn't one."""
    dot = _match(vl, loop)
    if dot is None:
        return False
    b = vl.b
    unit = _unit_strides(vl, tuple(e for pair in dot.pairs for e in pair))
    if unit is None:
        _emit(vl, loop, dot)
        return True
    with b.if_else(unit) as (then, otherwise):
        with then:
            _emit(vl, loop, dot)
        with otherwise:
            vl.scalar_control_loop(loop)
    vl.computed.clear()  # values made in either branch don't dominate what follows
    vl.gen.memo = {}
    return True


# ---------------------------------------------------------------------- recognizing


def _match(vl: _VectorLoop, loop: Loop) -> _Dot | None:
    if vl.gen.checks or not vl.some_active or not isinstance(loop.extent, Const):
        return None
    if any(
        isinstance(e, Load) and vl.gen.must_check(e.index, e.checked)
        for e in walk_all_exprs(loop.body)
    ):
        return None  # a gather's subscripts are checked: the plain path does that
    k = int(loop.extent.value)
    if len(loop.body) != 1:
        return None
    s = loop.body[0]
    if isinstance(s, Assign):
        found = accumulation(s)
        slot = vl.vslots.get(s.local)
        if slot is None and s.local in vl.partials:
            slot = vl.partials[s.local][vl.copy]
    elif isinstance(s, Store) and (s.buffer, s.index) in vl.held:
        # an element of a register tile: `acc[r, v] = acc[r, v] + …`
        found = _stored_accumulation(s)
        slot = vl.held[(s.buffer, s.index)]
    else:
        return None
    if found is None or found[0] is not BinaryOp.ADD or slot is None:
        return None
    pairs = _products(found[1])
    if not pairs or not all(_fits(vl, loop, k, found[1].dtype, a, b) for a, b in pairs):
        return None
    return _Dot(slot, found[1].dtype, k, tuple(pairs))


def _stored_accumulation(s: Store) -> tuple[BinaryOp, Expr] | None:
    """`accumulation` for `buf[i] = buf[i] + x` (or its contracted fma)."""
    local = "\0held"  # a name no traced local has
    mine = Load(s.buffer, s.index, s.value.dtype)

    def as_local(e: Expr) -> Expr:
        return LocalVar(local, e.dtype) if e == mine else e

    v = s.value
    if isinstance(v, Fma):
        v = Fma(v.a, v.b, as_local(v.c), v.dtype)
    elif isinstance(v, Binary):
        v = Binary(v.op, as_local(v.lhs), as_local(v.rhs), v.dtype)
    else:
        return None
    found = accumulation(Assign(local, v))
    if found is None or any(n == mine for n in walk_expr(found[1])):
        return None
    return found


def _products(e: Expr) -> list[tuple[Expr, Expr]] | None:
    """The operands (a, b) of `P(a)·P(b) + P(c)·P(d) + …`, each P a widening cast."""
    match e:
        case Binary(op=BinaryOp.ADD, lhs=x, rhs=y):
            left, right = _products(x), _products(y)
            return None if left is None or right is None else left + right
        case Binary(op=BinaryOp.MUL, lhs=Cast(operand=a), rhs=Cast(operand=b)):
            return [(a, b)]
    return None


def _fits(vl: _VectorLoop, loop: Loop, k: int, acc: T.DType, a: Expr, b: Expr) -> bool:
    kinds = {a.dtype, b.dtype}
    fits = (
        (acc == T.i32 and k == 4 and kinds <= set(_BYTES))
        or (acc == T.i32 and k == 2 and kinds == {T.i16})
        or (acc == T.f32 and k == 2 and kinds == {T.bf16} and not vl.gen.strict_fp)
    )
    return fits and _wide_ok(vl, loop, a) and _wide_ok(vl, loop, b)


def _wide_ok(vl: _VectorLoop, loop: Loop, e: Expr) -> bool:
    """Whether `e` can be computed for all w·K (v, m) pairs as one vector."""
    if _uniform(vl, loop, e):
        return True
    match e:
        case Load(buffer=name, index=index, dtype=d):
            return not d.is_bool and _wide_subscripts(vl, loop, name, index) is not None
        case Binary(lhs=x, rhs=y):
            return _wide_ok(vl, loop, x) and _wide_ok(vl, loop, y)
        case Unary(operand=x) | Cast(operand=x):
            return _wide_ok(vl, loop, x)
    return False


def _uniform(vl: _VectorLoop, loop: Loop, e: Expr) -> bool:
    return not vl.plan.varying(e) and not any(
        isinstance(n, LoopVar) and n.name == loop.var for n in walk_expr(e)
    )


def _wide_subscripts(
    vl: _VectorLoop, loop: Loop, name: str, index: tuple[Expr, ...]
) -> tuple[Expr, bool] | None:
    """(u, False) when the last subscript is K·v + m + u and the others are uniform;
    (u, True) when it is m + u: the same K elements for every lane (a matmul's A, its
    pair of bf16 broadcast against the K-interleaved rows of B)."""
    if not index or not all(_uniform(vl, loop, i) for i in index[:-1]):
        return None
    form = _linear(index[-1], {vl.loop.var, loop.var})
    if form is None:
        return None
    coefficients, rest = form
    k = int(loop.extent.value)  # type: ignore[attr-defined]
    if not _uniform(vl, loop, rest) or vl.gen.buffers[name].role not in (
        BufferRole.PARAM,
        BufferRole.TEMP,
    ):
        return None
    if coefficients == {vl.loop.var: k, loop.var: 1}:
        return rest, False
    if coefficients == {loop.var: 1}:
        return rest, True
    return None


def _linear(e: Expr, names: set[str]) -> tuple[dict[str, int], Expr] | None:
    """e as Σ coefficient·name + rest, where rest mentions none of `names`."""
    if not any(isinstance(n, LoopVar) and n.name in names for n in walk_expr(e)):
        return {}, e
    match e:
        case LoopVar(name=n):
            return {n: 1}, Const(0, T.INDEX)
        case Binary(op=BinaryOp.ADD | BinaryOp.SUB as op, lhs=x, rhs=y, dtype=T.INDEX):
            left, right = _linear(x, names), _linear(y, names)
            if left is None or right is None:
                return None
            sign = 1 if op is BinaryOp.ADD else -1
            merged = dict(left[0])
            for n, c in right[0].items():
                merged[n] = merged.get(n, 0) + sign * c
            return {n: c for n, c in merged.items() if c}, Binary(op, left[1], right[1], T.INDEX)
        case (
            Binary(op=BinaryOp.MUL, lhs=x, rhs=Const(value=c), dtype=T.INDEX)
            | Binary(op=BinaryOp.MUL, lhs=Const(value=c), rhs=x, dtype=T.INDEX)
        ):
            inner = _linear(x, names)
            if inner is None:
                return None
            scaled = {n: int(c) * v for n, v in inner[0].items()}
            return scaled, Binary(BinaryOp.MUL, inner[1], Const(c, T.INDEX), T.INDEX)
    return None


def _unit_strides(vl: _VectorLoop, operands: tuple[Expr, ...]) -> ir.Value | None:
    """A run-time test that the strided parameters read here have unit last strides
    (None when none is strided)."""
    tests: list[ir.Value] = []
    seen: set[str] = set()
    for e in operands:
        for n in walk_expr(e):
            if isinstance(n, Load) and n.buffer not in seen:
                seen.add(n.buffer)
                buf = vl.gen.buffers[n.buffer]
                if buf.role is BufferRole.PARAM and not buf.contiguous:
                    stride = vl.gen.state.arrays[n.buffer].strides[-1]
                    size = ir.Constant(I64, buf.dtype.itemsize)
                    tests.append(vl.b.icmp_signed("==", stride, size))
    if not tests:
        return None
    result = tests[0]
    for t in tests[1:]:
        result = vl.b.and_(result, t)
    return result


# ---------------------------------------------------------------------- emitting


def _emit(vl: _VectorLoop, loop: Loop, dot: _Dot) -> None:
    """Each product's dot instruction in turn, accumulating into the local's vector.
    Without VNNI, products that AVX2 takes as i16 pairs of byte products (`_byte_words`)
    are added as such while their sums stay within i16 (Q4_0's low and high nibbles),
    then widened to the i32 lanes once."""
    b = vl.b
    new = b.load(dot.slot, typ=dot.slot.allocated_type)
    old = new
    words: _Words | None = None
    for ea, eb in dot.pairs:
        found = _byte_words(vl, loop, dot, ea, eb)
        if found is None:
            new = _emit_one(vl, loop, dot, new, ea, eb)
        elif words is not None and words.bound + found.bound < 2**15:
            pieces = [b.add(x, y) for x, y in zip(words.pieces, found.pieces)]
            words = _Words(pieces, words.bound + found.bound)
        else:
            new = new if words is None else _widened(vl, new, words)
            words = found
    new = new if words is None else _widened(vl, new, words)
    if vl.mask is not None:  # a tail: the lanes that are off keep their sums
        new = b.select(vl.mask, new, old)
    b.store(new, dot.slot)


def _emit_one(vl: _VectorLoop, loop: Loop, dot: _Dot, old: ir.Value, ea: Expr, eb: Expr):
    b, ops, w = vl.b, vl.ops, vl.w
    wide = functools.partial(_wide, vl, loop, dot.k)
    a, c = wide(ea), wide(eb)
    da, dc = ea.dtype, eb.dtype
    if dot.acc == T.f32:
        new = _bf16_dot(vl, old, a, c) if _has("avx512bf16", w) else None
    elif dot.k == 2:
        new = _intrinsic(vl, "vpdpwssd", old, a, c) if _has("avx512vnni", w) else None
    else:
        if da == T.i8 and dc == T.u8:
            a, c, da, dc, ea = c, a, dc, da, eb
        new = _byte_dot(vl, old, a, c, da, dc) if _has("avx512vnni", w) else None
    pairs = {da, dc} <= set(_BYTES) if dot.k == 4 else da == dc == T.i16
    if new is None and dot.acc == T.i32 and pairs and _has_avx2(2 * w):  # (2w words)
        new = _pair_dot(vl, old, a, c, da, dc, dot.k)
    if new is None:  # no instruction: widen, multiply, add the K products of each lane
        products = ops.binary(
            BinaryOp.MUL, ops.cast(a, da, dot.acc), ops.cast(c, dc, dot.acc), dot.acc
        )
        new = old
        for m in range(dot.k):
            lanes = ir.Constant(ir.VectorType(I32, w), [dot.k * v + m for v in range(w)])
            part = b.shuffle_vector(products, ir.Constant(products.type, None), lanes)
            new = ops.binary(BinaryOp.ADD, new, part, dot.acc)
    return new


def _wide(vl: _VectorLoop, loop: Loop, k: int, e: Expr) -> ir.Value:
    """`e` for every (v, m) of this vector iteration: lane K·(v - v0) + m."""
    b, ops = vl.b, vl.ops
    n = vl.w * k
    if _uniform(vl, loop, e):
        return ops.splat(vl.uniform(e), n)
    match e:
        case Load(buffer=name, index=index):
            found = _wide_subscripts(vl, loop, name, index)
            assert found is not None  # _wide_ok said so
            rest, broadcast = found
            if not broadcast:
                first = b.add(b.mul(vl.base, ir.Constant(I64, k)), vl.uniform(rest))
                if vl.mask is not None and k * e.dtype.itemsize in (4, 8):
                    return vl.run_at(e, first, n, vl.mask, per_word=k)  # a lane's k: a word
                return vl.run_at(e, first, n, _each_k_times(vl, k))
            group = vl.run_at(e, vl.uniform(rest), k)
            lanes = ir.Constant(ir.VectorType(I32, n), [m for _ in range(vl.w) for m in range(k)])
            return b.shuffle_vector(group, ir.Constant(group.type, None), lanes)
        case Binary(op=op, lhs=x, rhs=y):
            return ops.binary(op, _wide(vl, loop, k, x), _wide(vl, loop, k, y), x.dtype)
        case Unary(op=op, operand=x, dtype=d):
            return ops.unary(op, _wide(vl, loop, k, x), d)
        case Cast(operand=x, dtype=d):
            return ops.cast(_wide(vl, loop, k, x), x.dtype, d)
    raise AssertionError(f"not a wide expression: {e!r}")


def _each_k_times(vl: _VectorLoop, k: int) -> ir.Value | None:
    """<w·K x i1>: each lane's bit of the active mask for its K elements (None: all on);
    a tail vector reads only its lanes' elements, zeros for the others."""
    if vl.mask is None:
        return None
    lanes = ir.Constant(ir.VectorType(I32, vl.w * k), [v for v in range(vl.w) for _ in range(k)])
    return vl.b.shuffle_vector(vl.mask, ir.Constant(vl.mask.type, None), lanes)


def _byte_dot(
    vl: _VectorLoop, acc: ir.Value, a: ir.Value, c: ir.Value, da: T.DType, dc: T.DType
) -> ir.Value:
    """acc + Σ4 a·c with vpdpbusd (unsigned a × signed c). Flipping the top bit of a
    signed a makes it a + 128 unsigned; of an unsigned c, c - 128 signed; the extra
    128·Σc (resp. 128·Σa) is one more vpdpbusd against the constant, subtracted."""
    b = vl.b
    top = ir.Constant(a.type, [0x80] * a.type.count)
    if da == T.u8 and dc == T.i8:
        return _intrinsic(vl, "vpdpbusd", acc, a, c)
    zero = ir.Constant(acc.type, None)
    if da == T.i8:  # both signed: (a + 128)·c - 128·c
        main = _intrinsic(vl, "vpdpbusd", acc, b.xor(a, top), c)
        return b.sub(main, _intrinsic(vl, "vpdpbusd", zero, top, c))
    # both unsigned: a·(c - 128) + 128·a, where a·(-128) is vpdpbusd against 0x80 bytes
    main = _intrinsic(vl, "vpdpbusd", acc, a, b.xor(c, top))
    return b.sub(main, _intrinsic(vl, "vpdpbusd", zero, a, top))


def _pair_dot(
    vl: _VectorLoop, acc: ir.Value, a: ir.Value, c: ir.Value, da: T.DType, dc: T.DType, k: int
) -> ir.Value:
    """acc + Σk a·c without VNNI (AVX2), with `vpmaddwd`, which sums each pair of adjacent
    i16 products into an i32: K = 2 takes i16 words as they are; K = 4 takes bytes as
    words twice, the even bytes of each word widened in place (a shift up and back), then
    the odd ones (a shift down), so that each lane's two sums of two are its 4 products,
    with no shuffle. Exact for bytes; an i16 pair of -32768s wraps, as 32-bit sums do."""
    b = vl.b
    if k == 2:
        halves = [(a, c)]
    else:
        even_a, odd_a = _byte_halves(b, a, da)
        even_c, odd_c = _byte_halves(b, c, dc)
        halves = [(even_a, even_c), (odd_a, odd_c)]
    sums = [_madd_words(vl, x, y) for x, y in halves]
    return b.add(acc, sums[0] if k == 2 else b.add(*sums))


def _byte_halves(b: ir.IRBuilder, v: ir.Value, dtype: T.DType) -> tuple[ir.Value, ir.Value]:
    """The even and the odd bytes of `v` as i16 words (sign- or zero-extended)."""
    words = b.bitcast(v, ir.VectorType(ir.IntType(16), v.type.count // 2))
    eight = ir.Constant(words.type, [8] * words.type.count)
    if dtype == T.i8:
        return b.ashr(b.shl(words, eight), eight), b.ashr(words, eight)
    low = ir.Constant(words.type, [0xFF] * words.type.count)
    return b.and_(words, low), b.lshr(words, eight)


def _madd_words(vl: _VectorLoop, x: ir.Value, y: ir.Value) -> ir.Value:
    """vpmaddwd over i16 vectors of any whole number of registers (or one xmm)."""
    part = min(x.type.count, 16)  # i16 lanes per register (a ymm; an xmm for 8)
    name = "llvm.x86.avx2.pmadd.wd" if part == 16 else "llvm.x86.sse2.pmadd.wd"
    pieces = zip(_pieces(vl.b, x, part), _pieces(vl.b, y, part))
    sums = [vl.ops.intrinsic(name, ir.VectorType(I32, part // 2), list(xy)) for xy in pieces]
    return _joined(vl.b, sums)


@dataclass(frozen=True)
class _Words:
    """Sums of adjacent byte products in i16 lanes (vpmaddubsw's, a register a piece),
    not yet widened to i32, and the largest magnitude such a sum can have."""

    pieces: list[ir.Value]
    bound: int


def _byte_words(vl: _VectorLoop, loop: Loop, dot: _Dot, ea: Expr, eb: Expr) -> _Words | None:
    """Without VNNI (AVX2), a product of bytes that `vpmaddubsw` (unsigned × signed, pairs
    summed in i16) takes exactly: a u8 below 128 (a nibble, `q & 15`) by any i8, or an i8
    by an i8 that is never -128 (`kd.maximum(x, -127)`), whose sign moves onto the other
    (a·c = |a|·(c·sign a): `vpsignb`, GGML's AVX2 Q8_0 product); None otherwise."""
    w = vl.w
    if dot.acc != T.i32 or dot.k != 4 or _has("avx512vnni", w) or not _has_avx2(2 * w):
        return None  # (w·4 bytes: 2w words)
    if ea.dtype == T.i8 and eb.dtype == T.u8:
        ea, eb = eb, ea
    if ea.dtype == T.i8 and _above_min_byte(ea):
        ea, eb = eb, ea
    largest = _largest_byte(ea)
    small = ea.dtype == T.u8 and eb.dtype == T.i8 and largest < 128
    if not small and not (ea.dtype == eb.dtype == T.i8 and _above_min_byte(eb)):
        return None
    a, c = _wide(vl, loop, dot.k, ea), _wide(vl, loop, dot.k, eb)
    part = min(a.type.count, 32)  # bytes per register (a ymm; an xmm for 16)
    pairs = zip(_pieces(vl.b, a, part), _pieces(vl.b, c, part))
    if small:
        return _Words([_pair_words(vl, x, y) for x, y in pairs], 2 * largest * 128)
    sign = "llvm.x86.avx2.psign.b" if part == 32 else "llvm.x86.ssse3.psign.b.128"
    kind = ir.VectorType(ir.IntType(8), part)
    pieces = [
        _pair_words(
            vl,
            vl.ops.intrinsic(sign, kind, [x, x]),  # |a|: -128 stays 0x80, 128 unsigned
            vl.ops.intrinsic(sign, kind, [y, x]),  # c, -c or 0: within ±127
        )
        for x, y in pairs
    ]
    return _Words(pieces, 2 * 128 * 127)


def _pair_words(vl: _VectorLoop, a: ir.Value, c: ir.Value) -> ir.Value:
    """`vpmaddubsw` of one register of unsigned bytes a and one of signed bytes c."""
    part = a.type.count
    name = "llvm.x86.avx2.pmadd.ub.sw" if part == 32 else "llvm.x86.ssse3.pmadd.ub.sw.128"
    return vl.ops.intrinsic(name, ir.VectorType(ir.IntType(16), part // 2), [a, c])


def _widened(vl: _VectorLoop, acc: ir.Value, words: _Words) -> ir.Value:
    """acc + the i16 sums of `words` added in pairs into i32 lanes (`vpmaddwd` against
    ones): each lane's 4 products."""
    joined = _joined(vl.b, words.pieces)
    ones = ir.Constant(joined.type, [1] * joined.type.count)
    return vl.b.add(acc, _madd_words(vl, joined, ones))


def _largest_byte(e: Expr) -> int:
    """The largest value of the unsigned byte expression `e`: a mask's constant (`q & 15`),
    255 >> s for a shift right (`q >> 4`), 255 otherwise."""
    match e:
        case Binary(op=BinaryOp.AND, lhs=x, rhs=y):
            masks = [int(v.value) for v in (x, y) if isinstance(v, Const) and 0 <= int(v.value)]
            return min([255, *masks])
        case Binary(op=BinaryOp.SHR, rhs=Const(value=shift)) if e.dtype == T.u8:
            return 255 >> min(int(shift), 8)
    return 255


def _above_min_byte(e: Expr) -> bool:
    """Whether the signed byte expression `e` is never -128: clamped from below by a
    constant above it (`kd.maximum(x, -127)`: the range a quantizer's rounding keeps)."""
    match e:
        case Binary(op=BinaryOp.MAX, lhs=x, rhs=y):
            return any(isinstance(v, Const) and int(v.value) > -128 for v in (x, y))
    return False


def _pieces(b: ir.IRBuilder, v: ir.Value, part: int) -> list[ir.Value]:
    """`v`'s lanes in consecutive pieces of `part` lanes (one register each)."""
    lanes = ir.VectorType(I32, part)
    undefined = ir.Constant(v.type, None)
    return [
        b.shuffle_vector(v, undefined, ir.Constant(lanes, list(range(start, start + part))))
        for start in range(0, v.type.count, part)
    ]


def _joined(b: ir.IRBuilder, parts: list[ir.Value]) -> ir.Value:
    """Vectors of the same type, one after another in one vector (joined pairwise)."""
    while len(parts) > 1:
        m = 2 * parts[0].type.count
        join = ir.Constant(ir.VectorType(I32, m), list(range(m)))
        parts = [b.shuffle_vector(x, y, join) for x, y in zip(parts[::2], parts[1::2])]
    return parts[0]


def _has_avx2(words: int) -> bool:
    """Whether vectors of `words` i16 lanes (the w·K bytes or w·2 words of w lanes) are
    whole xmm or ymm registers, with AVX2."""
    return (words == 8 or words % 16 == 0) and jit.host_features().get("avx2", False)


def _bf16_dot(vl: _VectorLoop, acc: ir.Value, a: ir.Value, c: ir.Value) -> ir.Value:
    return _per_register(vl, "avx512bf16.dpbf16ps", F32, acc, a, c)


def _intrinsic(vl: _VectorLoop, which: str, acc: ir.Value, a: ir.Value, c: ir.Value) -> ir.Value:
    """The VNNI instruction on i32 words (the form every LLVM version accepts)."""
    return _per_register(vl, f"avx512.{which}", I32, acc, a, c)


def _per_register(
    vl: _VectorLoop, which: str, lane: ir.Type, acc: ir.Value, a: ir.Value, c: ir.Value
) -> ir.Value:
    """`llvm.x86.<which>` on each 16-lane part of the vector loop's lanes (one register
    each: a loop vectorized by 32 is two), the operands as i32 words."""
    b, w = vl.b, vl.w
    part = min(w, 16)
    words = [b.bitcast(v, ir.VectorType(I32, w)) for v in (a, c)]
    name = f"llvm.x86.{which}.{32 * part}"
    pieces = zip(*(_pieces(b, v, part) for v in (acc, *words)))
    return _joined(b, [vl.ops.intrinsic(name, ir.VectorType(lane, part), list(p)) for p in pieces])


def _has(feature: str, w: int) -> bool:
    """Whether this CPU runs `feature`'s instruction on w 32-bit lanes (a multiple of 16
    as one instruction per 16)."""
    return (w in (4, 8) or w % 16 == 0) and jit.has_avx512(feature, min(w, 16), 32)
