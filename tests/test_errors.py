"""One test per user-facing error: the message says what and how to fix, at the user's line."""

from __future__ import annotations

import functools
import inspect
import os
import pickle
import traceback

import numpy as np
import pytest

import kdsl as kd
from tests.helpers import random_array


def line_of(fn, marker: str) -> int:
    """The line number of the line in `fn`'s source that contains `# marker`."""
    lines, start = inspect.getsourcelines(getattr(fn, "__wrapped__", fn))
    for offset, text in enumerate(lines):
        if f"# {marker}" in text:
            return start + offset
    raise AssertionError(f"marker {marker} not found")


def f32(*shape):
    return np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)


def raises(exc, call, *needles):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert "fix:" in message, message
    return info.value


# ------------------------------------------------------------------------- TraceError


def test_python_if_on_symbolic_value():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        if x[i] > 0:  # here
            y[i] = x[i]

    err = raises(kd.TraceError, lambda: k(f32(4), f32(4)), "Python `if`", "kd.where", "kd.when")
    assert err.loc.line == line_of(k, "here") and "if x[i] > 0:" in str(err)


def test_slicing_inside_kernel():
    @kd.kernel
    def k(x, y):
        y[0] = x[1:3]  # here

    err = raises(kd.TraceError, lambda: k(f32(4), f32(4)), "slicing array 'x'", "index variables")
    assert err.loc.line == line_of(k, "here")


def test_wrong_number_of_subscripts():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i]  # here

    err = raises(
        kd.TraceError,
        lambda: k(f32(4, 2), f32(4)),
        "'x' has 2 dimension(s)",
        "one index per dimension",
    )
    assert err.loc.line == line_of(k, "here")


def test_an_axis_the_array_lacks():
    @kd.kernel
    def k(w, x, y):
        i, j = kd.indices(w.shape[0], w.shape[1])  # here
        y[i] = kd.sum(w[i, j] * x[j], over=j)

    err = raises(
        kd.TraceError,
        lambda: k(f32(4), f32(4), f32(4)),
        "w.shape[1], but array 'w' has 1 dimension(s)",
        "pass an array of 2 dimensions or more as 'w'",
    )
    assert err.loc.line == line_of(k, "here")
    assert k(f32(3, 4), f32(4), f32(3)) is None  # a 2-d w is fine


def test_an_array_read_from_a_scalar_argument():
    @kd.kernel
    def k(a, y):
        i = kd.indices(a.shape[0])  # here
        y[i] = a[i]

    err = raises(
        kd.KernelArgumentError, lambda: k(2.0, f32(3)), "parameter 'a' has no .shape"
    )  # the caller's error, found while tracing: a TraceError too
    assert isinstance(err, kd.TraceError) and isinstance(err, AttributeError)
    assert type(err).__name__ == "ArgumentTraceError"  # (its class is one hasattr() sees too)
    assert type(pickle.loads(pickle.dumps(err))) is kd.ArgumentTraceError
    assert "pass an array as 'a'" in str(err)
    assert err.loc.line == line_of(k, "here")

    @kd.kernel
    def subscripted(a, y):
        i = kd.indices(y.shape[0])
        y[i] = a[i]

    raises(
        kd.ArgumentTraceError,
        lambda: subscripted(2.0, f32(3)),
        "'a' is subscripted, but it is a scalar",
    )


def test_an_array_attribute_numpy_has_and_a_kernel_lacks():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] / x.size  # here

    err = raises(kd.TraceError, lambda: k(f32(3), f32(3)), "x.size: inside a kernel", "x.shape[0]")
    assert not isinstance(err, kd.KernelArgumentError)  # the kernel's code is wrong
    assert isinstance(err, AttributeError) and type(err).__name__ == "TraceError"
    assert type(pickle.loads(pickle.dumps(err))) is kd.TraceError
    assert err.loc.line == line_of(k, "here")


# --------------------------------------- ArgumentTraceError: a bad argument, while tracing


def matmul_kernel():
    @kd.kernel
    def matmul(A, B, C):
        i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])  # shapes
        C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)  # store

    return matmul


