"""A Python value used twice at every step makes an expression tree exponential in the
number of steps; every stage must work on the DAG (shared by identity) instead."""

from __future__ import annotations

import numpy as np

import kdsl as kd
from tests.helpers import random_array


def test_a_value_used_twice_per_step_for_40_steps_compiles_and_is_right():
    @kd.kernel
    def iterate(x, y):
        i = kd.indices(x.shape[0])
        v = x[i]
        for _ in range(40):  # a tree of 2**40 nodes, a DAG of ~160
            v = kd.sqrt(v * v + 1.0)
        y[i] = v

    x = random_array(np.random.default_rng(0), (37,), np.float64)
    y = np.empty_like(x)
    iterate(x, y)
    want = x.copy()
    for _ in range(40):
        want = np.sqrt(want * want + 1.0)
    np.testing.assert_allclose(y, want, rtol=1e-12)


def test_a_kernel_with_shared_expressions_hashes_quickly_and_deterministically():
    def build(steps: int):
        @kd.kernel
        def iterate(x, y):
            i = kd.indices(x.shape[0])
            v = x[i]
            for _ in range(steps):
                v = kd.sqrt(v * v + 1.0)
            y[i] = v

        return iterate

    x = np.ones(3)
    deep = build(60).ir(x, x.copy())  # a tree of 2**60 nodes
    assert deep.hash == build(60).ir(x, x.copy()).hash
    assert deep.hash != build(59).ir(x, x.copy()).hash


def test_the_printer_names_large_shared_expressions_once():
    @kd.kernel
    def iterate(x, y):
        i = kd.indices(x.shape[0])
        v = x[i]
        for _ in range(60):
            v = kd.sqrt(v * v + 1.0)
        y[i] = v

    x = np.ones(3)
    text = str(iterate.ir(x, x.copy()))
    assert len(text) < 10_000, text[:500]
    assert "$1 = " in text and "y[i] = sqrt($" in text
