"""The feed poller: fetch one feed, parse it, check its freshness, and hand the snapshot to the pipeline.

It owns each feed's record (validators, last timestamp, failures) and the snapshot of the body last
committed, so a 304 (or a body byte for byte the same) is applied again without parsing. One poll per feed
runs at a time: a poll reads the feed's record before its fetch and writes it after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import orjson
import xxhash

from broadcaster import __version__
from broadcaster.config import Config, FeedConfig
from broadcaster.errors import FeedError, FeedFormatError, StoreError
from broadcaster.feeds.fetch import FeedFetcher
from broadcaster.feeds.freshness import check_freshness
from broadcaster.feeds.gtfs_rt import EntityCache, parse_gtfs_rt
from broadcaster.feeds.passenger_flow import ReadingCache, parse_passenger_flow
from broadcaster.metrics import Metrics, reason_label
from broadcaster.model import FeedSnapshot, Network
from broadcaster.pipeline import Pipeline
from broadcaster.store import (
    Connection,
    FeedRecord,
    Store,
    load_feeds,
    load_snapshot,
    load_snapshot_digests,
    save_feed,
    save_snapshot,
)
from broadcaster.store.stored_snapshots import StoredSnapshots

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PollOutcome:
    feed: str
    ok: bool
    changes: int = 0
    notices: int = 0
    error: str | None = None


def body_digest(body: bytes) -> bytes:
    """A fetched body's fingerprint: an unchanged body is neither parsed nor applied again. XXH3 (128 bits), not a
    cryptographic hash: it tells a republished body from a new one, and the feed's server, who could forge a
    collision, can send any content anyway. It reads a 1.3 MB trip-update body in ~0.02 ms, BLAKE2b in ~1.7 ms
    (docs/design.md, "Measured facts")."""
    return xxhash.xxh3_128_digest(body)


def parse_keys(config: Config, network: Network) -> dict[str, bytes]:
    """Feed name -> a hash of everything its parse depends on besides the body: the release, the feed's kind
    and settings, the default language and the network's ids. A stored snapshot is applied again on a 304
    only under the same key (a new GTFS or config, then a restart: the next fetch is unconditional)."""
    ids = orjson.dumps([__version__, config.network.default_language, list(network.lines),
                        dict(network.stop_to_station), dict(network.trip_to_line), dict(network.trip_direction)])
    return {f.name: body_digest(ids + orjson.dumps([f.kind, sorted(f.contains)])) for f in config.feeds}


def parse_feed(feed: FeedConfig, body: bytes, network: Network, default_language: str,
               cache: EntityCache | ReadingCache | None = None) -> FeedSnapshot:
    """A feed's body as a snapshot, by the feed's kind (raises FeedError when it is unusable as a whole).
    `cache` is the feed's own: a GTFS-RT body's unchanged entities are not decoded again, a passenger-flow
    document's unchanged records not read again."""
    try:
        if feed.kind == "gtfs-rt":
            return parse_gtfs_rt(feed.name, body, network, carries=frozenset(feed.contains),
                                 default_language=default_language,
                                 cache=cache if isinstance(cache, EntityCache) else None)
        return parse_passenger_flow(feed.name, body, network, cache if isinstance(cache, ReadingCache) else None)
    except FeedError:
        raise
    except Exception as exc:
        # What a body makes a parser do that it did not foresee (a value nested past the interpreter's recursion
        # limit, a bug of ours): the feed fails like any unreadable body (logged, counted, its last good state
        # kept, fetched again next time) instead of ending the poll round for every feed.
        log.exception("feed %r: the body could not be read", feed.name)
        raise FeedFormatError(feed.name, f"the body could not be read ({type(exc).__name__}; see the log)") from exc


