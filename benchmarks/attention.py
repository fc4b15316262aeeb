"""Attention (kernels/attention.py) against NumPy and PyTorch's CPU SDPA, same process:
`python benchmarks/attention.py [--quick] [--output PATH]` prints a Markdown table.

Prefill: B=1, H=8, D=64, L in {1024, 2048}, causal or not, rated in GFLOP/s of useful
work (4·B·H·L²·D non-causal; causal counts only the unmasked scores) next to the FMA
peak measured by the kdsl probe (kernels/peak.py) in the same run. Decode: one query
per head against a KV cache (H=32, D=128, 4096 keys), rated in GB/s of K and V read,
against NumPy attention and against np.copyto of the same bytes. bf16 inputs: against
PyTorch's SDPA on bf16 tensors and against kdsl on f32 copies of them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import harness
import numpy as np
from kdsl.kernels import attention
from kdsl.kernels.attention import textbook
from kdsl.kernels.peak import read_probe

from kdsl.cli.demo import machine_peaks

try:
    import torch
except ImportError:  # optional peer
    torch = None


def numpy_attention(q, k, v, out, causal=False):
    """The textbook version: the whole score matrix, softmax, then P·V (BLAS matmuls)."""
    textbook(q, k, v, causal, out=out)


def torch_attention(q, k, v, out, causal=False):
    """torch.nn.functional.scaled_dot_product_attention on the same memory (SDPA has no
    out=, so its result is copied into `out`: ~1% of the call at these sizes)."""
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    result = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
    out[...] = result.numpy()


def _useful_flops(B: int, H: int, L: int, D: int, causal: bool) -> float:
    scores = L * (L + 1) / 2 if causal else L * L  # causal: only i >= j count
    return 4.0 * B * H * scores * D


def prefill_cases(L: int, causal: bool, B: int = 1, H: int = 8, D: int = 64) -> list:
    def make(rng):
        q, k, v = rng.standard_normal((3, B, H, L, D), np.float32)
        return q, k, v, np.empty((B, H, L, D), np.float32)

    def run(q, k, v, out):
        attention(q, k, v, causal=causal, out=out)

    mode = "causal" if causal else "non-causal"
    common = dict(work=_useful_flops(B, H, L, D, causal), unit="GFLOP/s", rtol=1e-4, atol=1e-4)
    size = f"B={B} H={H} L={L} D={D}"
    cases = [
        harness.Case(
            f"attention {mode}",
            size,
            make,
            run,
            lambda q, k, v, out: numpy_attention(q, k, v, out, causal),
            **common,
        )
    ]
    if torch is not None:
        cases.append(
            harness.Case(
                f"attention {mode}",
                size,
                make,
                run,
                lambda q, k, v, out: torch_attention(q, k, v, out, causal),
                peer="torch SDPA",
                **common,
            )
        )
    return cases


def bf16_cases(L: int, B: int = 1, H: int = 8, D: int = 64) -> list:
    """bf16 q, k, v (ml_dtypes; f32 results) against PyTorch's SDPA on the same bf16
    values (its result rounded to bf16), and against kdsl on their f32 values."""
    import ml_dtypes

    def make(rng):  # the bf16 inputs, then their values in f32
        q, k, v = rng.standard_normal((3, B, H, L, D), np.float32).astype(ml_dtypes.bfloat16)
        f32 = (a.astype(np.float32) for a in (q, k, v))
        return q, k, v, *f32, np.empty((B, H, L, D), np.float32)

    def run(q, k, v, q32, k32, v32, out):
        attention(q, k, v, out=out)

    def as_f32(q, k, v, q32, k32, v32, out):
        attention(q32, k32, v32, out=out)

    def torch_bf16(q, k, v, q32, k32, v32, out):
        tq, tk, tv = (torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) for a in (q, k, v))
        out[...] = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv).float().numpy()

    common = dict(work=_useful_flops(B, H, L, D, False), unit="GFLOP/s", atol=2e-2, rtol=2e-2)
    size = f"B={B} H={H} L={L} D={D}"
    peers = [(as_f32, "kdsl, the same values in f32")]
    peers += [(torch_bf16, "torch SDPA, bf16")] if torch is not None else []
    name = "attention of bf16 inputs"
    return [harness.Case(name, size, make, run, fn, peer=peer, **common) for fn, peer in peers]


def decode_cases(H: int = 32, D: int = 128, Lk: int = 4096) -> list:
    def make(rng):
        q = rng.standard_normal((1, H, 1, D), np.float32)
        kv = rng.standard_normal((2, 1, H, Lk, D), np.float32)  # k = kv[0], v = kv[1]
        return q, kv, np.empty_like(kv), np.empty((1, H, 1, D), np.float32)

    def run(q, kv, scratch, out):
        attention(q, kv[0], kv[1], out=out)

    def numpy_decode(q, kv, scratch, out):
        numpy_attention(q, kv[0], kv[1], out)

    common = dict(work=2.0 * H * Lk * D * 4, unit="GB/s", rtol=1e-4, atol=1e-5)
    size = f"H={H} D={D} KV={Lk}"
    peers = [
        (numpy_decode, "NumPy", None),
        (lambda q, kv, scratch, out: np.copyto(scratch, kv), "np.copyto (K+V bytes)", numpy_decode),
        (
            lambda q, kv, scratch, out: read_probe(
                kv.reshape(2 * H, -1), scratch.reshape(-1)[: 2 * H]
            ),
            "kdsl read of K+V",
            numpy_decode,
        ),
    ]
    return [
        harness.Case(
            "attention decode (Lq=1)", size, make, run, fn, peer=peer, reference=ref, **common
        )
        for fn, peer, ref in peers
    ]


def _targets(rows: list[harness.Row], peak: float, copy_gbs: float) -> list[str]:
    """The issue's targets, each with the measured value."""
    by = {(r.benchmark, r.size, r.peer): r for r in rows}
    notes = []
    for key, row in by.items():
        name, size, peer = key
        rate = row.work / row.kdsl_s / 1e9
        ratio = row.numpy_s / row.kdsl_s if row.numpy_s else 0.0
        if "decode" in name and peer == "kdsl read of K+V":
            share = row.numpy_s / row.kdsl_s
            notes.append(
                f"decode {size}: {rate:.1f} GB/s of K+V read = {100 * share:.0f}% of a plain "
                f"2-core read of the same bytes ({row.work / row.numpy_s / 1e9:.1f} GB/s); "
                f"target ≥ 80%: "
                f"{'met' if share >= 0.8 else 'NOT met'}"
            )
        elif "decode" in name and peer.startswith("np.copyto"):
            notes.append(
                f"decode {size}: {ratio:.2f}× the time of np.copyto of the K+V bytes "
                f"({rate:.1f} GB/s read vs np.copyto {2 * row.work / row.numpy_s / 1e9:.1f} "
                f"GB/s read+written; best copy {copy_gbs:.1f} GB/s read+written)"
            )
        elif "non-causal" in name:
            goal = 1.05 if peer == "torch SDPA" else 3.0
            notes.append(
                f"{name} {size}: {100 * rate / peak:.0f}% of FMA peak (target ≥ 85%: "
                f"{'met' if rate >= 0.85 * peak else 'NOT met'}), {ratio:.2f}× {peer} "
                f"(target ≥ {goal}×: {'met' if ratio >= goal else 'NOT met'})"
            )
        elif "causal" in name:
            goal = 1.5 if peer == "torch SDPA" else 5.0
            notes.append(
                f"{name} {size}: {100 * rate / peak:.0f}% of FMA peak, {ratio:.2f}× {peer} "
                f"(target ≥ {goal}×: {'met' if ratio >= goal else 'NOT met'})"
            )
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--output", type=Path, help="also write the Markdown page here")
    ns = parser.parse_args(argv)
    if torch is not None:
        torch.set_num_threads(2)
    if ns.quick:
        settings = harness.Settings(repeats=3, min_batch_s=0.005, working_set_bytes=1 << 20)
        lengths, decode = [256], dict(H=8, D=128, Lk=1024)
    else:
        settings = harness.Settings(
            repeats=9, min_batch_s=0.05, working_set_bytes=64 << 20, settle_s=0.3
        )
        lengths, decode = [1024, 2048], dict(H=32, D=128, Lk=4096)
    cases = [c for L in lengths for causal in (False, True) for c in prefill_cases(L, causal)]
    cases += bf16_cases(lengths[0])
    cases += decode_cases(**decode)
    kv_bytes = 2 * decode["H"] * decode["Lk"] * decode["D"] * 4
    before = machine_peaks(kv_bytes)
    rng = np.random.default_rng(0)
    rows = [harness.run_case(case, settings, rng) for case in cases]
    peak, copy_gbs = machine_peaks(kv_bytes, than=before)  # (the better of before and after)
    notes = [
        f"FMA peak {peak:.0f} GFLOP/s (kdsl probe, kernels/peak.py); copy "
        f"{copy_gbs:.1f} GB/s read+written (the faster of np.copyto and a kdsl copy of "
        f"{kv_bytes >> 20} MiB), the better of a probe before and after the cases",
        "GFLOP/s count useful work: 4·B·H·Lq·Lk·D, causal only the unmasked half",
        "decode GB/s count the bytes of K and V read; the copy and read rows rate their peer "
        "by the same bytes (np.copyto also writes them; the kdsl read sums them on 2 cores)",
        f"PyTorch {torch.__version__ if torch else '(not installed)'} with 2 threads; "
        "medians of alternating batches",
        *_targets(rows, peak, copy_gbs),
    ]
    title = "kdsl attention vs NumPy and PyTorch" + (" (quick run)" if ns.quick else "")
    harness.publish(harness.markdown(rows, title, notes), ns.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
