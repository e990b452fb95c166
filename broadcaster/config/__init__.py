"""The operator's TOML configuration: schema, defaults, and errors that name the file and key (never a value:
it may be a secret).

Relative paths in the file are resolved against the file's own folder, so a config can be run from anywhere.
Secrets never live in the file: it names environment variables or secret files that hold them.

One job per module: `base` (what every section shares, secrets), `sections` (network, feeds, broker, digests,
admin API, public web site ...), `channels` (the notice channels), `root` (the whole file), `messages` (a
validation error as the operator's one line) and `loading` (reading the file). Import from here.
"""

from broadcaster.config.base import ChannelName, PositiveSeconds, Secret, SecretRef
from broadcaster.config.channels import (
    NOTICE_KINDS,
    AtomChannelConfig,
    BlueskyChannelConfig,
    BudgetLimit,
    ChannelConfig,
    MastodonChannelConfig,
    NoticeKindName,
    QuietWindow,
    WebhookChannelConfig,
    WeiboChannelConfig,
)
from broadcaster.config.loading import load_config, parse_config, with_mqtt_url
from broadcaster.config.root import CONFIG_VERSION, Config
from broadcaster.config.sections import (
    FEED_CONTENTS,
    AdminConfig,
    AdminEndpoint,
    AdminToken,
    DigestConfig,
    EmergencyConfig,
    FeedConfig,
    FeedContent,
    HaConfig,
    HashtagsConfig,
    MqttConfig,
    NetworkConfig,
    PublicConfig,
    ServiceHours,
    StateConfig,
    TemplatesConfig,
    broker_label,
)

__all__ = [
    "CONFIG_VERSION",
    "FEED_CONTENTS",
    "NOTICE_KINDS",
    "AdminConfig",
    "AdminEndpoint",
    "AdminToken",
    "AtomChannelConfig",
    "BlueskyChannelConfig",
    "BudgetLimit",
    "ChannelConfig",
    "ChannelName",
    "Config",
    "DigestConfig",
    "EmergencyConfig",
    "FeedConfig",
    "FeedContent",
    "HaConfig",
    "HashtagsConfig",
    "MastodonChannelConfig",
    "MqttConfig",
    "NetworkConfig",
    "NoticeKindName",
    "PositiveSeconds",
    "PublicConfig",
    "QuietWindow",
    "Secret",
    "SecretRef",
    "ServiceHours",
    "StateConfig",
    "TemplatesConfig",
    "WebhookChannelConfig",
    "WeiboChannelConfig",
    "broker_label",
    "load_config",
    "parse_config",
    "with_mqtt_url",
]
