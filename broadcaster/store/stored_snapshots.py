"""Which parsed snapshot a feed keeps in the database, and which validators its stored record carries.

A feed's snapshot is stored so that a new process can apply it again when the server answers `304` (or sends the
same bytes): `broadcaster once` from cron, a restarted `run`, a standby taking over. Writing it on every tick
costs every tick the encoding and the write (the passenger-flow snapshot of a city is ~70 KB, ~1 ms a tick at
k = 1), and it is read only after a restart. So a changed snapshot is written at most once per `every`, and the
first time a process has one to write.

What keeps this correct is one rule: **the validators in the stored feed record are those of the body whose
snapshot is stored**. A new process sends them, so the server answers `304` only when its body is still the one
that snapshot was parsed from; otherwise it sends the body, which is parsed like any new one. A snapshot written
late costs at most one parse after a restart. That snapshot may be older than the state committed since: the
poller refuses it when it is (a stale server node answering 304 for its body), as it refuses a 200 of an older
body. The process itself keeps the newest validators in memory and goes on fetching with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from broadcaster.model import FeedSnapshot
from broadcaster.store.feeds import FeedRecord

#: How often, at most, a feed's changed snapshot is written.
SNAPSHOT_EVERY = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class _Stored:
    digest: bytes  # the body's hash (`body_digest`)
    etag: str | None
    last_modified: str | None
    written_at: datetime | None  # None: by another process, at a time this one does not know


@dataclass(frozen=True, slots=True)
class SnapshotWrite:
    """What one poll writes: the feed record as stored, and the snapshot with its body's hash, or None."""

    record: FeedRecord
    snapshot: FeedSnapshot | None
    digest: bytes | None
    stored_after: _Stored | None  # what is stored once this commits (None: unchanged)


class StoredSnapshots:
    """The stored snapshot of each feed, as this process knows it. Used inside each feed's poll lock."""

    def __init__(self, every: timedelta = SNAPSHOT_EVERY) -> None:
        self.every = every
        self._stored: dict[str, _Stored] = {}

    def load(self, digests: Mapping[str, bytes], records: Mapping[str, FeedRecord]) -> None:
        """Take up what the database holds: each stored snapshot's digest, and the validators stored with it."""
        self._stored = {}
        for name, digest in digests.items():
            record = records.get(name)
            self._stored[name] = _Stored(digest, record.etag if record else None,
                                         record.last_modified if record else None, None)

    def forget(self, feed: str) -> None:
        """The stored snapshot cannot be read: the next one to write is written at once."""
        self._stored.pop(feed, None)

    def as_stored(self, record: FeedRecord) -> FeedRecord:
        """`record` as the database keeps it: with the validators of the stored snapshot's body, not newer ones
        (a failed poll records its failure with them)."""
        stored = self._stored.get(record.name)
        if stored is None or (stored.etag, stored.last_modified) == (record.etag, record.last_modified):
            return record
        return replace(record, etag=stored.etag, last_modified=stored.last_modified)

    def plan(self, record: FeedRecord, digest: bytes | None, snapshot: FeedSnapshot | None,
             now: datetime) -> SnapshotWrite:
        """What to write for a good poll whose committed content is `snapshot`, parsed from the body hashed
        `digest` (the same one again after a 304), and whose newest validators are in `record`."""
        if digest is None or snapshot is None or (record.etag is None and record.last_modified is None):
            # No validator: a new process fetches unconditionally, whatever is stored.
            return SnapshotWrite(record, None, None, None)
        stored = self._stored.get(record.name)
        if stored is not None and stored.digest == digest:
            # The stored snapshot is this body's: the server may have given it new validators.
            return SnapshotWrite(record, None, None, replace(stored, etag=record.etag,
                                                             last_modified=record.last_modified))
        if stored is None or stored.written_at is None or not (
                stored.written_at <= now < stored.written_at + self.every):
            return SnapshotWrite(record, snapshot, digest,
                                 _Stored(digest, record.etag, record.last_modified, now))
        # Not yet: the record keeps the validators of the snapshot it is stored with.
        return SnapshotWrite(self.as_stored(record), None, None, None)

    def committed(self, write: SnapshotWrite) -> None:
        """`write` is in the database."""
        if write.stored_after is not None:
            self._stored[write.record.name] = write.stored_after
