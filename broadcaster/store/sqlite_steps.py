"""The SQLite schema's numbered steps (broadcaster/store/migrations.py says how they run).

A released step is never edited: a database somewhere is at its version, and a change here would never reach it.
A new schema change is a new step at the end (docs/design.md, "How the schema evolves").

Step 1 is the schema broadcaster 0.1.0 released on 2026-11-26 (commit 66d9d1c), as it was, `IF NOT EXISTS` and
all. Releases after it changed the schema without a version (every database they made says 1), so steps 2-4 each
add what one of them added and accept finding it already there: whatever release made a database, it reaches the
same schema.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator

from broadcaster.store.migrations import Step

_RELEASED_1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    kind TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS feeds (
    name TEXT PRIMARY KEY,
    etag TEXT, last_modified TEXT,
    feed_timestamp TEXT, last_ok_at TEXT,
    last_error TEXT, last_error_at TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    notice_id TEXT NOT NULL, version TEXT NOT NULL, channel TEXT NOT NULL, part INTEGER NOT NULL,
    priority INTEGER NOT NULL, payload BLOB NOT NULL, created_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL, remote_id TEXT, sent_at TEXT, error TEXT,
    -- 1 when the post opens a thread that later notices about the same subject reply to
    starts_thread INTEGER NOT NULL DEFAULT 1,
    -- 1 once an attempt may have reached the platform (timeout, reset after sending, 5xx): a retry could
    -- duplicate unless the platform deduplicates
    uncertain INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_thread ON outbox (channel, notice_id, starts_thread, part);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, channel, priority, next_attempt_at);
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, digest TEXT NOT NULL);
-- Topics cleared within the retained TTL: a broker that crashed may bring their old payload back.
CREATE TABLE IF NOT EXISTS retained_cleared (topic TEXT PRIMARY KEY, cleared_at TEXT NOT NULL);
-- Operator requests (announce, correct) from the command line, carried out by the running broadcaster.
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, action TEXT NOT NULL, body BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', result TEXT, error TEXT, done_at TEXT
);
"""

# Idempotency keys of operator requests (broadcaster/idempotency.py), kept 24 h: the answer given (admin API) or
# the request carrying it out (command line). First released in ad48dbd.
_IDEMPOTENCY = """
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, created_at TEXT NOT NULL,
    status INTEGER, body BLOB, request_id INTEGER,
    PRIMARY KEY (scope, key)
);
"""

# The snapshot each feed's last committed fetch parsed to, with a hash of its body: a 304 Not Modified (or the same
# bytes again) re-applies it, in a new process too, so it counts as a good fetch of the same content. `parse_key`
# hashes what the parse depended on (the network's ids, the feed's settings, the release). First released in
# d41161b, with `feeds.problems` (step 3's other half).
_FEED_SNAPSHOTS = """
CREATE TABLE IF NOT EXISTS feed_snapshots (
    name TEXT PRIMARY KEY, digest BLOB NOT NULL, parse_key BLOB NOT NULL, snapshot BLOB NOT NULL
);
"""

# A channel's latest rows (the public site's feeds list the recent notices). First released in 58dd075.
_OUTBOX_RECENT = "CREATE INDEX IF NOT EXISTS outbox_recent ON outbox (channel, created_at);"


# The leader's lease (broadcaster/ha/lease.py), the same table as PostgreSQL's step 5 so both engines stay at one
# version; SQLite has one instance, which leads without it: the row is never read (expires_at TEXT, '').
_LEADER_LEASE = """
CREATE TABLE IF NOT EXISTS leader_lease (
    name TEXT PRIMARY KEY, holder TEXT, epoch INTEGER NOT NULL, expires_at TEXT NOT NULL
);
INSERT OR IGNORE INTO leader_lease (name, holder, epoch, expires_at) VALUES ('leader', NULL, 0, '');
"""


def statements(script: str) -> Iterator[str]:
    """The statements of `script`, one at a time: `executescript` would commit the step's transaction first."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    left = [line for line in pending.splitlines() if line.strip() and not line.lstrip().startswith("--")]
    if left:
        raise ValueError(f"incomplete SQL statement at the end of a step: {left[0][:60]!r}")


def _run(script: str) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        for statement in statements(script):
            conn.execute(statement)
    return apply


def _add_column(table: str, column: str, declaration: str) -> Callable[[sqlite3.Connection], None]:
    """ALTER TABLE ... ADD COLUMN, unless a release that added it without a version already did."""
    def apply(conn: sqlite3.Connection) -> None:
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    return apply


def _feed_problems_and_snapshots(conn: sqlite3.Connection) -> None:
    # JSON list: the records the feed's last good fetch skipped, one reason each.
    _add_column("feeds", "problems", "TEXT")(conn)
    _run(_FEED_SNAPSHOTS)(conn)


#: Never edit a step once released; add the next one at the end.
STEPS: tuple[Step[sqlite3.Connection], ...] = (
    Step(1, "the schema of broadcaster 0.1.0 (2026-11-26)", _run(_RELEASED_1)),
    Step(2, "idempotency keys of operator requests (table idempotency)", _run(_IDEMPOTENCY)),
    Step(3, "feed records keep the skipped records (feeds.problems) and the last snapshot (table feed_snapshots)",
         _feed_problems_and_snapshots),
    Step(4, "an index on a channel's latest rows (outbox_recent)", _run(_OUTBOX_RECENT)),
    Step(5, "the leader's lease (table leader_lease), unused by SQLite", _run(_LEADER_LEASE)),
)
