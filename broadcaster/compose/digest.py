"""The network-wide summary for a digest slot, and what it says without its time."""

from __future__ import annotations

import hashlib
from datetime import datetime

from broadcaster.compose.context import language_contexts, line_names, station_names
from broadcaster.compose.notice import ComposePolicy, Notice, NoticeKind, Priority
from broadcaster.model import Network, Occupancy, Severity
from broadcaster.state import CrowdingRecord, LineStatusKind, NetworkState
from broadcaster.vocabulary import word


def digest_fingerprint(state: NetworkState, top_crowded: int) -> str:
    """What a digest says, without its time: equal fingerprints mean an "on-change" channel skips the slot."""
    lines = sorted((line_id, s.kind.value) for line_id, s in state.lines.items())
    crowded = _most_crowded(state, top_crowded)
    return hashlib.sha256(repr((lines, [(r.station_id, r.level.name) for r in crowded])).encode()).hexdigest()[:16]


def _most_crowded(state: NetworkState, top: int) -> list[CrowdingRecord]:
    ranked = [r for r in state.crowding.values() if r.level.rank >= Occupancy.STANDING_ROOM_ONLY.rank]
    return sorted(ranked, key=lambda r: (-r.level.rank, -(r.percentage or 0), r.station_id))[:top]


def compose_digest(
    state: NetworkState, *, name: str, network: Network, slot: datetime, policy: ComposePolicy, top_crowded: int = 3,
    template: str = NoticeKind.DIGEST.value,
) -> Notice:
    """The network-wide summary for one digest slot: every line's status and the most crowded stations, to be
    rendered with the `template` base name (the digest config's `template`).

    Its version is the slot, so a slot posts once whatever happens, and its "as of HH:MM" differs from the
    previous slot's, so consecutive digests are never identical (platforms refuse repeats).
    """
    crowded = _most_crowded(state, top_crowded)
    disrupted = [line_id for line_id in network.lines if state.line_status(line_id).kind is not LineStatusKind.NORMAL]

    def variables(lang: str) -> dict[str, object]:
        return {
            "lines": [
                {"name": line_names(network, [line_id], lang)[0], "status": word(state.line_status(line_id).kind.value,
                 lang), "status_code": state.line_status(line_id).kind.value}
                for line_id in network.lines
            ],
            "disrupted": [
                {"name": line_names(network, [line_id], lang)[0],
                 "status": word(state.line_status(line_id).kind.value, lang),
                 "reason": _reason(state, line_id, lang)}
                for line_id in disrupted
            ],
            "all_normal": not disrupted,
            "crowded": [
                {"name": station_names(network, [r.station_id], lang)[0], "level": word(r.level.name, lang),
                 "percentage": r.percentage}
                for r in crowded
            ],
        }

    return Notice(
        id=f"digest-{name}", version=slot.astimezone(policy.timezone).strftime("%Y-%m-%dT%H:%M"),
        kind=NoticeKind.DIGEST, priority=Priority.ROUTINE, issued_at=slot, line_ids=tuple(disrupted),
        station_ids=tuple(r.station_id for r in crowded), severity=Severity.INFO,
        contexts=language_contexts(policy, slot, variables), template=template,
    )


def _reason(state: NetworkState, line_id: str, lang: str) -> str:
    status = state.line_status(line_id)
    if status.alert_ids and status.alert_ids[0] in state.alerts:
        return state.alerts[status.alert_ids[0]].alert.header.get(lang, "en")
    return ""
