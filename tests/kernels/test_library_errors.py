"""The library's public functions refuse bad arguments with kd.KernelArgumentError or
kd.ShapeError naming the function, the argument and the fix, and still compute with
good ones (any strides of `out`, DLPack tensors as `out`)."""

import numpy as np
import pytest
from kdsl.kernels import (
    QTensor,
    attention,
    dequantize,
    layernorm,
    matmul,
    matvec,
    qmatmul,
    qmatvec,
    quant,
    quantize_q4_0,
    quantize_q8_0,
    rmsnorm,
    softmax,
)
from kdsl.kernels.attention import reference as attention_reference
from kdsl.kernels.norms import layernorm_reference, rmsnorm_reference
from kdsl.kernels.softmax import reference as softmax_reference

import kdsl as kd

RNG = np.random.default_rng(2024)
X = RNG.standard_normal((3, 8)).astype(np.float32)
W8 = RNG.standard_normal(8).astype(np.float32)
Q8 = quantize_q8_0(RNG.standard_normal((8, 64)).astype(np.float32))
Q4 = RNG.standard_normal((1, 2, 3, 8)).astype(np.float32)  # [B, H, L, D] for attention


def _raises(err, match, call, *args, **kwargs):
    """call(*args, **kwargs) raises `err` whose message holds `match` and a fix."""
    with pytest.raises(err, match=match) as info:
        call(*args, **kwargs)
    assert "fix:" in str(info.value)
    return info.value


# -------------------------------------------------------------- 1. qmatmul's `out`


def test_qmatmul_out_of_the_right_size_but_wrong_shape_is_refused():
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    out = np.zeros((2, 8), np.float32).T  # 16 values, shape (8, 2)
    _raises(
        kd.ShapeError,
        r"qmatmul: 'out' has shape \(8, 2\), expected \(2, 8\)",
        qmatmul,
        Q8,
        x,
        out=out,
    )
    assert not out.any()
    v = np.ones(64, np.float32)
    _raises(
        kd.ShapeError,
        r"'out' has shape \(1, 8\), expected \(8,\)",
        qmatvec,
        Q8,
        v,
        out=np.zeros((1, 8), np.float32),
    )
    _raises(
        kd.ShapeError, r"'out' has shape \(2, 4\)", qmatvec, Q8, v, out=np.zeros((2, 4), np.float32)
    )


def test_qmatmul_out_of_another_dtype_is_refused():
    v = np.ones(64, np.float32)
    _raises(
        kd.KernelArgumentError,
        "qmatvec: 'out' has dtype float64, expected float32",
        qmatvec,
        Q8,
        v,
        out=np.zeros(8),
    )
    frozen = np.zeros(8, np.float32)
    frozen.flags.writeable = False
    _raises(kd.KernelArgumentError, "'out' is read-only", qmatvec, Q8, v, out=frozen)


@pytest.mark.parametrize("quantize", [quantize_q8_0, quantize_q4_0])
@pytest.mark.parametrize("activations", ["q8_0", "f32"])
def test_qmatmul_writes_through_a_strided_out(quantize, activations):
    w = quantize(RNG.standard_normal((8, 96)).astype(np.float32))
    x = RNG.standard_normal((2, 96)).astype(np.float32)
    out = np.full((8, 2), np.nan, np.float32).T  # (2, 8), columns apart
    assert qmatmul(w, x, out=out, activations=activations) is out
    want = quant.reference_qmatmul(w, x, activations)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)
    column = np.full((8, 3), np.nan, np.float32)
    middle = column[:, 1]
    assert qmatvec(w, x[1], out=middle, activations=activations) is middle
    np.testing.assert_allclose(column[:, 1], want[1], rtol=1e-5, atol=1e-4)
    assert np.isnan(column[:, [0, 2]]).all()


# -------------------------------------------------------------- 2. QTensor


