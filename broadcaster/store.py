"""The SQLite database that holds the committed state, feed bookkeeping and the outbox, and its transactions.

One file, so that a tick commits its new state and the notices it produced in one transaction: after a crash
either both are there or neither is, and a restart neither forgets nor re-announces anything.

The database runs in WAL mode with `synchronous=FULL`; start-up refuses to run otherwise, because a committed
notice must survive a power cut.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from broadcaster.errors import StoreError
from broadcaster.model import (
    ActivePeriod,
    Alert,
    CrowdingReading,
    FeedSnapshot,
    InformedEntity,
    LineDelay,
    LineOccupancy,
    LocalizedText,
    Occupancy,
    Severity,
)
from broadcaster.state import AlertRecord, CrowdingRecord, LineStatus, LineStatusKind, NetworkState

SCHEMA_VERSION = 1

_SCHEMA = """
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


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


class Database:
    """One SQLite connection, used from the event loop thread only (statements are short)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only: the database holds post texts before they are public, and platform sessions.
            path.touch(mode=0o600, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per tick.
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=5000")
            self._require_durability()
            self.conn.executescript(_SCHEMA)
            self._migrate()
            self._check_schema_version()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(path, f"cannot open the state database: {exc}") from exc

    def _require_durability(self) -> None:
        mode = self.conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = self.conn.execute("PRAGMA synchronous").fetchone()[0]
        if str(mode).lower() != "wal" or int(sync) != 2:
            raise StoreError(self.path, f"needs journal_mode=WAL and synchronous=FULL, got {mode}/{sync}")

    def _migrate(self) -> None:
        """Bring a database made by an earlier release up to `_SCHEMA`: columns added since are added in place
        (additive, so the schema version stays and an older release can still read the file)."""
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(feeds)")}
        if "problems" not in columns:
            self.conn.execute("ALTER TABLE feeds ADD COLUMN problems TEXT")

    def _check_schema_version(self) -> None:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(self.path, f"schema version {row[0]} is not {SCHEMA_VERSION}; no migration known")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception.

        A database error inside (a full disk, a lock held too long) becomes a StoreError, the one error callers
        handle; anything else propagates as it is. Either way nothing of the transaction remains.
        """
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
            self._rollback()
            raise StoreError(self.path, f"commit failed: {exc}") from exc

    def _rollback(self) -> None:
        # SQLite rolls some failures back by itself (SQLITE_FULL, for one); a second ROLLBACK would then raise
        # "no transaction is active" and hide the real error.
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


class KeyValueStore:
    """Small values that must survive a restart, in the `meta` table under "<namespace>:<key>": a platform
    session (so a crash loop does not log in again and again), the operator's alerts, corrections and digest
    marks. They may be credentials: the database file is created readable by its owner only."""

    def __init__(self, db: Database, namespace: str) -> None:
        self.db = db
        self.prefix = f"{namespace}:"

    def get(self, key: str) -> str | None:
        row = self.db.conn.execute("SELECT value FROM meta WHERE key = ?", (self.prefix + key,)).fetchone()
        return str(row[0]) if row else None

    def put(self, key: str, value: str | None) -> None:
        """Write (None: delete) one value in a transaction of its own."""
        with self.db.transaction() as conn:
            self.save(conn, key, value)

    def save(self, conn: sqlite3.Connection, key: str, value: str | None) -> None:
        """Write (None: delete) one value inside the caller's transaction."""
        if value is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (self.prefix + key,))
        else:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (self.prefix + key, value))


# ------------------------------------------------------------------------------------------------------------
# Retained topics: what the broker holds (broadcaster/retained.py plans, these two remember)


def load_retained(conn: sqlite3.Connection) -> tuple[dict[str, str], dict[str, datetime]]:
    """(topic -> digest of the retained payload on the broker, topic -> when its clear was acknowledged)."""
    published = {str(t): str(d) for t, d in conn.execute("SELECT topic, digest FROM retained")}
    cleared = {str(t): from_iso(at) for t, at in conn.execute("SELECT topic, cleared_at FROM retained_cleared")}
    return published, cleared


def save_retained(
    conn: sqlite3.Connection,
    *,
    published: Iterable[tuple[str, str]],
    unpublished: Iterable[tuple[str]],
    cleared: Iterable[tuple[str, str]],
    forgotten: Iterable[tuple[str]],
) -> None:
    """Record acknowledged publications inside the caller's transaction: (topic, digest) published,
    (topic,) no longer published, (topic, iso time) clears to remember, (topic,) clears to forget."""
    conn.executemany("INSERT OR REPLACE INTO retained (topic, digest) VALUES (?, ?)", published)
    conn.executemany("DELETE FROM retained WHERE topic = ?", unpublished)
    conn.executemany("INSERT OR IGNORE INTO retained_cleared (topic, cleared_at) VALUES (?, ?)", cleared)
    conn.executemany("DELETE FROM retained_cleared WHERE topic = ?", forgotten)


