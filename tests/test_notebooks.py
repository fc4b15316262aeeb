"""Execute the tutorial notebooks (notebooks/*.ipynb) and fail on any cell error.

The notebooks run in a Jupyter kernel subprocess (ipykernel's own `python3` kernelspec,
which pip installs with it into sys.prefix/share/jupyter/kernels), which inherits this
process's environment. Each notebook gets a fresh cache directory under the tests'
KDSL_CACHE_DIR (conftest.py), so tuning results and compiled objects never touch the
user's cache, notebooks see the same (empty) cache on every run, and their tuning
results are not found by other tests' kernels that trace to the same IR.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import nbclient  # the dev extra installs these, ipykernel and matplotlib
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_notebooks_exist() -> None:
    names = [p.name for p in PATHS]
    assert names == ["01-quickstart.ipynb", "02-schedules.ipynb", "03-autotune.ipynb"]


def test_notebooks_saved_without_outputs() -> None:
    for path in PATHS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{path.name}: saved with outputs; run notebooks/make_notebooks.py"
                )


def test_notebooks_match_their_generator() -> None:
    """The .ipynb files are what notebooks/make_notebooks.py writes: review that file."""
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert sorted(generator.NOTEBOOKS) == [p.name for p in PATHS]
    for path in PATHS:
        expected = nbformat.writes(generator.build(path.name, generator.NOTEBOOKS[path.name]))
        assert path.read_text(encoding="utf-8") == expected + "\n", (
            f"{path.name} differs from notebooks/make_notebooks.py: run that script"
        )


def _execute(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    return nb


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tests_cache = os.environ["KDSL_CACHE_DIR"]  # set by conftest.py before kdsl loads
    cache = tempfile.mkdtemp(prefix=f"notebook-{path.stem}-", dir=tests_cache)
    monkeypatch.setenv("KDSL_CACHE_DIR", cache)  # the Jupyter kernel inherits it
    nb = _execute(path)
    kinds = {cell.cell_type for cell in nb.cells}
    assert {"markdown", "code"} <= kinds, f"{path.name} needs prose and code"
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    if path.name == "02-schedules.ipynb":
        images = [
            out
            for out in outputs
            if out.output_type == "display_data" and "image/png" in out.get("data", {})
        ]
        assert images, "02-schedules should draw its GFLOP/s bar chart"
