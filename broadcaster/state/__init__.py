"""The last known state of the network and the pure diff that turns a new feed snapshot into changes.

No I/O and no clock: callers pass `now`. `apply_snapshot(state, snapshot, ...)` returns the next state and the
list of changes, and the caller commits both (state store and outbox) in one transaction.

- `model`: `NetworkState`, its records, the changes a transition reports, and `StatePolicy`;
- `alerts`: the alert lifecycle (new, updated, resolved) and the content hash that versions an alert;
- `crowding`: a station's published level, with dwell and hysteresis;
- `lines`: each line's status, from its alerts and its measured delays;
- `transition`: `apply_snapshot`, the one entry point, which folds a snapshot through the three above.
"""

from broadcaster.state.alerts import alert_version
from broadcaster.state.crowding import crowding_trend
from broadcaster.state.lines import derive_line_statuses
from broadcaster.state.model import (
    NORMAL,
    AlertChange,
    AlertChangeKind,
    AlertRecord,
    Change,
    CrowdingChange,
    CrowdingRecord,
    LineStatus,
    LineStatusChange,
    LineStatusKind,
    NetworkState,
    ServiceLevel,
    StatePolicy,
    Transition,
)
from broadcaster.state.transition import apply_snapshot

__all__ = [
    "NORMAL",
    "AlertChange",
    "AlertChangeKind",
    "AlertRecord",
    "Change",
    "CrowdingChange",
    "CrowdingRecord",
    "LineStatus",
    "LineStatusChange",
    "LineStatusKind",
    "NetworkState",
    "ServiceLevel",
    "StatePolicy",
    "Transition",
    "alert_version",
    "apply_snapshot",
    "crowding_trend",
    "derive_line_statuses",
]
