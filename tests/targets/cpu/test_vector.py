"""Vectorized loops on the CPU: explicit vector code agrees with the interpreter lane by
lane, for every operator and dtype, memory access pattern, mask, reduction and nest."""

from __future__ import annotations

import re
from dataclasses import replace

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kdsl as kd
from kdsl import types as T
from kdsl.errors import CompileError
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    Buffer,
    BufferRole,
    Cast,
    Check,
    CheckKind,
    Const,
    DeclareLocal,
    DimOf,
    Expr,
    Fma,
    If,
    Kernel,
    Load,
    LocalVar,
    Loop,
    LoopExec,
    LoopKind,
    LoopVar,
    Param,
    Scope,
    Select,
    Stmt,
    Store,
    Unary,
    UnaryOp,
)
from kdsl.ir.passes import lower
from kdsl.ir.passes.expand import expand_schedule
from kdsl.ir.visit import map_stmt_exprs, walk_stmts
from kdsl.targets.cpu import vector
from kdsl.targets.cpu.backend import CpuKernel, compile_kernel
from kdsl.targets.cpu.objects import ObjectStore
from kdsl.targets.cpu.vector import vector_obstacle
from kdsl.targets.interp.interpreter import interpret
from kdsl.targets.interp.translate import translate
from tests.helpers import random_array, vector_register
from tests.targets.interp.build import LOC, at, kernel, param

I = LoopVar("i")  # noqa: E741
N = DimOf("a", 0)
# the functions that vector code computes with its own polynomials, and their NumPy ufuncs
NUMPY = {
    UnaryOp.EXP: np.exp,
    UnaryOp.EXP2: np.exp2,
    UnaryOp.LOG: np.log,
    UnaryOp.LOG2: np.log2,
    UnaryOp.TANH: np.tanh,
    UnaryOp.SIN: np.sin,
    UnaryOp.COS: np.cos,
}
INEXACT = (*NUMPY, UnaryOp.SIGMOID, UnaryOp.ERF)


def _i64(v: int) -> Const:
    return Const(v, T.i64)


def _index(op: BinaryOp, a: Expr, b: Expr) -> Binary:
    return Binary(op, a, b, T.bool_ if op.is_comparison else T.i64)


# ------------------------------------------------------------------------------ helpers


def vectorized(body: tuple[Stmt, ...], var: str, w: int) -> tuple[Stmt, ...]:
    """Loop `var` as the contract wants it: a vector loop over a multiple of w, then a
    scalar tail loop for the rest."""
    out: list[Stmt] = []
    for s in body:
        if isinstance(s, Loop) and s.var == var:
            n = _index(BinaryOp.MAX, s.extent, _i64(0))
            main = _index(BinaryOp.MUL, _index(BinaryOp.FLOORDIV, n, _i64(w)), _i64(w))
            at_tail = _index(BinaryOp.ADD, main, LoopVar(f"{var}_tail"))

            def shifted(e: Expr, at_tail: Expr = at_tail) -> Expr | None:
                return at_tail if e == LoopVar(var) else None

            tail_body = tuple(map_stmt_exprs(t, shifted) for t in s.body)
            out.append(replace(s, extent=main, exec=LoopExec.VECTORIZED, width=w))
            out.append(Loop(f"{var}_tail", _index(BinaryOp.SUB, n, main), s.kind, tail_body))
        elif isinstance(s, Loop):
            out.append(replace(s, body=vectorized(s.body, var, w)))
        elif isinstance(s, If):
            out.append(replace(s, then=vectorized(s.then, var, w)))
        else:
            out.append(s)
    return tuple(out)


def with_vector_loop(k: Kernel, var: str, w: int) -> Kernel:
    body = vectorized(k.body, var, w)
    assert body != k.body, f"no loop '{var}'"
    return replace(k, body=body)


def traced(fn, *args) -> Kernel:
    return lower(kd.kernel(fn).ir(*args).kernel)


def same_layout(a: object) -> object:
    """A copy of array `a` with its strides (a strided view stays strided)."""
    if not isinstance(a, np.ndarray) or a.flags.c_contiguous or a.size == 0:
        return a.copy() if isinstance(a, np.ndarray) else a
    spans = [(n - 1) * s for n, s in zip(a.shape, a.strides)]
    lo, hi = sum(min(0, s) for s in spans), sum(max(0, s) for s in spans) + a.itemsize
    storage = np.zeros(hi - lo, np.uint8)[-lo:].view(a.dtype)
    copy = np.lib.stride_tricks.as_strided(storage, a.shape, a.strides)
    copy[...] = a
    return copy


_compiled: dict[str, CpuKernel] = {}


def run_compiled(k: Kernel, args: dict[str, object], **options: bool) -> dict[str, object]:
    """Run compiled `k` on copies of `args` (with their strides); the arguments afterwards."""
    copies = {n: same_layout(a) for n, a in args.items()}
    key = repr((k, sorted(options.items())))
    compiled = _compiled.get(key) or _compiled.setdefault(key, compile_kernel(k, **options))
    arrays = [copies[p.name] for p in k.params if p.is_array]
    scalars = [copies[p.name] for p in k.params if not p.is_array]
    code = compiled.cfunc(*arrays, *scalars)
    assert code == 0, f"error code {code >> 32}:{code & 0xFFFFFFFF}"
    return copies


def run_interpreted(k: Kernel, args: dict[str, object]) -> dict[str, object]:
    copies = {n: a.copy() if isinstance(a, np.ndarray) else a for n, a in args.items()}
    interpret(k, copies)
    return copies


def assert_same(got: np.ndarray, want: np.ndarray, label: str = "") -> None:
    """Bit for bit, except that any NaN equals any NaN."""
    assert got.dtype == want.dtype and got.shape == want.shape, label
    if got.dtype.kind == "f" or got.dtype == ml_dtypes.bfloat16:
        nan = np.isnan(got.astype(np.float32)) & np.isnan(want.astype(np.float32))
        got, want = (
            np.where(nan, 0, got).astype(got.dtype),
            np.where(nan, 0, want).astype(got.dtype),
        )
    bits = f"u{got.dtype.itemsize}" if got.dtype.kind != "b" else "u1"
    diff = np.flatnonzero(got.view(bits) != want.view(bits))
    assert diff.size == 0, (
        f"{label}: {diff.size} differ, first at {diff[0]}: {got.flat[diff[0]]!r} != {want.flat[diff[0]]!r}"
    )


def check(k: Kernel, args: dict[str, object], var: str, w: int, **options: bool) -> None:
    """The vectorized kernel's outputs equal the interpreter's, bit for bit."""
    got = run_compiled(with_vector_loop(k, var, w), args, **options)
    want = run_interpreted(k, args)
    for name, value in want.items():
        if isinstance(value, np.ndarray):
            assert_same(got[name], value, f"{name} (w={w})")  # type: ignore[arg-type]


def data(rng: np.random.Generator, n: int, dtype: T.DType) -> np.ndarray:
    """Random values with the awkward ones first: infinities, NaN, -0.0, extremes, 0."""
    a = random_array(rng, (n,), dtype.to_numpy())
    if dtype.is_float:
        special = [np.inf, -np.inf, np.nan, -0.0, 0.0, 3e38 if dtype.bits > 16 else 6e4, -7.5, 1e10]
    elif dtype.is_int:
        info = np.iinfo(dtype.to_numpy())
        special = [info.min, info.max, 0, -1 if dtype.is_signed else 1, 3, info.bits - 1, info.bits]
    else:
        special = []
    k = min(n, len(special))
    with np.errstate(over="ignore"):  # 1e10 is inf in f16
        a[:k] = np.array(special[:k], dtype.to_numpy() if dtype.is_int else np.float64).astype(
            a.dtype
        )
    return a


def sizes(w: int) -> tuple[int, ...]:
    return (0, 1, w - 1, w, w + 1, 2 * w + 5)


# ------------------------------------------------------------------ every operator and dtype


