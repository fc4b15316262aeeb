"""x modulo π/2 for float vectors of any size: Payne–Hanek reduction, for sin and cos.

vmath.py's sin and cos subtract q·π/2 from x in three parts (Cody–Waite), which stays
exact only while q is small. Past that, this computes x·2/π modulo 4 in integers, the
way fdlibm's __kernel_rem_pio2 and ARM's optimized-routines sinf do. With x = m·2^e (m
an integer of 24 or 53 bits), the bits of 2/π above 2^(1-e) only add multiples of 4, so
m is multiplied by the window of 2/π's bits that starts there: 96 bits for f32, 192 for
f64, gathered as 32-bit words from a table and shifted into place by the exponent. The
product's bits from 2^1 down to 2^-62 (f32) or 2^-126 (f64) are the quadrant n (mod 4)
and the fraction φ: where a float comes closest to a multiple of π/2 (|φ| = 2^-29.9 at
7.729179e28 in f32, 2^-61.5 at 6381956970095103·2^797 in f64), 32 or 64 bits are left.
φ·π/2 is rounded once (double-double arithmetic for the product), then to f32 for f32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llvmlite import ir

if TYPE_CHECKING:
    from kdsl.targets.cpu.ops import Ops

I32, I64, F64 = ir.IntType(32), ir.IntType(64), ir.DoubleType()

# 2/π to 1216 bits after the point: the last window (f64's largest exponent, 192 bits,
# one word more to shift from) ends there
_TWO_OVER_PI = int(
    "a2f9836e4e441529fc2757d1f534ddc0db6295993c439041fe5163abdebbc561b7246e3a424dd2e0"
    "06492eea09d1921cfe1deb1cb129a73ee88235f52ebb4484e99c7026b45f7e413991d639835339f4"
    "9c845f8bbdf9283b1ff897ffde05980fef2f118b5a0a6d1f6d367ecf27cb09b74f463f669e5fea2d"
    "7527bac7ebe5f17b3d0739f78a5292ea6bfb5fb11f8d5d0856033046fc7b6bab",
    16,
)
_WORDS = 38
# a word of zeros first (a window may start up to 31 bits before the point), as i32s
TABLE = [0] + [
    (((_TWO_OVER_PI >> (32 * (_WORDS - 1 - k))) & 0xFFFFFFFF) ^ 1 << 31) - (1 << 31)
    for k in range(_WORDS)
]
# π/2·2^-62 (the fraction's unit) as a double-double
_PIO2_HI, _PIO2_LO = 3.4061215800865545e-19, 1.3277647201629795e-35


def reduce(ops: Ops, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(r, n) with x = n·π/2 + r, |r| <= π/4, for a vector `x` of finite f32 with |x| >=
    2^16 or f64 with |x| >= 2^27 (other lanes get garbage); n is right modulo 4, as
    integers of x's width."""
    b, count = ops.b, x.type.count
    bits, mant = (64, 52) if x.type.element == F64 else (32, 23)
    v64 = ir.VectorType(I64, count)
    xi = b.bitcast(x, ir.VectorType(ir.IntType(bits), count))
    wide = b.zext(xi, v64) if bits == 32 else xi
    exponent = b.and_(b.lshr(wide, _c(v64, mant)), _c(v64, (1 << (bits - mant - 1)) - 1))
    m = b.or_(b.and_(wide, _c(v64, (1 << mant) - 1)), _c(v64, 1 << mant))
    # the window starts at bit 2^-(e-1) of 2/π (e: x's exponent as an integer's, m·2^e),
    # 31 bits into the table; other lanes' (an x too small) stay inside the table
    limbs = 3 if bits == 32 else 6
    start = b.sub(exponent, _c(v64, (1 << (bits - mant - 2)) - 1 + mant - 30))
    word = _umin(ops, b.lshr(start, _c(v64, 5)), len(TABLE) - limbs - 1)
    shift = b.trunc(b.and_(start, _c(v64, 31)), ir.VectorType(I32, count))
    table = [_gather(ops, word, k) for k in range(limbs + 1)]
    fshl = f"llvm.fshl.{ops.suffix(shift.type)}"
    window = [
        b.zext(ops.intrinsic(fshl, shift.type, [hi, lo, shift]), v64)
        for hi, lo in zip(table, table[1:])
    ]
    factors = [m] if bits == 32 else [b.and_(m, _c(v64, 0xFFFFFFFF)), b.lshr(m, _c(v64, 32))]
    product = _low_limbs(b, window[::-1], factors)
    hi = b.or_(b.shl(product[-1], _c(v64, 32)), product[-2])  # 2 integer bits, 62 fraction
    n = b.lshr(b.add(hi, _c(v64, 1 << 61)), _c(v64, 62))  # to the nearest: φ in [-1/2, 1/2)
    hi = b.sub(hi, b.shl(n, _c(v64, 62)))
    lo = b.or_(b.shl(product[-3], _c(v64, 32)), product[-4]) if bits == 64 else None
    r = _radians(ops, hi, lo)
    if bits == 32:
        r, n = b.fptrunc(r, x.type), b.trunc(n, xi.type)
    negative = b.icmp_signed("<", xi, ir.Constant(xi.type, 0))
    zero = ir.Constant(n.type, 0)
    return b.select(negative, b.fneg(r), r), b.select(negative, b.sub(zero, n), n)


