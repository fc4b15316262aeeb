"""PTX without a GPU: every test kernel and library kernel, under the default GPU
schedule, becomes PTX that `ptxas` accepts for sm_80 and sm_90."""

from __future__ import annotations

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
