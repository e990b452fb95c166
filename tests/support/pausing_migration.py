"""A process that opens a state database, as every command does, and stops inside one migration step: the crash
point of tests/test_schema_migrations.py.

    python tests/support/pausing_migration.py DATABASE STEP before|after

It runs the real migration; step STEP's transaction is open (BEGIN IMMEDIATE taken) when it prints `paused STEP`
on stdout: "before" that step changed anything, "after" it did but before its version is recorded and committed.
It then waits for a line on stdin (or a SIGKILL); a line lets the migration finish, and it prints `open N`.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

from broadcaster.store import Database, sqlite_steps
from broadcaster.store.migrations import Step


def _pause(version: int) -> None:
    print(f"paused {version}", flush=True)
    sys.stdin.readline()


def _pausing(step: Step[sqlite3.Connection], point: str) -> Step[sqlite3.Connection]:
    original: Callable[[sqlite3.Connection], None] = step.apply

    def apply(conn: sqlite3.Connection) -> None:
        if point == "before":
            _pause(step.version)
        original(conn)
        if point == "after":
            _pause(step.version)

    return Step(step.version, step.summary, apply)


def main(database: str, version: str, point: str) -> None:
    sqlite_steps.STEPS = tuple(  # the test's crash point, in this process only
        _pausing(step, point) if step.version == int(version) else step for step in sqlite_steps.STEPS
    )
    db = Database(Path(database))
    print(f"open {db.schema_version}", flush=True)
    db.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
