"""Flash attention on a GPU's tensor cores: bf16 q, k, v, f32 sums, both products of each
key tile on `mma.sync` (the `tensorize(..., "mma")` schedule step), the online softmax
between them on the warp's lanes.

Same contract as kernels/attention.py's `flash_kernel` (q [B, H, Lq, D], k and v
[B, H / group, Lk, D], top-left causal alignment), but the work is cut for warps: a
block runs WARPS warps, each its own 16 queries (an mma tile's rows) through the key
tiles, with everything it keeps in its own slice of shared memory:

    for each block of 16·WARPS queries, for each warp (16 of them):
      m, l, acc = -inf, 0, 0
      for each tile of TK keys (causal: up to the warp's last query):
        s = q·kᵀ                                   (mma: 16 × TK, over D)
        m' = max(m, rowmax(s·scale));  α = exp(m - m')          (a lane per query)
        p = bf16(exp(s·scale - m'));   l = l·α + rowsum(p)      (lanes across keys)
        acc = acc·α + p·v                          (mma: 16 × D, over the tile's keys)
      o = acc / l

P is rounded to bf16 for the second product, as FlashAttention does; the softmax's sums
are f32. Written without a GPU: the SIMT emulator (tests/targets/cuda/simt.py) checks
it against NumPy, ptxas assembles it; its speed is for a GPU session to measure.
"""

from __future__ import annotations

import kdsl as kd

ROWS = 16  # queries per warp: an mma.sync tile's rows
WARPS = 4  # warps per block
TK = 64  # keys per tile: 8 mma tiles of 8 columns
COLS = 64  # the widest accumulator tile of D (larger D runs in several)


def _example(L: int, D: int, causal: bool) -> dict[str, object]:
    shape = (1, 8, L, D)
    arrays = {name: kd.spec(shape, kd.bf16) for name in "qkv"}
    return {
        **arrays,
        "o": kd.spec(shape, kd.f32),
        "scale": D**-0.5,
        "group": 1,
        "D": D,
        "causal": causal,
    }


def _scores(s, scale, r, c, r0, k0, causal: bool):
    """The scaled score of query r0 + r and key k0 + c (causal: -inf past the query)."""
    scaled = s[r, c] * scale
    return kd.where(k0 + c <= r0 + r, scaled, -kd.inf) if causal else scaled


@kd.kernel(examples=[_example(1024, 64, False), _example(1024, 128, True)])
def flash_mma_kernel(
    q, k, v, o, scale, group: kd.constexpr, D: kd.constexpr, causal: kd.constexpr = False
):
    """o = softmax(q·kᵀ·scale [causal]) · v, q [B, H, Lq, D], k/v [B, H/group, Lk, D]."""
    B, H, Lq, Lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    nq = (Lq + ROWS * WARPS - 1) // (ROWS * WARPS)
    for i, w in kd.grid(B * H * nq, WARPS):
        b = kd.local(i // (H * nq), kd.i64)
        h = kd.local(i // nq % H, kd.i64)
        hk = kd.local(h // group, kd.i64)
        r0 = kd.local((i % nq * WARPS + w) * ROWS, kd.i64)  # the warp's first query
        nr = kd.minimum(ROWS, Lq - r0)  # its queries (≤ 0: none)
        # keys it attends: all, or (causal) up to its last query
        kend = kd.local(kd.minimum(Lk, r0 + nr) if causal else Lk, kd.i64)

        m = kd.alloc((ROWS,))  # running max of the scaled scores, per query
        mt = kd.alloc((ROWS,))  # the tile's new running max
        al = kd.alloc((ROWS,))  # exp(old max - new max)
        lsum = kd.alloc((ROWS,))  # running sum of p
        s = kd.alloc((ROWS, TK))  # the tile's scores
        p = kd.alloc((ROWS, TK), kd.bf16)  # … as probabilities
        acc = kd.alloc((ROWS, D))  # running Σ p·v
        ri = kd.indices(ROWS, names="ri")
        m[ri] = -kd.inf
        lsum[ri] = 0.0
        rz, dz = kd.indices(ROWS, D, names="rz dz")
        acc[rz, dz] = 0.0

        for kt in kd.range((kend + TK - 1) // TK):
            k0 = kt * TK
            nk = kd.minimum(TK, kend - k0)
            rs, cs, ds = kd.indices(nr, nk, D, names="rs cs ds")
            s[rs, cs] = kd.sum(q[b, h, r0 + rs, ds] * k[b, hk, k0 + cs, ds], over=ds)

            rm, cm = kd.indices(nr, nk, names="rm cm")
            scores = _scores(s, scale, rm, cm, r0, k0, causal)
            mt[rm] = kd.maximum(m[rm], kd.max(scores, over=cm))
            al[rm] = kd.exp(m[rm] - mt[rm])
            m[rm] = mt[rm]

            rp, cp = kd.indices(nr, nk, names="rp cp")
            scores = _scores(s, scale, rp, cp, r0, k0, causal)
            p[rp, cp] = kd.cast(kd.exp(scores - mt[rp]), kd.bf16)
            rl, cl = kd.indices(nr, nk, names="rl cl")
            lsum[rl] = lsum[rl] * al[rl] + kd.sum(kd.cast(p[rl, cl], kd.f32), over=cl)

            ra, da, ka = kd.indices(nr, D, nk, names="ra da ka")
            pv = kd.sum(p[ra, ka] * v[b, hk, k0 + ka, da], over=ka)
            acc[ra, da] = acc[ra, da] * al[ra] + pv

        ro, do = kd.indices(nr, D, names="ro do")
        row = (i % nq * WARPS + w) * ROWS + ro  # (r0 + ro, said so that the writes
        o[i // (H * nq), i // nq % H, row, do] = acc[ro, do] / lsum[ro]  # are seen apart)


def _product_on_warp(s, rows: str, cols: str, depth: str, width: int) -> None:
    """rows × cols over depth as mma.sync tiles of 16 × `width` (cols split by it), the
    accumulator's zeroing and write-back on the warp's lanes."""
    co, ci = s.split(cols, width)
    s.reorder(co, rows, ci)
    s.split(depth, 2)
    s.tensorize(rows, "mma")
    for lanes in (f"{ci}.1", f"{ci}.2"):
        s.bind(lanes, "thread.x")


@flash_mma_kernel.schedule(kd.cuda)
def _flash_mma_gpu(s):
    s.bind("i", "block.x")
    s.bind("w", "thread.y", WARPS)
    for lanes in ("ri", "ri.1", "dz", "rm", "rm.1", "rm.2", "cp", "rl", "do"):
        s.bind(lanes, "thread.x")
    _product_on_warp(s, "rs", "cs", "ds", TK)
    _product_on_warp(s, "ra", "da", "ka", COLS)
