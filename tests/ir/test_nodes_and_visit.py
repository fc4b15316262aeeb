"""IR nodes and the shared traversals: children, walk, map, rename."""

from __future__ import annotations

import pytest

import kdsl as kd
from kdsl.errors import SourceLoc
from kdsl.ir.nodes import (
    Allocate,
    Assign,
    Binary,
    BinaryOp,
    Buffer,
    BufferRole,
    Cast,
    Check,
    CheckKind,
    Const,
    DeclareLocal,
    DimOf,
    Fma,
    If,
    Kernel,
    Load,
    LocalVar,
    Loop,
    LoopKind,
    LoopVar,
    Param,
    ScalarArg,
    Scope,
    Select,
    Store,
    Unary,
    UnaryOp,
)
from kdsl.ir.visit import (
    children,
    map_expr,
    map_stmt_exprs,
    rename_loop_vars,
    stmt_exprs,
    walk_all_exprs,
    walk_expr,
    walk_stmts,
)

I, J = LoopVar("i"), LoopVar("j")  # noqa: E741
N = DimOf("x", 0)
LOC = SourceLoc("user.py", 12, 4, 9)


def add(a, b, d=kd.i64):
    return Binary(BinaryOp.ADD, a, b, d)


def c64(v):
    return Const(v, kd.i64)


def load(*index):
    return Load("x", tuple(index), kd.f32)


def nest():
    """for i: for j in range(i): if j < i: x[i + j] = x[j] (a triangular nest)."""
    store = Store("x", (add(I, J),), load(J), loc=LOC)
    guarded = If(Binary(BinaryOp.LT, J, I, kd.bool_), (store,))
    inner = Loop("j", I, LoopKind.PARALLEL, (guarded,))
    return Loop("i", N, LoopKind.PARALLEL, (inner,))


# ------------------------------------------------------------------------------ nodes


def test_source_locations_stay_out_of_equality_hash_and_repr():
    with_loc, without = Load("x", (I,), kd.f32, loc=LOC), Load("x", (I,), kd.f32)
    assert with_loc == without and hash(with_loc) == hash(without)
    assert "user.py" not in repr(with_loc)
    assert Store("x", (I,), c64(1), loc=LOC) == Store("x", (I,), c64(1))


def test_nodes_differ_by_dtype_and_operator():
    assert Const(1, kd.i32) != Const(1, kd.i64)
    assert add(I, J) != Binary(BinaryOp.SUB, I, J, kd.i64)


def test_nodes_are_frozen():
    with pytest.raises(AttributeError):
        I.name = "k"  # type: ignore[misc]


def test_comparison_operators_are_flagged():
    assert {op for op in BinaryOp if op.is_comparison} == {
        BinaryOp.LT,
        BinaryOp.LE,
        BinaryOp.EQ,
        BinaryOp.NE,
        BinaryOp.GE,
        BinaryOp.GT,
    }


def test_float_only_unary_ops():
    assert not UnaryOp.NEG.float_only and not UnaryOp.ABS.float_only
    assert not UnaryOp.INVERT.float_only
    assert UnaryOp.EXP.float_only and UnaryOp.SQRT.float_only and UnaryOp.FLOOR.float_only


def test_param_buffer_and_kernel_accessors():
    x = Buffer("x", kd.f32, (N, c64(4)), BufferRole.PARAM, Scope.GLOBAL)
    k = Kernel("k", (Param("x", kd.f32, 2), Param("s", kd.f64, None)), (x,), ())
    assert k.params[0].is_array and not k.params[1].is_array
    assert k.buffer("x").ndim == 2
    with pytest.raises(KeyError):
        k.buffer("y")


def test_loop_var_defaults_to_the_index_dtype():
    assert LoopVar("i").dtype == kd.i64 and DimOf("x", 0).dtype == kd.i64


# --------------------------------------------------------------------------- children


@pytest.mark.parametrize(
    "expr, expected",
    [
        (c64(1), ()),
        (I, ()),
        (LocalVar("acc", kd.f32), ()),
        (ScalarArg("s", kd.f64), ()),
        (N, ()),
        (Load("x", (I, J), kd.f32), (I, J)),
        (add(I, J), (I, J)),
        (Unary(UnaryOp.NEG, I, kd.i64), (I,)),
        (Cast(I, kd.f32), (I,)),
        (Select(Const(True, kd.bool_), I, J, kd.i64), (Const(True, kd.bool_), I, J)),
        (Fma(load(I), load(J), load(c64(0)), kd.f32), (load(I), load(J), load(c64(0)))),
    ],
)
def test_children_in_operand_order(expr, expected):
    assert children(expr) == expected


def test_children_rejects_a_statement():
    with pytest.raises(TypeError, match="not an IR expression"):
        children(Allocate("t"))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- walk


def test_walk_expr_visits_parents_before_children_left_to_right():
    e = add(Binary(BinaryOp.MUL, I, c64(2), kd.i64), J)
    assert list(walk_expr(e)) == [e, e.lhs, I, c64(2), J]


