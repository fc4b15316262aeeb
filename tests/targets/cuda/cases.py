"""Kernels and arguments shared by the CUDA tests: the zoo and the library, each with
host arguments of awkward sizes (tails, 1, primes) and the expected outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ml_dtypes
import numpy as np
from kdsl.kernels.attention import decode_kernel, flash_kernel
from kdsl.kernels.attention import reference as attention_reference
from kdsl.kernels.attention_tc import flash_mma_kernel
from kdsl.kernels.matmul import matmul_kernel
from kdsl.kernels.matmul import reference as matmul_reference
from kdsl.kernels.norms import (
    layernorm_reference,
    layernorm_rows,
    rmsnorm_reference,
    rmsnorm_rows,
)
from kdsl.kernels.quant import PRODUCTS as quant_products
from kdsl.kernels.quant import quantize, quantize_activations, reference_qmatmul
from kdsl.kernels.softmax import softmax_rows

from tests import zoo
from tests.helpers import random_array


@dataclass
class Case:
    name: str
    kernel: object
    args: list[object]
    expected: dict[int, np.ndarray]  # argument position (or -1: the result) → values
    rtol: float = 1e-5


def cases(rng: np.random.Generator, m: int = 37, n: int = 301) -> list[Case]:
    f32 = lambda *shape: random_array(rng, shape, np.float32)  # noqa: E731
    x, w, b = f32(m, n), f32(n), f32(n)
    a, bm = f32(m, 19), f32(19, 45)
    v = f32(m * n)
    qs = rng.integers(0, 256, (m, 16), dtype=np.uint8)
    d = f32(m)
    out = []
    out.append(
        Case("saxpy", zoo.saxpy, [2.5, v, v * 0.5, np.empty_like(v)], {3: 2.5 * v + v * 0.5})
    )
    out.append(
        Case("matmul", zoo.matmul, [a, bm, np.empty((m, 45), np.float32)], {2: a @ bm}, 1e-4)
    )
    out.append(Case("softmax", zoo.softmax, [x, np.empty_like(x)], {1: zoo.softmax_ref(x)}, 1e-4))
    out.append(
        Case("cumsum", zoo.cumsum_rows, [x, np.empty_like(x)], {1: np.cumsum(x, axis=1)}, 1e-4)
    )
    out.append(
        Case(
            "rmsnorm",
            zoo.rmsnorm,
            [x, w, np.empty_like(x), 1e-5],
            {2: zoo.rmsnorm_ref(x, w, 1e-5)},
            1e-4,
        )
    )
    out.append(
        Case(
            "dequant",
            zoo.dequant_q4_0,
            [qs, d, np.empty((m, 32), np.float32)],
            {2: zoo.dequant_q4_0_ref(qs, d)},
        )
    )
    out.append(Case("relu", zoo.relu_where, [v, np.empty_like(v)], {1: np.maximum(v, 0)}))
    out.append(Case("scaled_copy", zoo.scaled_copy, [x, 3.0], {-1: x * 3}))
    out.append(Case("row_sum", zoo.row_sum, [x, np.empty(m, np.float32)], {1: x.sum(axis=1)}, 1e-4))
    out.append(
        Case("gelu_tanh", zoo.gelu_tanh, [v, np.empty_like(v)], {1: zoo.gelu_tanh_ref(v)}, 1e-5)
    )
    for u in (v, v.astype(np.float64)):
        name = f"waves_{u.dtype}"
        out.append(Case(name, zoo.waves, [u, np.empty_like(u)], {1: zoo.waves_ref(u)}, 1e-5))
        e = np.where(np.arange(u.size) % 2 == 0, np.round(u * 9), u * 9).astype(u.dtype)
        want = {3: zoo.powers_ref(u * 4, e, 2.2)}
        out.append(Case(f"powers_{u.dtype}", zoo.powers, [u * 4, e, 2.2, np.empty_like(u)], want))
        halves = np.round(u * 8) / 8  # (many halves: x·4 ends in .5)
        out.append(
            Case(
                f"rounded_{u.dtype}",
                zoo.rounded,
                [halves, np.empty_like(u)],
                {1: zoo.rounded_ref(halves)},
                0,
            )
        )
    out.append(
        Case("lib_softmax", softmax_rows, [x, np.empty_like(x)], {1: zoo.softmax_ref(x)}, 1e-4)
    )
    out.append(
        Case(
            "lib_rmsnorm",
            rmsnorm_rows,
            [x, w, 1e-5, np.empty_like(x)],
            {3: rmsnorm_reference(x, w, 1e-5)},
            1e-4,
        )
    )
    out.append(
        Case(
            "lib_layernorm",
            layernorm_rows,
            [x, w, b, 1e-5, np.empty_like(x)],
            {4: layernorm_reference(x, w, b, 1e-5)},
            1e-4,
        )
    )
    bias = f32(45)
    gelu = matmul_reference(a, bm, bias, "gelu")
    bf16 = [x.astype(ml_dtypes.bfloat16) for x in (a, bm, bias)]
    out.append(
        Case(  # on tensor cores (mma.sync) where the GPU has them
            "lib_matmul_bf16",
            matmul_kernel,
            [*bf16, np.empty((m, 45), np.float32), "silu", True],
            {3: matmul_reference(*bf16, "silu")},
            1e-4,
        )
    )
    out.append(
        Case(
            "lib_matmul",
            matmul_kernel,
            [a, bm, bias, np.empty((m, 45), np.float32), "gelu", True],
            {3: gelu},
            1e-4,
        )
    )
    cols = 32 * 11  # blocks of 32: more than the GPU schedule reads at once, and a tail
    w_rows = f32(m, cols)
    for fmt in ("q8_0", "q4_0"):
        weights = quantize(w_rows, fmt)
        vectors = f32(2, cols)
        out.append(
            Case(
                f"lib_{fmt}_f32",
                quant_products[(fmt, "f32")],
                [weights.scales, weights.quants, vectors, np.empty((2, m), np.float32)],
                {3: reference_qmatmul(weights, vectors, "f32")},
                1e-4,
            )
        )
        acts = quantize_activations(vectors, fmt)  # GGML's way: Q8_0 activations
        out.append(
            Case(
                f"lib_{fmt}_q8_0",
                quant_products[(fmt, "q8_0")],
                [weights.d, weights.q, *acts, np.empty((2, m), np.float32)],
                {2 + len(acts): reference_qmatmul(weights, vectors, "q8_0")},
                1e-4,
            )
        )
    out += _attention_cases(rng, 70)  # two tiles of queries and of keys, the last cut
    return out


def _attention_cases(rng: np.random.Generator, length: int) -> list[Case]:
    """Flash attention (two query heads per key head; a head size that is padded) and
    decoding against a cache of `length` keys."""
    heads, kv_heads, d = 2, 1, 20
    q = random_array(rng, (1, heads, length, d), np.float32)
    k, v = (random_array(rng, (1, kv_heads, length, d), np.float32) for _ in range(2))
    scale, group = 1 / np.sqrt(d), heads // kv_heads
    out = [
        Case(
            f"lib_attention{'_causal' if causal else ''}",
            flash_kernel,
            [q, k, v, np.empty_like(q), scale, group, d, causal],
            {3: attention_reference(q, k, v, causal)},
            1e-4,
        )
        for causal in (False, True)
    ]
    # D = 128: the tiles past the static 48 KB of shared memory (dynamic shared memory)
    q2, k2, v2 = (random_array(rng, (1, 1, length, 128), np.float32) for _ in range(3))
    out += [
        Case(
            f"lib_attention_d128{'_causal' if causal else ''}",
            flash_kernel,
            [q2, k2, v2, np.empty_like(q2), 128**-0.5, 1, 128, causal],
            {3: attention_reference(q2, k2, v2, causal)},
            1e-4,
        )
        for causal in (False, True)
    ]

    # on tensor cores (bf16): grouped heads, a head size that is no multiple of 16 and
    # queries for one warp and a part (20); causal with D = 128, two column tiles of the
    # accumulator (its warps' tiles past the static 48 KB); keys in two tiles, one cut
    def bf16(*shape: int) -> np.ndarray:
        return random_array(rng, shape, np.float32).astype(ml_dtypes.bfloat16)

    q3, k3, v3 = bf16(1, heads, 20, d), bf16(1, kv_heads, length, d), bf16(1, kv_heads, length, d)
    q4, k4, v4 = (bf16(1, 1, length, 128) for _ in range(3))
    out += [
        Case(
            "lib_attention_mma",
            flash_mma_kernel,
            [q3, k3, v3, np.empty(q3.shape, np.float32), scale, group, d, False],
            {3: attention_reference(q3, k3, v3, False)},
            1e-2,  # (p rounded to bf16 for its product with v)
        ),
        Case(
            "lib_attention_mma_d128_causal",
            flash_mma_kernel,
            [q4, k4, v4, np.empty(q4.shape, np.float32), 128**-0.5, 1, 128, True],
            {3: attention_reference(q4, k4, v4, True)},
            1e-2,
        ),
    ]
    one = np.ascontiguousarray(q[:, :, :1])
    out.append(
        Case(
            "lib_decode",
            decode_kernel,
            [one, k, v, np.empty_like(one), scale, group, d],
            {3: attention_reference(one, k, v, False)},
            1e-4,
        )
    )
    return out


Check = Callable[[Case], None]
