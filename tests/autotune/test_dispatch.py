"""Tuned calls: the nearest tuned shape serves an untuned one, a stale config falls back
to the default params, `autotune=` tunes a new shape on its first call, and a corrupt
tuning database never stops a kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import kdsl as kd
from kdsl.autotune import registry
from kdsl.autotune.database import Entry
from kdsl.autotune.keys import shape_of, signature_key, target_key, tuning_key
from kdsl.config import VERSION
from kdsl.kernel import KernelFunction
from kdsl.targets.cpu import runtime

ROOT = Path(__file__).resolve().parents[2]


def affine(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] * 2.0 + 0.5


def affine_kernel(name: str, **options: object) -> KernelFunction:
    """A fresh kernel `y = 2x + 0.5` whose split factor is a param; the name makes its
    identity, so each test's tuning results are its own."""
    kernel = kd.kernel(affine, name=name, **options)

    @kernel.schedule(kd.cpu)
    def _(s):
        s.split("i", s.param("f", [16, 64, 256]))

    return kernel


def arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(n).standard_normal(n, dtype=np.float32)
    return x, np.zeros(n, np.float32)


def entry_for(
    kernel: KernelFunction, args: Sequence[object], config: dict[str, object], threads: int = 0
) -> Entry:
    """A tuning result for the kernel at the shapes of `args` (on `threads`), as the tuner
    files it."""
    specs, _ = kernel._specs(args, {})
    traced = kernel.trace(specs)
    kernel_id, _, _ = tuning_key(kernel, specs, traced, kernel.search_space(traced), "")
    return Entry(
        kernel_id=kernel_id,
        kernel_name=kernel.name,
        target=target_key(),
        signature=signature_key(kernel.signature.names, specs),
        shape=shape_of(args),
        config=config,
        time_s=1e-6,
        default_time_s=2e-6,
        kdsl_version=VERSION,
        created=time.time(),
        threads=threads,
    )


def record(
    kernel: KernelFunction, args: Sequence[object], config: dict[str, object], threads: int = 0
) -> None:
    """File a tuning result for the kernel at the shapes of `args`, as the tuner would."""
    registry.record(entry_for(kernel, args, config, threads))


def test_untuned_shape_uses_nearest_tuned_shape() -> None:
    kernel = affine_kernel("dispatch_nearest")
    record(kernel, arrays(4096), {"f": 256})
    x, y = arrays(3000)
    kernel(x, y)
    np.testing.assert_allclose(y, x * 2.0 + 0.5, rtol=1e-6)
    assert kernel.stats()["tuning"] == {"3000, 3000": "nearest tuned shape 4096, 4096"}
    assert "io * 256 + ii" in str(kernel.lowered(x, y))  # the tuned split, not the default 16
    assert kernel.schedule_of(x, y).chosen == {"f": 256}  # what ran, not the first choices

    exact = arrays(4096)
    kernel(*exact)
    assert kernel.stats()["tuning"]["4096, 4096"] == "tuned"
    assert kernel.stats()["compilations"] == 1  # both shapes share one config's code


def test_an_untuned_first_call_applies_its_schedule_once() -> None:
    """The tuning lookup asks for the search space, then the compile for the default
    params' IR: one run of the schedule serves both (a second took 7% of compiling four
    library kernels); a new trace (another dtype) runs it again."""
    runs = []
    kernel = kd.kernel(affine, name="dispatch_schedule_once")

    @kernel.schedule(kd.cpu)
    def _(s):
        runs.append(s.param("f", [16, 64]))
        s.split("i", runs[-1])

    x, y = arrays(100)
    kernel(x, y)
    np.testing.assert_allclose(y, x * 2.0 + 0.5, rtol=1e-6)
    assert runs == [16]
    kernel(x.astype(np.float64), y.astype(np.float64))
    assert runs == [16, 16]


