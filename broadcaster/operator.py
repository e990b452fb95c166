"""The operator's notices: what `broadcaster announce` and the admin API send, as alerts of the `operator` feed."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

import orjson

from broadcaster.model import ActivePeriod, Alert, InformedEntity, LocalizedText, Network, Severity
from broadcaster.store import iso

#: The pseudo-feed that carries operator notices through the same state, diff and notices as real feeds.
OPERATOR_FEED = "operator"


def has_ended(alert: Alert, now: datetime) -> bool:
    """Every active period of the alert is over."""
    return bool(alert.active_periods) and all(p.end is not None and p.end <= now for p in alert.active_periods)


@dataclass(frozen=True, slots=True)
class ManualNotice:
    """An operator's notice (`broadcaster announce`, the admin API)."""

    texts: Mapping[str, str]  # language -> text
    line_ids: tuple[str, ...] = ()
    station_ids: tuple[str, ...] = ()
    severity: Severity = Severity.WARNING
    effect: str = "OTHER_EFFECT"
    until: datetime | None = None
    author: str = "operator"

    @classmethod
    def from_request(cls, body: Mapping[str, Any], network: Network) -> ManualNotice:
        """From an operator request (command line or admin API), checked against the network."""
        texts = {str(k): str(v) for k, v in body["texts"].items() if str(v).strip()}
        if not texts:
            raise ValueError("a notice needs a text in at least one language")
        for line_id in body.get("line_ids", ()):
            if line_id not in network.lines:
                raise ValueError(f"unknown line {line_id!r} (known: {', '.join(network.lines)})")
        for station_id in body.get("station_ids", ()):
            if station_id not in network.stations:
                raise ValueError(f"unknown station {station_id!r}")
        until = body.get("until")
        return cls(
            texts=texts, line_ids=tuple(body.get("line_ids", ())), station_ids=tuple(body.get("station_ids", ())),
            severity=Severity[str(body.get("severity", "WARNING")).upper()],
            effect=str(body.get("effect", "OTHER_EFFECT")), until=datetime.fromisoformat(until) if until else None,
            author=str(body.get("author", "operator")),
        )

    def as_alert(self, now: datetime) -> Alert:
        digest = hashlib.sha256(orjson.dumps(
            [sorted(self.texts.items()), self.line_ids, self.station_ids, iso(now)])).hexdigest()[:10]
        informed = tuple(InformedEntity(line_id=line) for line in self.line_ids) + tuple(
            InformedEntity(station_id=station) for station in self.station_ids
        )
        return Alert(
            id=f"manual-{digest}", cause="OTHER_CAUSE", effect=self.effect, severity=self.severity,
            header=LocalizedText(MappingProxyType(dict(self.texts))), description=LocalizedText(),
            url=LocalizedText(), informed=informed,
            active_periods=(ActivePeriod(now, self.until),) if self.until else (),
        )


@dataclass(frozen=True, slots=True)
class Correction:
    """The operator's headline for one version of one alert.

    GTFS-RT feeds reuse entity ids, so a correction is tied to the content it corrected: it applies while the
    alert's feed still sends that version (`state.alert_version` of the alert as the feed sends it), and is
    dropped when the feed changes the alert or the alert resolves.
    """

    header: LocalizedText
    #: None: saved before corrections had versions; pinned to what the feed sends when it next sends the alert.
    alert_version: str | None


#: `meta['operator:corrections']` is `{"format": 2, "corrections": {alert id: {"header", "alert_version"}}}`;
#: format 1 (no "format" key) was `{alert id: {language: text}}`.
CORRECTIONS_FORMAT = 2


def encode_corrections(corrections: Mapping[str, Correction]) -> str:
    return orjson.dumps({"format": CORRECTIONS_FORMAT, "corrections": {
        alert_id: {"header": c.header.as_dict(), "alert_version": c.alert_version}
        for alert_id, c in corrections.items()
    }}).decode()


def decode_corrections(raw: str) -> dict[str, Correction]:
    """Corrections as saved by this version or the one before (which kept no alert version)."""
    data = orjson.loads(raw)
    if data.get("format") == CORRECTIONS_FORMAT:
        return {alert_id: Correction(LocalizedText(MappingProxyType(dict(c["header"]))), c["alert_version"])
                for alert_id, c in data["corrections"].items()}
    return {alert_id: Correction(LocalizedText(MappingProxyType(dict(texts))), None)
            for alert_id, texts in data.items()}
