"""Robustness: damaged caches, bad tuning rows and bad settings never crash or confuse.

A damaged compiled object is a miss (rebuilt, not loaded and called); a bad row of the
tuning database is skipped with one warning; a scalar where a schedule param wants
choices, an invalid KDSL_NUM_THREADS and a non-positive tuning budget each get a clear
message.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import kdsl as kd
from kdsl.autotune import registry
from kdsl.autotune.database import Entry, TuningDB
from kdsl.config import VERSION
from kdsl.errors import CompileError, KernelArgumentError
from kdsl.targets.cpu import jit
from kdsl.targets.cpu.backend import ObjectCode
from kdsl.targets.cpu.objects import ObjectStore
from tests.autotune.test_dispatch import affine_kernel, entry_for

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------- damaged compiled objects

# A matmul big enough for a parallel loop (so the thread pool's object is stored too),
# checked against NumPy on random data; prints where its code came from.
PROGRAM = textwrap.dedent(
    """
    import sys
    import numpy as np
    import kdsl as kd

    @kd.kernel
    def robust_mm(A, B, C):
        i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
        C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)

    rng = np.random.default_rng(int(sys.argv[1]))
    a = rng.standard_normal((256, 96)).astype(np.float32)
    b = rng.standard_normal((96, 160)).astype(np.float32)
    c = np.full((256, 160), np.nan, np.float32)
    robust_mm(a, b, c)
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)
    print("ok loaded", robust_mm.stats()["objects_loaded"])
    """
)


def run_program(tmp_path: Path, seed: int) -> subprocess.CompletedProcess[str]:
    program = tmp_path / "robust_program.py"
    program.write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k != "KDSL_DUMP"}
    env["KDSL_CACHE_DIR"] = str(tmp_path / "cache")
    return subprocess.run(
        [sys.executable, str(program), str(seed)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def object_files(tmp_path: Path) -> list[Path]:
    files = sorted((tmp_path / "cache" / "objects").glob("*/*.kobj"))
    assert files, "the first run stored no compiled objects"
    return files


def xor_at(path: Path, offset: int, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, min(offset + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def assert_runs(tmp_path: Path, seed: int, damaged: bool) -> None:
    done = run_program(tmp_path, seed)
    assert done.returncode == 0, f"rc={done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "ok loaded" in done.stdout
    warned = done.stderr.count("is damaged")
    assert warned == (1 if damaged else 0), done.stderr  # at most one warning per process


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory where the program compiled and stored its objects (once: each
    test damages a copy of it)."""
    root = tmp_path_factory.mktemp("stored")
    assert_runs(root, 1, damaged=False)
    object_files(root)
    return root / "cache"


@pytest.mark.parametrize("offset", [300, 600, 900, 2500])
def test_damaged_object_is_rebuilt_not_run(tmp_path: Path, stored: Path, offset: int) -> None:
    shutil.copytree(stored, tmp_path / "cache")
    files = object_files(tmp_path)
    for path in files:
        xor_at(path, offset)
    damaged = any(path.stat().st_size > offset for path in files)
    assert_runs(tmp_path, 2, damaged=damaged)  # a new process: damaged → compiled again
    done = run_program(tmp_path, 3)  # the rebuilt objects are good, and loaded
    assert done.returncode == 0 and "ok loaded 1" in done.stdout, done.stderr
    assert "is damaged" not in done.stderr


def test_stored_object_without_its_symbol_is_not_called(tmp_path: Path, stored: Path) -> None:
    """A stored object whose entry symbol isn't in its code (address 0) is compiled
    again, never called."""
    shutil.copytree(stored, tmp_path / "cache")
    store = ObjectStore(tmp_path / "cache")
    changed = 0
    for path in object_files(tmp_path):
        obj = store.load(path.stem)
        if isinstance(obj, ObjectCode):
            store.save(path.stem, dataclasses.replace(obj, symbol="kdsl_no_such_symbol"))
            changed += 1
    assert changed
    done = run_program(tmp_path, 7)
    assert done.returncode == 0, f"rc={done.returncode}\n{done.stderr}"
    assert "ok loaded 0" in done.stdout
    assert "no function 'kdsl_no_such_symbol'" in done.stderr


