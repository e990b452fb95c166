"""Builds the MQTT contract's payloads (see contract.py) from the committed state, in code, as plain dicts.

The content part of each payload is built here without the envelope (`seq`, `issued_at`, `valid_until`), so
that the retained-state planner can tell a real change from a mere refresh by hashing the content alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broadcaster import __version__
from broadcaster.compose import DEFAULT_EMERGENCY, EmergencyRule, Notice, Priority, alert_lines, is_emergency
from broadcaster.contract import (
    SCHEMA_ALERT,
    SCHEMA_CROWDING,
    SCHEMA_DISPLAY,
    SCHEMA_LINE_STATUS,
    SCHEMA_NOTICE,
    SCHEMA_STATUS,
    Topics,
)
from broadcaster.model import Line, LocalizedText, Network, Station
from broadcaster.state import AlertRecord, CrowdingRecord, LineStatusKind, NetworkState, StatePolicy, crowding_trend
from broadcaster.store import iso
from broadcaster.vocabulary import word

Body = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RetainedItem:
    """One retained topic's content, before the envelope. `source` says which kind of feed keeps it fresh."""

    topic: str
    body: Body
    source: str  # "gtfs-rt", "passenger-flow" or "any"


def texts(t: LocalizedText, languages: tuple[str, ...]) -> dict[str, str]:
    return {lang: t.get(lang, "en") for lang in languages if t}


def words(code: str, languages: tuple[str, ...]) -> dict[str, str]:
    return {lang: word(code, lang) for lang in languages}


def line_ref(line: Line, languages: tuple[str, ...]) -> Body:
    return {"id": line.id, "short_name": line.short_name, "names": texts(line.names, languages), "color": line.color}


def station_ref(station: Station | None, station_id: str, languages: tuple[str, ...]) -> Body:
    names = texts(station.names, languages) if station else {}
    return {"id": station_id, "names": names}


