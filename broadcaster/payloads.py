"""Builds the MQTT contract's payloads (see contract.py) from the committed state, in code, as plain dicts.

The content part of each payload is built here without the envelope (`seq`, `issued_at`, `valid_until`), so
that the retained-state planner can tell a real change from a mere refresh by hashing the content alone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broadcaster import __version__
from broadcaster.compose import DEFAULT_EMERGENCY, EmergencyRule, Notice, Priority, is_emergency
from broadcaster.contract import (
    SCHEMA_ALERT,
    SCHEMA_CROWDING,
    SCHEMA_DISPLAY,
    SCHEMA_LINE_STATUS,
    SCHEMA_NOTICE,
    SCHEMA_PRESENCE,
    SCHEMA_STATUS,
    Topics,
)
from broadcaster.model import Alert, Line, LocalizedText, Network, Station
from broadcaster.state import (
    AlertRecord,
    CrowdingRecord,
    LineStatus,
    LineStatusKind,
    NetworkState,
    ServiceLevel,
    StatePolicy,
    crowding_trend,
)
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


def published_status(kind: LineStatusKind) -> str:
    """The contract's `status` code: service changes keep `normal`, whose closed vocabulary predates them."""
    return LineStatusKind.NORMAL.value if kind is LineStatusKind.CHANGES else kind.value


