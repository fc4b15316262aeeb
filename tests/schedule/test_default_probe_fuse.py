"""The default schedule's fusion of sibling nests (kdsl/schedule/default_fuse.py) and
its vector loop over short rows (`x[i, c]`, kdsl/schedule/default.py): results against
NumPy at sizes 0, 1, primes and past a split's chunk, and the schedule chosen."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from tests.helpers import random_array

SIZES = [0, 1, 2, 3, 17, 8191, 8209]  # 8209: a prime past the default's 8192 chunks


def steps(kernel, *args) -> list[str]:
    return str(kernel.schedule_of(*args)).splitlines()[1:]


@kd.kernel
def cmul(a, b, c):
    i = kd.indices(a.shape[0] // 2)
    c[2 * i] = a[2 * i] * b[2 * i] - a[2 * i + 1] * b[2 * i + 1]
    c[2 * i + 1] = a[2 * i] * b[2 * i + 1] + a[2 * i + 1] * b[2 * i]


@pytest.mark.parametrize("n", SIZES)
def test_an_interleaved_complex_multiply_is_one_loop(n):
    """Two statements, two sibling loops each reading all of a and b: fused into one,
    whose two stores fill whole vectors of c (0.4x NumPy before, about 1x after)."""
    rng = np.random.default_rng(n)
    a, b = (random_array(rng, (2 * n,), np.float32) for _ in "ab")
    c = np.full(2 * n, np.nan, np.float32)
    cmul(a, b, c)
    want = a.view(np.complex64) * b.view(np.complex64)
    np.testing.assert_allclose(c.view(np.complex64), want, rtol=1e-5, atol=1e-6)
    assert steps(cmul, a, b, c) == [
        's.fuse("i", "i.1")',
        'io, ii = s.split("i", 8192)',
        's.vectorize("ii", 16)',
        's.parallelize("io")',
    ]


def test_an_odd_length_leaves_the_last_element_alone():
    a = random_array(np.random.default_rng(5), (9,), np.float32)
    c = np.full(9, 7.0, np.float32)
    cmul(a, a, c)
    assert c[8] == 7.0  # a.shape[0] // 2 = 4 pairs
    want = a[:8].view(np.complex64) ** 2
    np.testing.assert_allclose(c[:8].view(np.complex64), want, rtol=1e-5, atol=1e-6)


@kd.kernel
def normalize3(x, y):
    i = kd.indices(x.shape[0])
    r = kd.sqrt(x[i, 0] * x[i, 0] + x[i, 1] * x[i, 1] + x[i, 2] * x[i, 2])
    y[i, 0] = x[i, 0] / r
    y[i, 1] = x[i, 1] / r
    y[i, 2] = x[i, 2] / r


def _normalized(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return x64 / np.sqrt((x64 * x64).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("n", SIZES)
def test_three_component_statements_fuse_and_vectorize_the_rows(n):
    """y[i, c] = x[i, c] / |x[i]| for c = 0, 1, 2: three loops fused into one, whose i
    is vectorized (each lane a row of 3: loaded as whole vectors and shuffles), not
    left scalar for its 'strided' x[i, c]."""
    x = random_array(np.random.default_rng(n), (n, 3), np.float32)
    y = np.full_like(x, np.nan)
    normalize3(x, y)
    np.testing.assert_allclose(y, _normalized(x), rtol=1e-5, atol=1e-6)
    assert steps(normalize3, x, y) == [
        's.fuse("i", "i.1")',
        's.fuse("i", "i.2")',
        'io, ii = s.split("i", 8192)',
        's.vectorize("ii", 16)',
        's.parallelize("io")',
    ]


@kd.kernel
def luminance(rgb, y):
    i = kd.indices(rgb.shape[0])
    y[i] = 0.299 * rgb[i, 0] + 0.587 * rgb[i, 1] + 0.114 * rgb[i, 2]


def _gray(rgb: np.ndarray) -> np.ndarray:
    return 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]


@pytest.mark.parametrize("n", SIZES)
def test_pixels_of_three_channels_vectorize_the_pixels(n):
    rgb = random_array(np.random.default_rng(n + 1), (n, 3), np.float32)
    y = np.full(n, np.nan, np.float32)
    luminance(rgb, y)
    np.testing.assert_allclose(y, _gray(rgb), rtol=1e-5, atol=1e-6)
    assert steps(luminance, rgb, y) == [
        'io, ii = s.split("i", 8192)',
        's.vectorize("ii", 16)',
        's.parallelize("io")',
    ]


@pytest.mark.parametrize("cols", [4, 5, 100])
@pytest.mark.parametrize("n", [1, 17, 8209])
def test_rows_longer_than_the_kernel_names_give_the_same_values(n, cols):
    """The rows' length is a guess (the columns named: 3) that the code checks at run
    time: rows of 4, 5 or 100, contiguous or a slice of wider rows, are read right."""
    rng = np.random.default_rng(n * cols)
    wide = random_array(rng, (n, cols), np.float32)
    for rgb in (wide, wide[:, :3], wide[::-1]):
        y = np.full(n, np.nan, np.float32)
        luminance(rgb, y)
        np.testing.assert_allclose(y, _gray(rgb), rtol=1e-5, atol=1e-6)
    y3 = np.full((n, cols), np.nan, np.float32)
    y3[:, 3:] = 5.0
    normalize3(wide[:, :3], y3)  # y's rows are `cols` long, only the first 3 written
    np.testing.assert_allclose(y3[:, :3], _normalized(wide[:, :3]), rtol=1e-5, atol=1e-6)
    assert (y3[:, 3:] == 5.0).all()


def test_long_rows_named_by_constants_stay_as_they_were():
    """x[i, 0] … x[i, 9] of rows of 10 or more: lanes too far apart for whole vectors
    (gathers): the loop is not vectorized by default, as before."""

    @kd.kernel
    def first_ten(x, y):
        i = kd.indices(x.shape[0])
        y[i] = sum(x[i, c] for c in range(10))

    x = random_array(np.random.default_rng(2), (37, 12), np.float32)
    y = np.full(37, np.nan, np.float32)
    first_ten(x, y)
    np.testing.assert_allclose(y, x[:, :10].sum(axis=1), rtol=1e-5, atol=1e-6)
    assert not any("vectorize" in st for st in steps(first_ten, x, y))


@kd.kernel
def two_outputs(x, z, y, w):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i, j] = x[i, j] * 2.0 + z[i, j]
    w[i, j] = x[i, j] - z[i, j]


@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (7, 13), (33, 257), (3, 0)])
def test_two_dimensional_nests_fuse_level_by_level(shape):
    rng = np.random.default_rng(sum(shape))
    x, z = (random_array(rng, shape, np.float32) for _ in "xz")
    y, w = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
    two_outputs(x, z, y, w)
    np.testing.assert_allclose(y, x * 2 + z, rtol=1e-6)
    np.testing.assert_allclose(w, x - z, rtol=1e-6)
    assert steps(two_outputs, x, z, y, w) == [
        's.fuse("i", "i.1")',
        's.fuse("j", "j.1")',
        's.collapse("i", "j")',  # (whole C-ordered arrays: one stream)
        'ijo, iji = s.split("ij", 8192)',
        's.vectorize("iji", 16)',
        's.parallelize("ijo")',
    ]


@pytest.mark.parametrize("n", SIZES)
def test_a_temporary_between_two_statements_becomes_a_scalar(n):
    """t[i] = exp(x[i]); y[i] = t[i] / (1 + t[i]): fused, t is no array at all."""

    @kd.kernel
    def logistic(x, y):
        i = kd.indices(x.shape[0])
        t = kd.empty(x.shape, kd.f32)
        t[i] = kd.exp(x[i])
        y[i] = t[i] / (1.0 + t[i])

    x = random_array(np.random.default_rng(n), (n,), np.float32)
    y = np.full_like(x, np.nan)
    logistic(x, y)
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-5)
    assert steps(logistic, x, y)[0] == 's.fuse("i", "i.1")'
    assert "allocate t" not in str(logistic.lowered(x, y))


@pytest.mark.parametrize("n", SIZES)
def test_loops_over_shapes_the_kernel_checks_equal_fuse(n):
    """i over x.shape[0], k over t.shape[0]: t[i] ties the two (a shape check), so the
    loops run over one range and fuse."""

    @kd.kernel
    def two_sizes(x, t, y):
        i = kd.indices(x.shape[0])
        t[i] = x[i] * 2.0
        k = kd.indices(t.shape[0])
        y[k] = t[k] + 1.0

    x = random_array(np.random.default_rng(n), (n,), np.float32)
    t, y = np.full_like(x, np.nan), np.full_like(x, np.nan)
    two_sizes(x, t, y)
    np.testing.assert_allclose(t, x * 2, rtol=1e-6)
    np.testing.assert_allclose(y, x * 2 + 1, rtol=1e-6)
    assert steps(two_sizes, x, t, y)[0] == 's.fuse("i", "k")'
    with pytest.raises(kd.ShapeError):
        two_sizes(x, np.empty(n + 1, np.float32), y)


def test_statements_whose_fusion_would_change_the_result_stay_apart():
    """z reads y backwards: in one loop it would read elements of y not written yet."""

    @kd.kernel
    def reverse_after(x, y, z):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 2.0
        z[i] = y[x.shape[0] - 1 - i]

    for n in (1, 2, 17, 8209):
        x = random_array(np.random.default_rng(n), (n,), np.float32)
        y, z = np.full_like(x, np.nan), np.full_like(x, np.nan)
        reverse_after(x, y, z)
        np.testing.assert_array_equal(z, (x * 2)[::-1])
        assert not any("fuse" in st for st in steps(reverse_after, x, y, z))


def test_nests_the_default_would_schedule_differently_stay_apart():
    """A transposing store beside a unit-stride one (fused, neither would be
    vectorized), a scatter beside an elementwise loop (fused, both would run serially),
    a reduction's nest, and nests that share no array: each keeps its own nest."""

    @kd.kernel
    def mixed(x, idx, y, t, s, u, v, p, q):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = x[i, j] * 2.0
        t[i, j] = x[j, i]
        k = kd.indices(idx.shape[0])
        s[idx[k]] = p[k]
        u[k] = p[k] * 3.0
        r = kd.indices(x.shape[0])
        v[r] = kd.sum(x[r, j], over=j)
        q[k] = idx[k] + 1

    rng = np.random.default_rng(0)
    n = 21
    x = random_array(rng, (n, n), np.float32)
    idx = rng.integers(0, 5, 40).astype(np.int64)
    p = random_array(rng, (40,), np.float32)
    y, t, v = np.full_like(x, np.nan), np.full_like(x, np.nan), np.full(n, np.nan, np.float32)
    s, u, q = np.zeros(5, np.float32), np.full_like(p, np.nan), np.zeros(40, np.int64)
    args = (x, idx, y, t, s, u, v, p, q)
    mixed(*args)
    np.testing.assert_allclose(y, x * 2, rtol=1e-6)
    np.testing.assert_array_equal(t, x.T)
    want = np.zeros(5, np.float32)
    want[idx] = p  # the last write wins, as in the serial order
    np.testing.assert_array_equal(s, want)
    np.testing.assert_allclose(u, p * 3, rtol=1e-6)
    np.testing.assert_allclose(v, x.sum(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(q, idx + 1)
    assert not any("fuse" in st for st in steps(mixed, *args))


def test_at_most_sixteen_statements_share_a_loop():
    """17 statements over one loop: the first 16 fused, the 17th on its own."""

    @kd.kernel
    def many(x, y):
        i = kd.indices(x.shape[0])
        for c in range(17):
            y[i, c] = x[i, c] * float(c + 1)

    x = random_array(np.random.default_rng(17), (29, 17), np.float32)
    y = np.full_like(x, np.nan)
    many(x, y)
    np.testing.assert_allclose(y, x * np.arange(1, 18, dtype=np.float32), rtol=1e-6)
    fused = [st for st in steps(many, x, y) if st.startswith("s.fuse")]
    assert fused == [f's.fuse("i", "i.{k}")' for k in range(1, 16)]


def test_sibling_loops_inside_a_row_loop_fuse():
    """Two passes over a row after its sum (inside the row loop, beside the reduction):
    the two elementwise passes become one; the sum stays its own vector loop."""

    @kd.kernel
    def scaled(x, y, z):
        for i in kd.grid(x.shape[0]):
            j = kd.indices(x.shape[1])
            s = kd.local(0.0)
            for k in kd.range(x.shape[1]):
                s += x[i, k]
            y[i, j] = x[i, j] / s
            z[i, j] = x[i, j] * s

    rng = np.random.default_rng(4)
    for shape in [(1, 1), (5, 33), (2, 0)]:
        x = random_array(rng, shape, np.float32) + 2.0  # sums away from zero
        y, z = np.full_like(x, np.nan), np.full_like(x, np.nan)
        scaled(x, y, z)
        total = x.astype(np.float64).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(y, x / total, rtol=1e-5)
        np.testing.assert_allclose(z, x * total, rtol=1e-5)
    assert 's.fuse("j", "j.1")' in steps(scaled, x, y, z)


def test_the_default_recipe_replays():
    a = random_array(np.random.default_rng(9), (26,), np.float32)
    c = np.empty_like(a)
    s = cmul.schedule_of(a, a, c)
    again = kd.Schedule.replay(s.to_json(), cmul.ir(a, a, c))
    assert again.kernel == s.kernel
