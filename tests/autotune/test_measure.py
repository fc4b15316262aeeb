"""Measuring candidates: the output check, and a measuring process that survives wrong,
crashing and hanging candidates; the compile pool survives a dying worker."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

import kdsl as kd
from kdsl.autotune.measure import Candidate, Measurer, compare
from kdsl.autotune.tuner import _Session
from kdsl.autotune.worker import Failure, WorkerPool
from kdsl.ir.nodes import Loop, Stmt, Store
from kdsl.kernel import KernelFunction
from kdsl.targets.cpu import backend

# ------------------------------------------------------------------------- compare


def test_compare_accepts_reassociation_rounding() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 512), dtype=np.float32)
    b = rng.standard_normal((512, 64), dtype=np.float32)
    exact = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)
    blocked = sum(a[:, k : k + 16] @ b[k : k + 16] for k in range(0, 512, 16))
    assert not np.array_equal(blocked, exact)  # the orders really round differently
    assert compare([blocked], [exact]) is None


def test_compare_rejects_a_real_difference() -> None:
    want = np.linspace(-1, 1, 1000, dtype=np.float32)
    got = want.copy()
    got[637] += 0.01  # 1% of the largest output
    problem = compare([got], [want])
    assert problem is not None and "output 0" in problem and "637" in problem


def test_compare_tolerance_follows_the_dtype() -> None:
    want = np.linspace(1, 2, 100)
    nudged = want * (1 + 1e-6)  # fine in f32, too much for f64
    assert compare([nudged.astype(np.float32)], [want.astype(np.float32)]) is None
    assert compare([nudged], [want]) is not None


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.bool_])
def test_compare_integers_must_match_exactly(dtype: type) -> None:
    want = (np.arange(50) % 2).astype(dtype)
    assert compare([want.copy()], [want]) is None
    got = want.copy()
    got[9] = not got[9] if dtype is np.bool_ else got[9] + 1
    problem = compare([got], [want])
    assert problem is not None and "integers must match" in problem and "9" in problem


def test_compare_nan_positions_must_match() -> None:
    want = np.array([1.0, np.nan, 3.0], np.float32)
    assert compare([want.copy()], [want]) is None
    assert compare([np.array([1.0, 2.0, 3.0], np.float32)], [want]) is not None
    assert compare([np.array([np.nan, np.nan, 3.0], np.float32)], [want]) is not None


def test_compare_checks_shapes_and_output_count() -> None:
    want = np.zeros((4, 4), np.float32)
    assert "shape" in compare([np.zeros((4, 5), np.float32)], [want])  # type: ignore[operator]
    assert "outputs" in compare([want, want], [want])  # type: ignore[operator]


# ------------------------------------------------------------- the measuring process

EXAMPLE = {"x": kd.spec((100,), kd.f32), "y": kd.spec((100,), kd.f32)}


@kd.kernel
def measure_double(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * 2.0


@kd.kernel
def measure_triple(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * 3.0


@kd.kernel
def measure_endless(x, y):
    i, k = kd.indices(x.shape[0], 10**9)
    y[i] = kd.sum(x[i] * kd.cast(k, kd.f32), over=k)  # 10^11 multiply-adds: minutes


@kd.kernel(checks=False)
def measure_wild_store(x, y):
    i = kd.indices(x.shape[0])
    # terabytes outside y: kdsl checks this store where it runs (nothing proves it
    # before), so its candidate is compiled without that check, as a miscompile would be
    y[i * i * (x.shape[0] * 1000000000000)] = x[i]


def _unchecked(body: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
    """`body` with its stores' run-time bounds checks dropped."""
    return tuple(
        replace(s, checked=False)
        if isinstance(s, Store)
        else replace(s, body=_unchecked(s.body))
        if isinstance(s, Loop)
        else s
        for s in body
    )


