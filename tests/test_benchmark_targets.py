"""benchmarks/targets.py: the targets of a directory's result pages, gathered at the end
of its RESULTS.md (the issues ask one page to hold every target's number)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN = """# kdsl vs NumPy

Date: 2026-12-08 03:00 UTC
Machine: test

| benchmark | size |
|---|---|

* a note without a verdict
* target: softmax 4096×1024 1.83× PyTorch (≥ 2.0×: NOT met)
* target: rmsnorm 4096×1024 4.82× PyTorch (≥ 2.0×: met)
"""
ATTENTION = """# attention

Date: 2026-12-07 09:42 UTC

* attention non-causal: 51% of FMA peak (target ≥ 85%: NOT met), 3.28× NumPy (target ≥ 3.0×: met)
* decode: 93% of a plain read; target ≥ 80%: met
* FMA peak 194 GFLOP/s (no target here)
"""
MATMUL = """# matmul

Date: 2026-12-07 20:41 UTC

* target: f32 1024³ vs NumPy ≥ 1.00×: 0.99× (NOT met; stretch 1.15× not met)
"""


def run_targets(directory: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "targets.py"), str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_pages_targets_are_gathered_into_results_md(tmp_path):
    (tmp_path / "RESULTS.md").write_text(MAIN)
    (tmp_path / "RESULTS-attention.md").write_text(ATTENTION)
    (tmp_path / "RESULTS-matmul.md").write_text(MATMUL)
    (tmp_path / "RESULTS-gpu.md").write_text("* target: GPU (≥ 1×: NOT met)\n")  # issue 7's
    out = run_targets(tmp_path)
    # verdicts: two on the main page, three on attention's (one line holds two), one on
    # matmul's (its stretch goal is no target)
    assert "6 target verdicts: 3 met, 3 NOT met" in out
    page = (tmp_path / "RESULTS.md").read_text()
    assert page.startswith(MAIN)
    section = page[len(MAIN) :]
    assert "### RESULTS-attention.md (2026-12-07 09:42 UTC)" in section
    assert "### RESULTS-matmul.md (2026-12-07 20:41 UTC)" in section
    assert "* decode: 93% of a plain read; target ≥ 80%: met" in section
    assert "no target here" not in section and "a note without" not in section
    assert "GPU" not in section
    # a second run replaces the section rather than adding another
    (tmp_path / "RESULTS-matmul.md").write_text(MATMUL.replace("0.99× (NOT met", "1.01× (met"))
    assert "6 target verdicts: 4 met, 2 NOT met" in run_targets(tmp_path)
    again = (tmp_path / "RESULTS.md").read_text()
    assert again.count("## Every target") == 1 and again.startswith(MAIN)