def argument_error(call, *needles):
    """A bad argument, found while tracing: the KernelArgumentError (TypeError and
    ValueError) DESIGN §2 promises, and the TraceError that points at the kernel's line."""
    err = raises(kd.ArgumentTraceError, call, *needles)
    assert isinstance(err, kd.KernelArgumentError) and isinstance(err, kd.TraceError)
    assert isinstance(err, TypeError) and isinstance(err, ValueError)
    assert type(pickle.loads(pickle.dumps(err))) is kd.ArgumentTraceError
    return err


def test_an_array_of_too_few_dimensions_is_a_kernel_argument_error():
    matmul = matmul_kernel()
    a, b, c = f32(8, 4), f32(4, 6), f32(8, 6)
    err = argument_error(
        lambda: matmul(a, b.ravel(), c),
        "in kernel 'matmul': B.shape[1], but array 'B' has 1 dimension(s) here",
        "fix: pass an array of 2 dimensions or more as 'B', or change the kernel so that it "
        "reads only B.shape[0]",
    )
    assert err.loc.line == line_of(matmul, "shapes")
    assert "    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])" in str(err)
    try:
        matmul(a, b.ravel(), c)
    except (TypeError, ValueError) as caught:  # what a caller checking input writes
        assert "B.shape[1]" in str(caught)


def test_an_array_of_too_many_dimensions_is_a_kernel_argument_error():
    matmul = matmul_kernel()
    err = argument_error(
        lambda: matmul(f32(8, 4), f32(4, 6)[None], f32(8, 6)),
        "array 'B' has 3 dimension(s) but is subscripted with 2",
        "one index per dimension",
    )
    assert err.loc.line == line_of(matmul, "store")


def test_an_output_whose_dtype_cant_hold_the_value_is_a_kernel_argument_error():
    matmul = matmul_kernel()
    err = argument_error(
        lambda: matmul(f32(8, 4), f32(4, 6), np.zeros((8, 6), np.int32)),
        "storing a f32 value into 'C' (i32) would lose its kind",
        "pass a float32 array as 'C'",
    )
    assert err.loc.line == line_of(matmul, "store")


def test_a_0d_array_for_a_scalar_is_a_kernel_argument_error():
    @kd.kernel
    def k(x, s, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * s  # here

    err = argument_error(
        lambda: k(f32(3), np.array(2.0, np.float32), f32(3)), "argument 's' is a 0-d array"
    )
    assert err.loc.line == line_of(k, "here")


def test_a_scalar_written_as_an_array_is_a_kernel_argument_error():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i]  # here

    err = argument_error(lambda: k(f32(3), 1.0), "parameter 'y' is written, but it is a scalar")
    assert err.loc.line == line_of(k, "here")


def test_the_kernels_own_temporaries_stay_trace_errors():
    """A temporary's rank and dtype are the kernel's doing: no argument is wrong."""

    @kd.kernel
    def rank(x, y):
        t = kd.alloc((4,), kd.f32)
        i = kd.indices(t.shape[1])  # here
        y[i] = x[i]

    @kd.kernel
    def kind(x, y):
        t = kd.alloc((3,), kd.i32)
        i = kd.indices(x.shape[0])
        t[i] = x[i]  # here
        y[i] = t[i]

    for kernel, needle in ((rank, "t.shape[1], but array 't'"), (kind, "into 't' (i32)")):
        err = raises(kd.TraceError, functools.partial(kernel, f32(3), f32(3)), needle)
        assert not isinstance(err, kd.KernelArgumentError), kernel
        assert err.loc.line == line_of(kernel, "here")


def test_unpacking_one_index():
    @kd.kernel
    def k(x, y):
        (i,) = kd.indices(y.shape[0])
        y[i] = x[i]

    raises(
        kd.TraceError,
        lambda: k(f32(3), f32(3)),
        "can't be iterated or unpacked",
        "i = kd.indices(n)",
    )


def test_an_int64_constant_out_of_range():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] + 2**63  # 2**63 - 1 is the largest i64

    raises(
        kd.TraceError,
        lambda: k(np.arange(3), np.zeros(3, np.int64)),
        "9223372036854775808 does not fit in i64",
    )

    @kd.kernel
    def times(x, y, f: kd.constexpr):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * f

    raises(
        kd.TraceError, lambda: times(np.arange(3), np.zeros(3, np.int64), 2**64 + 3), "fit in i64"
    )
    y = np.zeros(3, np.int64)
    times(np.arange(3), y, 2**62)
    assert y[1] == 2**62


