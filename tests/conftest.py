"""Test configuration: hypothesis profiles, the golden-file update flag and the bounded
sample of the sweeps marked slow."""

import os
import shutil
import tempfile
from collections import defaultdict

# Compiled objects and tuning results go to a fresh directory, never the user's cache
# (set before kdsl is imported: its configuration is read once). An empty KDSL_CACHE_DIR
# is unset to kdsl (the user's cache), so here too: with it, the notebooks' caches were
# made relative to the notebooks' folder, inside the repository.
_OWN_CACHE = not os.environ.get("KDSL_CACHE_DIR")  # false in xdist workers: they share it
if _OWN_CACHE:
    os.environ["KDSL_CACHE_DIR"] = tempfile.mkdtemp(prefix="kdsl-test-cache-")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.helpers import ALL_SLOW  # noqa: E402

# CI: derandomized and bounded; `HYPOTHESIS_PROFILE=deep` for long local runs.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("deep", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/*.txt from the current output",
    )
    parser.addoption(
        "--all-slow",
        action="store_true",
        help="run every case and example of the sweeps marked slow (by default a bounded "
        "sample of each; the same as KDSL_ALL_SLOW=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--all-slow"):
        os.environ[ALL_SLOW] = "1"  # (before the test modules are imported: see helpers.sweep)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked `slow(sample=N)` is a sweep over many cases: N of them run, spread
    evenly over its list with the first and last included (the same ones in every run and
    xdist worker), unless --all-slow or KDSL_ALL_SLOW=1 asks for all of them."""
    if os.environ.get(ALL_SLOW):
        return
    sweeps: defaultdict[tuple[object, str], list[pytest.Item]] = defaultdict(list)
    for item in items:
        marker = item.get_closest_marker("slow")
        if marker is not None and "sample" in marker.kwargs:
            sweeps[item.path, getattr(item, "originalname", item.name)].append(item)
    dropped = []
    for cases in sweeps.values():
        sample = cases[0].get_closest_marker("slow").kwargs["sample"]
        if len(cases) > sample:
            step = (len(cases) - 1) / max(sample - 1, 1)
            kept = {round(i * step) for i in range(sample)}
            dropped += [case for i, case in enumerate(cases) if i not in kept]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = set(map(id, dropped))
        items[:] = [item for item in items if id(item) not in gone]


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE:
        shutil.rmtree(os.environ["KDSL_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh KDSL_CACHE_DIR for this process (the configuration is read once at import,
    so the test swaps it) with the tuning database reopened there."""
    import dataclasses

    import kdsl.config
    from kdsl.autotune import registry

    root = tmp_path / "cache"
    config = dataclasses.replace(kdsl.config.CONFIG, cache_dir=str(root))
    monkeypatch.setattr(kdsl.config, "CONFIG", config)
    registry.forget()
    yield root
    registry.forget()
