"""LLVM instructions for kdsl's operators, with the IR's exact semantics.

The semantics are those of the reference interpreter (kdsl/targets/interp): integer
ops wrap; integer division and modulo by zero give 0 (never a trap); shifts by an
amount outside [0, bits) saturate; float // and % follow NumPy's divmod; float to int
casts saturate; f16 uses LLVM `half`, bf16 is carried as its 16 bits.

Every operator takes scalars or vectors (`<w x T>`, one lane per iteration of a
vectorized loop) alike, lane by lane with the same semantics; only the transcendental
functions of vectors (exp, exp2, log, log2, tanh, sigmoid, erf, sin, cos) and float **
take another road (vmath.py's polynomials, vpow.py); scalars call the C library.
"""

from __future__ import annotations

import struct

import numpy as np
from llvmlite import ir

from kdsl import types as T
from kdsl.ir.nodes import BinaryOp, UnaryOp
from kdsl.targets.cpu import jit, vmath, vpow
from kdsl.types import DType

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()
F64 = ir.DoubleType()
HALF = ir.HalfType()
PTR = ir.PointerType()


def smin(b: ir.IRBuilder, x: ir.Value, y: ir.Value | int) -> ir.Value:
    """The smaller of two i64 values (an int: a constant)."""
    y = ir.Constant(I64, y) if isinstance(y, int) else y
    return b.select(b.icmp_signed("<", x, y), x, y)


def smax(b: ir.IRBuilder, x: ir.Value, y: ir.Value | int) -> ir.Value:
    """The larger of two i64 values (an int: a constant)."""
    y = ir.Constant(I64, y) if isinstance(y, int) else y
    return b.select(b.icmp_signed(">", x, y), x, y)


def clamped_extent(b: ir.IRBuilder, n: ir.Value, most: int | None = None) -> ir.Value:
    """An i64 extent within [0, most] (a loop's extent may be negative; a matrix tile
    holds at most `most`)."""
    n = smax(b, n, 0)
    return n if most is None else smin(b, n, most)


def llvm_type(d: DType) -> ir.Type:
    """The register type of a dtype (bf16 is its raw bits)."""
    if d.is_bool:
        return I1
    if d.is_int:
        return ir.IntType(d.bits)
    if d == T.f16:
        return HALF
    if d == T.bf16:
        return I16
    return F32 if d.bits == 32 else F64


def memory_type(d: DType) -> ir.Type:
    """The in-memory type of a dtype (NumPy stores bool as one byte)."""
    return ir.IntType(8) if d.is_bool else llvm_type(d)


def shaped(t: ir.Type, like: ir.Value) -> ir.Type:
    """Scalar type `t`, or a vector of it as long as `like` when `like` is a vector."""
    if isinstance(like.type, ir.VectorType):
        return ir.VectorType(t, like.type.count)
    return t


def constant(value: bool | int | float, d: DType) -> ir.Constant:
    if d == T.bf16:
        return ir.Constant(I16, bf16_bits(float(value)))
    if d.is_bool:
        return ir.Constant(I1, int(bool(value)))
    if d.is_int:
        return ir.Constant(llvm_type(d), int(value) & ((1 << d.bits) - 1))
    return ir.Constant(llvm_type(d), float(value))


def bf16_bits(x: float) -> int:
    """Round an f32 value to bf16 bits, nearest-even (as ml_dtypes does)."""
    (bits,) = struct.unpack("<I", struct.pack("<f", x))
    if (bits & 0x7F800000) == 0x7F800000 and bits & 0x7FFFFF:
        return 0x7FC0 | ((bits >> 16) & 0x8000)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def has_vrange(t: ir.Type) -> bool:
    """Whether vrangeps/pd (AVX-512DQ) takes vectors of type `t` (128, 256 or 512 bits)."""
    if not isinstance(t, ir.VectorType) or t.element not in (F32, F64):
        return False
    bits = 32 if t.element == F32 else 64
    return t.count * bits in (128, 256, 512) and jit.has_avx512("avx512dq", t.count, bits)


