"""The process's view of the tuning database: opened on first use, lookups kept in memory.

Calls look results up once per kernel signature; later calls of the same signature
never touch SQLite. A cache directory that can't be used gives one warning and an empty
view (kernels then run their untuned schedules), never an error at call time.
"""

from __future__ import annotations

import threading
import warnings

from kdsl.autotune import shipped
from kdsl.autotune.database import DatabaseError, Entry, TuningDB
from kdsl.config import cache_root

DB_NAME = "tuning.sqlite"

_local = threading.local()  # a SQLite connection belongs to the thread that opened it
_memo: dict[tuple[str, str, str], list[Entry]] = {}
_broken = False


def database() -> TuningDB:
    """This thread's handle on the tuning database in the cache directory
    (KDSL_CACHE_DIR overrides)."""
    db: TuningDB | None = getattr(_local, "db", None)
    if db is None:
        db = _local.db = TuningDB(cache_root() / DB_NAME)
    return db


def lookup(kernel_id: str, target: str, signature: str) -> list[Entry]:
    """Every tuned shape of this kernel signature (memoized for the process): the
    database's, or where it has none, those shipped with kdsl (`shipped.py`)."""
    global _broken
    key = (kernel_id, target, signature)
    found = _memo.get(key)
    if found is not None:
        return found
    found = []
    if not _broken:
        try:
            found = database().lookup(*key)
        except DatabaseError as exc:
            _broken = True
            warnings.warn(
                f"kdsl can't read tuning results ({exc}); kernels use untuned schedules",
                RuntimeWarning,
                stacklevel=2,
            )
    found = found or shipped.lookup(*key)
    _memo[key] = found
    return found


def record(entry: Entry) -> None:
    database().record(entry)
    _memo.pop((entry.kernel_id, entry.target, entry.signature), None)


def forget() -> None:
    """Drop the in-memory view (after `kdsl cache clear` or an import)."""
    global _broken
    _memo.clear()
    db: TuningDB | None = getattr(_local, "db", None)
    if db is not None:
        db.close()
        _local.db = None
    _broken = False
