"""What the `kdsl` subcommands share: usage errors, and finding kernels named on the
command line (`path/to/file.py:NAME`, `package.module:NAME`, a file or a module)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from kdsl.config import cache_root
from kdsl.kernel import KernelFunction


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


def kernels_in(target: str) -> list[KernelFunction]:
    """The kernels a target names: `where:NAME` is one; a file or module is all of its
    kernels (in definition order, each once: a module may bind one to several names)."""
    where, colon, name = target.rpartition(":")
    if colon and name:
        return [load_kernel(target)]
    module = _load_module(target.rstrip(":"))
    found = {id(v): v for v in vars(module).values() if isinstance(v, KernelFunction)}
    kernels = list(found.values())
    if not kernels:
        raise UsageError(f"{target} defines no kdsl kernels (decorate them with @kd.kernel)")
    return kernels


def check_cache_dir() -> None:
    """Fail early, with the fix, when tuning results could not be saved."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise UsageError(
            f"the cache directory {root} is not writable ({exc.strerror or exc}); "
            "set KDSL_CACHE_DIR to a writable directory"
        ) from None
