"""`fuse` of loops sharing an array at subscripts other than the loop variable itself
(kdsl/ir/dependence.py): accepted where no iteration of the second loop touches what a
later iteration of the first touches, with NumPy's results; refused where the order
would change, or where the fused loop's iterations would depend on each other."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from kdsl.ir.nodes import Kernel, Loop, LoopKind
from kdsl.ir.passes import lower
from kdsl.ir.printer import format_expr
from kdsl.ir.visit import walk_stmts
from kdsl.kernel import KernelFunction
from kdsl.schedule.recipe import Schedule
from kdsl.targets.interp.interpreter import interpret
from tests.helpers import check_kernel, keyed_rng, random_array

F = np.float32


def fused(kernel: KernelFunction, *args: object, steps=(("i", "i.1"),)) -> Kernel:
    s = Schedule(lower(kernel.ir(*args).kernel))  # type: ignore[arg-type]
    for a, b in steps:
        s.fuse(a, b)
    return s.kernel


def loops(kernel: Kernel) -> list[tuple[str, str, LoopKind]]:
    return [
        (s.var, format_expr(s.extent), s.kind)
        for s in walk_stmts(kernel.body)
        if isinstance(s, Loop)
    ]


def refused(kernel: KernelFunction, *args: object) -> str:
    with pytest.raises(kd.ScheduleError) as info:
        fused(kernel, *args)
    return str(info.value)


OUT_OF_ORDER = (
    "fusing 'i' and 'i.1' changes the result: 'i.1' would read or overwrite elements of "
    "'c' out of order"
)


# ------------------------------------------------------------------------ accepted


@kd.kernel
def cmul(a, b, c):
    i = kd.indices(a.shape[0] // 2)
    c[2 * i] = a[2 * i] * b[2 * i] - a[2 * i + 1] * b[2 * i + 1]
    c[2 * i + 1] = a[2 * i] * b[2 * i + 1] + a[2 * i + 1] * b[2 * i]


@cmul.schedule(kd.cpu)
def _(s):
    s.fuse("i", "i.1")


@pytest.mark.parametrize("n", [1, 7, 1021])
def test_interleaved_complex_multiply_fuses(n):
    """c[2*i] and c[2*i + 1] never meet: one parallel loop, NumPy's complex product."""
    rng = keyed_rng("cmul", n)
    a, b = (random_array(rng, (2 * n,), F) for _ in range(2))
    c = np.zeros(2 * n, F)
    assert loops(fused(cmul, a, b, c)) == [("i", "a.shape[0] // 2", LoopKind.PARALLEL)]
    want = (a.view(np.complex64) * b.view(np.complex64)).view(F)
    check_kernel(cmul, [a, b, c], {2: want})


@kd.kernel
def scatter_rows(c, x, idx):
    i = kd.indices(x.shape[0])
    c[idx[i], 2 * i] = x[i]
    c[idx[i], 2 * i + 1] = x[i] * 2.0


def test_one_axis_proves_the_loops_apart():
    """A data-dependent row proves nothing; the interleaved columns do."""
    rng = keyed_rng("scatter_rows")
    x, idx = random_array(rng, (9,), F), rng.integers(0, 4, 9).astype(np.int64)
    c = np.zeros((4, 18), F)
    kernel = fused(scatter_rows, c, x, idx)
    assert [kind for _, _, kind in loops(kernel)] == [LoopKind.PARALLEL]
    interpret(kernel, {"c": c, "x": x, "idx": idx})
    want = np.zeros((4, 18), F)
    want[idx, 2 * np.arange(9)], want[idx, 2 * np.arange(9) + 1] = x, x * 2
    np.testing.assert_array_equal(c, want)


@kd.kernel
def two_steps(x, y, z):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * 2
    z[i] = y[i] + 1