class Ops:
    """Emits operators with one IRBuilder; the module supplies intrinsics and libm."""

    def __init__(self, builder: ir.IRBuilder) -> None:
        self.b = builder
        self.module: ir.Module = builder.module

    # ---------------------------------------------------------------- helpers

    def intrinsic(
        self, name: str, ret: ir.Type, args: list[ir.Value], flags: tuple[str, ...] = ()
    ) -> ir.Value:
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, [a.type for a in args]), name=name)
        return self.b.call(fn, args, fastmath=flags)

    def splat(self, v: ir.Value, lanes: int) -> ir.Value:
        """<lanes x T> with `v` in every lane."""
        b, vt = self.b, ir.VectorType(v.type, lanes)
        one = b.insert_element(ir.Constant(vt, None), v, ir.Constant(I32, 0))
        return b.shuffle_vector(
            one, ir.Constant(vt, None), ir.Constant(ir.VectorType(I32, lanes), None)
        )

    def suffix(self, t: ir.Type) -> str:
        """An intrinsic's type suffix: f32, i8, v16f32, v16p0, ..."""
        if isinstance(t, ir.VectorType):
            return f"v{t.count}{self.suffix(t.element)}"
        if isinstance(t, ir.PointerType):
            return "p0"
        return {F32: "f32", F64: "f64", HALF: "f16"}.get(t) or f"i{t.width}"

    def libm(self, name32: str, x: ir.Value) -> ir.Value:
        name = name32 if x.type == F32 else name32[:-1]
        return self.intrinsic(name, x.type, [x])

    # ------------------------------------------------------------------ casts

    def cast(self, v: ir.Value, src: DType, dst: DType) -> ir.Value:
        b = self.b
        if src == dst:
            return v
        i32, f32 = shaped(I32, v), shaped(F32, v)
        if src == T.bf16:
            wide = b.bitcast(b.shl(b.zext(v, i32), ir.Constant(i32, 16)), f32)
            return self.cast(wide, T.f32, dst)
        if dst == T.bf16:
            return self._to_bf16(self.cast(v, src, T.f32))
        st, dt = shaped(llvm_type(src), v), shaped(llvm_type(dst), v)
        if dst.is_bool:
            if src.is_float:
                return b.fcmp_unordered("!=", v, ir.Constant(st, 0.0))
            return b.icmp_unsigned("!=", v, ir.Constant(st, 0))
        if src.is_bool:
            return b.uitofp(v, dt) if dst.is_float else b.zext(v, dt)
        if src.is_float and dst.is_float:
            if src == T.f16 and dst == T.f64:
                return b.fpext(b.fpext(v, f32), dt)
            if src == T.f64 and dst == T.f16:  # x86 has no such instruction, the JIT no helper
                return b.fptrunc(self._to_f32_odd(v), dt)
            return b.fpext(v, dt) if src.bits < dst.bits else b.fptrunc(v, dt)
        if src.is_float:
            if src == T.f16:
                v, src = b.fpext(v, f32), T.f32
            return self._saturating_int(v, src, dst, dt)
        if dst.is_float:
            return b.sitofp(v, dt) if src.is_signed else b.uitofp(v, dt)
        if src.bits > dst.bits:
            return b.trunc(v, dt)
        if src.bits < dst.bits:
            return b.sext(v, dt) if src.is_signed else b.zext(v, dt)
        return v

    def _saturating_int(self, v: ir.Value, src: T.DType, dst: T.DType, dt: ir.Type) -> ir.Value:
        """Float to int, saturating (NaN to 0), as compares, selects and one plain
        conversion: LLVM's fptosi.sat intrinsic becomes a scalar loop per lane on x86."""
        b = self.b
        lo = 0 if not dst.is_signed else -(2 ** (dst.bits - 1))
        hi = 2**dst.bits - 1 if not dst.is_signed else 2 ** (dst.bits - 1) - 1
        kind = np.float32 if src == T.f32 else np.float64
        top = kind(hi)
        if float(top) > hi:  # hi itself rounds up: the largest float below it
            top = np.nextafter(top, kind(0))
        ft = v.type
        low_f, top_f = ir.Constant(ft, float(lo)), ir.Constant(ft, float(top))
        clamped = b.select(b.fcmp_ordered("<", v, low_f), low_f, v)
        clamped = b.select(b.fcmp_ordered(">", clamped, top_f), top_f, clamped)
        out = b.fptosi(clamped, dt) if dst.is_signed else b.fptoui(clamped, dt)
        if float(top) < hi:  # floats above the largest convertible one: hi
            out = b.select(b.fcmp_ordered(">", v, top_f), ir.Constant(dt, hi), out)
        return b.select(b.fcmp_unordered("uno", v, v), ir.Constant(dt, 0), out)

    def _to_f32_odd(self, x: ir.Value) -> ir.Value:
        """f64 `x` rounded to f32 by round-to-odd (an inexact result gets an odd last
        bit), after which rounding to f16 gives what rounding `x` directly would."""
        b, i32 = self.b, shaped(I32, x)
        t = b.fptrunc(x, shaped(F32, x))
        bits = b.bitcast(t, i32)
        inexact = b.fcmp_ordered("!=", b.fpext(t, x.type), x)
        even = b.icmp_unsigned("==", b.and_(bits, ir.Constant(i32, 1)), ir.Constant(i32, 0))
        magnitude = f"llvm.fabs.{self.suffix(x.type)}"
        away = b.fcmp_ordered(
            ">",
            self.intrinsic(magnitude, x.type, [x]),
            self.intrinsic(magnitude, x.type, [b.fpext(t, x.type)]),
        )
        step = b.select(away, ir.Constant(i32, 1), ir.Constant(i32, -1))
        bits = b.select(b.and_(inexact, even), b.add(bits, step), bits)
        return b.bitcast(bits, t.type)

    def _to_bf16(self, x: ir.Value) -> ir.Value:
        b, i32 = self.b, shaped(I32, x)
        bits = b.bitcast(x, i32)
        lsb = b.and_(b.lshr(bits, ir.Constant(i32, 16)), ir.Constant(i32, 1))
        rounded = b.lshr(b.add(b.add(bits, ir.Constant(i32, 0x7FFF)), lsb), ir.Constant(i32, 16))
        sign_nan = b.or_(
            b.and_(b.lshr(bits, ir.Constant(i32, 16)), ir.Constant(i32, 0x8000)),
            ir.Constant(i32, 0x7FC0),
        )
        is_nan = b.fcmp_unordered("uno", x, x)
        return b.trunc(b.select(is_nan, sign_nan, rounded), shaped(I16, x))

    # ----------------------------------------------------------------- binary

    def binary(
        self, op: BinaryOp, a: ir.Value, c: ir.Value, d: DType, reassociate: bool = False
    ) -> ir.Value:
        """`a op c` for operands of dtype `d` (the result is bool for comparisons).

        `reassociate` lets LLVM reorder a float reduction's additions or products (and
        so vectorize it), as DESIGN allows unless the kernel is strict_fp.
        """
        if op.is_comparison:
            return self._compare(op, a, c, d)
        if d.is_float:
            if reassociate and op in (BinaryOp.ADD, BinaryOp.MUL):
                emit = self.b.fadd if op is BinaryOp.ADD else self.b.fmul
                return emit(a, c, flags=("reassoc", "nsz"))
            return self._float_binary(op, a, c, d)
        return self._int_binary(op, a, c, d)

    def _compare(self, op: BinaryOp, a: ir.Value, c: ir.Value, d: DType) -> ir.Value:
        if d.is_float:
            if op is BinaryOp.NE:
                return self.b.fcmp_unordered("!=", a, c)
            return self.b.fcmp_ordered(op.value, a, c)
        if d.is_signed:
            return self.b.icmp_signed(op.value, a, c)
        return self.b.icmp_unsigned(op.value, a, c)

    def _float_binary(self, op: BinaryOp, a: ir.Value, c: ir.Value, d: DType) -> ir.Value:
        b, t = self.b, a.type
        simple = {
            BinaryOp.ADD: b.fadd,
            BinaryOp.SUB: b.fsub,
            BinaryOp.MUL: b.fmul,
            BinaryOp.DIV: b.fdiv,
        }
        if op in simple:
            return simple[op](a, c)
        if op is BinaryOp.POW:
            if isinstance(t, ir.VectorType):
                return vpow.power(self, a, c)
            return self.intrinsic(f"llvm.pow.{self.suffix(t)}", t, [a, c])
        if op in (BinaryOp.MAX, BinaryOp.MIN):
            if has_vrange(t):
                return self._vrange_extreme(op, a, c)
            name = "maximum" if op is BinaryOp.MAX else "minimum"
            return self.intrinsic(f"llvm.{name}.{self.suffix(t)}", t, [a, c])
        if op in (BinaryOp.FLOORDIV, BinaryOp.MOD):
            return self._float_divmod(a, c)[0 if op is BinaryOp.FLOORDIV else 1]
        raise NotImplementedError(op)

    def _vrange_extreme(self, op: BinaryOp, a: ir.Value, c: ir.Value) -> ir.Value:
        """IEEE 754-2019 maximum/minimum of float vectors in three instructions: AVX-512DQ's
        vrange orders -0.0 below +0.0 as IEEE does but, given one NaN, returns the other
        operand, so where either is NaN an add (which returns its NaN) takes its place.
        LLVM lowers llvm.maximum to six (two blends to order the zeros, a compare and a
        blend for NaN): softmax 4096×1024 ran 1.04–1.05× faster this way (A/B, Zen 4)."""
        b, t = self.b, a.type
        kind, bits = ("ps", 32 * t.count) if t.element == F32 else ("pd", 64 * t.count)
        imm = 0b0101 if op is BinaryOp.MAX else 0b0100  # max or min; the sign as compared
        mask = ir.IntType(max(8, t.count))
        args = [a, c, ir.Constant(I32, imm), ir.Constant(t, None), ir.Constant(mask, -1)]
        if bits == 512:
            args.append(ir.Constant(I32, 4))  # the current rounding mode (no override)
        ranged = self.intrinsic(f"llvm.x86.avx512.mask.range.{kind}.{bits}", t, args)
        return b.select(b.fcmp_unordered("uno", a, c), b.fadd(a, c), ranged)

    def extreme_of_lanes(self, op: BinaryOp, v: ir.Value) -> ir.Value | None:
        """The IEEE maximum/minimum of a float vector's lanes, or None without vrange for
        its width and for 128 bits (AVX-512DQ, and VL under 512 bits): halves folded
        together down to 128 bits, then lanes shifted down within them, each step one
        _vrange_extreme; LLVM's llvm.vector.reduce.fmaximum orders zeros and NaNs
        lane by lane in scalar code (about 50 instructions for 16 lanes, against 16)."""
        b = self.b
        lanes, width = v.type.count, v.type.count
        smallest = 4 if v.type.element == F32 else 2  # lanes of a 128-bit vector
        if not (has_vrange(v.type) and has_vrange(ir.VectorType(v.type.element, smallest))):
            return None
        while lanes > smallest:
            lanes //= 2
            low, high = (
                b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, lanes), list(idx)))
                for idx in (range(lanes), range(lanes, 2 * lanes))
            )
            v, width = self._vrange_extreme(op, low, high), lanes
        while lanes > 1:
            lanes //= 2
            down = [min(n + lanes, width - 1) for n in range(width)]
            mask = ir.Constant(ir.VectorType(I32, width), down)
            v = self._vrange_extreme(op, v, b.shuffle_vector(v, v, mask))
        return b.extract_element(v, ir.Constant(I32, 0))

    def _float_divmod(self, a: ir.Value, c: ir.Value) -> tuple[ir.Value, ir.Value]:
        """NumPy's npy_divmod: floor quotient and remainder with the divisor's sign."""
        b, t = self.b, a.type
        zero, one = ir.Constant(t, 0.0), ir.Constant(t, 1.0)
        mod = b.frem(a, c)
        div = b.fdiv(b.fsub(a, mod), c)
        adjust = b.and_(
            b.fcmp_ordered("!=", mod, zero),
            b.xor(b.fcmp_ordered("<", c, zero), b.fcmp_ordered("<", mod, zero)),
        )
        mod = b.select(adjust, b.fadd(mod, c), mod)
        div = b.select(adjust, b.fsub(div, one), div)
        copysign = f"llvm.copysign.{self.suffix(t)}"
        mod = b.select(b.fcmp_ordered("==", mod, zero), self.intrinsic(copysign, t, [zero, c]), mod)
        floor = self.intrinsic(f"llvm.floor.{self.suffix(t)}", t, [div])
        floor = b.select(
            b.fcmp_ordered(">", b.fsub(div, floor), ir.Constant(t, 0.5)), b.fadd(floor, one), floor
        )
        floor = b.select(
            b.fcmp_ordered("==", div, zero),
            self.intrinsic(copysign, t, [zero, b.fdiv(a, c)]),
            floor,
        )
        by_zero = b.fcmp_ordered("==", c, zero)
        return b.select(by_zero, b.fdiv(a, c), floor), b.select(by_zero, b.frem(a, c), mod)

    def _int_binary(self, op: BinaryOp, a: ir.Value, c: ir.Value, d: DType) -> ir.Value:
        b, t = self.b, a.type
        simple = {
            BinaryOp.ADD: b.add,
            BinaryOp.SUB: b.sub,
            BinaryOp.MUL: b.mul,
            BinaryOp.AND: b.and_,
            BinaryOp.OR: b.or_,
            BinaryOp.XOR: b.xor,
        }
        if op in simple:
            return simple[op](a, c)
        if op in (BinaryOp.MAX, BinaryOp.MIN):
            signed = d.is_signed
            name = ("s" if signed else "u") + ("max" if op is BinaryOp.MAX else "min")
            return self.intrinsic(f"llvm.{name}.{self.suffix(t)}", t, [a, c])
        if op in (BinaryOp.SHL, BinaryOp.SHR):
            return self._shift(op, a, c, d)
        if op in (BinaryOp.FLOORDIV, BinaryOp.MOD):
            return self._int_divmod(op, a, c, d)
        raise NotImplementedError(op)

    def _shift(self, op: BinaryOp, a: ir.Value, c: ir.Value, d: DType) -> ir.Value:
        b, t = self.b, a.type
        in_range = b.icmp_unsigned("<", c, ir.Constant(t, d.bits))
        if op is BinaryOp.SHL:
            return b.select(in_range, b.shl(a, c), ir.Constant(t, 0))
        if d.is_signed:
            return b.ashr(a, b.select(in_range, c, ir.Constant(t, d.bits - 1)))
        return b.select(in_range, b.lshr(a, c), ir.Constant(t, 0))

    def _int_divmod(self, op: BinaryOp, a: ir.Value, c: ir.Value, d: DType) -> ir.Value:
        """Python-style floor division / modulo; 0 for a zero divisor, wrap for MIN // -1."""
        b, t = self.b, a.type
        zero, one = ir.Constant(t, 0), ir.Constant(t, 1)
        by_zero = b.icmp_unsigned("==", c, zero)
        if not d.is_signed:
            safe = b.select(by_zero, one, c)
            r = b.udiv(a, safe) if op is BinaryOp.FLOORDIV else b.urem(a, safe)
            return b.select(by_zero, zero, r)
        minus_one = ir.Constant(t, -1)
        overflow = b.and_(
            b.icmp_signed("==", a, ir.Constant(t, -(1 << (d.bits - 1)))),
            b.icmp_signed("==", c, minus_one),
        )
        safe = b.select(b.or_(by_zero, overflow), one, c)
        q, r = b.sdiv(a, safe), b.srem(a, safe)
        r = b.select(overflow, zero, r)
        fix = b.and_(b.icmp_signed("!=", r, zero), b.icmp_signed("<", b.xor(r, safe), zero))
        if op is BinaryOp.FLOORDIV:
            result = b.select(fix, b.sub(q, one), q)
        else:
            result = b.select(fix, b.add(r, safe), r)
        return b.select(by_zero, zero, result)

    # ------------------------------------------------------------------ unary

    def unary(self, op: UnaryOp, a: ir.Value, d: DType) -> ir.Value:
        b, t = self.b, a.type
        if op is UnaryOp.NEG:
            return b.fneg(a) if d.is_float else b.sub(ir.Constant(t, 0), a)
        if op is UnaryOp.INVERT:
            return b.xor(a, ir.Constant(t, -1 if not d.is_bool else 1))
        if op is UnaryOp.ABS:
            if d.is_float:
                return self.intrinsic(f"llvm.fabs.{self.suffix(t)}", t, [a])
            if not d.is_signed:
                return a
            return self.intrinsic(f"llvm.abs.{self.suffix(t)}", t, [a, ir.Constant(I1, 0)])
        if isinstance(t, ir.VectorType) and op in vmath.FUNCTIONS:
            return vmath.FUNCTIONS[op](self, a)
        s = self.suffix(t)
        one = ir.Constant(t, 1.0)
        match op:
            case (
                UnaryOp.EXP
                | UnaryOp.EXP2
                | UnaryOp.LOG
                | UnaryOp.LOG2
                | UnaryOp.SIN
                | UnaryOp.COS
                | UnaryOp.SQRT
                | UnaryOp.FLOOR
                | UnaryOp.CEIL
            ):
                return self.intrinsic(f"llvm.{op.value}.{s}", t, [a])
            case UnaryOp.ROUND:  # halves to even: vrndscaleps, cvt.rni on the GPU
                return self.intrinsic(f"llvm.roundeven.{s}", t, [a])
            case UnaryOp.RSQRT:
                return b.fdiv(one, self.intrinsic(f"llvm.sqrt.{s}", t, [a]))
            case UnaryOp.SIGMOID:
                e = self.intrinsic(f"llvm.exp.{s}", t, [b.fneg(a)])
                return b.fdiv(one, b.fadd(one, e))
            case UnaryOp.TANH:
                return self.libm("tanhf", a)
            case UnaryOp.ERF:
                return self.libm("erff", a)
        raise NotImplementedError(op)

    def fma(self, a: ir.Value, c: ir.Value, e: ir.Value) -> ir.Value:
        return self.intrinsic(f"llvm.fma.{self.suffix(a.type)}", a.type, [a, c, e])
