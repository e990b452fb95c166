"""The operator's TOML configuration: schema, defaults, and errors that name the file, key and value.

Relative paths in the file are resolved against the file's own folder, so a config can be run from anywhere.
Secrets never live in the file: it names environment variables or secret files that hold them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from broadcaster.errors import ConfigError

#: The config format's version. Bump it (and document the change in docs/configuration.md) on any change that
#: makes an old file invalid or mean something else.
CONFIG_VERSION = 1

FeedContent = Literal["alerts", "trip-updates", "vehicle-positions"]
FEED_CONTENTS: tuple[FeedContent, ...] = ("alerts", "trip-updates", "vehicle-positions")


class Secret:
    """A secret value whose repr and str are masked, so it never reaches a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


class _Section(BaseModel):
    # Unknown keys are errors: a typo ("pol_seconds") must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveSeconds = Annotated[float, Field(gt=0)]


def _within(start: time, end: time, at: time) -> bool:
    """True from `start` (inclusive) to `end` (exclusive); when `end` comes first the window runs past midnight."""
    if start <= end:
        return start <= at < end
    return at >= start or at < end


def _require_unique(values: Sequence[str], field: str, section: str) -> None:
    """Refuse the first value met a second time, naming both places: "the name of feeds[2] is used twice
    (feeds[0] has it too)"."""
    first_at: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in first_at:
            raise ValueError(f"the {field} of {section}[{i}] is used twice ({section}[{first_at[value]}] has it too)")
        first_at[value] = i


class SecretRef(_Section):
    """Where a secret comes from: an environment variable or a file (systemd credentials, Docker secrets)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self

    def load(self, config_dir: Path | None = None) -> Secret | None:
        """The secret's value without surrounding white space, or None when the variable is unset.

        A relative file name is looked for in `$CREDENTIALS_DIRECTORY` (systemd), then `/run/secrets`
        (containers), then `config_dir`. A named file that cannot be read raises OSError.
        """
        from broadcaster.secretfiles import read_secret_file, resolve_secret_file

        if self.env is not None:
            value = os.environ.get(self.env)
            return Secret(value.strip()) if value is not None else None
        assert self.file is not None
        return Secret(read_secret_file(resolve_secret_file(self.file, config_dir=config_dir)))

    def require(self, source: Path, key: str) -> Secret:
        """The secret's value, or a ConfigError naming the config key (never the value) when it cannot be had."""
        try:
            secret = self.load(source.parent)
        except OSError as exc:
            raise ConfigError(source, key, f"cannot read {self.file}: {exc.strerror}") from None
        if secret is None:
            raise ConfigError(source, key, f"environment variable {self.env} is not set")
        return secret


class NetworkConfig(_Section):
    gtfs: Path
    default_language: str = "zh"
    languages: tuple[str, ...] = ("zh", "en")


class FeedConfig(_Section):
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
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https", "file"):
            raise ValueError("must start with http://, https:// or file://")
        return url


class ServiceHours(_Section):
    start: time = time(5, 0)
    end: time = time(23, 30)

    def contains(self, at: time) -> bool:
        """True inside service hours; a window like 05:00-01:00 runs past midnight."""
        return _within(self.start, self.end, at)


class StateConfig(_Section):
    directory: Path = Path("state")
    resolve_after_missing: Annotated[int, Field(ge=1)] = 3
    crowding_min_dwell_seconds: Annotated[float, Field(ge=0)] = 120
    crowding_hysteresis_percent: Annotated[int, Field(ge=0, le=100)] = 5
    crowding_trend_window_seconds: PositiveSeconds = 900
    delay_threshold_seconds: PositiveSeconds = 300
    severe_delay_threshold_seconds: PositiveSeconds = 900


class MqttConfig(_Section):
    url: str = "mqtt://127.0.0.1:1883"
    topic_prefix: Annotated[str, Field(pattern=r"^[^#+\s]+$")] = "metro"
    client_id: Annotated[str, Field(min_length=1, max_length=64)] = "broadcaster"
    username: SecretRef | None = None
    password: SecretRef | None = None
    tls_ca_file: Path | None = None
    keepalive_seconds: Annotated[int, Field(ge=5, le=3600)] = 30
    #: After a lost connection the broker announces "offline" only after this long (MQTT 5 Will Delay), so
    #: a quick reconnect causes no "information unavailable" flicker on displays.
    will_delay_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    retained_ttl_seconds: Annotated[int, Field(ge=60)] = 1800
    max_payload_bytes: Annotated[int, Field(ge=1024, le=268_435_455)] = 256 * 1024
    publish_window: Annotated[int, Field(ge=1, le=1000)] = 32
    publish_timeout_seconds: PositiveSeconds = 10
    #: How long `broadcaster once` waits for the broker before it gives up with exit status 1.
    connect_timeout_seconds: PositiveSeconds = 10
    reconnect_max_seconds: PositiveSeconds = 30

    @field_validator("url")
    @classmethod
    def _mqtt_scheme(cls, url: str) -> str:
        parts = urlsplit(url)
        if "@" in parts.netloc:
            raise ValueError("must not carry credentials; give them as mqtt.username and mqtt.password, each"
                             ' { env = "VAR" } or { file = "/run/secrets/..." }')
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("names no host")
        return url

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"


