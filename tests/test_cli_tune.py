"""`kdsl autotune` and `kdsl cache`: tables, the cache round trip, and usage errors (exit 2).

Each test gets a cache directory of its own (`kdsl cache clear` must not empty the one
the rest of the test run shares).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kdsl as kd
from kdsl.autotune import registry
from kdsl.cli import load_kernel, main
from kdsl.targets.cpu.objects import STORE
from kdsl.targets.cuda import driver

ROOT = Path(__file__).resolve().parent.parent

KERNELS = """
import kdsl as kd

@kd.kernel(examples=[{"x": kd.spec((300,), kd.f32), "y": kd.spec((300,), kd.f32)}])
def cli_affine(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * 3.0 - 1.0

@cli_affine.schedule(kd.cpu)
def _(s):
    s.split("i", s.param("f", [16, 64]))

@kd.kernel
def cli_budget(x, budget):
    i = kd.indices(x.shape[0])
    budget[i] = x[i] + 1.0

def not_a_kernel(x):
    return x
"""

PARALLEL = """
import kdsl as kd

@kd.kernel(examples=[{"x": kd.spec((300, 64), kd.f32), "y": kd.spec((300,), kd.f32)}])
def cli_rows(x, y):
    i, j = kd.indices(x.shape[0], x.shape[1])
    y[i] = kd.sum(x[i, j], over=j)

@cli_rows.schedule(kd.cpu)
def _(s):
    s.split("i", s.param("f", [8, 32]))
    s.parallelize("io")
"""


@pytest.fixture
def kernels_file(tmp_path: Path) -> Path:
    path = tmp_path / "tune_kernels.py"
    path.write_text(KERNELS)
    return path


def kdsl_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tuned_shapes(kernel_name: str) -> list[tuple[tuple[int, ...], ...]]:
    return [e.shape for e in registry.database().entries(kernel_name)]


QUICK = ("--budget", "3s", "--jobs", "1", "--no-progress")


@pytest.mark.usefixtures("cache_dir")
def test_autotune_shape_prints_table_and_records(capsys, kernels_file: Path) -> None:
    target = f"{kernels_file}:cli_affine"
    code, out, err = kdsl_cli(capsys, "autotune", target, "--shape", "x=200:f32,y=200:f32", *QUICK)
    assert code == 0, err
    header, rule, row = out.splitlines()[:3]
    columns = "kernel shape threads best params time default speedup tried dropped"
    assert header.split() == columns.split() and set(rule) == {"-", " "}
    assert row.startswith("cli_affine") and "200, 200" in row and "f=" in row
    assert tuned_shapes("cli_affine") == [((200,), (200,))]


@pytest.mark.usefixtures("cache_dir")
def test_autotune_threads_tunes_each_count_and_restores_the_count(capsys, tmp_path) -> None:
    path = tmp_path / "parallel_kernels.py"
    path.write_text(PARALLEL)
    before = kd.get_num_threads()
    kd.set_num_threads(3)  # neither count tuned: the restore can fail
    try:
        code, out, err = kdsl_cli(
            capsys, "autotune", f"{path}:cli_rows", "--threads", "2,1", *QUICK
        )
        assert kd.get_num_threads() == 3
    finally:
        kd.set_num_threads(before)
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith("cli_rows")]
    assert [row[3] for row in rows] == ["2", "1"]  # kernel, shape (two words), threads
    entries = registry.database().entries("cli_rows")
    assert [(e.shape, e.threads) for e in entries] == [
        (((300, 64), (300,)), 1),
        (((300, 64), (300,)), 2),
    ]

    code, out, err = kdsl_cli(capsys, "cache", "list")
    assert code == 0, err
    listed = [line.split()[3] for line in out.splitlines() if line.startswith("cli_rows")]
    assert listed == ["1", "2"]


@pytest.mark.usefixtures("cache_dir")
def test_a_schedule_without_parallel_loops_is_tuned_for_any_count(capsys, kernels_file) -> None:
    """Its params can't depend on the thread count: one row serves them all."""
    code, out, err = kdsl_cli(
        capsys, "autotune", f"{kernels_file}:cli_affine", "--threads", "1,2", *QUICK
    )
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith("cli_affine")]
    assert [row[3] for row in rows] == ["any", "any"]
    assert [e.threads for e in registry.database().entries("cli_affine")] == [0]


