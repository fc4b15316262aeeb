"""The tuning database: the best config found per kernel, target, signature, shape and thread
count, on disk.

One SQLite file (schema version in `PRAGMA user_version`, WAL journal) with one table:

    tuning(kernel_id, kernel_name, target, signature,
           shape   TEXT     -- JSON, e.g. [[2, 64], [2, 64]]
           threads INTEGER  -- the CPU threads it was tuned on; 0: none recorded (a GPU's
                            -- row, a schedule without parallel loops, one from before
                            -- schema 2), which serves any count
           config  TEXT     -- JSON object of the chosen schedule params
           time_s, default_time_s, kdsl_version, created, source,
           PRIMARY KEY (kernel_id, target, signature, shape, threads))

The thread count is part of the key because a schedule tuned on all cores (which loop goes
to the threads, how big their blocks are) is not the best one for a single thread.
A schema-1 file (no thread count) is migrated in place, its rows with threads 0; an older
kdsl sets a schema-2 file aside (its rows are lost to it), and one that had the file open
before the migration still writes rows, with threads 0 (the column's default).
It is a cache: a corrupt or foreign file is set aside with a warning and rebuilt, never fatal;
a row this module did not write (a config that is not a JSON object, say) is skipped, with
one warning per file and process.
Configs go through JSON, so a tuple in a config comes back as a list (`s.param` matches it to
its tuple choice by the JSON text); ints, floats, strings and bools come back equal.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
import sqlite3
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

from kdsl.config import user_stacklevel
from kdsl.errors import KdslError

SCHEMA_VERSION = 2
EXPORT_FORMAT = 2  # 2 gives each row's thread count; 1 (read too) had none
# Long enough that concurrent tuners queue up instead of losing a result.
BUSY_TIMEOUT_S = 10.0

Shape = tuple[tuple[int, ...], ...]
T = TypeVar("T")

_COLUMNS = (
    "kernel_id",
    "kernel_name",
    "target",
    "signature",
    "shape",
    "threads",
    "config",
    "time_s",
    "default_time_s",
    "kdsl_version",
    "created",
    "source",
)
_CREATE = """
CREATE TABLE IF NOT EXISTS tuning (
    kernel_id TEXT NOT NULL,
    kernel_name TEXT NOT NULL,
    target TEXT NOT NULL,
    signature TEXT NOT NULL,
    shape TEXT NOT NULL,
    threads INTEGER NOT NULL DEFAULT 0,
    config TEXT NOT NULL,
    time_s REAL NOT NULL,
    default_time_s REAL,
    kdsl_version TEXT NOT NULL,
    created REAL NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (kernel_id, target, signature, shape, threads)
)
"""
_KEY_COLUMNS = ("kernel_id", "target", "signature", "shape", "threads")
_KEY = ", ".join(_KEY_COLUMNS)
# A row with a thread count replaces the row of its shape that has none (from before
# counts were kept): else that row, as near as any count, would outlive every re-tune.
_UNRECORDED = (
    "DELETE FROM tuning WHERE kernel_id = ? AND target = ? AND signature = ? AND shape = ? "
    "AND threads = 0 AND ? > 0"
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM tuning"
_INSERT = (
    f"INSERT OR REPLACE INTO tuning ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_COLUMNS))})"
)
# An import replaces the row with its key too, but a row that is the same but for its
# source (an export imported back, say) keeps the source it had ("autotune").
_KEPT = ("kernel_name", "config", "time_s", "default_time_s", "kdsl_version", "created")
_MERGE = (
    f"{_INSERT.replace('INSERT OR REPLACE', 'INSERT')} "
    f"ON CONFLICT ({_KEY}) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _KEPT)
    + f", source = CASE WHEN ({', '.join(_KEPT)}) IS "
    f"({', '.join(f'excluded.{c}' for c in _KEPT)}) THEN source ELSE excluded.source END"
)
_WRITABLE_FIX = "set KDSL_CACHE_DIR to a writable directory"


class SavedConfig(dict[str, object]):
    """A config as the tuning database (or an export file) holds it. The autotuner saves
    whole configs, so it gives a value for every param of its kernel's search space;
    kdsl.kernel refuses one that does not (an edited or cut file) instead of letting the
    missing params take their first choices unsaid."""


class DatabaseError(KdslError):
    """The tuning database can't be written, or a tuning export file is not valid."""


