"""Random expressions: compiled code and the interpreter agree bit for bit on every op."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import kdsl as kd
from tests.helpers import random_array

INT_OPS = ["+", "-", "*", "//", "%", "&", "|", "^", "<<", ">>", "max", "min", "where"]
FLOAT_OPS = ["+", "-", "*", "/", "//", "%", "max", "min", "where"]
INT_UNARY = ["neg", "abs", "~"]
FLOAT_UNARY = ["neg", "abs", "floor", "ceil", "round", "sqrt"]
BINARY = {
    "+": lambda x, y: x + y,
    "-": lambda x, y: x - y,
    "*": lambda x, y: x * y,
    "/": lambda x, y: x / y,
    "//": lambda x, y: x // y,
    "%": lambda x, y: x % y,
    "&": lambda x, y: x & y,
    "|": lambda x, y: x | y,
    "^": lambda x, y: x ^ y,
    "<<": lambda x, y: x << y,
    ">>": lambda x, y: x >> y,
    "max": kd.maximum,
    "min": kd.minimum,
    "where": lambda x, y: kd.where(x < y, x, y),
}
UNARY = {
    "neg": lambda x: -x,
    "abs": kd.abs,
    "~": lambda x: ~x,
    "floor": kd.floor,
    "ceil": kd.ceil,
    "round": kd.round,
    "sqrt": kd.sqrt,
}


def build(tree, a, b):
    """Python is kdsl's macro language: the tree is expanded while tracing."""
    if tree == "a":
        return a
    if tree == "b":
        return b
    op, *args = tree
    values = [build(t, a, b) for t in args]
    return (BINARY if len(values) == 2 else UNARY)[op](*values)


@kd.kernel
def evaluate(a, b, out, tree: kd.constexpr):
    i = kd.indices(a.shape[0])
    out[i] = build(tree, a[i], b[i])


def trees(binary: list[str], unary: list[str]):
    leaves = st.sampled_from(["a", "b"])
    return st.recursive(
        leaves,
        lambda sub: st.one_of(
            st.tuples(st.sampled_from(binary), sub, sub),
            st.tuples(st.sampled_from(unary), sub),
        ),
        max_leaves=6,
    )


def _run(tree, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = random_array(rng, (29,), dtype), random_array(rng, (29,), dtype)
    if np.dtype(dtype).kind == "f":
        a[:3] = [0.0, np.inf, np.nan]
        b[:3] = [0.0, -0.0, 1.0]
    else:
        b[::5] = 0
    compiled, interpreted = np.empty_like(a), np.empty_like(a)
    evaluate(a, b, compiled, tree)
    evaluate.interpret(a, b, interpreted, tree)
    np.testing.assert_array_equal(compiled, interpreted, err_msg=str(tree))


@given(
    tree=trees(INT_OPS, INT_UNARY),
    dtype=st.sampled_from([np.int8, np.int32, np.int64, np.uint8, np.uint32]),
    seed=st.integers(0, 99),
)
def test_integer_expressions(tree, dtype, seed):
    _run(tree, dtype, seed)


@given(
    tree=trees(FLOAT_OPS, FLOAT_UNARY),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 99),
)
def test_float_expressions(tree, dtype, seed):
    _run(tree, dtype, seed)
