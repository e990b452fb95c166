"""The real pipeline on the PostgreSQL engine: a tick against loopback feeds commits there, whatever the feed's
strings hold."""

from __future__ import annotations

import json

import pytest
from rig import Rig, poll_all, running
from support.gtfs_rt_builders import alert_entity, selector
from support.postgres import PASSWORD, PostgresServer

from broadcaster.cli import main
from broadcaster.config import Config
from broadcaster.preview import preview
from broadcaster.store import load_feeds
from broadcaster.store.postgres import SCHEMA_VERSION, PostgresDatabase, describe, probe
from broadcaster.store.transfer import TABLES, rows_of


def postgres_config(rig: Rig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("T_PG_PASSWORD", PASSWORD)
    return rig.config(storage={"url": postgres.url(postgres.create_database()),
                               "password": {"env": "T_PG_PASSWORD"}})


async def test_a_tick_commits_its_state_and_notices_in_postgresql(
    rig: Rig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = postgres_config(rig, postgres, monkeypatch)
    rig.serve_rt(alert_entity("A-L2", header={"en": "Line 2 suspended"}, informed=[selector(route_id="2")],
                              effect="NO_SERVICE"))
    async with running(config) as b:
        assert isinstance(b.db, PostgresDatabase)
        assert await poll_all(b) == [True, True]
    assert config.storage is not None
    db = PostgresDatabase(config.storage.url, password=PASSWORD)
    try:
        assert db.conn.execute("SELECT key FROM state WHERE kind = 'alert'").fetchall() == [("A-L2",)]
        assert db.conn.execute("SELECT COUNT(*) FROM outbox WHERE notice_id = 'alert-A-L2'").fetchone()[0] >= 1
    finally:
        db.close()


async def test_a_feed_string_with_a_nul_character_cannot_break_a_postgresql_commit(
    rig: Rig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's TEXT refuses U+0000, SQLite's stores it: an alert id is the one feed string stored as it
    came (it names the alert in the state and the outbox). A NUL in it must not make every tick fail."""
    config = postgres_config(rig, postgres, monkeypatch)
    rig.serve_rt(
        alert_entity("A\x00L2", header={"en": "Line 2 suspended"}, informed=[selector(route_id="2")]),
        alert_entity("A-L1", header={"en": "Line 1 lift out of order"}, informed=[selector(route_id="1")]),
    )
    async with running(config) as b:
        assert await poll_all(b) == [True, True]
        feeds = load_feeds(b.db)
        assert feeds["ops"].last_error is None
        assert any("A\\x00L2" in problem for problem in feeds["ops"].problems)
        assert b.db.conn.execute("SELECT key FROM state WHERE kind = 'alert'").fetchall() == [("A-L1",)]


async def test_preview_on_postgresql_reads_its_state_and_writes_nothing_there(
    rig: Rig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`preview` runs the real pipeline on a throw-away SQLite copy of the PostgreSQL state: an alert already
    announced is no news to it, and the shared database is left exactly as it was."""
    config = postgres_config(rig, postgres, monkeypatch)
    rig.serve_rt(alert_entity("A-L2", header={"en": "Line 2 suspended"}, informed=[selector(route_id="2")],
                              effect="NO_SERVICE"))
    async with running(config) as b:
        assert await poll_all(b) == [True, True]
    assert config.storage is not None
    db = PostgresDatabase(config.storage.url, password=PASSWORD)
    try:
        before = {table: rows_of(db, table) for table, _ in TABLES}
        report = await preview(config)
        assert report.feeds == {"ops": "ok", "flow": "ok"}
        assert report.notices == []  # the copy knew the alert: nothing new to announce
        assert {table: rows_of(db, table) for table, _ in TABLES} == before
        rig.serve_rt(alert_entity("A-L1", header={"en": "Line 1 lift out of order"},
                                  informed=[selector(route_id="1")]), alert_entity(
            "A-L2", header={"en": "Line 2 suspended"}, informed=[selector(route_id="2")], effect="NO_SERVICE"))
        assert [n for n in (await preview(config)).notices if "A-L1" in n]
        assert {table: rows_of(db, table) for table, _ in TABLES} == before
    finally:
        db.close()


def test_check_reaches_the_database_and_reads_its_version_without_changing_it(
    rig: Rig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = postgres_config(rig, postgres, monkeypatch)
    assert config.storage is not None
    assert main(["check", "--json", "-c", str(config.source)]) == 0
    verdicts = {v["what"]: v for v in json.loads(capsys.readouterr().out)["checks"]}
    storage = verdicts[f"storage {describe(config.storage.url)}"]
    assert storage["ok"]
    assert storage["detail"].endswith(f"schema version 0; migrated to {SCHEMA_VERSION} at the next start")
    assert probe(config.storage.url, password=PASSWORD, timeout=5)[1] == 0  # check migrated nothing

    monkeypatch.setenv("T_PG_PASSWORD", "wrong-sentinel-password")
    assert main(["check", "--json", "-c", str(config.source)]) == 1
    out = capsys.readouterr()
    verdicts = {v["what"]: v for v in json.loads(out.out)["checks"]}
    assert not verdicts[f"storage {describe(config.storage.url)}"]["ok"]
    assert "password authentication failed" in verdicts[f"storage {describe(config.storage.url)}"]["detail"]
    assert "wrong-sentinel-password" not in out.out + out.err


def test_a_command_on_a_postgresql_database_of_a_newer_release_exits_2_in_one_line(
    rig: Rig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = postgres_config(rig, postgres, monkeypatch)
    assert config.storage is not None
    db = PostgresDatabase(config.storage.url, password=PASSWORD)
    with db.transaction() as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.close()
    for command in ("status", "once"):
        assert main([command, "-c", str(config.source)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1
        assert f"schema version {SCHEMA_VERSION + 1}, newer than this release knows" in err[0]
        assert "restore the backup taken before that release migrated it" in err[0]  # no copy is kept beside it
