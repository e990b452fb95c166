"""The last known state of the network and the pure diff that turns a new feed snapshot into changes.

No I/O and no clock: callers pass `now`. `apply_snapshot(state, snapshot, ...)` returns the next state and the
list of changes, and the caller commits both (state store and outbox) in one transaction.

Alert lifecycle: NEW -> UPDATED (content hash changed) -> RESOLVED (missing from N consecutive good fetches
of the feed that carried it, or every active period has ended). GTFS-RT has no modification timestamps, so the
version is a hash of the normalised fields.

Crowding: a station's published level changes only after the new level has been read continuously for a
minimum dwell, and a change back in the opposite direction also needs the percentage to have moved by the
hysteresis band from where the last change happened, so a station hovering at a boundary does not flap.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType

from broadcaster.model import (
    Alert,
    CrowdingReading,
    FeedSnapshot,
    LineDelay,
    LineOccupancy,
    Network,
    Occupancy,
    Severity,
)

# ------------------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert we have announced, with the bookkeeping its lifecycle needs."""

    alert: Alert
    version: str
    feed: str
    first_seen: datetime
    updated_at: datetime
    missing: int = 0  # consecutive good fetches of `feed` that did not carry it


@dataclass(frozen=True, slots=True)
class CrowdingRecord:
    """A station's published crowding level and the pending candidate that may replace it."""

    station_id: str
    level: Occupancy
    percentage: int | None
    observed_at: datetime  # time of the latest reading we accepted
    changed_at: datetime  # when `level` was last published as a change
    trend: int = 0  # +1 after a rise, -1 after a fall, 0 before any change
    change_percentage: int | None = None  # percentage at the last change, the hysteresis anchor
    candidate: Occupancy | None = None
    candidate_since: datetime | None = None
    platforms: tuple[CrowdingReading, ...] = ()  # latest per line/direction readings, for displays
    feed: str = ""


class LineStatusKind(enum.StrEnum):
    """A line's overall condition, mildest first.

    CHANGES is a service change riders feel while trains still run (a detour, a moved stop, a broken lift).
    The MQTT contract publishes it as status `normal` with level `changes` (v1.2): its `status` vocabulary is a
    closed list, the other values of which these are.
    """

    NORMAL = "normal"
    CHANGES = "changes"
    DELAYED = "delayed"
    PARTLY_SUSPENDED = "partly_suspended"
    SUSPENDED = "suspended"

    @property
    def rank(self) -> int:
        return list(LineStatusKind).index(self)


class ServiceLevel(enum.StrEnum):
    """How hard a line's condition hits riders, mildest first: the MQTT contract's `level` (v1.2)."""

    GOOD = "good"
    CHANGES = "changes"
    DISRUPTED = "disrupted"


@dataclass(frozen=True, slots=True)
class LineStatus:
    """A line's derived status and why: the alerts behind it, or the measured delay."""

    kind: LineStatusKind
    alert_ids: tuple[str, ...] = ()
    max_delay_s: int = 0
    cause: str | None = None
    #: Delayed by measured trip delays alone, below `state.severe_delay_threshold_seconds`: trains run late but
    #: run, so the level reads `changes`; from that threshold on (or when an alert declares the delays) it reads
    #: `disrupted`.
    moderate: bool = False

    @property
    def level(self) -> ServiceLevel:
        if self.kind is LineStatusKind.NORMAL:
            return ServiceLevel.GOOD
        if self.kind is LineStatusKind.CHANGES or self.moderate:
            return ServiceLevel.CHANGES
        return ServiceLevel.DISRUPTED


NORMAL = LineStatus(LineStatusKind.NORMAL)


@dataclass(frozen=True, slots=True)
class NetworkState:
    """Everything we know now. Immutable: `apply_snapshot` returns a new one."""

    alerts: Mapping[str, AlertRecord] = field(default_factory=lambda: MappingProxyType({}))
    crowding: Mapping[str, CrowdingRecord] = field(default_factory=lambda: MappingProxyType({}))
    delays: Mapping[str, tuple[LineDelay, ...]] = field(default_factory=lambda: MappingProxyType({}))
    occupancy: Mapping[str, tuple[LineOccupancy, ...]] = field(default_factory=lambda: MappingProxyType({}))
    lines: Mapping[str, LineStatus] = field(default_factory=lambda: MappingProxyType({}))
    as_of: datetime | None = None  # the newest feed timestamp applied

    def line_status(self, line_id: str) -> LineStatus:
        return self.lines.get(line_id, NORMAL)


# ------------------------------------------------------------------------------------------------------------
# Changes


class AlertChangeKind(enum.StrEnum):
    NEW = "new"
    UPDATED = "updated"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class AlertChange:
    kind: AlertChangeKind
    record: AlertRecord
    previous: AlertRecord | None = None


