"""kdsl.kernels.matvec: the row-streaming matrix-vector products against NumPy, for every
row tile of the schedule, on shapes around the lanes and the tiles."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from kdsl.kernels.peak import read_probe

from tests.helpers import random_array, run_config

mv = importlib.import_module("kdsl.kernels.matvec")  # the module: `matvec` is also its function

# rows and columns around the lanes (16) and the row tiles (8, 4, 2, 1), and none at all
SHAPES = [(1, 1), (0, 5), (3, 0), (7, 15), (13, 16), (9, 33), (37, 50), (64, 768)]


@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize(
    "kernel",
    [mv.matvec_kernel, mv.matvec_add_kernel, mv.matvec_long_rows, mv.matvec_add_long_rows],
    ids=lambda k: k.name,
)
@pytest.mark.parametrize(
    "config",
    [{"rows": 8}, {"rows": 4}, {"rows": 2}, {"rows": 1}, {"rows": 1, "prefetch": 0}],
    ids=str,
)
def test_every_row_tile(kernel, rows: int, cols: int, config: dict[str, int]) -> None:
    rng = np.random.default_rng(rows * 100 + cols)
    w, x = random_array(rng, (rows, cols), np.float32), random_array(rng, (cols,), np.float32)
    y = random_array(rng, (rows,), np.float32)
    adds = kernel in (mv.matvec_add_kernel, mv.matvec_add_long_rows)
    want = w.astype(np.float64) @ x + (y if adds else 0)
    run_config(kernel, config, w, x, y)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_public_function_strides_and_accumulate() -> None:
    rng = np.random.default_rng(1)
    w = random_array(rng, (50, 90), np.float32)[::2, 1::2]  # strided rows and columns
    x = random_array(rng, (45,), np.float32)
    np.testing.assert_allclose(mv.matvec(w, x), w @ x, rtol=1e-5, atol=1e-5)
    out = random_array(rng, (25,), np.float32)
    want = out + w @ x
    assert mv.matvec(w, x, out=out, accumulate=True) is out
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("accumulate", [False, True])
def test_rows_are_streamed_by_their_length(accumulate: bool) -> None:
    """Short rows one at a time, long ones several at a time: both kernels give w @ x."""
    rng = np.random.default_rng(3)
    for cols in (mv.LONG_ROW - 1, mv.LONG_ROW + 3):
        kernel = mv.matvec_for(cols, accumulate)
        assert (kernel.name.endswith("long_rows")) == (cols >= mv.LONG_ROW)
        w, x = random_array(rng, (11, cols), np.float32), random_array(rng, (cols,), np.float32)
        out = random_array(rng, (11,), np.float32)
        want = w.astype(np.float64) @ x + (out if accumulate else 0)
        mv.matvec(w, x, out=out, accumulate=accumulate)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("accumulate", [False, True])
def test_rows_that_descend_in_memory_are_read_in_ascending_order(
    accumulate: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """w[::-1] (a negative row stride) reaches the kernel as its rows in memory order, the
    sums written in reverse; the result is w @ x all the same."""
    rng = np.random.default_rng(4)
    seen = []
    real = mv.matvec_for

    def spy(cols: int, add: bool = False):
        kernel = real(cols, add)
        return lambda w, x, y: (seen.append((w.strides[0], y.strides[0])), kernel(w, x, y))

    monkeypatch.setattr(mv, "matvec_for", spy)
    for rows, cols in [(1, 7), (37, 90), (5, mv.LONG_ROW + 3)]:
        base = random_array(rng, (rows, cols + 2), np.float32)
        w, x = base[::-1, 1:-1], random_array(rng, (cols,), np.float32)
        out = random_array(rng, (rows,), np.float32)
        want = w.astype(np.float64) @ x + (out if accumulate else 0)
        seen.clear()
        assert mv.matvec(w, x, out=out, accumulate=accumulate) is out
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)
        assert seen == [(base.strides[0], -4)]


def test_bad_shapes_are_clear_errors() -> None:
    w, x = np.ones((4, 3), np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="can't multiply"):
        mv.matvec(w, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="'out' has shape"):
        mv.matvec(w, x, out=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="pass out="):
        mv.matvec(w, x, accumulate=True)


def test_the_read_probe_sums_rows() -> None:
    x = random_array(np.random.default_rng(2), (37, 50), np.float32)
    out = np.empty(37, np.float32)
    read_probe(x, out)
    np.testing.assert_allclose(out, x.sum(axis=1), rtol=1e-5, atol=1e-5)
