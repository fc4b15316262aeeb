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


def test_a_where_chain_that_reads_its_value_three_times_per_step_is_linear():
    """kd.where's sides that load are computed under the lanes they are chosen in: the
    vector code computed the shared value again under each narrower mask, and the
    interpreter keyed its cache by the kernel's repr (the tree spelled out): 3**steps."""

    @kd.kernel
    def clamp_steps(x, y):
        i = kd.indices(x.shape[0])
        v = x[i]
        for _ in range(30):
            v = kd.where(v > 0, v * 0.5, v + 1.0)
        y[i] = v

    x = random_array(np.random.default_rng(1), (37,), np.float32) * 4
    y = np.empty_like(x)
    clamp_steps(x, y)
    want = x.copy()
    for _ in range(30):
        want = np.where(want > 0, want * np.float32(0.5), want + np.float32(1.0))
    np.testing.assert_allclose(y, want, rtol=1e-6)
    interpreted = np.empty_like(x)
    clamp_steps.interpret(x, interpreted)
    np.testing.assert_allclose(interpreted, want, rtol=1e-6)
