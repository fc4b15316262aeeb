"""Vector accesses a few elements apart (`a[2·i + 1]`, `x[i, 2]` of (n, 3) pixels) are
whole vector loads and shuffles, and masked or whole stores (strided.py), never gathers
or scatters where the elements are adjacent: against NumPy on fresh random data, in
masked tails, with nothing read outside the arrays and nothing written that the kernel
does not write."""

from __future__ import annotations

import ctypes
import functools
import mmap
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kdsl as kd
from tests.helpers import keyed_rng, random_array

SIZES = [0, 1, 2, 7, 15, 16, 17, 31, 97, 1009]  # primes and non-multiples of 16
DTYPES = [np.float32, np.float64, np.int32]
_PAGE = mmap.PAGESIZE


def guarded(values: np.ndarray, at_end: bool = True) -> np.ndarray:
    """A copy of the 1-D `values` whose bytes end (or start) exactly at an inaccessible
    page: a kernel that reads past the array's last (first) element crashes."""
    size = values.nbytes
    pages = -(-max(size, 1) // _PAGE)
    region = mmap.mmap(-1, (pages + 2) * _PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc = ctypes.CDLL(None, use_errno=True)
    for page in (base, base + (pages + 1) * _PAGE):
        assert libc.mprotect(ctypes.c_void_p(page), _PAGE, 0) == 0  # PROT_NONE
    start = _PAGE + (pages * _PAGE - size if at_end else 0)
    out = np.frombuffer(region, values.dtype, count=values.size, offset=start)
    out[...] = values
    return out


def allclose(got: np.ndarray, want: np.ndarray) -> None:
    if got.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-6 if got.dtype == np.float32 else 1e-12)
    else:
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------ kernels


@functools.cache
def reading(s: int, offset: int):
    """y[i] from two elements of each run of s: one at `offset` (past the run when it is
    s or more), the run's last one."""

    @kd.kernel
    def pick(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[s * i + offset] * 3 + x[s * i + s - 1]

    return pick


def reading_numpy(x: np.ndarray, n: int, s: int, offset: int) -> np.ndarray:
    return x[offset : offset + s * n : s][:n] * 3 + x[s - 1 :: s][:n]


@functools.cache
def writing(s: int, offset: int):
    """One element of each run of s written; the others untouched."""

    @kd.kernel
    def put(x, y):
        i = kd.indices(x.shape[0])
        y[s * i + offset] = x[i] * 2 + 1

    return put


@functools.cache
def rotating(s: int, grid: bool):
    """Every element of each run written from another of its run: in one loop
    (`kd.grid`: its stores fill the runs) or in one loop per statement."""

    def body(x, y, i):
        for p in range(s):
            y[s * i + p] = x[s * i + (p + 1) % s] * (p + 1) + x[s * i + p]

    @kd.kernel
    def rotate(x, y):
        if grid:
            for i in kd.grid(x.shape[0] // s):
                body(x, y, i)
        else:
            body(x, y, kd.indices(x.shape[0] // s))

    return rotate


def rotating_numpy(x: np.ndarray, y: np.ndarray, s: int) -> np.ndarray:
    want = y.copy()
    runs = x.size // s
    for p in range(s):
        want[p : s * runs : s] = x[(p + 1) % s :: s][:runs] * (p + 1) + x[p::s][:runs]
    return want


@kd.kernel
def cmul(a, b, c):
    i = kd.indices(a.shape[0] // 2)
    c[2 * i] = a[2 * i] * b[2 * i] - a[2 * i + 1] * b[2 * i + 1]
    c[2 * i + 1] = a[2 * i] * b[2 * i + 1] + a[2 * i + 1] * b[2 * i]


@kd.kernel
def cmul_grid(a, b, c):
    for i in kd.grid(a.shape[0] // 2):
        c[2 * i] = a[2 * i] * b[2 * i] - a[2 * i + 1] * b[2 * i + 1]
        c[2 * i + 1] = a[2 * i] * b[2 * i + 1] + a[2 * i + 1] * b[2 * i]


def cmul_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    re = a[0::2] * b[0::2] - a[1::2] * b[1::2]
    im = a[0::2] * b[1::2] + a[1::2] * b[0::2]
    return np.stack([re, im], axis=1).reshape(-1)


# ------------------------------------------------------------------------------ reads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [2, 3, 4])
@pytest.mark.parametrize("offset", [0, 1, 5])
@pytest.mark.parametrize("n", SIZES)
def test_reads_a_few_apart(n, s, offset, dtype):
    """Two elements of each run, one load of the runs for both; the arrays end at an
    inaccessible page (a tail's masked lanes, or the elements past the last one read
    in the last run, must not be read)."""
    rng = keyed_rng("reads", n, s, offset)
    length = 0 if n == 0 else max(s * (n - 1) + offset, s * n - 1) + 1
    x = guarded(random_array(rng, (length,), dtype))
    y = random_array(rng, (n,), dtype)
    reading(s, offset)(x, y)
    allclose(y, reading_numpy(x, n, s, offset))


@pytest.mark.parametrize("n", [1, 17, 100])
def test_reads_start_at_the_first_element(n):
    """The run of x[3·i + 2] starts at x[3·i], which is read only if the kernel reads it:
    an array that starts at an inaccessible page."""

    @kd.kernel
    def last_of_three(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[3 * i + 2]

    x = guarded(random_array(keyed_rng("start", n), (3 * n,), np.float32), at_end=False)
    y = np.zeros(n, np.float32)
    last_of_three(x, y)
    np.testing.assert_array_equal(y, x[2::3])


@pytest.mark.parametrize("dtype", [np.float16, np.int8, np.uint16, np.int64, np.bool_])
def test_other_dtypes(dtype):
    @kd.kernel
    def odd(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[2 * i + 1]

    n = 45
    x = guarded(random_array(keyed_rng("dtypes", str(dtype)), (2 * n,), dtype))
    y = random_array(keyed_rng("out", str(dtype)), (n,), dtype)
    odd(x, y)
    np.testing.assert_array_equal(y, x[1::2])


def test_a_strided_argument_reads_through_gathers():
    """x[::2] is not adjacent elements: a run-time check sends it to gathers."""
    n = 37
    base = random_array(keyed_rng("strided arg"), (4 * n + 8,), np.float32)
    y = np.zeros(n, np.float32)
    reading(2, 1)(base[::2], y)
    allclose(y, reading_numpy(base[::2], n, 2, 1))


def test_a_sum_over_interleaved_pairs():
    """A complex dot product's real part: a reduction whose lanes read pairs."""

    @kd.kernel
    def real_dot(a, b, out):
        k = kd.indices(a.shape[0] // 2)
        out[0] = kd.sum(a[2 * k] * b[2 * k] - a[2 * k + 1] * b[2 * k + 1], over=k)

    for n in (0, 1, 15, 1001):
        rng = keyed_rng("dot", n)
        a, b = (guarded(random_array(rng, (2 * n,), np.float64)) for _ in "ab")
        out = np.zeros(1)
        real_dot(a, b, out)
        want = (a[0::2] * b[0::2] - a[1::2] * b[1::2]).sum()
        np.testing.assert_allclose(out[0], want, rtol=1e-12, atol=1e-12)


def test_rows_of_a_2d_array():
    """A row sum of each row's interleaved pairs' products: v along the last axis, the
    row uniform."""

    @kd.kernel
    def pair_products(x, out):
        r, k = kd.indices(x.shape[0], x.shape[1] // 2)
        out[r] = kd.sum(x[r, 2 * k] * x[r, 2 * k + 1], over=k)

    x = random_array(keyed_rng("rows"), (5, 2 * 37), np.float32)
    out = np.zeros(5, np.float32)
    pair_products(x, out)
    np.testing.assert_allclose(out, (x[:, 0::2] * x[:, 1::2]).sum(axis=1), rtol=1e-5)


def test_a_load_in_a_side_of_where_reads_only_where_chosen():
    """The last lane's x[2·i + 3] would be past the end: it is never read."""

    @kd.kernel
    def choose(x, y):
        i = kd.indices(y.shape[0])
        y[i] = kd.where(x[2 * i] > 0, x[2 * i + 1], x[2 * i])

    @kd.kernel
    def ahead(x, y):
        i = kd.indices(y.shape[0])
        y[i] = kd.where(i < y.shape[0] - 1, x[2 * i + 3], x[2 * i])

    for n in (1, 16, 33):
        x = guarded(random_array(keyed_rng("where", n), (2 * n,), np.float32))
        y = np.zeros(n, np.float32)
        choose(x, y)
        np.testing.assert_array_equal(y, np.where(x[0::2] > 0, x[1::2], x[0::2]))
        ahead(x, y)
        np.testing.assert_array_equal(y, np.append(x[3::2], x[2 * n - 2]))


def test_checked_subscripts_raise_before_reading():
    """A subscript from a scalar argument is checked per access (strided loads read
    only their own elements, after the check)."""

    @kd.kernel
    def shifted(x, y, k):
        i = kd.indices(y.shape[0])
        y[i] = x[2 * i + k] + x[2 * i + 1]

    n = 33
    x = guarded(random_array(keyed_rng("checked"), (2 * n + 1,), np.float32))
    y = np.zeros(n, np.float32)
    shifted(x, y, 2)
    np.testing.assert_array_equal(y, x[2::2][:n] + x[1::2][:n])
    with pytest.raises(IndexError):
        shifted(x, y, 3)


# ------------------------------------------------------------------------------ writes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [2, 3, 4])
@pytest.mark.parametrize("offset", [0, 1, 6])
@pytest.mark.parametrize("n", SIZES)
def test_writes_a_few_apart_touch_nothing_else(n, s, offset, dtype):
    rng = keyed_rng("writes", n, s, offset)
    x = random_array(rng, (n,), dtype)
    y = guarded(random_array(rng, (0 if n == 0 else s * (n - 1) + offset + 1,), dtype))
    want = y.copy()
    want[offset::s] = x * 2 + 1
    writing(s, offset)(x, y)
    allclose(y, want)


@pytest.mark.parametrize("grid", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [2, 3, 4])
@pytest.mark.parametrize("n", SIZES)
def test_reads_and_writes_of_every_phase(n, s, dtype, grid):
    """Each run read and written in full: with kd.grid the stores fill their runs and
    are whole vectors; the elements past the last whole run are left alone."""
    rng = keyed_rng("rotate", n, s, dtype, grid)
    x = guarded(random_array(rng, (n,), dtype))
    y = random_array(rng, (n,), dtype)
    want = rotating_numpy(x, y, s)
    rotating(s, grid)(x, y)
    allclose(y, want)


@pytest.mark.parametrize("n", SIZES)
def test_stores_under_a_condition_write_only_the_lanes_that_hold_it(n):
    """Swapped pairs where the first is positive: the filled runs' whole store is
    masked by the lanes the condition holds in."""

    @kd.kernel
    def swap_positive(x, y):
        for i in kd.grid(x.shape[0] // 2):
            with kd.when(x[2 * i] > 0):
                y[2 * i] = x[2 * i + 1]
                y[2 * i + 1] = x[2 * i]

    rng = keyed_rng("when", n)
    x = guarded(random_array(rng, (2 * n,), np.float64))
    y = guarded(random_array(rng, (2 * n,), np.float64))
    want = y.copy()
    on = x[0::2] > 0
    want[0::2][on], want[1::2][on] = x[1::2][on], x[0::2][on]
    swap_positive(x, y)
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("kernel", [cmul, cmul_grid], ids=["implicit", "grid"])
@pytest.mark.parametrize("n", SIZES)
def test_complex_multiply(kernel, n):
    rng = keyed_rng("cmul", n)
    a, b = (guarded(random_array(rng, (2 * n,), np.float32)) for _ in "ab")
    c = guarded(random_array(rng, (2 * n,), np.float32))
    kernel(a, b, c)
    np.testing.assert_allclose(c, cmul_numpy(a, b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel", [cmul, cmul_grid], ids=["implicit", "grid"])
def test_complex_multiply_has_no_gather_or_scatter(kernel):
    a, b, c = (random_array(keyed_rng("ir", k), (2 * 1000,), np.float32) for k in "abc")
    text = kernel.llvm(a, b, c)
    assert not re.search(r"llvm\.masked\.(gather|scatter)", text)
    if kernel is cmul_grid:  # its two stores fill the pairs: whole vector stores
        assert "store <32 x float>" in text


def test_the_accesses_of_a_run_share_its_loads():
    """x[2·i] (twice) and x[2·i + 1]: one load of the pairs in the loop, one masked load
    in its tail, as generated (before LLVM's own clean-up)."""

    @kd.kernel
    def pair_sum(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[2 * i] * x[2 * i + 1] + x[2 * i]

    pair_sum.schedule(kd.cpu)(lambda s: s.vectorize("i", 16))
    x = random_array(keyed_rng("share"), (2 * 100,), np.float32)
    y = np.zeros(100, np.float32)
    pair_sum(x, y)
    np.testing.assert_allclose(y, x[0::2] * x[1::2] + x[0::2], rtol=1e-6)
    text = pair_sum.llvm(x, y, optimized=False)
    assert len(re.findall(r"= load <32 x float>", text)) == 1
    assert len(re.findall(r"call <32 x float> @\"llvm\.masked\.load", text)) == 1


# ------------------------------------------------------------------------------ (n, k) rows


@kd.kernel
def pixels(x, y):
    """Each pixel of an (n, 3) image from its three channels."""
    for i in kd.grid(x.shape[0]):
        r, g, b = x[i, 0], x[i, 1], x[i, 2]
        y[i, 0] = r * 2 + g
        y[i, 1] = g - b
        y[i, 2] = r * b


pixels.schedule(kd.cpu)(lambda s: s.vectorize("i", 16))


@kd.kernel
def gray(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i, 0] * 3 + x[i, 1] * 5 + x[i, 2]


gray.schedule(kd.cpu)(lambda s: s.vectorize("i", 16))


def pixels_numpy(x: np.ndarray) -> np.ndarray:
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    return np.stack([r * 2 + g, g - b, r * b], axis=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_pixels_of_three_channels(n, dtype):
    rng = keyed_rng("pixels", n, dtype)
    x = guarded(random_array(rng, (3 * n,), dtype)).reshape(n, 3)
    y = random_array(rng, (n, 3), dtype)
    pixels(x, y)
    allclose(y, pixels_numpy(x))
    g = random_array(rng, (n,), dtype)
    gray(x, g)
    allclose(g, x[:, 0] * 3 + x[:, 1] * 5 + x[:, 2])


@kd.kernel
def signs(x, y):
    """Three bool columns per row: bytes, written whole or scattered."""
    i = kd.indices(x.shape[0])
    y[i, 0] = x[i] > 0
    y[i, 1] = x[i] < 0
    y[i, 2] = x[i] == 0


signs.schedule(kd.cpu)(lambda s: s.vectorize("i", 16))


@pytest.mark.parametrize("layout", ["three columns", "four columns", "a view of three of five"])
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 41])
def test_bool_rows_whole_or_scattered(layout, n):
    """Bool rows are bytes of 0 or 1 on both paths; the columns the kernel never names
    keep their bytes."""
    x = keyed_rng("signs", layout, n).integers(-2, 3, n).astype(np.float32)
    width = {"three columns": 3, "four columns": 4, "a view of three of five": 5}[layout]
    full = np.full((n, width), 7, np.uint8).view(np.bool_)
    y = full[:, 1:4] if width == 5 else full
    signs(x, y)
    want = np.stack([x > 0, x < 0, x == 0], axis=1)
    np.testing.assert_array_equal(y[:, :3].view(np.uint8), want.view(np.uint8))
    others = [c for c in range(width) if not (width == 5 and 1 <= c < 4 or width < 5 and c < 3)]
    assert (full[:, others].view(np.uint8) == 7).all()
    code = signs.llvm(x, y)  # bytes on both paths: an i1 lane's byte has bits LLVM leaves open
    assert "masked.scatter.v16i8" in code and "masked.scatter.v16i1" not in code


def test_rows_filled_by_their_stores_are_written_whole():
    """The three stores of each (n, 3) row go out as one <48 x float> store of 16 rows
    where the strides say the rows are adjacent (they are checked at run time: the
    next test), not as three masked stores (a Zen 2, 4M pixels: 34 -> 6.7 ms)."""
    x = np.ones((100, 3), np.float32)
    code = pixels.llvm(x, x.copy())
    assert "store <48 x float>" in code


@pytest.mark.parametrize("layout", ["four columns", "a view of three of five"])
def test_rows_of_another_length_fall_back_to_gathers(layout):
    """The rows' length (3: the columns the kernel names) is checked at run time."""
    n = 41
    rng = keyed_rng("other rows", layout)
    wide = random_array(rng, (n, 4 if layout == "four columns" else 5), np.float32)
    x = wide if layout == "four columns" else wide[:, 1:4]
    y = random_array(rng, (n, 3), np.float32)
    pixels(x, y)
    np.testing.assert_allclose(y, pixels_numpy(x), rtol=1e-6)
    if layout == "four columns":
        before = y.copy()
        target = random_array(rng, (n, 4), np.float32)
        keep = target[:, 3].copy()
        pixels(x, target)  # y's fourth column: never written
        np.testing.assert_array_equal(target[:, 3], keep)
        np.testing.assert_allclose(target[:, :3], before, rtol=1e-6)


# ------------------------------------------------------------------------------ random


@given(
    n=st.integers(0, 300),
    s=st.sampled_from([2, 3, 4]),
    offset=st.integers(0, 5),
    dtype=st.sampled_from([np.float32, np.float64, np.int32, np.int16]),
)
def test_random_sizes(n, s, offset, dtype):
    rng = keyed_rng("random", n, s, offset, dtype)
    length = 0 if n == 0 else max(s * (n - 1) + offset, s * n - 1) + 1
    x = random_array(rng, (length,), dtype)
    y = random_array(rng, (n,), dtype)
    reading(s, offset)(x, y)
    allclose(y, reading_numpy(x, n, s, offset))
    z = random_array(rng, (0 if n == 0 else s * (n - 1) + offset + 1,), dtype)
    want = z.copy()
    want[offset::s] = y * 2 + 1
    writing(s, offset)(y, z)
    allclose(z, want)
    rows = random_array(rng, (s * n,), dtype)
    out = random_array(rng, (s * n,), dtype)
    want = rotating_numpy(rows, out, s)
    rotating(s, True)(rows, out)
    allclose(out, want)
