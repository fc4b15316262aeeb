"""The import direction of DESIGN §7 / STYLE.md, enforced by walking every module's imports."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kdsl"

# What each layer may import from kdsl (besides itself).
ALLOWED = {
    "kdsl.types": {"kdsl.types"},
    "kdsl.config": {"kdsl.config"},
    "kdsl.errors": {"kdsl.errors"},
    "kdsl.ir": {"kdsl.types", "kdsl.errors", "kdsl.config"},
    "kdsl.trace": {"kdsl.types", "kdsl.errors", "kdsl.config", "kdsl.ir"},
    "kdsl.schedule": {"kdsl.types", "kdsl.errors", "kdsl.config", "kdsl.ir"},
    "kdsl.targets.cpu": {"kdsl.types", "kdsl.errors", "kdsl.config", "kdsl.ir"},
    "kdsl.targets.interp": {"kdsl.types", "kdsl.errors", "kdsl.config", "kdsl.ir"},
    # the GPU code generator extends the CPU's LLVM one: one definition of each
    # operator's semantics, statement codegen and the object store
    "kdsl.targets.cuda": {
        "kdsl.types",
        "kdsl.errors",
        "kdsl.config",
        "kdsl.ir",
        "kdsl.targets.cpu",
    },
}


def _public_names() -> set[str]:
    for node in ast.parse((PACKAGE / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
            return set(ast.literal_eval(node.value))
    return set()


PUBLIC = _public_names()


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "kdsl" and node.level == 0:
            found |= {f"kdsl.{a.name}" for a in node.names}  # from kdsl import types
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m == "kdsl" or m.startswith("kdsl.")}


def _layer(module: str) -> str | None:
    matches = [layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def test_layers_import_only_what_is_below_them():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        layer = _layer(module)
        if layer is None:
            continue
        for imported in _imports(path):
            ok = imported.startswith(layer) or any(
                imported == a or imported.startswith(a + ".") for a in ALLOWED[layer]
            )
            if not ok:
                violations.append(f"{module} imports {imported}")
    assert not violations, "\n".join(violations)


def test_nothing_in_the_package_imports_the_library():
    """Only the command line, at the top of the stack, may (`kdsl demo`)."""
    bad = [
        f"{_module_name(p)} imports {m}"
        for p in PACKAGE.rglob("*.py")
        for m in _imports(p)
        if m.startswith("kdsl.kernels") and not _module_name(p).startswith("kdsl.cli")
    ]
    assert not bad, bad


def test_library_uses_only_the_public_api():
    """kernels/ imports kdsl itself (public names only) and its own modules: no module of
    kdsl's internals, whatever its name (`from kdsl.kernel import ...` names a module,
    not the public `kd.kernel`)."""
    bad = []
    for path in (ROOT / "kernels").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
                if node.module == "kdsl":  # from kdsl import name
                    names = [a.name for a in node.names if a.name not in PUBLIC]
                    bad += [f"{path.name} imports kdsl.{name}" for name in names]
            else:
                continue
            internal = [m for m in modules if m.startswith("kdsl.") and m != "kdsl.kernels"]
            bad += [
                f"{path.name} imports {m}" for m in internal if not m.startswith("kdsl.kernels.")
            ]
    assert not bad, bad


def test_environment_is_read_only_in_config():
    readers = [
        _module_name(p)
        for p in PACKAGE.rglob("*.py")
        if "os.environ" in p.read_text() and p.name != "config.py"
    ]
    assert not readers, f"read configuration through kdsl.config, not os.environ: {readers}"


def test_every_package_is_installed():
    """pyproject lists packages by hand (kernels/ installs as kdsl.kernels, examples/
    as kdsl.examples): a new subpackage missing there would be left out of the wheel."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    moved = {name for name, folder in setuptools["package-dir"].items() if name != folder}
    found = {_module_name(p) for p in PACKAGE.rglob("__init__.py")} | moved
    assert all((ROOT / setuptools["package-dir"][name] / "__init__.py").exists() for name in moved)
    assert found == set(setuptools["packages"])