def test_mixing_int_and_float_needs_cast():
    @kd.kernel
    def k(x, n, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] + n[i]  # here

    err = raises(
        kd.TraceError,
        lambda: k(f32(3), np.arange(3, dtype=np.int32), f32(3)),
        "mixing f32 and i32",
        "astype",
    )
    assert err.loc.line == line_of(k, "here")


def test_float_into_int_buffer():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 2  # here

    err = raises(
        kd.TraceError, lambda: k(f32(3), np.zeros(3, np.int32)), "into 'y' (i32)", "astype(kd.i32)"
    )
    assert err.loc.line == line_of(k, "here")


@pytest.mark.parametrize(
    "body, fix",
    [
        ("np.float32(x[i])", "convert with x[i].astype(kd.f32)"),
        ("float(x[i])", "convert with x[i].astype(kd.f32) or x[i].astype(kd.f64)"),
        ("np.int16(x[i] * 2) + 1", "convert with (x[i] * 2).astype(kd.i16)"),
        ("int(v)", "convert with v.astype(kd.i64)"),
    ],
)
def test_a_conversion_python_makes_names_the_users_value(body, fix, tmp_path):
    """The fix is code that runs: the value converted as the user wrote it."""
    source = tmp_path / "user_kernel.py"
    source.write_text(
        "import numpy as np\nimport kdsl as kd\n\n\n@kd.kernel\ndef k(x, y):\n"
        f"    i = kd.indices(x.shape[0])\n    v = x[i] + 0.5\n    y[i] = {body}\n"
    )
    scope: dict[str, object] = {}
    exec(compile(source.read_text(), str(source), "exec"), scope)
    err = raises(kd.TraceError, lambda: scope["k"](f32(3), f32(3)), "of a symbolic value", fix)
    assert err.loc.line == 9 and str(err).endswith(f"fix: {fix}")


def test_read_write_race_under_implicit_loop():
    @kd.kernel
    def k(x):
        i = kd.indices(x.shape[0] - 1)
        x[i] = x[i + 1]  # here

    err = raises(kd.TraceError, lambda: k(f32(5)), "written at [i]", "read at [i + 1]", "kd.range")
    assert err.loc.line == line_of(k, "here")


def test_write_race_across_iterations():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        y[0] = x[i]  # here

    err = raises(kd.TraceError, lambda: k(f32(5), f32(1)), "written by every iteration", "kd.sum")
    assert err.loc.line == line_of(k, "here")


def test_local_updated_under_implicit_loop():
    @kd.kernel
    def k(x, y):
        acc = kd.local(0.0)
        i = kd.indices(x.shape[0])
        acc += x[i]  # here
        y[0] = acc

    err = raises(kd.TraceError, lambda: k(f32(5), f32(1)), "local 'acc'", "kd.sum(..., over=i)")
    assert err.loc.line == line_of(k, "here")


def test_local_used_after_its_loop():
    @kd.kernel
    def k(x, y):
        for i in kd.grid(x.shape[0]):
            acc = kd.local(x[i])
        y[0] = acc  # here

    err = raises(
        kd.TraceError,
        lambda: k(f32(3), f32(1)),
        "local 'acc' is used after the loop or kd.when block",
        "declare it before that block",
    )
    assert err.loc.line == line_of(k, "here")


def test_temporary_used_after_its_loop():
    @kd.kernel
    def k(x, y):
        for i in kd.grid(x.shape[0]):
            t = kd.alloc((3,), kd.f32)
            t[0] = x[i]
        t[1] = x[0]  # here

    err = raises(
        kd.TraceError,
        lambda: k(f32(3), f32(1)),
        "array 't' is used after the loop or kd.when block",
        "allocate it before that block",
    )
    assert err.loc.line == line_of(k, "here")


def test_loop_inside_a_per_element_when():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        with kd.when(x[i] > 0):
            for j in kd.range(3):  # here
                y[i] = x[i] + j

    err = raises(
        kd.TraceError, lambda: k(f32(3), f32(3)), "a kd.range loop inside `with kd.when", "kd.grid"
    )
    assert err.loc.line == line_of(k, "here")


def test_local_inside_a_per_element_when():
    @kd.kernel
    def k(x, y):
        i = kd.indices(x.shape[0])
        with kd.when(x[i] > 0):
            acc = kd.local(0.0)  # here
            y[i] = x[i] + acc

    err = raises(
        kd.TraceError,
        lambda: k(f32(3), f32(3)),
        "kd.local inside `with kd.when(cond)`",
        "declare the local before the kd.when",
    )
    assert err.loc.line == line_of(k, "here")


