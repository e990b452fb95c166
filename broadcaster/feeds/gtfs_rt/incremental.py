"""Parsing a feed again when only a few of its entities changed (issue 16: "parse only the trip updates whose bytes
changed").

A FeedMessage's wire format is a sequence of top-level fields: the header (field 1) and one length-delimited record
per FeedEntity (field 2). `split_feed` splits a body into those records with protobuf's own decoder (a twin of the
FeedMessage whose two fields are bytes, so nothing nested is decoded); `EntityCache` keeps, for one feed, what the
parse made of each entity of the previous good body (its `EntityFacts`), keyed by the entity's bytes, and decodes
only the records it has not seen. The facts are a pure function of the entity's bytes and the parse's context
(network, carried kinds, default language), so reusing them gives the snapshot a fresh parse gives; when the entity
records are the previous body's, in the same order, the aggregate (alerts, delays, occupancy, problems) is reused too.

Decoding stays protobuf's: the header records and the unseen entity records are decoded together as one
FeedMessage, so a body the full parse refuses is refused (its bad record is among them, or its framing broke the
split). Anything unusual (broken framing, any other top-level field, no header) takes the full parse, which raises
its error or parses it, and empties the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet
from google.transit import gtfs_realtime_pb2 as pb

from broadcaster.feeds.gtfs_rt.alerts import AlertEntity
from broadcaster.feeds.gtfs_rt.trips import TripFact, VehicleFact, trip_fact, vehicle_fact

if TYPE_CHECKING:
    from collections.abc import Iterable

    from broadcaster.model import Alert, LineDelay, LineOccupancy, Network

_HEADER_TAG = b"\x0a"  # field 1, length-delimited
_ENTITY_TAG = b"\x12"  # field 2, length-delimited


class Wants(NamedTuple):
    """The entity kinds a parse translates."""

    alerts: bool
    trips: bool
    vehicles: bool


#: What one FeedEntity contributes to the snapshot: its alert, trip update and vehicle position facts (None: not
#: carried, absent, or the entity is deleted). A plain tuple: built for every entity, it must be cheap.
EntityFacts = tuple[AlertEntity | None, TripFact | None, VehicleFact | None]

_NOTHING: EntityFacts = (None, None, None)


def entity_facts(entities: Iterable[pb.FeedEntity], network: Network, wants: Wants) -> list[EntityFacts]:
    """Each entity's facts, in order. Equal facts are one tuple: an `EntityCache` keeps them for a whole body, and
    most vehicles on a line and direction say the same (k = 1: 3,000 vehicle positions, 197 distinct facts)."""
    want_alerts, want_trips, want_vehicles = wants
    facts: list[EntityFacts] = []
    append = facts.append
    shared: dict[EntityFacts, EntityFacts] = {}
    share = shared.setdefault
    for entity in entities:
        if entity.is_deleted:
            append(_NOTHING)
            continue
        has_field = entity.HasField
        fact = (
            AlertEntity(entity) if want_alerts and has_field("alert") else None,
            trip_fact(entity.trip_update, network) if want_trips and has_field("trip_update") else None,
            vehicle_fact(entity.vehicle, network) if want_vehicles and has_field("vehicle") else None,
        )
        append(share(fact, fact))
    return facts


class Split(NamedTuple):
    """A body's top-level records: the header's bytes (each time field 1 occurs) and each entity's bytes."""

    headers: list[bytes]
    entities: list[bytes]


def _raw_feed_message() -> type[Message]:
    """A message with the FeedMessage's two fields as `repeated bytes`: protobuf's own decoder then splits a body
    into its records (framing checked as for the FeedMessage, nothing nested decoded) at C speed."""
    file = descriptor_pb2.FileDescriptorProto(name="broadcaster_raw_feed.proto", package="broadcaster_raw")
    message = file.message_type.add(name="RawFeedMessage")
    for number, name in ((1, "header"), (2, "entity")):
        message.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("broadcaster_raw.RawFeedMessage"))


_RAW_FEED_MESSAGE = _raw_feed_message()


def split_feed(body: bytes) -> Split | None:
    """The body's header and entity records, or None when its framing is broken or it has any other top-level field
    (an unknown field, a field with an unexpected wire type): those bodies take the full parse."""
    raw = _RAW_FEED_MESSAGE()
    try:
        raw.ParseFromString(body)
    except DecodeError:
        return None
    if len(UnknownFieldSet(raw)):
        return None
    headers: list[bytes] = list(raw.header)  # type: ignore[attr-defined]
    entities: list[bytes] = list(raw.entity)  # type: ignore[attr-defined]
    return Split(headers, entities)


