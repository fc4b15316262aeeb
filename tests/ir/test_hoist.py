"""kdsl/ir/passes/hoist.py: integer divisions that a loop's iterations compute alike are
computed once before it, and the results stay the interpreter's."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import kdsl as kd
from kdsl.ir.nodes import Binary, BinaryOp, Const, DeclareLocal, Loop, LoopExec
from kdsl.ir.passes.expand import expand_schedule
from kdsl.ir.passes.hoist import hoist_divisions
from kdsl.ir.visit import stmt_exprs, walk_expr, walk_stmts
from tests.helpers import keyed_rng, random_array


@kd.kernel
def grouped_scores(q, key, out):
    """Each query head's dot products with its group's keys (grouped-query attention)."""
    group = q.shape[0] // key.shape[0]
    h, t, d = kd.indices(q.shape[0], key.shape[1], q.shape[1], names="h t d")
    out[h, t] = kd.sum(q[h, d] * key[h // group, t, d], over=d)


@grouped_scores.schedule(kd.cpu)
def _(s):
    s.vectorize("d", 8)
    s.parallelize("h")


def _divisions(stmts) -> list[Binary]:
    return [
        x
        for s in walk_stmts(stmts)
        for e in stmt_exprs(s)
        for x in walk_expr(e)
        if isinstance(x, Binary)
        and x.op in (BinaryOp.FLOORDIV, BinaryOp.MOD)
        and not isinstance(x.rhs, Const)  # (LLVM hoists those, and a tail's start stays one)
    ]


def _expanded(kernel, *args):
    return expand_schedule(kernel.schedule_of(*args).kernel, contract=True)


def _loop(stmts, name: str) -> Loop:
    return next(s for s in walk_stmts(stmts) if isinstance(s, Loop) and s.var == name)


def test_a_head_s_group_is_divided_once_per_head_not_once_per_key():
    q, key, out = np.ones((6, 16), np.float32), np.ones((3, 40, 16), np.float32), np.zeros((6, 40))
    before = _expanded(grouped_scores, q, key, out.astype(np.float32))
    after = hoist_divisions(before)
    assert _divisions(_loop(before.body, "t").body)  # h // group at every key
    assert not _divisions(_loop(after.body, "t").body)
    declared = [s for s in _loop(after.body, "h").body if isinstance(s, DeclareLocal)]
    assert any(_divisions((d,)) for d in declared)  # h // (the group, itself hoisted)


def test_what_varies_or_reads_memory_stays_in_the_loop():
    @kd.kernel
    def blocks(x, idx, y, n):
        i = kd.indices(x.shape[0], names="i")
        y[i] = x[i // n] + x[idx[0] // n]  # varies with i; reads idx

    x, idx = np.ones(9, np.float32), np.array([5], np.int64)
    final = hoist_divisions(_expanded(blocks, x, idx, np.empty(9, np.float32), 4))
    assert not any(isinstance(s, DeclareLocal) and _divisions((s,)) for s in final.body)
    assert len(_divisions(final.body)) >= 2


@given(
    heads=st.integers(1, 7),
    kv=st.integers(1, 4),
    keys=st.sampled_from([0, 1, 3, 17]),
    size=st.sampled_from([1, 5, 16, 19]),
)
@settings(max_examples=25, deadline=None)
def test_results_stay_the_interpreter_s(heads, kv, keys, size):
    """Groups of zero heads too (fewer query heads than kv heads: h // 0 is 0)."""
    assume(heads % kv == 0 or heads < kv)  # (else some head's group is past the keys')
    rng = keyed_rng("hoist", heads, kv, keys, size)
    q = random_array(rng, (heads, size), np.float32)
    key = random_array(rng, (kv, keys, size), np.float32)
    out, expected = np.zeros((heads, keys), np.float32), np.zeros((heads, keys), np.float32)
    grouped_scores(q, key, out)
    grouped_scores.interpret(q, key, expected)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_division_by_zero_before_a_loop_of_no_iterations_is_harmless():
    @kd.kernel
    def scaled(x, n, y):
        i = kd.indices(x.shape[0], names="i")
        y[i] = x[i] * kd.cast(100 // n, kd.f32)

    x = np.arange(5, dtype=np.float32)
    y = np.full(5, -1.0, np.float32)
    scaled(x, 0, y)  # 100 // 0 is 0 in kdsl, hoisted or not
    np.testing.assert_array_equal(y, np.zeros(5, np.float32))
    scaled(x[:0], 0, y[:0])  # no iteration: the hoisted division runs anyway, and is 0
    scaled(x, 7, y)
    np.testing.assert_array_equal(y, x * 14)


def test_a_tile_product_keeps_its_form():
    """AMX's tile product is matched by its loops' extents ((K + 1) // 2 pairs of k):
    nothing is hoisted out of it (reviewed: every tensorized kernel failed to build)."""
    from kdsl.ir.passes import lower
    from kdsl.ir.tile_product import match
    from kdsl.schedule.recipe import Schedule

    @kd.kernel
    def product(a, b, c):
        i, j, k = kd.indices(a.shape[0], b.shape[1], a.shape[1])
        c[i, j] = kd.sum(a[i, k] * b[k, j], over=k)

    a, b = np.ones((50, 77), ml_dtypes.bfloat16), np.ones((77, 40), ml_dtypes.bfloat16)
    traced = product.trace(product._specs((a, b, np.ones((50, 40), np.float32)), {})[0])
    s = Schedule(lower(traced), target="cpu", tile_instructions=lambda: frozenset({"amx"}))
    io, ii = s.split("i", 32)
    jo, jp = s.split("j", 64)
    jr, ji = s.split(jp, 32)
    s.reorder(jo, io, jr, ii, ji)
    s.split("k", 2)
    s.cache("b", at=jo, layout="vnni")
    s.vectorize(ji, 16)
    s.tensorize(ii, "amx")
    final = hoist_divisions(expand_schedule(s.kernel, contract=True))
    buffers = {x.name: x for x in final.buffers}
    tiles = [
        lp for lp in walk_stmts(final.body) if isinstance(lp, Loop) and lp.exec is LoopExec.AMX
    ]
    assert tiles and all(not isinstance(match(lp, buffers), str) for lp in tiles)


def test_a_local_that_changes_in_the_loop_stays_there():
    @kd.kernel
    def running(x, y, n):
        d = kd.local(n)
        for j in kd.range(x.shape[0]):
            y[j] = x[j // d]
            d.set(d + 1)

    x = np.arange(6, dtype=np.float32)
    y = np.zeros(6, np.float32)
    running(x, y, 1)
    np.testing.assert_array_equal(y, x[np.arange(6) // np.arange(1, 7)])
