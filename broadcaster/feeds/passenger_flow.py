"""The passenger-flow JSON format (broadcaster.passenger-flow/1) to crowding readings.

The format is documented for operators in docs/feeds.md; its JSON Schema, docs/schemas/passenger-flow-v1.json,
is generated from the models below by `passenger_flow_json_schema()`. pydantic is used at this boundary only:
what leaves the module are `broadcaster.model` dataclasses.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Self

import msgspec
import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from broadcaster.errors import FeedFormatError
from broadcaster.model import CrowdingReading, FeedSnapshot, Network, Occupancy

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

#: The schema string of version 1 as producers should write it.
SCHEMA = "broadcaster.passenger-flow/1"
#: Integer timestamps beyond this (the year 5138) are milliseconds sent by mistake.
MAX_EPOCH_SECONDS = 10**11
MAX_PERCENTAGE = 200

_SCHEMA_PATTERN = re.compile(r"broadcaster\.passenger-flow/([0-9]+)(?:\.[0-9]+)?")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_LEVEL_NAMES = tuple(level.name for level in Occupancy)
#: OccupancyStatus names (`Occupancy.__members__` builds a new mapping on every access).
_LEVELS: dict[str, Occupancy] = {level.name: level for level in Occupancy}
_TIMESTAMP_FORMS: list[dict[str, object]] = [
    {"type": "string", "format": "date-time"},
    {"type": "integer", "minimum": 0, "maximum": MAX_EPOCH_SECONDS},
]


def _check_schema(value: str) -> str:
    match = _SCHEMA_PATTERN.fullmatch(value)
    if match is None:
        raise ValueError(f"expected {SCHEMA!r}, got {value!r}")
    if match[1] != "1":
        raise ValueError(f"major version {match[1]} is not supported; this broadcaster reads {SCHEMA!r}")
    return value


def _to_datetime(value: object) -> datetime:
    if isinstance(value, str):
        if _RFC3339.fullmatch(value) is None:
            raise ValueError(f"{_show(value)} is not an RFC 3339 timestamp with a UTC offset")
        try:
            return datetime.fromisoformat(value.upper()).astimezone(UTC)
        except ValueError:
            raise ValueError(f"{_show(value)} is not a valid date and time") from None
    if isinstance(value, int) and not isinstance(value, bool):
        if value > MAX_EPOCH_SECONDS:
            raise ValueError(f"{value} looks like milliseconds; use epoch seconds")
        if value < 0:
            raise ValueError(f"{value} is before 1970")
        return datetime.fromtimestamp(value, UTC)
    raise ValueError(f"expected an RFC 3339 string or integer epoch seconds, got {_show(value)}")


def _to_optional_datetime(value: object) -> datetime | None:
    return None if value is None else _to_datetime(value)


def _to_occupancy(value: object) -> Occupancy:
    if not isinstance(value, str):
        raise ValueError(f"expected an OccupancyStatus name, got {_show(value)}")
    level = _LEVELS.get(value)
    if level is None:
        raise ValueError(f"{_show(value)} is not an OccupancyStatus name")
    return level


Timestamp = Annotated[
    datetime,
    BeforeValidator(_to_datetime),
    WithJsonSchema({"anyOf": _TIMESTAMP_FORMS}),
]
OptionalTimestamp = Annotated[
    datetime | None,
    BeforeValidator(_to_optional_datetime),
    WithJsonSchema({"anyOf": [*_TIMESTAMP_FORMS, {"type": "null"}]}),
]
Level = Annotated[Occupancy, BeforeValidator(_to_occupancy), WithJsonSchema({"enum": list(_LEVEL_NAMES)})]
SchemaId = Annotated[
    StrictStr,
    AfterValidator(_check_schema),
    WithJsonSchema({"type": "string", "pattern": r"^broadcaster\.passenger-flow/1(\.[0-9]+)?$"}),
]


class StationReading(BaseModel):
    """One crowding observation at a station, or at one line and direction in a station."""

    model_config = ConfigDict(extra="ignore", frozen=True, title="Station reading")

    station_id: Annotated[StrictStr, Field(min_length=1)] = Field(
        description="A station id from the static GTFS, or the stop id of one of its platforms."
    )
    level: Level = Field(description="A GTFS-Realtime VehiclePosition.OccupancyStatus name.")
    percentage: Annotated[StrictInt, Field(ge=0, le=MAX_PERCENTAGE)] | None = Field(
        default=None,
        description="Load as a share of design capacity, 0-200; crush loads exceed 100.",
    )
    observed_at: OptionalTimestamp = Field(
        default=None, description="When this was measured; defaults to the document's timestamp."
    )
    line_id: Annotated[StrictStr, Field(min_length=1)] | None = Field(
        default=None, description="A route_id from the static GTFS when the reading is for one line only."
    )
    direction_id: Annotated[StrictInt, Field(ge=0, le=1)] | None = Field(
        default=None, description="GTFS direction_id (0 or 1) of that line; needs line_id."
    )

    @model_validator(mode="after")
    def _direction_needs_line(self) -> Self:
        if self.direction_id is not None and self.line_id is None:
            raise ValueError("direction_id is given without line_id")
        return self


class PassengerFlowDocument(BaseModel):
    """A passenger-flow document: one complete picture of station crowding at one time."""

    model_config = ConfigDict(extra="ignore", frozen=True, title="Passenger flow, version 1")

    schema_id: SchemaId = Field(
        alias="schema",
        description=f"{SCHEMA!r}; any 1.N is read too (minor versions only add keys).",
    )
    timestamp: Timestamp = Field(
        description="When this picture was produced: an RFC 3339 string with a UTC offset, or integer epoch seconds."
    )
    stations: list[StationReading] = Field(description="The readings; a bad one is skipped, not the document.")


def passenger_flow_json_schema() -> dict[str, object]:
    """The JSON Schema (draft 2020-12) of version 1, as committed in docs/schemas/passenger-flow-v1.json."""
    schema = PassengerFlowDocument.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
    }


def parse_passenger_flow(feed: str, body: bytes, network: Network, cache: ReadingCache | None = None) -> FeedSnapshot:
    """Read one passenger-flow document into crowding readings.

    Args:
        feed: the feed's name in the config, carried into errors and the snapshot.
        body: the JSON bytes as fetched.
        network: station and platform ids are mapped onto its stations; line ids must be its lines.
        cache: the feed's own `ReadingCache`, if it keeps one: a record the previous good document had too gives
            the very same reading object (the snapshot is equal to one parsed without it).

    Returns:
        A snapshot with `crowding` filled. Records that are invalid or name unknown stations or lines are
        left out and described, one line each, in `problems`.

    Raises:
        FeedFormatError: the document itself is unusable (not JSON, not an object, wrong or unsupported
            schema, bad or missing timestamp, `stations` not a list); the message names the key.
    """
    known = cache.readings_for(network) if cache is not None else None
    cut = _cut(body, known) if known is not None else None
    if cut is None:
        top, records = _read_whole(feed, body)
        keys: list[bytes] | None = None
    else:
        top, keys, records = cut
    # The envelope is validated on its own so that one bad record does not sink the whole document.
    try:
        document = PassengerFlowDocument.model_validate(top)
    except ValidationError as exc:
        raise FeedFormatError(feed, _describe(exc, "")) from exc

    readings: list[CrowdingReading] = []
    problems: list[str] = []
    times: dict[str | int, datetime] = {}
    if keys is None:
        for index, record in enumerate(records):
            reading = _reading(record, index, document.timestamp, network, times, problems)
            if reading is not None:
                readings.append(reading)
        return FeedSnapshot(feed=feed, timestamp=document.timestamp, crowding=tuple(readings),
                            problems=tuple(problems))

    assert known is not None
    assert cache is not None
    kept: dict[bytes, CrowdingReading] = {}
    unknown = iter(records)  # the records not known by their bytes, decoded, in the document's order
    for index, key in enumerate(keys):
        reading = known.get(key)
        if reading is None:
            record = next(unknown)
            reading = _reading(record, index, document.timestamp, network, times, problems)
            if reading is None:
                continue
            if type(record) is dict and record.get("observed_at") is None:
                # Stamped with the document's time, not its own: the same bytes in the next document are
                # another reading.
                readings.append(reading)
                continue
        readings.append(reading)
        kept[key] = reading
    cache.keep(kept)
    return FeedSnapshot(feed=feed, timestamp=document.timestamp, crowding=tuple(readings), problems=tuple(problems))


#: The top level of a document with each value left as its bytes, and a `stations` array cut into its records'
#: bytes: msgspec finds where each value ends without building it (~0.2 ms for a 1,400-record document against
#: orjson's ~0.6 ms to build every record as a dict).
_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RECORDS = msgspec.json.Decoder(list[msgspec.Raw])


#: A document's top level (with an empty `stations`), its records' bytes, and the records not known, decoded.
_Cut = tuple[object, list[bytes], list[object]]


def _cut(body: bytes, known: dict[bytes, CrowdingReading]) -> _Cut | None:
    """A document whose records are mostly known by their bytes, read without building those records again.

    Returns the top level with an empty `stations` list (for `PassengerFlowDocument`), every record's bytes and
    the records not in `known`, decoded by orjson, in order. None when the document is not plainly an object
    with a `stations` array, or when anything in it is not what orjson reads: the caller then reads it whole,
    as without a cache, and that words the problem. So a document gives the same snapshot or the same error
    either way (tests/test_flow_reading_cache.py holds it to that, byte by byte).
    """
    try:
        stations = _TOP_LEVEL.decode(body).get("stations")  # of repeated keys the last, as orjson takes it
        if stations is None:
            return None
        span = bytes(stations)
        keys = [bytes(record) for record in _RECORDS.decode(span)]
        if not keys:
            # Nothing to reuse, and an empty array written with a space inside (`[ ]`) is text a string can hold
            # too: emptying that string instead would pass the check below.
            return None
        # Everything but the records is read by orjson, in the document itself with the records' array emptied,
        # so that what msgspec passes over unread but orjson refuses (a byte that is not UTF-8, a number past a
        # double's range, the value of a key given twice) fails as it fails in the whole document. The array is
        # looked for where it usually ends, before the closing brace (`find` of a 170 KB text costs ~0.2 ms),
        # else anywhere; emptying the same text elsewhere instead leaves `stations` what it was, not [] (or
        # changes nothing: an empty array for an empty array), so it is noticed.
        end = body.rfind(b"]") + 1
        at = end - len(span)
        if at < 0 or not body.startswith(span, at):
            at = body.find(span)
            end = at + len(span)
        top = orjson.loads(body[:at] + b"[]" + body[end:])
        if top.get("stations") != []:
            return None
        # The records not known, decoded at the depth they have in the document (orjson's limit counts levels);
        # a record known by its bytes was decoded this way before.
        unknown = [key for key in keys if key not in known]
        records = orjson.loads(b'{"stations":[' + b",".join(unknown) + b"]}")["stations"] if unknown else []
    except (msgspec.DecodeError, orjson.JSONDecodeError, RecursionError):
        # msgspec counts nesting against Python's recursion limit, where orjson has its own (1,024 levels): a
        # document nested deeply enough for the one but not the other is read whole, as orjson reads it.
        return None
    return top, keys, records


def _read_whole(feed: str, body: bytes) -> tuple[object, list[object]]:
    """The document as orjson reads it: its top level with an empty `stations` list when it has a list there
    (the records are checked one by one, not by the envelope's model), and its records."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FeedFormatError(feed, _not_json(body, exc)) from exc
    if not isinstance(raw, dict):
        raise FeedFormatError(feed, f"the document must be a JSON object, got {_show(raw)}")
    records = raw.get("stations")
    if not isinstance(records, list):
        return raw, []  # the envelope's model refuses it and says why
    return {**raw, "stations": []}, records


def _reading(record: object, index: int, timestamp: datetime, network: Network,
             times: dict[str | int, datetime], problems: list[str]) -> CrowdingReading | None:
    """Record `index` as a reading of the network, or None with its problem added to `problems`. A record
    without its own observed_at takes the document's `timestamp` (the very object)."""
    reading = _plain_reading(record, times)
    if reading is None:
        try:
            model = StationReading.model_validate(record)
        except ValidationError as exc:
            problems.append(_describe(exc, f"stations[{index}]") + _naming(record))
            return None
        reading = (model.station_id, model.level, model.percentage, model.observed_at, model.line_id,
                   model.direction_id)
    given_id, level, percentage, observed_at, line_id, direction_id = reading
    station_id = network.station_of(given_id)
    if station_id is None:
        problems.append(f"stations[{index}].station_id: {given_id!r} is not a station or stop of the network")
        return None
    if line_id is not None and line_id not in network.lines:
        problems.append(f"stations[{index}].line_id: {line_id!r} is not a line of the network{_naming(record)}")
        return None
    return CrowdingReading(station_id, level, observed_at or timestamp, percentage, line_id, direction_id)


class ReadingCache:
    """One passenger-flow feed's readings of its previous good document, by their records' bytes.

    A city's document repeats most records from one fetch to the next (an aggregator republishes each station's
    last measurement with the time it was made): read again, such a record gives the very same `CrowdingReading`
    object, without being decoded, checked or built again, and the crowding state recognises an unchanged station
    by that identity (state/crowding.py). A reading is a pure function of its record's bytes and the network (one
    without its own observed_at takes the document's time, and is not kept), so the snapshot is the one a parse
    without the cache gives (tests/test_flow_reading_cache.py holds it to that).
    Bounded by one document; held by whoever parses that feed (the poller, one per feed), never shared.
    """

    def __init__(self) -> None:
        self._network: Network | None = None
        self._readings: dict[bytes, CrowdingReading] = {}

    def readings_for(self, network: Network) -> dict[bytes, CrowdingReading]:
        if network is not self._network:
            self._network = network
            self._readings = {}
        return self._readings

    def keep(self, readings: dict[bytes, CrowdingReading]) -> None:
        """The document just parsed was readable: its readings are the next parse's."""
        self._readings = readings


def _naming(record: object) -> str:
    """The index alone makes an operator count records; the station id, when it is readable, says which."""
    named = record.get("station_id") if isinstance(record, dict) else None
    return f" (station {_show(named)})" if isinstance(named, str) and named else ""


#: A record's fields: station id, level, percentage, observed_at, line id, direction id.
_Reading = tuple[str, Occupancy, int | None, datetime | None, str | None, int | None]


def _plain_reading(record: object, times: dict[str | int, datetime]) -> _Reading | None:
    """A record that is plainly valid, read without pydantic (a tenth of the cost: a city's document is a thousand
    records or more on every tick); None when anything about it is unusual, and `StationReading` then validates it
    and words the problem. It accepts exactly what `StationReading` accepts, with the same values (the property
    test in tests/test_passenger_flow.py holds them to it). `times` memoises observed_at within one document:
    producers stamp many readings alike."""
    if type(record) is not dict:
        return None
    get = record.get
    station_id, level, percentage = get("station_id"), get("level"), get("percentage")
    line_id, direction_id, observed = get("line_id"), get("direction_id"), get("observed_at")
    if type(station_id) is not str or not station_id or type(level) is not str or level not in _LEVELS:
        return None
    if percentage is not None and (type(percentage) is not int or not 0 <= percentage <= MAX_PERCENTAGE):
        return None
    if line_id is not None and (type(line_id) is not str or not line_id):
        return None
    if direction_id is not None and (type(direction_id) is not int or direction_id not in (0, 1) or line_id is None):
        return None
    observed_at: datetime | None = None
    if observed is not None:
        if type(observed) is not str and type(observed) is not int:
            return None
        observed_at = times.get(observed)
        if observed_at is None:
            try:
                observed_at = times[observed] = _to_datetime(observed)
            except ValueError:
                return None
    return station_id, _LEVELS[level], percentage, observed_at, line_id, direction_id


def _not_json(body: bytes, exc: orjson.JSONDecodeError) -> str:
    head = body[:64].lstrip()
    if not head:
        return "empty body"
    if head.startswith(b"<"):
        word = re.match(rb"[^\s>]{1,20}", head)
        return f"not JSON (starts with {(word[0] if word else head[:20]).decode('ascii', 'replace')!r})"
    return f"not JSON: {exc}"


def _describe(exc: ValidationError, where: str) -> str:
    """pydantic's errors as `stations[3].level: 'BUSY' is not an OccupancyStatus name`, joined by '; '."""
    return "; ".join(_describe_one(error, where) for error in exc.errors(include_url=False))


def _describe_one(error: ErrorDetails, where: str) -> str:
    path = where
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    kind = error["type"]
    value = error["input"]
    context = error.get("ctx", {})
    if kind == "value_error":
        message = str(context["error"])
    elif kind == "missing":
        message = "is required"
    elif kind in ("string_type", "int_type", "list_type", "model_type", "model_attributes_type"):
        expected = {"string_type": "a string", "int_type": "an integer", "list_type": "a list"}.get(kind, "an object")
        message = f"expected {expected}, got {_show(value)}"
    elif kind == "string_too_short":
        message = "must not be empty"
    elif kind == "greater_than_equal":
        message = f"{_show(value)} is below {context['ge']}"
    elif kind == "less_than_equal":
        message = f"{_show(value)} is above {context['le']}"
    else:
        message = error["msg"]
    return f"{path}: {message}" if path else message


def _show(value: object) -> str:
    """A value as the producer wrote it: strings quoted, the rest as JSON, both cut short."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:  # past orjson's depth for writing (254), or a number past 64 bits
            try:
                text = repr(value)
            except RecursionError:
                text = f"a {type(value).__name__} nested too deep to show"
    return text if len(text) <= 40 else text[:37] + "..."