@dataclass(frozen=True)
class Entry:
    """One tuning result: the best config of one kernel on one target for one shape and
    thread count."""

    kernel_id: str  # content hash of the kernel (hex)
    kernel_name: str  # for display
    target: str  # e.g. "cpu/znver4/1a2b3c4d"
    signature: str  # dtypes/ranks of the arguments, e.g. "a:f32[2,C] b:f32[2,C]"
    shape: Shape  # the array arguments' shapes, in parameter order
    config: dict[str, object]  # the schedule params chosen (JSON values)
    time_s: float  # median time of the best config
    default_time_s: float | None  # median time of the default config
    kdsl_version: str
    created: float  # unix time
    source: str = "autotune"  # "autotune" or "import"
    threads: int = 0  # the CPU threads it was tuned on; 0: not recorded, serves any count


class TuningDB:
    """The tuning database in one SQLite file, opened (and created) on first use.

    The connection is made lazily and belongs to the thread that first uses the object; other
    threads and processes should open their own TuningDB on the same path. Each write is one
    short transaction, so concurrent writers wait for each other instead of losing rows.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._db: sqlite3.Connection | None = None

    def record(self, entry: Entry) -> None:
        """Store `entry`, replacing any row with its key: a re-tune is the newer truth."""
        row = _to_row(entry)
        self._run(lambda db: _write(db, [row]))

    def lookup(self, kernel_id: str, target: str, signature: str) -> list[Entry]:
        """Every tuned shape of one kernel on one target for one argument signature."""
        sql = f"{_SELECT} WHERE kernel_id = ? AND target = ? AND signature = ?"
        rows = self._run(lambda db: db.execute(sql, (kernel_id, target, signature)).fetchall())
        return _sorted(self._entries_of(rows))

    def entries(self, kernel_name: str | None = None) -> list[Entry]:
        """All rows, or those of one kernel name, ordered by kernel name then shape."""
        if kernel_name is None:
            rows = self._run(lambda db: db.execute(_SELECT).fetchall())
        else:
            sql = f"{_SELECT} WHERE kernel_name = ?"
            rows = self._run(lambda db: db.execute(sql, (kernel_name,)).fetchall())
        return _sorted(self._entries_of(rows))

    def clear(self, kernel_name: str | None = None) -> int:
        """Delete all rows, or those of one kernel name; returns how many went."""
        if kernel_name is None:
            return self._run(lambda db: _delete(db, "DELETE FROM tuning", ()))
        return self._run(
            lambda db: _delete(db, "DELETE FROM tuning WHERE kernel_name = ?", (kernel_name,))
        )

    def export(self, path: str | os.PathLike[str]) -> int:
        """Write every row to a readable JSON file; returns how many."""
        entries = self.entries()
        doc = {
            "kdsl_tuning_export": EXPORT_FORMAT,
            "entries": [_to_json(e) for e in entries],
        }
        dest = os.fspath(path)
        if dest == "-":
            json.dump(doc, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return len(entries)
        # through a link to its file (replacing the link would leave its file as it was);
        # a device or a pipe can't be replaced by a file either
        dest = os.path.realpath(dest)
        if os.path.exists(dest) and not os.path.isfile(dest):
            raise DatabaseError(
                f"can't write the tuning export '{os.fspath(path)}': not a regular file",
                fix="export to a file path, or to - for the standard output",
            )
        tmp = f"{dest}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
            os.replace(tmp, dest)  # a reader never sees half a file
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise DatabaseError(
                f"can't write the tuning export '{dest}': {exc.strerror or exc}",
                fix="export to a path in a writable directory",
            ) from exc
        return len(entries)

    def import_(self, path: str | os.PathLike[str]) -> int:
        """Merge a file written by `export` (its rows replace rows with the same key).

        The whole file is checked first: a bad file raises DatabaseError and imports nothing.
        Imported rows get source "import", but a row already here as it is in the file
        keeps its source; returns how many rows the file had.
        """
        entries = read_export(os.fspath(path))
        rows = [_to_row(e) for e in entries]
        self._run(lambda db: _write(db, rows, _MERGE))
        return len(rows)

    def _entries_of(self, rows: Iterable[Sequence[object]]) -> list[Entry]:
        """The rows as entries, skipping (with one warning per database file and process)
        any that isn't what this module writes: a config that is not a JSON object, a
        shape that is not a list of lists of ints, a value of the wrong type."""
        entries = []
        for row in rows:
            try:
                entries.append(_from_row(row))
            except _BadRow as exc:
                if self.path not in _warned_bad_rows:
                    _warned_bad_rows.add(self.path)
                    warnings.warn(
                        f"kdsl: the tuning database '{self.path}' has a bad row ({exc}); "
                        "skipping it (and any others), so those kernels use untuned "
                        "schedules. Tune them again (`kdsl autotune`), or clear the "
                        "database (`kdsl cache clear`).",
                        RuntimeWarning,
                        stacklevel=user_stacklevel(),
                    )
        return entries

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        # A corrupt file shows up on opening or on the first query that touches a bad page;
        # either way set it aside once and run `op` on a fresh database.
        for attempt in range(2):
            try:
                return op(self._connection())
            except sqlite3.Error as exc:
                if attempt == 1 or not _is_corruption(exc):
                    raise self._error(exc) from exc
                self._set_aside(exc)
        raise AssertionError("unreachable")

    def _connection(self) -> sqlite3.Connection:
        if self._db is not None and not os.path.exists(self.path):
            # deleted under this process (`rm -rf ~/.cache/kdsl`): what the open connection
            # wrote would go to the unlinked file and be lost without a word
            self.close()
        if self._db is None:
            self._db = self._open()
        return self._db

    def _open(self) -> sqlite3.Connection:
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(
                f"can't create the directory of the tuning database '{self.path}': "
                f"{exc.strerror or exc}",
                fix=_WRITABLE_FIX,
            ) from exc
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            _use_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses only the tail
            _ensure_schema(db)
        except sqlite3.OperationalError as exc:
            db.close()
            # a cache made read-only on purpose (a team's, or baked into an image): its
            # results are read; a write (tuning) says the directory is not writable
            if "readonly" not in str(exc) or not os.path.isfile(self.path):
                raise
            return self._open_read_only()
        except BaseException:
            db.close()
            raise
        return db

    def _open_read_only(self) -> sqlite3.Connection:
        """The file opened for reading only. A WAL file needs its shared-memory file, which
        a read-only directory can't hold; there the file is opened as immutable (nobody
        can write it either)."""
        url = f"file:{urllib.request.pathname2url(os.path.abspath(self.path))}?mode=ro"
        try:
            db, version = _connect_read_only(url)
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc):
                raise
            db, version = _connect_read_only(url + "&immutable=1")
        if version != SCHEMA_VERSION:
            db.close()
            raise DatabaseError(
                f"the tuning database '{self.path}' is read-only and has schema version "
                f"{version}; this kdsl reads {SCHEMA_VERSION}",
                fix="run one kdsl command with write access to it (it is updated in place), "
                f"or {_WRITABLE_FIX}",
            )
        return db

    def _set_aside(self, exc: sqlite3.Error) -> None:
        self.close()
        aside = f"{self.path}.corrupt-{int(time.time())}"
        n = 1
        while os.path.exists(aside):  # a second corruption within the same second
            aside, n = f"{self.path}.corrupt-{int(time.time())}-{n}", n + 1
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
        except FileNotFoundError:
            pass  # another process set it aside first
        except OSError as err:
            raise DatabaseError(
                f"the tuning database '{self.path}' is unreadable ({exc}) and can't be moved "
                f"aside: {err.strerror or err}",
                fix=f"delete it, or {_WRITABLE_FIX}",
            ) from err
        warnings.warn(
            f"kdsl: the tuning database '{self.path}' was unreadable ({exc}); moved it to "
            f"'{aside}' and started a new one. Tuning results will be rebuilt as kernels are "
            "tuned again.",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )

    def _error(self, exc: sqlite3.Error) -> DatabaseError:
        message = str(exc)
        if "locked" in message or "busy" in message:
            fix = f"another process held it for over {BUSY_TIMEOUT_S:g} s; retry"
        else:
            fix = _WRITABLE_FIX
        return DatabaseError(f"tuning database '{self.path}': {message}", fix=fix)


def tuned_for(entry: Entry, shape: Shape, threads: int) -> bool:
    """Whether `entry` was tuned on this shape and thread count (or kept no count)."""
    return entry.shape == shape and entry.threads in (0, threads)


def nearest(entries: Sequence[Entry], shape: Shape, threads: int = 0) -> Entry | None:
    """The entry nearest to `shape` on `threads` CPU threads, or None if no entry has the
    same ranks.

    An entry of the same shape and thread count wins; otherwise the smallest distance: the
    sum over all dims of |log2(a+1) - log2(b+1)|, so 64 is as near to 128 as 1024 is to
    2048, plus |log2(t) - log2(u)| for the thread counts, so that tuning on twice the
    threads is as far as twice one dim. A row that did not record its thread count (0) is
    as near as one of the same count, but one that did wins a tie; so does the first entry.
    """
    ranks = [len(s) for s in shape]
    best: Entry | None = None
    best_distance = (math.inf, True)
    for entry in entries:
        if [len(s) for s in entry.shape] != ranks:
            continue
        unrecorded = not (entry.threads and threads)
        distance = sum(
            abs(math.log2(a + 1) - math.log2(b + 1))
            for mine, theirs in zip(shape, entry.shape)
            for a, b in zip(mine, theirs)
        )
        if not unrecorded:
            distance += abs(math.log2(entry.threads) - math.log2(threads))
        if (distance, unrecorded) < best_distance:
            best, best_distance = entry, (distance, unrecorded)
    return best


def _is_corruption(exc: sqlite3.Error) -> bool:
    # SQLITE_CORRUPT and SQLITE_NOTADB surface as the base DatabaseError; busy, read-only and
    # can't-open come as subclasses (OperationalError, ...) and are not the file's fault.
    return type(exc) is sqlite3.DatabaseError


def _use_wal(db: sqlite3.Connection) -> None:
    # Switching a fresh file to WAL needs an exclusive lock, and SQLite answers "locked" at
    # once, without the busy timeout, while another process switches it: so wait here.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _ensure_schema(db: sqlite3.Connection) -> None:
    # IMMEDIATE: two processes creating the same fresh file take turns.
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            db.execute(_CREATE)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version == 1:
            _migrate_from_1(db)
        elif version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version}, this kdsl reads {SCHEMA_VERSION}"
            )
        _check_columns(db)
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _connect_read_only(url: str) -> tuple[sqlite3.Connection, int]:
    """A read-only connection to a database URL, and its schema version (its columns
    checked where it is this kdsl's)."""
    db = sqlite3.connect(url, uri=True, isolation_level=None)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            _check_columns(db)
    except BaseException:
        db.close()
        raise
    return db, version


def _migrate_from_1(db: sqlite3.Connection) -> None:
    """Schema 1 had no thread count (part of the key now): its rows get threads 0, which
    serves any count, so nobody's tuning is lost. Within _ensure_schema's transaction."""
    old = tuple(c for c in _COLUMNS if c != "threads")
    _check_columns(db, old)
    db.execute("ALTER TABLE tuning RENAME TO tuning_schema_1")
    db.execute(_CREATE)
    db.execute(
        f"INSERT INTO tuning ({', '.join(old)}, threads) "
        f"SELECT {', '.join(old)}, 0 FROM tuning_schema_1"
    )
    db.execute("DROP TABLE tuning_schema_1")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _check_columns(db: sqlite3.Connection, expected: tuple[str, ...] = _COLUMNS) -> None:
    """A `tuning` table of other columns (another program's, or an older kdsl's that did
    not set the schema version) is a foreign file: the base DatabaseError, so that it is
    set aside like a corrupt one."""
    columns = tuple(row[1] for row in db.execute("PRAGMA table_info(tuning)"))
    if columns != expected:
        raise sqlite3.DatabaseError(
            f"its tuning table has the columns ({', '.join(columns)}), this kdsl writes "
            f"({', '.join(expected)})"
        )


def _write(db: sqlite3.Connection, rows: list[tuple[object, ...]], sql: str = _INSERT) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(
            _UNRECORDED, [[row[_COLUMNS.index(c)] for c in _KEY_COLUMNS] for row in rows]
        )
        db.executemany(sql, rows)
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _delete(db: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> int:
    db.execute("BEGIN IMMEDIATE")
    try:
        count = db.execute(sql, params).rowcount
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise
    return count


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the original error is the one to report


def _sorted(entries: Iterable[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (e.kernel_name, e.shape, e.threads, e.target, e.signature))


def _shape_json(shape: Shape) -> str:
    # Compact and canonical: this text is part of the primary key.
    return json.dumps([[operator.index(d) for d in dims] for dims in shape], separators=(",", ":"))


def _to_row(entry: Entry) -> tuple[object, ...]:
    try:
        config = json.dumps(entry.config)
    except (TypeError, ValueError) as exc:
        raise DatabaseError(
            f"the config of kernel '{entry.kernel_name}' is not JSON-able: {exc}",
            fix="tuning configs may hold only ints, floats, strings, bools and lists",
        ) from exc
    return (
        entry.kernel_id,
        entry.kernel_name,
        entry.target,
        entry.signature,
        _shape_json(entry.shape),
        entry.threads,
        config,
        entry.time_s,
        entry.default_time_s,
        entry.kdsl_version,
        entry.created,
        entry.source,
    )


class _BadRow(Exception):
    """A row of the tuning table that this module did not write (edited, or damaged)."""


_warned_bad_rows: set[str] = set()  # database paths whose bad rows were reported


def _from_row(row: Sequence[object]) -> Entry:
    """The entry of one row; _BadRow if the row is not one this module writes."""
    fields = dict(zip(_COLUMNS, row))
    name = fields.get("kernel_name")
    try:
        shape = json.loads(str(fields["shape"]))
        config = json.loads(str(fields["config"]))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _BadRow(f"kernel {name!r}: a shape or config that is not JSON ({exc})") from exc
    fields["shape"], fields["config"] = shape, config
    for column, (check, description) in _FIELD_CHECKS.items():
        if not check(fields[column]):
            raise _BadRow(f"kernel {name!r}: {column} {fields[column]!r} is not {description}")
    if not isinstance(fields["source"], str):
        raise _BadRow(f"kernel {name!r}: source {fields['source']!r} is not a string")
    fields["shape"] = tuple(tuple(dims) for dims in shape)
    fields["config"] = SavedConfig(config)
    return Entry(**fields)  # type: ignore[arg-type]


def _to_json(entry: Entry) -> dict[str, object]:
    doc = asdict(entry)
    doc["shape"] = [list(dims) for dims in entry.shape]
    return doc


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_shape(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(dims, list) and all(_is_count(d) for d in dims) for dims in value
    )


def _is_config(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _is_time(value: object) -> bool:
    """A measured time: a positive number of seconds (finite, a float's range)."""
    try:
        return _is_number(value) and 0 < float(value) < math.inf  # type: ignore[arg-type]
    except OverflowError:  # an int past a float's range
        return False


def _is_date(value: object) -> bool:
    """Seconds since 1970 that a calendar can show: from then to the year 9999."""
    return _is_number(value) and 0 <= value < _YEAR_10000  # type: ignore[operator]


_YEAR_10000 = 253402300800
_THREADS_MAX = 1 << 31  # (SQLite keeps 64-bit integers; no machine runs more threads)


# What each exported field must be, and how to say so.
_FIELD_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "kernel_id": (lambda v: isinstance(v, str), "a string"),
    "kernel_name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "target": (lambda v: isinstance(v, str), "a string"),
    "signature": (lambda v: isinstance(v, str), "a string"),
    "shape": (_is_shape, "a list of lists of non-negative ints"),
    "threads": (lambda v: _is_count(v) and v < _THREADS_MAX, "a non-negative int (a count)"),  # type: ignore[operator]
    "config": (_is_config, "an object with string keys"),
    "time_s": (_is_time, "a positive number of seconds"),
    "default_time_s": (lambda v: v is None or _is_time(v), "a positive number or null"),
    "kdsl_version": (lambda v: isinstance(v, str), "a string"),
    "created": (_is_date, "a date in seconds since 1970"),
}


def read_export(path: str, source: str = "import") -> list[Entry]:
    """The entries of a file written by `export` (each with `source`); DatabaseError if any
    part of it is not valid."""

    def bad(what: str) -> DatabaseError:
        return DatabaseError(
            f"the tuning export '{path}' is not valid: {what}; nothing was imported",
            fix="import a file written by a kdsl tuning export, unedited",
        )

    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise DatabaseError(
            f"can't read the tuning export '{path}': {exc.strerror or exc}",
            fix="check the path",
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad(f"not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("kdsl_tuning_export") not in (1, EXPORT_FORMAT):
        raise bad(f'no "kdsl_tuning_export": {EXPORT_FORMAT} (or 1) marker')
    unrecorded = doc["kdsl_tuning_export"] == 1
    items = doc.get("entries")
    if not isinstance(items, list):
        raise bad('"entries" must be a list')
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad(f"entries[{i}] must be an object")
        if unrecorded:
            item = {**item, "threads": 0}
        for name, (check, description) in _FIELD_CHECKS.items():
            if name not in item:
                raise bad(f'entries[{i}] has no "{name}"')
            if not check(item[name]):
                raise bad(f"entries[{i}].{name} must be {description}, not {item[name]!r}")
        fields = {name: item[name] for name in _FIELD_CHECKS}
        fields["shape"] = tuple(tuple(dims) for dims in item["shape"])
        fields["config"] = SavedConfig(item["config"])
        fields["time_s"] = float(item["time_s"])
        entries.append(Entry(**fields, source=source))
    return entries
