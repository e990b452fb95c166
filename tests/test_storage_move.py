"""`broadcaster storage move`: a populated SQLite state into PostgreSQL, whole or not at all."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from rig import Rig, poll_all, running
from support.gtfs_rt_builders import alert_entity, selector
from support.postgres import PASSWORD, PostgresServer

from broadcaster import desk
from broadcaster.config import Config
from broadcaster.errors import StoreError
from broadcaster.lock import InstanceLock
from broadcaster.outbox import Outbox, OutgoingMessage
from broadcaster.store import Database, KeyValueStore
from broadcaster.store.engine import WRITE_LOCK
from broadcaster.store.postgres import PostgresDatabase
from broadcaster.store.transfer import TABLES, move_to_postgres, row_counts, rows_of

PAUSING = Path(__file__).resolve().parent / "support" / "pausing_move.py"
WAIT = 60.0
EXTRA_ROWS = 20_000  # a big outbox: the copy takes a while, and it goes in several batches


async def populated(rig: Rig) -> Config:
    """A SQLite state made by the real pipeline (a tick against the loopback feed: state, feed records,
    snapshots, retained topics, MQTT notices), then an operator's request with an idempotency key, a platform
    session, a large queue of posts and some of them in doubt (an attempt that may have landed)."""
    config = rig.config()
    rig.serve_rt(alert_entity("A-L2", header={"en": "Line 2 suspended"}, informed=[selector(route_id="2")],
                              effect="NO_SERVICE"))
    async with running(config) as b:
        assert await poll_all(b) == [True, True]
    db = Database(config.database_path)
    try:
        desk.submit(db, "announce", {"texts": {"en": "Lift out of order"}, "idempotency_key": "k-1"})
        KeyValueStore(db, "bluesky").put("session", '{"did": "did:plc:x", "jwt": "secret"}')
        now = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
        with db.transaction() as conn:
            Outbox.enqueue(conn, [OutgoingMessage(f"n-{i}", "v1", "mastodon", b"\x00payload\xff" * 8, i % 3)
                                  for i in range(EXTRA_ROWS)], now)
        outbox = Outbox(db)
        for entry in outbox.due("mastodon", now, limit=5):
            outbox.begin_attempt(entry.key, now + timedelta(seconds=30))  # in doubt: it may have landed
    finally:
        db.close()
    return config


def move(config: Config, url: str, *pause: str) -> subprocess.Popen[str]:
    command = [sys.executable, str(PAUSING), pause[0]] if pause else [sys.executable, "-m", "broadcaster"]
    return subprocess.Popen(
        [*command, "storage", "move", "-c", str(config.source), "--to", url, "--password-env", "T_PG_PASSWORD"],
        text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "T_PG_PASSWORD": PASSWORD})


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=WAIT)
    return process.returncode, out, err


async def test_a_move_killed_part_way_leaves_the_target_empty_and_a_rerun_copies_every_row(
    rig: Rig, postgres: PostgresServer
) -> None:
    config = await populated(rig)
    url = postgres.url(postgres.create_database())
    source = Database(config.database_path)
    queued = row_counts(source)["outbox"]
    source.close()

    process = move(config, url, "outbox")
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], WAIT)
    assert ready, "the move never reached the outbox"
    lines = [process.stdout.readline().strip() for _ in range(8)]  # the 7 tables up to the outbox, the pause
    assert lines[-2:] == [f"outbox: {queued} rows", "paused outbox"], lines
    process.kill()  # SIGKILL inside the transaction, the outbox copied, requests and idempotency not yet
    process.wait(WAIT)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()

    target = PostgresDatabase(url, password=PASSWORD)
    try:
        assert set(row_counts(target).values()) == {0}
    finally:
        target.close()

    status, out, err = finished(move(config, url))
    assert status == 0, err
    source, target = Database(config.database_path), PostgresDatabase(url, password=PASSWORD)
    try:
        counts = row_counts(source)
        assert counts["outbox"] > EXTRA_ROWS
        assert counts["state"] > 0
        assert counts["retained"] > 0
        assert counts["feeds"] == 2
        assert counts["requests"] == counts["idempotency"] == 1
        assert [line for line in out.splitlines() if ": " in line and "rows" in line][:len(TABLES)] == [
            f"{table}: {counts[table]} rows" for table, _ in TABLES]
        for table, _ in TABLES:
            assert rows_of(source, table) == rows_of(target, table), table
        assert sum(1 for row in rows_of(target, "outbox") if row[-1] == 1) == 5  # the marks of doubt
        # Ids go on after the copied ones: a new request is not given an old one's id.
        assert desk.submit(target, "announce", {"texts": {"en": "after the move"}}) == 2
        assert KeyValueStore(target, "bluesky").get("session") == '{"did": "did:plc:x", "jwt": "secret"}'
    finally:
        source.close()
        target.close()

    status, _, err = finished(move(config, url))  # a second move would mix two states
    assert status == 1
    assert "the target database is not empty" in err


async def test_a_move_refuses_while_a_broadcaster_holds_the_state_directory(
    rig: Rig, postgres: PostgresServer
) -> None:
    config = rig.config()
    Database(config.database_path).close()
    lock = InstanceLock(config.state.directory)
    lock.acquire()
    try:
        status, _, err = finished(move(config, postgres.url(postgres.create_database())))
    finally:
        lock.release()
    assert status == 1
    assert "a broadcaster is running on this state directory" in err


def test_a_password_in_the_target_url_is_refused_and_never_shown(rig: Rig) -> None:
    config = rig.config()
    status, _, err = finished(move(config, "postgresql://broadcaster:hunter2-secret@127.0.0.1:5432/db"))
    assert status == 2
    assert "--to: must not carry a password" in err
    assert "hunter2" not in err


@pytest.fixture(autouse=True)
def _no_stray_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T_PG_PASSWORD", raising=False)


def test_a_write_landing_between_the_emptiness_check_and_the_copy_makes_the_move_refuse(
    rig: Rig, postgres: PostgresServer
) -> None:
    """An instance started against the new database too early commits while the move waits for the write lock:
    the move must still find the target not empty (checked inside its transaction, under the lock), not copy a
    second state into it."""
    config = rig.config()
    source = Database(config.database_path)
    desk.submit(source, "announce", {"texts": {"en": "queued before the move"}})
    source.close()
    name = postgres.create_database()
    url = postgres.url(name)
    PostgresDatabase(url, password=PASSWORD).close()  # migrated and empty, as an instance starting on it leaves it
    outcome: list[BaseException | dict[str, int]] = []

    def run_move() -> None:
        try:
            outcome.append(move_to_postgres(config.database_path, url, password=PASSWORD))
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    with psycopg.connect(postgres.conninfo(name), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))  # the instance's transaction, under way
        mover = threading.Thread(target=run_move)
        mover.start()
        deadline = time.monotonic() + WAIT
        while other.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'").fetchone() != (1,):
            assert time.monotonic() < deadline, "the move never waited for the write lock"
            time.sleep(0.01)
        other.execute("INSERT INTO state (kind, key, body) VALUES ('alert', 'from-the-instance', '\\x00')")
        other.execute("SELECT pg_advisory_unlock(%s)", (WRITE_LOCK,))
        mover.join(WAIT)
    assert len(outcome) == 1
    assert isinstance(outcome[0], StoreError), outcome
    assert "the target database is not empty (state: 1 rows)" in str(outcome[0])
    target = PostgresDatabase(url, password=PASSWORD)
    try:
        assert row_counts(target)["requests"] == 0  # nothing of the move
    finally:
        target.close()