class TemplatesConfig(_Section):
    #: A folder of operator templates; a template found there replaces the built-in one of the same name.
    directory: Path | None = None


NoticeKindName = Literal[
    "alert_new", "alert_updated", "alert_resolved", "line_status", "crowding", "digest", "correction"
]
NOTICE_KINDS: tuple[NoticeKindName, ...] = (
    "alert_new", "alert_updated", "alert_resolved", "line_status", "crowding", "digest", "correction"
)


class QuietWindow(_Section):
    """Local times between which a channel posts nothing routine (emergencies still go)."""

    start: time
    end: time

    def contains(self, at: time) -> bool:
        return _within(self.start, self.end, at)


ChannelName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


class BudgetLimit(_Section):
    """At most `posts` posts in any `seconds`-long window."""

    posts: Annotated[int, Field(ge=1)]
    seconds: PositiveSeconds


class _ChannelBase(_Section):
    """Settings every notice channel has."""

    name: ChannelName
    #: Languages posted, in order; several are joined in one post, separated by a blank line.
    languages: tuple[str, ...] | None = None  # None: the network's default language
    #: Which notice kinds this channel posts.
    notices: tuple[NoticeKindName, ...] = NOTICE_KINDS
    timeout_seconds: PositiveSeconds = 15
    #: The account's posting budget; None: the platform's published limits (docs/channels.md).
    budget: tuple[BudgetLimit, ...] | None = None
    #: Digests: "always" posts every slot (a heartbeat); "on-change" skips a slot when nothing changed.
    digest_mode: Literal["always", "on-change"] = "on-change"
    #: No routine posts outside service hours (digests are skipped, other notices wait for the morning);
    #: emergencies still go.
    quiet_outside_service_hours: bool = False
    #: More quiet windows, local time.
    quiet: tuple[QuietWindow, ...] = ()


class MastodonChannelConfig(_ChannelBase):
    kind: Literal["mastodon"]
    url: Annotated[str, Field(pattern=r"^https?://")]  # the instance, e.g. https://mastodon.example
    token: SecretRef
    #: Used when the instance does not say its max_characters (GET /api/v2/instance).
    max_characters: Annotated[int, Field(ge=50)] = 500
    #: Visibility per notice kind; kinds not named use `default_visibility`.
    visibility: dict[NoticeKindName, Literal["public", "unlisted", "private", "direct"]] = Field(default_factory=dict)
    default_visibility: Literal["public", "unlisted", "private", "direct"] = "public"
    #: Content warning on emergency notices (empty: none).
    emergency_spoiler_text: str = ""
    #: A status has one language: "combined" posts every language in one status (tagged with the first);
    #: "separate" posts one status per language, each tagged with its own, threaded in `languages` order.
    languages_per_status: Literal["combined", "separate"] = "combined"


class BlueskyChannelConfig(_ChannelBase):
    kind: Literal["bluesky"]
    url: Annotated[str, Field(pattern=r"^https?://")] = "https://bsky.social"  # the account's PDS
    identifier: str  # handle or DID
    password: SecretRef  # an app password


class WeiboChannelConfig(_ChannelBase):
    kind: Literal["weibo"]
    url: Annotated[str, Field(pattern=r"^https?://")] = "https://api.weibo.com"
    access_token: SecretRef
    #: A link on the app's registered safe domain: statuses/share refuses a status without one (error 10017),
    #: so it ends every post, and the length rule leaves room for it.
    link: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None


class WebhookChannelConfig(_ChannelBase):
    kind: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    #: Signs each body with HMAC-SHA256 (docs/channels.md); None sends unsigned.
    secret: SecretRef | None = None
    #: `broadcaster check` POSTs a signed dry run (header `X-Broadcaster-Dry-Run: 1`) that the receiver answers
    #: with 2xx without acting on it; only for receivers that support it, so off by default.
    check_dry_run: bool = False


class AtomChannelConfig(_ChannelBase):
    kind: Literal["atom"]
    #: The Atom file written on every post (relative to the config file); serve it with any web server.
    path: Path
    title: str = "Service updates"
    max_entries: Annotated[int, Field(ge=1, le=1000)] = 50