class PayloadBuilder:
    """Turns the state into retained items, and notices into notice payloads, for one network."""

    def __init__(
        self, network: Network, topics: Topics, languages: tuple[str, ...], policy: StatePolicy,
        emergency: EmergencyRule = DEFAULT_EMERGENCY,
    ) -> None:
        self.emergency = emergency
        self.network = network
        self.topics = topics
        self.languages = languages
        self.policy = policy
        # Station -> lines is asked for every display on every tick; the network never changes while running.
        self._lines_at = {station_id: network.lines_at(station_id) for station_id in network.stations}

    # -- retained state -------------------------------------------------------------------------------------

    def retained(self, state: NetworkState, now: datetime) -> Iterator[RetainedItem]:
        """Every retained topic the state implies, with its content."""
        as_of = iso(state.as_of) if state.as_of else None
        for line_id, line in self.network.lines.items():
            yield RetainedItem(self.topics.line_status(line_id), self.line_status(state, line, as_of), "gtfs-rt")
        for record in state.alerts.values():
            body = self.alert(record, now)
            for line_id in alert_lines(record.alert, self.network):
                yield RetainedItem(self.topics.line_alert(line_id, record.alert.id), body, "gtfs-rt")
        for station_id, crowding in state.crowding.items():
            if station_id in self.network.stations:
                yield RetainedItem(
                    self.topics.station_crowding(station_id), self.crowding(crowding, now), "passenger-flow"
                )
        station_alerts = self._alerts_by_station(state)
        for station_id, station in self.network.stations.items():
            yield RetainedItem(
                self.topics.station_display(station_id),
                self.display(state, station, station_alerts.get(station_id, []), now),
                "any",
            )

    def _alerts_by_station(self, state: NetworkState) -> dict[str, list[AlertRecord]]:
        """Alerts touching each station: naming it, or naming a whole line that serves it."""
        out: dict[str, list[AlertRecord]] = {}
        for record in state.alerts.values():
            touched: dict[str, None] = dict.fromkeys(record.alert.station_ids)
            for e in record.alert.informed:
                if e.line_id and e.station_id is None:
                    touched.update(dict.fromkeys(self.network.stations_of(e.line_id)))
            for station_id in touched:
                out.setdefault(station_id, []).append(record)
        for records in out.values():
            records.sort(key=lambda r: (not is_emergency(r, self.emergency), -int(r.alert.severity), r.alert.id))
        return out

    def line_status(self, state: NetworkState, line: Line, as_of: str | None) -> Body:
        status = state.line_status(line.id)
        reason: dict[str, str] = {}
        if status.alert_ids and status.alert_ids[0] in state.alerts:
            reason = texts(state.alerts[status.alert_ids[0]].alert.header, self.languages)
        elif status.kind is LineStatusKind.DELAYED:
            minutes = round(status.max_delay_s / 60)
            reason = {"zh": f"列车晚点最长约{minutes}分钟", "en": f"Delays of up to {minutes} min"}
            reason = {k: v for k, v in reason.items() if k in self.languages}
        occupancy = [
            {"direction_id": o.direction_id, "level": o.level.name, "vehicles": o.vehicles}
            for o in state.occupancy.get(line.id, ())
        ]
        return {
            "schema": SCHEMA_LINE_STATUS,
            "line": line_ref(line, self.languages),
            "status": status.kind.value,
            "status_text": words(status.kind.value, self.languages),
            "reason": reason,
            "alert_ids": list(status.alert_ids),
            "max_delay_s": status.max_delay_s,
            "occupancy": occupancy,
            "as_of": as_of,
        }

    def alert(self, record: AlertRecord, now: datetime) -> Body:
        a = record.alert
        return {
            "schema": SCHEMA_ALERT,
            "alert_id": a.id,
            "version": record.version,
            "severity": a.severity.name,
            "emergency": is_emergency(record, self.emergency),
            "cause": a.cause,
            "effect": a.effect,
            "effect_text": words(a.effect, self.languages),
            "header": texts(a.header, self.languages),
            "description": texts(a.description, self.languages),
            "url": texts(a.url, self.languages),
            "lines": list(alert_lines(record.alert, self.network)),
            "stations": [station_ref(self.network.stations.get(s), s, self.languages) for s in a.station_ids],
            "active_periods": [
                {"start": iso(p.start) if p.start else None, "end": iso(p.end) if p.end else None}
                for p in a.active_periods
            ],
            "first_seen": iso(record.first_seen),
            "updated_at": iso(record.updated_at),
        }

    def crowding(self, record: CrowdingRecord, now: datetime) -> Body:
        return {
            "schema": SCHEMA_CROWDING,
            "station": station_ref(self.network.stations.get(record.station_id), record.station_id, self.languages),
            "level": record.level.name,
            "level_text": words(record.level.name, self.languages),
            "percentage": record.percentage,
            "trend": crowding_trend(record, now, self.policy),
            "observed_at": iso(record.observed_at),
            "platforms": [
                {
                    "line_id": p.line_id, "direction_id": p.direction_id, "level": p.level.name,
                    "percentage": p.percentage, "observed_at": iso(p.observed_at),
                }
                for p in record.platforms
            ],
        }

    def display(self, state: NetworkState, station: Station, alerts: list[AlertRecord], now: datetime) -> Body:
        langs = self.languages
        lines: list[Body] = []
        status_rows: dict[str, list[str]] = {lang: [] for lang in langs}
        for line_id in self._lines_at.get(station.id, ()):
            line = self.network.lines[line_id]
            status = state.line_status(line_id).kind.value
            lines.append({"line": line_ref(line, langs), "status": status, "status_text": words(status, langs)})
            for lang in langs:
                colon = "：" if lang == "zh" else ": "
                status_rows[lang].append(f"{line.names.get(lang, 'en') or line.short_name}{colon}{word(status, lang)}")
        crowding: Body | None = None
        record = state.crowding.get(station.id)
        if record is not None:
            crowding = {
                "level": record.level.name,
                "level_text": words(record.level.name, langs),
                "percentage": record.percentage,
                "trend": crowding_trend(record, now, self.policy),
            }
        screen: dict[str, list[str]] = {}
        tts: dict[str, str] = {}
        for lang in langs:
            # Most important first: alerts, then line statuses, then crowding.
            rows = [r.alert.header.get(lang, "en") for r in alerts] + status_rows[lang]
            if record is not None:
                rows.append(("客流：" if lang == "zh" else "Crowding: ") + word(record.level.name, lang))
            screen[lang] = rows
            tts[lang] = ("。" if lang == "zh" else ". ").join(rows[: max(1, len(alerts))]) if rows else ""
        return {
            "schema": SCHEMA_DISPLAY,
            "station": station_ref(station, station.id, langs),
            "lines": lines,
            "alerts": [
                {
                    "alert_id": r.alert.id, "severity": r.alert.severity.name,
                    "emergency": is_emergency(r, self.emergency), "effect": r.alert.effect,
                    "header": texts(r.alert.header, langs),
                }
                for r in alerts
            ],
            "crowding": crowding,
            "text": screen,
            "tts": tts,
        }

    # -- notices ---------------------------------------------------------------------------------------------

    @staticmethod
    def notice(notice: Notice, rendered: dict[str, str]) -> Body:
        return {
            "schema": SCHEMA_NOTICE,
            "notice_id": notice.id,
            "version": notice.version,
            "kind": notice.kind.value,
            "priority": {Priority.EMERGENCY: "emergency", Priority.NORMAL: "normal", Priority.ROUTINE: "routine"}[
                notice.priority
            ],
            "alert_id": notice.alert_id,
            "lines": list(notice.line_ids),
            "stations": list(notice.station_ids),
            "text": rendered,
        }


def status_body(status: str, client_id: str, since: datetime) -> Body:
    return {"schema": SCHEMA_STATUS, "status": status, "client_id": client_id, "since": iso(since),
            "version": __version__}