@pytest.mark.usefixtures("cache_dir")
def test_autotune_uses_declared_examples_then_cache_lists_them(capsys, kernels_file) -> None:
    code, out, err = kdsl_cli(capsys, "autotune", f"{kernels_file}:cli_affine", *QUICK)
    assert code == 0, err
    assert "300, 300" in out
    assert tuned_shapes("cli_affine") == [((300,), (300,))]
    (entry,) = registry.database().entries("cli_affine")

    code, out, err = kdsl_cli(capsys, "cache", "list")
    assert code == 0, err
    assert "tuning results: 1" in out
    (line,) = [s for s in out.splitlines() if s.startswith("cli_affine")]
    assert "300, 300" in line and f"f={entry.config['f']}" in line and "autotune" in line

    code, out, err = kdsl_cli(capsys, "cache", "show", "cli_affine")
    assert code == 0, err
    (shown,) = json.loads(out)
    assert shown["kernel"] == "cli_affine" and shown["shape"] == [[300], [300]]
    assert shown["config"] == entry.config and shown["time_s"] == entry.time_s


@pytest.mark.usefixtures("cache_dir")
def test_a_kernel_bound_to_two_names_is_tuned_once(capsys, tmp_path: Path) -> None:
    """(kernels/matvec.py binds its last kernel to a loop variable too)"""
    path = tmp_path / "aliased.py"
    path.write_text(KERNELS + "\nalias = cli_affine\n")
    code, out, err = kdsl_cli(capsys, "autotune", path, *QUICK)
    assert code == 0, err
    rows = [line.split()[0] for line in out.splitlines()[2:] if line.strip()]
    # (a loaded machine may overrun the 3 s budget: the "over budget" lines say where)
    rows = [word for word in rows if word != "over"]
    assert rows[:2] == ["cli_affine", "skipped"]


@pytest.mark.usefixtures("cache_dir")
def test_a_package_directory_is_tuned_with_its_modules(capsys, tmp_path: Path) -> None:
    """DESIGN: targets are files, packages or module:kernel; a package's kernels live in
    its modules (a directory used to be "no such file", a dotted package "no kernels")."""
    package = tmp_path / "tunepkg_cli"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "inner" / "__init__.py").write_text("")
    (package / "inner" / "mine.py").write_text(KERNELS)
    (package / "__main__.py").write_text("raise SystemExit(7)  # a program: never imported\n")
    for target in (package, "tunepkg_cli.inner"):
        code, out, err = kdsl_cli(capsys, "autotune", target, *QUICK)
        assert code == 0, err
        assert "cli_affine" in out and "300, 300" in out
    (package / "broken").mkdir()
    (package / "broken" / "__init__.py").write_text("raise RuntimeError('sub boom')\n")
    code, out, err = kdsl_cli(capsys, "autotune", package, *QUICK)
    assert code == 2 and "importing tunepkg_cli.broken failed" in err
    assert "RuntimeError: sub boom" in err and "importlib" not in err


@pytest.mark.usefixtures("cache_dir")
def test_a_kernel_that_fails_is_reported_and_the_others_tuned(capsys, tmp_path: Path) -> None:
    path = tmp_path / "one_broken.py"
    broken = """
@kd.kernel(examples=[{"x": kd.spec((40,), kd.f32), "y": kd.spec((40,), kd.f32)}])
def cli_broken(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] + 1.0

@cli_broken.schedule(kd.cpu)
def _(s):
    s.split("ii", s.param("f", [4, 8]))  # no loop 'ii'
"""
    out, err = tune_beside_a_broken_kernel(capsys, path, broken, "cli_broken")
    assert '  failed cli_broken: schedule step split("ii", 4) is not possible' in out
    assert "in kernel 'cli_broken'" in err and "no loop named 'ii'" in err


def tune_beside_a_broken_kernel(capsys, path: Path, broken: str, name: str) -> tuple[str, str]:
    """`kdsl autotune` of the file KERNELS and `broken` (kernel `name`, which fails): its
    row says so, exit code 1, and cli_affine is tuned all the same; (stdout, stderr)."""
    path.write_text(KERNELS + broken)
    code, out, err = kdsl_cli(capsys, "autotune", path, *QUICK)
    assert code == 1
    rows = {line.split()[0]: line for line in out.splitlines()[2:4]}
    assert "(failed, below)" in rows[name] and "f=" in rows["cli_affine"]
    assert tuned_shapes("cli_affine") == [((300,), (300,))]
    return out, err


