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