def test_qtensor_parts_must_agree_with_its_shape():
    err = _raises(
        kd.ShapeError,
        r"QTensor: 'd' has shape \(8, 2\), expected \(8, 20\)",
        QTensor,
        "q8_0",
        (8, 640),
        Q8.d,
        Q8.q,
    )
    assert "QTensor.empty" in str(err)
    _raises(
        kd.ShapeError,
        r"'q' has shape \(8, 64\), expected \(8, 640\)",
        QTensor,
        "q8_0",
        (8, 640),
        np.zeros((8, 20), np.float16),
        Q8.q,
    )
    _raises(
        kd.KernelArgumentError,
        "'q' has dtype int16, expected int8",
        QTensor,
        "q8_0",
        (8, 64),
        Q8.d,
        Q8.q.astype(np.int16),
    )
    _raises(
        kd.KernelArgumentError,
        "'d' is list, expected a NumPy array",
        QTensor,
        "q8_0",
        (8, 64),
        Q8.d.tolist(),
        Q8.q,
    )
    wide = np.zeros((8, 128), np.int8)[:, ::2]
    _raises(
        kd.KernelArgumentError,
        "'q' is not contiguous along its rows",
        QTensor,
        "q8_0",
        (8, 64),
        Q8.d,
        wide,
    )
    _raises(kd.ShapeError, "multiple of 32", QTensor, "q8_0", (8, 65), Q8.d, Q8.q)
    _raises(kd.ShapeError, "multiple of 32", QTensor, "q8_0", (8, 64, 1), Q8.d, Q8.q)


def test_qtensor_format_must_be_known():
    _raises(
        kd.KernelArgumentError,
        "QTensor: unknown format 'q5_k'",
        QTensor,
        "q5_k",
        (8, 64),
        Q8.d,
        Q8.q,
    )
    _raises(kd.KernelArgumentError, "unknown format None", QTensor, None, (8, 64), Q8.d, Q8.q)


def test_functions_taking_a_qtensor_refuse_an_array():
    dense = np.ones((8, 64), np.float32)
    _raises(
        kd.KernelArgumentError,
        "dequantize: 'w' is numpy.ndarray, expected a QTensor",
        dequantize,
        dense,
    )
    _raises(
        kd.KernelArgumentError,
        "qmatmul: 'w' is numpy.ndarray, expected a QTensor",
        qmatmul,
        dense,
        np.ones((1, 64)),
    )
    _raises(
        kd.KernelArgumentError,
        "'out' has dtype int32",
        dequantize,
        Q8,
        out=np.zeros((8, 64), np.int32),
    )


@pytest.mark.parametrize("quantize", [quantize_q8_0, quantize_q4_0])
def test_a_hand_built_qtensor_that_agrees_works(quantize):
    w = quantize(RNG.standard_normal((5, 160)).astype(np.float32))
    again = QTensor(w.format, [5, 160], w.d.copy(), w.q.copy())
    assert again.shape == (5, 160)
    np.testing.assert_array_equal(dequantize(again), quant.reference_dequantize(w))
    x = RNG.standard_normal(160).astype(np.float32)
    np.testing.assert_allclose(
        qmatvec(again, x), quant.reference_qmatmul(w, x)[0], rtol=1e-5, atol=1e-4
    )


# -------------------------------------------------------------- 3. row functions' `out` dtype


@pytest.mark.parametrize("dtype", [np.int32, np.float64, np.float16])
def test_rows_out_of_another_dtype_is_refused(dtype):
    out = np.zeros(X.shape, dtype)
    message = f"'out' has dtype {np.dtype(dtype)}, expected float32"
    _raises(kd.KernelArgumentError, "softmax: " + message, softmax, X, out=out)
    _raises(kd.KernelArgumentError, "rmsnorm: " + message, rmsnorm, X, W8, out=out)
    _raises(kd.KernelArgumentError, "layernorm: " + message, layernorm, X, W8, W8, out=out)
    assert not out.any()