@pytest.mark.usefixtures("cache_dir")
def test_a_python_error_in_a_kernels_body_fails_that_kernel_only(capsys, tmp_path: Path) -> None:
    """A KeyError (any Python error) raised by a kernel's own code as it traces is that
    kernel's failure, shown with the user's frames; the others are still tuned (it ended
    the run with kdsl's traceback). `kdsl show` says the same, exit code 2."""
    path = tmp_path / "body_error.py"
    broken = """
@kd.kernel(examples=[{"x": kd.spec((40,), kd.f32), "y": kd.spec((40,), kd.f32)}])
def cli_key_error(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * {"scale": 2.0}["scal"]
"""
    out, err = tune_beside_a_broken_kernel(capsys, path, broken, "cli_key_error")
    assert "  failed cli_key_error: KeyError: 'scal'" in out
    assert "tracing cli_key_error failed" in err and f'File "{path}", line' in err
    assert "kdsl/" not in err
    code, out, err = kdsl_cli(capsys, "show", f"{path}:cli_key_error", "--ir")
    assert code == 2 and "tracing cli_key_error failed" in err and "KeyError: 'scal'" in err


def test_a_target_that_fails_to_import_shows_the_users_frames(capsys, tmp_path: Path) -> None:
    path = tmp_path / "broken_cli.py"
    path.write_text("import math\n\nraise RuntimeError('boom at import')\n")
    for command in (("autotune", path), ("show", f"{path}:k", "--ir", "--args", "x=4:f32")):
        code, out, err = kdsl_cli(capsys, *command)
        assert code == 2
        assert f"importing {path} failed" in err and "RuntimeError: boom at import" in err
        assert f'File "{path}", line 3' in err
        assert "importlib" not in err and "kdsl/cli" not in err