ChannelConfig = Annotated[
    MastodonChannelConfig | BlueskyChannelConfig | WeiboChannelConfig | WebhookChannelConfig | AtomChannelConfig,
    Field(discriminator="kind"),
]


class DigestConfig(_Section):
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


class EmergencyConfig(_Section):
    """What jumps the queue and skips quiet windows, on every channel."""

    min_severity: Literal["INFO", "WARNING", "SEVERE"] = "SEVERE"
    effects: tuple[str, ...] = ("NO_SERVICE",)


AdminEndpoint = Literal["/v1/health", "/metrics", "/openapi.json"]


class AdminToken(_Section):
    """One bearer token of the admin API. `id` names its holder in the audit log; the token never appears."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]
    token: SecretRef


class AdminConfig(_Section):
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

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8787 or [::1]:8787")
        return listen

    @field_validator("tokens")
    @classmethod
    def _unique_token_ids(cls, tokens: tuple[AdminToken, ...]) -> tuple[AdminToken, ...]:
        _require_unique([t.id for t in tokens], "id", "tokens")
        return tokens

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].removeprefix("[").removesuffix("]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class Config(_Section):
    config_version: Literal[1] = 1
    timezone: str = "Asia/Shanghai"
    service_hours: ServiceHours = ServiceHours()
    network: NetworkConfig
    feeds: Annotated[tuple[FeedConfig, ...], Field(min_length=1)]
    state: StateConfig = StateConfig()
    mqtt: MqttConfig = MqttConfig()
    templates: TemplatesConfig = TemplatesConfig()
    channels: tuple[ChannelConfig, ...] = ()
    digests: tuple[DigestConfig, ...] = ()
    emergency: EmergencyConfig = EmergencyConfig()
    #: The HTTP admin API; None: not served.
    admin: AdminConfig | None = None
    #: The file this was read from; set by `load_config`, not by the operator.
    source: Path = Field(default=Path("<memory>"), exclude=True)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not an IANA time zone name such as 'Asia/Shanghai'") from None
        return name

    @field_validator("channels")
    @classmethod
    def _unique_channel_names(cls, channels: tuple[ChannelConfig, ...]) -> tuple[ChannelConfig, ...]:
        names = [c.name for c in channels]
        reserved_at = names.index("mqtt") if "mqtt" in names else len(names)
        _require_unique(names[:reserved_at], "name", "channels")  # whichever problem comes first is reported
        if reserved_at < len(names):
            raise ValueError("channel name 'mqtt' is taken by the MQTT notice stream")
        return channels

    @model_validator(mode="after")
    def _digest_channels_exist(self) -> Config:
        names = {c.name for c in self.channels}
        for d, digest in enumerate(self.digests):
            for c, name in enumerate(digest.channels):
                if name not in names and name != "mqtt":
                    raise ValueError(f"digests[{d}].channels[{c}] names a channel that is not configured")
        return self

    @field_validator("feeds")
    @classmethod
    def _unique_feed_names(cls, feeds: tuple[FeedConfig, ...]) -> tuple[FeedConfig, ...]:
        _require_unique([feed.name for feed in feeds], "name", "feeds")
        return feeds

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def database_path(self) -> Path:
        return self.state.directory / "broadcaster.db"


_CHANNEL_KINDS = frozenset({"mastodon", "bluesky", "weibo", "webhook", "atom"})


def _key_path(location: tuple[int | str, ...]) -> str:
    """pydantic's ('feeds', 1, 'url') -> 'feeds[1].url'."""
    out = ""
    for part in location:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _lookup(data: Any, location: tuple[int | str, ...]) -> Any:
    for part in location:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


#: Where secrets stand: (section, key) under `[mqtt]`, a channel or an admin token.
_SECRET_KEYS = frozenset({"username", "password", "token", "access_token", "secret"})


def _secret_location(location: tuple[int | str, ...]) -> tuple[int | str, ...] | None:
    """The location of the secret field `location` is at or inside, or None if it is not a secret's."""
    for end in range(len(location), 0, -1):
        head, key = location[: end - 1], location[end - 1]
        if key not in _SECRET_KEYS:
            continue
        if head == ("mqtt",) or (len(head) == 2 and head[0] == "channels" and isinstance(head[1], int)) or (
            len(head) == 3 and head[:2] == ("admin", "tokens") and isinstance(head[2], int) and key == "token"
        ):
            return location[:end]
    return None


