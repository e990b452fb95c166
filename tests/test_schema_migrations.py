"""The schema's numbered migrations (broadcaster/store/migrations.py, sqlite_steps.py): a database made by any
earlier release reaches the schema of a new one with its rows; each step is whole after a SIGKILL anywhere in it;
an older database is copied before it changes; a newer one is refused by every command; only the process holding
the state directory migrates."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rig import Rig
from support.layouts import LAYOUTS, RELEASE_66D9D1C, make_database

from broadcaster.errors import DatabaseTooNew, StoreError
from broadcaster.store import SCHEMA_VERSION, Database, migrations, sqlite_steps
from broadcaster.store.migrations import Step

PAUSING = Path(__file__).resolve().parent / "support" / "pausing_migration.py"
NEWEST = SCHEMA_VERSION


def schema_of(path: Path) -> dict[str, Any]:
    """What a database's schema is, read back from SQLite: every object, every table's columns (name, type, not
    null, default, primary key) and every index's columns and uniqueness. The CREATE texts are left out: a column
    added by ALTER TABLE and one in the CREATE are the same column."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        objects = sorted(conn.execute("SELECT type, name, tbl_name FROM sqlite_master"))
        tables = [name for kind, name, _ in objects if kind == "table"]
        return {
            "objects": objects,
            "columns": {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in tables},
            "indexes": {t: sorted(conn.execute(f"PRAGMA index_list({t})").fetchall()) for t in tables},
            "index_columns": {name: conn.execute(f"PRAGMA index_xinfo({name})").fetchall()
                              for kind, name, _ in objects if kind == "index"},
            "version": version_of(path) if "meta" in tables else 0,
        }


