"""The config's sections other than the channels: network, feeds, hours, state, broker, templates, digests,
emergencies and the admin API."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from datetime import time
from pathlib import Path
from string import Formatter
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from broadcaster.config.base import (
    ChannelName,
    KeyedValueError,
    LanguageCode,
    PositiveSeconds,
    SecretRef,
    Section,
    require_host_and_port,
    require_unique,
    within,
)

FeedContent = Literal["alerts", "trip-updates", "vehicle-positions"]
FEED_CONTENTS: tuple[FeedContent, ...] = ("alerts", "trip-updates", "vehicle-positions")


class NetworkConfig(Section):
    gtfs: Path
    default_language: LanguageCode = "zh"
    #: Every notice is composed in these languages, and only these: a channel posts a subset of them.
    languages: Annotated[tuple[LanguageCode, ...], Field(min_length=1)] = ("zh", "en")

    @field_validator("languages")
    @classmethod
    def _unique_languages(cls, languages: tuple[str, ...]) -> tuple[str, ...]:
        first_at: dict[str, int] = {}
        for i, language in enumerate(languages):
            if language in first_at:
                raise ValueError(f"languages[{i}] is used twice (languages[{first_at[language]}] has it too)")
            first_at[language] = i
        return languages

    @model_validator(mode="after")
    def _default_is_one_of_the_languages(self) -> NetworkConfig:
        if self.default_language not in self.languages:
            raise KeyedValueError(("default_language",),
                                  f"is not one of network.languages ({', '.join(self.languages)})")
        return self


class FeedConfig(Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    kind: Literal["gtfs-rt", "passenger-flow"]
    url: str
    contains: tuple[FeedContent, ...] = FEED_CONTENTS
    poll_seconds: PositiveSeconds = 30
    timeout_seconds: PositiveSeconds = 10
    max_bytes: Annotated[int, Field(gt=0)] = 16 * 1024 * 1024
    max_age_seconds: PositiveSeconds = 300

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "file"):
            raise ValueError("must start with http://, https:// or file://")
        if parts.scheme == "file" and "@" in parts.netloc:
            # `file://samples/rt.pb` is a path relative to the config; a user and password there used to be read
            # as part of that path, and echoed by "no such file".
            raise ValueError("a file: URL takes no user or password: file:///path or file://relative/path")
        return url


class ServiceHours(Section):
    start: time = time(5, 0)
    end: time = time(23, 30)

    def contains(self, at: time) -> bool:
        """True inside service hours; a window like 05:00-01:00 runs past midnight."""
        return within(self.start, self.end, at)


class StateConfig(Section):
    directory: Path = Path("state")
    resolve_after_missing: Annotated[int, Field(ge=1)] = 3
    crowding_min_dwell_seconds: Annotated[float, Field(ge=0)] = 120
    crowding_hysteresis_percent: Annotated[int, Field(ge=0, le=100)] = 5
    crowding_trend_window_seconds: PositiveSeconds = 900
    delay_threshold_seconds: PositiveSeconds = 300
    severe_delay_threshold_seconds: PositiveSeconds = 900


def _mqtt_url(url: str) -> str:
    """A broker URL: mqtt:// or mqtts://, a host, no credentials (they are secrets, given apart)."""
    parts = urlsplit(url)
    # Anywhere, not only in the host part: a password such as "1234?x" splits the URL before its "@", and the
    # rest would pass for a query (or a path, a fragment) and reach logs and /v1/status whole.
    if "@" in url:
        raise ValueError("must not carry credentials; give them as mqtt.username and mqtt.password, each"
                         ' { env = "VAR" } or { file = "/run/secrets/..." }')
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError("must start with mqtt:// or mqtts://")
    require_host_and_port(parts)
    return url


BrokerUrl = Annotated[str, AfterValidator(_mqtt_url)]


