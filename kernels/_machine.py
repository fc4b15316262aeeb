"""What the library's schedules need to know of the CPU beyond its instructions: choices
measured to differ between the machines kdsl is tuned on (the first choice of a param
is what an untuned call runs)."""

from __future__ import annotations

import functools

from llvmlite import binding as llvm

import kdsl as kd


@functools.cache
def _amd_zen() -> bool:
    return llvm.get_host_cpu_name().startswith("znver")


def stream_hints_first(hint: int, none: int = 0) -> list[int]:
    """A param's choices for software prefetch ahead of float32 rows streamed one after
    another: the hint first where it paid, no hint first on AMD Zen, whose hardware
    prefetchers keep up alone there. Measured: on an Intel Xeon (LLVM "rocketlake") rows
    of 288 floats read beyond the L3 at 18.1 GB/s with the hint, 15 without; on a Zen 4
    the hint cost 10-20% (stories15M's products per token 1.74 → 1.44 ms without it,
    stories110M's 5.5 → 4.9 ms). (The quantized rows' hints paid on both: they keep them.)"""
    return [none, hint] if _amd_zen() else [hint, none]


def one_row_first(rows: tuple[int, ...]) -> tuple[int, ...]:
    """A param's choices for how many long rows a core streams at once: as given (several
    first) where one row's stream kept too few reads in flight, one row first on AMD Zen.
    Measured: on an Intel Xeon Q8_0 11008×4096 beyond the L3 read 16 GB/s one row at a
    time and 22–26 eight; on a Zen 4, 30–32 GB/s one row (with hints) and 22–27 eight,
    float32 768×2048 34 GB/s one row (no hint) and 29 eight."""
    return (1, *(r for r in rows if r != 1)) if _amd_zen() else rows


@functools.cache
def _features() -> dict[str, bool]:
    return dict(llvm.get_host_cpu_features())


def vector_bytes() -> int:
    """The width of this CPU's float vector registers: 64 bytes with AVX-512 (32 of
    them), 32 with AVX2 only (16 of them)."""
    return 64 if _features().get("avx512f") else 32


def bf16_pairs_first() -> list[bool]:
    """A param's choices for a bf16 matmul summing k in pairs: first where the CPU has
    AVX512-BF16's `vdpbf16ps`, which takes a pair per lane; last elsewhere, where each
    pair was widened and shuffled apart (on a Zen 2, AVX2, 1024³ ran at 28 GFLOP/s with
    pairs, 77 without and widened as loaded, 176 widened in the packed copies)."""
    return [True, False] if _features().get("avx512bf16") else [False, True]


def byte_products_biased() -> bool:
    """Whether quantized kernels write their signed byte products with the weights made
    unsigned (+128, taken back out once per call): the form of AVX512-VNNI's vpdpbusd,
    unsigned × signed. Without VNNI, signed × signed products whose activations exclude
    -128 take fewer instructions (kernels/quant.py, signed_bytes_dot)."""
    return bool(_features().get("avx512vnni"))


def register_tile() -> tuple[int, int]:
    """The first choice of a float32 matmul's register tile (rows, columns of C held in
    registers over all of k), sized to this CPU's vector registers: 8 × 32 (16 of the 32
    zmm) with AVX-512, 6 × 16 (12 of the 16 ymm, the rest for B's two vectors and A's
    broadcast) with AVX2. Measured at 1024³ on a Zen 2 (AVX2): 8 × 32 spilled and ran
    at 0.50× NumPy, 6 × 16 at 0.76× (1.03× with its panel: `panel_bytes`)."""
    return (8, 32) if vector_bytes() == 64 else (6, 16)


def blocks_for_few_rows() -> bool:
    """Whether matmul packs B in blocks of 256 rows of k where A has few rows (two
    register tiles' rows to 128) and a panel of all of k overflows PANEL_BYTES
    (kernels/matmul.py, layout): with AVX2, where it was measured, not with AVX-512,
    where it was not. On a Zen 3 (one process, 7-9 rounds taking turns), against all of
    k: 32×4096×4096 1.24×, 64×4096×4096 1.12×, 64×11008×4096 1.27×, 96×4096×4096 1.13×,
    128×4096×4096 1.10×; through the benchmark harness (its pauses and batches) 1.17×,
    1.09× and 1.04× at 32, 64 and 128 rows; with more rows the gain went
    (256×4096×4096 0.94–1.03×, 2048³ 0.95×)."""
    return vector_bytes() == 32


