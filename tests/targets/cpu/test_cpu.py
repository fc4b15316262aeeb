"""The CPU target: dtypes, operator semantics, specialization, inspection and threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kdsl as kd
from tests.helpers import check_kernel, random_array

NUMERIC = [
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
]


@kd.kernel
def double(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] + x[i]


@pytest.mark.parametrize("dtype", NUMERIC)
def test_every_dtype_adds(dtype):
    x = random_array(np.random.default_rng(3), (37,), dtype)
    with np.errstate(over="ignore"):
        want = (x.astype(np.float32) * 2).astype(dtype) if dtype == np.float16 else x + x
    check_kernel(double, [x, np.empty_like(x)], {1: want}, rtol=1e-3)


def test_bf16_computes_in_f32():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = random_array(np.random.default_rng(4), (33,), np.float32).astype(ml_dtypes.bfloat16)
    want = (x.astype(np.float32) * 2).astype(ml_dtypes.bfloat16)
    check_kernel(double, [x, np.empty_like(x)], {1: want.astype(np.float32)}, rtol=0, atol=0)


@kd.kernel
def logic(a, b, out):
    i = kd.indices(a.shape[0])
    out[i] = (a[i] & ~b[i]) | (a[i] ^ b[i])


def test_bool_arrays():
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 2, 19).astype(bool), rng.integers(0, 2, 19).astype(bool)
    check_kernel(logic, [a, b, np.empty(19, bool)], {2: (a & ~b) | (a ^ b)})


@kd.kernel
def divmod_kernel(a, b, q, r):
    i = kd.indices(a.shape[0])
    q[i] = a[i] // b[i]
    r[i] = a[i] % b[i]


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16, np.float32, np.float64])
def test_floor_division_and_modulo(dtype):
    rng = np.random.default_rng(6)
    a = random_array(rng, (64,), dtype)
    b = random_array(rng, (64,), dtype)
    b[::7] = 0  # integer division by zero gives 0, never a crash
    if np.dtype(dtype).kind == "i":
        a[1], b[1] = np.iinfo(dtype).min, -1
    with np.errstate(all="ignore"):
        q, r = np.floor_divide(a, b), np.remainder(a, b)
    check_kernel(divmod_kernel, [a, b, np.empty_like(a), np.empty_like(a)], {2: q, 3: r}, rtol=1e-6)


@kd.kernel
def shifts(a, s, left, right):
    i = kd.indices(a.shape[0])
    left[i] = a[i] << s[i]
    right[i] = a[i] >> s[i]


def test_shifts_out_of_range_saturate():
    a = np.array([1, -8, 255, -1, 7], np.int32)
    s = np.array([3, 1, 40, 33, 31], np.int32)
    left = np.array([8, -16, 0, 0, np.int32(-2147483648)], np.int32)
    right = np.array([0, -4, 0, -1, 0], np.int32)
    check_kernel(shifts, [a, s, np.empty_like(a), np.empty_like(a)], {2: left, 3: right})


@kd.kernel
def to_int(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i].astype(kd.i32)


def test_float_to_int_saturates():
    x = np.array([1.9, -1.9, 1e20, -1e20, np.nan, 0.5], np.float32)
    want = np.array([1, -1, 2**31 - 1, -(2**31), 0, 0], np.int32)
    check_kernel(to_int, [x, np.empty(6, np.int32)], {1: want})


def test_one_compile_serves_all_sizes():
    @kd.kernel
    def copy(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i]

    for n in (0, 1, 7, 1000):
        x = np.arange(n, dtype=np.float32)
        y = np.empty_like(x)
        copy(x, y)
        np.testing.assert_array_equal(x, y)
    assert copy.stats()["compilations"] == 1
    copy(np.arange(4.0)[::2], np.empty(2))  # a new dtype and layout: a second specialization
    assert copy.stats()["compilations"] == 2


def test_static_shapes_specialize_per_shape():
    @kd.kernel(static_shapes=True)
    def copy(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i]

    for n in (3, 5, 3):
        copy(np.ones(n, np.float32), np.empty(n, np.float32))
    assert copy.stats()["compilations"] == 2
    assert "range(5)" in str(copy.ir(np.ones(5, np.float32), np.empty(5, np.float32)))


def test_constexpr_is_baked_in():
    @kd.kernel
    def power(x, y, n: kd.constexpr):
        i = kd.indices(x.shape[0])
        v = x[i]
        for _ in range(n - 1):  # plain Python: n is an int while tracing
            v = v * x[i]
        y[i] = v

    x = np.linspace(-2, 2, 9).astype(np.float32)
    for n in (1, 3):
        y = np.empty_like(x)
        power(x, y, n)
        np.testing.assert_allclose(y, x**n, rtol=1e-6)
    assert power.stats()["compilations"] == 2
    z = np.empty_like(x)
    power(x, z, kd.constexpr(3))
    np.testing.assert_allclose(z, x**3, rtol=1e-6)


class _DLPackOnly:
    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_dlpack_arguments():
    x = np.arange(5, dtype=np.float32)
    y = np.empty(5, np.float32)
    double(_DLPackOnly(x), y)
    np.testing.assert_array_equal(y, 2 * x)


def test_threads_share_one_compilation():
    @kd.kernel
    def triple(x, y):
        i = kd.indices(x.shape[0])
        y[i] = 3 * x[i]

    errors = []

    def work(seed: int) -> None:
        x = random_array(np.random.default_rng(seed), (1000,), np.float32)
        for _ in range(50):
            y = np.empty_like(x)
            triple(x, y)
            if not np.allclose(y, 3 * x):
                errors.append(seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert triple.stats()["compilations"] == 1


def test_inspection():
    x, y = np.ones(8, np.float32), np.empty(8, np.float32)
    assert "define" in double.llvm(x, y) and "kdsl_double" in double.llvm(x, y, optimized=False)
    assert "kdsl_double" in double.asm(x, y)
    assert "for i in range(x.shape[0]):  # parallel" in str(double.ir(x, y))
    assert double.ir(x, y)._repr_html_().startswith("<pre>")


@kd.kernel
def rows_through_a_temporary(x, y):
    for i in kd.grid(x.shape[0]):
        row = kd.alloc([x.shape[1]], x.dtype)
        for j in kd.grid(x.shape[1]):
            row[j] = x[i, j] * 2.0
        for j in kd.grid(x.shape[1]):
            # Reversed, so the two loops cannot fuse and shrink the row to a register.
            y[i, j] = row[x.shape[1] - 1 - j] + 1.0


def test_heap_temporaries_start_on_a_cache_line_once_per_loop():
    """A run-time-sized temporary lives on the heap, 64-byte aligned like a stack one (a
    packed panel on malloc's 16 bytes split every other vector load across two lines),
    allocated once before the loop whose every iteration uses it, not per iteration."""
    x = random_array(np.random.default_rng(5), (300, 37), np.float32)
    y = np.empty_like(x)
    rows_through_a_temporary(x, y)
    np.testing.assert_allclose(y, x[:, ::-1] * 2 + 1, rtol=1e-6)
    text = rows_through_a_temporary.llvm(x, y, optimized=False)
    assert '@"aligned_alloc"(i64 64,' in text and "malloc" not in text
    task = text[text.index("define internal") :]
    assert task.index('@"aligned_alloc"(') < task.index("i.body:") < task.index("i.end:")
    assert task.index("i.end:") < task.rindex('call void @"free"')


@given(
    n=st.integers(0, 300),
    step=st.integers(1, 4),
    dtype=st.sampled_from([np.float32, np.int16, np.uint8]),
)
def test_strided_and_reversed_views(n, step, dtype):
    base = random_array(np.random.default_rng(n), (n * step + 1,), dtype)
    for view in (base[::step], base[::-step]):
        with np.errstate(over="ignore"):
            check_kernel(double, [view, np.empty(view.shape, dtype)], {1: view + view})


def test_reductions_reassociate_unless_strict_fp():
    def row_sum(x, out):
        i, j = kd.indices(x.shape[0], x.shape[1])
        out[i] = kd.sum(x[i, j], over=j)

    x, out = np.ones((3, 5), np.float32), np.empty(3, np.float32)
    assert "reassoc" in kd.kernel(row_sum).llvm(x, out, optimized=False)
    strict = kd.kernel(row_sum, strict_fp=True)
    assert "reassoc" not in strict.llvm(x, out, optimized=False)
    strict(x, out)
    np.testing.assert_array_equal(out, 5)
