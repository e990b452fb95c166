"""A durable commit whose sync of the WAL runs in a worker thread (`sync_later`, broadcaster/store/wal_sync.py):
committed with `synchronous=NORMAL`, durable once `synced()` returned, and never trusted again once a sync failed."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
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


def size_of(path: str) -> int:
    return os.path.getsize(path)


async def in_doubt(path: Path) -> tuple[Database, WalGate, StoreError]:
    """A database at `path` with the notice n1 committed and its sync failed; and what `synced()` raised."""
    gate = WalGate(shut=True)
    db = Database(path, sync=gate)
    queue_one(db, "n1")
    waiting = asyncio.create_task(db.synced())
    await gate.entered()
    gate.fail()
    with pytest.raises(StoreError) as failed:
        async with asyncio.timeout(10):
            await waiting
    return db, gate, failed.value


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
    assert [path for path, _ in gate.calls] == [(tmp_path / "state.db-wal").resolve()]
    assert gate.calls[0][1] != threading.get_ident()  # not on the event loop's thread
    await db.synced()  # nothing new: no second sync
    assert len(gate.calls) == 1
    with db.transaction(durable=False) as conn:  # bookkeeping: owed nothing
        KeyValueStore(db, "t").save(conn, "k", "w")
    assert not db.wal.pending
    with db.transaction() as conn:  # FULL, as before; and owed a sync of our own descriptor (see the next test)
        KeyValueStore(db, "t").save(conn, "k", "v")
    assert seen == [NORMAL, NORMAL, FULL]
    assert db.wal.pending
    await db.synced()
    assert len(gate.calls) == 2


async def test_a_write_back_error_that_sqlite_s_descriptor_swallowed_still_reaches_ours(tmp_path: Path) -> None:
    """Linux reports a failed write-back once to each descriptor open when it failed. SQLite's auto-checkpoint
    meets it and drops it, and the next FULL commit's sync on SQLite's descriptor succeeds: the sync of our own
    descriptor, owed after every durable commit, is what still reports it before anything is sent. (Here the
    disk's answer is the seam's.)"""
    gate = WalGate(shut=True)
    db = Database(tmp_path / "state.db", sync=gate)
    with db.transaction() as conn:
        KeyValueStore(db, "t").save(conn, "k", "v")
    reading = asyncio.create_task(Outbox(db).on_disk())
    await gate.entered()
    gate.fail()
    with pytest.raises(StoreError):
        async with asyncio.timeout(10):
            await reading
    assert db.doubt() is not None


async def test_with_nothing_to_sync_synced_returns_without_yielding_to_the_loop(tmp_path: Path) -> None:
    """The dispatcher awaits it before every read of what is due: when no commit waits, it costs no loop turn."""
    db = Database(tmp_path / "state.db")
    await db.synced()  # what creating the schema committed
    coroutine = db.synced()
    with pytest.raises(StopIteration):
        coroutine.send(None)


async def test_waiters_share_one_sync_and_one_made_during_it_keeps_every_waiter_for_the_next(tmp_path: Path) -> None:
    """A waiter reads the outbox right after `synced()` returns: a commit that landed while it waited is visible
    then, so it must be on the disk too (the review of the first version found the dispatcher reading such a
    row unsynced)."""
    gate = WalGate(shut=True)
    db = Database(tmp_path / "state.db", sync=gate)
    queue_one(db, "n1")
    first, second = asyncio.create_task(db.synced()), asyncio.create_task(db.synced())
    await gate.entered()
    queue_one(db, "n2")  # lands while the first sync runs: that sync may not carry it
    third = asyncio.create_task(db.synced())
    gate.let_through()
    await gate.entered()  # a second sync, for n2, which every waiter waits for
    assert not first.done()
    assert not second.done()
    assert not third.done()
    assert db.wal.pending
    gate.let_through()
    async with asyncio.timeout(10):
        await asyncio.gather(first, second, third)
    assert len(gate.calls) == 2
    assert not db.wal.pending


async def test_the_outbox_read_right_after_on_disk_holds_only_synced_rows(tmp_path: Path) -> None:
    """The dispatcher's pattern, `await on_disk()` then `due()`, with commits landing during the wait."""
    gate = WalGate(shut=True)
    db = Database(tmp_path / "state.db", sync=gate)
    outbox = Outbox(db)
    queue_one(db, "n1")
    reader = asyncio.create_task(outbox.on_disk())
    await gate.entered()
    queue_one(db, "n2")
    queue_one(db, "n3")
    synced_calls: list[int] = []
    gate.let_through()
    await gate.entered()
    synced_calls.append(len(gate.calls))
    gate.fail()  # the sync that should carry n2 and n3 fails: the reader must not read them as sent-able
    with pytest.raises(StoreError):
        async with asyncio.timeout(10):
            await reader
    assert synced_calls == [2]