def candidate(kernel: KernelFunction) -> Candidate:
    """The kernel under its default schedule, compiled here, ready to send to a Measurer."""
    session = _Session(kernel, EXAMPLE, jobs=0)
    final = kernel.scheduled_ir(session.traced)
    if kernel is measure_wild_store:
        final = replace(final, body=_unchecked(final.body))
    key = backend.kernel_key(final, kernel.checks, kernel.strict_fp)
    return session.candidate(final, backend.build_object(final, key, kernel.checks, False))


@pytest.fixture(scope="module")
def candidates() -> dict[str, Candidate]:
    kernels = (measure_double, measure_triple, measure_endless, measure_wild_store)
    return {k.name: candidate(k) for k in kernels}


@pytest.fixture
def measurer(candidates: dict[str, Candidate]) -> Iterator[Measurer]:
    examples = [EXAMPLE["x"], EXAMPLE["y"]]
    m = Measurer(examples, seed=0, reference=candidates["measure_double"])
    yield m
    m.close()


@pytest.fixture
def no_core_dumps() -> Iterator[None]:
    """Crashing workers (children inherit the limit) leave no core files behind."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    yield
    resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


def test_reference_itself_measures_ok(measurer: Measurer, candidates: dict[str, Candidate]) -> None:
    outcome = measurer.measure(candidates["measure_double"], 0.01, None, timeout=60)
    assert outcome.status == "ok"
    assert outcome.time_s is not None and 0 < outcome.time_s < 1e-2


def test_other_kernels_outputs_are_wrong(
    measurer: Measurer, candidates: dict[str, Candidate]
) -> None:
    outcome = measurer.measure(candidates["measure_triple"], 0.01, None, timeout=60)
    assert outcome.status == "wrong" and outcome.time_s is None
    assert outcome.detail.startswith("'y' differs: ")  # named: the second array
    assert measurer.restarts == 0


@pytest.mark.usefixtures("no_core_dumps")
def test_crashing_candidate_is_reported_and_measuring_goes_on(
    measurer: Measurer, candidates: dict[str, Candidate]
) -> None:
    crashed = measurer.measure(candidates["measure_wild_store"], 0.01, None, timeout=60)
    assert crashed.status == "crashed"
    assert "died (exit code -" in crashed.detail  # killed by a signal
    assert measurer.restarts == 1
    after = measurer.measure(candidates["measure_double"], 0.01, None, timeout=60)
    assert after.status == "ok"  # a fresh process with the same inputs and reference
    wrong = measurer.measure(candidates["measure_triple"], 0.01, None, timeout=60)
    assert wrong.status == "wrong"
    assert measurer.restarts == 1


def test_candidate_past_its_time_is_stopped(
    measurer: Measurer, candidates: dict[str, Candidate]
) -> None:
    late = measurer.measure(candidates["measure_endless"], 0.01, None, timeout=0.2)
    assert late.status == "timeout" and "no answer in 0.2 s" in late.detail
    assert measurer.restarts == 1
    assert measurer.measure(candidates["measure_double"], 0.01, None, timeout=60).status == "ok"


# ------------------------------------------------------------------ the compile pool


class ExitOnArrival:
    """A request argument whose unpickling ends the worker process (exit code 3)."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return os._exit, (3,)


def test_pool_replaces_a_dying_worker() -> None:
    kernel = measure_double
    session = _Session(kernel, EXAMPLE, jobs=0)
    final = kernel.scheduled_ir(session.traced)
    build = ("build", (final, backend.kernel_key(final, False, False), False, False))
    pool = WorkerPool(1)
    try:
        died, built = pool.run([("build", (ExitOnArrival(),)), build])
        assert isinstance(died, Failure) and died.status == "crashed"
        assert "exit code 3" in died.detail
        assert isinstance(built, backend.ObjectCode)  # on the replacement worker
        (worker,) = pool.workers
        assert worker.alive
        (again,) = pool.run([build])
        assert isinstance(again, backend.ObjectCode) and again.code == built.code
    finally:
        pool.close()