def _record(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length as a varint, the payload."""
    length = len(payload)
    prefix = bytearray(tag)
    while length >= 0x80:
        prefix.append((length & 0x7F) | 0x80)
        length >>= 7
    prefix.append(length)
    return bytes(prefix) + payload


class Aggregate(NamedTuple):
    """What a body's entities say together: a snapshot but for its feed name and timestamp."""

    alerts: tuple[Alert, ...] | None
    skipped_alert_ids: frozenset[str]
    delays: tuple[LineDelay, ...] | None
    occupancy: tuple[LineOccupancy, ...] | None
    problems: tuple[str, ...]


class Parsed(NamedTuple):
    header: pb.FeedHeader
    entities: list[EntityFacts]
    #: The previous good body's aggregate when this body's entity records are the same, in the same order (a feed
    #: whose header alone moved): nothing to aggregate again.
    aggregate: Aggregate | None = None


class EntityCache:
    """One feed's entities of its previous good body, by their bytes, with their facts. Held by whoever parses that
    feed (the poller, one per feed); bounded by one body's entities. Not shared between feeds or threads."""

    def __init__(self) -> None:
        self._context: tuple[Network, Wants, str] | None = None
        self._facts: dict[bytes, EntityFacts] = {}
        self._pending: dict[bytes, EntityFacts] = {}
        self._payloads: list[bytes] = []  # the previous good body's entity records, in order
        self._pending_payloads: list[bytes] = []
        self._entities: list[EntityFacts] = []  # their facts, in the same order
        self._pending_entities: list[EntityFacts] = []
        self._aggregate: Aggregate | None = None  # what they said together
        #: How many entities were decoded through this cache (a seam for tests: reuse shows as fewer).
        self.decoded = 0

    def parse(self, body: bytes, network: Network, wants: Wants, default_language: str) -> Parsed | None:
        """The header and each entity's facts, decoding only the entities not in the previous good body; None when
        the body must go through the full parse (it will raise its error, or the split met something unusual)."""
        context = (network, wants, default_language)
        if self._context is None or self._context[0] is not network or self._context[1:] != context[1:]:
            self.forget()
            self._context = context
        split = split_feed(body)
        if split is None:
            return None
        known = self._facts
        payloads = split.entities
        # The previous good body's very entity records, in the same order (a feed that restamped its header):
        # nothing to decode, look up or aggregate again.
        same = self._aggregate is not None and payloads == self._payloads
        message = pb.FeedMessage()
        try:
            if same:
                unseen = []
                message.ParseFromString(b"".join([_record(_HEADER_TAG, header) for header in split.headers]))
            elif known:
                unseen = [payload for payload in dict.fromkeys(payloads) if payload not in known]
                records = [_record(_HEADER_TAG, header) for header in split.headers]
                records += [_record(_ENTITY_TAG, payload) for payload in unseen]
                message.ParseFromString(b"".join(records))
            else:
                # Nothing to reuse (the first body, or one after a full parse): the body is those very records, and
                # decoding it as it is spares a copy of it.
                unseen = payloads
                message.ParseFromString(body)
        except DecodeError:
            return None
        if not message.HasField("header") or len(message.entity) != len(unseen):
            return None
        if same:
            self._pending, self._pending_payloads, self._pending_entities = known, self._payloads, self._entities
            return Parsed(message.header, self._entities, self._aggregate)
        self.decoded += len(unseen)
        decoded = entity_facts(message.entity, network, wants)
        if known:
            lookup = known | dict(zip(unseen, decoded, strict=True))
            entities = [lookup[payload] for payload in payloads]
        else:
            entities = decoded  # the whole body was decoded, in order
        # Only this body's entities are kept for the next parse: the cache never grows past one body.
        self._pending = dict(zip(payloads, entities, strict=True))
        self._pending_payloads = payloads
        self._pending_entities = entities
        return Parsed(message.header, entities)

    def keep(self, aggregate: Aggregate) -> None:
        """The body last given to `parse` was good and its entities said `aggregate`: the next parse reuses both."""
        self._facts = self._pending
        self._payloads = self._pending_payloads
        self._entities = self._pending_entities
        self._aggregate = aggregate
        self._pending = {}
        self._pending_payloads = []
        self._pending_entities = []

    def forget(self) -> None:
        """A body went through the full parse: nothing of the previous one is kept (the bound stays one body)."""
        self._facts = {}
        self._pending = {}
        self._payloads = []
        self._pending_payloads = []
        self._entities = []
        self._pending_entities = []
        self._aggregate = None
