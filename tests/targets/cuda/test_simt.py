"""The CUDA target's generated code, without a GPU: every CUDA test case (the zoo and
the library, tails included) run by the SIMT emulator (tests/targets/cuda/simt.py: the
kernel's LLVM IR rebuilt for this CPU, a thread per GPU thread) against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from tests.targets.cuda import simt
from tests.targets.cuda.cases import cases

CASES = cases(np.random.default_rng(13), m=3, n=37)  # small: a Python call per register read


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_in_the_emulator(case):
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in case.args]
    for pos in case.expected:  # poison the outputs: every element must be written
        if pos >= 0:
            args[pos][...] = np.nan
    result = simt.run(case.kernel, args)
    for pos, want in case.expected.items():
        got = result if pos < 0 else args[pos]
        np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.rtol)


def test_the_emulator_catches_a_wrong_fragment_layout(monkeypatch):
    """The emulator's mma.sync is the ISA's, not the emitter's: an emitter that swaps
    two of A's words computes a wrong product there."""
    from kdsl.targets.cuda import mma

    swapped = (mma.A_WORDS[1], mma.A_WORDS[0], *mma.A_WORDS[2:])
    monkeypatch.setattr(mma, "A_WORDS", swapped)
    case = next(c for c in CASES if c.name == "lib_matmul_bf16")
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in case.args]
    simt.run(case.kernel, args)
    assert not np.allclose(args[3], case.expected[3], rtol=1e-3, atol=1e-3)
