"""The operator's notices: what `broadcaster announce` and the admin API send, as alerts of the `operator` feed.

Both doors build their request through this module: the same pydantic models (`NoticeRequest`,
`CorrectionRequest`, also the admin API's OpenAPI schemas), the same checks against the network and the
configured languages (`notice_request`, `correction_request`) and the same messages. Every text an operator
sends goes through `broadcaster.text.clean_text`, the boundary feed texts go through: no controls, no bidi
overrides, no HTML, no live @mentions, at most 2,000 characters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic import ValidationError as _ValidationError

from broadcaster.errors import RequestInvalid
from broadcaster.model import ActivePeriod, Alert, InformedEntity, LocalizedText, Network, Severity
from broadcaster.store import iso
from broadcaster.text import clean_text

#: The pseudo-feed that carries operator notices through the same state, diff and notices as real feeds.
OPERATOR_FEED = "operator"


def has_ended(alert: Alert, now: datetime) -> bool:
    """Every active period of the alert is over."""
    return bool(alert.active_periods) and all(p.end is not None and p.end <= now for p in alert.active_periods)


# ------------------------------------------------------------------------------------------------------------
# The request: one model and one set of checks for the command line and the admin API

#: How much raw text a request may carry per language; what is kept is `broadcaster.text.TEXT_LIMIT` (2,000).
RAW_TEXT_LIMIT = 20_000


def _operator_text(raw: str) -> str:
    """An operator's text through the feed text boundary; refused when nothing is left of it."""
    text = clean_text(raw)
    if not text:
        raise ValueError("is empty once control characters, markup and white space are removed")
    return text


def _upper_ascii(value: object) -> object:
    """"severe" reads as "SEVERE" (ASCII only: "ſevere".upper() is "SEVERE" too, and is refused)."""
    return value.upper() if isinstance(value, str) and value.isascii() else value