# ------------------------------------------------------------------------------------------------------------
# Feed bookkeeping


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


def load_feeds(conn: sqlite3.Connection) -> dict[str, FeedRecord]:
    out: dict[str, FeedRecord] = {}
    # Columns by name: `problems` was added in place to older databases (`Database._migrate`).
    for row in conn.execute("SELECT name, etag, last_modified, feed_timestamp, last_ok_at, last_error, last_error_at,"
                            " consecutive_failures, problems FROM feeds"):
        name, etag, last_modified, ts, ok_at, err, err_at, failures, problems = row
        out[name] = FeedRecord(
            name, etag, last_modified,
            from_iso(ts) if ts else None, from_iso(ok_at) if ok_at else None,
            err, from_iso(err_at) if err_at else None, failures,
            tuple(orjson.loads(problems)) if problems else (),
        )
    return out


def save_feed(conn: sqlite3.Connection, feed: FeedRecord) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO feeds (name, etag, last_modified, feed_timestamp, last_ok_at, last_error,"
        " last_error_at, consecutive_failures, problems) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            feed.name, feed.etag, feed.last_modified,
            iso(feed.feed_timestamp) if feed.feed_timestamp else None,
            iso(feed.last_ok_at) if feed.last_ok_at else None,
            feed.last_error, iso(feed.last_error_at) if feed.last_error_at else None,
            feed.consecutive_failures,
            orjson.dumps(list(feed.problems)).decode() if feed.problems else None,
        ),
    )


def load_snapshot_digests(conn: sqlite3.Connection, parse_keys: Mapping[str, bytes]) -> dict[str, bytes]:
    """Feed name -> hash of the body whose snapshot is stored, for the feeds whose snapshot was parsed the way
    this process parses (`parse_keys`, feed name -> key): one parsed against another network or other feed
    settings must not be applied again. The snapshots themselves are read on demand."""
    rows = conn.execute("SELECT name, digest, parse_key FROM feed_snapshots")
    return {name: bytes(digest) for name, digest, key in rows if parse_keys.get(name) == bytes(key)}


def save_snapshot(conn: sqlite3.Connection, digest: bytes, parse_key: bytes, snapshot: FeedSnapshot) -> None:
    """Store what a fetch parsed to, inside the caller's transaction (the one that commits the feed record).

    The parsed snapshot, not the body: a trip-updates body of a large city is megabytes, its snapshot a few
    aggregates per line, so this costs a tick well under a millisecond where the body would cost ten or more.
    """
    conn.execute("INSERT OR REPLACE INTO feed_snapshots (name, digest, parse_key, snapshot) VALUES (?, ?, ?, ?)",
                 (snapshot.feed, digest, parse_key, encode_snapshot(snapshot)))