def test_loops_split_alike_fuse():
    """y[io*4 + ii] and y[io*4 + i.1i], ii and i.1i < 4: apart in different iterations of
    io, and then of ii (io the same)."""
    x = random_array(keyed_rng("split_alike"), (9,), F)
    y, z = np.zeros(9, F), np.zeros(9, F)
    s = Schedule(lower(two_steps.ir(x, y, z).kernel))  # type: ignore[arg-type]
    s.split("i", 4)
    s.split("i.1", 4)
    s.fuse("io", "i.1o")
    s.fuse("ii", "i.1i")
    assert loops(s.kernel) == [
        ("io", "(x.shape[0] + 3) // 4", LoopKind.PARALLEL),
        ("ii", "min(4, x.shape[0] - io * 4)", LoopKind.PARALLEL),
    ]
    interpret(s.kernel, {"x": x, "y": y, "z": z})
    np.testing.assert_allclose(z, x * 2 + 1, rtol=1e-6)


@kd.kernel
def ahead(c, x):
    i = kd.indices(x.shape[0])
    c[2 * i + 2] = x[i]
    c[2 * i] = x[i] * 2.0


@ahead.schedule(kd.cpu)
def _(s):
    s.fuse("i", "i.1")


def test_what_an_earlier_iteration_wrote_is_refused_for_parallel_loops():
    """c[2*i + 2] of iteration i is overwritten by c[2*i] of iteration i + 1, as when the
    loops run one after the other: fused, that order holds only if the loop stays
    serial, which the user didn't ask for (nor could parallelize or vectorize it)."""
    msg = refused(ahead, np.zeros(8, F), np.zeros(3, F))
    assert "depend on each other" in msg and "'c'" in msg and "kd.range" in msg, msg


# ------------------------------------------------------------------------- refused


@kd.kernel
def behind(c, x):
    i = kd.indices(x.shape[0])
    c[2 * i] = x[i]
    c[2 * i + 2] = x[i] * 2.0


@kd.kernel
def scalar_stride(c, x, m):
    i = kd.indices(x.shape[0])
    c[m * i] = x[i]
    c[m * i + 1] = x[i] * 2.0


@kd.kernel
def shape_stride(c, x):
    i = kd.indices(x.shape[0])
    c[x.shape[0] * i] = x[i]
    c[x.shape[0] * i + 1] = x[i] * 2.0


@kd.kernel
def gather(c, x, idx):
    i = kd.indices(x.shape[0])
    c[idx[i]] = x[i]
    x[i] = c[i] * 2.0


@kd.kernel
def scatter_rows_two_apart(c, x, idx):
    i = kd.indices(x.shape[0])
    c[2 * i, idx[i]] = x[i]
    c[2 * i + 2, idx[i]] = x[i] * 2.0


@pytest.mark.parametrize(
    "kernel, args",
    [
        # iteration i of the second loop writes c[2*i + 2], which iteration i + 1 of the
        # first writes too: fused, the first loop's write would win
        (behind, (np.zeros(8, F), np.zeros(3, F))),
        (scalar_stride, (np.zeros(8, F), np.zeros(3, F), 1)),
        (shape_stride, (np.zeros(10, F), np.zeros(3, F))),
        (gather, (np.zeros(8, F), np.zeros(3, F), np.zeros(3, np.int64))),
        (scatter_rows_two_apart, (np.zeros((8, 2), F), np.zeros(3, F), np.zeros(3, np.int64))),
    ],
    ids=["two-apart", "scalar-stride", "shape-stride", "gather", "rows-two-apart"],
)
def test_what_may_meet_out_of_order_is_refused(kernel, args):
    """Rows two apart; a symbolic coefficient (a scalar, a shape: 1 would make the
    subscripts neighbours); a data-dependent subscript; a column that proves nothing."""
    msg = refused(kernel, *args)
    assert OUT_OF_ORDER in msg, msg
    assert "fuse only loops whose shared buffers are indexed by the loop variable" in msg, msg
