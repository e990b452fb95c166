"""Feed bookkeeping: each feed's record (validators, last timestamp, failures, skipped records) and the
snapshot its last committed fetch parsed to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import orjson

from broadcaster.model import FeedSnapshot
from broadcaster.store.codec import decode_snapshot, diagnostic, encode_snapshot, from_iso, iso
from broadcaster.store.engine import Connection, Store


@dataclass(frozen=True, slots=True)
class FeedRecord:
    """What we remember about a feed between fetches and restarts."""

    name: str
    etag: str | None = None
    last_modified: str | None = None
    feed_timestamp: datetime | None = None
    last_ok_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    consecutive_failures: int = 0
    #: What the last good fetch skipped (an invalid record, an unknown station), one line each naming the record
    #: and the reason; it describes the content in force, so a failed fetch leaves it as it was.
    problems: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.last_ok_at is not None and self.consecutive_failures == 0

    @property
    def never_fetched(self) -> bool:
        return self.last_ok_at is None and self.consecutive_failures == 0


def load_feeds(db: Store) -> dict[str, FeedRecord]:
    out: dict[str, FeedRecord] = {}
    # Columns by name: `problems` was added in place to older databases (`Database._migrate`).
    for row in db.conn.execute("SELECT name, etag, last_modified, feed_timestamp, last_ok_at, last_error,"
                               " last_error_at, consecutive_failures, problems FROM feeds"):
        name, etag, last_modified, ts, ok_at, err, err_at, failures, problems = row
        out[name] = FeedRecord(
            name, etag, last_modified,
            from_iso(ts) if ts else None, from_iso(ok_at) if ok_at else None,
            err, from_iso(err_at) if err_at else None, failures,
            tuple(orjson.loads(problems)) if problems else (),
        )
    return out


def save_feed(conn: Connection, feed: FeedRecord) -> None:
    conn.execute(
        "INSERT INTO feeds (name, etag, last_modified, feed_timestamp, last_ok_at, last_error,"
        " last_error_at, consecutive_failures, problems) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET etag = excluded.etag, last_modified = excluded.last_modified,"
        " feed_timestamp = excluded.feed_timestamp, last_ok_at = excluded.last_ok_at,"
        " last_error = excluded.last_error, last_error_at = excluded.last_error_at,"
        " consecutive_failures = excluded.consecutive_failures, problems = excluded.problems",
        (
            feed.name, feed.etag, feed.last_modified,
            iso(feed.feed_timestamp) if feed.feed_timestamp else None,
            iso(feed.last_ok_at) if feed.last_ok_at else None,
            diagnostic(feed.last_error), iso(feed.last_error_at) if feed.last_error_at else None,
            feed.consecutive_failures,
            orjson.dumps(list(feed.problems)).decode() if feed.problems else None,
        ),
    )


def load_snapshot_digests(db: Store, parse_keys: Mapping[str, bytes]) -> dict[str, bytes]:
    """Feed name -> hash of the body whose snapshot is stored, for the feeds whose snapshot was parsed the way
    this process parses (`parse_keys`, feed name -> key): one parsed against another network or other feed
    settings must not be applied again. The snapshots themselves are read on demand."""
    rows = db.conn.execute("SELECT name, digest, parse_key FROM feed_snapshots")
    return {name: bytes(digest) for name, digest, key in rows if parse_keys.get(name) == bytes(key)}


def save_snapshot(conn: Connection, digest: bytes, parse_key: bytes, snapshot: FeedSnapshot) -> None:
    """Store what a fetch parsed to, inside the caller's transaction (the one that commits the feed record).

    The parsed snapshot, not the body: a trip-updates body of a large city is megabytes, its snapshot a few
    aggregates per line, so this costs a tick well under a millisecond where the body would cost ten or more.
    """
    conn.execute("INSERT INTO feed_snapshots (name, digest, parse_key, snapshot) VALUES (?, ?, ?, ?)"
                 " ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, parse_key = excluded.parse_key,"
                 " snapshot = excluded.snapshot",
                 (snapshot.feed, digest, parse_key, encode_snapshot(snapshot)))


def load_snapshot(db: Store, name: str) -> FeedSnapshot | None:
    """The stored snapshot of feed `name`, or None when there is none or it cannot be read (then the caller
    fetches the feed unconditionally and stores a new one)."""
    row = db.conn.execute("SELECT snapshot FROM feed_snapshots WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    try:
        return decode_snapshot(bytes(row[0]))
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return None

