"""Dependences between two iterations of a loop (kdsl/ir/dependence.py): what the GCD and
bounds tests prove apart, what stays "may meet" (data, `//`, symbolic coefficients), and
a brute-force cross-check that the answer never misses a meeting."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.ir.dependence import Access, Order, accesses, meet_orders
from kdsl.ir.nodes import (
    Binary,
    BinaryOp,
    Const,
    DimOf,
    Expr,
    If,
    Load,
    Loop,
    LoopKind,
    LoopVar,
    ScalarArg,
    Store,
)

I, J, P, S = LoopVar("i"), LoopVar("j"), LoopVar("p"), LoopVar("s")  # noqa: E741
N = DimOf("x", 0)  # a shape: unknown, at least 0
M = ScalarArg("m", kd.i64)  # a scalar: unknown, any sign
EARLIER, LATER = Order.EARLIER, Order.LATER
BOTH, NONE = frozenset(Order), frozenset[Order]()


def c(v: int) -> Const:
    return Const(v, kd.i64)


def add(*xs: Expr) -> Expr:
    out = xs[0]
    for x in xs[1:]:
        out = Binary(BinaryOp.ADD, out, x, kd.i64)
    return out


def mul(k: Expr, x: Expr) -> Expr:
    return Binary(BinaryOp.MUL, k, x, kd.i64)


def store(*index: Expr, loops: tuple[tuple[str, Expr], ...] = ()) -> Access:
    return Access(Store("x", index, Const(0.0, kd.f32)), loops)


def load(*index: Expr, loops: tuple[tuple[str, Expr], ...] = ()) -> Access:
    return Access(Load("x", index, kd.f32), loops)


def test_interleaved_halves_never_meet():
    """c[2*i] and c[2*i + 1]: the GCD of the coefficients (2) does not divide 1."""
    assert meet_orders(store(mul(c(2), I)), load(add(mul(c(2), I), c(1))), "i", N) == NONE


def test_the_halves_of_a_block_never_meet():
    """X[8*p + s] and X[8*p + s + 4] for s < 4: apart in different iterations of s (p the
    same), and of p (each access with its own s): the bounds exclude 0."""
    lo, hi = add(mul(c(8), P), S), add(mul(c(8), P), S, c(4))
    assert meet_orders(store(lo), load(hi), "s", c(4)) == NONE
    inside = (("s", c(4)),)
    assert meet_orders(store(lo, loops=inside), load(hi, loops=inside), "p", N) == NONE
    assert meet_orders(store(hi, loops=inside), load(lo, loops=inside), "p", N) == NONE
    tile = (("s", Binary(BinaryOp.MIN, c(4), N, kd.i64)),)  # a split's tile: at most 4
    assert meet_orders(store(lo, loops=tile), load(hi, loops=tile), "p", N) == NONE


def test_a_wider_block_meets_in_one_order():
    """With s < 5 the store at s = 4 writes what the load at s = 0 reads: the store's
    iteration is the later one. A symbolic range for s meets in both orders of p."""
    lo, hi = add(mul(c(8), P), S), add(mul(c(8), P), S, c(4))
    assert meet_orders(store(lo), load(hi), "s", c(5)) == {LATER}
    assert meet_orders(load(hi), store(lo), "s", c(5)) == {EARLIER}
    inside = (("s", N),)
    assert meet_orders(store(lo, loops=inside), load(hi, loops=inside), "p", N) == BOTH


def test_neighbours_meet_in_the_order_of_their_offset():
    """c[2*i] and c[2*i + 2]: iteration i + 1 of the first meets iteration i of the second."""
    even, next_even = mul(c(2), I), add(mul(c(2), I), c(2))
    assert meet_orders(store(even), store(next_even), "i", N) == {LATER}
    assert meet_orders(store(next_even), store(even), "i", N) == {EARLIER}
    assert meet_orders(store(I), load(add(I, c(1))), "i", c(2)) == {LATER}
    assert meet_orders(store(I), load(add(I, c(2))), "i", c(2)) == NONE  # beyond the range


def test_one_iteration_meets_nothing():
    assert meet_orders(store(c(0)), load(c(0)), "i", c(1)) == NONE
    assert meet_orders(store(c(0)), load(c(0)), "i", c(2)) == BOTH


def test_the_loop_itself_is_apart_and_invariants_cancel():
    """x[i] in another iteration is another element; outer variables and shapes are the
    same at both accesses, and the same term on both sides cancels."""
    assert meet_orders(store(I), load(I), "i", N) == NONE
    assert meet_orders(store(add(I, mul(c(3), J), N)), load(add(I, mul(c(3), J), N)), "i", N) == (
        NONE
    )


def test_shapes_are_not_negative_and_scalars_anything():
    """x[i + n + 1] and x[i + n] (n a shape) are only read by later iterations of x[i]'s
    loop (n = 0: by the same one); with a scalar m instead of n, in either order."""
    assert meet_orders(store(add(I, N, c(1))), load(I), "i", N) == {EARLIER}
    assert meet_orders(store(add(I, N)), load(I), "i", N) == {EARLIER}
    assert meet_orders(load(I), store(add(I, N)), "i", N) == {LATER}
    assert meet_orders(store(add(I, M, c(1))), load(I), "i", N) == BOTH
    assert meet_orders(store(add(I, J, c(1))), load(I), "i", N) == {EARLIER}  # j outer


@pytest.mark.parametrize(
    "a, b",
    [
        (mul(N, I), add(mul(N, I), c(1))),  # a symbolic coefficient: x.shape[0] * i
        (mul(M, I), add(mul(M, I), c(1))),  # a scalar one
        (Load("idx", (I,), kd.i64), add(Load("idx", (I,), kd.i64), c(1))),  # data
        (Binary(BinaryOp.FLOORDIV, I, c(2), kd.i64), c(7)),  # division
        (Binary(BinaryOp.MIN, I, c(3), kd.i64), c(9)),  # min
        (mul(I, I), add(mul(I, I), c(1))),  # a product of loop variables
    ],
    ids=["shape-stride", "scalar-stride", "gather", "floordiv", "min", "square"],
)
def test_what_is_not_affine_may_meet(a, b):
    assert meet_orders(store(a), load(b), "i", c(100)) == BOTH


def test_one_axis_proves_the_other_need_not():
    """A data-dependent row and interleaved columns: apart. Rows 2*i and 2*i + 2 and a
    data-dependent column: the column proves nothing, the rows meet in one order."""
    row = Load("idx", (I,), kd.i64)
    assert meet_orders(store(row, mul(c(2), I)), load(row, add(mul(c(2), I), c(1))), "i", N) == (
        NONE
    )
    assert meet_orders(store(mul(c(2), I), row), load(add(mul(c(2), I), c(2)), row), "i", N) == {
        LATER
    }


def test_accesses_know_their_loops():
    """Loads in a loop's extent and a condition are outside the statements they hold."""
    body = (
        Loop(
            "j",
            Load("n", (c(0),), kd.i64),
            LoopKind.SERIAL,
            (If(Binary(BinaryOp.LT, Load("x", (J,), kd.f32), c(0), kd.bool_), (store(J).node,)),),
        ),
    )
    found = [(x.buffer, x.write, [v for v, _ in x.loops]) for x in accesses(body)]
    assert found == [("n", False, []), ("x", False, ["j"]), ("x", True, ["j"])]