@dataclass(frozen=True, slots=True)
class CrowdingChange:
    station_id: str
    before: Occupancy | None
    record: CrowdingRecord


@dataclass(frozen=True, slots=True)
class LineStatusChange:
    line_id: str
    before: LineStatus
    after: LineStatus


Change = AlertChange | CrowdingChange | LineStatusChange


@dataclass(frozen=True, slots=True)
class Transition:
    state: NetworkState
    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class StatePolicy:
    """The tunables of the diff, from the `[state]` config section."""

    resolve_after_missing: int = 3
    crowding_min_dwell: timedelta = timedelta(seconds=120)
    crowding_hysteresis_percent: int = 5
    crowding_trend_window: timedelta = timedelta(minutes=15)
    delay_threshold_s: int = 300
    severe_delay_threshold_s: int = 900


# ------------------------------------------------------------------------------------------------------------
# Alerts


def alert_version(alert: Alert) -> str:
    """A short content hash over the alert's normalised fields: equal content, equal version.

    Order of translations, informed entities and periods does not matter; surrounding white space does not.
    """
    h = hashlib.sha256()

    def put(*parts: object) -> None:
        for part in parts:
            h.update(str(part).encode("utf-8"))
            h.update(b"\x1f")
        h.update(b"\x1e")

    put(alert.cause, alert.effect, int(alert.severity))
    for name, text in (("h", alert.header), ("d", alert.description), ("u", alert.url)):
        for lang, value in sorted(text.texts.items()):
            put(name, lang, " ".join(value.split()))
    for e in sorted(
        alert.informed, key=lambda e: (e.line_id or "", e.station_id or "", e.direction_id or -1, e.trip_id or "")
    ):
        put("e", e.line_id, e.station_id, e.direction_id, e.trip_id)
    for p in sorted(alert.active_periods, key=lambda p: (p.start.timestamp() if p.start else 0.0)):
        put("p", p.start.isoformat() if p.start else "", p.end.isoformat() if p.end else "")
    return h.hexdigest()[:16]


def _has_ended(alert: Alert, now: datetime) -> bool:
    """Every active period is over: the feed may still carry it, but it no longer applies."""
    return bool(alert.active_periods) and all(p.end is not None and p.end <= now for p in alert.active_periods)


def _apply_alerts(
    records: Mapping[str, AlertRecord],
    snapshot: FeedSnapshot,
    alerts: tuple[Alert, ...],
    now: datetime,
    policy: StatePolicy,
) -> tuple[dict[str, AlertRecord], list[AlertChange]]:
    out = dict(records)
    changes: list[AlertChange] = []
    present: set[str] = set()
    ended: set[str] = set()  # carried, but every active period is over
    for alert in alerts:
        if _has_ended(alert, now):
            ended.add(alert.id)
            continue
        present.add(alert.id)
        version = alert_version(alert)
        old = out.get(alert.id)
        if old is None:
            rec = AlertRecord(alert, version, snapshot.feed, first_seen=now, updated_at=now)
            out[alert.id] = rec
            changes.append(AlertChange(AlertChangeKind.NEW, rec))
        elif old.version != version:
            rec = replace(old, alert=alert, version=version, feed=snapshot.feed, updated_at=now, missing=0)
            out[alert.id] = rec
            changes.append(AlertChange(AlertChangeKind.UPDATED, rec, previous=old))
        elif old.missing:
            out[alert.id] = replace(old, missing=0)
    for alert_id, old in records.items():
        # Only the feed that carried an alert can resolve it, and a skipped (malformed) entity still counts
        # as present: a damaged feed must never produce an "all clear".
        if old.feed != snapshot.feed or alert_id in present or alert_id in snapshot.skipped_alert_ids:
            continue
        missing = old.missing + 1
        if alert_id in ended or missing >= policy.resolve_after_missing:
            del out[alert_id]
            changes.append(AlertChange(AlertChangeKind.RESOLVED, replace(old, updated_at=now), previous=old))
        else:
            out[alert_id] = replace(old, missing=missing)
    return out, changes


# ------------------------------------------------------------------------------------------------------------
# Crowding


def _station_reading(readings: list[CrowdingReading]) -> CrowdingReading:
    """A station's own reading if the feed gives one, else its most crowded platform's."""
    whole = [r for r in readings if r.line_id is None and r.direction_id is None]
    pool = whole or readings
    return max(pool, key=lambda r: (r.level.rank, r.percentage or 0, r.observed_at))


