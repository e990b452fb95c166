"""The MQTT contract v1 for station displays and commuters' apps: topic names and payload models.

This is a public interface. The pydantic models below are the source of the JSON Schemas in
`docs/schemas/mqtt/` (regenerate with `broadcaster schemas docs/schemas/mqtt`; a test fails when they drift).
Payloads are *built* as plain dicts in `payloads.py` for speed; tests check every builder against these models.

Rules for changing it: adding an optional field is a minor change (same `/1` schema id, documented in
docs/mqtt.md's changelog); removing or renaming a field or changing its meaning is a new major version with
new topics (`{prefix}/v2/...`) published alongside v1 for a deprecation period.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

CONTRACT_VERSION = "v1"

SCHEMA_LINE_STATUS = "broadcaster.mqtt.line-status/1"
SCHEMA_ALERT = "broadcaster.mqtt.alert/1"
SCHEMA_CROWDING = "broadcaster.mqtt.station-crowding/1"
SCHEMA_DISPLAY = "broadcaster.mqtt.station-display/1"
SCHEMA_NOTICE = "broadcaster.mqtt.notice/1"
SCHEMA_STATUS = "broadcaster.mqtt.broadcaster-status/1"
SCHEMA_PRESENCE = "broadcaster.mqtt.broadcaster-instance/1"


def topic_segment(identifier: str) -> str:
    """A GTFS id as one topic level: '/', '+', '#', '%', spaces and non-ASCII are percent-encoded."""
    return quote(identifier, safe="-_.~!$&'()*,;=:@")


class Topics:
    """Topic names under `{prefix}/v1/`."""

    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix.rstrip('/')}/{CONTRACT_VERSION}"

    def line_status(self, line_id: str) -> str:
        return f"{self.base}/lines/{topic_segment(line_id)}/status"

    def line_alert(self, line_id: str, alert_id: str) -> str:
        return f"{self.base}/lines/{topic_segment(line_id)}/alerts/{topic_segment(alert_id)}"

    def station_crowding(self, station_id: str) -> str:
        return f"{self.base}/stations/{topic_segment(station_id)}/crowding"

    def station_display(self, station_id: str) -> str:
        return f"{self.base}/stations/{topic_segment(station_id)}/display"

    @property
    def notices(self) -> str:
        return f"{self.base}/notices"

    @property
    def status(self) -> str:
        return f"{self.base}/broadcaster/status"

    def presence(self, instance: str) -> str:
        """One instance's presence when several share a database (since v1.4): for operators, not displays."""
        return f"{self.base}/broadcaster/status/instances/{topic_segment(instance)}"

    def probe(self, probe_client_id: str) -> str:
        """Where broadcaster's start-up check echoes an empty message to itself (internal; ignore it)."""
        return f"{self.base}/broadcaster/probe/{topic_segment(probe_client_id)}"


# ------------------------------------------------------------------------------------------------------------
# Payload models (the contract). `extra="forbid"` so a builder that adds an undocumented field fails the tests.


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


Texts = dict[str, str]  # language subtag -> text, e.g. {"zh": "...", "en": "..."}

LineStatusCode = Literal["normal", "delayed", "partly_suspended", "suspended"]
#: since v1.2: `good`; `changes` (trains still run: service changes riders feel, such as a detour, a moved stop
#: or a broken lift, with `status` `normal`; or measured delays below `state.severe_delay_threshold_seconds`,
#: with `status` `delayed`); `disrupted` (every other status but `normal`).
ServiceLevel = Literal["good", "changes", "disrupted"]
OccupancyName = Literal[
    "EMPTY", "MANY_SEATS_AVAILABLE", "FEW_SEATS_AVAILABLE", "STANDING_ROOM_ONLY", "CRUSHED_STANDING_ROOM_ONLY",
    "FULL", "NOT_ACCEPTING_PASSENGERS", "NO_DATA_AVAILABLE", "NOT_BOARDABLE",
]
Trend = Literal["rising", "falling", "steady"]


class Envelope(_Model):
    seq: int = Field(description="Increases with every message the broadcaster publishes; deduplicate on it.")
    issued_at: str = Field(description="RFC 3339 UTC time this message was built.")
    valid_until: str | None = Field(description="RFC 3339 UTC; after it, treat the content as unknown.")


class LineRef(_Model):
    id: str
    short_name: str
    names: Texts
    color: str | None = Field(description="RRGGBB without '#', from routes.txt")


class StationRef(_Model):
    id: str
    names: Texts


class DirectionOccupancy(_Model):
    direction_id: int | None
    level: OccupancyName
    vehicles: int


class LineStatusPayload(Envelope):
    schema_: Literal["broadcaster.mqtt.line-status/1"] = Field(alias="schema")
    line: LineRef
    status: LineStatusCode
    level: ServiceLevel | None = Field(
        default=None,
        description="since v1.2: good, changes (trains still run: service changes with status normal, or measured"
        " delays below the severe threshold with status delayed) or disrupted",
    )
    status_text: Texts = Field(description="The level in words (since v1.2 'Service changes' for changes)")
    reason: Texts = Field(description="Why, in each language: the main alert's header or the delay; {} if good")
    alert_ids: list[str] = Field(description="Every active alert touching the line, worst first (since v1.2)")
    max_delay_s: int
    occupancy: list[DirectionOccupancy]
    as_of: str | None = Field(description="The newest feed timestamp behind this state")


class ActivePeriodModel(_Model):
    start: str | None
    end: str | None


