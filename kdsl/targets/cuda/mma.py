"""Tile products on a GPU warp's tensor cores (a loop marked `tensorize(rows, "mma")`,
kdsl/ir/tile_product.py): `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`, sm_80+.

One mma.sync adds the product of a 16×16 bf16 tile of A and a 16×8 tile of B into a
16×8 f32 tile, the 32 lanes of the warp each holding a fragment of every operand in
registers: A four 32-bit words (two bf16 each), B two, the accumulator four f32. A
TR × TC accumulator is (TR/16)·(TC/8) such tiles, held in registers across all of k:

    warp sync; fragments of the accumulator from acc (or zeros: "from zero")
    for each block of 16 k:  A's and B's fragments from memory; an mma.sync per tile
    fragments to acc, the elements in the loops' range only; warp sync

Which elements a lane holds is the PTX ISA's ("Matrix Fragments for mma.m16n8k16 with
floating point type"), with g = lane / 4 and t = lane % 4: `A_WORDS`, `B_WORDS` and
`C_ELEMENTS` below say it as offsets from (g, 2t). A word's two elements are k and k + 1
with k even: where they are next to each other in memory on a 4-byte boundary (k along
the operand's last axis, contiguous, the other strides and the tile's first element on
4 bytes: checked at run time, once per product) and both inside the loops' range, the
word is one 32-bit load. Otherwise the lane reads the two elements one by one, each
clamped into the loops' range and replaced by zero outside it, so any R, C and K work
and nothing outside them is read or written.

The accumulator is the warp's: the GPU plan puts it in shared memory, one copy per warp
(it is the same memory for the 32 lanes, as the IR's redundant lanes expect), and the
warp syncs around the nest order the lanes' reads and writes of it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from llvmlite import ir

from kdsl.errors import CompileError
from kdsl.ir.nodes import Loop
from kdsl.ir.tile_product import TileProduct, match
from kdsl.targets.cpu.ops import I16, I32, I64, clamped_extent
from kdsl.targets.cuda.ptx import arch

if TYPE_CHECKING:
    from kdsl.targets.cuda.codegen import GpuCodegen

M, N, K_STEP = 16, 8, 16  # the instruction's shape
MIN_SM = 80  # bf16 mma.sync: Ampere and later
F32 = ir.FloatType()

# (row, k) offsets of the low element of A's word w from (g, 2t); the high one is at k + 1
A_WORDS = ((0, 0), (8, 0), (0, 8), (8, 8))
# (k, column) offsets of the low element of B's word w from (2t, g); the high one is k + 1
B_WORDS = ((0, 0), (8, 0))
# (row, column) offsets of accumulator element e from (g, 2t)
C_ELEMENTS = ((0, 0), (0, 1), (8, 0), (8, 1))

_MMA = (
    "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
    "{$0,$1,$2,$3}, {$4,$5,$6,$7}, {$8,$9}, {$10,$11,$12,$13};"
)


def tile_instructions() -> frozenset[str]:
    """{"mma"} where the GPU kdsl builds for (ptx.arch: KDSL_CUDA_ARCH, the device's,
    or sm_80) has bf16 tensor cores."""
    number = int("".join(ch for ch in arch().removeprefix("sm_") if ch.isdigit()))
    return frozenset({"mma"}) if number >= MIN_SM else frozenset()


def emit_mma(gen: GpuCodegen, loop: Loop) -> None:
    product = match(loop, gen.buffers, "mma")
    if isinstance(product, str):  # the schedule step checked it: a kdsl bug
        raise CompileError(
            f"loop '{loop.var}' was tensorized but is not a tile product: {product}",
            kernel=gen.kernel.name,
            fix="this is a kdsl bug; please report it with the kernel's schedule",
        )
    _WarpProduct(gen, product).emit()


class _WarpProduct:
    """The code of one tile product on one warp. `rows`, `cols` and `depth` are the
    loops' extents (i64, clamped to the tile); `g` and `t` the lane's group and thread
    in group."""

    def __init__(self, gen: GpuCodegen, p: TileProduct) -> None:
        self.gen, self.b, self.p = gen, gen.b, p
        b = self.b
        self.tr, self.tc = p.shape
        self.rows = clamped_extent(b, gen.expr(p.rows.extent), self.tr)
        self.cols = clamped_extent(b, gen.expr(p.cols.extent), self.tc)
        self.depth = clamped_extent(b, gen.expr(p.depth))
        lane = b.urem(gen.sreg("tid", 0), _i64(32))
        self.g, self.t2 = b.udiv(lane, _i64(4)), b.mul(b.urem(lane, _i64(4)), _i64(2))
        self.a_at = tuple(gen.expr(e) for e in p.a_at)
        self.b_at = tuple(gen.expr(e) for e in p.b_at)
        self.a_pairs = self.pairs_in_words(p.a, self.a_at)
        # (B as rows of k: k + 1 is a row further on)
        self.b_pairs = None if p.b_layout == "rows" else self.pairs_in_words(p.b, self.b_at)

    def pairs_in_words(self, name: str, at: tuple[ir.Value, ...]) -> ir.Value:
        """Whether every pair of elements k, k + 1 (k even) along the last axis of
        operand `name` is one aligned 32-bit word: that axis contiguous, the next one's
        stride and the element at `at` (the tile's first) on 4 bytes (the axes before
        those are the same for the whole tile)."""
        b, strides = self.b, self.gen.state.arrays[name].strides
        ok = b.icmp_signed("==", strides[-1], _i64(2))
        first = b.ptrtoint(self.address(name, at), I64)
        for bytes_ in (strides[-2], first):
            ok = b.and_(ok, b.icmp_signed("==", b.and_(bytes_, _i64(3)), _i64(0)))
        return ok

    def emit(self) -> None:
        b = self.b
        some = b.and_(
            b.icmp_signed(">", self.rows, _i64(0)), b.icmp_signed(">", self.cols, _i64(0))
        )
        self.gen.warp_sync()
        with b.if_then(some):
            tiles = [(mi, ni) for mi in range(self.tr // M) for ni in range(self.tc // N)]
            slots = {tile: self.load_accumulator(*tile) for tile in tiles}
            steps = b.sdiv(b.add(self.depth, _i64(K_STEP - 1)), _i64(K_STEP))

            def step(k: ir.Value) -> None:
                k0 = b.mul(b.load(k, typ=I64), _i64(K_STEP))
                a = [self.a_fragment(mi, k0) for mi in range(self.tr // M)]
                bs = [self.b_fragment(ni, k0) for ni in range(self.tc // N)]
                for (mi, ni), slot in slots.items():
                    self.mma(slot, a[mi], bs[ni])

            self.gen.counted(f"{self.p.rows.var}.k16", _i64(0), steps, 1, step)
            for tile, slot in slots.items():
                self.store_accumulator(*tile, slot)
        self.gen.warp_sync()

    # ---------------------------------------------------------------- operands

    def a_fragment(self, mi: int, k0: ir.Value) -> list[ir.Value]:
        """A's four words for row tile `mi` at k0."""
        b = self.b
        words = []
        for row_off, k_off in A_WORDS:
            row = b.add(self.g, _i64(mi * M + row_off))
            k = b.add(k0, b.add(self.t2, _i64(k_off)))
            at = functools.partial(self.a_element, row)
            words.append(self.word(at, row, self.rows, k, self.a_pairs))
        return words

    def b_fragment(self, ni: int, k0: ir.Value) -> list[ir.Value]:
        """B's two words for column tile `ni` at k0."""
        b = self.b
        col = b.add(self.g, _i64(ni * N))
        words = []
        for k_off, _ in B_WORDS:
            k = b.add(k0, b.add(self.t2, _i64(k_off)))
            at = functools.partial(self.b_element, col)
            words.append(self.word(at, col, self.cols, k, self.b_pairs))
        return words

    def word(
        self,
        at: Callable[[ir.Value], ir.Value],
        where: ir.Value,
        extent: ir.Value,
        k: ir.Value,
        pairs: ir.Value | None,
    ) -> ir.Value:
        """The 32-bit word of elements k (low half) and k + 1 (high half) at `where` (a
        row of A or a column of B): zero where out of [0, extent) × [0, depth). One load
        where `pairs` (see `pairs_in_words`) and both are inside."""
        b = self.b
        inside = b.icmp_signed("<", where, extent)
        if pairs is None:
            return self.halves(at, inside, k)
        both = b.and_(inside, b.icmp_signed("<", b.add(k, _i64(1)), self.depth))
        with b.if_else(b.and_(pairs, both)) as (then, otherwise):
            with then:
                whole, whole_block = b.load(at(k), typ=I32, align=4), b.block
            with otherwise:
                parts, parts_block = self.halves(at, inside, k), b.block
        word = b.phi(I32)
        word.add_incoming(whole, whole_block)
        word.add_incoming(parts, parts_block)
        return word

    def halves(self, at: Callable[[ir.Value], ir.Value], inside: ir.Value, k: ir.Value) -> ir.Value:
        """The word read one element at a time, each zero outside the loops' range."""
        b = self.b
        halves = []
        for kk in (k, b.add(k, _i64(1))):
            ok = b.and_(inside, b.icmp_signed("<", kk, self.depth))
            bits = b.load(at(kk), typ=I16)
            halves.append(b.zext(b.select(ok, bits, ir.Constant(I16, 0)), I32))
        return b.or_(halves[0], b.shl(halves[1], ir.Constant(I32, 16)))

    def a_element(self, row: ir.Value, k: ir.Value) -> ir.Value:
        r = self.clamp_index(row, self.rows)
        kk = self.clamp_index(k, self.depth)
        return self.operand(self.p.a, self.a_at, (r, kk))

    def b_element(self, col: ir.Value, k: ir.Value) -> ir.Value:
        b, p = self.b, self.p
        c = self.clamp_index(col, self.cols)
        kk = self.clamp_index(k, self.depth)
        offsets = {
            "vnni": lambda: (b.udiv(kk, _i64(2)), b.add(b.mul(c, _i64(2)), b.urem(kk, _i64(2)))),
            "rows": lambda: (kk, c),
            "columns": lambda: (c, kk),
        }
        return self.operand(p.b, self.b_at, offsets[p.b_layout]())

    def clamp_index(self, i: ir.Value, extent: ir.Value) -> ir.Value:
        """i, or extent - 1 past the end: an address that is safe to read (extent > 0,
        or the element is not read: depth 0 runs no step)."""
        b = self.b
        last = b.sub(extent, _i64(1))
        return b.select(b.icmp_signed("<", i, extent), i, last)

    def operand(
        self, name: str, at: tuple[ir.Value, ...], offsets: tuple[ir.Value, ir.Value]
    ) -> ir.Value:
        """The element of operand `name` at `at`, its last two subscripts moved by
        `offsets` (the axes before them are the same for the whole tile)."""
        return self.address(name, (*at[:-2], *(self.b.add(x, d) for x, d in zip(at[-2:], offsets))))

    def address(self, name: str, at: tuple[ir.Value, ...]) -> ir.Value:
        return self.gen._element(self.gen.state.arrays[name], list(at))

    # ------------------------------------------------------------- accumulator

    def c_positions(self, mi: int, ni: int) -> list[tuple[ir.Value, ir.Value]]:
        b = self.b
        return [
            (b.add(self.g, _i64(mi * M + r)), b.add(self.t2, _i64(ni * N + c)))
            for r, c in C_ELEMENTS
        ]

    def load_accumulator(self, mi: int, ni: int) -> list[ir.Value]:
        """Four f32 slots (promoted to registers by LLVM) holding the tile's fragment."""
        slots = []
        for at in self.c_positions(mi, ni):
            slot = self.gen._entry_alloca(F32, f"mma.c{mi}.{ni}")
            if self.p.rows.width == 0:  # (mark_zero_starts)
                value: ir.Value = ir.Constant(F32, 0.0)
            else:
                value = self.b.load(self.address(self.p.acc, at), typ=F32)
            self.b.store(value, slot)
            slots.append(slot)
        return slots

    def store_accumulator(self, mi: int, ni: int, slots: list[ir.Value]) -> None:
        b = self.b
        for (row, col), slot in zip(self.c_positions(mi, ni), slots):
            inside = b.and_(b.icmp_signed("<", row, self.rows), b.icmp_signed("<", col, self.cols))
            with b.if_then(inside):
                b.store(b.load(slot, typ=F32), self.address(self.p.acc, (row, col)))

    # ----------------------------------------------------------------- the warp

    def mma(self, slots: list[ir.Value], a: list[ir.Value], bw: list[ir.Value]) -> None:
        b = self.b
        result = ir.LiteralStructType([F32] * 4)
        asm = ir.InlineAsm(
            ir.FunctionType(result, [I32] * 6 + [F32] * 4),
            _MMA,
            "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f",
            side_effect=False,
        )
        c = [b.load(s, typ=F32) for s in slots]
        d = b.call(asm, [*a, *bw, *c], attrs=("convergent",))  # all lanes, or none
        for n, slot in enumerate(slots):
            b.store(b.extract_value(d, n), slot)


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)
