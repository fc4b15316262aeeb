"""Matrix multiplication with a fused epilogue: the three-line kernel, plus bias and an
activation applied as each register tile of C is written back, and a register-blocked
CPU schedule with its search space. A product of one row (x @ w) runs the streams of
kernels/vecmat.py instead, one of one column matvec's (f32)."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
from kdsl.kernels import _device
from kdsl.kernels._checks import (
    FLOATS,
    apart,
    argument_error,
    as_array,
    is_float,
    out_array,
    shape_error,
    written,
)
from kdsl.kernels._machine import (
    bf16_pairs_first,
    blocks_for_few_rows,
    blocks_of_rows,
    panel_bytes,
    register_tile,
)
from kdsl.kernels.matvec import matvec
from kdsl.kernels.vecmat import ACTIVATIONS, activate, vecmat

import kdsl as kd


def _example(m: int, k: int, n: int, bias: bool = True) -> dict[str, kd.Spec]:
    f32 = kd.f32
    arrays = {"a": (m, k), "b": (k, n), "bias": (1,), "c": (m, n)}
    return {name: kd.spec(shape, f32) for name, shape in arrays.items() if bias or name != "bias"}


def _product(a, b, c, bias=None, activation=None):
    """The algorithm: c = activation(a @ b + bias), bias and activation optional."""
    i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
    acc = kd.sum(a[i, k] * b[k, j], over=k)
    if bias is not None:
        acc = acc + bias[j]
    c[i, j] = activate(acc, activation)


def _plain(a, b, c):
    _product(a, b, c)


def _with_epilogue(a, b, bias, c, activation: kd.constexpr = None, with_bias: kd.constexpr = False):
    _product(a, b, c, bias if with_bias else None, activation)


# One algorithm and one schedule (below), as four kernels: with the epilogue chosen at
# compile time (constexpr arguments) or without one (three arguments, no placeholder
# bias to pass), each with two defaults for the loop that the cores share:
# panels of B (each core packs its own) for most shapes, row strips of A when B has too
# few panels to go round. `matmul` picks, and picks the panel width by k (`panel_width`)
# and blocks of k for few rows of A (`layout`): kernels with other widths than PANEL, or
# with blocks, are made on first use.
_BIG, _SMALL, _NARROW = (1024, 1024, 1024), (256, 256, 256), (4096, 4096, 64)
matmul_kernel = kd.kernel(
    _with_epilogue, name="matmul_kernel", examples=[_example(*_BIG), _example(*_SMALL)]
)
matmul_rows_kernel = kd.kernel(
    _with_epilogue, name="matmul_rows_kernel", examples=[_example(*_NARROW)]
)
product_kernel = kd.kernel(
    _plain,
    name="product_kernel",
    examples=[_example(*_BIG, bias=False), _example(*_SMALL, bias=False)],
)
product_rows_kernel = kd.kernel(
    _plain, name="product_rows_kernel", examples=[_example(*_NARROW, bias=False)]
)
PANEL = 128  # nc of the kernels above
PANEL_WIDTHS = (32, 64, PANEL, 256, 512, 1024)
PANEL_BYTES = panel_bytes()  # a packed panel of B: as much of a core's L2 as paid
ACROSS = ("panels", "rows")
# rows of B per packed block, a tunable (0: all of k at once, the default but for few rows
# of A: `layout`). Blocks of 256 rows paid on a Zen 2 while a panel was packed row after
# row (k = 4096, m = 256: 136 -> 163 GFLOP/s); packed in micro-panels, they ran within
# ±10% of all of k on a Zen 3, in either direction from run to run
DEPTHS = (0, 256, 512)
# `layout` packs blocks of BLOCK_DEPTH rows of B where A has at most FEW_ROWS rows (two
# row strips or more) and a panel of all of k would overflow PANEL_BYTES: the row strips
# then reread the block from L2, not the whole panel from L3, and the sums kept between
# blocks (FEW_ROWS × nc) stay in L1 or L2 (see _machine.blocks_for_few_rows for where)
BLOCK_DEPTH, FEW_ROWS = DEPTHS[1], 128
# A whose rows lie a multiple of ALIASED_ROWS bytes apart (1024 or 4096 f32 columns, as
# ML's shapes often are) has its register tile's rows copied first (the pack_a param):
# read in place, the tile's rows fall in the same sets of the L1 (32 KiB and 8 ways:
# 4 KiB a way). Through the benchmark harness on a Zen 3, copied against in place, on
# two threads and one: 1024³ 1.005× and 1.05×, 2048³ 1.03× and 1.06×, 4096³ 1.05× and
# 1.03×, 64×4096×4096 1.11× and 1.05×. Where the rows don't alias it did not pay
# (1000³ 0.97× and 1.01×, 4096×64×4096 0.96× and 0.95×)
ALIASED_ROWS = 4096
# Large products run in BLIS's loop order (where _machine.blocks_of_rows says): B copied
# BLOCK_DEPTH rows at a time in micro-panels (BLOCK_DEPTH × nr: 16 KiB, L1), A copied
# BLOCK_ROWS rows × BLOCK_DEPTH at a time in micro-panels of mr rows (144 KiB: L2), each
# micro-panel of B run against every mr rows of the block of A, so it is read from L1
# while A's block streams from L2 (all of k at once streams both from L2 or L3). Panels
# of B as wide as BLOCKED_PANELS allows while every core gets one: A is copied once a
# panel. Through the benchmark harness on a Zen 3, against the layout it replaced, on
# two threads: 1000³ 1.04×, 1024³ 1.06×, 2048³ 1.06-1.09×, 4096³ 1.03×; one thread:
# 1024³ 1.06-1.11×, 2048³ 1.09× (kc = 384 or 512 and 72 rows did worse; 240 rows as well).
# Few rows too, against blocks of k alone (FEW_ROWS): 64×4096×4096 1.08–1.10×, 128×1024²
# 1.08×, 256×4096×4096 1.09–1.11×, 16×4096×4096 1.07× (the same kernel as the old: 1.04×).
# bf16 (widened to f32 as A's blocks and B's micro-panels are copied), against its copy of
# A by tile: 1024³ 1.25×, 2048³ 1.16× on two threads
BLOCK_ROWS, BLOCKED_PANELS = 144, (256, 512, 1024)


def panel_width(k: int, itemsize: int) -> int:
    """nc for a product over k: the widest panel of B (k × nc) that fits PANEL_BYTES.
    Short k gets wide panels (a pass over A and C per panel: with k = 64, nc = 128 ran at
    0.65× of nc = 1024), long k narrow ones (k = 4096: nc = 64 ran 1.5× nc = 128)."""
    fits = [nc for nc in PANEL_WIDTHS if k * nc * itemsize <= PANEL_BYTES]
    return max(fits, default=PANEL_WIDTHS[0])


def _register_blocked(
    s, across: str, panel: int, depth: int, pack_a: bool = False, block_rows: int = 0
) -> None:
    """The GotoBLAS/BLIS structure. B is cut into panels of nc columns, each packed
    whole (all of k × nc, contiguous: it stays in L2 while every row strip of A streams
    past it) in micro-panels of nr columns (k × nr each, read front to back by a tile:
    on a Zen 3, 1.04–1.17× the panel packed row after row); C is computed mr × nr at a
    time, its mr·nr accumulators in vector registers over all of k: per k, nr/16 vector
    loads of the packed panel and mr broadcasts of A feed mr·nr/16 FMAs. The epilogue
    runs on the register tile as it is stored. The cores share the panels
    (`across="panels"`) or the row strips of A (`"rows"`; the packing copy is then split
    across them too).

        for jo:                       # panel of nc columns   (parallel: panels)
          pack b[:, jo·nc : +nc] into b.c (K × nc)
          for io:                     # mr rows of C          (parallel: rows)
            for jio:                  # nr columns of the panel
              for ji (nr lanes): for ii (unrolled):  c.acc[ii, ji] = 0
              for ji (nr lanes): for k: for ii (unrolled):  c.acc[ii, ji] += a[.., k]·b.c[k, ..]
              for ji (nr lanes): for ii (unrolled):  c[io·mr + ii, ...] = epilogue(acc)

    With a depth kc (a tunable: see DEPTHS), a panel is packed kc rows at a time
    and the register tiles run over each block in turn, their sums kept in memory (a
    panel of C, m × nc) between blocks; the epilogue follows the last block:

        for jo:
          acc[:, :] = 0               # m × nc
          for ko:                     # kc rows of B
            pack b[ko·kc : +kc, jo·nc : +nc] into b.c
            for io: for jio: (load the tile of acc) … for ki … (store it)
          c[:, jo·nc : +nc] = epilogue(acc)

    With blocks of mc rows of A too (`mc`, BLIS's order: see BLOCK_ROWS), each block of
    A is copied in micro-panels of mr rows (mc × kc) and each micro-panel of B (kc × nr)
    runs against all of them before the next:

        for jo: for ko:
          pack b[ko·kc : +kc, jo·nc : +nc] into b.c (micro-panels of nr columns)
          for ic:                     # mc rows of A
            pack a[ic·mc : +mc, ko·kc : +kc] into a.c (micro-panels of mr rows)
            for jr:                   # a micro-panel of B: from L1 for every ir
              for ir: (load the tile of acc) … for ki … (store it)
    """
    across = s.param("across", sorted(ACROSS, key=lambda a: a != across))
    nc = s.param("nc", sorted(PANEL_WIDTHS, key=lambda w: w != panel))
    bf16 = s.dtype("a") == s.dtype("b") == kd.bf16
    kc = s.param("kc", sorted(DEPTHS, key=lambda d: d != depth))  # (see DEPTHS)
    tiles = bf16 and s.has("amx") and s.param("amx", [True, False])
    # every path's params are declared whichever runs: the autotuner sees the whole space
    rows = s.param("amx_tile", [16, 32]) if bf16 and s.has("amx") else None
    first_mr, first_nr = register_tile()
    mr = s.param("mr", sorted([8, 6, 4, 12], key=lambda r: r != first_mr))
    nr = s.param("nr", sorted([32, 16, 64], key=lambda r: r != first_nr))
    pairs = s.param("bf16_pairs", bf16_pairs_first()) if bf16 else False
    # f32 and wider: the tile's rows of A copied with k outermost (mr × k -> k × mr), so
    # a step of k broadcasts mr neighbours, not mr values lda apart (first where `pack_a`
    # says: see ALIASED_ROWS)
    pack_a = not bf16 and s.param("pack_a", [pack_a, not pack_a])
    # rows of A per copied block (0: none; see BLOCK_ROWS), bf16 widened as it is copied
    mc = not pairs and s.param("mc", sorted([0, BLOCK_ROWS, 240], key=lambda r: r != block_rows))
    kc = 0 if pairs else kc  # (the "vnni" copy takes all of k)
    if tiles:
        _on_tiles(s, across, nc, rows)
        return
    if mc:
        ic, ip = s.split("i", mc)
        io, ii = s.split(ip, mr)
    else:
        io, ii = s.split("i", mr)
    jo, jp = s.split("j", nc)
    jr, ji = s.split(jp, nr)
    rows_of_tiles = (ic, jr, io) if mc else (io, jr)
    s.reorder(jo, *rows_of_tiles, ii, ji)  # the tile loops: a permutation of the perfect nest
    if pairs:
        # k in pairs: vdpbf16ps adds a[i, 2k'..2k'+1]·b[2k'..2k'+1, j] into lane j, reading
        # B with the two rows of each pair interleaved (the "vnni" copy)
        ko, k2 = s.split("k", 2)
        s.reorder(ji, ko, ii, k2)
        _pack_b(s, jo, "vnni", across)
    else:
        k, packed_at = "k", jo
        if kc:
            ko, k = s.split("k", kc)
            s.reorder(jo, ko, *rows_of_tiles, ii, ji)  # (after the tile loops: acc is a panel of C)
            packed_at = ko
        s.reorder(ji, k, ii)  # k inside the columns of the tile, its rows unrolled inside k
        # bf16 without a bf16 dot instruction: the copies hold the values widened to f32,
        # once per element copied, and the tiles run the f32 code (widened as they were
        # read, a broadcast of A took four instructions: on a Zen 2, 1024³ ran at 0.48×
        # the f32 product)
        widened = kd.f32 if bf16 else None
        if s.param("pack_b", [True, False]):
            # in micro-panels (BLIS): each tile's nr columns of the panel, all its k
            # rows, contiguous, so the tile reads one stream front to back
            _pack_b(s, packed_at, f"1//{nr},0,1%{nr}", across, widened)
        if mc:
            s.cache("a", at=ic, layout=f"0//{mr},1,0%{mr}", dtype=widened)
        elif bf16:  # (row after row: 1.05-1.10x the copy with k outermost, on a Zen 3)
            s.cache("a", at=io, layout="packed", dtype=kd.f32)
        elif pack_a:
            s.cache("a", at=io, layout="transposed")
    # the tile's zeroing and write-back (the sum's statements before and after it) with
    # its rows inside its columns: unrolled, the rows share one vector loop instead of a
    # loop each with its own tails (75 vector loops in a kernel → 21; on a Zen 3 the
    # product compiled in 0.80 s instead of 1.01, with a gelu epilogue 1.37 instead of
    # 1.70: fresh processes, three each)
    for part in (1, 2):
        s.reorder(f"{ji}.{part}", f"{ii}.{part}")
    s.vectorize(ji, nr)
    s.unroll(ii)
    s.parallelize(jo if across == "panels" else rows_of_tiles[0])


def _pack_b(s, jo: str, layout: str, across: str, dtype=None) -> None:
    """B's panel copied (converted to `dtype`, if given) at the start of each iteration of
    `jo`; by all cores when they share the rows of A (each packs its own panels otherwise)."""
    s.cache("b", at=jo, layout=layout, dtype=dtype)
    if across == "rows":
        s.parallelize("b.c0")


def _on_tiles(s, across: str, nc: int, rows: int) -> None:
    """bf16 on AMX: the same structure with a 16 × 32 (or 32 × 32) tile of C in two (four)
    matrix registers, k in blocks of 32 (tdpbf16ps), B's panel in the vnni layout, A read
    in place. (16 rows ran 1.2–1.6× faster than 32 at 1024³ and 2048³ here: a tile's
    loads of A and B come from L2 and wait less for two accumulators than for four.)

        for jo:                       # panel of nc columns
          pack b[:, jo·nc : +nc] into b.c (K/2 × 2·nc, pairs of rows interleaved)
          for io:                     # 16 rows of C
            for jr:                   # 32 columns of the panel
              acc = 0;  acc += a[rows, :] @ b.c[:, cols]   (tiles)
              c[rows, cols] = epilogue(acc)                  (vector code)
    """
    io, ii = s.split("i", rows)
    jo, jp = s.split("j", nc)
    jr, ji = s.split(jp, 32)
    s.reorder(jo, io, jr, ii, ji)
    s.split("k", 2)
    _pack_b(s, jo, "vnni", across)
    s.vectorize(ji, 16)
    s.tensorize(ii, "amx")
    s.parallelize(jo if across == "panels" else io)


def _blocked(across: str, panel: int, depth: int = 0, pack_a: bool = False, block_rows: int = 0):
    def schedule(s):
        _register_blocked(s, across, panel, depth, pack_a, block_rows)

    return schedule


def _on_gpu(s) -> None:
    """bf16 on the GPU's tensor cores: a block computes a BM × BN tile of C, each of its
    warps (thread.y by thread.z) a WM × WN part of it, with mma.sync over all of k (A and
    B read in place: each lane its fragments); the warp's lanes (thread.x) zero and write
    back its part, the epilogue applied there. Other dtypes, or a GPU without bf16 tensor
    cores: register tiles on the CUDA cores (`_register_tiles_on_gpu`).

        for io, jo:                     # blocks: BM × BN of C
          for iw, jw:                   # warps: WM × WN
            acc = 0                     (lanes across the columns)
            acc += a[rows, :] @ b[:, cols]   (mma.sync, m16n8k16)
            c[rows, cols] = epilogue(acc)    (lanes across the columns)
    """
    bf16 = s.dtype("a") == s.dtype("b") == kd.bf16
    if not (bf16 and s.has("mma")):
        _register_tiles_on_gpu(s)
        return
    warp_rows, warp_cols = s.param("warp_rows", [32, 16, 64]), s.param("warp_cols", [32, 64, 16])
    warps_down, warps_across = s.param("warps_down", [2, 4, 1]), s.param("warps_across", [2, 4, 1])
    io, ii = s.split("i", warp_rows * warps_down)
    jo, ji = s.split("j", warp_cols * warps_across)
    iw, ir = s.split(ii, warp_rows)
    jw, jr = s.split(ji, warp_cols)
    s.reorder(io, jo, iw, jw, ir, jr)
    s.split("k", 2)
    s.bind(io, "block.y")
    s.bind(jo, "block.x")
    s.bind(iw, "thread.y", warps_down)
    s.bind(jw, "thread.z", warps_across)
    s.tensorize(ir, "mma")
    for lanes in (f"{jr}.1", f"{jr}.2"):  # the accumulator's zeroing and write-back
        s.bind(lanes, "thread.x")


def _register_tiles_on_gpu(s) -> None:
    """f32 (and other dtypes) on a GPU's CUDA cores: a block of 16 × 16 threads computes
    a tile of C, each thread an R × R part of it with its R² sums in registers across
    all of k (R loads of A and R of B feed R² FMAs: the naive thread-per-element kernel
    makes two loads per FMA and ran at 0.10× cuBLAS on an H200). Edge tiles run guarded
    copies of the same code, so the sums stay in registers there too.

        for io, jo:                     # blocks: 16R × 16R of C
          for it, jt:                   # threads: R × R
            acc[R, R] = 0
            for k: acc[r, c] += a[row r, k] * b[k, col c]    (unrolled r, c)
            c[rows, cols] = epilogue(acc)
    """
    r = s.param("thread_tile", [4, 8])
    io, ii = s.split("i", 16 * r)
    jo, ji = s.split("j", 16 * r)
    it, ir = s.split(ii, r)
    jt, jr = s.split(ji, r)
    s.reorder(io, jo, it, jt, ir, jr)
    s.reorder("k", ir, jr)  # (after the tiles: the sums are then the thread's own)
    s.bind(io, "block.y")
    s.bind(jo, "block.x")
    s.bind(it, "thread.y")
    s.bind(jt, "thread.x")
    s.unroll(ir)
    s.unroll(jr)


for _kernel, _across in [
    (matmul_kernel, "panels"),
    (matmul_rows_kernel, "rows"),
    (product_kernel, "panels"),
    (product_rows_kernel, "rows"),
]:
    _kernel.schedule(kd.cpu)(_blocked(_across, PANEL))
    _kernel.schedule(kd.cuda)(_on_gpu)


class Layout(NamedTuple):
    """How `matmul` runs a product: what the cores share ("panels" of B or "rows" of A),
    the panel width, the rows of B per copied block (depth; 0: all of k) and the rows of
    A per copied block (block_rows; 0: A read in place or by tile)."""

    across: str
    panel: int
    depth: int
    block_rows: int = 0


# (a few µs a call otherwise; it reads module constants: a test that patches them clears it)
@functools.lru_cache(maxsize=1024)
def layout(m: int, k: int, n: int, itemsize: int, threads: int, rows_copied: bool = True) -> Layout:
    """How `matmul` runs an m×k by k×n product (`rows_copied`: whether its kernel can
    copy blocks of A's rows, as all but bf16's pairs can). BLIS's order, with blocks of
    A's rows, where `blocks_of_rows` says: for two register tiles' rows or more, two
    blocks of k or more and a panel of BLOCKED_PANELS for every core. Otherwise panels as
    wide as `panel_width` allows but never narrower than PANEL (each panel is a pass over
    A; a tile streams its micro-panel front to back, so a panel larger than PANEL_BYTES
    costs little: Zen 3, 2048³, 128 columns ran 0.98–1.05× the 32 that PANEL_BYTES
    allows, within the noise), narrowed (down to PANEL) until each core gets two; rows of
    A when B still has too few and A more. Blocks of BLOCK_DEPTH rows of B where A has
    two row strips to FEW_ROWS rows and the panel overflows PANEL_BYTES (on the CPUs of
    `blocks_for_few_rows`). `itemsize` is the packed panel's."""
    wide = _blocked_panel(n, threads)
    large = m >= 2 * register_tile()[0] and k >= 2 * BLOCK_DEPTH and wide
    if large and rows_copied and blocks_of_rows():
        return Layout("panels", wide, BLOCK_DEPTH, BLOCK_ROWS)
    panel = max(panel_width(k, itemsize), PANEL)
    while -(-n // panel) < 2 * threads and panel > PANEL:
        panel //= 2
    if -(-n // panel) < 2 * threads and m > n:
        return Layout("rows", panel, 0)
    few = 2 * register_tile()[0] <= m <= FEW_ROWS and blocks_for_few_rows()
    blocks = few and k > BLOCK_DEPTH and k * panel * itemsize > PANEL_BYTES
    return Layout("panels", panel, BLOCK_DEPTH if blocks else 0)


def _blocked_panel(n: int, threads: int) -> int:
    """The width of BLOCKED_PANELS whose busiest core gets the fewest of n columns (the
    widest of equals: A is copied once a panel), of those that give every core a panel;
    0 where none does."""
    panels = {w: -(-n // w) for w in BLOCKED_PANELS}
    fits = [w for w, count in panels.items() if count >= threads]
    return min(fits, key=lambda w: (-(-panels[w] // threads) * w, -w), default=0)


@functools.cache
def kernel_for(
    plain: bool,
    across: str,
    panel: int,
    depth: int = 0,
    pack_a: bool = False,
    block_rows: int = 0,
) -> kd.KernelFunction:
    """The kernel for an epilogue or none, cores across panels or rows, panels of width
    `panel`, k in blocks of `depth`, A's rows copied by tile first or not (`pack_a`) and
    in blocks of `block_rows`: the named kernels above for PANEL, all of k and A in
    place."""
    if panel == PANEL and depth == 0 and not pack_a and not block_rows:
        return {
            (True, "panels"): product_kernel,
            (True, "rows"): product_rows_kernel,
            (False, "panels"): matmul_kernel,
            (False, "rows"): matmul_rows_kernel,
        }[plain, across]
    blocks = f"_{depth}" if depth else ""
    packed = "_packed_a" if pack_a else ""
    rows = f"_rows_{block_rows}" if block_rows else ""
    name = f"{'product' if plain else 'matmul'}_{across}_{panel}{blocks}{packed}{rows}_kernel"
    kernel = kd.kernel(_plain if plain else _with_epilogue, name=name)
    kernel.schedule(kd.cpu)(_blocked(across, panel, depth, pack_a, block_rows))
    kernel.schedule(kd.cuda)(_on_gpu)
    return kernel


_NO_BIAS = np.zeros(1, np.float32)


def _check_activation(activation: object) -> None:
    if activation not in ACTIVATIONS:
        raise argument_error(
            "matmul",
            f"activation {activation!r} is not one of {ACTIVATIONS}",
            "pass one of those, or None for no activation",
        )


def product_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of a @ b by NumPy's rules: the last two axes are matrices (a vector `a`
    is one row, a vector `b` one column, and the result drops that axis), the axes
    before them are batches, broadcast against each other."""
    if not a or not b:
        raise shape_error(
            "matmul",
            f"can't multiply shapes {a} and {b}: a scalar has no axis to sum over",
            "pass arrays of at least one dimension (multiply scalars with *)",
        )
    k_b = b[-2] if len(b) > 1 else b[0]
    if a[-1] != k_b:
        raise shape_error(
            "matmul",
            f"can't multiply shapes {a} and {b}: a has {a[-1]} columns and b {k_b} rows",
            "a's last dimension must be b's next to last (b's only one, for a vector)",
        )
    try:
        batch = np.broadcast_shapes(a[:-2], b[:-2]) if len(a) > 2 or len(b) > 2 else ()
    except ValueError:
        raise shape_error(
            "matmul",
            f"can't multiply shapes {a} and {b}: their batch axes {a[:-2]} and {b[:-2]} "
            "don't broadcast",
            "give the axes before the last two equal sizes, or 1 where one is shared",
        ) from None
    rows, columns = a[-2:-1], b[-1:] if len(b) > 1 else ()  # (a vector's axis dropped)
    return (*batch, *rows, *columns)


def _views(a: Any, b: Any, c: Any) -> tuple[Any, Any, Any]:
    """Views of a, b and the result c whose last two axes are matrices: a vector `a` as
    one row, a vector `b` as one column (NumPy arrays, or a GPU library's)."""
    x = a if a.ndim > 1 else a[None]
    y = b if b.ndim > 1 else b[:, None]
    z = c[..., None] if b.ndim == 1 else c
    return x, y, (z[..., None, :] if a.ndim == 1 else z)


def _products(
    a: Any, b: Any, c: Any, rows_together: bool = False
) -> Iterable[tuple[Any, Any, Any]]:
    """The 2-D products (views of a, b and c) that make c = a @ b. With `rows_together`
    (NumPy arrays) and one `b` for every batch, the batches of `a` and `c` are the rows
    of one matrix each where that needs no copy (one product instead of a call per
    batch, each packing all of b again)."""
    x, y, z = _views(a, b, c)
    if rows_together and y.ndim == 2 and x.ndim > 2 and x.size and z.size:
        rows, rows_out = (v.reshape(math.prod(v.shape[:-1]), v.shape[-1]) for v in (x, z))
        if np.may_share_memory(rows, x) and np.may_share_memory(rows_out, z):
            x, z = rows, rows_out
    return _batches(x, y, z) if z.ndim > 2 else [(x, y, z)]


def _batches(x: Any, y: Any, z: Any) -> Iterator[tuple[Any, Any, Any]]:
    """(a matrix of x, of y, of z) for each batch of the result z."""
    for at in np.ndindex(*z.shape[:-2]):
        yield _batch_of(x, at), _batch_of(y, at), z[at]


def _batch_of(m: Any, at: tuple[int, ...]) -> Any:
    """m's matrix in batch `at` of the result: m's batch axes are the last of at's (an
    axis missing or of size 1 is repeated: broadcast)."""
    mine = at[len(at) - (m.ndim - 2) :]
    return m[tuple(0 if size == 1 else i for i, size in zip(mine, m.shape))]


def matmul(
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    activation: str | None = None,
) -> np.ndarray:
    """activation(a @ b + bias) for arrays of any strides, with NumPy's `matmul` rules for
    shapes: matrices, vectors (`a` [k] as one row, `b` [k] as one column, the result
    without that axis) and batches of them ([..., m, k] against [..., k, n], the axes
    before the last two broadcast). The bias (length n) and the activation (None,
    "relu", "gelu", "silu") are applied in registers as C is written. `out` has the
    inputs' dtype or another float dtype (f32 sums of bf16 inputs, say). On PyTorch or
    CuPy CUDA arrays it runs on their GPU (tensor cores for bf16), a launch per matrix."""
    _check_activation(activation)
    if type(a) is not np.ndarray and (dev := _device.on_device("matmul", a, "a")) is not None:
        kernels = (product_kernel, matmul_kernel)
        return _device.matmul(dev, a, b, out, bias, activation, kernels, product_shape, _products)
    a, b = as_array("matmul", "a", a, "iuf"), as_array("matmul", "b", b, "iuf")
    dtype = np.result_type(a, b)
    n = b.shape[-1] if b.ndim > 1 else 1
    if bias is not None:
        bias = as_array("matmul", "bias", bias)
        if bias.shape != (n,):
            raise shape_error(
                "matmul",
                f"'bias' has shape {bias.shape}, expected ({n},)",
                "pass one bias value per column of the result, or bias=None",
            )
        if dtype.kind in "iu" and bias.dtype.kind not in "iu":
            dtype = np.result_type(dtype, bias)  # (as NumPy's a @ b + bias: a float result)
        # added to the sums in their precision: f32 for 16-bit float inputs
        bias = bias.astype(_sums_dtype(dtype), copy=False)
    if activation not in (None, "relu") and dtype.kind in "iu":
        raise argument_error(
            "matmul",
            f"activation {activation!r} needs float inputs; a and b are {dtype}",
            "convert them first, e.g. a.astype(np.float32)",
        )
    # any float output: the sums are stored converted (bf16 inputs, f32 results)
    target = out_array("matmul", out, product_shape(a.shape, b.shape), dtype, also=FLOATS)
    a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
    if a.shape[-1] > 1 and a.strides[-1] != a.itemsize:
        # rows of A read whole (AMX tiles read 32 k at once; the vector path broadcasts
        # along them): one copy, O(m·k), instead of a strided read per product
        a = np.ascontiguousarray(a)
    c = apart(out, target, a, b, bias)
    for matrices in _products(a, b, c, rows_together=True):
        _product_of_matrices(*matrices, bias, activation)
    result = written(c, target, out)
    return result[()] if out is None and c.ndim == 0 else result  # (NumPy: v @ v a scalar)


def _product_of_matrices(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, bias: np.ndarray | None, activation: str | None
) -> None:
    """c = activation(a @ b + bias) for 2-D arrays of one dtype (c of any float dtype)."""
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    if c.size == 0:  # (nothing to write; k = 0 still writes the epilogue of zero sums)
        return
    plain = bias is None and activation is None
    f32 = a.dtype == np.float32 and c.dtype == np.float32
    if plain and n == 1 and f32:
        # a column: the row streams of matvec (1024 x 1024: 0.35 -> 0.065 ms), not panels
        matvec(a, b[:, 0], out=c[:, 0])
        return
    if m == 1 and f32:
        # a row: w streamed once by all cores (1 x 4096 x 4096: 26 -> 7.7 ms), not panels
        vecmat(a[0], b, c[0], bias, activation)
        return
    bf16 = _bf16(b.dtype)
    pairs = bf16 and bf16_pairs_first()[0]  # (the "vnni" copy takes all of k)
    packed = 4 if bf16 and not pairs else b.itemsize  # (f32 panels)
    # (the "vnni" copy of bf16 pairs takes A in place; other bf16 copies A's rows widened)
    plan = layout(m, k, n, packed, kd.get_num_threads(), rows_copied=not pairs)
    pack_a = not bf16 and not plan.block_rows and aliased_rows(a)
    depth = 0 if pairs else plan.depth
    kernel = kernel_for(plain, plan.across, plan.panel, depth, pack_a, plan.block_rows)
    if plain:
        kernel(a, b, c)
    else:
        with_bias = bias is not None
        bias = bias if with_bias else _NO_BIAS.astype(a.dtype, copy=False)
        kernel(a, b, bias, c, activation, with_bias)


def _sums_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a product's sums are kept in: f32 for 16-bit floats (bf16, f16)."""
    return np.dtype(np.float32) if is_float(dtype) and dtype.itemsize < 4 else dtype


def aliased_rows(a: np.ndarray) -> bool:
    """Whether A's rows (of two or more elements) lie a multiple of ALIASED_ROWS bytes
    apart."""
    return a.shape[1] > 1 and a.strides[0] % ALIASED_ROWS == 0


@functools.cache
def _bf16(dtype: np.dtype) -> bool:
    """Whether `dtype` is bfloat16 (asked once per dtype: `dtype.name` costs a few µs)."""
    return dtype.name == "bfloat16"


_erf = np.vectorize(math.erf, otypes=[np.float64])


def reference(a, b, bias=None, activation=None):
    """NumPy, unfused, in float64 (erf elementwise from the math module: slow, exact)."""
    v = np.matmul(a.astype(np.float64), b.astype(np.float64))
    if bias is not None:
        v = v + bias
    if activation == "relu":
        v = np.maximum(v, 0.0)
    elif activation == "gelu":
        v = 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0)))
    elif activation == "silu":
        v = v / (1.0 + np.exp(-v))
    return v
