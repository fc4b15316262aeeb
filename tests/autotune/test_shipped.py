"""Tuning shipped with kdsl (kdsl/autotune/tuned/*.json): a call whose signature has no
row in the user's database takes the shipped row of its key, the user's own tuning wins
over it, a shipped file that can't be read is left out with a warning, and every row
shipped for this machine belongs to a current library kernel (else it went stale)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from kdsl.kernels import kernel_functions, module_names

from kdsl.autotune import registry, shipped
from kdsl.autotune.database import TuningDB
from kdsl.autotune.keys import target_key
from kdsl.autotune.tuner import example_key, example_specs, example_values
from kdsl.kernel import KernelFunction
from tests.autotune.test_dispatch import affine_kernel, arrays, entry_for


@pytest.fixture
def shipped_dir(tmp_path, monkeypatch, cache_dir):
    """An empty folder of shipped files, read afresh, and an empty user database."""
    folder = tmp_path / "tuned"
    folder.mkdir()
    monkeypatch.setattr(shipped, "SHIPPED_DIR", folder)
    shipped.forget()
    yield folder
    shipped.forget()


def ship(folder: Path, kernel: KernelFunction, args, config: dict[str, object]) -> None:
    """A shipped file with one row: `config` for the kernel at the shapes of `args`."""
    db = TuningDB(folder.parent / "to-ship.sqlite")
    db.record(entry_for(kernel, args, config))
    db.export(folder / "machine.json")
    db.close()


def test_a_shipped_row_serves_a_signature_the_database_has_no_row_for(shipped_dir):
    kernel = affine_kernel("shipped_serves")
    ship(shipped_dir, kernel, arrays(4096), {"f": 256})
    x, y = arrays(3000)
    kernel(x, y)
    np.testing.assert_allclose(y, x * 2.0 + 0.5, rtol=1e-6)
    assert kernel.stats()["tuning"] == {
        "3000, 3000": "nearest tuned shape 4096, 4096 (shipped with kdsl)"
    }
    assert kernel.schedule_of(x, y).chosen == {"f": 256}  # not the first choice, 16


def test_the_users_own_tuning_wins_over_a_shipped_row(shipped_dir):
    kernel = affine_kernel("shipped_loses")
    x, y = arrays(1000)
    ship(shipped_dir, kernel, (x, y), {"f": 256})
    registry.record(entry_for(kernel, (x, y), {"f": 64}))
    kernel(x, y)
    assert kernel.stats()["tuning"] == {"1000, 1000": "tuned"}
    assert kernel.schedule_of(x, y).chosen == {"f": 64}


def test_an_unreadable_shipped_file_is_left_out_with_one_warning(shipped_dir):
    (shipped_dir / "broken.json").write_text('{"kdsl_tuning_export": 1, "entries": [3]}')
    kernel = affine_kernel("shipped_broken")
    x, y = arrays(100)
    with pytest.warns(RuntimeWarning, match="left out a shipped tuning file.*broken.json"):
        kernel(x, y)
    np.testing.assert_allclose(y, x * 2.0 + 0.5, rtol=1e-6)
    assert kernel.stats()["tuning"] == {}  # no tuning known: the plain call path
    assert kernel.schedule_of(x, y).chosen == {"f": 16}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read once per process
        affine_kernel("shipped_broken_2")(x, y)


def _library_keys() -> set[tuple[str, str, str]]:
    """The tuning keys of every library kernel's declared examples on this CPU."""
    return {
        example_key(kernel, example)
        for kernel in kernel_functions().values()
        for example in kernel.examples
    }


def test_every_row_shipped_for_this_machine_is_a_current_library_kernel():
    """A library kernel whose traced IR or search space changed has a new identity: its
    shipped rows then serve nothing, silently. Rerun `python benchmarks/ship_tuning.py`."""
    files = sorted(shipped.SHIPPED_DIR.glob("*.json"))
    rows = [
        entry
        for path in files
        for entry in json.loads(path.read_text())["entries"]
        if entry["target"] == target_key()
    ]
    if not rows:
        pytest.skip(f"kdsl ships no tuning for this CPU ({target_key()})")
    live = _library_keys()
    stale = [
        f"{r['kernel_name']} {r['shape']}"
        for r in rows
        if (r["kernel_id"], r["target"], r["signature"]) not in live
    ]
    assert not stale, f"stale shipped tuning (rerun benchmarks/ship_tuning.py): {stale}"


def test_every_shipped_row_names_each_param_of_its_kernel():
    """A row missing a param is refused at the call, with a warning, and the call runs
    the default params: a row of default params must name them all. (ship_tuning wrote
    them as {}, and rmsnorm 4096 × 1024 warned in every process that called it.)"""
    spaces = {}
    for kernel in kernel_functions().values():
        for example in kernel.examples:
            specs, _ = example_specs(kernel, example_values(kernel, example))
            kernel_id, _, signature = example_key(kernel, example)
            spaces[kernel_id, signature] = kernel.search_space(kernel.trace(specs))
    rows = [
        entry
        for path in sorted(shipped.SHIPPED_DIR.glob("*.json"))
        for entry in json.loads(path.read_text())["entries"]
    ]
    live = [(r, spaces[key]) for r in rows if (key := (r["kernel_id"], r["signature"])) in spaces]
    if not live:  # (a search space that depends on the CPU: another machine's kernels)
        pytest.skip("no shipped row belongs to a library kernel as it is on this CPU")
    incomplete = [
        f"{r['kernel_name']} {r['shape']} {r['target']}: no {sorted(set(space) - set(r['config']))}"
        for r, space in live
        if set(space) - set(r["config"])
    ]
    assert not incomplete, incomplete


def test_ship_tuning_tunes_the_modules_that_define_kernels():
    """`kdsl autotune` refuses a module without kernels (qtensor): ship_tuning's list of
    modules leaves such modules out, and its run failed before tuning anything."""
    names = module_names()
    assert "kdsl.kernels.matmul" in names and "kdsl.kernels.qtensor" not in names
    assert "kdsl.kernels.quant" in names and len(kernel_functions()) >= 20


def test_cache_list_counts_the_rows_shipped_for_this_cpu(shipped_dir, capsys):
    from kdsl.cli import main

    kernel = affine_kernel("shipped_listed")
    ship(shipped_dir, kernel, arrays(64), {"f": 64})
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert f"shipped with kdsl for this CPU: 1 tuning results ({shipped_dir}" in out
