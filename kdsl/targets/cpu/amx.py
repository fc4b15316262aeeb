"""Tile products on AMX (a loop marked `tensorize(rows, "amx")`, kdsl/ir/tile_product.py).

AMX has eight tile registers of 16 rows × 64 bytes; `tdpbf16ps` adds the product of a
16×32 bf16 tile of A and a 16-pair × 16 tile of B in the vnni layout into a 16×16 f32
tile, about 16× the work of an AVX-512 FMA per instruction. An accumulator of TR × TC
(16 or 32 each) is held in up to four tiles (0-3) across all of k, fed by up to two
tiles of A (4, 5) and two of B (6, 7): the same register blocking as the vector
micro-kernel, a level up.

    configure the tiles (once per function)
    load the accumulator's tiles from acc
    for each block of 32 k:  load A's and B's tiles; tdpbf16ps for each pair
    store the tiles to acc

A full tile (all TR × TC elements in the loops' range, 32 k) reads A and B where they
are. A partial one (an edge of the matrix, or the last k < 32) reads them through small
zero-padded copies made with masked vector loads, and writes back only the elements in
range; so nothing outside the loops' range is read or written. Operands whose k (or B's
column) stride is not one element run the nest as ordinary scalar code.

Linux hands AMX's 8 KiB of register state to a process only when asked
(`arch_prctl(ARCH_REQ_XCOMP_PERM)`): `tile_instructions` asks, once.
"""

from __future__ import annotations

import ctypes
import functools
import platform
from dataclasses import replace
from typing import TYPE_CHECKING

from llvmlite import ir

from kdsl.errors import CompileError
from kdsl.ir.nodes import Expr, Loop, LoopExec, Stmt
from kdsl.ir.tile_product import TILE, TileProduct, match
from kdsl.targets.cpu import jit
from kdsl.targets.cpu.ops import I8, I16, I32, I64, clamped_extent

if TYPE_CHECKING:
    from kdsl.targets.cpu.codegen import _Codegen

ROW_BYTES = 64  # a tile row: 16 f32, or 32 bf16 (16 pairs of k)
K_BLOCK = 32  # k per tdpbf16ps
ACC, A_TILES, B_TILES = 0, 4, 6  # tile registers: accumulators, then A's, then B's
_CONFIG = "amx.config"
_ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA, _SYS_ARCH_PRCTL = 0x1023, 18, 158


@functools.cache
def tile_instructions() -> frozenset[str]:
    """The matrix instructions this process may use: {"amx"} where the CPU has AMX-BF16
    and the kernel grants its register state (asked here, once per process)."""
    features = jit.host_features()
    if not (features.get("amx-tile") and features.get("amx-bf16")):
        return frozenset()
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return frozenset()
    libc = ctypes.CDLL(None, use_errno=True)
    granted = libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    return frozenset({"amx"}) if granted else frozenset()


def emit_tile_product(gen: _Codegen, loop: Loop) -> None:
    product = match(loop, gen.buffers)
    if isinstance(product, str):  # the schedule step checked it: a kdsl bug
        raise CompileError(
            f"loop '{loop.var}' was tensorized but is not a tile product: {product}",
            kernel=gen.kernel.name,
            fix="this is a kdsl bug; please report it with the kernel's schedule",
        )
    _TileProduct(gen, product).emit(loop)