def service_level(status: LineStatus) -> str:
    """The contract's `level` (since v1.2): good, changes, or disrupted (`LineStatus.level`)."""
    return status.level.value


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
        self._serving_lines = frozenset(line_id for line_ids in self._lines_at.values() for line_id in line_ids)
        self._line_topics = {line_id: topics.line_status(line_id) for line_id in network.lines}
        self._crowding_topics = {station_id: topics.station_crowding(station_id) for station_id in network.stations}
        self._display_topics = {station_id: topics.station_display(station_id) for station_id in network.stations}
        # (kind, id) -> (what the body was built from, the body). Every poll plans every retained topic, and
        # most bodies are made of the same inputs as last time: comparing the inputs costs a few microseconds,
        # building (and then serialising and hashing) a body tens of them (bench/: a whole tick at k = 1).
        self._memo: dict[tuple[str, str], tuple[object, Body]] = {}
        # station -> (its crowding record of the last round, whether its trend had run out, the trend, its item,
        # when its trend runs out: None for no trend)
        self._crowding_items: dict[str, tuple[CrowdingRecord, bool, str, RetainedItem, datetime | None]] = {}
        # line -> (the status its display parts were made for, its `lines` entry, its screen row per language)
        self._line_parts: dict[str, tuple[LineStatus, Body, dict[str, str]]] = {}
        # Parts shared by many bodies, built once (bodies are never modified, so sharing them is safe).
        self._line_refs = {line_id: line_ref(line, languages) for line_id, line in network.lines.items()}
        self._station_refs = {sid: station_ref(station, sid, languages) for sid, station in network.stations.items()}
        self._words: dict[str, dict[str, str]] = {}
        # alert id -> (its body, its items: one topic per line): the topics are formatted once per body.
        self._alert_items_of: dict[str, tuple[Body, tuple[RetainedItem, ...]]] = {}
        # What the last `retained` round's displays were made from, so the next round rebuilds only the displays
        # whose inputs may have changed (`_dirty_displays`): each station's item, each line's (kind, level), the
        # alert records, and the stations with a crowding record. Empty: the first round, which builds them all.
        self._display_last: dict[str, RetainedItem] = {}
        self._display_kinds: dict[str, tuple[LineStatusKind, ServiceLevel]] = {}
        self._display_alerts: dict[str, AlertRecord] = {}
        self._display_crowded: set[str] = set()
        # alert id -> (the alert, the stations whose display shows it): worked out again only for a new alert
        # object (a new wording, a new informed entity), not on every round for every alert.
        self._touched_of: dict[str, tuple[Alert, tuple[str, ...]]] = {}
        self._stations_by_line: dict[str, tuple[str, ...]] = {}
        for station_id, line_ids in self._lines_at.items():
            for line_id in line_ids:
                self._stations_by_line[line_id] = (*self._stations_by_line.get(line_id, ()), station_id)

    # -- retained state -------------------------------------------------------------------------------------

    def retained(self, state: NetworkState, now: datetime) -> Generator[RetainedItem, None, None]:
        """Every retained topic the state implies, with its content.

        A body whose inputs are unchanged since the last call is the very same object as then (callers must
        not modify bodies), so the planner can also skip serialising it again.
        """
        finished = False
        try:
            yield from self._round(state, now)
            finished = True
        finally:
            if not finished:
                # Left partway (an error in the caller, or a caller that stopped reading): the crowding items may
                # be this round's and the displays' record last round's, which would hide the change from the
                # next round. Forgetting the displays makes it build them all.
                self._display_last.clear()

    def _round(self, state: NetworkState, now: datetime) -> Iterator[RetainedItem]:
        yield from self._line_items(state, self.network.lines)
        yield from self._alert_items(now, state.alerts.values())
        cached = self._cached
        window = self.policy.crowding_trend_window
        last = self._crowding_items
        trends: dict[str, str] = {}
        rebuilt: set[str] = set()  # stations whose crowding record or trend is not last round's
        for station_id, crowding in state.crowding.items():
            if station_id not in self.network.stations:
                continue
            # The very record of last round (the state keeps an unchanged station's record): its item stands
            # unless its trend has run out since (`crowding_trend`, by the time alone).
            seen = last.get(station_id)
            if seen is not None and seen[0] is crowding:
                flip_at = seen[4]
                if seen[1] == (flip_at is not None and now > flip_at):
                    trends[station_id] = seen[2]
                    yield seen[3]
                    continue
            else:
                flip_at = crowding.changed_at + window if crowding.trend else None
            expired = flip_at is not None and now > flip_at
            rebuilt.add(station_id)
            trend = trends[station_id] = crowding_trend(crowding, now, self.policy)
            key = (crowding.level, crowding.percentage, trend, crowding.observed_at, crowding.platforms)
            body = cached(("crowding", station_id), key, self.crowding, crowding, now)
            item = RetainedItem(self._crowding_topics[station_id], body, "passenger-flow")
            last[station_id] = (crowding, expired, trend, item, flip_at)
            yield item
        yield from self._display_round(state, now, trends, rebuilt)
        # An alert's body slot and its items are made together (`_alert_items`), so the alerts gone are found
        # among the items' few dozen ids rather than the whole memo's thousand slots.
        for alert_id in [alert_id for alert_id in self._alert_items_of if alert_id not in state.alerts]:
            del self._alert_items_of[alert_id]
            self._memo.pop(("alert", alert_id), None)
        for alert_id in [alert_id for alert_id in self._touched_of if alert_id not in state.alerts]:
            del self._touched_of[alert_id]

    def _display_round(
        self, state: NetworkState, now: datetime, trends: Mapping[str, str], crowding_rebuilt: set[str],
    ) -> Iterator[RetainedItem]:
        """Every station's display, in the network's order: last round's item where none of its inputs moved,
        a new one (through `_display_items`, as `retained_around` makes them) for the others. At k = 1 a steady
        tick changes a few dozen of 500 displays; comparing every display's inputs cost ~1 ms a tick."""
        kinds = {line_id: (status.kind, status.level)
                 for line_id in self._serving_lines for status in (state.line_status(line_id),)}
        crowded = {station_id for station_id in state.crowding if station_id in self.network.stations}
        last = self._display_last
        dirty = self._dirty_displays(state, kinds, crowding_rebuilt | (self._display_crowded ^ crowded))
        stations = self.network.stations
        if dirty is None:
            fresh = dict(zip(stations, self._display_items(state, now, stations, trends), strict=True))
        else:
            ordered = [station_id for station_id in stations if station_id in dirty or station_id not in last]
            fresh = dict(zip(ordered, self._display_items(state, now, ordered, trends), strict=True))
        last.update(fresh)
        self._display_kinds = kinds
        self._display_alerts = dict(state.alerts)
        self._display_crowded = crowded
        for station_id in stations:
            yield last[station_id]

    def _dirty_displays(
        self, state: NetworkState, kinds: Mapping[str, tuple[LineStatusKind, ServiceLevel]], crowding_moved: set[str],
    ) -> set[str] | None:
        """The stations whose display may differ from last round's (None: all of them, on the first round): those
        on a line whose kind or level moved, those an alert record touches that was added, removed or replaced
        (before or after), and those whose crowding record or trend moved. A display is made of nothing else
        (`display`); a station named here whose display did not change costs a rebuild from the memo, no more."""
        if not self._display_last:
            return None
        dirty = set(crowding_moved)
        before = self._display_kinds
        for line_id, kind in kinds.items():
            if before.get(line_id) != kind:
                dirty.update(self._stations_by_line.get(line_id, ()))
        alerts_before = self._display_alerts  # a copy: the state's mapping may be a plain dict changed in place
        for alert_id in alerts_before.keys() | state.alerts.keys():
            old, new = alerts_before.get(alert_id), state.alerts.get(alert_id)
            if old is not new:
                for record in (old, new):
                    if record is not None:
                        dirty.update(self._stations_touched(record))
        return dirty

    def retained_around(
        self, state: NetworkState, now: datetime, lines: Iterable[str], stations: Iterable[str]
    ) -> Iterator[RetainedItem]:
        """The retained topics an emergency on `lines` and `stations` changes: those lines' status and alerts,
        and the displays of every station they serve and of `stations` (the same bodies `retained` makes)."""
        line_ids = [line_id for line_id in dict.fromkeys(lines) if line_id in self.network.lines]
        touched = dict.fromkeys(s for line_id in line_ids for s in self.network.stations_of(line_id))
        touched.update(dict.fromkeys(s for s in stations if s in self.network.stations))
        yield from self._line_items(state, line_ids)
        yield from self._alert_items(now, [r for r in state.alerts.values()
                                           if not set(self._alert_lines(r.alert)).isdisjoint(line_ids)])
        yield from self._display_items(state, now, touched)

    def _line_items(self, state: NetworkState, line_ids: Iterable[str]) -> Iterator[RetainedItem]:
        as_of = iso(state.as_of) if state.as_of else None
        for line_id in line_ids:
            status = state.line_status(line_id)
            first = state.alerts.get(status.alert_ids[0]) if status.alert_ids else None
            key: object = (status, first.alert.header if first else None, state.occupancy.get(line_id), as_of)
            body = self._cached(("line", line_id), key, self.line_status, state, self.network.lines[line_id], as_of)
            yield RetainedItem(self._line_topics[line_id], body, "gtfs-rt")

    def _alert_items(self, now: datetime, records: Iterable[AlertRecord]) -> Iterator[RetainedItem]:
        for record in records:
            a = record.alert
            key = (a, record.version, record.first_seen, record.updated_at)
            body = self._cached(("alert", a.id), key, self.alert, record, now)
            hit = self._alert_items_of.get(a.id)
            if hit is None or hit[0] is not body:
                hit = self._alert_items_of[a.id] = (body, tuple(
                    RetainedItem(self.topics.line_alert(line_id, a.id), body, "gtfs-rt") for line_id in body["lines"]))
            yield from hit[1]

    def _display_items(
        self, state: NetworkState, now: datetime, station_ids: Iterable[str], trends: Mapping[str, str] | None = None,
    ) -> Iterator[RetainedItem]:
        """`trends`: each station's crowding trend at `now`, when the caller has worked them out already."""
        if not isinstance(station_ids, Mapping | list):
            station_ids = list(station_ids)
        station_alerts = self._alerts_by_station(state, None if station_ids is self.network.stations else station_ids)
        # What a display shows of each line's status (its kind and its level: a delayed line's level moves with the
        # delay's severity alone), looked up once per round rather than once per station serving it, and that of
        # each set of lines once per round rather than once per station (most stations share their line's).
        kinds = {line_id: (status.kind, status.level)
                 for line_id in self._serving_lines for status in (state.line_status(line_id),)}
        kinds_of: dict[tuple[str, ...], tuple[tuple[LineStatusKind, ServiceLevel], ...]] = {}
        crowding = state.crowding
        lines_at = self._lines_at
        for station_id in station_ids:
            alerts = station_alerts.get(station_id, [])
            reading = crowding.get(station_id)
            lines = lines_at.get(station_id, ())
            line_kinds = kinds_of.get(lines)
            if line_kinds is None:
                line_kinds = kinds_of[lines] = tuple([kinds[line_id] for line_id in lines])
            if reading is None:
                trend = None
            elif trends is None or (trend := trends.get(station_id)) is None:
                trend = crowding_trend(reading, now, self.policy)
            key = (
                line_kinds,
                # What a display shows of each alert (`display`), not the whole alert: a new description or active
                # period (a steady tick's usual alert change) then finds the display as it was, unbuilt.
                tuple([(a.id, a.severity, a.effect, a.header) for r in alerts for a in (r.alert,)]) if alerts else (),
                (reading.level, reading.percentage, trend) if reading else None,
            )
            body = self._cached(("display", station_id), key, self.display, state, self.network.stations[station_id],
                                alerts, now)
            yield RetainedItem(self._display_topics[station_id], body, "any")

    def _cached(self, slot: tuple[str, str], key: object, build: Callable[..., Body], *args: Any) -> Body:
        """The body last built for `slot` if it was built from an equal `key`, else `build(*args)`."""
        hit = self._memo.get(slot)
        if hit is not None and hit[0] == key:
            return hit[1]
        body = build(*args)
        self._memo[slot] = (key, body)
        return body

    def _words_for(self, code: str) -> dict[str, str]:
        found = self._words.get(code)
        if found is None:
            found = self._words[code] = words(code, self.languages)
        return found

    def _alert_lines(self, alert: Alert) -> tuple[str, ...]:
        """`compose.alert_lines`, with this builder's precomputed station -> lines."""
        if alert.line_ids:
            return alert.line_ids
        return tuple(dict.fromkeys(line for s in alert.station_ids for line in self._lines_at.get(s, ())))

    def _stations_touched(self, record: AlertRecord) -> tuple[str, ...]:
        """The stations whose display shows the alert: those it names, and those of a whole line it names."""
        alert = record.alert
        hit = self._touched_of.get(alert.id)
        if hit is not None and hit[0] is alert:
            return hit[1]
        touched: dict[str, None] = dict.fromkeys(alert.station_ids)
        for e in alert.informed:
            if e.line_id and e.station_id is None:
                touched.update(dict.fromkeys(self.network.stations_of(e.line_id)))
        self._touched_of[alert.id] = (alert, found := tuple(touched))
        return found

    def _alerts_by_station(
        self, state: NetworkState, wanted: Collection[str] | None = None,
    ) -> dict[str, list[AlertRecord]]:
        """Alerts touching each station (of `wanted`, when given): naming it, or naming a whole line that serves
        it. A steady tick asks for the few dozen displays it rebuilds, not for every station an alert touches
        (sorting those lists cost ~0.3 ms a tick at k = 1)."""
        out: dict[str, list[AlertRecord]] = {}
        if wanted is not None and not isinstance(wanted, Mapping | set | frozenset):
            wanted = set(wanted)
        for record in state.alerts.values():
            for station_id in self._stations_touched(record):
                if wanted is None or station_id in wanted:
                    out.setdefault(station_id, []).append(record)
        for records in out.values():
            records.sort(key=lambda r: (not is_emergency(r, self.emergency), -int(r.alert.severity), r.alert.id))
        return out

    def line_status(self, state: NetworkState, line: Line, as_of: str | None) -> Body:
        status = state.line_status(line.id)
        reason: dict[str, str] = {}
        if status.kind is LineStatusKind.NORMAL:
            pass  # informational alerts are listed in alert_ids, but good service needs no reason
        elif status.cause is not None and status.alert_ids and status.alert_ids[0] in state.alerts:
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
            "status": published_status(status.kind),
            "level": service_level(status),
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
            "lines": list(self._alert_lines(record.alert)),
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
            "station": self._station_refs.get(record.station_id)
            or station_ref(self.network.stations.get(record.station_id), record.station_id, self.languages),
            "level": record.level.name,
            "level_text": self._words_for(record.level.name),
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
            entry, row = self._line_part(line_id, state.line_status(line_id))
            lines.append(entry)
            for lang in langs:
                status_rows[lang].append(row[lang])
        crowding: Body | None = None
        record = state.crowding.get(station.id)
        if record is not None:
            crowding = {
                "level": record.level.name,
                "level_text": self._words_for(record.level.name),
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
            "station": self._station_refs.get(station.id) or station_ref(station, station.id, langs),
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

    def _line_part(self, line_id: str, status: LineStatus) -> tuple[Body, dict[str, str]]:
        """A line's entry in a display's `lines` and its row of each language's screen text: the same for every
        station the line serves, so built once per status of the line, not once per display (a cold start
        builds 500 displays at k = 1)."""
        hit = self._line_parts.get(line_id)
        if hit is not None and (hit[0] is status or hit[0] == status):
            return hit[1], hit[2]
        line = self.network.lines[line_id]
        status_text = self._words_for(status.kind.value)
        entry: Body = {"line": self._line_refs[line_id], "status": published_status(status.kind),
                       "level": service_level(status), "status_text": status_text}
        rows = {lang: f"{line.names.get(lang, 'en') or line.short_name}{'：' if lang == 'zh' else ': '}"
                      f"{status_text[lang]}" for lang in self.languages}
        self._line_parts[line_id] = (status, entry, rows)
        return entry, rows

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


def status_body(
    status: str, client_id: str, since: datetime, instance: str | None = None, *, mode: str | None = None,
    valid_until: datetime | None = None, leader: str | None = None,
) -> Body:
    """The `broadcaster/status` payload. `mode` (since v1.2) says whether a long-running service or a batch
    run (`once`) speaks; `valid_until` ends a clean batch run's `online`; `leader` (since v1.4, only when several
    instances share a database) names the instance that speaks."""
    body: Body = {"schema": SCHEMA_STATUS, "status": status, "client_id": client_id, "since": iso(since),
                  "version": __version__}
    if instance is not None:
        body["instance"] = instance
    if mode is not None:
        body["mode"] = mode
    if valid_until is not None:
        body["valid_until"] = iso(valid_until)
    if leader is not None:
        body["leader"] = leader
    return body


def presence_body(instance: str, role: str, since: datetime, *, client_id: str, installation: str | None) -> Body:
    """An instance's `broadcaster/status/instances/{instance}` payload (since v1.4): its role, for operators."""
    body: Body = {"schema": SCHEMA_PRESENCE, "instance": instance, "role": role, "since": iso(since),
                  "client_id": client_id, "version": __version__}
    if installation is not None:
        body["installation"] = installation
    return body
