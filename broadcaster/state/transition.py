"""The one entry point: `apply_snapshot` folds a feed snapshot into the state and lists what changed."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

from broadcaster.model import FeedSnapshot, LineDelay, LineOccupancy, Network
from broadcaster.state.alerts import apply_alerts
from broadcaster.state.crowding import apply_crowding
from broadcaster.state.lines import derive_line_statuses
from broadcaster.state.model import (
    NORMAL,
    AlertRecord,
    Change,
    CrowdingRecord,
    LineStatus,
    LineStatusChange,
    NetworkState,
    StatePolicy,
    Transition,
)


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
        new_alerts, alert_changes = apply_alerts(state.alerts, snapshot, snapshot.alerts, now, policy)
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
        new_crowding, crowding_changes = apply_crowding(state.crowding, snapshot, snapshot.crowding, now, policy)
        crowding = MappingProxyType(new_crowding)
        changes.extend(crowding_changes)
    as_of = max(state.as_of, snapshot.timestamp) if state.as_of else snapshot.timestamp
    next_state = NetworkState(alerts, crowding, delays, occupancy, lines, as_of)
    return Transition(next_state, tuple(changes))
