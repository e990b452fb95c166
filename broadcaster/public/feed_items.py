"""What each public feed holds: the current alerts and the recent notices that touch its scope (the whole network,
one line or one station), read from the broadcaster as it is at the request.

Current alerts are the network state's (the operator's notices among them: they are alerts of the operator's
feed). Recent notices are what was announced: the MQTT notice stream's rows in the outbox, which carry the notice's
text in every language and the lines and stations it touches. A resolved alert leaves the current alerts; its
notices stay among the recent ones until they are older than the window.

What "touches" means (docs/commuters.md, "Atom feeds"):

- a line: an alert naming the line, or a station it serves when the alert names no line at all (as the MQTT
  contract's `lines`); a notice listing the line;
- a station: an alert naming the station, or naming a whole line (no station of it) that serves the station, as
  station displays show them; a notice listing the station, or listing a line that serves it while naming none of
  that line's stations (a line-wide notice);
- the network: everything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

import orjson

from broadcaster.compose import alert_lines
from broadcaster.model import Alert, Network
from broadcaster.outbox_history import OutboxRecord
from broadcaster.state import AlertRecord

log = logging.getLogger(__name__)


class ScopeKind(StrEnum):
    NETWORK = "network"
    LINE = "line"
    STATION = "station"


@dataclass(frozen=True, slots=True)
class Scope:
    """What one feed covers: the network, or the line or station with id `id`."""

    kind: ScopeKind
    id: str = ""


NETWORK = Scope(ScopeKind.NETWORK)


@dataclass(frozen=True, slots=True)
class RecentNotice:
    """One notice as the MQTT notice stream carried it (docs/mqtt.md, `notices`)."""

    notice_id: str
    version: str
    kind: str
    priority: str
    lines: tuple[str, ...]
    stations: tuple[str, ...]
    texts: Mapping[str, str]
    issued_at: datetime


def parse_notice(record: OutboxRecord) -> RecentNotice | None:
    """The notice an MQTT outbox row carries; None (logged) for a row that is not one."""
    try:
        body = orjson.loads(record.payload)
        issued = body.get("issued_at")
        return RecentNotice(
            notice_id=str(body["notice_id"]), version=str(body["version"]), kind=str(body["kind"]),
            priority=str(body.get("priority", "")),
            lines=tuple(str(x) for x in body.get("lines") or ()),
            stations=tuple(str(x) for x in body.get("stations") or ()),
            texts=MappingProxyType({str(k): str(v) for k, v in (body.get("text") or {}).items()}),
            issued_at=datetime.fromisoformat(issued) if isinstance(issued, str) else record.created_at,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("outbox row %s is not a notice, left out of the public feeds: %s", record.key, exc)
        return None


class Touches:
    """Which alerts and notices touch a scope, over one network (its line -> stations map built once)."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self._stations_of = {line_id: frozenset(network.stations_of(line_id)) for line_id in network.lines}

    def alert(self, alert: Alert, scope: Scope) -> bool:
        if scope.kind is ScopeKind.NETWORK:
            return True
        if scope.kind is ScopeKind.LINE:
            return scope.id in alert_lines(alert, self.network)
        return scope.id in alert.station_ids or any(
            e.line_id is not None and e.station_id is None and scope.id in self._stations_of.get(e.line_id, ())
            for e in alert.informed
        )

    def notice(self, notice: RecentNotice, scope: Scope) -> bool:
        if scope.kind is ScopeKind.NETWORK:
            return True
        if scope.kind is ScopeKind.LINE:
            return scope.id in notice.lines
        if scope.id in notice.stations:
            return True
        named = set(notice.stations)
        for line_id in notice.lines:
            served = self._stations_of.get(line_id, frozenset())
            if scope.id in served and named.isdisjoint(served):
                return True
        return False

    def current(self, alerts: Iterable[AlertRecord], scope: Scope) -> list[AlertRecord]:
        """The alerts of `alerts` touching `scope`, most severe first, then latest updated."""
        found = [r for r in alerts if self.alert(r.alert, scope)]
        found.sort(key=lambda r: (-int(r.alert.severity), -r.updated_at.timestamp(), r.alert.id))
        return found

    def recent(self, notices: Iterable[RecentNotice], scope: Scope, limit: int) -> list[RecentNotice]:
        """The first `limit` notices of `notices` (newest first) touching `scope`."""
        found: list[RecentNotice] = []
        for notice in notices:
            if self.notice(notice, scope):
                found.append(notice)
                if len(found) == limit:
                    break
        return found
