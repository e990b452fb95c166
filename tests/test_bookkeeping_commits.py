"""Bookkeeping commits skip the fsync (issue 16): an MQTT notice marked sent, the record of retained
publications, a feed's fetch record and a steady tick's state commit with `synchronous=NORMAL`, every other
commit with FULL. NORMAL in WAL mode still survives the process being killed; these tests kill a real one."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rig import Rig, poll_all, running
from support.microblog_server import MicroblogServer
from test_channels import SIGNAL, alert, channels, until

from broadcaster.operator import ManualNotice
from broadcaster.outbox import Outbox, OutgoingMessage
from broadcaster.store import Database, KeyValueStore

FULL, NORMAL = 2, 1


def synchronous(db: Database) -> int:
    return int(db.conn.execute("PRAGMA synchronous").fetchone()[0])


def test_a_bookkeeping_commit_skips_the_fsync_and_full_sync_comes_back(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.db")
    with db.transaction(durable=False):
        assert synchronous(db) == NORMAL
    with db.transaction():
        assert synchronous(db) == FULL
    with pytest.raises(RuntimeError), db.transaction(durable=False):
        raise RuntimeError("a failure inside")
    with db.transaction():
        assert synchronous(db) == FULL  # a failed bookkeeping commit leaves the next commit durable


def test_an_mqtt_mark_is_bookkeeping_and_a_post_mark_is_durable(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.db")
    outbox = Outbox(db)
    now = datetime.now(UTC)
    with db.transaction() as conn:
        Outbox.enqueue(conn, [OutgoingMessage("n1", "v1", "mqtt", b"{}", 1),
                              OutgoingMessage("n1", "v1", "mastodon", b"{}", 1)], now)
    seen: list[int] = []
    db.conn.set_trace_callback(lambda statement: seen.append(synchronous_now(db)) if statement == "COMMIT" else None)
    mqtt, mastodon = (e.key for e in outbox.due("mqtt", now) + outbox.due("mastodon", now))
    outbox.mark_sent(mqtt, now, durable=False)
    outbox.mark_sent(mastodon, now, "remote-1")
    db.conn.set_trace_callback(None)
    assert seen == [NORMAL, FULL]


def synchronous_now(db: Database) -> int:
    # Read through a second cursor of the same connection: the trace callback runs inside the COMMIT's execute.
    return int(db.conn.cursor().execute("PRAGMA synchronous").fetchone()[0])


async def test_a_bookkeeping_commit_survives_the_process_being_killed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Database(path).close()
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from broadcaster.store import Database, KeyValueStore\n"
        "db = Database(Path(sys.argv[1]))\n"
        "meta = KeyValueStore(db, 'test')\n"
        "with db.transaction(durable=False) as conn:\n"
        "    meta.save(conn, 'mark', 'kept')\n"
        "print('committed', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(path),
                                                   stdout=asyncio.subprocess.PIPE)
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert stdout == b"committed\n"
    assert process.returncode == -9
    with sqlite3.connect(path) as check:  # the WAL the killed process left is read (and checkpointed) on open
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert KeyValueStore(Database(path), "test").get("mark") == "kept"


async def test_the_pipeline_and_the_dispatcher_wait_for_the_disk_where_it_matters(
    rig: Rig, server: MicroblogServer
) -> None:
    """Through the real parts, not the flag by hand: an operator's notice and every mark of a post sent wait for
    the disk; a feed's commit that queues notices leaves its sync to a worker thread, which the channels wait for
    before they send (tests/test_deferred_sync_delivery.py); the MQTT notice's mark and a steady tick that queues
    nothing skip the sync."""
    config = rig.config(channels=[c for c in channels(server) if c["name"] == "mastodon"])
    rig.serve_rt(alert(SIGNAL))
    async with running(config) as b:
        db = b.db
        assert isinstance(db, Database)  # the SQLite engine: its trace callback and PRAGMA
        commits: list[tuple[int, list[str]]] = []
        statements: list[str] = []

        def trace(statement: str) -> None:
            if statement.startswith("BEGIN"):
                statements.clear()
            elif statement == "COMMIT":
                commits.append((synchronous_now(db), list(statements)))
            else:
                statements.append(statement)

        db.conn.set_trace_callback(trace)
        try:
            await poll_all(b)  # a new alert: notices for MQTT and Mastodon
            await until(lambda: b.pending() == 0, b)
            await poll_all(b)  # the same bodies again: nothing to queue
            await b.announce(ManualNotice({"en": "Exit B closed"}, station_ids=("S04",)))
            await until(lambda: b.pending() == 0, b)
        finally:
            db.conn.set_trace_callback(None)
        channel_of = dict(b.db.conn.execute("SELECT key, channel FROM outbox").fetchall())

    def marked_sent(sql: list[str]) -> list[str]:
        return [channel_of[key] for s in sql if s.startswith("UPDATE outbox SET status = 'sent'")
                for key in channel_of if f"'{key}'" in s]

    queuing = [level for level, sql in commits if any(s.startswith("INSERT INTO outbox") for s in sql)]
    assert queuing[:-1]
    assert set(queuing[:-1]) == {NORMAL}  # the feed's tick
    assert queuing[-1] == FULL  # the operator's notice: the caller is told it is committed
    assert not db.wal.pending  # the tick's sync ran before its posts went
    marks = [(channel, level) for level, sql in commits for channel in marked_sent(sql)]
    assert ("mastodon", FULL) in marks
    assert ("mqtt", NORMAL) in marks
    assert set(marks) == {("mastodon", FULL), ("mqtt", NORMAL)}
    steady = [level for level, sql in commits
              if any(s.startswith("INSERT INTO feeds") for s in sql)
              and not any("INTO outbox" in s for s in sql)]
    assert NORMAL in steady
