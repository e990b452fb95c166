"""Service alerts: each alert entity translated into an `Alert` on the operator's network, or skipped with the
reason in the snapshot's problems. Alert texts are neutralised here, at the boundary, by `broadcaster.text`
(controls, bidi overrides, HTML, mentions, size)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING

from google.transit import gtfs_realtime_pb2 as pb

from broadcaster.feeds.gtfs_rt.fields import MAX_EPOCH_SECONDS, as_direction, as_text, examples
from broadcaster.model import ActivePeriod, Alert, InformedEntity, LocalizedText, Network, Severity, normalise_language
from broadcaster.text import clean_text, clean_url

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

_CAUSE_NAMES: Mapping[int, str] = {v.number: v.name for v in pb.Alert.Cause.DESCRIPTOR.values}
_EFFECT_NAMES: Mapping[int, str] = {v.number: v.name for v in pb.Alert.Effect.DESCRIPTOR.values}
# By name: the model's Severity numbers (0-3) are not the protobuf's (1-4).
_SEVERITIES: Mapping[int, Severity] = {v.number: Severity[v.name] for v in pb.Alert.SeverityLevel.DESCRIPTOR.values}
_EMPTY_TEXT = LocalizedText()


class AlertEntity:
    """One alert entity, its translation worked out on first use and kept: an incremental parse (`incremental`)
    reuses it for an entity whose bytes did not change. A duplicate id is never translated, as in a full parse."""

    __slots__ = ("_conversion", "alert", "alert_id")

    def __init__(self, entity: pb.FeedEntity) -> None:
        self.alert_id = as_text(entity.id)
        # A copy of its own: a sub-message keeps the whole FeedMessage it was decoded from alive, and a cached alert
        # would hold on to every entity of the body it came in.
        self.alert = pb.Alert()
        self.alert.CopyFrom(entity.alert)
        self._conversion: tuple[Alert | str, tuple[str, ...]] | None = None

    def converted(self, network: Network, languages: Languages) -> tuple[Alert | str, tuple[str, ...]]:
        """The Alert, or why it is skipped, and the problems its translation noted (dropped informed entities)."""
        if self._conversion is None:
            notes: list[str] = []
            result: Alert | str
            try:
                result = _convert_alert(self.alert_id, self.alert, network, languages, notes)
            except _InvalidAlert as exc:
                result = str(exc)
            self._conversion = (result, tuple(notes))
        return self._conversion


def convert_alerts(
    entities: list[AlertEntity], network: Network, languages: Languages, problems: list[str]
) -> tuple[tuple[Alert, ...], frozenset[str]]:
    alerts: dict[str, Alert] = {}
    skipped: set[str] = set()
    for position, entity in enumerate(entities):
        alert_id = entity.alert_id
        if not alert_id:
            problems.append(f"alert entity #{position} skipped: it has no id")
            continue
        if "\x00" in alert_id:  # it names the alert in the database, and PostgreSQL's text cannot hold U+0000
            problems.append(f"alert {alert_id!r} skipped: its id holds a NUL character")
            skipped.add(alert_id)
            continue
        if alert_id in alerts or alert_id in skipped:
            problems.append(f"alert {alert_id!r} skipped: a second entity with the same id")
            skipped.add(alert_id)
            continue
        alert, notes = entity.converted(network, languages)
        problems.extend(notes)
        if isinstance(alert, str):
            problems.append(f"alert {alert_id!r} skipped: {alert}")
            skipped.add(alert_id)
        else:
            alerts[alert_id] = alert
    return tuple(alerts.values()), frozenset(skipped)


class _InvalidAlert(Exception):
    """An alert entity that cannot be used; the message says why."""


def _convert_alert(
    alert_id: str, alert: pb.Alert, network: Network, languages: Languages, problems: list[str]
) -> Alert:
    header = _localized(alert.header_text, languages, clean_text)
    if not header:
        raise _InvalidAlert("no header text")
    selectors = alert.informed_entity
    if not selectors:
        raise _InvalidAlert("no informed entity")
    informed, unknown = _informed_entities(selectors, network)
    if not informed:
        detail = f" ({examples(unknown)})" if unknown else " (only agency or route type selectors)"
        raise _InvalidAlert(f"no informed entity names a known line or station{detail}")
    if unknown:
        problems.append(f"alert {alert_id!r}: dropped informed entities naming unknown ids ({examples(unknown)})")
    return Alert(
        id=alert_id,
        cause=_CAUSE_NAMES.get(alert.cause, "UNKNOWN_CAUSE"),
        effect=_EFFECT_NAMES.get(alert.effect, "UNKNOWN_EFFECT"),
        severity=_SEVERITIES.get(alert.severity_level, Severity.UNKNOWN_SEVERITY),
        header=header,
        description=_localized(alert.description_text, languages, clean_text),
        url=_localized(alert.url, languages, clean_url),
        informed=informed,
        active_periods=_active_periods(alert.active_period),
    )


class Languages(dict[str, str]):
    """Feed language tag -> primary subtag, computed once per tag and feed."""

    def __init__(self, default_language: str) -> None:
        super().__init__()
        self.default_language = default_language

    def __missing__(self, tag: str) -> str:
        language = self[tag] = normalise_language(as_text(tag), self.default_language)
        return language


def _localized(
    translated: pb.TranslatedString, languages: Languages, clean: Callable[[str], str]
) -> LocalizedText:
    """The translations, each neutralised by `clean` (broadcaster/text.py: controls, bidi, HTML, mentions, size);
    a translation left empty counts as absent."""
    texts: dict[str, str] = {}
    for translation in translated.translation:
        text = clean(as_text(translation.text))
        if text:
            language = languages[translation.language]
            # Several tags can share a primary subtag (zh-Hans, zh-Hant): the first one listed wins.
            if language not in texts:
                texts[language] = text
    return LocalizedText(MappingProxyType(texts)) if texts else _EMPTY_TEXT


def _informed_entities(
    selectors: Iterable[pb.EntitySelector], network: Network
) -> tuple[tuple[InformedEntity, ...], list[str]]:
    """Map selectors onto the network. A selector is an AND of its fields, so one unknown id drops it."""
    lines = network.lines
    station_of = network.station_of
    trip_to_line = network.trip_to_line
    informed: dict[InformedEntity, None] = {}
    unknown: list[str] = []
    for selector in selectors:
        line_id: str | None = None
        station_id: str | None = None
        trip_id: str | None = None
        direction_id: int | None = None
        bad = False
        route_id = as_text(selector.route_id)
        if route_id:
            if route_id in lines:
                line_id = route_id
            else:
                unknown.append(f"route_id {route_id!r}")
                bad = True
        if selector.HasField("trip"):
            trip = selector.trip
            trip_id = as_text(trip.trip_id) or None
            trip_route = as_text(trip.route_id)
            if trip_route:
                if trip_route in lines:
                    line_id = line_id or trip_route
                else:
                    unknown.append(f"trip.route_id {trip_route!r}")
                    bad = True
            elif trip_id:
                trip_line = trip_to_line.get(trip_id)
                if trip_line is not None:
                    line_id = line_id or trip_line
                elif line_id is None:
                    unknown.append(f"trip_id {trip_id!r}")
                    bad = True
            if trip.HasField("direction_id"):
                direction_id = as_direction(trip.direction_id)
        stop_id = as_text(selector.stop_id)
        if stop_id:
            station_id = station_of(stop_id)
            if station_id is None:
                unknown.append(f"stop_id {stop_id!r}")
                bad = True
        if selector.HasField("direction_id"):
            direction_id = as_direction(selector.direction_id)
        if bad or (line_id is None and station_id is None):
            continue
        informed[InformedEntity(line_id, station_id, direction_id, trip_id)] = None
    return tuple(informed), unknown


def _active_periods(ranges: Iterable[pb.TimeRange]) -> tuple[ActivePeriod, ...]:
    periods: list[ActivePeriod] = []
    for index, time_range in enumerate(ranges):
        start = time_range.start
        end = time_range.end
        for name, value in (("start", start), ("end", end)):
            if value > MAX_EPOCH_SECONDS:
                raise _InvalidAlert(f"active_period[{index}].{name} {value} looks like milliseconds")
        periods.append(
            ActivePeriod(
                start=datetime.fromtimestamp(start, UTC) if start else None,
                end=datetime.fromtimestamp(end, UTC) if end else None,
            )
        )
    return tuple(periods)

