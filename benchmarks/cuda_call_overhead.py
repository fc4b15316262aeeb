"""The host's share of a cached GPU call, measurable without a GPU: a PyTorch-tensor call
of a small kernel with the driver's launch replaced by a recorder (tests/targets/cuda/
stubs.py). On a GPU machine, benchmarks/gpu_check.py times the real call, launch
included, against PyTorch's.

    python benchmarks/cuda_call_overhead.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from tests import zoo
    from tests.targets.cuda.stubs import Tensor, install

    recorder = install(setattr, os.environ.__setitem__)
    a, b, c = Tensor([1]), Tensor([1]), Tensor([1])
    zoo.saxpy(2.0, a, b, c)  # compiles (PTX), then every call takes the cached path
    runs = []
    for _ in range(7):
        recorder.clear()
        n = 20000
        start = time.perf_counter()
        for _ in range(n):
            zoo.saxpy(2.0, a, b, c)
        runs.append((time.perf_counter() - start) / n * 1e6)
    assert len(recorder) == n
    print(f"host work of a cached GPU call (launch not included): {statistics.median(runs):.2f} µs")


if __name__ == "__main__":
    main()