# ------------------------------------------------------------ against brute force

Subscript = tuple[int, tuple[tuple[str, int], ...]]  # const, (atom, coefficient)…
ATOMS = ["i", "inner", "o", "n", "i // 2", "i * i", "n * i"]


@dataclass(frozen=True)
class Case:
    extent: int | None  # the tested loop's; None: the shape n
    inner: tuple[tuple[int | None, int | None] | None, ...]  # per access: its inner loop
    same_inner: bool  # both accesses in one inner loop
    subscripts: tuple[tuple[Subscript, Subscript], ...]  # per axis: a's, b's


def _extent(ext: int | None, cap: int | None) -> Expr:
    """A constant, the shape n, or min(cap, n)."""
    base: Expr = N if ext is None else c(ext)
    return base if cap is None else Binary(BinaryOp.MIN, c(cap), base, kd.i64)


def _atom(name: str, inner: str) -> Expr:
    n_i = {"i": I, "o": LoopVar("o"), "n": N, "inner": LoopVar(inner)}
    if name in n_i:
        return n_i[name]
    lhs, op, rhs = name.split()
    ops = {"//": BinaryOp.FLOORDIV, "*": BinaryOp.MUL}
    node = {"2": c(2), **n_i}
    return Binary(ops[op], node[lhs], node[rhs], kd.i64)