def version_of(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0


@functools.cache
def fresh_schema() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "broadcaster.db"
        Database(path).close()
        return schema_of(path)


def schema_after(steps: int) -> dict[str, Any]:
    """The schema of a new database taken through the first `steps` steps only."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "broadcaster.db"
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            for step in sqlite_steps.STEPS[:steps]:
                step.apply(conn)
            if steps:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(steps),))
        return schema_of(path)


def fill(path: Path) -> dict[str, int]:
    """A row in every table the database has, written with the columns of 0.1.0; the row count of each."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        conn.execute("INSERT INTO meta VALUES ('session:bluesky', 'token')")
        conn.execute("INSERT INTO state VALUES ('meta', 'as_of', CAST('\"2026-11-26T00:00:00+00:00\"' AS BLOB))")
        conn.execute("INSERT INTO feeds (name, etag, consecutive_failures) VALUES ('ops', '\"e1\"', 3)")
        conn.execute("INSERT INTO outbox (key, notice_id, version, channel, part, priority, payload, created_at,"
                     " status, next_attempt_at, uncertain) VALUES ('k1', 'alert-A-1', 'v1', 'mastodon', 0, 1, x'7b7d',"
                     " '2026-11-26T00:00:00+00:00', 'sent', '2026-11-26T00:00:00+00:00', 1)")
        conn.execute("INSERT INTO retained VALUES ('bc/line/1', 'd1')")
        conn.execute("INSERT INTO retained_cleared VALUES ('bc/line/2', '2026-11-26T00:00:00+00:00')")
        conn.execute("INSERT INTO requests (created_at, action, body, status) VALUES ('2026-11-26T00:00:00+00:00',"
                     " 'announce', x'7b7d', 'done')")
        if "idempotency" in tables:
            conn.execute("INSERT INTO idempotency VALUES ('admin', 'key-1', 'f', '2026-12-03T00:00:00+00:00', 201,"
                         " x'7b7d', NULL)")
        if "feed_snapshots" in tables:
            conn.execute("INSERT INTO feed_snapshots VALUES ('ops', x'01', x'02', x'03')")
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def counts(path: Path, tables: set[str] | dict[str, int]) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def copy_of(path: Path) -> Path:
    return path.with_name(f"{path.name}.before-v{NEWEST}")


# -- Earlier layouts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("release", list(LAYOUTS))
def test_a_database_of_every_earlier_release_reaches_the_new_schema_with_its_rows(
        tmp_path: Path, release: str) -> None:
    path = tmp_path / "broadcaster.db"
    make_database(path, LAYOUTS[release])
    before = fill(path)
    db = Database(path)
    assert db.schema_version == NEWEST
    db.close()
    assert schema_of(path) == fresh_schema()
    assert counts(path, before) == before
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT etag, consecutive_failures, problems FROM feeds").fetchall() == [('"e1"', 3, None)]
        assert conn.execute("SELECT uncertain FROM outbox").fetchall() == [(1,)]
        assert conn.execute("SELECT value FROM meta WHERE key = 'session:bluesky'").fetchall() == [("token",)]
    # The copy beside it is the database as that release left it: owner-only, its version, its rows.
    copy = copy_of(path)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert version_of(copy) == 1
    assert counts(copy, before) == before


def test_a_new_database_is_made_by_the_steps_and_not_copied(tmp_path: Path) -> None:
    path = tmp_path / "broadcaster.db"
    Database(path).close()
    assert version_of(path) == NEWEST
    assert sorted(p.name for p in tmp_path.iterdir() if ".before-v" in p.name) == []


def test_status_shows_the_schema_version(rig: Rig) -> None:
    make_database(rig.tmp_path / "state" / "broadcaster.db", RELEASE_66D9D1C)
    done = subprocess.run([sys.executable, "-m", "broadcaster", "status", "--json", "-c", str(rig.write_config())],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["schema_version"] == NEWEST


def test_opening_an_up_to_date_database_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "broadcaster.db"
    make_database(path, RELEASE_66D9D1C)
    Database(path).close()
    copy = copy_of(path)
    copied_at = copy.stat().st_mtime_ns
    Database(path).close()
    assert copy.stat().st_mtime_ns == copied_at  # no second copy, no step run again
    assert version_of(path) == NEWEST


#: What releases added without a version, by the step that now adds it: a version-1 database may have any of it.
UNVERSIONED = range(2, 5)  # steps 2-4; step 5 and later came with their version


@settings(max_examples=40, deadline=None)
@given(start=st.integers(min_value=0, max_value=NEWEST), already=st.sets(st.sampled_from(list(UNVERSIONED))))
def test_migrating_from_any_step_gives_the_schema_of_a_new_database(start: int, already: set[int]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "broadcaster.db"
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            for step in sqlite_steps.STEPS[:start]:
                step.apply(conn)
            if start:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(start),))
                for step in sqlite_steps.STEPS:  # what a release added to the schema without a version
                    if step.version > start and step.version in already:
                        step.apply(conn)
        db = Database(path)
        assert db.schema_version == NEWEST
        db.close()
        assert schema_of(path) == fresh_schema()


def test_the_steps_are_numbered_from_one_without_a_gap() -> None:
    assert [step.version for step in sqlite_steps.STEPS] == list(range(1, NEWEST + 1))
    gap = (Step(1, "one", print), Step(3, "three", print))
    with pytest.raises(ValueError, match=r"numbered 1\.\.2"):
        migrations.newest(gap)


def test_a_step_script_is_cut_into_whole_statements() -> None:
    script = "-- a comment; with a semicolon\nCREATE TABLE a (x TEXT DEFAULT ';');\nCREATE INDEX b ON a (x);\n-- end\n"
    assert list(sqlite_steps.statements(script)) == [
        "-- a comment; with a semicolon\nCREATE TABLE a (x TEXT DEFAULT ';');", "CREATE INDEX b ON a (x);"]
    with pytest.raises(ValueError, match="incomplete"):
        list(sqlite_steps.statements("CREATE TABLE a (x TEXT"))


def test_a_step_that_fails_leaves_the_database_at_the_step_before(tmp_path: Path) -> None:
    # 0.1.0's database without its outbox table: step 4's index cannot be made, and its transaction rolls back.
    path = tmp_path / "broadcaster.db"
    make_database(path, RELEASE_66D9D1C)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("DROP TABLE outbox")
    with pytest.raises(StoreError, match=r"no such table: main\.outbox"):
        Database(path)
    assert version_of(path) == 3  # step 4 (the index on outbox) failed: the database stays at step 3
    assert "outbox_recent" not in {o[1] for o in schema_of(path)["objects"]}


# -- A newer database ------------------------------------------------------------------------------------------


def newer_database(path: Path) -> None:
    Database(path).close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(NEWEST + 1),))


def test_a_database_newer_than_the_code_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "state" / "broadcaster.db"
    newer_database(path)
    before = schema_of(path)
    with pytest.raises(DatabaseTooNew) as refused:
        Database(path)
    assert (refused.value.version, refused.value.newest) == (NEWEST + 1, NEWEST)
    message = str(refused.value)
    assert str(path) in message
    assert f"schema version {NEWEST + 1}" in message
    assert f"up to {NEWEST}" in message
    assert "run the release that migrated it" in message
    assert f"broadcaster.db.before-v{NEWEST + 1}" in message
    assert schema_of(path) == before


