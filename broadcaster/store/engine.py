"""The seam between the storage modules and the database engine: what they may ask of a database and of the
connection a transaction hands out, whichever engine holds the data (SQLite, `database.py`; PostgreSQL,
`postgres.py`).

The storage modules write one SQL text for both engines (docs/design.md, "Two engines, one SQL"): `?`
placeholders, `INSERT ... ON CONFLICT ... DO UPDATE`/`DO NOTHING`, `RETURNING`. SQLite's `sqlite3.Connection`
satisfies `Connection` as it is, so the SQLite path gains no layer and no per-statement cost; PostgreSQL's adapter
translates the placeholders and runs every call under its watchdog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from broadcaster.ha.role import Fence

#: The advisory-lock keys the PostgreSQL backend takes (pg_advisory_xact_lock): the schema's migration, and every
#: write transaction (what SQLite's BEGIN IMMEDIATE is: one writer at a time, across every instance).
MIGRATION_LOCK = 0x62726F61_64630001
WRITE_LOCK = 0x62726F61_64630002


class Cursor(Protocol):
    """What a statement's result offers; rows are tuples, read by position."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A database connection as the storage modules use it."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


class Store(Protocol):
    """A state database, whichever engine: read through `conn`, write in `transaction()`.

    `fence` (None: no high availability) gives the lease this instance holds; a PostgreSQL transaction with
    `leader_only=True` checks it against the lease row, in the transaction, and raises `Fenced` when they differ.
    SQLite never checks: one instance, always the leader.
    """

    engine: str  # "sqlite" or "postgresql"
    schema_version: int
    fence: Callable[[], Fence | None] | None

    @property
    def conn(self) -> Connection: ...

    @property
    def where(self) -> str:
        """The file, or the server and database (never a password), for messages."""

    def transaction(
        self, *, durable: bool = True, sync_later: bool = False, leader_only: bool = True,
    ) -> AbstractContextManager[Connection]:
        """`sync_later`: a durable commit that may reach the disk after it returns; it counts for the world only
        once `synced()` returned (SQLite: store/wal_sync.py; PostgreSQL commits it durably at once)."""

    async def synced(self) -> None:
        """Return once every transaction committed so far is on the disk; raises StoreError when that failed."""

    def doubt(self) -> str | None:
        """Why the database takes no more writes until a restart (a sync of its log failed), or None."""

    def sync_running_seconds(self) -> float:
        """How long a sync of the log that the channels wait for has been running (0 when none runs)."""

    def close(self) -> None: ...
