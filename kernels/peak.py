"""Machine-peak probes written in kdsl: FMA throughput, copy and read bandwidth, for "% of
peak" in `kdsl demo` and the benchmarks."""

from __future__ import annotations

from kdsl.kernels._machine import vector_bytes
from kdsl.kernels.matvec import into, row_streams, row_sums

import kdsl as kd

# Independent FMA chains per element: enough 16-lane vectors in flight to cover the FMA
# latency (4-5 cycles × 2 pipes), few enough to stay in registers. A vector is one zmm
# with AVX-512 (8 of them); two ymm with AVX2, whose 16 registers 8 such chains overflow
# (on a Zen 2 the probe spilled and measured 110 GFLOP/s, where NumPy's matmul ran 170).
CHAINS = 8 if vector_bytes() == 64 else 6
STEPS = 32  # FMAs per chain
FLOPS_PER_ELEMENT = 2 * CHAINS * STEPS + CHAINS


@kd.kernel
def fma_probe(x, y):
    """CHAINS chains of STEPS dependent FMAs per element, interleaved by a loop whose
    every iteration steps each chain once (written out unrolled, LLVM's scheduler would
    put each chain's FMAs back to back and leave the out-of-order window to find the
    parallelism); the default schedule runs 16 elements per vector on all cores."""
    for i in kd.grid(x.shape[0]):
        chains = [kd.local(x[i] + 0.01 * k) for k in range(CHAINS)]
        for _ in kd.range(STEPS):
            for v in chains:
                v.set(kd.fma(v, 0.999, 0.001))
        total = chains[0] + 0.0
        for v in chains[1:]:
            total = total + v
        y[i] = total


@kd.kernel
def copy_probe(x, y):
    """y = x: the bandwidth a streaming kernel can reach (vectorized, all cores)."""
    i = kd.indices(x.shape[0])
    y[i] = x[i]


@kd.kernel
def read_probe(x, out):
    """out[i] = Σ_j x[i, j]: the read bandwidth of a streaming kernel, with the access
    pattern of the fastest matrix-vector product (several rows per core at a time)."""
    row_sums(lambda i, j: x[i, j], x.shape[0], x.shape[1], into(out))


@read_probe.schedule(kd.cpu)
def _read_probe_cpu(s):
    row_streams(s, matrix="x")