@pytest.mark.parametrize("command", ["run", "once", "check", "status", "preview"])
def test_every_command_refuses_a_newer_database_in_one_line_with_exit_2(rig: Rig, command: str) -> None:
    path = rig.tmp_path / "state" / "broadcaster.db"
    newer_database(path)
    done = subprocess.run([sys.executable, "-m", "broadcaster", command, "-c", str(rig.write_config())],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"broadcaster: {DatabaseTooNew(path, NEWEST + 1, NEWEST)}"]
    assert version_of(path) == NEWEST + 1


# -- SIGKILL inside a step, and the lock ---------------------------------------------------------------------


def pause_in(path: Path, step: int, point: str) -> subprocess.Popen[str]:
    """A process migrating `path`, stopped inside `step` (tests/support/pausing_migration.py)."""
    process = subprocess.Popen([sys.executable, str(PAUSING), str(path), str(step), point], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 30)
    if not ready:
        process.kill()
        pytest.fail(f"the migration did not reach step {step}")
    line = process.stdout.readline().strip()
    assert line == f"paused {step}", (line, process.stderr.read() if process.stderr else "")
    return process


def killed(process: subprocess.Popen[str]) -> None:
    process.kill()  # SIGKILL
    process.wait(timeout=10)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


@pytest.mark.parametrize("point", ["before", "after"])
@pytest.mark.parametrize("step", range(1, NEWEST + 1))
def test_a_sigkill_inside_any_step_leaves_the_step_before_and_a_restart_finishes(
        rig: Rig, step: int, point: str) -> None:
    path = rig.tmp_path / "state" / "broadcaster.db"
    rows: dict[str, int] = {}
    if step > 1:  # step 1 runs on a new database only; the others on 0.1.0's
        make_database(path, RELEASE_66D9D1C)
        rows = fill(path)
    killed(pause_in(path, step, point))
    assert schema_of(path) == schema_after(step - 1)  # nothing of the step: its transaction never committed
    restart = subprocess.run([sys.executable, "-m", "broadcaster", "status", "-c", str(rig.write_config())],
                             capture_output=True, text=True, timeout=60, check=False)
    assert restart.returncode == 0, restart.stderr
    assert f"database: schema version {NEWEST}" in restart.stdout
    assert schema_of(path) == fresh_schema()
    assert counts(path, rows) == rows
    if step > 1:  # the copy made before step 2 is 0.1.0's database, kept through the restart
        assert version_of(copy_of(path)) == 1
        assert counts(copy_of(path), rows) == rows
    else:
        assert not copy_of(path).exists()


def test_only_the_process_holding_the_state_directory_migrates(rig: Rig) -> None:
    path = rig.tmp_path / "state" / "broadcaster.db"
    make_database(path, RELEASE_66D9D1C)
    config = str(rig.write_config())
    migrating = pause_in(path, 3, "after")  # it holds the state directory's lock, step 3 half done
    try:
        for command in ("status", "once"):
            other = subprocess.run([sys.executable, "-m", "broadcaster", command, "-c", config],
                                   capture_output=True, text=True, timeout=60, check=False)
            assert other.returncode == 1, other.stderr
            assert f"already in use by broadcaster pid {migrating.pid}" in other.stderr
        assert version_of(path) == 2  # untouched by the others
        assert migrating.stdin is not None
        assert migrating.stdout is not None
        migrating.stdin.write("\n")  # let it finish
        migrating.stdin.flush()
        assert migrating.stdout.readline().strip() == f"open {NEWEST}"
        assert migrating.wait(timeout=30) == 0
    finally:
        killed(migrating)
    assert schema_of(path) == fresh_schema()


def test_two_processes_starting_at_once_on_an_old_database_migrate_it_once(rig: Rig) -> None:
    path = rig.tmp_path / "state" / "broadcaster.db"
    make_database(path, RELEASE_66D9D1C)
    rows = fill(path)
    config = str(rig.write_config())
    both = [subprocess.Popen([sys.executable, "-m", "broadcaster", "once", "-c", config], text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    answers = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in both]
    for p in both:
        if p.stderr is not None:
            p.stderr.close()
    assert sum(err.count("migrating; the database as it was is kept") for _, err in answers) == 1, answers
    for status, err in answers:  # the one that found the directory locked says so; neither fails otherwise
        assert status == 0 or (status == 1 and "already in use by broadcaster pid" in err), err
    assert schema_of(path) == fresh_schema()
    assert version_of(copy_of(path)) == 1
    assert counts(copy_of(path), rows) == rows
    assert os.stat(copy_of(path)).st_mode & 0o077 == 0
