"""The one place a command opens the state database: SQLite in the state directory, or the PostgreSQL database
of `[storage]` (docs/configuration.md)."""

from __future__ import annotations

from collections.abc import Callable

from broadcaster.config import Config
from broadcaster.ha.role import Fence
from broadcaster.store.database import Database, refuse_newer_database
from broadcaster.store.engine import Store


def open_database(config: Config, *, holding_lock: bool = False, keep_copy: bool = True,
                  fence: Callable[[], Fence | None] | None = None) -> Store:
    """The configured database, open and migrated (`holding_lock`, `keep_copy`: SQLite's, see `Database`).

    Raises:
        ConfigError: `storage.password` names a variable that is unset or a file that cannot be read.
        DatabaseTooNew: the database is at a version above this release's.
        StoreError: it cannot be opened or migrated.
    """
    storage = config.storage
    if storage is None:
        return Database(config.database_path, holding_lock=holding_lock, keep_copy=keep_copy)
    from broadcaster.store.postgres import PostgresDatabase  # psycopg loads only for a PostgreSQL deployment

    password = storage.password.require(config.source, "storage.password") if storage.password else None
    return PostgresDatabase(storage.url, password=password.reveal() if password else None,
                            statement_timeout=storage.statement_timeout_seconds, fence=fence)


def refuse_newer(config: Config) -> None:
    """Raise DatabaseTooNew when SQLite's database was migrated by a newer release, before anything opens it
    (`check`, `preview`). A PostgreSQL database is asked when it is opened, before anything is read from it."""
    if config.storage is None:
        refuse_newer_database(config.database_path)
