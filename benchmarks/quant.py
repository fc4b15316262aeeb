"""Quantized matrix-vector products (kernels/quant.py) against NumPy and against the
memory's read bandwidth, same process: `python benchmarks/quant.py [--quick] [--output
PATH]` prints a Markdown table.

Q4_0 and Q8_0 weights of 4096×4096 and 11008×4096, timed over a rotation of distinct
matrices whose bytes are three times this CPU's L3 (as a model's layers are), so each call
reads its weights from DRAM. Rates are GB/s of quantized weight bytes read. Peers:
NumPy's dequantize-then-matvec, and a plain 2-core kdsl read of the same bytes (the
bandwidth bound).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import harness
import numpy as np
from kdsl.kernels import quant
from kdsl.kernels.peak import read_probe

import kdsl as kd
from kdsl.targets.cpu.jit import host_features


def numpy_qmatvec(w: quant.QTensor, x: np.ndarray, y: np.ndarray) -> None:
    """What a NumPy user writes: dequantize the whole matrix, then a BLAS matvec."""
    np.matmul(quant.reference_dequantize(w), x, out=y)


def cases(fmt: str, rows: int, cols: int) -> list[harness.Case]:
    def make(rng: np.random.Generator):
        w = quant.quantize(rng.standard_normal((rows, cols), np.float32), fmt)
        return w, rng.standard_normal(cols, np.float32), np.empty(rows, np.float32)

    def run(w, x, y):
        quant.qmatvec(w, x, out=y)

    def reference(w, x, y):
        y[...] = quant.reference_qmatmul(w, x)[0]

    def read(w, x, y):  # the quants, then the scales: every byte the product reads
        read_probe(w.q.view(np.float32), y)
        read_probe(w.d.view(np.float32), y)

    nbytes = rows * (cols // quant.BLOCK) * quant.FORMATS[fmt]  # GGML's size, as QTensor.nbytes
    common = dict(work=float(nbytes), unit="GB/s", rtol=2e-3, atol=2e-3, reference=reference)
    name, size = f"qmatvec {fmt.upper()}", f"{rows}×{cols}"
    return [
        harness.Case(
            name, size, make, run, numpy_qmatvec, peer="NumPy dequantize + matvec", **common
        ),
        harness.Case(name, size, make, run, read, peer="kdsl read of the bytes", **common),
    ]


def form_case(rows: int, cols: int) -> harness.Case:
    """The Q8_0 product (the kernel alone, on activations quantized once) with its byte
    products in this CPU's form (quant.signed_bytes_dot) against the other form."""

    def make(rng: np.random.Generator):
        w = quant.quantize(rng.standard_normal((rows, cols), np.float32), "q8_0")
        xd, xq = quant.quantize_activations(rng.standard_normal((1, cols), np.float32), "q8_0")
        return w, xd, xq, np.empty((1, rows), np.float32)

    def form(biased: bool):
        def run(w, xd, xq, y):
            quant.q8_0_long_rows(w.d, w.q, xd, xq, y, biased)

        return run

    other = "signed (AVX2's)" if quant.BIASED else "biased (VNNI's)"
    nbytes = rows * (cols // quant.BLOCK) * quant.FORMATS["q8_0"]
    return harness.Case(
        "Q8_0 byte products in L3",
        f"{rows}×{cols}",
        make,
        form(quant.BIASED),
        form(not quant.BIASED),
        work=float(nbytes),
        unit="GB/s",
        peer=f"the {other} form",
    )


def _targets(rows: list[harness.Row]) -> list[str]:
    notes = []
    for row in rows:
        rate = row.work / row.kdsl_s / 1e9
        ratio = row.numpy_s / row.kdsl_s if row.numpy_s else 0.0
        if row.peer.startswith("kdsl read") and row.benchmark.endswith("in L3"):
            notes.append(
                f"{row.benchmark} {row.size}: {rate:.1f} GB/s = {100 * ratio:.0f}% of a read "
                "of the same bytes in the L3 (no target)"
            )
        elif row.peer.startswith("kdsl read"):
            notes.append(
                f"{row.benchmark} {row.size}: {rate:.1f} GB/s = {100 * ratio:.0f}% of the "
                f"read bandwidth ({row.work / row.numpy_s / 1e9:.1f} GB/s); target ≥ 80%: "
                f"{'met' if ratio >= 0.8 else 'NOT met'}"
            )
        elif "Q4_0" in row.benchmark and row.size.startswith("4096×"):
            notes.append(
                f"{row.benchmark} {row.size}: {ratio:.0f}× NumPy's dequantize + matvec "
                f"(target ≥ 50×: {'met' if ratio >= 50 else 'NOT met'})"
            )
    return notes


def _byte_products() -> str:
    """The instructions that multiply the bytes on this CPU (kdsl/targets/cpu/dot.py)."""
    if host_features().get("avx512vnni"):
        return "AVX512-VNNI (vpdpbusd)"
    if host_features().get("avx2"):
        return "AVX2 (vpmaddubsw and vpmaddwd; Q8_0's signs moved with vpsignb)"
    return "widening multiplies (no VNNI or AVX2 here)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--output", type=Path, help="also write the Markdown page here")
    ns = parser.parse_args(argv)
    working_set = 3 * kd.cpu.cache_bytes()
    if ns.quick:
        settings = harness.Settings(repeats=3, min_batch_s=0.005, working_set_bytes=1 << 20)
        shapes = [(256, 512)]
    else:
        settings = harness.Settings(
            repeats=9, min_batch_s=0.05, working_set_bytes=working_set, settle_s=0.3, max_sets=64
        )
        shapes = [(4096, 4096), (11008, 4096)]
    # NumPy's dequantize-then-matvec is ~100× slower: three repeats of it tell enough
    slow_peer = dataclasses.replace(settings, repeats=min(3, settings.repeats))
    rng = np.random.default_rng(0)
    rows = [
        harness.run_case(case, slow_peer if case.peer.startswith("NumPy") else settings, rng)
        for fmt in ("q4_0", "q8_0")
        for shape in shapes
        for case in cases(fmt, *shape)
    ]
    # the same product on one matrix small enough to stay in the L3 (on a VM whose DRAM
    # other tenants share, a second reading of the product's own speed)
    in_cache = dataclasses.replace(settings, working_set_bytes=1)
    rows += [
        harness.run_case(dataclasses.replace(case, name=f"{case.name} in L3"), in_cache, rng)
        for fmt in ("q4_0", "q8_0")
        for case in cases(fmt, *shapes[0])
        if case.peer.startswith("kdsl read")
    ]
    rows.append(harness.run_case(form_case(*shapes[0]), in_cache, rng))
    notes = [
        "GB/s count the quantized weight bytes read per call (34 bytes per 32 values for "
        "Q8_0, 18 for Q4_0); the read row rates its peer by the same bytes",
        f"inputs rotate among distinct matrices totalling ≥ {working_set >> 20} MiB (3× "
        "the L3), so the weights come from DRAM as a model's layers do; medians of "
        "alternating batches",
        "kdsl quantizes the activations to Q8_0 per block (as GGML does) and multiplies "
        f"bytes with {_byte_products()}; checked against an exact NumPy model of that "
        "arithmetic",
        "byte products' forms (kernels/quant.py, signed_bytes_dot): this CPU's "
        f"({'biased, for vpdpbusd' if quant.BIASED else 'signed, for vpsignb + vpmaddubsw'})"
        " against the other, both exact (the same outputs)",
        *_targets(rows),
    ]
    title = "kdsl quantized matvec vs NumPy and the read bandwidth" + (
        " (quick run)" if ns.quick else ""
    )
    harness.publish(harness.markdown(rows, title, notes), ns.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
