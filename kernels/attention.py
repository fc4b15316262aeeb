"""Scaled dot-product attention, flash-style: tiles of queries stream over tiles of keys
with an online softmax (running max m, running sum l, rescaled accumulator), so no
Lq × Lk matrix is ever in memory; plus a decode path for one query against a KV cache.

Shapes: q [B, H, Lq, D], k and v [B, Hkv, Lk, D], H a multiple of Hkv (grouped-query
attention: query head h reads kv head h // (H // Hkv)). `causal=True` uses the top-left
alignment of PyTorch's `scaled_dot_product_attention(is_causal=True)`: query i attends
keys j <= i, whatever Lq and Lk are.

Prefill (`flash_kernel`): one task per (b, h, tile of TQ queries). The tile is stored
transposed (qᵀ, D × TQ, pre-scaled) so that both inner products run with the queries
across the vector lanes: Sᵀ = K·qᵀ is a matmul micro-kernel (RQK keys × SQ queries in
registers over D), the softmax statistics are elementwise across lanes (no horizontal
reductions), and P·V keeps RPV query rows × DT of D (value_width) in registers over the
keys. Key tiles wholly below the causal diagonal run unmasked; the diagonal tiles and the
tail tile of Lk run masked (keys clamped in bounds, masked scores -inf); tiles above the
diagonal are never visited.

Decode (`decode_kernel`): one task per (b, kv head, chunk of CH keys) with the H // Hkv
query heads of that kv head together, each producing a partial (m, l, acc); a second
loop nest combines the chunks (flash-decoding), so one head's cache is read by all
cores. Both passes over a chunk (q·K, then p·V) read STREAMS runs of its rows at once:
one run at a time kept a core's reads too few to fill DRAM's bandwidth (69% of a
streaming read's; 83% with four runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

import numpy as np
from kdsl.kernels import _device
from kdsl.kernels._checks import apart, as_array, as_float, out_array, shape_error, written
from kdsl.kernels._machine import (
    full_key_tile,
    score_keys_first,
    score_queries_first,
    value_queries_first,
    value_width,
)
from kdsl.kernels.attention_tc import flash_mma_kernel

import kdsl as kd

TQ = 64  # queries per prefill task: four AVX-512 vectors of f32
TK = 64  # keys per tile, causal
TK_FULL = 128  # keys per tile, not causal, unless a call says (flash_kernel's `keys`): on
# a Zen 4, 1.2% faster than 64 at L = 1024 and 2048; the GPU's. The CPU takes its own:
CPU_KEYS = full_key_tile()
NM = 4  # independent partial maxima per query (a latency-bound chain otherwise)
CH = 256  # keys per decode chunk
STREAMS = 4  # runs of a chunk's keys read at once
# scores are kept in base 2 (q·k·scale·log2 e), so that each probability is one exp2:
# exp(s - m) = exp2((s - m)·log2 e), the multiplication folded into the queries' scale
LOG2E = 1.4426950408889634


def _prefill_example(L: int, causal: bool) -> dict[str, object]:
    f32 = kd.f32
    return {
        "q": kd.spec((1, 8, L, 64), f32),
        "k": kd.spec((1, 8, L, 64), f32),
        "v": kd.spec((1, 8, L, 64), f32),
        "o": kd.spec((1, 8, L, 64), f32),
        "scale": 0.125,
        "group": 1,
        "D": 64,
        "causal": causal,
        "keys": CPU_KEYS,
    }


def _d_tiling(D: int, widest: int = 64) -> tuple[int, int]:
    """(DT, DP): the chunk of D that P·V keeps in registers (at most `widest`), and D
    padded to a multiple of it (D itself unless D is not a multiple of 16)."""
    for dt in (128, 64, 32, 16):
        if dt <= widest and D % dt == 0:
            return dt, D
    return 16, -(-D // 16) * 16


def _v_row(v, b, hk, row, da, D: int, dp: int):
    """v[b, hk, row, da]; the padding columns past D repeat the last one (their sums
    are never written out, and an unguarded read is proved in bounds once, not checked
    at each element)."""
    if dp == D:
        return v[b, hk, row, da]
    return v[b, hk, row, kd.minimum(da, D - 1)]


@dataclass
class _Task:
    """What one prefill task's key tiles share (trace-time values: proxies and ints)."""

    k: object
    v: object
    b: object  # batch entry
    hk: object  # kv head
    q0: object  # first query of the tile
    kend: object  # keys [0, kend) may be attended
    Lk: object
    D: int
    causal: bool
    qT: object  # the query tile, transposed and scaled: D × TQ
    m: object  # running max, per query
    lsum: object  # running sum of exp(s - m), per query
    acc: object  # running Σ exp(s - m)·v: TQ × DP
    tk: int  # keys per tile
    sT: object  # the tile's scores, then probabilities: tk × TQ
    mx: object  # NM partial maxima per query
    mt: object  # the new running max
    al: object  # exp(old max - new max): how much acc and l shrink
    k32: object  # keys of another dtype than f32: the tile's rows in f32, tk × D; or None
    v32: object  # values of another dtype than f32: the tile's rows in f32, tk × DP; or None


