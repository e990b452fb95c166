"""The SQLite database that holds the committed state, feed bookkeeping and the outbox, and its transactions.

One file, so that a tick commits its new state and the notices it produced in one transaction: after a crash
either both are there or neither is, and a restart neither forgets nor re-announces anything.

The database runs in WAL mode with `synchronous=FULL`; start-up refuses to run otherwise, because a committed
notice must survive a power cut. A commit may leave its sync to a worker thread (`sync_later`, store/wal_sync.py):
it counts as committed for the world only once `synced()` returned.

Opening it brings its schema up to this release's `SCHEMA_VERSION`, step by numbered step (store/migrations.py,
store/sqlite_steps.py), under the state directory's lock, keeping a copy of an older database beside it first; a
database of a newer release is refused.

`Database.conn` is for the storage modules only (`tests/test_layering.py` holds the list): everything else reads
through their named functions, which take the `Database`, and writes through the connection a transaction hands
out, passed back to them.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from broadcaster.errors import StoreError
from broadcaster.ha.role import Fence
from broadcaster.lock import InstanceLock
from broadcaster.store import migrations, sqlite_steps
from broadcaster.store.wal_sync import SyncFile, WalSync, sync_file

log = logging.getLogger(__name__)

#: The schema version this release brings every database to (the newest numbered step, store/sqlite_steps.py).
SCHEMA_VERSION = migrations.newest(sqlite_steps.STEPS)

_VERSION_KEY = "schema_version"


class Database:
    """One SQLite connection, used from the event loop thread only (statements are short): the `Store` of a single
    instance (store/engine.py). `fence` is always None: SQLite has one instance, which always leads."""

    engine = "sqlite"
    fence: Callable[[], Fence | None] | None = None

    def __init__(
        self, path: Path, *, holding_lock: bool = False, keep_copy: bool = True, sync: SyncFile = sync_file,
    ) -> None:
        """Open the database at `path` and bring its schema up to `SCHEMA_VERSION` (store/migrations.py).

        A migration runs only under the state directory's `InstanceLock` (`path`'s folder): `holding_lock` says
        the caller holds it; otherwise it is taken for the migration and released. `keep_copy=False` migrates
        without keeping a copy of the database as it was (`preview`, on a throw-away copy). `sync` makes the
        write-ahead log durable after a `sync_later` commit (a test's seam).

        Raises:
            DatabaseTooNew: the database is at a version above this release's.
            StoreError: it cannot be opened or migrated, or it needs migrating while another process holds the
                state directory.
        """
        self.path = path
        self.wal = WalSync(path, sync)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only: the database holds post texts before they are public, and platform sessions.
            path.touch(mode=0o600, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per tick.
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(path, f"cannot open the state database: {exc}") from exc
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=5000")
            self._require_durability()
            self._synchronous = "FULL"  # what the connection runs with now (see `transaction`)
            #: The schema version the database is at (always `SCHEMA_VERSION` once open).
            self.schema_version = self._up_to_date(holding_lock=holding_lock, keep_copy=keep_copy)
            if holding_lock:
                self._settle_log()
            self.wal.open()
        except (sqlite3.Error, OSError) as exc:
            self.wal.close()
            self.conn.close()
            raise StoreError(path, f"cannot open the state database: {exc}") from exc
        except BaseException:
            self.wal.close()
            self.conn.close()
            raise

    @property
    def where(self) -> str:
        return str(self.path)

    def _require_durability(self) -> None:
        mode = self.conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = self.conn.execute("PRAGMA synchronous").fetchone()[0]
        if str(mode).lower() != "wal" or int(sync) != 2:
            raise StoreError(self.path, f"needs journal_mode=WAL and synchronous=FULL, got {mode}/{sync}")

    def _settle_log(self) -> None:
        """Checkpoint the WAL into the database file, and sync it, before the process that sends starts.

        After a failed sync (store/wal_sync.py) the WAL may be whole only in the page cache, its pages marked clean
        and never to be written: a restarted process would read them back and send what they hold while the disk
        lacks them. A checkpoint writes their content into the database file afresh and syncs it.

        PASSIVE first: it waits for no one, and a writer (a tool holding the write lock) does not stop it. Only a
        reader of an older snapshot can hold frames back; then FULL waits for it (up to the busy timeout). If that
        reader still holds on, the broadcaster starts all the same and says so: what is at stake is a failed sync
        earlier in this boot and a power cut before the next checkpoint, and refusing to start would stop every
        notice instead.
        """
        _, frames, copied = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if copied >= frames:
            return
        busy, frames, copied = self.conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        if busy or copied < frames:
            log.warning("%s: could not checkpoint the write-ahead log at start-up (%d of %d frames; another process"
                        " is reading an older snapshot): whatever a failed sync of an earlier run left there is not"
                        " yet known to be on the disk", self.path, copied, frames)

    def _up_to_date(self, *, holding_lock: bool, keep_copy: bool) -> int:
        """Migrate the database to `SCHEMA_VERSION` if it is older, under the state directory's lock."""
        schema = SqliteSchema(self)
        found = schema.version()
        migrations.refuse_newer(schema.where, found, sqlite_steps.STEPS)  # read nothing of a newer release's
        if found == SCHEMA_VERSION:
            return found
        if holding_lock:
            return migrations.migrate(schema, sqlite_steps.STEPS, keep_copy=keep_copy)
        lock = InstanceLock(self.path.parent)
        try:
            lock.acquire()
        except StoreError as busy:
            if schema.version() == SCHEMA_VERSION:  # the broadcaster holding the directory migrated it meanwhile
                return SCHEMA_VERSION
            raise StoreError(self.path, (
                f"schema version {found} must be migrated to {SCHEMA_VERSION} first, and only the process holding"
                f" the state directory may do it ({busy}): stop that broadcaster (an older release?) and start"
                " this one")) from None
        try:
            return migrations.migrate(schema, sqlite_steps.STEPS, keep_copy=keep_copy)
        finally:
            lock.release()

    @contextmanager
    def transaction(
        self, *, durable: bool = True, sync_later: bool = False, leader_only: bool = True,
    ) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception.

        `leader_only` is for PostgreSQL's fencing (store/postgres.py); SQLite's one instance always leads.

        A database error inside (a full disk, a lock held too long) becomes a StoreError, the one error callers
        handle; anything else propagates as it is. Either way nothing of the transaction remains.

        `durable=False` commits without waiting for the disk (WAL with `synchronous=NORMAL` for this one
        commit): it still survives the process being killed, and only a power cut or an OS crash can lose it.
        Only bookkeeping whose loss repeats idempotent work may ask for it (an MQTT notice marked sent, the record
        of retained publications, a feed's fetch record): each FULL commit blocks the event loop for an fsync,
        2-4 ms on this project's machines, in the middle of an emergency's publishes.

        `sync_later` (with `durable`) commits the same way, and `synced()` makes it durable in a worker thread:
        whoever acts on its rows outside this process awaits `synced()` first (store/wal_sync.py). A commit that
        someone is told about at once (an operator's request answered) waits for the disk here instead.

        Raises:
            StoreError: as above; also, from every transaction, once a sync of the WAL failed (`WalSync.failed`).
        """
        self.wal.check()
        # FULL is set again before the next durable commit, not after this one: a failure to set it must not
        # turn a transaction that committed into an error (callers take StoreError as "nothing committed").
        self._set_synchronous("FULL" if durable and not sync_later else "NORMAL")
        changes = self.conn.total_changes
        with self._transaction() as conn:
            yield conn
        if durable and self.conn.total_changes != changes:
            # A FULL commit is owed a sync of our own descriptor too: SQLite's descriptor may have met, and SQLite
            # swallowed, a write-back error of earlier frames (an auto-checkpoint's), which only ours still reports.
            # It costs a worker thread's fdatasync with little or nothing left to write. A commit that changed no
            # row (a hold with nothing to hold) wrote nothing, and is owed nothing.
            self.wal.written()

    async def synced(self) -> None:
        """Return once every commit made so far is on the disk (`WalSync.synced`).

        Raises:
            StoreError: a sync of the WAL failed, now or earlier.
        """
        await self.wal.synced()

    def doubt(self) -> str | None:
        """Why the database takes no more writes until a restart (`WalSync.failed`), or None."""
        return self.wal.failure

    def sync_running_seconds(self) -> float:
        """How long the running sync of the write-ahead log has taken so far (0 when none runs)."""
        return self.wal.sync_running_seconds()

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
            if _io_error(exc):
                # The WAL's write or sync failed: every commit not yet known on the disk, this process's bookkeeping
                # included, is in doubt, and SQLite's recovery stops at the first damaged frame (store/wal_sync.py).
                self.wal.failed(f"a commit could not write or sync its write-ahead log: {exc}")
            self._rollback()
            raise StoreError(self.path, f"commit failed: {exc}") from exc

    def _rollback(self) -> None:
        # SQLite rolls some failures back by itself (SQLITE_FULL, for one); a second ROLLBACK would then raise
        # "no transaction is active" and hide the real error.
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.wal.close()
        self.conn.close()


def _io_error(exc: sqlite3.Error) -> bool:
    """Whether SQLite reports a failure of the disk (SQLITE_IOERR and its extended codes)."""
    return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_IOERR


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


def _read_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in `meta`; 0 when there is none (a new database, or a table-less one)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_VERSION_KEY,)).fetchone()
    return int(row[0]) if row else 0


def schema_version_of(path: Path) -> int | None:
    """The schema version of the database at `path`, read without writing to it; None when there is no file.

    Raises:
        StoreError: the file is not a database this code can read a version from.
    """
    if not path.exists():
        return None
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            return _read_version(conn)
    except (sqlite3.Error, ValueError) as exc:
        raise StoreError(path, f"cannot read the state database's schema version: {exc}") from exc


def refuse_newer_database(path: Path) -> None:
    """Raise DatabaseTooNew when the database at `path` was migrated by a newer release (nothing is written:
    `check` and `preview` ask before they open anything)."""
    version = schema_version_of(path)
    if version is not None:
        migrations.refuse_newer(str(path), version, sqlite_steps.STEPS)


class SqliteSchema:
    """The SQLite database as a migration's target (store/migrations.py): the version in `meta`, one transaction
    per step, and the copy kept beside the file."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def where(self) -> str:
        return str(self.db.path)

    def version(self) -> int:
        try:
            return _read_version(self.db.conn)
        except ValueError as exc:
            raise StoreError(self.db.path, f"the recorded schema version is not a number: {exc}") from exc

    def is_new(self) -> bool:
        return self.db.conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None

    def apply(self, step: migrations.Step[sqlite3.Connection]) -> None:
        with self.db.transaction() as conn:
            step.apply(conn)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (_VERSION_KEY, str(step.version)))

    def keep_copy(self, newest: int) -> str:
        """`<file>.before-v<newest>`, owner-only, written whole or not at all (a temporary file renamed).

        A copy already there is kept when it is older than the database: a migration to `newest` began, was
        interrupted after a step, and that copy is the database as the older release left it. Otherwise (the
        same version: interrupted before the first step; or an operator put an older copy back) it is replaced.
        """
        copy = self.db.path.with_name(f"{self.db.path.name}.before-v{newest}")
        if copy.exists() and _copy_version(copy) < self.version():
            return str(copy)
        partial = copy.with_name(copy.name + ".partial")
        try:
            partial.unlink(missing_ok=True)
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            copy_database(self.db.path, partial)
            _fsync(partial)
            os.replace(partial, copy)
            _fsync(copy.parent)
        except OSError as exc:
            raise StoreError(copy, f"cannot keep a copy of the database before migrating it: {exc}") from exc
        return str(copy)


def _copy_version(copy: Path) -> int:
    """The version of an earlier copy; -1 when it cannot be read (it is then replaced)."""
    try:
        return schema_version_of(copy) or 0
    except StoreError:
        return -1


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
