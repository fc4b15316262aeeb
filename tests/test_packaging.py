"""The wheel, as `pip install kdsl` would install it: CI installs the checkout in editable
mode, where kdsl.kernels and kdsl.examples sit beside the package; in a wheel they sit
inside it (their kernels' loops once took no names there, and the int8 llama2 kernel's
schedule failed). Built from a copy of the sources, installed into a folder of its own
and run from there in a fresh interpreter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("kdsl", "kernels", "examples", "pyproject.toml", "README.md")
# no index, no version check, no settings from the environment (PIP_USER would break
# --target): the build and install use what is here, offline
PIP = ("--no-index", "--disable-pip-version-check", "--isolated")

# what the installed package must do: its own files, the library and the example kernels
CHECK = """
import pathlib, sys
import numpy as np
import kdsl, kdsl.kernels as lib
from kdsl.examples import llama2
home = pathlib.Path(kdsl.__file__).parent
assert str(home).startswith(sys.argv[1]), home  # the installed copy, not the checkout
assert pathlib.Path(lib.__file__).parent == home / "kernels"
rng = np.random.default_rng(0)
a, b = rng.standard_normal((37, 29), dtype=np.float32), rng.standard_normal((29, 41), dtype=np.float32)
np.testing.assert_allclose(lib.matmul(a, b), a @ b, rtol=1e-4, atol=1e-4)
q = rng.integers(-127, 128, (9, 64)).astype(np.int8)
s, xs = rng.random((9, 1), dtype=np.float32), rng.random(1, dtype=np.float32)
xq, y = rng.integers(-127, 128, 64).astype(np.int8), np.empty(9, np.float32)
llama2.int8_groups(64)(q, s, xq, xs, y)  # its schedule names the loops r, g, lane
want = (q.astype(np.float64) @ xq) * s[:, 0] * xs[0]
np.testing.assert_allclose(y, want, rtol=1e-5)
assert list((home / "autotune" / "tuned").glob("*.json"))
print("ok")
"""


def test_the_wheel_holds_the_library_and_runs_installed(tmp_path: Path) -> None:
    source = tmp_path / "src"  # (a build writes build/ beside the sources)
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            *PIP,
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("kdsl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("kdsl/kernels/matmul.py", "kdsl/examples/llama2.py", "kdsl/cli/__init__.py"):
        assert module in names, module
    assert any(n.startswith("kdsl/autotune/tuned/") and n.endswith(".json") for n in names)
    site = tmp_path / "site"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            *PIP,
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    env = {**os.environ, "PYTHONPATH": str(site), "KDSL_CACHE_DIR": str(tmp_path / "cache")}
    ran = subprocess.run(
        [sys.executable, "-c", CHECK, str(site)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert ran.returncode == 0 and ran.stdout.strip() == "ok", ran.stderr