def test_load_object_refuses_a_missing_symbol() -> None:
    code = jit.emit_object(jit.optimize(_module_with("robust_present")))
    with pytest.raises(CompileError, match="no function 'robust_absent'"):
        jit.load_object(code, "robust_absent")


def _module_with(symbol: str):  # type: ignore[no-untyped-def]
    from llvmlite import ir

    module = ir.Module(name=symbol)
    fn = ir.Function(module, ir.FunctionType(ir.IntType(64), []), name=symbol)
    ir.IRBuilder(fn.append_basic_block()).ret(ir.Constant(ir.IntType(64), 7))
    return module


def test_store_round_trip_and_older_format(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    key = "ab" + "0" * 62
    store.save(key, {"some": b"object"})
    assert store.load(key) == {"some": b"object"}
    # A file of the older format (a bare pickle, no digest) is a miss, silently.
    path = next((tmp_path / "objects").glob("*/*.kobj"))
    path.write_bytes(pickle.dumps({"some": b"object"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.load(key) is None
    # A damaged or cut one is a miss too: removed, with one warning per process.
    store.save(key, {"some": b"object"})
    xor_at(path, 40, 4)
    with pytest.warns(RuntimeWarning, match="is damaged"):
        assert store.load(key) is None
    assert not path.exists()
    store.save(key, {"some": b"object"})
    path.write_bytes(path.read_bytes()[:-3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (warned once already)
        assert store.load(key) is None
    assert not path.exists()


def test_assembly_is_kept_beside_the_object(cache_dir: Path, monkeypatch) -> None:
    """`kernel.asm(...)` runs the code generator and LLVM again (a stored object has no
    assembly): its text is stored too, and a second kernel of the same code reads it."""

    def scale(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 3.0 + 1.0

    x = np.random.default_rng(3).standard_normal(37).astype(np.float32)
    first = kd.kernel(scale, name="asm_kept")
    text = first.asm(x, x.copy())
    assert "vfmadd" in text or "vmul" in text

    def no_llvm(*_):
        raise AssertionError("LLVM ran again for a stored assembly")

    monkeypatch.setattr(jit, "assembly", no_llvm)
    second = kd.kernel(scale, name="asm_kept")
    assert second.asm(x, x.copy()) == text
    y = np.empty_like(x)
    second(x, y)
    np.testing.assert_allclose(y, x * 3.0 + 1.0, rtol=1e-6)


# ---------------------------------------------------------- bad tuning database rows


def set_column(path: Path | str, column: str, text: object) -> None:
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE tuning SET {column} = ?", (text,))
    db.close()


@pytest.mark.parametrize(
    ("column", "text"),
    [("config", "not json"), ("config", "[1,2]"), ("config", "null"), ("shape", '"x"')],
)
def test_bad_tuning_row_is_skipped_with_a_warning(cache_dir: Path, column: str, text: str) -> None:
    kernel = affine_kernel(f"robust_row_{column}_{len(text)}")
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    y = np.zeros_like(x)
    registry.record(entry_for(kernel, (x, y), {"f": 64}))
    db_path = registry.database().path
    registry.forget()
    set_column(db_path, column, text)
    with pytest.warns(RuntimeWarning, match="bad row") as caught:
        kernel(x, y)
        kernel(x, y)
    np.testing.assert_allclose(y, x * 2.0 + 0.5, rtol=1e-6)
    ours = [w for w in caught if "bad row" in str(w.message)]
    assert len(ours) == 1
    assert ours[0].filename == __file__  # the user's call, not a line inside kdsl
    ours = [str(w.message) for w in ours]
    assert db_path in ours[0] and "kdsl cache clear" in ours[0]
    assert "io * 16 + ii" in str(kernel.lowered(x, y))  # the default split, not 64


def test_bad_rows_skipped_good_rows_kept(tmp_path: Path) -> None:
    db = TuningDB(tmp_path / "tuning.sqlite")
    good = Entry("k", "good", "cpu/x", "sig", ((4,),), {"f": 16}, 1.0, None, VERSION, 1.0)
    bad = dataclasses.replace(good, kernel_name="bad", shape=((8,),))
    db.record(good)
    db.record(bad)
    with sqlite3.connect(db.path) as raw:
        raw.execute("UPDATE tuning SET config = '[1,2]' WHERE kernel_name = 'bad'")
    raw.close()
    with pytest.warns(RuntimeWarning, match="tuning.sqlite' has a bad row"):
        assert db.lookup("k", "cpu/x", "sig") == [good]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per database file
        assert db.entries() == [good]


# --------------------------------------------------------------- bad settings


def test_param_with_a_scalar_for_choices_is_a_schedule_error() -> None:
    def scaled(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 3.0

    kernel = kd.kernel(scaled, name="robust_param")

    @kernel.schedule(kd.cpu)
    def _(s):
        s.split("i", s.param("t", 5))

    x = np.ones(64, np.float32)
    with pytest.raises(kd.ScheduleError, match="choices must be a non-empty sequence"):
        kernel(x, np.zeros_like(x))


def test_an_unknown_dump_name_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    """KDSL_DUMP=lower printed nothing, silently (and still bypassed the object cache)."""
    import kdsl.config

    monkeypatch.setenv("KDSL_DUMP", "lower, trace")
    with pytest.warns(RuntimeWarning, match="names lower, which kdsl does not print"):
        assert kdsl.config._read().dump == {"lower", "trace"}
    monkeypatch.setenv("KDSL_DUMP", "trace,bounds,schedule")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kdsl.config._read()


def test_every_dump_name_is_one_kdsl_prints() -> None:
    """config.DUMPS lists the names the passes and the compilers look up."""
    import pathlib
    import re

    import kdsl.config
    from kdsl.ir.passes import PASSES

    source = "".join(p.read_text() for p in pathlib.Path(kdsl.config.__file__).parent.rglob("*.py"))
    used = set(re.findall(r'\bdumps\("(\w+)"\)', source)) | {name for name, _ in PASSES}
    assert used | {"all"} == set(kdsl.config.DUMPS)


@pytest.mark.parametrize("value", ["abc", "0", "-3", "2.5"])
def test_invalid_num_threads_warns(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    import kdsl.config

    monkeypatch.setenv("KDSL_NUM_THREADS", value)
    with pytest.warns(RuntimeWarning, match="KDSL_NUM_THREADS") as caught:
        config = kdsl.config._read()
    assert config.num_threads is None
    message = str(caught[0].message)
    assert repr(value) in message and "one thread per core" in message
    monkeypatch.setenv("KDSL_NUM_THREADS", " 3 ")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid count is quiet
        assert kdsl.config._read().num_threads == 3


def threads_in_a_new_process(setting: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """A fresh process's kd.get_num_threads() under KDSL_NUM_THREADS=`setting`."""
    env = {**os.environ, "KDSL_NUM_THREADS": setting, "KDSL_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-c", "import kdsl as kd; print(kd.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_invalid_num_threads_does_not_stop_import(tmp_path: Path) -> None:
    done = threads_in_a_new_process("abc", tmp_path)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 1
    assert done.stderr.count("KDSL_NUM_THREADS='abc'") == 1


@pytest.mark.parametrize("budget", [-1, 0, 0.0, float("nan"), "60"])
def test_non_positive_budget_is_refused(budget: object) -> None:
    kernel = affine_kernel("robust_budget")
    x = np.ones(64, np.float32)
    with pytest.raises(KernelArgumentError, match="budget must be a positive number"):
        kernel.autotune(x, np.zeros_like(x), budget=budget, progress=False, jobs=0)


def test_more_threads_than_the_pool_has_warns_and_uses_its_slots(tmp_path: Path) -> None:
    done = threads_in_a_new_process("1000", tmp_path)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 256 and "1000 threads asked for" in done.stderr
