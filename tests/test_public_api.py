"""`kd.__all__` is the public API: every `kd.*` name DESIGN.md gives, and every name
kdsl/__init__.py imports (it holds the public API only), so `from kdsl import *` gets
them all."""

from __future__ import annotations

import ast
import copy
import pathlib
import pickle

import numpy as np

import kdsl as kd
from kdsl.targets.cpu import jit

# The kd.* names of DESIGN.md (§1 writing kernels, §2 calling them, §3 schedules,
# §4 autotuning), which is not in this repository.
DESIGN = """
    kernel indices Index range grid local alloc zeros empty where when
    sum max min prod argmax exp log sqrt rsqrt tanh sigmoid erf abs floor ceil maximum
    minimum fma cast inf constexpr
    f16 bf16 f32 f64 i8 i16 i32 i64 u8 u16 u32 u64 bool_
    TraceError ShapeError KernelArgumentError ScheduleError
    cpu cuda set_num_threads spec
""".split()

INIT = pathlib.Path(kd.__file__)


def test_every_name_design_gives_is_in_all():
    assert sorted(set(DESIGN) - set(kd.__all__)) == []


def test_every_name_the_package_imports_is_in_all():
    imported = {
        alias.asname or alias.name
        for node in ast.parse(INIT.read_text()).body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert sorted(imported - set(kd.__all__) - {"VERSION"}) == []  # (kd.__version__'s)
    assert all(hasattr(kd, name) for name in kd.__all__)


def test_star_import_gets_spec():
    scope: dict[str, object] = {}
    exec("from kdsl import *", scope)
    assert {"spec", "Spec", "SpecError", "ArgumentTraceError"} <= set(scope)
    assert scope["spec"] is kd.spec


def test_cpu_cache_bytes_reads_this_cpu_and_fills_what_linux_leaves_out(monkeypatch):
    """kd.cpu.cache_bytes: each level of this CPU growing outward, None the largest; a
    level past the last is the last one, an L1 or L2 Linux doesn't report the default;
    NumPy integers work. (Its error: tests/test_errors.py.)"""
    sizes = [kd.cpu.cache_bytes(level) for level in (1, 2, 3)]
    assert 0 < sizes[0] <= sizes[1] <= sizes[2] <= kd.cpu.cache_bytes()
    assert kd.cpu.cache_bytes(np.int64(2)) == sizes[1]
    fake = {2: 1 << 21, 1: 48 << 10}  # no L3
    monkeypatch.setattr(jit, "cache_bytes", lambda: fake)
    assert [kd.cpu.cache_bytes(n) for n in (1, 2, 3, None)] == [48 << 10] + [1 << 21] * 3
    fake = {3: 1 << 25}  # only the L3 reported
    assert [kd.cpu.cache_bytes(n) for n in (1, 2, 4)] == [32 << 10, 1 << 20, 1 << 25]
    fake = {1: 1 << 15, 2: 1 << 20, 3: 1 << 25, 4: 1 << 27}  # an L4
    assert [kd.cpu.cache_bytes(n) for n in (4, 5, None)] == [1 << 27] * 3


def test_targets_stay_themselves_when_pickled_or_copied():
    for target in (kd.cpu, kd.cuda):
        assert pickle.loads(pickle.dumps(target)) is target
        assert copy.deepcopy(target) is target
