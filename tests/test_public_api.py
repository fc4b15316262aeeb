"""`kd.__all__` is the public API: every `kd.*` name DESIGN.md gives, and every name
kdsl/__init__.py imports (it holds the public API only), so `from kdsl import *` gets
them all."""

from __future__ import annotations

import ast
import pathlib

import pytest

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
    level the CPU lacks is the last one below it, a level Linux doesn't report at all
    the default; anything but 1, 2, 3 or None a KdslError naming the choices."""
    sizes = [kd.cpu.cache_bytes(level) for level in (1, 2, 3)]
    assert 0 < sizes[0] <= sizes[1] <= sizes[2] == kd.cpu.cache_bytes()
    monkeypatch.setattr(jit, "cache_bytes", lambda: {2: 1 << 21, 1: 48 << 10})  # no L3
    assert [kd.cpu.cache_bytes(n) for n in (1, 2, 3, None)] == [48 << 10] + [1 << 21] * 3
    monkeypatch.setattr(jit, "cache_bytes", lambda: {3: 1 << 25})
    assert kd.cpu.cache_bytes(1) == jit.DEFAULT_CACHE_BYTES[1]
    for level in (0, 4, True, "2", 2.0):
        with pytest.raises(kd.KdslError, match="level 1, 2 or 3"):
            kd.cpu.cache_bytes(level)  # type: ignore[arg-type]
