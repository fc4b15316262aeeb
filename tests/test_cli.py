"""The `kdsl` command line: show, version, bench, and its exit codes and messages."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kdsl as kd
from kdsl.cli import load_kernel, main

ROOT = Path(__file__).resolve().parent.parent

KERNELS = """
import kdsl as kd

@kd.kernel
def scale_add(x, y, out, alpha):
    i = kd.indices(x.shape[0])
    out[i] = alpha * x[i] + y[i]

@kd.kernel
def branchy(x, out):
    i = kd.indices(x.shape[0])
    if x[i] > 0:
        out[i] = x[i]

@kd.kernel
def scaled(x, out, alpha=2.0):
    i = kd.indices(x.shape[0])
    out[i] = alpha * x[i]

def plain(x):
    return x
"""

ARGS = "x=16:f32,y=16:f32,out=16:f32,alpha=0.5"


@pytest.fixture
def kernels_file(tmp_path):
    path = tmp_path / "my_kernels.py"
    path.write_text(KERNELS)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_refuses_example_arrays_larger_than_memory(capsys, kernels_file):
    huge = "x=200000x200000:f32,y=16:f32,out=16:f32,alpha=0.5"
    code, out, err = run(capsys, "show", f"{kernels_file}:scale_add", "--lowered", "--args", huge)
    assert code == 2
    assert "more than this machine's memory" in err and "give smaller shapes" in err


def test_show_ir_is_the_kernels_ir(capsys, kernels_file):
    code, out, err = run(capsys, "show", f"{kernels_file}:scale_add", "--ir", "--args", ARGS)
    assert code == 0, err
    x = np.ones(16, np.float32)
    expected = load_kernel(f"{kernels_file}:scale_add").ir(x, x, x, 0.5)
    assert out.strip() == str(expected).strip()
    assert "scale_add" in out and "alpha" in out


def test_ir_is_the_default_view(capsys, kernels_file):
    _, explicit, _ = run(capsys, "show", f"{kernels_file}:scale_add", "--ir", "--args", ARGS)
    code, default, _ = run(capsys, "show", f"{kernels_file}:scale_add", "--args", ARGS)
    assert code == 0 and default == explicit


@pytest.mark.parametrize(
    "view, needles",
    [
        ("--llvm", ["define", "@kdsl_scale_add", "float"]),
        ("--asm", ["scale_add", "ret"]),
        ("--lowered", ["scale_add", "alpha"]),
        ("--ptx", [".visible .entry kdsl_scale_add", "ld.global", "%ctaid.x"]),
    ],
)
def test_show_other_views(capsys, kernels_file, view, needles):
    code, out, err = run(capsys, "show", f"{kernels_file}:scale_add", view, "--args", ARGS)
    assert code == 0, err
    for needle in needles:
        assert needle in out


def test_views_are_exclusive(capsys, kernels_file):
    code, _, err = run(capsys, "show", f"{kernels_file}:scale_add", "--ir", "--asm", "--args", ARGS)
    assert code == 2 and "not allowed with" in err


def test_dtype_in_args_changes_the_code(capsys, kernels_file):
    _, f32, _ = run(capsys, "show", f"{kernels_file}:scale_add", "--llvm", "--args", ARGS)
    f64_args = ARGS.replace("f32", "f64")
    code, f64, _ = run(capsys, "show", f"{kernels_file}:scale_add", "--llvm", "--shape", f64_args)
    assert code == 0 and "double" in f64 and f32 != f64


def test_module_target_and_single_kernel_shorthand(capsys, tmp_path, monkeypatch):
    (tmp_path / "cli_only_kernel.py").write_text(KERNELS.split("@kd.kernel\ndef branchy")[0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "cli_only_kernel", raising=False)
    code, out, err = run(capsys, "show", "cli_only_kernel", "--args", ARGS)
    assert code == 0, err
    assert "scale_add" in out


def test_parameters_with_defaults_may_be_left_out(capsys, kernels_file):
    code, out, err = run(capsys, "show", f"{kernels_file}:scaled", "--args", "x=4:f32,out=4:f32")
    assert code == 0, err
    assert "alpha" in out


def test_kdsl_error_exits_1_with_its_message(capsys, kernels_file):
    code, out, err = run(capsys, "show", f"{kernels_file}:branchy", "--args", "x=8:f32,out=8:f32")
    assert code == 1
    assert "branchy" in err and "kd.when" in err and "Traceback" not in err
    assert out == ""


@pytest.mark.parametrize(
    "target, args, message",
    [
        ("{dir}/missing.py:scale_add", ARGS, "no such file: {dir}/missing.py"),
        ("{file}:nope", ARGS, "has no kernel 'nope' (kernels there: scale_add, branchy, scaled)"),
        (
            "{file}:plain",
            ARGS,
            "'plain' in {file} is a function, not a kdsl kernel (decorate it with @kd.kernel, "
            "or name a kernel: kernels in {file}: scale_add, branchy, scaled)",
        ),
        (  # a library function named as if it were a module
            "kdsl.kernels.rmsnorm",
            ARGS,
            "no module named 'kdsl.kernels.rmsnorm' (nor a file: files end in .py); 'rmsnorm' "
            "is a function of kdsl.kernels, defined in kdsl.kernels.norms: try "
            "kdsl.kernels.norms",
        ),
        (
            "{file}",
            ARGS,
            "name the kernel as {file}:NAME (kernels in {file}: scale_add, branchy, scaled)",
        ),
        ("no_such_module_kdsl:k", ARGS, "no module named 'no_such_module_kdsl'"),
        (  # a package whose kernels are in its modules (it said "none")
            "kdsl.kernels",
            ARGS,
            "(kernels in kdsl.kernels: none; its modules that define some: "
            "kdsl.kernels.attention, kdsl.kernels.attention_tc, kdsl.kernels.matmul,",
        ),
        ("{file}:scale_add", "x=16y:f32", "--args: bad argument spec 'x=16y:f32': dimension"),
        ("{file}:scale_add", "x=16:f32,y=16:f32", "--args: missing out, alpha (the kernel is"),
        ("{file}:scale_add", ARGS + ",beta=2", "--args: unknown beta (the kernel is scale_add("),
    ],
)
def test_usage_errors_exit_2_in_one_line(capsys, kernels_file, target, args, message):
    fill = {"dir": kernels_file.parent, "file": kernels_file}
    code, out, err = run(capsys, "show", target.format(**fill), "--args", args)
    assert code == 2
    assert err.startswith("kdsl: error: ") and err.count("\n") == 1
    assert message.format(**fill) in err
    assert out == ""


def test_args_are_required_without_declared_examples(capsys, kernels_file):
    code, _, err = run(capsys, "show", f"{kernels_file}:scale_add")
    assert code == 2 and "--args is needed" in err and "each of x, y, out, alpha" in err


def test_show_without_args_takes_the_first_declared_example(capsys, tmp_path):
    path = tmp_path / "with_examples.py"
    path.write_text(
        KERNELS.replace(
            "@kd.kernel\ndef scale_add",
            "@kd.kernel(examples=[{'x': kd.spec((24,), kd.f64), 'y': kd.spec((24,), kd.f64),"
            " 'out': kd.spec((24,), kd.f64), 'alpha': 0.5}])\ndef scale_add",
        )
    )
    code, out, err = run(capsys, "show", f"{path}:scale_add", "--lowered")
    assert code == 0, err
    x = np.ones(24, np.float64)
    assert out.strip() == str(load_kernel(f"{path}:scale_add").lowered(x, x, x, 0.5)).strip()


def test_no_command_and_unknown_options(capsys):
    assert run(capsys)[0] == 2
    code, _, err = run(capsys, "version", "--frobnicate")
    assert code == 2 and "unrecognized arguments: --frobnicate" in err


def test_version(capsys):
    code, out, _ = run(capsys, "version")
    assert code == 0
    assert out.startswith(f"kdsl {kd.__version__} (Python ") and "LLVM " in out


def test_console_entry_point_in_a_fresh_process(kernels_file):
    done = subprocess.run(
        [sys.executable, "-m", "kdsl.cli", "show", f"{kernels_file}:scale_add", "--args", "x=3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("kdsl: error: --args: missing y, out, alpha")
    assert "Traceback" not in done.stderr


def test_a_closed_stdout_ends_quietly(kernels_file):
    """`kdsl show ... --llvm | head`: the reader leaves before the output is written."""
    show = subprocess.Popen(
        [sys.executable, "-m", "kdsl.cli", "show", f"{kernels_file}:scale_add", "--llvm"]
        + ["--args", ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    show.stdout.close()  # no reader: the first write fails with EPIPE
    err = show.stderr.read()
    assert show.wait(timeout=60) == 141  # 128 + SIGPIPE, as a shell reports `seq 1e6 | head`
    assert err == ""


def _quick_benchmark(script: str, tmp_path) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Run benchmarks/`script` --quick, its page written under tmp_path: the page and the
    finished process (which must have succeeded)."""
    output = tmp_path / "results.md"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / script),
        "--quick",
        "--output",
        str(output),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return output.read_text(encoding="utf-8"), done