def test_a_target_that_calls_sys_exit_at_import_is_a_usage_error(capsys, tmp_path: Path) -> None:
    """A script's unguarded `sys.exit(main())` ended kdsl with exit 0, having done nothing."""
    path = tmp_path / "script_cli.py"
    path.write_text("import sys\n\ndef main():\n    return 0\n\nsys.exit(main())\n")
    for command in (("autotune", path), ("show", f"{path}:k", "--ir", "--args", "x=4:f32")):
        code, out, err = kdsl_cli(capsys, *command)
        assert code == 2 and out == ""
        assert f"importing {path} called sys.exit(0)" in err and "__main__" in err


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch, kernels_file) -> None:
    from kdsl.cli import autotune as autotune_cli

    def interrupted(ns: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(autotune_cli, "run", interrupted)
    code, out, err = kdsl_cli(capsys, "autotune", kernels_file)
    assert code == 130 and err == "kdsl: interrupted\n"


def test_a_warning_reads_as_the_tools(capsys, monkeypatch) -> None:
    """It began `<frozen runpy>:88: RuntimeWarning:`, the frame nearest a user's."""
    import warnings

    from kdsl.cli import cache as cache_cli

    def warns(ns: object) -> int:  # (pytest records warnings: show how one would print)
        print(warnings.formatwarning("something to know", RuntimeWarning, "<frozen runpy>", 88))
        return 0

    monkeypatch.setattr(cache_cli, "_list", warns)
    python_format = warnings.formatwarning
    code, out, _ = kdsl_cli(capsys, "cache", "list")
    assert code == 0 and out == "kdsl: warning: something to know\n\n"
    assert warnings.formatwarning is python_format


@pytest.mark.usefixtures("cache_dir")
def test_kernel_parameter_may_share_an_option_name(capsys, kernels_file) -> None:
    target = f"{kernels_file}:cli_budget"  # its parameter `budget` is not --budget
    code, out, err = kdsl_cli(
        capsys, "autotune", target, "--shape", "x=64:f32,budget=64:f32", *QUICK
    )
    assert code == 0, err
    assert "cli_budget" in out and "(no params)" in out


@pytest.mark.usefixtures("cache_dir")
def test_cache_export_clear_import_round_trip(capsys, kernels_file: Path, tmp_path: Path) -> None:
    code, _, err = kdsl_cli(capsys, "autotune", f"{kernels_file}:cli_affine", *QUICK)
    assert code == 0, err
    (before,) = registry.database().entries()
    exported = tmp_path / "tuning.json"

    assert kdsl_cli(capsys, "cache", "export", exported)[:2] == (
        0,
        f"wrote 1 tuning result(s) to {exported}\n",
    )
    assert json.loads(exported.read_text())["entries"][0]["config"] == before.config
    code, out, _ = kdsl_cli(capsys, "cache", "clear")
    assert code == 0 and out.startswith("removed 1 tuning result(s)")
    code, out, _ = kdsl_cli(capsys, "cache", "list")
    assert "tuning results: none" in out and "compiled objects: 0" in out

    code, out, err = kdsl_cli(capsys, "cache", "import", exported)
    assert code == 0, err
    (after,) = registry.database().entries()
    assert after == dataclasses.replace(before, source="import")

    # A new process's view of the kernel finds the imported result.
    kernel = load_kernel(f"{kernels_file}:cli_affine")
    x = np.linspace(-1, 1, 300, dtype=np.float32)
    y = np.zeros_like(x)
    kernel(x, y)
    np.testing.assert_allclose(y, x * 3.0 - 1.0, rtol=1e-6)
    stats = kernel.stats()
    assert stats["tuning"] == {"300, 300": "tuned"}
    assert stats["compilations"] == 1 and stats["objects_loaded"] == 0  # cleared with the rest


@pytest.mark.usefixtures("cache_dir")
def test_cache_show_unknown_kernel_is_a_usage_error(capsys) -> None:
    code, out, err = kdsl_cli(capsys, "cache", "show", "nosuch")
    assert code == 2 and out == ""
    assert err == "kdsl: error: no tuning results for a kernel named 'nosuch'; the cache has none\n"


@pytest.mark.usefixtures("cache_dir")
def test_cache_clear_of_an_unknown_kernel_lists_the_kernels_there(capsys) -> None:
    """(probe5: it printed "removed 0" and exited 0)"""
    from tests.autotune.test_database import make_entry

    registry.database().record(make_entry(kernel_name="cli_affine"))
    code, out, err = kdsl_cli(capsys, "cache", "clear", "--kernel", "cli_afine")
    assert code == 2 and out == ""
    assert err == (
        "kdsl: error: no tuning results for a kernel named 'cli_afine' (did you mean "
        "'cli_affine'?); kernels with results: cli_affine\n"
    )
    assert len(registry.database().entries()) == 1
    code, out, _ = kdsl_cli(capsys, "cache", "clear", "--kernel", "cli_affine")
    assert code == 0 and out == "removed 1 tuning result(s) of 'cli_affine'\n"


@pytest.mark.usefixtures("cache_dir")
def test_an_empty_kernel_name_is_no_kernel_not_every_one(capsys) -> None:
    """`--kernel "$NAME"` with NAME unset: it cleared every compiled object (and `show ""`
    printed every result)."""
    from tests.autotune.test_database import make_entry

    registry.database().record(make_entry(kernel_name="cli_affine"))
    STORE.save("cli-empty-name", b"object")
    for argv in (["clear", "--kernel", ""], ["show", ""]):
        code, out, err = kdsl_cli(capsys, "cache", *argv)
        assert code == 2 and out == "" and "no tuning results for a kernel named ''" in err
    assert len(registry.database().entries()) == 1 and STORE.count()[0] == 1


@pytest.mark.usefixtures("cache_dir")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shape", "x=200:f33,y=200:f32"], "'f33' is not a dtype"),
        (["--shape", "x=200:f32"], "missing y"),
        (["--shape", "x=200:f32,y=200:f32,z=3"], "unknown z"),
        (["--shape", "x=20x:f32,y=200:f32"], "dimension"),
        pytest.param(
            ["--target", "cuda"],
            "--target cuda tunes on a GPU, and here",
            marks=pytest.mark.skipif(driver.available(), reason="a GPU is here: it tunes"),
        ),
        (["--budget", "0s"], "--budget"),
        (["--jobs", "-1"], "--jobs"),
        (["--seed", "-1"], "--seed -1: give an int of 0 or more"),
        (["--shape", "x=99999x99999x999:f32,y=9:f32"], "more than this machine's memory"),
        (["--threads", "0"], "--threads '0': write thread counts from 1 to"),
        (["--threads", "1,,2"], "--threads '1,,2'"),
        (["--threads", "two"], "such as 1,2"),
        (["--threads", "1", "--target", "cuda"], "--threads counts CPU threads"),
    ],
)
def test_autotune_bad_options_exit_2(capsys, kernels_file, argv, message) -> None:
    code, out, err = kdsl_cli(capsys, "autotune", f"{kernels_file}:cli_affine", *argv)
    assert code == 2 and out == ""
    assert err.startswith("kdsl: error: ") and message in err
    assert len(err.splitlines()) == 1  # one line, no traceback
    assert registry.database().entries() == []  # nothing was tuned


