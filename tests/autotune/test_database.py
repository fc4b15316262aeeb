"""The tuning database: round trips, nearest shape, export/import, corruption, concurrency."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import pathlib
import sqlite3
import stat
import warnings

import pytest

from kdsl.autotune.database import DatabaseError, Entry, TuningDB, nearest
from kdsl.errors import KdslError


def make_entry(
    i: int = 0,
    *,
    kernel_id: str = "abc123",
    kernel_name: str = "add",
    target: str = "cpu/znver4/1a2b3c4d",
    signature: str = "a:f32[2,C] b:f32[2,C]",
    shape: tuple[tuple[int, ...], ...] | None = None,
    time_s: float = 1e-3,
    threads: int = 0,
) -> Entry:
    return Entry(
        kernel_id=kernel_id,
        kernel_name=kernel_name,
        target=target,
        signature=signature,
        shape=shape if shape is not None else ((2, 64 + i), (2, 64 + i)),
        config={"tile": 32, "vector": 8, "unroll": True, "order": "ij", "ratio": 0.5},
        time_s=time_s,
        default_time_s=2e-3,
        kdsl_version="0.1.0",
        created=1700000000.0 + i,
        threads=threads,
    )


def test_record_lookup_round_trip(tmp_path: pathlib.Path) -> None:
    db = TuningDB(tmp_path / "sub" / "tuning.db")  # parent dirs made on first use
    entry = make_entry()
    db.record(entry)
    assert db.lookup(entry.kernel_id, entry.target, entry.signature) == [entry]
    db.close()
    assert TuningDB(tmp_path / "sub" / "tuning.db").entries() == [entry]


def test_record_replaces_same_key(tmp_path: pathlib.Path) -> None:
    db = TuningDB(tmp_path / "tuning.db")
    db.record(make_entry(time_s=1.0))
    db.record(make_entry(time_s=2.0))  # a re-tune is the newer truth, even if slower
    (only,) = db.entries()
    assert only.time_s == 2.0


def test_lookup_isolates_by_key(tmp_path: pathlib.Path) -> None:
    db = TuningDB(tmp_path / "tuning.db")
    base = make_entry()
    others = [
        make_entry(kernel_id="other"),
        make_entry(target="cpu/skylake/00000000"),
        make_entry(signature="a:f64[2,C] b:f64[2,C]"),
    ]
    for e in [base, make_entry(1), *others]:
        db.record(e)
    assert db.lookup(base.kernel_id, base.target, base.signature) == [base, make_entry(1)]
    assert db.lookup("missing", base.target, base.signature) == []
    assert len(db.entries()) == 5


def test_entries_filter_order_and_clear(tmp_path: pathlib.Path) -> None:
    db = TuningDB(tmp_path / "tuning.db")
    db.record(make_entry(kernel_name="mul", kernel_id="m", shape=((4,),)))
    db.record(make_entry(shape=((100,),)))
    db.record(make_entry(shape=((9,),)))
    assert [(e.kernel_name, e.shape) for e in db.entries()] == [
        ("add", ((9,),)),
        ("add", ((100,),)),
        ("mul", ((4,),)),
    ]
    assert [e.kernel_name for e in db.entries("mul")] == ["mul"]
    assert db.clear("add") == 2
    assert db.clear() == 1
    assert db.entries() == []


def test_config_goes_through_json(tmp_path: pathlib.Path) -> None:
    db = TuningDB(tmp_path / "tuning.db")
    db.record(Entry(**{**make_entry().__dict__, "config": {"tile": (4, 8)}}))
    assert db.entries()[0].config == {"tile": [4, 8]}  # tuples come back as lists
    with pytest.raises(DatabaseError, match="not JSON-able"):
        db.record(Entry(**{**make_entry().__dict__, "config": {"f": print}}))


def test_nearest() -> None:
    small, mid, big = (make_entry(shape=((n, n),)) for n in (16, 256, 4096))
    other_rank = make_entry(shape=((300,),))
    entries = [small, mid, big, other_rank]
    assert nearest(entries, ((256, 256),)) is mid
    assert nearest(entries, ((200, 300),)) is mid
    assert nearest(entries, ((3000, 8000),)) is big
    assert nearest(entries, ((300,),)) is other_rank
    assert nearest([small, mid], ((300,),)) is None  # ranks differ: not comparable
    assert nearest([small], ((16, 16), (16, 16))) is None  # array count differs
    assert nearest([], ((1,),)) is None


def test_nearest_prefers_results_of_the_calls_thread_count() -> None:
    one, two = (make_entry(shape=((256, 256),), threads=t) for t in (1, 2))
    unrecorded = make_entry(shape=((256, 256),))
    assert nearest([two, one], ((256, 256),), threads=1) is one
    assert nearest([one, two], ((256, 256),), threads=2) is two
    assert nearest([one, two], ((256, 256),), threads=8) is two  # nearer in log2
    assert nearest([unrecorded, one], ((256, 256),), threads=1) is one  # recorded wins a tie
    assert nearest([unrecorded, two], ((256, 256),), threads=1) is unrecorded  # serves any
    # Twice the threads weighs as much as one dim twice as long.
    wide = make_entry(shape=((256, 4096),), threads=1)
    near = make_entry(shape=((256, 300),), threads=1)
    assert nearest([wide, two], ((256, 256),), threads=1) is two
    assert nearest([two, near], ((256, 256),), threads=1) is near
    assert nearest([one, two], ((256, 256),)) is one  # no count asked (a GPU): shape only


def test_results_for_two_thread_counts_are_two_rows(tmp_path: pathlib.Path) -> None:
    db = TuningDB(tmp_path / "tuning.db")
    one, two = make_entry(threads=1), make_entry(threads=2, time_s=5e-4)
    db.record(one)
    db.record(two)
    db.record(make_entry(threads=2, time_s=4e-4))  # replaces its own count's row only
    found = db.lookup(one.kernel_id, one.target, one.signature)
    assert [(e.threads, e.time_s) for e in found] == [(1, 1e-3), (2, 4e-4)]


# The table of schema 1 (kdsl before thread counts), as such files hold it.
_SCHEMA_1 = """CREATE TABLE tuning (
    kernel_id TEXT NOT NULL, kernel_name TEXT NOT NULL, target TEXT NOT NULL,
    signature TEXT NOT NULL, shape TEXT NOT NULL, config TEXT NOT NULL, time_s REAL NOT NULL,
    default_time_s REAL, kdsl_version TEXT NOT NULL, created REAL NOT NULL,
    source TEXT NOT NULL, PRIMARY KEY (kernel_id, target, signature, shape))"""


def test_a_schema_1_file_is_migrated_keeping_its_rows(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tuning.db"
    old = sqlite3.connect(path)
    old.execute(_SCHEMA_1)
    old.execute(
        "INSERT INTO tuning VALUES ('abc', 'add', 'cpu/x/1', 'a:f32[1,C]', '[[7]]', "
        "'{\"f\": 64}', 0.5, 1.0, '0.1.0', 3.0, 'autotune')"
    )
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    db = TuningDB(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # migrated, not set aside
        (kept,) = db.lookup("abc", "cpu/x/1", "a:f32[1,C]")
    assert (kept.shape, kept.config, kept.time_s, kept.threads) == (((7,),), {"f": 64}, 0.5, 0)
    db.record(dataclasses.replace(kept, shape=((9,),), threads=2))
    assert sorted(e.threads for e in db.entries()) == [0, 2]
    db.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (2,)
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_export_import_round_trip(tmp_path: pathlib.Path) -> None:
    src = TuningDB(tmp_path / "a.db")
    entries = [make_entry(i, threads=i) for i in range(3)]
    entries.append(make_entry(kernel_name="mul", kernel_id="m"))
    for e in entries:
        src.record(e)
    out = tmp_path / "export.json"
    assert src.export(out) == 4
    assert json.loads(out.read_text())["kdsl_tuning_export"] == 2

    dst = TuningDB(tmp_path / "b.db")
    assert dst.import_(out) == 4
    imported = dst.entries()
    assert all(e.source == "import" for e in imported)
    assert [_without_source(e) for e in imported] == [_without_source(e) for e in src.entries()]


def test_an_export_of_format_1_imports_as_serving_any_thread_count(
    tmp_path: pathlib.Path,
) -> None:
    src = TuningDB(tmp_path / "a.db")
    src.record(make_entry(threads=2))
    out = tmp_path / "export.json"
    src.export(out)
    doc = json.loads(out.read_text())
    assert doc["entries"][0]["threads"] == 2
    del doc["entries"][0]["threads"]  # as kdsl wrote files before the count was kept
    out.write_text(json.dumps({**doc, "kdsl_tuning_export": 1}))
    dst = TuningDB(tmp_path / "b.db")
    dst.import_(out)
    assert [e.threads for e in dst.entries()] == [0]
    out.write_text(json.dumps(doc))  # format 2 without the count: refused
    with pytest.raises(DatabaseError, match='entries\\[0\\] has no "threads"'):
        dst.import_(out)


def test_a_row_with_a_thread_count_replaces_its_shapes_unrecorded_row(
    tmp_path: pathlib.Path,
) -> None:
    db = TuningDB(tmp_path / "tuning.db")
    db.record(make_entry(threads=0, time_s=3.0))  # from before counts were kept
    db.record(make_entry(1, threads=0))  # another shape's
    db.record(make_entry(threads=2, time_s=1.0))  # a re-tune is the newer truth
    assert [(e.shape, e.threads) for e in db.entries()] == [
        (make_entry().shape, 2),
        (make_entry(1).shape, 0),
    ]
    db.record(make_entry(threads=0, time_s=2.0))  # (a GPU's or a serial schedule's)
    assert len(db.entries()) == 3


def _without_source(entry: Entry) -> Entry:
    return Entry(**{**entry.__dict__, "source": ""})


def _bad_exports() -> list[tuple[str, str]]:
    good = {
        "threads": 2,
        "kernel_id": "abc",
        "kernel_name": "add",
        "target": "cpu/x/1",
        "signature": "a:f32[C]",
        "shape": [[4]],
        "config": {"tile": 4},
        "time_s": 1.0,
        "default_time_s": None,
        "kdsl_version": "0.1.0",
        "created": 1.0,
    }
    missing = {k: v for k, v in good.items() if k != "config"}
    marker = {"kdsl_tuning_export": 2}
    return [
        ("{not json", "not JSON"),
        (json.dumps([good]), "kdsl_tuning_export"),
        (json.dumps({**marker, "entries": {}}), '"entries" must be a list'),
        (
            json.dumps({**marker, "entries": [good, missing]}),
            'entries[1] has no "config"',
        ),
        (
            json.dumps({**marker, "entries": [{**good, "shape": [["4"]]}]}),
            "entries[0].shape must be",
        ),
        *(
            (
                json.dumps({**marker, "entries": [{**good, "time_s": bad}]}),
                "entries[0].time_s must be a positive number of seconds",
            )
            for bad in ("fast", 0, -1.0, float("nan"), float("inf"), 10**400)
        ),
        (
            json.dumps({**marker, "entries": [{**good, "default_time_s": 0}]}),
            "entries[0].default_time_s must be a positive number or null",
        ),
        *(
            (
                json.dumps({**marker, "entries": [{**good, "created": bad}]}),
                "entries[0].created must be a date",
            )
            for bad in (1e300, -5, "today")
        ),
        (
            json.dumps({**marker, "entries": [{**good, "kernel_name": ""}]}),
            "entries[0].kernel_name must be a non-empty string",
        ),
        *(
            (
                json.dumps({**marker, "entries": [{**good, "threads": bad}]}),
                "entries[0].threads must be a non-negative int",
            )
            for bad in (-1, "2", True, 1.5, 2**64)
        ),
    ]


@pytest.mark.parametrize(("text", "complaint"), _bad_exports())
def test_import_rejects_bad_file(tmp_path: pathlib.Path, text: str, complaint: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    db = TuningDB(tmp_path / "tuning.db")
    db.record(make_entry())
    with pytest.raises(DatabaseError) as info:
        db.import_(bad)
    assert isinstance(info.value, KdslError)
    assert str(bad) in str(info.value) and complaint in str(info.value)
    assert db.entries() == [make_entry()]  # nothing imported, not even the good rows


def test_export_writes_through_a_link_and_refuses_a_device(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An export to a symbolic link writes its file (it replaced the link with a file of
    its own, leaving the linked file as it was); a path that is not a regular file (a
    device) is refused, not replaced; "-" is the standard output."""
    db = TuningDB(tmp_path / "tuning.db")
    db.record(make_entry())
    shared = tmp_path / "shared.json"
    shared.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(shared)
    assert db.export(link) == 1
    assert (
        link.is_symlink() and json.loads(shared.read_text())["entries"][0]["kernel_name"] == "add"
    )
    with pytest.raises(DatabaseError, match="not a regular file"):
        db.export("/dev/null")
    assert pathlib.Path("/dev/null").is_char_device()
    assert db.export("-") == 1
    assert json.loads(capsys.readouterr().out)["kdsl_tuning_export"] == 2