def test_quick_benchmark_writes_its_table(tmp_path):
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_bytes() if results.exists() else None
    page, done = _quick_benchmark("run.py", tmp_path)
    assert page.startswith("# kdsl vs NumPy (quick run)") and "Machine: " in page
    names = ["saxpy", "row sum", "matmul, naive", "call overhead", "parallel", "fork/join"]
    names += ["copy", "s.nontemporal", "softmax, fused", "RMS norm, fused", "matmul, tile"]
    names += ["trace + compile", "saxpy on reversed views", "row sum of x[:, ::-1]"]
    for name in names:
        assert name in page
    table = [line for line in page.splitlines() if line.startswith("| ")]
    torch_rows = 3 if importlib.util.find_spec("torch") else 0  # the row kernels' peer
    assert len(table) == 1 + 31 + torch_rows  # header and one row per benchmark
    assert page.strip() in done.stdout  # the same table is printed
    assert (results.read_bytes() if results.exists() else None) == before


def test_bench_passes_options_to_the_script(capfd):
    assert main(["bench", "--help"]) == 0
    out, _ = capfd.readouterr()
    assert "--quick" in out and "--output" in out


def test_demo_checks_and_times_every_library_kernel(capsys, monkeypatch):
    """Every kernel checked and timed, its rate a share of the machine's peaks: probed
    before the kernels and again after them, the better of each pair taken (here made-up
    probes, after the real one ran once)."""
    from kdsl.cli import demo

    probed = demo.machine_peaks(1 << 20)
    assert all(0 < p < float("inf") for p in probed)
    assert demo.machine_peaks(1 << 20, than=(1e9, 0.0))[0] == 1e9
    calls, probes = [], iter([(7e5, 2.0), (9e5, 3.0)])
    monkeypatch.setattr(
        demo, "machine_peaks", lambda b, than=None: calls.append(than) or next(probes)
    )
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert calls == [None, (7e5, 2.0)]  # the second probe is given the first
    for name in ("matmul", "softmax", "rmsnorm", "layernorm", "attention", "qmatvec"):
        line = next(row for row in out.splitlines() if row.startswith(name))
        assert " ok " in line and "×" in line and "%" in line
    assert "peak: 900000 GFLOP/s" in out and " 3 GB/s (copy" in out and "WRONG" not in out
    rmsnorm = next(row for row in out.splitlines() if row.startswith("rmsnorm")).split()
    rate, share = float(rmsnorm[-3]), float(rmsnorm[-1].rstrip("%"))
    assert abs(share - 100 * rate / 3.0) <= 100 * 0.5 / 3.0 + 0.5  # the peaks after


def test_quick_naive_benchmark_checks_and_times_each_kernel(tmp_path):
    """benchmarks/naive.py: unscheduled kernels, each checked against NumPy before it is
    timed (a wrong result fails the run)."""
    page, _ = _quick_benchmark("naive.py", tmp_path)
    names = ("matmul, kd.sum over k", "softmax", "rmsnorm", "argmax of each row", "histogram")
    names += ("column sums, kd.sum over i", "sum of one long vector", "transpose")
    names += ("2x + z, (n, 3) rows", "softmax, a batch of one", "matmul, a batch of one")
    for name in (*names, "vector × matrix, kd.sum over k", "embedding rows"):
        assert f"| {name}" in page
