"""`kdsl show`, `kdsl bench` and `kdsl version`."""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

import llvmlite
import llvmlite.binding
import numpy as np

import kdsl
from kdsl.cli.common import UsageError, failure, load_kernel
from kdsl.errors import KdslError
from kdsl.specs import SpecError, make_arguments, parse_args_spec

_VIEWS = {
    "ir": "the traced IR",
    "lowered": "the IR after scheduling and lowering",
    "llvm": "the optimized LLVM IR",
    "asm": "the host assembly",
    "ptx": "the PTX of the kernel's CUDA schedule (no GPU needed; KDSL_CUDA_ARCH picks sm_XX)",
}
_BENCHMARKS = Path(kdsl.__file__).resolve().parent.parent / "benchmarks" / "run.py"


def _add_show(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "show",
        help="print a kernel's IR, lowered IR, LLVM IR, assembly or PTX",
        description="Specialize a kernel for example arguments and print what it compiles to.",
    )
    p.add_argument("target", help="path/to/file.py:KERNEL or package.module:KERNEL")
    views = p.add_mutually_exclusive_group()
    for view, what in _VIEWS.items():
        flag_help = what + (" (the default)" if view == "ir" else "")
        views.add_argument(
            f"--{view}", dest="view", action="store_const", const=view, help=flag_help
        )
    p.add_argument(
        "--args",
        "--shape",
        dest="args",
        metavar="SPEC",
        help="example arguments, e.g. 'A=512x256:f32,B=256:f32,eps=1e-5' "
        "(NAME=DIMSxDIMS:DTYPE for arrays, NAME=:DTYPE for 0-d, NAME=NUMBER for scalars); "
        "default: the kernel's first declared example (@kd.kernel(examples=[...]))",
    )
    p.set_defaults(run=_show, view="ir")


def _show(ns: argparse.Namespace) -> int:
    kernel = load_kernel(ns.target)
    if ns.args is None:
        if not kernel.examples:
            raise UsageError(
                f"--args is needed: kernel '{kernel.name}' declares no examples; pass a "
                f"value for each of {', '.join(kernel.signature.names)} (e.g. "
                "--args 'A=512x256:f32,eps=1e-5'), or declare examples with "
                "@kd.kernel(examples=[{...}])"
            )
        examples = dict(kernel.examples[0])
    else:
        try:
            examples = parse_args_spec(ns.args)
        except SpecError as err:
            raise UsageError(f"--args: {err.what}; {err.fix}") from None
    names = kernel.signature.names
    missing = [n for n in names if n not in examples and n not in kernel.signature.defaults]
    unknown = [n for n in examples if n not in names]
    if missing or unknown:
        problem = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"
        raise UsageError(f"--args: {problem} (the kernel is {kernel.signature})")
    try:
        args = make_arguments(examples, np.random.default_rng(0))
    except SpecError as err:
        raise UsageError(f"--args: {err.what}; {err.fix}") from None
    try:
        shown = getattr(kernel, ns.view)(**args)
    except KdslError:
        raise
    except Exception as exc:  # a Python error in the kernel's own code, as it traced
        raise UsageError(failure(f"tracing {kernel.name}", exc)) from None
    print(shown)
    return 0


def _add_bench(commands: argparse._SubParsersAction) -> None:
    commands.add_parser(
        "bench",
        help="run the benchmarks (benchmarks/run.py of a source checkout)",
        description="Run benchmarks/run.py; other options (--quick, --output PATH) are passed on.",
    ).set_defaults(run=_bench, passes_options=True)


def _bench(ns: argparse.Namespace) -> int:
    if not _BENCHMARKS.is_file():
        raise UsageError(f"kdsl bench needs a source checkout of kdsl: {_BENCHMARKS} not found")
    return subprocess.call([sys.executable, str(_BENCHMARKS), *ns.options])


def _add_version(commands: argparse._SubParsersAction) -> None:
    what = "print the versions of kdsl and what it runs on"
    commands.add_parser(
        "version", help=what, description=what[0].upper() + what[1:] + "."
    ).set_defaults(run=_version)


def _version(ns: argparse.Namespace) -> int:
    llvm = ".".join(map(str, llvmlite.binding.llvm_version_info))
    print(
        f"kdsl {kdsl.__version__} (Python {platform.python_version()}, numpy {np.__version__}, "
        f"llvmlite {llvmlite.__version__}, LLVM {llvm})"
    )
    return 0


def add(commands: argparse._SubParsersAction) -> None:
    _add_show(commands)
    _add_bench(commands)
    _add_version(commands)
