"""What the outbox says happened: the state of each post, the threads to reply under, what a budget has spent,
and the reports an operator reads (`broadcaster status`, the admin API, the metrics).

Read-only: the queue itself (what is due, and every change of an entry's state) is `Outbox`'s.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from broadcaster.compose import CORRECTION_VERSION_PREFIX
from broadcaster.outbox import DELETION_VERSION_PREFIX, PARKED, PENDING, SENT, idempotency_key
from broadcaster.store import Store, from_iso, iso


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One row as an operator's report shows it (`broadcaster status`, the admin API's status)."""

    key: str
    channel: str
    notice_id: str
    version: str
    part: int
    payload: bytes
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    error: str | None


_RECORD_COLUMNS = "key, channel, notice_id, version, part, payload, attempts, created_at, sent_at, error"


def _record(r: Any) -> OutboxRecord:  # a sqlite3 row of _RECORD_COLUMNS
    return OutboxRecord(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], from_iso(r[7]),
                        from_iso(r[8]) if r[8] else None, r[9])


class OutboxHistory:
    """Queries over the outbox's rows, for the dispatcher's threads and budgets and the operator's reports."""

    def __init__(self, db: Store) -> None:
        self.db = db

    def status_of(self, notice_id: str, version: str, channel: str, part: int) -> tuple[str, str | None] | None:
        """(status, remote id) of one part of one notice on one channel, or None if it was never queued."""
        row = self.db.conn.execute(
            "SELECT status, remote_id FROM outbox WHERE key = ?", (idempotency_key(notice_id, version, channel, part),)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def thread_root(self, notice_id: str, channel: str, before: datetime) -> tuple[str, str | None] | None:
        """(status, remote id) of the latest post about `notice_id` on `channel` that opened a thread, created
        no later than `before`; None when there is none (the reply then starts a thread of its own)."""
        row = self.db.conn.execute(
            "SELECT status, remote_id FROM outbox WHERE channel = ? AND notice_id = ? AND starts_thread = 1"
            " AND part = 0 AND created_at <= ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (channel, notice_id, iso(before)),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def sent_times(self, channel: str, since: datetime) -> list[datetime]:
        """When each post of `channel` made after `since` was acknowledged (for posting budgets)."""
        rows = self.db.conn.execute(
            "SELECT sent_at FROM outbox WHERE channel = ? AND status = ? AND sent_at > ?", (channel, SENT, iso(since))
        )
        return [from_iso(r[0]) for r in rows]

    def depth(self) -> dict[tuple[str, str], int]:
        """Row counts per (channel, status)."""
        rows = self.db.conn.execute("SELECT channel, status, COUNT(*) FROM outbox GROUP BY channel, status")
        return {(c, s): n for c, s, n in rows}

    def backlog(self) -> dict[tuple[str, str], tuple[int, datetime]]:
        """(count, oldest created_at) per (channel, status) of pending and parked rows. Sent rows, which
        accumulate, are never counted: the query stays within the (status, channel, ...) index whatever the
        outbox's history."""
        rows = self.db.conn.execute(
            "SELECT channel, status, COUNT(*), MIN(created_at) FROM outbox WHERE status IN (?, ?)"
            " GROUP BY channel, status",
            (PENDING, PARKED),
        )
        return {(c, s): (n, from_iso(oldest)) for c, s, n, oldest in rows}

    def parked(self, limit: int) -> list[OutboxRecord]:
        """The latest `limit` parked rows, newest first (they need an operator)."""
        rows = self.db.conn.execute(
            f"SELECT {_RECORD_COLUMNS} FROM outbox WHERE status = ? ORDER BY created_at DESC LIMIT ?",  # noqa: S608 (a constant column list)
            (PARKED, limit),
        )
        return [_record(r) for r in rows]

    def latest_sent(self, limit: int) -> list[OutboxRecord]:
        """The last `limit` rows acknowledged, latest first."""
        rows = self.db.conn.execute(
            f"SELECT {_RECORD_COLUMNS} FROM outbox WHERE status = ? ORDER BY sent_at DESC LIMIT ?",  # noqa: S608 (a constant column list)
            (SENT, limit),
        )
        return [_record(r) for r in rows]

    def latest_payload(self, channel: str, notice_id: str) -> bytes | None:
        """The payload of the latest entry about `notice_id` queued for `channel`, whatever its status."""
        row = self.db.conn.execute(
            "SELECT payload FROM outbox WHERE notice_id = ? AND channel = ? ORDER BY created_at DESC LIMIT 1",
            (notice_id, channel),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def issued(self, channel: str, notice_id: str) -> bool:
        """Whether any entry about `notice_id` was ever queued for `channel`. A deletion (`DELETION_VERSION_PREFIX`)
        does not count: it says nothing of the notice, and was once queued on channels that never carried it."""
        return self.db.conn.execute(
            "SELECT 1 FROM outbox WHERE channel = ? AND notice_id = ? AND version NOT LIKE ? LIMIT 1",
            (channel, notice_id, DELETION_VERSION_PREFIX + "%"),
        ).fetchone() is not None

    def followed(self, channel: str, notice_id: str, kinds: Collection[str], *, stream: str) -> bool:
        """Whether `channel` was queued the latest notice about `notice_id`, of one of `kinds`, that the notice
        stream `stream` (which carries every notice) was queued: whether the channel follows the story as it now
        stands. One that posted only an earlier episode under the same id (an alert id a feed reused, a line's
        delays of last week, a station's crowding when the channel still took every station) does not. When the
        stream carried none (a digest its slot did not send to the stream), whether any entry was queued for it."""
        rows = self.db.conn.execute(
            "SELECT version, payload FROM outbox WHERE channel = ? AND notice_id = ?"
            " ORDER BY created_at DESC, rowid DESC", (stream, notice_id))
        for version, payload in rows:
            try:
                kind = orjson.loads(payload).get("kind")
            except orjson.JSONDecodeError:
                continue
            if kind in kinds:
                return self.db.conn.execute(
                    "SELECT 1 FROM outbox WHERE channel = ? AND notice_id = ? AND version = ? LIMIT 1",
                    (channel, notice_id, version),
                ).fetchone() is not None
        return self.issued(channel, notice_id)

    def original_remote_ids(self, channel: str, notice_id: str) -> list[str]:
        """The platform ids of the original posts about `notice_id` on `channel` (what a deletion takes down).

        The one place that says what an original is: an entry that was sent and got a remote id, and whose
        version is neither a correction's nor a deletion's (`CORRECTION_VERSION_PREFIX`,
        `DELETION_VERSION_PREFIX`): a correction stays up, and a deletion has no post of its own.
        """
        rows = self.db.conn.execute(
            "SELECT remote_id FROM outbox WHERE channel = ? AND notice_id = ? AND status = ? AND remote_id IS NOT NULL"
            " AND version NOT LIKE ? AND version NOT LIKE ?",
            (channel, notice_id, SENT, CORRECTION_VERSION_PREFIX + "%", DELETION_VERSION_PREFIX + "%"),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def recent(self, channel: str, since: datetime, limit: int) -> list[OutboxRecord]:
        """The latest `limit` rows queued for `channel` at or after `since`, newest first, whatever their status
        (the public site's feeds: what was announced, delivered yet or not)."""
        rows = self.db.conn.execute(
            f"SELECT {_RECORD_COLUMNS} FROM outbox WHERE channel = ? AND created_at >= ?"  # noqa: S608 (a constant column list)
            " ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (channel, iso(since), limit),
        )
        return [_record(r) for r in rows]

    def last_row(self) -> int:
        """The rowid of the row queued last, on any channel (0 before any): it changes whenever a row is queued
        (rows are never deleted, so a rowid is never reused)."""
        row = self.db.conn.execute("SELECT MAX(rowid) FROM outbox").fetchone()
        return int(row[0] or 0)