def load_snapshot(conn: sqlite3.Connection, name: str) -> FeedSnapshot | None:
    """The stored snapshot of feed `name`, or None when there is none or it cannot be read (then the caller
    fetches the feed unconditionally and stores a new one)."""
    row = conn.execute("SELECT snapshot FROM feed_snapshots WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    try:
        return decode_snapshot(bytes(row[0]))
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------------------
# State codec: explicit JSON, so the file stays readable and survives refactors of the classes.


def _text(t: LocalizedText) -> dict[str, str]:
    return t.as_dict()


def _untext(d: Mapping[str, str]) -> LocalizedText:
    return LocalizedText(MappingProxyType(dict(d)))


def _opt_iso(at: datetime | None) -> str | None:
    return iso(at) if at else None


def _opt_dt(text: str | None) -> datetime | None:
    return from_iso(text) if text else None


def encode_alert(a: Alert) -> dict[str, Any]:
    return {
        "id": a.id, "cause": a.cause, "effect": a.effect, "severity": int(a.severity),
        "header": _text(a.header), "description": _text(a.description), "url": _text(a.url),
        "informed": [[e.line_id, e.station_id, e.direction_id, e.trip_id] for e in a.informed],
        "periods": [[_opt_iso(p.start), _opt_iso(p.end)] for p in a.active_periods],
    }


def decode_alert(a: Mapping[str, Any]) -> Alert:
    return Alert(
        id=a["id"], cause=a["cause"], effect=a["effect"], severity=Severity(a["severity"]),
        header=_untext(a["header"]), description=_untext(a["description"]), url=_untext(a["url"]),
        informed=tuple(InformedEntity(*e) for e in a["informed"]),
        active_periods=tuple(ActivePeriod(_opt_dt(s), _opt_dt(e)) for s, e in a["periods"]),
    )


def encode_alert_record(r: AlertRecord) -> dict[str, Any]:
    return {
        "alert": encode_alert(r.alert),
        "version": r.version, "feed": r.feed, "first_seen": iso(r.first_seen),
        "updated_at": iso(r.updated_at), "missing": r.missing,
    }


def decode_alert_record(d: Mapping[str, Any]) -> AlertRecord:
    alert = decode_alert(d["alert"])
    return AlertRecord(
        alert, d["version"], d["feed"], from_iso(d["first_seen"]), from_iso(d["updated_at"]), d["missing"]
    )


def _encode_reading(r: CrowdingReading) -> list[Any]:
    return [r.station_id, int(r.level), iso(r.observed_at), r.percentage, r.line_id, r.direction_id]


def _decode_reading(v: list[Any]) -> CrowdingReading:
    return CrowdingReading(v[0], Occupancy(v[1]), from_iso(v[2]), v[3], v[4], v[5])


def encode_crowding_record(r: CrowdingRecord) -> dict[str, Any]:
    return {
        "station_id": r.station_id, "level": int(r.level), "percentage": r.percentage,
        "observed_at": iso(r.observed_at), "changed_at": iso(r.changed_at), "trend": r.trend,
        "change_percentage": r.change_percentage,
        "candidate": int(r.candidate) if r.candidate is not None else None,
        "candidate_since": _opt_iso(r.candidate_since),
        "platforms": [_encode_reading(p) for p in r.platforms], "feed": r.feed,
    }


def decode_crowding_record(d: Mapping[str, Any]) -> CrowdingRecord:
    return CrowdingRecord(
        d["station_id"], Occupancy(d["level"]), d["percentage"], from_iso(d["observed_at"]),
        from_iso(d["changed_at"]), d["trend"], d["change_percentage"],
        Occupancy(d["candidate"]) if d["candidate"] is not None else None, _opt_dt(d["candidate_since"]),
        tuple(_decode_reading(p) for p in d["platforms"]), d["feed"],
    )


def _encode_delays(ds: tuple[LineDelay, ...]) -> list[Any]:
    return [[d.line_id, d.direction_id, d.trips, d.median_delay_s, d.max_delay_s, d.cancelled_trips] for d in ds]


def _encode_occupancy(os_: tuple[LineOccupancy, ...]) -> list[Any]:
    return [[o.line_id, o.direction_id, int(o.level), o.vehicles] for o in os_]


def _encode_line(s: LineStatus) -> dict[str, Any]:
    encoded = {"kind": s.kind.value, "alert_ids": list(s.alert_ids), "max_delay_s": s.max_delay_s, "cause": s.cause}
    return {**encoded, "moderate": True} if s.moderate else encoded  # rows from before it read False


def _encode_optional(items: tuple[Any, ...] | None, encode: Callable[[Any], Any]) -> Any:
    return None if items is None else encode(items)


def encode_snapshot(s: FeedSnapshot) -> bytes:
    """A feed snapshot as JSON: None (a kind the feed does not carry) stays apart from empty (nothing now)."""
    return orjson.dumps({
        "feed": s.feed, "timestamp": iso(s.timestamp),
        "alerts": _encode_optional(s.alerts, lambda alerts: [encode_alert(a) for a in alerts]),
        "delays": _encode_optional(s.delays, _encode_delays),
        "occupancy": _encode_optional(s.occupancy, _encode_occupancy),
        # orjson writes the datetimes itself (RFC 3339), several times faster than `iso` for a city's readings
        "crowding": _encode_optional(s.crowding, lambda readings: [
            [r.station_id, int(r.level), r.observed_at, r.percentage, r.line_id, r.direction_id] for r in readings
        ]),
        "skipped_alert_ids": sorted(s.skipped_alert_ids), "problems": list(s.problems),
    })


def decode_snapshot(body: bytes) -> FeedSnapshot:
    d = orjson.loads(body)
    alerts, delays, occupancy, crowding = d["alerts"], d["delays"], d["occupancy"], d["crowding"]
    return FeedSnapshot(
        feed=d["feed"], timestamp=from_iso(d["timestamp"]),
        alerts=None if alerts is None else tuple(decode_alert(a) for a in alerts),
        delays=None if delays is None else tuple(LineDelay(*v) for v in delays),
        occupancy=None if occupancy is None else tuple(
            LineOccupancy(v[0], v[1], Occupancy(v[2]), v[3]) for v in occupancy),
        crowding=None if crowding is None else tuple(_decode_reading(r) for r in crowding),
        skipped_alert_ids=frozenset(d["skipped_alert_ids"]), problems=tuple(d["problems"]),
    )


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


class StateStore:
    """Loads the committed `NetworkState` and writes only the entries that changed since the last save."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._persisted: dict[tuple[str, str], bytes] = {}
        self._pending: dict[tuple[str, str], bytes] = {}
        # The record objects encoded last, with their bytes (identity, not equality: see `_entries`).
        self._encoded: dict[tuple[str, str], tuple[object, bytes]] = {}

    def load(self) -> NetworkState:
        alerts: dict[str, AlertRecord] = {}
        crowding: dict[str, CrowdingRecord] = {}
        delays: dict[str, tuple[LineDelay, ...]] = {}
        occupancy: dict[str, tuple[LineOccupancy, ...]] = {}
        lines: dict[str, LineStatus] = {}
        as_of: datetime | None = None
        for kind, key, body in self.db.conn.execute("SELECT kind, key, body FROM state"):
            self._persisted[(kind, key)] = bytes(body)
            d = orjson.loads(body)
            if kind == "alert":
                alerts[key] = decode_alert_record(d)
            elif kind == "crowding":
                crowding[key] = decode_crowding_record(d)
            elif kind == "delays":
                delays[key] = tuple(LineDelay(*v) for v in d)
            elif kind == "occupancy":
                occupancy[key] = tuple(LineOccupancy(v[0], v[1], Occupancy(v[2]), v[3]) for v in d)
            elif kind == "line":
                lines[key] = LineStatus(LineStatusKind(d["kind"]), tuple(d["alert_ids"]), d["max_delay_s"], d["cause"],
                                        d.get("moderate", False))
            elif kind == "meta" and key == "as_of":
                as_of = from_iso(d)
        return NetworkState(
            MappingProxyType(alerts), MappingProxyType(crowding), MappingProxyType(delays),
            MappingProxyType(occupancy), MappingProxyType(lines), as_of,
        )

    def _entries(self, state: NetworkState) -> dict[tuple[str, str], bytes]:
        """Every record's encoding. A record object that is the very one encoded last time is not encoded again:
        the state is immutable and `apply_snapshot` carries unchanged records over as the same objects, so a
        tick encodes only what changed (a 500-station city re-encoded everything in ~20 ms per tick)."""
        out: dict[tuple[str, str], bytes] = {}
        cache = self._encoded
        fresh: dict[tuple[str, str], tuple[object, bytes]] = {}

        def put(key: tuple[str, str], record: Any, encode: Callable[[Any], object]) -> None:
            hit = cache.get(key)
            body = hit[1] if hit is not None and hit[0] is record else _dumps(encode(record))
            out[key] = body
            fresh[key] = (record, body)

        for k, a in state.alerts.items():
            put(("alert", k), a, encode_alert_record)
        for k, c in state.crowding.items():
            put(("crowding", k), c, encode_crowding_record)
        for k, d in state.delays.items():
            put(("delays", k), d, _encode_delays)
        for k, o in state.occupancy.items():
            put(("occupancy", k), o, _encode_occupancy)
        for k, st in state.lines.items():
            put(("line", k), st, _encode_line)
        if state.as_of:
            out[("meta", "as_of")] = _dumps(iso(state.as_of))
        self._encoded = fresh
        return out

    def save(self, conn: sqlite3.Connection, state: NetworkState) -> None:
        """Write the difference to the last saved state, inside the caller's transaction.

        The in-memory copy of what is on disk is updated only by `committed()`, after the commit succeeded.
        """
        entries = self._entries(state)
        upserts = [(k[0], k[1], v) for k, v in entries.items() if self._persisted.get(k) != v]
        deletes = [k for k in self._persisted if k not in entries]
        conn.executemany("INSERT OR REPLACE INTO state (kind, key, body) VALUES (?, ?, ?)", upserts)
        conn.executemany("DELETE FROM state WHERE kind = ? AND key = ?", deletes)
        self._pending = entries

    def committed(self) -> None:
        self._persisted = self._pending


def alert_stored(db: Database, alert_id: str) -> bool:
    """Whether the committed state holds the alert `alert_id` (without loading the state)."""
    return db.conn.execute("SELECT 1 FROM state WHERE kind = 'alert' AND key = ?", (alert_id,)).fetchone() is not None


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
