"""What the `kdsl` subcommands share: usage errors, and finding kernels named on the
command line (`path/to/file.py:NAME`, `package.module:NAME`, a file, a module, or a
package: a dotted name or a directory with an `__init__.py`, its modules included)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
import tempfile
import traceback
from pathlib import Path
from types import ModuleType

from kdsl.config import cache_root
from kdsl.kernel import KernelFunction

# frames of an import that are not the user's: importlib's and kdsl's
_NOT_THE_USERS = (
    "<frozen",
    str(Path(importlib.__file__).resolve().parent) + os.sep,
    str(Path(__file__).resolve().parent.parent) + os.sep,
)


class UsageError(Exception):
    """A command line that names something that isn't there; exit code 2."""


def load_kernel(target: str) -> KernelFunction:
    """The kernel named by `path/to/file.py:name` or `package.module:name`.

    The `:name` may be left out when the file or module defines exactly one kernel.
    """
    where, colon, name = target.rpartition(":")
    if not colon:
        where, name = target, ""
    module = _load_module(where)
    kernels = {k: v for k, v in vars(module).items() if isinstance(v, KernelFunction)}
    found = ", ".join(kernels) or _none_in(module)
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
        f"(decorate it with @kd.kernel, or name a kernel: kernels in {where}: {found})"
    )


def _none_in(module: ModuleType) -> str:
    """What to say of a module that defines no kernels: a package's modules that do (`kdsl
    show kdsl.kernels` said "none", its kernels being in its modules)."""
    inside = [
        m.__name__
        for m in _with_submodules(module)[1:]
        if any(isinstance(v, KernelFunction) for v in vars(m).values())
    ]
    return f"none; its modules that define some: {', '.join(inside)}" if inside else "none"


def _load_module(where: str) -> ModuleType:
    if not where:
        raise UsageError(
            "the target is empty; write path/to/file.py:KERNEL or package.module:KERNEL"
        )
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = Path(where)
        if path.is_dir():
            return _load_package_dir(path)
        return _load_file(path)
    _put_on_path(os.getcwd())  # as `python -m` does: modules of the current project
    return _import(where)


def _import(name: str) -> ModuleType:
    """importlib.import_module, its failures told as the user's, not as kdsl's."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise UsageError(
                f"no module named '{name}' (nor a file: files end in .py)" + _defined_in(name)
            ) from None
        raise UsageError(failure(f"importing {name}", exc)) from None
    except Exception as exc:
        raise UsageError(failure(f"importing {name}", exc)) from None
    except SystemExit as exc:
        raise UsageError(_exited(name, exc)) from None


def _exited(what: object, exc: SystemExit) -> str:
    """A module whose import called sys.exit (a script's unguarded `sys.exit(main())`):
    kdsl would otherwise exit with it, silently and often with 0, having done nothing."""
    return (
        f"importing {what} called sys.exit({'' if exc.code is None else repr(exc.code)}): "
        "the module ran as a script; guard its script code with "
        '`if __name__ == "__main__":` so that kdsl can import its kernels'
    )


def _defined_in(name: str) -> str:
    """For `package.function` given as a module (`kdsl.kernels.rmsnorm`): where the
    function is defined, whose kernels the user may mean; else nothing."""
    package, _, attr = name.rpartition(".")
    try:
        value = getattr(importlib.import_module(package), attr, None) if package else None
    except Exception:
        return ""
    home = getattr(value, "__module__", None)
    if value is None or not isinstance(home, str) or home == package:
        return ""
    return f"; '{attr}' is a {type(value).__name__} of {package}, defined in {home}: try {home}"


def _load_package_dir(path: Path) -> ModuleType:
    if not (path / "__init__.py").is_file():
        raise UsageError(f"{path} is a directory without an __init__.py: name a .py file in it")
    if not path.resolve().name.isidentifier():
        raise UsageError(f"{path} is not a package name Python can import")
    _put_on_path(str(path.resolve().parent))
    return _import(path.resolve().name)


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
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise UsageError(failure(f"importing {path}", exc)) from None
    except SystemExit as exc:
        del sys.modules[name]
        raise UsageError(_exited(path, exc)) from None
    return module


def failure(what: str, exc: BaseException) -> str:
    """`what` (importing a file, tracing a kernel) raised `exc`: the error and the user's
    frames of it (importlib's and kdsl's left out), as Python would print them."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(_NOT_THE_USERS)
    ]
    shown = "".join(traceback.format_list(frames))
    error = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
    return f"{what} failed:\n{shown}{error}"


def _put_on_path(folder: str) -> None:
    if folder not in sys.path:
        sys.path.insert(0, folder)


def kernels_in(target: str) -> list[KernelFunction]:
    """The kernels a target names: `where:NAME` is one; a file or module is all of its
    kernels (in definition order, each once: a module may bind one to several names)."""
    where, colon, name = target.rpartition(":")
    if colon and name:
        return [load_kernel(target)]
    found: dict[int, KernelFunction] = {}
    for module in _with_submodules(_load_module(target.rstrip(":"))):
        found.update((id(v), v) for v in vars(module).values() if isinstance(v, KernelFunction))
    kernels = list(found.values())
    if not kernels:
        raise UsageError(f"{target} defines no kdsl kernels (decorate them with @kd.kernel)")
    return kernels


def _with_submodules(module: ModuleType) -> list[ModuleType]:
    """A module; a package and every module in it, subpackages too (each imported as
    _import does, so a failure is the user's error; `__main__` is a program, not kernels)."""
    if not hasattr(module, "__path__"):
        return [module]
    found = [module]
    for info in sorted(pkgutil.iter_modules(module.__path__), key=lambda m: m.name):
        if info.name != "__main__":
            found += _with_submodules(_import(f"{module.__name__}.{info.name}"))
    return found


def check_cache_dir(write: bool = True) -> None:
    """Fail early, with the fix, when the cache directory can't be made or, for a
    command that saves tuning results (`write`), written. A read-only one is read."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        if write:
            with tempfile.TemporaryFile(dir=root):
                pass
    except OSError as exc:
        state = "not writable" if write and root.is_dir() else "not a usable directory"
        raise UsageError(
            f"the cache directory {root} is {state} ({exc.strerror or exc}); "
            "set KDSL_CACHE_DIR to a writable directory"
        ) from None
