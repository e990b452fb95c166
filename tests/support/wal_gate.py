"""The one seam of the deferred WAL sync (broadcaster/store/wal_sync.py): a sync the test holds open, then lets
through or fails, as a disk would."""

from __future__ import annotations

import asyncio
import errno
import os
import queue
import threading
import time
from pathlib import Path

from broadcaster.store.wal_sync import sync_file


class WalGate:
    """`WalSync.sync_file` for tests. Open, it syncs the file for real. Shut, each call records itself, then waits
    for the test's word: `let_through()` syncs for real, `fail()` raises EIO as a failing disk does."""

    def __init__(self, *, shut: bool = False) -> None:
        self.shut = shut
        self.calls: list[tuple[Path, int]] = []  # (the file synced, the thread ident)
        self.started: list[float] = []  # time.time() as each call began
        self._entered = threading.Semaphore(0)
        self._words: queue.Queue[str] = queue.Queue()

    def __call__(self, fd: int) -> None:
        self.started.append(time.time())
        self.calls.append((Path(os.readlink(f"/proc/self/fd/{fd}")), threading.get_ident()))
        if self.shut:
            self._entered.release()
            word = self._words.get(timeout=30)
            if word == "fail":
                raise OSError(errno.EIO, "Input/output error")
        sync_file(fd)

    async def entered(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (a thread's semaphore, not a task)
        """Wait until a sync is being held (each call is waited for once)."""
        assert await asyncio.to_thread(self._entered.acquire, True, timeout), "no WAL sync was attempted"

    def let_through(self) -> None:
        self._words.put("sync")

    def open_up(self) -> None:
        """Let the held sync through, and every later one (a durable commit owes one too)."""
        self.shut = False
        self.let_through()

    def fail(self) -> None:
        self._words.put("fail")