def _accepted(e: Expr, d: T.DType) -> bool:
    """The interpreter runs `e` over a and b of dtype `d` (the IR is well typed)."""
    loop = Loop("i", N, LoopKind.PARALLEL, (Store("o", (I,), e),))
    try:
        translate(kernel({"a": (d, 1), "b": (d, 1), "o": (e.dtype, 1)}, (loop,)))
    except CompileError:
        return False
    return True


def every_op(d: T.DType) -> list[Expr]:
    a, b = at("a", d), at("b", d)
    cands: list[Expr] = []
    for op in BinaryOp:
        if op is not BinaryOp.POW:
            cands.append(Binary(op, a, b, T.bool_ if op.is_comparison else d))
    cands += [Unary(op, a, d) for op in UnaryOp if op not in INEXACT]
    cands += [Cast(a, other) for other in T.ALL_DTYPES if other != d]
    cands.append(Select(Binary(BinaryOp.LT, b, a, T.bool_), a, b, d))
    cands.append(Select(Cast(a, T.bool_), b, a, d))
    cands.append(Fma(a, b, a, d))
    return [e for e in cands if _accepted(e, d)]


def every_op_kernel(d: T.DType) -> Kernel:
    """o_<dtype>[row, i] = the row-th expression of that result dtype, over a[i] and b[i]."""
    rows: dict[T.DType, list[Expr]] = {}
    for e in every_op(d):
        rows.setdefault(e.dtype, []).append(e)
    body = tuple(
        Store(f"o_{rd.name}", (_i64(r), I), e, loc=LOC)
        for rd, es in rows.items()
        for r, e in enumerate(es)
    )
    outs = {f"o_{rd.name}": (rd, 2) for rd in rows}
    return kernel({"a": (d, 1), "b": (d, 1)} | outs, (Loop("i", N, LoopKind.PARALLEL, body),))


# one width per dtype keeps compile time down; together they cover 2, 4, 8 and 16
WIDTH = {
    T.bool_: 16, T.i8: 16, T.i16: 8, T.i32: 4, T.i64: 2, T.u8: 4, T.u16: 16,
    T.u32: 8, T.u64: 8, T.f16: 8, T.bf16: 16, T.f32: 16, T.f64: 2,
}  # fmt: skip


@pytest.mark.parametrize("d", T.ALL_DTYPES, ids=lambda d: d.name)
def test_every_operator_and_cast_lane_by_lane(d):
    """Without a tail loop (sizes are multiples of w), so that only vector code runs."""
    k, w = every_op_kernel(d), WIDTH[d]
    loop = k.body[0]
    assert isinstance(loop, Loop)
    compiled = compile_kernel(replace(k, body=(replace(loop, exec=LoopExec.VECTORIZED, width=w),)))
    rng = np.random.default_rng(7)
    for n in (0, w, 3 * w):
        args: dict[str, object] = {"a": data(rng, n, d), "b": data(rng, n, d)[::-1].copy()}
        for p in k.params[2:]:
            rows = sum(isinstance(s, Store) and s.buffer == p.name for s in loop.body)
            args[p.name] = np.zeros((rows, n), p.dtype.to_numpy())
        want = run_interpreted(k, args)
        got = {name: a.copy() for name, a in args.items()}  # type: ignore[union-attr]
        assert compiled.cfunc(*[got[p.name] for p in k.params]) == 0
        for name in args:
            assert_same(got[name], want[name], f"{d.name} {name} w={w} n={n}")  # type: ignore[arg-type]


# ------------------------------------------------------------------------ traced kernels


def check_traced(fn, args: list[object], loops: set[str], w: int, **options: bool) -> None:
    """Trace `fn` for `args`, vectorize `loops` by w, and compare with the interpreter."""
    k = traced(fn, *args)
    for var in loops:
        k = with_vector_loop(k, var, w)
    names = [p.name for p in k.params]
    got = run_compiled(k, dict(zip(names, args)), **options)
    want = run_interpreted(traced(fn, *args), dict(zip(names, args)))
    for name in names:
        if isinstance(want[name], np.ndarray):
            assert_same(got[name], want[name], f"{name} (w={w})")  # type: ignore[arg-type]


def patterns(x, idx, m, o1, o2, o3, o4, o5):
    i = kd.indices(x.shape[0])
    o1[i] = x[i]  # contiguous, or strided: a runtime check picks the gather
    o2[i] = x[x.shape[0] - 1 - i]  # not v + u: a gather
    o3[i] = x[idx[i]]  # gather through an index array
    o4[idx[i]] = x[i]  # scatter
    o5[i] = m[i, 1]  # v in an outer axis: a strided gather


@given(
    n=st.integers(0, 40),
    step=st.sampled_from([1, 2, -1, -3]),
    checks=st.booleans(),
    dtype_width=st.sampled_from(
        [(np.float32, 16), (np.int16, 8), (np.uint8, 4), (np.float64, 2), (np.bool_, 16)]
    ),
)
def test_access_patterns_and_strided_arguments(n, step, checks, dtype_width):
    dtype, w = dtype_width
    rng = np.random.default_rng(n)
    base = random_array(rng, (abs(step) * n + 1,), dtype)
    x = base[::step][:n]
    idx = rng.permutation(n).astype(np.int64)
    m = random_array(rng, (n, 3), dtype)
    outs = [np.zeros(n, dtype) for _ in range(5)]
    check_traced(patterns, [x, idx, m, *outs], {"i", "i.1", "i.2", "i.3", "i.4"}, w, checks=checks)


def gathers_and_scatters(x, idx, m, o1, o2, o3, o4, o5, p):
    patterns(x, idx, m, o1, o2, o3, o4, o5)
    i = kd.indices(x.shape[0])
    p[i, 1] = x[i]  # a strided store: a scatter where the rows' length is not 3 after all


@pytest.mark.parametrize("in_hardware", [False, True])
def test_gathers_and_scatters_of_every_lane_or_masked(in_hardware, monkeypatch, tmp_path):
    """Gathers and scatters in tails (lanes off): right whether LLVM is given masked ones
    (CPUs with its instructions for them) or ones of every lane, the lanes that are off
    pointed at a stack slot (where it would write a branch per lane: a Zen 3's gathers,
    AVX2's scatters); in the second form no gather or scatter it is given is masked."""
    monkeypatch.setattr(vector, "in_hardware", lambda kind: in_hardware)
    rng = np.random.default_rng(7)
    n = 37  # two vectors of 16 and a tail of 5
    x = random_array(rng, (3 * n + 1,), np.float32)[::-3][:n]
    idx = rng.permutation(n).astype(np.int64)
    m = random_array(rng, (n, 3), np.float32)
    p = np.full((n, 4), np.nan, np.float32)[:, :3]  # rows 4 apart
    args = [x, idx, m, *(np.full(n, np.nan, np.float32) for _ in range(5)), p]
    k = traced(gathers_and_scatters, *args)
    for var in ("i", "i.1", "i.2", "i.3", "i.4", "i.5"):
        k = with_vector_loop(k, var, 16)
    compiled = compile_kernel(k, store=ObjectStore(tmp_path))  # an empty store: compiled here
    copies = [same_layout(a) for a in args]
    assert compiled.cfunc(*copies) == 0
    names = [q.name for q in k.params]
    want = run_interpreted(traced(gathers_and_scatters, *args), dict(zip(names, args)))
    for got, name in zip(copies, names):
        assert_same(got, want[name], name)  # type: ignore[arg-type]
    masks = re.findall(  # each gather's and scatter's mask: a constant (<…>) or a value (%)
        r'@"llvm\.masked\.(gather|scatter)\.[^"]*"\(.*, i32 \d+, <\d+ x i1> ([%<])',
        compiled.llvm_ir,
    )
    assert {kind for kind, _ in masks} == {"gather", "scatter"}
    assert any(mask == "%" for _, mask in masks) == in_hardware
    calls = re.findall(r'call .*@"llvm\.masked\.(?:gather|scatter).*', compiled.llvm_ir)
    assert all("!alias.scope" in line for line in calls)  # (through the select to the array)


