"""A durable commit whose sync of the WAL runs in a worker thread (`sync_later`, broadcaster/store/wal_sync.py):
committed with `synchronous=NORMAL`, durable once `synced()` returned, and never trusted again once a sync failed."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.wal_gate import WalGate

from broadcaster.errors import StoreError
from broadcaster.outbox import Outbox, OutgoingMessage
from broadcaster.store import Database, KeyValueStore
from broadcaster.store.database import _io_error

FULL, NORMAL = 2, 1


def queue_one(db: Database, notice: str, *, sync_later: bool = True) -> None:
    with db.transaction(sync_later=sync_later) as conn:
        Outbox.enqueue(conn, [OutgoingMessage(notice, "v1", "mqtt", b"{}", 1)], datetime.now(UTC))


def levels_at_commit(db: Database) -> list[int]:
    seen: list[int] = []
    db.conn.set_trace_callback(
        lambda s: seen.append(int(db.conn.cursor().execute("PRAGMA synchronous").fetchone()[0]))
        if s == "COMMIT" else None)
    return seen


async def test_a_sync_later_commit_skips_the_fsync_and_a_worker_thread_makes_it_durable(tmp_path: Path) -> None:
    gate = WalGate()
    db = Database(tmp_path / "state.db", sync=gate)
    seen = levels_at_commit(db)
    queue_one(db, "n1")
    assert seen == [NORMAL]
    assert db.wal.pending
    await db.synced()
    assert not db.wal.pending
    assert [path for path, _ in gate.calls] == [tmp_path / "state.db-wal"]
    assert gate.calls[0][1] != threading.get_ident()  # not on the event loop's thread
    await db.synced()  # nothing new: no second sync
    with db.transaction() as conn:  # FULL, as before
        KeyValueStore(db, "t").save(conn, "k", "v")
    with db.transaction(durable=False) as conn:
        KeyValueStore(db, "t").save(conn, "k", "w")
    assert seen == [NORMAL, FULL, NORMAL]
    assert not db.wal.pending  # neither leaves anything for a sync to do
    await db.synced()
    assert len(gate.calls) == 1


def test_with_nothing_to_sync_synced_returns_without_yielding_to_the_loop(tmp_path: Path) -> None:
    """The dispatcher awaits it before every read of what is due: when no commit waits, it costs no loop turn."""
    db = Database(tmp_path / "state.db")
    coroutine = db.synced()
    with pytest.raises(StopIteration):
        coroutine.send(None)


async def test_waiters_share_one_sync_and_a_commit_made_during_it_waits_for_the_next(tmp_path: Path) -> None:
    gate = WalGate(shut=True)
    db = Database(tmp_path / "state.db", sync=gate)
    queue_one(db, "n1")
    first, second = asyncio.create_task(db.synced()), asyncio.create_task(db.synced())
    await gate.entered()
    queue_one(db, "n2")  # lands while the first sync runs: that sync may not carry it
    third = asyncio.create_task(db.synced())
    gate.let_through()
    async with asyncio.timeout(10):
        await asyncio.gather(first, second)
    assert not third.done()
    assert db.wal.pending
    await gate.entered()  # a second sync, for n2
    gate.let_through()
    async with asyncio.timeout(10):
        await third
    assert len(gate.calls) == 2
    assert not db.wal.pending


async def test_a_waiter_cancelled_does_not_cancel_the_sync_the_others_wait_for(tmp_path: Path) -> None:
    gate = WalGate(shut=True)
    db = Database(tmp_path / "state.db", sync=gate)
    queue_one(db, "n1")
    leaving, staying = asyncio.create_task(db.synced()), asyncio.create_task(db.synced())
    await gate.entered()
    leaving.cancel()
    gate.let_through()
    async with asyncio.timeout(10):
        await staying
    assert leaving.cancelled()
    assert len(gate.calls) == 1
    assert not db.wal.pending


async def test_a_failed_sync_refuses_every_later_write_and_sync_until_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    gate = WalGate(shut=True)
    db = Database(path, sync=gate)
    queue_one(db, "n1")
    waiting = asyncio.create_task(db.synced())
    await gate.entered()
    gate.fail()
    with pytest.raises(StoreError) as failed:
        async with asyncio.timeout(10):
            await waiting
    assert str(path) in str(failed.value)
    assert "Input/output error" in str(failed.value)
    assert [r for r in caplog.records if r.levelno == logging.CRITICAL and "restart" in r.getMessage()]
    # Linux may have dropped the pages it could not write and marked them clean: a second sync would "succeed".
    with pytest.raises(StoreError):
        await db.synced()
    for durable, sync_later in ((True, False), (False, False), (True, True)):
        with pytest.raises(StoreError, match="in doubt"), db.transaction(durable=durable, sync_later=sync_later):
            pytest.fail("a transaction began on a database in doubt")
    assert len(gate.calls) == 1
    db.close()  # and closing does not pretend to sync it either
    assert len(gate.calls) == 1
    # A restart reads what the disk holds (here the page cache did keep it) and trusts the database again.
    again = Database(path)
    assert [e.notice_id for e in Outbox(again).due("mqtt", datetime.now(UTC))] == ["n1"]
    queue_one(again, "n2")
    await again.synced()


def test_closing_syncs_what_is_left_on_the_closing_thread(tmp_path: Path) -> None:
    gate = WalGate()
    db = Database(tmp_path / "state.db", sync=gate)
    queue_one(db, "n1")
    db.close()
    assert gate.calls == [(tmp_path / "state.db-wal", threading.get_ident())]


def test_only_a_disk_failure_of_a_commit_puts_the_database_in_doubt() -> None:
    """A FULL commit that fails to write or sync the WAL (SQLITE_IOERR, any extended code) leaves the commits
    waiting for a sync in doubt; a full disk or a busy lock does not (nothing written was lost)."""
    def error(code: int) -> sqlite3.Error:
        exc = sqlite3.OperationalError("x")
        exc.sqlite_errorcode = code
        return exc

    assert _io_error(error(sqlite3.SQLITE_IOERR))
    assert _io_error(error(sqlite3.SQLITE_IOERR | (4 << 8)))  # SQLITE_IOERR_FSYNC
    assert not _io_error(error(sqlite3.SQLITE_FULL))
    assert not _io_error(error(sqlite3.SQLITE_BUSY))
    assert not _io_error(sqlite3.OperationalError("raised without a code"))
