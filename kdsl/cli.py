"""The `kdsl` command line: `kdsl show`, `kdsl bench`, `kdsl version`.

Exit codes: 0 success; 1 a kdsl error (its message is printed); 2 a usage error
(bad target, missing kernel, bad --args), reported in one line without a traceback.
Each subcommand is a `_add_<name>` function that declares its options and a
`_<name>` function that runs it; `main` dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import llvmlite
import llvmlite.binding
import numpy as np

import kdsl
from kdsl.errors import KdslError
from kdsl.kernel import KernelFunction
from kdsl.specs import SpecError, make_arguments, parse_args_spec

_VIEWS = {
    "ir": "the traced IR",
    "lowered": "the IR after scheduling and lowering",
    "llvm": "the optimized LLVM IR",
    "asm": "the host assembly",
}
_BENCHMARKS = Path(kdsl.__file__).resolve().parent.parent / "benchmarks" / "run.py"


class UsageError(Exception):
    """A command line that names something that isn't there; exit code 2."""


# --------------------------------------------------------------------------- targets


def load_kernel(target: str) -> KernelFunction:
    """The kernel named by `path/to/file.py:name` or `package.module:name`.

    The `:name` may be left out when the file or module defines exactly one kernel.
    """
    where, colon, name = target.rpartition(":")
    if not colon:
        where, name = target, ""
    module = _load_module(where)
    kernels = {k: v for k, v in vars(module).items() if isinstance(v, KernelFunction)}
    found = ", ".join(kernels) or "none"
    if not name:
        if len(kernels) != 1:
            raise UsageError(f"name the kernel as {where}:NAME (kernels in {where}: {found})")
        return next(iter(kernels.values()))
    value = getattr(module, name, None)
    if isinstance(value, KernelFunction):
        return value
    if value is None:
        raise UsageError(f"{where} has no kernel '{name}' (kernels there: {found})")
    raise UsageError(
        f"'{name}' in {where} is a {type(value).__name__}, not a kdsl kernel "
        "(decorate it with @kd.kernel)"
    )


def _load_module(where: str) -> ModuleType:
    if not where:
        raise UsageError(
            "the target is empty; write path/to/file.py:KERNEL or package.module:KERNEL"
        )
    if where.endswith(".py") or os.sep in where or "/" in where:
        return _load_file(Path(where))
    _put_on_path(os.getcwd())  # as `python -m` does: modules of the current project
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (where == exc.name or where.startswith(exc.name + ".")):
            raise UsageError(f"no module named '{where}' (nor a file: files end in .py)") from None
        raise


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    name = "kdsl_target_" + "".join(c if c.isalnum() else "_" for c in path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"can't import {path} as Python source")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    _put_on_path(str(path.resolve().parent))  # as `python file.py`: its sibling modules
    spec.loader.exec_module(module)
    return module


def _put_on_path(folder: str) -> None:
    if folder not in sys.path:
        sys.path.insert(0, folder)


# ----------------------------------------------------------------------- subcommands


def _add_show(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "show",
        help="print a kernel's IR, lowered IR, LLVM IR or assembly",
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
        required=True,
        metavar="SPEC",
        help="example arguments, e.g. 'A=512x256:f32,B=256:f32,eps=1e-5' "
        "(NAME=DIMSxDIMS:DTYPE for arrays, NAME=:DTYPE for 0-d, NAME=NUMBER for scalars)",
    )
    p.set_defaults(run=_show, view="ir")


def _show(ns: argparse.Namespace) -> int:
    kernel = load_kernel(ns.target)
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
    args = make_arguments(examples, np.random.default_rng(0))
    print(getattr(kernel, ns.view)(**args))
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
    commands.add_parser(
        "version", help="print the versions of kdsl and what it runs on"
    ).set_defaults(run=_version)


def _version(ns: argparse.Namespace) -> int:
    llvm = ".".join(map(str, llvmlite.binding.llvm_version_info))
    print(
        f"kdsl {kdsl.__version__} (Python {platform.python_version()}, numpy {np.__version__}, "
        f"llvmlite {llvmlite.__version__}, LLVM {llvm})"
    )
    return 0


# ------------------------------------------------------------------------------ main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdsl", description="kdsl: a kernel DSL embedded in Python."
    )
    parser.add_argument("--version", action="version", version=f"kdsl {kdsl.__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in (_add_show, _add_bench, _add_version):
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `kdsl` command line; returns the exit code."""
    parser = _parser()
    try:
        ns, extra = parser.parse_known_args(argv)
        if extra and not getattr(ns, "passes_options", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse's --help, --version and usage errors
        return int(exc.code or 0)
    ns.options = extra
    try:
        return ns.run(ns)
    except UsageError as err:
        print(f"kdsl: error: {err}", file=sys.stderr)
        return 2
    except KdslError as err:
        print(err, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
