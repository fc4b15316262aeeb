"""GGML's arithmetic in NumPy, the yardstick of kernels/quant.py's kernels: its
reference quantizers (f32 arithmetic as in the C code), dequantization, and products
(integer block dots times both scales, in float64)."""

from __future__ import annotations

import numpy as np
from kdsl.kernels.qtensor import BLOCK, QTensor, check_shape


def reference_quantize(x: np.ndarray, fmt: str) -> QTensor:
    """GGML's reference quantizers in NumPy, f32 arithmetic as in the C code."""
    x = np.asarray(x, np.float32)
    rows, cols = check_shape("reference_quantize", fmt, x.shape)
    blocks = x.reshape(rows, cols // BLOCK, BLOCK)
    if fmt == "q8_0":
        d = np.abs(blocks).max(axis=2, keepdims=True) / np.float32(127)
    else:  # the first value of largest magnitude, over -8
        first = np.argmax(np.abs(blocks), axis=2)[..., None]
        d = np.take_along_axis(blocks, first, axis=2) / np.float32(-8)
    with np.errstate(divide="ignore"):
        inverse = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = blocks * inverse
    if fmt == "q8_0":
        q = (np.trunc(v) + np.where(np.abs(v - np.trunc(v)) >= 0.5, np.sign(v), 0)).astype(np.int8)
    else:
        nibbles = np.minimum(15, np.trunc(v + np.float32(8.5))).astype(np.uint8)
        q = nibbles[..., :16] | (nibbles[..., 16:] << 4)
    out = QTensor.empty(fmt, (rows, cols))
    out.scales[...] = d[..., 0]
    out.quants[...] = q
    return out


def reference_dequantize(w: QTensor) -> np.ndarray:
    d = w.scales.astype(np.float32)[:, :, None]
    q = w.quants
    if w.format == "q4_0":
        q = np.concatenate([(q & 15).astype(np.int8) - 8, (q >> 4).astype(np.int8) - 8], axis=2)
    return (d * q.astype(np.float32)).reshape(w.shape)


def reference_qmatmul(w: QTensor, x: np.ndarray, activations: str = "q8_0") -> np.ndarray:
    """GGML's arithmetic in float64 NumPy: integer block dots times both scales."""
    batch = np.asarray(x, np.float32).reshape(-1, w.shape[1])
    if activations == "f32":
        return batch.astype(np.float64) @ reference_dequantize(w).astype(np.float64).T
    xq = reference_quantize(batch, "q8_0")
    wq = w.quants.astype(np.int64)
    if w.format == "q4_0":
        wq = np.concatenate([(wq & 15) - 8, (wq >> 4) - 8], axis=2)
    dots = np.einsum("rbj,tbj->trb", wq, xq.quants.astype(np.int64))
    scales = w.scales.astype(np.float64)[None] * xq.scales.astype(np.float64)[:, None]
    return (dots * scales).sum(axis=2)