def test_a_database_deleted_under_the_process_is_made_again(tmp_path: pathlib.Path) -> None:
    """`rm -rf` of the cache directory while a process has the database open: the next
    write makes a new file (it went to the unlinked one, lost without a word)."""
    path = tmp_path / "cache" / "tuning.db"
    db = TuningDB(path)
    db.record(make_entry(0))
    for name in os.listdir(path.parent):
        os.unlink(path.parent / name)
    os.rmdir(path.parent)
    db.record(make_entry(1))
    assert path.exists()
    assert TuningDB(path).entries() == [make_entry(1)]


def test_import_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(DatabaseError, match="nope.json"):
        TuningDB(tmp_path / "tuning.db").import_(tmp_path / "nope.json")


def test_garbage_file_is_set_aside(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tuning.db"
    path.write_bytes(b"this is not a database, just garbage\x00\xff" * 100)
    db = TuningDB(path)
    with pytest.warns(RuntimeWarning, match="rebuilt"):
        assert db.lookup("abc123", "t", "s") == []
    (aside,) = tmp_path.glob("tuning.db.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not a database")
    db.record(make_entry())
    assert db.entries() == [make_entry()]


def test_truncated_file_does_not_crash(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tuning.db"
    db = TuningDB(path)
    for i in range(300):
        db.record(make_entry(i))
    db.close()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)

    db = TuningDB(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = db.lookup("abc123", "cpu/znver4/1a2b3c4d", "a:f32[2,C] b:f32[2,C]")
        assert isinstance(found, list)
        assert isinstance(db.entries(), list)
    if any(issubclass(w.category, RuntimeWarning) for w in caught):
        assert list(tmp_path.glob("tuning.db.corrupt-*"))
    db.record(make_entry(1000))
    assert make_entry(1000) in db.entries()


def _write_many(path: str, worker: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    db = TuningDB(path)
    barrier.wait()  # both start on a file neither has created yet
    for i in range(200):
        db.record(make_entry(i, kernel_id=f"worker{worker}"))
    db.close()


def test_two_processes_writing_lose_nothing(tmp_path: pathlib.Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    path = str(tmp_path / "tuning.db")
    procs = [ctx.Process(target=_write_many, args=(path, w, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    entries = TuningDB(path).entries()
    assert len(entries) == 400
    assert {e.kernel_id for e in entries} == {"worker0", "worker1"}


def test_unwritable_directory(tmp_path: pathlib.Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(locked, os.W_OK):  # root ignores the mode: make the parent a file instead
            blocker = tmp_path / "a-file"
            blocker.write_text("")
            path = blocker / "cache" / "tuning.db"
        else:
            path = locked / "cache" / "tuning.db"
        with pytest.raises(DatabaseError) as info:
            TuningDB(path).record(make_entry())
        assert str(path) in str(info.value)
        assert "KDSL_CACHE_DIR" in str(info.value)
    finally:
        locked.chmod(stat.S_IRWXU)
