"""Durable commits that do not hold up the event loop: SQLite's write-ahead log synced in a worker thread.

A notice's commit must reach the disk before any channel acts on it (docs/design.md, "outbox"). With
`synchronous=FULL`, SQLite syncs the WAL inside COMMIT, on the event loop's thread: 0.5-4 ms on this project's
machines, twice in a steady tick, while the other feeds and the broker link wait. A transaction committed with
`sync_later` (`Database.transaction`) is written with `synchronous=NORMAL` instead: the WAL is written, not synced,
so it survives the process being killed but not yet a power cut. `WalSync` then makes it durable: `synced()` syncs
the WAL file in a worker thread (the sync FULL would have made) and returns once every such commit made before the
call is on the disk. Whoever acts on those rows outside the process, the dispatcher before it reads what is due,
awaits it first; until then, for the world, they are not committed.

A sync that fails leaves those commits in doubt. Linux may drop the pages it could not write and mark them clean, so
a second sync would succeed without writing them, and SQLite's recovery stops at the first damaged frame of the
WAL, taking every later commit with it. So the database then takes no more transactions and `synced()` raises,
until the process restarts and SQLite reads from the disk what is really there (PostgreSQL stops for the same
reason). Nothing committed in doubt is ever sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from broadcaster.errors import StoreError

log = logging.getLogger(__name__)

#: Makes one file's written data durable. The seam where tests hold a sync open, or fail it.
SyncFile = Callable[[Path], None]


def sync_file(path: Path) -> None:
    """`fdatasync` (what SQLite uses on Linux; `fsync` where there is none) of the file at `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:  # pragma: no cover (macOS, Windows)
            os.fsync(fd)
    finally:
        os.close(fd)


class WalSync:
    """The commits of one SQLite database written with `sync_later`, and the syncs that make them durable.

    Used from the event loop's thread only; the sync itself runs in a worker thread, one at a time: callers that
    arrive while one runs wait for it, then start another if commits landed after it began.
    """

    def __init__(self, database: Path, sync: SyncFile = sync_file) -> None:
        self._database = database
        self._wal = database.with_name(database.name + "-wal")
        #: The seam (`SyncFile`): tests replace it on a running broadcaster's database.
        self.sync_file = sync
        self._written = 0  # commits made with sync_later so far
        self._synced = 0  # how many of them are known to be on the disk
        self._running: asyncio.Task[None] | None = None
        self._folder_synced = False
        #: Why the database is in doubt (a sync failed), or None.
        self.failure: str | None = None

    @property
    def pending(self) -> bool:
        """Whether a commit made with `sync_later` may not be on the disk yet."""
        return self._synced < self._written

    def written(self) -> None:
        """A transaction committed with `sync_later`."""
        self._written += 1

    def failed(self, reason: str) -> None:
        """The commits not yet synced are in doubt: refuse everything from now on (see the module's notes)."""
        if self.failure is None:
            self.failure = reason
            log.critical("%s: %s; the database takes no more writes and nothing more is sent: check the disk and"
                         " restart the broadcaster", self._database, reason)

    def check(self) -> None:
        """Raises StoreError once a sync failed."""
        if self.failure is not None:
            raise StoreError(self._database, f"in doubt since {self.failure}: restart the broadcaster")

    async def synced(self) -> None:
        """Return once every commit made with `sync_later` before this call is on the disk; at once (without
        yielding to the event loop) when there is none.

        Raises:
            StoreError: a sync failed, now or earlier.
        """
        wanted = self._written  # not later commits: a steady stream of them must not keep this caller waiting
        while True:
            self.check()
            if self._synced >= wanted:
                return
            running = self._running
            if running is None:
                running = self._running = asyncio.create_task(self._sync_up_to(self._written))
            # Shielded: a caller cancelled while it waits (a drain at shutdown) does not cancel the others' sync.
            await asyncio.shield(running)

    async def _sync_up_to(self, written: int) -> None:
        try:
            await asyncio.to_thread(self._sync_files)
        except Exception as exc:  # an OSError from the disk, or whatever the seam raises: in doubt either way
            self.failed(f"syncing its write-ahead log failed: {type(exc).__name__}: {exc}")
        else:
            self._synced = max(self._synced, written)
        finally:
            self._running = None

    def sync_now(self) -> None:
        """Sync on this thread (closing the database): nothing committed is left to a later sync."""
        if not self.pending or self.failure is not None:
            return
        written = self._written
        try:
            self._sync_files()
        except Exception as exc:
            self.failed(f"syncing its write-ahead log failed: {type(exc).__name__}: {exc}")
            return
        self._synced = max(self._synced, written)

    def _sync_files(self) -> None:
        try:
            self.sync_file(self._wal)
        except FileNotFoundError:
            # No WAL: the last connection to close checkpointed it into the database, which SQLite syncs, and
            # removed it. (Ours is open, so this happens only as this process closes its own.)
            return
        if not self._folder_synced:
            # The WAL's name in its folder must be durable too: SQLite syncs the folder at the WAL's first sync.
            fd = os.open(self._wal.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._folder_synced = True