def scaled(x, out, a):
    i, j = kd.indices(x.shape[0], x.shape[1])
    out[i, j] = x[i, j] * a + kd.cast(j, x.dtype)


@given(
    shape=st.tuples(st.integers(0, 5), st.integers(0, 37)),
    w=st.sampled_from([4, 8, 16]),
    transpose=st.booleans(),
)
def test_random_shapes_2d(shape, w, transpose):
    rng = np.random.default_rng(sum(shape))
    x = random_array(rng, shape[::-1] if transpose else shape, np.float32)
    x = x.T if transpose else x
    check_traced(scaled, [x, np.zeros(shape, np.float32), 1.5], {"j"}, w)


# ------------------------------------------------------------------------------ reductions


def reductions(x, out):
    i = kd.indices(x.shape[0])
    out[0] = kd.sum(x[i], over=i)
    out[1] = kd.max(x[i], over=i)
    out[2] = kd.min(x[i], over=i)
    out[3] = kd.prod(x[i], over=i)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int64, np.float32, np.float64])
@pytest.mark.parametrize("w", [4, 16])
def test_reductions_along_the_vector_loop(dtype, w):
    """Integer results are exact; float max/min too; a float sum or product is reordered.
    9w + 3 elements run the loop that updates several partial results per trip."""
    rng = np.random.default_rng(w)
    for n in (*sizes(w), 9 * w + 3):
        x = random_array(rng, (n,), dtype)
        if np.dtype(dtype).kind == "f":
            x = (x + 1.5).astype(dtype)  # a product that neither vanishes nor explodes
        args = [x, np.zeros(4, dtype)]
        k = traced(reductions, *args)
        for var in ("i", "i.1", "i.2", "i.3"):
            k = with_vector_loop(k, var, w)
        got = run_compiled(k, {"x": x, "out": args[1]})["out"]
        want = run_interpreted(traced(reductions, *args), {"x": x, "out": args[1]})["out"]
        if np.dtype(dtype).kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12)
            assert_same(got[1:3], want[1:3])
        else:
            assert_same(got, want)


def extremes(x, out):
    i = kd.indices(x.shape[0])
    out[0] = kd.max(x[i], over=i)
    out[1] = kd.min(x[i], over=i)


def _extreme_cases(n: int, dtype) -> list[np.ndarray]:
    """A NaN at each position among finite values (the lane that holds it differs, and so
    does the partial result), signed zeros in both orders, -inf alone."""
    cases = []
    for where in range(n):
        x = np.linspace(-1, 1, n).astype(dtype)
        x[where] = np.nan
        cases.append(x)
    cases += [np.resize(np.array(z, dtype), n) for z in ([-0.0, 0.0], [0.0, -0.0])]
    return [*cases, np.full(n, -np.inf, dtype)]


@pytest.mark.parametrize(
    "dtype, w",
    [(np.float32, 4), (np.float32, 8), (np.float32, 16), (np.float64, 2), (np.float64, 8)],
)
def test_float_max_and_min_reductions_keep_nan_and_order_signed_zeros(dtype, w):
    """IEEE maximum/minimum, bit for bit with the interpreter, in the lanes and in their
    combination: AVX-512 computes them with vrange, which alone would drop a NaN and
    (as LLVM's maxps would) confuse -0.0 with +0.0."""
    n = 3 * w + 1
    k = with_vector_loop(
        with_vector_loop(traced(extremes, np.zeros(n, dtype), np.zeros(2, dtype)), "i", w), "i.1", w
    )
    for x in _extreme_cases(n, dtype):
        args = {"x": x, "out": np.zeros(2, dtype)}
        want = run_interpreted(traced(extremes, *args.values()), args)["out"]
        assert_same(run_compiled(k, args)["out"], want, f"{x}")  # type: ignore[arg-type]


def row_sums(x, out):
    i, j = kd.indices(x.shape[0], x.shape[1])
    out[i] = kd.sum(x[i, j] * x[i, j], over=j)


def grand_total(x, out):
    i, j = kd.indices(x.shape[0], x.shape[1])
    out[0] = kd.sum(x[i, j], over=(i, j))  # accumulated inside the j loop
    out[1] = kd.max(x[i, j], over=(i, j))


def test_accumulating_from_a_loop_inside_the_vector_loop():
    x = random_array(np.random.default_rng(4), (37, 5), np.int32)
    args = {"x": x, "out": np.zeros(2, np.int32)}
    k = traced(grand_total, *args.values())
    got = run_compiled(with_vector_loop(with_vector_loop(k, "i", 8), "i.1", 4), args)["out"]
    assert_same(got, np.array([x.sum(), x.max()], np.int32))  # type: ignore[arg-type]


@pytest.mark.parametrize("op", [BinaryOp.ADD, BinaryOp.MAX, BinaryOp.MIN, BinaryOp.MUL])
def test_masked_accumulation(op):
    """acc op= a[i] where a[i] > 0, for i32 (exact whatever the order)."""
    a, acc = at("a", T.i32), LocalVar("acc", T.i32)
    update = If(
        Binary(BinaryOp.GT, a, Const(0, T.i32), T.bool_),
        (Assign("acc", Binary(op, acc, a, T.i32)),),
    )
    body = (
        DeclareLocal("acc", T.i32, Const(7, T.i32)),
        Loop("i", N, LoopKind.REDUCTION, (update,)),
        Store("out", (_i64(0),), acc),
    )
    k = kernel({"a": (T.i32, 1), "out": (T.i32, 1)}, body)
    rng = np.random.default_rng(6)
    for n in (0, 5, 16, 45, 67):
        check(k, {"a": random_array(rng, (n,), np.int32), "out": np.zeros(1, np.int32)}, "i", 8)


def test_reduction_of_an_inner_loop_and_nan():
    x = np.random.default_rng(1).uniform(-1, 1, (5, 37)).astype(np.float32)
    x[2, 20] = np.nan
    k = with_vector_loop(traced(row_sums, x, np.zeros(5, np.float32)), "j", 16)
    got = run_compiled(k, {"x": x, "out": np.zeros(5, np.float32)})["out"]
    np.testing.assert_allclose(got, (x.astype(np.float64) ** 2).sum(1), rtol=1e-5)


def test_float_sums_refuse_strict_fp_but_max_does_not():
    x = np.ones(20, np.float32)
    k = traced(reductions, x, np.zeros(4, np.float32))
    with pytest.raises(CompileError, match="reorders the float accumulation into 'sum_i'"):
        compile_kernel(with_vector_loop(k, "i", 8), strict_fp=True)
    compile_kernel(with_vector_loop(k, "i.1", 8), strict_fp=True)


# ------------------------------------------------------------------------ nests and masks