def test_primitive_outside_kernel():
    err = raises(
        kd.TraceError, lambda: kd.indices(4), "kd.indices was called outside a kernel", "@kd.kernel"
    )
    assert err.loc is not None


def test_returning_a_parameter():
    @kd.kernel
    def k(x):
        return x

    raises(
        kd.TraceError, lambda: k(f32(2)), "can return only arrays it created", "not parameter 'x'"
    )

    @kd.kernel
    def twice(x):
        i = kd.indices(x.shape[0])
        if x.ndim > 5:
            return None
        return x[i] * 2.0  # here

    err = raises(kd.TraceError, lambda: twice(f32(2)), "not a value of dtype f32")
    assert err.loc.line == line_of(twice, "here")  # (it had no line)


def test_a_kernel_on_a_method_says_to_define_it_outside_the_class():
    with pytest.raises(kd.KernelArgumentError, match="takes self") as info:

        class Layer:
            @kd.kernel
            def forward(self, x, y):
                y[0] = x[0]

    assert "outside the class" in info.value.fix


def test_an_array_of_the_other_byte_order_says_how_to_convert_it():
    @kd.kernel
    def copy(x, out):
        i = kd.indices(x.shape[0])
        out[i] = x[i]

    raises(
        kd.KernelArgumentError,
        lambda: copy(f32(3), f32(3).astype(">f4")),
        "dtype >f4 (the other byte order)",
        "out.astype(np.float32)",
    )


# ------------------------------------------------------------------------- ShapeError


def test_mismatched_shapes_name_both_arguments():
    @kd.kernel
    def matmul(A, B, C):
        i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
        C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)  # here

    err = raises(
        kd.ShapeError,
        lambda: matmul(f32(4, 3), f32(5, 2), f32(4, 2)),
        "A.shape[1]",
        "B.shape[0]",
        "= 3",
        "= 5",
    )
    assert isinstance(err, ValueError)
    assert err.loc.line == line_of(matmul, "here")


