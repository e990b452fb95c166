"""Copying a whole state from one database into another, row for row: `broadcaster storage move` (SQLite into
PostgreSQL) and `preview` on a PostgreSQL deployment (into a throw-away SQLite file).

Every table a state is made of, with every column, including the order rows were queued in (`outbox.rowid`) and
request ids, so ids handed out before the move stay valid after it. The lease (`leader_lease`) and the schema
version stay the target's own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from broadcaster.errors import StoreError
from broadcaster.lock import InstanceLock
from broadcaster.store.database import Database
from broadcaster.store.engine import Connection, Store

#: Each table of a state, with its columns, in the order they are copied.
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("meta", ("key", "value")),
    ("state", ("kind", "key", "body")),
    ("feeds", ("name", "etag", "last_modified", "feed_timestamp", "last_ok_at", "last_error", "last_error_at",
               "consecutive_failures", "problems")),
    ("feed_snapshots", ("name", "digest", "parse_key", "snapshot")),
    ("retained", ("topic", "digest")),
    ("retained_cleared", ("topic", "cleared_at")),
    ("outbox", ("rowid", "key", "notice_id", "version", "channel", "part", "priority", "payload", "created_at",
                "status", "attempts", "next_attempt_at", "remote_id", "sent_at", "error", "starts_thread",
                "uncertain")),
    ("requests", ("id", "created_at", "action", "body", "status", "result", "error", "done_at")),
    ("idempotency", ("scope", "key", "fingerprint", "created_at", "status", "body", "request_id")),
)

_BATCH = 1000
_NOT_COPIED = "key <> 'schema_version'"  # meta's schema version is the target's own


def _select(table: str, columns: tuple[str, ...]) -> str:
    where = f" WHERE {_NOT_COPIED}" if table == "meta" else ""
    return f"SELECT {', '.join(columns)} FROM {table}{where} ORDER BY {columns[0]}"  # noqa: S608 (constant names)


def _insert(table: str, columns: tuple[str, ...]) -> str:
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 (constant names)


def row_counts(db: Store) -> dict[str, int]:
    """How many rows of each table a move copies (meta without the schema version)."""
    counts = {}
    for table, _ in TABLES:
        where = f" WHERE {_NOT_COPIED}" if table == "meta" else ""
        counts[table] = int(db.conn.execute(f"SELECT COUNT(*) FROM {table}{where}").fetchone()[0])  # noqa: S608
    return counts


def rows_of(db: Store, table: str) -> list[tuple[Any, ...]]:
    """Every row of `table` as a move copies it, in key order (the tests compare both sides with it)."""
    columns = dict(TABLES)[table]
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
            for row in db.conn.execute(_select(table, columns)).fetchall()]


def copy_state(source: Store, target: Connection, *,
               after_table: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy every table of `source` into `target`, the connection of the caller's transaction (so a failure
    part-way leaves nothing). Returns the rows copied per table; `after_table(table, rows)` follows each table.

    Raises:
        StoreError: a read or a write failed (PostgreSQL refuses a text holding a NUL character, for one).
    """
    copied: dict[str, int] = {}
    for table, columns in TABLES:
        insert = _insert(table, columns)
        cursor = source.conn.execute(_select(table, columns))
        count = 0
        batch: list[Any] = []
        for row in cursor:
            batch.append(row)
            if len(batch) == _BATCH:
                target.executemany(insert, batch)
                count += len(batch)
                batch = []
        if batch:
            target.executemany(insert, batch)
            count += len(batch)
        copied[table] = count
        if after_table is not None:
            after_table(table, count)
    return copied


def move_to_postgres(path: Path, url: str, *, password: str | None, statement_timeout: float = 5.0,
                     after_table: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Move the stopped SQLite state at `path` into the empty PostgreSQL database at `url`, in one transaction:
    a crash part-way leaves the target as empty as it was, and the move can simply be run again. The SQLite file
    is left as it is. Returns the rows copied per table.

    Raises:
        StoreError: a broadcaster holds the state directory, there is no state, the target holds a state
            already, or a read or write failed.
        DatabaseTooNew: either database is of a newer release.
    """
    from broadcaster.store.postgres import PostgresDatabase  # psycopg loads only for this

    if not path.exists():
        raise StoreError(path, "there is no state database to move")
    lock = InstanceLock(path.parent)  # held for the whole move: no broadcaster may start on the state meanwhile
    try:
        lock.acquire()
    except StoreError as busy:
        raise StoreError(path, f"a broadcaster is running on this state directory: stop it first ({busy})") from None
    try:
        source = Database(path, holding_lock=True)  # an older release's state is migrated first, a copy kept
        try:
            target = PostgresDatabase(url, password=password, statement_timeout=max(statement_timeout, 60.0))
            try:
                with target.transaction(leader_only=False) as conn:
                    # Under the write lock, in the transaction that copies: an instance started on the new database
                    # too early cannot commit between the check and the copy.
                    held = {table: n for table, n in row_counts(target).items() if n}
                    if held:
                        raise StoreError(target.where, "the target database is not empty ("
                                         + ", ".join(f"{table}: {n} rows" for table, n in held.items())
                                         + "): a move goes into a new database only")
                    copied = copy_state(source, conn, after_table=after_table)
                    target.restart_identities(conn)
                return copied
            finally:
                target.close()
        finally:
            source.close()
    finally:
        lock.release()