def matmul(A, B, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_outer_loop_vectorized_matmul_is_exact(dtype):
    """j is vectorized around the k loop: each lane sums in the scalar order, so the vector
    columns are exact (the scalar tail's k loop may be reassociated: close only). strict_fp:
    no FMA contraction, which would round differently from the interpreter."""
    rng = np.random.default_rng(2)
    w = 8 if dtype == np.float64 else 16
    a, b = random_array(rng, (7, 13), dtype), random_array(rng, (13, 45), dtype)
    for bb in (b, b[:, ::2]):  # B strided: a run-time stride check picks gathers
        args = {"A": a, "B": bb, "C": np.zeros((7, bb.shape[1]), dtype)}
        k = traced(matmul, *args.values())
        got = run_compiled(with_vector_loop(k, "j", w), args, strict_fp=True)["C"]
        want = run_interpreted(k, args)["C"]
        main = bb.shape[1] // w * w
        assert_same(got[:, :main], want[:, :main])  # type: ignore[index]
        np.testing.assert_allclose(got, want, rtol=1e-5)  # type: ignore[arg-type]


def guarded(x, y, out, s):
    i = kd.indices(x.shape[0])
    out[i] = kd.where(i + s < x.shape[0], x[i + s], y[i])  # x[i + s] only where in bounds
    with kd.when(x[i] > y[i]):
        y[i] = x[i] * 2
    with kd.when(s > 1):  # uniform: a branch
        x[i] = kd.where(s > 2, y[i], x[i] + 1)


def unused_side(x, z, out):
    i = kd.indices(x.shape[0])
    out[i] = kd.where(x[i] > -2.0, x[i], z[0])  # z[0] is never chosen: never loaded


def local_updates(x, out):
    for i in kd.grid(x.shape[0]):
        acc = kd.local(0.0)
        for t in kd.range(3):
            with kd.when(x[i] > t * 0.3):
                acc += x[i] * t + 1.0
        out[i] = acc


@pytest.mark.parametrize("checks", [False, True])
@pytest.mark.parametrize("w", [4, 16])
def test_masks_selects_and_vector_locals(w, checks):
    rng = np.random.default_rng(3)
    for n in sizes(w):
        x, y = random_array(rng, (n,), np.float32), random_array(rng, (n,), np.float32)
        for s in (0, 2, 3, 40):
            args = [x, y, np.zeros(n, np.float32), s]
            check_traced(guarded, args, {"i", "i.1", "i.2"}, w, checks=checks)
        check_traced(local_updates, [x, np.zeros(n, np.float32)], {"i"}, w, checks=checks)
        empty = np.zeros(0, np.float32)
        check_traced(unused_side, [x, empty, np.zeros(n, np.float32)], {"i"}, w, checks=checks)


# ---------------------------------------------------------------------------------- checks


def shifted(x, out, s):
    i = kd.indices(out.shape[0])
    out[i] = x[i + s] * 0.5 + x[i + 2 * s - s] * 0.5


def test_bounds_checks_in_vector_code():
    """Each lane's subscript checked (the traced IR without the one check per call that
    the bounds pass would add for these linear subscripts, which would fail first)."""
    args = (np.ones(40, np.float32), np.ones(32, np.float32), 0)
    k = with_vector_loop(kd.kernel(shifted).ir(*args).kernel, "i", 16)
    compiled = compile_kernel(k, checks=True)
    x, out = np.arange(40, dtype=np.float32), np.zeros(32, np.float32)
    assert compiled.cfunc(x, out, 8) == 0
    np.testing.assert_array_equal(out, x[8:])
    code = compiled.cfunc(x, out, 9)  # the last vector's last lane reads x[40]
    assert code >> 32 == 4 and compiled.sites.accesses[code & 0xFFFFFFFF][0] == "x"


def test_a_varying_check_needs_every_active_lane():
    check_ = Check(
        Binary(BinaryOp.LT, at("a", T.i32), Const(100, T.i32), T.bool_), CheckKind.BOUNDS, "a < 100"
    )
    guard = If(Binary(BinaryOp.GT, at("a", T.i32), Const(0, T.i32), T.bool_), (check_,))
    k = kernel({"a": (T.i32, 1)}, (Loop("i", N, LoopKind.PARALLEL, (guard,)),))
    compiled = compile_kernel(with_vector_loop(k, "i", 8))
    a = np.full(19, -500, np.int32)
    assert compiled.cfunc(a) == 0  # the failing lanes are all masked off
    a[5] = 200
    assert compiled.cfunc(a) >> 32 == 1


# ----------------------------------------------------------------------------- refusals


def _scheduled(body: tuple[Stmt, ...], *temps: Buffer) -> Kernel:
    """A kernel over one f32 array `a`, already scheduled (not verified as traced IR)."""
    return Kernel("k", (Param("a", T.f32, 1),), (param("a", T.f32), *temps), body)


def _loop(body: tuple[Stmt, ...], extent: Expr = N) -> Loop:
    return Loop("i", extent, LoopKind.PARALLEL, body, exec=LoopExec.VECTORIZED, width=8)


X = at("a", T.f32)
ACC = LocalVar("acc", T.f32)
TEMP = Buffer("t", T.f32, (Const(100, T.i64),), BufferRole.TEMP, Scope.STACK)  # (> 64: shared)
SMALL = Buffer("s", T.f32, (Const(4, T.i64),), BufferRole.TEMP, Scope.STACK)  # one per lane
REFUSED = {
    "local 'acc' is assigned inside the loop but is not an accumulator": (
        Assign("acc", Binary(BinaryOp.SUB, ACC, X, T.f32)),
    ),
    "accumulator 'acc' is read inside the loop": (
        Assign("acc", Binary(BinaryOp.ADD, ACC, X, T.f32)),
        Store("a", (I,), ACC),
    ),
    "'acc' is accumulated with both + and max": (
        Assign("acc", Binary(BinaryOp.ADD, ACC, X, T.f32)),
        Assign("acc", Binary(BinaryOp.MAX, X, ACC, T.f32)),
    ),
    "allocates the temporary 't'": (Allocate("t"),),
    "its lanes write the temporary 's' at subscripts that differ": (
        Allocate("s"),
        Store("s", (Binary(BinaryOp.MOD, I, _i64(4), T.i64),), X),
    ),
    "the extent of loop 'k' inside it differs between lanes": (
        Loop("k", I, LoopKind.SERIAL, (Store("a", (LoopVar("k"),), X),)),
    ),
    "stores values that differ between lanes into one element of 'a'": (Store("a", (_i64(0),), X),),
    "loop 'k' inside it is vectorized too": (
        Loop("k", N, LoopKind.PARALLEL, (), exec=LoopExec.VECTORIZED, width=4),
    ),
}


@pytest.mark.parametrize("reason", REFUSED)
def test_refusals_name_the_reason_and_agree_with_codegen(reason):
    loop = _loop(REFUSED[reason])
    k = _scheduled((DeclareLocal("acc", T.f32, Const(0.0, T.f32)), loop), TEMP, SMALL)
    found = vector_obstacle(loop, k)
    assert found is not None and reason in found
    with pytest.raises(CompileError, match="can't be vectorized"):
        compile_kernel(k)


def test_what_vectorizes_has_no_obstacle():
    body = (
        Assign("acc", Binary(BinaryOp.ADD, X, ACC, T.f32)),  # commuted accumulation
        DeclareLocal("v", T.f32, X),
        Store("a", (_i64(0),), Const(1.0, T.f32)),  # uniform value, uniform address
        Loop(
            "k",
            DimOf("a", 0),
            LoopKind.SERIAL,
            (Assign("v", Fma(X, X, LocalVar("v", T.f32), T.f32)),),
        ),
    )
    loop = _loop(body)
    k = _scheduled((DeclareLocal("acc", T.f32, Const(0.0, T.f32)), loop))
    assert vector_obstacle(loop, k) is None
    compile_kernel(k)


# ------------------------------------------------------------------------ machine code


def test_f32_vector_code_uses_the_widest_registers():
    k = with_vector_loop(
        traced(scaled, np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), 1.0), "j", 16
    )
    compiled = compile_kernel(k)
    assert "<16 x float>" in compiled.optimized_ir
    assert vector_register() in compiled.asm  # one zmm, or two ymm without AVX-512


# ------------------------------------------------------------------------------ math


def _ordered(a: np.ndarray) -> np.ndarray:
    """Float bit patterns as integers in the floats' order: adjacent floats differ by 1."""
    i = a.view(np.int32 if a.dtype == np.float32 else np.int64).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFFFFFFFFFF), i)


def ulp_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        error = np.abs(_ordered(got) - _ordered(want)).astype(np.float64)
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    return np.where(nan_got | nan_want, np.where(nan_got == nan_want, 0, np.inf), error)


