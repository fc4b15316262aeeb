"""exp, exp2, log, log2, tanh, sigmoid, erf, sin and cos of float vectors, in LLVM IR.

Scalar code calls the C library; a vector loop can't afford a call per lane, so these
are written out: range reduction, then a polynomial (coefficients fitted by least
squares on Chebyshev points in 50-digit arithmetic, rounded to the dtype one at a time
with the rest refitted), evaluated with fma. Special values follow C99: exp(-inf) = 0,
exp(+inf) = inf, log(0) = -inf, log(x < 0) = NaN, sin(±inf) = NaN, sin(-0) = -0, NaN
in gives NaN out; results that underflow come out as correctly scaled denormals (never
flushed to zero). The GPU runs the same code on one-lane vectors.

- exp: x = n·ln2 + r, |r| <= ln2/2; e^r = 1 + r + r²·g(r); scaled by 2^n with AVX-512's
  vscalefps, else in two steps (either way denormal results round once). Without
  AVX-512, n is first added to the exponent bits, exact where every lane's result is a
  normal number (almost always); a vector with a lane that is not (NaN, ±inf, a result
  near overflow or denormal) takes the clamped two-step path in a branch.
- exp2: x = n + f, n = roundeven(x), f exact; 2^f = 1 + f·Q(f) on [-½, ½], scaled by
  2^n. On an AVX-512 zmm f is one vreduceps, n = x - f and the scaling one vscalefps,
  which carry ±inf and NaN through (9 instructions for 16 floats, no clamps); other
  widths clamp x first, then do the same in more steps, to the same bits (without
  AVX-512, in exp's branch: first the exponent bits).
- log: x = 2^k·m, m in [√½, √2); with s = (m-1)/(m+1), log m = 2s + s·R(s²) in
  fdlibm's arrangement, which keeps the rounding error of the small terms small.
- log2: log's reduction, then k + log(m)/ln2 with log m and 1/ln2 each carried in two
  parts (fdlibm's e_log2.c, an fma for the exact product).
- sin, cos: x = n·π/2 + r, |r| <= π/4, n rounded by adding 1.5·2^23 (f32) or 1.5·2^52
  (f64), its low bits then read from the sum's; r = x - n·π/2 with π/2 in three parts
  (Cody–Waite), right to r's last bit for |x| <= 2^17 (f32) or 2^30 (f64); larger
  arguments go to Payne–Hanek (pio2.py), in a branch taken only when a lane has one.
  Then ±(r + r³·S(r²)) or ±(1 + r²·C(r²)) as n mod 4 says.
- tanh (f32): x + x³·P(x²) for |x| < 0.625, else 1 - 2/(e^{2|x|} + 1).
- erf (f32): x + x·Q(x²) for |x| < 0.875, else 1 - e^{-x²}·R(x) with x² split exactly in
  two (fma) and R a polynomial for erfc(x)·e^{x²} on [0.875, 4]; 1 beyond 4.
- sigmoid: 1 / (1 + exp(-x)), as the scalar code defines it.
- f64 tanh and erf call the C library once per lane (bit-identical to scalar code).

Measured maximum error in ulp, against the correctly rounded result (C library in f64
rounded to f32; 80-bit long double for f64), over every 97th f32 bit pattern (44 million
points: all exponents, denormals, inf, NaN) and 2 million random f64 inputs of every
exponent and of [-750, 750] (tests/targets/cpu/test_vector.py keeps it so):

    f32: exp 1, exp2 1, log 1, log2 1, sin 2, cos 2, tanh 1, erf 1, sigmoid 4 (against
         1/(1+exp(-x)) with a correctly rounded exp and each step rounded in f32, as
         the interpreter defines it); exp2, log2, sin and cos the same over all 2^32
         inputs (sin and cos round r = x - n·π/2 once more, which costs an ulp where r
         and the result are in different binades)
    f64: exp 1, exp2 1, log 1, log2 1, sin 2, cos 2, sigmoid 4 (the same way); tanh,
         erf: the C library's

Against NumPy's own f32 ufuncs (not correctly rounded either): exp 2, exp2 3, log 3,
log2 2, sin 1, cos 1, tanh 1 (NumPy's exp2 is 3 ulp off the correctly rounded result).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from llvmlite import ir

from kdsl.ir.nodes import UnaryOp
from kdsl.targets.cpu import jit, pio2

if TYPE_CHECKING:
    from kdsl.targets.cpu.ops import Ops

# e^r = 1 + r + r²·g(r) on [-ln2/2, ln2/2]: g's coefficients, lowest degree first
_EXP_F32 = (
    0.5,
    0.1666666716337204,
    0.041666511446237564,
    0.008333180099725723,
    0.0013930501881986856,
    0.00019969673303421587,
)
_EXP_F64 = (
    0.5,
    0.1666666666666667,
    0.04166666666666667,
    0.008333333333325896,
    0.0013888888888882165,
    0.00019841269875410552,
    2.4801587329990996e-05,
    2.7557254824024013e-06,
    2.755726895313382e-07,
    2.510541126318176e-08,
    2.0916355976958494e-09,
)
# log((1+s)/(1-s)) = 2s + s·z·P(z), z = s² <= ((√2-1)/(√2+1))²: P's coefficients
_LOG_F32 = (0.6666666865348816, 0.39999550580978394, 0.28589653968811035, 0.2257644087076187)
_LOG_F64 = (
    0.6666666666666666,
    0.40000000000005315,
    0.2857142856917514,
    0.22222222655209187,
    0.18181773754621025,
    0.15387213165521038,
    0.13246723051678627,
    0.13286406109331694,
)
# tanh(x) = x + x·z·P(z), z = x² <= 0.625²
_TANH_F32 = (
    -0.3333333432674408,
    0.13333363831043243,
    -0.05396798998117447,
    0.021820344030857086,
    -0.008476214483380318,
    0.002416310366243124,
)
_TANH_SMALL = 0.625
# erf(x) = x + x·Q(x²) for |x| < 0.875
_ERF_F32 = (
    0.12837916612625122,
    -0.37612634897232056,
    0.1128372773528099,
    -0.02686152420938015,
    0.005206863395869732,
    -0.0008214141707867384,
    8.693077688803896e-05,
)
_ERF_SMALL = 0.875
# erfc(x)·e^{x²} = R(x - 2.4375) on [0.875, 4]
_ERFC_F32 = (
    0.21555247902870178,
    -0.07756081223487854,
    0.026497965678572655,
    -0.008648266084492207,
    0.002709123305976391,
    -0.0008170545333996415,
    0.00023862384841777384,
    -6.849258352303877e-05,
    1.862221870396752e-05,
    -4.27570103056496e-06,
    1.1884203559020534e-06,
    -5.362078354664845e-07,
    1.227800936476342e-07,
)
_ERFC_MID = 2.4375
_ERF_ONE = 4.0  # erf(x) rounds to 1 in f32 from 3.92 on

# 2^f = 1 + f·Q(f) on [-1/2, 1/2]: Q's coefficients
_EXP2_F32 = (
    0.6931471824645996,
    0.24022644758224487,
    0.055503591895103455,
    0.009618841111660004,
    0.0013391136890277267,
    0.00015238006017170846,
)
_EXP2_F64 = (
    0.6931471805599453,
    0.24022650695910133,
    0.05550410866482226,
    0.009618129107593498,
    0.0013333558146380658,
    0.00015403530457765014,
    1.5252733805508415e-05,
    1.3215435001110848e-06,
    1.0178086773687693e-07,
    7.073826046303358e-09,
    4.449955477539561e-10,
)
# exp2's argument is clamped to [lo, hi] where 2^n is two steps (beyond: 0 or inf anyway)
_EXP2_RANGE = {32: (-151.0, 129.0), 64: (-1076.0, 1025.0)}
# n for which p·2^n is a normal number for every p in [1/√2, √2] (exp's and exp2's)
_NORMAL_N = {32: (-125.0, 127.0), 64: (-1021.0, 1023.0)}
# sin r = r + r·z·S(z) and cos r = 1 + z·C(z), z = r² <= 0.8²
_SIN = {
    32: (-0.16666652262210846, 0.008332029916346073, -0.00019498838810250163),
    64: (
        -0.1666666666666662,
        0.008333333333319757,
        -0.00019841269827676413,
        2.7557312950203164e-06,
        -2.5050641636191404e-08,
        1.5890026917978748e-10,
    ),
}
_COS = {
    32: (-0.5, 0.04166664183139801, -0.0013887141831219196, 2.4414253857685253e-05),
    64: (
        -0.5,
        0.04166666666666657,
        -0.001388888888886881,
        2.480158728628522e-05,
        -2.755731345548452e-07,
        2.0875604266470646e-09,
        -1.1353610644992426e-11,
    ),
}
# π/2 = the sum of three positive floats (the rest is below 2^-72 for f32, 2^-159 for
# f64); positive, so that -q·part is -0 for q = 0 and sin(-0) stays -0
_PIO2 = {
    32: (1.570796251296997, 7.549789415861596e-08, 5.390302953474238e-15),
    64: (1.5707963267948966, 6.123233995736765e-17, 1.082856673921914e-32),
}
_TWO_OVER_PI = 0.6366197723675814
# where Cody–Waite stops being right to r's last bit (q·π/2 in three parts): beyond,
# Payne–Hanek (pio2.py)
_TRIG_FAST = {32: 2.0**17, 64: 2.0**30}

_LOG2E = 1.4426950408889634
# 1/ln 2 = hi + lo for each dtype
_LOG2E_PARTS = {
    32: (1.4426950216293335, 1.925963033500011e-08),
    64: (1.4426950408889634, 2.0355273740931033e-17),
}
# ln 2 = hi + lo with hi short enough that k·hi is exact for every exponent k
_LN2 = {
    32: (0.693145751953125, 1.4286068203094173e-06),
    64: (0.6931471803691238, 1.9082149292705877e-10),
}
# exp's argument is clamped to [lo, hi]: beyond them the result is 0 or inf anyway
_EXP_RANGE = {32: (-104.0, 89.0), 64: (-746.0, 710.0)}


class Vec:
    """Helpers for one float vector type: constants, fma, polynomials, bit tricks."""

    def __init__(self, ops: Ops, x: ir.Value) -> None:
        self.ops, self.b = ops, ops.b
        self.t = x.type
        self.bits = 64 if x.type.element == ir.DoubleType() else 32
        self.mant = 52 if self.bits == 64 else 23
        self.bias = 1023 if self.bits == 64 else 127
        self.it = ir.VectorType(ir.IntType(self.bits), x.type.count)

    def c(self, v: float) -> ir.Constant:
        return ir.Constant(self.t, v)

    def ci(self, v: int) -> ir.Constant:
        return ir.Constant(self.it, v)

    def call(self, name: str, *args: ir.Value) -> ir.Value:
        return self.ops.intrinsic(f"llvm.{name}.{self.ops.suffix(self.t)}", self.t, list(args))

    def fma(self, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        return self.call("fma", a, b, c)

    def poly(self, x: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
        """Σ coeffs[k]·x^k by Horner's rule."""
        acc: ir.Value = self.c(coeffs[-1])
        for k in reversed(coeffs[:-1]):
            acc = self.fma(acc, x, self.c(k))
        return acc

    def lt(self, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.b.fcmp_ordered("<", a, b)

    def is_nan(self, x: ir.Value) -> ir.Value:
        return self.b.fcmp_unordered("uno", x, x)

    def clamp(self, x: ir.Value, lo: float, hi: float) -> ir.Value:
        """x within [lo, hi]; ordered comparisons, so a NaN passes both (each clamp a
        vminps or vmaxps)."""
        b = self.b
        x = b.select(b.fcmp_ordered(">", x, self.c(hi)), self.c(hi), x)
        return b.select(self.lt(x, self.c(lo)), self.c(lo), x)

    def avx512(self, feature: str) -> bool:
        """Whether this type is a zmm register and `feature` is there for it."""
        return self.t.count * self.bits == 512 and jit.has_avx512(feature, self.t.count, self.bits)

    def x86(self, name: str, *args: ir.Value) -> ir.Value:
        """An AVX-512 intrinsic on a zmm, all lanes, the current rounding mode."""
        mask = ir.Constant(ir.IntType(self.t.count), -1)
        current = ir.Constant(ir.IntType(32), 4)
        kind = "pd" if self.bits == 64 else "ps"
        return self.ops.intrinsic(
            f"llvm.x86.avx512.mask.{name}.{kind}.512",
            self.t,
            [*args, ir.Constant(self.t, None), mask, current],
        )

    def scaled(self, p: ir.Value, n: ir.Value) -> ir.Value:
        """p·2^n for integral n (a float) in exp's range, rounded once: one vscalefps
        with AVX-512 (which takes 2^floor(n) of any n: 0 for -inf, inf for inf), else in
        two steps through the exponent bits."""
        b, count = self.b, self.t.count
        if self.avx512("avx512f"):
            return self.x86("scalef", p, n)
        if jit.has_avx512("avx512f", count, self.bits):  # via ldexp: other widths
            k = b.fptosi(n, ir.VectorType(ir.IntType(32), count))
            name = f"llvm.ldexp.{self.ops.suffix(self.t)}.{self.ops.suffix(k.type)}"
            return self.ops.intrinsic(name, self.t, [p, k])
        k = b.fptosi(n, self.it)
        k1 = b.ashr(k, self.ci(1))
        return b.fmul(b.fmul(p, self.pow2(k1)), self.pow2(b.sub(k, k1)))

    def pow2(self, k: ir.Value) -> ir.Value:
        """2^k for integer k in the normal range."""
        return self.b.bitcast(
            self.b.shl(self.b.add(k, self.ci(self.bias)), self.ci(self.mant)), self.t
        )


def exp(ops: Ops, x: ir.Value) -> ir.Value:
    v = Vec(ops, x)
    if not _scales_by_bits(v):
        return _exp_clamped(v, x)
    return _normal_first(v, *_exp_parts(v, x), lambda: _exp_clamped(v, x))


def _exp_parts(v: Vec, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(n, e^r) for x = n·ln2 + r."""
    n = v.call("roundeven", v.b.fmul(x, v.c(_LOG2E)))
    ln2_hi, ln2_lo = _LN2[v.bits]
    r = v.fma(n, v.c(-ln2_hi), x)
    r = v.fma(n, v.c(-ln2_lo), r)
    g = v.poly(r, _EXP_F64 if v.bits == 64 else _EXP_F32)
    return n, v.fma(v.fma(g, r, v.c(1.0)), r, v.c(1.0))


def _exp_clamped(v: Vec, x: ir.Value) -> ir.Value:
    n, p = _exp_parts(v, v.clamp(x, *_EXP_RANGE[v.bits]))
    if v.avx512("avx512f"):  # vscalefps carries the NaN through: no compare and blend for it
        return v.scaled(p, n)
    return v.b.select(v.is_nan(x), x, v.scaled(p, n))  # n as an integer would be poison


def exp2(
    ops: Ops, x: ir.Value, q: tuple[float, ...] | None = None, lo: ir.Value | None = None
) -> ir.Value:
    """2^x, or 2^(x + lo) for a small `lo` (pow's double-double exponent, its low part 0
    where x is not finite); `q` replaces the polynomial Q (2^f = 1 + f·Q(f)) where less
    accuracy serves."""
    v, b = Vec(ops, x), ops.b
    coeffs = (1.0, *(q or (_EXP2_F64 if v.bits == 64 else _EXP2_F32)))
    if v.avx512("avx512dq"):
        # f = x - roundeven(x), exact, in one vreduceps (imm 8: to nearest, 0 fraction
        # bits, no precision exception; 0 for ±inf), and n = x - f: ±inf stays, which
        # vscalefps turns into inf or 0 (a NaN goes through both)
        f = v.x86("reduce", x, ir.Constant(ir.IntType(32), 8))
        g = f if lo is None else b.fadd(f, lo)
        return v.scaled(v.poly(g, coeffs), b.fsub(x, f))
    if lo is None and _scales_by_bits(v):
        n = v.call("roundeven", x)
        p = v.poly(b.fsub(x, n), coeffs)
        return _normal_first(v, n, p, lambda: _exp2_clamped(v, x, coeffs, lo))
    return _exp2_clamped(v, x, coeffs, lo)


def _exp2_clamped(v: Vec, x: ir.Value, coeffs: tuple[float, ...], lo: ir.Value | None) -> ir.Value:
    b = v.b
    xc = v.clamp(x, *_EXP2_RANGE[v.bits])
    n = v.call("roundeven", xc)
    f = b.fsub(xc, n)
    g = f if lo is None else b.fadd(f, lo)
    return b.select(v.is_nan(x), x, v.scaled(v.poly(g, coeffs), n))


def _scales_by_bits(v: Vec) -> bool:
    """Whether exp and exp2 scale by 2^n through the exponent bits first: CPU vectors
    without AVX-512's vscalefps (whose two-step scaling and NaN blend cost more than a
    branch: AVX2, exp2 of 8 floats 21 → 15 instructions)."""
    return v.t.count > 1 and not jit.has_avx512("avx512f", v.t.count, v.bits)


def _normal_first(v: Vec, n: ir.Value, p: ir.Value, careful: Callable[[], ir.Value]) -> ir.Value:
    """p·2^n (p in [1/√2, √2], n integral) by adding n to p's exponent bits, exact where
    the product is a normal number: where every lane's n is in _NORMAL_N; otherwise (a
    NaN, ±inf, or a result near overflow or denormal in some lane) `careful()`, in a
    branch taken only then."""
    b = v.b
    k = b.fptosi(n, v.it)  # (poison in a lane out of range: then the branch's value serves)
    fast = b.bitcast(b.add(b.bitcast(p, v.it), b.shl(k, v.ci(v.mant))), v.t)
    before = b.block
    with b.if_then(_outside_normal(v, n), likely=False):
        slow = careful()
        after = b.block
    result = b.phi(v.t)
    result.add_incoming(fast, before)
    result.add_incoming(slow, after)
    return result


def _outside_normal(v: Vec, n: ir.Value) -> ir.Value:
    """Whether some lane of n is outside _NORMAL_N (or NaN): compared a register's width
    at a time and the masks or-ed, which ends in one vtestps; LLVM packs the lanes of a
    compare wider than a register down to bytes first (16 floats on AVX2: 13 → 8
    instructions; softmax rows in the L2 1.08× faster on a Zen 2)."""
    b = v.b
    lo, hi = _NORMAL_N[v.bits]
    step = min(v.t.count, jit.register_bytes() * 8 // v.bits)
    part_type = ir.VectorType(v.t.element, step)
    outside: ir.Value | None = None
    for start in range(0, v.t.count, step):
        lanes = ir.Constant(ir.VectorType(ir.IntType(32), step), list(range(start, start + step)))
        part = b.shuffle_vector(n, n, lanes) if step < v.t.count else n
        low = b.fcmp_unordered("<", part, ir.Constant(part_type, lo))
        out = b.or_(low, b.fcmp_unordered(">", part, ir.Constant(part_type, hi)))
        outside = out if outside is None else b.or_(outside, out)
    assert outside is not None
    mask = ir.IntType(step)
    return b.icmp_unsigned("!=", b.bitcast(outside, mask), ir.Constant(mask, 0))


def _log_parts(v: Vec, x: ir.Value) -> tuple[ir.Value, ...]:
    """x = 2^k·(1 + f), 1 + f in [√½, √2): (k as a float, f, f²/2, s·(f²/2 + R(s²)))
    with s = f/(2 + f) and log(1 + f) = f - f²/2 + s·(f²/2 + R(s²))."""
    b = v.b
    min_normal = 2.0 ** (1 - v.bias)
    tiny = v.lt(x, v.c(min_normal))
    xs = b.select(tiny, b.fmul(x, v.c(2.0**v.mant)), x)  # denormals: normalize first
    bits = b.bitcast(xs, v.it)
    k = b.sub(b.lshr(bits, v.ci(v.mant)), v.ci(v.bias))
    k = b.sub(k, b.select(tiny, v.ci(v.mant), v.ci(0)))
    m_bits = b.or_(b.and_(bits, v.ci((1 << v.mant) - 1)), v.ci(v.bias << v.mant))
    m = b.bitcast(m_bits, v.t)  # in [1, 2)
    big = b.fcmp_ordered(">", m, v.c(2**0.5))
    m = b.select(big, b.fmul(m, v.c(0.5)), m)
    k = b.add(k, b.zext(big, v.it))
    f = b.fsub(m, v.c(1.0))
    s = b.fdiv(f, b.fadd(f, v.c(2.0)))
    z = b.fmul(s, s)
    big_r = b.fmul(z, v.poly(z, _LOG_F64 if v.bits == 64 else _LOG_F32))
    hfsq = b.fmul(b.fmul(v.c(0.5), f), f)
    return b.sitofp(k, v.t), f, hfsq, b.fmul(s, b.fadd(hfsq, big_r))


def log(ops: Ops, x: ir.Value) -> ir.Value:
    v, b = Vec(ops, x), ops.b
    dk, f, hfsq, sr = _log_parts(v, x)
    ln2_hi, ln2_lo = _LN2[v.bits]
    tail = b.fadd(sr, b.fmul(dk, v.c(ln2_lo)))
    return _log_specials(v, x, b.fsub(b.fmul(dk, v.c(ln2_hi)), b.fsub(b.fsub(hfsq, tail), f)))


def log2(ops: Ops, x: ir.Value) -> ir.Value:
    """k + log(1 + f)/ln 2, the logarithm carried in two parts (fdlibm's e_log2.c, with
    an fma for the exact product where fdlibm cuts bits off)."""
    v, b = Vec(ops, x), ops.b
    dk, f, hfsq, sr = _log_parts(v, x)
    hi = b.fsub(f, hfsq)
    lo = b.fadd(b.fsub(b.fsub(f, hi), hfsq), sr)  # f - hi is exact
    l2e_hi, l2e_lo = _LOG2E_PARTS[v.bits]
    top = b.fmul(hi, v.c(l2e_hi))
    rest = v.fma(hi, v.c(l2e_hi), b.fneg(top))
    rest = b.fadd(rest, v.fma(lo, v.c(l2e_hi), b.fmul(b.fadd(hi, lo), v.c(l2e_lo))))
    whole = b.fadd(dk, top)  # |dk| >= |top| or dk = 0: its error is exact
    rest = b.fadd(rest, b.fadd(b.fsub(dk, whole), top))
    return _log_specials(v, x, b.fadd(whole, rest))


def _log_specials(v: Vec, x: ir.Value, result: ir.Value) -> ir.Value:
    """inf at inf, -inf at 0, NaN below 0 and at NaN."""
    b = v.b
    result = b.select(b.fcmp_ordered("==", x, v.c(float("inf"))), x, result)
    result = b.select(b.fcmp_ordered("==", x, v.c(0.0)), v.c(float("-inf")), result)
    result = b.select(v.lt(x, v.c(0.0)), v.c(float("nan")), result)
    return b.select(v.is_nan(x), x, result)


def tanh(ops: Ops, x: ir.Value) -> ir.Value:
    if x.type.element != ir.FloatType():
        return _per_lane(ops, "tanhf", x)
    v, b = Vec(ops, x), ops.b
    ax = v.call("fabs", x)
    z = b.fmul(x, x)
    small = v.fma(b.fmul(x, z), v.poly(z, _TANH_F32), x)
    e = exp(ops, b.fadd(ax, ax))
    large = b.fsub(v.c(1.0), b.fdiv(v.c(2.0), b.fadd(e, v.c(1.0))))
    return v.call("copysign", b.select(v.lt(ax, v.c(_TANH_SMALL)), small, large), x)


def erf(ops: Ops, x: ir.Value) -> ir.Value:
    if x.type.element != ir.FloatType():
        return _per_lane(ops, "erff", x)
    v, b = Vec(ops, x), ops.b
    ax = v.call("fabs", x)
    small = v.fma(x, v.poly(b.fmul(x, x), _ERF_F32), x)
    xc = b.select(v.lt(ax, v.c(_ERF_ONE)), ax, v.c(_ERF_ONE))
    hi = b.fmul(xc, xc)
    lo = v.fma(xc, xc, b.fneg(hi))  # x² = hi + lo exactly
    e = exp(ops, b.fneg(hi))
    e = v.fma(b.fneg(e), lo, e)  # e^{-hi-lo} ≈ e^{-hi}·(1 - lo)
    large = v.fma(b.fneg(e), v.poly(b.fsub(xc, v.c(_ERFC_MID)), _ERFC_F32), v.c(1.0))
    result = v.call("copysign", b.select(v.lt(ax, v.c(_ERF_SMALL)), small, large), x)
    return b.select(v.is_nan(x), x, result)


def sigmoid(ops: Ops, x: ir.Value) -> ir.Value:
    b, one = ops.b, ir.Constant(x.type, 1.0)
    return b.fdiv(one, b.fadd(one, exp(ops, b.fneg(x))))


def sin(ops: Ops, x: ir.Value) -> ir.Value:
    return _sin_of_quadrant(ops, x, 0)


def cos(ops: Ops, x: ir.Value) -> ir.Value:
    return _sin_of_quadrant(ops, x, 1)  # cos x = sin(x + π/2)


def _sin_of_quadrant(ops: Ops, x: ir.Value, quadrant: int) -> ir.Value:
    """sin(x + quadrant·π/2): x = n·π/2 + r, then ±sin r or ±cos r as n mod 4 says."""
    v, b = Vec(ops, x), ops.b
    shifter = v.c(1.5 * 2.0**v.mant)  # t's last bit is 1: t = n + shifter, n rounded
    t = v.fma(x, v.c(_TWO_OVER_PI), shifter)
    q = b.fsub(t, shifter)
    r = x
    for part in _PIO2[v.bits]:
        r = v.fma(b.fneg(q), v.c(part), r)  # right to its last bit up to _TRIG_FAST
    ax = v.call("fabs", x)
    large = b.and_(v.lt(v.c(_TRIG_FAST[v.bits]), ax), v.lt(ax, v.c(float("inf"))))
    r, n = _reduced_large(v, x, large, r, b.bitcast(t, v.it))
    n = b.add(n, v.ci(quadrant))
    z = b.fmul(r, r)
    sin_r = v.fma(b.fmul(r, z), v.poly(z, _SIN[v.bits]), r)
    sin_r = v.call("copysign", sin_r, r)  # its sign (|r| <= π/4), and -0 at -0
    cos_r = v.fma(z, v.poly(z, _COS[v.bits]), v.c(1.0))
    odd = b.trunc(n, ir.VectorType(ir.IntType(1), v.t.count))
    result = b.bitcast(b.select(odd, cos_r, sin_r), v.it)
    sign = b.shl(b.and_(n, v.ci(2)), v.ci(v.bits - 2))  # negative in quadrants 2 and 3
    return b.bitcast(b.xor(result, sign), v.t)


def _reduced_large(
    v: Vec, x: ir.Value, large: ir.Value, r: ir.Value, n: ir.Value
) -> tuple[ir.Value, ir.Value]:
    """(r, n) with the `large` lanes' from Payne–Hanek, in a branch taken only when
    there are some."""
    b, count = v.b, v.t.count
    mask = b.bitcast(large, ir.IntType(count))
    before = b.block
    with b.if_then(b.icmp_unsigned("!=", mask, ir.Constant(mask.type, 0)), likely=False):
        r_large, n_large = pio2.reduce(v.ops, x)
        r_new, n_new = b.select(large, r_large, r), b.select(large, n_large, n)
        after = b.block
    r_phi, n_phi = b.phi(r.type), b.phi(n.type)
    for phi, old, new in ((r_phi, r, r_new), (n_phi, n, n_new)):
        phi.add_incoming(old, before)
        phi.add_incoming(new, after)
    return r_phi, n_phi


def _per_lane(ops: Ops, name32: str, x: ir.Value) -> ir.Value:
    """The C library's function, called once per lane."""
    b = ops.b
    out: ir.Value = ir.Constant(x.type, None)
    for lane in range(x.type.count):
        index = ir.Constant(ir.IntType(32), lane)
        out = b.insert_element(out, ops.libm(name32, b.extract_element(x, index)), index)
    return out


FUNCTIONS: dict[UnaryOp, Callable[[Ops, ir.Value], ir.Value]] = {
    UnaryOp.EXP: exp,
    UnaryOp.EXP2: exp2,
    UnaryOp.LOG: log,
    UnaryOp.LOG2: log2,
    UnaryOp.TANH: tanh,
    UnaryOp.ERF: erf,
    UnaryOp.SIGMOID: sigmoid,
    UnaryOp.SIN: sin,
    UnaryOp.COS: cos,
}