def _low_limbs(b: ir.IRBuilder, a: list[ir.Value], c: list[ir.Value]) -> list[ir.Value]:
    """The low len(a) 32-bit limbs of a·c (limbs of 32 bits in i64 lanes, lowest first)."""
    v64 = a[0].type
    columns: list[ir.Value] = [ir.Constant(v64, 0)] * len(a)
    for i, ai in enumerate(a):
        for j, cj in enumerate(c[: len(a) - i]):
            p = b.mul(ai, cj)  # < 2^64: exact
            columns[i + j] = b.add(columns[i + j], b.and_(p, _c(v64, 0xFFFFFFFF)))
            if i + j + 1 < len(a):
                columns[i + j + 1] = b.add(columns[i + j + 1], b.lshr(p, _c(v64, 32)))
    limbs, carry = [], ir.Constant(v64, 0)
    for column in columns:
        total = b.add(column, carry)
        limbs.append(b.and_(total, _c(v64, 0xFFFFFFFF)))
        carry = b.lshr(total, _c(v64, 32))
    return limbs


def _radians(ops: Ops, hi: ir.Value, lo: ir.Value | None) -> ir.Value:
    """(hi + lo·2^-64)·2^-62·π/2 in f64, hi signed and lo unsigned, rounded once."""
    b, count = ops.b, hi.type.count
    vd = ir.VectorType(F64, count)
    head = b.sitofp(hi, vd)
    tail = b.sitofp(b.sub(hi, b.fptosi(head, hi.type)), vd)  # what rounding head left out
    fma = f"llvm.fma.{ops.suffix(vd)}"
    if lo is not None:
        tail = ops.intrinsic(fma, vd, [b.uitofp(lo, vd), ir.Constant(vd, 2.0**-64), tail])
    top = b.fmul(head, ir.Constant(vd, _PIO2_HI))
    error = ops.intrinsic(fma, vd, [head, ir.Constant(vd, _PIO2_HI), b.fneg(top)])
    rest = ops.intrinsic(fma, vd, [head, ir.Constant(vd, _PIO2_LO), error])
    rest = ops.intrinsic(fma, vd, [tail, ir.Constant(vd, _PIO2_HI), rest])
    return b.fadd(top, rest)


def _gather(ops: Ops, word: ir.Value, k: int) -> ir.Value:
    """Each lane's word + k of the table, as i32s."""
    b, count = ops.b, word.type.count
    table = ops.module.globals.get("kdsl_two_over_pi")
    if table is None:
        table = ir.GlobalVariable(ops.module, ir.ArrayType(I32, len(TABLE)), "kdsl_two_over_pi")
        table.initializer = ir.Constant(table.value_type, TABLE)
        table.global_constant = True
        table.linkage = "internal"
    address = b.gep(table, [b.add(word, _c(word.type, k))], source_etype=I32)
    address.type = ir.VectorType(ir.PointerType(), count)  # llvmlite types a GEP as one pointer
    vt, mask = ir.VectorType(I32, count), ir.Constant(ir.VectorType(ir.IntType(1), count), 1)
    name = f"llvm.masked.gather.{ops.suffix(vt)}.{ops.suffix(address.type)}"
    return ops.intrinsic(name, vt, [address, ir.Constant(I32, 4), mask, ir.Constant(vt, None)])


def _umin(ops: Ops, a: ir.Value, most: int) -> ir.Value:
    return ops.intrinsic(f"llvm.umin.{ops.suffix(a.type)}", a.type, [a, _c(a.type, most)])


def _c(t: ir.Type, v: int) -> ir.Constant:
    return ir.Constant(t, v)