def _next_crowding(
    old: CrowdingRecord | None, reading: CrowdingReading, platforms: tuple[CrowdingReading, ...], feed: str,
    now: datetime, policy: StatePolicy,
) -> tuple[CrowdingRecord, bool]:
    """The station's next record and whether its published level changed."""
    if old is None:
        rec = CrowdingRecord(
            reading.station_id, reading.level, reading.percentage, reading.observed_at, changed_at=now,
            change_percentage=reading.percentage, platforms=platforms, feed=feed,
        )
        return rec, True
    if reading.observed_at < old.observed_at:
        return old, False  # out of order: an older reading never overrides a newer one
    if (reading.observed_at == old.observed_at and reading.level == old.level and old.candidate is None
            and reading.percentage == old.percentage and platforms == old.platforms):
        return old, False  # the same reading again: keep the very same record (the store skips re-encoding it)
    base = replace(old, percentage=reading.percentage, observed_at=reading.observed_at, platforms=platforms, feed=feed)
    if reading.level == old.level:
        return replace(base, candidate=None, candidate_since=None), False
    step = 1 if reading.level.rank > old.level.rank else -1
    if (
        old.trend == -step
        and reading.percentage is not None
        and old.change_percentage is not None
        and abs(reading.percentage - old.change_percentage) < policy.crowding_hysteresis_percent
    ):
        # Turning back within the hysteresis band of the last change: hold the published level.
        return replace(base, candidate=None, candidate_since=None), False
    since = old.candidate_since if old.candidate == reading.level and old.candidate_since else reading.observed_at
    if reading.observed_at - since < policy.crowding_min_dwell:
        return replace(base, candidate=reading.level, candidate_since=since), False
    rec = replace(
        base, level=reading.level, changed_at=now, trend=step, change_percentage=reading.percentage,
        candidate=None, candidate_since=None,
    )
    return rec, True


def _apply_crowding(
    records: Mapping[str, CrowdingRecord], snapshot: FeedSnapshot, readings: tuple[CrowdingReading, ...],
    now: datetime, policy: StatePolicy,
) -> tuple[dict[str, CrowdingRecord], list[CrowdingChange]]:
    by_station: dict[str, list[CrowdingReading]] = {}
    for r in readings:
        by_station.setdefault(r.station_id, []).append(r)
    out = dict(records)
    changes: list[CrowdingChange] = []
    for station_id, station_readings in by_station.items():
        platforms = tuple(
            sorted(
                (r for r in station_readings if r.line_id is not None or r.direction_id is not None),
                key=lambda r: (r.line_id or "", r.direction_id if r.direction_id is not None else -1),
            )
        )
        old = records.get(station_id)
        rec, changed = _next_crowding(
            old, _station_reading(station_readings), platforms, snapshot.feed, now, policy
        )
        out[station_id] = rec
        if changed:
            changes.append(CrowdingChange(station_id, old.level if old else None, rec))
    return out, changes


def crowding_trend(record: CrowdingRecord, now: datetime, policy: StatePolicy) -> str:
    """'rising' / 'falling' for a change within the trend window, else 'steady'."""
    if record.trend == 0 or now - record.changed_at > policy.crowding_trend_window:
        return "steady"
    return "rising" if record.trend > 0 else "falling"


# ------------------------------------------------------------------------------------------------------------
# Line status


_DELAY_EFFECTS = frozenset({"SIGNIFICANT_DELAYS", "REDUCED_SERVICE"})
#: Effects riders feel while trains still run: the line reads "service changes".
_CHANGE_EFFECTS = frozenset({"DETOUR", "MODIFIED_SERVICE", "STOP_MOVED", "ACCESSIBILITY_ISSUE"})
#: Effects that say nothing by themselves: a change only when the feed rates the alert above information.
_UNSPECIFIED_EFFECTS = frozenset({"OTHER_EFFECT", "UNKNOWN_EFFECT"})


def _alert_impact(alert: Alert) -> tuple[LineStatusKind, LineStatusKind]:
    """What an alert does to a line it names as a whole, and to one it names in part (at stations)."""
    if alert.effect == "NO_SERVICE":
        return LineStatusKind.SUSPENDED, LineStatusKind.PARTLY_SUSPENDED
    if alert.effect in _DELAY_EFFECTS:
        return LineStatusKind.DELAYED, LineStatusKind.DELAYED
    if alert.effect in _CHANGE_EFFECTS or (
        alert.effect in _UNSPECIFIED_EFFECTS and alert.severity >= Severity.WARNING
    ):
        return LineStatusKind.CHANGES, LineStatusKind.CHANGES
    return LineStatusKind.NORMAL, LineStatusKind.NORMAL  # NO_EFFECT, ADDITIONAL_SERVICE: listed, nothing more


