"""Every target of a directory's result pages, collected at the end of its RESULTS.md.

The issues' targets are checked on the page of the benchmark that measures them
(RESULTS-matmul.md, RESULTS-attention.md, …); this gathers their verdicts, with each
page's date and machine, into one section of RESULTS.md, so that one page holds every
target's number. benchmarks/run.py writes the section with its page; after rerunning
another page, refresh it:

    python benchmarks/targets.py [DIR]     # DIR: benchmarks (default), benchmarks/zen3, …
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

HEADING = "## Every target of this directory's pages"
# a verdict: "NOT met", or "met" that no "not"/"NOT" precedes (a stretch goal's "not met")
_NOT_MET = re.compile(r"\bNOT met\b")
_MET = re.compile(r"(?<!NOT )(?<!not )\bmet\b")


def target_lines(page: str) -> list[str]:
    """The page's notes that give a target's verdict."""
    return [
        line
        for line in page.splitlines()
        if line.startswith("* ")
        and "target" in line
        and (_MET.search(line) or _NOT_MET.search(line))
    ]


def _header(page: str, field: str) -> str:
    found = re.search(rf"^{field}: (.*?)\s*$", page, re.MULTILINE)
    return found.group(1) if found else "unknown"


def section(directory: Path, main_page: str) -> str:
    """The section for `directory`, RESULTS.md's own targets read from `main_page` (the
    page being written, which may not be on disk yet)."""
    pages = {"RESULTS.md": main_page}
    for path in sorted(directory.glob("RESULTS-*.md")):
        if path.name != "RESULTS-gpu.md":  # (the GPU's targets: issue 7's page of its own)
            pages[path.name] = path.read_text()
    met = missed = 0
    body: list[str] = []
    for name, text in pages.items():
        lines = target_lines(text)
        if not lines:
            continue
        met += sum(len(_MET.findall(line)) for line in lines)
        missed += sum(len(_NOT_MET.findall(line)) for line in lines)
        body += ["", f"### {name} ({_header(text, 'Date')})", "", *lines]
    return "\n".join(
        [
            HEADING,
            "",
            "Collected by `python benchmarks/targets.py` from the pages beside this one, each "
            "measured on its date on this page's machine. "
            f"{met + missed} target verdicts: {met} met, {missed} NOT met.",
            *body,
        ]
    )


def with_section(page: str, directory: Path) -> str:
    """`page` (a RESULTS.md) with the section replaced or appended."""
    own = page.split(f"\n{HEADING}\n", 1)[0].rstrip("\n") + "\n"
    return f"{own}\n{section(directory, own)}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent
    parser.add_argument("directory", nargs="?", type=Path, default=default)
    directory = parser.parse_args().directory
    path = directory / "RESULTS.md"
    page = with_section(path.read_text(), directory)
    path.write_text(page)
    print(page.split(f"\n{HEADING}\n", 1)[1].strip().splitlines()[0])


if __name__ == "__main__":
    main()
