"""Durable commits that do not hold up the event loop: SQLite's write-ahead log synced in a worker thread.

A notice's commit must reach the disk before any channel acts on it (docs/design.md, "outbox"). With
`synchronous=FULL`, SQLite syncs the WAL inside COMMIT, on the event loop's thread: 0.5-4 ms on this project's
machines, twice in a steady tick, while the other feeds and the broker link wait. A transaction committed with
`sync_later` (`Database.transaction`) is written with `synchronous=NORMAL` instead: the WAL is written, not synced,
so it survives the process being killed but not yet a power cut. `WalSync` then makes it durable: `synced()` syncs
the WAL file in a worker thread (the `fdatasync` FULL would have made) and returns only when no commit is left
waiting for a sync, so whatever the caller reads right after it, with no await in between, is on the disk. The
dispatcher does exactly that before it reads what is due; until then, for the world, such a commit is not made.

The WAL is synced through one descriptor opened with the database and kept: Linux reports a failed write-back to
every descriptor open when it failed, once, so an error that SQLite's own descriptor met (an auto-checkpoint's
sync, whose error SQLite does not pass on) is still reported here; a descriptor opened later might never hear of it.

A sync that fails leaves those commits in doubt. Linux may drop the pages it could not write, or keep them marked
clean, so a second sync would succeed without writing them, and SQLite's recovery stops at the first damaged frame
of the WAL, taking every later commit with it. So the database then takes no more transactions and `synced()`
raises, until the process restarts; the broadcaster's start-up then checkpoints the WAL into the database file
(`Database(holding_lock=True)`), which writes whatever it holds afresh and syncs it, before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from broadcaster.errors import StoreError

log = logging.getLogger(__name__)

#: Makes the written data of an open file durable, given its descriptor: `os.fdatasync` (what SQLite uses on
#: Linux). The seam where tests hold a sync open, or fail it.
SyncFile = Callable[[int], None]

sync_file: SyncFile = os.fdatasync if hasattr(os, "fdatasync") else os.fsync


class WalSync:
    """The commits of one SQLite database written with `sync_later`, and the syncs that make them durable.

    Used from the event loop's thread only; the sync itself runs in a worker thread, one at a time: callers that
    arrive while one runs wait for it, then for another if commits landed after it began.
    """

    def __init__(self, database: Path, sync: SyncFile = sync_file) -> None:
        self._database = database
        #: Where SQLite keeps the WAL: beside the file a symbolic link points to, not beside the link.
        self.path = Path(os.path.realpath(database) + "-wal")
        #: The seam (`SyncFile`): tests replace it on a running broadcaster's database.
        self.sync_file = sync
        self._fd: int | None = None
        # Held while the descriptor is used or closed: a worker's sync may still run as the database closes.
        self._fd_lock = threading.Lock()
        self._release: weakref.finalize[..., WalSync] | None = None
        self._written = 0  # commits made with sync_later so far
        self._synced = 0  # how many of them are known to be on the disk
        self._running: asyncio.Task[None] | None = None
        self._sync_started: float | None = None  # time.monotonic() as the running sync began
        #: Why the database is in doubt (a sync failed), or None.
        self.failure: str | None = None

    def open(self) -> None:
        """Open the WAL that SQLite opened (its connection must have read the database), and make its name in the
        folder durable, as SQLite does at a new WAL's first sync.

        Raises:
            StoreError: there is no WAL file where SQLite keeps it.
        """
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise StoreError(self._database, f"cannot open its write-ahead log {self.path}: {exc}") from exc
        # A database dropped without close() (a test's) must not keep the descriptor for the process's life.
        self._release = weakref.finalize(self, os.close, self._fd)
        # Errors ignored, as SQLite ignores them: many file systems cannot sync a folder.
        with contextlib.suppress(OSError):
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    def close(self) -> None:
        """Sync on this thread what is owed (closing the database), then let the WAL go."""
        if self._fd is None:
            return
        if self.pending and self.failure is None:
            written = self._written
            try:
                self._sync_wal()
            except Exception as exc:
                self.failed(f"syncing its write-ahead log failed: {type(exc).__name__}: {exc}")
            else:
                self._synced = max(self._synced, written)
        with self._fd_lock:
            if self._release is not None:
                self._release()  # closes the descriptor, once
            self._fd = None

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
        """Return once no commit made with `sync_later` is waiting for a sync: every commit there is when it returns
        is on the disk. At once, without yielding to the event loop, when none is waiting.

        It waits for commits that land while it waits, too: a caller reads the database right after it returns
        and must not see one of those unsynced. Commits come in bursts (a poll round's feeds), a sync covers a
        burst, so this ends.

        Raises:
            StoreError: a sync failed, now or earlier.
        """
        while True:
            self.check()
            if not self.pending:
                return
            running = self._running
            if running is None:
                running = self._running = asyncio.create_task(self._sync_up_to(self._written))
            # Shielded: a caller cancelled while it waits (a drain at shutdown) does not cancel the others' sync.
            await asyncio.shield(running)

    def sync_running_seconds(self) -> float:
        """How long the sync running now has taken so far; 0 when none runs. Every drain waits for it, so a disk
        that hangs shows here (the outbox's age alone would not tell it from a platform that is down)."""
        started = self._sync_started
        return 0.0 if started is None else time.monotonic() - started

    async def _sync_up_to(self, written: int) -> None:
        self._sync_started = time.monotonic()
        try:
            await asyncio.to_thread(self._sync_wal)
        except Exception as exc:  # an OSError from the disk, or whatever the seam raises: in doubt either way
            self.failed(f"syncing its write-ahead log failed: {type(exc).__name__}: {exc}")
        else:
            self._synced = max(self._synced, written)
        finally:
            self._running = None
            self._sync_started = None

    def _sync_wal(self) -> None:
        with self._fd_lock:
            if self._fd is None:
                return  # closed meanwhile: closing synced what was owed (or recorded that it could not)
            self.sync_file(self._fd)