def _alert_line_impacts(alert: Alert, network: Network) -> dict[str, LineStatusKind]:
    """Each line the alert touches, with the strongest impact it has there."""
    whole, partial = _alert_impact(alert)
    out: dict[str, LineStatusKind] = {}

    def put(line_id: str, kind: LineStatusKind) -> None:
        if line_id not in out or kind.rank > out[line_id].rank:
            out[line_id] = kind

    for e in alert.informed:
        if e.line_id and e.station_id is None and e.trip_id is None:
            put(e.line_id, whole)
        elif e.line_id:
            put(e.line_id, partial)
        elif e.station_id:
            for line_id in network.lines_at(e.station_id):
                put(line_id, partial)
    return out


def derive_line_statuses(
    alerts: Iterable[AlertRecord], delays: Mapping[str, tuple[LineDelay, ...]], network: Network,
    now: datetime, policy: StatePolicy,
) -> dict[str, LineStatus]:
    """Each line's status: the worst of what its active alerts and its measured delays say.

    `alert_ids` lists every active alert touching the line, worst first (then by id), so the first one is
    the reason; `cause` is that alert's cause, or None when measured delays decide the status.
    """
    impacts: dict[str, dict[str, tuple[LineStatusKind, str]]] = {}  # line -> alert id -> (impact, cause)
    for rec in alerts:
        if rec.alert.is_active(now):
            for line_id, kind in _alert_line_impacts(rec.alert, network).items():
                impacts.setdefault(line_id, {})[rec.alert.id] = (kind, rec.alert.cause)
    out: dict[str, LineStatus] = {}
    for line_id in network.lines:
        ranked = sorted(impacts.get(line_id, {}).items(), key=lambda item: (-item[1][0].rank, item[0]))
        status = NORMAL
        if ranked:
            kind, cause = ranked[0][1]
            status = LineStatus(kind, tuple(alert_id for alert_id, _ in ranked), 0,
                                cause if kind is not LineStatusKind.NORMAL else None)
        per_direction = delays.get(line_id, ())
        median = max((d.median_delay_s for d in per_direction), default=0)  # the worse direction's
        if per_direction and median >= policy.delay_threshold_s:
            longest = max(d.max_delay_s for d in per_direction)
            if status.kind.rank < LineStatusKind.DELAYED.rank:
                status = LineStatus(LineStatusKind.DELAYED, status.alert_ids, longest, None,
                                    moderate=median < policy.severe_delay_threshold_s)
            else:
                status = replace(status, max_delay_s=longest)
        out[line_id] = status
    return out


# ------------------------------------------------------------------------------------------------------------
# The one entry point


def apply_snapshot(
    state: NetworkState, snapshot: FeedSnapshot, *, network: Network, now: datetime, policy: StatePolicy
) -> Transition:
    """Fold one good feed snapshot into the state.

    Args:
        state: the last committed state.
        snapshot: a snapshot that passed format and freshness checks.
        network: static reference data, for stations -> lines.
        now: the current time (aware, UTC), injected so tests need no clock.
        policy: resolve/dwell/hysteresis settings.

    Returns:
        The next state and the changes, alerts first, then line statuses, then crowding.
    """
    changes: list[Change] = []
    alerts: Mapping[str, AlertRecord] = state.alerts
    if snapshot.alerts is not None:
        new_alerts, alert_changes = _apply_alerts(state.alerts, snapshot, snapshot.alerts, now, policy)
        alerts = MappingProxyType(new_alerts)
        changes.extend(alert_changes)
    delays = state.delays
    if snapshot.delays is not None:
        grouped: dict[str, tuple[LineDelay, ...]] = {}
        for d in snapshot.delays:
            grouped[d.line_id] = (*grouped.get(d.line_id, ()), d)
        delays = MappingProxyType(grouped)
    occupancy = state.occupancy
    if snapshot.occupancy is not None:
        by_line: dict[str, tuple[LineOccupancy, ...]] = {}
        for o in snapshot.occupancy:
            by_line[o.line_id] = (*by_line.get(o.line_id, ()), o)
        occupancy = MappingProxyType(by_line)
    lines: Mapping[str, LineStatus] = state.lines
    if snapshot.alerts is not None or snapshot.delays is not None or not state.lines:
        derived = derive_line_statuses(alerts.values(), delays, network, now, policy)
        for line_id, after in derived.items():
            before = state.lines.get(line_id, NORMAL)
            if after != before:
                changes.append(LineStatusChange(line_id, before, after))
        lines = MappingProxyType(derived)
    crowding: Mapping[str, CrowdingRecord] = state.crowding
    if snapshot.crowding is not None:
        new_crowding, crowding_changes = _apply_crowding(state.crowding, snapshot, snapshot.crowding, now, policy)
        crowding = MappingProxyType(new_crowding)
        changes.extend(crowding_changes)
    as_of = max(state.as_of, snapshot.timestamp) if state.as_of else snapshot.timestamp
    next_state = NetworkState(alerts, crowding, delays, occupancy, lines, as_of)
    return Transition(next_state, tuple(changes))
