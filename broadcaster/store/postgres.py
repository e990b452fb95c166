"""The PostgreSQL state database: the same tables and transactions as SQLite's (`database.py`), shared by every
instance of a high-availability deployment.

One connection per instance, used from the event-loop thread exactly like the SQLite one: psycopg 3's sync API,
statements are short. A sync call on a connection whose packets vanish (a partition, a dead route) would block the
event loop forever, so every call runs under a watchdog: when one takes longer than `statement_timeout` the
watchdog thread shuts the connection's socket down, psycopg raises, the call becomes a StoreError, and the next
call opens a new connection. libpq's `connect_timeout`, TCP keepalives and `tcp_user_timeout` bound the connect
and a dead peer; the server's `statement_timeout`, `lock_timeout` and `idle_in_transaction_session_timeout` bound
what a session can hold (a partitioned instance's transaction cannot keep its locks, nor stop a takeover, for
longer). docs/design.md ("The PostgreSQL engine") has the trade-off.

Every write transaction takes one advisory lock (`engine.WRITE_LOCK`): one writer at a time across all instances,
as SQLite's BEGIN IMMEDIATE gives within a file, so a check-then-insert (an idempotency key) stays one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import conninfo as pg_conninfo

from broadcaster.errors import Fenced, StoreError
from broadcaster.ha.role import Fence
from broadcaster.store import migrations, postgres_steps
from broadcaster.store.engine import MIGRATION_LOCK, WRITE_LOCK, Cursor

log = logging.getLogger(__name__)

#: The schema version this release brings a PostgreSQL database to (the same number as SQLite's).
SCHEMA_VERSION = migrations.newest(postgres_steps.STEPS)

_VERSION_KEY = "schema_version"


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """SQLite's `?` placeholders as psycopg's `%s` (and a literal `%` doubled), outside quoted strings and names."""
    out: list[str] = []
    quote = ""
    for char in sql:
        if quote:
            out.append("%%" if char == "%" else char)
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    return "".join(out)


def describe(url: str) -> str:
    """`url` as host:port/database, for messages and logs: built from its parts, so no secret can slip in."""
    parts = urlsplit(url)
    return f"postgresql://{parts.hostname or ''}:{parts.port or 5432}{parts.path or '/'}"


class Watchdog:
    """A thread that shuts a socket down when the call it guards outlives its deadline.

    One thread per connection, idle between calls: `guard` sets a deadline (waking the thread only when it sleeps
    without one) and clears it; the thread sleeps until the deadline and, if it is still set, fires.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._target: Callable[[], None] | None = None
        self._idle = True  # the thread waits without a deadline: a new one must wake it
        self._closed = False
        self.fired = 0  # how many calls it cut (the tests read it)
        self._thread = threading.Thread(target=self._run, name="pg-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def guard(self, on_expiry: Callable[[], None]) -> Iterator[None]:
        with self._cond:
            self._deadline = time.monotonic() + self.timeout
            self._target = on_expiry
            if self._idle:
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._deadline = None
                self._target = None

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._deadline is None:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                target, self._deadline, self._target = self._target, None, None
                if target is not None:
                    self.fired += 1
                    target()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()


def _shut_down(fd: int) -> None:
    """Shut the connection's socket down through a duplicate of its descriptor (the connection keeps its own, which
    psycopg closes): the blocked recv/send returns at once with an error."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


class PostgresConnection:
    """One psycopg connection behind the storage modules' `Connection` interface: `?` placeholders, every call
    under the watchdog, any database error a StoreError, and a new connection after a broken one."""

    def __init__(self, conninfo: str, where: str, timeout: float) -> None:
        self._conninfo = conninfo
        self.where = where
        self._watchdog = Watchdog(timeout)
        self._raw: psycopg.Connection[Any] | None = None
        self._fd = -1
        #: Set by `PostgresDatabase` between BEGIN and COMMIT/ROLLBACK: no reconnect in between.
        self.transaction_open = False
        self._connector = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-connect")
        self._connecting: Future[psycopg.Connection[Any]] | None = None  # a connect under way in `_connector`
        self._connected_once = False

    @property
    def watchdog(self) -> Watchdog:
        return self._watchdog

    def _connection(self) -> psycopg.Connection[Any]:
        if self._raw is not None and not self._raw.closed:
            return self._raw
        if self.transaction_open:
            # Its transaction went with the old connection: a new one would run the rest outside any transaction.
            raise StoreError(self.where, "the connection was lost inside a transaction: nothing of it was committed")
        # A reconnect runs in a thread of its own. The call that starts it waits for it at most the watchdog's
        # timeout, the longest any call may hold the event loop; calls made while it is still under way fail at
        # once. Waiting in the loop for libpq's connect_timeout (2 s at the least), call after call while the route
        # is dead, held everything else the loop runs, and what a leader had handed to the loop before (an MQTT
        # publish, a request it checked may_act() for) left after its lease had passed to another instance
        # (docs/ha.md). An attempt that failed is replaced by a new one. The first connect, when the database is
        # opened, is waited for whole (connect_timeout bounds it).
        if self._connecting is not None and self._connecting.done() and self._connecting.exception() is not None:
            self._connecting = None
        started = self._connecting is None
        if self._connecting is None:
            self._connecting = self._connector.submit(psycopg.connect, self._conninfo, autocommit=True)
        wait = None if not self._connected_once else self._watchdog.timeout if started else 0
        try:
            raw = self._connecting.result(timeout=wait)
        except FutureTimeout:
            raise StoreError(self.where, f"cannot connect: no answer within {self._watchdog.timeout:g} s"
                                         " (still trying)") from None
        except psycopg.Error as exc:
            self._connecting = None
            raise StoreError(self.where, f"cannot connect: {_reason(exc)}") from exc
        self._connecting = None
        self._connected_once = True
        self._raw = raw
        self._fd = raw.pgconn.socket
        return raw

    @property
    def in_transaction(self) -> bool:
        raw = self._raw
        return raw is not None and not raw.closed and raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        return self._call(lambda raw: raw.execute(translate(sql), parameters))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        def run(raw: psycopg.Connection[Any]) -> Cursor:
            cursor = raw.cursor()
            cursor.executemany(translate(sql), parameters)
            return cursor
        return self._call(run)

    def execute_plain(self, sql: str) -> Cursor:
        """A statement (or several, `;`-separated) with no parameters, sent as written: no placeholder translation."""
        return self._call(lambda raw: raw.execute(sql))

    def _call(self, run: Callable[[psycopg.Connection[Any]], Cursor]) -> Cursor:
        raw = self._connection()
        fired_before = self._watchdog.fired
        fd = self._fd
        try:
            with self._watchdog.guard(lambda: _shut_down(fd)):
                cursor = run(raw)
        except psycopg.Error as exc:
            if self._watchdog.fired != fired_before:
                self._drop()
                raise StoreError(self.where, f"no answer within {self._watchdog.timeout:g} s: connection closed"
                                             " (the next call opens a new one)") from exc
            if raw.broken or raw.closed:
                self._drop()
            raise StoreError(self.where, _reason(exc)) from exc
        if self._watchdog.fired != fired_before:
            # The answer came as the watchdog fired: the socket is shut, and a transaction cannot go on without it.
            self._drop()
            raise StoreError(self.where, f"no answer within {self._watchdog.timeout:g} s: connection closed")
        return cursor

    def _drop(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            with contextlib.suppress(Exception):
                raw.close()

    def rollback(self) -> None:
        """ROLLBACK when a transaction is open; a broken connection (its transaction gone with it) is dropped."""
        if not self.in_transaction:
            return
        try:
            self.execute_plain("ROLLBACK")
        except StoreError:
            self._drop()

    def close(self) -> None:
        self._drop()
        self._watchdog.close()
        if self._connecting is not None:  # a connect still under way: its connection is closed when it comes
            self._connecting.add_done_callback(_close_connected)
        self._connector.shutdown(wait=False)


def _close_connected(connecting: Future[psycopg.Connection[Any]]) -> None:
    with contextlib.suppress(Exception):
        connecting.result().close()


def _reason(exc: psycopg.Error) -> str:
    # The first line: psycopg adds hints and context lines that say nothing more to an operator.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def conninfo_for(url: str, password: str | None, timeout: float) -> str:
    """libpq parameters: the URL's, the password apart, and the limits that keep a dead link from holding us or
    our locks (docs/design.md, "The PostgreSQL engine")."""
    seconds = max(1, math.ceil(timeout))
    # The server's own limits end a statement or a lock wait a little before the watchdog would cut the link: a
    # clean error, the connection kept. The watchdog stays the backstop for a link that carries nothing.
    server_ms = max(100, int(timeout * 800))
    server_limits = (f"-c statement_timeout={server_ms}ms -c lock_timeout={server_ms}ms"
                     f" -c idle_in_transaction_session_timeout={2 * seconds}s")
    extra: dict[str, Any] = {
        "connect_timeout": seconds,
        "keepalives": 1, "keepalives_idle": seconds, "keepalives_interval": 1, "keepalives_count": 3,
        "tcp_user_timeout": seconds * 1000,
        "application_name": "broadcaster",
        "options": server_limits,
    }
    if password is not None:
        extra["password"] = password
    try:
        return pg_conninfo.make_conninfo(url, **extra)
    except psycopg.ProgrammingError as exc:
        raise StoreError(describe(url), f"not a PostgreSQL URL: {_reason(exc)}") from None


#: The oldest server this backend is tested with (`GENERATED ... AS IDENTITY`, `COLLATE "C"` exist since 10).
OLDEST_SERVER = 150000


def probe(url: str, *, password: str | None, timeout: float) -> tuple[str, int]:
    """The server's version and the database's schema version (0: not migrated yet), read without changing
    anything: `broadcaster check`.

    Raises:
        StoreError: the server cannot be reached or read, or it is older than PostgreSQL 15.
    """
    conn = PostgresConnection(conninfo_for(url, password, timeout), describe(url), timeout)
    try:
        number, shown = conn.execute("SELECT current_setting('server_version_num')::int,"
                                     " current_setting('server_version')").fetchone()
        if int(number) < OLDEST_SERVER:
            raise StoreError(describe(url), f"PostgreSQL {shown} is too old: 15 or newer is needed")
        if conn.execute("SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'meta'"
                        ).fetchone() is None:
            return str(shown), 0
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_VERSION_KEY,)).fetchone()
        return str(shown), int(row[0]) if row and str(row[0]).isdigit() else 0
    finally:
        conn.close()


#: What a leader-only transaction reads first (its lock waits for a takeover, a takeover waits for it), and whether
#: the lease is still unexpired by the database's clock at that moment: clock_timestamp(), not now(), which is the
#: time of BEGIN, before the wait for the write lock.
_READ_FENCE = ("SELECT holder, epoch, expires_at > clock_timestamp() FROM leader_lease WHERE name = 'leader'"
               " FOR SHARE")


def _last_result(cursor: Cursor) -> Cursor:
    """The cursor moved to the result of the last statement it ran (psycopg keeps each statement's)."""
    assert isinstance(cursor, psycopg.Cursor)
    while cursor.nextset():
        pass
    return cursor


class PostgresDatabase:
    """The state database on a PostgreSQL server (`Store`), brought up to `SCHEMA_VERSION` on opening."""

    engine = "postgresql"

    def __init__(self, url: str, *, password: str | None = None, statement_timeout: float = 5.0,
                 fence: Callable[[], Fence | None] | None = None) -> None:
        """Connect, refuse a database of a newer release (DatabaseTooNew, before reading anything else) and
        migrate an older one, under an advisory lock (two instances started at once migrate once).

        Raises:
            DatabaseTooNew: the database is at a version above this release's.
            StoreError: the server cannot be reached or the database migrated.
        """
        self.url = url
        self._where = describe(url)
        self.statement_timeout = statement_timeout
        self.fence = fence
        self._conn = PostgresConnection(conninfo_for(url, password, statement_timeout), self._where,
                                        statement_timeout)
        try:
            schema = PostgresSchema(self)
            migrations.refuse_newer(self._where, schema.version(), postgres_steps.STEPS)
            #: The schema version the database is at (always `SCHEMA_VERSION` once open).
            self.schema_version = migrations.migrate(schema, postgres_steps.STEPS, keep_copy=False)
        except BaseException:
            self._conn.close()
            raise

    @property
    def conn(self) -> PostgresConnection:
        return self._conn

    @property
    def where(self) -> str:
        return self._where

    @contextmanager
    def transaction(
        self, *, durable: bool = True, sync_later: bool = False, leader_only: bool = True,
    ) -> Iterator[PostgresConnection]:
        """BEGIN ... COMMIT, or ROLLBACK on any exception; a database error inside becomes a StoreError.

        Under the write lock (one writer at a time, like SQLite's BEGIN IMMEDIATE). With `leader_only` and a
        `fence`, the first statement reads the lease row FOR SHARE and raises `Fenced` unless it names this
        instance's holder and epoch and has not expired by the database's clock: a takeover (an UPDATE of that
        row) waits for this transaction, so no commit of a former leader lands after it. `durable=False` commits
        without waiting for the WAL flush (synchronous_commit off): only a server crash can lose it, as SQLite's NORMAL.
        `sync_later` changes nothing here: the commit is durable when it returns (it waits on the server, not on
        this process's disk), so `synced()` has nothing left to wait for.
        """
        fence = self.fence if leader_only else None
        with self._transaction(WRITE_LOCK, durable=durable, then=_READ_FENCE if fence else "") as (conn, opened):
            if fence is not None:
                self._check_fence(opened, fence())
            yield conn

    @contextmanager
    def _transaction(self, lock: int, *, durable: bool = True,
                     then: str = "") -> Iterator[tuple[PostgresConnection, Cursor]]:
        """The transaction, and the result of its opening round trip (BEGIN, the lock, then `then`)."""
        conn = self._conn
        begin = "BEGIN;" + ("" if durable else " SET LOCAL synchronous_commit TO off;")
        try:
            # One round trip: a leader's transaction (most of them) reads its fence in the same one.
            opened = conn.execute_plain(f"{begin} SELECT pg_advisory_xact_lock({lock}); {then}")
        except StoreError:
            conn.rollback()  # BEGIN may have run before the lock failed: never leave a transaction open
            raise
        conn.transaction_open = True
        try:
            try:
                yield conn, opened
            except BaseException:
                conn.rollback()
                raise
            try:
                conn.execute_plain("COMMIT")
            except StoreError as exc:
                conn.rollback()
                raise StoreError(self._where, f"commit failed: {exc}") from exc
        finally:
            conn.transaction_open = False

    async def synced(self) -> None:
        """Every commit is durable when it returns (see `transaction`)."""

    def doubt(self) -> str | None:
        """None: a failed commit is the server's to recover from (see `synced`)."""
        return None

    def sync_running_seconds(self) -> float:
        """0: a commit is durable when COMMIT returns; nothing syncs afterwards."""
        return 0.0

    def restart_identities(self, conn: PostgresConnection) -> None:
        """After rows were copied in with their ids (`storage move`), new ones continue after the highest."""
        for table, column in (("outbox", "rowid"), ("requests", "id")):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"  # noqa: S608 (constants)
                         f" COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)")

    def _check_fence(self, opened: Cursor, expected: Fence | None) -> None:
        row = _last_result(opened).fetchone()
        found = None if row is None or row[0] is None else Fence(str(row[0]), int(row[1]))
        if expected is None or found != expected:
            raise Fenced(self._where, expected, found)
        if not row[2]:
            # Ours, but its time is up: another instance may take it at its next attempt, and a claim committed
            # now would let a send leave after that (the takeover waits only for this transaction, not the send).
            raise Fenced(self._where, expected, f"{found}, expired by the database's clock")

    def close(self) -> None:
        self._conn.close()


class PostgresSchema:
    """The PostgreSQL database as a migration's target (store/migrations.py): the version in `meta`, each step in a
    transaction under the migration's advisory lock that first reads the version again (another instance may
    have applied the step meanwhile). No copy is kept: a PostgreSQL database is backed up by its operator
    (pg_dump), and every step is one transaction."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    @property
    def where(self) -> str:
        return self.db.where

    def version(self) -> int:
        conn = self.db.conn
        # pg_tables read by a query, not to_regclass(): a query sees what committed before it began, and the
        # catalog cache to_regclass() reads may not yet know a table another instance's migration just made.
        if conn.execute("SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'meta'"
                        ).fetchone() is None:
            return 0
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_VERSION_KEY,)).fetchone()
        try:
            return int(row[0]) if row else 0
        except ValueError as exc:
            raise StoreError(self.where, f"the recorded schema version is not a number: {exc}") from exc

    def is_new(self) -> bool:
        row = self.db.conn.execute("SELECT 1 FROM pg_tables WHERE schemaname = current_schema() LIMIT 1").fetchone()
        return row is None

    def keep_copy(self, newest: int) -> str:
        raise StoreError(self.where, "a PostgreSQL database is not copied before migrating: back it up (pg_dump)")

    def apply(self, step: migrations.Step[PostgresConnection]) -> None:
        with self.db._transaction(MIGRATION_LOCK) as (conn, _):
            if self.version() >= step.version:
                return  # another instance applied it while we waited for the lock
            step.apply(conn)
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET"
                         " value = excluded.value", (_VERSION_KEY, str(step.version)))