async def test_a_sync_the_disk_holds_shows_how_long_it_has_run(tmp_path: Path) -> None:
    """What `/v1/status` and `broadcaster_database_sync_running_seconds` show: a disk that hangs holds every
    channel, and the outbox's age alone would not tell it from a platform that is down."""
    gate = WalGate(shut=True)
    db = Database(tmp_path / "state.db", sync=gate)
    assert db.sync_running_seconds() == 0.0
    queue_one(db, "n1")
    assert db.sync_running_seconds() == 0.0  # owed, but nobody waits for it yet: no sync runs
    waiting = asyncio.create_task(db.synced())
    try:
        await gate.entered()
        first = db.sync_running_seconds()
        assert 0 < first <= db.sync_running_seconds()
    finally:
        gate.open_up()  # a failed assertion must not leave the worker waiting out the gate
    async with asyncio.timeout(10):
        await waiting
    assert db.sync_running_seconds() == 0.0


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
    db, gate, failed = await in_doubt(path)
    assert str(path) in str(failed)
    assert "Input/output error" in str(failed)
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
    assert gate.calls == [((tmp_path / "state.db-wal").resolve(), threading.get_ident())]


def test_a_sync_that_fails_as_the_database_closes_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = WalGate(shut=True)
    db = Database(tmp_path / "state.db", sync=gate)
    queue_one(db, "n1")
    gate.fail()  # the word is waiting: the sync on this thread takes it at once
    db.close()
    assert db.doubt() is not None
    assert [r for r in caplog.records if r.levelno == logging.CRITICAL]


async def test_a_database_behind_a_symbolic_link_has_the_wal_beside_its_target_synced(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "state.db").symlink_to(tmp_path / "data" / "real.db")
    gate = WalGate()
    db = Database(tmp_path / "state.db", sync=gate)
    queue_one(db, "n1")
    await db.synced()
    assert [path for path, _ in gate.calls] == [(tmp_path / "data" / "real.db-wal").resolve()]
    assert (tmp_path / "data" / "real.db-wal").exists()
    assert not (tmp_path / "state.db-wal").exists()


async def test_the_broadcaster_s_start_checkpoints_what_a_failed_sync_left_into_the_database_file(
    tmp_path: Path,
) -> None:
    """After a failed sync the WAL may be whole only in the page cache, never to be written: the restarted
    process that sends (it holds the state directory) writes it into the database file afresh, and syncs it,
    before anything is sent."""
    path = tmp_path / "state.db"
    db, _, _ = await in_doubt(path)
    # Another connection open, writing (a tool holding the write lock), so that closing does not checkpoint the WAL
    # as the last connection would; a writer does not stop the start-up's checkpoint either.
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    db.close()
    reader = Database(path)  # a command that does not send (`status`): it checkpoints nothing
    assert notices_in_the_database_file_alone(path, tmp_path / "reader") == []
    again = Database(path, holding_lock=True)
    assert notices_in_the_database_file_alone(path, tmp_path / "again") == ["n1"]  # copied in and synced
    assert [e.notice_id for e in Outbox(again).due("mqtt", datetime.now(UTC))] == ["n1"]
    other.execute("ROLLBACK")
    for db in (reader, again):
        db.close()
    other.close()


def notices_in_the_database_file_alone(path: Path, folder: Path) -> list[str]:
    """The outbox as the database file holds it without its WAL (what a checkpoint wrote there)."""
    folder.mkdir()
    shutil.copyfile(path, folder / "copy.db")
    with closing(sqlite3.connect(folder / "copy.db")) as copy:
        if copy.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone() is None:
            return []  # even the schema is still only in the WAL
        return [row[0] for row in copy.execute("SELECT notice_id FROM outbox")]


def test_a_full_commit_that_fails_to_write_the_wal_puts_the_database_in_doubt(tmp_path: Path) -> None:
    """A real SQLITE_IOERR: the process's file size limit stops the WAL's write (EFBIG, SIGXFSZ ignored). Even with
    no commit owed a sync: earlier bookkeeping frames may be damaged, and recovery stops at the first of them."""
    script = (
        "import os, resource, signal, sys\n"
        "from pathlib import Path\n"
        "from broadcaster.errors import StoreError\n"
        "from broadcaster.store import Database, KeyValueStore\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "path = Path(sys.argv[1])\n"
        "db = Database(path)\n"
        "meta = KeyValueStore(db, 't')\n"
        "with db.transaction(durable=False) as conn:\n"
        "    meta.save(conn, 'owed', 'nothing: bookkeeping')\n"
        "size = os.path.getsize(str(path) + '-wal')\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (size + 8192, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    with db.transaction() as conn:\n"
        "        meta.save(conn, 'big', 'y' * 200_000)\n"
        "except StoreError as exc:\n"
        "    print('refused:', exc)\n"
        "print('doubt:', db.doubt())\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "state.db")], capture_output=True,
                          text=True, timeout=60, check=True)
    assert "refused:" in done.stdout
    assert "doubt: a commit could not write or sync its write-ahead log: disk I/O error" in done.stdout


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