@pytest.mark.usefixtures("cache_dir")
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nosuch", "has no kernel 'nosuch' (kernels there: cli_affine, cli_budget)"),
        ("not_a_kernel", "is a function, not a kdsl kernel"),
    ],
)
def test_autotune_unknown_kernel_exits_2(capsys, kernels_file, name, message) -> None:
    code, out, err = kdsl_cli(capsys, "autotune", f"{kernels_file}:{name}", "--budget", "3s")
    assert code == 2 and out == ""
    assert message in err


@pytest.mark.usefixtures("cache_dir")
def test_autotune_missing_file_exits_2(capsys, tmp_path: Path) -> None:
    code, _, err = kdsl_cli(capsys, "autotune", tmp_path / "absent.py")
    assert code == 2 and "no such file" in err


@pytest.mark.parametrize(
    "argv",
    [["autotune", "KERNELS:cli_affine", "--budget", "3s"], ["cache", "list"], ["cache", "show"]],
)
def test_unwritable_cache_dir_exits_2(tmp_path: Path, kernels_file: Path, argv) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")  # a directory under a file fails even as root
    env = {**os.environ, "KDSL_CACHE_DIR": str(blocker / "cache"), "PYTHONPATH": str(ROOT)}
    argv = [a.replace("KERNELS", str(kernels_file)) for a in argv]
    done = subprocess.run(
        [sys.executable, "-m", "kdsl.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "KDSL_CACHE_DIR" in done.stderr
    assert "Traceback" not in done.stderr


def as_a_user_bound_by_permissions() -> list[str]:
    """A command prefix under which a file's permission bits bind: as root, the
    capabilities that override them are dropped (setpriv, util-linux)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only directory can't be made")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | 0o200 if writable else mode & ~0o222)


READ_ONLY_CACHE = """
import contextlib, io, json, sys, warnings
import numpy as np
from kdsl.cli import main

warnings.simplefilter("error")
sys.path.insert(0, sys.argv[1])
from tune_kernels import cli_affine

x = np.linspace(-1, 1, 200, dtype=np.float32)
y = np.zeros_like(x)
cli_affine(x, y)
np.testing.assert_allclose(y, x * 3.0 - 1.0, rtol=1e-6)
results = {"stats": cli_affine.stats()}
commands = {
    "list": ["cache", "list"],
    "export": ["cache", "export", "-"],
    "clear": ["cache", "clear"],
    "autotune": sys.argv[2:],
}
for name, argv in commands.items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results[name] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


def test_a_read_only_cache_is_read_and_refuses_writes(capsys, cache_dir, kernels_file) -> None:
    """A cache made read-only on purpose (a team's, or baked into an image): calls use its
    tuning results and compiled objects, `cache list` and `export` read it, and commands
    that write say the directory is not writable."""
    tune = ["autotune", f"{kernels_file}:cli_affine", "--shape", "x=200:f32,y=200:f32", *QUICK]
    assert kdsl_cli(capsys, *tune)[0] == 0
    x = np.ones(200, np.float32)
    load_kernel(f"{kernels_file}:cli_affine")(x, np.empty_like(x))  # its object saved
    set_writable(cache_dir, False)
    try:
        done = subprocess.run(
            [
                *as_a_user_bound_by_permissions(),
                *(sys.executable, "-c", READ_ONLY_CACHE, kernels_file.parent, *tune),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "KDSL_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT)},
            timeout=120,
        )
    finally:
        set_writable(cache_dir, True)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    stats = results["stats"]
    assert stats["tuning"] == {"200, 200": "tuned"}
    assert stats["compilations"] == 1 and stats["objects_loaded"] == 1
    code, out, _ = results["list"]
    assert code == 0 and "tuning results: 1" in out and "cli_affine" in out
    code, out, _ = results["export"]
    assert code == 0 and json.loads(out)["entries"][0]["kernel_name"] == "cli_affine"
    for refused in ("clear", "autotune"):
        code, _, err = results[refused]
        assert code == 2 and f"the cache directory {cache_dir} is not writable" in err
