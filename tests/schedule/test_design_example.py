"""DESIGN §3's matmul schedule, as written there, runs and is right."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from tests.helpers import random_array


@kd.kernel
def matmul(A, B, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)


@matmul.schedule(kd.cpu)
def _(s):
    io, jo, ii, ji = s.tile("i", "j", s.param("ti", [4, 6, 8]), s.param("tj", [32, 64]))
    ko, ki = s.split("k", s.param("tk", [64, 128, 256]))
    s.reorder(io, jo, ko, ii, ki, ji)
    s.cache("B", at=ko, layout="packed")  # pack a panel of B
    s.vectorize(ji, 16)
    s.unroll(ii)
    s.parallelize(io)


@pytest.mark.parametrize("m, k, n", [(0, 3, 5), (1, 1, 1), (7, 67, 33), (131, 97, 70)])
def test_the_design_schedule_computes_matmul(m, k, n):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a, b = random_array(rng, (m, k), np.float32), random_array(rng, (k, n), np.float32)
    c = np.full((m, n), np.nan, np.float32)
    matmul(a, b, c)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_the_design_schedule_prints_its_steps_and_packs_b():
    a = np.ones((8, 8), np.float32)
    steps = str(matmul.schedule_of(a, a, a))
    assert 's.cache("B", "ko", layout="packed")' in steps
    lowered = str(matmul.lowered(a, a, a))
    assert "buffer B.c: f32[64, 32]" in lowered, lowered