def broker_label(url: str) -> str:
    """`url` as scheme://host:port, the form status and metrics show (a broker URL carries no credentials, but
    a label is built from its parts only, so nothing else in it can ever reach a metric)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}:{parts.port or (8883 if parts.scheme == 'mqtts' else 1883)}"


class MqttConfig(Section):
    url: BrokerUrl = "mqtt://127.0.0.1:1883"
    #: Several brokers (nodes of one cluster, or a standby): the link connects to the first that answers and
    #: moves on to the next, round-robin, when it loses one. Give `url` or `urls`, not both.
    urls: Annotated[tuple[BrokerUrl, ...], Field(min_length=1)] | None = None
    #: "5", or "3.1.1" for brokers that speak only that: no message expiry, no Will Delay (docs/mqtt.md).
    protocol: Literal["5", "3.1.1"] = "5"

    @field_validator("protocol", mode="before")
    @classmethod
    def _version_as_written(cls, protocol: object) -> object:
        # `protocol = 5` (a TOML integer) is what an operator writes for version 5; 3.1.1 cannot be a number.
        return "5" if protocol == 5 and not isinstance(protocol, bool) else protocol

    topic_prefix: Annotated[str, Field(pattern=r"^[^#+\s]+$")] = "metro"
    client_id: Annotated[str, Field(min_length=1, max_length=64)] = "broadcaster"
    username: SecretRef | None = None
    password: SecretRef | None = None
    tls_ca_file: Path | None = None
    keepalive_seconds: Annotated[int, Field(ge=5, le=3600)] = 30
    #: After a lost connection the broker announces "offline" only after this long (MQTT 5 Will Delay), so
    #: a quick reconnect causes no "information unavailable" flicker on displays. MQTT 3.1.1 has no delay.
    will_delay_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    retained_ttl_seconds: Annotated[int, Field(ge=60)] = 1800
    max_payload_bytes: Annotated[int, Field(ge=1024, le=268_435_455)] = 256 * 1024
    publish_window: Annotated[int, Field(ge=1, le=1000)] = 32
    publish_timeout_seconds: PositiveSeconds = 10
    #: How long `broadcaster once` waits for the broker before it gives up with exit status 1.
    connect_timeout_seconds: PositiveSeconds = 10
    reconnect_max_seconds: PositiveSeconds = 30

    @model_validator(mode="before")
    @classmethod
    def _url_or_urls(cls, data: object) -> object:
        if isinstance(data, dict) and "url" in data and data.get("urls") is not None:
            raise KeyedValueError(("urls",), "and mqtt.url are both given: give one of them (urls for several"
                                             " brokers)")
        return data

    @field_validator("urls")
    @classmethod
    def _no_broker_twice(cls, urls: tuple[str, ...] | None) -> tuple[str, ...] | None:
        first_at: dict[str, int] = {}
        for i, url in enumerate(urls or ()):
            label = broker_label(url)
            if label in first_at:
                raise KeyedValueError((i,), f"names the same broker as mqtt.urls[{first_at[label]}]")
            first_at[label] = i
        return urls

    @property
    def brokers(self) -> tuple[str, ...]:
        """The broker URLs in the order the link tries them: `urls`, or `url` alone."""
        return self.urls if self.urls is not None else (self.url,)

    @property
    def v5(self) -> bool:
        return self.protocol == "5"


class TemplatesConfig(Section):
    #: A folder of operator templates; a template found there replaces the built-in one of the same name.
    directory: Path | None = None


class DigestConfig(Section):
    """A scheduled network-wide summary."""

    name: ChannelName = "digest"
    #: Standard five-field cron, in the config's timezone; slots outside service hours are skipped.
    cron: str = "*/15 * * * *"
    #: Channel names; empty: every channel.
    channels: tuple[str, ...] = ()
    #: The template base name ({template}.{language}.j2).
    template: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")] = "digest"
    #: How many of the most crowded stations to list.
    top_crowded: Annotated[int, Field(ge=0, le=20)] = 3

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, cron: str) -> str:
        from broadcaster.scheduler import validate_cron

        validate_cron(cron)
        return cron


class EmergencyConfig(Section):
    """What jumps the queue and skips quiet windows, on every channel."""

    min_severity: Literal["INFO", "WARNING", "SEVERE"] = "SEVERE"
    effects: tuple[str, ...] = ("NO_SERVICE",)


AdminEndpoint = Literal["/v1/health", "/metrics", "/openapi.json"]


class AdminToken(Section):
    """One bearer token of the admin API. `id` names its holder in the audit log; the token never appears."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]
    token: SecretRef


