"""Messages a probe of the front end found raw or misleading: each is now a kdsl error
at the user's line with a fix that applies (or, for NumPy integer subscripts, works)."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from tests.test_errors import f32, line_of, raises


@kd.kernel
def rounds_to_digits(x, y):
    i = kd.indices(x.shape[0])
    y[i] = kd.round(x[i], 2)  # here


@kd.kernel
def complex_cast(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i].astype(np.complex64)  # here


@kd.kernel
def complex_constant(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * np.complex64(2)  # here


@kd.kernel
def long_double_local(x, y):
    a = kd.local(0.0, dtype="float128")  # here
    y[0] = a + x[0]


@kd.kernel
def formatted(x, y):
    i = kd.indices(x.shape[0])
    print(f"{x[i]:.3f}")  # here
    y[i] = x[i]


@kd.kernel
def real_part(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i].real  # here


W = np.arange(4, dtype=np.float32)


@kd.kernel
def reads_a_global_array(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * W[i]  # here


@pytest.mark.parametrize(
    ("kernel", "needles"),
    [
        (rounds_to_digits, ["kd.round takes one value", "kd.round(x[i] * 1e2) / 1e2"]),
        (complex_cast, ["is not a kdsl dtype"]),
        (complex_constant, ["dtype('complex64') is not a kdsl dtype"]),
        (long_double_local, ["'float128' is not a kdsl dtype"]),
        (formatted, ["formatted with '.3f'"]),
        (real_part, ["has no .real", "no complex numbers"]),
        (reads_a_global_array, ["used to subscript a NumPy array", "pass it as a parameter"]),
    ],
)
def test_the_users_line_and_a_fix(kernel, needles):
    err = raises(kd.TraceError, lambda: kernel(f32(4), f32(4)), *needles)
    assert err.loc is not None and err.loc.line == line_of(kernel.fn, "here")


def test_a_value_still_lacks_dunder_attributes_for_pythons_probes():
    @kd.kernel
    def probes(x, y):
        i = kd.indices(x.shape[0])
        assert not hasattr(x[i], "__array_interface__") and not hasattr(x[i], "real")
        y[i] = x[i]

    x = f32(4)
    y = np.empty_like(x)
    probes(x, y)
    np.testing.assert_array_equal(y, x)


def test_a_numpy_integer_subscripts_as_an_int():
    """It was refused ("subscript 0 of 'x' is a int64"): a constexpr from np.argmax."""

    @kd.kernel
    def row(x, y, r: kd.constexpr):
        i = kd.indices(y.shape[0])
        y[i] = x[r, i]

    x = np.random.default_rng(3).standard_normal((3, 5)).astype(np.float32)
    y = np.empty(5, np.float32)
    row(x, y, np.argmax(x.sum(axis=1)))
    np.testing.assert_array_equal(y, x[np.argmax(x.sum(axis=1))])


def test_a_0d_out_subscripted_with_an_index_names_its_dimensions():
    """It said "ellipsis object used as a value" (a tuple comparison with a value)."""

    @kd.kernel
    def add(x, y, out):
        i = kd.indices(x.shape[0])
        out[i] = x[i] + y[i]

    raises(
        kd.TraceError,
        lambda: add(f32(4), f32(4), np.zeros((), np.float32)),
        "'out' has 0 dimension(s) but is subscripted with 1",
    )


@kd.kernel
def running_sum(x, y):
    acc = kd.local(0.0, dtype=kd.f32)
    for t in kd.range(x.shape[0]):  # loop
        acc = acc + x[t]
        y[t] = acc


def test_a_local_rebound_in_a_loop_body_is_refused():
    """Python carries `acc = acc + x[t]` to the next iteration; the traced body read the
    local, which nothing updated: y was x, not its running sum."""
    err = raises(
        kd.TraceError, lambda: running_sum(f32(5), f32(5)), "'acc', a kd.local", "acc += ..."
    )
    assert err.loc.line == line_of(running_sum.fn, "loop")


def test_a_tensor_that_requires_grad_is_told_to_detach():
    torch = pytest.importorskip("torch")

    @kd.kernel
    def twice(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 2.0

    err = raises(
        kd.KernelArgumentError,
        lambda: twice(torch.ones(4, requires_grad=True), torch.empty(4)),
        "tensor.detach()",
    )
    assert "tensor.float()" not in err.fix


def test_an_array_returned_twice_is_named():
    """It said "not parameter 'z'", though z was made by kd.empty."""

    @kd.kernel
    def twice(x):
        i = kd.indices(x.shape[0])
        z = kd.empty(x.shape[0])
        z[i] = x[i]
        return z, z

    raises(kd.TraceError, lambda: twice(f32(3)), "array 'z' is returned twice", "z.copy()")
