"""The library's functions on CUDA arrays, without a GPU: stand-ins for PyTorch CUDA
tensors over host memory, new ones made in place of torch.empty, and the kernels' CUDA
code run by the SIMT emulator (tests/targets/cuda/simt.py) where the GPU would run it.
Checked against NumPy on random data: the reshapes, axes, views into `out`, dtypes and
kernels that each function picks, and its errors. (benchmarks/gpu_check.py runs the
same functions on a real GPU.)"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from kdsl.kernels import _device
from kdsl.kernels.attention import attention
from kdsl.kernels.attention import reference as attention_reference
from kdsl.kernels.matmul import matmul
from kdsl.kernels.matmul import reference as matmul_reference
from kdsl.kernels.norms import layernorm, layernorm_reference, rmsnorm, rmsnorm_reference
from kdsl.kernels.quant import QTensor, qmatmul, qmatvec, quantize, reference_qmatmul
from kdsl.kernels.softmax import reference as softmax_reference
from kdsl.kernels.softmax import softmax

import kdsl as kd
from tests.helpers import random_array
from tests.targets.cuda import simt

RNG = np.random.default_rng(29)


class _DType:
    def __init__(self, dtype: np.dtype) -> None:
        self.name = "bfloat16" if dtype == ml_dtypes.bfloat16 else dtype.name

    def __str__(self) -> str:
        return f"torch.{self.name}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _DType) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class Tensor:
    """A PyTorch CUDA tensor as kdsl reads one, over a NumPy array `a` (its views are
    NumPy's views, its copies NumPy's copies), on GPU `device`."""

    __module__ = "torch"  # (what tells the library's functions a tensor's library)
    is_cuda = True

    def __init__(self, a: np.ndarray, device: int = 0) -> None:
        self.a, self.device = a, device
        self.dtype = _DType(a.dtype)

    shape = property(lambda self: self.a.shape)
    ndim = property(lambda self: self.a.ndim)

    def dim(self) -> int:
        return self.a.ndim

    def data_ptr(self) -> int:
        return self.a.ctypes.data

    def stride(self) -> tuple[int, ...]:
        return tuple(s // self.a.itemsize for s in self.a.strides)

    def is_contiguous(self) -> bool:
        return self.a.flags.c_contiguous

    def get_device(self) -> int:
        return self.device

    def reshape(self, *shape) -> Tensor:  # (sizes, or one tuple of them: as PyTorch's)
        return Tensor(self.a.reshape(*shape), self.device)

    def swapaxes(self, a: int, b: int) -> Tensor:
        return Tensor(self.a.swapaxes(a, b), self.device)

    def __getitem__(self, key: object) -> Tensor:
        return Tensor(self.a[key], self.device)

    def __setitem__(self, key: object, value: Tensor) -> None:
        self.a[key] = value.a


def _host(value: object) -> object:
    return value.a if isinstance(value, Tensor) else value


@pytest.fixture
def launches(monkeypatch):
    """The kernels each call launched; they run in the emulator."""
    ran: list[str] = []

    def launch(kernel, *args):
        ran.append(kernel.name)
        simt.run(kernel, [_host(a) for a in args])

    def empty(like, shape, dtype):
        numpy_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
        return Tensor(np.full(shape, np.nan, numpy_dtype), like.device)

    monkeypatch.setattr(_device, "launch", launch)
    monkeypatch.setattr(_device._Torch, "empty", staticmethod(empty))
    copy_in = staticmethod(lambda like, a: Tensor(a.copy(), like.device))
    monkeypatch.setattr(_device._Torch, "from_host", copy_in)
    monkeypatch.setattr(_device._Torch, "to_host", staticmethod(lambda x: x.a.copy()))
    return ran


def gpu(*shape: int, dtype=np.float32) -> Tensor:
    return Tensor(random_array(RNG, shape, np.float32).astype(dtype))


@pytest.mark.parametrize("shape, axis", [((5, 37), -1), ((3, 4, 9), 1), ((6, 1), 0), ((1,), 0)])
def test_softmax_over_any_axis(launches, shape, axis):
    x = gpu(*shape)
    y = softmax(x, axis=axis)
    assert isinstance(y, Tensor) and y.shape == shape
    np.testing.assert_allclose(y.a, softmax_reference(x.a, axis), rtol=1e-5, atol=1e-7)
    assert launches == ["softmax_rows"]


def test_out_is_written_in_place_or_through_a_copy(launches):
    x = gpu(4, 6)
    out = Tensor(np.zeros((4, 6), np.float32))
    assert softmax(x, out=out) is out  # rows of out: written by the kernel
    np.testing.assert_allclose(out.a, softmax_reference(x.a), rtol=1e-5)
    columns = Tensor(np.zeros((6, 4), np.float32).T)  # no rows view: a copy into it
    assert softmax(x, out=columns) is columns
    np.testing.assert_allclose(columns.a, softmax_reference(x.a), rtol=1e-5)
    assert softmax(gpu(0, 5)).shape == (0, 5) and len(launches) == 2  # nothing to run


@pytest.mark.parametrize("rows, n", [(3, 37), (1, 1), (5, 64)])
def test_norms(launches, rows, n):
    x, w, b = gpu(2, rows, n), gpu(n), gpu(n)
    np.testing.assert_allclose(
        rmsnorm(x, w, eps=1e-5).a, rmsnorm_reference(x.a, w.a, 1e-5), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        layernorm(x, w, b).a, layernorm_reference(x.a, w.a, b.a), rtol=1e-4, atol=1e-4
    )
    assert launches == ["rmsnorm_rows", "layernorm_rows"]


@pytest.mark.parametrize("m, k, n", [(3, 5, 45), (1, 1, 1), (17, 33, 7)])
def test_matmul(launches, m, k, n):
    a, b, bias = gpu(m, k), gpu(k, n), gpu(n)
    np.testing.assert_allclose(matmul(a, b).a, a.a @ b.a, rtol=1e-4, atol=1e-4)
    got = matmul(a, b, bias=bias, activation="gelu").a
    np.testing.assert_allclose(
        got, matmul_reference(a.a, b.a, bias.a, "gelu"), rtol=1e-4, atol=1e-4
    )
    assert launches == ["product_kernel", "matmul_kernel"]


def test_matmul_batched_and_bf16_into_f32(launches):
    a, b = gpu(2, 3, 8), gpu(2, 8, 5)
    np.testing.assert_allclose(matmul(a, b).a, a.a @ b.a, rtol=1e-4, atol=1e-4)
    a16, b16 = gpu(3, 40, dtype=ml_dtypes.bfloat16), gpu(40, 9, dtype=ml_dtypes.bfloat16)
    out = Tensor(np.zeros((3, 9), np.float32))
    assert matmul(a16, b16, out=out, activation="silu") is out
    want = matmul_reference(a16.a.astype(np.float32), b16.a.astype(np.float32), None, "silu")
    np.testing.assert_allclose(out.a, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "sa, sb, products",
    [
        ((7,), (7, 3), 1),
        ((5, 7), (7,), 1),
        ((7,), (7,), 1),
        ((2, 1, 4, 7), (3, 7, 2), 6),
        ((3, 4, 7), (7, 2), 3),
    ],
)
def test_matmul_takes_numpys_shapes(launches, sa, sb, products):
    """Vectors and broadcast batches as on the CPU: a launch per matrix of the result."""
    a, b = gpu(*sa), gpu(*sb)
    got = matmul(a, b).a
    want = np.matmul(a.a.astype(np.float64), b.a.astype(np.float64))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert launches == ["product_kernel"] * products


@pytest.mark.parametrize("causal", [False, True])
def test_attention_f32_grouped_heads(launches, causal):
    q, k, v = gpu(1, 2, 9, 20), gpu(1, 1, 12, 20), gpu(1, 1, 12, 20)
    got = attention(q, k, v, causal=causal)
    assert got.a.dtype == np.float32
    want = attention_reference(q.a, k.a, v.a, causal)
    np.testing.assert_allclose(got.a, want, rtol=1e-4, atol=1e-5)
    assert launches == ["flash_kernel"]


def test_attention_decode_and_bf16(launches):
    q, k, v = gpu(1, 2, 1, 16), gpu(1, 2, 30, 16), gpu(1, 2, 30, 16)
    np.testing.assert_allclose(
        attention(q, k, v).a, attention_reference(q.a, k.a, v.a), rtol=1e-4, atol=1e-5
    )
    q, k, v = (gpu(1, 1, 20, 16, dtype=ml_dtypes.bfloat16) for _ in range(3))
    out = Tensor(np.zeros((1, 1, 20, 16), ml_dtypes.bfloat16))  # written through an f32 one
    assert attention(q, k, v, causal=True, out=out) is out
    want = attention_reference(q.a, k.a, v.a, True)
    np.testing.assert_allclose(out.a.astype(np.float32), want, rtol=2e-2, atol=2e-2)
    assert launches == ["decode_kernel", "flash_mma_kernel"]


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_quantized_products_on_the_gpu(launches, fmt):
    """Blocks moved to the GPU with QTensor.to, multiplied by f32 vectors and rows there
    (a strided x and out included), dequantized in registers as on the host."""
    w = quantize(random_array(RNG, (13, 32 * 5), np.float32), fmt)
    wg = w.to(gpu(1))
    assert (
        isinstance(wg.d, Tensor)
        and wg.to(gpu(2)) is wg
        and wg.to(np.empty(0)).ggml().tobytes() == w.tobytes()
    )
    assert wg.ggml().tobytes() == w.tobytes()
    x = gpu(32 * 5)
    y = qmatvec(wg, x)
    assert isinstance(y, Tensor) and y.shape == (13,)
    np.testing.assert_allclose(y.a, reference_qmatmul(w, x.a, "f32")[0], rtol=1e-5, atol=1e-5)
    rows = gpu(6, 32 * 5)[::2]
    out = Tensor(np.zeros((13, 3), np.float32).T)
    assert qmatmul(wg, rows, out=out, activations="f32") is out
    np.testing.assert_allclose(out.a, reference_qmatmul(w, rows.a, "f32"), rtol=1e-5, atol=1e-5)
    assert qmatmul(wg, gpu(0, 32 * 5)).shape == (0, 13)
    assert launches == [f"{fmt}_dot_f32"] * 2


def _on_gpu(fmt: str = "q8_0", cols: int = 64, device: int = 0) -> QTensor:
    return quantize(random_array(RNG, (3, cols), np.float32), fmt).to(Tensor(np.empty(0), device))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: qmatvec(quantize(np.ones((3, 64), np.float32), "q8_0"), gpu(64)), "w = w.to(x)"),
        (lambda: qmatvec(_on_gpu(), np.ones(64, np.float32)), "host: w.to(x)"),
        (
            lambda: qmatvec(_on_gpu(device=1), gpu(64)),
            "'w' holds its blocks on GPU 1, and 'x' is a PyTorch tensor on GPU 0",
        ),
        (lambda: qmatvec(_on_gpu(), gpu(64), activations="q8_0"), "the activations stay f32"),
        (lambda: qmatvec(_on_gpu(), gpu(64, dtype=np.float16)), "x.to(torch.float32)"),
        (lambda: qmatvec(_on_gpu(), gpu(2, 64)), "expected a vector"),
        (lambda: qmatmul(_on_gpu(), gpu(2, 32)), "can't multiply x of shape (2, 32)"),
        (lambda: _on_gpu().to([1.0]), "'like' is list"),
        (
            lambda: QTensor(
                "q8_0", (3, 64), gpu(3, 2, dtype=np.float16), np.zeros((3, 64), np.int8)
            ),
            "'q' is numpy.ndarray in host memory",
        ),
        (
            lambda: QTensor(
                "q8_0", (3, 64), np.zeros((3, 2), np.float16), gpu(3, 64, dtype=np.int8)
            ),
            "'d' is numpy.ndarray in host memory, and 'q' is on a GPU",
        ),
        (
            lambda: QTensor(
                "q4_0", (3, 64), gpu(3, 4, dtype=np.float16), gpu(3, 64, dtype=np.int8)
            ),
            "'q' has dtype int8",
        ),
    ],
)
def test_quantized_errors_on_the_gpu(launches, call, message):
    with pytest.raises(kd.KdslError) as info:
        call()
    assert message in str(info.value) and "fix:" in str(info.value)
    assert not launches


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: rmsnorm(gpu(2, 3), np.ones(3, np.float32)),
            "'weight' is numpy.ndarray in host memory",
        ),
        (
            lambda: matmul(gpu(2, 3), Tensor(np.ones((3, 2), np.float32), device=1)),
            "'b' is a PyTorch tensor on GPU 1, and 'a' is a PyTorch tensor on GPU 0",
        ),
        (
            lambda: rmsnorm(gpu(2, 3), gpu(3, dtype=np.float16)),
            "'weight' has dtype float16, and 'x' has float32",
        ),
        (
            lambda: softmax(gpu(2, 3, dtype=np.int32)),
            "'x' has dtype int32, and on a GPU this function takes float32, bfloat16",
        ),
        (lambda: softmax(gpu(2, 3), out=gpu(3, 2)), "'out' has shape (3, 2), expected (2, 3)"),
        (
            lambda: softmax(gpu(2, 3, dtype=ml_dtypes.bfloat16), out=gpu(2, 3)),
            "'out' has dtype float32, expected bfloat16",
        ),
        (
            lambda: softmax(
                gpu(2, 3), out=Tensor(np.broadcast_to(np.zeros(3, np.float32), (2, 3)))
            ),
            "'out' repeats its elements along an axis",
        ),
        (lambda: layernorm(gpu(2, 3), gpu(3), None), "'bias' is None"),
        (
            lambda: rmsnorm(gpu(2, 3), Tensor(np.ones(3, np.complex64))),
            "'weight' has dtype complex64, and 'x' has float32",
        ),
        (lambda: layernorm(gpu(2, 3), gpu(4), gpu(4)), "'weight' has shape (4,), expected (3,)"),
        (lambda: matmul(gpu(2, 3), gpu(2, 3)), "can't multiply shapes (2, 3) and (2, 3)"),
        (lambda: attention(gpu(1, 2, 3), gpu(1, 2, 3), gpu(1, 2, 3)), "expected 4 dimensions"),
        (lambda: attention(gpu(1, 3, 4, 8), gpu(1, 2, 4, 8), gpu(1, 2, 4, 8)), "multiple"),
    ],
)
def test_errors_name_the_argument_and_the_fix(launches, call, message):
    with pytest.raises(kd.KdslError) as info:
        call()
    assert message in str(info.value) and "fix:" in str(info.value)
    assert not launches


def test_attention_of_empty_heads_and_of_an_odd_head_size(launches):
    """D = 0: nothing to compute (no default scale of 1/√0 either); bf16 with an odd D:
    the tensor cores read pairs along D, so the CUDA cores' kernel runs it."""
    empty = gpu(1, 1, 2, 0)
    assert attention(empty, empty, empty).shape == (1, 1, 2, 0) and not launches
    q, k, v = (gpu(1, 2, 5, 3, dtype=ml_dtypes.bfloat16) for _ in range(3))
    want = attention_reference(q.a, k.a, v.a)
    np.testing.assert_allclose(attention(q, k, v).a, want, rtol=1e-2, atol=1e-2)
    assert launches == ["flash_kernel"]


def test_arrays_of_another_library_are_refused(monkeypatch):
    """Only PyTorch's and CuPy's arrays have the methods used (a Numba array: the
    kernels themselves take it)."""
    monkeypatch.delitem(_device.LIBRARIES, "torch")
    with pytest.raises(kd.KernelArgumentError, match="take PyTorch tensors or CuPy arrays"):
        softmax(gpu(2, 3))


def test_quantized_blocks_come_back_to_a_cpu_tensors_side(launches):
    torch = pytest.importorskip("torch")
    w = quantize(random_array(RNG, (3, 64), np.float32), "q4_0")
    back = w.to(gpu(1)).to(torch.zeros(1))  # a CPU tensor: host memory
    assert isinstance(back.d, np.ndarray) and back.tobytes() == w.tobytes()
