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
from kdsl.config import VERSION, cache_root, user_stacklevel

DB_NAME = "tuning.sqlite"

_local = threading.local()  # a SQLite connection belongs to the thread that opened it
_memo: dict[tuple[str, str, str], list[Entry]] = {}
_stale_checked: set[tuple[str, str, str]] = set()
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
                stacklevel=user_stacklevel(),
            )
    found = found or shipped.lookup(*key)
    _memo[key] = found
    return found


def warn_if_stale(kernel_name: str, key: tuple[str, str, str], command: str) -> None:
    """Warn once per signature and process when the database has results for this kernel
    name, target and signature under another kernel identity, by this kdsl: made before
    the kernel's code or its `s.param` choices changed (both are in the identity), so
    calls no longer use them. For a signature `lookup` found nothing for."""
    kernel_id, target, signature = key
    if _broken or key in _stale_checked:
        return
    _stale_checked.add(key)
    try:
        rows = database().entries(kernel_name)
    except DatabaseError:
        return  # (lookup has warned)
    stale = [
        e
        for e in rows
        if (e.target, e.signature, e.kdsl_version) == (target, signature, VERSION)
        and e.kernel_id != kernel_id
    ]
    if stale:
        tuned = max(stale, key=lambda e: e.created).config
        params = ", ".join(f"{k}={v!r}" for k, v in tuned.items())
        warnings.warn(
            f"kernel '{kernel_name}': the tuning results for arguments {signature} "
            f"({params}) were made for a kernel of this name whose code or s.param choices "
            "differ (an earlier version of it?), so they don't apply and calls use the "
            f"default params. Tune again with `{command}`, or drop them with `kdsl cache "
            f"clear --kernel {kernel_name}`.",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )


def record(entry: Entry) -> None:
    database().record(entry)
    _memo.pop((entry.kernel_id, entry.target, entry.signature), None)


def forget() -> None:
    """Drop the in-memory view (after `kdsl cache clear` or an import)."""
    global _broken
    _memo.clear()
    _stale_checked.clear()
    db: TuningDB | None = getattr(_local, "db", None)
    if db is not None:
        db.close()
        _local.db = None
    _broken = False
