"""The CUDA target's generated code, without a GPU: every CUDA test case (the zoo and
the library, tails included) run by the SIMT emulator (tests/targets/cuda/simt.py: the
kernel's LLVM IR rebuilt for this CPU, a thread per GPU thread) against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from tests import zoo
from tests.targets.cpu.test_vector import assert_same, ulp_error
from tests.targets.cpu.test_vpow import _specials
from tests.targets.cuda import simt
from tests.targets.cuda.cases import cases

CASES = cases(np.random.default_rng(13), m=3, n=37)  # small: a Python call per register read


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_in_the_emulator(case):
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in case.args]
    for pos in case.expected:  # poison the outputs: every element must be written
        if pos >= 0:
            args[pos][...] = np.nan
    result = simt.run(case.kernel, args)
    for pos, want in case.expected.items():
        got = result if pos < 0 else args[pos]
        np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.rtol)


def test_the_emulator_catches_a_wrong_fragment_layout(monkeypatch):
    """The emulator's mma.sync is the ISA's, not the emitter's: an emitter that swaps
    two of A's words computes a wrong product there."""
    from kdsl.targets.cuda import mma

    swapped = (mma.A_WORDS[1], mma.A_WORDS[0], *mma.A_WORDS[2:])
    monkeypatch.setattr(mma, "A_WORDS", swapped)
    case = next(c for c in CASES if c.name == "lib_matmul_bf16")
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in case.args]
    simt.run(case.kernel, args)
    assert not np.allclose(args[3], case.expected[3], rtol=1e-3, atol=1e-3)