def test_each_thread_count_takes_its_own_tuning() -> None:
    """A schedule tuned on two threads is not the best on one: calls take the rows of
    their own count (kd.set_num_threads), the nearest count's where it has none."""
    kernel = affine_kernel("dispatch_threads")
    x, y = arrays(3001)
    record(kernel, (x, y), {"f": 64}, threads=1)
    record(kernel, (x, y), {"f": 256}, threads=2)
    for count, split, source in [
        (1, 64, "tuned"),
        (2, 256, "tuned"),
        (4, 256, "nearest tuned shape 3001, 3001 on 2 threads"),
        (1, 64, None),  # chosen once per count: kept (the stats tell the latest choice)
    ]:
        with runtime.num_threads_within(count):
            y[:] = 0
            kernel(x, y)
            np.testing.assert_allclose(y, x * 2.0 + 0.5, rtol=1e-6)
            assert kernel.schedule_of(x, y).chosen == {"f": split}
            assert f"io * {split} + ii" in str(kernel.lowered(x, y))
        if source is not None:
            assert kernel.stats()["tuning"] == {"3001, 3001": source}
    assert kernel.stats()["compilations"] == 2  # one per config, not per count


def test_a_tuned_kernels_call_that_compiles_a_config_is_no_cache_hit() -> None:
    """A new shape reaches the tuned dispatcher through the fast path; where it needs
    another config's code, that call compiled."""
    kernel = affine_kernel("dispatch_hits")
    record(kernel, arrays(4096), {"f": 256})
    record(kernel, arrays(64), {"f": 16})
    for n, hits in [(4096, 0), (4096, 1), (64, 1), (64, 2), (1000, 3)]:
        x, y = arrays(n)
        kernel(x, y)
        np.testing.assert_allclose(y, x * 2.0 + 0.5, rtol=1e-6)
        assert kernel.stats()["cache_hits"] == hits, n
    assert kernel.stats()["compilations"] == 2