def test_walk_stmts_is_program_order_with_nested_statements():
    loop = nest()
    kinds = [type(s).__name__ for s in walk_stmts((Allocate("t"), loop))]
    assert kinds == ["Allocate", "Loop", "Loop", "If", "Store"]


def test_stmt_exprs_are_only_the_statements_own():
    loop = nest()
    assert stmt_exprs(loop) == (N,)  # not the expressions of its body
    store = Store("x", (I, J), c64(3))
    assert stmt_exprs(store) == (I, J, c64(3))
    assert stmt_exprs(Allocate("t")) == ()
    assert stmt_exprs(Check(Const(True, kd.bool_), CheckKind.SHAPE, "ok")) == (
        Const(True, kd.bool_),
    )


def test_walk_all_exprs_finds_loads_at_any_depth():
    loads = [e for e in walk_all_exprs((nest(),)) if isinstance(e, Load)]
    assert loads == [load(J)]


# -------------------------------------------------------------------------------- map


def test_map_expr_with_no_replacement_gives_an_equal_tree():
    e = Select(
        Binary(BinaryOp.LT, I, J, kd.bool_),
        Fma(load(I), load(J), Cast(I, kd.f32), kd.f32),
        Unary(UnaryOp.NEG, load(c64(0)), kd.f32),
        kd.f32,
    )
    assert map_expr(e, lambda x: None) == e


def test_map_expr_rebuilds_children_before_parents():
    seen: list[object] = []

    def fn(x):
        seen.append(x)
        return c64(7) if x == c64(1) else None

    out = map_expr(add(c64(1), add(c64(1), I)), fn)
    assert out == add(c64(7), add(c64(7), I))
    assert seen[-1] == out  # the parent is visited last, with its rebuilt children


def test_map_expr_replacement_of_the_root():
    assert map_expr(I, lambda x: J if x == I else None) == J


def test_map_expr_keeps_the_source_location_of_rebuilt_nodes():
    e = Load("x", (I,), kd.f32, loc=LOC)
    out = map_expr(e, lambda x: J if x == I else None)
    assert out.index == (J,) and out.loc == LOC


def test_map_stmt_exprs_reaches_nested_statements_and_extents():
    out = map_stmt_exprs(nest(), lambda x: c64(5) if x == N else None)
    assert out.extent == c64(5)
    swapped = map_stmt_exprs(nest(), lambda x: DimOf("y", 0) if x == J else None)
    store = list(walk_stmts((swapped,)))[-1]
    assert store.index == (add(I, DimOf("y", 0)),) and store.loc == LOC


def test_map_stmt_exprs_on_every_statement_kind():
    body = (
        DeclareLocal("acc", kd.i64, c64(1)),
        Assign("acc", add(LocalVar("acc", kd.i64), c64(1))),
        Check(Binary(BinaryOp.EQ, c64(1), N, kd.bool_), CheckKind.SHAPE, "n"),
        Allocate("t"),
    )
    out = tuple(map_stmt_exprs(s, lambda x: c64(2) if x == c64(1) else None) for s in body)
    assert out[0].init == c64(2)
    assert out[1].value == add(LocalVar("acc", kd.i64), c64(2))
    assert out[2].cond.lhs == c64(2)
    assert out[3] == Allocate("t")


# ----------------------------------------------------------------------------- rename


def test_rename_loop_vars_renames_loops_and_their_uses():
    out = rename_loop_vars(nest(), {"i": "a", "j": "b"})
    names = {e.name for e in walk_all_exprs((out,)) if isinstance(e, LoopVar)}
    loops = [s.var for s in walk_stmts((out,)) if isinstance(s, Loop)]
    assert names == {"a", "b"} and loops == ["a", "b"]
    assert out.body[0].extent == LoopVar("a")  # the inner extent uses the outer loop


def test_rename_loop_vars_round_trips():
    original = nest()
    there = rename_loop_vars(original, {"i": "i.1", "j": "j.1"})
    assert there != original
    assert rename_loop_vars(there, {"i.1": "i", "j.1": "j"}) == original


def test_rename_loop_vars_can_swap_names():
    swapped = rename_loop_vars(nest(), {"i": "j", "j": "i"})
    assert [s.var for s in walk_stmts((swapped,)) if isinstance(s, Loop)] == ["j", "i"]
    assert rename_loop_vars(swapped, {"i": "j", "j": "i"}) == nest()


def test_rename_loop_vars_leaves_locals_and_other_loops_alone():
    body = (DeclareLocal("i", kd.f32, Const(0.0, kd.f32)), Store("x", (J,), LocalVar("i", kd.f32)))
    loop = Loop("j", N, LoopKind.PARALLEL, body)
    out = rename_loop_vars(loop, {"i": "z"})
    assert out == loop


def test_rename_keeps_loop_attributes_and_locations():
    loop = Loop("i", N, LoopKind.REDUCTION, (), width=4, loc=LOC)
    out = rename_loop_vars(loop, {"i": "k"})
    assert (out.var, out.kind, out.width, out.loc) == ("k", LoopKind.REDUCTION, 4, LOC)
