"""The GTFS-Realtime FeedMessage: its bytes decoded, its header checked, its entities handed to the alert and
trip parts by kind, and their results gathered into one `FeedSnapshot`."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from google.transit import gtfs_realtime_pb2 as pb

from broadcaster.errors import FeedFormatError
from broadcaster.feeds.gtfs_rt.alerts import Languages, convert_alerts
from broadcaster.feeds.gtfs_rt.fields import MAX_EPOCH_SECONDS, as_text
from broadcaster.feeds.gtfs_rt.incremental import Aggregate, EntityCache, EntityFacts, Parsed, Wants, entity_facts
from broadcaster.feeds.gtfs_rt.trips import delays_from_facts, occupancy_from_facts
from broadcaster.model import Alert, FeedSnapshot, LineDelay, LineOccupancy, Network

#: The entity kinds a GTFS-RT feed can be configured to carry.
KINDS: frozenset[str] = frozenset({"alerts", "trip-updates", "vehicle-positions"})

_DIFFERENTIAL = pb.FeedHeader.DIFFERENTIAL
_FIRST_WORD = re.compile(rb"[^\s>]{1,20}")
_PRINTABLE = frozenset(range(0x20, 0x7F)) | frozenset(b"\t\r\n")


def parse_gtfs_rt(
    feed: str,
    body: bytes,
    network: Network,
    *,
    carries: frozenset[str],
    default_language: str,
    cache: EntityCache | None = None,
) -> FeedSnapshot:
    """Turn one GTFS-Realtime FeedMessage into a snapshot of what it says about the network.

    Args:
        feed: the feed's name in the config, carried into errors and the snapshot.
        body: the protobuf bytes as fetched.
        network: the operator's network; ids the feed names are mapped onto its lines and stations.
        carries: which of "alerts", "trip-updates" and "vehicle-positions" this feed is configured to carry.
            Those kinds come back as tuples (possibly empty, meaning "nothing now"); the others as None.
        default_language: the language of translations that carry no language tag.
        cache: the feed's own `EntityCache`, if it keeps one: entities whose bytes are those of the last good body
            parsed through it are not decoded or translated again (the snapshot is the same as without it).

    Returns:
        The snapshot. Invalid alert entities are left out, listed in `skipped_alert_ids` and described in
        `problems`, as are trips and vehicles that name no known line (one summary line each).

    Raises:
        FeedFormatError: the body is not a usable GTFS-Realtime feed (not protobuf, HTML, no header,
            DIFFERENTIAL, no or millisecond header timestamp).
    """
    unknown_kinds = carries - KINDS
    if unknown_kinds:
        raise ValueError(f"unknown GTFS-RT entity kinds {sorted(unknown_kinds)}; expected some of {sorted(KINDS)}")
    wants = Wants("alerts" in carries, "trip-updates" in carries, "vehicle-positions" in carries)
    parsed = cache.parse(body, network, wants, default_language) if cache is not None else None
    incremental = parsed is not None
    if parsed is None:
        message = _decode(feed, body)
        timestamp = _header_timestamp(feed, message.header)
        parsed = Parsed(message.header, entity_facts(message.entity, network, wants))
    else:
        timestamp = _header_timestamp(feed, parsed.header)

    aggregate = parsed.aggregate or _aggregate(parsed.entities, network, wants, default_language)
    if cache is not None:
        # Only a body that parsed is kept; one that went through the full parse leaves nothing to reuse.
        if incremental:
            cache.keep(aggregate)
        else:
            cache.forget()
    return FeedSnapshot(
        feed=feed,
        timestamp=timestamp,
        alerts=aggregate.alerts,
        delays=aggregate.delays,
        occupancy=aggregate.occupancy,
        skipped_alert_ids=aggregate.skipped_alert_ids,
        problems=aggregate.problems,
    )


def _aggregate(entities: list[EntityFacts], network: Network, wants: Wants, default_language: str) -> Aggregate:
    """What the entities say together: alerts by id, delays and occupancy per line and direction, the problems."""
    problems: list[str] = []
    alerts: tuple[Alert, ...] | None = None
    skipped: frozenset[str] = frozenset()
    if wants.alerts:
        languages = Languages(default_language)
        alert_entities = [alert for alert, _, _ in entities if alert is not None]
        alerts, skipped = convert_alerts(alert_entities, network, languages, problems)
    delays: tuple[LineDelay, ...] | None = None
    occupancy: tuple[LineOccupancy, ...] | None = None
    if wants.trips:
        trip_facts = [trip for _, trip, _ in entities if trip is not None]
        delays = delays_from_facts(trip_facts, network, problems)
    if wants.vehicles:
        vehicle_facts = [vehicle for _, _, vehicle in entities if vehicle is not None]
        occupancy = occupancy_from_facts(vehicle_facts, network, problems)
    return Aggregate(alerts, skipped, delays, occupancy, tuple(problems))


def _decode(feed: str, body: bytes) -> pb.FeedMessage:
    if not body:
        raise FeedFormatError(feed, "empty body")
    message = pb.FeedMessage()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise FeedFormatError(feed, _not_protobuf(body)) from exc
    if not message.HasField("header"):
        # Some text happens to decode as unknown fields; say what it looks like rather than "no header".
        reason = _not_protobuf(body) if _text_start(body) else "not a GTFS-Realtime feed: the FeedMessage has no header"
        raise FeedFormatError(feed, reason)
    return message


def _text_start(body: bytes) -> bytes:
    """The first bytes of a body that looks like text (an HTML error page, JSON), else b"".

    Only used once decoding failed: a valid feed may well start with b"\n<" (a 60-byte header).
    """
    head = body[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head if head and all(byte in _PRINTABLE for byte in head[:16]) else b""


def _not_protobuf(body: bytes) -> str:
    head = _text_start(body)
    if head:
        return f"not a GTFS-Realtime protobuf (starts with {_first_word(head)!r})"
    return "not a GTFS-Realtime protobuf (the decoder found corrupt wire format)"


def _first_word(head: bytes) -> str:
    match = _FIRST_WORD.match(head)
    return (match.group() if match else head[:20]).decode("ascii", errors="replace")


def _header_timestamp(feed: str, header: pb.FeedHeader) -> datetime:
    version = as_text(header.gtfs_realtime_version)
    if not version:
        raise FeedFormatError(feed, "header.gtfs_realtime_version is missing")
    if header.incrementality == _DIFFERENTIAL:
        raise FeedFormatError(feed, "DIFFERENTIAL feeds are not supported: serve a FULL_DATASET feed")
    seconds = header.timestamp
    if not seconds:
        raise FeedFormatError(feed, "header.timestamp is missing or 0")
    if seconds > MAX_EPOCH_SECONDS:
        raise FeedFormatError(
            feed, f"header.timestamp {seconds} looks like milliseconds; GTFS-Realtime wants POSIX seconds"
        )
    return datetime.fromtimestamp(seconds, UTC)

