"""The whole file: `Config`, its sections, and the rules that span sections."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from broadcaster.config.base import KeyedValueError, Section, require_unique
from broadcaster.config.channels import ChannelConfig
from broadcaster.config.sections import (
    AdminConfig,
    DigestConfig,
    EmergencyConfig,
    FeedConfig,
    HaConfig,
    HashtagsConfig,
    MqttConfig,
    NetworkConfig,
    PublicConfig,
    ServiceHours,
    StateConfig,
    TemplatesConfig,
)
from broadcaster.config.storage import StorageConfig

#: The config format's version. Bump it (and document the change in docs/configuration.md) on any change that
#: makes an old file invalid or mean something else.
CONFIG_VERSION = 1


class Config(Section):
    config_version: Literal[1] = 1
    timezone: str = "Asia/Shanghai"
    service_hours: ServiceHours = ServiceHours()
    network: NetworkConfig
    feeds: Annotated[tuple[FeedConfig, ...], Field(min_length=1)]
    state: StateConfig = StateConfig()
    #: A PostgreSQL database; None: SQLite in the state directory (`database_path`).
    storage: StorageConfig | None = None
    mqtt: MqttConfig = MqttConfig()
    templates: TemplatesConfig = TemplatesConfig()
    channels: tuple[ChannelConfig, ...] = ()
    digests: tuple[DigestConfig, ...] = ()
    emergency: EmergencyConfig = EmergencyConfig()
    #: Hashtags for lines and stations in posts; None: posts carry none.
    hashtags: HashtagsConfig | None = None
    #: The HTTP admin API; None: not served.
    admin: AdminConfig | None = None
    #: The commuters' web site (Atom feeds, the commuter page); None: not served.
    public: PublicConfig | None = None
    #: Several instances on one PostgreSQL database (docs/ha.md); None: one instance, always the leader.
    ha: HaConfig | None = None
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
        require_unique(names[:reserved_at], "name", "channels")  # whichever problem comes first is reported
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

    @model_validator(mode="after")
    def _channel_languages_are_the_networks(self) -> Config:
        # Notices are composed in network.languages only; a channel's other language would have no text.
        known = self.network.languages
        for c, channel in enumerate(self.channels):
            for i, language in enumerate(channel.languages or ()):
                if language not in known:
                    raise KeyedValueError(("channels", c, "languages", i),
                                          f"is not one of network.languages ({', '.join(known)})")
        return self

    @model_validator(mode="after")
    def _ha_needs_postgresql(self) -> Config:
        # Instances share their state through the database: a SQLite file belongs to one machine's instance.
        if self.ha is not None and self.storage is None:
            raise KeyedValueError(("ha",), "needs a PostgreSQL database: [storage] url = \"postgresql://...\"")
        return self

    @model_validator(mode="after")
    def _ha_margin_outlasts_a_blocked_store_call(self) -> Config:
        # A store call runs on the event loop's thread and may hold it up to the watchdog's limit between the
        # moment may_act() said yes and the moment a queued MQTT packet or HTTP request reaches its socket: the
        # leader must stop acting more than that before its lease can pass to another instance.
        if self.ha is None or self.storage is None:
            return self
        timeout = self.storage.statement_timeout_seconds
        # A reconnect holds the loop no longer: it runs in a thread of its own, waited for at most this timeout
        # (store/postgres.py), not for libpq's connect_timeout.
        if self.ha.margin <= timeout:
            raise KeyedValueError(("ha", "margin_seconds"), (
                f"margin_seconds ({self.ha.margin:g}) must be more than storage.statement_timeout_seconds"
                f" ({timeout:g}): a store call may hold the event loop that long after the last check before a send"
                " or publish"))
        return self

    @field_validator("feeds")
    @classmethod
    def _unique_feed_names(cls, feeds: tuple[FeedConfig, ...]) -> tuple[FeedConfig, ...]:
        require_unique([feed.name for feed in feeds], "name", "feeds")
        return feeds

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def database_path(self) -> Path:
        return self.state.directory / "broadcaster.db"

