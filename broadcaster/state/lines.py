"""Line status: each line's condition, the worst of what its active alerts and its measured delays say."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime

from broadcaster.model import Alert, LineDelay, Network, Severity
from broadcaster.state.model import NORMAL, AlertRecord, LineStatus, LineStatusKind, StatePolicy

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

