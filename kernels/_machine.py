"""What the library's schedules need to know of the CPU beyond its instructions: choices
measured to differ between the machines kdsl is tuned on (the first choice of a param
is what an untuned call runs)."""

from __future__ import annotations

import functools

from llvmlite import binding as llvm


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
