"""Tuning results that ship with kdsl (DESIGN §4): files in `kdsl cache export`'s JSON
format under `kdsl/autotune/tuned/`, one per machine the library was tuned on.

A kernel signature with no row in the user's tuning database takes the shipped rows of
its key instead: the key holds the kernel's content hash and the CPU's model and
features, so a row never serves a changed kernel or another machine, and the user's own
tuning always wins. `benchmarks/ship_tuning.py` writes the files; a shipped file that
can't be read gives one warning and is left out, never an error at call time.
"""

from __future__ import annotations

import functools
import warnings
from collections import defaultdict
from pathlib import Path

from kdsl.autotune.database import DatabaseError, Entry, read_export
from kdsl.config import user_stacklevel

SHIPPED_DIR = Path(__file__).resolve().parent / "tuned"
SOURCE = "shipped"

Key = tuple[str, str, str]  # kernel identity, target, signature


def lookup(kernel_id: str, target: str, signature: str) -> list[Entry]:
    """The shipped rows of one kernel signature on one target (none, mostly)."""
    return _by_key().get((kernel_id, target, signature), [])


def entries(target: str) -> list[Entry]:
    """Every shipped row for one target (e.g. this CPU's `keys.target_key()`)."""
    return [e for rows in _by_key().values() for e in rows if e.target == target]


@functools.cache
def _by_key() -> dict[Key, list[Entry]]:
    rows: defaultdict[Key, list[Entry]] = defaultdict(list)
    for path in sorted(SHIPPED_DIR.glob("*.json")):
        try:
            found = read_export(str(path), source=SOURCE)
        except DatabaseError as exc:
            warnings.warn(
                f"kdsl: left out a shipped tuning file: {exc}",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            continue
        for entry in found:
            rows[(entry.kernel_id, entry.target, entry.signature)].append(entry)
    return dict(rows)


def forget() -> None:
    """Read the files again on next use (tests that point SHIPPED_DIR elsewhere)."""
    _by_key.cache_clear()
