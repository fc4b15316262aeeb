"""Test configuration: hypothesis profiles and the golden-file update flag."""

import os
import shutil
import tempfile

# Compiled objects and tuning results go to a fresh directory, never the user's cache
# (set before kdsl is imported: its configuration is read once).
_OWN_CACHE = "KDSL_CACHE_DIR" not in os.environ  # false in xdist workers: they share it
if _OWN_CACHE:
    os.environ["KDSL_CACHE_DIR"] = tempfile.mkdtemp(prefix="kdsl-test-cache-")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

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
