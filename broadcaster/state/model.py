"""The state's data: what is known now (`NetworkState` and its records), the changes a transition reports, and
the policy that tunes it. Immutable values only; the transition itself is `broadcaster.state.transition`."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from broadcaster.model import Alert, CrowdingReading, LineDelay, LineOccupancy, Occupancy

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
        """Its place in the order above, mildest first (a table: read for every alert on every line, every tick)."""
        return _KIND_RANKS[self]


_KIND_RANKS = {kind: rank for rank, kind in enumerate(LineStatusKind)}


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

