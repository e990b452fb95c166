"""The SQLite database that holds the committed state, feed bookkeeping and the outbox, and its transactions.

One file, so that a tick commits its new state and the notices it produced in one transaction: after a crash
either both are there or neither is, and a restart neither forgets nor re-announces anything.

The database runs in WAL mode with `synchronous=FULL`; start-up refuses to run otherwise, because a committed
notice must survive a power cut.

`Database.conn` is for the storage modules only (`tests/test_layering.py` holds the list): everything else reads
through their named functions, which take the `Database`, and writes through the connection a transaction hands
out, passed back to them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from broadcaster.errors import StoreError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    kind TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS feeds (
    name TEXT PRIMARY KEY,
    etag TEXT, last_modified TEXT,
    feed_timestamp TEXT, last_ok_at TEXT,
    last_error TEXT, last_error_at TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    -- JSON list: the records the feed's last good fetch skipped, one reason each (added in place, see _migrate)
    problems TEXT
);
-- The snapshot each feed's last committed fetch parsed to, with a hash of its body: a 304 Not Modified (or the
-- same bytes again) re-applies it, in a new process too, so it counts as a good fetch of the same content.
-- `parse_key` hashes what the parse depended on (the network's ids, the feed's settings, the release).
CREATE TABLE IF NOT EXISTS feed_snapshots (
    name TEXT PRIMARY KEY, digest BLOB NOT NULL, parse_key BLOB NOT NULL, snapshot BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    notice_id TEXT NOT NULL, version TEXT NOT NULL, channel TEXT NOT NULL, part INTEGER NOT NULL,
    priority INTEGER NOT NULL, payload BLOB NOT NULL, created_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL, remote_id TEXT, sent_at TEXT, error TEXT,
    -- 1 when the post opens a thread that later notices about the same subject reply to
    starts_thread INTEGER NOT NULL DEFAULT 1,
    -- 1 once an attempt may have reached the platform (timeout, reset after sending, 5xx): a retry could
    -- duplicate unless the platform deduplicates
    uncertain INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_thread ON outbox (channel, notice_id, starts_thread, part);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, channel, priority, next_attempt_at);
-- A channel's latest rows (the public site's feeds list the recent notices): added without a schema version.
CREATE INDEX IF NOT EXISTS outbox_recent ON outbox (channel, created_at);
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, digest TEXT NOT NULL);
-- Topics cleared within the retained TTL: a broker that crashed may bring their old payload back.
CREATE TABLE IF NOT EXISTS retained_cleared (topic TEXT PRIMARY KEY, cleared_at TEXT NOT NULL);
-- Operator requests (announce, correct) from the command line, carried out by the running broadcaster.
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, action TEXT NOT NULL, body BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', result TEXT, error TEXT, done_at TEXT
);
-- Idempotency keys of operator requests (broadcaster/idempotency.py), kept 24 h: the answer given (admin API)
-- or the request carrying it out (command line). Added without a schema version: older databases gain it.
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, created_at TEXT NOT NULL,
    status INTEGER, body BLOB, request_id INTEGER,
    PRIMARY KEY (scope, key)
);
"""


class Database:
    """One SQLite connection, used from the event loop thread only (statements are short)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only: the database holds post texts before they are public, and platform sessions.
            path.touch(mode=0o600, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per tick.
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=5000")
            self._require_durability()
            self._synchronous = "FULL"  # what the connection runs with now (see `transaction`)
            self.conn.executescript(_SCHEMA)
            self._migrate()
            self._check_schema_version()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(path, f"cannot open the state database: {exc}") from exc

    def _require_durability(self) -> None:
        mode = self.conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = self.conn.execute("PRAGMA synchronous").fetchone()[0]
        if str(mode).lower() != "wal" or int(sync) != 2:
            raise StoreError(self.path, f"needs journal_mode=WAL and synchronous=FULL, got {mode}/{sync}")

    def _migrate(self) -> None:
        """Bring a database made by an earlier release up to `_SCHEMA`: columns added since are added in place
        (additive, so the schema version stays and an older release can still read the file)."""
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(feeds)")}
        if "problems" not in columns:
            self.conn.execute("ALTER TABLE feeds ADD COLUMN problems TEXT")

    def _check_schema_version(self) -> None:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(self.path, f"schema version {row[0]} is not {SCHEMA_VERSION}; no migration known")

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception.

        A database error inside (a full disk, a lock held too long) becomes a StoreError, the one error callers
        handle; anything else propagates as it is. Either way nothing of the transaction remains.

        `durable=False` commits without waiting for the disk (WAL with `synchronous=NORMAL` for this one
        commit): it still survives the process being killed, and only a power cut or an OS crash can lose it.
        Only bookkeeping whose loss repeats idempotent work may ask for it (an MQTT notice marked sent, the record
        of retained publications, a feed's fetch record): each FULL commit blocks the event loop for an fsync,
        2-4 ms on this project's machines, in the middle of an emergency's publishes.
        """
        # FULL is set again before the next durable commit, not after this one: a failure to set it must not
        # turn a transaction that committed into an error (callers take StoreError as "nothing committed").
        self._set_synchronous("FULL" if durable else "NORMAL")
        with self._transaction() as conn:
            yield conn

    def _set_synchronous(self, level: str) -> None:
        """Raises StoreError before the transaction begins when the level cannot be set (nothing is written)."""
        if self._synchronous == level:
            return
        try:
            self.conn.execute(f"PRAGMA synchronous={level}")
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"cannot set synchronous={level}: {exc}") from exc
        self._synchronous = level

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"cannot start a transaction: {exc}") from exc
        try:
            yield self.conn
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(self.path, f"write failed: {exc}") from exc
        except BaseException:
            self._rollback()
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(self.path, f"commit failed: {exc}") from exc

    def _rollback(self) -> None:
        # SQLite rolls some failures back by itself (SQLITE_FULL, for one); a second ROLLBACK would then raise
        # "no transaction is active" and hide the real error.
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of the database at `source` in a new file `target`, read without writing to `source`
    (`preview` runs the pipeline on such a copy while the service may be using the original).

    Raises:
        StoreError: `source` cannot be read or `target` written.
    """
    try:
        with closing(sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)) as original, \
                closing(sqlite3.connect(target)) as copy:
            original.backup(copy)
    except sqlite3.Error as exc:
        raise StoreError(source, f"cannot copy the state database: {exc}") from exc