class _Listening(Section):
    """A web server's address: `listen` is host:port ("[::1]:8787" for IPv6; port 0 picks a free one)."""

    listen: str

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8787 or [::1]:8787")
        return listen

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].removeprefix("[").removesuffix("]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class AdminConfig(_Listening):
    """The HTTP admin API (docs/admin.md): operator notices, corrections, health, status, Prometheus metrics."""

    #: host:port to listen on ("[::1]:8787" for IPv6; port 0 picks a free one).
    listen: str = "127.0.0.1:8787"
    tokens: tuple[AdminToken, ...] = ()
    #: Endpoints served without a token; the others (notices, corrections, status) always need one.
    public: tuple[AdminEndpoint, ...] = ("/v1/health", "/metrics", "/openapi.json")
    #: After this many failed authentications from one client address within `failure_window_seconds`,
    #: that address gets 429 (with Retry-After) until the oldest failure leaves the window.
    max_failures: Annotated[int, Field(ge=1)] = 10
    failure_window_seconds: PositiveSeconds = 60

    @field_validator("tokens")
    @classmethod
    def _unique_token_ids(cls, tokens: tuple[AdminToken, ...]) -> tuple[AdminToken, ...]:
        require_unique([t.id for t in tokens], "id", "tokens")
        return tokens


class PublicConfig(_Listening):
    """The commuters' web site (docs/commuters.md): Atom feeds for the network, each line and each station, and
    the commuter page. Public, read-only, no token: put it behind the operator's reverse proxy or CDN."""

    #: host:port to listen on ("[::1]:8080" for IPv6; port 0 picks a free one).
    listen: str = "127.0.0.1:8080"
    #: The absolute URL readers reach the site at (e.g. https://metro.example/updates), for the feeds' links;
    #: None: taken from each request's Host.
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s?#]+$")] | None = None
    #: The Atom feeds (docs/commuters.md): how long readers and caches may keep one (Cache-Control max-age)...
    feed_max_age_seconds: Annotated[int, Field(ge=0, le=86400)] = 30
    #: ...how many recent notices each lists, at most, and from how many days back.
    feed_notices: Annotated[int, Field(ge=0, le=500)] = 50
    feed_days: PositiveSeconds = 7
    #: The feeds' title per language (e.g. { zh = "地铁运营信息", en = "Metro service updates" }); a language
    #: not given gets "运营信息" (zh) or "Service updates".
    feed_title: dict[LanguageCode, Annotated[str, Field(min_length=1, max_length=200)]] = Field(default_factory=dict)

    #: The broker's MQTT-over-WebSocket URL the commuter page connects to from the rider's browser
    #: (wss://broker.example/mqtt behind TLS); None: the page shows the picks without live data and says so.
    mqtt_websocket_url: Annotated[str, Field(pattern=r"^wss?://[^\s#]+$")] | None = None
    #: The broker's public, read-only account the page logs in with (docs/commuters.md, "Public access"); None:
    #: anonymous. Every browser receives it: never the broadcaster's own account.
    mqtt_username: str | None = None
    #: That account's password, as public as the account (served to every browser, so not read from a secret
    #: file): the broker's ACL, not the password, is what keeps the public from writing.
    mqtt_password: str | None = None
    #: The page's title per language ({ zh = "...", en = "..." }); a missing language: "Metro service updates".
    page_title: dict[LanguageCode, str] = Field(default_factory=dict)


#: The placeholders a hashtag pattern may use, per kind of pattern.
LINE_TAG_PLACEHOLDERS: tuple[str, ...] = ("short_name", "name", "id")
STATION_TAG_PLACEHOLDERS: tuple[str, ...] = ("name", "id")


def _pattern_checker(allowed: tuple[str, ...]) -> Callable[[str], str]:
    """A validator of a hashtag pattern: literal text and `{placeholder}`s from `allowed`, nothing else (no format
    specs, conversions or positional fields). The message names the allowed placeholders, never the value."""
    names = ", ".join("{" + name + "}" for name in allowed)

    def check(pattern: str) -> str:
        try:
            fields = [(name, spec, conversion) for _, name, spec, conversion in Formatter().parse(pattern)
                      if name is not None]
        except ValueError:
            raise ValueError(f"is not a hashtag pattern (a lone brace; write {{{{ or }}}}); use {names}") from None
        for name, spec, conversion in fields:
            if name not in allowed or spec or conversion:
                raise ValueError(f"names an unknown placeholder; use {names}")
        return pattern

    return check


LineTagPattern = Annotated[str, AfterValidator(_pattern_checker(LINE_TAG_PLACEHOLDERS))]
StationTagPattern = Annotated[str, AfterValidator(_pattern_checker(STATION_TAG_PLACEHOLDERS))]


class HashtagsConfig(Section):
    """Hashtags for the lines and stations a notice touches, per language (docs/channels.md, "Hashtags").

    A pattern is literal text with placeholders; what a hashtag cannot hold (spaces, punctuation, symbols) is taken
    out of the result, and a language without a pattern gets no tag.
    """

    #: Per language: `{short_name}` (routes.txt route_short_name), `{name}` (the line's name in that language),
    #: `{id}` (route_id).
    line: dict[LanguageCode, LineTagPattern] = Field(default_factory=lambda: {"zh": "{short_name}号线",
                                                                             "en": "Line{short_name}"})
    #: Per language: `{name}` (the station's name in that language), `{id}` (stop_id).
    station: dict[LanguageCode, StationTagPattern] = Field(default_factory=lambda: {"zh": "{name}", "en": "{name}"})
    #: Per line id (route_id), per language: a pattern that replaces `line` for that line.
    lines: dict[str, dict[LanguageCode, LineTagPattern]] = Field(default_factory=dict)
    #: Per station id (stop_id), per language: a pattern that replaces `station` for that station.
    stations: dict[str, dict[LanguageCode, StationTagPattern]] = Field(default_factory=dict)


def _host_instance() -> str:
    """This machine's host name made into an instance id (`[A-Za-z0-9_.-]{1,64}`)."""
    made = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
    return made or "broadcaster"


class HaConfig(Section):
    """Several instances on one PostgreSQL database, one leading at a time under a lease (docs/ha.md)."""

    #: This instance's id among those sharing the database; default: the host name.
    instance: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = Field(default_factory=_host_instance)
    lease_seconds: PositiveSeconds = 15
    #: Default: lease_seconds / 3.
    renew_seconds: PositiveSeconds | None = None
    #: Default: lease_seconds / 2.5 (6 s of the default 15: more than `[storage] statement_timeout_seconds`, 5).
    margin_seconds: PositiveSeconds | None = None

    @property
    def renew(self) -> float:
        return self.renew_seconds if self.renew_seconds is not None else self.lease_seconds / 3

    @property
    def margin(self) -> float:
        return self.margin_seconds if self.margin_seconds is not None else self.lease_seconds / 2.5

    @model_validator(mode="after")
    def _renew_and_margin_fit_in_the_lease(self) -> HaConfig:
        # A leader renews at most `renew` after its last renew and stops `margin` before the lease ends: both
        # must fit in the lease, or a healthy leader would fence itself between two renews.
        if self.renew + self.margin >= self.lease_seconds:
            key = "margin_seconds" if self.margin_seconds is not None else "renew_seconds"
            raise KeyedValueError((key,), f"renew_seconds ({self.renew:g}) + margin_seconds ({self.margin:g}) "
                                          f"must be less than lease_seconds ({self.lease_seconds:g})")
        return self
