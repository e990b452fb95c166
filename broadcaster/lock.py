"""One broadcaster per state directory: an exclusive lock, since two sharing one outbox would double-post."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from broadcaster.errors import StoreError


class InstanceLock:
    """An exclusive lock on the state directory: two broadcasters sharing one outbox would double-send."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "broadcaster.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreError(self.path.parent, f"already in use by broadcaster pid {holder}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def held_by_another(self) -> bool:
        """Whether a running broadcaster holds this directory (checked without keeping the lock)."""
        try:
            self.acquire()
        except StoreError:
            return True
        self.release()
        return False

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