class FeedPoller:
    """Polls feeds into the pipeline; never raises for what a feed sends."""

    def __init__(
        self,
        config: Config,
        network: Network,
        db: Store,
        fetcher: FeedFetcher,
        pipeline: Pipeline,
        metrics: Metrics,
        *,
        now: Callable[[], datetime],
        publish: Callable[[], Awaitable[int]],
    ) -> None:
        self.config = config
        self.network = network
        self._db = db
        self.fetcher = fetcher
        self._pipeline = pipeline
        self._metrics = metrics
        self._now = now
        self._publish = publish
        self.records: dict[str, FeedRecord] = load_feeds(db)
        # One poll per feed at a time: a second poll of the same feed (the start-up round beside a scheduled job)
        # must wait, or an older answer arriving late would be applied over a newer one.
        self._locks = {f.name: asyncio.Lock() for f in config.feeds}
        # feed -> hash of the body last parsed and committed; its snapshot is in memory or in the database
        self._parse_keys = parse_keys(config, network)
        self._body_digests: dict[str, bytes] = load_snapshot_digests(db, self._parse_keys)
        self._snapshots: dict[str, FeedSnapshot] = {}  # feed -> what that body said
        # What the database holds of them (written at most every few minutes; see StoredSnapshots)
        self._stored = StoredSnapshots()
        self._stored.load(self._body_digests, self.records)
        # feed -> the entities of its last good GTFS-RT body, or the readings of its last good passenger-flow
        # document, reused by the next parse (used only inside the feed's lock)
        self._parse_caches: dict[str, EntityCache | ReadingCache] = {
            f.name: EntityCache() if f.kind == "gtfs-rt" else ReadingCache() for f in config.feeds}

    def load(self) -> None:
        """Read the feed records and the committed bodies' digests again (a standby taking over, broadcaster/ha):
        the former leader committed newer ones since start-up. `records` is updated in place (others hold it)."""
        self.records.clear()
        self.records.update(load_feeds(self._db))
        self._body_digests = load_snapshot_digests(self._db, self._parse_keys)
        self._stored.load(self._body_digests, self.records)
        self._snapshots.clear()
        self._parse_caches = {name: type(cache)() for name, cache in self._parse_caches.items()}

    async def poll_round(self, feeds: Sequence[FeedConfig] | None = None) -> list[PollOutcome]:
        """Poll several feeds at once and publish the retained state they changed once, not once per feed
        (at start-up and in `once`: one poll per feed would publish an interchange's display several times)."""
        outcomes = await asyncio.gather(*(self.poll(f, publish=False) for f in feeds or self.config.feeds))
        await self._publish()
        return list(outcomes)

    async def poll(self, feed: FeedConfig, *, publish: bool = True) -> PollOutcome:
        """Fetch one feed and carry what changed through the pipeline. Never raises for bad input.

        `publish=False` leaves the retained topics to the caller (`poll_round`).
        """
        async with self._locks.setdefault(feed.name, asyncio.Lock()):
            return await self._poll(feed, publish=publish)

    def _fail(self, feed: FeedConfig, record: FeedRecord, now: datetime, reason: str) -> PollOutcome:
        failed = replace(
            record, last_error=reason, last_error_at=now, consecutive_failures=record.consecutive_failures + 1
        )
        self.records[feed.name] = failed
        log.warning(
            "feed %r unusable: %s; keeping the last good state (%d failure(s) in a row)",
            feed.name, reason, failed.consecutive_failures,
        )
        try:
            with self._db.transaction(durable=False) as conn:  # bookkeeping: see Database.transaction
                save_feed(conn, self._stored.as_stored(failed))
        except StoreError as exc:
            log.error("could not record the failure of feed %r: %s", feed.name, exc)
        return PollOutcome(feed.name, False, error=reason)

    async def _poll(self, feed: FeedConfig, *, publish: bool) -> PollOutcome:
        record = self.records.get(feed.name) or FeedRecord(feed.name)
        # A conditional fetch only when the last committed content can be applied again on a 304: its snapshot
        # is kept with the feed record (in this process's memory, or in the database for a new process).
        conditional = feed.name in self._body_digests
        started = time.perf_counter()
        try:
            result = await self.fetcher.fetch(
                feed.name, feed.url, timeout_s=feed.timeout_seconds, max_bytes=feed.max_bytes,
                etag=record.etag if conditional else None,
                last_modified=record.last_modified if conditional else None,
            )
            now = self._now()
            # Hashed once per body (1.3 MB of trip updates at k = 1 is ~1-2 ms): compared here, stored when committed.
            digest = body_digest(result.body) if result.body is not None else None
            if digest is not None and record.feed_timestamp is not None and \
                    self._body_digests.get(feed.name) == digest:
                # Byte for byte what we parsed last time (a server without ETag or Last-Modified): treat it as
                # not modified rather than parse and diff it again.
                result = replace(result, body=None)
                digest = None
            if result.body is None:
                # Not modified: still good, as long as the content we hold is not too old. The snapshot parsed
                # last time is applied again (no parsing), so this fetch counts like any good one: an alert
                # missing from it draws nearer to its all-clear, and time alone can change things (an active
                # period beginning or ending while the feed stays the same).
                if record.feed_timestamp is not None:
                    check_freshness(feed.name, record.feed_timestamp, now=now, max_age_s=feed.max_age_seconds,
                                    previous=None)
                snapshot = self._last_snapshot(feed.name)
                if snapshot is not None and record.feed_timestamp is not None:
                    # A new process's stored snapshot may be older than the state it committed (it is written at
                    # most every few minutes): a stale server node still holding that body, answering its 304,
                    # must not take the state back, as a 200 of that body would not (going backwards).
                    check_freshness(feed.name, snapshot.timestamp, now=now, max_age_s=feed.max_age_seconds,
                                    previous=record.feed_timestamp)
            else:
                snapshot = parse_feed(feed, result.body, self.network, self.config.network.default_language,
                                      self._parse_caches.get(feed.name))
                check_freshness(
                    feed.name, snapshot.timestamp, now=now, max_age_s=feed.max_age_seconds,
                    previous=record.feed_timestamp,
                )
        except FeedError as exc:
            self._metrics.fetch(feed.name, time.perf_counter() - started, ok=False, reason=reason_label(exc))
            return self._fail(feed, record, self._now(), exc.reason)
        self._metrics.fetch(feed.name, time.perf_counter() - started, ok=True)
        good = replace(
            record, etag=result.etag, last_modified=result.last_modified, last_ok_at=now,
            last_error=None, consecutive_failures=0,
        )
        if snapshot is None:
            # Not modified, and the stored snapshot is unreadable (or the server ignored that the fetch was
            # unconditional): nothing to diff, but the feed is healthy and its retained topics may be due a
            # refresh. The next fetch is unconditional (`_last_snapshot` forgot the digest).
            self.records[feed.name] = good
            try:
                with self._db.transaction(durable=False) as conn:  # bookkeeping: see Database.transaction
                    save_feed(conn, good)
            except StoreError as exc:
                log.error("feed %r: could not record the fetch: %s", feed.name, exc)
            if publish:
                await self._publish()
            return PollOutcome(feed.name, True)
        if snapshot.problems and result.body is not None:
            log.warning("feed %r: skipped %d record(s): %s", feed.name, len(snapshot.problems),
                        "; ".join(snapshot.problems))
        good = replace(good, feed_timestamp=snapshot.timestamp, problems=snapshot.problems)
        # The snapshot a new process would apply on a 304, stored with the validators of its body
        # (StoredSnapshots): this body's, or after a 304 the same one's again.
        write = self._stored.plan(good, digest if digest is not None else self._body_digests.get(feed.name),
                                  snapshot, now)

        def record_fetch(conn: Connection) -> None:
            save_feed(conn, write.record)
            if write.snapshot is not None and write.digest is not None:
                save_snapshot(conn, write.digest, self._parse_keys[feed.name], write.snapshot)

        try:
            # sync_later: a poll answers no one, so its commit need not hold the loop for the disk; the channels
            # wait for that sync before they send its notices (Pipeline.advance).
            transition, notices = await self._pipeline.advance(
                lambda: self._pipeline.feed_step(snapshot), now, on_commit=record_fetch, publish=publish,
                sync_later=True,
            )
        except StoreError as exc:
            # Nothing was committed: the state stays as it was and the next poll tries again.
            log.error("feed %r: could not commit this tick: %s", feed.name, exc)
            return PollOutcome(feed.name, False, error=str(exc))
        self.records[feed.name] = good
        self._stored.committed(write)
        if digest is not None:
            self._body_digests[feed.name] = digest
            self._snapshots[feed.name] = snapshot
        if transition.changes:
            log.info("feed %r: %d change(s), %d notice(s)", feed.name, len(transition.changes), len(notices))
        return PollOutcome(feed.name, True, len(transition.changes), len(notices))

    def _last_snapshot(self, feed: str) -> FeedSnapshot | None:
        """The snapshot of the feed's last committed body: from memory, else (a new process) from the database.

        None when there is none or it cannot be read; the digest is then forgotten, so the next fetch is
        unconditional and brings a body to parse.
        """
        snapshot = self._snapshots.get(feed)
        if snapshot is None and feed in self._body_digests:
            snapshot = load_snapshot(self._db, feed)
            if snapshot is None:
                log.warning("feed %r: the stored snapshot cannot be read; fetching the feed in full", feed)
                del self._body_digests[feed]
                self._stored.forget(feed)
            else:
                self._snapshots[feed] = snapshot
        return snapshot
