"""The library matmul's packed panel of B in micro-panels (`layout="1//nr,0,1%nr"`, each
tile's columns contiguous) against the same panel packed row after row (`"packed"`),
same process, taking turns: `python benchmarks/matmul_layouts.py [--output PATH]`."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import numpy as np
from harness import Settings, markdown, matmul_case, publish, run_case

import kdsl as kd

mm = importlib.import_module("kdsl.kernels.matmul")  # (the package re-exports its function)
SHAPES = [(1024, 1024, 1024), (2048, 2048, 2048)]
PANEL = 128  # columns: where a row-major panel's tile rows lie 512 bytes apart
SETTINGS = Settings(repeats=15, min_batch_s=0.2, working_set_bytes=1 << 26, settle_s=0.3)


def _kernel(micro_panels: bool) -> kd.KernelFunction:
    """The library's schedule (panels of PANEL columns, all of k), B packed either way."""
    packed_b = mm._pack_b

    def row_major(s, at, layout, across, dtype=None):
        return packed_b(s, at, "packed", across, dtype)

    def schedule(s):
        mm._pack_b = packed_b if micro_panels else row_major
        try:
            mm._register_blocked(s, "panels", PANEL, 0)
        finally:
            mm._pack_b = packed_b

    kernel = kd.kernel(mm._plain, name=f"matmul_{'micro' if micro_panels else 'rows'}")
    kernel.schedule(kd.cpu)(schedule)
    return kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="where to write the page")
    args = parser.parse_args()
    micro, rows = _kernel(True), _kernel(False)
    rng = np.random.default_rng(0)
    results, before = [], kd.get_num_threads()
    for threads in (before, 1):
        kd.set_num_threads(threads)
        for shape in SHAPES[: 2 if threads > 1 else 1]:
            size = "×".join(map(str, shape))
            name = f"B in micro-panels, {threads} thread{'s' if threads > 1 else ''}"
            case = matmul_case(name, size, shape, micro, rows, peer="B row after row")
            results.append(run_case(case, SETTINGS, rng))
    kd.set_num_threads(before)
    notes = [
        f"Panels of {PANEL} columns, all of k; peer/kdsl > 1: micro-panels faster.",
        "Medians of 15 alternating batches, 0.3 s pause before each side.",
    ]
    title = "matmul: B's panel in micro-panels or row after row"
    publish(markdown(results, title, notes), args.output)


if __name__ == "__main__":
    main()