def test_stale_config_warns_and_uses_default_params() -> None:
    kernel = affine_kernel("dispatch_stale")
    x, y = arrays(1000)
    record(kernel, (x, y), {"f": 48})  # 48 is not among the choices any more
    with pytest.warns(RuntimeWarning, match="no longer apply"):
        kernel(x, y)
    np.testing.assert_allclose(y, x * 2.0 + 0.5, rtol=1e-6)
    assert kernel.stats()["tuning"] == {"1000, 1000": "stale tuning ignored (default params)"}
    assert "io * 16 + ii" in str(kernel.lowered(x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not at every call
        kernel(x, y)


def test_static_shapes_are_served_by_the_nearest_tuned_shape() -> None:
    """With static_shapes=True each shape is compiled with its shape baked in, but its
    tuning results are filed under the code with symbolic shapes: a new shape takes the
    nearest tuned shape's params, as without static_shapes (it took the default params,
    with a warning)."""
    kernel = affine_kernel("dispatch_static", static_shapes=True)
    record(kernel, arrays(4096), {"f": 256})
    record(kernel, arrays(40), {"f": 16})
    for n, split, source in [
        (3000, 256, "nearest tuned shape 4096, 4096"),
        (4096, 256, "tuned"),
        (33, 16, "nearest tuned shape 40, 40"),
    ]:
        x, y = arrays(n)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            kernel(x, y)
        np.testing.assert_allclose(y, x * 2.0 + 0.5, rtol=1e-6)
        lowered = str(kernel.lowered(x, y))
        assert f"io * {split} + ii" in lowered and str(n) in lowered  # (its shape baked in)
        assert kernel.stats()["tuning"][f"{n}, {n}"] == source


def test_autotune_option_tunes_a_new_shape_on_first_call() -> None:
    kernel = affine_kernel("dispatch_autotune", autotune=2)
    x, y = arrays(2000)
    assert registry.database().entries("dispatch_autotune") == []
    kernel(x, y)
    np.testing.assert_allclose(y, x * 2.0 + 0.5, rtol=1e-6)
    (entry,) = registry.database().entries("dispatch_autotune")
    assert entry.shape == ((2000,), (2000,))
    assert entry.config["f"] in (16, 64, 256)
    kernel(x, y)
    stats = kernel.stats()
    assert stats["tuning"] == {"2000, 2000": "tuned"}
    # Tuning during the call keeps the call's specialization: no second trace or compile.
    assert stats["compilations"] == 1 and stats["specializations"] == 1
    # No candidate ran a loop on threads: the row serves any count, not tuned again.
    assert entry.threads == 0
    with runtime.num_threads_within(1):
        kernel(x, y)
    assert len(registry.database().entries("dispatch_autotune")) == 1
    assert kernel.stats()["tuning"] == {"2000, 2000": "tuned"}


CORRUPT_CALLER = """
import numpy as np
import kdsl as kd

@kd.kernel
def survives_corrupt_db(x, y):
    i = kd.indices(x.shape[0])
    y[i] = x[i] + 1.0

@survives_corrupt_db.schedule(kd.cpu)
def _(s):  # a tunable param: calls look the database up
    s.split("i", s.param("f", [16, 64]))

x = np.arange(10, dtype=np.float32)
y = np.zeros_like(x)
survives_corrupt_db(x, y)
assert np.array_equal(y, x + 1), y
print("ran")
"""


def test_corrupt_database_is_set_aside_and_kernel_runs(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tuning.sqlite").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    script = tmp_path / "caller.py"
    script.write_text(CORRUPT_CALLER)
    env = {**os.environ, "KDSL_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ran"
    assert "RuntimeWarning" in done.stderr and "unreadable" in done.stderr
    assert len(list(cache.glob("tuning.sqlite.corrupt-*"))) == 1
    assert (cache / "tuning.sqlite").read_bytes().startswith(b"SQLite format 3\x00")


def test_results_never_apply_to_another_schedules_params() -> None:
    """The search space is part of the kernel's identity: the same algorithm under a
    schedule with other params finds no tuning results."""
    tuned = affine_kernel("dispatch_other_schedule")
    record(tuned, arrays(512), {"f": 256})
    other = kd.kernel(affine, name="dispatch_other_schedule")

    @other.schedule(kd.cpu)
    def _(s):
        s.split("i", s.param("g", [32, 128]))

    x, y = arrays(512)
    with pytest.warns(RuntimeWarning, match="s.param choices differ") as caught:
        other(x, y)
    assert caught[0].filename == __file__  # the user's call, not kdsl's dispatch
    np.testing.assert_allclose(y, x * 2.0 + 0.5, rtol=1e-6)
    assert other.stats()["tuning"] == {}  # no dispatcher: nothing was found
    assert "io * 32 + ii" in str(other.lowered(x, y))


def test_results_of_edited_param_choices_warn_once() -> None:
    """Reordered choices change the kernel's identity: its tuning no longer applies,
    and the first lookup of the signature says why (not silently the first choice)."""
    record(affine_kernel("dispatch_edited"), arrays(512), {"f": 256})
    edited = kd.kernel(affine, name="dispatch_edited")

    @edited.schedule(kd.cpu)
    def _(s):
        s.split("i", s.param("f", [64, 16, 256]))

    new = entry_for(edited, arrays(512), {})
    key = (new.kernel_id, new.target, new.signature)
    assert registry.lookup(*key) == []
    with pytest.warns(RuntimeWarning, match=r"\(f=256\) were made for a kernel of this name"):
        registry.warn_if_stale("dispatch_edited", key, "kdsl autotune")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per signature; never for another kernel's
        registry.warn_if_stale("dispatch_edited", key, "kdsl autotune")
        registry.warn_if_stale("dispatch_never_tuned", key[:2] + ("x:f32[1,C]",), "kdsl")


def test_autotune_refuses_params_named_like_its_options() -> None:
    def scaled(x, budget):
        i = kd.indices(x.shape[0])
        x[i] = x[i] * budget

    kernel = kd.kernel(scaled)
    with pytest.raises(kd.KernelArgumentError, match="pass the kernel's arguments by position"):
        kernel.autotune(x=np.ones(4, np.float32), budget=2.0)