def test_rows_out_of_the_inputs_dtype_is_written():
    x = X.astype(np.float64)
    out = np.empty_like(x)
    assert softmax(x, out=out) is out
    np.testing.assert_allclose(out, softmax_reference(x), rtol=1e-12)
    columns = np.empty((8, 3), np.float32).T  # strided: written through a copy
    assert rmsnorm(X, W8, out=columns) is columns
    np.testing.assert_allclose(columns, rmsnorm_reference(X, W8), rtol=1e-5, atol=1e-6)
    assert layernorm(X, W8, W8, out=columns) is columns
    np.testing.assert_allclose(columns, layernorm_reference(X, W8, W8), rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------- 4. `out` that is not an array


@pytest.mark.parametrize(
    "call",
    [
        lambda out: matmul(X, X.T, out=out),
        lambda out: matvec(X, W8, out=out),
        lambda out: softmax(X, out=out),
        lambda out: rmsnorm(X, W8, out=out),
        lambda out: qmatvec(Q8, np.ones(64, np.float32), out=out),
        lambda out: dequantize(Q8, out=out),
        lambda out: attention(Q4, Q4, Q4, out=out),
    ],
    ids=["matmul", "matvec", "softmax", "rmsnorm", "qmatvec", "dequantize", "attention"],
)
@pytest.mark.parametrize("out", [[0.0] * 8, [], "out", 3.0])
def test_out_that_is_not_an_array_is_refused(call, out):
    err = _raises(
        kd.KernelArgumentError, f"'out' is {type(out).__name__}, expected a NumPy array", call, out
    )
    assert "pass a NumPy array of shape (" in str(err) and "and dtype float32" in str(err)


def test_a_cpu_tensor_is_written_through_dlpack():
    torch = pytest.importorskip("torch")
    y = torch.full(X.shape, float("nan"))
    assert softmax(X, out=y) is y
    np.testing.assert_allclose(y.numpy(), softmax_reference(X), rtol=2e-6)
    c = torch.zeros(3, 3)
    assert matmul(X, X.T, out=c) is c
    np.testing.assert_allclose(c.numpy(), X @ X.T, rtol=1e-5, atol=1e-5)
    v = torch.zeros(8)
    x = RNG.standard_normal(64).astype(np.float32)
    assert qmatvec(Q8, x, out=v) is v
    np.testing.assert_allclose(v.numpy(), quant.reference_qmatmul(Q8, x)[0], rtol=1e-5, atol=1e-4)
    _raises(
        kd.KernelArgumentError,
        "softmax: 'out' is torch.Tensor, expected a NumPy array",
        softmax,
        X,
        out=torch.zeros(3, 8, requires_grad=True),
    )
    _raises(
        kd.KernelArgumentError,
        "'out' has dtype int64",
        softmax,
        X,
        out=torch.zeros(3, 8, dtype=torch.int64),
    )
    _raises(kd.ShapeError, r"'out' has shape \(8, 3\)", softmax, X, out=torch.zeros(8, 3))


# -------------------------------------------------------------- 5. arguments checked up front


@pytest.mark.parametrize(
    "call,err,message",
    [
        (
            lambda: rmsnorm(np.float32(1), np.ones(1, np.float32)),
            kd.ShapeError,
            r"rmsnorm: 'x' has shape \(\)",
        ),
        (lambda: layernorm(np.float32(1), W8, W8), kd.ShapeError, r"layernorm: 'x' has shape \(\)"),
        (lambda: softmax(np.float64(1)), kd.ShapeError, r"softmax: 'x' has shape \(\)"),
        (lambda: softmax(None), kd.KernelArgumentError, "softmax: 'x' is None"),
        (
            lambda: softmax("abc"),
            kd.KernelArgumentError,
            "softmax: 'x' has dtype <U3, expected a float array",
        ),
        (
            lambda: softmax(np.arange(8)),
            kd.KernelArgumentError,
            "'x' has dtype int64, expected a float array",
        ),
        (
            lambda: softmax([[1.0], [1.0, 2.0]]),
            kd.KernelArgumentError,
            r"softmax: 'x' \(list\) is not an array",
        ),
        (
            lambda: softmax(X, axis=1.0),
            kd.KernelArgumentError,
            r"softmax: 'axis' is 1.0 \(float\), expected an int",
        ),
        (lambda: softmax(X, axis=True), kd.KernelArgumentError, r"'axis' is True \(bool\)"),
        (
            lambda: softmax(X, axis=2),
            kd.KernelArgumentError,
            "'axis' is 2, out of range for an array of 2",
        ),
        (lambda: softmax(X, axis=-3), kd.KernelArgumentError, "'axis' is -3, out of range"),
        (lambda: rmsnorm(X, None), kd.KernelArgumentError, "rmsnorm: 'weight' is None"),
        (
            lambda: rmsnorm(X, W8, eps="a"),
            kd.KernelArgumentError,
            r"rmsnorm: 'eps' is 'a' \(str\), expected a number",
        ),
        (
            lambda: layernorm(X, W8, W8[:7]),
            kd.ShapeError,
            r"layernorm: 'bias' has shape \(7,\), expected \(8,\)",
        ),
        (lambda: matmul(None, X), kd.KernelArgumentError, "matmul: 'a' is None"),
        (lambda: matmul(X, "abc"), kd.KernelArgumentError, "matmul: 'b' has dtype <U3"),
        (lambda: matvec(X, None), kd.KernelArgumentError, "matvec: 'x' is None"),
        (lambda: qmatvec(Q8, None), kd.KernelArgumentError, "qmatvec: 'x' is None"),
        (lambda: quantize_q8_0(None), kd.KernelArgumentError, "quantize: 'x' is None"),
        (
            lambda: attention(Q4, Q4, Q4, scale="big"),
            kd.KernelArgumentError,
            r"attention: 'scale' is 'big' \(str\)",
        ),
    ],
)
def test_arguments_are_checked_up_front(call, err, message):
    _raises(err, message, call)


def test_good_arguments_still_compute():
    np.testing.assert_allclose(softmax(X, axis=np.int64(0)), softmax_reference(X, 0), rtol=2e-6)
    np.testing.assert_allclose(
        softmax(X.tolist()), softmax_reference(X.astype(np.float64)), rtol=1e-12
    )
    x1 = X[0]
    np.testing.assert_allclose(
        rmsnorm(x1, W8, eps=np.float32(1e-3)), rmsnorm_reference(x1, W8, 1e-3), rtol=1e-5
    )
    got = attention(Q4, Q4, Q4, scale=np.float32(0.5))
    np.testing.assert_allclose(got, attention_reference(Q4, Q4, Q4, scale=0.5), rtol=1e-5)


# -------------------------------------------------------------- 6. one error hierarchy


@pytest.mark.parametrize(
    "call,err,message",
    [
        (
            lambda: matmul(X, X),
            kd.ShapeError,
            r"matmul: can't multiply shapes \(3, 8\) and \(3, 8\)",
        ),
        (lambda: matmul(np.float32(2), X), kd.ShapeError, "matmul: .* a scalar has no axis"),
        (lambda: matmul(X > 0, X.T), kd.KernelArgumentError, "matmul: 'a' has dtype bool"),
        (
            lambda: matmul(np.stack([X, X]), np.stack([X.T] * 3)),
            kd.ShapeError,
            r"their batch axes \(2,\) and \(3,\) don't broadcast",
        ),
        (
            lambda: matmul(X, X.T, activation="tanh"),
            kd.KernelArgumentError,
            "matmul: activation 'tanh' is not one of",
        ),
        (
            lambda: matmul(X, X.T, bias=np.ones(4)),
            kd.ShapeError,
            r"matmul: 'bias' has shape \(4,\), expected \(3,\)",
        ),
        (
            lambda: matmul(X, X.T, out=np.zeros((3, 3), np.int32)),
            kd.KernelArgumentError,
            "matmul: 'out' has dtype int32, expected one of float32",
        ),
        (lambda: matvec(X, W8[:3]), kd.ShapeError, "matvec: can't multiply"),
        (lambda: matvec(X, W8, accumulate=True), kd.KernelArgumentError, "matvec: accumulate=True"),
        (
            lambda: softmax(X, out=np.zeros((3, 7), np.float32)),
            kd.ShapeError,
            r"softmax: 'out' has shape \(3, 7\), expected \(3, 8\)",
        ),
        (
            lambda: rmsnorm(X, W8[:7]),
            kd.ShapeError,
            r"rmsnorm: 'weight' has shape \(7,\), expected \(8,\)",
        ),
        (
            lambda: quantize_q8_0(np.ones((2, 33), np.float32)),
            kd.ShapeError,
            "quantize: q8_0 stores rows in blocks of 32",
        ),
        (
            lambda: quant.quantize(np.ones((1, 32), np.float32), "q5_k"),
            kd.KernelArgumentError,
            "unknown format 'q5_k'",
        ),
        (
            lambda: QTensor.frombuffer(b"\0" * 10, "q8_0", (1, 32)),
            kd.ShapeError,
            "QTensor.frombuffer: q8_0 1x32 takes 34 bytes",
        ),
        (
            lambda: QTensor.frombuffer("q4_0", (1, 32), b"\0" * 18),  # type: ignore[arg-type]
            kd.KernelArgumentError,
            r"QTensor.frombuffer: the first argument is the format 'q4_0': the order is "
            r"\(buffer, fmt, shape\)",
        ),
        (
            lambda: QTensor.frombuffer(b"\0" * 18, "q4_0", (1, 31)),
            kd.ShapeError,
            "QTensor.frombuffer: q4_0 stores rows in blocks of 32",
        ),
        (
            lambda: qmatvec(Q8, np.ones(32, np.float32)),
            kd.ShapeError,
            r"qmatvec: can't multiply x of shape \(32,\)",
        ),
        (
            lambda: qmatvec(Q8, np.ones((1, 64), np.float32)),
            kd.ShapeError,
            r"qmatvec: 'x' has shape \(1, 64\), expected a vector",
        ),
        (
            lambda: qmatmul(Q8, np.ones(64), activations="int4"),
            kd.KernelArgumentError,
            "qmatmul: activations must be",
        ),
        (
            lambda: quant.quantize_activations(X, "q8_0", out=quant.Activations("q8_0", (3, 32))),
            kd.ShapeError,
            "quantize_activations: these buffers hold",
        ),
    ],
)
def test_library_errors_are_kdsl_errors(call, err, message):
    error = _raises(err, message, call)
    assert isinstance(error, ValueError)  # code that caught the old ValueErrors still does
    if err is kd.KernelArgumentError:
        assert isinstance(error, TypeError)


@pytest.mark.parametrize(
    "call, on_gpu",
    [
        (lambda t: rmsnorm(X, t), True),
        (lambda t: layernorm(X, t, W8), True),
        (lambda t: matmul(X, t), True),
        (lambda t: attention(Q4, Q4, t), True),
        (lambda t: softmax(X, out=t), True),
        (lambda t: qmatvec(Q8, np.ones(64, np.float32), out=t), True),
        (lambda t: quantize_q8_0(t), False),
    ],
)
def test_a_cuda_array_among_host_arrays_is_refused(call, on_gpu):
    """A CUDA array (here a stand-in PyTorch CUDA tensor, no GPU needed) after a host
    array: the error says to put them on one device (the functions that run on a GPU
    do so when the first array is there: tests/kernels/test_on_device.py)."""
    from tests.targets.cuda.stubs import Tensor

    err = _raises(kd.KernelArgumentError, "is a CUDA array", call, Tensor([3, 8]))
    assert "tensor.cpu()" in str(err)
    assert ("the first array is in host memory" in str(err)) == on_gpu


class _HostArrayWithAnInterfaceProperty:
    """Like a JAX CPU array: its class has `__cuda_array_interface__` (raising), its
    DLPack device is the CPU, NumPy reads it."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    @property
    def __cuda_array_interface__(self):
        raise AttributeError("not on a GPU")

    def __dlpack_device__(self):
        return (1, 0)

    def __array__(self, dtype=None, copy=None):
        return self.a


def test_a_host_array_with_the_cuda_interface_on_its_class_is_computed():
    got = softmax(_HostArrayWithAnInterfaceProperty(X))
    np.testing.assert_allclose(got, softmax_reference(X), rtol=1e-5)


def test_torch_cpu_bfloat16_tensors_are_read_and_grad_ones_say_detach():
    """NumPy can't read a bfloat16 tensor through DLPack: the library reads its bits."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    x = torch.randn(4, 9).bfloat16()
    got = softmax(x)
    assert got.dtype.name == "bfloat16"
    want = torch.softmax(x.float(), -1).numpy()
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-2, atol=1e-3)
    _raises(kd.KernelArgumentError, "detach", softmax, torch.randn(3, requires_grad=True))


