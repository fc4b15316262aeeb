"""The host side of a GPU call, without a GPU: the driver is replaced by a recorder, and
arrays by stand-ins for PyTorch CUDA tensors. The lean path that cached calls take
(`CudaSpecialization.run_tensors`) must queue exactly what the careful path (`run`)
queues, and hand anything it does not handle to the careful path, whose errors the
user sees."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from kdsl.schedule.default import ELEMENTS_PER_THREAD
from tests.targets.cuda.stubs import Tensor, install


@pytest.fixture
def launches(monkeypatch):
    return install(monkeypatch.setattr, monkeypatch.setenv)


def _saxpy():
    @kd.kernel
    def saxpy(a, x, y, out):
        i = kd.indices(x.shape[0])
        out[i] = a * x[i] + y[i]

    return saxpy


def _careful_and_lean(kernel, args, launches):
    """The launches of a first call (the careful path) and of a second (the lean one)."""
    kernel(*args)
    (spec,) = kernel._fast_cuda.values()
    launches.words = spec.count
    launches.clear()
    spec.run(args)
    careful = list(launches)
    launches.clear()
    kernel(*args)
    return careful, list(launches)


@pytest.mark.parametrize("n", [1, 257, 100003])
def test_the_lean_path_queues_what_the_careful_path_does(launches, n):
    args = [2.5, Tensor([n]), Tensor([n]), Tensor([n])]
    careful, lean = _careful_and_lean(_saxpy(), args, launches)
    assert len(lean) == 1 and lean == careful
    fn, grid, block, stream, words, shared = lean[0]
    per_block = block[0] * ELEMENTS_PER_THREAD  # (the default schedule's)
    assert stream == 77 and shared == 0 and grid[0] == min(-(-n // per_block), 132 * 32)
    assert words[0] == args[1].data_ptr() and n in words


def test_strided_arguments_pass_their_strides(launches):
    @kd.kernel
    def scale_rows(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = 2.0 * x[i, j]

    base = np.empty(7 * 20, "f4")
    x = Tensor([7, 9], strides=(20, 2), base=base)  # every other column of a wider array
    careful, lean = _careful_and_lean(scale_rows, [x, Tensor([7, 9])], launches)
    assert lean == careful
    assert 80 in lean[0][4] and 8 in lean[0][4]  # x's strides in bytes


def test_halves_of_one_matrix_share_no_memory(launches):
    """Their address ranges meet, their elements don't: both paths launch (they were
    refused); halves that do meet are refused before any launch."""

    @kd.kernel
    def scale_rows(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = 2.0 * x[i, j]

    memory = np.empty(6 * 8, "f4")
    left, right = (Tensor([6, 4], strides=(8, 1), base=memory[k:]) for k in (0, 4))
    for _ in range(2):  # the careful path, then the lean one
        launches.clear()
        scale_rows(left, right)
        assert len(launches) == 1
    launches.clear()
    with pytest.raises(kd.KernelArgumentError, match="share memory"):
        scale_rows(left, Tensor([6, 4], strides=(8, 1), base=memory[2:]))
    assert not launches


def test_an_array_updated_in_place(launches):
    """out = a·x + y with out the same tensor as x: each element is read only by the
    thread that writes it, so the call is queued (the CPU's rule: test_overlap.py); a
    view of it one element along is refused."""
    saxpy = _saxpy()
    x = Tensor([10])
    for _ in range(2):  # the careful path, then the lean one (which hands it over)
        launches.clear()
        saxpy(1.0, x, Tensor([10]), x)
        assert len(launches) == 1
    with pytest.raises(kd.KernelArgumentError, match="share memory"):
        saxpy(1.0, x, Tensor([10]), Tensor([10], base=x.memory[1:]))


def test_new_shapes_get_new_grids(launches):
    saxpy = _saxpy()
    saxpy(1.0, Tensor([10]), Tensor([10]), Tensor([10]))
    (spec,) = saxpy._fast_cuda.values()
    launches.words = spec.count
    grids = []
    for n in (10, 5000, 10):
        launches.clear()
        saxpy(1.0, Tensor([n]), Tensor([n]), Tensor([n]))
        grids.append(launches[0][1][0])
    assert grids[0] == grids[2] < grids[1]


def test_what_the_lean_path_leaves_gets_the_careful_paths_errors(launches):
    saxpy = _saxpy()
    saxpy(1.0, Tensor([10]), Tensor([10]), Tensor([10]))
    launches.clear()
    with pytest.raises(kd.ShapeError, match="x.shape"):
        saxpy(1.0, Tensor([10]), Tensor([11]), Tensor([10]))
    x = Tensor([10])
    with pytest.raises(kd.KernelArgumentError, match="share memory"):
        saxpy(1.0, x, Tensor([10]), Tensor([10], base=x.memory[1:]))
    with pytest.raises(kd.KernelArgumentError, match="different GPUs"):
        saxpy(1.0, Tensor([10]), Tensor([10], device=1), Tensor([10]))
    assert not launches


def test_library_kernels_through_the_lean_path(launches):
    """A library kernel with schedule params (looked up in the tuning database for this
    GPU: untuned here) queues the same launch from both paths. (A copy of it: the stub
    driver's entries must never reach the library kernel that a GPU test runs.)"""
    from kdsl.kernels import norms

    kernel = kd.kernel(norms.rmsnorm_rows.fn, name="rmsnorm_rows_on_stubs")
    kernel.schedule(kd.cuda)(norms._rms_cuda)
    args = [Tensor([5, 300]), Tensor([300]), 1e-5, Tensor([5, 300])]
    careful, lean = _careful_and_lean(kernel, args, launches)
    assert lean == careful and lean[0][2] == (512, 1, 1)  # threads: the first choice


def test_host_checks_that_read_scalars_are_made_for_each_value(launches):
    """The lean path's cache of checked shapes is keyed by the scalars too: a count that
    fits the arrays once and not the next time is refused the next time."""

    @kd.kernel
    def head(x, y, n):
        i = kd.indices(n)
        y[i] = 2.0 * x[i]

    head(Tensor([10]), Tensor([10]), 10)
    head(Tensor([10]), Tensor([10]), 10)
    launches.clear()
    with pytest.raises(kd.ShapeError, match="n <= x.shape"):
        head(Tensor([10]), Tensor([10]), 11)
    assert not launches


def test_an_output_that_overlaps_itself_is_refused_on_both_paths(launches):
    """A written tensor with a stride of 0 (expand()'s view, made writable): the
    threads would race on its shared elements."""

    @kd.kernel
    def scale_rows(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        y[i, j] = 2.0 * x[i, j]

    scale_rows(Tensor([6, 4]), Tensor([6, 4]))  # cached: the next calls take the lean path
    launches.clear()
    for _ in range(2):
        with pytest.raises(kd.KernelArgumentError, match="'y' overlaps itself"):
            scale_rows(Tensor([6, 4]), Tensor([6, 4], strides=(0, 1)))
    assert not launches
