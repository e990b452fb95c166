"""The PostgreSQL engine on a real server: the watchdog against a black-holed connection, fencing against a
takeover, migrations started twice at once, a newer database refused, and the same schema as SQLite's."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from support.fault_proxy import FaultProxy
from support.postgres import PASSWORD, USER, PostgresServer

from broadcaster import desk
from broadcaster.errors import DatabaseTooNew, Fenced, StoreError
from broadcaster.ha.role import Fence
from broadcaster.outbox import Outbox, OutgoingMessage
from broadcaster.store import Database, KeyValueStore
from broadcaster.store.engine import WRITE_LOCK
from broadcaster.store.postgres import SCHEMA_VERSION, PostgresDatabase, translate

T0 = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
WAIT = 30.0  # the longest any wait here may take before the test fails


def message(notice: str) -> OutgoingMessage:
    return OutgoingMessage(notice, "v1", "mastodon", f"payload {notice}".encode(), 1)


@contextlib.contextmanager
def proxied(server: PostgresServer) -> Iterator[tuple[FaultProxy, Callable[[Callable[[], None]], None]]]:
    """The fault proxy in front of the server, on an event loop of its own thread (the database calls are sync and
    block this one); yields the proxy and a function that runs one of its methods on that loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    proxy = FaultProxy(server.host, server.port, mqtt=False)

    def on_loop(method: Callable[[], None]) -> None:
        async def call() -> None:
            method()
        asyncio.run_coroutine_threadsafe(call(), loop).result(WAIT)

    try:
        asyncio.run_coroutine_threadsafe(proxy.__aenter__(), loop).result(WAIT)
        yield proxy, on_loop
    finally:
        asyncio.run_coroutine_threadsafe(proxy.__aexit__(None, None, None), loop).result(WAIT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


def test_the_watchdog_cuts_a_black_holed_call_and_the_next_call_reconnects(postgres: PostgresServer) -> None:
    name = postgres.create_database()
    with proxied(postgres) as (proxy, on_loop):
        db = PostgresDatabase(f"postgresql://{USER}@{proxy.host}:{proxy.port}/{name}", password=PASSWORD,
                              statement_timeout=1.0)
        try:
            KeyValueStore(db, "t").put("before", "1")
            on_loop(proxy.blackhole)
            started = time.monotonic()
            with pytest.raises(StoreError, match=r"no answer within 1 s"):
                KeyValueStore(db, "t").get("before")
            assert time.monotonic() - started < 3.0  # the timeout and a little; without the watchdog: forever
            with pytest.raises(StoreError):  # a transaction too, while the outage lasts (connect_timeout)
                KeyValueStore(db, "t").put("during", "2")
            on_loop(proxy.heal)
            put_after_the_outage(db)  # a new connection, no restart
            assert KeyValueStore(db, "t").get("before") == "1"
            assert KeyValueStore(db, "t").get("during") is None  # the failed transaction wrote nothing
            assert KeyValueStore(db, "t").get("after") == "3"
        finally:
            db.close()


def put_after_the_outage(db: PostgresDatabase) -> None:
    """The first writes after a heal: the connect begun during the outage ends first (the heal closes it), and
    calls made meanwhile fail at once instead of waiting for it; then a new connection works."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            KeyValueStore(db, "t").put("after", "3")
            return
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # the connector thread's attempt, in this process: nothing to await from sync code


def test_while_the_database_is_unreachable_calls_fail_at_once_instead_of_holding_the_event_loop(
    postgres: PostgresServer,
) -> None:
    """A reconnect on a dead route used to be made by every call, on the caller's (the event loop's) thread, for
    libpq's connect_timeout (2 s at the least): a leader cut off from the database froze its own loop, and its
    MQTT publishes left after its lease had passed (tests/test_ha_partition.py). Now one call at a time starts a
    connect in the background and waits for it at most the statement timeout; the others fail at once."""
    name = postgres.create_database()
    with proxied(postgres) as (proxy, on_loop):
        db = PostgresDatabase(f"postgresql://{USER}@{proxy.host}:{proxy.port}/{name}", password=PASSWORD,
                              statement_timeout=0.5)
        try:
            KeyValueStore(db, "t").put("before", "1")
            on_loop(proxy.blackhole)
            started = time.monotonic()
            for _ in range(10):
                with pytest.raises(StoreError):
                    KeyValueStore(db, "t").get("before")
            held = time.monotonic() - started
            # The watchdog's cut (0.5 s), then at most one wait of 0.5 s per connect attempt (each lasts libpq's
            # 2 s): about 1 s in all; before, 0.5 s + 9 x 2 s.
            assert held < 2.5, f"10 calls held the caller {held:.1f} s"
            on_loop(proxy.heal)
            put_after_the_outage(db)
            assert KeyValueStore(db, "t").get("after") == "3"
        finally:
            db.close()


def test_a_broken_connection_is_replaced_on_the_next_call(postgres: PostgresServer) -> None:
    db = PostgresDatabase(postgres.url(postgres.create_database()), password=PASSWORD)
    try:
        own_pid = db.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(postgres.conninfo(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (own_pid,))
        with pytest.raises(StoreError):
            db.conn.execute("SELECT 1")
        assert db.conn.execute("SELECT pg_backend_pid()").fetchone()[0] != own_pid
    finally:
        db.close()


def test_placeholders_become_psycopgs_outside_quotes_and_percent_signs_stay_literal() -> None:
    assert translate("SELECT a FROM t WHERE b = ? AND c LIKE '50%?' AND d = ?") == (
        "SELECT a FROM t WHERE b = %s AND c LIKE '50%%?' AND d = %s")
    assert translate('SELECT "odd?name" FROM t WHERE x % 2 = ?') == 'SELECT "odd?name" FROM t WHERE x %% 2 = %s'


# -- Fencing ------------------------------------------------------------------------------------------------------


def set_lease(server: PostgresServer, name: str, holder: str, epoch: int) -> None:
    """What an acquisition commits (broadcaster/ha/lease.py), from another connection."""
    with psycopg.connect(server.conninfo(name), autocommit=True) as other:
        other.execute("UPDATE leader_lease SET holder = %s, epoch = %s, expires_at = now() + interval '15 s'"
                      " WHERE name = 'leader'", (holder, epoch))


def test_a_takeover_between_two_transactions_fences_the_former_leader(postgres: PostgresServer) -> None:
    name = postgres.create_database()
    mine = Fence("a", 1)
    db = PostgresDatabase(postgres.url(name), password=PASSWORD, fence=lambda: mine)
    try:
        set_lease(postgres, name, "a", 1)
        with db.transaction() as conn:
            Outbox.enqueue(conn, [message("first")], T0)
        set_lease(postgres, name, "b", 2)  # another instance took over
        with pytest.raises(Fenced) as fenced, db.transaction() as conn:
            Outbox.enqueue(conn, [message("second")], T0)
        assert (fenced.value.expected, fenced.value.found) == (mine, Fence("b", 2))
        with pytest.raises(Fenced):
            Outbox(db).begin_attempt(Outbox(db).due("mastodon", T0)[0].key, T0)  # the claim before a send
        assert [e.notice_id for e in Outbox(db).due("mastodon", T0)] == ["first"]  # "second" was never written
        assert not Outbox(db).due("mastodon", T0)[0].uncertain
        # What a standby may write, a fenced instance may too: an operator's request, a session.
        assert desk.submit(db, "announce", {"texts": {"en": "x"}}) == 1
        KeyValueStore(db, "bluesky").put("session", "s")
    finally:
        db.close()


def test_no_fence_means_not_leading_and_no_ha_means_no_check(postgres: PostgresServer) -> None:
    name = postgres.create_database()
    standby = PostgresDatabase(postgres.url(name), password=PASSWORD, fence=lambda: None)
    plain = PostgresDatabase(postgres.url(name), password=PASSWORD)  # no [ha]: one instance, never fenced
    try:
        with pytest.raises(Fenced), standby.transaction() as conn:
            Outbox.enqueue(conn, [message("x")], T0)
        with plain.transaction() as conn:
            Outbox.enqueue(conn, [message("y")], T0)
        assert [e.notice_id for e in Outbox(plain).due("mastodon", T0)] == ["y"]
    finally:
        standby.close()
        plain.close()


def test_a_leaders_transaction_holds_the_takeover_until_it_commits(postgres: PostgresServer) -> None:
    name = postgres.create_database()
    db = PostgresDatabase(postgres.url(name), password=PASSWORD, fence=lambda: Fence("a", 1))
    set_lease(postgres, name, "a", 1)
    took_over = threading.Event()
    failure: list[BaseException] = []

    def take_over() -> None:
        try:
            set_lease(postgres, name, "b", 2)
            took_over.set()
        except BaseException as exc:
            failure.append(exc)

    taker = threading.Thread(target=take_over)
    try:
        with db.transaction() as conn:
            Outbox.enqueue(conn, [message("in-flight")], T0)
            taker.start()
            wait_until_blocked(postgres, name)  # the takeover's UPDATE waits for this transaction's FOR SHARE
            assert not took_over.is_set()
        assert took_over.wait(WAIT), failure
        # The leader's commit landed before the takeover, never after it; its next one is fenced.
        assert [e.notice_id for e in Outbox(db).due("mastodon", T0)] == ["in-flight"]
        with pytest.raises(Fenced), db.transaction() as conn:
            Outbox.enqueue(conn, [message("late")], T0)
    finally:
        taker.join(WAIT)
        db.close()


def wait_until_blocked(server: PostgresServer, name: str) -> None:
    """Until a session's UPDATE of the lease waits for a lock (the server says so in pg_stat_activity)."""
    deadline = time.monotonic() + WAIT
    with psycopg.connect(server.conninfo(name), autocommit=True) as watcher:
        while time.monotonic() < deadline:
            row = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                  " AND query LIKE 'UPDATE leader_lease%%'").fetchone()
            if row is not None and row[0] == 1:
                return
            time.sleep(0.01)
    pytest.fail("the takeover never waited for the leader's transaction")


