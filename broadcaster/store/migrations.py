"""How a database's schema evolves, whatever the engine: numbered steps, applied once each, in order, at start-up.

A database records the schema version it is at: the number of the last step applied to it (0 for a new one).
Opening it applies every step above that number, each in one transaction together with the new version number,
so a process killed part-way leaves the database at the step before or after, never between, and the next start
carries on from there. A database at a version above the newest step this release knows was written by a newer
release: it is refused (`DatabaseTooNew`), never read, since this code cannot know what the newer one changed.

Before the first step runs on a database that already holds something, the engine keeps a copy of it as it was,
beside it: the older release refuses the migrated database (its version is not one it knows), and runs on the copy.

This module holds the rule and no SQL. Each engine supplies its numbered steps and a `SchemaTarget` (how to read
and record the version, run one step in a transaction, keep a copy): SQLite's are in `sqlite_steps.py` and
`database.py`. A PostgreSQL backend brings its own steps with the same numbers meaning the same schema, and a target
whose transaction also takes a lock on the schema (an advisory lock), since there is no state directory to lock.

The rules for a step (docs/design.md, "How the schema evolves"): a released step is never edited, only followed
by a new one; a step does one thing an older database lacks; and steps 2-4 tolerate finding what they add
already there, because releases between 2026-11-26 and 2026-12-03 added it without a version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from broadcaster.errors import DatabaseTooNew

log = logging.getLogger(__name__)

Conn = TypeVar("Conn")


@dataclass(frozen=True)
class Step(Generic[Conn]):
    """One change of the schema: it brings a database from `version - 1` to `version`."""

    version: int
    summary: str
    #: Runs the change on the connection of a transaction the target opened (and commits with the version).
    apply: Callable[[Conn], None]


class SchemaTarget(Protocol[Conn]):
    """One database, as the migration needs it; each engine implements it."""

    @property
    def where(self) -> str:
        """The file or address, for messages and the log (never a password)."""

    def version(self) -> int:
        """The version recorded in the database; 0 when none is (nothing applied yet)."""

    def is_new(self) -> bool:
        """Whether the database holds nothing at all (a new one needs no copy)."""

    def keep_copy(self, newest: int) -> str:
        """Keep the database as it is beside it, for the older release; return where."""

    def apply(self, step: Step[Conn]) -> None:
        """Run `step` and record `step.version` in one transaction: both or neither."""


def newest(steps: Sequence[Step[Conn]]) -> int:
    """The version the steps bring a database to. They must be numbered 1, 2, 3... in order, without a gap."""
    numbers = [step.version for step in steps]
    if numbers != list(range(1, len(steps) + 1)):
        raise ValueError(f"migration steps must be numbered 1..{len(steps)} in order, got {numbers}")
    return len(steps)


def refuse_newer(where: str, version: int, steps: Sequence[Step[Conn]]) -> None:
    """Raise DatabaseTooNew when `version` is above every step known here."""
    if version > newest(steps):
        raise DatabaseTooNew(where, version, newest(steps))


def migrate(target: SchemaTarget[Conn], steps: Sequence[Step[Conn]], *, keep_copy: bool = True) -> int:
    """Bring `target` up to the newest step and return that version.

    Must run with the database to itself (the state directory's lock for SQLite): the version read here must
    still hold when the steps run.

    Raises:
        DatabaseTooNew: the database's version is above the newest step.
        StoreError: the database cannot be read, copied or changed (a step that failed left nothing behind).
    """
    last = newest(steps)
    current = target.version()
    refuse_newer(target.where, current, steps)
    if current == last:
        return last
    new = target.is_new()
    if keep_copy and not new:
        copy = target.keep_copy(last)
        log.info("%s: schema version %d, this release's is %d: migrating; the database as it was is kept at %s"
                 " (to go back to the older release, stop this one and put that copy in its place)",
                 target.where, current, last, copy)
    for step in steps[current:]:
        target.apply(step)
        # A new database's steps are no news to an operator; an existing one's are.
        log.log(logging.DEBUG if new else logging.INFO, "%s: schema version %d: %s", target.where, step.version,
                step.summary)
    return last
