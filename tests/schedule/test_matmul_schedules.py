"""Matmul register-tile schedules: the vector loop outside the k loop keeps a tile of
accumulators in registers (vector.py holds them for the k loop); right on every size."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from tests.helpers import random_array


def matmul_algorithm(A, B, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)


ORDERS = ["io jo ko ji ki ii", "io jo ko ki ii ji", "io jo ji ko ki ii"]


def scheduled(ti: int, tj: int, tk: int, order: str) -> kd.KernelFunction:
    k = kd.kernel(matmul_algorithm, name="matmul")

    @k.schedule(kd.cpu)
    def _(s):
        io, jo, ii, ji = s.tile("i", "j", ti, tj)
        ko, ki = s.split("k", tk)
        loops = dict(io=io, jo=jo, ii=ii, ji=ji, ko=ko, ki=ki)
        s.reorder(*(loops[n] for n in order.split()))
        s.vectorize(ji, 16 if tj % 16 == 0 else 8)
        s.unroll(ii)
        s.parallelize(io)

    return k


@pytest.mark.slow(sample=8)  # of 27: every order, tile and dtype under --all-slow
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("ti, tj, tk", [(8, 16, 64), (3, 32, 5), (4, 8, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_register_tiles_compute_matmul(order, ti, tj, tk, dtype):
    k = scheduled(ti, tj, tk, order)
    rng = np.random.default_rng(ti * 100 + tj + tk)
    for m, kk, n in [(0, 3, 4), (1, 1, 1), (13, 29, 37), (40, 67, 50)]:
        a, b = random_array(rng, (m, kk), dtype), random_array(rng, (kk, n), dtype)
        c = np.zeros((m, n), dtype)
        k(a, b, c)
        want = a.astype(np.float64) @ b.astype(np.float64)
        np.testing.assert_allclose(c, want.astype(dtype), rtol=1e-5, atol=1e-5)


def test_a_held_vector_is_written_back_with_addresses_computed_after_the_loop():
    """Found by the deep property run: the write-back after the k loop reused an address
    computed inside the loop's body (LLVM: 'does not dominate all uses')."""

    @kd.kernel
    def row_max(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i] = kd.max(x[i, j], over=j)

    @row_max.schedule(kd.cpu)
    def _(s):
        s.reorder("j", "i")
        s.tile("i", "j", 1, 1)
        s.split("io", 1)
        s.split("ii", 1)
        s.vectorize("iii", 4)

    rng = np.random.default_rng(5)
    for shape in [(5, 7), (1, 1), (13, 3)]:
        x = random_array(rng, shape, np.float32)
        y = np.empty(shape[0], np.float32)
        row_max(x, y)
        np.testing.assert_array_equal(y, x.max(axis=1))