# ------------------------------------------------- inputs a probe found mishandled


def test_a_float_bias_of_integer_inputs_gives_a_float_product_as_numpy():
    """It was cast to the inputs' int dtype: its fractions dropped, without a word."""
    a, b = np.array([[1, 2], [3, 4]]), np.array([[2, -1], [0, 5]])
    bias = np.array([0.5, -0.7])
    got = matmul(a, b, bias=bias)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, a @ b + bias)
    out = np.zeros((2, 2), np.float32)
    np.testing.assert_allclose(matmul(a, b, bias=bias, out=out), a @ b + bias, rtol=1e-6)


def test_the_bias_of_16_bit_inputs_is_added_in_f32():
    """It was rounded to bf16 (1000.7 to 1000) even into an f32 `out`."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = RNG.standard_normal((5, 8)).astype(ml_dtypes.bfloat16)
    b = RNG.standard_normal((8, 3)).astype(ml_dtypes.bfloat16)
    bias = np.array([1e-3, 0.1234567, 1000.7], np.float32)
    out = np.zeros((5, 3), np.float32)
    matmul(a, b, bias=bias, out=out)
    want = a.astype(np.float64) @ b.astype(np.float64) + bias
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-5)


def test_integer_products_take_relu_and_say_the_others_need_floats():
    a, b = RNG.integers(-9, 9, (4, 6)), RNG.integers(-9, 9, (6, 5))
    np.testing.assert_array_equal(matmul(a, b, activation="relu"), np.maximum(a @ b, 0))
    for activation in ("gelu", "silu"):
        _raises(kd.KernelArgumentError, "needs float inputs", matmul, a, b, activation=activation)


def test_inputs_of_the_other_byte_order_are_read_as_their_values():
    """softmax, the norms and attention refused them, naming their internal kernels."""
    x = X.astype(">f4")
    np.testing.assert_allclose(softmax(x), softmax_reference(X), rtol=1e-6)
    np.testing.assert_allclose(rmsnorm(x, W8.astype(">f4")), rmsnorm_reference(X, W8), rtol=1e-5)
    np.testing.assert_allclose(
        layernorm(x, W8, W8.astype(">f4")),
        layernorm_reference(X, W8, W8, 1e-5),
        rtol=1e-4,
        atol=1e-6,
    )
    q = Q4.astype(">f4")
    np.testing.assert_allclose(attention(q, q, q), attention_reference(Q4, Q4, Q4), rtol=1e-5)


def test_an_out_of_the_other_byte_order_is_written_with_the_values():
    """It was refused ("has dtype >f4, expected float32"), though inputs are converted."""
    a, b = RNG.standard_normal((5, 8)), RNG.standard_normal((8, 3))
    w = RNG.standard_normal((64, 8)).astype(np.float32)
    v = RNG.standard_normal(8).astype(np.float32)
    v64 = RNG.standard_normal(64).astype(np.float32)
    cases = [
        (lambda out: softmax(X, out=out), softmax_reference(X)),
        (lambda out: rmsnorm(X, W8, out=out), rmsnorm_reference(X, W8)),
        (lambda out: layernorm(X, W8, W8, out=out), layernorm_reference(X, W8, W8, 1e-5)),
        (lambda out: attention(Q4, Q4, Q4, out=out), attention_reference(Q4, Q4, Q4)),
        (lambda out: matmul(a, b, out=out), a @ b),
        (lambda out: matvec(w, v, out=out), w.astype(np.float64) @ v),
        (lambda out: qmatvec(Q8, v64, out=out), qmatvec(Q8, v64)),
        (lambda out: dequantize(Q8, out=out), dequantize(Q8)),
    ]
    for run, want in cases:
        dtype = np.dtype(want.dtype if want.dtype != np.float64 else np.float32)
        out = RNG.standard_normal(want.shape).astype(dtype.newbyteorder())
        assert run(out) is out
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_a_weight_that_shares_out_is_read_before_out_is_written(norm):
    x = RNG.standard_normal((6, 40)).astype(np.float32)
    out = RNG.standard_normal((6, 40)).astype(np.float32)
    w = out[2].copy()
    if norm == "rmsnorm":
        want = rmsnorm_reference(x, w)
        got = rmsnorm(x, out[2], out=out)
    else:
        want = layernorm_reference(x, w, w, 1e-5)
        got = layernorm(x, out[2], out[2], out=out)
    assert got is out
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_attention_of_no_heads_is_empty():
    q = np.zeros((1, 0, 5, 8), np.float32)
    assert attention(q, q, q).shape == (1, 0, 5, 8)


def test_a_torch_bfloat16_tensor_is_written_as_out():
    """NumPy can't view it through DLPack; its bits are written as the inputs are read."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    x = torch.randn(4, 9).bfloat16()
    out = torch.empty(4, 9, dtype=torch.bfloat16)
    assert softmax(x, out=out) is out
    want = torch.softmax(x.float(), -1)
    torch.testing.assert_close(out.float(), want, rtol=1e-2, atol=1e-3)
    assert softmax(x, out=x) is x
    torch.testing.assert_close(x.float(), want, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_a_qtensor_of_strided_rows_is_read_whole(fmt):
    """Rows of a wider buffer, or in reverse: dequantize and the f32 product took them
    as a contiguous buffer (NumPy's ValueError)."""
    w = RNG.standard_normal((3, 64)).astype(np.float32)
    whole = quant.quantize(w, fmt)
    wide = np.zeros((3, 2 * whole.q.shape[1]), whole.q.dtype)
    wide[:, : whole.q.shape[1]] = whole.q
    for view in (
        QTensor(fmt, (3, 64), whole.d, wide[:, : whole.q.shape[1]]),
        QTensor(fmt, (3, 64), whole.d[::-1], whole.q[::-1]),
    ):
        flip = view.d[0, 0] != whole.d[0, 0] or not np.array_equal(view.q[0], whole.q[0])
        want = dequantize(whole)[::-1] if flip else dequantize(whole)
        np.testing.assert_array_equal(dequantize(view), want)
        assert view.tobytes() == QTensor(fmt, (3, 64), view.d.copy(), view.q.copy()).tobytes()
        x = RNG.standard_normal(64).astype(np.float32)
        np.testing.assert_allclose(
            qmatvec(view, x, activations="f32"), want @ x, rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_empty_qtensors_go_to_bytes_and_back(fmt):
    for shape in ((0, 64), (3, 0)):
        empty = quant.quantize(np.zeros(shape, np.float32), fmt)
        assert empty.tobytes() == b""
        back = QTensor.frombuffer(b"", fmt, shape)
        assert back.shape == shape and dequantize(back).shape == shape
    for buffer in (None, [1, 2]):
        _raises(kd.KernelArgumentError, "not bytes", QTensor.frombuffer, buffer, fmt, (1, 32))
