"""Tuning CUDA schedules without a GPU: the SIMT emulator stands in for the device
(outputs) with times the test sets, and the stub driver (tests/targets/cuda/stubs.py)
records what tuned calls launch."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from kdsl import dispatch
from kdsl.autotune import registry
from kdsl.autotune.gpu import tune_gpu
from kdsl.specs import Spec
from kdsl.targets.cuda import driver
from tests.targets.cuda import simt
from tests.targets.cuda.stubs import Tensor, install

TARGET = "cuda/sm_90/emulated"
TIMES = {64: 3e-6, 32: 1e-6, 96: 2e-6}  # what each thread count "takes"


def _row_scale():
    @kd.kernel
    def row_scale(x, y):
        i, j = kd.indices(x.shape[0], x.shape[1])
        total = kd.empty(x.shape[0], x.dtype)
        total[i] = kd.sum(x[i, j] * x[i, j], over=j)
        y[i, j] = x[i, j] * total[i]

    @row_scale.schedule(kd.cuda)
    def _(s):
        s.fuse("i", "i.1")
        s.bind("i", "block.x")
        threads = s.param("threads", [64, 32, 96])
        s.bind("j", "thread.x", threads)
        s.bind("j.1", "thread.x", threads)

    return row_scale


class EmulatedBench:
    """The emulator runs each config (on copies of the host arguments); a config of
    `broken` threads returns a wrong output, as a buggy schedule would."""

    def __init__(self, kernel, host, broken=None):
        self.kernel, self.host, self.broken = kernel, host, broken

    def outputs(self, spec, config):
        args = [a.copy() if isinstance(a, np.ndarray) else a for a in self.host]
        simt.run(self.kernel, args, config)
        if config["threads"] == self.broken:
            args[1][0, 0] += 1.0
        return [a for a in args if isinstance(a, np.ndarray)]

    def seconds(self, spec, config):
        return TIMES[config["threads"]]


EXAMPLE = {"x": Spec((3, 70), kd.f32), "y": Spec((3, 70), kd.f32)}


def _tune(kernel, broken=None):
    rng = np.random.default_rng(0)  # (tune_gpu makes the same arguments from seed 0)
    host = [EXAMPLE["x"].random(rng), EXAMPLE["y"].random(rng)]
    bench = EmulatedBench(kernel, host, broken)
    return tune_gpu(kernel, EXAMPLE, budget_s=60, progress=False, bench=bench, target=TARGET)


@pytest.mark.usefixtures("cache_dir")
def test_the_fastest_right_config_is_recorded():
    kernel = _row_scale()
    report = _tune(kernel, broken=32)
    status = {t.config["threads"]: t.status for t in report.trials}
    assert status == {64: "ok", 32: "wrong", 96: "ok"}
    assert report.best == {"threads": 96} and report.best_time_s == TIMES[96]
    assert report.default_time_s == TIMES[64]
    (entry,) = registry.database().entries("row_scale")
    assert entry.target == TARGET and entry.config == {"threads": 96}
    assert entry.shape == ((3, 70), (3, 70))


@pytest.mark.usefixtures("cache_dir")
def test_gpu_calls_take_the_tuned_params(monkeypatch):
    """After tuning (threads=32 the fastest), a GPU call of the tuned shape launches
    blocks of 32 threads, and so does a call of a nearby shape; untuned, 64."""
    kernel = _row_scale()
    _tune(kernel)
    launches = install(monkeypatch.setattr, monkeypatch.setenv)
    monkeypatch.setattr(dispatch, "gpu_target_key", lambda: TARGET)
    for shape in ((3, 70), (5, 90)):
        kernel(Tensor(shape), Tensor(shape))
        assert launches[-1][2] == (32, 1, 1)
    assert kernel.stats()["tuning"] == {
        "3x70, 3x70": "tuned (cuda)",
        "5x90, 5x90": "nearest tuned shape 3x70, 3x70 (cuda)",
    }
    kernel(Tensor((3, 70)), Tensor((3, 70)))  # again: the lean path, same params
    assert launches[-1][2] == (32, 1, 1)
    untuned = _row_scale()
    monkeypatch.setattr(dispatch, "gpu_target_key", lambda: "cuda/sm_90/another GPU")
    untuned(Tensor((3, 70)), Tensor((3, 70)))
    assert launches[-1][2] == (64, 1, 1)


@pytest.mark.skipif(driver.available(), reason="a GPU is here")
def test_the_gpu_tuner_needs_a_gpu_or_a_bench():
    with pytest.raises(kd.KernelArgumentError, match="the CUDA target can't run"):
        tune_gpu(_row_scale(), EXAMPLE, budget_s=1, progress=False)