# -- Schema --------------------------------------------------------------------------------------------------------


def test_two_instances_started_at_once_migrate_once(postgres: PostgresServer) -> None:
    url = postgres.url(postgres.create_database())
    start = threading.Barrier(3)
    opened: list[int] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            start.wait(WAIT)
            db = PostgresDatabase(url, password=PASSWORD)
            opened.append(db.schema_version)
            db.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert errors == []
    assert opened == [SCHEMA_VERSION] * 3
    db = PostgresDatabase(url, password=PASSWORD)
    try:
        assert db.conn.execute("SELECT holder, epoch FROM leader_lease").fetchall() == [(None, 0)]
    finally:
        db.close()


def test_a_database_of_a_newer_release_is_refused_before_anything_is_read(postgres: PostgresServer) -> None:
    name = postgres.create_database()
    PostgresDatabase(postgres.url(name), password=PASSWORD).close()
    with psycopg.connect(postgres.conninfo(name), autocommit=True) as other:
        other.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
        other.execute("DROP TABLE outbox")  # a newer release's change: nothing of it may be touched
    with pytest.raises(DatabaseTooNew) as refused:
        PostgresDatabase(postgres.url(name), password=PASSWORD)
    assert (refused.value.version, refused.value.newest) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)


def test_both_engines_have_the_same_tables_and_columns(postgres: PostgresServer, tmp_path: Path) -> None:
    name = postgres.create_database()
    PostgresDatabase(postgres.url(name), password=PASSWORD).close()
    Database(tmp_path / "broadcaster.db").close()
    with contextlib.closing(sqlite3.connect(tmp_path / "broadcaster.db")) as lite:
        tables = [t for (t,) in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                               " AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        sqlite_columns = {t: sorted(row[1] for row in lite.execute(f"PRAGMA table_info({t})")) for t in tables}
    with psycopg.connect(postgres.conninfo(name)) as pg:
        rows = pg.execute("SELECT table_name, column_name FROM information_schema.columns"
                          " WHERE table_schema = 'public'").fetchall()
    pg_columns: dict[str, list[str]] = {}
    for table, column in rows:
        pg_columns.setdefault(table, []).append(column)
    pg_columns["outbox"].remove("rowid")  # SQLite's is implicit
    assert {t: sorted(c) for t, c in pg_columns.items()} == sqlite_columns


def test_one_idempotency_key_sent_to_two_instances_at_once_queues_one_request(postgres: PostgresServer) -> None:
    """desk.submit reads the key, then inserts: two instances must not both read "unknown" (the write lock, as
    SQLite's BEGIN IMMEDIATE, makes the pair atomic across connections)."""
    url = postgres.url(postgres.create_database())
    instances = [PostgresDatabase(url, password=PASSWORD) for _ in range(2)]
    rounds = 25
    ids: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def submit(which: int) -> None:
        for n in range(rounds):
            start.wait(WAIT)
            ids[which].append(desk.submit(instances[which], "announce", {"texts": {"en": f"n{n}"},
                                                                         "idempotency_key": f"key-{n}"}))

    try:
        threads = [threading.Thread(target=submit, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert ids[0] == ids[1]  # each key answered with the same request at both instances
        assert instances[0].conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == rounds
    finally:
        for db in instances:
            db.close()


def test_a_transaction_that_cannot_take_the_write_lock_leaves_the_connection_usable(
    postgres: PostgresServer,
) -> None:
    """Another session holds the write lock past the lock timeout: this transaction fails, as SQLite's does past
    its busy timeout, and the next one (the lock free again) commits."""
    name = postgres.create_database()
    db = PostgresDatabase(postgres.url(name), password=PASSWORD, statement_timeout=1.0)
    try:
        with psycopg.connect(postgres.conninfo(name)) as other:  # a transaction, holding the lock until it ends
            other.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            with pytest.raises(StoreError, match=r"canceling statement due to (lock|statement) timeout"):
                KeyValueStore(db, "t").put("blocked", "1")
        KeyValueStore(db, "t").put("after", "2")
        with psycopg.connect(postgres.conninfo(name)) as reader:
            assert reader.execute("SELECT key, value FROM meta WHERE key LIKE 't:%'").fetchall() == [("t:after", "2")]
    finally:
        db.close()


def test_a_connection_lost_inside_a_transaction_runs_nothing_of_it_outside_one(postgres: PostgresServer) -> None:
    """The rest of a transaction whose connection died must fail, never run on a new connection in autocommit,
    where each statement would commit on its own (half a tick)."""
    name = postgres.create_database()
    db = PostgresDatabase(postgres.url(name), password=PASSWORD)

    def connection_killed_half_way() -> None:
        with db.transaction() as conn:
            KeyValueStore(db, "t").save(conn, "first", "1")
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            with psycopg.connect(postgres.conninfo(name), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with contextlib.suppress(StoreError):  # a caller that goes on after an error
                KeyValueStore(db, "t").save(conn, "second", "2")
            KeyValueStore(db, "t").save(conn, "third", "3")

    try:
        with pytest.raises(StoreError):
            connection_killed_half_way()
        assert [KeyValueStore(db, "t").get(key) for key in ("first", "second", "third")] == [None, None, None]
    finally:
        db.close()


def test_a_leaders_transaction_after_its_lease_expired_in_the_database_is_fenced(postgres: PostgresServer) -> None:
    """Holder and epoch unchanged, but the lease's time is up by the database's clock: any instance may take it at
    its next attempt, so nothing of this one may commit (a claim before a send above all), even though nobody has
    taken it yet. The check runs on the clock of the moment the fence is read (a transaction that waited for the
    write lock reads it after the wait), not of BEGIN."""
    name = postgres.create_database()
    db = PostgresDatabase(postgres.url(name), password=PASSWORD, fence=lambda: Fence("a", 1))
    try:
        set_lease(postgres, name, "a", 1)
        with db.transaction() as conn:
            Outbox.enqueue(conn, [message("first")], T0)
        with psycopg.connect(postgres.conninfo(name), autocommit=True) as other:
            other.execute("UPDATE leader_lease SET expires_at = clock_timestamp() - interval '1 s'")
        with pytest.raises(Fenced), db.transaction() as conn:
            Outbox.enqueue(conn, [message("late")], T0)
        with pytest.raises(Fenced):
            Outbox(db).begin_attempt(Outbox(db).due("mastodon", T0)[0].key, T0)
        assert [(e.notice_id, e.uncertain) for e in Outbox(db).due("mastodon", T0)] == [("first", False)]
        # Expiring while the transaction waits for the write lock: the fence is read after the wait.
        set_lease(postgres, name, "a", 1)
        with psycopg.connect(postgres.conninfo(name), autocommit=True) as other:
            other.execute("UPDATE leader_lease SET expires_at = clock_timestamp() + interval '0.5 s'")
            other.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
            timer = threading.Timer(1.0, lambda: other.execute("SELECT pg_advisory_unlock(%s)", (WRITE_LOCK,)))
            timer.start()
            try:
                with pytest.raises(Fenced), db.transaction() as conn:
                    Outbox.enqueue(conn, [message("waited")], T0)
            finally:
                timer.join(WAIT)
        assert [e.notice_id for e in Outbox(db).due("mastodon", T0)] == ["first"]
    finally:
        db.close()