def _math_points(dtype: type) -> np.ndarray:
    """Every 4099th f32 bit pattern (all exponents, NaN, inf, denormals), dense sweeps of
    the ranges where the functions change shape, and the edges of exp's range."""
    rng = np.random.default_rng(11)
    if dtype == np.float32:
        spread = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32)
        edges = [88.72283, 88.72284, -87.33655, -103.97, -104, 1e-45, 1.1754942e-38, 3.4e38]
    else:
        spread = rng.integers(-(2**63), 2**63, 400_000).view(np.float64)
        edges = [709.78, 709.79, -708.39, -745.1, -745.2, 5e-324, 2.2250738585072014e-308, 1e308]
    dense = [rng.uniform(-r, r, 100_000) for r in (1.0, 5.0, 30.0, 800.0)]
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, 0.625, 0.875, 4.0, *edges]
    values = [*dense, special, -np.array(edges)]
    points = np.concatenate([spread, np.concatenate(values).astype(dtype)])
    return points[: points.size // 16 * 16]


def _exact(op: UnaryOp, x: np.ndarray) -> np.ndarray:
    """The correctly rounded result (f64 for f32, 80-bit long double for f64); sigmoid
    as the IR defines it: 1 / (1 + exp(-x)), each step rounded in the dtype."""
    wide = np.float64 if x.dtype == np.float32 else np.longdouble
    one = x.dtype.type(1)
    with np.errstate(all="ignore"):
        if op is UnaryOp.SIGMOID:
            return one / (one + np.exp(-x.astype(wide)).astype(x.dtype))
        if op is UnaryOp.ERF:
            from math import erf

            return np.array([erf(v) for v in x.astype(np.float64)]).astype(x.dtype)
        return NUMPY[op](x.astype(wide)).astype(x.dtype)


@pytest.mark.parametrize("width", [4, 8, 32])
def test_exp_is_the_same_at_every_vector_width(width: int) -> None:
    """exp's scaling by 2^n takes another instruction for other register widths
    (vscalefps on a zmm, ldexp's lowering otherwise): the same bits as 16 lanes."""
    x = _math_points(np.float32)[: 1 << 16]
    k = kernel(
        {"x": (T.f32, 1), "y": (T.f32, 1)},
        (
            Loop(
                "i",
                DimOf("x", 0),
                LoopKind.PARALLEL,
                (Store("y", (I,), Unary(UnaryOp.EXP, at("x", T.f32), T.f32)),),
            ),
        ),
    )
    loop = k.body[0]
    assert isinstance(loop, Loop)
    got = {
        w: run_compiled(
            replace(k, body=(replace(loop, exec=LoopExec.VECTORIZED, width=w),)),
            {"x": x, "y": np.zeros_like(x)},
        )["y"]
        for w in (16, width)
    }
    np.testing.assert_array_equal(got[width], got[16])


# 1 for the others
MAX_ULP = {UnaryOp.TANH: 2, UnaryOp.SIGMOID: 4, UnaryOp.ERF: 2, UnaryOp.SIN: 2, UnaryOp.COS: 2}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", INEXACT, ids=lambda op: op.name)
def test_vector_math_is_within_a_few_ulp(op, dtype):
    """Against the correctly rounded result (and NumPy's f32 ufuncs, themselves a few ulp
    off); special values (inf, NaN, 0, denormals, overflow) exactly as the scalar code."""
    d = T.f32 if dtype == np.float32 else T.f64
    x = _math_points(dtype)
    if op is UnaryOp.ERF:  # the reference, math.erf, is slow per element
        x = np.ascontiguousarray(x[:: 8 if d == T.f32 else 4][: 100_000 // 16 * 16])
    k = kernel(
        {"x": (d, 1), "y": (d, 1)},
        (
            Loop(
                "i", DimOf("x", 0), LoopKind.PARALLEL, (Store("y", (I,), Unary(op, at("x", d), d)),)
            ),
        ),
    )
    loop = k.body[0]
    assert isinstance(loop, Loop)
    vk = replace(k, body=(replace(loop, exec=LoopExec.VECTORIZED, width=64 // d.itemsize),))
    got = run_compiled(vk, {"x": x, "y": np.zeros_like(x)})["y"]
    error = ulp_error(got, _exact(op, x))  # type: ignore[arg-type]
    worst = int(np.argmax(error))
    assert error[worst] <= MAX_ULP.get(op, 1), (
        f"{op.name}({x[worst]!r}) = {got[worst]!r}: {error[worst]} ulp"
    )  # type: ignore[index]
    if dtype == np.float32 and op is not UnaryOp.ERF:
        with np.errstate(all="ignore"):
            numpy = NUMPY.get(op, lambda v: 1 / (1 + np.exp(-v)))(x)
        assert ulp_error(got, numpy).max() <= 4  # type: ignore[arg-type]
    tiny = np.array([0.0, -0.0, np.inf, -np.inf, np.nan] * 4, dtype)[:16]
    scalar = run_compiled(k, {"x": tiny, "y": np.zeros_like(tiny)})["y"]
    assert_same(run_compiled(vk, {"x": tiny, "y": np.zeros_like(tiny)})["y"], scalar)  # type: ignore[arg-type]


def test_a_tail_whose_body_cannot_vary_stays_scalar() -> None:
    """The masked tail makes the body's locals vary between lanes; where that can't be
    vector code (a local as an inner loop's extent), the tail is scalar instead."""

    @kd.kernel
    def weighted(x, n, w, y):
        for i in kd.grid(x.shape[0]):
            m = kd.local(n[0])
            total = kd.local(0.0)
            for j in kd.range(m):
                total.set(total + w[j])
            y[i] = x[i] * total

    weighted.schedule(kd.cpu)(lambda s: s.vectorize("i", 16))
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal(37).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    y = np.empty_like(x)
    weighted(x, np.array([3], np.int64), w, y)
    np.testing.assert_allclose(y, x * w[:3].sum(), rtol=1e-6)


@kd.kernel
def scaled_and_summed(x, y, total):
    for i in kd.grid(x.shape[0]):
        y[i] = x[i] * 3.0
    j = kd.indices(x.shape[0])
    total[0] = kd.sum(x[j], over=j)


scaled_and_summed.schedule(kd.cpu)(lambda s: (s.vectorize("i", 64), s.vectorize("j", 64)))


def _vector_widths(k: Kernel) -> list[int]:
    return [
        s.width for s in walk_stmts(k.body) if isinstance(s, Loop) and s.exec == LoopExec.VECTORIZED
    ]


def test_a_wide_tail_narrows_to_the_lanes_it_needs() -> None:
    """A 64-lane loop's tail is a 16-, 32- or 64-lane masked vector, whichever is the
    narrowest that holds the rest (a store and a sum, across every boundary)."""
    rng = np.random.default_rng(8)
    x, y, total = np.ones(5, np.float32), np.empty(5, np.float32), np.empty(1, np.float32)
    final = expand_schedule(scaled_and_summed.schedule_of(x, y, total).kernel)
    assert sorted(_vector_widths(final)) == [16, 16, 32, 32, 64, 64, 64, 64]
    for n in (0, 1, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 80, 96, 97, 127, 128, 129):
        x = rng.standard_normal(n).astype(np.float32)
        y = np.full(n, np.nan, np.float32)
        scaled_and_summed(x, y, total)
        np.testing.assert_array_equal(y, x * np.float32(3.0))
        np.testing.assert_allclose(total[0], x.astype(np.float64).sum(), rtol=1e-5, atol=1e-5)


@kd.kernel
def tiled_scale(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i, j] = x[i, j] * 2


@tiled_scale.schedule(kd.cpu)
def _tiles_of_one_vector(s) -> None:
    _, ji = s.split("j", 16)
    s.vectorize(ji, 16)


def test_the_edge_of_a_one_vector_tile_is_its_masked_tail_alone() -> None:
    """Tiles of one vector: the full tile is that vector, and the edge tile (fewer
    columns than a vector) only the masked tail, no loop of whole vectors that could
    never run (compiled for nothing: a naive matmul's first call 0.75 -> 0.57 s)."""
    x = np.ones((3, 40), np.float32)
    final = expand_schedule(tiled_scale.schedule_of(x, x.copy()).kernel)
    vectors = [s for s in walk_stmts(final.body) if isinstance(s, Loop) and s.width > 1]
    assert [lp.extent for lp in vectors] == [Const(16, T.i64)] * 2, vectors  # full, masked
    rng = np.random.default_rng(9)
    for n in (0, 1, 7, 8, 9, 15, 16, 17, 33, 40):
        x = rng.standard_normal((3, n)).astype(np.float32)
        y = np.full_like(x, np.nan)
        tiled_scale(x, y)
        np.testing.assert_array_equal(y, x * 2)


def test_a_long_tile_is_one_vector_loop_with_its_masked_tail() -> None:
    """A tile of more than LONG_TILE vectors (a 1-D default's split by 8192) is not
    copied into a full tile and an edge tile: one loop of whole vectors and the masked
    vector after it (each copy compiled its body again)."""

    @kd.kernel
    def scaled(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 2

    x = np.ones(40, np.float32)
    final = expand_schedule(scaled.schedule_of(x, x.copy()).kernel)
    vectors = [s for s in walk_stmts(final.body) if isinstance(s, Loop) and s.width > 1]
    assert len(vectors) == 2 and not isinstance(vectors[0].extent, Const), vectors
    rng = np.random.default_rng(5)
    for n in (0, 1, 15, 16, 8191, 8192, 8193, 40000):
        x = rng.standard_normal(n).astype(np.float32)
        y = np.full_like(x, np.nan)
        scaled(x, y)
        np.testing.assert_array_equal(y, x * 2)


@pytest.mark.parametrize(
    "register, dtype, width, tails",
    [
        (64, np.uint8, 64, [64]),
        (64, np.float64, 16, [8, 16]),
        (64, np.float32, 16, [16]),
        (32, np.uint8, 64, [32, 64]),
        (32, np.float64, 16, [4, 8, 16]),
        (32, np.float32, 16, [8, 16]),
    ],
)
def test_a_tail_narrows_while_its_elements_fill_a_register(register, dtype, width, tails) -> None:
    """64 bytes are one AVX-512 register: 64 u8 lanes don't narrow, 16 f64 do (to 8);
    32 bytes are one AVX2 register: 16 f32 lanes narrow to 8."""

    @kd.kernel(name=f"scaled_{np.dtype(dtype).name}_{width}")
    def scaled(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] + x[i]

    scaled.schedule(kd.cpu)(lambda s: s.vectorize("i", width))
    x = (np.arange(width + 3) % 50).astype(dtype)
    y = np.zeros_like(x)
    final = expand_schedule(scaled.schedule_of(x, y).kernel, register_bytes=register)
    assert sorted(_vector_widths(final)) == sorted([width, *tails])
    scaled(x, y)
    np.testing.assert_array_equal(y, x + x)


@pytest.mark.parametrize("strict", [False, True])
def test_division_by_a_uniform_value(strict: bool) -> None:
    """x / s with s the same in every lane: one reciprocal and a multiplication per
    vector (within 1.5 ulp), unless strict_fp keeps the division; divisors whose
    reciprocal is not a normal number (tiny, huge, 0, inf, NaN) divide."""

    def scale_rows(x, s, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = x[i, j] / s[i]

    kernel = kd.kernel(scale_rows, strict_fp=strict)
    kernel.schedule(kd.cpu)(lambda s: s.vectorize("j", 16))
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 37)).astype(np.float32)
    s = rng.uniform(0.1, 10, 5).astype(np.float32)
    y = np.empty_like(x)
    kernel(x, s, y)
    want = x / s[:, None]
    if strict:
        np.testing.assert_array_equal(y, want)
    else:
        ulp = np.spacing(np.abs(want))
        assert np.all(np.abs(y - want) <= 1.5 * ulp)
        assert (y != want).any()  # rounded as a product, not as the quotient
    extreme = np.array([1e-39, 3e38, 0.0, np.inf, np.nan], np.float32)
    with np.errstate(all="ignore"):
        kernel(x, extreme, y)
        np.testing.assert_array_equal(y, x / extreme[:, None])


def test_libm_lanes_match_scalar_code():
    """Functions that stay per-lane calls (f64 tanh and erf) agree with scalar code bit for
    bit (** is vpow.py's: tests/targets/cpu/test_vpow.py)."""
    x = np.random.default_rng(5).uniform(-3, 3, 64)
    exprs = (
        Unary(UnaryOp.TANH, at("x", T.f64), T.f64),
        Unary(UnaryOp.ERF, at("x", T.f64), T.f64),
    )
    for e in exprs:
        k = kernel(
            {"x": (T.f64, 1), "y": (T.f64, 1)},
            (Loop("i", DimOf("x", 0), LoopKind.PARALLEL, (Store("y", (I,), e),)),),
        )
        scalar = run_compiled(k, {"x": x, "y": np.zeros(64)})["y"]
        vector = run_compiled(with_vector_loop(k, "i", 8), {"x": x, "y": np.zeros(64)})["y"]
        assert_same(vector, scalar)  # type: ignore[arg-type]


@pytest.mark.parametrize("group", [2, 4, 8, 16])
@pytest.mark.parametrize("n", [1, 15, 16, 37, 64, 131])
def test_one_element_per_group_of_lanes(group: int, n: int) -> None:
    """`d[r, j // c + u]` (a scale per group of c lanes) loads w/c consecutive elements
    and repeats each for its lanes: no gather, in the masked tail too (the elements of its
    groups with a lane on)."""

    @kd.kernel
    def scale_groups(x, d, y):
        r, j = kd.indices(x.shape[0], x.shape[1])
        y[r, j] = x[r, j] * d[r, j // group + 1]

    @scale_groups.schedule(kd.cpu)
    def _(s):
        s.vectorize("j", 16)

    rng = np.random.default_rng(n * group)
    x = rng.standard_normal((3, n)).astype(np.float32)
    d = rng.standard_normal((3, n // group + 2)).astype(np.float32)
    y = np.full_like(x, np.nan)
    scale_groups(x, d, y)
    np.testing.assert_array_equal(y, x * d[:, np.arange(n) // group + 1])
    assert "gather" not in scale_groups.asm(x, d, y)


@pytest.mark.parametrize("group", [2, 4, 8, 16])
@pytest.mark.parametrize("n", [1, 15, 16, 37, 131])
def test_arithmetic_on_one_element_per_group_runs_on_the_groups(group: int, n: int) -> None:
    """A Q8_0 block's two scales, `d[r, j // c]·s[j // c]` (f16 converted, a product, a
    max with a uniform value): computed on the w/c values of the groups, then repeated
    for their lanes, the same as lane by lane, in masked tails too; a division stays
    lane by lane (a group whose lanes are all off reads zeros)."""

    @kd.kernel
    def scales(x, d, s, y, z):
        r, j = kd.indices(x.shape[0], x.shape[1])
        scale = kd.maximum(d[r, j // group].astype(kd.f32) * s[j // group + 1], -0.5)
        y[r, j] = x[r, j] * scale
        r2, j2 = kd.indices(x.shape[0], x.shape[1])
        z[r2, j2] = x[r2, j2] + 1 / s[j2 // group]

    @scales.schedule(kd.cpu)
    def _(sch):
        sch.vectorize("j", 16)
        sch.vectorize("j2", 16)

    rng = np.random.default_rng(n * group)
    x = rng.standard_normal((3, n)).astype(np.float32)
    d = rng.standard_normal((3, -(-n // group))).astype(np.float16)
    s = (rng.random(-(-n // group) + 1) + 0.5).astype(np.float32)
    y, z = np.full_like(x, np.nan), np.full_like(x, np.nan)
    scales(x, d, s, y, z)
    at = np.arange(n) // group
    np.testing.assert_array_equal(y, x * np.maximum(d[:, at].astype(np.float32) * s[at + 1], -0.5))
    np.testing.assert_allclose(z, x + 1 / s[at], rtol=2e-7)
    asm = scales.asm(x, d, s, y, z)
    assert "gather" not in asm
    if group == 8:  # two groups a vector of 16: 2 halves converted, not 16
        assert re.search(r"vcvtph2ps\s+%xmm\d+, %xmm", asm), asm


@pytest.mark.parametrize("n", [1, 37])
def test_flags_per_group_of_lanes_stay_lane_by_lane(n: int) -> None:
    """Bool loads of one flag per group (`f[j // 8] & g[j // 8]`, a bool cast to a byte):
    memory holds a bool as a byte, so they are not computed per group (the per-group
    form made `and` of bytes where flags were expected: invalid IR)."""

    @kd.kernel
    def flags(x, f, g, y, z):
        j = kd.indices(x.shape[0])
        y[j] = kd.where(f[j // 8] & g[j // 8], x[j], 0.0)
        j2 = kd.indices(x.shape[0], names="j2")
        z[j2] = f[j2 // 8].astype(kd.u8) + 1

    flags.schedule(kd.cpu)(lambda s: (s.vectorize("j", 16), s.vectorize("j2", 16)))
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    f, g = rng.random(n // 8 + 1) < 0.5, rng.random(n // 8 + 1) < 0.5
    y, z = np.empty_like(x), np.empty(n, np.uint8)
    flags(x, f, g, y, z)
    at = np.arange(n) // 8
    np.testing.assert_array_equal(y, np.where(f[at] & g[at], x, 0))
    np.testing.assert_array_equal(z, f[at].astype(np.uint8) + 1)


def test_a_value_per_group_that_shares_its_parts_compiles_in_linear_time() -> None:
    """`g = g·0.5 + g·0.25` sixty times over a scale per group of 8 lanes: a tree of 2⁶⁰
    nodes in 180, whose per-group form is found and computed once per node."""

    @kd.kernel
    def deep(x, d, y):
        j = kd.indices(x.shape[0])
        g = d[j // 8]
        for _ in range(60):
            g = g * 0.5 + g * 0.25
        y[j] = x[j] * g

    deep.schedule(kd.cpu)(lambda s: s.vectorize("j", 16))
    rng = np.random.default_rng(3)
    x, d = rng.standard_normal(37).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    y = np.empty_like(x)
    deep(x, d, y)
    np.testing.assert_allclose(y, x * d[np.arange(37) // 8] * 0.75**60, rtol=1e-5)


@pytest.mark.parametrize("n", [0, 1, 17, 1000])
@pytest.mark.parametrize("checks", [False, True])
def test_a_small_temporary_per_iteration_is_one_per_lane(n, checks):
    """`buf = kd.zeros((7,))` in a kd.grid loop kept the loop scalar (a sliding max took
    6.9 ms a million, 0.36 written without it): each lane now has its own vector of it.
    A 2-D one, a bool one, writes under a varying condition, and tails too."""

    @kd.kernel(checks=checks)
    def window(x, y, hits):
        for i in kd.grid(y.shape[0]):
            buf = kd.zeros((7,), kd.f32)
            grid = kd.zeros((2, 3), kd.f32)
            seen = kd.zeros((1,), kd.bool_)
            for t in range(7):
                buf[t] = x[i + t]
            with kd.when(x[i] > 0.5):
                grid[1, 2] = x[i]
                seen[0] = True
            m = buf[0]
            for t in range(1, 7):
                m = kd.maximum(m, buf[t])
            y[i] = m + grid[1, 2] + grid[0, 0]
            hits[i] = seen[0]

    x = random_array(np.random.default_rng(n), (n + 6,), np.float32)
    y, hits = np.full(n, np.nan, np.float32), np.zeros(n, np.bool_)
    window(x, y, hits)
    maxima = np.array([x[k : k + 7].max() for k in range(n)], np.float32)
    np.testing.assert_array_equal(y, maxima + np.where(x[:n] > 0.5, x[:n], 0))
    np.testing.assert_array_equal(hits, x[:n] > 0.5)
    assert "vectorize" in str(window.schedule_of(x, y, hits))


@pytest.mark.parametrize("red, ref", [(kd.sum, np.sum), (kd.max, np.max)])
@pytest.mark.parametrize("m, n", [(1, 1), (3, 17), (4, 16), (13, 1000), (5, 0)])
def test_a_row_tile_of_sums_accumulates_in_vector_partials(red, ref, m, n):
    """The register-blocked matvec (4 rows share each vector of x): the split row loop
    moved inside the vectorized reduction makes its sums a small array, `sum_j[ii] +=
    …`, which vectorizing refused ("stores values that differ between lanes into one
    element"). Each element now keeps a vector of partials, combined after the loop."""

    def mv(W, x, y):
        i, j = kd.indices(W.shape[0], W.shape[1])
        y[i] = red(W[i, j] * x[j], over=j)

    kernel = kd.kernel(mv, name=f"blocked_{red.__name__}")

    @kernel.schedule(kd.cpu)
    def _(s):
        io, ii = s.split("i", 4)
        s.reorder(io, "j", ii)
        s.unroll(ii)
        s.vectorize("j", 16)

    rng = np.random.default_rng(m * 100 + n)
    W, x = random_array(rng, (m, n), np.float32), random_array(rng, (n,), np.float32)
    y = np.full(m, np.nan, np.float32)
    kernel(W, x, y)
    want = ref(W * x, axis=1, initial=0.0 if red is kd.sum else -np.inf)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_an_array_read_inside_the_loop_is_no_accumulator():
    """Its running value is needed during the loop: the lanes can't keep partials."""
    acc = Buffer("t", T.f32, (Const(2, T.i64),), BufferRole.TEMP, Scope.STACK)
    t0 = Load("t", (_i64(0),), T.f32)
    loop = _loop((Store("t", (_i64(0),), Binary(BinaryOp.ADD, t0, X, T.f32)), Store("a", (I,), t0)))
    k = _scheduled((Allocate("t"), loop), acc)
    found = vector_obstacle(loop, k)
    assert found is not None and "one element of 't'" in found
    plain = _loop((Store("t", (_i64(0),), Binary(BinaryOp.ADD, t0, X, T.f32)),))
    assert vector_obstacle(plain, _scheduled((Allocate("t"), plain), acc)) is None


def test_a_parallel_tasks_arrays_keep_their_unit_stride():
    """A serial loop over a row inside a parallelized loop: the task got every stride
    through its closure, so LLVM saw no unit stride and read the rows with gathers (20x
    slower than the same loop unparallelized). C-ordered arrays' strides are made
    again from their dimensions in the task."""

    @kd.kernel
    def rowmax(x, out):
        for s in kd.grid(x.shape[0]):
            m = kd.local(-kd.inf, kd.f32)
            for t in kd.range(x.shape[1]):
                m.set(kd.maximum(m, x[s, t]))
            out[s] = m

    x = random_array(np.random.default_rng(7), (37, 101), np.float32)
    out = np.empty(37, np.float32)
    rowmax(x, out)
    np.testing.assert_array_equal(out, x.max(axis=1))
    code = rowmax.llvm(x, out)
    assert "parallelize" in str(rowmax.schedule_of(x, out)) and "gather" not in code


# ------------------------------------------- split reductions: the lanes combined once


def _split(s, j: str, w: int) -> str:
    """`j` split by w, the inner part vectorized; the outer loop's name."""
    jo, ji = s.split(j, w)
    s.vectorize(ji, w)
    return jo


def _split_twice(s, j: str, w: int) -> None:
    s.split(_split(s, j, w), 3)


def _unrolled_middle(s, j: str, w: int) -> None:
    _, middle = s.split(_split(s, j, w), 4)
    s.unroll(middle)


def _split_wider(s, j: str, w: int) -> None:
    """Tiles of 3w/2: a full vector and a masked one of w/2 lanes per tile."""
    _, ji = s.split(j, 3 * w // 2)
    s.vectorize(ji, w)


SPLIT_REDUCTIONS = {
    "split": _split,
    "split twice": _split_twice,
    "unrolled middle": _unrolled_middle,
    "tiles not a multiple of the width": _split_wider,
}


def _row_reductions(x, z, y, hi, lo, p):
    i, j = kd.indices(*x.shape)
    y[i] = 2 * kd.sum(x[i, j], over=j) + x[i, 0]
    hi[i] = kd.max(x[i, j], over=j)
    lo[i] = kd.min(x[i, j], over=j)
    p[i] = kd.prod(z[i, j], over=j)


def _total(which: str, name: str):
    """A kernel reducing a whole vector with kd.<which> into out[0]."""

    def total(x, out):
        j = kd.indices(x.shape[0])
        out[0] = getattr(kd, which)(x[j], over=j)

    return kd.kernel(total, name=name)


def _factors(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Factors whose product neither vanishes nor explodes (integers wrap, exactly)."""
    if np.dtype(dtype).kind == "f":
        return (1 + random_array(rng, shape, dtype) / 64).astype(dtype)
    return rng.choice(np.array([-2, -1, 1, 3], dtype), shape)


def _reduced(which: str, x: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """NumPy's reduction, sums and products of floats in f64."""
    wide = np.float64 if x.dtype.kind == "f" else x.dtype
    if which in ("max", "min"):
        return getattr(np, which)(x, axis=axis)
    return getattr(np, which)(x.astype(wide), axis=axis, dtype=wide).astype(x.dtype)


def _assert_reduced(got: np.ndarray, want: np.ndarray, n: int) -> None:
    if got.dtype.kind == "f":  # sums and products reassociated
        rtol = 1e-12 if got.dtype == np.float64 else 1e-5 * max(n, 1) ** 0.5
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow(sample=6)
@pytest.mark.parametrize("schedule", SPLIT_REDUCTIONS)
@pytest.mark.parametrize("dtype, w", [(np.float32, 16), (np.float64, 8), (np.int32, 16)])
def test_split_reductions_keep_their_results(schedule, dtype, w):
    """Sum (inside a larger expression), max, min and product, each split with the inner
    part vectorized: the outer loops keep the lanes' partials, combined once per row.
    Row lengths below the width, between it and the tile, and long, on parallel rows."""
    kernel = kd.kernel(_row_reductions, name=f"rows_{schedule.replace(' ', '_')}")

    @kernel.schedule(kd.cpu)
    def _(s):
        for j in ("j", "j.1", "j.2", "j.3"):
            SPLIT_REDUCTIONS[schedule](s, j, w)
        s.parallelize("i")

    rng = np.random.default_rng(w)
    for n in (1, 7, 15, 17, 1000):  # 70 rows of 1000: enough work for threads
        x, z = random_array(rng, (70, n), dtype), _factors(rng, (70, n), dtype)
        outs = [np.full(70, 99, dtype) for _ in range(4)]
        kernel(x, z, *outs)
        wants = [2 * _reduced("sum", x, 1) + x[:, 0], x.max(1), x.min(1), _reduced("prod", z, 1)]
        for got, want in zip(outs, wants):
            _assert_reduced(got, want, n)


def _grid_reductions(x, y, hi):
    i, j, k = kd.indices(*x.shape)
    y[i] = kd.sum(x[i, j, k], over=(j, k))
    hi[i] = kd.max(x[i, j, k], over=(j, k))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("split", [False, True])
def test_a_reduction_over_two_indices_vectorized_innermost(dtype, split):
    """The j loop around the vectorized k (or its split's outer loop) keeps the partials."""
    kernel = kd.kernel(_grid_reductions, name=f"grid_reductions_{split}")

    @kernel.schedule(kd.cpu)
    def _(s):
        for k in ("k", "k.1"):
            if split:
                _split(s, k, 8)
            else:
                s.vectorize(k, 8)

    rng = np.random.default_rng(3)
    for m, n in ((1, 1), (3, 7), (2, 17), (5, 1000)):
        x = random_array(rng, (4, m, n), dtype)
        y, hi = np.zeros(4, dtype), np.zeros(4, dtype)
        kernel(x, y, hi)
        _assert_reduced(y, _reduced("sum", x, (1, 2)), m * n)
        np.testing.assert_array_equal(hi, x.max((1, 2)))


@given(
    factor=st.integers(1, 40),
    again=st.sampled_from([None, 1, 2, 5]),
    unroll=st.booleans(),
    w=st.sampled_from([4, 8, 16]),
    n=st.integers(0, 300),
    which=st.sampled_from(["sum", "max", "min", "prod"]),
    dtype=st.sampled_from([np.float32, np.float64, np.int32]),
)
def test_random_splits_of_a_vectorized_reduction(factor, again, unroll, w, n, which, dtype):
    """Any factor (a tile shorter or longer than the vector, or not its multiple), the
    outer loop split again and maybe unrolled."""
    kernel = _total(which, f"total_{which}")

    @kernel.schedule(kd.cpu)
    def _(s):
        jo, ji = s.split("j", factor)
        s.vectorize(ji, w)
        if again is not None:
            _, middle = s.split(jo, again)
            if unroll:
                s.unroll(middle)

    rng = np.random.default_rng(n)
    x = _factors(rng, (n,), dtype) if which == "prod" else random_array(rng, (n,), dtype)
    out = np.full(1, 99, dtype)
    kernel(x, out)
    if n or which in ("sum", "prod"):  # (NumPy's max and min have no identity)
        _assert_reduced(out, _reduced(which, x, 0).reshape(1), n)


def _function_blocks(code: str) -> dict[str, list[str]]:
    """The lines of each basic block, by label, of the one function in LLVM IR `code`."""
    label = re.compile(r'^("[^"]+"|[\w.$-]+):')
    blocks: dict[str, list[str]] = {}
    lines = blocks.setdefault("entry", [])
    for line in code[code.index("define ") :].splitlines()[1:]:
        if line.startswith("}"):
            break
        head = label.match(line)
        lines = blocks.setdefault(head.group(1), []) if head else lines
        lines.append(line)
    return blocks


def _in_loops(blocks: dict[str, list[str]]) -> set[str]:
    """The blocks from which a path of branches leads back to themselves."""
    target = re.compile(r'label %("[^"]+"|[\w.$-]+)')
    successors = {
        b: [t for line in lines for t in target.findall(line)] for b, lines in blocks.items()
    }

    def returns(start: str) -> bool:
        seen, todo = set(), list(successors[start])
        while todo:
            b = todo.pop()
            if b == start:
                return True
            if b not in seen:
                seen.add(b)
                todo += successors.get(b, [])
        return False

    return {b for b in blocks if returns(b)}


def _combined_outside_loops(code: str, callee: str) -> None:
    """`callee` (a horizontal reduction) is called in `code`, never inside a loop."""
    blocks = _function_blocks(code)
    calling = {b for b, lines in blocks.items() if any(f"@{callee}(" in x for x in lines)}
    assert calling, f"no call of {callee} in\n{code}"
    assert not calling & _in_loops(blocks), f"{callee} inside a loop:\n{code}"


@pytest.mark.parametrize("schedule", SPLIT_REDUCTIONS)
@pytest.mark.parametrize(
    "which, dtype, callee",
    [
        ("sum", np.float32, "llvm.vector.reduce.fadd.v16f32"),
        ("sum", np.int32, "llvm.vector.reduce.add.v16i32"),
        ("prod", np.float64, "llvm.vector.reduce.fmul.v16f64"),
    ],
)
def test_a_split_reduction_combines_its_lanes_after_its_loops(schedule, which, dtype, callee):
    """The horizontal combine of a whole-array reduction's lanes is outside every loop: it
    was in the split's outer loop, once per tile (a row sum split by 16 took 1.5x the
    time of the unsplit one on rows in cache)."""
    kernel = _total(which, f"total_{which}_{schedule.replace(' ', '_')}")
    kernel.schedule(kd.cpu)(lambda s: SPLIT_REDUCTIONS[schedule](s, "j", 16))
    x, out = np.ones(100, dtype), np.zeros(1, dtype)
    _combined_outside_loops(kernel.llvm(x, out), callee)


def test_the_lanes_of_two_reduction_loops_combine_after_both():
    """over=(j, k) with k vectorized: the j loop keeps k's partials."""

    @kd.kernel
    def grand_total(x, out):
        j, k = kd.indices(*x.shape)
        out[0] = kd.sum(x[j, k], over=(j, k))

    grand_total.schedule(kd.cpu)(lambda s: s.vectorize("k", 16))
    x, out = np.ones((9, 100), np.float32), np.zeros(1, np.float32)
    _combined_outside_loops(grand_total.llvm(x, out), "llvm.vector.reduce.fadd.v16f32")
