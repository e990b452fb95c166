"""What compose hands on: the notice, its kind and priority, the emergency rule and the compose policy."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from broadcaster.model import Occupancy, Severity
from broadcaster.state import AlertRecord

#: How a correction's version begins ("correction-<alert version>-<epoch>" for an alert the feed corrected,
#: "correction-<epoch>" for an operator's): the outbox tells a correction from an original post by it.
CORRECTION_VERSION_PREFIX: Final = "correction-"


class NoticeKind(enum.StrEnum):
    """What a notice is about; also the base name of its templates (``alert_new.zh.j2``)."""

    ALERT_NEW = "alert_new"
    ALERT_UPDATED = "alert_updated"
    ALERT_RESOLVED = "alert_resolved"
    LINE_STATUS = "line_status"
    CROWDING = "crowding"
    DIGEST = "digest"
    CORRECTION = "correction"


class Priority(enum.IntEnum):
    """Outbox order: lower drains first."""

    EMERGENCY = 0
    NORMAL = 1
    ROUTINE = 2


TemplateContext = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Notice:
    """One thing to tell commuters, before rendering.

    `id` names the subject (an alert, a line, a station); `version` names this particular statement about it,
    so (id, version) is unique per real event and stable once committed.
    """

    id: str
    version: str
    kind: NoticeKind
    priority: Priority
    issued_at: datetime
    line_ids: tuple[str, ...]
    station_ids: tuple[str, ...]
    severity: Severity
    contexts: Mapping[str, TemplateContext]  # language -> template variables
    alert_id: str | None = None
    #: The template base name ({template}.{language}.j2) when not the kind's own: a digest's config may name one.
    template: str | None = None
    #: The channels it goes to (None: every channel); a digest slot goes only where it is due.
    audience: frozenset[str] | None = None
    #: About an alert the emergency rule makes an emergency (its all-clear too, which does not jump the queue):
    #: what a channel with `emergencies_only` takes.
    emergency: bool = False

    @property
    def template_base(self) -> str:
        """The base name of the templates this notice is rendered with."""
        return self.template or self.kind.value


@dataclass(frozen=True, slots=True)
class EmergencyRule:
    """What counts as an emergency (the config's `[emergency]`): it jumps the queue on every channel, skips
    quiet windows and posting budgets, and shows prominently (content warning, a display's top line)."""

    min_severity: Severity = Severity.SEVERE
    effects: frozenset[str] = frozenset({"NO_SERVICE"})


DEFAULT_EMERGENCY = EmergencyRule()


@dataclass(frozen=True, slots=True)
class ComposePolicy:
    timezone: ZoneInfo
    languages: tuple[str, ...] = ("zh", "en")
    #: A station crossing this crowding level (either way) is announced; below it only MQTT state changes.
    crowding_notice_level: Occupancy = Occupancy.CRUSHED_STANDING_ROOM_ONLY
    emergency: EmergencyRule = DEFAULT_EMERGENCY


def is_emergency(record: AlertRecord, rule: EmergencyRule = DEFAULT_EMERGENCY) -> bool:
    return record.alert.severity >= rule.min_severity or record.alert.effect in rule.effects