def _doubler_here():
    @kd.kernel
    def doubler(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 2  # here

    return doubler


def _doubler_there():
    @kd.kernel
    def doubler(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 2  # there

    return doubler


def test_code_shared_by_identical_kernels_reports_each_ones_line():
    """The object cache keys code by structure, not lines: a copy of a kernel elsewhere
    reuses the first one's code, and its errors still point at its own line."""
    for make, marker in ((_doubler_here, "here"), (_doubler_there, "there")):
        kernel = make()
        err = raises(kd.ShapeError, lambda k=kernel: k(f32(3), f32(4)), "x.shape[0]")
        assert err.loc.line == line_of(kernel, marker)
    assert kernel.stats()["objects_loaded"] == 1  # the second ran the first's code


def test_array_too_short_for_a_constant_range():
    @kd.kernel
    def k(x, y):
        i = kd.indices(8)
        y[i] = x[i]  # here

    err = raises(kd.ShapeError, lambda: k(f32(8), f32(6)), "8 <= y.shape[0]", "= 6")
    assert err.loc.line == line_of(k, "here")


# ------------------------------------------------------------------ KernelArgumentError


@kd.kernel
def add(x, y, out):
    i = kd.indices(x.shape[0])
    out[i] = x[i] + y[i]


def test_none_argument():
    err = raises(
        kd.KernelArgumentError,
        lambda: add(f32(3), None, f32(3)),
        "argument 'y' is None",
        "add(x, y, out)",
    )
    assert isinstance(err, TypeError)


def test_list_argument():
    raises(
        kd.KernelArgumentError,
        lambda: add([1.0, 2.0], f32(2), f32(2)),
        "argument 'x' is a list",
        "np.asarray",
    )


def test_unsupported_dtype():
    raises(
        kd.KernelArgumentError,
        lambda: add(np.ones(2, complex), f32(2), f32(2)),
        "dtype complex128",
        "astype",
    )


def test_wrong_argument_count():
    raises(
        kd.KernelArgumentError,
        lambda: add(f32(2), f32(2)),
        "missing argument 'out'",
        "add(x, y, out)",
    )


def test_torch_tensors_kdsl_cannot_read_and_bfloat16_ones():
    torch = pytest.importorskip("torch")

    @kd.kernel
    def add(x, y, out):
        i = kd.indices(x.shape[0])
        out[i] = x[i] + y[i]

    meta = torch.empty(6, device="meta")
    raises(
        kd.KernelArgumentError, lambda: add(meta, f32(6), f32(6)), "no memory that kdsl can read"
    )
    a = torch.randn(4)
    negated = torch.complex(a, a).conj().imag  # -a, as a view with torch's neg bit
    raises(kd.KernelArgumentError, lambda: add(negated, f32(4), f32(4)), "resolve_neg()")
    out = f32(4)
    add(negated.resolve_neg(), np.zeros(4, np.float32), out)
    np.testing.assert_array_equal(out, -a.numpy())
    # cached now, and CPU tensors take the fast path (tensor.numpy()): it still refuses
    raises(kd.KernelArgumentError, lambda: add(negated, f32(4), f32(4)), "resolve_neg()")
    add(a, a, out)
    np.testing.assert_array_equal(out, 2 * a.numpy())
    assert len(add._fast) == 1
    # bfloat16, which NumPy can't read through DLPack, is read through its bits
    bf16 = torch.randn(5).bfloat16()
    y, out = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    add(bf16, y, out)
    np.testing.assert_array_equal(out, bf16.float().numpy() + y)


def test_a_python_int_argument_too_large_for_its_use():
    """A Python int takes the dtype of the integer array it meets (int8 here): 300 would
    wrap to 44, as NumPy 2 refuses to do; so would an expression of arguments (a + 1).
    An explicit cast wraps, as NumPy's astype does."""

    @kd.kernel
    def scale(x, a, out):
        i = kd.indices(x.shape[0])
        out[i] = x[i] * a  # here

    @kd.kernel
    def scale_next(x, a, out):
        i = kd.indices(x.shape[0])
        out[i] = x[i] * (a + 1)

    @kd.kernel
    def mix(x, seed, out):
        i = kd.indices(x.shape[0])
        out[i] = x[i] ^ kd.cast(seed, kd.u32)

    x = np.arange(-3, 4, dtype=np.int8)
    for bad in (300, -129):
        out = np.zeros(7, np.int8)
        call = functools.partial(scale, x, bad, out)
        err = raises(kd.KernelArgumentError, call, "-128 <= a <= 127 ('a' meets i8 values")
        assert f"(a = {bad})" in str(err) and err.loc.line == line_of(scale, "here")
        with pytest.raises(kd.KernelArgumentError, match="'a' meets i8 values"):
            scale.interpret(x, bad, out)
    out = np.zeros(7, np.int8)
    scale(x, -42, out)
    np.testing.assert_array_equal(out, x * np.int8(-42))
    call = functools.partial(scale_next, x, 127, np.zeros(7, np.int8))
    raises(kd.KernelArgumentError, call, "-128 <= a + 1 <= 127", "(a = 127)")
    call = functools.partial(scale, np.ones(2, np.uint64), -1, np.ones(2, np.uint64))
    raises(kd.KernelArgumentError, call, "0 <= a")
    seeds = np.arange(3, dtype=np.uint32)
    for seed in (2**40 + 5, -1):
        out = np.zeros(3, np.uint32)
        mix(seeds, seed, out)
        np.testing.assert_array_equal(out, seeds ^ np.int64(seed).astype(np.uint32))


def test_decorating_what_is_not_a_function():
    for thing in (int, 3, print):
        raises(kd.KernelArgumentError, lambda: kd.kernel(thing), "decorates a Python function")  # noqa: B023


def test_read_only_output():
    out = f32(3)
    out.flags.writeable = False
    raises(
        kd.KernelArgumentError, lambda: add(f32(3), f32(3), out), "'out' is read-only", "writeable"
    )


def test_aliasing_output():
    x = f32(6)
    raises(
        kd.KernelArgumentError,
        lambda: add(x[:3], f32(3), x[2:5]),
        "'out' and 'x' share memory",
        "np.copy",
    )


class _FakeCudaArray:
    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        raise AssertionError("must not be read")


def test_mixing_cuda_and_host_arrays():
    raises(
        kd.KernelArgumentError,
        lambda: add(_FakeCudaArray(), f32(2), f32(2)),
        "'x' is a CUDA array and 'y' a host array",
        ".cpu()",
        "device='cuda'",
    )


def test_cuda_array_to_a_forced_cpu_call():
    raises(
        kd.KernelArgumentError,
        lambda: add[kd.cpu](_FakeCudaArray(), f32(2), f32(2)),
        "'x' is a CUDA array, but this call runs on the CPU",
        ".cpu()",
    )


def test_stream_on_a_cpu_call():
    raises(
        kd.KernelArgumentError,
        lambda: add(f32(2), f32(2), f32(2), stream=1),
        "stream= was given, but this call runs on the CPU",
        "only with CUDA arrays",
    )


def test_cuda_call_without_a_gpu_names_the_extra(monkeypatch):
    from kdsl.targets.cuda import driver

    monkeypatch.setattr(driver, "unavailable_reason", lambda: "no NVIDIA driver was found")
    raises(
        kd.KernelArgumentError,
        lambda: add[kd.cuda](_FakeCudaArray(), _FakeCudaArray(), _FakeCudaArray()),
        "the CUDA target can't run: no NVIDIA driver",
        'pip install "kdsl[cuda]"',
    )


# ------------------------------------------------------------------------- BoundsError


def test_an_error_of_a_cached_call_shows_no_kdsl_internals():
    """A signature already run takes the fast path of KernelFunction's call; its errors,
    like the careful path's, carry no frames from under kdsl's entry point."""
    kernel = _doubler_here()
    kernel(f32(3), f32(3))
    with pytest.raises(kd.ShapeError, match="x.shape") as info:
        kernel(f32(3), f32(4))
    frames = traceback.extract_tb(info.value.__traceback__)
    inside = [f for f in frames if f"kdsl{os.sep}" in f.filename]
    assert inside and all(f.filename.endswith(f"kdsl{os.sep}kernel.py") for f in inside)
    assert kernel.stats()["specializations"] == 1


def test_checks_turn_out_of_bounds_into_index_error():
    @kd.kernel(checks=True)
    def gather(x, idx, y):
        i = kd.indices(idx.shape[0])
        y[i] = x[idx[i]]  # here

    err = raises(
        kd.BoundsError,
        lambda: gather(f32(4), np.array([0, 7], np.int64), f32(2)),
        "a subscript of 'x' of shape (4,) fell outside it",
    )
    assert isinstance(err, IndexError)
    assert err.loc.line == line_of(gather, "here")


def test_interpreter_reports_out_of_bounds_too():
    @kd.kernel
    def gather(x, idx, y):
        i = kd.indices(idx.shape[0])
        y[i] = x[idx[i]]

    with pytest.raises(kd.BoundsError):
        gather.interpret(f32(4), np.array([0, -1], np.int64), f32(2))


def test_a_gather_is_checked_without_checks():
    """A subscript loaded from data can't be proven in bounds: it is checked whatever
    `checks=` says (before, [0, 10**9] read far outside x and crashed the process)."""

    @kd.kernel
    def gather(x, idx, y):
        i = kd.indices(idx.shape[0])
        y[i] = x[idx[i]]  # here

    @kd.kernel
    def gather_vectorized(x, idx, y):
        i = kd.indices(idx.shape[0])
        y[i] = x[idx[i]]

    gather_vectorized.schedule(kd.cpu)(lambda s: s.vectorize("i", 16))
    x, rng = f32(37), np.random.default_rng(1)
    for kernel in (gather, gather_vectorized):
        for bad in (10**9, -5, 37):
            idx = rng.integers(0, 37, 21)
            idx[13] = bad
            call = functools.partial(kernel, x, idx, f32(21))
            err = raises(kd.BoundsError, call, "subscript of 'x' of shape (")
            assert kernel is not gather or err.loc.line == line_of(gather, "here")
        idx, y = rng.integers(0, 37, 21), f32(21)
        kernel(x, idx, y)
        np.testing.assert_array_equal(y, x[idx])


def test_subscripts_from_locals_of_data_and_from_scalar_arguments_are_checked():
    """What makes a subscript unprovable may come through a local (`j = idx[i]`) or from
    a scalar argument (`x[i + n]`): those are checked too, without checks=True (both
    crashed the process before)."""

    @kd.kernel
    def through_a_local(x, idx, y):
        for i in kd.grid(idx.shape[0]):
            j = kd.local(idx[i], kd.i64)
            y[i] = x[j]

    @kd.kernel
    def shifted(x, n, y):
        i = kd.indices(y.shape[0])
        y[i] = x[i + n]

    x = f32(5)
    call = functools.partial(through_a_local, x, np.array([1, 2, 10**7]), f32(3))
    raises(kd.BoundsError, call, "subscript of 'x' of shape (")
    # (linear in the loop: one check per call, before the loop runs)
    raises(kd.BoundsError, functools.partial(shifted, x, 10**8, f32(3)), "i + n of 'x'")
    y = f32(3)
    through_a_local(x, np.array([4, 0, 2]), y)
    np.testing.assert_array_equal(y, x[[4, 0, 2]])
    shifted(x, 2, y)
    np.testing.assert_array_equal(y, x[2:])


def test_a_temporary_too_large_to_count_is_out_of_memory():
    """2**62 floats is 2**64 bytes: the size wrapped to 0 and the loop wrote past a
    tiny allocation (a crash) before the size was computed with overflow checks."""

    @kd.kernel
    def one(n, out):
        t = kd.zeros((n,), kd.f32)
        for i in kd.range(n):
            t[i] = 1.0
        out[0] = t[1]

    for n in (2**62, 2**61 + 1):
        with pytest.raises(kd.KdslError, match="out of memory"):
            one(n, np.zeros(1, np.float32))
    out = np.zeros(1, np.float32)
    one(3, out)
    assert out[0] == 1.0


# ------------------------------------------------------------------------- CompileError


def test_verifier_failure_is_a_compile_error():
    from kdsl.ir.nodes import Const, Kernel, Loop, LoopExec, LoopKind
    from kdsl.ir.verify import verify

    bad = Kernel(
        "k", (), (), (Loop("i", Const(3, kd.f32), LoopKind.PARALLEL, (), LoopExec.SERIAL),)
    )
    with pytest.raises(kd.CompileError, match="extent of loop i is f32"):
        verify(bad, "traced")


def test_an_expression_too_deep_for_the_compiler():
    @kd.kernel
    def deep(x, y):
        i = kd.indices(x.shape[0])
        v = x[i]
        for _ in range(2000):  # one expression, 4000 levels deep
            v = v * 1.0001 + 1.0
        y[i] = v

    err = raises(kd.CompileError, lambda: deep(f32(4), f32(4)), "nested too deeply", "kd.local")
    assert err.loc.line == deep.fn.__code__.co_firstlineno  # the kernel's def, at least


def test_a_chain_deep_enough_to_recurse_in_the_standard_library_is_explained():
    """600 steps hit the limit inside dataclasses (kdsl's hashing calls it), which was
    taken for the user's own recursion and raised bare."""

    @kd.kernel
    def chain(x, y):
        i = kd.indices(x.shape[0])
        v = x[i]
        for _ in range(600):
            v = v + 1.0
        y[i] = v

    raises(kd.CompileError, lambda: chain(f32(4), f32(4)), "nested too deeply")


def test_a_users_recursion_stays_a_recursion_error():
    def helper(v):
        return helper(v)  # the user's own bug: Python says so, kdsl does not explain it

    @kd.kernel
    def recursing(x, y):
        i = kd.indices(x.shape[0])
        y[i] = helper(x[i])

    with pytest.raises(RecursionError):
        recursing(f32(4), f32(4))


def test_hasattr_of_a_scalar_is_false_inside_a_kernel():
    @kd.kernel
    def duck(x, a, y):
        i = kd.indices(y.shape[0])
        y[i] = x[i] * (a[i] if hasattr(a, "shape") else a)

    x, y = f32(3), f32(3)
    duck(x, 2.0, y)
    np.testing.assert_allclose(y, 2 * x)
    duck(x, np.full(3, 3, np.float32), y)
    np.testing.assert_allclose(y, 3 * x)


def test_a_method_is_a_kernel_too():
    class Library:
        def add_one(self, x, y):
            i = kd.indices(x.shape[0])
            y[i] = x[i] + 1

    x, y = f32(4), f32(4)
    kd.kernel(Library().add_one)(x, y)
    np.testing.assert_array_equal(y, x + 1)


def test_every_error_is_a_kdsl_error():
    for cls in (
        kd.TraceError,
        kd.ArgumentTraceError,
        kd.ShapeError,
        kd.KernelArgumentError,
        kd.ScheduleError,
        kd.CompileError,
        kd.BoundsError,
    ):
        assert issubclass(cls, kd.KdslError)


def test_interleaved_views_do_not_alias():
    """The even and odd elements of one array, a complex array's .real and .imag: their
    address ranges overlap but their elements never meet (they used to be refused)."""

    @kd.kernel
    def add(x, y, out):
        i = kd.indices(x.shape[0])
        out[i] = x[i] + y[i]

    x, y = f32(11), f32(5)
    want = x[::2][:5] + y
    add(x[:10:2], y, x[1::2])
    np.testing.assert_array_equal(x[1::2], want)
    z = np.zeros(5, np.complex64)
    add(x[:5], y, z.real)
    add(y, y, z.imag)
    np.testing.assert_array_equal(z, (x[:5] + y) + 1j * (y + y))
    for shared in (x[2:11:2], x[1:6]):  # elements that do meet
        raises(kd.KernelArgumentError, functools.partial(add, x[:10:2], y, shared), "share memory")


def test_views_of_one_matrix_that_share_no_element_do_not_alias():
    """A matrix's left and right column halves, its even and odd rows, a block and
    another block's transpose: their address ranges meet, their elements don't (they
    were refused: the entry compares ranges; NumPy's exact test now decides)."""

    @kd.kernel
    def double(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = 2 * x[i, j]

    a = random_array(np.random.default_rng(4), (6, 8), np.float32)
    for source, target in (
        (lambda m: m[:, :4], lambda m: m[:, 4:]),
        (lambda m: m[::2], lambda m: m[1::2]),
        (lambda m: m[:4, :4].T, lambda m: m[:4, 4:]),
    ):
        m = a.copy()
        want = 2 * source(a)
        double(source(m), target(m))
        np.testing.assert_array_equal(target(m), want)
        np.testing.assert_array_equal(source(m), source(a))  # (read, not written)
    m = a.copy()
    with pytest.raises(kd.KernelArgumentError, match="'y' and 'x' share memory"):
        double(m[:, :4], m[:, 2:6])  # columns 2 and 3 meet
    np.testing.assert_array_equal(m, a)  # refused before writing anything


def test_a_shape_that_meets_narrow_integers():
    """A shape is a weak integer: compared with int8 values it is compared exactly (200 as
    an int8 was -56, so `x[i] < x.shape[0]` was False); in arithmetic it must fit, as
    NumPy 2 requires (checked at entry, like a Python int argument)."""

    @kd.kernel
    def below_length(x, out):
        i = kd.indices(x.shape[0])
        out[i] = kd.where((x[i] < x.shape[0]) & (x[i] < 300), 1, 0).astype(kd.i8)

    @kd.kernel
    def per_length(x, out):
        i = kd.indices(x.shape[0])
        out[i] = x[i] // x.shape[0]

    x = np.random.default_rng(3).integers(-128, 128, 200).astype(np.int8)
    out = np.zeros(200, np.int8)
    below_length(x, out)
    np.testing.assert_array_equal(out, (x.astype(int) < 200).astype(np.int8))
    call = functools.partial(per_length, x, np.zeros(200, np.int8))
    raises(kd.KernelArgumentError, call, "-128 <= x.shape[0] <= 127", "(x.shape[0] = 200)")
    small = x[:100]
    out = np.zeros(100, np.int8)
    per_length(small, out)
    np.testing.assert_array_equal(out, small // np.int8(100))


def test_forcing_cuda_without_it_says_what_is_missing(monkeypatch):
    """It said to move the host arrays to the GPU, which can't work without CUDA."""
    from kdsl.targets.cuda import driver

    monkeypatch.setattr(driver, "unavailable_reason", lambda: "cuda-python is not installed")

    @kd.kernel
    def copy(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i]

    raises(
        kd.KernelArgumentError,
        lambda: copy[kd.cuda](f32(3), f32(3)),
        "cuda-python is not installed",
        ".[cuda]",
    )


# ------------------------------------------------------------------- host facts


@pytest.mark.parametrize("level", [0, -1, True, "2", 2.0])
def test_a_cache_level_that_is_not_one(level):
    raises(
        kd.KdslError,
        lambda: kd.cpu.cache_bytes(level),
        f"kd.cpu.cache_bytes({level!r})",
        "a cache level is 1, 2 or 3",
        "ask for level 1, 2 or 3",
    )
