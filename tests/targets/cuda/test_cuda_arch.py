"""KDSL_CUDA_ARCH names an architecture kdsl builds for, or the PTX is refused with the
ones it does (LLVM alone would print warnings and emit `.target sm_bogus`, or stop
the process for an sm_100); a GPU newer than those gets sm_90's PTX. No GPU needed."""

from __future__ import annotations

import numpy as np
import pytest

import kdsl as kd
from kdsl.targets.cuda import driver, ptx


@kd.kernel
def scale(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * 2.0


@pytest.mark.parametrize("value", ["bogus", "sm_bogus", "sm_100", "75a", "sm_35"])
def test_an_unknown_arch_is_refused_naming_the_known_ones(value, monkeypatch):
    monkeypatch.setenv("KDSL_CUDA_ARCH", value)
    with pytest.raises(kd.CompileError) as info:
        ptx.arch()
    message = str(info.value)
    assert f"KDSL_CUDA_ARCH={value!r} is not a GPU architecture kdsl builds for" in message
    assert "fix: set it to one of sm_50, sm_52" in message and "sm_90, sm_90a" in message


def test_kernel_ptx_says_it_too(monkeypatch):
    monkeypatch.setenv("KDSL_CUDA_ARCH", "bogus")
    x = np.ones(8, np.float32)
    with pytest.raises(kd.CompileError, match="KDSL_CUDA_ARCH='bogus'") as info:
        scale.ptx(x, x.copy())
    assert "in kernel 'scale'" in str(info.value)


@pytest.mark.parametrize("value, sm", [("sm_75", "sm_75"), ("90", "sm_90"), ("sm_90a", "sm_90a")])
def test_a_known_arch_is_built_for(value, sm, monkeypatch):
    monkeypatch.setenv("KDSL_CUDA_ARCH", value)
    assert ptx.arch() == sm
    x = np.ones(8, np.float32)
    assert f".target {sm}" in scale.ptx(x, x.copy())


@pytest.mark.parametrize(
    "device, sm", [("sm_86", "sm_86"), ("sm_100", "sm_90"), ("sm_120", "sm_90"), (None, "sm_80")]
)
def test_the_device_arch_without_the_setting(device, sm, monkeypatch):
    monkeypatch.delenv("KDSL_CUDA_ARCH", raising=False)
    monkeypatch.setattr(driver, "device_arch", lambda device_index=0: device)
    assert ptx.arch() == sm