def blocks_of_rows() -> bool:
    """Whether matmul runs large products in BLIS's loop order, A copied in blocks of
    rows (kernels/matmul.py, BLOCK_ROWS): with AVX2, where it was measured, not with
    AVX-512, where the products already ran at 1.05-1.07× NumPy without it."""
    return vector_bytes() == 32


def score_keys_first() -> list[int]:
    """The choices of attention's keys per register block of scores (each key's row of
    the queries `score_queries_first` gives), the first sized to the registers: 4 keys
    × 64 queries (16 of the 32 zmm) with AVX-512, 2 × 32 with AVX2 (8 of its 16 ymm).
    Measured with AVX2: 4 keys × 64 spilled (a Zen 2, B=1 H=8 L=1024 D=64, 91 -> 104-110
    GFLOP/s with one); on a Zen 3, 2 × 32 ran 1.15-1.17× 1 × 64 at L = 1024 and 2048
    (non-causal, 15 rounds taking turns; causal 1.05-1.10×). (6 keys, a choice with AVX2
    before, would need 24 or 48 ymm at these query widths: more than there are.)"""
    return [4, 6, 1] if vector_bytes() == 64 else [2, 1, 4]


def score_queries_first(tile: int) -> list[int]:
    """The choices of attention's queries per register block of scores, out of a task's
    `tile`: all of them with AVX-512 (four zmm), half with AVX2 (four ymm; see
    score_keys_first)."""
    return [tile, tile // 2] if vector_bytes() == 64 else [tile // 2, tile]


def full_key_tile() -> int:
    """Keys per tile of a non-causal attention on this CPU (a causal one takes 64: its
    diagonal tiles, masked, grow with the tile): 128 with AVX-512 (on a Zen 4, 1.2%
    faster than 64 at L = 1024 and 2048), 64 with AVX2 (on a Zen 3, 1.07-1.12× faster
    than 128 at L = 1024 and 2048, 15 rounds taking turns; 20-30% in single runs)."""
    return 128 if vector_bytes() == 64 else 64


def value_queries_first(chunk: int | None) -> list[int]:
    """The choices of attention's queries per register block of P·V (each holding a
    `chunk` of D, value_width() where the schedule can't tell: None), the first as many as fill 16 of the 32
    zmm with AVX-512, 8 of the 16 ymm with AVX2, at most 4: 4 × 64 of D with AVX-512;
    2 × 32 with AVX2 (see value_width), or 4 × 16 where D is no multiple of 32 (on a
    Zen 3, D=80, L=1024, in three runs: 108, 137 and 131 GFLOP/s against 2 × 16's 90, 107
    and 99)."""
    registers = 16 if vector_bytes() == 64 else 8
    first = min(4, max(1, registers * vector_bytes() // 4 // (chunk or value_width())))
    return [first, *(r for r in ([4, 2, 1] if vector_bytes() == 64 else [2, 1, 4]) if r != first)]


def value_width() -> int:
    """How much of D attention's P·V block holds per query: 64 with AVX-512, 32 with AVX2.
    Measured on a Zen 2, B=1 H=8 D=64: 2 queries × 32 against 1 × 64 (whose 8 ymm
    accumulators took a load per FMA; 4 × 64's 32 ymm spilled), L=1024 non-causal 112 ->
    133 GFLOP/s, causal 106 -> 124; L=2048 114 -> 135 and 108 -> 128."""
    return 64 if vector_bytes() == 64 else 32


def one_row_lanes() -> int:
    """f32 columns a product of one row (vecmat) sums at a time: four zmm with AVX-512
    (32 registers), two ymm with AVX2 (16): an eighth of the registers, leaving the
    rest to the rows it adds in (eight ymm, as many lanes as four zmm, spilled).
    Measured on a Zen 3, 2 threads, against four ymm and eight: 4096 × 4096 1.0-1.2×
    and 1.25× faster, 4096 × 11008 1.1-1.2× and 1.4×, 1000 × 1000 1.3× and 1.9×."""
    return 64 if vector_bytes() == 64 else 16


def panel_bytes() -> int:
    """How much of a core's L2 a packed panel of B may fill: 1 MiB with AVX-512 (measured
    on a Zen 4, whose L2 it fills: at k = 4096, 64 columns ran 1.5× faster than 128),
    half the L2 with AVX2 (a Zen 2, 512 KiB: at 1024³ panels of 64 and 32 columns ran
    0.98-1.03× NumPy, 128 columns 0.83×; at 2048³ 32 columns 0.83-0.92×, 128 0.67-0.72×)."""
    return 1 << 20 if vector_bytes() == 64 else kd.cpu.cache_bytes(2) // 2
