"""On a GPU: every test kernel and library kernel against NumPy on random data (tails,
strides, many rows), through PyTorch, CuPy and plain DLPack arrays; streams; errors.
Skipped where there is no GPU or no cuda-python (`pip install "kdsl[cuda]"`)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import kdsl as kd
from kdsl.targets.cuda import driver
from tests import zoo
from tests.helpers import random_array
from tests.targets.cuda.cases import Case, cases

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not driver.available(), reason="no CUDA device or cuda-python"),
]
torch = pytest.importorskip("torch") if driver.available() else None

CASES = cases(np.random.default_rng(11))


def to_gpu(value: object) -> object:
    if isinstance(value, np.ndarray) and value.dtype == ml_dtypes.bfloat16:  # (NumPy has none)
        bits = torch.from_numpy(np.ascontiguousarray(value).view(np.int16))
        return bits.view(torch.bfloat16).cuda()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).cuda()
    return value


def run_case(case: Case, convert=to_gpu) -> None:
    args = [convert(a) for a in case.args]
    for pos in case.expected:  # poison the outputs: every element must be written
        if pos >= 0:
            args[pos].fill_(float("nan"))
    result = case.kernel(*args)
    torch.cuda.synchronize()
    for pos, want in case.expected.items():
        got = result if pos < 0 else args[pos]
        got = got.cpu().numpy() if hasattr(got, "cpu") else np.asarray(got)
        np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.rtol)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_on_gpu(case):
    run_case(case)
    run_case(case)  # PyTorch tensors again: the cached call's lean path


@pytest.mark.parametrize("m, n", [(1, 1), (2, 33), (5, 4097), (70000, 3), (3, 100003)])
def test_rows_of_awkward_shapes(m, n):
    rng = np.random.default_rng(m * n)
    for case in cases(rng, m, n):
        if case.name in (
            "softmax",
            "rmsnorm",
            "lib_softmax",
            "lib_rmsnorm",
            "lib_layernorm",
            "row_sum",
        ):
            run_case(case)


@pytest.mark.parametrize("offset", [0, 1])  # 16-byte aligned rows (vector path), or not
def test_row_kernels_on_aligned_and_shifted_rows(offset):
    """Rows of 4096 (whole 16-byte groups): arrays that start on a 16-byte boundary
    take the 16-byte loads and stores, arrays that start 4 bytes in the scalar path."""
    from kdsl.kernels.norms import layernorm_rows, rmsnorm_rows
    from kdsl.kernels.softmax import softmax_rows

    rng = np.random.default_rng(offset)
    m, n = 33, 4096
    x = torch.from_numpy(rng.standard_normal(m * n + offset).astype(np.float32)).cuda()
    w = torch.from_numpy(rng.standard_normal(n + offset).astype(np.float32)).cuda()
    x, w = x[offset:].view(m, n), w[offset:]
    y = torch.full((m * n + offset,), float("nan"), device="cuda")[offset:].view(m, n)
    rmsnorm_rows(x, w, 1e-5, y)
    want = torch.nn.functional.rms_norm(x, (n,), w, 1e-5)
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
    softmax_rows(x, y)
    torch.testing.assert_close(y, torch.softmax(x, -1), rtol=1e-4, atol=1e-6)
    layernorm_rows(x, w, w, 1e-5, y)
    want = torch.nn.functional.layer_norm(x, (n,), w, w, 1e-5)
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)


def test_strided_input():
    rng = np.random.default_rng(3)
    base = torch.from_numpy(random_array(rng, (64, 202), np.float32)).cuda()
    x = base[:, ::2]  # not contiguous
    y = torch.empty((64, 101), device="cuda")
    zoo.softmax(x, y)
    np.testing.assert_allclose(
        y.cpu().numpy(), zoo.softmax_ref(x.cpu().numpy()), rtol=1e-4, atol=1e-5
    )


def test_cupy_and_dlpack_arrays():
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(5)
    x = random_array(rng, (1001,), np.float32)
    cx, cy, cout = cupy.asarray(x), cupy.asarray(x * 2), cupy.empty(1001, np.float32)
    zoo.saxpy(1.5, cx, cy, cout)
    np.testing.assert_allclose(cupy.asnumpy(cout), 1.5 * x + 2 * x, rtol=1e-6)

    class OnlyDLPack:
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, stream=None):
            return self.t.__dlpack__()

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    tx, out = torch.from_numpy(x).cuda(), torch.empty(1001, device="cuda")
    zoo.saxpy(2.0, OnlyDLPack(tx), OnlyDLPack(tx), OnlyDLPack(out))
    torch.cuda.synchronize()
    np.testing.assert_allclose(out.cpu().numpy(), 3 * x, rtol=1e-6)


def test_runs_on_the_callers_stream():
    x = torch.rand(1 << 20, device="cuda")
    out = torch.empty_like(x)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        zoo.saxpy(3.0, x, x, out)  # the current stream
    stream.synchronize()
    torch.testing.assert_close(out, 4 * x)
    other = torch.cuda.Stream()
    zoo.saxpy(2.0, x, x, out, stream=other)
    other.synchronize()
    torch.testing.assert_close(out, 3 * x)


def test_results_are_tensors_on_the_device():
    x = torch.rand(7, 9, device="cuda")
    y = zoo.scaled_copy(x, 2.0)
    assert isinstance(y, torch.Tensor) and y.device == x.device
    torch.testing.assert_close(y, 2 * x)


def test_forced_target_and_mixing_errors():
    x = torch.rand(5, device="cuda")
    host = np.ones(5, np.float32)
    with pytest.raises(kd.KernelArgumentError, match="host array"):
        zoo.saxpy(1.0, x, host, torch.empty_like(x))
    with pytest.raises(kd.KernelArgumentError, match=r"\.cpu\(\)"):
        zoo.saxpy[kd.cpu](1.0, x, x, torch.empty_like(x))
    with pytest.raises(kd.KernelArgumentError, match="on the GPU"):
        zoo.saxpy[kd.cuda](1.0, host, host, np.empty_like(host))


def test_shape_mismatch_is_a_shape_error():
    x = torch.rand(5, device="cuda")
    with pytest.raises(kd.ShapeError):
        zoo.saxpy(1.0, x, torch.rand(6, device="cuda"), torch.empty_like(x))


def test_bounds_checks_on_the_device():
    @kd.kernel(checks=True)
    def gather(x, idx, y):
        i = kd.indices(idx.shape[0])
        y[i] = x[idx[i]]

    x = torch.rand(10, device="cuda")
    idx = torch.tensor([1, 2, 30], device="cuda")
    with pytest.raises(kd.BoundsError, match=r"subscript of .x. of shape \(10,\) fell outside it"):
        gather(x, idx, torch.empty(3, device="cuda"))


def test_user_schedules_on_awkward_shapes():
    """A user's GPU schedule (README's), a reduction on a thread count that is not a
    multiple of a warp, and a row buffer of dynamic size (per-block scratch, barriers)."""

    @kd.kernel
    def matmul(A, B, C):
        i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
        C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)

    @matmul.schedule(kd.cuda)
    def _(s):
        jo, ji = s.split("j", 128)
        s.bind("i", "block.y")
        s.bind(jo, "block.x")
        s.bind(ji, "thread.x")

    @kd.kernel
    def row_sum(x, out):
        i, j = kd.indices(x.shape[0], x.shape[1])
        out[i] = kd.sum(x[i, j], over=j)

    @row_sum.schedule(kd.cuda)
    def _(s):
        s.bind("i", "block.x")
        s.bind("j", "thread.x", threads=100)

    @kd.kernel
    def softmax_buffered(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        m = kd.empty((x.shape[0],), kd.f32)
        m[i] = kd.max(x[i, j], over=j)
        e = kd.empty(x.shape, kd.f32)
        e[i, j] = kd.exp(x[i, j] - m[i])
        s = kd.empty((x.shape[0],), kd.f32)
        s[i] = kd.sum(e[i, j], over=j)
        y[i, j] = e[i, j] / s[i]

    @softmax_buffered.schedule(kd.cuda)
    def _(s):
        for k in (1, 2, 3):
            s.fuse("i", f"i.{k}")
        s.bind("i", "block.x")
        for loop in ("j", "j.1", "j.2", "j.3"):
            s.bind(loop, "thread.x")

    rng = np.random.default_rng(17)
    a, b = random_array(rng, (37, 19), np.float32), random_array(rng, (19, 300), np.float32)
    x = random_array(rng, (41, 1000), np.float32)
    run_case(Case("mm", matmul, [a, b, np.empty((37, 300), np.float32)], {2: a @ b}, 1e-4))
    run_case(Case("rs", row_sum, [x, np.empty(41, np.float32)], {1: x.sum(axis=1)}, 1e-4))
    run_case(Case("sm", softmax_buffered, [x, np.empty_like(x)], {1: zoo.softmax_ref(x)}, 1e-4))


def test_library_functions_on_tensors():
    """kdsl.kernels' functions on CUDA tensors: tensors back, on the same device,
    against PyTorch (tests/kernels/test_on_device.py covers the rest without a GPU)."""
    import torch.nn.functional as F
    from kdsl.kernels import attention, layernorm, matmul, rmsnorm, softmax

    g = torch.Generator(device="cuda").manual_seed(5)

    def rand(*shape, dtype=torch.float32):
        return torch.randn(*shape, device="cuda", generator=g).to(dtype)

    x, w, b = rand(3, 5, 1000), rand(1000), rand(1000)
    y = softmax(x, axis=1)
    assert isinstance(y, torch.Tensor) and y.device == x.device
    torch.testing.assert_close(y, torch.softmax(x, 1))
    torch.testing.assert_close(layernorm(x, w, b), F.layer_norm(x, (1000,), w, b, 1e-5))
    rms = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w
    torch.testing.assert_close(rmsnorm(x, w), rms, rtol=1e-4, atol=1e-4)
    a, m, bias = rand(70, 130), rand(130, 300), rand(300)
    want = F.gelu(a @ m + bias)
    torch.testing.assert_close(
        matmul(a, m, bias=bias, activation="gelu"), want, rtol=1e-3, atol=1e-3
    )
    a16, m16 = a.bfloat16(), m.bfloat16()
    out = torch.empty(70, 300, device="cuda")
    matmul(a16, m16, out=out)
    torch.testing.assert_close(out, a16.float() @ m16.float(), rtol=1e-2, atol=1e-2)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        q, k, v = (
            rand(2, 4, 100, 64, dtype=dtype),
            rand(2, 2, 100, 64, dtype=dtype),
            rand(2, 2, 100, 64, dtype=dtype),
        )
        for causal in (False, True):
            got = attention(q, k, v, causal=causal)
            kk, vv = (t.float().repeat_interleave(2, dim=1) for t in (k, v))
            want = F.scaled_dot_product_attention(q.float(), kk, vv, is_causal=causal)
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    q, k, v = rand(1, 4, 1, 64), rand(1, 2, 300, 64), rand(1, 2, 300, 64)  # decode
    got = attention(q, k, v)
    kk, vv = (t.repeat_interleave(2, dim=1) for t in (k, v))
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, kk, vv), rtol=1e-4, atol=1e-4)
    from kdsl.kernels.quant import dequantize, qmatmul, qmatvec, quantize

    for fmt in ("q8_0", "q4_0"):
        weights = quantize(
            np.random.default_rng(6).standard_normal((300, 32 * 13), np.float32), fmt
        )
        on_gpu = weights.to(a)
        dense = torch.as_tensor(dequantize(weights), device="cuda")
        vec, rows = rand(32 * 13), rand(3, 32 * 13)
        torch.testing.assert_close(qmatvec(on_gpu, vec), dense @ vec, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(qmatmul(on_gpu, rows), rows @ dense.T, rtol=1e-4, atol=1e-4)
