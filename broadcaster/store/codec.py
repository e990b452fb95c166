"""How values are written in the database: explicit JSON, so the file stays readable and survives refactors of
the classes, and times as ISO 8601 in UTC."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

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
from broadcaster.state import AlertRecord, CrowdingRecord, LineStatus, LineStatusKind


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _utc(at: datetime) -> datetime:
    """`at` in UTC, for orjson to write itself: the same text `iso` gives (RFC 3339, `+00:00`, microseconds when
    there are any) at a fifth of the cost. A steady tick encodes every station's crowding record again, with four
    or five times each (~1,000 times in all for 500 stations)."""
    return at if at.tzinfo is UTC else at.astimezone(UTC)


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


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
    return [r.station_id, int(r.level), _utc(r.observed_at), r.percentage, r.line_id, r.direction_id]


def _decode_reading(v: list[Any]) -> CrowdingReading:
    return CrowdingReading(v[0], Occupancy(v[1]), from_iso(v[2]), v[3], v[4], v[5])


def encode_crowding_record(r: CrowdingRecord) -> dict[str, Any]:
    """For `dumps_sorted` only: its times are datetimes, which orjson writes as `iso` would (`_utc`)."""
    return {
        "station_id": r.station_id, "level": int(r.level), "percentage": r.percentage,
        "observed_at": _utc(r.observed_at), "changed_at": _utc(r.changed_at), "trend": r.trend,
        "change_percentage": r.change_percentage,
        "candidate": int(r.candidate) if r.candidate is not None else None,
        "candidate_since": _utc(r.candidate_since) if r.candidate_since else None,
        "platforms": [_encode_reading(p) for p in r.platforms], "feed": r.feed,
    }


def decode_crowding_record(d: Mapping[str, Any]) -> CrowdingRecord:
    return CrowdingRecord(
        d["station_id"], Occupancy(d["level"]), d["percentage"], from_iso(d["observed_at"]),
        from_iso(d["changed_at"]), d["trend"], d["change_percentage"],
        Occupancy(d["candidate"]) if d["candidate"] is not None else None, _opt_dt(d["candidate_since"]),
        tuple(_decode_reading(p) for p in d["platforms"]), d["feed"],
    )


def encode_delays(ds: tuple[LineDelay, ...]) -> list[Any]:
    return [[d.line_id, d.direction_id, d.trips, d.median_delay_s, d.max_delay_s, d.cancelled_trips] for d in ds]


def decode_delays(v: list[Any]) -> tuple[LineDelay, ...]:
    return tuple(LineDelay(*d) for d in v)


def encode_occupancy(os_: tuple[LineOccupancy, ...]) -> list[Any]:
    return [[o.line_id, o.direction_id, int(o.level), o.vehicles] for o in os_]


def decode_occupancy(v: list[Any]) -> tuple[LineOccupancy, ...]:
    return tuple(LineOccupancy(o[0], o[1], Occupancy(o[2]), o[3]) for o in v)


def encode_line(s: LineStatus) -> dict[str, Any]:
    encoded = {"kind": s.kind.value, "alert_ids": list(s.alert_ids), "max_delay_s": s.max_delay_s, "cause": s.cause}
    return {**encoded, "moderate": True} if s.moderate else encoded  # rows from before it read False


def decode_line(d: Mapping[str, Any]) -> LineStatus:
    return LineStatus(LineStatusKind(d["kind"]), tuple(d["alert_ids"]), d["max_delay_s"], d["cause"],
                      d.get("moderate", False))


def _encode_optional(items: tuple[Any, ...] | None, encode: Callable[[Any], Any]) -> Any:
    return None if items is None else encode(items)


_reading_fields = operator.attrgetter("station_id", "level", "observed_at", "percentage", "line_id", "direction_id")


def encode_snapshot(s: FeedSnapshot) -> bytes:
    """A feed snapshot as JSON: None (a kind the feed does not carry) stays apart from empty (nothing now)."""
    return orjson.dumps({
        "feed": s.feed, "timestamp": iso(s.timestamp),
        "alerts": _encode_optional(s.alerts, lambda alerts: [encode_alert(a) for a in alerts]),
        "delays": _encode_optional(s.delays, encode_delays),
        "occupancy": _encode_optional(s.occupancy, encode_occupancy),
        # orjson writes the datetimes (RFC 3339), the levels (IntEnum: their numbers) and the tuples (arrays)
        # itself: several times faster than `iso` and a list per reading for a city's 1,400 readings a tick.
        "crowding": _encode_optional(s.crowding, lambda readings: list(map(_reading_fields, readings))),
        "skipped_alert_ids": sorted(s.skipped_alert_ids), "problems": list(s.problems),
    })


def decode_snapshot(body: bytes) -> FeedSnapshot:
    d = orjson.loads(body)
    alerts, delays, occupancy, crowding = d["alerts"], d["delays"], d["occupancy"], d["crowding"]
    return FeedSnapshot(
        feed=d["feed"], timestamp=from_iso(d["timestamp"]),
        alerts=None if alerts is None else tuple(decode_alert(a) for a in alerts),
        delays=None if delays is None else decode_delays(delays),
        occupancy=None if occupancy is None else decode_occupancy(occupancy),
        crowding=None if crowding is None else tuple(_decode_reading(r) for r in crowding),
        skipped_alert_ids=frozenset(d["skipped_alert_ids"]), problems=tuple(d["problems"]),
    )


def dumps_sorted(value: Any) -> bytes:
    """JSON with sorted keys: the same record is the same bytes, so an unchanged record is never rewritten."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def diagnostic(text: str | None) -> str | None:
    """An error text as stored: U+0000 as U+FFFD. Such texts quote what a feed or a platform sent, and PostgreSQL's
    TEXT refuses U+0000: the record of a failure must never fail in turn (an identity is never changed so: ids
    with a NUL are refused where they enter, `feeds/gtfs_rt/alerts.py`)."""
    return text.replace("\x00", "\ufffd") if text is not None and "\x00" in text else text