class AlertPayload(Envelope):
    schema_: Literal["broadcaster.mqtt.alert/1"] = Field(alias="schema")
    alert_id: str
    version: str = Field(description="Content hash of the alert; changes whenever its content does")
    severity: Literal["UNKNOWN_SEVERITY", "INFO", "WARNING", "SEVERE"]
    emergency: bool
    cause: str = Field(description="GTFS-RT Alert.Cause name")
    effect: str = Field(description="GTFS-RT Alert.Effect name")
    effect_text: Texts
    header: Texts
    description: Texts
    url: Texts
    lines: list[str]
    stations: list[StationRef]
    active_periods: list[ActivePeriodModel]
    first_seen: str
    updated_at: str


class PlatformCrowding(_Model):
    line_id: str | None
    direction_id: int | None
    level: OccupancyName
    percentage: int | None
    observed_at: str


class StationCrowdingPayload(Envelope):
    schema_: Literal["broadcaster.mqtt.station-crowding/1"] = Field(alias="schema")
    station: StationRef
    level: OccupancyName
    level_text: Texts
    percentage: int | None
    trend: Trend
    observed_at: str
    platforms: list[PlatformCrowding]


class DisplayLine(_Model):
    line: LineRef
    status: LineStatusCode
    level: ServiceLevel | None = Field(default=None, description="since v1.2: as in line status")
    status_text: Texts


class DisplayAlert(_Model):
    alert_id: str
    severity: Literal["UNKNOWN_SEVERITY", "INFO", "WARNING", "SEVERE"]
    emergency: bool
    effect: str
    header: Texts


class DisplayCrowding(_Model):
    level: OccupancyName
    level_text: Texts
    percentage: int | None
    trend: Trend


class StationDisplayPayload(Envelope):
    schema_: Literal["broadcaster.mqtt.station-display/1"] = Field(alias="schema")
    station: StationRef
    lines: list[DisplayLine]
    alerts: list[DisplayAlert] = Field(description="Alerts touching the station or its lines, emergencies first")
    crowding: DisplayCrowding | None
    text: dict[str, list[str]] = Field(description="Ready-made screen lines per language, most important first")
    tts: Texts = Field(description="One announcement per language for text-to-speech")


class NoticePayload(Envelope):
    schema_: Literal["broadcaster.mqtt.notice/1"] = Field(alias="schema")
    notice_id: str
    version: str
    kind: Literal["alert_new", "alert_updated", "alert_resolved", "line_status", "crowding", "digest", "correction"] = (
        Field(description="'digest' and 'correction' were sent since v1.0 but only listed in the schema from v1.2")
    )
    priority: Literal["emergency", "normal", "routine"]
    alert_id: str | None
    lines: list[str]
    stations: list[str]
    text: Texts


class BroadcasterStatusPayload(_Model):
    schema_: Literal["broadcaster.mqtt.broadcaster-status/1"] = Field(alias="schema")
    status: Literal["online", "offline"]
    client_id: str
    since: str = Field(description="RFC 3339 UTC: when this status began (for offline: when the session began)")
    version: str = Field(description="broadcaster's software version")
    instance: str | None = Field(
        default=None,
        description="since v1.1: which installation this is (fixed per state directory); two with the same"
        " client_id and different instances are a misconfiguration, and the second refuses to start",
    )
    mode: Literal["service", "batch"] | None = Field(
        default=None,
        description="since v1.2: 'service' for a long-running broadcaster (`run`), 'batch' for a one-shot"
        " run (`once`, e.g. from cron). A batch run that ended cleanly leaves 'online' with valid_until",
    )
    valid_until: str | None = Field(
        default=None,
        description="since v1.2, on a batch run's clean end: RFC 3339 UTC; until then the published state"
        " stands (each payload's own valid_until still rules); after it, treat the broadcaster as offline",
    )
    leader: str | None = Field(
        default=None,
        description="since v1.4, when several instances share one database (high availability): the instance"
        " that leads and speaks here. Displays need not read it: status alone says online or offline",
    )


class BroadcasterInstancePayload(_Model):
    schema_: Literal["broadcaster.mqtt.broadcaster-instance/1"] = Field(alias="schema")
    instance: str = Field(description="The instance's id ([ha] instance), as in the topic")
    role: Literal["leader", "standby", "offline"] = Field(
        description="leader: it publishes every other topic; standby: connected, ready to take over; offline: it"
        " stopped, or died (its Last Will)"
    )
    since: str = Field(description="RFC 3339 UTC: when this role began (for the Will's offline: when the session"
                       " that died began)")
    client_id: str = Field(description="The MQTT client id of the instance's leader session")
    version: str = Field(description="broadcaster's software version")
    installation: str | None = Field(
        default=None, description="The installation (one per database), as `instance` in broadcaster/status")


PAYLOAD_MODELS: dict[str, type[BaseModel]] = {
    "line-status": LineStatusPayload,
    "alert": AlertPayload,
    "station-crowding": StationCrowdingPayload,
    "station-display": StationDisplayPayload,
    "notice": NoticePayload,
    "broadcaster-status": BroadcasterStatusPayload,
    "broadcaster-instance": BroadcasterInstancePayload,
}


def json_schemas() -> dict[str, dict[str, object]]:
    """The JSON Schema of every payload, keyed by file stem."""
    return {name: model.model_json_schema(by_alias=True) for name, model in PAYLOAD_MODELS.items()}