def _expr(sub: Subscript, inner: str) -> Expr:
    const, terms = sub
    return add(c(const), *(mul(c(k), _atom(a, inner)) for a, k in terms))


def _value(sub: Subscript, env: dict[str, int]) -> int:
    const, terms = sub
    fns: dict[str, Callable[[], int]] = {
        "i // 2": lambda: env["i"] // 2,
        "i * i": lambda: env["i"] * env["i"],
        "n * i": lambda: env["n"] * env["i"],
    }
    return const + sum(k * (fns[a]() if a in fns else env[a]) for a, k in terms)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    small = st.integers(0, 4)
    extent = draw(st.none() | st.integers(0, 5))
    inner_loop = st.none() | st.tuples(st.none() | small, st.none() | small)
    inner = (draw(inner_loop), draw(inner_loop))
    same = inner[0] is not None and inner[1] is not None and draw(st.booleans())
    if same:
        inner = (inner[0], inner[0])
    affine = draw(st.booleans())  # mostly the subscripts the tests prove things about
    atoms = st.sampled_from(ATOMS[:4] if affine else ATOMS)
    term = st.tuples(atoms, st.integers(-3, 3).filter(bool))

    def subscript(side: int) -> Subscript:
        terms = draw(st.lists(term, max_size=3))
        if inner[side] is None:
            terms = [(a, k) for a, k in terms if a != "inner"]
        return draw(st.integers(-4, 4)), tuple(terms)

    axes = draw(st.integers(1, 2))
    subs = tuple((subscript(0), subscript(1)) for _ in range(axes))
    return Case(extent, inner, same, subs)


def _brute(case: Case) -> set[Order]:
    """The orders in which the two accesses meet, for shapes n up to 5 and outer o < 3."""
    found: set[Order] = set()
    for n, o in itertools.product(range(6), range(3)):
        count = n if case.extent is None else case.extent
        spans = []
        for loop in case.inner:
            if loop is None:
                spans.append([None])
                continue
            ext, cap = loop
            size = n if ext is None else ext
            spans.append(list(range(size if cap is None else min(cap, size))))
        for va, vb in itertools.permutations(range(count), 2):
            for ja, jb in itertools.product(*spans):
                env_a = {"i": va, "o": o, "n": n, "inner": ja or 0}
                env_b = {"i": vb, "o": o, "n": n, "inner": jb or 0}
                if all(_value(x, env_a) == _value(y, env_b) for x, y in case.subscripts):
                    found.add(Order.EARLIER if va < vb else Order.LATER)
    return found


@given(cases())
@settings(max_examples=500, deadline=None)
def test_no_meeting_is_missed(case: Case):
    names = ("j", "j") if case.same_inner else ("j", "k")
    sides = []
    for side, loop in enumerate(case.inner):
        inner = names[side]
        loops = () if loop is None else ((inner, _extent(*loop)),)
        index = tuple(_expr(pair[side], inner) for pair in case.subscripts)
        sides.append(Access(Store("x", index, Const(0.0, kd.f32)), loops))
    found = meet_orders(sides[0], sides[1], "i", _extent(case.extent, None))
    assert _brute(case) <= found, (case, found)
