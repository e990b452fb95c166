"""State databases as each earlier release made them, from the schema SQL each one had (copied from git), for
the migration tests (tests/test_schema_migrations.py).

Every one of them says schema version 1: the releases after 0.1.0 changed the schema without a version.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

#: broadcaster 0.1.0, 2026-11-26 (66d9d1c): the released version 1.
RELEASE_66D9D1C = """
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

#: ad48dbd (merge of h6), 2026-12-03: + the idempotency table.
RELEASE_AD48DBD = """
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
-- Idempotency keys of operator requests (broadcaster/idempotency.py), kept 24 h: the answer given (admin API)
-- or the request carrying it out (command line). Added without a schema version: older databases gain it.
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, created_at TEXT NOT NULL,
    status INTEGER, body BLOB, request_id INTEGER,
    PRIMARY KEY (scope, key)
);
"""

#: d41161b (merge of h3), 2026-12-03: + feeds.problems (in the CREATE for new databases, added by `_migrate` to
#: older ones) and the feed_snapshots table.
RELEASE_D41161B = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    kind TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS feeds (
    name TEXT PRIMARY KEY,
    etag TEXT, last_modified TEXT,
    feed_timestamp TEXT, last_ok_at TEXT,
    last_error TEXT, last_error_at TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    -- JSON list: the records the feed's last good fetch skipped, one reason each (added in place, see _migrate)
    problems TEXT
);
-- The snapshot each feed's last committed fetch parsed to, with a hash of its body: a 304 Not Modified (or the
-- same bytes again) re-applies it, in a new process too, so it counts as a good fetch of the same content.
-- `parse_key` hashes what the parse depended on (the network's ids, the feed's settings, the release).
CREATE TABLE IF NOT EXISTS feed_snapshots (
    name TEXT PRIMARY KEY, digest BLOB NOT NULL, parse_key BLOB NOT NULL, snapshot BLOB NOT NULL
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
-- Idempotency keys of operator requests (broadcaster/idempotency.py), kept 24 h: the answer given (admin API)
-- or the request carrying it out (command line). Added without a schema version: older databases gain it.
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, created_at TEXT NOT NULL,
    status INTEGER, body BLOB, request_id INTEGER,
    PRIMARY KEY (scope, key)
);
"""

#: 58dd075 (merge of ch3), 2026-12-03, the last before numbered migrations: + the outbox_recent index.
RELEASE_58DD075 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    kind TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS feeds (
    name TEXT PRIMARY KEY,
    etag TEXT, last_modified TEXT,
    feed_timestamp TEXT, last_ok_at TEXT,
    last_error TEXT, last_error_at TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    -- JSON list: the records the feed's last good fetch skipped, one reason each (added in place, see _migrate)
    problems TEXT
);
-- The snapshot each feed's last committed fetch parsed to, with a hash of its body: a 304 Not Modified (or the
-- same bytes again) re-applies it, in a new process too, so it counts as a good fetch of the same content.
-- `parse_key` hashes what the parse depended on (the network's ids, the feed's settings, the release).
CREATE TABLE IF NOT EXISTS feed_snapshots (
    name TEXT PRIMARY KEY, digest BLOB NOT NULL, parse_key BLOB NOT NULL, snapshot BLOB NOT NULL
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
-- A channel's latest rows (the public site's feeds list the recent notices): added without a schema version.
CREATE INDEX IF NOT EXISTS outbox_recent ON outbox (channel, created_at);
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, digest TEXT NOT NULL);
-- Topics cleared within the retained TTL: a broker that crashed may bring their old payload back.
CREATE TABLE IF NOT EXISTS retained_cleared (topic TEXT PRIMARY KEY, cleared_at TEXT NOT NULL);
-- Operator requests (announce, correct) from the command line, carried out by the running broadcaster.
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, action TEXT NOT NULL, body BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', result TEXT, error TEXT, done_at TEXT
);
-- Idempotency keys of operator requests (broadcaster/idempotency.py), kept 24 h: the answer given (admin API)
-- or the request carrying it out (command line). Added without a schema version: older databases gain it.
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, created_at TEXT NOT NULL,
    status INTEGER, body BLOB, request_id INTEGER,
    PRIMARY KEY (scope, key)
);
"""

#: Each earlier release's schema, oldest first.
LAYOUTS: dict[str, str] = {
    "66d9d1c": RELEASE_66D9D1C, "ad48dbd": RELEASE_AD48DBD, "d41161b": RELEASE_D41161B, "58dd075": RELEASE_58DD075,
}


def make_database(path: Path, schema: str) -> None:
    """What an earlier release did on first opening `path`: WAL, its schema, version 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(schema)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