def _until_message(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """One message for every wrong `until` (garbage, no offset, an impossible date), naming the value."""
    try:
        return handler(value)
    except _ValidationError:
        raise ValueError(f"{value!r} is not a time with an offset (RFC 3339, e.g. 2026-11-26T09:00:00+08:00)"
                         ) from None


Text = Annotated[str, StringConstraints(max_length=RAW_TEXT_LIMIT), AfterValidator(_operator_text)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Effect = Literal[
    "NO_SERVICE", "REDUCED_SERVICE", "SIGNIFICANT_DELAYS", "DETOUR", "ADDITIONAL_SERVICE", "MODIFIED_SERVICE",
    "OTHER_EFFECT", "UNKNOWN_EFFECT", "STOP_MOVED", "NO_EFFECT", "ACCESSIBILITY_ISSUE",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoticeRequest(_Request):
    """An operator's notice, as `broadcaster announce` takes it."""

    texts: Annotated[dict[str, Text], Field(min_length=1, description="language -> text, e.g. {\"zh\": ..., "
                                                                     "\"en\": ...}; configured languages only; "
                                                                     "cleaned like feed texts (no controls, bidi "
                                                                     "overrides, HTML or live @mentions), cut at "
                                                                     "2,000 characters")]
    line_ids: Annotated[list[Identifier], Field(max_length=100, description="GTFS route ids it concerns")] = []
    station_ids: Annotated[list[Identifier], Field(max_length=500, description="GTFS stop ids it concerns")] = []
    severity: Annotated[Literal["INFO", "WARNING", "SEVERE"], BeforeValidator(_upper_ascii),
                        Field(description="SEVERE (or an emergency effect) jumps the queue")] = "WARNING"
    effect: Annotated[Effect, Field(description="GTFS-RT effect; sets the line status")] = "OTHER_EFFECT"
    until: Annotated[AwareDatetime | None, WrapValidator(_until_message),
                     Field(description="when it ends (RFC 3339 with an offset); none: until corrected")] = None


class CorrectionRequest(_Request):
    """The corrected text of an earlier notice."""

    texts: Annotated[dict[str, Text], Field(min_length=1, description="language -> corrected text, cleaned "
                                                                     "like a notice's")]


def _field(location: Sequence[int | str]) -> str:
    """pydantic's ('texts', 'fr') -> 'texts.fr'; ('line_ids', 0) -> 'line_ids[0]'."""
    out = ""
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out or "(body)"


def validation_problems(exc: _ValidationError) -> list[dict[str, str]]:
    """Each error of a request model as {"field": path, "message": what is wrong}."""
    out = []
    for error in exc.errors(include_url=False):
        message = {"missing": "is required", "extra_forbidden": "is not a known field"}.get(
            error["type"], error["msg"].removeprefix("Value error, "))
        out.append({"field": _field(error["loc"]), "message": message})
    return out


def _texts_problems(texts: Mapping[str, str], languages: Sequence[str]) -> list[dict[str, str]]:
    return [{"field": f"texts.{lang}", "message": f"not a configured language ({', '.join(languages)})"}
            for lang in texts if lang not in languages]


def unknown_line(line_id: str, network: Network) -> str:
    return f"unknown line {line_id!r} (known: {', '.join(network.lines)})"


def notice_request(body: Any, *, network: Network, languages: Sequence[str], now: datetime) -> NoticeRequest:
    """An operator's notice request, validated and its texts cleaned: what both doors accept.

    Raises:
        RequestInvalid: naming every bad field.
    """
    try:
        request = NoticeRequest.model_validate(body)
    except _ValidationError as exc:
        raise RequestInvalid(validation_problems(exc)) from None
    problems = _texts_problems(request.texts, languages)
    problems += [{"field": f"line_ids[{i}]", "message": unknown_line(line, network)}
                 for i, line in enumerate(request.line_ids) if line not in network.lines]
    problems += [{"field": f"station_ids[{i}]", "message": f"unknown station {station!r}"}
                 for i, station in enumerate(request.station_ids) if station not in network.stations]
    if request.until is not None and request.until <= now:
        problems.append({"field": "until", "message": "is in the past"})
    if problems:
        raise RequestInvalid(problems)
    return request


def correction_request(body: Any, *, languages: Sequence[str]) -> CorrectionRequest:
    """A correction request, validated and its texts cleaned (whether the notice exists is the caller's check).

    Raises:
        RequestInvalid: naming every bad field.
    """
    try:
        request = CorrectionRequest.model_validate(body)
    except _ValidationError as exc:
        raise RequestInvalid(validation_problems(exc)) from None
    problems = _texts_problems(request.texts, languages)
    if problems:
        raise RequestInvalid(problems)
    return request


def queued_correction_texts(body: Mapping[str, Any]) -> dict[str, str]:
    """The texts of a queued command-line correction (`broadcaster.desk`), through the model again.

    Raises:
        ValueError: they are invalid (pydantic's ValidationError is one).
    """
    return dict(CorrectionRequest.model_validate({"texts": body.get("texts")}).texts)


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
    def of(cls, request: NoticeRequest, author: str) -> ManualNotice:
        """The notice a validated request asks for."""
        return cls(
            texts=dict(request.texts), line_ids=tuple(request.line_ids), station_ids=tuple(request.station_ids),
            severity=Severity[request.severity], effect=request.effect, until=request.until, author=author,
        )

    @classmethod
    def from_request(cls, body: Mapping[str, Any], network: Network) -> ManualNotice:
        """From a queued command-line request (`broadcaster.desk`): the request model again, then the network.

        Raises:
            ValueError: an invalid field (pydantic's ValidationError is one) or an unknown line or station.
        """
        fields = {k: v for k, v in body.items() if k not in ("author", "idempotency_key")}
        request = NoticeRequest.model_validate(fields)
        for line_id in request.line_ids:
            if line_id not in network.lines:
                raise ValueError(unknown_line(line_id, network))
        for station_id in request.station_ids:
            if station_id not in network.stations:
                raise ValueError(f"unknown station {station_id!r}")
        return cls.of(request, str(body.get("author", "operator")))

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
