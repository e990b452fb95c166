"""Plans which retained MQTT topics to publish: what changed, what needs a refresh, and what must be cleared.

Retained state is idempotent and last-writer-wins, so it is published from the committed state, not queued:
on change, in full after every (re)connect, and again before it expires (each payload carries `valid_until` and
an MQTT 5 message expiry, so a display never shows yesterday's crowding). Entries whose feed is not healthy are
*not* refreshed: they expire, and displays show "information unavailable" rather than stale facts.

A cleared topic (a resolved alert) is remembered for one TTL after the clear and cleared again with every full
publish: a broker killed after acknowledging the clear comes back with what it last saved, which may be the
alert itself. After one TTL the broker's copy has expired anyway, so the memory is bounded.

A topic is recorded (with a placeholder digest, durably) before its first publication leaves, and its digest
after the broker acknowledged it: an instance killed between the two, or whose record fails, leaves a message
on the broker that the database still knows of, so the next instance clears it when its entry goes. A
placeholder means "maybe on the broker, content unknown": it matches no payload, so the next round (and every
full publish) publishes the topic's current payload or clears it. Topics already recorded cost nothing more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
import xxhash

from broadcaster.errors import StoreError
from broadcaster.payloads import Body, RetainedItem
from broadcaster.store import Connection, Store, iso, load_retained, reserve_retained, save_retained

log = logging.getLogger(__name__)

#: The digest of a topic recorded before its first publication was acknowledged: it equals no content's digest.
PLACEHOLDER_DIGEST = ""


class SequenceClock:
    """Message sequence numbers: strictly increasing, and still increasing across restarts.

    Microseconds since the epoch, bumped by one when two messages fall in the same microsecond. A restart
    continues above the previous run's numbers without persisting a counter (clocks do not run back by
    more than the time a restart takes, on a machine with NTP).
    """

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns() // 1000)
        return self._last


@dataclass(frozen=True, slots=True)
class Publication:
    """One MQTT message to publish. An empty retained payload clears the topic."""

    topic: str
    payload: bytes
    retain: bool
    expiry_s: int | None = None
    digest: str = ""  # content hash of a retained payload; "" for a clear
    issued_at: datetime | None = None  # when its validity began; refreshes are counted from it


def serialise(body: Body) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def payload_digest(body_bytes: bytes) -> str:
    """A serialised body's content hash, recorded per topic (the `retained` table): equal digests, nothing to
    publish. XXH3, 128 bits: a collision would need a payload built for it, and we build the payloads."""
    return xxhash.xxh3_128_hexdigest(body_bytes)


class Envelope:
    """The envelope of payloads issued at one instant and valid until another, its two timestamps encoded once:
    a plan wraps every topic it publishes (about 1,000 in a full refresh at k = 1) in the same two."""

    __slots__ = ("_head", "_until")

    def __init__(self, issued_at: datetime, valid_until: datetime | None) -> None:
        self._head = b'{"issued_at":' + orjson.dumps(iso(issued_at)) + b',"seq":'
        self._until = b',"valid_until":' + (orjson.dumps(iso(valid_until)) if valid_until else b"null")

    def wrap(self, body_bytes: bytes, seq: int) -> bytes:
        """Prefix the envelope to an already serialised body, so each body is serialised once."""
        return (self._head + str(seq).encode() + self._until
                + (b"," + body_bytes[1:] if body_bytes != b"{}" else b"}"))


def with_envelope(body_bytes: bytes, seq: int, issued_at: datetime, valid_until: datetime | None) -> bytes:
    """Prefix the envelope to an already serialised body, so each body is serialised once."""
    return Envelope(issued_at, valid_until).wrap(body_bytes, seq)


@dataclass(slots=True)
class _Published:
    digest: str
    at: datetime | None  # None: loaded from disk, so we do not know when it reached the broker


class RetainedPlanner:
    """Remembers what is on the broker and decides what to publish next."""

    def __init__(self, ttl: timedelta, max_payload_bytes: int, seq: SequenceClock) -> None:
        self.ttl = ttl
        self.refresh_after = ttl / 2
        self.max_payload_bytes = max_payload_bytes
        self.seq = seq
        self.published: dict[str, _Published] = {}
        #: topic -> when its clear was first acknowledged (kept one TTL, then forgotten)
        self.cleared: dict[str, datetime] = {}
        # topic -> (body, its serialisation, digest): the payload builder hands back the same body object while
        # its content is unchanged, so it is serialised and hashed once, not on every poll.
        self._serialised: dict[str, tuple[Body, bytes, str]] = {}

    def load(self, db: Store) -> None:
        """Take up what the broker holds, as the database remembers it."""
        published, self.cleared = load_retained(db)
        self.published = {t: _Published(d, None) for t, d in published.items()}

    def reserve(self, publications: list[Publication], db: Store) -> list[Publication]:
        """Record, in one durable transaction, the topics of `publications` that may not be on the broker yet,
        before they are published; returns the publications that may go: all of them, or, when that record
        fails, all but the new topics (planned again next round)."""
        new = [(p.topic, PLACEHOLDER_DIGEST) for p in publications if p.payload and p.topic not in self.published]
        if not new:
            return publications
        try:
            with db.transaction() as conn:
                reserve_retained(conn, new)
        except StoreError as exc:
            log.error("not publishing %d new retained topic(s): cannot record them first: %s", len(new), exc)
            unrecorded = {topic for topic, _ in new}
            return [p for p in publications if p.topic not in unrecorded]
        for topic, digest in new:  # only once committed: the memory never knows more than the database
            self.published[topic] = _Published(digest, None)
        return publications

    def plan(
        self, items: Iterable[RetainedItem], now: datetime, *, fresh_sources: set[str], full: bool,
        partial: bool = False,
    ) -> list[Publication]:
        """Publications for this round. `full`: everything (after a reconnect or restart). `partial`: `items` are
        only some of the topics (an emergency's, ahead of the round): nothing is cleared for being absent."""
        out: list[Publication] = []
        seen: set[str] = set()
        envelope = Envelope(now, now + self.ttl)
        expiry = int(self.ttl.total_seconds())
        serialised = self._serialised
        published = self.published
        refresh_from = now - self.refresh_after  # published at or before it: a refresh is due
        for item in items:
            seen.add(item.topic)
            cached = serialised.get(item.topic)
            if cached is not None and cached[0] is item.body:
                body, digest = cached[1], cached[2]
            else:
                body = serialise(item.body)
                digest = payload_digest(body)
                serialised[item.topic] = (item.body, body, digest)
            prev = published.get(item.topic)
            fresh = item.source == "any" or item.source in fresh_sources
            unchanged = not full and prev is not None and prev.digest == digest
            # What the broker holds already (most topics of a steady tick): only a refresh of a fresh source is
            # due, half a TTL after it was issued (or when that is unknown: loaded from disk).
            if unchanged and (not fresh or (prev is not None and prev.at is not None and prev.at > refresh_from)):
                continue
            if full and not fresh and prev is not None and prev.digest == digest and prev.at is not None:
                # After a reconnect a stale entry is re-sent only until its original expiry: never extend it.
                remaining = int((prev.at + self.ttl - now).total_seconds())
                if remaining <= 0:
                    continue
                payload = with_envelope(body, self.seq.next(), prev.at, prev.at + self.ttl)
                out.append(Publication(item.topic, payload, True, remaining, digest, prev.at))
                continue
            payload = envelope.wrap(body, self.seq.next())
            if len(payload) > self.max_payload_bytes:
                log.error("not publishing %s: %d bytes exceeds max_payload_bytes %d",
                          item.topic, len(payload), self.max_payload_bytes)
                continue
            out.append(Publication(item.topic, payload, True, expiry, digest, now))
        if partial:
            return out
        for topic in self.published.keys() - seen:
            out.append(Publication(topic, b"", True))
        if full:
            out.extend(Publication(topic, b"", True) for topic, at in self.cleared.items()
                       if topic not in seen and topic not in self.published and now - at < self.ttl)
        for topic in serialised.keys() - seen:
            del serialised[topic]
        return out

    def unsettle(self, publications: Iterable[Publication]) -> None:
        """The broker refused these (an MQTT 5 reason code): what it holds on their topics is not known any more,
        so the next round publishes them again even if their content goes back to what was last acknowledged
        (in memory only: after a restart every topic is published anyway). A refused clear stays to be cleared."""
        for pub in publications:
            if pub.payload or pub.topic in self.published:
                self.published[pub.topic] = _Published(PLACEHOLDER_DIGEST, None)

    def confirm(self, publications: Iterable[Publication], now: datetime, conn: Connection) -> None:
        """Record publications the broker acknowledged (inside the caller's transaction)."""
        upserts: list[tuple[str, str]] = []
        deletes: list[tuple[str]] = []
        cleared: list[tuple[str, str]] = []
        for pub in publications:
            if pub.payload:
                self.published[pub.topic] = _Published(pub.digest, pub.issued_at or now)
                upserts.append((pub.topic, pub.digest))
            else:
                self.published.pop(pub.topic, None)
                deletes.append((pub.topic,))
                if pub.topic not in self.cleared:  # a repeated clear does not extend the memory of the first
                    self.cleared[pub.topic] = now
                    cleared.append((pub.topic, iso(now)))
        # Forgotten: topics published again, and clears older than one TTL (the broker's copy has expired).
        forget = [(t,) for t, at in self.cleared.items() if t in self.published or now - at >= self.ttl]
        for (topic,) in forget:
            del self.cleared[topic]
        save_retained(conn, published=upserts, unpublished=deletes, cleared=cleared, forgotten=forget)