def _how_to_give(data: dict[str, Any], location: tuple[int | str, ...]) -> str:
    """How to write the secret at `location`: e.g. token = { env = "METRO_MASTODON_TOKEN" }."""
    key = str(location[-1])
    channel = _lookup(data, location[:2]) if location[0] == "channels" else None
    kind = channel.get("kind") if isinstance(channel, dict) else None
    owner = kind if kind in _CHANNEL_KINDS else {"mqtt": "mqtt", "admin": "admin", "channels": "channel"}.get(
        str(location[0]), "metro")
    name = f"{owner}_{key}"
    return (f'a secret never stands in the file: write {key} = {{ env = "METRO_{name.upper()}" }} or '
            f'{key} = {{ file = "/run/secrets/{name}" }}')


def _given(value: object) -> str:
    """What kind of value the file holds, in TOML's words (the value itself is never shown: it may be a secret)."""
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "a table"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), "a date or time")


def _first_error(path: Path, data: dict[str, Any], exc: ValidationError) -> ConfigError:
    """The first validation error as one line naming the file and the key, never echoing a value from the file:
    a value may be a secret written where it does not belong (a token in `token = "..."`, a password in a URL).
    """
    error = exc.errors(include_url=False, include_input=False)[0]
    # Drop pydantic's internal step names ('function-after[...]') and the channel kind it inserts after an
    # index ('channels', 0, 'mastodon', 'token'): the operator wrote channels[0].token.
    location: tuple[int | str, ...] = ()
    for part in error["loc"]:
        if isinstance(part, str) and ("[" in part or (location and isinstance(location[-1], int)
                                                      and part in _CHANNEL_KINDS)):
            continue
        location += (part,)
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        location += ("kind",)
    key = _key_path(location)
    secret = _secret_location(location)
    if error["type"] == "extra_forbidden":
        hint = f"; {_how_to_give(data, secret)}" if secret and len(location) > len(secret) else ""
        return ConfigError(path, key, f"unknown key (check the spelling; see config/example.toml){hint}")
    if error["type"] == "missing":
        return ConfigError(path, key, "is required but missing")
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        kinds = ", ".join(sorted(_CHANNEL_KINDS))
        return ConfigError(path, key, f"must be one of {kinds}")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        message = "must be a table"  # pydantic says "instance of SecretRef", which no operator wrote
    if error["type"].endswith("_type") or error["type"].endswith("_parsing"):
        message += f" ({_given(_lookup(data, location))} was given)"
    if secret is not None:
        message += f"; {_how_to_give(data, secret)}"
    return ConfigError(path, key, message)


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    def resolve_url(url: str) -> str:
        # file:// URLs may be relative to the config file ("file:samples/alerts.pb" or "file://samples/...").
        parts = urlsplit(url)
        if parts.scheme != "file":
            return url
        raw = (parts.netloc + parts.path) if parts.netloc not in ("", "localhost") else parts.path
        return resolve(Path(raw)).as_uri()

    feeds = tuple(f.model_copy(update={"url": resolve_url(f.url)}) for f in config.feeds)
    templates = config.templates
    if templates.directory is not None:
        templates = templates.model_copy(update={"directory": resolve(templates.directory)})
    channels = tuple(
        c.model_copy(update={"path": resolve(c.path)}) if isinstance(c, AtomChannelConfig) else c
        for c in config.channels
    )
    mqtt = config.mqtt
    if mqtt.tls_ca_file is not None:
        mqtt = mqtt.model_copy(update={"tls_ca_file": resolve(mqtt.tls_ca_file)})
    return config.model_copy(
        update={
            "network": config.network.model_copy(update={"gtfs": resolve(config.network.gtfs)}),
            "state": config.state.model_copy(update={"directory": resolve(config.state.directory)}),
            "feeds": feeds,
            "templates": templates,
            "mqtt": mqtt,
            "channels": channels,
        }
    )


def with_mqtt_url(config: Config, url: str) -> Config:
    """`config` with another broker URL, validated as if it stood in the file (errors name `--mqtt-url`)."""
    try:
        mqtt = MqttConfig.model_validate({**config.mqtt.model_dump(), "url": url})
    except ValidationError as exc:
        message = exc.errors(include_url=False, include_input=False)[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(config.source, "--mqtt-url", message) from None  # never the URL: it may hold a password
    return config.model_copy(update={"mqtt": mqtt})


def load_config(path: Path) -> Config:
    """Read and validate a config file.

    Raises:
        ConfigError: naming the file, the dotted key (``feeds[0].url``) and the bad value.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, "", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"TOML syntax error: {exc}") from None
    return parse_config(data, path)


def parse_config(data: dict[str, Any], path: Path) -> Config:
    """Validate already-parsed TOML data read from `path` (used for errors and relative paths)."""
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise _first_error(path, data, exc) from None
    config = _resolve_paths(config, path.parent)
    return config.model_copy(update={"source": path.resolve()})
