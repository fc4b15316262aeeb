"""What the quickstart notebook says `matmul.lowered(...)` shows is what it shows: the
loop comments' second part, what the schedule made of each loop."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

QUICKSTART = Path(__file__).resolve().parents[1] / "notebooks" / "01-quickstart.ipynb"


def test_the_schedule_words_quoted_before_lowered_are_in_its_loop_comments():
    cells = nbformat.read(QUICKSTART, as_version=4).cells
    at = next(n for n, c in enumerate(cells) if c.source.strip() == "matmul.lowered(a, b, c)")
    prose = cells[at - 1].source
    assert cells[at - 1].cell_type == "markdown"
    made = re.search(r"what the schedule made of\s+it \((.*)\)\.", prose, re.S)
    assert made is not None, prose
    quoted = re.findall(r"`([^`]+)`", made.group(1))
    assert quoted

    scope: dict[str, object] = {}
    for cell in cells[:at]:
        if cell.cell_type == "code":
            exec(compile(cell.source, f"{QUICKSTART.name}:{cell.id}", "exec"), scope)
    lowered = str(eval(cells[at].source, scope))
    done = {
        word
        for comment in re.findall(r"#\s*(.+)", lowered)
        for word in comment.split(", ")[1:]  # (the first is the loop's kind)
    }
    assert set(quoted) <= done, f"{quoted} quoted; the schedule's comments say {sorted(done)}"
