"""The durable outbox: every notice is written here, per channel, before any network call.

Each row has a deterministic idempotency key `hash(notice id, version, channel, part)`, so enqueueing the same
notice twice (a retried tick, a second instance) stores it once. The drain loop takes due rows in priority
order, sends them, and marks them sent only after the peer acknowledged (MQTT PUBACK, HTTP 2xx). Transient
failures are retried with capped exponential backoff and jitter; permanent ones are parked and reported.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from broadcaster.store import Connection, Store, diagnostic, from_iso, iso


class OutboxStatus(StrEnum):
    """Where an outbox entry stands; the values are what the `status` column holds (and what reports show)."""

    PENDING = "pending"
    SENT = "sent"
    PARKED = "parked"
    MERGED = "merged"  # said as part of another (merged) post, whose notice id is in remote_id


PENDING = OutboxStatus.PENDING
SENT = OutboxStatus.SENT
PARKED = OutboxStatus.PARKED
MERGED = OutboxStatus.MERGED

#: Versions of entries that are not an original post: a correction's (`CORRECTION_VERSION_PREFIX`, compose owns
#: notice versions) and a deletion's (`OperatorDesk._deletions`). `OutboxHistory.original_remote_ids` leaves both
#: out.
DELETION_VERSION_PREFIX = "delete-"


_ENTRY_COLUMNS = (
    "key, notice_id, version, channel, part, priority, payload, created_at, attempts, next_attempt_at, uncertain"
)


def _entry(r: Any) -> OutboxEntry:  # a sqlite3 row of _ENTRY_COLUMNS
    return OutboxEntry(
        r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), from_iso(r[7]), r[8], from_iso(r[9]), bool(r[10])
    )


def idempotency_key(notice_id: str, version: str, channel: str, part: int) -> str:
    """The outbox key, also sent to platforms that deduplicate (Mastodon's Idempotency-Key)."""
    raw = f"{notice_id}\x1f{version}\x1f{channel}\x1f{part}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message for one channel, ready to be stored: the payload is final bytes."""

    notice_id: str
    version: str
    channel: str
    payload: bytes
    priority: int  # 0 = emergency, drained first
    part: int = 0
    starts_thread: bool = True

    @property
    def key(self) -> str:
        return idempotency_key(self.notice_id, self.version, self.channel, self.part)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    key: str
    notice_id: str
    version: str
    channel: str
    part: int
    priority: int
    payload: bytes
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    uncertain: bool = False


#: The longest wait a platform may impose (Retry-After and the rate-limit resets; docs/channels.md). A longer one
#: is cut to this: the retry then asks again, so a header that says "in 3000 years" costs one request an hour.
MAX_SERVER_WAIT_S = 3600.0
#: The longest an emergency waits because a platform said so (its own answer, or a wait imposed on a routine
#: post of the same channel): a 429 costs one cheap request, a late emergency costs riders.
EMERGENCY_MAX_WAIT_S = 10.0


def server_wait(retry_after: float | None, *, emergency: bool = False) -> float | None:
    """A platform's requested wait made safe to schedule: None stays None (NaN too), anything else is clamped to
    [0, MAX_SERVER_WAIT_S], and to EMERGENCY_MAX_WAIT_S for an emergency."""
    if retry_after is None or math.isnan(retry_after):
        return None
    ceiling = EMERGENCY_MAX_WAIT_S if emergency else MAX_SERVER_WAIT_S
    return min(max(retry_after, 0.0), ceiling)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with full jitter; a peer's Retry-After wins when it asks for longer, up to
    MAX_SERVER_WAIT_S (EMERGENCY_MAX_WAIT_S for an emergency)."""

    base_s: float = 1.0
    cap_s: float = 300.0

    def delay(self, attempts: int, retry_after: float | None, rng: random.Random, *, emergency: bool = False) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(attempts, 30)))
        jittered = rng.uniform(ceiling / 2, ceiling)
        wait = server_wait(retry_after, emergency=emergency)
        return max(jittered, wait) if wait is not None else jittered


class Outbox:
    """Queries over the `outbox` table. Writes that belong to a tick take the caller's connection."""

    def __init__(self, db: Store, backoff: Backoff | None = None, rng: random.Random | None = None) -> None:
        self.db = db
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()

    @staticmethod
    def enqueue(conn: Connection, messages: Iterable[OutgoingMessage], now: datetime) -> int:
        """Store messages inside the caller's transaction; returns how many were new."""
        stamp = iso(now)
        rows = [
            (m.key, m.notice_id, m.version, m.channel, m.part, m.priority, m.payload, stamp, stamp,
             int(m.starts_thread))
            for m in messages
        ]
        # rowcount sums the rows executemany inserted (a key already queued is no change), on both engines.
        return conn.executemany(
            "INSERT INTO outbox (key, notice_id, version, channel, part, priority, payload,"
            " created_at, next_attempt_at, starts_thread) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (key) DO NOTHING",
            rows,
        ).rowcount

    async def on_disk(self) -> None:
        """Return once every row committed so far is on the disk (`Store.synced`). A pipeline commit may leave its
        sync to a worker thread; the dispatcher awaits this right before it reads what is due, with no await in
        between, so it never sends a row that a power cut could still take back.

        Raises:
            StoreError: the sync failed; nothing committed since the last good one may be sent.
        """
        await self.db.synced()

    def due(self, channel: str, now: datetime, limit: int = 100) -> list[OutboxEntry]:
        """Pending entries whose retry time has come: one whose earlier attempt may have landed first (its doubt is
        settled before anything else goes: Weibo recognises a repeat only of the account's latest status), then
        emergencies, then oldest first."""
        rows = self.db.conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM outbox WHERE status = ? AND channel = ? AND next_attempt_at <= ?"  # noqa: S608 (a constant column list)
            " ORDER BY uncertain DESC, priority, created_at, notice_id, version, part LIMIT ?",
            (PENDING, channel, iso(now), limit),
        ).fetchall()
        return [_entry(r) for r in rows]

    def next_due_at(self, channel: str) -> datetime | None:
        row = self.db.conn.execute(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE status = ? AND channel = ?", (PENDING, channel)
        ).fetchone()
        return from_iso(row[0]) if row and row[0] else None

    def make_due(self, channel: str, now: datetime) -> int:
        """Make every pending entry of `channel` due now: its link is back, backing off no longer helps."""
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE status = ? AND channel = ? AND next_attempt_at > ?",
                (iso(now), PENDING, channel, iso(now)),
            )
        return cursor.rowcount

    def replace_with_merged(
        self, entries: Iterable[OutboxEntry], merged: Iterable[OutgoingMessage], now: datetime
    ) -> None:
        """In one transaction: queue the merged post(s) and retire the entries they stand for."""
        merged = list(merged)
        with self.db.transaction() as conn:
            self.enqueue(conn, merged, now)
            conn.executemany(
                "UPDATE outbox SET status = ?, remote_id = ? WHERE key = ? AND status = ?",
                [(MERGED, merged[0].notice_id, e.key, PENDING) for e in entries],
            )

    def hold(self, channel: str, until: datetime, *, below_priority: int = 0) -> int:
        """Move the due time of `channel`'s pending entries (all but priority <= `below_priority`) to `until`."""
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE channel = ? AND status = ? AND priority > ?"
                " AND next_attempt_at < ?",
                (iso(until), channel, PENDING, below_priority, iso(until)),
            )
        return cursor.rowcount

    def doubtful_until(self, channel: str, now: datetime) -> datetime | None:
        """When the last of `channel`'s pending posts whose earlier attempt may have landed comes due (None: no
        such post waits). After a crash it is the deadline of the attempt that was in flight (`begin_attempt`)."""
        row = self.db.conn.execute(
            "SELECT MAX(next_attempt_at) FROM outbox WHERE channel = ? AND status = ? AND uncertain = 1"
            " AND next_attempt_at > ?",
            (channel, PENDING, iso(now)),
        ).fetchone()
        return from_iso(str(row[0])) if row is not None and row[0] is not None else None

    def begin_attempt(self, key: str, in_flight_until: datetime) -> None:
        """Record, durably, that an attempt is about to leave and may be in flight until `in_flight_until` (its
        start plus its deadline). If we crash before its outcome is known, the next run treats the entry as
        possibly delivered and checks before posting again, and does not try it before that time: a platform that
        stores an idempotency key only once the post is made (older Mastodon) may still be making it, and a
        second request with the same key would then make a second post. The outcome (sent, retry, parked)
        overwrites the time."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE outbox SET uncertain = 1, next_attempt_at = ? WHERE key = ?",
                         (iso(in_flight_until), key))

    def mark_sent(self, key: str, now: datetime, remote_id: str | None = None, *, durable: bool = True) -> None:
        """Record the platform's acknowledgement. `durable=False` for a channel whose consumers deduplicate (MQTT):
        should a power cut lose the mark, the notice is sent again, never lost (see `Database.transaction`)."""
        with self.db.transaction(durable=durable) as conn:
            conn.execute(
                "UPDATE outbox SET status = ?, sent_at = ?, remote_id = ?, attempts = attempts + 1, error = NULL"
                " WHERE key = ?",
                (SENT, iso(now), remote_id, key),
            )

    def mark_sent_many(self, keys: Sequence[str], now: datetime, *, durable: bool = True) -> None:
        """`mark_sent` for many entries acknowledged together (a batching channel's), in one transaction."""
        with self.db.transaction(durable=durable) as conn:
            conn.executemany(
                "UPDATE outbox SET status = ?, sent_at = ?, remote_id = NULL, attempts = attempts + 1, error = NULL"
                " WHERE key = ?",
                [(SENT, iso(now), key) for key in keys],
            )

    def retry_time(self, entry: OutboxEntry, now: datetime, retry_after: float | None) -> datetime:
        """When `entry` would come due again after a failure now (its backoff, or the platform's `Retry-After`)."""
        delay = self.backoff.delay(entry.attempts, retry_after, self.rng, emergency=entry.priority == 0)
        return now + timedelta(seconds=delay)

    def retry_later(
        self, entry: OutboxEntry, now: datetime, error: str, retry_after: float | None, *, uncertain: bool = False,
        at: datetime | None = None,
    ) -> datetime:
        """Record a transient failure; returns when the entry becomes due again (`at`, when the caller decided it).

        `uncertain`: the attempt may have reached the platform (it timed out, or the connection broke after the
        request was sent), which the channel must keep in mind before sending again.
        """
        at = at or self.retry_time(entry, now, retry_after)
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, error = ?, uncertain = ?"
                " WHERE key = ?",
                # Uncertain once any attempt may have landed; this attempt's in-flight mark is cleared when its
                # failure shows it did not.
                (iso(at), diagnostic(error), int(entry.uncertain or uncertain), entry.key),
            )
        return at

    def park(self, key: str, error: str) -> None:
        """A permanent failure: keep the row for the operator, never send it again on its own."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET status = ?, attempts = attempts + 1, error = ? WHERE key = ?",
                (PARKED, diagnostic(error), key)
            )

    def pending_count(self, channel: str | None = None) -> int:
        if channel is None:
            row = self.db.conn.execute("SELECT COUNT(*) FROM outbox WHERE status = ?", (PENDING,)).fetchone()
        else:
            row = self.db.conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE status = ? AND channel = ?", (PENDING, channel)
            ).fetchone()
        return int(row[0])
