"""The summary for a digest slot, of the whole network or of the lines and stations a channel follows, and what
it says without its time."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from datetime import datetime

from broadcaster.compose.context import language_contexts, line_names, station_names
from broadcaster.compose.notice import ComposePolicy, Notice, NoticeKind, Priority
from broadcaster.model import Network, Occupancy, Severity
from broadcaster.state import CrowdingRecord, LineStatusKind, NetworkState
from broadcaster.vocabulary import word


def digest_fingerprint(
    state: NetworkState, top_crowded: int, *, lines: Sequence[str] | None = None,
    stations: Collection[str] | None = None,
) -> str:
    """What a digest says, without its time: equal fingerprints mean an "on-change" channel skips the slot.

    `lines` and `stations` limit it to what a filtered channel's digest covers (None: the whole network, whose
    fingerprint is what it always was, so marks kept before filters existed still match)."""
    if lines is None:
        statuses = sorted((line_id, s.kind.value) for line_id, s in state.lines.items())
    else:
        statuses = sorted((line_id, state.line_status(line_id).kind.value) for line_id in lines)
    crowded = _most_crowded(state, top_crowded, stations)
    said = repr((statuses, [(r.station_id, r.level.name) for r in crowded]))
    return hashlib.sha256(said.encode()).hexdigest()[:16]


def _most_crowded(state: NetworkState, top: int, stations: Collection[str] | None = None) -> list[CrowdingRecord]:
    ranked = [r for r in state.crowding.values() if r.level.rank >= Occupancy.STANDING_ROOM_ONLY.rank
              and (stations is None or r.station_id in stations)]
    return sorted(ranked, key=lambda r: (-r.level.rank, -(r.percentage or 0), r.station_id))[:top]


def compose_digest(
    state: NetworkState, *, name: str, network: Network, slot: datetime, policy: ComposePolicy, top_crowded: int = 3,
    template: str = NoticeKind.DIGEST.value, lines: Sequence[str] | None = None,
    stations: Collection[str] | None = None,
) -> Notice:
    """The summary for one digest slot: every line's status and the most crowded stations, to be rendered with
    the `template` base name (the digest config's `template`). `lines` and `stations` limit it to a filtered
    channel's (None: the whole network).

    Its version is the slot, so a slot posts once whatever happens, and its "as of HH:MM" differs from the
    previous slot's, so consecutive digests are never identical (platforms refuse repeats).
    """
    crowded = _most_crowded(state, top_crowded, stations)
    listed = tuple(network.lines) if lines is None else tuple(lines)
    disrupted = [line_id for line_id in listed if state.line_status(line_id).kind is not LineStatusKind.NORMAL]

    def variables(lang: str) -> dict[str, object]:
        return {
            "lines": [
                {"name": line_names(network, [line_id], lang)[0], "status": word(state.line_status(line_id).kind.value,
                 lang), "status_code": state.line_status(line_id).kind.value}
                for line_id in listed
            ],
            "disrupted": [
                {"name": line_names(network, [line_id], lang)[0],
                 "status": word(state.line_status(line_id).kind.value, lang),
                 "reason": _reason(state, line_id, lang)}
                for line_id in disrupted
            ],
            "all_normal": not disrupted,
            "whole_network": lines is None,  # False: the lines a filtered channel follows
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
