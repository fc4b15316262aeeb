"""kdsl's warnings name the user's line (the call of a kernel, the `import kdsl` line),
never kdsl's own files: `kdsl.config.user_stacklevel`."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import kdsl as kd
from kdsl.autotune import registry
from kdsl.autotune.database import DatabaseError
from kdsl.config import user_stacklevel
from kdsl.errors import CompileError
from kdsl.targets.cpu import backend
from kdsl.targets.cpu.objects import STORE
from tests.autotune.test_dispatch import affine_kernel, arrays, record


def test_a_stale_config_warns_at_the_call():
    kernel = affine_kernel("warns_stale_at_the_call")
    x, y = arrays(1000)
    record(kernel, (x, y), {"f": 48})  # 48 is not among the choices any more
    with pytest.warns(RuntimeWarning, match="no longer apply") as caught:
        kernel(x, y)  # here
    (warning,) = caught
    assert (warning.filename, warning.lineno) == (__file__, _line_of("kernel(x, y)  # here"))


def test_a_cached_object_that_wont_load_warns_at_the_call(monkeypatch):
    def double(x, y):
        i = kd.indices(x.shape[0])
        y[i] = x[i] * 2.0

    x, y = arrays(100)
    kd.kernel(double, name="warns_unloadable")(x, y)  # compiled and stored
    loaded = backend.from_object

    def refuse_stored(kernel, obj, checks, strict_fp, from_cache=False):
        if from_cache:
            raise CompileError("the stored object is refused", fix="(the test's)")
        return loaded(kernel, obj, checks, strict_fp, from_cache)

    monkeypatch.setattr(backend, "from_object", refuse_stored)
    again = kd.kernel(double, name="warns_unloadable")  # a new process, as it were
    with pytest.warns(RuntimeWarning, match="can't be loaded") as caught:
        again(x, y)  # here
    (warning,) = caught
    assert (warning.filename, warning.lineno) == (__file__, _line_of("again(x, y)  # here"))
    np.testing.assert_array_equal(y, x * 2.0)


def test_an_unwritable_object_store_warns_at_the_call(monkeypatch, tmp_path):
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    monkeypatch.setattr(STORE, "_root", not_a_directory)  # objects/ can't be made in it
    monkeypatch.setattr(STORE, "disabled", False)  # (restored after the test)
    kernel = affine_kernel("warns_unwritable_objects")
    x, y = arrays(100)
    with pytest.warns(RuntimeWarning, match="can't write compiled objects") as caught:
        kernel(x, y)  # here, unwritable
    (warning,) = caught
    assert (warning.filename, warning.lineno) == (
        __file__,
        _line_of("kernel(x, y)  # here, unwritable"),
    )
    np.testing.assert_allclose(y, x * 2.0 + 0.5)


def test_an_unreadable_tuning_database_warns_at_the_call(monkeypatch):
    class Unreadable:
        def lookup(self, *key):
            raise DatabaseError("the test's unreadable database")

    monkeypatch.setattr(registry, "database", Unreadable)
    monkeypatch.setattr(registry, "_broken", False)
    kernel = affine_kernel("warns_unreadable_database")
    x, y = arrays(100)
    with pytest.warns(RuntimeWarning, match="can't read tuning results") as caught:
        kernel(x, y)  # here, unreadable
    (warning,) = caught
    assert (warning.filename, warning.lineno) == (
        __file__,
        _line_of("kernel(x, y)  # here, unreadable"),
    )
    np.testing.assert_allclose(y, x * 2.0 + 0.5)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("KDSL_DUMP=bogus", "KDSL_DUMP names bogus"),
        ("KDSL_NUM_THREADS=lots", "KDSL_NUM_THREADS='lots'"),
    ],
)
def test_a_bad_setting_warns_at_the_import(setting, message, tmp_path):
    """Read once, at import: the warning names the user's `import kdsl` line (the
    frames between are kdsl's and Python's import machinery's)."""
    script = tmp_path / "user.py"
    script.write_text("import numpy\n\nimport kdsl  # line 3\n")
    name, value = setting.split("=")
    env = {**os.environ, name: value, "PYTHONWARNINGS": "always"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"{script}:3: RuntimeWarning: {message}" in done.stderr, done.stderr
    assert "kdsl/config.py" not in done.stderr


def test_user_stacklevel_skips_kdsl_and_import_frames():
    """Called from code outside kdsl, it names that code's own frame."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("here", RuntimeWarning, stacklevel=user_stacklevel())
    (warning,) = caught
    assert warning.filename == __file__


def _line_of(text: str) -> int:
    with open(__file__) as f:
        (line,) = [n for n, source in enumerate(f, 1) if source.strip() == text]
    return line
