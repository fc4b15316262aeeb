"""Golden tests of printed IR: a reviewer reads a diff of loops (--update-golden rewrites)."""

from __future__ import annotations

import numpy as np
import pytest

from kdsl.targets.cpu import jit
from tests import zoo
from tests.helpers import check_golden

F = np.float32
CASES = {
    "matmul": (zoo.matmul, lambda: [np.ones((4, 3), F), np.ones((3, 2), F), np.ones((4, 2), F)]),
    "softmax": (zoo.softmax, lambda: [np.ones((4, 3), F), np.ones((4, 3), F)]),
    "cumsum_rows": (zoo.cumsum_rows, lambda: [np.ones((4, 3), F), np.ones((4, 3), F)]),
    "rmsnorm": (zoo.rmsnorm, lambda: [np.ones((4, 3), F), np.ones(3, F), np.ones((4, 3), F), 1e-5]),
    "dequant_q4_0": (
        zoo.dequant_q4_0,
        lambda: [np.ones((2, 16), np.uint8), np.ones(2, np.float16), np.ones((2, 32), F)],
    ),
    "scaled_copy": (zoo.scaled_copy, lambda: [np.ones((4, 3), F), 2]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_traced_ir(name, update_golden):
    kernel, args = CASES[name]
    check_golden(f"trace_{name}", str(kernel.ir(*args())), update_golden)


@pytest.mark.parametrize("name", ["matmul", "dequant_q4_0"])
def test_lowered_ir(name, update_golden, monkeypatch):
    """(Lowered as for a CPU with AVX-512: a masked tail narrows down to one register,
    so the printed loops depend on the width of this CPU's.)"""
    monkeypatch.setattr(jit, "register_bytes", lambda: 64)
    kernel, args = CASES[name]
    check_golden(f"lowered_{name}", str(kernel.lowered(*args())), update_golden)
