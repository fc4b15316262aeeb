"""PTX without a GPU: every test kernel and library kernel, under the default GPU
schedule, becomes PTX that `ptxas` accepts for sm_80 and sm_90."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kdsl.targets.cuda import ptx as nvptx
from tests.targets.cuda.cases import cases

CASES = cases(np.random.default_rng(7))
needs_ptxas = pytest.mark.skipif(nvptx.ptxas_path() is None, reason="ptxas is not on PATH")


@needs_ptxas
@pytest.mark.parametrize("sm", ["sm_80", "sm_90"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_ptx_assembles(case, sm, monkeypatch):
    monkeypatch.setenv("KDSL_CUDA_ARCH", sm)
    text = case.kernel.ptx(*case.args)
    assert f".target {sm}" in text
    report = nvptx.assemble(text, sm)
    assert "Compiling entry function" in report


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_host_side_of_the_call_builds(case, monkeypatch):
    """What the host keeps for each call (argument format, the written arrays, the
    shapes it allocates) is made from the compiled kernel, the schedule's own buffers
    included, without a GPU; the arrays the case writes are among those the call checks
    before writing."""
    monkeypatch.setenv("KDSL_CUDA_ARCH", "sm_90")
    kernel = case.kernel
    specs, _ = kernel._specs(case.args, {})
    traced = kernel.trace(specs)
    spec = kernel.build_cuda(traced, kernel.call_layout(specs, traced))
    names = kernel.signature.names
    assert {names[pos] for pos in case.expected if pos >= 0} <= set(spec.written)
    assert struct.calcsize(spec.format) == 8 * spec.count