def _key_tile(t: _Task, k0, *, tag: str, masked: bool) -> None:
    """The statements of one key tile starting at key k0 (a trace-time macro): Sᵀ, the
    online-softmax update and acc = acc·α + P·V. Its loop names end in `tag`, so the
    schedule can address each copy. A masked tile clamps key rows in bounds and scores
    -inf for keys past kend and (causal) keys after each query."""
    b, hk, D, tk = t.b, t.hk, t.D, t.tk

    def key(j):
        return kd.minimum(k0 + j, t.Lk - 1) if masked else k0 + j

    kj, qs, ds = kd.indices(tk, TQ, D, names=f"kj{tag} qs{tag} ds{tag}")
    if t.k32 is None:
        krow = t.k[b, hk, key(kj), ds]
    else:  # (the tile's keys widened once, not by each block of queries: see v32 below)
        kw, dk = kd.indices(tk, D, names=f"kw{tag} dk{tag}")
        t.k32[kw, dk] = t.k[b, hk, key(kw), dk].astype(kd.f32)
        krow = t.k32[kj, ds]
    dot = kd.sum(krow * t.qT[ds, qs], over=ds)
    if masked:
        keep = k0 + kj < t.kend
        if t.causal:
            keep = keep & (k0 + kj <= t.q0 + qs)
        dot = kd.where(keep, dot, -kd.inf)
    t.sT[kj, qs] = dot
    # the tile's row maxima as NM interleaved partial maxima, then the new running max
    r, qm, kc = kd.indices(NM, TQ, tk // NM, names=f"r{tag} qm{tag} kc{tag}")
    t.mx[r, qm] = kd.max(t.sT[kc * NM + r, qm], over=kc)
    qn, rn = kd.indices(TQ, NM, names=f"qn{tag} rn{tag}")
    t.mt[qn] = kd.maximum(t.m[qn], kd.max(t.mx[rn, qn], over=rn))
    t.al[qn] = kd.exp2(t.m[qn] - t.mt[qn])
    t.m[qn] = t.mt[qn]
    # p = exp(s - m) in place (in base 2: see LOG2E), and its row sums
    qe, ke = kd.indices(TQ, tk, names=f"qe{tag} ke{tag}")
    t.sT[ke, qe] = kd.exp2(t.sT[ke, qe] - t.mt[qe])
    ql, kl = kd.indices(TQ, tk, names=f"ql{tag} kl{tag}")
    t.lsum[ql] = t.lsum[ql] * t.al[ql] + kd.sum(t.sT[kl, ql], over=kl)
    # acc = acc·α + P·V, D in chunks of DT (what a block of queries keeps in registers)
    dt, dp = _d_tiling(D, widest=value_width())
    qa, dc, dv, ka = kd.indices(TQ, dp // dt, dt, tk, names=f"qa{tag} dc{tag} dv{tag} ka{tag}")
    da = dc * dt + dv
    if t.v32 is None:
        vrow = _v_row(t.v, b, hk, key(ka), da, D, dp)
    else:
        # the tile's values widened to f32 once, not by each block of queries that reads
        # them (bf16, B=1 H=8 L=1024 D=64 on a Zen 3: 1.2× the time of f32 inputs before)
        vw, dw = kd.indices(tk, dp, names=f"vw{tag} dw{tag}")
        t.v32[vw, dw] = _v_row(t.v, b, hk, key(vw), dw, D, dp).astype(kd.f32)
        vrow = t.v32[ka, da]
    t.acc[qa, da] = t.acc[qa, da] * t.al[qa] + kd.sum(t.sT[ka, qa] * vrow, over=ka)


def _query_tile(n, nq, causal: bool):
    """The query tile that task n of a head runs. Causal tiles cost in proportion to their
    index, so they are taken in the order 0, nq-1, 1, nq-2, …: any run of consecutive
    tasks (a thread's share) holds light and heavy tiles alike."""
    if not causal:
        return n
    return kd.where(n % 2 == 0, n // 2, nq - 1 - n // 2)


@kd.kernel(
    examples=[_prefill_example(1024, False), _prefill_example(1024, True)],
)
def flash_kernel(
    q,
    k,
    v,
    o,
    scale,
    group: kd.constexpr,
    D: kd.constexpr,
    causal: kd.constexpr = False,
    keys: kd.constexpr = TK_FULL,
):
    """o = softmax(q·kᵀ·scale [causal]) · v for q [B, H, Lq, D], k/v [B, H/group, Lk, D];
    a non-causal tile holds `keys` keys (a positive multiple of NM: refused otherwise), a
    causal one TK."""
    if isinstance(keys, bool) or not isinstance(keys, Integral) or keys <= 0 or keys % NM:
        raise kd.KernelArgumentError(
            f"keys={keys!r}: a tile's keys are a positive multiple of {NM}",
            fix=f"pass keys={TK_FULL} (or leave it out), or another multiple of {NM}",
        )
    B, H, Lq, Lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    nq = (Lq + TQ - 1) // TQ
    for i in kd.grid(B * H * nq):
        b = kd.local(i // (H * nq), kd.i64)
        h = kd.local(i // nq % H, kd.i64)
        hk = kd.local(h // group, kd.i64)
        q0 = kd.local(_query_tile(i % nq, nq, causal) * TQ, kd.i64)
        nqi = kd.local(kd.minimum(TQ, Lq - q0), kd.i64)
        # keys this tile needs: all of them, or (causal) up to its last query
        kend = kd.local(kd.minimum(Lk, q0 + nqi) if causal else Lk, kd.i64)
        # key tiles entirely at or below every query of the tile (no mask needed)
        tk = TK if causal else keys
        n_plain = kd.local(kd.minimum(kend, q0 + 1) // tk if causal else Lk // tk, kd.i64)
        n_masked = kd.local((kend + tk - 1) // tk - n_plain, kd.i64)

        dp = _d_tiling(D)[1]
        qT = kd.alloc((D, TQ))
        m = kd.alloc((TQ,))
        lsum = kd.alloc((TQ,))
        acc = kd.alloc((TQ, dp))
        sT = kd.alloc((tk, TQ))
        mx = kd.alloc((NM, TQ))
        mt = kd.alloc((TQ,))
        al = kd.alloc((TQ,))
        k32 = None if k.dtype == kd.f32 else kd.alloc((tk, D))
        v32 = None if v.dtype == kd.f32 else kd.alloc((tk, dp))
        t = _Task(
            k, v, b, hk, q0, kend, Lk, D, causal, qT, m, lsum, acc, tk, sT, mx, mt, al, k32, v32
        )
        dt, qt = kd.indices(D, TQ, names="dt qt")
        qT[dt, qt] = 0.0  # padding queries (past Lq) stay zero
        qp, dq = kd.indices(nqi, D, names="qp dq")
        qT[dq, qp] = q[b, h, q0 + qp, dq] * (scale * LOG2E)
        qi = kd.indices(TQ, names="qi")
        m[qi] = -kd.inf
        lsum[qi] = 0.0
        qz, dz = kd.indices(TQ, dp, names="qz dz")
        acc[qz, dz] = 0.0
        for kt in kd.range(n_plain):
            _key_tile(t, kt * tk, tag="", masked=False)
        for kt in kd.range(n_masked):
            _key_tile(t, (n_plain + kt) * tk, tag="_m", masked=True)

        qo, do = kd.indices(nqi, D, names="qo do")
        qrow = _query_tile(i % nq, nq, causal) * TQ + qo
        o[i // (H * nq), i // nq % H, qrow, do] = acc[qo, do] / lsum[qo]


def _tile_schedule(s, tag: str, rqk, sq, rpv) -> None:
    """Sᵀ: RQK keys × SQ queries in registers over D; P·V: RPV queries × DT of D in
    registers over the tile's keys; the softmax steps vectorized across queries."""
    kjo, kji = s.split(f"kj{tag}", rqk)
    qb, qs = s.split(f"qs{tag}", sq)
    qc, qv = s.split(qs, 16)
    s.reorder(kjo, qb, qv, f"ds{tag}", kji, qc)
    s.vectorize(qv, 16)
    s.unroll(kji)
    s.unroll(qc)

    s.reorder(f"qm{tag}", f"kc{tag}", f"r{tag}")
    s.vectorize(f"qm{tag}", 16)
    s.unroll(f"r{tag}")
    s.vectorize(f"qn{tag}", 16)
    s.fuse(f"qe{tag}", f"ql{tag}")
    s.fuse(f"ke{tag}", f"kl{tag}")
    s.vectorize(f"qe{tag}", 16)

    qo, qi = s.split(f"qa{tag}", rpv)
    dc, dv = s.split(f"dv{tag}", 16)
    s.reorder(qo, f"dc{tag}", dv, f"ka{tag}", qi, dc)
    s.vectorize(dv, 16)
    # the tile's keys and values widened to f32, where they are of another dtype
    for buffer, loop in (("k", f"dk{tag}"), ("v", f"dw{tag}")):
        if s.dtype(buffer) != kd.f32:
            s.vectorize(loop, 16)
    s.unroll(qi)
    s.unroll(dc)


@flash_kernel.schedule(kd.cpu)
def _flash_cpu(s):
    rqk = s.param("rqk", score_keys_first())
    sq = s.param("sq", score_queries_first(TQ))
    rpv = s.param("rpv", value_queries_first(s.extent("dv")))  # (dv: P·V's chunk of D)
    s.parallelize("i")
    _tile_schedule(s, "", rqk, sq, rpv)
    _tile_schedule(s, "_m", rqk, sq, rpv)
    s.vectorize("do", 16)


def _tile_on_threads(s, tag: str) -> None:
    """A key tile's statements on the block's threads: a key row each for Sᵀ (and for
    widening keys and values of another dtype than f32), a query each for the softmax
    steps and P·V (D across a thread's registers)."""
    loops = ["kj", "qm", "qn", "qn.1", "qn.2", "qe", "ql", "qa"]
    loops += [rows for buffer, rows in (("k", "kw"), ("v", "vw")) if s.dtype(buffer) != kd.f32]
    for loop in loops:
        s.bind(f"{loop}{tag}" if "." not in loop else loop.replace(".", f"{tag}."), "thread.x")


@flash_kernel.schedule(kd.cuda)
def _flash_gpu(s):
    """A block per query tile (of a batch entry and head), its TQ threads through the
    key tiles together: every statement of a tile spread over them, the tile's rows in
    shared memory, the barriers between statements placed by the compiler."""
    s.bind("i", "block.x")
    s.reorder("qm", "r")
    s.reorder("qm_m", "r_m")
    for loop in ("dt", "qi", "qi.1", "qz"):
        s.bind(loop, "thread.x")
    for loop in ("qp", "qo"):  # (extents below TQ: the tile's queries)
        s.bind(loop, "thread.x", TQ)
    _tile_on_threads(s, "")
    _tile_on_threads(s, "_m")


@kd.kernel
def decode_kernel(q, k, v, o, scale, group: kd.constexpr, D: kd.constexpr):
    """o[b, h, 0] = softmax(q[b, h, 0]·kᵀ·scale) · v for one query per head, the keys
    split in chunks of CH across cores, the chunks' (m, l, acc) combined after."""
    B, Hkv, Lk = k.shape[0], k.shape[1], k.shape[2]
    nc = (Lk + CH - 1) // CH
    dt, dp = _d_tiling(D, widest=128)
    pm = kd.empty((B * Hkv * nc, group))  # per chunk and query head: max,
    pl = kd.empty((B * Hkv * nc, group))  # sum of exp(s - max),
    pacc = kd.empty((B * Hkv * nc, group, dp))  # and Σ exp(s - max)·v
    for t in kd.grid(B * Hkv * nc):
        b = kd.local(t // (Hkv * nc), kd.i64)
        hk = kd.local(t // nc % Hkv, kd.i64)
        c0 = kd.local(t % nc * CH, kd.i64)
        n = kd.local(kd.minimum(CH, Lk - c0), kd.i64)
        s = kd.alloc((group, CH))
        # q·k over STREAMS runs of the chunk at once (key st·run + js): one core keeps
        # several reads in flight, as the fastest streaming kernels do; keys past the
        # chunk's end read the cache's last row, and their scores are never used. The
        # runs split the chunk's n keys, not CH: a short cache costs its length
        run = kd.local((n + STREAMS - 1) // STREAMS, kd.i64)
        js, st, rs, ds = kd.indices(run, STREAMS, group, D, names="js st rs ds")
        key = kd.minimum(c0 + st * run + js, Lk - 1)
        dot = kd.sum(q[b, hk * group + rs, 0, ds] * k[b, hk, key, ds], over=ds)
        s[rs, st * run + js] = dot * (scale * LOG2E)
        rm, jm = kd.indices(group, n, names="rm jm")
        pm[t, rm] = kd.max(s[rm, jm], over=jm)
        s[rm, jm] = kd.exp2(s[rm, jm] - pm[t, rm])
        pl[t, rm] = kd.sum(s[rm, jm], over=jm)
        # the runs' keys past n weigh nothing (they are attended keys or the clamped last
        # one, read unguarded: kdsl proves the reads below in bounds once per chunk)
        rz, jz = kd.indices(group, STREAMS * run - n, names="rz jz")
        s[rz, n + jz] = 0.0
        ra, dc, dv, ja, sa = kd.indices(group, dp // dt, dt, run, STREAMS, names="ra dc dv ja sa")
        da = dc * dt + dv
        j = sa * run + ja
        vrow = _v_row(v, b, hk, kd.minimum(c0 + j, Lk - 1), da, D, dp)
        pacc[t, ra, da] = kd.sum(s[ra, j] * vrow, over=(ja, sa))
    for u in kd.grid(B * Hkv * group):
        bh = kd.local(u // group, kd.i64)  # b * Hkv + hk
        r = kd.local(u % group, kd.i64)
        w = kd.alloc((nc,))
        c = kd.indices(nc, names="c")
        mmax = kd.max(pm[bh * nc + c, r], over=c)
        w[c] = kd.exp2(pm[bh * nc + c, r] - mmax)
        c1 = kd.indices(nc, names="c1")
        total = kd.sum(pl[bh * nc + c1, r] * w[c1], over=c1)
        do, co = kd.indices(D, nc, names="do co")
        out = kd.sum(pacc[bh * nc + co, r, do] * w[co], over=co)
        o[u // (Hkv * group), u % (Hkv * group), 0, do] = out / total


@decode_kernel.schedule(kd.cpu)
def _decode_cpu(s):
    """q·k vectorized along D, four keys at a time; exp along the chunk; p·v with all of
    D (up to 128) in registers over the chunk's keys."""
    s.parallelize("t")
    s.vectorize("ds", 16)
    s.unroll("st")
    s.vectorize("jm", 16)
    s.vectorize("jm.1", 16)
    s.vectorize("jm.2", 16)
    dvo, dvi = s.split("dv", 16)
    s.reorder("ra", "dc", dvi, "ja", "sa", dvo)
    s.unroll("sa")
    s.vectorize(dvi, 16)
    s.unroll(dvo)
    s.vectorize("do", 16)


@decode_kernel.schedule(kd.cuda)
def _decode_gpu(s):
    """A block per chunk of keys: a thread per key for q·k (its row read whole, from the
    L1 after the first sector), the chunk's max, exponentials and sum across the
    block's threads, a thread per output element for p·v (each key's row of v read by
    the threads together); then a block per head combines the chunks, a thread per
    chunk or output element. (The default GPU schedule bound the loops over the query
    heads of a group — one for multi-head attention — so one thread did a chunk's
    softmax and p·v alone.)"""
    s.bind("t", "block.x")
    for loop in ("js", "jm", "jm.1", "jm.2", "dv"):
        s.bind(loop, "thread.x")
    s.bind("u", "block.x")
    for loop in ("c", "c.1", "c1", "do"):
        s.bind(loop, "thread.x")


_STORAGE = ("float32", "bfloat16", "float16")  # what the kernels read directly


def _as_input(name: str, x: object) -> np.ndarray:
    a = as_array("attention", name, x, kinds="fiu")
    _check_rank(name, a.shape)
    # computed in f32 like every other input
    return a if a.dtype.name in _STORAGE else a.astype(np.float32)


def _check_rank(name: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 4:
        raise shape_error(
            "attention",
            f"'{name}' has shape {shape}, expected 4 dimensions [B, heads, L, D]",
            f"reshape {name} (e.g. {name}[None] for one batch entry)",
        )


def _check_all(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...]) -> None:
    """The shapes of q, k and v: each 4-D, and agreeing."""
    for name, shape in zip("qkv", (q, k, v)):
        _check_rank(name, shape)
    _check_shapes(q, k, v)


def _check_shapes(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...]) -> None:
    """The shapes of q, k and v, each 4-D, agree."""
    B, H, _, D = q
    if k != v:
        raise kd.ShapeError(
            f"attention: 'k' has shape {k} but 'v' has shape {v}",
            fix="k and v must both be [B, Hkv, Lk, D]",
        )
    if k[0] != B or k[3] != D:
        raise kd.ShapeError(
            f"attention: 'q' is {q} but 'k' is {k}: batch and head size (dims 0 and 3) must agree",
            fix=f"pass k and v of shape [{B}, Hkv, Lk, {D}]",
        )
    hkv = k[1]
    if (H % hkv if hkv else H):  # (no heads at all: an empty result)
        raise kd.ShapeError(
            f"attention: 'q' has {H} heads and 'k' has {hkv}: the query heads must be a "
            "multiple of the kv heads",
            fix=f"use a number of kv heads that divides {H} (grouped-query attention)",
        )
    if k[2] == 0 and q[2] > 0:
        raise kd.ShapeError(
            "attention: 'k' has no keys (Lk = 0): the softmax over zero keys is undefined",
            fix="pass at least one key",
        )


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool = False,
    scale: float | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """softmax(q·kᵀ·scale [+ causal mask])·v for q [B, H, Lq, D] and k, v [B, Hkv, Lk, D]
    with H a multiple of Hkv (query head h uses kv head h // (H // Hkv)).

    `scale` defaults to 1/sqrt(D). `causal=True` masks with PyTorch's top-left alignment
    (`scaled_dot_product_attention(is_causal=True)`): query i attends keys j <= i, also
    when Lq != Lk. Computes in f32; q, k, v may be float32, bfloat16 (ml_dtypes) or
    float16 (others are converted to float32); the result is float32 unless `out` says
    otherwise. One query (Lq == 1) takes the decode path.

    On PyTorch or CuPy CUDA arrays (float32, or bfloat16 on tensor cores) it runs on
    their GPU.
    """
    if type(q) is not np.ndarray and (dev := _device.on_device("attention", q, "q")) is not None:
        kernels = {"f32": flash_kernel, "decode": decode_kernel, "bf16": flash_mma_kernel}
        scale = None if scale is None else as_float("attention", "scale", scale)
        return _device.attention(dev, q, k, v, out, scale, bool(causal), kernels, _check_all)
    q, k, v = _as_input("q", q), _as_input("k", k), _as_input("v", v)
    _check_shapes(q.shape, k.shape, v.shape)
    B, H, Lq, D = q.shape
    target = out_array("attention", out, q.shape, np.float32, also=_STORAGE)
    if target.size == 0:
        return target if out is None else out
    o = apart(out, target, q, k, v)
    scale = 1.0 / math.sqrt(D) if scale is None else as_float("attention", "scale", scale)
    group = H // k.shape[1]
    if causal and k.shape[2] > Lq:  # top-left: keys past the last query are never seen
        k, v = k[:, :, :Lq], v[:, :, :Lq]
    if Lq == 1:
        decode_kernel(q, k, v, o, scale, group, D)
    else:
        flash_kernel(q, k, v, o, scale, group, D, bool(causal), CPU_KEYS)
    return written(o, target, out)


def textbook(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = False, out: np.ndarray | None = None
) -> np.ndarray:
    """The NumPy version people write, as `kdsl demo` and the benchmarks time it: the
    whole score matrix (BLAS), its softmax, then P·V, in the inputs' dtype, scale
    1/sqrt(D); q, k and v with as many heads (no grouped-query attention)."""
    s = np.matmul(q, k.transpose(0, 1, 3, 2))
    s *= np.float32(1 / math.sqrt(q.shape[-1]))
    if causal:
        lq, lk = s.shape[-2:]
        s[..., np.arange(lk)[None, :] > np.arange(lq)[:, None]] = -np.inf
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return np.matmul(s, v, out=out)


def reference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = False, scale: float | None = None
) -> np.ndarray:
    """The whole Lq × Lk score matrix in float64, NumPy: the definition the kernels meet."""
    q, k, v = (np.asarray(x).astype(np.float64) for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = np.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if causal:
        lq, lk = s.shape[-2:]
        s = np.where(np.arange(lk)[None, :] <= np.arange(lq)[:, None], s, -np.inf)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", p, v)
