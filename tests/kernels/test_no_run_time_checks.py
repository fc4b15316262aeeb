"""The library's kernels (and the llama2 runner's) check no access where it runs: the
bounds pass proves each one in bounds before its loops start (kdsl/ir/passes/bounds.py),
so speed never pays for safety there. An access it can't prove is checked at each
element instead, which costs attention 17-20% and decode 25%: this catches a kernel
change that leaves one."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
from kdsl.examples import llama2_format as fmt
from kdsl.kernels import attention, matmul, quant, softmax
from kdsl.kernels.norms import layernorm, rmsnorm

from kdsl.cli import main as kdsl_main
from kdsl.ir.nodes import Kernel, Load, Store
from kdsl.ir.passes import lower
from kdsl.ir.visit import walk_all_exprs, walk_expr, walk_stmts
from kdsl.kernel import KernelFunction
from tests.helpers import random_array

Call = tuple[KernelFunction, tuple[object, ...], dict[str, object]]


@pytest.fixture
def calls(monkeypatch) -> dict[str, Call]:
    """Each kernel's first call while the test runs, by name."""
    seen: dict[str, Call] = {}
    real = KernelFunction.__call__

    def spy(self, *args, **kwargs):
        seen.setdefault(self.name, (self, args, kwargs))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(KernelFunction, "__call__", spy)
    return seen


def _checked(kernel: Kernel) -> Iterator[str]:
    """The accesses checked where they run, but for gathers (a subscript read from data
    is checked always)."""
    accesses = [e for e in walk_all_exprs(kernel.body) if isinstance(e, Load)]
    accesses += [s for s in walk_stmts(kernel.body) if isinstance(s, Store)]
    for a in accesses:
        if a.checked and not any(isinstance(x, Load) for i in a.index for x in walk_expr(i)):
            yield a.buffer


def _assert_none_checked(calls: dict[str, Call]) -> None:
    """(The bounds pass runs before any target's schedule, which keeps its marks.)"""
    assert calls
    for name, (fn, args, kwargs) in calls.items():
        lowered = lower(fn.trace(fn._specs(args, kwargs)[0]))
        found = sorted(set(_checked(lowered)))
        assert not found, f"{name} checks {found} at each element"


def test_library_kernels(calls):
    rng = np.random.default_rng(11)
    x = random_array(rng, (37, 70), np.float32)
    softmax(x)
    rmsnorm(x, random_array(rng, (70,), np.float32))
    layernorm(x, random_array(rng, (70,), np.float32), random_array(rng, (70,), np.float32))
    matmul(x, random_array(rng, (70, 13), np.float32), activation="gelu")
    for d, lq, lk, group in ((48, 1, 300, 1), (64, 37, 131, 2), (48, 19, 19, 1)):
        q = random_array(rng, (1, 4, lq, d), np.float32)
        k, v = (random_array(rng, (1, 4 // group, lk, d), np.float32) for _ in range(2))
        attention(q, k, v)
        attention(q, k, v, causal=True)
    w = random_array(rng, (40, 96), np.float32)
    for fmt_name in ("q8_0", "q4_0"):
        qw = quant.quantize(w, fmt_name)
        quant.qmatvec(qw, random_array(rng, (96,), np.float32))
        quant.qmatmul(qw, random_array(rng, (3, 96), np.float32))
        quant.dequantize(qw)
    _assert_none_checked(calls)


def test_llama2_runner_kernels(calls, tmp_path, capsys):
    blocked = dataclasses.replace(fmt.TINY, hidden_dim=160)  # (Q4_0 needs rows of 32s)
    paths = fmt.write_checkpoint(tmp_path, blocked, seed=5)
    runs = ((paths["float32"], ()), (paths["int8"], ()), (paths["float32"], ("--quant", "q4_0")))
    for model, extra in runs:
        argv = [str(model), "-z", str(paths["tokenizer"]), "-n", "4", "-t", "0", *extra]
        assert kdsl_main(["llama2", *argv]) == 0
    capsys.readouterr()
    _assert_none_checked(calls)