def test_stride_loops_run_several_trips_at_once():
    """A lanes' stride loop runs STRIDE_TRIPS trips at a time while that many remain,
    then the rest one by one: rows long enough for both parts (and rows too short for
    the first), a reduction and an elementwise pass over each."""
    from kdsl.targets.cuda.codegen import STRIDE_TRIPS

    threads = 32

    @kd.kernel
    def centre(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        total = kd.empty(x.shape[0], x.dtype)
        total[i] = kd.sum(x[i, j], over=j)
        y[i, j] = x[i, j] - total[i] / x.shape[1]

    @centre.schedule(kd.cuda)
    def _(s):
        s.fuse("i", "i.1")
        s.bind("i", "block.x")
        s.bind("j", "thread.x", threads)
        s.bind("j.1", "thread.x", threads)

    rng = np.random.default_rng(5)
    for n in (STRIDE_TRIPS * threads + 7, 2 * STRIDE_TRIPS * threads, 2 * threads + 10, 5):
        x = rng.standard_normal((2, n)).astype(np.float32)
        y = np.full_like(x, np.nan)
        simt.run(centre, [x, y])
        np.testing.assert_allclose(y, x - x.mean(axis=1, keepdims=True), rtol=1e-5, atol=1e-5)


def test_block_temporaries_past_48_kb_in_dynamic_shared_memory():
    """A block's temporary that the static 48 KB can't hold lives in dynamic shared
    memory (the kernel opts in to more), not in global scratch: each block reverses its
    row through a 52 KB staging buffer."""
    width = 13000

    @kd.kernel
    def reverse_rows(x, y):
        for i in kd.grid(x.shape[0]):
            row = kd.alloc((width,))
            j = kd.indices(width)
            row[j] = x[i, j]
            y[i, j] = row[width - 1 - j]

    @reverse_rows.schedule(kd.cuda)
    def _(s):
        s.bind("i", "block.x")
        for loop in ("j", "j.1"):
            s.bind(loop, "thread.x", 128)

    x = np.random.default_rng(2).standard_normal((2, width)).astype(np.float32)
    y = np.full_like(x, np.nan)
    simt.run(reverse_rows, [x, y])
    np.testing.assert_array_equal(y, x[:, ::-1])


@pytest.mark.parametrize("tile", [4, 8])
def test_register_tiled_matmul_on_full_and_edge_tiles(tile):
    """The library's f32 GPU matmul (a thread's tile × tile sums in registers): a block
    of full tiles, one cut in rows and columns, rows and columns past the last thread
    tile; the epilogue applied as C is written."""
    from kdsl.kernels.matmul import matmul_kernel, reference

    rng = np.random.default_rng(4)
    m, k, n = 16 * tile + 5, 7, 16 * tile + 13
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    a, b, bias = a.astype(np.float32), b.astype(np.float32), np.float32(rng.standard_normal(n))
    c = np.full((m, n), np.nan, np.float32)
    simt.run(matmul_kernel, [a, b, bias, c, "relu", True], {"thread_tile": tile})
    np.testing.assert_allclose(c, reference(a, b, bias, "relu"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("offset", [0, 1])  # elements: 16-byte aligned arrays, or not
@pytest.mark.parametrize("n", [4 * 256 * 5 + 8, 4 * 3, 4 * 256 * 2 + 10, 2])
def test_rows_read_16_bytes_at_a_time(n, offset):
    """RMS norm (a reduction pass and an elementwise pass over each row, with a weight
    vector): 16-byte aligned rows (whole 4-element groups) take the vector path, their
    groups strided over the threads four at a time, and rows that are not (an array starting 4 bytes
    in, a row length that is not a multiple of 4) the scalar one; both give the same
    result."""
    from kdsl.kernels.norms import rmsnorm_reference, rmsnorm_rows

    rng = np.random.default_rng(n + offset)

    def array(*shape):
        size = int(np.prod(shape))
        return np.empty(size + offset, np.float32)[offset:].reshape(shape)

    x, w, y = array(3, n), array(n), array(3, n)
    x[...] = rng.standard_normal(x.shape)
    w[...] = rng.standard_normal(w.shape)
    y[...] = np.nan
    simt.run(rmsnorm_rows, [x, w, 1e-5, y], {"threads": 256})
    np.testing.assert_allclose(y, rmsnorm_reference(x, w, 1e-5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("offset", [0, 1])
def test_elementwise_16_bytes_at_a_time(offset):
    """saxpy under the default schedule (a block takes 1024 elements, 4 a thread): in
    aligned arrays the full blocks run as 4-element groups and the last block's
    elements past its last whole group singly; arrays starting 4 bytes in run the
    scalar path."""
    n = 1024 * 2 + 37
    rng = np.random.default_rng(offset)
    x, y, out = (np.empty(n + offset, np.float32)[offset:] for _ in range(3))
    x[...], y[...], out[...] = rng.standard_normal(n), rng.standard_normal(n), np.nan
    simt.run(zoo.saxpy, [1.5, x, y, out])
    np.testing.assert_allclose(out, np.float32(1.5) * x + y, rtol=1e-6)


def test_decoding_over_several_chunks():
    """Decoding against a cache of three chunks of keys, the last one cut (the GPU
    schedule: a block per chunk, then a block per head combining them), grouped query
    heads and a head size of 128."""
    from kdsl.kernels.attention import decode_kernel, reference

    rng = np.random.default_rng(6)
    q = rng.standard_normal((1, 4, 1, 128)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 600, 128)).astype(np.float32) for _ in range(2))
    o = np.full_like(q, np.nan)
    simt.run(decode_kernel, [q, k, v, o, 128**-0.5, 2, 128])
    np.testing.assert_allclose(o, reference(q, k, v), rtol=1e-4, atol=1e-5)


def test_an_access_nothing_proves_is_checked_on_the_device():
    """x[i * i] has no range kdsl knows: the bounds pass marks it, and the GPU code
    checks it at each element (the kernel records the error instead of reading past x)."""

    @kd.kernel
    def squares(x, y):
        i = kd.indices(y.shape[0])
        y[i] = x[i * i]

    x = np.arange(10, dtype=np.float32)
    y = np.full(3, np.nan, np.float32)
    simt.run(squares, [x, y])
    np.testing.assert_array_equal(y, x[[0, 1, 4]])
    with pytest.raises(AssertionError, match="recorded an error"):
        simt.run(squares, [x, np.empty(5, np.float32)])  # 4 · 4 is past x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_power_special_values_in_the_emulator(dtype):
    """The GPU's ** is vpow.py's on one-lane vectors: np.power's special values bit for
    bit (NaN^0 = 1, 1^NaN = 1, (-1)^inf = 1, -0 and -inf to odd powers, …), within 1 ulp
    elsewhere."""
    x, e = _specials(dtype)
    y = np.full_like(x, 7.0)
    simt.run(zoo.power_of, [x, e, y])
    with np.errstate(all="ignore"):
        want = np.power(x, e)
    exact = ~np.isfinite(want) | (want == 0) | (np.abs(want) == 1) | ~np.isfinite(x)
    exact |= (x == 0) | (np.abs(x) == 1) | ~np.isfinite(e) | (e == 0)
    with np.errstate(over="ignore"):
        assert_same(y[exact], want[exact])
    assert ulp_error(y, want).max() <= 1