class _TileProduct:
    """The code of one tile product. Addresses are byte pointers, `*_row` byte strides:
    `a_start` and `b_start` where the operands' tiles begin (k = 0), `acc` the
    accumulator; `rows`, `cols`, `depth` the loops' extents (i64, clamped)."""

    def __init__(self, gen: _Codegen, p: TileProduct) -> None:
        self.gen, self.builder, self.p = gen, gen.b, p
        b = self.builder
        self.tr, self.tc = p.shape
        self.row_tiles, self.col_tiles = self.tr // TILE, self.tc // TILE
        self.from_zero = p.rows.width == 0  # (mark_zero_starts)
        a, bv, acc = (gen.state.arrays[name] for name in (p.a, p.b, p.acc))
        self.a_row, self.b_row, self.acc_row = a.strides[0], bv.strides[0], acc.strides[0]
        self.a_start, self.b_start = self.element(p.a, p.a_at), self.element(p.b, p.b_at)
        self.acc = acc.data
        self.rows = clamped_extent(b, gen.expr(p.rows.extent), self.tr)
        self.cols = clamped_extent(b, gen.expr(p.cols.extent), self.tc)
        self.depth = clamped_extent(b, gen.expr(p.depth))
        two = _i64(2)
        self.unit = b.and_(
            b.icmp_signed("==", a.strides[1], two), b.icmp_signed("==", bv.strides[1], two)
        )

    def emit(self, loop: Loop) -> None:
        b = self.builder
        with b.if_else(self.unit) as (tiles, scalar):
            with tiles:
                some = b.and_(
                    b.icmp_signed(">", self.rows, _i64(0)), b.icmp_signed(">", self.cols, _i64(0))
                )
                with b.if_then(some):
                    self.on_tiles()
            with scalar:
                self.gen.stmt(_plain(loop), [])

    def element(self, name: str, at: tuple[Expr, Expr]) -> ir.Value:
        """The address of buffer `name` at subscripts `at`."""
        return self.gen._element(self.gen.state.arrays[name], [self.gen.expr(i) for i in at])

    # ------------------------------------------------------------------ the tiles

    def on_tiles(self) -> None:
        b, gen = self.builder, self.gen
        self.configure()
        if self.from_zero:
            for t in range(self.row_tiles * self.col_tiles):
                self.call("llvm.x86.tilezero", [_tile(ACC + t)])
        else:
            self.move_accumulators("llvm.x86.tileloadd64", self.acc, self.acc_row)
        full = b.and_(
            b.icmp_signed("==", self.rows, _i64(self.tr)),
            b.icmp_signed("==", self.cols, _i64(self.tc)),
        )
        blocks = b.sdiv(self.depth, _i64(K_BLOCK))
        with b.if_else(full) as (whole, edge):
            with whole:
                gen.counted("amx.kb", _i64(0), blocks, 1, lambda kb: self.block_in_place(kb))
            with edge:
                gen.counted("amx.kb", _i64(0), blocks, 1, lambda kb: self.block_copied(kb, None))
        rest = b.sub(self.depth, b.mul(blocks, _i64(K_BLOCK)))
        with b.if_then(b.icmp_signed(">", rest, _i64(0))):
            last = gen._entry_alloca(I64, "amx.kb")
            b.store(blocks, last)
            self.block_copied(last, b.trunc(rest, I32))
        with b.if_else(full) as (whole, edge):
            with whole:
                self.move_accumulators("llvm.x86.tilestored64", self.acc, self.acc_row)
            with edge:
                self.store_in_range()

    def configure(self) -> None:
        """Configure the tiles once, where the function starts: `ldtilecfg` costs about as
        much as a 32 × 32 tile product over k = 64. Every tile gets 16 rows of 64 bytes,
        so one configuration serves every tile shape. (The ABI lets a call clobber the
        configuration; the only calls in kernel code are to malloc, free and kdsl's
        thread pool, which don't touch it, and no tile holds data across a call.)"""
        gen = self.gen
        if gen.state.tiles_configured:
            return
        gen.state.tiles_configured = True
        module = gen.fn.module
        config = module.globals.get(_CONFIG)
        if config is None:
            data = [0] * 64
            data[0] = 1  # palette 1
            for t in range(8):
                data[16 + 2 * t] = ROW_BYTES
                data[48 + t] = TILE
            ty = ir.ArrayType(I8, 64)
            config = ir.GlobalVariable(module, ty, _CONFIG)
            config.initializer = ir.Constant(ty, data)
            config.global_constant = True
            config.linkage = "internal"
            config.align = 64
        with self.builder.goto_block(gen.entry):
            self.builder.position_at_start(gen.entry)
            self.call("llvm.x86.ldtilecfg", [config])

    def move_accumulators(self, intrinsic: str, base: ir.Value, row: ir.Value) -> None:
        """Load (tileloadd64) or store (tilestored64) the accumulator tiles at `base`."""
        for r in range(self.row_tiles):
            for c in range(self.col_tiles):
                at = self.offset(base, _times(self.builder, row, r * TILE), c * ROW_BYTES)
                self.call(intrinsic, [_tile(r * self.col_tiles + c), at, row])

    def block_start(self, kb_slot: ir.Value) -> tuple[ir.Value, ir.Value]:
        """Where block kb of k starts in A (32 bf16 on) and in B (16 pair-rows down)."""
        b = self.builder
        kb = b.load(kb_slot, typ=I64)
        a = self.offset(self.a_start, b.mul(kb, _i64(K_BLOCK * 2)), 0)
        bv = self.offset(self.b_start, b.mul(kb, b.mul(self.b_row, _i64(K_BLOCK // 2))), 0)
        return a, bv

    def block_in_place(self, kb_slot: ir.Value) -> None:
        """One block of 32 k, every tile read from A and B where they are."""
        a, bv = self.block_start(kb_slot)
        self.multiply(a, self.a_row, bv, self.b_row)

    def block_copied(self, kb_slot: ir.Value, k_left: ir.Value | None) -> None:
        """One block of k (32, or `k_left` < 32) read through zero-padded copies: rows of
        A past the tile's rows, columns of B past its columns and k past `k_left` are 0."""
        b, gen = self.builder, self.gen
        a, bv = self.block_start(kb_slot)
        k_left = k_left or ir.Constant(I32, K_BLOCK)
        a_copy = gen._entry_alloca(ir.ArrayType(I8, self.tr * ROW_BYTES), "amx.a")
        b_copy = gen._entry_alloca(ir.ArrayType(I8, TILE * self.tc * 4), "amx.b")
        a_copy.align = b_copy.align = 64
        lanes = ir.Constant(ir.VectorType(I32, 32), list(range(32)))
        k_in = self.vector_lt(lanes, k_left)
        rows = b.trunc(self.rows, I32)
        for r in range(self.tr):  # row r of A's block: its k in range, if the row is
            row_in = b.icmp_signed("<", ir.Constant(I32, r), rows)
            mask = b.and_(k_in, self.splat(row_in))
            self.copy_row(self.offset(a, _times(b, self.a_row, r), 0), mask, a_copy, r * ROW_BYTES)
        pair = ir.Constant(ir.VectorType(I32, 32), [t % 2 for t in range(32)])
        column = [t // 2 for t in range(32)]
        cols = b.trunc(self.cols, I32)
        for p in range(TILE):  # pair-row p of B's block: k = 2p + (lane % 2)
            k_of = b.add(pair, self.splat(ir.Constant(I32, 2 * p)))
            for c in range(self.col_tiles):
                col_of = ir.Constant(ir.VectorType(I32, 32), [j + c * TILE for j in column])
                mask = b.and_(self.vector_lt(k_of, k_left), self.vector_lt(col_of, cols))
                source = self.offset(bv, _times(b, self.b_row, p), c * ROW_BYTES)
                self.copy_row(source, mask, b_copy, p * self.tc * 4 + c * ROW_BYTES)
        self.multiply(a_copy, _i64(ROW_BYTES), b_copy, _i64(self.tc * 4))

    def multiply(self, a: ir.Value, a_row: ir.Value, bv: ir.Value, b_row: ir.Value) -> None:
        for r in range(self.row_tiles):
            at = self.offset(a, _times(self.builder, a_row, r * TILE), 0)
            self.call("llvm.x86.tileloadd64", [_tile(A_TILES + r), at, a_row])
        for c in range(self.col_tiles):
            at = self.offset(bv, _i64(0), c * ROW_BYTES)
            self.call("llvm.x86.tileloadd64", [_tile(B_TILES + c), at, b_row])
        for r in range(self.row_tiles):
            for c in range(self.col_tiles):
                tiles = [r * self.col_tiles + c, A_TILES + r, B_TILES + c]
                self.call("llvm.x86.tdpbf16ps", [_tile(t) for t in tiles])

    def store_in_range(self) -> None:
        """The accumulators through a copy: only rows and columns in range reach acc."""
        b, gen = self.builder, self.gen
        out = gen._entry_alloca(ir.ArrayType(I8, self.tr * self.tc * 4), "amx.c")
        out.align = 64
        row = _i64(self.tc * 4)
        self.move_accumulators("llvm.x86.tilestored64", out, row)
        lanes = ir.Constant(ir.VectorType(I32, TILE), list(range(TILE)))
        rows, cols = b.trunc(self.rows, I32), b.trunc(self.cols, I32)
        f32s = ir.VectorType(ir.FloatType(), TILE)
        for r in range(self.tr):
            row_in = self.splat(b.icmp_signed("<", ir.Constant(I32, r), rows), TILE)
            for c in range(self.col_tiles):
                first = ir.Constant(ir.VectorType(I32, TILE), [c * TILE] * TILE)
                mask = b.and_(row_in, self.vector_lt(b.add(lanes, first), cols, TILE))
                value = b.load(self.offset(out, _i64(r * self.tc * 4), c * ROW_BYTES), typ=f32s)
                target = self.offset(self.acc, _times(b, self.acc_row, r), c * ROW_BYTES)
                name = "llvm.masked.store.v16f32.p0"
                self.call(name, [value, target, ir.Constant(I32, 4), mask])

    # ------------------------------------------------------------------ helpers

    def copy_row(self, source: ir.Value, mask: ir.Value, into: ir.Value, at: int) -> None:
        """64 bytes (32 bf16) from `source` where `mask` is on, zeros elsewhere."""
        vt = ir.VectorType(I16, 32)
        zero = ir.Constant(vt, None)
        row = self.call("llvm.masked.load.v32i16.p0", [source, ir.Constant(I32, 2), mask, zero], vt)
        self.builder.store(row, self.offset(into, _i64(0), at), align=64)

    def vector_lt(self, v: ir.Value, n: ir.Value, lanes: int = 32) -> ir.Value:
        return self.builder.icmp_signed("<", v, self.splat(n, lanes))

    def splat(self, v: ir.Value, lanes: int = 32) -> ir.Value:
        return self.gen.ops.splat(v, lanes)

    def offset(self, base: ir.Value, by: ir.Value, plus: int) -> ir.Value:
        return self.builder.gep(base, [self.builder.add(by, _i64(plus))], source_etype=I8)

    def call(self, name: str, args: list[ir.Value], ret: ir.Type | None = None) -> ir.Value:
        return self.gen.ops.intrinsic(name, ret or ir.VoidType(), args)


def uses_tiles(module: ir.Module) -> bool:
    return "llvm.x86.ldtilecfg" in module.globals


def release_tiles(gen: _Codegen) -> None:
    """At the kernel's exit, hand its thread's tiles back if any code in it used them.
    (Tasks of parallel loops keep theirs: a task may run on the calling thread in the
    middle of the kernel, and the pool's threads configure them again per task.)"""
    if uses_tiles(gen.fn.module):
        gen.ops.intrinsic("llvm.x86.tilerelease", ir.VoidType(), [])


def _plain(loop: Loop) -> Stmt:
    """The nest with no execution marks: ordinary scalar code."""
    body = tuple(_plain(s) if isinstance(s, Loop) else s for s in loop.body)
    return replace(loop, exec=LoopExec.SERIAL, width=1, body=body)


def _tile(t: int) -> ir.Constant:
    return ir.Constant(I8, t)


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _times(b: ir.IRBuilder, v: ir.Value, k: int) -> ir.Value:
    return b.mul(v, _i64(k))
